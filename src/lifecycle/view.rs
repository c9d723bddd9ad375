//! What `fedrun list` and `fedrun show` print: a job of the projection turned into the
//! vocabulary of SPEC section 5 (`job_id`, `submitter_name`, `submit_time`, `status`,
//! `schedule_history`, `job_deploy_detail`, `job_clients`, ...), as serializable values.
//!
//! Pure like the rest of the core: a running job's `duration` is measured up to the `now`
//! the caller hands in, never up to a clock read here. Every reader (the offline commands
//! today, a network API later) prints the same values.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::job::meta::ResourceSpec;
use crate::job::JobId;
use crate::lifecycle::state::{Archive, Job, RunPhase, State};
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::settings::format_duration;

/// The `meta.json` keys a job keeps, in `meta.json`'s own shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetaView {
    /// App name -> its participants (`"server"`, site names, or `["@ALL"]`).
    pub deploy_map: BTreeMap<String, Vec<String>>,
    /// `min_clients`.
    pub min_clients: u32,
    /// `mandatory_clients`.
    pub mandatory_clients: Vec<String>,
    /// `resource_spec`: site name or `"@default"` -> resource name -> amount.
    pub resource_spec: ResourceSpec,
}

/// The workspace archive sub-state, as `show` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ArchiveView {
    /// The job was never dispatched, so it has no server workspace.
    NoWorkspace,
    /// A workspace exists and is not archived yet.
    Pending {
        /// Failed tries so far.
        failures: u32,
        /// The last failure's reason, if a try failed.
        last_reason: Option<String>,
    },
    /// Archived in the blob store.
    Archived {
        /// The archive blob's BLAKE3 hash (64 hex digits).
        hash: String,
    },
    /// Archiving gave up.
    Failed {
        /// The last failure.
        reason: String,
    },
}

impl fmt::Display for ArchiveView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveView::NoWorkspace => f.write_str("no_workspace"),
            ArchiveView::Pending {
                failures,
                last_reason,
            } => match last_reason {
                Some(reason) => write!(f, "pending ({failures} failed tries; last: {reason})"),
                None => f.write_str("pending"),
            },
            ArchiveView::Archived { hash } => write!(f, "archived {hash}"),
            ArchiveView::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// The run sub-state's word: `not_started`, `starting`, `running`, `stopping`, `stopped`.
pub fn run_phase_name(phase: RunPhase) -> &'static str {
    match phase {
        RunPhase::NotStarted => "not_started",
        RunPhase::Starting => "starting",
        RunPhase::Running => "running",
        RunPhase::Stopping => "stopping",
        RunPhase::Stopped => "stopped",
    }
}

/// One job in the vocabulary `fedrun show` prints (SPEC section 5), plus its meta, its run
/// and archive sub-states, and whether it was deleted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    /// The job id (UUID).
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// The submitter's certificate CN.
    pub submitter_name: String,
    /// The submitter's organisation.
    pub submitter_org: String,
    /// The submitter's role.
    pub submitter_role: String,
    /// Submit time in whole seconds since the epoch.
    pub submit_time: i64,
    /// Submit time, ISO-8601 UTC.
    pub submit_time_iso: String,
    /// The status string (`SUBMITTED`, `FINISHED:COMPLETED`, ...).
    pub status: RunStatus,
    /// Why the job ended, as its `JobFinished` event recorded it; `None` until it ends.
    pub finish_reason: Option<String>,
    /// When the job went `RUNNING`, ISO-8601 UTC; `None` if it never did.
    pub start_time: Option<String>,
    /// From `start_time` to the end (or to `now` while it runs), like `1m30s`.
    pub duration: Option<String>,
    /// Schedule tries so far.
    pub schedule_count: u32,
    /// When the last try ended, ISO-8601 UTC.
    pub last_schedule_time: Option<String>,
    /// One line per schedule try.
    pub schedule_history: Vec<String>,
    /// One line per participant's deploy answer, the server first.
    pub job_deploy_detail: Vec<String>,
    /// The sites that took part in the run.
    pub job_clients: Vec<String>,
    /// The `meta.json` keys.
    pub meta: MetaView,
    /// The run sub-state (see [`run_phase_name`]).
    pub run: &'static str,
    /// The workspace archive sub-state.
    pub archive: ArchiveView,
    /// Hidden from listings (the history is kept).
    pub deleted: bool,
}

