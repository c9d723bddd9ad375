//! Helpers shared by the engine tests (`engine_node`, `engine_owner`, `engine_server`,
//! `engine_local`, `engine_blob_race`): a memory history store that can be told to fail,
//! admin inputs for the node, and waiting on a running server's published state.
//! Each test binary uses a part of it.
#![allow(dead_code)]

use bytes::Bytes;
use fedrun::lifecycle::SubmitSignature;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedrun::engine::node::{Input, ReplyToken};
use fedrun::engine::server::Server;
use fedrun::history::snapshot::SnapshotRecord;
use fedrun::history::storage::RecordIter;
use fedrun::history::{Anchor, Head, MemoryStorage, Storage, StorageError};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{AdminRequest, Answer, BlobHash, Identity, Origin, Role, RunPhase, State};

/// How long a test waits for anything before it fails.
pub const BOUND: Duration = Duration::from_secs(30);

/// A memory store that counts its successful batch writes, notes the thread each batch
/// is written on, and fails every batch write once `fail` is set.
#[derive(Clone, Default)]
pub struct TestStorage {
    pub inner: MemoryStorage,
    pub fail: Arc<AtomicBool>,
    pub writes: Arc<AtomicUsize>,
    pub threads: Arc<Mutex<Vec<String>>>,
}

impl Storage for TestStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        self.threads.lock().expect("not poisoned").push(thread);
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Corrupt {
                detail: "disk full (test)".into(),
            });
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
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

/// Alice of org `org`, with `role`.
pub fn identity(role: Role) -> Identity {
    Identity {
        name: "alice".into(),
        org: "org".into(),
        role,
    }
}

/// An admin request by a project admin, its idempotency key `request-{token}`.
pub fn admin(token: u64, request: AdminRequest) -> Input {
    Input::Admin {
        token: ReplyToken(token),
        origin: Origin {
            identity: identity(Role::ProjectAdmin),
            request_id: Some(format!("request-{token}")),
        },
        request,
    }
}

/// A submit of job `job-{token}` (its app on the server and `site-1`, package `[7; 32]`).
pub fn submit(token: u64) -> Input {
    admin(
        token,
        AdminRequest::SubmitJob {
            meta: JobMeta {
                name: format!("job-{token}"),
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
        },
    )
}

/// Submits the job folder at `path` to a running server as a project admin and returns
/// the accepted job.
pub async fn submit_ok(server: &Server, path: &Path) -> JobId {
    let answer = tokio::time::timeout(
        BOUND,
        server.submit_path(path, identity(Role::ProjectAdmin), None),
    )
    .await
    .expect("the submit is answered in time")
    .expect("package accepted");
    match answer {
        Ok(Ok(Answer::Submitted { job_id })) => job_id,
        other => panic!("submit failed: {other:?}"),
    }
}

/// Waits (at most [`BOUND`]) until the server publishes a state for which `pred` holds.
pub async fn wait_for(server: &Server, what: &str, pred: impl Fn(&State) -> bool) -> Arc<State> {
    let mut watch = server.watch();
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let state = watch.borrow_and_update().clone();
            if pred(&state) || watch.changed().await.is_err() {
                return state;
            }
        }
    })
    .await;
    match found {
        Ok(state) if pred(&state) => state,
        _ => panic!("timed out waiting for {what}"),
    }
}

/// The job is terminal, its run has ended and its archive has settled.
pub fn settled(state: &State, id: &JobId) -> bool {
    state.jobs.get(id).is_some_and(|j| {
        j.status.is_terminal()
            && matches!(j.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
            && j.archive.is_settled()
    })
}
