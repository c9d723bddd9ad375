//! [`Engine`]: the [`Node`] driven synchronously on a [`History`] it owns.
//!
//! Every rule (deciding, the durability barrier, effect routing, acknowledgements, timers)
//! is the node's; the engine only moves batches between the node and the history in the
//! calling thread: [`Engine::step`] feeds inputs, appends each batch the node hands out
//! with one flush, and returns the outputs the node then releases. The simulator and the
//! tests drive it; the tokio server drives the node itself, with the history on its own
//! thread. The engine does no IO but the history and reads no clock (`now` comes in).
//! One exception to "the calling thread": after [`Engine::snapshot_off_thread`] a large
//! state's snapshot is encoded on a thread of its own and installed at a later step.

use std::collections::BTreeSet;

use crate::engine::ids::{RandomIds, SeededIds};
use crate::engine::node::{Input, Node, Output};
use crate::history::{self, History};
use crate::job::JobId;
use crate::lifecycle::{Event, IdSource, State, Timestamp};
use crate::settings::Settings;

/// Where the engine draws new ids: random on a server, from the seed in a simulation.
#[derive(Debug)]
pub enum Ids {
    /// Random UUID v4s.
    Random(RandomIds),
    /// UUIDs from a seed, for reproducible simulations.
    Seeded(SeededIds),
}

impl Ids {
    /// The next id of the source.
    pub(crate) fn next_uuid(&mut self) -> uuid::Uuid {
        match self {
            Ids::Random(r) => r.next_uuid(),
            Ids::Seeded(s) => s.next_uuid(),
        }
    }
}

impl IdSource for Ids {
    fn new_job_id(&mut self) -> JobId {
        JobId(self.next_uuid())
    }
}

/// Limits the engine enforces before a request reaches the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineLimits {
    /// Jobs that may wait in `SUBMITTED` at once; a submit or clone beyond it is refused.
    pub queued_jobs_max: usize,
    /// Events between two snapshots of the state: at least this many, and at least as
    /// many as the last snapshot held jobs (a snapshot costs what the state holds, so its
    /// cost per event stays bounded as the history grows).
    pub snapshot_every_events: u64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            queued_jobs_max: 10_000,
            snapshot_every_events: 10_000,
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The history could not be opened.
    #[error(transparent)]
    Open(#[from] history::OpenError),
    /// The stored history could not be replayed (a bad record, a broken chain...).
    #[error("cannot rebuild the state from the history: {0}")]
    Replay(#[from] history::ReplayError),
    /// Recording `ServerStarted` failed.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// Why a step failed. After one, the engine refuses every later step: what is on disk may
/// differ from what it holds in memory, and going on would diverge.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Appending the batch's events failed.
    #[error("appending events {first_seq}..={last_seq} to the history failed: {source}")]
    Append {
        /// The first event of the batch.
        first_seq: u64,
        /// The last event of the batch.
        last_seq: u64,
        /// The history's error.
        source: history::AppendError,
    },
    /// The core decided an event its own fold refuses: a bug, reported instead of a panic.
    #[error("{cause}")]
    IllegalDecision {
        /// The refused event and why.
        cause: String,
    },
    /// An earlier step failed.
    #[error("the engine stopped after an earlier failure: {cause}")]
    Stopped {
        /// The first failure.
        cause: String,
    },
}

/// An engine-level refusal of an admin request, before the core sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineRefusal {
    /// Too many jobs wait in `SUBMITTED`.
    #[error("the server holds {queued} queued jobs, its limit; submit again later")]
    TooManyQueuedJobs {
        /// Jobs waiting now.
        queued: usize,
    },
}

/// A snapshot being encoded on a thread of its own: the thread hands back the encoder
/// with what it wrote.
type SnapshotThread = std::thread::JoinHandle<(
    history::snapshot::StateEncoder,
    Result<history::snapshot::WrittenSnapshot, history::SnapshotError>,
)>;

/// A state of fewer jobs than this is encoded on the engine's thread even when snapshots
/// go off it (and installed at the next step): a thread would cost more than the encoding
/// (the fault campaign runs thousands of short runs).
const SNAPSHOT_THREAD_FROM_JOBS: usize = 1_000;

/// A snapshot waiting to be installed.
enum Pending {
    /// Being encoded on its own thread; installed at the first step that starts with the
    /// history at `due` or beyond.
    Thread { thread: SnapshotThread, due: u64 },
    /// Encoded already (a small state).
    Written(Result<history::snapshot::WrittenSnapshot, history::SnapshotError>),
}

