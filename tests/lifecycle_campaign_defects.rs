//! Given/when/then for the core defects the simulator's fault campaign found: each test
//! states the rule of SPEC the campaign saw broken (see `tests/scenarios/regressions/`).

mod lifecycle_support;

use fedrun::lifecycle::{Command, Effect, RunPhase, RunStatus};
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

/// SPEC 11: a site resends an answer whose acknowledgement it did not see; a repeat of
/// the start answer already recorded changes nothing (it used to stop the app).
#[test]
fn a_repeated_start_answer_of_a_participant_changes_nothing() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    let d = w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert!(d.effects.is_empty(), "{:?}", d.effects);
    assert_eq!(w.status(job_id), RunStatus::Running);
}

/// SPEC 11: the same for a resent deploy answer, while the sites' starts are awaited.
#[test]
fn a_repeated_deploy_answer_changes_nothing() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1"], 1);
    let d = w.site(
        "site-1",
        SiteReport::DeployAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert!(d.effects.is_empty(), "{:?}", d.effects);
}

/// A late OK after a recorded timeout is no repeat: that site was left out, its app is
/// stopped and its deployment deleted.
#[test]
fn a_late_start_answer_after_a_timeout_is_still_cleaned_up() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1", "site-2"], 1);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    w.run_to_next_deadline().expect("start timeout");
    assert_eq!(w.status(job_id), RunStatus::Running);
    let d = w.site(
        "site-2",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
}

/// SPEC 8: only a site asked to start a job can report its exit; a report for a job the
/// site never started (a lie, a confused site) is not the job's outcome.
#[test]
fn an_exit_from_a_site_never_asked_to_start_is_not_recorded() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1", "site-2"], 2);
    let d = w.site_exit("site-2", job_id, "lie-1", ExitOutcome::Code(101));
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert!(w.job(job_id).run.failure.is_none());
    assert!(w.job(job_id).run.site_exits.is_empty());
}

/// SPEC 4 and 8: a server app re-attached for a job that has ended and whose run is over
/// is stopped, and no re-attach is recorded for it.
#[test]
fn a_server_app_reattached_to_an_ended_run_is_stopped() {
    let mut w = World::new(Settings {
        resume_runs: true,
        ..Settings::default()
    });
    let job_id = w.running(&["site-1"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    w.restart(2);
    let d = w.when(Command::RunReattached { job_id });
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert_eq!(d.effects, vec![Effect::StopServerApp { job_id }]);
    assert_eq!(w.status(job_id), RunStatus::Completed);
}
