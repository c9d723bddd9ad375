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

/// A job RUNNING with `site-1`, and `site-2` left out because its start answer was lost
/// (it may have started the app).
fn run_with_a_left_out_site(w: &mut World) -> fedrun::job::JobId {
    let job_id = w.starting(&["site-1", "site-2"], 1);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    w.run_to_next_deadline().expect("the start timeout");
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert_eq!(*w.job(job_id).run.job_clients, vec!["site-1".to_string()]);
    job_id
}

fn reconnect(
    w: &mut World,
    site: &str,
    running: Vec<fedrun::job::JobId>,
) -> fedrun::lifecycle::Decision {
    w.site(site, SiteReport::Disconnected);
    w.site(
        site,
        SiteReport::Connected {
            resources: Default::default(),
            running,
        },
    )
}

/// SPEC 8 (regression start_reply_lost seeds 57, 60, 113): a site left out after its
/// start answer was lost may run the app. While it may, the run holds its `max_jobs`
/// slot after the job ended; it is told to stop when it reconnects listing the job; a
/// reconnect without the job ends the wait.
#[test]
fn a_site_left_out_after_a_lost_start_answer_holds_the_slot_until_its_app_is_gone() {
    let mut w = World::default();
    let job_id = run_with_a_left_out_site(&mut w);
    let stop = Effect::StopSiteApp {
        site: "site-2".into(),
        job_id,
    };
    // It reconnects while the job runs, listing it: it is no participant, so it stops.
    let d = reconnect(&mut w, "site-2", vec![job_id]);
    assert!(d.effects.contains(&stop), "{:?}", d.effects);
    assert_eq!(w.status(job_id), RunStatus::Running);

    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    let d = w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
    assert!(d.effects.contains(&stop), "{:?}", d.effects);
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    assert_eq!(
        w.state.active_job_count(),
        1,
        "the left-out app holds the slot"
    );
    assert!(
        !archives(&d.effects),
        "no archive while an app may still run"
    );

    // Listing the job again: stopped again, still holding the slot.
    let d = reconnect(&mut w, "site-2", vec![job_id]);
    assert!(d.effects.contains(&stop), "{:?}", d.effects);
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);

    // Back without it: the app is gone; the run is stopped and the slot free.
    let d = reconnect(&mut w, "site-2", vec![]);
    assert!(
        kinds(&d).contains(&"left_out_site_ended"),
        "{:?}",
        kinds(&d)
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.state.active_job_count(), 0);
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

/// SPEC 8: a left-out site's exit report ends its wait but is never the job's outcome.
#[test]
fn a_left_out_site_exit_ends_its_wait_and_is_not_the_outcome() {
    let mut w = World::default();
    let job_id = run_with_a_left_out_site(&mut w);
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(101));
    assert_eq!(kinds(&d), vec!["left_out_site_ended"]);
    assert!(w.job(job_id).run.failure.is_none());
    assert!(w.job(job_id).run.site_exits.is_empty());
    assert_eq!(
        w.status(job_id),
        RunStatus::Running,
        "101 of a non-participant stops nothing"
    );
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

