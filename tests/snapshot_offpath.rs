//! A snapshot's state is encoded and written off the history thread: an append is
//! acknowledged while a snapshot is being written, and a crash in the middle of one loses
//! nothing (start-up uses the previous snapshot, or replays everything).
//!
//! The store here holds its snapshot blobs in a sink whose `store` blocks on a gate the
//! test opens, so "a snapshot is being written" is a state the test observes, not a
//! duration it guesses.

mod engine_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use engine_support::{submit_ok, wait_for, BOUND};
use fedrun::blobs::BlobHash;
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::history::snapshot::{SnapshotRecord, SnapshotSink};
use fedrun::history::storage::RecordIter;
use fedrun::history::{Anchor, Head, History, MemoryStorage, Storage, StorageError};
use fedrun::lifecycle::{Event, State};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// What the test sees of the sink and the store.
struct Probe {
    /// A sink began storing the state of a snapshot covering this record.
    entered: Receiver<BlobHash>,
    /// A snapshot record was installed.
    installed: Receiver<SnapshotRecord>,
    /// Opens the gate for one blocked store; dropping it makes every blocked and later
    /// held store fail (the process "died" mid-write).
    release: Option<Sender<()>>,
}

/// A memory store whose snapshot sink blocks while `hold` is set, until released.
#[derive(Clone)]
struct GatedStorage {
    inner: MemoryStorage,
    /// The blobs sinks stored (a blob store of its own, beside the records).
    blobs: Arc<Mutex<BTreeMap<BlobHash, Vec<u8>>>>,
    hold: Arc<AtomicBool>,
    entered: Sender<BlobHash>,
    installed: Sender<SnapshotRecord>,
    release: Arc<Mutex<Receiver<()>>>,
}

fn gated(inner: MemoryStorage) -> (GatedStorage, Probe) {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (installed_tx, installed) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    (
        GatedStorage {
            inner,
            blobs: Arc::default(),
            hold: Arc::new(AtomicBool::new(false)),
            entered: entered_tx,
            installed: installed_tx,
            release: Arc::new(Mutex::new(release_rx)),
        },
        Probe {
            entered,
            installed,
            release: Some(release_tx),
        },
    )
}

struct GatedSink {
    storage: GatedStorage,
}

impl SnapshotSink for GatedSink {
    fn store(&mut self, hash: &BlobHash, state: &[u8]) -> Result<(), StorageError> {
        let _ = self.storage.entered.send(*hash);
        if self.storage.hold.load(Ordering::SeqCst) {
            let released = self.storage.release.lock().expect("not poisoned").recv();
            if released.is_err() {
                return Err(StorageError::Corrupt {
                    detail: "the process died while writing the snapshot (test)".into(),
                });
            }
        }
        self.storage
            .blobs
            .lock()
            .expect("not poisoned")
            .insert(*hash, state.to_vec());
        Ok(())
    }

    fn discard(&mut self, hash: &BlobHash) {
        self.storage
            .blobs
            .lock()
            .expect("not poisoned")
            .remove(hash);
    }
}

impl Storage for GatedStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        self.inner.append(expected, records)
    }
    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.read(seq)
    }
    fn read_from(&self, from: u64) -> RecordIter<'_> {
        self.inner.read_from(from)
    }
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        self.inner.last()
    }
    fn save_snapshot(&mut self, record: &SnapshotRecord, state: Bytes) -> Result<(), StorageError> {
        self.inner.save_snapshot(record, state)?;
        let _ = self.installed.send(record.clone());
        Ok(())
    }
    fn snapshot_sink(&self) -> Option<Box<dyn SnapshotSink>> {
        Some(Box::new(GatedSink {
            storage: self.clone(),
        }))
    }
    fn install_snapshot(&mut self, record: &SnapshotRecord) -> Result<(), StorageError> {
        let bytes = self
            .blobs
            .lock()
            .expect("not poisoned")
            .get(&record.state)
            .cloned()
            .ok_or_else(|| StorageError::Corrupt {
                detail: format!("no stored state {}", record.state),
            })?;
        self.save_snapshot(record, Bytes::from(bytes))
    }
    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, bytes::Bytes)>, StorageError> {
        self.inner.load_snapshot()
    }
    fn anchor(&self) -> Result<Option<Anchor>, StorageError> {
        self.inner.anchor()
    }
    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        self.inner.settle_anchor(head)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A server on `storage` that asks for a snapshot after every durable batch.
fn start(rt: &tokio::runtime::Runtime, storage: GatedStorage, dir: &Path) -> Server {
    let _guard = rt.enter();
    let history = History::<Event>::from_storage(Box::new(storage), dir).expect("history opens");
    let mut config = ServerConfig::new(dir);
    config.limits.snapshot_every_events = 1;
    Server::start_on(config, history, Arc::new(WallClock)).expect("server starts")
}

