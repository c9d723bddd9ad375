//! [`Engine`]: the single owner of the state and the history.
//!
//! Everything that changes a job passes through [`Engine::step`]: a batch of commands is
//! decided and applied one by one in memory, the batch's events are appended to the history
//! with one flush, and only then are the effects and answers handed back to the caller. The
//! caller (the tokio task of a server, or the simulator's loop) carries the effects out and
//! feeds their results back as new commands. The engine itself does no IO besides the
//! history, reads no clock (`now` comes in), and never waits for a worker.

use std::collections::BTreeSet;

use crate::engine::ids::{RandomIds, SeededIds};
use crate::history::{self, History};
use crate::job::JobId;
use crate::lifecycle::{
    self, BootId, Command, Decision, Effect, Event, IdSource, Reply, State, Timer, Timestamp,
};
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
    fn next_uuid(&mut self) -> uuid::Uuid {
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
    /// Events between two snapshots of the state.
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

/// What one command of a batch led to.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The sequence numbers of the events it wrote (empty range when none).
    pub events: std::ops::Range<u64>,
    /// The answer to an admin request (`None` for other commands).
    pub reply: Option<Result<Reply, EngineRefusal>>,
}

/// What a step hands back once its events are durable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Released {
    /// The effects to carry out, in decision order.
    pub effects: Vec<Effect>,
    /// One outcome per command, in the batch's order.
    pub outcomes: Vec<Outcome>,
}

/// The engine: the state, the settings, the history and the id source, owned by one
/// caller at a time.
pub struct Engine {
    state: State,
    settings: Settings,
    history: History<Event>,
    ids: Ids,
    limits: EngineLimits,
    boot_id: BootId,
    stopped: Option<String>,
    last_snapshot_seq: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("boot_id", &self.boot_id)
            .field("last_seq", &self.state.last_seq)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Engine {
    /// Starts an engine on `history`: rebuilds the state (snapshot plus tail), then records
    /// `ServerStarted` with a new boot id. Returns the engine and the effects of that start.
    pub fn start(
        history: History<Event>,
        settings: Settings,
        mut ids: Ids,
        limits: EngineLimits,
        now: Timestamp,
    ) -> Result<(Engine, Released), StartError> {
        let recovered = history.recover(State::new())?;
        tracing::info!(
            seq = recovered.state.last_seq,
            snapshot = ?recovered.snapshot_seq,
            replayed = recovered.replayed,
            "state rebuilt from the history"
        );
        if let Ids::Seeded(seeded) = &mut ids {
            seeded.restream(recovered.state.last_seq);
        }
        let boot_id = BootId(ids.next_uuid());
        let last_snapshot_seq = recovered.snapshot_seq.unwrap_or(0);
        let mut engine = Engine {
            state: recovered.state,
            settings,
            history,
            ids,
            limits,
            boot_id,
            stopped: None,
            last_snapshot_seq,
        };
        let released = engine.step(vec![Command::StartServer { boot_id }], now)?;
        Ok((engine, released))
    }

    /// The state after every durable event.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The settings the engine decides with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This server run's boot id.
    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// The history, for reads (verify, listing events).
    pub fn history(&self) -> &History<Event> {
        &self.history
    }

    /// The earliest deadline of the state: the caller feeds `Command::TimerFired` when its
    /// clock reaches it. No deadline means nothing happens until the next input.
    pub fn next_deadline(&self) -> Option<(Timestamp, Timer)> {
        lifecycle::next_deadline(&self.state, &self.settings)
    }

    /// Decides and applies every command in memory, appends all their events with one
    /// flush, and only then returns their effects and answers.
    pub fn step(&mut self, commands: Vec<Command>, now: Timestamp) -> Result<Released, StepError> {
        if let Some(cause) = &self.stopped {
            return Err(StepError::Stopped {
                cause: cause.clone(),
            });
        }
        let first_seq = self.state.last_seq + 1;
        let mut events: Vec<Event> = Vec::new();
        let mut released = Released::default();
        for command in commands {
            let before = self.state.last_seq + 1;
            if let Some(refusal) = self.refuse(&command) {
                released.outcomes.push(Outcome {
                    events: before..before,
                    reply: Some(Err(refusal)),
                });
                continue;
            }
            let is_admin = matches!(command, Command::Admin { .. });
            let decision =
                lifecycle::decide(&self.state, &self.settings, command, now, &mut self.ids);
            let Decision {
                events: new_events,
                effects,
                reply,
            } = match decision {
                Ok(decision) => decision,
                Err(rejection) => Decision {
                    reply: Some(Err(rejection)),
                    ..Decision::default()
                },
            };
            for event in &new_events {
                // `decide` must only make legal events; if it ever does not, the engine
                // stops (nothing of the batch is written) instead of panicking mid-way.
                if let Err(err) = self.state.apply_checked(event) {
                    let cause = format!("the core decided an illegal event: {err}");
                    tracing::error!(%cause, "the engine stops");
                    self.stopped = Some(cause.clone());
                    return Err(StepError::IllegalDecision { cause });
                }
            }
            events.extend(new_events);
            released.effects.extend(effects);
            released.outcomes.push(Outcome {
                events: before..self.state.last_seq + 1,
                reply: if is_admin { reply.map(Ok) } else { None },
            });
        }
        if events.is_empty() {
            return Ok(released);
        }
        let last_seq = self.state.last_seq;
        if let Err(source) = self.history.append_batch(&events) {
            let err = StepError::Append {
                first_seq,
                last_seq,
                source,
            };
            tracing::error!(%err, "the engine stops: its history refused a write");
            self.stopped = Some(err.to_string());
            return Err(err);
        }
        if last_seq - self.last_snapshot_seq >= self.limits.snapshot_every_events {
            // A failed snapshot loses nothing (the events are durable); start-up then
            // replays a longer tail, so it is logged and not fatal.
            match self.history.take_snapshot(&self.state) {
                Ok(_) => self.last_snapshot_seq = last_seq,
                Err(err) => tracing::warn!(%err, "snapshot failed"),
            }
        }
        Ok(released)
    }

    fn refuse(&self, command: &Command) -> Option<EngineRefusal> {
        let Command::Admin { request, .. } = command else {
            return None;
        };
        let adds_job = matches!(
            request,
            lifecycle::AdminRequest::SubmitJob { .. } | lifecycle::AdminRequest::CloneJob { .. }
        );
        if !adds_job {
            return None;
        }
        let queued = self.state.queue.len();
        (queued >= self.limits.queued_jobs_max)
            .then_some(EngineRefusal::TooManyQueuedJobs { queued })
    }

    /// True when every job is terminal, no run is in flight or stopping, and every archive
    /// has settled: nothing more will happen without a new input.
    pub fn is_settled(&self) -> bool {
        self.state.all_settled()
    }

    /// Jobs not yet terminal.
    pub fn jobs_in_flight(&self) -> BTreeSet<JobId> {
        self.state
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.id)
            .collect()
    }

    /// Ends the engine cleanly: a snapshot and the anchor, so the next start-up is quick
    /// and can tell a shorter history from data loss.
    pub fn shut_down(mut self) -> Result<(), history::StorageError> {
        if self.stopped.is_none() {
            if let Err(err) = self.history.take_snapshot(&self.state) {
                tracing::warn!(%err, "snapshot at shutdown failed");
            }
        }
        self.history.close()
    }
}
