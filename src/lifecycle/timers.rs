//! Deadlines, computed purely from state. The engine sleeps until the earliest and then
//! feeds `Command::TimerFired`; `decide` checks again, so an early or stale firing is
//! harmless. Every deadline rests on a fact in state (a step began at t, a site left at t),
//! never on a clock read.

use std::time::Duration;

use crate::lifecycle::command::Timer;
use crate::lifecycle::state::{Archive, Job, RunPhase, StartStep, State};
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::schedule;
use crate::settings::Settings;

/// The first archive retry waits this long; each further one twice as long.
pub const ARCHIVE_RETRY_BASE: Duration = Duration::from_secs(1);
/// The longest wait between archive retries.
pub const ARCHIVE_RETRY_CAP: Duration = Duration::from_secs(30);

/// When a failed workspace archive is tried again, if it is waiting for a retry.
pub fn archive_retry_at(job: &Job) -> Option<Timestamp> {
    match &job.archive {
        Archive::Pending {
            in_flight: false,
            failures,
            last_failed_at: Some(last),
            ..
        } if *failures > 0 && job.status.is_terminal() => {
            let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
            let wait = ARCHIVE_RETRY_BASE
                .checked_mul(factor)
                .unwrap_or(ARCHIVE_RETRY_CAP)
                .min(ARCHIVE_RETRY_CAP);
            Some(last.plus(wait))
        }
        _ => None,
    }
}

/// The deadlines that do not belong to one job: the end of the restart window (which,
/// while open, is the only deadline), the next due schedule pass, and the try in flight.
/// Returns `true` when the restart window is open.
fn global_deadlines(
    state: &State,
    settings: &Settings,
    due: Option<Timestamp>,
    out: &mut Vec<(Timestamp, Timer)>,
) -> bool {
    if let Some(window) = &state.recovery {
        // While recovering, only the end of the window matters; the restart decisions
        // then settle everything else.
        out.push((
            window.started_at.plus(settings.reattach_grace),
            Timer::ReattachGraceOver,
        ));
        return true;
    }
    if let Some(due) = due {
        out.push((due, Timer::ScheduleDue));
    }
    if let Some(t) = &state.schedule_try {
        out.push((
            t.started_at.plus(settings.resource_check_timeout),
            Timer::ResourceCheckTimedOut { try_id: t.try_id },
        ));
    }
    false
}

/// One job's pending deadlines, unsorted.
fn job_deadlines(
    state: &State,
    settings: &Settings,
    job: &Job,
    any_away: &mut Option<bool>,
    out: &mut Vec<(Timestamp, Timer)>,
) {
    let job_id = job.id;
    let run = &job.run;
    if job.status == RunStatus::Dispatched {
        match run.step {
            Some((StartStep::DeployingServer | StartStep::DeployingSites, since)) => {
                out.push((
                    since.plus(settings.deploy_timeout),
                    Timer::DeployTimedOut { job_id },
                ));
            }
            Some((StartStep::StartingServer | StartStep::StartingSites, since)) => {
                out.push((
                    since.plus(settings.start_timeout),
                    Timer::StartTimedOut { job_id },
                ));
            }
            None => {}
        }
    }
    if matches!(run.phase, RunPhase::Running | RunPhase::Stopping) {
        if job.status == RunStatus::Running && run.any_site_outstanding() {
            if let Some((_, exited_at)) = run.server_exit {
                out.push((
                    exited_at.plus(settings.client_outcome_wait),
                    Timer::OutcomeWaitOver { job_id },
                ));
            }
        }
        // A site away is rare: whether any is (asked once per walk, of the sites and not
        // of every run's every site) comes first, whether the run still waits for it
        // only then.
        let away = *any_away.get_or_insert_with(|| state.sites.values().any(|f| !f.connected));
        let expected = away.then(|| run.expected_sites());
        for site in expected.into_iter().flatten() {
            let Some(facts) = state.sites.get(site).filter(|facts| !facts.connected) else {
                continue;
            };
            if run.site_outstanding(site) {
                out.push((
                    facts.since.plus(settings.site_reconnect_grace),
                    Timer::SiteReconnectGraceOver {
                        job_id,
                        site: site.to_string(),
                    },
                ));
            }
        }
    }
    let left_out_end = state.left_out_wait_end(run, settings);
    if run.phase == RunPhase::Stopping {
        if let Some(at) = run.stop_requested_at {
            // Left-out sites may count as ended later than the run's stop wait.
            let due = at.plus(settings.abort_grace + settings.client_outcome_wait);
            out.push((
                left_out_end.map_or(due, |end| end.max(due)),
                Timer::StopWaitOver { job_id },
            ));
        }
    } else if let Some(end) = left_out_end {
        if run.phase == RunPhase::Stopped {
            out.push((end, Timer::StopWaitOver { job_id }));
        }
    }
    if let Some(at) = archive_retry_at(job) {
        out.push((at, Timer::ArchiveRetryDue { job_id }));
    }
}

/// Every pending deadline, unsorted. Only the jobs of [`State::timed_jobs`] can have one:
/// every other job is terminal with its run, archive and left-out sites settled, or only
/// waits in the queue (whose next due pass is [`schedule::next_due`]).
fn pending(state: &State, settings: &Settings) -> Vec<(Timestamp, Timer)> {
    let mut out = Vec::new();
    if global_deadlines(
        state,
        settings,
        schedule::next_due(state, settings),
        &mut out,
    ) {
        return out;
    }
    let mut any_away = None;
    for job in state.timed_jobs() {
        job_deadlines(state, settings, job, &mut any_away, &mut out);
    }
    out
}

/// Every pending deadline, sorted by time, then by timer (a stable order for ties).
pub fn deadlines(state: &State, settings: &Settings) -> Vec<(Timestamp, Timer)> {
    let mut out = pending(state, settings);
    out.sort();
    out
}

/// The earliest pending deadline, if any: the first of [`deadlines`], without sorting the
/// rest. Its cost follows the jobs in flight, not the queue or every job ever submitted.
pub fn next_deadline(state: &State, settings: &Settings) -> Option<(Timestamp, Timer)> {
    pending(state, settings).into_iter().min()
}

/// [`deadlines`] the way it was computed before the live index: every job of the state
/// looked at, and the next due pass found by a scan of the queue. The reference the index
/// is checked against (and the baseline of the state benchmarks).
pub fn deadlines_by_scan(state: &State, settings: &Settings) -> Vec<(Timestamp, Timer)> {
    let mut out = Vec::new();
    if !global_deadlines(
        state,
        settings,
        schedule::next_due_by_scan(state, settings),
        &mut out,
    ) {
        // Every run's every site looked up, as before the walk asked whether any is away:
        // the reference checks that shortcut too.
        let mut any_away = Some(true);
        for job in state.jobs.values() {
            job_deadlines(state, settings, job, &mut any_away, &mut out);
        }
    }
    out.sort();
    out
}
