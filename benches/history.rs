//! Benchmarks of the durable history: one durable append against a raw write + fsync
//! of the same size on the same disk, batches of 64, replay of a million events, and
//! start-up from a snapshot plus a tail.
//!
//! Run: `cargo bench --bench history`; the groups of the README's table:
//! `cargo bench --bench history -- "replay|durable|batch"`; only the append groups, briefly:
//! `cargo bench --bench history -- 'durable_append_one|batch_of_64' --warm-up-time 1
//! --measurement-time 3`. Sizes are kept small enough that the whole run
//! takes a few minutes; set `FEDRUN_BENCH_REPLAY_EVENTS` to change the replay size.

use fedrun::job::flat_map::FlatMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput,
};
use fedrun::history::events::EventHistory;
use fedrun::history::record;
use fedrun::history::storage::RecordBytes;
use fedrun::history::{ChainHash, DataFileSync, MemoryStorage, SledOptions};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, Identity, Role, ScheduleOutcome, State, Timestamp,
};

fn job(n: u64) -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x1000_0000_0000_4000_8000_0000_0000_0000 + u128::from(n),
    ))
}

fn envelope(seq: u64, actor: Actor, kind: EventKind) -> Event {
    Event {
        seq,
        at: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
        actor,
        request_id: None,
        boot_id: BootId(uuid::Uuid::from_u128(7)),
        kind,
    }
}

/// A `JobSubmitted` of job `n` (about 500 bytes encoded: meta, package hash, submitter).
fn submitted(seq: u64, n: u64) -> Event {
    let alice = Identity {
        name: "alice".into(),
        org: "org-a".into(),
        role: Role::Lead,
    };
    envelope(
        seq,
        Actor::admin(&alice),
        EventKind::JobSubmitted {
            job_id: job(n),
            meta: JobMeta {
                name: format!("job-{n}"),
                deploy_map: vec![AppTargets {
                    app: "app".into(),
                    targets: vec!["server".into(), "site-1".into(), "site-2".into()],
                }],
                min_clients: 2,
                mandatory_clients: vec![],
                resource_spec: FlatMap::from([(
                    "@default".to_string(),
                    FlatMap::from([("num_of_gpus".to_string(), 1.0)]),
                )]),
            },
            package: BlobHash::from(blake3::hash(&n.to_le_bytes())),
            submitter: alice,
            signer: None,
            submit_time: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
            cloned_from: None,
        },
    )
}

/// A `ScheduleAttempted` of job `n` that found no resources (about 200 bytes encoded).
fn attempted(seq: u64, n: u64) -> Event {
    envelope(
        seq,
        Actor::Scheduler,
        EventKind::ScheduleAttempted {
            job_id: job(n),
            outcome: ScheduleOutcome::NoResources {
                reason: "connected sites (1) < min_clients (2)".into(),
            },
        },
    )
}

/// The event at `seq` of a legal history: each job is submitted, then tried three times.
fn event_at(seq: u64) -> Event {
    let n = (seq - 1) / 4;
    if (seq - 1).is_multiple_of(4) {
        submitted(seq, n)
    } else {
        attempted(seq, n)
    }
}

fn encoded_size() -> usize {
    fedrun::history::record::encode(1, fedrun::history::GENESIS_HASH, &event_at(1))
        .expect("a bench event encodes")
        .len()
}

