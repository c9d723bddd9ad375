//! Replay refuses records `decide` could never make (SPEC section 3: a record that is
//! illegal for the state so far stops start-up with an error naming its sequence number).
//! One test per class of forged record; each builds a legal history with `decide` first.

mod lifecycle_support;

use std::collections::BTreeMap;

use fedrun::job::JobId;
use fedrun::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, ReplayError, RunStatus, State, StepResult, Timestamp,
};
use fedrun::site::protocol::ExitOutcome;
use lifecycle_support::*;

/// Applies a forged record after `state` and returns the refusal, checking that it names
/// the record's sequence number and leaves the state unchanged.
fn refused(state: &State, actor: Actor, kind: EventKind) -> String {
    let event = Event {
        seq: state.last_seq + 1,
        at: state.last_at,
        actor,
        request_id: None,
        boot_id: state.boot_id,
        kind,
    };
    let mut copy = state.clone();
    match copy.apply_checked(&event) {
        Err(ReplayError::IllegalTransition { seq, reason, .. }) => {
            assert_eq!(seq, event.seq);
            assert_eq!(&copy, state, "a refused record changes nothing");
            reason
        }
        other => panic!("the forged {} was accepted: {other:?}", event.kind.name()),
    }
}

fn admin_actor() -> Actor {
    Actor::admin(&boss())
}

fn submitted_kind(w: &World, submitter: fedrun::lifecycle::Identity) -> EventKind {
    EventKind::JobSubmitted {
        job_id: JobId(uuid::Uuid::from_u128(77)),
        meta: meta(&["site-1"], 1),
        package: package(),
        submitter,
        signer: None,
        submit_time: w.state.last_at,
        cloned_from: None,
    }
}

#[test]
fn a_submit_not_made_by_an_admin_is_refused() {
    let w = World::default();
    let reason = refused(&w.state, Actor::Scheduler, submitted_kind(&w, boss()));
    assert!(reason.contains("actor"), "{reason}");
}

#[test]
fn a_submit_naming_another_submitter_is_refused() {
    let w = World::default();
    let other = admin("eve", "evil", fedrun::lifecycle::Role::Lead);
    refused(&w.state, admin_actor(), submitted_kind(&w, other));
}

#[test]
fn a_submit_whose_time_is_not_its_event_time_is_refused() {
    let mut w = World::default();
    w.advance_ms(5000);
    w.connect("site-1");
    let mut kind = submitted_kind(&w, boss());
    if let EventKind::JobSubmitted { submit_time, .. } = &mut kind {
        *submit_time = Timestamp::from_millis(T0);
    }
    refused(&w.state, admin_actor(), kind);
}

#[test]
fn a_submit_without_a_server_app_is_refused() {
    let w = World::default();
    let mut kind = submitted_kind(&w, boss());
    if let EventKind::JobSubmitted { meta, .. } = &mut kind {
        meta.deploy_map[0].targets = vec!["site-1".into()];
    }
    refused(&w.state, admin_actor(), kind);
}

#[test]
fn a_server_start_with_another_boot_id_is_refused() {
    let w = World::default();
    refused(
        &w.state,
        Actor::System,
        EventKind::ServerStarted {
            boot_id: BootId(uuid::Uuid::from_u128(5)),
        },
    );
}

#[test]
fn a_disconnect_of_a_site_that_is_not_connected_is_refused() {
    let w = World::default();
    refused(
        &w.state,
        Actor::Site {
            name: "site-1".into(),
        },
        EventKind::SiteDisconnected {
            site: "site-1".into(),
        },
    );
}

#[test]
fn a_try_whose_id_is_not_its_sequence_number_is_refused() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    refused(
        &w.state,
        Actor::Scheduler,
        EventKind::ScheduleTryStarted {
            job_id,
            try_id: 1,
            asked: Vec::new(),
            requests: Vec::new(),
        },
    );
}

#[test]
fn a_dispatch_without_a_try_that_just_ended_is_refused() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    w.advance_ms(1000);
    w.connect("site-2");
    refused(
        &w.state,
        Actor::Scheduler,
        EventKind::JobDispatched {
            job_id,
            sites: vec!["site-1".into()],
            reservations: BTreeMap::new(),
        },
    );
}

