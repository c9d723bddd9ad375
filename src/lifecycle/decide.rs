//! `decide`: command + state + settings + `now` + injected ids -> events and effects, or a
//! typed rejection. Pure.
//!
//! Every event is folded into the state as soon as it is made, so later steps of the same
//! decision see it, and an event that would be illegal stops at the fold's own check.
//! [`decide_in_place`] folds into the caller's state itself: the engine decides a batch of
//! commands one after another in one state, so a node of its persistent maps that one
//! command copied is changed in place by the next (a copy per command would copy it
//! again, and free the last copy). [`decide`] works on a copy (the state's persistent maps
//! make it a few pointers), so a decision that records nothing changes nothing. After the
//! command's own events, the jobs it touched are settled (stop a failing run, decide a
//! final status, mark a run stopped, start an archive) and a scheduling pass runs, so the
//! engine never polls.

use std::collections::{BTreeMap, BTreeSet};

use crate::job::meta::SERVER;
use crate::job::JobId;
use crate::lifecycle::actor::{Actor, Identity, Role};
use crate::lifecycle::command::{AdminRequest, Command, Origin, SubmitSignature, Timer};
use crate::lifecycle::effect::Effect;
use crate::lifecycle::event::{
    cap_reason, capped_list, chunk_by_bytes, encoded_len, group_requests, Event, EventKind,
    LeftOutEnd, ResourceAnswer, ResourceGroup, ScheduleOutcome, StepResult, DISPATCHED_SITES_NAMED,
    MAX_EVENT_BYTES, MAX_ID_BYTES, MAX_REASON_BYTES,
};
use crate::lifecycle::participant::{ExitOutcome, SiteReport};
use crate::lifecycle::recovery;
use crate::lifecycle::rejection::Rejection;
use crate::lifecycle::state::{
    describe_outcome, final_status, Answer, Archive, Job, Reply, RequestFingerprint, RequestKey,
    RunPhase, StartStep, State,
};
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::lifecycle::timers;
use crate::schedule::{self, PassStep, TryVerdict};
use crate::settings::Settings;

/// Where `decide` gets new ids. The engine draws UUID v4s; tests and the simulator use a
/// seeded or counting source, so a run is reproducible.
pub trait IdSource {
    /// A fresh job id, never handed out before.
    fn new_job_id(&mut self) -> JobId;
}

/// What `decide` made of one command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Events to append, in order: sequence numbers continue the state's, and each `at` is
    /// `max(now, previous at)`.
    pub events: Vec<Event>,
    /// Effects to release only after the events are durable.
    pub effects: Vec<Effect>,
    /// The answer to an admin request (for other commands, `None`). A refusal is recorded
    /// as a `RequestRefused` event and answered here as `Err`.
    pub reply: Option<Reply>,
}

/// Decides what a command means, given the state so far, the settings, the time and a
/// source of new ids.
///
/// `Err` is returned only for an admin request that cannot even be recorded (a bad
/// idempotency key); every other refusal is recorded and answered in
/// [`Decision::reply`]. A repeated idempotency key returns the first answer and no events.
pub fn decide(
    state: &State,
    settings: &Settings,
    command: Command,
    now: Timestamp,
    ids: &mut impl IdSource,
) -> Result<Decision, Rejection> {
    let mut scratch = state.clone();
    decide_in_place(&mut scratch, settings, command, now, ids).map_err(|r| r.rejection)
}

/// [`decide`], and `state` becomes the state after the decision's events, the one the
/// decision folded them into as it made them, so the caller folds nothing a second time.
/// On `Err`, and for a decision that records nothing, `state` is unchanged.
pub fn decide_and_apply(
    state: &mut State,
    settings: &Settings,
    command: Command,
    now: Timestamp,
    ids: &mut impl IdSource,
) -> Result<Decision, Rejection> {
    let before = state.clone();
    decide_in_place(state, settings, command, now, ids).map_err(|refused| {
        if refused.folded {
            *state = before;
        }
        refused.rejection
    })
}

/// A decision refused ([`decide_in_place`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    /// Why.
    pub rejection: Rejection,
    /// Whether the state holds events of the refused decision: the caller must put back
    /// the state it had before the decision.
    pub folded: bool,
}

/// [`decide`], folding the decision's events into `state` itself as it makes them, with no
/// copy of the state. A decision that records nothing leaves `state` unchanged. A refusal
/// found before any event was made leaves it unchanged too; one found after (an event too
/// large for the history, which the bounds on what comes in should make impossible) leaves
/// the events folded and says so in [`Refused::folded`].
pub fn decide_in_place(
    state: &mut State,
    settings: &Settings,
    command: Command,
    now: Timestamp,
    ids: &mut impl IdSource,
) -> Result<Decision, Refused> {
    let refused = |rejection| Refused {
        rejection,
        folded: false,
    };
    let mut reused_key = false;
    if let Command::Admin { origin, request } = &command {
        let identity = &origin.identity;
        if identity.name.len() > MAX_ID_BYTES || identity.org.len() > MAX_ID_BYTES {
            return Err(refused(Rejection::BadIdentity {
                reason: format!(
                    "an admin's name and org may have at most {MAX_ID_BYTES} bytes, these have {} and {}",
                    identity.name.len(),
                    identity.org.len()
                ),
            }));
        }
        if let Some(key) = &origin.request_id {
            if key.is_empty() || key.len() > MAX_ID_BYTES {
                return Err(refused(Rejection::BadRequestId {
                    reason: format!(
                        "a request id must have 1 to {MAX_ID_BYTES} bytes, this one has {}",
                        key.len()
                    ),
                }));
            }
            let request_key = RequestKey {
                identity: std::sync::Arc::new(identity.clone()),
                key: key.as_str().into(),
            };
            if let Some(first) = state.requests.get(&request_key, now.max(state.last_at)) {
                if first.fingerprint.same_request(&fingerprint(request)) {
                    return Ok(Decision {
                        reply: Some(first.reply()),
                        ..Decision::default()
                    });
                }
                reused_key = true;
            }
        }
    }
    let decision = decide_inner(state, settings, command, now, ids, reused_key);
    // Last line of defence: the bounds on what comes in (meta, names, ids, reasons) and
    // the splitting of long lists keep every event small; should one still not fit, the
    // command is refused here, before anything is written, so no event can stop the engine.
    let limit = max_event_bytes();
    if let Some(event) = decision.events.iter().find(|e| encoded_len(e) > limit) {
        let bytes = encoded_len(event);
        tracing::error!(
            seq = event.seq,
            kind = event.kind.name(),
            bytes,
            "refusing a command whose event would not fit in the history"
        );
        return Err(Refused {
            rejection: Rejection::TooLarge { bytes, limit },
            folded: true,
        });
    }
    Ok(decision)
}

/// The largest event a decision may make: [`MAX_EVENT_BYTES`], or in tests a smaller
/// limit ([`test_event_limit::with`]) that lets them reach the refusal of a decision whose
/// events were already folded.
fn max_event_bytes() -> usize {
    #[cfg(test)]
    if let Some(limit) = test_event_limit::LIMIT.get() {
        return limit;
    }
    MAX_EVENT_BYTES
}

#[cfg(test)]
pub(crate) mod test_event_limit {
    use std::cell::Cell;

