//! Group commit: admin requests that arrive while a batch is being made durable all join
//! the next append, and each is answered only once that append has returned. The batches
//! are counted where they are written (a store that notes every `append` call and can hold
//! one back), not from the engine's own counters.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

mod engine_support;

use bytes::Bytes;
use engine_support::{identity, wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{AdminAnswer, Server, ServerConfig};
use fedrun::history::snapshot::SnapshotRecord;
use fedrun::history::storage::RecordIter;
use fedrun::history::{Anchor, Head, History, MemoryStorage, Storage, StorageError};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, EventKind, Origin, Role, SubmitSignature,
};
use tokio::sync::oneshot;

#[derive(Default)]
struct GateState {
    /// Appends wait while this is set.
    closed: bool,
    /// Appends waiting at the gate now.
    waiting: usize,
    /// Every append that reached the store: its first sequence number and record count.
    appends: Vec<(u64, usize)>,
}

/// A gate in front of a memory store: while closed, `append` waits on the history thread.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

impl Gate {
    fn set_closed(&self, closed: bool) {
        let (state, changed) = &*self.0;
        state.lock().expect("not poisoned").closed = closed;
        changed.notify_all();
    }

    /// Waits (at most [`BOUND`]) until `pred` holds of the gate's state.
    fn wait_until(&self, what: &str, pred: impl Fn(&GateState) -> bool) {
        let (state, changed) = &*self.0;
        let guard = state.lock().expect("not poisoned");
        let (guard, timeout) = tokio::task::block_in_place(|| {
            changed
                .wait_timeout_while(guard, BOUND, |s| !pred(s))
                .expect("not poisoned")
        });
        assert!(
            !timeout.timed_out() || pred(&guard),
            "timed out waiting for {what}"
        );
    }

    fn appends(&self) -> Vec<(u64, usize)> {
        self.0 .0.lock().expect("not poisoned").appends.clone()
    }
}

struct GatedStorage {
    inner: MemoryStorage,
    gate: Gate,
}

impl Storage for GatedStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        {
            let (state, changed) = &*self.gate.0;
            let mut guard = state.lock().expect("not poisoned");
            guard.waiting += 1;
            changed.notify_all();
            let mut guard = changed
                .wait_while(guard, |s| s.closed)
                .expect("not poisoned");
            guard.waiting -= 1;
            if let Some((first, _)) = records.first() {
                guard.appends.push((*first, records.len()));
            }
        }
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
        self.inner.save_snapshot(record, state)
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

fn submit(n: usize) -> AdminRequest {
    AdminRequest::SubmitJob {
        meta: JobMeta {
            name: format!("job-{n}"),
            deploy_map: vec![AppTargets {
                app: "app".into(),
                targets: vec!["server".into(), "site-1".into()],
            }],
            min_clients: 1,
            mandatory_clients: vec![],
            resource_spec: Default::default(),
        },
        package: BlobHash([7; 32]),
        signature: SubmitSignature::NoSigner,
    }
}

fn origin() -> Origin {
    Origin {
        identity: identity(Role::ProjectAdmin),
        request_id: None,
    }
}

async fn started(dir: &Path, capacity: usize) -> (Server, Gate, MemoryStorage) {
    let gate = Gate::default();
    let memory = MemoryStorage::new();
    let storage = GatedStorage {
        inner: memory.clone(),
        gate: gate.clone(),
    };
    let history = History::<Event>::from_storage(Box::new(storage), dir).expect("history opens");
    let mut config = ServerConfig::new(dir);
    config.queue_capacity = capacity;
    let server = Server::start_on(config, history, Arc::new(WallClock)).expect("server starts");
    wait_for(&server, "ServerStarted", |s| s.last_seq >= 1).await;
    (server, gate, memory)
}

async fn answer(rx: oneshot::Receiver<AdminAnswer>) -> JobId {
    match tokio::time::timeout(BOUND, rx).await {
        Ok(Ok(Ok(Ok(Answer::Submitted { job_id })))) => job_id,
        other => panic!("submit not accepted in time: {other:?}"),
    }
}

/// The sequence number of each job's `JobSubmitted`, read back from the store.
fn submitted_at(memory: &MemoryStorage, jobs: &[JobId]) -> Vec<u64> {
    let history = History::<Event>::for_audit(Box::new(memory.clone())).expect("reads");
    let mut found = std::collections::BTreeMap::new();
    for record in history.records_from(1) {
        let event = record.expect("a stored record decodes").event;
        if let EventKind::JobSubmitted { job_id, .. } = event.kind {
            found.insert(job_id, event.seq);
        }
    }
    jobs.iter()
        .map(|job| *found.get(job).expect("every accepted job is stored"))
        .collect()
}

/// Requests queued while one batch is held at the store make one append between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_behind_a_flush_share_the_next_append() {
    const WAITING: usize = 300;
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, gate, memory) = started(dir.path(), WAITING + 16).await;

    gate.set_closed(true);
    let first = server.try_request(origin(), submit(0)).expect("queued");
    gate.wait_until("the first submit's append at the store", |s| s.waiting == 1);
    let before = gate.appends().len();
    let stored_before = memory.last().expect("reads").map_or(0, |(seq, _)| seq);
    // Each of these is in the engine's queue once `try_request` returns.
    let mut waiting: Vec<_> = (1..=WAITING)
        .map(|n| server.try_request(origin(), submit(n)).expect("queued"))
        .collect();
    gate.set_closed(false);

    let first_job = answer(first).await;
    // The first answer of the waiting requests comes only when the append holding them has
    // returned: the store holds every one of them by then.
    let next = waiting.remove(0);
    let next_job = answer(next).await;
    let stored = memory.last().expect("reads").map_or(0, |(seq, _)| seq);
    assert!(
        stored >= stored_before + 1 + WAITING as u64,
        "answered before its batch was stored: {stored} records, {stored_before} before"
    );
    let mut jobs = vec![next_job];
    for rx in waiting {
        jobs.push(answer(rx).await);
    }

    let appends = gate.appends()[before..].to_vec();
    let at = submitted_at(&memory, &[first_job]);
    let held = appends[0];
    assert!(
        held.0 <= at[0] && at[0] < held.0 + held.1 as u64,
        "the held append {held:?} holds the first submit (record {})",
        at[0]
    );
    let seqs = submitted_at(&memory, &jobs);
    let lo = *seqs.iter().min().expect("some");
    let hi = *seqs.iter().max().expect("some");
    let holding: Vec<_> = appends
        .iter()
        .filter(|(first, len)| *first <= hi && lo < first + *len as u64)
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "the {WAITING} waiting submits were written in {} appends: {appends:?}",
        holding.len()
    );
    assert_ne!(
        *holding[0], held,
        "none of them was decided into the held batch"
    );
    let (first, len) = *holding[0];
    assert!(
        first <= lo && hi < first + len as u64,
        "all {WAITING} in the one append {:?} (records {lo}..={hi})",
        holding[0]
    );
    server.shutdown().await;
}
