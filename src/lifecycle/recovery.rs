//! The restart decision of SPEC section 4, as a pure function of the state (which holds
//! the facts observed in the recovery window: runs that re-attached, what sites said they
//! run). Its decisions are events, so replaying the history gives the same result without
//! observing anything again.

use std::collections::{BTreeMap, BTreeSet};

use crate::job::JobId;
use crate::lifecycle::actor::Actor;
use crate::lifecycle::effect::Effect;
use crate::lifecycle::event::EventKind;
use crate::lifecycle::state::{Archive, Job, RunPhase, State};
use crate::lifecycle::status::RunStatus;
use crate::settings::{format_duration, Settings};

/// The events (with their actor) and effects that close the recovery window:
///
/// - `SUBMITTED`: stays queued with its counters;
/// - `DISPATCHED`: `FINISHED:ABANDONED`, deployments deleted, reservations given back;
/// - `RUNNING`: `RunRestored` if its server app's exit is known (the run is then decided
///   from its exits, SPEC section 8), or if `resume_runs` is on and its server app
///   re-attached; else `FINISHED:ABANDONED` and its processes told to stop;
/// - a server app that was started (or starting) and did not re-attach is recorded as
///   lost (`ServerAppLost`): fedrun records a process before it runs, so one that did not
///   re-attach does not exist;
/// - a run that is not settled stays stopping until its processes are known to have ended
///   (SPEC section 4, "a stop is over"): it keeps its `max_jobs` slot and its workspace
///   is not archived meanwhile; a run with nothing left that may run is recorded as
///   stopped, and its pending archive starts;
/// - finally `RecoveryFinished`.
pub fn decide_restart(
    state: &State,
    settings: &Settings,
) -> (Vec<(Actor, EventKind)>, Vec<Effect>) {
    let mut events = Vec::new();
    let mut effects = Vec::new();
    let reattached: BTreeSet<JobId> = state
        .recovery
        .as_ref()
        .map(|w| w.reattached.clone())
        .unwrap_or_default();
    let reported = sites_running(state);
    for job in state.jobs.values() {
        let job_id = job.id;
        let server_alive = reattached.contains(&job_id);
        let run = &job.run;
        let server_may_run = run.server_outstanding() || run.server_step_in_flight();
        let lost = server_may_run && !server_alive;
        match job.status {
            RunStatus::Submitted => continue,
            RunStatus::Running => {
                let exits_known = run.server_exit.is_some();
                if exits_known || (settings.resume_runs && server_alive) {
                    if run.stopping() {
                        // The stop asked before the restart may have been lost with the
                        // connections: it is asked again.
                        stop_everything(&reported, job, server_alive, &mut effects);
                    }
                    events.push((Actor::Recovery, EventKind::RunRestored { job_id }));
                    continue;
                }
            }
            _ => {}
        }
        let unsettled = matches!(
            run.phase,
            RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
        );
        if unsettled || !job.status.is_terminal() {
            stop_everything(&reported, job, server_alive, &mut effects);
        } else {
            stop_reported(&reported, job.id, &mut effects);
        }
        if lost {
            events.push((Actor::Recovery, EventKind::ServerAppLost { job_id }));
        }
        match job.status {
            RunStatus::Dispatched => {
                for (site, token) in &run.reservations {
                    effects.push(Effect::CancelReservation {
                        site: site.clone(),
                        job_id,
                        token: token.clone(),
                    });
                }
                for site in run.sites.iter() {
                    effects.push(Effect::DeleteSiteDeployment {
                        site: site.clone(),
                        job_id,
                    });
                }
                events.push((
                    Actor::Recovery,
                    EventKind::JobFinished {
                        job_id,
                        status: RunStatus::Abandoned,
                        reason: "the server restarted while the job was being deployed and started"
                            .to_string(),
                    },
                ));
            }
            RunStatus::Running => {
                let reason = if settings.resume_runs {
                    format!(
                        "the server restarted and the run's server app did not re-attach within reattach_grace ({})",
                        format_duration(settings.reattach_grace)
                    )
                } else {
                    "the server restarted and resume_runs is off".to_string()
                };
                events.push((
                    Actor::Recovery,
                    EventKind::JobFinished {
                        job_id,
                        status: RunStatus::Abandoned,
                        reason,
                    },
                ));
            }
            _ => {}
        }
        if !unsettled {
            if archive_waits(job) {
                effects.push(Effect::ArchiveWorkspace { job_id });
                events.push((
                    Actor::Recovery,
                    EventKind::WorkspaceArchiveStarted { job_id },
                ));
            }
            continue;
        }
        // What may still run once the lost server app is accounted for: a re-attached
        // server app that has not ended, and sites that took part and have not reported.
        let may_still_run = (server_alive && server_may_run)
            || run.any_site_outstanding()
            || !run.left_out.is_empty()
            || !run.start_awaited().is_empty();
        if !may_still_run {
            events.push((Actor::Recovery, EventKind::RunStopped { job_id }));
            if archive_waits(job) {
                effects.push(Effect::ArchiveWorkspace { job_id });
                events.push((
                    Actor::Recovery,
                    EventKind::WorkspaceArchiveStarted { job_id },
                ));
            }
        } else if !run.stopping() {
            events.push((
                Actor::Recovery,
                EventKind::RunStopRequested {
                    job_id,
                    reason: "the server restarted; the run's processes are asked to stop"
                        .to_string(),
                },
            ));
        }
        // A run already stopping keeps its stop time: it is over when its processes are
        // known to have ended, when its sites' reconnect grace runs out, or at
        // abort_grace + client_outcome_wait after the stop was asked.
    }
    events.push((Actor::Recovery, EventKind::RecoveryFinished));
    (events, effects)
}

