//! What participants (sites, and the server's own app runner) tell the node: the reports
//! and the outcome of an app process. These are the core's vocabulary, so they live in the
//! core; `site::protocol` re-exports them beside the requests it carries out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// The outcome of one app process, as a site reports it and as the server sees its own app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ExitOutcome {
    /// The process exited with this code (`0` normal, `1`, `101`..`104`, `9`, ...).
    Code(i32),
    /// The process was killed by this signal.
    Signal(i32),
}

/// What a site tells the engine. Reports that carry a `report_id` are kept and resent by
/// the site until the server has recorded them, so the engine ignores a repeated id.
/// The same type travels on the network (`net::wire`), so it derives serde; a site never
/// sends `Disconnected`, which is the server's own conclusion about a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SiteReport {
    /// The site connected (or reconnected), with the resources it declares and the jobs
    /// whose app processes it is running right now.
    Connected {
        resources: BTreeMap<String, f64>,
        running: Vec<JobId>,
    },
    /// The site's connection is gone.
    Disconnected,
    ResourceAnswer {
        try_id: u64,
        job_id: JobId,
        /// `Ok(token)` when reserved, `Err(reason)` when the site cannot hold the job.
        answer: Result<String, String>,
    },
    DeployAnswer {
        job_id: JobId,
        result: Result<(), String>,
    },
    StartAnswer {
        job_id: JobId,
        result: Result<(), String>,
    },
    /// The job's app process at this site has ended.
    AppExited {
        job_id: JobId,
        report_id: String,
        outcome: ExitOutcome,
        /// Whether the app ended after the site was asked to stop it (abort, or stopping a
        /// run after a failure): such an exit is not a failure (SPEC section 8).
        stop_requested: bool,
    },
}
