//! The version-2 layout of fedrun's events in the history.
//!
//! The core's [`Event`] serializes with internally and adjacently tagged enums
//! (`#[serde(tag = ...)]`): that is the JSON users see (`fedrun history --json`, the admin
//! API) and the named-field form of version-1 records. Decoding such an enum makes serde
//! buffer the whole value first (as its private `Content`) and decode it a second time.
//! The version-2 layout is a mirror of the same types with externally tagged enums and
//! positional fields (MessagePack arrays), which serde decodes in one pass:
//!
//! - structs are arrays of their fields in declaration order (no field names);
//! - an enum variant with fields is a one-entry map `{variant name: fields}`, one without
//!   fields is its name;
//! - hashes ([`BlobHash`]) are 32 raw bytes, statuses ([`RunStatus`]) one number (their
//!   index in [`RunStatus::ALL`]), UUIDs 16 raw bytes.
//!
//! Encoding borrows from the event (`Cow::Borrowed`); decoding owns what it reads
//! (`Cow::Owned`), so turning the mirror into an [`Event`] moves, never copies. A field
//! added to a version-2 event goes at the end of its variant, with a default, so records
//! written before it still decode.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::meta::JobMeta;
use crate::job::JobId;
use crate::lifecycle::event::{LeftOutEnd, ResourceGroup, ResourceRequest};
use crate::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, ExitOutcome, Identity, Rejection, ResourceAnswer,
    Role, RunStatus, ScheduleOutcome, StepResult, Timestamp,
};

type Text<'a> = Cow<'a, str>;
type Names<'a> = Cow<'a, [String]>;
type Amounts<'a> = Cow<'a, BTreeMap<String, f64>>;
type Tokens<'a> = Cow<'a, BTreeMap<String, String>>;

/// The envelope of an event.
#[derive(Serialize, Deserialize)]
pub(crate) struct WireEvent<'a> {
    seq: u64,
    at: Timestamp,
    actor: WireActor<'a>,
    request_id: Option<Text<'a>>,
    boot_id: BootId,
    kind: WireKind<'a>,
}

#[derive(Serialize, Deserialize)]
enum WireActor<'a> {
    Admin {
        name: Text<'a>,
        org: Text<'a>,
        role: Role,
    },
    Site {
        name: Text<'a>,
    },
    Scheduler,
    Recovery,
    System,
}

#[derive(Serialize, Deserialize)]
enum WireStep<'a> {
    Ok,
    Error(Text<'a>),
    NoReply,
}

#[derive(Serialize, Deserialize)]
enum WireAnswer<'a> {
    Reserved(Text<'a>),
    Refused(Text<'a>),
    NoReply,
}

#[derive(Serialize, Deserialize)]
enum WireOutcome<'a> {
    Dispatched { sites: Names<'a>, more: usize },
    NoResources { reason: Text<'a> },
}

#[derive(Serialize, Deserialize)]
enum WireExit {
    Code(i32),
    Signal(i32),
}

/// A status as its index in [`RunStatus::ALL`].
#[derive(Clone, Copy)]
struct WireStatus(RunStatus);

impl Serialize for WireStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = RunStatus::ALL
            .iter()
            .position(|status| *status == self.0)
            .unwrap_or(0);
        serializer.serialize_u8(index as u8)
    }
}

impl<'de> Deserialize<'de> for WireStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u8::deserialize(deserializer)?;
        RunStatus::ALL
            .get(usize::from(index))
            .copied()
            .map(WireStatus)
            .ok_or_else(|| {
                serde::de::Error::custom(format_args!("status number {index} is not a status"))
            })
    }
}

/// A hash as its 32 raw bytes.
#[derive(Clone, Copy)]
struct WireHash(BlobHash);

impl Serialize for WireHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0 .0)
    }
}

impl<'de> Deserialize<'de> for WireHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_bytes(crate::lifecycle::event::stored_hash::RawHash { hex: false })
            .map(WireHash)
    }
}