    thread_local! {
        pub(super) static LIMIT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Runs `f` with decisions on this thread refusing any event over `limit` bytes.
    pub(crate) fn with<T>(limit: usize, f: impl FnOnce() -> T) -> T {
        LIMIT.set(Some(limit));
        let out = f();
        LIMIT.set(None);
        out
    }
}

/// What identifies an admin request under its idempotency key.
fn fingerprint(request: &AdminRequest) -> RequestFingerprint {
    RequestFingerprint {
        operation: request.operation().into(),
        job_id: request.job_id(),
        package: match request {
            AdminRequest::SubmitJob { package, .. } => Some(*package),
            _ => None,
        },
    }
}

fn decide_inner(
    state: &mut State,
    settings: &Settings,
    command: Command,
    now: Timestamp,
    ids: &mut impl IdSource,
    reused_key: bool,
) -> Decision {
    let mut ctx = Ctx {
        scratch: state,
        settings,
        now,
        request_id: None,
        events: Vec::new(),
        effects: Vec::new(),
        touched: BTreeSet::new(),
        tried: BTreeSet::new(),
    };
    let reply = match command {
        Command::StartServer { boot_id } => {
            // The envelope carries the new boot id from this event on.
            ctx.scratch.boot_id = boot_id;
            ctx.emit(Actor::System, EventKind::ServerStarted { boot_id });
            if !recovery::needs_observation(ctx.scratch) {
                // No run was in flight: there is nothing to wait for, so the restart
                // decisions (pending archives, if any) are made at once.
                ctx.finish_recovery();
            }
            None
        }
        Command::Admin { origin, request } => {
            Some(admin(&mut ctx, origin, request, ids, reused_key))
        }
        Command::Site { site, report } => {
            site_report(&mut ctx, site, report);
            None
        }
        Command::ServerDeployFinished { job_id, result } => {
            server_deploy_finished(&mut ctx, job_id, result);
            None
        }
        Command::ServerAppStarted { job_id, result } => {
            server_app_started(&mut ctx, job_id, result);
            None
        }
        Command::ServerAppExited { job_id, outcome } => {
            // An exit that arrives while the start answer is still awaited is recorded
            // too (SPEC section 2): the app ran, and once its start completes the job
            // goes RUNNING and on to the status this exit decides. Dropping it would leave
            // the job RUNNING with no exit ever to come.
            if ctx.scratch.jobs.get(&job_id).is_some_and(|j| {
                j.run.server_exit.is_none()
                    && !j.run.server_lost
                    && (j.run.server_started()
                        || matches!(j.run.step, Some((StartStep::StartingServer, _))))
            }) {
                ctx.emit(
                    Actor::System,
                    EventKind::ServerAppExited { job_id, outcome },
                );
            }
            None
        }
        Command::RunReattached { job_id } => {
            let open = ctx
                .scratch
                .recovery
                .as_ref()
                .is_some_and(|w| !w.reattached.contains(&job_id));
            // A server app found alive for a job that has ended (a crash lost the stop
            // that followed the append that ended it) must not outlive its job: it is
            // stopped (SPEC 4, "a stop is over" in SPEC 8). The re-attach is recorded only
            // while the run still waits for that app's exit, so the run holds its slot
            // until it has ended; a run that records no started server app (the crash
            // also lost its start) has no app to re-attach to, and its recovery settles
            // it once the stop has been sent.
            let job = ctx.scratch.jobs.get(&job_id);
            let ended = job.is_some_and(|j| j.status.is_terminal());
            let exit_awaited = job.is_some_and(|j| {
                j.run.server_outstanding()
                    && !matches!(j.run.phase, RunPhase::Stopped | RunPhase::NotStarted)
            });
            let exists = job.is_some();
            if ended {
                ctx.effect(Effect::StopServerApp { job_id });
            }
            if open && exists && (!ended || exit_awaited) {
                ctx.emit(Actor::System, EventKind::RunReattached { job_id });
            }
            None
        }
        Command::ArchiveFinished { job_id, result } => {
            archive_finished(&mut ctx, job_id, result);
            None
        }
        Command::TimerFired(timer) => {
            timer_fired(&mut ctx, timer);
            None
        }
    };
    ctx.request_id = None;
    ctx.settle_touched();
    ctx.schedule_pass();
    Decision {
        events: ctx.events,
        effects: ctx.effects,
        reply,
    }
}

/// The working set of one decision.
struct Ctx<'a> {
    /// The state so far, with this decision's events folded in as they are made. Only
    /// [`Ctx::emit`] changes it (and the boot id of a start, with the event that records
    /// it), so a command that records nothing (a late answer, a timer with nothing due, a
    /// repeated report) leaves it as it was.
    scratch: &'a mut State,
    settings: &'a Settings,
    now: Timestamp,
    request_id: Option<String>,
    events: Vec<Event>,
    effects: Vec<Effect>,
    /// Jobs whose events were made in this decision; they are settled at the end.
    touched: BTreeSet<JobId>,
    /// Jobs tried by the scheduler in this decision; a pass never tries one twice.
    tried: BTreeSet<JobId>,
}

