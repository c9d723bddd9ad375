//! [`Node`]: the whole server as a sans-IO state machine, in the style of quinn-proto's
//! `Connection` and str0m's `Rtc`.
//!
//! The node takes what happened ([`Node::handle`], [`Node::handle_timeout`],
//! [`Node::append_done`]) and hands out what to do ([`Node::poll_append`],
//! [`Node::poll_output`], [`Node::poll_timeout`]). It owns the state, the settings and the
//! id source; it never touches a socket, a file, a thread or a clock: `now` comes in as an
//! argument, and the history is written by whoever drives the node. The tokio server
//! (`engine::server`), the synchronous [`Engine`](crate::engine::owner::Engine) and the
//! simulator are such drivers, so every rule below runs the same way in all three.
//!
//! The loop of every driver is:
//!
//! 1. feed inputs with [`Node::handle`] (they queue inside the node);
//! 2. take [`Node::poll_append`]: the node decides every queued input in memory and hands
//!    out the batch of events to make durable (at most one batch is out at a time);
//! 3. append the batch durably, then report it with [`Node::append_done`];
//! 4. drain [`Node::poll_output`] until `None`, carry each output out, and feed results
//!    back as inputs;
//! 5. sleep until [`Node::poll_timeout`] or the next input, then [`Node::handle_timeout`].
//!
//! **The durability barrier is a property of the node:** the outputs of a batch (replies,
//! site requests, acknowledgements, archive and blob work) are not in [`Node::poll_output`]
//! until [`Node::append_done`] reported that batch durable. After a failed append the node
//! stops for good: the batch's outputs are dropped, nothing is released any more, and every
//! admin request, queued or new, is answered [`NodeError::Stopped`].
//!
//! **One effect router:** the core's effects become participant requests here and nowhere
//! else. The server's own app runs behind the same requests and reports as a site's app:
//! it is the participant [`Participant::Local`], so only a participant knows where a
//! process runs.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::engine::owner::{EngineLimits, EngineRefusal, Ids};
use crate::job::JobId;
use crate::lifecycle::{
    self, AdminRequest, BlobHash, BootId, Command, Decision, Effect, Event, EventKind, Origin,
    Reply, SiteReport, State, Timer, Timestamp,
};
use crate::settings::Settings;

/// Identifies an admin request so its answer can find its way back (the driver keeps the
/// reply channel; the node only carries the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyToken(pub u64);

/// Who runs app processes for the node: a site, or the server's own local app runner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Participant {
    /// A site, by its name.
    Site(String),
    /// The participant local to the server, which runs the jobs' server apps. It speaks
    /// the same requests and reports as a site; it is not a site of the schedule.
    Local,
}

impl std::fmt::Display for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Participant::Site(name) => write!(f, "site {name}"),
            Participant::Local => write!(f, "the server's local participant"),
        }
    }
}

/// One input of the node. Closed: everything the node reacts to is one of these (plus
/// [`Node::handle_timeout`] and [`Node::append_done`]).
#[derive(Clone, Debug)]
pub enum Input {
    /// An admin request, answered by an [`Output::Reply`] with the same token once its
    /// events are durable.
    Admin {
        /// Where the answer goes.
        token: ReplyToken,
        /// Who asked, with the idempotency key.
        origin: Origin,
        /// What.
        request: AdminRequest,
    },
    /// A participant's report. Exit reports are acknowledged once they are durable.
    Report {
        /// Who reports.
        from: Participant,
        /// What it says.
        report: SiteReport,
    },
    /// The archive worker's result for an [`Output::Archive`]: the archive's blob hash,
    /// or why the run folder could not be archived.
    ArchiveFinished {
        /// The job.
        job_id: JobId,
        /// The archive blob, or the failure.
        result: Result<BlobHash, String>,
    },
}

