//! Running rules of SPEC section 8: deploy detail, start, outcome codes, failure order,
//! the outcome barrier and the reconnect grace. Expected statuses cite the rule they
//! follow from.

mod lifecycle_support;

use fedrun::lifecycle::{Command, Effect, RunPhase, RunStatus, Timer};
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

fn deploy(
    w: &mut World,
    job_id: fedrun::job::JobId,
    answers: &[(&str, Result<(), String>)],
) -> fedrun::lifecycle::Decision {
    let mut last = w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    for (site, result) in answers {
        last = w.site(
            site,
            SiteReport::DeployAnswer {
                job_id,
                result: result.clone(),
            },
        );
    }
    last
}

#[test]
fn deploy_detail_has_one_line_per_participant_and_failed_sites_are_left_out() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1", "site-2", "site-3"], 1);
    deploy(
        &mut w,
        job_id,
        &[("site-1", Ok(())), ("site-2", Err("disk full".into()))],
    );
    let (timer, d) = w.run_to_next_deadline().expect("deploy timeout");
    assert_eq!(timer, Timer::DeployTimedOut { job_id });
    assert_eq!(
        w.job(job_id).run.deploy_detail(),
        [
            "server: OK",
            "site-1: OK",
            "site-2: disk full",
            "site-3: no reply (deployment timeout)"
        ]
    );
    // min_clients 1 holds with site-1: the failed sites are left out and start begins.
    assert!(d.effects.contains(&Effect::StartServerApp { job_id }));
    assert!(d.effects.contains(&Effect::DeleteSiteDeployment {
        site: "site-3".into(),
        job_id
    }));
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert_eq!(*w.job(job_id).run.job_clients, ["site-1"]);
}

#[test]
fn too_few_deployed_sites_fail_to_run_and_clean_up() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1", "site-2"], 2);
    let d = deploy(
        &mut w,
        job_id,
        &[("site-1", Ok(())), ("site-2", Err("bad signature".into()))],
    );
    let (status, reason) = finished(&d).expect("ended");
    assert_eq!(status, RunStatus::FailedToRun);
    assert_eq!(
        reason,
        "deploy failed: sites deployed (1) < min_clients (2); server: OK; site-1: OK; site-2: bad signature"
    );
    assert!(d.effects.contains(&Effect::DeleteSiteDeployment {
        site: "site-1".into(),
        job_id
    }));
    assert!(d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

#[test]
fn a_failed_mandatory_site_fails_the_run() {
    let mut w = World::default();
    w.connect("site-1");
    w.connect("site-2");
    let mut m = meta(&["site-1", "site-2"], 1);
    m.mandatory_clients = vec!["site-2".into()];
    let job_id = w.submit(m);
    let effects = w.last_try_effects(job_id);
    w.reserve_all(&effects);
    let d = deploy(
        &mut w,
        job_id,
        &[("site-1", Ok(())), ("site-2", Err("no space".into()))],
    );
    let (status, reason) = finished(&d).expect("ended");
    assert_eq!(status, RunStatus::FailedToRun);
    assert!(
        reason.starts_with("deploy failed: mandatory sites not deployed: site-2"),
        "{reason}"
    );
}

#[test]
fn a_server_deploy_failure_fails_to_run() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    let d = w.when(Command::ServerDeployFinished {
        job_id,
        result: Err("signature invalid".into()),
    });
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::FailedToRun,
            "deploy failed: server: signature invalid".into()
        ))
    );
    assert!(d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelReservation { .. })));
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::DeploySiteApp { .. })));
}

