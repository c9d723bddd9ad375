//! Durability of the history on disk: every sled node stays in the fsynced data file,
//! the anchor covers every acknowledged batch (so damage after a crash is data loss,
//! never a silently shorter history), a failed snapshot does not stop the history, and
//! only the writer that knows the head can append.
mod history_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use fedrun::history::anchor::{self, AnchorFile};
use fedrun::history::{
    record, Anchor, AppendError, ChainHash, Head, History, MemoryStorage, OpenError, SledOptions,
    SledStorage, Storage, StorageError, MAX_VALUE_BYTES,
};
use history_support::{steps, Step, Steps};

/// A step whose record is exactly `MAX_VALUE_BYTES` long: the largest value a history
/// ever stores.
fn max_size_step(seq: u64) -> Step {
    let mut step = Step {
        seq,
        job: seq as u32,
        step: 1,
        note: String::new(),
    };
    let overhead = record::encode(seq, ChainHash([7; 32]), &step)
        .unwrap()
        .len();
    // A MessagePack str of this size has a 3-byte header instead of a 1-byte one.
    step.note = "m".repeat(MAX_VALUE_BYTES - overhead - 2);
    let len = record::encode(seq, ChainHash([7; 32]), &step)
        .unwrap()
        .len();
    assert_eq!(len, MAX_VALUE_BYTES, "the test builds maximal records");
    step
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries {
            names.push(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    names
}

#[test]
fn maximal_values_never_leave_sleds_fsynced_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    // One by one, so sled keeps consolidating leaves full of maximal values (a leaf
    // splits only above 16 values), then in batches, then a reopen (sled's recovery).
    for seq in 1..=40 {
        history.append_batch(&[max_size_step(seq)]).unwrap();
    }
    for first in (41..=120).step_by(20) {
        let batch: Vec<Step> = (first..first + 20).map(max_size_step).collect();
        history.append_batch(&batch).unwrap();
    }
    history.close().unwrap();
    let history = History::<Step>::open(dir.path()).unwrap();
    assert_eq!(history.head().seq, 120);
    history.append_batch_checked_len();
    drop(history);
    let blobs = dir.path().join("history").join("blobs");
    assert_eq!(
        files_under(&blobs),
        Vec::<String>::new(),
        "sled wrote log items to {}, which nothing fsyncs",
        blobs.display()
    );
}

/// Keeps the test above honest: it must have read every record back.
trait CheckedLen {
    fn append_batch_checked_len(&self);
}

impl CheckedLen for History<Step> {
    fn append_batch_checked_len(&self) {
        let mut count = 0;
        for record in self.records_from(1) {
            let record = record.unwrap();
            assert_eq!(record.event, max_size_step(record.seq));
            count += 1;
        }
        assert_eq!(count, 120);
    }
}

#[test]
fn a_folder_made_with_sleds_default_segment_size_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an earlier fedrun made: sled's default 512 KiB segments.
        let db = sled::Config::new()
            .path(dir.path().join("history"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        db.flush().unwrap();
    }
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::OldLayout {
                found: 524_288,
                needed: 8_388_608,
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("made by an older fedrun"), "{message}");
    assert!(message.contains("segment size 524288"), "{message}");
    let err = History::<Step>::open_read_only(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::OldLayout { .. }), "{err}");
}

#[test]
fn the_anchor_names_every_acknowledged_batch_before_the_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    let path = dir.path().join("anchor");
    let mut next = 1;
    for size in [1u64, 3, 64, 2] {
        let before = history.head();
        let head = history.append_batch(&steps(next, size)).unwrap();
        next += size;
        // Read what is in the file, not what the process believes.
        let found = anchor::read(&path).unwrap().expect("an anchor file");
        assert_eq!(found.head, head, "after the batch ending at {}", head.seq);
        assert_eq!(found.acked, before);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            anchor::FILE_BYTES as u64,
            "overwritten in place, never grown"
        );
    }
    // Dropped without `close`: the anchor still names the last batch.
    drop(history);
    let found = anchor::read(&path).unwrap().unwrap();
    assert_eq!(found.head.seq, next - 1);
}

const CHILD_ENV: &str = "FEDRUN_DURABILITY_CHILD_DIR";
const CHILD_TEST: &str = "damage_after_a_kill_is_data_loss_naming_both_heads";
const BATCHES: u64 = 12;
const BATCH: u64 = 5;

/// The event at `seq` in the child's history, with a marker that shows where its bytes
/// sit in sled's data file.
fn marked(seq: u64) -> Step {
    Step {
        seq,
        job: seq as u32,
        step: 1,
        note: format!("<<record-{seq:06}>>"),
    }
}