/// SPEC 8 "a stop is over": a left-out site that never answers counts as ended when
/// `abort_grace + client_outcome_wait` has passed since the stop; one that is away counts
/// as ended only when its `site_reconnect_grace` runs out, if that is later.
#[test]
fn the_stop_wait_ends_a_left_out_site_and_an_away_one_waits_for_its_grace() {
    let settings = Settings {
        site_reconnect_grace: std::time::Duration::from_secs(3600),
        ..Settings::default()
    };
    let mut w = World::new(settings.clone());
    let job_id = run_with_a_left_out_site(&mut w);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    let stopped_at = w.now;
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    w.site("site-2", SiteReport::Disconnected);
    let away_at = w.now;
    let (timer, _) = w.run_to_next_deadline().expect("the stop wait");
    assert!(
        matches!(timer, fedrun::lifecycle::Timer::StopWaitOver { .. }),
        "{timer:?}"
    );
    assert_eq!(
        w.now,
        away_at
            .plus(settings.site_reconnect_grace)
            .max(stopped_at.plus(settings.abort_grace + settings.client_outcome_wait))
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert!(w.job(job_id).run.left_out.is_empty());

    // Connected and silent: over at abort_grace + client_outcome_wait.
    let mut w = World::new(Settings::default());
    let job_id = run_with_a_left_out_site(&mut w);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    let stopped_at = w.now;
    w.run_to_next_deadline().expect("the stop wait");
    assert_eq!(
        w.now,
        stopped_at.plus(w.settings.abort_grace + w.settings.client_outcome_wait)
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

/// SPEC 8: sites asked to start whose answer had not come when the job was aborted may
/// have started; they hold the slot like a left-out site.
#[test]
fn an_abort_while_start_answers_are_awaited_waits_for_those_sites() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1"], 1);
    w.abort(job_id);
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    w.server_exit(job_id, ExitOutcome::Signal(15));
    assert!(w.job(job_id).run.left_out.contains("site-1"));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    let d = reconnect(&mut w, "site-1", vec![]);
    assert!(
        kinds(&d).contains(&"left_out_site_ended"),
        "{:?}",
        kinds(&d)
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

/// SPEC 4 (regression answer_in_recovery): while the recovery window is open, a first
/// start answer for a `DISPATCHED` job is not answered with a stop and a delete (the job
/// is live until the restart decision); that decision then abandons the job, stops the
/// site whose start was awaited and holds the run's slot until its app is gone.
#[test]
fn a_start_answer_in_the_recovery_window_waits_for_the_restart_decision() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1", "site-2"], 1);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    w.restart(2);
    assert!(w.state.recovery.is_some());
    let d = w.site(
        "site-2",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert!(d.effects.is_empty(), "{:?}", d.effects);
    let (_, d) = w
        .run_to_next_deadline()
        .expect("the end of the recovery window");
    assert_eq!(w.status(job_id), RunStatus::Abandoned);
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    assert!(w.job(job_id).run.left_out.contains("site-2"));
    assert_eq!(w.state.active_job_count(), 1);
}

/// SPEC 8 (regression stop_ends_early): a site that comes back saying it still runs the
/// app of a job whose run is stopped is told to stop, and the run holds its slot again
/// until that app is known to have ended.
#[test]
fn a_site_back_with_an_app_of_a_stopped_run_holds_the_slot_again() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.state.active_job_count(), 0);
    let d = reconnect(&mut w, "site-1", vec![job_id]);
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id
    }));
    assert_eq!(w.state.active_job_count(), 1);
    // It goes away again: the slot is held until its reconnect grace runs out.
    w.site("site-1", SiteReport::Disconnected);
    let away = w.now;
    let (_, d) = w.run_to_next_deadline().expect("the left-out wait");
    assert_eq!(w.now, away.plus(w.settings.site_reconnect_grace));
    assert!(
        kinds(&d).contains(&"left_out_site_ended"),
        "{:?}",
        kinds(&d)
    );
    assert_eq!(w.state.active_job_count(), 0);
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

/// SPEC 4 (regression reattach_ended_run seed 15413): a crash lost a job's server start
/// and then the stop that followed its abandonment. At the next restart its server app
/// is found alive: it is stopped, and since the run records no started server app, no
/// re-attach is recorded for it.
#[test]
fn a_server_app_reattached_to_an_abandoned_job_whose_start_was_lost_is_stopped() {
    let mut w = World::new(Settings {
        resume_runs: true,
        ..Settings::default()
    });
    let job_id = w.dispatched(&["site-1"], 1);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    w.site(
        "site-1",
        SiteReport::DeployAnswer {
            job_id,
            result: Ok(()),
        },
    );
    // The server app was spawned; its start never reached the history.
    w.restart(2);
    w.given(vec![(
        fedrun::lifecycle::Actor::Recovery,
        fedrun::lifecycle::EventKind::JobFinished {
            job_id,
            status: RunStatus::Abandoned,
            reason: "the server restarted while the job was being deployed and started".into(),
        },
    )]);
    w.restart(3);
    let d = w.when(Command::RunReattached { job_id });
    assert_eq!(d.effects, vec![Effect::StopServerApp { job_id }]);
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    w.run_to_next_deadline()
        .expect("the end of the recovery window");
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.status(job_id), RunStatus::Abandoned);
}