/// The snapshot in flight, if any. Dropped (the engine dropped, as in a crash), it is
/// not installed, but its thread is waited for: nothing of the engine outlives it.
#[derive(Default)]
struct InFlight(Option<Pending>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(Pending::Thread { thread, .. }) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// The node and the history, owned by one caller at a time.
pub struct Engine {
    node: Node,
    history: History<Event>,
    /// Snapshots are encoded by this one encoder: each reuses the bytes of the jobs
    /// unchanged since the last one. Away on the snapshot's thread while one is in flight.
    encoder: history::snapshot::StateEncoder,
    /// The snapshot the start rebuilt the state from (its sequence number), if any.
    started_from: Option<u64>,
    /// Whether snapshots are encoded on a thread of their own ([`Engine::snapshot_off_thread`]).
    off_thread: bool,
    /// The snapshot being encoded off this thread, installed at a later step.
    in_flight: InFlight,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("node", &self.node).finish()
    }
}

impl Engine {
    /// The sequence number of the snapshot this engine's start rebuilt its state from
    /// (`None`: it replayed the whole history). The simulator checks that a start uses
    /// the snapshot its disk holds.
    pub fn started_from_snapshot(&self) -> Option<u64> {
        self.started_from
    }

    /// Starts an engine on `history`: rebuilds the state (snapshot plus tail), then records
    /// `ServerStarted` with a new boot id. Returns the engine and the outputs of that start.
    pub fn start(
        history: History<Event>,
        settings: Settings,
        ids: Ids,
        limits: EngineLimits,
        now: Timestamp,
    ) -> Result<(Engine, Vec<Output>), StartError> {
        let recovered = history.recover(State::new())?;
        tracing::info!(
            seq = recovered.state.last_seq,
            snapshot = ?recovered.snapshot_seq,
            replayed = recovered.replayed,
            "state rebuilt from the history"
        );
        let node = Node::start(
            recovered.state,
            recovered.snapshot_seq,
            settings,
            ids,
            limits,
            now,
        );
        let mut engine = Engine {
            node,
            history,
            encoder: Default::default(),
            started_from: recovered.snapshot_seq,
            off_thread: false,
            in_flight: InFlight::default(),
        };
        let outputs = engine.step(Vec::new(), now)?;
        Ok((engine, outputs))
    }

    /// From now on, encodes each snapshot on a thread of its own while the caller goes
    /// on, as the server does, and installs it at the start of the first [`Engine::step`]
    /// after the history has grown by half as many events as the snapshot holds jobs (or
    /// when the next snapshot is called for, or at [`Engine::shut_down`]): the encoding,
    /// whose cost follows the jobs, has that much of the engine's work to hide behind
    /// instead of being waited for at the next step. The install point depends on the
    /// history alone, never on the thread's speed, so a simulation stays reproducible. A
    /// state of fewer than 1,000 jobs is encoded on this thread and installed at the next
    /// step. An engine dropped with a snapshot in flight drops it, as a crash would: the
    /// history then holds the snapshot before it. Without this call a snapshot is taken
    /// and installed before the step that called for it returns.
    pub fn snapshot_off_thread(&mut self) {
        self.off_thread = true;
    }

    /// Installs the snapshot in flight if its install point is reached (see
    /// [`Engine::snapshot_off_thread`]).
    fn settle_snapshot_if_due(&mut self) {
        let reached = match &self.in_flight.0 {
            None => return,
            Some(Pending::Written(_)) => true,
            Some(Pending::Thread { due, .. }) => self.node.state().last_seq >= *due,
        };
        if reached {
            self.settle_snapshot();
        }
    }

    /// Waits for the snapshot in flight, if any, and installs it. A failed snapshot loses
    /// nothing (the events are durable; start-up replays a longer tail), so it is logged.
    fn settle_snapshot(&mut self) {
        let written = match self.in_flight.0.take() {
            None => return,
            Some(Pending::Written(written)) => written,
            Some(Pending::Thread { thread, .. }) => {
                let (encoder, written) = match thread.join() {
                    Ok(done) => done,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                self.encoder = encoder;
                written
            }
        };
        if let Err(err) = written.and_then(|written| self.history.install_snapshot(written)) {
            tracing::warn!(%err, "snapshot failed");
        }
    }

    /// The node, for reads.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The state after every durable event.
    pub fn state(&self) -> &State {
        self.node.state()
    }

    /// The settings the engine decides with.
    pub fn settings(&self) -> &Settings {
        self.node.settings()
    }

    /// This server run's boot id.
    pub fn boot_id(&self) -> crate::lifecycle::BootId {
        self.node.boot_id()
    }

    /// The history, for reads (verify, listing events).
    pub fn history(&self) -> &History<Event> {
        &self.history
    }

    /// The node's next deadline: the caller calls [`Engine::fire_timers`] when its clock
    /// reaches it.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.node.poll_timeout()
    }