/// The child: appends `BATCHES` batches, says so, and waits to be killed (it never
/// closes the history, so only the per-batch anchor can know the head).
fn child(dir: &Path) -> ! {
    let mut history = History::<Step>::open(dir).expect("child opens");
    for batch in 0..BATCHES {
        let events: Vec<Step> = (1 + batch * BATCH..1 + (batch + 1) * BATCH)
            .map(marked)
            .collect();
        history.append_batch(&events).expect("child appends");
    }
    // Straight to the pipe: the test harness may capture `println!`.
    let mut out = std::io::stdout().lock();
    writeln!(out, "APPENDED {}", history.head().seq).expect("child writes to its pipe");
    out.flush().expect("child flushes its pipe");
    // Wait for the SIGKILL: reading stdin blocks until the parent kills us.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    std::process::abort();
}

/// Runs the child on `dir` and kills it with SIGKILL once every batch is acknowledged.
fn append_then_kill(dir: &Path) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness may have printed the test's name on the same line before it.
        if let Some((_, seq)) = line.split_once("APPENDED ") {
            acknowledged = Some(seq.parse().unwrap());
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    acknowledged.expect("the child acknowledged its batches")
}

/// Flips one byte of the first copy of record `seq`'s marker in sled's data file, so
/// sled's recovery stops at that log entry and drops it and everything after it.
fn damage_record(dir: &Path, seq: u64) {
    let path = dir.join("history").join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    let marker = format!("<<record-{seq:06}>>");
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker.as_bytes())
        .expect("the record's bytes are in the data file");
    bytes[at + 3] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
}

#[test]
fn damage_after_a_kill_is_data_loss_naming_both_heads() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    // The last batch only, then from the middle on.
    for damaged in [BATCHES * BATCH - 2, 23] {
        let dir = tempfile::tempdir().unwrap();
        let acknowledged = append_then_kill(dir.path());
        assert_eq!(acknowledged, BATCHES * BATCH);
        damage_record(dir.path(), damaged);
        for err in [
            History::<Step>::open(dir.path()).unwrap_err(),
            History::<Step>::open_read_only(dir.path()).unwrap_err(),
        ] {
            let OpenError::DataLoss {
                anchor_seq,
                found_seq,
            } = err
            else {
                panic!("damage at record {damaged}: expected data loss, got: {err}");
            };
            assert_eq!(anchor_seq, acknowledged);
            assert!(found_seq < damaged, "sled dropped the damaged tail");
            let message = err.to_string();
            assert!(
                message.contains(&format!("up to {anchor_seq} "))
                    && message.contains(&format!("ends at {found_seq}")),
                "{message}"
            );
        }
        let history = History::<Step>::open_for_audit(dir.path()).unwrap();
        let report = history.verify(Steps::default());
        assert!(!report.is_ok(), "the audit reports the loss too");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("data loss")),
            "{report:?}"
        );
    }
}

#[test]
fn a_missing_or_reset_anchor_beside_records_is_data_loss() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let acknowledged = append_then_kill(dir.path());
    let anchor_path = dir.path().join("anchor");
    let saved = std::fs::read(&anchor_path).unwrap();

    std::fs::remove_file(&anchor_path).unwrap();
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::AnchorLost { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("anchor is missing")
            && message.contains(&format!("records up to {acknowledged}")),
        "{message}"
    );
    assert!(!anchor_path.exists(), "a refused open recreates nothing");

    // Reset: zeros in place of the anchor.
    std::fs::write(&anchor_path, vec![0u8; anchor::FILE_BYTES]).unwrap();
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::AnchorLost { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");

    // The saved anchor makes the folder whole again.
    std::fs::write(&anchor_path, &saved).unwrap();
    let history = History::<Step>::open(dir.path()).unwrap();
    assert_eq!(history.head().seq, acknowledged);
}

#[test]
fn an_anchor_older_than_the_snapshot_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 10)).unwrap();
    let state = history.replay(Steps::default()).unwrap();
    history.take_snapshot(&state).unwrap();
    history.close().unwrap();
    // An anchor of a fresh, empty history put in place of the real one.
    std::fs::remove_file(dir.path().join("anchor")).unwrap();
    AnchorFile::create(&dir.path().join("anchor"), &Anchor::settled(Head::EMPTY)).unwrap();
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::AnchorLost { .. }), "{err}");
    assert!(err.to_string().contains("snapshot at record 10"), "{err}");
}

/// Writes an anchor that says a batch `head.seq + 1 ..= head.seq + 3` was being written
/// after `acked`, by a machine boot `boot`.
fn forge_pending_anchor(dir: &Path, acked: Head, boot: [u8; 16]) {
    let path = dir.join("anchor");
    std::fs::remove_file(&path).unwrap();
    let anchor = Anchor {
        acked,
        head: Head {
            seq: acked.seq + 3,
            hash: ChainHash([9; 32]),
        },
        boot,
    };
    AnchorFile::create(&path, &anchor).unwrap();
}

