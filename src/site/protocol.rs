//! The messages between the engine and a site, whatever carries them.
//!
//! The engine never calls into a site: it sends a [`SiteRequest`] and later receives a
//! [`SiteReport`] as one of its inputs. A local site in the same process, a simulated site
//! and a remote site behind the network transport all speak exactly these messages, so the
//! engine does not know how a site is reached.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::job::JobId;
use crate::lifecycle::{BlobHash, Timestamp};

// The reports and exit outcomes are the core's vocabulary (the node decides on them), so
// they live in `lifecycle::participant`; every participant, local, simulated or remote,
// speaks them.
pub use crate::lifecycle::participant::{ExitOutcome, SiteReport};

/// What the engine asks of a site. Every request is answered by a [`SiteReport`], except
/// `CancelReservation`, `Delete` and `Acknowledge`, which are fire-and-forget. `Stop` is
/// answered by the `AppExited` of the stopped app.
#[derive(Clone, Debug)]
pub enum SiteRequest {
    /// Can the site hold these resources for this job? If so, reserve them and answer with
    /// a token that lapses after `reservation_timeout` unless the job starts.
    CheckResources {
        /// Distinguishes the answers of one schedule try from those of another.
        try_id: u64,
        job_id: JobId,
        resources: BTreeMap<String, f64>,
    },
    /// Give back a reservation made for a try that did not lead to a run.
    CancelReservation { job_id: JobId, token: String },
    /// Unpack this app (the canonical zip of the whole job package and the app's name in
    /// it) into the site's workspace for this job, verifying signatures per policy.
    Deploy {
        job_id: JobId,
        app_name: String,
        package: Arc<Vec<u8>>,
        /// The package's BLAKE3 (its blob name), so no link on the way hashes it again.
        hash: BlobHash,
        /// The time the package's signature is checked at: the job's `JobSubmitted` time
        /// (SPEC section 6), so a certificate that expired since the submit does not stop
        /// an accepted job. `None`: the site's own time.
        verify_at: Option<Timestamp>,
    },
    /// Start the deployed app as a process.
    Start { job_id: JobId },
    /// Stop the job's app process: ask, wait `abort_grace`, then kill.
    Stop { job_id: JobId },
    /// Remove everything deployed for this job (after a failed deploy, an abandon, ...).
    Delete { job_id: JobId },
    /// The server has recorded the report with this id: the site may forget it and stops
    /// resending it.
    Acknowledge { report_id: String },
}