/// The state a full replay of `storage` gives, and what start-up recovers from it.
fn replayed_and_recovered(storage: &MemoryStorage) -> (State, State, Option<u64>) {
    let history = History::<Event>::for_audit(Box::new(storage.clone())).expect("opens");
    let full = history.replay(State::new()).expect("replays");
    let recovered = history.recover(State::new()).expect("recovers");
    (full, recovered.state, recovered.snapshot_seq)
}

#[test]
fn an_append_is_acknowledged_while_a_snapshot_is_being_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = MemoryStorage::default();
    let (storage, probe) = gated(memory.clone());
    storage.hold.store(true, Ordering::SeqCst);
    let hold = storage.hold.clone();
    let rt = runtime();
    let server = start(&rt, storage, dir.path());
    // The first batch (ServerStarted) asks for a snapshot; its sink blocks.
    probe
        .entered
        .recv_timeout(BOUND)
        .expect("a snapshot began within the bound");
    // While it is blocked, a submit is answered: its events are durable.
    let job = rt.block_on(submit_ok(&server, &examples().join("hello-complete")));
    let state = rt.block_on(wait_for(&server, "the job", |s| s.jobs.contains_key(&job)));
    assert!(
        memory.last().expect("reads").map(|(seq, _)| seq) >= Some(state.jobs[&job].submitted_seq),
        "the acknowledged submit is in the store"
    );
    // ...and the snapshot is still not installed: it was written off the history thread.
    assert!(probe.installed.try_recv().is_err());
    assert_eq!(memory.load_snapshot().expect("reads"), None);

    // Released, it is installed, naming the record it was taken at (ServerStarted).
    // Later snapshots are not held.
    hold.store(false, Ordering::SeqCst);
    probe
        .release
        .as_ref()
        .expect("held")
        .send(())
        .expect("the sink waits");
    let record = probe
        .installed
        .recv_timeout(BOUND)
        .expect("installed within the bound");
    assert!(record.seq < state.jobs[&job].submitted_seq);
    // Later snapshots are not held, so one of them may be installed by now: the store
    // names this one or a later one, never an earlier one or none.
    let (stored, _) = memory.load_snapshot().expect("reads").expect("a snapshot");
    assert!(
        stored.seq >= record.seq,
        "{stored:?} is older than {record:?}"
    );

    // Shut down cleanly: the final snapshot is taken.
    rt.block_on(async {
        tokio::time::timeout(BOUND, server.shutdown())
            .await
            .expect("shut down within the bound")
    });
    let (full, recovered, snapshot_seq) = replayed_and_recovered(&memory);
    assert_eq!(recovered, full);
    assert_eq!(snapshot_seq, Some(full.last_seq));
    assert!(full.jobs.contains_key(&job));
}

#[test]
fn a_crash_while_a_snapshot_is_written_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = MemoryStorage::default();
    // A first run ends cleanly, with a snapshot of its final state.
    let (storage, _first_probe) = gated(memory.clone());
    let rt = runtime();
    let server = start(&rt, storage, dir.path());
    let first_job = rt.block_on(submit_ok(&server, &examples().join("hello-complete")));
    rt.block_on(async {
        tokio::time::timeout(BOUND, server.shutdown())
            .await
            .expect("shut down within the bound")
    });
    drop(rt);
    let (first, _) = memory.load_snapshot().expect("reads").expect("a snapshot");

    // A second run: its first snapshot blocks mid-write, an append is acknowledged
    // meanwhile, and then the process dies.
    let (storage, mut probe) = gated(memory.clone());
    storage.hold.store(true, Ordering::SeqCst);
    let rt = runtime();
    let server = start(&rt, storage, dir.path());
    probe
        .entered
        .recv_timeout(BOUND)
        .expect("a snapshot began within the bound");
    let job = rt.block_on(submit_ok(&server, &examples().join("hello-complete")));
    let acked = rt.block_on(wait_for(&server, "the job", |s| s.jobs.contains_key(&job)));
    drop(server);
    drop(rt);
    // The blocked write never completes.
    drop(probe.release.take());

    let (full, recovered, snapshot_seq) = replayed_and_recovered(&memory);
    // Nothing acknowledged is lost, and start-up (the first run's snapshot + the tail)
    // agrees with a full replay.
    assert!(full.jobs.contains_key(&first_job) && full.jobs.contains_key(&job));
    assert!(full.last_seq >= acked.last_seq);
    assert_eq!(recovered, full);
    let (stored, _) = memory.load_snapshot().expect("reads").expect("a snapshot");
    assert_eq!(stored, first, "the interrupted snapshot was never named");
    assert_eq!(snapshot_seq, Some(first.seq));
    assert!(first.seq < full.last_seq);
    assert!(probe.installed.try_recv().is_err());
}
