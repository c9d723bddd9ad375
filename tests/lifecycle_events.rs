//! The event format: every variant survives named-field MessagePack and JSON, its `name()`
//! is its serde tag, and given/when/then from a literal history.

mod lifecycle_support;
mod source_scan;

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
        EventKind::LogsRead { job_id, site: None },
        EventKind::LogsRead {
            job_id,
            site: Some(site()),
        },
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

/// One value of a serde enum of the core, and how to round-trip it.
struct Sample {
    /// The enum's name.
    type_name: &'static str,
    /// The variant's name (from `Debug`, which starts with it).
    variant: String,
    /// Encodes and decodes the value in every encoding the server uses, or says where
    /// it broke.
    round_trip: Box<dyn Fn() -> Result<(), String>>,
}

fn sample<T>(value: T) -> Sample
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + 'static,
{
    let full_name = std::any::type_name::<T>();
    let type_name = full_name.rsplit("::").next().unwrap_or(full_name);
    let variant = source_scan::leading_identifier(&format!("{value:?}")).to_string();
    Sample {
        type_name,
        variant,
        round_trip: Box::new(move || {
            // Positional MessagePack is how a snapshot stores the state (format 2).
            let blob = fedrun::history::snapshot::encode_state(&value)
                .map_err(|e| format!("snapshot encoding: {e}"))?;
            let back: T = fedrun::history::snapshot::decode_state(&blob)
                .map_err(|e| format!("snapshot decoding: {e}"))?;
            if back != value {
                return Err(format!("snapshot reads back {back:?}"));
            }
            // Named-field MessagePack: version-1 records and snapshots, the network.
            let named = rmp_serde::to_vec_named(&value).map_err(|e| e.to_string())?;
            let back: T = rmp_serde::from_slice(&named)
                .map_err(|e| format!("named MessagePack decoding: {e}"))?;
            if back != value {
                return Err(format!("named MessagePack reads back {back:?}"));
            }
            let json = serde_json::to_string(&value).map_err(|e| e.to_string())?;
            let back: T =
                serde_json::from_str(&json).map_err(|e| format!("JSON decoding of {json}: {e}"))?;
            if back != value {
                return Err(format!("JSON {json} reads back {back:?}"));
            }
            Ok(())
        }),
    }
}

/// A value of every variant of every serde enum in the files a snapshot's layout covers.
fn every_variant() -> Vec<Sample> {
    use fedrun::lifecycle::event::LeftOutEnd;
    use fedrun::lifecycle::state::StartStep;
    use fedrun::lifecycle::{Answer, Archive, RunPhase, SiteReport};
    let job_id = JobId(uuid::Uuid::from_u128(1));
    let mut samples = vec![
        sample(StepResult::Ok),
        sample(StepResult::Error("no disk".into())),
        sample(StepResult::NoReply),
        sample(ResourceAnswer::Reserved("token".into())),
        sample(ResourceAnswer::Refused("busy".into())),
        sample(ResourceAnswer::NoReply),
        sample(ScheduleOutcome::Dispatched {
            sites: vec!["site-1".into()],
            more: 0,
        }),
        sample(ScheduleOutcome::Dispatched {
            sites: vec!["site-1".into()],
            more: 3,
        }),
        sample(ScheduleOutcome::NoResources { reason: "r".into() }),
        sample(ExitOutcome::Code(0)),
        sample(ExitOutcome::Signal(9)),
        sample(Answer::Submitted { job_id }),
        sample(Answer::Accepted { job_id }),
        sample(Archive::NoWorkspace),
        sample(Archive::Pending {
            in_flight: true,
            failures: 2,
            first_failed_at: Some(Timestamp::from_millis(T0)),
            last_failed_at: None,
            last_reason: Some("disk full".into()),
        }),
        sample(Archive::Archived {
            hash: BlobHash([7; 32]),
        }),
        sample(Archive::Failed {
            reason: "gave up".into(),
        }),
        sample(SiteReport::Connected {
            resources: BTreeMap::from([("gpu".into(), 1.0)]),
            running: vec![job_id],
        }),
        sample(SiteReport::Disconnected),
        sample(SiteReport::ResourceAnswer {
            try_id: 4,
            job_id,
            answer: Err("busy".into()),
        }),
        sample(SiteReport::DeployAnswer {
            job_id,
            result: Ok(()),
        }),
        sample(SiteReport::StartAnswer {
            job_id,
            result: Err("no".into()),
        }),
        sample(SiteReport::AppExited {
            job_id,
            report_id: "r-1".into(),
            outcome: ExitOutcome::Code(1),
            stop_requested: false,
        }),
    ];
    for role in [Role::ProjectAdmin, Role::OrgAdmin, Role::Lead, Role::Member] {
        samples.push(sample(role));
    }
    samples.extend(
        [
            Actor::Admin {
                name: "a".into(),
                org: "o".into(),
                role: Role::Lead,
            },
            Actor::Site { name: "s".into() },
            Actor::Scheduler,
            Actor::Recovery,
            Actor::System,
        ]
        .into_iter()
        .map(sample),
    );
    samples.extend(
        [
            LeftOutEnd::Exited,
            LeftOutEnd::NotRunning,
            LeftOutEnd::StopWaitOver,
        ]
        .into_iter()
        .map(sample),
    );
    samples.extend(RunPhase::ALL.into_iter().map(sample));
    samples.extend(
        [
            StartStep::DeployingServer,
            StartStep::DeployingSites,
            StartStep::StartingServer,
            StartStep::StartingSites,
        ]
        .into_iter()
        .map(sample),
    );
    samples.extend(RunStatus::ALL.into_iter().map(sample));
    samples.extend(every_rejection().into_iter().map(sample));
    samples.extend(every_kind().into_iter().map(sample));
    samples
}

