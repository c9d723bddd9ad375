//! The event format: every variant survives named-field MessagePack and JSON, its `name()`
//! is its serde tag, and given/when/then from a literal history.

mod lifecycle_support;

use std::collections::BTreeMap;

use fedrun::job::JobId;
use fedrun::lifecycle::event::LeftOutEnd;
use fedrun::lifecycle::{
    Actor, AdminRequest, BlobHash, BootId, Command, Event, EventKind, Rejection, ResourceAnswer,
    Role, RunStatus, ScheduleOutcome, StepResult, Timestamp,
};
use fedrun::site::protocol::ExitOutcome;
use lifecycle_support::*;

fn every_kind() -> Vec<EventKind> {
    let job_id = JobId(uuid::Uuid::from_u128(1));
    let site = || "site-1".to_string();
    vec![
        EventKind::ServerStarted {
            boot_id: BootId(uuid::Uuid::from_u128(9)),
        },
        EventKind::RecoveryFinished,
        EventKind::SiteConnected {
            site: site(),
            resources: BTreeMap::from([("num_of_gpus".into(), 2.0)]),
            running: vec![job_id],
        },
        EventKind::SiteDisconnected { site: site() },
        EventKind::JobSubmitted {
            job_id,
            meta: meta(&["site-1"], 1),
            package: BlobHash([3; 32]),
            submitter: boss(),
            signer: Some(admin("lee", "acme", Role::Lead)),
            submit_time: Timestamp::from_millis(T0),
            cloned_from: None,
        },
        EventKind::ScheduleTryStarted {
            job_id,
            try_id: 7,
            asked: vec![fedrun::lifecycle::event::ResourceRequest {
                site: site(),
                resources: BTreeMap::new(),
            }],
            requests: vec![fedrun::lifecycle::event::ResourceGroup {
                resources: BTreeMap::from([("num_of_gpus".to_string(), 1.0)]),
                sites: vec![site()],
            }],
        },
        EventKind::ScheduleTryExtended {
            job_id,
            try_id: 7,
            requests: vec![fedrun::lifecycle::event::ResourceGroup {
                resources: BTreeMap::new(),
                sites: vec!["site-9".into()],
            }],
        },
        EventKind::ResourceAnswered {
            job_id,
            try_id: 7,
            site: site(),
            answer: ResourceAnswer::Reserved("t".into()),
        },
        EventKind::ResourceAnswered {
            job_id,
            try_id: 7,
            site: site(),
            answer: ResourceAnswer::Refused("busy".into()),
        },
        EventKind::ResourceAnswered {
            job_id,
            try_id: 7,
            site: site(),
            answer: ResourceAnswer::NoReply,
        },
        EventKind::ScheduleTryCancelled { job_id, try_id: 7 },
        EventKind::ScheduleAttempted {
            job_id,
            outcome: ScheduleOutcome::Dispatched {
                sites: vec![site()],
                more: 3,
            },
        },
        EventKind::ScheduleAttempted {
            job_id,
            outcome: ScheduleOutcome::NoResources { reason: "r".into() },
        },
        EventKind::JobDispatched {
            job_id,
            sites: vec![site()],
            reservations: BTreeMap::from([(site(), "t".into())]),
        },
        EventKind::JobDispatchExtended {
            job_id,
            sites: vec!["site-9".into()],
            reservations: BTreeMap::from([("site-9".into(), "u".into())]),
        },
        EventKind::DeployFinished {
            job_id,
            participant: "server".into(),
            result: StepResult::Ok,
        },
        EventKind::DeployFinished {
            job_id,
            participant: site(),
            result: StepResult::Error("e".into()),
        },
        EventKind::StartFinished {
            job_id,
            participant: site(),
            result: StepResult::NoReply,
        },
        EventKind::RunStarted {
            job_id,
            job_clients: vec![site()],
        },
        EventKind::RunClientsAdded {
            job_id,
            job_clients: vec!["site-9".into()],
        },
        EventKind::ServerAppLost { job_id },
        EventKind::ServerAppExited {
            job_id,
            outcome: ExitOutcome::Signal(9),
        },
        EventKind::SiteOutcomeReported {
            job_id,
            site: site(),
            report_id: "r1".into(),
            outcome: ExitOutcome::Code(101),
            stop_requested: Some(true),
        },
        EventKind::SiteReportLapsed {
            job_id,
            site: site(),
        },
        EventKind::RunStopRequested {
            job_id,
            reason: "why".into(),
        },
        EventKind::RunStopped { job_id },
        EventKind::JobFinished {
            job_id,
            status: RunStatus::Abnormal,
            reason: "r".into(),
        },
        EventKind::JobDeleted { job_id },
        EventKind::JobDownloaded { job_id },
        EventKind::WorkspaceArchiveStarted { job_id },
        EventKind::WorkspaceArchiveAttemptFailed {
            job_id,
            reason: "r".into(),
        },
        EventKind::WorkspaceArchived {
            job_id,
            hash: BlobHash([4; 32]),
        },
        EventKind::WorkspaceArchiveFailed {
            job_id,
            reason: "r".into(),
        },
        EventKind::RunReattached { job_id },
        EventKind::RunRestored { job_id },
        EventKind::LeftOutSiteEnded {
            job_id,
            site: site(),
            how: LeftOutEnd::NotRunning,
        },
        EventKind::RequestRefused {
            job_id: Some(job_id),
            operation: "abort".into(),
            rejection: Rejection::NotAllowed {
                name: "max".into(),
                role: Role::Member,
                operation: "abort".into(),
                whose: "jobs".into(),
            },
        },
    ]
}