impl Ctx<'_> {
    /// Makes the next event, applies it to the scratch state, and keeps it.
    fn emit(&mut self, actor: Actor, kind: EventKind) {
        let event = Event {
            seq: self.scratch.last_seq + 1,
            at: self.now.max(self.scratch.last_at),
            actor,
            request_id: self.request_id.clone(),
            boot_id: self.scratch.boot_id,
            kind,
        };
        if let Some(job_id) = event.kind.job_id() {
            self.touched.insert(job_id);
        }
        self.scratch.apply(&event);
        self.events.push(event);
    }

    fn effect(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    fn job(&self, job_id: &JobId) -> Option<&Job> {
        self.scratch.jobs.get(job_id).map(|j| &**j)
    }

    /// The dispatched job and the start step it has been in for `timeout` or longer.
    /// `None` when the timer is stale: the job moved on, or a recovery is in progress.
    fn overdue_step(
        &self,
        job_id: &JobId,
        now: Timestamp,
        timeout: std::time::Duration,
    ) -> Option<(&Job, StartStep)> {
        let job = self.job(job_id)?;
        let (step, since) = job.run.step?;
        let due = job.status == RunStatus::Dispatched
            && self.scratch.recovery.is_none()
            && now >= since.plus(timeout);
        due.then_some((job, step))
    }

    /// Gives back every reservation the job's run still holds.
    fn cancel_reservations(&mut self, job_id: JobId) {
        let Some(job) = self.job(&job_id) else { return };
        let tokens: Vec<(String, String)> = job
            .run
            .reservations
            .iter()
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        for (site, token) in tokens {
            self.effect(Effect::CancelReservation {
                site,
                job_id,
                token,
            });
        }
    }

    /// Cancels the try in flight for this job, giving back what it reserved.
    fn cancel_try_of(&mut self, job_id: JobId, actor: &Actor) {
        let Some(schedule_try) = self.scratch.schedule_try.clone() else {
            return;
        };
        if schedule_try.job_id != job_id {
            return;
        }
        for (site, answer) in &schedule_try.answers {
            if let ResourceAnswer::Reserved(token) = answer {
                self.effect(Effect::CancelReservation {
                    site: site.clone(),
                    job_id,
                    token: token.clone(),
                });
            }
        }
        self.emit(
            actor.clone(),
            EventKind::ScheduleTryCancelled {
                job_id,
                try_id: schedule_try.try_id,
            },
        );
    }

    /// Asks every process of the run that may still run to stop, and records the request.
    fn stop_run(&mut self, job_id: JobId, actor: Actor, reason: String) {
        let Some(job) = self.job(&job_id) else { return };
        let server = job.run.server_outstanding();
        let mut sites: Vec<String> = job.run.outstanding_sites().map(String::from).collect();
        sites.extend(job.run.left_out.iter().cloned());
        if server {
            self.effect(Effect::StopServerApp { job_id });
        }
        for site in sites {
            self.effect(Effect::StopSiteApp { site, job_id });
        }
        self.emit(
            actor,
            EventKind::RunStopRequested {
                job_id,
                reason: cap_reason(&reason),
            },
        );
    }

    /// Records a site's deploy answer. A site that failed is left out of the run, so its
    /// reservation is given back now (the fold forgets the token with this event).
    fn record_site_deploy(
        &mut self,
        actor: Actor,
        job_id: JobId,
        site: String,
        result: StepResult,
    ) {
        if !result.is_ok() {
            let token = self
                .job(&job_id)
                .and_then(|j| j.run.reservations.get(&site).cloned());
            if let Some(token) = token {
                self.effect(Effect::CancelReservation {
                    site: site.clone(),
                    job_id,
                    token,
                });
            }
        }
        self.emit(
            actor,
            EventKind::DeployFinished {
                job_id,
                participant: site,
                result,
            },
        );
    }

    /// Makes the restart decisions and closes the recovery window.
    fn finish_recovery(&mut self) {
        let (events, effects) = recovery::decide_restart(self.scratch, self.settings);
        for (actor, kind) in events {
            self.emit(actor, kind);
        }
        self.effects.extend(effects);
    }

    /// Settles every job touched so far, until nothing more follows.
    fn settle_touched(&mut self) {
        let mut done: BTreeSet<JobId> = BTreeSet::new();
        loop {
            let next = self.touched.iter().find(|id| !done.contains(*id)).copied();
            let Some(job_id) = next else { break };
            done.insert(job_id);
            let before = self.events.len();
            self.settle(job_id);
            if self.events.len() != before {
                // The job changed again; look at it once more.
                done.remove(&job_id);
            }
        }
    }

    /// One step of the follow-ups that a job's facts call for (SPEC section 8).
    fn settle(&mut self, job_id: JobId) {
        let Some(job) = self.job(&job_id) else { return };
        let run = &job.run;
        match job.status {
            RunStatus::Running => {
                if !run.stopping() {
                    if let Some(reason) = stop_reason(job) {
                        self.stop_run(job_id, Actor::System, reason);
                        return;
                    }
                }
                let Some((_, exited_at)) = run.server_exit else {
                    return;
                };
                let barrier_over = self.now >= exited_at.plus(self.settings.client_outcome_wait);
                // Checked before the list is made: with thousands of sites, each report
                // would otherwise copy the names of all the others.
                if !barrier_over && run.any_site_outstanding() {
                    return;
                }
                let outstanding: Vec<String> = run.outstanding_sites().map(String::from).collect();
                let left_out: Vec<String> = run.left_out.iter().cloned().collect();
                let stopping = run.stopping();
                let status = final_status(run.failure.as_deref());
                let mut reason = match &run.failure {
                    None => "the server app and every site ended normally".to_string(),
                    Some(f) if f.participant == SERVER => {
                        format!("the server app ended with {}", describe_outcome(f.outcome))
                    }
                    Some(f) if run.lapsed.contains(&f.participant) => format!(
                        "site {} was lost: no report within site_reconnect_grace (counted as code 104)",
                        f.participant
                    ),
                    Some(f) => format!(
                        "site {} reported {}",
                        f.participant,
                        describe_outcome(f.outcome)
                    ),
                };
                if !outstanding.is_empty() {
                    reason.push_str(&format!(
                        "; no report within client_outcome_wait ({}) from ",
                        crate::settings::format_duration(self.settings.client_outcome_wait),
                    ));
                    let budget = MAX_REASON_BYTES.saturating_sub(reason.len());
                    reason.push_str(&capped_list(&outstanding, ", ", budget));
                }
                self.emit(
                    Actor::System,
                    EventKind::JobFinished {
                        job_id,
                        status,
                        reason: cap_reason(&reason),
                    },
                );
                let unreported = !outstanding.is_empty();
                for site in outstanding.into_iter().chain(left_out.iter().cloned()) {
                    self.effect(Effect::StopSiteApp { site, job_id });
                }
                let stopped = self
                    .job(&job_id)
                    .is_some_and(|j| j.run.phase == RunPhase::Stopped);
                if unreported || !left_out.is_empty() {
                    // A site that never reported (the barrier timed out) or a left-out one
                    // may still run the app: the run holds its slot until that app is known
                    // to have ended, or the stop is over (SPEC section 8): an away site at
                    // the end of its reconnect grace, a silent one at the stop wait's end.
                    if !stopping {
                        let reason = if unreported {
                            "the outcome barrier timed out; sites that never reported may \
                             still run the app"
                        } else {
                            "the job ended; sites left out of its run may still run its app"
                        };
                        self.emit(
                            Actor::System,
                            EventKind::RunStopRequested {
                                job_id,
                                reason: reason.to_string(),
                            },
                        );
                    }
                } else if !stopped {
                    self.emit(Actor::System, EventKind::RunStopped { job_id });
                }
            }
            status if status.is_terminal() => {
                let unsettled = matches!(
                    run.phase,
                    RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
                );
                if unsettled && run.all_ended() {
                    self.emit(Actor::System, EventKind::RunStopped { job_id });
                    return;
                }
                let settled = matches!(run.phase, RunPhase::NotStarted | RunPhase::Stopped);
                if settled
                    && matches!(
                        job.archive,
                        Archive::Pending {
                            in_flight: false,
                            failures: 0,
                            ..
                        }
                    )
                {
                    self.effect(Effect::ArchiveWorkspace { job_id });
                    self.emit(Actor::System, EventKind::WorkspaceArchiveStarted { job_id });
                }
            }
            _ => {}
        }
    }

    /// Runs a scheduling pass until it has nothing left to do (SPEC section 7).
    fn schedule_pass(&mut self) {
        // Whether a pass may run is decided once: a step without resources records a try
        // for a SUBMITTED job (which stays SUBMITTED or ends CAN_NOT_SCHEDULE), so it
        // changes neither the recovery window, nor the try in flight, nor the number of
        // active jobs; the only other step ends the pass.
        if schedule::blocked(self.scratch, self.settings).is_some() {
            return;
        }
        // The jobs due now, in queue order, from the due index: a pass costs what is
        // due, not what is queued. A try changes only the job tried, so the list holds
        // for the whole pass; each step is checked against a scan of the whole queue.
        let mut due = schedule::due_jobs(self.scratch, self.settings, self.now).into_iter();
        loop {
            let step = due
                .by_ref()
                .filter_map(|(_, _, id)| self.scratch.jobs.get(&id))
                .find(|job| job.status == RunStatus::Submitted && !self.tried.contains(&job.id))
                .map_or(PassStep::Idle, |job| schedule::step_for(self.scratch, job));
            debug_assert_eq!(
                step,
                schedule::next_step(self.scratch, self.settings, self.now, &self.tried),
                "the due index must give the step a scan of the whole queue gives"
            );
            match step {
                PassStep::Idle => return,
                PassStep::NoResources { job_id, reason } => {
                    self.tried.insert(job_id);
                    self.try_failed(job_id, reason);
                }
                PassStep::AskSites { job_id, asked } => {
                    self.tried.insert(job_id);
                    let try_id = self.scratch.last_seq + 1;
                    for request in &asked {
                        self.effect(Effect::CheckResources {
                            site: request.site.clone(),
                            try_id,
                            job_id,
                            resources: request.resources.clone(),
                        });
                    }
                    // One request per distinct resource map, and a long list of sites split
                    // over several events, so every event stays small (SPEC section 3).
                    let mut chunks = chunk_groups(group_requests(&asked)).into_iter();
                    let first = chunks.next().unwrap_or_default();
                    self.emit(
                        Actor::Scheduler,
                        EventKind::ScheduleTryStarted {
                            job_id,
                            try_id,
                            asked: Vec::new(),
                            requests: first,
                        },
                    );
                    for requests in chunks {
                        self.emit(
                            Actor::Scheduler,
                            EventKind::ScheduleTryExtended {
                                job_id,
                                try_id,
                                requests,
                            },
                        );
                    }
                    // One try in flight at a time: the pass resumes when it ends.
                    return;
                }
            }
        }
    }

    /// Records a try without resources, and ends the job at the attempt limit.
    fn try_failed(&mut self, job_id: JobId, reason: String) {
        self.emit(
            Actor::Scheduler,
            EventKind::ScheduleAttempted {
                job_id,
                outcome: ScheduleOutcome::NoResources {
                    reason: reason.clone(),
                },
            },
        );
        let count = self.job(&job_id).map_or(0, |j| j.schedule_count);
        if count >= self.settings.max_schedule_count {
            self.emit(
                Actor::Scheduler,
                EventKind::JobFinished {
                    job_id,
                    status: RunStatus::CanNotSchedule,
                    reason: cap_reason(&format!(
                        "schedule_count ({count}) reached max_schedule_count ({}); last try: {reason}",
                        self.settings.max_schedule_count
                    )),
                },
            );
        }
    }

    /// Ends the try in flight once every asked site has answered (or timed out).
    fn finish_try_if_complete(&mut self) {
        // Checked before anything is copied: a try over many sites is asked this after
        // every answer.
        if !self
            .scratch
            .schedule_try
            .as_ref()
            .is_some_and(|t| t.complete())
        {
            return;
        }
        let Some(schedule_try) = self.scratch.schedule_try.clone() else {
            return;
        };
        let Some(job) = self.job(&schedule_try.job_id).cloned() else {
            return;
        };
        let job_id = job.id;
        self.tried.insert(job_id);
        let mut verdict = schedule::evaluate_try(&job.meta, &schedule_try);
        if schedule::max_jobs_reached(self.scratch, self.settings) {
            if let TryVerdict::Dispatch { reservations, .. } = verdict {
                // The limit was reached while the try was in flight: a site came back with
                // an app of an ended run, which holds its run's slot again (SPEC 8). No
                // job is dispatched while max_jobs jobs count against the limit (SPEC 7).
                verdict = TryVerdict::NoResources {
                    reason: format!(
                        "max_jobs ({}) reached while the try was in flight: {} jobs hold \
                         a slot (a site came back with the app of an ended run)",
                        self.settings.max_jobs,
                        self.scratch.active_job_count()
                    ),
                    cancel: reservations.into_iter().collect(),
                };
            }
        }
        match verdict {
            TryVerdict::NoResources { reason, cancel } => {
                for (site, token) in cancel {
                    self.effect(Effect::CancelReservation {
                        site,
                        job_id,
                        token,
                    });
                }
                self.try_failed(job_id, reason);
            }
            TryVerdict::Dispatch {
                sites,
                reservations,
            } => {
                let named: Vec<String> =
                    sites.iter().take(DISPATCHED_SITES_NAMED).cloned().collect();
                self.emit(
                    Actor::Scheduler,
                    EventKind::ScheduleAttempted {
                        job_id,
                        outcome: ScheduleOutcome::Dispatched {
                            more: sites.len() - named.len(),
                            sites: named,
                        },
                    },
                );
                let pairs: Vec<(String, Option<String>)> = sites
                    .iter()
                    .map(|s| (s.clone(), reservations.get(s).cloned()))
                    .collect();
                let weigh = |(s, t): &(String, Option<String>)| {
                    s.len() * 2 + t.as_ref().map_or(0, String::len)
                };
                let mut chunks = chunk_by_bytes(&pairs, weigh).into_iter();
                let split = |chunk: Vec<(String, Option<String>)>| {
                    let sites: Vec<String> = chunk.iter().map(|(s, _)| s.clone()).collect();
                    let reservations: BTreeMap<String, String> = chunk
                        .into_iter()
                        .filter_map(|(s, t)| t.map(|t| (s, t)))
                        .collect();
                    (sites, reservations)
                };
                let (sites, reservations) = split(chunks.next().unwrap_or_default());
                self.emit(
                    Actor::Scheduler,
                    EventKind::JobDispatched {
                        job_id,
                        sites,
                        reservations,
                    },
                );
                for chunk in chunks {
                    let (sites, reservations) = split(chunk);
                    self.emit(
                        Actor::Scheduler,
                        EventKind::JobDispatchExtended {
                            job_id,
                            sites,
                            reservations,
                        },
                    );
                }
                self.deploy_server(job_id);
            }
        }
    }

    /// Deploy begins with the server app.
    fn deploy_server(&mut self, job_id: JobId) {
        let Some(job) = self.job(&job_id) else { return };
        match job.meta.app_for(SERVER) {
            Some(app) => {
                let effect = Effect::DeployServerApp {
                    job_id,
                    app: app.to_string(),
                    package: job.package,
                };
                self.effect(effect);
            }
            None => {
                // Validation guarantees a server app; a meta without one fails like a deploy.
                self.record_server_deploy(
                    job_id,
                    Err("the deploy map names no app for the server".to_string()),
                );
            }
        }
    }

    fn record_server_deploy(&mut self, job_id: JobId, result: Result<(), String>) {
        let result = step_result(result);
        let ok = result.is_ok();
        self.emit(
            Actor::System,
            EventKind::DeployFinished {
                job_id,
                participant: SERVER.to_string(),
                result: result.clone(),
            },
        );
        let Some(job) = self.job(&job_id) else { return };
        if job.status != RunStatus::Dispatched {
            return;
        }
        if ok {
            let sites = job.run.sites.clone();
            let package = job.package;
            let apps: Vec<(String, Option<String>)> = sites
                .iter()
                .map(|s| (s.clone(), job.meta.app_for(s).map(str::to_string)))
                .collect();
            for (site, app) in apps {
                match app {
                    Some(app) => self.effect(Effect::DeploySiteApp {
                        site,
                        job_id,
                        app,
                        package,
                    }),
                    None => self.record_site_deploy(
                        Actor::System,
                        job_id,
                        site,
                        StepResult::Error("no app for this site".to_string()),
                    ),
                }
            }
            self.evaluate_site_deploys(job_id);
        } else {
            self.cancel_reservations(job_id);
            let reason = format!("deploy failed: {}", deploy_line(SERVER, &result));
            self.fail_to_run(job_id, reason);
        }
    }

    fn fail_to_run(&mut self, job_id: JobId, reason: String) {
        self.emit(
            Actor::System,
            EventKind::JobFinished {
                job_id,
                status: RunStatus::FailedToRun,
                reason: cap_reason(&reason),
            },
        );
    }

    /// After the last site's deploy answer: start, or fail to run (SPEC section 8).
    fn evaluate_site_deploys(&mut self, job_id: JobId) {
        // Nothing is copied until every site has answered (this runs after each answer).
        let all_answered = self.job(&job_id).is_some_and(|j| {
            let server = usize::from(j.run.deploy.contains_key(SERVER));
            j.status == RunStatus::Dispatched && j.run.deploy.len() - server >= j.run.sites.len()
        });
        if !all_answered {
            return;
        }
        let Some(job) = self.job(&job_id).cloned() else {
            return;
        };
        let run = &job.run;
        if job.status != RunStatus::Dispatched
            || !run
                .sites
                .iter()
                .all(|s| run.deploy.contains_key(s.as_str()))
        {
            return;
        }
        let ok: Vec<String> = run
            .sites
            .iter()
            .filter(|s| run.deploy.get(s.as_str()).is_some_and(StepResult::is_ok))
            .cloned()
            .collect();
        let failed: Vec<String> = run
            .sites
            .iter()
            .filter(|s| !ok.contains(s))
            .cloned()
            .collect();
        let problem = enough_sites(&job, &ok, "deployed");
        for site in &failed {
            self.effects.push(Effect::DeleteSiteDeployment {
                site: site.clone(),
                job_id,
            });
        }
        match problem {
            Some(problem) => {
                let job = self.job(&job_id).expect("the job was read above");
                let head = format!("deploy failed: {problem}; ");
                let budget = MAX_REASON_BYTES.saturating_sub(head.len());
                let detail = capped_list(&job.run.deploy_detail(), "; ", budget);
                for site in ok {
                    self.effect(Effect::DeleteSiteDeployment { site, job_id });
                }
                self.cancel_reservations(job_id);
                self.fail_to_run(job_id, format!("{head}{detail}"));
            }
            None => self.effect(Effect::StartServerApp { job_id }),
        }
    }

    /// After the last site's start answer: `RUNNING`, or fail to run and stop.
    fn evaluate_site_starts(&mut self, job_id: JobId) {
        // Nothing is copied until every deployed site has answered its start.
        let all_answered = self.job(&job_id).is_some_and(|j| {
            let deployed = j
                .run
                .deploy
                .iter()
                .filter(|(who, r)| who.as_str() != SERVER && r.is_ok())
                .count();
            let server = usize::from(j.run.start.contains_key(SERVER));
            j.run.start.len() - server >= deployed
        });
        if !all_answered {
            return;
        }
        let Some(job) = self.job(&job_id).cloned() else {
            return;
        };
        let run = &job.run;
        if job.status != RunStatus::Dispatched
            || !matches!(run.step, Some((StartStep::StartingSites, _)))
        {
            return;
        }
        let deployed: Vec<String> = run
            .sites
            .iter()
            .filter(|s| run.deploy.get(s.as_str()).is_some_and(StepResult::is_ok))
            .cloned()
            .collect();
        if !deployed.iter().all(|s| run.start.contains_key(s.as_str())) {
            return;
        }
        let started: Vec<String> = deployed
            .iter()
            .filter(|s| run.start.get(s.as_str()).is_some_and(StepResult::is_ok))
            .cloned()
            .collect();
        let not_started: Vec<String> = deployed
            .iter()
            .filter(|s| !started.contains(s))
            .cloned()
            .collect();
        let problem = enough_sites(&job, &started, "started");
        let lines: Vec<String> = not_started
            .iter()
            .map(|s| match run.start.get(s.as_str()) {
                Some(StepResult::Error(e)) => format!("{s}: {e}"),
                _ => format!("{s}: no reply (start timeout)"),
            })
            .collect();
        for site in &not_started {
            // A site that answers late may still start; it is told to stop and clean up.
            self.effects.push(Effect::StopSiteApp {
                site: site.clone(),
                job_id,
            });
            self.effects.push(Effect::DeleteSiteDeployment {
                site: site.clone(),
                job_id,
            });
        }
        match problem {
            Some(problem) => {
                let mut reason = format!("start failed: {problem}");
                if !lines.is_empty() {
                    let budget = MAX_REASON_BYTES.saturating_sub(reason.len() + 2);
                    reason.push_str(&format!("; {}", capped_list(&lines, "; ", budget)));
                }
                self.cancel_reservations(job_id);
                self.fail_to_run(job_id, reason.clone());
                for site in started {
                    self.effect(Effect::DeleteSiteDeployment { site, job_id });
                }
                self.stop_run(job_id, Actor::System, reason);
            }
            None => {
                // The sites left out give their reservations back; the others' are used.
                for site in &not_started {
                    if let Some(token) = job.run.reservations.get(site) {
                        self.effects.push(Effect::CancelReservation {
                            site: site.clone(),
                            job_id,
                            token: token.clone(),
                        });
                    }
                }
                let mut chunks = chunk_by_bytes(&started, String::len).into_iter();
                self.emit(
                    Actor::System,
                    EventKind::RunStarted {
                        job_id,
                        job_clients: chunks.next().unwrap_or_default(),
                    },
                );
                for job_clients in chunks {
                    self.emit(
                        Actor::System,
                        EventKind::RunClientsAdded {
                            job_id,
                            job_clients,
                        },
                    );
                }
            }
        }
    }
}

