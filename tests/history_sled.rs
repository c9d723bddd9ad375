//! The durable history on sled: fsync seam, poisoning, folder lock, format versions.
mod history_support;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fedrun::history::{AppendError, DataFileSync, History, OpenError, SledOptions, StorageError};
use history_support::{steps, Step, Steps};

/// What happened, in order: syncs of a file, and acknowledgements of appends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Happened {
    Synced(String),
    Acknowledged(u64),
}

/// A sync seam that records each sync (then really syncs), and fails from call
/// `fail_from` on when set.
struct RecordingSync {
    log: Arc<Mutex<Vec<Happened>>>,
    calls: u64,
    fail_from: Option<u64>,
}

impl DataFileSync for RecordingSync {
    fn sync(&mut self, file: &File, path: &Path) -> std::io::Result<()> {
        self.calls += 1;
        if self.fail_from.is_some_and(|from| self.calls >= from) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        file.sync_data()?;
        let name = path
            .strip_prefix(path.parent().and_then(Path::parent).unwrap_or(path))
            .unwrap_or(path)
            .display()
            .to_string();
        self.log.lock().unwrap().push(Happened::Synced(name));
        Ok(())
    }
}

fn open_recording(
    dir: &Path,
    fail_from: Option<u64>,
) -> (History<Step>, Arc<Mutex<Vec<Happened>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let options = SledOptions {
        create: true,
        sync: Box::new(RecordingSync {
            log: log.clone(),
            calls: 0,
            fail_from,
        }),
        ..SledOptions::default()
    };
    (History::open_with(dir, options).unwrap(), log)
}

#[test]
fn every_acknowledgement_follows_an_fsync_of_sleds_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut history, log) = open_recording(dir.path(), None);
    log.lock().unwrap().clear(); // Creating the database syncs once; count appends only.
    let mut next = 1;
    for size in [1u64, 5, 64, 2, 17] {
        let head = history.append_batch(&steps(next, size)).unwrap();
        next += size;
        log.lock().unwrap().push(Happened::Acknowledged(head.seq));
    }
    let log = log.lock().unwrap().clone();
    let mut expected = Vec::new();
    for seq in [1u64, 6, 70, 72, 89] {
        expected.push(Happened::Synced("history/db".to_string()));
        expected.push(Happened::Acknowledged(seq));
    }
    assert_eq!(log, expected);
}

#[test]
fn a_failed_fsync_poisons_the_history() {
    let dir = tempfile::tempdir().unwrap();
    // Call 1 is the sync at creation, call 2 the one that settles the anchor at open,
    // call 3 the first append; call 4 fails.
    let (mut history, _log) = open_recording(dir.path(), Some(4));
    history.append_batch(&steps(1, 3)).unwrap();
    let err = history.append_batch(&steps(4, 3)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::Storage {
                first_seq: 4,
                last_seq: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    assert!(history.is_poisoned());
    assert_eq!(history.head().seq, 3, "a failed batch is not acknowledged");
    let again = history.append_batch(&steps(4, 1)).unwrap_err();
    assert!(matches!(again, AppendError::Poisoned { .. }), "{again}");
    assert!(again.to_string().contains("refuses writes"), "{again}");
    let snapshot = history.take_snapshot(&Steps::default()).unwrap_err();
    assert!(
        snapshot.to_string().contains("refuses writes"),
        "{snapshot}"
    );
    let close = history.close().unwrap_err();
    assert!(matches!(close, StorageError::Poisoned { .. }), "{close}");
}

#[test]
fn events_survive_a_reopen_with_their_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 100)).unwrap();
    let head = history.head();
    history.close().unwrap();
    let history = History::<Step>::open(dir.path()).unwrap();
    assert_eq!(history.head(), head);
    let report = history.verify(Steps::default());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_ok, 100);
    assert_eq!(report.anchor, Some(head));
}

#[test]
fn a_second_opener_is_told_a_server_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let _server = History::<Step>::open(dir.path()).unwrap();
    let options = SledOptions {
        create: false,
        lock_wait: std::time::Duration::from_millis(100),
        ..SledOptions::default()
    };
    let err = History::<Step>::open_with(dir.path(), options).unwrap_err();
    assert!(matches!(err, OpenError::ServerRunning { .. }), "{err}");
    assert!(
        err.to_string().contains("a fedrun server is running on"),
        "{err}"
    );
}

/// sled lets go of its own lock on its files from a background thread, a moment after
/// the last handle is dropped: an open right after a tool (or an earlier database of the
/// same process) let go waits for it within the lock wait instead of saying a server runs.
#[test]
fn an_open_waits_for_sleds_own_lock_to_be_let_go() {
    let dir = tempfile::tempdir().unwrap();
    History::<Step>::open(dir.path()).unwrap().close().unwrap();
    for _ in 0..20 {
        let raw = history_support::raw_sled(dir.path());
        let opener = {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || History::<Step>::open(&path).map(|history| history.close()))
        };
        drop(raw);
        let opened = opener.join().expect("the opener ran");
        assert!(
            matches!(opened, Ok(Ok(()))),
            "the open gave up while sled's lock was being let go: {opened:?}"
        );
    }
}

#[test]
fn offline_open_of_a_folder_without_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = SledOptions {
        create: false,
        ..SledOptions::default()
    };
    let err = History::<Step>::open_with(dir.path(), options).unwrap_err();
    assert!(matches!(err, OpenError::NotFound { .. }), "{err}");
    assert!(!dir.path().join("history").exists(), "nothing was created");
}

#[test]
fn a_database_needing_a_newer_reader_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    History::<Step>::open(dir.path()).unwrap().close().unwrap();
    {
        let db = history_support::raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("min_reader_version", &7u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::TooNew {
                min_reader: 7,
                reader: fedrun::history::record::READER_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade fedrun"), "{err}");
}