/// Whether the job's workspace archive waits for its first try.
fn archive_waits(job: &Job) -> bool {
    matches!(
        job.archive,
        Archive::Pending {
            in_flight: false,
            failures: 0,
            ..
        }
    )
}

/// Whether the restart decision must wait `reattach_grace` to observe something: a job
/// `DISPATCHED` or `RUNNING`, or a finished job whose run had not settled. Without one,
/// the decision is made as soon as the server starts.
pub fn needs_observation(state: &State) -> bool {
    // Such a job is not terminal or has a run under way: it is among the jobs in flight.
    state.timed_jobs().any(|job| {
        matches!(job.status, RunStatus::Dispatched | RunStatus::Running)
            || matches!(
                job.run.phase,
                RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
            )
    })
}

/// Stop effects for every process of the job that may still run: the server app if it
/// re-attached, and every site that took part or says it runs the job.
fn stop_everything(reported: &Reported, job: &Job, server_alive: bool, effects: &mut Vec<Effect>) {
    let job_id = job.id;
    if server_alive {
        effects.push(Effect::StopServerApp { job_id });
    }
    let mut sites: BTreeSet<String> = job.run.outstanding_sites().map(String::from).collect();
    sites.extend(reported_sites(reported, job_id).cloned());
    // Sites left out of the run (or whose start answer was awaited) may run it too.
    sites.extend(job.run.left_out.iter().cloned());
    sites.extend(job.run.start_awaited());
    for site in sites {
        effects.push(Effect::StopSiteApp { site, job_id });
    }
}

/// Stop effects for the sites that said, when they reconnected, that they still run an
/// app of this (settled) job.
fn stop_reported(reported: &Reported, job_id: JobId, effects: &mut Vec<Effect>) {
    for site in reported_sites(reported, job_id) {
        effects.push(Effect::StopSiteApp {
            site: site.clone(),
            job_id,
        });
    }
}

/// The sites that said, when they last connected, that they run an app of each job, in
/// site name order.
type Reported = BTreeMap<JobId, Vec<String>>;

/// The sites that said they run an app of the job.
fn reported_sites(reported: &Reported, job_id: JobId) -> impl Iterator<Item = &String> {
    reported.get(&job_id).into_iter().flatten()
}

/// [`Reported`], read once from every site's facts (not once per job: a restart looks
/// at every job, and asking every site about each cost jobs times sites).
fn sites_running(state: &State) -> Reported {
    let mut reported = Reported::new();
    for (name, facts) in state.sites.iter() {
        for job_id in facts.running.iter() {
            let sites: &mut Vec<String> = reported.entry(*job_id).or_default();
            if sites.last() != Some(name) {
                sites.push(name.clone());
            }
        }
    }
    reported
}