#[derive(Serialize, Deserialize)]
enum WireRejection<'a> {
    UnknownJob {
        job_id: JobId,
    },
    JobAlreadyFinished {
        job_id: JobId,
        status: WireStatus,
    },
    JobIsRunning {
        job_id: JobId,
        status: WireStatus,
    },
    JobNotFinished {
        job_id: JobId,
        status: WireStatus,
    },
    ArchivePending {
        job_id: JobId,
    },
    NotAllowed {
        name: Text<'a>,
        role: Role,
        operation: Text<'a>,
        whose: Text<'a>,
    },
    SignerNotAllowed {
        name: Text<'a>,
        role: Role,
    },
    SignatureRefused {
        reason: Text<'a>,
    },
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    BadRequestId {
        reason: Text<'a>,
    },
    IdempotencyKeyReused {
        key: Text<'a>,
    },
    BadIdentity {
        reason: Text<'a>,
    },
    BadMeta {
        reason: Text<'a>,
    },
    NotAParticipant {
        job_id: JobId,
        site: Text<'a>,
    },
    Recovering {
        operation: Text<'a>,
        job_id: JobId,
    },
}

#[derive(Serialize, Deserialize)]
enum WireKind<'a> {
    ServerStarted {
        boot_id: BootId,
    },
    RecoveryFinished,
    SiteConnected {
        site: Text<'a>,
        resources: Amounts<'a>,
        running: Cow<'a, [JobId]>,
    },
    SiteDisconnected {
        site: Text<'a>,
    },
    JobSubmitted {
        job_id: JobId,
        meta: Cow<'a, JobMeta>,
        package: WireHash,
        submitter: Cow<'a, Identity>,
        signer: Option<Cow<'a, Identity>>,
        submit_time: Timestamp,
        cloned_from: Option<JobId>,
    },
    ScheduleTryStarted {
        job_id: JobId,
        try_id: u64,
        asked: Cow<'a, [ResourceRequest]>,
        requests: Cow<'a, [ResourceGroup]>,
    },
    ScheduleTryExtended {
        job_id: JobId,
        try_id: u64,
        requests: Cow<'a, [ResourceGroup]>,
    },
    ResourceAnswered {
        job_id: JobId,
        try_id: u64,
        site: Text<'a>,
        answer: WireAnswer<'a>,
    },
    ScheduleTryCancelled {
        job_id: JobId,
        try_id: u64,
    },
    ScheduleAttempted {
        job_id: JobId,
        outcome: WireOutcome<'a>,
    },
    JobDispatched {
        job_id: JobId,
        sites: Names<'a>,
        reservations: Tokens<'a>,
    },
    JobDispatchExtended {
        job_id: JobId,
        sites: Names<'a>,
        reservations: Tokens<'a>,
    },
    DeployFinished {
        job_id: JobId,
        participant: Text<'a>,
        result: WireStep<'a>,
    },
    StartFinished {
        job_id: JobId,
        participant: Text<'a>,
        result: WireStep<'a>,
    },
    RunStarted {
        job_id: JobId,
        job_clients: Names<'a>,
    },
    RunClientsAdded {
        job_id: JobId,
        job_clients: Names<'a>,
    },
    ServerAppLost {
        job_id: JobId,
    },
    ServerAppExited {
        job_id: JobId,
        outcome: WireExit,
    },
    SiteOutcomeReported {
        job_id: JobId,
        site: Text<'a>,
        report_id: Text<'a>,
        outcome: WireExit,
        stop_requested: Option<bool>,
    },
    SiteReportLapsed {
        job_id: JobId,
        site: Text<'a>,
    },
    RunStopRequested {
        job_id: JobId,
        reason: Text<'a>,
    },
    RunStopped {
        job_id: JobId,
    },
    JobFinished {
        job_id: JobId,
        status: WireStatus,
        reason: Text<'a>,
    },
    JobDeleted {
        job_id: JobId,
    },
    JobDownloaded {
        job_id: JobId,
    },
    LogsRead {
        job_id: JobId,
        site: Option<Text<'a>>,
    },
    WorkspaceArchiveStarted {
        job_id: JobId,
    },
    WorkspaceArchiveAttemptFailed {
        job_id: JobId,
        reason: Text<'a>,
    },
    WorkspaceArchived {
        job_id: JobId,
        hash: WireHash,
    },
    WorkspaceArchiveFailed {
        job_id: JobId,
        reason: Text<'a>,
    },
    RunReattached {
        job_id: JobId,
    },
    RunRestored {
        job_id: JobId,
    },
    LeftOutSiteEnded {
        job_id: JobId,
        site: Text<'a>,
        how: LeftOutEnd,
    },
    RequestRefused {
        job_id: Option<JobId>,
        operation: Text<'a>,
        rejection: WireRejection<'a>,
    },
}