#[test]
fn a_second_deploy_answer_and_an_answer_out_of_step_are_refused() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    // The server's deploy is awaited: a site cannot have answered yet.
    refused(
        &w.state,
        Actor::Site {
            name: "site-1".into(),
        },
        EventKind::DeployFinished {
            job_id,
            participant: "site-1".into(),
            result: StepResult::Ok,
        },
    );
    w.when(fedrun::lifecycle::Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    refused(
        &w.state,
        Actor::System,
        EventKind::DeployFinished {
            job_id,
            participant: "server".into(),
            result: StepResult::Ok,
        },
    );
}

#[test]
fn a_run_started_before_its_apps_started_is_refused() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    refused(
        &w.state,
        Actor::System,
        EventKind::RunStarted {
            job_id,
            job_clients: vec!["site-1".into()],
        },
    );
}

#[test]
fn an_exit_of_a_server_app_that_never_started_is_refused() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    refused(
        &w.state,
        Actor::System,
        EventKind::ServerAppExited {
            job_id,
            outcome: ExitOutcome::Code(0),
        },
    );
}

#[test]
fn an_exit_report_from_a_site_the_job_was_not_sent_to_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    refused(
        &w.state,
        Actor::Site {
            name: "site-9".into(),
        },
        EventKind::SiteOutcomeReported {
            job_id,
            site: "site-9".into(),
            report_id: "r".into(),
            outcome: ExitOutcome::Code(1),
            stop_requested: Some(false),
        },
    );
}

#[test]
fn a_lapse_of_a_report_that_arrived_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    refused(
        &w.state,
        Actor::System,
        EventKind::SiteReportLapsed {
            job_id,
            site: "site-1".into(),
        },
    );
}

#[test]
fn a_stop_of_a_run_that_never_started_is_refused() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    refused(
        &w.state,
        Actor::System,
        EventKind::RunStopRequested {
            job_id,
            reason: "why".into(),
        },
    );
}

#[test]
fn a_download_of_an_unfinished_job_is_refused() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    refused(&w.state, admin_actor(), EventKind::JobDownloaded { job_id });
}

#[test]
fn a_logs_read_of_a_site_the_job_was_not_sent_to_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    refused(
        &w.state,
        admin_actor(),
        EventKind::LogsRead {
            job_id,
            site: Some("site-9".into()),
        },
    );
    refused(
        &w.state,
        Actor::Site {
            name: "site-1".into(),
        },
        EventKind::LogsRead { job_id, site: None },
    );
}

#[test]
fn an_archive_while_the_run_is_still_stopping_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.abort(job_id);
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    refused(
        &w.state,
        Actor::System,
        EventKind::WorkspaceArchiveStarted { job_id },
    );
}

#[test]
fn a_reattach_outside_a_recovery_window_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    refused(&w.state, Actor::System, EventKind::RunReattached { job_id });
}

#[test]
fn an_ending_with_an_overlong_reason_is_refused() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    refused(
        &w.state,
        admin_actor(),
        EventKind::JobFinished {
            job_id,
            status: RunStatus::Aborted,
            reason: "x".repeat(10_000),
        },
    );
}

#[test]
fn a_lost_server_app_outside_a_recovery_window_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    refused(
        &w.state,
        Actor::Recovery,
        EventKind::ServerAppLost { job_id },
    );
    let _ = BlobHash([0; 32]);
}

#[test]
fn an_end_of_a_left_out_app_for_a_site_that_was_not_left_out_is_refused() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 1);
    let reason = refused(
        &w.state,
        Actor::Site {
            name: "site-1".into(),
        },
        EventKind::LeftOutSiteEnded {
            job_id,
            site: "site-1".into(),
            how: fedrun::lifecycle::event::LeftOutEnd::Exited,
        },
    );
    assert!(reason.contains("left-out"), "{reason}");
}

/// The set of left-out sites is rebuilt by replay: a site whose start answer was lost is
/// in it after the records are applied again from scratch.
#[test]
fn replay_rebuilds_the_left_out_sites() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1", "site-2"], 1);
    w.site(
        "site-1",
        fedrun::lifecycle::SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    w.run_to_next_deadline().expect("the start timeout");
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert!(w.job(job_id).run.left_out.contains("site-2"));
    let mut replayed = State::new();
    for event in &w.log {
        replayed.apply_checked(event).expect("the history replays");
    }
    assert_eq!(replayed, w.state);
}
