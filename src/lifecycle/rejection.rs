//! Typed refusals of admin requests, and the error of replaying an illegal history.

use serde::{Deserialize, Serialize};

use crate::job::JobId;
use crate::lifecycle::actor::Role;
use crate::lifecycle::status::RunStatus;

/// Why an admin request was refused. Recorded in `RequestRefused` events, so its fields are
/// part of the history's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    /// No such job (or it was deleted).
    #[error("job {job_id} does not exist")]
    UnknownJob {
        /// The job asked for.
        job_id: JobId,
    },
    /// The job is terminal; abort has nothing to do.
    #[error("job {job_id} has already finished ({status})")]
    JobAlreadyFinished {
        /// The job.
        job_id: JobId,
        /// Its terminal status.
        status: RunStatus,
    },
    /// The job is `DISPATCHED` or `RUNNING`; delete needs an abort first.
    #[error("job {job_id} is {status} and cannot be deleted; abort it first")]
    JobIsRunning {
        /// The job.
        job_id: JobId,
        /// Its status.
        status: RunStatus,
    },
    /// Download needs a terminal job.
    #[error("job {job_id} is {status}; it can be downloaded once it has finished")]
    JobNotFinished {
        /// The job.
        job_id: JobId,
        /// Its status.
        status: RunStatus,
    },
    /// Download waits until the workspace archive is archived or failed.
    #[error("job {job_id}'s workspace is still being archived; try again shortly")]
    ArchivePending {
        /// The job.
        job_id: JobId,
    },
    /// The role may not do this to this job.
    #[error("{name} ({role}) may not {operation} {whose}")]
    NotAllowed {
        /// The asker's name.
        name: String,
        /// The asker's role.
        role: Role,
        /// The operation.
        operation: String,
        /// Whose job, in words (`jobs`, `jobs of org x`, `job 3f2a...`).
        whose: String,
    },
    /// The signer of the package holds a role that may not submit.
    #[error("the job is signed by {name} ({role}), whose role may not submit jobs")]
    SignerNotAllowed {
        /// The signer's name.
        name: String,
        /// The signer's role.
        role: Role,
    },
    /// The package's signature check refused it (SPEC section 6): unsigned under
    /// `require_signed_jobs`, a signature that does not verify, or a signer whose role may
    /// not submit.
    #[error("job refused at submit: {reason}")]
    SignatureRefused {
        /// Why, in words (paths inside the package only).
        reason: String,
    },
    /// The request (its meta, in practice) would make an event over the history's limit.
    #[error("the request is too large to record ({bytes} bytes > {limit} bytes)")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The idempotency key is empty or too long.
    #[error("invalid request id: {reason}")]
    BadRequestId {
        /// Why.
        reason: String,
    },
    /// The idempotency key was already used by this admin for another request.
    #[error("idempotency key {key:?} was already used for another request; use a new key")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The admin's (or signer's) names are too long to record.
    #[error("invalid identity: {reason}")]
    BadIdentity {
        /// Why.
        reason: String,
    },
    /// The job's meta breaks a rule the core relies on.
    #[error("invalid meta: {reason}")]
    BadMeta {
        /// Why.
        reason: String,
    },
    /// A site's app output was asked for, but the job was never sent to that site.
    #[error("job {job_id} was not sent to site {site:?}, so that site has no output of it")]
    NotAParticipant {
        /// The job.
        job_id: JobId,
        /// The site named.
        site: String,
    },
    /// The server is still deciding what became of jobs after a restart.
    #[error("the server is recovering after a restart; {operation} of job {job_id} waits until it is done")]
    Recovering {
        /// The operation.
        operation: String,
        /// The job.
        job_id: JobId,
    },
}

impl Rejection {
    /// The rejection's stable code: the admin API's error `code` and the label of the
    /// refusal metrics (the variant's name in snake case, as in the history's JSON).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownJob { .. } => "unknown_job",
            Rejection::JobAlreadyFinished { .. } => "job_already_finished",
            Rejection::JobIsRunning { .. } => "job_is_running",
            Rejection::JobNotFinished { .. } => "job_not_finished",
            Rejection::ArchivePending { .. } => "archive_pending",
            Rejection::NotAllowed { .. } => "not_allowed",
            Rejection::SignerNotAllowed { .. } => "signer_not_allowed",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::BadRequestId { .. } => "bad_request_id",
            Rejection::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Rejection::BadIdentity { .. } => "bad_identity",
            Rejection::BadMeta { .. } => "bad_meta",
            Rejection::Recovering { .. } => "recovering",
            Rejection::SignatureRefused { .. } => "signature_refused",
            Rejection::NotAParticipant { .. } => "not_a_participant",
        }
    }
}

/// A history record that the state so far cannot accept, or that is out of order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The record's sequence number is not the next one.
    #[error("event {seq}: expected sequence number {expected}")]
    OutOfOrder {
        /// The record's sequence number.
        seq: u64,
        /// The one expected.
        expected: u64,
    },
    /// The record's time is earlier than the previous event's.
    #[error("event {seq}: time {at_ms} ms is earlier than the previous event's {previous_ms} ms")]
    TimeWentBack {
        /// The record's sequence number.
        seq: u64,
        /// Its `at`.
        at_ms: i64,
        /// The previous event's `at`.
        previous_ms: i64,
    },
    /// The record is not a legal step from the state so far.
    #[error("event {seq} ({kind}): {reason}")]
    IllegalTransition {
        /// The record's sequence number.
        seq: u64,
        /// The event's type.
        kind: &'static str,
        /// What is illegal about it.
        reason: String,
    },
}