fn text(value: &str) -> Text<'_> {
    Cow::Borrowed(value)
}

impl<'a> WireEvent<'a> {
    /// The mirror of `event`, borrowing its contents.
    pub(crate) fn of(event: &'a Event) -> WireEvent<'a> {
        WireEvent {
            seq: event.seq,
            at: event.at,
            actor: WireActor::of(&event.actor),
            request_id: event.request_id.as_deref().map(text),
            boot_id: event.boot_id,
            kind: WireKind::of(&event.kind),
        }
    }

    /// The event, taking over what was decoded.
    pub(crate) fn into_event(self) -> Event {
        Event {
            seq: self.seq,
            at: self.at,
            actor: self.actor.into_actor(),
            request_id: self.request_id.map(Cow::into_owned),
            boot_id: self.boot_id,
            kind: self.kind.into_kind(),
        }
    }
}

impl<'a> WireActor<'a> {
    fn of(actor: &'a Actor) -> WireActor<'a> {
        match actor {
            Actor::Admin { name, org, role } => WireActor::Admin {
                name: text(name),
                org: text(org),
                role: *role,
            },
            Actor::Site { name } => WireActor::Site { name: text(name) },
            Actor::Scheduler => WireActor::Scheduler,
            Actor::Recovery => WireActor::Recovery,
            Actor::System => WireActor::System,
        }
    }

    fn into_actor(self) -> Actor {
        match self {
            WireActor::Admin { name, org, role } => Actor::Admin {
                name: name.into_owned(),
                org: org.into_owned(),
                role,
            },
            WireActor::Site { name } => Actor::Site {
                name: name.into_owned(),
            },
            WireActor::Scheduler => Actor::Scheduler,
            WireActor::Recovery => Actor::Recovery,
            WireActor::System => Actor::System,
        }
    }
}

impl<'a> WireStep<'a> {
    fn of(result: &'a StepResult) -> WireStep<'a> {
        match result {
            StepResult::Ok => WireStep::Ok,
            StepResult::Error(detail) => WireStep::Error(text(detail)),
            StepResult::NoReply => WireStep::NoReply,
        }
    }

    fn into_result(self) -> StepResult {
        match self {
            WireStep::Ok => StepResult::Ok,
            WireStep::Error(detail) => StepResult::Error(detail.into_owned()),
            WireStep::NoReply => StepResult::NoReply,
        }
    }
}

impl<'a> WireAnswer<'a> {
    fn of(answer: &'a ResourceAnswer) -> WireAnswer<'a> {
        match answer {
            ResourceAnswer::Reserved(token) => WireAnswer::Reserved(text(token)),
            ResourceAnswer::Refused(reason) => WireAnswer::Refused(text(reason)),
            ResourceAnswer::NoReply => WireAnswer::NoReply,
        }
    }

    fn into_answer(self) -> ResourceAnswer {
        match self {
            WireAnswer::Reserved(token) => ResourceAnswer::Reserved(token.into_owned()),
            WireAnswer::Refused(reason) => ResourceAnswer::Refused(reason.into_owned()),
            WireAnswer::NoReply => ResourceAnswer::NoReply,
        }
    }
}

impl<'a> WireOutcome<'a> {
    fn of(outcome: &'a ScheduleOutcome) -> WireOutcome<'a> {
        match outcome {
            ScheduleOutcome::Dispatched { sites, more } => WireOutcome::Dispatched {
                sites: Cow::Borrowed(sites),
                more: *more,
            },
            ScheduleOutcome::NoResources { reason } => WireOutcome::NoResources {
                reason: text(reason),
            },
        }
    }

    fn into_outcome(self) -> ScheduleOutcome {
        match self {
            WireOutcome::Dispatched { sites, more } => ScheduleOutcome::Dispatched {
                sites: sites.into_owned(),
                more,
            },
            WireOutcome::NoResources { reason } => ScheduleOutcome::NoResources {
                reason: reason.into_owned(),
            },
        }
    }
}

impl WireExit {
    fn of(outcome: ExitOutcome) -> WireExit {
        match outcome {
            ExitOutcome::Code(code) => WireExit::Code(code),
            ExitOutcome::Signal(signal) => WireExit::Signal(signal),
        }
    }