#[test]
fn a_batch_cut_by_a_machine_stop_between_the_two_fsyncs_is_not_called_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 10)).unwrap();
    let head = history.head();
    drop(history);
    let another_boot = [0xab; 16];
    assert_ne!(another_boot, anchor::current_boot_id());

    // After a reboot, records ending exactly where the pending batch began: the machine
    // stopped before that batch was durable, so it was never acknowledged.
    forge_pending_anchor(dir.path(), head, another_boot);
    let mut history = History::<Step>::open(dir.path()).unwrap();
    assert_eq!(history.head(), head);
    // The next batch reuses those numbers, and the anchor follows.
    history.append_batch(&steps(11, 2)).unwrap();
    drop(history);

    // In the same boot the page cache survived a process kill, so the same picture
    // means the database lost an acknowledged batch.
    let head = Head {
        seq: 12,
        ..History::<Step>::open(dir.path()).unwrap().head()
    };
    forge_pending_anchor(dir.path(), head, anchor::current_boot_id());
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::DataLoss {
                anchor_seq: 15,
                found_seq: 12
            }
        ),
        "{err}"
    );

    // After a reboot, records shorter than the acknowledged part are data loss.
    let acked_beyond = Head {
        seq: 13,
        hash: ChainHash([1; 32]),
    };
    forge_pending_anchor(dir.path(), acked_beyond, another_boot);
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::DataLoss {
                anchor_seq: 16,
                found_seq: 12
            }
        ),
        "{err}"
    );
}

#[test]
fn a_failed_snapshot_leaves_the_history_writable_and_a_later_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 5)).unwrap();
    // The blob folder is replaced by a file: storing the snapshot's state fails.
    let blobs = dir.path().join("blobs");
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a folder").unwrap();
    let state = history.replay(Steps::default()).unwrap();
    let err = history.take_snapshot(&state).unwrap_err();
    assert!(err.to_string().contains("snapshot at record 5"), "{err}");
    assert!(!history.is_poisoned(), "a failed snapshot poisons nothing");
    history.append_batch(&steps(6, 5)).unwrap();

    std::fs::remove_file(&blobs).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    let state = history.replay(Steps::default()).unwrap();
    let snapshot = history.take_snapshot(&state).unwrap();
    assert_eq!(snapshot.seq, 10);
    history.append_batch(&steps(11, 1)).unwrap();
    history.close().unwrap();

    let history = History::<Step>::open(dir.path()).unwrap();
    let recovered = history.recover(Steps::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(10));
    assert_eq!(recovered.replayed, 1);
}

#[test]
fn a_second_writer_on_a_shared_memory_store_cannot_append() {
    let storage = MemoryStorage::new();
    let mut first = History::<Step>::in_memory(storage.clone()).unwrap();
    let mut second = History::<Step>::in_memory(storage.clone()).unwrap();
    first.append_batch(&steps(1, 3)).unwrap();
    let err = second.append_batch(&steps(1, 2)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::HeadMoved {
                found: Head { seq: 3, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("another writer appended"), "{err}");
    // Nothing of the refused batch was written: the first writer's records stand.
    let events: Vec<Step> = History::<Step>::in_memory(storage)
        .unwrap()
        .records_from(1)
        .map(|record| record.unwrap().event)
        .collect();
    assert_eq!(events, steps(1, 3));
    first.append_batch(&steps(4, 1)).unwrap();
}

#[test]
fn both_stores_refuse_an_append_on_another_head() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStorage::open(dir.path(), SledOptions::default()).unwrap();
    for mut store in [
        Box::new(MemoryStorage::new()) as Box<dyn Storage>,
        Box::new(sled),
    ] {
        let one = record::encode(1, fedrun::history::GENESIS_HASH, &steps(1, 1)[0]).unwrap();
        let head = store.append(Head::EMPTY, &[(1, one.clone())]).unwrap();
        assert_eq!(head.seq, 1);
        assert_eq!(head.hash, ChainHash::of(&one));
        // Building on the empty head again: refused, nothing written.
        let err = store.append(Head::EMPTY, &[(1, one.clone())]).unwrap_err();
        assert!(
            matches!(&err, StorageError::HeadMoved { expected, found }
                if **expected == Head::EMPTY && **found == head),
            "{err}"
        );
        let two = record::encode(2, head.hash, &steps(2, 1)[0]).unwrap();
        let stale = Head {
            seq: 1,
            hash: ChainHash([3; 32]),
        };
        let err = store.append(stale, &[(2, two.clone())]).unwrap_err();
        assert!(matches!(err, StorageError::HeadMoved { .. }), "{err}");
        assert_eq!(store.last().unwrap().map(|(seq, _)| seq), Some(1));
        store.append(head, &[(2, two)]).unwrap();
    }
}