    /// The clock reached `now`: the due timer is decided with the next [`Engine::step`].
    pub fn fire_timers(&mut self, now: Timestamp) {
        self.node.handle_timeout(now);
    }

    /// Feeds every input, appends each batch the node hands out with one flush, and
    /// returns the outputs released once the batch is durable.
    pub fn step(&mut self, inputs: Vec<Input>, now: Timestamp) -> Result<Vec<Output>, StepError> {
        self.settle_snapshot_if_due();
        if let Some(cause) = self.node.stopped() {
            return Err(StepError::Stopped {
                cause: cause.to_string(),
            });
        }
        for input in inputs {
            self.node.handle(now, input);
        }
        let mut outputs = Vec::new();
        while let Some(append) = self.node.poll_append() {
            let seqs = append.seqs();
            match self.history.append_batch(&append.events) {
                Ok(_) => self.node.append_done(append.id, Ok(())),
                Err(source) => {
                    self.node.append_done(append.id, Err(source.to_string()));
                    let err = StepError::Append {
                        first_seq: *seqs.start(),
                        last_seq: *seqs.end(),
                        source,
                    };
                    tracing::error!(%err, "the engine stops: its history refused a write");
                    return Err(err);
                }
            }
            self.drain(&mut outputs);
        }
        self.drain(&mut outputs);
        if let Some(cause) = self.node.stopped() {
            return Err(StepError::IllegalDecision {
                cause: cause.to_string(),
            });
        }
        Ok(outputs)
    }

    fn drain(&mut self, outputs: &mut Vec<Output>) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::TakeSnapshot { state } if self.off_thread => {
                    // At most one in flight, installed in order.
                    self.settle_snapshot();
                    match self.history.snapshot_ticket() {
                        Ok(ticket) if state.jobs.len() < SNAPSHOT_THREAD_FROM_JOBS => {
                            let written = ticket.write_with(&mut self.encoder, &state);
                            self.in_flight.0 = Some(Pending::Written(written));
                        }
                        Ok(ticket) => {
                            let due = state.last_seq + state.jobs.len() as u64 / 2;
                            let mut encoder = std::mem::take(&mut self.encoder);
                            let thread = std::thread::spawn(move || {
                                let written = ticket.write_with(&mut encoder, &state);
                                (encoder, written)
                            });
                            self.in_flight.0 = Some(Pending::Thread { thread, due });
                        }
                        Err(err) => tracing::warn!(%err, "snapshot failed"),
                    }
                }
                Output::TakeSnapshot { state } => {
                    // A failed snapshot loses nothing (the events are durable); start-up
                    // then replays a longer tail, so it is logged and not fatal.
                    if let Err(err) = self.history.take_snapshot_with(&mut self.encoder, &state) {
                        tracing::warn!(%err, "snapshot failed");
                    }
                }
                other => outputs.push(other),
            }
        }
    }

    /// True when every job is terminal, no run is in flight or stopping, and every archive
    /// has settled: nothing more will happen without a new input.
    pub fn is_settled(&self) -> bool {
        self.node.is_settled()
    }

    /// Jobs not yet terminal.
    pub fn jobs_in_flight(&self) -> BTreeSet<JobId> {
        self.state()
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.id)
            .collect()
    }

    /// Ends the engine cleanly: a snapshot and the anchor, so the next start-up is quick
    /// and can tell a shorter history from data loss.
    pub fn shut_down(mut self) -> Result<(), history::StorageError> {
        self.settle_snapshot();
        if self.node.stopped().is_none() {
            let snapshot = self
                .history
                .take_snapshot_with(&mut self.encoder, self.node.state());
            if let Err(err) = snapshot {
                tracing::warn!(%err, "snapshot at shutdown failed");
            }
        }
        self.history.close()
    }
}
