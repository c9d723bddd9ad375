//! Inputs to [`decide`](crate::lifecycle::decide): admin requests, site reports, the
//! server app's fate, timer firings and recovery facts. Imperative names; one closed enum.

use crate::job::meta::JobMeta;
use crate::job::JobId;
use crate::lifecycle::actor::Identity;
use crate::lifecycle::event::{BlobHash, BootId};
use crate::lifecycle::participant::{ExitOutcome, SiteReport};

/// Who asked, and the idempotency key of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The identity in the admin's certificate.
    pub identity: Identity,
    /// The idempotency key: the same key twice gives the first answer and writes nothing.
    pub request_id: Option<String>,
}

/// What the engine's signature check (SPEC section 6) found for a submitted package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitSignature {
    /// No signer: an unsigned job the policy allows (or nothing to check it against).
    NoSigner,
    /// The package verifies; its signer.
    Signer(Identity),
    /// The check refused the package: unsigned under `require_signed_jobs`, a signature
    /// that does not verify, or a signer whose role may not submit. The core records the
    /// refusal; nothing is stored for it.
    Refused(String),
}

/// What an admin asks for. Reads (list, show, history) do not pass through `decide`.
#[derive(Clone, Debug, PartialEq)]
pub enum AdminRequest {
    /// Store a new job. The engine has already validated `meta.json`, verified signatures
    /// per policy and stored the package blob.
    SubmitJob {
        /// The validated meta.
        meta: JobMeta,
        /// The stored package blob.
        package: BlobHash,
        /// What the engine's signature check (SPEC section 6) found.
        signature: SubmitSignature,
    },
    /// Abort the job (SPEC section 9).
    AbortJob {
        /// The job.
        job_id: JobId,
    },
    /// Delete the job (SPEC section 9).
    DeleteJob {
        /// The job.
        job_id: JobId,
    },
    /// Submit a new job from the same package.
    CloneJob {
        /// The job cloned.
        job_id: JobId,
    },
    /// Record a download; the answer names the blobs to hand out.
    DownloadJob {
        /// The job.
        job_id: JobId,
    },
    /// Record a read of an app's output (SPEC sections 9 and 11): the server app's when
    /// `site` is `None`, else that site's. The bytes are read after the record is durable.
    ReadLogs {
        /// The job.
        job_id: JobId,
        /// The site whose app's output is read; `None` for the server app.
        site: Option<String>,
    },
}

impl AdminRequest {
    /// The operation's name as refusals record it.
    pub fn operation(&self) -> &'static str {
        match self {
            AdminRequest::SubmitJob { .. } => "submit",
            AdminRequest::AbortJob { .. } => "abort",
            AdminRequest::DeleteJob { .. } => "delete",
            AdminRequest::CloneJob { .. } => "clone",
            AdminRequest::DownloadJob { .. } => "download",
            AdminRequest::ReadLogs { .. } => "logs",
        }
    }

    /// The job the request is about (none for submit).
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            AdminRequest::SubmitJob { .. } => None,
            AdminRequest::AbortJob { job_id }
            | AdminRequest::DeleteJob { job_id }
            | AdminRequest::CloneJob { job_id }
            | AdminRequest::DownloadJob { job_id }
            | AdminRequest::ReadLogs { job_id, .. } => Some(*job_id),
        }
    }
}

/// A deadline the engine sleeps toward. The engine feeds [`Command::TimerFired`] when `now`
/// reaches it; `decide` checks again against `now` and state, so a stale or early firing
/// changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// A queued job's back-off has elapsed: run a scheduling pass.
    ScheduleDue,
    /// The try in flight waited `resource_check_timeout` for answers.
    ResourceCheckTimedOut {
        /// The try.
        try_id: u64,
    },
    /// A deploy step waited `deploy_timeout`.
    DeployTimedOut {
        /// The job.
        job_id: JobId,
    },
    /// A start step waited `start_timeout`.
    StartTimedOut {
        /// The job.
        job_id: JobId,
    },
    /// The outcome barrier (`client_outcome_wait` after the server app ended) is over.
    OutcomeWaitOver {
        /// The job.
        job_id: JobId,
    },
    /// A disconnected site's outstanding report waited `site_reconnect_grace`.
    SiteReconnectGraceOver {
        /// The job.
        job_id: JobId,
        /// The site.
        site: String,
    },
    /// A stopping run's processes had `abort_grace` plus `client_outcome_wait` to end.
    StopWaitOver {
        /// The job.
        job_id: JobId,
    },
    /// A failed workspace archive may be tried again (or given up).
    ArchiveRetryDue {
        /// The job.
        job_id: JobId,
    },
    /// `reattach_grace` after `ServerStarted`: make the restart decisions.
    ReattachGraceOver,
}

/// One input to `decide`.
#[derive(Clone, Debug)]
pub enum Command {
    /// A server process started (after replaying the history). Opens the recovery window.
    StartServer {
        /// The new run's id.
        boot_id: BootId,
    },
    /// An admin request.
    Admin {
        /// Who asked, with the idempotency key.
        origin: Origin,
        /// What.
        request: AdminRequest,
    },
    /// A site said something.
    Site {
        /// The site's name (from its authenticated connection).
        site: String,
        /// What it said.
        report: SiteReport,
    },
    /// The server app of a job was unpacked and verified (or not).
    ServerDeployFinished {
        /// The job.
        job_id: JobId,
        /// `Err` carries the reason.
        result: Result<(), String>,
    },
    /// The server app process of a job started (or not).
    ServerAppStarted {
        /// The job.
        job_id: JobId,
        /// `Err` carries the reason.
        result: Result<(), String>,
    },
    /// The server app process of a job ended.
    ServerAppExited {
        /// The job.
        job_id: JobId,
        /// How it ended.
        outcome: ExitOutcome,
    },
    /// After a restart, the job's server app process was found alive and re-attached.
    RunReattached {
        /// The job.
        job_id: JobId,
    },
    /// A workspace archive try ended.
    ArchiveFinished {
        /// The job.
        job_id: JobId,
        /// The archive's blob, or why it failed.
        result: Result<BlobHash, String>,
    },
    /// A deadline from [`next_deadline`](crate::lifecycle::next_deadline) was reached.
    TimerFired(Timer),
}