#[test]
fn start_timeout_leaves_silent_sites_out_or_fails_and_stops_the_run() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1", "site-2"], 1);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    let start = w.now;
    let (timer, _) = w.run_to_next_deadline().expect("start timeout");
    assert_eq!(timer, Timer::StartTimedOut { job_id });
    assert_eq!(w.now.as_millis() - start.as_millis(), 20_000);
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert_eq!(*w.job(job_id).run.job_clients, ["site-1"]);

    let mut w = World::default();
    let job_id = w.starting(&["site-1", "site-2"], 2);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    let (_, d) = w.run_to_next_deadline().expect("start timeout");
    let (status, reason) = finished(&d).expect("ended");
    assert_eq!(status, RunStatus::FailedToRun);
    assert_eq!(
        reason,
        "start failed: sites started (1) < min_clients (2); site-2: no reply (start timeout)"
    );
    assert!(d.effects.contains(&Effect::StopServerApp { job_id }));
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id
    }));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    // site-2, whose start answer never came, may have started: it is told to stop too,
    // and the run stays stopping until it is known not to run the app (SPEC 8).
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    w.server_exit(job_id, ExitOutcome::Signal(15));
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    assert!(!kinds(&d).contains(&"run_stopped"), "{:?}", kinds(&d));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    w.site("site-2", SiteReport::Disconnected);
    let d = w.site(
        "site-2",
        SiteReport::Connected {
            resources: Default::default(),
            running: Vec::new(),
        },
    );
    assert!(kinds(&d).contains(&"run_stopped"), "{:?}", kinds(&d));
    assert_eq!(w.status(job_id), RunStatus::FailedToRun);
}

/// Runs a two-site job where site-1 reports `first` and then site-2 reports `second`,
/// then the server app ends normally; returns the final status.
fn two_reports(first: ExitOutcome, second: ExitOutcome) -> RunStatus {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site_exit("site-1", job_id, "r1", first);
    w.site_exit("site-2", job_id, "r2", second);
    if w.status(job_id) == RunStatus::Running {
        w.server_exit(job_id, ExitOutcome::Code(0));
    }
    w.status(job_id)
}

#[test]
fn each_outcome_code_decides_its_status() {
    use ExitOutcome::{Code, Signal};
    // Rule 2: 104 or a signal -> ABNORMAL; 9 -> ABORTED; other non-zero -> EXECUTION_EXCEPTION.
    // Rule 3: no failure -> COMPLETED.
    let cases = [
        (Code(0), RunStatus::Completed),
        (Code(1), RunStatus::ExecutionException),
        (Code(101), RunStatus::ExecutionException),
        (Code(102), RunStatus::ExecutionException),
        (Code(103), RunStatus::ExecutionException),
        (Code(104), RunStatus::Abnormal),
        (Code(9), RunStatus::Aborted),
        (Signal(9), RunStatus::Abnormal),
    ];
    for (outcome, expected) in cases {
        assert_eq!(
            two_reports(outcome, Code(0)),
            expected,
            "site reported {outcome:?}"
        );
    }
}

#[test]
fn failure_order_104_and_signals_are_sticky_9_never_replaces_later_replaces() {
    use ExitOutcome::{Code, Signal};
    // 104 first, then 101: 104 is sticky -> ABNORMAL. (101 stops the run, so site-2's
    // report after the stop is not a failure at all; the order rule and the stop agree.)
    assert_eq!(two_reports(Code(104), Code(101)), RunStatus::Abnormal);
    // 1 does not stop the run; a later 101 replaces it -> EXECUTION_EXCEPTION.
    assert_eq!(
        two_reports(Code(1), Code(101)),
        RunStatus::ExecutionException
    );
    // 1 then 9: 9 never replaces an earlier failure -> EXECUTION_EXCEPTION.
    assert_eq!(two_reports(Code(1), Code(9)), RunStatus::ExecutionException);
    // 1 then 104: a later failure replaces -> ABNORMAL.
    assert_eq!(two_reports(Code(1), Code(104)), RunStatus::Abnormal);
    // 1 then a signal -> ABNORMAL.
    assert_eq!(two_reports(Code(1), Signal(11)), RunStatus::Abnormal);
}

#[test]
fn a_report_of_1_is_recorded_but_101_stops_the_run() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(1));
    assert_eq!(kinds(&d), ["site_outcome_reported"]);
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    assert_eq!(kinds(&d), ["site_outcome_reported", "run_stop_requested"]);
    assert!(d.effects.contains(&Effect::StopServerApp { job_id }));
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
}

#[test]
fn exits_caused_by_fedruns_own_stop_are_not_failures() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(103));
    // The others were asked to stop; they end by a signal and code 104.
    w.server_exit(job_id, ExitOutcome::Signal(15));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(104));
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::ExecutionException,
            "site site-1 reported code 103".into()
        ))
    );
}

#[test]
fn the_outcome_barrier_waits_client_outcome_wait_and_names_silent_sites() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    let exited = w.now;
    let (timer, d) = w.run_to_next_deadline().expect("barrier");
    assert_eq!(timer, Timer::OutcomeWaitOver { job_id });
    assert_eq!(w.now.as_millis() - exited.as_millis(), 15 * 60 * 1000);
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::Completed,
            "the server app and every site ended normally; no report within client_outcome_wait (15m) from site-2".into()
        ))
    );
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
}