fn durable_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("durable_append_one");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6));

    // Includes the per-batch anchor: sled's flush, then the anchor's overwrite, then the
    // data file's and the anchor's fdatasyncs at once.
    let mut history = EventHistory::open(&dir.path().join("h")).expect("open");
    group.bench_function("history_append_batch_of_1_with_anchor", |b| {
        b.iter(|| {
            let seq = history.next_seq();
            history.append_batch(&[event_at(seq)]).expect("append");
        })
    });

    // Where its time goes, part by part (README "History benchmarks"): the same append
    // without the data file's fdatasync (sled's flush, the anchor's overwrite and its
    // fdatasync remain), and in memory (encoding, hashing and the head check only).
    let options = SledOptions {
        create: true,
        sync: Box::new(NoSync),
        ..SledOptions::default()
    };
    let mut history = EventHistory::open_with(&dir.path().join("h-nosync"), options).expect("open");
    group.bench_function("history_append_batch_of_1_without_data_fdatasync", |b| {
        b.iter(|| {
            let seq = history.next_seq();
            history.append_batch(&[event_at(seq)]).expect("append");
        })
    });
    let mut history = EventHistory::in_memory(MemoryStorage::new()).expect("open");
    group.bench_function("history_append_batch_of_1_in_memory", |b| {
        b.iter(|| {
            let seq = history.next_seq();
            history.append_batch(&[event_at(seq)]).expect("append");
        })
    });

    let size = encoded_size();
    // sled on its own, configured as the history's, with a value of the record's size:
    // its insert and its flush (which writes the buffer and waits with
    // `sync_file_range` for the write-back), then the same plus the data file's
    // fdatasync.
    let sled_dir = dir.path().join("sled-alone");
    let db = sled::Config::new()
        .path(&sled_dir)
        .segment_size(fedrun::history::SLED_SEGMENT_SIZE)
        .flush_every_ms(None)
        .open()
        .expect("sled opens");
    let value = vec![0x5au8; size];
    let mut key = 0u64;
    // One record-sized value under the next key, then sled's flush.
    let mut insert_and_flush = || {
        key += 1;
        db.insert(key.to_be_bytes(), value.as_slice())
            .expect("insert");
        db.flush().expect("flush");
    };
    group.bench_function("sled_insert_and_flush_same_size", |b| {
        b.iter(&mut insert_and_flush)
    });
    let sled_data = OpenOptions::new()
        .read(true)
        .open(sled_dir.join("db"))
        .expect("sled's data file");
    group.bench_function("sled_insert_flush_and_fdatasync_same_size", |b| {
        b.iter(|| {
            insert_and_flush();
            sled_data.sync_data().expect("fdatasync");
        })
    });
    drop(db);

    let path = dir.path().join("raw");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("raw file");
    let payload = vec![0x5au8; size];
    group.bench_function("raw_append_and_fdatasync_same_size", |b| {
        b.iter(|| {
            file.write_all(&payload).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });

    // The same write over a preallocated file, as sled writes into its preallocated
    // segments: fdatasync then has no file size to commit, only the data.
    let path = dir.path().join("raw-preallocated");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw file");
    let slots = 4096u64;
    file.set_len(slots * size as u64).expect("preallocate");
    file.write_all(&vec![0u8; slots as usize * size])
        .expect("fill");
    file.sync_all().expect("fsync");
    let mut slot = 0u64;
    group.bench_function("raw_overwrite_and_fdatasync_same_size", |b| {
        b.iter(|| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&payload, (slot % slots) * size as u64)
                .expect("write");
            file.sync_data().expect("fdatasync");
            slot += 1;
        })
    });

    // The write-back sled's flush waits for, without the device cache flush: the same
    // overwrite, then `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` as sled calls it.
    group.bench_function("raw_overwrite_and_sync_file_range_same_size", |b| {
        b.iter(|| {
            use std::os::unix::fs::FileExt;
            use std::os::unix::io::AsRawFd;
            let at = (slot % slots) * size as u64;
            file.write_all_at(&payload, at).expect("write");
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: a valid open descriptor and a range inside the file.
            let done =
                unsafe { libc::sync_file_range(file.as_raw_fd(), at as i64, size as i64, flags) };
            assert_eq!(
                done,
                0,
                "sync_file_range: {}",
                std::io::Error::last_os_error()
            );
            slot += 1;
        })
    });

    // The like-for-like floor of a durable append with its anchor: the same-size
    // overwrite of the data file and a 512-byte overwrite of a 4 KiB anchor file, their
    // two fdatasyncs on two threads at once, as `append_batch` does.
    let anchor_path = dir.path().join("raw-anchor");
    let anchor = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&anchor_path)
        .expect("raw anchor");
    anchor.set_len(0).expect("truncate");
    {
        use std::os::unix::fs::FileExt;
        anchor.write_all_at(&[0u8; 4096], 0).expect("fill");
    }
    anchor.sync_all().expect("fsync");
    let data = file.try_clone().expect("clone");
    let (request, requests) = std::sync::mpsc::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let syncer = std::thread::spawn(move || {
        for () in requests {
            data.sync_data().expect("fdatasync");
            done_tx.send(()).expect("bench waits");
        }
    });
    group.bench_function(
        "raw_overwrite_plus_anchor_overwrite_two_fdatasyncs_overlapped",
        |b| {
            b.iter(|| {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&payload, (slot % slots) * size as u64)
                    .expect("write");
                anchor
                    .write_all_at(&[slot as u8; 512], (slot % 2) * 512)
                    .expect("write anchor");
                request.send(()).expect("sync thread runs");
                anchor.sync_data().expect("fdatasync anchor");
                done.recv().expect("sync thread answers");
                slot += 1;
            })
        },
    );
    drop(request);
    syncer.join().expect("sync thread ends");
    group.finish();
}