/// SPEC 8 (regression barrier_timeout_away_site): when the outcome barrier times out, the
/// job is decided from what is known and the sites that never reported are told to stop.
/// Their apps may still run: the run holds its `max_jobs` slot until the stop is over. An
/// away site counts as ended when its `site_reconnect_grace` runs out (it used to free the
/// slot at once, while the away site's app was alive).
#[test]
fn a_barrier_timeout_holds_the_slot_while_an_unreported_site_may_still_run_the_app() {
    let settings = Settings {
        client_outcome_wait: std::time::Duration::from_secs(120),
        site_reconnect_grace: std::time::Duration::from_secs(30),
        ..Settings::default()
    };
    let mut w = World::new(settings.clone());
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    let exited_at = w.now;
    w.advance_ms(91_000);
    w.site("site-2", SiteReport::Disconnected);
    let away_at = w.now;

    let (_, d) = w.run_to_next_deadline().expect("the outcome barrier");
    assert_eq!(w.now, exited_at.plus(settings.client_outcome_wait));
    let (status, reason) = finished(&d).expect("the job is decided at the barrier");
    assert_eq!(status, RunStatus::Completed);
    assert!(reason.contains("site-2"), "{reason}");
    assert!(
        d.effects.contains(&Effect::StopSiteApp {
            site: "site-2".into(),
            job_id
        }),
        "{:?}",
        d.effects
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    assert_eq!(
        w.state.active_job_count(),
        1,
        "site-2 is within its grace and may still run the app"
    );
    assert!(
        !archives(&d.effects),
        "no archive while an app may still run"
    );

    // Its grace runs out: it counts as ended, the stop is over, the slot is free.
    w.run_to_next_deadline().expect("site-2's reconnect grace");
    assert_eq!(w.now, away_at.plus(settings.site_reconnect_grace));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.state.active_job_count(), 0);
    assert_eq!(w.status(job_id), RunStatus::Completed, "decided once");

    // A connected site that never reported: its exit after the stop ends the wait.
    let mut w = World::new(settings.clone());
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    let (_, d) = w.run_to_next_deadline().expect("the outcome barrier");
    assert_eq!(finished(&d).map(|f| f.0), Some(RunStatus::Completed));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    assert_eq!(w.state.active_job_count(), 1);
    w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(9));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.state.active_job_count(), 0);
    assert_eq!(w.status(job_id), RunStatus::Completed, "decided once");
}

/// SPEC 7 and 8 (found by sim_property): a site back past its grace with the app of an
/// ended run makes that run hold its slot again. A try in flight at that moment must not
/// dispatch while max_jobs jobs count against the limit (it did, pushing the count over
/// max_jobs): it ends without resources and gives its reservations back. The returning
/// site's exit report then ends the hold at once (it used to wait for the stop wait).
#[test]
fn a_try_in_flight_does_not_dispatch_when_a_returning_site_takes_the_slot_back() {
    let settings = Settings {
        max_jobs: 1,
        site_reconnect_grace: std::time::Duration::from_secs(30),
        ..Settings::default()
    };
    let mut w = World::new(settings);
    let first = w.running(&["site-1"], 1);
    w.connect("site-2");
    let second = w.submit(meta(&["site-2"], 1));
    assert!(w.state.schedule_try.is_none(), "max_jobs is reached");
    w.server_exit(first, ExitOutcome::Code(0));
    w.site("site-1", SiteReport::Disconnected);
    w.run_to_next_deadline().expect("site-1's reconnect grace");
    assert_eq!(w.status(first), RunStatus::Abnormal);
    assert_eq!(w.state.active_job_count(), 0);
    let asks = w.last_try_effects(second);

    // site-1 comes back still running first's app: told to stop, it holds the slot again.
    let d = reconnect(&mut w, "site-1", vec![first]);
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id: first
    }));
    assert_eq!(w.state.active_job_count(), 1);

    // The try completes: nothing is dispatched, the reservation goes back.
    let d = w.reserve_all(&asks);
    assert_eq!(w.status(second), RunStatus::Submitted);
    assert!(
        d.iter().flat_map(|d| d.effects.iter()).any(|e| matches!(
            e,
            Effect::CancelReservation { site, job_id, .. } if site == "site-2" && *job_id == second
        )),
        "{d:?}"
    );
    let line = w.job(second).schedule_history.lines().last().unwrap();
    assert!(line.contains("max_jobs (1)"), "{line}");
    assert_eq!(w.state.active_job_count(), 1);

    // site-1's exit report ends the hold at once; the next try dispatches second.
    let d = w.site_exit("site-1", first, "r1", ExitOutcome::Signal(15));
    assert!(
        kinds(&d).contains(&"left_out_site_ended"),
        "{:?}",
        kinds(&d)
    );
    assert_eq!(w.state.active_job_count(), 0);
    assert_eq!(w.status(first), RunStatus::Abnormal, "decided once");
    let (_, d) = w.run_to_next_deadline().expect("second's back-off");
    w.reserve_all(&d.effects);
    assert_eq!(w.status(second), RunStatus::Dispatched);
}