#[test]
fn a_site_lost_past_the_reconnect_grace_counts_as_104() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site("site-2", SiteReport::Disconnected);
    let gone = w.now;
    let (timer, d) = w.run_to_next_deadline().expect("grace");
    assert_eq!(
        timer,
        Timer::SiteReconnectGraceOver {
            job_id,
            site: "site-2".into()
        }
    );
    assert_eq!(w.now.as_millis() - gone.as_millis(), 60_000);
    assert_eq!(kinds(&d), ["site_report_lapsed", "run_stop_requested"]);
    w.server_exit(job_id, ExitOutcome::Signal(15));
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    let (status, reason) = finished(&d).expect("ended");
    assert_eq!(status, RunStatus::Abnormal);
    assert!(reason.starts_with("site site-2 was lost"), "{reason}");
}

#[test]
fn a_site_back_within_the_grace_keeps_its_report() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.site("site-1", SiteReport::Disconnected);
    w.advance_ms(59_000);
    w.site(
        "site-1",
        SiteReport::Connected {
            resources: Default::default(),
            running: vec![job_id],
        },
    );
    w.advance_ms(10_000);
    let fired = w.fire_due_timers();
    assert!(fired.iter().all(|d| d.events.is_empty()));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

#[test]
fn a_resent_report_is_not_counted_twice() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(1));
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(1));
    assert!(d.events.is_empty());
}

#[test]
fn a_stopping_run_is_given_up_after_abort_grace_plus_client_outcome_wait() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.abort(job_id);
    w.server_exit(job_id, ExitOutcome::Signal(15));
    let stop = w.now;
    let (timer, d) = w.run_to_next_deadline().expect("stop wait");
    assert_eq!(timer, Timer::StopWaitOver { job_id });
    assert_eq!(
        w.now.as_millis() - stop.as_millis(),
        10_000 + 15 * 60 * 1000
    );
    assert!(kinds(&d).contains(&"run_stopped"));
}

#[test]
fn a_stopped_run_whose_server_app_never_ends_is_decided_from_what_is_known() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    // site-1 fails with 101: the run stops, but the server app never reports its exit.
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    let (timer, d) = w.run_to_next_deadline().expect("stop wait");
    assert_eq!(timer, Timer::StopWaitOver { job_id });
    let (status, reason) = finished(&d).expect("decided");
    assert_eq!(status, RunStatus::ExecutionException);
    assert!(
        reason.starts_with("site-1 reported code 101; the run's processes did not end"),
        "{reason}"
    );
    // A late exit of the server app changes nothing.
    let d = w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(kinds(&d), ["server_app_exited"]);
    assert_eq!(w.status(job_id), RunStatus::ExecutionException);
}

#[test]
fn a_site_that_reconnects_still_running_a_stopping_run_is_told_again_to_stop() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    // site-2 was asked to stop, but lost its connection before the request arrived.
    w.site("site-2", SiteReport::Disconnected);
    let d = w.site(
        "site-2",
        SiteReport::Connected {
            resources: Default::default(),
            running: vec![job_id],
        },
    );
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    // A site running a job that is still RUNNING normally is left alone.
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.site("site-1", SiteReport::Disconnected);
    let d = w.site(
        "site-1",
        SiteReport::Connected {
            resources: Default::default(),
            running: vec![job_id],
        },
    );
    assert!(d.effects.is_empty());
}

#[test]
fn sites_left_out_after_deploy_give_their_reservations_back() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1", "site-2", "site-3"], 1);
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
    let d = w.site(
        "site-2",
        SiteReport::DeployAnswer {
            job_id,
            result: Err("disk full".into()),
        },
    );
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::CancelReservation { site, .. } if site == "site-2")),
        "{:?}",
        d.effects
    );
    let (_, d) = w.run_to_next_deadline().expect("deploy timeout");
    let cancelled: Vec<&str> = d
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::CancelReservation { site, .. } => Some(site.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        cancelled,
        ["site-3"],
        "site-2's was given back already, site-1 keeps its own"
    );
    assert_eq!(
        w.job(job_id).run.reservations.keys().collect::<Vec<_>>(),
        ["site-1"]
    );
}