/// Why a run must stop now, if it must: a server app failure, a site report that stops
/// runs, or a lapsed site report.
fn stop_reason(job: &Job) -> Option<String> {
    let run = &job.run;
    if let Some((outcome, _)) = run.server_exit {
        if outcome != ExitOutcome::Code(0) && !run.all_ended() {
            return Some(format!(
                "the server app ended with {}",
                describe_outcome(outcome)
            ));
        }
    }
    // Only exits that stop runs and that fedrun's own stop did not cause (kept by the
    // fold): a large run reports thousands of exits that stop nothing.
    for site in run.stop_candidates.iter() {
        let Some(outcome) = run.site_exits.get(site.as_str()) else {
            continue;
        };
        if run.counts_site(site) && !run.all_ended() {
            return Some(format!(
                "site {site} reported {}",
                describe_outcome(*outcome)
            ));
        }
    }
    if let Some(site) = run.lapsed.iter().find(|s| run.counts_site(s)) {
        if !run.all_ended() {
            return Some(format!("site {site} was lost"));
        }
    }
    None
}

/// Splits grouped requests so that each part's names and resources stay within
/// [`GROUP_CHUNK_BYTES`]: a group whose sites do not fit goes on in the next part (with
/// its resources once more; validation keeps a request to a few kilobytes).
fn chunk_groups(groups: Vec<ResourceGroup>) -> Vec<Vec<ResourceGroup>> {
    const GROUP_CHUNK_BYTES: usize = MAX_EVENT_BYTES - 12 * 1024;
    let mut chunks: Vec<Vec<ResourceGroup>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for group in groups {
        let resource_bytes: usize =
            group.resources.keys().map(|k| k.len() + 12).sum::<usize>() + 16;
        let mut part: Vec<String> = Vec::new();
        let mut part_bytes = resource_bytes;
        for site in group.sites {
            let weight = site.len() + 4;
            if !part.is_empty() && bytes + part_bytes + weight > GROUP_CHUNK_BYTES {
                chunks
                    .last_mut()
                    .expect("there is always a chunk")
                    .push(ResourceGroup {
                        resources: group.resources.clone(),
                        sites: std::mem::take(&mut part),
                    });
                chunks.push(Vec::new());
                bytes = 0;
                part_bytes = resource_bytes;
            } else if part.is_empty()
                && bytes > 0
                && bytes + part_bytes + weight > GROUP_CHUNK_BYTES
            {
                chunks.push(Vec::new());
                bytes = 0;
            }
            part_bytes += weight;
            part.push(site);
        }
        if !part.is_empty() {
            bytes += part_bytes;
            chunks
                .last_mut()
                .expect("there is always a chunk")
                .push(ResourceGroup {
                    resources: group.resources,
                    sites: part,
                });
        }
    }
    chunks
}