fn every_rejection() -> Vec<Rejection> {
    let job_id = JobId(uuid::Uuid::from_u128(1));
    vec![
        Rejection::UnknownJob { job_id },
        Rejection::JobAlreadyFinished {
            job_id,
            status: RunStatus::Completed,
        },
        Rejection::JobIsRunning {
            job_id,
            status: RunStatus::Running,
        },
        Rejection::JobNotFinished {
            job_id,
            status: RunStatus::Dispatched,
        },
        Rejection::ArchivePending { job_id },
        Rejection::NotAllowed {
            name: "max".into(),
            role: Role::Member,
            operation: "abort".into(),
            whose: "jobs".into(),
        },
        Rejection::SignerNotAllowed {
            name: "max".into(),
            role: Role::Member,
        },
        Rejection::SignatureRefused { reason: "r".into() },
        Rejection::TooLarge {
            bytes: 70_000,
            limit: 65_536,
        },
        Rejection::BadRequestId { reason: "r".into() },
        Rejection::IdempotencyKeyReused { key: "k".into() },
        Rejection::BadIdentity { reason: "r".into() },
        Rejection::BadMeta { reason: "r".into() },
        Rejection::NotAParticipant {
            job_id,
            site: "s".into(),
        },
        Rejection::Recovering {
            operation: "abort".into(),
            job_id,
        },
    ]
}

/// The serde enums the files of a snapshot's layout define, each with its variants, read
/// from the sources (so a new enum or variant without a sample above fails the test).
fn serde_enums_in_layout_sources() -> BTreeMap<String, Vec<String>> {
    let mut enums = BTreeMap::new();
    for (file, text) in fedrun::history::snapshot::layout_sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let Some(rest) = line
                .strip_prefix("pub enum ")
                .or_else(|| line.strip_prefix("enum "))
            else {
                continue;
            };
            let name = source_scan::leading_identifier(rest);
            let derived = source_scan::attributes_above(&lines, at)
                .any(|l| l.contains("Serialize") || l.contains("Deserialize"));
            let by_hand = text.contains(&format!("Deserialize<'de> for {name} "))
                || text.contains(&format!("Serialize for {name} "));
            if !derived && !by_hand {
                continue;
            }
            let variants = lines[at + 1..]
                .iter()
                .take_while(|l| **l != "}")
                .filter_map(|l| l.strip_prefix("    "))
                .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
                .map(|l| source_scan::leading_identifier(l).to_string())
                .collect();
            assert!(
                enums.insert(name.to_string(), variants).is_none(),
                "{file}: a second serde enum named {name}"
            );
        }
    }
    enums
}

#[test]
fn every_variant_of_every_serde_enum_a_snapshot_may_hold_reads_back_in_every_encoding() {
    let samples = every_variant();
    let enums = serde_enums_in_layout_sources();
    assert!(enums.len() >= 10, "the source scan found only {enums:?}");
    let missing: Vec<String> = enums
        .iter()
        .flat_map(|(name, variants)| variants.iter().map(move |v| (name, v)))
        .filter(|(name, variant)| {
            !samples
                .iter()
                .any(|s| s.type_name == *name && s.variant == **variant)
        })
        .map(|(name, variant)| format!("{name}::{variant}"))
        .collect();
    assert!(
        missing.is_empty(),
        "no sample in every_variant() (add one): {missing:?}"
    );
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            (s.round_trip)()
                .err()
                .map(|e| format!("{}::{}: {e}", s.type_name, s.variant))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
