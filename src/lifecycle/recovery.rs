//! The restart decision of SPEC section 4, as a pure function of the state (which holds
//! the facts observed in the recovery window: runs that re-attached, what sites said they
//! run). Its decisions are events, so replaying the history gives the same result without
//! observing anything again.

use std::collections::BTreeSet;

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
/// - `RUNNING`: `RunRestored` if `resume_runs` is on and its server app re-attached (or had
///   already ended), else `FINISHED:ABANDONED` and its processes told to stop;
/// - a terminal job whose run was still stopping: the stops are sent again and the run is
///   recorded as stopped; a pending archive is started again;
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
    for job in state.jobs.values() {
        let job_id = job.id;
        let server_alive = reattached.contains(&job_id);
        match job.status {
            RunStatus::Submitted => {}
            RunStatus::Dispatched => {
                for (site, token) in &job.run.reservations {
                    effects.push(Effect::CancelReservation {
                        site: site.clone(),
                        job_id,
                        token: token.clone(),
                    });
                }
                stop_everything(state, job, server_alive, &mut effects);
                for site in &job.run.sites {
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
                events.push((Actor::Recovery, EventKind::RunStopped { job_id }));
            }
            RunStatus::Running => {
                let resumable = server_alive || job.run.server_exit.is_some();
                if settings.resume_runs && resumable {
                    events.push((Actor::Recovery, EventKind::RunRestored { job_id }));
                    continue;
                }
                let reason = if settings.resume_runs {
                    format!(
                        "the server restarted and the run's server app did not re-attach within reattach_grace ({})",
                        format_duration(settings.reattach_grace)
                    )
                } else {
                    "the server restarted and resume_runs is off".to_string()
                };
                stop_everything(state, job, server_alive, &mut effects);
                events.push((
                    Actor::Recovery,
                    EventKind::JobFinished {
                        job_id,
                        status: RunStatus::Abandoned,
                        reason,
                    },
                ));
                events.push((Actor::Recovery, EventKind::RunStopped { job_id }));
            }
            _ => {
                // Terminal: whatever may still run of it is told to stop (again), an
                // unsettled run is recorded as stopped, and a pending archive starts.
                let unsettled = matches!(
                    job.run.phase,
                    RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
                );
                if unsettled {
                    stop_everything(state, job, server_alive, &mut effects);
                } else {
                    stop_reported(state, job.id, &mut effects);
                }
                if unsettled {
                    events.push((Actor::Recovery, EventKind::RunStopped { job_id }));
                }
                let archive_waits = matches!(
                    job.archive,
                    Archive::Pending {
                        in_flight: false,
                        failures: 0,
                        ..
                    }
                );
                if archive_waits {
                    effects.push(Effect::ArchiveWorkspace { job_id });
                    events.push((
                        Actor::Recovery,
                        EventKind::WorkspaceArchiveStarted { job_id },
                    ));
                }
            }
        }
    }
    events.push((Actor::Recovery, EventKind::RecoveryFinished));
    (events, effects)
}

/// Whether the restart decision must wait `reattach_grace` to observe something: a job
/// `DISPATCHED` or `RUNNING`, or a finished job whose run had not settled. Without one,
/// the decision is made as soon as the server starts.
pub fn needs_observation(state: &State) -> bool {
    state.jobs.values().any(|job| {
        matches!(job.status, RunStatus::Dispatched | RunStatus::Running)
            || matches!(
                job.run.phase,
                RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
            )
    })
}

/// Stop effects for every process of the job that may still run: the server app if it
/// re-attached, and every site that took part or says it runs the job.
fn stop_everything(state: &State, job: &Job, server_alive: bool, effects: &mut Vec<Effect>) {
    let job_id = job.id;
    if server_alive {
        effects.push(Effect::StopServerApp { job_id });
    }
    let mut sites: BTreeSet<String> = job.run.outstanding_sites().into_iter().collect();
    sites.extend(sites_running(state, job_id));
    for site in sites {
        effects.push(Effect::StopSiteApp { site, job_id });
    }
}

/// Stop effects for the sites that said, when they reconnected, that they still run an
/// app of this (settled) job.
fn stop_reported(state: &State, job_id: JobId, effects: &mut Vec<Effect>) {
    for site in sites_running(state, job_id) {
        effects.push(Effect::StopSiteApp { site, job_id });
    }
}

fn sites_running(state: &State, job_id: JobId) -> Vec<String> {
    state
        .sites
        .iter()
        .filter(|(_, facts)| facts.running.contains(&job_id))
        .map(|(name, _)| name.clone())
        .collect()
}