/// One line of `fedrun list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSummary {
    /// The job id (UUID).
    pub job_id: String,
    /// The job's name.
    pub name: String,
    /// The status string.
    pub status: RunStatus,
    /// The submitter's certificate CN.
    pub submitter_name: String,
    /// The submitter's organisation.
    pub submitter_org: String,
    /// The submitter's role.
    pub submitter_role: String,
    /// Submit time in whole seconds since the epoch.
    pub submit_time: i64,
    /// Submit time, ISO-8601 UTC.
    pub submit_time_iso: String,
    /// From `start_time` to the end (or to `now` while it runs), like `1m30s`.
    pub duration: Option<String>,
    /// Hidden from listings unless asked for.
    pub deleted: bool,
}

/// A job's `duration` as text, measured up to `now` while it runs.
fn duration_text(job: &Job, now: Timestamp) -> Option<String> {
    job.duration_ms(now).map(|ms| {
        // `duration_ms` never returns a negative value; zero covers the impossible case.
        format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    })
}

/// The full projection of one job; `now` ends the duration of a job still running.
pub fn job_view(job: &Job, now: Timestamp) -> JobView {
    let meta = &job.meta;
    JobView {
        job_id: job.id.to_string(),
        name: meta.name.clone(),
        submitter_name: job.submitter.name.clone(),
        submitter_org: job.submitter.org.clone(),
        submitter_role: job.submitter.role.as_str().to_string(),
        submit_time: job.submit_time.as_secs(),
        submit_time_iso: job.submit_time.to_iso8601(),
        status: job.status,
        finish_reason: job.finish_reason.as_deref().map(String::from),
        start_time: job.run.started_at.map(Timestamp::to_iso8601),
        duration: duration_text(job, now),
        schedule_count: job.schedule_count,
        last_schedule_time: job.last_schedule_time.map(Timestamp::to_iso8601),
        schedule_history: job.schedule_history.lines().collect(),
        job_deploy_detail: job.run.deploy_detail(),
        job_clients: job.run.job_clients.iter().cloned().collect(),
        meta: MetaView {
            deploy_map: meta
                .deploy_map
                .iter()
                .map(|a| (a.app.clone(), a.targets.clone()))
                .collect(),
            min_clients: meta.min_clients,
            mandatory_clients: meta.mandatory_clients.clone(),
            resource_spec: meta.resource_spec.clone(),
        },
        run: run_phase_name(job.run.phase),
        archive: match &job.archive {
            Archive::NoWorkspace => ArchiveView::NoWorkspace,
            Archive::Pending {
                failures,
                last_reason,
                ..
            } => ArchiveView::Pending {
                failures: *failures,
                last_reason: last_reason.as_deref().map(String::from),
            },
            Archive::Archived { hash } => ArchiveView::Archived {
                hash: hash.to_hex(),
            },
            Archive::Failed { reason } => ArchiveView::Failed {
                reason: reason.to_string(),
            },
        },
        deleted: job.deleted,
    }
}

/// One job as a `list` line; `now` ends the duration of a job still running.
pub fn job_summary(job: &Job, now: Timestamp) -> JobSummary {
    JobSummary {
        job_id: job.id.to_string(),
        name: job.meta.name.clone(),
        status: job.status,
        submitter_name: job.submitter.name.clone(),
        submitter_org: job.submitter.org.clone(),
        submitter_role: job.submitter.role.as_str().to_string(),
        submit_time: job.submit_time.as_secs(),
        submit_time_iso: job.submit_time.to_iso8601(),
        duration: duration_text(job, now),
        deleted: job.deleted,
    }
}

/// Which statuses `list --status` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exactly(RunStatus),
    /// `FINISHED`: any terminal status.
    Finished,
}

impl StatusFilter {
    /// Whether a job with `status` passes.
    pub fn matches(self, status: RunStatus) -> bool {
        match self {
            StatusFilter::Exactly(wanted) => status == wanted,
            StatusFilter::Finished => status.is_terminal(),
        }
    }
}