/// What the node asks of a participant. Every request is answered by a
/// [`SiteReport`], except `CancelReservation`, `Delete` and `Acknowledge`.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Reserve resources for a schedule try; answered by `ResourceAnswer`.
    CheckResources {
        /// The try.
        try_id: u64,
        /// The job.
        job_id: JobId,
        /// What to reserve.
        resources: std::collections::BTreeMap<String, f64>,
    },
    /// Give back a reservation that will not lead to a run.
    CancelReservation {
        /// The job.
        job_id: JobId,
        /// The reservation token.
        token: String,
    },
    /// Deploy this app of the job's package blob; answered by `DeployAnswer`. The driver
    /// reads the blob (the node hands out its hash, never its bytes).
    Deploy {
        /// The job.
        job_id: JobId,
        /// The app's folder name in the package.
        app_name: String,
        /// The package blob.
        package: BlobHash,
        /// The time its signature is checked at: the job's submit time (SPEC section 6).
        verify_at: Timestamp,
    },
    /// Start the deployed app; answered by `StartAnswer`, later `AppExited`.
    Start {
        /// The job.
        job_id: JobId,
    },
    /// Stop the job's app (grace, then kill); answered by its `AppExited`.
    Stop {
        /// The job.
        job_id: JobId,
    },
    /// Remove everything deployed for the job.
    Delete {
        /// The job.
        job_id: JobId,
    },
    /// The report with this id is durable: the participant may forget it.
    Acknowledge {
        /// The report.
        report_id: String,
    },
}

/// Why an admin request got no answer from the core.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node refused before deciding (a limit).
    #[error(transparent)]
    Refused(#[from] EngineRefusal),
    /// The node has stopped for good after a failure.
    #[error("the server's engine has stopped: {cause}")]
    Stopped {
        /// The first failure.
        cause: String,
    },
}

/// One thing to do, released only after the events that led to it are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The answer to an admin request.
    Reply {
        /// The request's token.
        token: ReplyToken,
        /// The core's reply, or why there is none.
        answer: Result<Reply, NodeError>,
    },
    /// A request to a participant.
    Send {
        /// The participant.
        to: Participant,
        /// What to ask.
        request: Request,
    },
    /// Zip the job's server run folder into the blob store, without removing it; answer
    /// with [`Input::ArchiveFinished`]. A missing folder is a failure, never an empty zip.
    Archive {
        /// The job.
        job_id: JobId,
    },
    /// `WorkspaceArchived` is durable: the job's server run folder may be removed.
    RemoveRunFolder {
        /// The job.
        job_id: JobId,
    },
    /// No live job refers to this blob any more: remove it from the blob store.
    FreeBlob {
        /// The blob.
        hash: BlobHash,
    },
    /// Take a snapshot of this state (the state after the last durable batch). A failed
    /// snapshot loses nothing; the driver logs it.
    TakeSnapshot {
        /// The state to store.
        state: Arc<State>,
    },
}

/// A batch of events to make durable, from [`Node::poll_append`].
#[derive(Clone, Debug, PartialEq)]
pub struct Append {
    /// Which batch: give it back to [`Node::append_done`].
    pub id: u64,
    /// The events, in order, their sequence numbers continuing the history's.
    pub events: Vec<Event>,
}

impl Append {
    /// The sequence numbers of the batch.
    pub fn seqs(&self) -> std::ops::RangeInclusive<u64> {
        let first = self.events.first().map_or(0, |e| e.seq);
        let last = self.events.last().map_or(0, |e| e.seq);
        first..=last
    }
}

enum Queued {
    Command(Command),
    Admin(ReplyToken, Origin, AdminRequest),
    Timer(Timestamp, Timer),
}

struct InFlight {
    id: u64,
    outputs: Vec<Output>,
    last_seq: u64,
}

/// A deadline of the core: when, and the timer that fires then.
type Deadline = (Timestamp, Timer);