/// `None` when `ok` satisfies `min_clients` and `mandatory_clients`, else the problem.
fn enough_sites(job: &Job, ok: &[String], verb: &str) -> Option<String> {
    let missing: Vec<&str> = job
        .meta
        .mandatory_clients
        .iter()
        .filter(|m| !ok.contains(m))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let missing: Vec<String> = missing.into_iter().map(str::to_string).collect();
        return Some(format!(
            "mandatory sites not {verb}: {}",
            capped_list(&missing, ", ", MAX_REASON_BYTES / 2)
        ));
    }
    if ok.len() < job.meta.min_clients as usize {
        return Some(format!(
            "sites {verb} ({}) < min_clients ({})",
            ok.len(),
            job.meta.min_clients
        ));
    }
    None
}

fn step_result(result: Result<(), String>) -> StepResult {
    match result {
        Ok(()) => StepResult::Ok,
        Err(reason) => StepResult::Error(cap_reason(&reason)),
    }
}

fn deploy_line(who: &str, result: &StepResult) -> String {
    match result {
        StepResult::Ok => format!("{who}: OK"),
        StepResult::Error(reason) => format!("{who}: {reason}"),
        StepResult::NoReply => format!("{who}: no reply (deployment timeout)"),
    }
}

/// The permission rule of SPEC section 9 for an operation on a job (or a submit).
fn permit(identity: &Identity, operation: &str, job: Option<&Job>) -> Result<(), Rejection> {
    let refuse = |whose: String| Rejection::NotAllowed {
        name: identity.name.clone(),
        role: identity.role,
        operation: operation.to_string(),
        whose,
    };
    match (identity.role, job) {
        (Role::ProjectAdmin, _) => Ok(()),
        (Role::Lead, None) => Ok(()),
        (Role::OrgAdmin | Role::Member, None) => Err(refuse("jobs".to_string())),
        (Role::Member, Some(job)) => Err(refuse(format!("job {}", job.id))),
        (Role::OrgAdmin, Some(job)) if job.submitter.org == identity.org => Ok(()),
        (Role::OrgAdmin, Some(job)) => Err(refuse(format!(
            "job {} of org {}",
            job.id, job.submitter.org
        ))),
        (Role::Lead, Some(job))
            if job.submitter.name == identity.name && job.submitter.org == identity.org =>
        {
            Ok(())
        }
        (Role::Lead, Some(job)) => Err(refuse(format!(
            "job {} submitted by {}",
            job.id, job.submitter.name
        ))),
    }
}

/// The signer of a package must hold a role that may submit (SPEC section 6), and its
/// names must be small enough to record.
fn check_signer(signer: &Identity) -> Result<(), Rejection> {
    if !signer.role.may_submit() {
        return Err(Rejection::SignerNotAllowed {
            name: signer.name.chars().take(MAX_ID_BYTES).collect(),
            role: signer.role,
        });
    }
    if signer.name.len() > MAX_ID_BYTES || signer.org.len() > MAX_ID_BYTES {
        return Err(Rejection::BadIdentity {
            reason: format!("the signer's name and org may have at most {MAX_ID_BYTES} bytes"),
        });
    }
    Ok(())
}

fn admin(
    ctx: &mut Ctx<'_>,
    origin: Origin,
    request: AdminRequest,
    ids: &mut impl IdSource,
    reused_key: bool,
) -> Reply {
    ctx.request_id = origin.request_id.clone();
    let actor = Actor::admin(&origin.identity);
    let job_id = request.job_id();
    let operation = request.operation();
    let result = if reused_key {
        Err(Rejection::IdempotencyKeyReused {
            key: origin.request_id.clone().unwrap_or_default(),
        })
    } else {
        admin_inner(ctx, &origin.identity, &actor, request, ids)
    };
    if let Err(rejection) = &result {
        ctx.emit(
            actor,
            EventKind::RequestRefused {
                job_id,
                operation: operation.to_string(),
                rejection: rejection.clone(),
            },
        );
    }
    ctx.request_id = None;
    result
}

fn live(ctx: &Ctx<'_>, job_id: JobId) -> Result<Job, Rejection> {
    ctx.scratch
        .live_job(&job_id)
        .cloned()
        .ok_or(Rejection::UnknownJob { job_id })
}

fn admin_inner(
    ctx: &mut Ctx<'_>,
    identity: &Identity,
    actor: &Actor,
    request: AdminRequest,
    ids: &mut impl IdSource,
) -> Result<Answer, Rejection> {
    match request {
        AdminRequest::SubmitJob {
            meta,
            package,
            signature,
        } => {
            permit(identity, "submit", None)?;
            let signer = match signature {
                SubmitSignature::NoSigner => None,
                SubmitSignature::Signer(signer) => Some(signer),
                SubmitSignature::Refused(reason) => {
                    return Err(Rejection::SignatureRefused {
                        reason: cap_reason(&reason),
                    })
                }
            };
            if let Some(signer) = &signer {
                check_signer(signer)?;
            }
            submit(
                ctx,
                actor,
                identity.clone(),
                meta,
                package,
                signer,
                None,
                ids,
            )
        }
        AdminRequest::CloneJob { job_id } => {
            let source = live(ctx, job_id)?;
            permit(identity, "clone", Some(&source))?;
            if let Some(signer) = &source.signer {
                check_signer(signer)?;
            }
            // A clone keeps the original submitter and signer (SPEC section 6); the cloner
            // is the event's actor.
            submit(
                ctx,
                actor,
                Identity::clone(&source.submitter),
                crate::job::meta::JobMeta::clone(&source.meta),
                source.package,
                source.signer.as_deref().cloned(),
                Some(job_id),
                ids,
            )
        }
        AdminRequest::AbortJob { job_id } => {
            let job = live(ctx, job_id)?;
            permit(identity, "abort", Some(&job))?;
            if job.status.is_terminal() {
                return Err(Rejection::JobAlreadyFinished {
                    job_id,
                    status: job.status,
                });
            }
            abort(ctx, actor, &job, format!("aborted by {}", identity.name));
            Ok(Answer::Accepted { job_id })
        }
        AdminRequest::DeleteJob { job_id } => {
            let job = live(ctx, job_id)?;
            permit(identity, "delete", Some(&job))?;
            match job.status {
                RunStatus::Dispatched | RunStatus::Running => {
                    return Err(Rejection::JobIsRunning {
                        job_id,
                        status: job.status,
                    })
                }
                RunStatus::Submitted => {
                    abort(ctx, actor, &job, format!("deleted by {}", identity.name));
                }
                _ if !job.archive.is_settled() || job.run.phase == RunPhase::Stopping => {
                    return Err(Rejection::ArchivePending { job_id });
                }
                _ => {}
            }
            ctx.emit(actor.clone(), EventKind::JobDeleted { job_id });
            for site in job.run.sites.iter() {
                ctx.effect(Effect::DeleteSiteDeployment {
                    site: site.clone(),
                    job_id,
                });
            }
            let mut hashes = vec![job.package];
            if let Archive::Archived { hash } = job.archive {
                hashes.push(hash);
            }
            for hash in hashes {
                if !ctx.scratch.blob_in_use(&hash, &job_id) {
                    ctx.effect(Effect::FreeBlob { hash });
                }
            }
            Ok(Answer::Accepted { job_id })
        }
        AdminRequest::DownloadJob { job_id } => {
            let job = live(ctx, job_id)?;
            permit(identity, "download", Some(&job))?;
            if !job.status.is_terminal() {
                return Err(Rejection::JobNotFinished {
                    job_id,
                    status: job.status,
                });
            }
            if !job.archive.is_settled() {
                return Err(Rejection::ArchivePending { job_id });
            }
            ctx.emit(actor.clone(), EventKind::JobDownloaded { job_id });
            Ok(Answer::Accepted { job_id })
        }
        AdminRequest::ReadLogs { job_id, site } => {
            let job = live(ctx, job_id)?;
            permit_logs(identity, &job)?;
            if let Some(site) = &site {
                if !job.run.sites.contains(site) {
                    return Err(Rejection::NotAParticipant {
                        job_id,
                        site: site.chars().take(MAX_ID_BYTES).collect(),
                    });
                }
            }
            ctx.emit(actor.clone(), EventKind::LogsRead { job_id, site });
            Ok(Answer::Accepted { job_id })
        }
    }
}