#[test]
fn every_event_kind_round_trips_and_is_named_by_its_tag() {
    for (i, kind) in every_kind().into_iter().enumerate() {
        let event = Event {
            seq: i as u64 + 1,
            at: Timestamp::from_millis(T0 + i as i64),
            actor: Actor::Admin {
                name: "boss".into(),
                org: "acme".into(),
                role: Role::ProjectAdmin,
            },
            request_id: Some("req".into()),
            boot_id: BootId(uuid::Uuid::from_u128(5)),
            kind,
        };
        let bytes = rmp_serde::to_vec_named(&event).expect("encodes");
        let back: Event = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(back, event);
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["kind"]["type"], event.kind.name(), "{json}");
        let back: Event = serde_json::from_value(json).expect("json decodes");
        assert_eq!(back, event);
    }
}

#[test]
fn json_shows_statuses_times_and_hashes_as_users_read_them() {
    let job_id = JobId(uuid::Uuid::from_u128(1));
    let kind = EventKind::JobFinished {
        job_id,
        status: RunStatus::CanNotSchedule,
        reason: "r".into(),
    };
    let json = serde_json::to_value(&kind).expect("json");
    assert_eq!(json["status"], "FINISHED:CAN_NOT_SCHEDULE");
    let kind = EventKind::WorkspaceArchived {
        job_id,
        hash: BlobHash([0xab; 32]),
    };
    assert_eq!(
        serde_json::to_value(&kind).expect("json")["hash"],
        "ab".repeat(32)
    );
    assert_eq!(
        serde_json::to_value(Timestamp::from_millis(T0)).expect("json"),
        T0
    );
}

#[test]
fn given_a_finished_job_when_aborted_then_refused_as_already_finished() {
    let mut w = World::default();
    let job_id = JobId(uuid::Uuid::from_u128(77));
    w.given(vec![
        (
            Actor::admin(&boss()),
            EventKind::JobSubmitted {
                job_id,
                meta: meta(&["site-1"], 1),
                package: package(),
                submitter: boss(),
                signer: None,
                submit_time: w.now,
                cloned_from: None,
            },
        ),
        (
            Actor::Scheduler,
            EventKind::JobFinished {
                job_id,
                status: RunStatus::CanNotSchedule,
                reason: "limit".into(),
            },
        ),
    ]);
    let d = w.admin_as(boss(), AdminRequest::AbortJob { job_id });
    assert_eq!(kinds(&d), ["request_refused"]);
    assert_eq!(
        d.reply,
        Some(Err(Rejection::JobAlreadyFinished {
            job_id,
            status: RunStatus::CanNotSchedule
        }))
    );
}

#[test]
fn a_fresh_server_with_nothing_in_flight_recovers_at_once() {
    let mut w = World::default();
    let queued = w.submit(meta(&["site-1"], 1));
    let d = w.when(Command::StartServer {
        boot_id: BootId(uuid::Uuid::from_u128(1)),
    });
    assert_eq!(kinds(&d), ["server_started", "recovery_finished"]);
    assert!(w.state.recovery.is_none());
    assert_eq!(w.status(queued), RunStatus::Submitted);
    // Every event after it carries the new boot id.
    assert!(d
        .events
        .iter()
        .all(|e| e.boot_id == BootId(uuid::Uuid::from_u128(1))));
}