/// A sync seam that does nothing: measures what a batch costs before the fsync.
struct NoSync;

impl DataFileSync for NoSync {
    fn sync(&mut self, _file: &std::fs::File, _path: &std::path::Path) -> std::io::Result<()> {
        Ok(())
    }
}

/// Times `append_batch` of `size` events on `history`, building the events untimed.
fn bench_batches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    history: &mut EventHistory,
    size: u64,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let first = history.next_seq();
                let events: Vec<Event> = (first..first + size).map(event_at).collect();
                let start = Instant::now();
                history.append_batch(&events).expect("append");
                spent += start.elapsed();
            }
            spent
        })
    });
}

fn batches_of_64(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_of_64");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(64));

    // Durable: insert, sled's flush, fdatasync of the data file.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = EventHistory::open(dir.path()).expect("open");
    bench_batches(&mut group, "append_batch_64_durable", &mut history, 64);

    // Where the time goes: without the fdatasync (sled's flush still writes and waits
    // for its sync_file_range), and in memory (encoding and hashing only).
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SledOptions {
        create: true,
        sync: Box::new(NoSync),
        ..SledOptions::default()
    };
    let mut history = EventHistory::open_with(dir.path(), options).expect("open");
    bench_batches(
        &mut group,
        "append_batch_64_without_fdatasync",
        &mut history,
        64,
    );

    let mut history = EventHistory::in_memory(MemoryStorage::new()).expect("open");
    bench_batches(&mut group, "append_batch_64_in_memory", &mut history, 64);
    group.finish();

    // Group commit under load: the engine appends every waiting input at once, so
    // batches grow while the disk is busy flushing.
    let mut group = c.benchmark_group("batch_of_256");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(256));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = EventHistory::open(dir.path()).expect("open");
    bench_batches(&mut group, "append_batch_256_durable", &mut history, 256);
    group.finish();
}

/// Builds a durable history of `events` events (batches of 1,000) in a new folder.
fn build_replay_history(events: u64) -> (tempfile::TempDir, EventHistory) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = EventHistory::open(dir.path()).expect("open");
    let build = Instant::now();
    let mut seq = 1;
    while seq <= events {
        let end = (seq + 1000).min(events + 1);
        let chunk: Vec<Event> = (seq..end).map(event_at).collect();
        history.append_batch(&chunk).expect("append");
        seq = end;
    }
    eprintln!(
        "built a {events}-event history in {:.1} s",
        build.elapsed().as_secs_f64()
    );
    (dir, history)
}