/// Who may read a job's app output (SPEC section 9): a `project_admin`, the job's
/// submitter, and the `org_admin` of the submitter's org.
fn permit_logs(identity: &Identity, job: &Job) -> Result<(), Rejection> {
    let submitter = &job.submitter;
    let allowed = identity.role == Role::ProjectAdmin
        || (identity.name == submitter.name && identity.org == submitter.org)
        || (identity.role == Role::OrgAdmin && identity.org == submitter.org);
    if allowed {
        Ok(())
    } else {
        Err(Rejection::NotAllowed {
            name: identity.name.clone(),
            role: identity.role,
            operation: "read the logs".to_string(),
            whose: format!("of job {} submitted by {}", job.id, submitter.name),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn submit(
    ctx: &mut Ctx<'_>,
    actor: &Actor,
    submitter: Identity,
    meta: crate::job::meta::JobMeta,
    package: crate::lifecycle::event::BlobHash,
    signer: Option<Identity>,
    cloned_from: Option<JobId>,
    ids: &mut impl IdSource,
) -> Result<Answer, Rejection> {
    // Validation at the edge guarantees a server app; a meta without one (a hostile or
    // buggy caller) is refused here, since replay refuses such a record.
    if meta.app_for(SERVER).is_none() {
        return Err(Rejection::BadMeta {
            reason: "the deploy map names no app for the server".to_string(),
        });
    }
    let mut job_id = ids.new_job_id();
    // An id source promises fresh ids; a repeat would overwrite a job, so draw again.
    while ctx.scratch.jobs.contains_key(&job_id) {
        job_id = ids.new_job_id();
    }
    let kind = EventKind::JobSubmitted {
        job_id,
        meta,
        package,
        submitter,
        signer,
        submit_time: ctx.now.max(ctx.scratch.last_at),
        cloned_from,
    };
    let probe = Event {
        seq: ctx.scratch.last_seq + 1,
        at: ctx.now,
        actor: actor.clone(),
        request_id: ctx.request_id.clone(),
        boot_id: ctx.scratch.boot_id,
        kind,
    };
    let bytes = rmp_serde::to_vec_named(&probe).map_or(usize::MAX, |v| v.len());
    if bytes > MAX_EVENT_BYTES {
        return Err(Rejection::TooLarge {
            bytes,
            limit: MAX_EVENT_BYTES,
        });
    }
    ctx.emit(actor.clone(), probe.kind);
    Ok(Answer::Submitted { job_id })
}

/// `FINISHED:ABORTED` at once; in-flight tries, deploys and starts are cancelled, and
/// whatever may run is asked to stop.
fn abort(ctx: &mut Ctx<'_>, actor: &Actor, job: &Job, reason: String) {
    let job_id = job.id;
    ctx.cancel_try_of(job_id, actor);
    ctx.cancel_reservations(job_id);
    let step = job.run.step.map(|(s, _)| s);
    ctx.emit(
        actor.clone(),
        EventKind::JobFinished {
            job_id,
            status: RunStatus::Aborted,
            reason: cap_reason(&reason),
        },
    );
    match job.status {
        RunStatus::Dispatched => {
            // Sites that were sent the app (or asked to start) clean up; a start answer
            // that arrives later is answered with a stop.
            if matches!(step, Some(StartStep::StartingSites)) {
                for site in job.run.sites.iter() {
                    if job
                        .run
                        .deploy
                        .get(site.as_str())
                        .is_some_and(StepResult::is_ok)
                        && !job.run.start.contains_key(site.as_str())
                    {
                        ctx.effect(Effect::StopSiteApp {
                            site: site.clone(),
                            job_id,
                        });
                    }
                }
            }
            if !matches!(step, Some(StartStep::DeployingServer) | None) {
                for site in job.run.sites.iter() {
                    ctx.effect(Effect::DeleteSiteDeployment {
                        site: site.clone(),
                        job_id,
                    });
                }
            }
            ctx.stop_run(job_id, actor.clone(), reason);
        }
        RunStatus::Running => ctx.stop_run(job_id, actor.clone(), reason),
        _ => {}
    }
}

fn site_report(ctx: &mut Ctx<'_>, site: String, report: SiteReport) {
    if site.is_empty() || site.len() > MAX_ID_BYTES || site == SERVER {
        tracing::warn!(site = %site.chars().take(80).collect::<String>(), "ignoring a report from a site with an invalid name");
        return;
    }
    let actor = Actor::Site { name: site.clone() };
    match report {
        SiteReport::Connected { resources, running } => {
            let resources: BTreeMap<String, f64> = resources
                .into_iter()
                .filter(|(k, v)| k.len() <= 64 && v.is_finite())
                .take(64)
                .collect();
            let listed: BTreeSet<JobId> = running.iter().copied().collect();
            let running: Vec<JobId> = running.into_iter().take(1024).collect();
            for job_id in &running {
                // A site still running an app of a job that has ended, or of a run that
                // fedrun is stopping (the stop request may have been lost with the
                // connection), is told to stop it. So is a site left out of the run whose
                // start answer was lost: it is no participant, whatever the job's status.
                let left_out = ctx
                    .scratch
                    .jobs
                    .get(job_id)
                    .is_some_and(|j| j.run.left_out.contains(&site));
                let stop = ctx.scratch.jobs.get(job_id).is_none_or(|j| {
                    (j.status.is_terminal() && j.run.phase == RunPhase::Stopped)
                        || j.run.phase == RunPhase::Stopping
                });
                if (stop && ctx.scratch.recovery.is_none()) || left_out {
                    ctx.effect(Effect::StopSiteApp {
                        site: site.clone(),
                        job_id: *job_id,
                    });
                }
            }
            // Only jobs the site was sent are recorded: ids of unknown jobs (answered with
            // a stop above) would only grow the history.
            let running: Vec<JobId> = running
                .into_iter()
                .filter(|id| ctx.job(id).is_some_and(|j| j.run.was_sent(&site)))
                .collect();
            // A left-out site that does not list the job does not run its app. A job with
            // a left-out site may have deadlines (its stop wait), so only those jobs are
            // looked at, not the queue or the past.
            let ended: Vec<JobId> = ctx
                .scratch
                .timed_jobs()
                .filter(|j| j.run.left_out.contains(&site) && !listed.contains(&j.id))
                .map(|j| j.id)
                .collect();
            ctx.emit(
                actor.clone(),
                EventKind::SiteConnected {
                    site: site.clone(),
                    resources,
                    running,
                },
            );
            for job_id in ended {
                ctx.emit(
                    actor.clone(),
                    EventKind::LeftOutSiteEnded {
                        job_id,
                        site: site.clone(),
                        how: LeftOutEnd::NotRunning,
                    },
                );
            }
        }
        SiteReport::Disconnected => {
            if !ctx.scratch.sites.get(&site).is_some_and(|s| s.connected) {
                return;
            }
            ctx.emit(
                actor.clone(),
                EventKind::SiteDisconnected { site: site.clone() },
            );
            // The try in flight stops waiting for a site that is gone.
            if let Some(t) = &ctx.scratch.schedule_try {
                if t.asks(&site) && !t.answers.contains_key(&site) {
                    let (job_id, try_id) = (t.job_id, t.try_id);
                    ctx.emit(
                        actor,
                        EventKind::ResourceAnswered {
                            job_id,
                            try_id,
                            site,
                            answer: ResourceAnswer::Refused("site disconnected".to_string()),
                        },
                    );
                    ctx.finish_try_if_complete();
                }
            }
        }
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer,
        } => {
            let awaited = ctx.scratch.schedule_try.as_ref().is_some_and(|t| {
                t.try_id == try_id
                    && t.job_id == job_id
                    && t.asks(&site)
                    && !t.answers.contains_key(&site)
            });
            let answer = match answer {
                Ok(token) if token.len() <= MAX_ID_BYTES => ResourceAnswer::Reserved(token),
                Ok(token) => {
                    // A token we cannot record cannot be cancelled later; refuse it now.
                    ctx.effect(Effect::CancelReservation {
                        site: site.clone(),
                        job_id,
                        token,
                    });
                    ResourceAnswer::Refused("reservation token too long".to_string())
                }
                Err(reason) => ResourceAnswer::Refused(cap_reason(&reason)),
            };
            if awaited {
                ctx.emit(
                    actor,
                    EventKind::ResourceAnswered {
                        job_id,
                        try_id,
                        site,
                        answer,
                    },
                );
                ctx.finish_try_if_complete();
            } else if let ResourceAnswer::Reserved(token) = answer {
                // A late answer to a try that ended: give the reservation back.
                ctx.effect(Effect::CancelReservation {
                    site,
                    job_id,
                    token,
                });
            }
        }
        SiteReport::DeployAnswer { job_id, result } => {
            let awaited = ctx.scratch.recovery.is_none()
                && ctx.job(&job_id).is_some_and(|j| {
                    j.status == RunStatus::Dispatched
                        && matches!(j.run.step, Some((StartStep::DeployingSites, _)))
                        && j.run.was_sent(&site)
                        && !j.run.deploy.contains_key(site.as_str())
                });
            if awaited {
                ctx.record_site_deploy(actor, job_id, site, step_result(result));
                ctx.evaluate_site_deploys(job_id);
            } else if repeats_recorded(ctx.job(&job_id), &site, &result, |run| &run.deploy) {
                // Sites resend an answer whose acknowledgement they did not see (SPEC 11):
                // a repeat of the answer already recorded changes nothing.
            } else if dispatched_in_recovery(ctx, &job_id) {
                // The restart decision abandons the job and deletes every deployment of
                // its run (SPEC 4); until then the job is live and the site a participant.
            } else if result.is_ok() {
                ctx.effect(Effect::DeleteSiteDeployment { site, job_id });
            }
        }
        SiteReport::StartAnswer { job_id, result } => {
            let awaited = ctx.scratch.recovery.is_none()
                && ctx.job(&job_id).is_some_and(|j| {
                    j.status == RunStatus::Dispatched
                        && matches!(j.run.step, Some((StartStep::StartingSites, _)))
                        && j.run
                            .deploy
                            .get(site.as_str())
                            .is_some_and(StepResult::is_ok)
                        && !j.run.start.contains_key(site.as_str())
                });
            if awaited {
                ctx.emit(
                    actor,
                    EventKind::StartFinished {
                        job_id,
                        participant: site,
                        result: step_result(result),
                    },
                );
                ctx.evaluate_site_starts(job_id);
            } else if repeats_recorded(ctx.job(&job_id), &site, &result, |run| &run.start) {
                // A resent start answer (SPEC 11) of a site recorded as started must not
                // stop the app of a participant: it changes nothing.
            } else if dispatched_in_recovery(ctx, &job_id) {
                // The restart decision abandons the job, stops every site whose start was
                // awaited and holds the run's slot until they are known to have ended
                // (SPEC 4 and 8); until then the job is live and the site a participant.
            } else if result.is_ok() {
                ctx.effect(Effect::StopSiteApp {
                    site: site.clone(),
                    job_id,
                });
                ctx.effect(Effect::DeleteSiteDeployment { site, job_id });
            }
        }
        SiteReport::AppExited {
            job_id,
            report_id,
            outcome,
            stop_requested,
        } => {
            if report_id.is_empty() || report_id.len() > MAX_ID_BYTES {
                tracing::warn!(%job_id, %site, "ignoring an exit report with an invalid report id");
                return;
            }
            // Recorded once per site and run, and only from a site the job was sent to:
            // a site reporting for other jobs, for unknown jobs, or again under new
            // report ids cannot grow the history or the state (each job holds at most
            // one exit per site it was dispatched to).
            // A site can only report the exit of an app it started: its start is
            // recorded as OK, or it deployed and its start answer is awaited (the exit
            // may overtake it). An exit of a job the site is not known to have started
            // (a lie, a confused site, or a site left out after no reply) is not the
            // job's outcome.
            let fresh = ctx.job(&job_id).is_some_and(|j| {
                let asked_to_start = match j.run.start.get(site.as_str()) {
                    Some(result) => result.is_ok(),
                    None => {
                        matches!(j.run.step, Some((StartStep::StartingSites, _)))
                            && j.run
                                .deploy
                                .get(site.as_str())
                                .is_some_and(StepResult::is_ok)
                    }
                };
                j.run.was_sent(&site)
                    && asked_to_start
                    && !j.run.site_exits.contains_key(site.as_str())
                    && !j.run.report_ids.contains(report_id.as_str())
            });
            if fresh {
                ctx.emit(
                    actor.clone(),
                    EventKind::SiteOutcomeReported {
                        job_id,
                        site: site.clone(),
                        report_id,
                        outcome,
                        stop_requested: Some(stop_requested),
                    },
                );
            }
            // A left-out site's app ended: it no longer holds the run's slot. Its exit is
            // the job's outcome only if it was recorded above as a participant's: a site
            // back past its grace with the app (its run held the slot again, SPEC 8).
            if ctx
                .job(&job_id)
                .is_some_and(|j| j.run.left_out.contains(&site))
            {
                ctx.emit(
                    actor,
                    EventKind::LeftOutSiteEnded {
                        job_id,
                        site,
                        how: LeftOutEnd::Exited,
                    },
                );
            } else if !fresh {
                tracing::debug!(%job_id, %site, "an exit report that changes nothing is not recorded");
            }
        }
    }
}

/// Whether the recovery window is open and the job is `DISPATCHED`: its start-up answers
/// wait for the restart decision, which abandons it and cleans up its whole run.
fn dispatched_in_recovery(ctx: &Ctx<'_>, job_id: &JobId) -> bool {
    ctx.scratch.recovery.is_some()
        && ctx
            .job(job_id)
            .is_some_and(|j| j.status == RunStatus::Dispatched)
}

/// Whether `result` repeats the answer already recorded for `site` in the answers that
/// `answers` picks from the job's run: an OK after an OK, an error after an error. A late
/// OK after a recorded timeout is not a repeat: that app or deployment was left out and
/// is cleaned up.
fn repeats_recorded(
    job: Option<&Job>,
    site: &str,
    result: &Result<(), String>,
    answers: impl Fn(
        &crate::lifecycle::state::Run,
    ) -> &crate::lifecycle::small_map::SmallMap<
        crate::lifecycle::state::ShortStr,
        StepResult,
    >,
) -> bool {
    job.and_then(|j| answers(&j.run).get(site))
        .is_some_and(|recorded| {
            matches!(
                (recorded, result),
                (StepResult::Ok, Ok(())) | (StepResult::Error(_), Err(_))
            )
        })
}

fn server_deploy_finished(ctx: &mut Ctx<'_>, job_id: JobId, result: Result<(), String>) {
    let Some(job) = ctx.job(&job_id) else { return };
    if !matches!(job.run.step, Some((StartStep::DeployingServer, _))) {
        return;
    }
    if job.status == RunStatus::Dispatched && ctx.scratch.recovery.is_some() {
        return;
    }
    ctx.record_server_deploy(job_id, result);
}

fn server_app_started(ctx: &mut Ctx<'_>, job_id: JobId, result: Result<(), String>) {
    let Some(job) = ctx.job(&job_id) else { return };
    let awaited = matches!(job.run.step, Some((StartStep::StartingServer, _)))
        && !(job.status == RunStatus::Dispatched && ctx.scratch.recovery.is_some());
    if !awaited {
        if result.is_ok() {
            ctx.effect(Effect::StopServerApp { job_id });
        }
        return;
    }
    let dispatched = job.status == RunStatus::Dispatched;
    let ok = result.is_ok();
    let result = step_result(result);
    ctx.emit(
        Actor::System,
        EventKind::StartFinished {
            job_id,
            participant: SERVER.to_string(),
            result: result.clone(),
        },
    );
    if !dispatched {
        // Aborted while the server app was starting: it is stopped at once, unless its
        // exit has already been recorded.
        let exited = ctx
            .job(&job_id)
            .is_some_and(|j| j.run.server_exit.is_some());
        if ok && !exited {
            ctx.effect(Effect::StopServerApp { job_id });
        }
        return;
    }
    if !ok {
        let job = ctx.job(&job_id).expect("the job was read above");
        let sites: Vec<String> = job.run.sites.iter().cloned().collect();
        for site in sites {
            ctx.effect(Effect::DeleteSiteDeployment { site, job_id });
        }
        ctx.cancel_reservations(job_id);
        let reason = match result {
            StepResult::Error(e) => format!("start failed: server: {e}"),
            _ => "start failed: server: no reply (start timeout)".to_string(),
        };
        ctx.fail_to_run(job_id, reason);
        return;
    }
    let job = ctx.job(&job_id).expect("the job was read above");
    let deployed: Vec<String> = job
        .run
        .sites
        .iter()
        .filter(|s| {
            job.run
                .deploy
                .get(s.as_str())
                .is_some_and(StepResult::is_ok)
        })
        .cloned()
        .collect();
    for site in deployed {
        ctx.effect(Effect::StartSiteApp { site, job_id });
    }
    ctx.evaluate_site_starts(job_id);
}

fn archive_finished(
    ctx: &mut Ctx<'_>,
    job_id: JobId,
    result: Result<crate::lifecycle::event::BlobHash, String>,
) {
    let Some(job) = ctx.job(&job_id) else { return };
    let Archive::Pending {
        in_flight: true,
        first_failed_at,
        ..
    } = job.archive
    else {
        // Never replace an archive with a later result; free a blob nobody refers to.
        if let Ok(hash) = result {
            if !ctx.scratch.blob_in_use(&hash, &JobId(uuid::Uuid::nil())) {
                ctx.effect(Effect::FreeBlob { hash });
            }
        }
        return;
    };
    let deleted = job.deleted;
    match result {
        Ok(hash) => {
            ctx.emit(Actor::System, EventKind::WorkspaceArchived { job_id, hash });
            if deleted && !ctx.scratch.blob_in_use(&hash, &job_id) {
                ctx.effect(Effect::FreeBlob { hash });
            }
        }
        Err(reason) => {
            let reason = cap_reason(&reason);
            let first = first_failed_at.unwrap_or(ctx.now);
            if ctx.now >= first.plus(ctx.settings.archive_retry_for) {
                ctx.emit(
                    Actor::System,
                    EventKind::WorkspaceArchiveFailed { job_id, reason },
                );
            } else {
                ctx.emit(
                    Actor::System,
                    EventKind::WorkspaceArchiveAttemptFailed { job_id, reason },
                );
            }
        }
    }
}

fn timer_fired(ctx: &mut Ctx<'_>, timer: Timer) {
    let now = ctx.now;
    let settings = ctx.settings;
    match timer {
        // The pass at the end of every decision does the work.
        Timer::ScheduleDue => {}
        Timer::ResourceCheckTimedOut { try_id } => {
            let Some(t) = ctx.scratch.schedule_try.clone() else {
                return;
            };
            if t.try_id != try_id || now < t.started_at.plus(settings.resource_check_timeout) {
                return;
            }
            for request in t.asked.iter() {
                if !t.answers.contains_key(&request.site) {
                    ctx.emit(
                        Actor::System,
                        EventKind::ResourceAnswered {
                            job_id: t.job_id,
                            try_id,
                            site: request.site.clone(),
                            answer: ResourceAnswer::NoReply,
                        },
                    );
                }
            }
            ctx.finish_try_if_complete();
        }
        Timer::DeployTimedOut { job_id } => {
            let Some((job, step)) = ctx.overdue_step(&job_id, now, settings.deploy_timeout) else {
                return;
            };
            match step {
                StartStep::DeployingServer => {
                    ctx.emit(
                        Actor::System,
                        EventKind::DeployFinished {
                            job_id,
                            participant: SERVER.to_string(),
                            result: StepResult::NoReply,
                        },
                    );
                    ctx.cancel_reservations(job_id);
                    ctx.fail_to_run(
                        job_id,
                        format!(
                            "deploy failed: {}",
                            deploy_line(SERVER, &StepResult::NoReply)
                        ),
                    );
                }
                StartStep::DeployingSites => {
                    let missing: Vec<String> = job
                        .run
                        .sites
                        .iter()
                        .filter(|s| !job.run.deploy.contains_key(s.as_str()))
                        .cloned()
                        .collect();
                    for site in missing {
                        ctx.record_site_deploy(Actor::System, job_id, site, StepResult::NoReply);
                    }
                    ctx.evaluate_site_deploys(job_id);
                }
                _ => {}
            }
        }
        Timer::StartTimedOut { job_id } => {
            let Some((job, step)) = ctx.overdue_step(&job_id, now, settings.start_timeout) else {
                return;
            };
            match step {
                StartStep::StartingServer => {
                    // The server app's start is local and always answers; a missing answer
                    // is a failure to run like any other.
                    server_app_started(ctx, job_id, Err("no reply (start timeout)".to_string()));
                }
                StartStep::StartingSites => {
                    let missing: Vec<String> = job
                        .run
                        .sites
                        .iter()
                        .filter(|s| {
                            job.run
                                .deploy
                                .get(s.as_str())
                                .is_some_and(StepResult::is_ok)
                                && !job.run.start.contains_key(s.as_str())
                        })
                        .cloned()
                        .collect();
                    for site in missing {
                        ctx.emit(
                            Actor::System,
                            EventKind::StartFinished {
                                job_id,
                                participant: site,
                                result: StepResult::NoReply,
                            },
                        );
                    }
                    ctx.evaluate_site_starts(job_id);
                }
                _ => {}
            }
        }
        Timer::OutcomeWaitOver { job_id } => {
            // Settling the job decides the final status once the barrier is over.
            ctx.touched.insert(job_id);
        }
        Timer::SiteReconnectGraceOver { job_id, site } => {
            let lapsed = ctx.scratch.sites.get(&site).is_some_and(|s| {
                !s.connected && now >= s.since.plus(settings.site_reconnect_grace)
            });
            let outstanding = ctx.job(&job_id).is_some_and(|j| {
                j.run.phase != RunPhase::Stopped && j.run.outstanding_sites().any(|s| *s == site)
            });
            if lapsed && outstanding {
                ctx.emit(Actor::System, EventKind::SiteReportLapsed { job_id, site });
            }
        }
        Timer::StopWaitOver { job_id } => {
            let Some(job) = ctx.job(&job_id) else { return };
            let due = job.run.stop_requested_at.is_some_and(|at| {
                now >= at.plus(settings.abort_grace + settings.client_outcome_wait)
            });
            // Left-out sites count as ended only when their own wait is over (SPEC
            // section 8): an away one when its reconnect grace runs out.
            let left_out_over = ctx
                .scratch
                .left_out_wait_end(&job.run, settings)
                .is_none_or(|end| now >= end);
            if job.run.phase == RunPhase::Stopped && !job.run.left_out.is_empty() {
                if left_out_over {
                    let sites: Vec<String> = job.run.left_out.iter().cloned().collect();
                    for site in sites {
                        ctx.emit(
                            Actor::System,
                            EventKind::LeftOutSiteEnded {
                                job_id,
                                site,
                                how: LeftOutEnd::StopWaitOver,
                            },
                        );
                    }
                }
                return;
            }
            if job.run.phase == RunPhase::Stopping && due && left_out_over {
                if job.status == RunStatus::Running {
                    // The processes did not end after the stop: decide from what is known,
                    // so the job never stays RUNNING with nothing left to wait for.
                    let status = final_status(job.run.failure.as_deref());
                    let reason = format!(
                        "{}; the run's processes did not end within abort_grace + client_outcome_wait",
                        job.run.failure.as_ref().map_or_else(
                            || "no failure was reported".to_string(),
                            |f| format!("{} reported {}", f.participant, describe_outcome(f.outcome))
                        )
                    );
                    ctx.emit(
                        Actor::System,
                        EventKind::JobFinished {
                            job_id,
                            status,
                            reason: cap_reason(&reason),
                        },
                    );
                }
                ctx.emit(Actor::System, EventKind::RunStopped { job_id });
            }
        }
        Timer::ArchiveRetryDue { job_id } => {
            let Some(job) = ctx.job(&job_id) else { return };
            if let Some(due) = timers::archive_retry_at(job) {
                if now >= due {
                    ctx.effect(Effect::ArchiveWorkspace { job_id });
                    ctx.emit(Actor::System, EventKind::WorkspaceArchiveStarted { job_id });
                }
            }
        }
        Timer::ReattachGraceOver => {
            let due = ctx
                .scratch
                .recovery
                .as_ref()
                .is_some_and(|w| now >= w.started_at.plus(settings.reattach_grace));
            if due {
                ctx.finish_recovery();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoIds;

    impl IdSource for NoIds {
        fn new_job_id(&mut self) -> JobId {
            unreachable!("a connect makes no job")
        }
    }

    fn connect() -> Command {
        Command::Site {
            site: "site-1".into(),
            report: SiteReport::Connected {
                resources: Default::default(),
                running: vec![],
            },
        }
    }

    #[test]
    fn a_decision_refused_after_folding_its_events_says_so_and_apply_puts_the_state_back() {
        let settings = Settings::default();
        let now = Timestamp::from_millis(1_000);
        let mut state = State::new();
        let fits = decide(&state, &settings, connect(), now, &mut NoIds).expect("decided");
        assert!(!fits.events.is_empty());
        let before = state.clone();
        test_event_limit::with(1, || {
            let refused =
                decide_in_place(&mut state.clone(), &settings, connect(), now, &mut NoIds)
                    .expect_err("no event fits in one byte");
            assert!(refused.folded, "the connect's events were folded");
            assert!(matches!(
                refused.rejection,
                Rejection::TooLarge { limit: 1, .. }
            ));
            let applied = decide_and_apply(&mut state, &settings, connect(), now, &mut NoIds);
            assert!(matches!(applied, Err(Rejection::TooLarge { .. })));
        });
        assert_eq!(
            state, before,
            "the refused decision left nothing in the state"
        );
        assert_eq!(state.last_seq, 0);
        // Without the limit the same decision goes through, in place: the state is then
        // the fold of its events into a state of its own.
        let decided =
            decide_in_place(&mut state, &settings, connect(), now, &mut NoIds).expect("decided");
        assert_eq!(decided.events.len(), fits.events.len());
        let mut folded = State::new();
        for event in &decided.events {
            folded.apply_checked(event).expect("the events fold");
        }
        assert_eq!(
            state, folded,
            "the state decided in place is its events' fold"
        );
        assert_eq!(state.last_seq, fits.events.len() as u64);
    }
}