/// The server as a sans-IO state machine (see the module documentation).
pub struct Node {
    state: State,
    settings: Settings,
    ids: Ids,
    limits: EngineLimits,
    boot_id: BootId,
    queued: Vec<(Timestamp, Queued)>,
    in_flight: Option<InFlight>,
    released: VecDeque<Output>,
    next_append_id: u64,
    stopped: Option<String>,
    last_snapshot_seq: u64,
    /// Jobs the state held at the last snapshot (at start-up: the jobs recovered).
    last_snapshot_jobs: u64,
    /// A timer that fired and changed nothing: not fired again until another input.
    idle_timer: Option<(Timestamp, Timer)>,
    /// The state's earliest deadline, with the `last_seq` it was found at: the state
    /// changes only by folding events, so within a node the same `last_seq` is the same
    /// state (and the settings do not change). Asked for two or three times a step.
    next_deadline: std::cell::Cell<Option<(u64, Option<Deadline>)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("boot_id", &self.boot_id)
            .field("last_seq", &self.state.last_seq)
            .field("in_flight", &self.in_flight.as_ref().map(|b| b.id))
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Node {
    /// A node on the state rebuilt from the history (`snapshot_seq`: the sequence number
    /// the loaded snapshot covers, if any). Draws a new boot id and queues `ServerStarted`,
    /// so the first [`Node::poll_append`] records the start.
    pub fn start(
        state: State,
        snapshot_seq: Option<u64>,
        settings: Settings,
        mut ids: Ids,
        limits: EngineLimits,
        now: Timestamp,
    ) -> Node {
        if let Ids::Seeded(seeded) = &mut ids {
            // A restart never repeats an id of an earlier run of the same seed.
            seeded.restream(state.last_seq);
        }
        let boot_id = BootId(ids.next_uuid());
        let jobs = state.jobs.len() as u64;
        Node {
            state,
            settings,
            ids,
            limits,
            boot_id,
            queued: vec![(now, Queued::Command(Command::StartServer { boot_id }))],
            in_flight: None,
            released: VecDeque::new(),
            next_append_id: 1,
            stopped: None,
            last_snapshot_seq: snapshot_seq.unwrap_or(0),
            last_snapshot_jobs: jobs,
            idle_timer: None,
            next_deadline: std::cell::Cell::new(None),
        }
    }

    /// The state after every decided event (durable once no batch is out).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The settings the node decides with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// This server run's boot id.
    pub fn boot_id(&self) -> BootId {
        self.boot_id
    }

    /// Why the node stopped, if it did. A stopped node never starts again: the driver
    /// must end (the `fedrun` process exits with
    /// [`EXIT_ENGINE_STOPPED`](crate::engine::server::EXIT_ENGINE_STOPPED)).
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Whether a batch was handed out and not yet reported by [`Node::append_done`].
    pub fn is_appending(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Inputs waiting to be decided.
    pub fn queued_inputs(&self) -> usize {
        self.queued.len()
    }

    /// Takes one input. It is decided at the next [`Node::poll_append`]; an admin request
    /// to a stopped node is answered at once with [`NodeError::Stopped`].
    pub fn handle(&mut self, now: Timestamp, input: Input) {
        self.idle_timer = None;
        if let Some(cause) = &self.stopped {
            if let Input::Admin { token, .. } = input {
                self.released.push_back(Output::Reply {
                    token,
                    answer: Err(NodeError::Stopped {
                        cause: cause.clone(),
                    }),
                });
            }
            return;
        }
        let queued = match input {
            Input::Admin {
                token,
                origin,
                request,
            } => Queued::Admin(token, origin, request),
            Input::Report {
                from: Participant::Site(site),
                report,
            } => Queued::Command(Command::Site { site, report }),
            Input::Report {
                from: Participant::Local,
                report,
            } => {
                for command in local_report(report) {
                    self.queued.push((now, Queued::Command(command)));
                }
                return;
            }
            Input::ArchiveFinished { job_id, result } => {
                Queued::Command(Command::ArchiveFinished { job_id, result })
            }
        };
        self.queued.push((now, queued));
    }

    /// The earliest deadline of the state, when the node should be woken with
    /// [`Node::handle_timeout`]. `None`: nothing happens until the next input. A timer
    /// that fired and changed nothing is not offered again until another input arrives.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.stopped.is_some() {
            return None;
        }
        let next = self.next_deadline()?;
        (Some(&next) != self.idle_timer.as_ref()).then_some(next.0)
    }

    /// [`lifecycle::next_deadline`] of the state, found once per `last_seq`.
    fn next_deadline(&self) -> Option<Deadline> {
        let seq = self.state.last_seq;
        let next = match self.next_deadline.take() {
            Some((at, next)) if at == seq => next,
            _ => lifecycle::next_deadline(&self.state, &self.settings),
        };
        self.next_deadline.set(Some((seq, next.clone())));
        next
    }