/// Replay of a long history, and beside it the parts it is made of, so the floor each
/// sets is visible: sled's iteration alone, the decoding of every record alone and the
/// hashing of every record alone (both on bytes already read), and the same replay on
/// one thread (check, decode and fold in one loop).
fn replay(c: &mut Criterion) {
    let events: u64 = std::env::var("FEDRUN_BENCH_REPLAY_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let mut group = c.benchmark_group("replay");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(events));
    // The history is built on the first call of a selected benchmark (so `cargo bench --
    // durable` skips the long build), and kept for the others.
    let mut built: Option<(tempfile::TempDir, EventHistory)> = None;
    let mut records: Option<Vec<RecordBytes>> = None;
    group.bench_function(format!("replay_{events}_events"), |b| {
        let (_, history) = built.get_or_insert_with(|| build_replay_history(events));
        // A server keeps the state it rebuilt: dropping it is not timed.
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let state = history.replay(State::new()).expect("replay");
                total += began.elapsed();
                assert_eq!(state.jobs.len() as u64, events.div_ceil(4));
            }
            total
        })
    });
    group.bench_function(format!("replay_{events}_events_single_thread"), |b| {
        let (_, history) = built.get_or_insert_with(|| build_replay_history(events));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let mut state = State::new();
                // As `replay` folds: the index built once, at the end.
                state.begin_replay();
                for record in history.records_from(1) {
                    let record = record.expect("record");
                    state.apply_owned(record.event).expect("legal");
                }
                state.end_replay();
                total += began.elapsed();
                assert_eq!(state.jobs.len() as u64, events.div_ceil(4));
            }
            total
        })
    });
    group.bench_function(format!("sled_iteration_{events}_records"), |b| {
        let (_, history) = built.get_or_insert_with(|| build_replay_history(events));
        b.iter(|| {
            let mut bytes = 0usize;
            for item in history.storage().read_shared_from(1) {
                bytes += item.expect("record").1.len();
            }
            black_box(bytes)
        })
    });
    group.bench_function(format!("decode_only_{events}_records"), |b| {
        let records = records.get_or_insert_with(|| {
            let (_, history) = built.get_or_insert_with(|| build_replay_history(events));
            read_all(history)
        });
        b.iter(|| {
            for bytes in records.iter() {
                black_box(record::decode::<Event>(bytes).expect("decodes"));
            }
        })
    });
    group.bench_function(format!("hash_only_{events}_records"), |b| {
        let records = records.get_or_insert_with(|| {
            let (_, history) = built.get_or_insert_with(|| build_replay_history(events));
            read_all(history)
        });
        b.iter(|| {
            for bytes in records.iter() {
                black_box(ChainHash::of(bytes));
            }
        })
    });
    group.finish();
}

/// Every record's bytes, as sled shares them.
fn read_all(history: &EventHistory) -> Vec<RecordBytes> {
    history
        .storage()
        .read_shared_from(1)
        .map(|item| item.expect("record").1)
        .collect()
}

/// A data folder holding a snapshot of `jobs` submitted jobs plus a tail of `jobs` more
/// events; prints once where start-up's time goes.
fn build_startup_history(jobs: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = EventHistory::open(dir.path()).expect("open");
    let mut state = State::new();
    let mut seq = 1;
    for chunk in 0..jobs / 1000 {
        let events: Vec<Event> = (0..1000)
            .map(|i| submitted(seq + i, chunk * 1000 + i))
            .collect();
        for event in &events {
            state.apply(event);
        }
        seq += 1000;
        history.append_batch(&events).expect("append");
    }
    history.take_snapshot(&state).expect("snapshot");
    // A tail of 10,000 events: every job is tried once.
    for chunk in 0..jobs / 1000 {
        let events: Vec<Event> = (0..1000)
            .map(|i| attempted(seq + i, chunk * 1000 + i))
            .collect();
        seq += 1000;
        history.append_batch(&events).expect("append");
    }
    history.close().expect("close");

    // Once, where the time goes: opening sled, reading and hashing the snapshot
    // blob, decoding the state, and the whole of start-up.
    let start = Instant::now();
    let history = EventHistory::open(dir.path()).expect("open");
    let opened = start.elapsed();
    let start = Instant::now();
    let (_, bytes) = history
        .storage()
        .load_snapshot()
        .expect("snapshot")
        .expect("a snapshot exists");
    let loaded = start.elapsed();
    let start = Instant::now();
    let _: State = fedrun::history::snapshot::decode_state(&bytes).expect("decode");
    let decoded = start.elapsed();
    let start = Instant::now();
    history.recover(State::new()).expect("recover");
    let recovered = start.elapsed();
    drop(history);
    eprintln!(
        "start-up parts: sled open {opened:?}, snapshot blob read+hash {loaded:?} ({} bytes), \
         state decode {decoded:?}, recover (load+decode+10k tail) {recovered:?}",
        bytes.len()
    );
    dir
}

fn startup(c: &mut Criterion) {
    let jobs = 10_000u64;
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    let mut built: Option<tempfile::TempDir> = None;
    group.bench_function("open_snapshot_10k_jobs_plus_10k_tail", |b| {
        let dir = built.get_or_insert_with(|| build_startup_history(jobs));
        // Open and recover are timed; closing the history and dropping the state are not
        // (a server keeps both).
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let history = EventHistory::open(dir.path()).expect("open");
                let recovered = history.recover(State::new()).expect("recover");
                total += began.elapsed();
                assert_eq!(recovered.replayed, jobs);
                assert_eq!(recovered.state.jobs.len() as u64, jobs);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, durable_append, batches_of_64, replay, startup);
criterion_main!(benches);

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
