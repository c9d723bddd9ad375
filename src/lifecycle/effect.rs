//! Effects: what workers must do once the events of a decision are durable.
//!
//! The engine hands each effect to a worker and never waits for it; a worker's result comes
//! back as a new [`Command`](crate::lifecycle::Command).

use std::collections::BTreeMap;

use crate::job::JobId;
use crate::lifecycle::event::BlobHash;

/// One thing to carry out after the decision's events are durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Ask a site to reserve resources for a schedule try; it answers with
    /// `SiteReport::ResourceAnswer` carrying `try_id`.
    CheckResources {
        /// The site.
        site: String,
        /// The try.
        try_id: u64,
        /// The job.
        job_id: JobId,
        /// What to reserve.
        resources: BTreeMap<String, f64>,
    },
    /// Give back a reservation that will not lead to a run. Fire and forget.
    CancelReservation {
        /// The site.
        site: String,
        /// The job.
        job_id: JobId,
        /// The reservation token the site gave.
        token: String,
    },
    /// Unpack the job's server app into its run folder and verify it; answer with
    /// `Command::ServerDeployFinished`.
    DeployServerApp {
        /// The job.
        job_id: JobId,
        /// The app's folder name in the package.
        app: String,
        /// The package blob.
        package: BlobHash,
    },
    /// Send a site the package and the name of its app; it answers `DeployAnswer`.
    DeploySiteApp {
        /// The site.
        site: String,
        /// The job.
        job_id: JobId,
        /// The app's folder name in the package.
        app: String,
        /// The package blob.
        package: BlobHash,
    },
    /// Start the server app process; answer with `Command::ServerAppStarted`, and later
    /// `Command::ServerAppExited`.
    StartServerApp {
        /// The job.
        job_id: JobId,
    },
    /// Ask a site to start its deployed app; it answers `StartAnswer`, later `AppExited`.
    StartSiteApp {
        /// The site.
        site: String,
        /// The job.
        job_id: JobId,
    },
    /// Stop the server app process: ask, wait `abort_grace`, then kill. Its exit still comes
    /// back as `Command::ServerAppExited`.
    StopServerApp {
        /// The job.
        job_id: JobId,
    },
    /// Ask a site to stop the job's app (grace, then kill). Its exit comes back as a report.
    StopSiteApp {
        /// The site.
        site: String,
        /// The job.
        job_id: JobId,
    },
    /// Remove what was deployed for the job at the server (its run folder). Fire and forget.
    DeleteServerDeployment {
        /// The job.
        job_id: JobId,
    },
    /// Ask a site to remove what was deployed for the job. Fire and forget.
    DeleteSiteDeployment {
        /// The site.
        site: String,
        /// The job.
        job_id: JobId,
    },
    /// Zip the job's server run folder into the blob store, then remove the folder; answer
    /// with `Command::ArchiveFinished`. Never remove the folder when zipping failed.
    ArchiveWorkspace {
        /// The job.
        job_id: JobId,
    },
    /// No live job refers to this blob any more: remove it.
    FreeBlob {
        /// The blob.
        hash: BlobHash,
    },
}