    /// The clock reached `now`: queues the core's due timer, if any (an early wake-up
    /// queues nothing).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.stopped.is_some() {
            return;
        }
        let Some((due, timer)) = self.next_deadline() else {
            return;
        };
        if due > now || self.idle_timer.as_ref() == Some(&(due, timer.clone())) {
            return;
        }
        if self
            .queued
            .iter()
            .any(|(_, q)| matches!(q, Queued::Timer(_, t) if *t == timer))
        {
            return;
        }
        self.queued.push((now, Queued::Timer(due, timer)));
    }

    /// Decides every queued input in memory and hands out the batch of events to make
    /// durable. `None` when a batch is already out, when the node has stopped, or when
    /// the inputs made no events (their outputs are then released at once).
    pub fn poll_append(&mut self) -> Option<Append> {
        if self.in_flight.is_some() || self.stopped.is_some() || self.queued.is_empty() {
            return None;
        }
        let before = self.state.last_seq;
        // The commands are decided one after another in the state itself (each folds its
        // events into the nodes the one before copied). This copy of the state before the
        // batch (a few pointers) puts back a command refused after its events were folded.
        let before_batch = self.state.clone();
        let mut events: Vec<Event> = Vec::new();
        let mut outputs: Vec<Output> = Vec::new();
        let mut fired: Option<(Timestamp, Timer)> = None;
        let mut only_timer = true;
        for (now, queued) in std::mem::take(&mut self.queued) {
            let (command, token) = match queued {
                Queued::Command(command) => {
                    only_timer = false;
                    (command, None)
                }
                Queued::Admin(token, origin, request) => {
                    only_timer = false;
                    let command = Command::Admin { origin, request };
                    if let Some(refusal) = self.refuse(&command) {
                        outputs.push(Output::Reply {
                            token,
                            answer: Err(NodeError::Refused(refusal)),
                        });
                        continue;
                    }
                    (command, Some(token))
                }
                Queued::Timer(due, timer) => {
                    fired = Some((due, timer.clone()));
                    (Command::TimerFired(timer), None)
                }
            };
            let ack = acknowledgement(&command);
            // The state becomes the one `decide` folded the events into as it made them;
            // a fold refuses an illegal event there (a panic: a defect of the core).
            let decision = lifecycle::decide_in_place(
                &mut self.state,
                &self.settings,
                command,
                now,
                &mut self.ids,
            );
            let Decision {
                events: new_events,
                effects,
                reply,
            } = match decision {
                Ok(decision) => decision,
                Err(refused) => {
                    if refused.folded {
                        // The state after the batch's decisions so far.
                        self.state = before_batch.clone();
                        for event in &events {
                            self.state.apply(event);
                        }
                    }
                    Decision {
                        reply: Some(Err(refused.rejection)),
                        ..Decision::default()
                    }
                }
            };
            if let Some(token) = token {
                let answer = reply.ok_or_else(|| NodeError::Stopped {
                    cause: "the core gave no answer to an admin request".into(),
                });
                outputs.push(Output::Reply { token, answer });
            }
            if let Some(ack) = ack {
                outputs.push(ack);
            }
            for effect in effects {
                outputs.push(self.route(effect));
            }
            for event in &new_events {
                // The run folder goes only once its archive is recorded (SPEC section 8).
                if let EventKind::WorkspaceArchived { job_id, .. } = &event.kind {
                    outputs.push(Output::RemoveRunFolder { job_id: *job_id });
                }
            }
            events.extend(new_events);
        }
        if only_timer && self.state.last_seq == before {
            self.idle_timer = fired;
        }
        if events.is_empty() {
            self.released.extend(outputs);
            return None;
        }
        let id = self.next_append_id;
        self.next_append_id += 1;
        self.in_flight = Some(InFlight {
            id,
            outputs,
            last_seq: self.state.last_seq,
        });
        Some(Append { id, events })
    }

    /// Reports the outcome of the append of batch `id`. On success the batch's outputs are
    /// released to [`Node::poll_output`]; on failure the node stops for good and releases
    /// nothing but "stopped" answers to the batch's admin requests.
    pub fn append_done(&mut self, id: u64, result: Result<(), String>) {
        let Some(batch) = self.in_flight.take_if(|b| b.id == id) else {
            tracing::warn!(id, "append_done for a batch that is not out; ignored");
            return;
        };
        match result {
            Ok(()) => {
                // A blob a job of this batch refers to again (a submit or clone of the
                // same bytes decided after the free) is not freed: the free was decided
                // on an older state.
                let state = &self.state;
                self.released
                    .extend(batch.outputs.into_iter().filter(|output| match output {
                        Output::FreeBlob { hash } => {
                            !state.blob_in_use(hash, &JobId(uuid::Uuid::nil()))
                        }
                        _ => true,
                    }));
                // A snapshot encodes every job the state holds: waiting for at least as
                // many events as the last one held jobs keeps its cost per event bounded,
                // however long the history (start-up then replays a tail no longer than
                // the snapshot it decodes, give or take the jobs added since).
                let every = self
                    .limits
                    .snapshot_every_events
                    .max(self.last_snapshot_jobs);
                if batch.last_seq - self.last_snapshot_seq >= every {
                    self.last_snapshot_seq = batch.last_seq;
                    self.last_snapshot_jobs = self.state.jobs.len() as u64;
                    self.released.push_back(Output::TakeSnapshot {
                        state: Arc::new(self.state.clone()),
                    });
                }
            }
            Err(cause) => {
                let cause = format!(
                    "appending events up to {} to the history failed: {cause}",
                    batch.last_seq
                );
                self.stop(cause, batch.outputs);
            }
        }
    }

    /// The next output to carry out, in decision order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.released.pop_front()
    }

    /// True when every job is terminal, no run is in flight or stopping, and every archive
    /// has settled: nothing more will happen without a new input.
    pub fn is_settled(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_none() && self.state.all_settled()
    }

    fn stop(&mut self, cause: String, dropped: Vec<Output>) {
        tracing::error!(%cause, "the node stops for good");
        // Nothing of the batch leaves: only its requesters learn that the node stopped,
        // and so do those of inputs still queued.
        let mut tokens: Vec<ReplyToken> = dropped
            .into_iter()
            .filter_map(|o| match o {
                Output::Reply { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        tokens.extend(self.queued.drain(..).filter_map(|(_, q)| match q {
            Queued::Admin(token, ..) => Some(token),
            _ => None,
        }));
        for token in tokens {
            self.released.push_back(Output::Reply {
                token,
                answer: Err(NodeError::Stopped {
                    cause: cause.clone(),
                }),
            });
        }
        self.stopped = Some(cause);
    }

    fn refuse(&self, command: &Command) -> Option<EngineRefusal> {
        let Command::Admin { request, .. } = command else {
            return None;
        };
        let adds_job = matches!(
            request,
            AdminRequest::SubmitJob { .. } | AdminRequest::CloneJob { .. }
        );
        if !adds_job {
            return None;
        }
        let queued = self.state.queue.len();
        (queued >= self.limits.queued_jobs_max)
            .then_some(EngineRefusal::TooManyQueuedJobs { queued })
    }

    fn verify_at(&self, job_id: JobId) -> Timestamp {
        self.state
            .jobs
            .get(&job_id)
            .map_or(Timestamp::from_millis(0), |j| j.submit_time)
    }

    /// The one place where a core effect becomes something to do.
    fn route(&self, effect: Effect) -> Output {
        let site = |site: String, request: Request| Output::Send {
            to: Participant::Site(site),
            request,
        };
        let local = |request: Request| Output::Send {
            to: Participant::Local,
            request,
        };
        match effect {
            Effect::CheckResources {
                site: s,
                try_id,
                job_id,
                resources,
            } => site(
                s,
                Request::CheckResources {
                    try_id,
                    job_id,
                    resources,
                },
            ),
            Effect::CancelReservation {
                site: s,
                job_id,
                token,
            } => site(s, Request::CancelReservation { job_id, token }),
            Effect::DeploySiteApp {
                site: s,
                job_id,
                app,
                package,
            } => site(
                s,
                Request::Deploy {
                    job_id,
                    app_name: app,
                    package,
                    verify_at: self.verify_at(job_id),
                },
            ),
            Effect::StartSiteApp { site: s, job_id } => site(s, Request::Start { job_id }),
            Effect::StopSiteApp { site: s, job_id } => site(s, Request::Stop { job_id }),
            Effect::DeleteSiteDeployment { site: s, job_id } => site(s, Request::Delete { job_id }),
            Effect::DeployServerApp {
                job_id,
                app,
                package,
            } => local(Request::Deploy {
                job_id,
                app_name: app,
                package,
                verify_at: self.verify_at(job_id),
            }),
            Effect::StartServerApp { job_id } => local(Request::Start { job_id }),
            Effect::StopServerApp { job_id } => local(Request::Stop { job_id }),
            Effect::DeleteServerDeployment { job_id } => local(Request::Delete { job_id }),
            Effect::ArchiveWorkspace { job_id } => Output::Archive { job_id },
            Effect::FreeBlob { hash } => Output::FreeBlob { hash },
        }
    }
}

/// The acknowledgement owed for an exit report, sent once the report is durable (whether
/// it changed anything or was a resend).
fn acknowledgement(command: &Command) -> Option<Output> {
    match command {
        Command::Site {
            site,
            report: SiteReport::AppExited { report_id, .. },
        } => Some(Output::Send {
            to: Participant::Site(site.clone()),
            request: Request::Acknowledge {
                report_id: report_id.clone(),
            },
        }),
        _ => None,
    }
}

/// What the local participant's report means to the core, which keeps its own words for
/// the server app (`ServerDeployFinished`, `ServerAppStarted`, ...).
fn local_report(report: SiteReport) -> Vec<Command> {
    match report {
        SiteReport::Connected { running, .. } => running
            .into_iter()
            .map(|job_id| Command::RunReattached { job_id })
            .collect(),
        SiteReport::DeployAnswer { job_id, result } => {
            vec![Command::ServerDeployFinished { job_id, result }]
        }
        SiteReport::StartAnswer { job_id, result } => {
            vec![Command::ServerAppStarted { job_id, result }]
        }
        SiteReport::AppExited {
            job_id, outcome, ..
        } => vec![Command::ServerAppExited { job_id, outcome }],
        SiteReport::Disconnected | SiteReport::ResourceAnswer { .. } => {
            tracing::debug!("the local participant has no schedule role; report ignored");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clock::SIM_EPOCH;
    use crate::engine::ids::SeededIds;
    use crate::lifecycle::decide::test_event_limit;
    use crate::lifecycle::event::encoded_len;

    /// A site's connect; the more resources it reports, the larger its event.
    fn connect(resources: usize) -> SiteReport {
        SiteReport::Connected {
            resources: (0..resources).map(|r| (format!("gpu-{r}"), 1.0)).collect(),
            running: vec![],
        }
    }

    /// Appends the batch the node hands out (if any) to `stored` and reports it done.
    fn append(node: &mut Node, stored: &mut Vec<Event>) -> Vec<Event> {
        let Some(append) = node.poll_append() else {
            return Vec::new();
        };
        stored.extend(append.events.iter().cloned());
        node.append_done(append.id, Ok(()));
        append.events
    }

    fn kinds(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.name()).collect()
    }

    #[test]
    fn a_command_refused_after_its_events_were_folded_leaves_the_state_of_the_batch_without_it() {
        let settings = Settings::default();
        let ids = Ids::Seeded(SeededIds::new(7));
        let mut node = Node::start(
            State::new(),
            None,
            settings,
            ids,
            Default::default(),
            SIM_EPOCH,
        );
        let mut stored = Vec::new();
        append(&mut node, &mut stored);
        // The limit: the largest event of a bare connect, decided on a copy.
        let command = Command::Site {
            site: "site-1".into(),
            report: connect(0),
        };
        let bare = lifecycle::decide(
            node.state(),
            node.settings(),
            command,
            SIM_EPOCH,
            &mut Ids::Seeded(SeededIds::new(8)),
        )
        .expect("a connect is decided");
        let limit = bare.events.iter().map(encoded_len).max().expect("events");
        // One batch: the bare connect (fits), then a connect reporting resources (does
        // not): it is decided after the first, in the same state, and refused once folded.
        for (site, resources) in [("site-1", 0), ("site-2", 8)] {
            let from = Participant::Site(site.into());
            let report = connect(resources);
            node.handle(SIM_EPOCH, Input::Report { from, report });
        }
        let batch = test_event_limit::with(limit, || append(&mut node, &mut stored));
        assert_eq!(
            kinds(&batch),
            kinds(&bare.events),
            "the batch holds the first connect's events and nothing of the refused one"
        );
        // The node's state is the fold of what is stored, and of nothing else.
        let mut replayed = State::new();
        for event in &stored {
            replayed.apply_checked(event).expect("a legal history");
        }
        assert_eq!(replayed.sites.len(), 1, "only site-1 is recorded");
        assert_eq!(node.state(), &replayed);
        // A refused report has no answer to carry; the next command continues from there.
        let from = Participant::Site("site-2".into());
        node.handle(
            SIM_EPOCH,
            Input::Report {
                from,
                report: connect(8),
            },
        );
        let next = append(&mut node, &mut stored);
        assert_eq!(next.first().map(|e| e.seq), Some(replayed.last_seq + 1));
        assert_eq!(node.state().sites.len(), 2);
    }
}