/// A `--status` text that names no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{given}`; valid: {}", valid_status_words().join(", "))]
pub struct StatusFilterError {
    /// The text given.
    pub given: String,
}

/// Every word `--status` accepts: the SPEC status strings, then `FINISHED`.
pub fn valid_status_words() -> Vec<&'static str> {
    RunStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(std::iter::once("FINISHED"))
        .collect()
}

impl FromStr for StatusFilter {
    type Err = StatusFilterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "FINISHED" {
            return Ok(StatusFilter::Finished);
        }
        s.parse::<RunStatus>()
            .map(StatusFilter::Exactly)
            .map_err(|_| StatusFilterError {
                given: s.to_string(),
            })
    }
}

/// What `list` keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only jobs whose status passes.
    pub status: Option<StatusFilter>,
    /// Only jobs whose name contains this text.
    pub name_contains: Option<String>,
    /// Deleted jobs too.
    pub include_deleted: bool,
}

/// The jobs `filter` keeps, oldest first (by submit time, ties in history order).
pub fn list_jobs(state: &State, filter: &ListFilter, now: Timestamp) -> Vec<JobSummary> {
    let mut jobs: Vec<&Job> = state
        .jobs
        .values()
        .map(|j| &**j)
        .filter(|j| filter.include_deleted || !j.deleted)
        .filter(|j| match filter.status {
            Some(wanted) => wanted.matches(j.status),
            None => true,
        })
        .filter(|j| match filter.name_contains.as_deref() {
            Some(part) => j.meta.name.contains(part),
            None => true,
        })
        .collect();
    jobs.sort_by_key(|j| (j.submit_time, j.submitted_seq, j.id));
    jobs.into_iter().map(|j| job_summary(j, now)).collect()
}

/// Why a job id given by a person names no single job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FindJobError {
    /// No job's id is or starts with the text.
    #[error("no job with id {given}")]
    Unknown {
        /// The text given.
        given: String,
    },
    /// More than one job's id starts with the text.
    #[error("job id {given} is ambiguous; the ids starting with it: {}", matches.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The text given.
        given: String,
        /// The ids starting with it.
        matches: Vec<JobId>,
    },
}

/// The job whose id is `given`, or the only job whose id starts with it (case does not
/// matter). Deleted jobs are found too: their history is kept.
pub fn find_job<'s>(state: &'s State, given: &str) -> Result<&'s Job, FindJobError> {
    let wanted = given.trim().to_ascii_lowercase();
    if wanted.is_empty() {
        return Err(FindJobError::Unknown {
            given: given.to_string(),
        });
    }
    let found: Vec<&Job> = state
        .jobs
        .values()
        .map(|j| &**j)
        .filter(|j| j.id.to_string().starts_with(&wanted))
        .collect();
    // A complete id matches exactly one job (ids are unique), so it never reads ambiguous.
    match found.as_slice() {
        [job] => Ok(job),
        [] => Err(FindJobError::Unknown {
            given: given.to_string(),
        }),
        many => Err(FindJobError::Ambiguous {
            given: given.to_string(),
            matches: many.iter().map(|j| j.id).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filter_reads_the_spec_strings_and_finished() {
        assert_eq!(
            "RUNNING".parse::<StatusFilter>(),
            Ok(StatusFilter::Exactly(RunStatus::Running))
        );
        assert_eq!(
            "FINISHED".parse::<StatusFilter>(),
            Ok(StatusFilter::Finished)
        );
        let err = "DONE".parse::<StatusFilter>().unwrap_err().to_string();
        assert!(
            err.contains("DONE") && err.contains("FINISHED:ABANDONED"),
            "{err}"
        );
        assert!(StatusFilter::Finished.matches(RunStatus::Aborted));
        assert!(!StatusFilter::Finished.matches(RunStatus::Running));
    }

    #[test]
    fn run_phase_names_are_the_serde_names() {
        for phase in [
            RunPhase::NotStarted,
            RunPhase::Starting,
            RunPhase::Running,
            RunPhase::Stopping,
            RunPhase::Stopped,
        ] {
            let json = serde_json::to_string(&phase).expect("a unit variant serializes");
            assert_eq!(json, format!("\"{}\"", run_phase_name(phase)));
        }
    }
}