    fn into_outcome(self) -> ExitOutcome {
        match self {
            WireExit::Code(code) => ExitOutcome::Code(code),
            WireExit::Signal(signal) => ExitOutcome::Signal(signal),
        }
    }
}

impl<'a> WireRejection<'a> {
    fn of(rejection: &'a Rejection) -> WireRejection<'a> {
        use Rejection as R;
        use WireRejection as W;
        match rejection {
            R::UnknownJob { job_id } => W::UnknownJob { job_id: *job_id },
            R::JobAlreadyFinished { job_id, status } => W::JobAlreadyFinished {
                job_id: *job_id,
                status: WireStatus(*status),
            },
            R::JobIsRunning { job_id, status } => W::JobIsRunning {
                job_id: *job_id,
                status: WireStatus(*status),
            },
            R::JobNotFinished { job_id, status } => W::JobNotFinished {
                job_id: *job_id,
                status: WireStatus(*status),
            },
            R::ArchivePending { job_id } => W::ArchivePending { job_id: *job_id },
            R::NotAllowed {
                name,
                role,
                operation,
                whose,
            } => W::NotAllowed {
                name: text(name),
                role: *role,
                operation: text(operation),
                whose: text(whose),
            },
            R::SignerNotAllowed { name, role } => W::SignerNotAllowed {
                name: text(name),
                role: *role,
            },
            R::SignatureRefused { reason } => W::SignatureRefused {
                reason: text(reason),
            },
            R::TooLarge { bytes, limit } => W::TooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            R::BadRequestId { reason } => W::BadRequestId {
                reason: text(reason),
            },
            R::IdempotencyKeyReused { key } => W::IdempotencyKeyReused { key: text(key) },
            R::BadIdentity { reason } => W::BadIdentity {
                reason: text(reason),
            },
            R::BadMeta { reason } => W::BadMeta {
                reason: text(reason),
            },
            R::NotAParticipant { job_id, site } => W::NotAParticipant {
                job_id: *job_id,
                site: text(site),
            },
            R::Recovering { operation, job_id } => W::Recovering {
                operation: text(operation),
                job_id: *job_id,
            },
        }
    }

    fn into_rejection(self) -> Rejection {
        use Rejection as R;
        use WireRejection as W;
        match self {
            W::UnknownJob { job_id } => R::UnknownJob { job_id },
            W::JobAlreadyFinished { job_id, status } => R::JobAlreadyFinished {
                job_id,
                status: status.0,
            },
            W::JobIsRunning { job_id, status } => R::JobIsRunning {
                job_id,
                status: status.0,
            },
            W::JobNotFinished { job_id, status } => R::JobNotFinished {
                job_id,
                status: status.0,
            },
            W::ArchivePending { job_id } => R::ArchivePending { job_id },
            W::NotAllowed {
                name,
                role,
                operation,
                whose,
            } => R::NotAllowed {
                name: name.into_owned(),
                role,
                operation: operation.into_owned(),
                whose: whose.into_owned(),
            },
            W::SignerNotAllowed { name, role } => R::SignerNotAllowed {
                name: name.into_owned(),
                role,
            },
            W::SignatureRefused { reason } => R::SignatureRefused {
                reason: reason.into_owned(),
            },
            W::TooLarge { bytes, limit } => R::TooLarge { bytes, limit },
            W::BadRequestId { reason } => R::BadRequestId {
                reason: reason.into_owned(),
            },
            W::IdempotencyKeyReused { key } => R::IdempotencyKeyReused {
                key: key.into_owned(),
            },
            W::BadIdentity { reason } => R::BadIdentity {
                reason: reason.into_owned(),
            },
            W::BadMeta { reason } => R::BadMeta {
                reason: reason.into_owned(),
            },
            W::NotAParticipant { job_id, site } => R::NotAParticipant {
                job_id,
                site: site.into_owned(),
            },
            W::Recovering { operation, job_id } => R::Recovering {
                operation: operation.into_owned(),
                job_id,
            },
        }
    }
}

impl<'a> WireKind<'a> {
    fn of(kind: &'a EventKind) -> WireKind<'a> {
        use EventKind as K;
        use WireKind as W;
        match kind {
            K::ServerStarted { boot_id } => W::ServerStarted { boot_id: *boot_id },
            K::RecoveryFinished => W::RecoveryFinished,
            K::SiteConnected {
                site,
                resources,
                running,
            } => W::SiteConnected {
                site: text(site),
                resources: Cow::Borrowed(resources),
                running: Cow::Borrowed(running),
            },
            K::SiteDisconnected { site } => W::SiteDisconnected { site: text(site) },
            K::JobSubmitted {
                job_id,
                meta,
                package,
                submitter,
                signer,
                submit_time,
                cloned_from,
            } => W::JobSubmitted {
                job_id: *job_id,
                meta: Cow::Borrowed(meta),
                package: WireHash(*package),
                submitter: Cow::Borrowed(submitter),
                signer: signer.as_ref().map(Cow::Borrowed),
                submit_time: *submit_time,
                cloned_from: *cloned_from,
            },
            K::ScheduleTryStarted {
                job_id,
                try_id,
                asked,
                requests,
            } => W::ScheduleTryStarted {
                job_id: *job_id,
                try_id: *try_id,
                asked: Cow::Borrowed(asked),
                requests: Cow::Borrowed(requests),
            },
            K::ScheduleTryExtended {
                job_id,
                try_id,
                requests,
            } => W::ScheduleTryExtended {
                job_id: *job_id,
                try_id: *try_id,
                requests: Cow::Borrowed(requests),
            },
            K::ResourceAnswered {
                job_id,
                try_id,
                site,
                answer,
            } => W::ResourceAnswered {
                job_id: *job_id,
                try_id: *try_id,
                site: text(site),
                answer: WireAnswer::of(answer),
            },
            K::ScheduleTryCancelled { job_id, try_id } => W::ScheduleTryCancelled {
                job_id: *job_id,
                try_id: *try_id,
            },
            K::ScheduleAttempted { job_id, outcome } => W::ScheduleAttempted {
                job_id: *job_id,
                outcome: WireOutcome::of(outcome),
            },
            K::JobDispatched {
                job_id,
                sites,
                reservations,
            } => W::JobDispatched {
                job_id: *job_id,
                sites: Cow::Borrowed(sites),
                reservations: Cow::Borrowed(reservations),
            },
            K::JobDispatchExtended {
                job_id,
                sites,
                reservations,
            } => W::JobDispatchExtended {
                job_id: *job_id,
                sites: Cow::Borrowed(sites),
                reservations: Cow::Borrowed(reservations),
            },
            K::DeployFinished {
                job_id,
                participant,
                result,
            } => W::DeployFinished {
                job_id: *job_id,
                participant: text(participant),
                result: WireStep::of(result),
            },
            K::StartFinished {
                job_id,
                participant,
                result,
            } => W::StartFinished {
                job_id: *job_id,
                participant: text(participant),
                result: WireStep::of(result),
            },
            K::RunStarted {
                job_id,
                job_clients,
            } => W::RunStarted {
                job_id: *job_id,
                job_clients: Cow::Borrowed(job_clients),
            },
            K::RunClientsAdded {
                job_id,
                job_clients,
            } => W::RunClientsAdded {
                job_id: *job_id,
                job_clients: Cow::Borrowed(job_clients),
            },
            K::ServerAppLost { job_id } => W::ServerAppLost { job_id: *job_id },
            K::ServerAppExited { job_id, outcome } => W::ServerAppExited {
                job_id: *job_id,
                outcome: WireExit::of(*outcome),
            },
            K::SiteOutcomeReported {
                job_id,
                site,
                report_id,
                outcome,
                stop_requested,
            } => W::SiteOutcomeReported {
                job_id: *job_id,
                site: text(site),
                report_id: text(report_id),
                outcome: WireExit::of(*outcome),
                stop_requested: *stop_requested,
            },
            K::SiteReportLapsed { job_id, site } => W::SiteReportLapsed {
                job_id: *job_id,
                site: text(site),
            },
            K::RunStopRequested { job_id, reason } => W::RunStopRequested {
                job_id: *job_id,
                reason: text(reason),
            },
            K::RunStopped { job_id } => W::RunStopped { job_id: *job_id },
            K::JobFinished {
                job_id,
                status,
                reason,
            } => W::JobFinished {
                job_id: *job_id,
                status: WireStatus(*status),
                reason: text(reason),
            },
            K::JobDeleted { job_id } => W::JobDeleted { job_id: *job_id },
            K::JobDownloaded { job_id } => W::JobDownloaded { job_id: *job_id },
            K::LogsRead { job_id, site } => W::LogsRead {
                job_id: *job_id,
                site: site.as_deref().map(text),
            },
            K::WorkspaceArchiveStarted { job_id } => W::WorkspaceArchiveStarted { job_id: *job_id },
            K::WorkspaceArchiveAttemptFailed { job_id, reason } => {
                W::WorkspaceArchiveAttemptFailed {
                    job_id: *job_id,
                    reason: text(reason),
                }
            }
            K::WorkspaceArchived { job_id, hash } => W::WorkspaceArchived {
                job_id: *job_id,
                hash: WireHash(*hash),
            },
            K::WorkspaceArchiveFailed { job_id, reason } => W::WorkspaceArchiveFailed {
                job_id: *job_id,
                reason: text(reason),
            },
            K::RunReattached { job_id } => W::RunReattached { job_id: *job_id },
            K::RunRestored { job_id } => W::RunRestored { job_id: *job_id },
            K::LeftOutSiteEnded { job_id, site, how } => W::LeftOutSiteEnded {
                job_id: *job_id,
                site: text(site),
                how: *how,
            },
            K::RequestRefused {
                job_id,
                operation,
                rejection,
            } => W::RequestRefused {
                job_id: *job_id,
                operation: text(operation),
                rejection: WireRejection::of(rejection),
            },
        }
    }

    fn into_kind(self) -> EventKind {
        use EventKind as K;
        use WireKind as W;
        match self {
            W::ServerStarted { boot_id } => K::ServerStarted { boot_id },
            W::RecoveryFinished => K::RecoveryFinished,
            W::SiteConnected {
                site,
                resources,
                running,
            } => K::SiteConnected {
                site: site.into_owned(),
                resources: resources.into_owned(),
                running: running.into_owned(),
            },
            W::SiteDisconnected { site } => K::SiteDisconnected {
                site: site.into_owned(),
            },
            W::JobSubmitted {
                job_id,
                meta,
                package,
                submitter,
                signer,
                submit_time,
                cloned_from,
            } => K::JobSubmitted {
                job_id,
                meta: meta.into_owned(),
                package: package.0,
                submitter: submitter.into_owned(),
                signer: signer.map(Cow::into_owned),
                submit_time,
                cloned_from,
            },
            W::ScheduleTryStarted {
                job_id,
                try_id,
                asked,
                requests,
            } => K::ScheduleTryStarted {
                job_id,
                try_id,
                asked: asked.into_owned(),
                requests: requests.into_owned(),
            },
            W::ScheduleTryExtended {
                job_id,
                try_id,
                requests,
            } => K::ScheduleTryExtended {
                job_id,
                try_id,
                requests: requests.into_owned(),
            },
            W::ResourceAnswered {
                job_id,
                try_id,
                site,
                answer,
            } => K::ResourceAnswered {
                job_id,
                try_id,
                site: site.into_owned(),
                answer: answer.into_answer(),
            },
            W::ScheduleTryCancelled { job_id, try_id } => {
                K::ScheduleTryCancelled { job_id, try_id }
            }
            W::ScheduleAttempted { job_id, outcome } => K::ScheduleAttempted {
                job_id,
                outcome: outcome.into_outcome(),
            },
            W::JobDispatched {
                job_id,
                sites,
                reservations,
            } => K::JobDispatched {
                job_id,
                sites: sites.into_owned(),
                reservations: reservations.into_owned(),
            },
            W::JobDispatchExtended {
                job_id,
                sites,
                reservations,
            } => K::JobDispatchExtended {
                job_id,
                sites: sites.into_owned(),
                reservations: reservations.into_owned(),
            },
            W::DeployFinished {
                job_id,
                participant,
                result,
            } => K::DeployFinished {
                job_id,
                participant: participant.into_owned(),
                result: result.into_result(),
            },
            W::StartFinished {
                job_id,
                participant,
                result,
            } => K::StartFinished {
                job_id,
                participant: participant.into_owned(),
                result: result.into_result(),
            },
            W::RunStarted {
                job_id,
                job_clients,
            } => K::RunStarted {
                job_id,
                job_clients: job_clients.into_owned(),
            },
            W::RunClientsAdded {
                job_id,
                job_clients,
            } => K::RunClientsAdded {
                job_id,
                job_clients: job_clients.into_owned(),
            },
            W::ServerAppLost { job_id } => K::ServerAppLost { job_id },
            W::ServerAppExited { job_id, outcome } => K::ServerAppExited {
                job_id,
                outcome: outcome.into_outcome(),
            },
            W::SiteOutcomeReported {
                job_id,
                site,
                report_id,
                outcome,
                stop_requested,
            } => K::SiteOutcomeReported {
                job_id,
                site: site.into_owned(),
                report_id: report_id.into_owned(),
                outcome: outcome.into_outcome(),
                stop_requested,
            },
            W::SiteReportLapsed { job_id, site } => K::SiteReportLapsed {
                job_id,
                site: site.into_owned(),
            },
            W::RunStopRequested { job_id, reason } => K::RunStopRequested {
                job_id,
                reason: reason.into_owned(),
            },
            W::RunStopped { job_id } => K::RunStopped { job_id },
            W::JobFinished {
                job_id,
                status,
                reason,
            } => K::JobFinished {
                job_id,
                status: status.0,
                reason: reason.into_owned(),
            },
            W::JobDeleted { job_id } => K::JobDeleted { job_id },
            W::JobDownloaded { job_id } => K::JobDownloaded { job_id },
            W::LogsRead { job_id, site } => K::LogsRead {
                job_id,
                site: site.map(Cow::into_owned),
            },
            W::WorkspaceArchiveStarted { job_id } => K::WorkspaceArchiveStarted { job_id },
            W::WorkspaceArchiveAttemptFailed { job_id, reason } => {
                K::WorkspaceArchiveAttemptFailed {
                    job_id,
                    reason: reason.into_owned(),
                }
            }
            W::WorkspaceArchived { job_id, hash } => K::WorkspaceArchived {
                job_id,
                hash: hash.0,
            },
            W::WorkspaceArchiveFailed { job_id, reason } => K::WorkspaceArchiveFailed {
                job_id,
                reason: reason.into_owned(),
            },
            W::RunReattached { job_id } => K::RunReattached { job_id },
            W::RunRestored { job_id } => K::RunRestored { job_id },
            W::LeftOutSiteEnded { job_id, site, how } => K::LeftOutSiteEnded {
                job_id,
                site: site.into_owned(),
                how,
            },
            W::RequestRefused {
                job_id,
                operation,
                rejection,
            } => K::RequestRefused {
                job_id,
                operation: operation.into_owned(),
                rejection: rejection.into_rejection(),
            },
        }
    }
}
