//! The default scheduler (SPEC section 7), pure: state, site facts and `now` in, a step of a
//! scheduling pass out. It never asks sites itself; `decide` turns its answer into events
//! and effects, and calls it again until a pass has nothing left to do.
//!
//! Architecture invariant: no clock, no IO, no randomness. The same state, settings and
//! `now` always give the same step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::job::meta::{JobMeta, DEFAULT_RESOURCES};
use crate::job::JobId;
use crate::lifecycle::event::{cap_reason, ResourceAnswer, ResourceRequest};
use crate::lifecycle::state::{Job, QueueKey, ScheduleTry, State};
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::settings::Settings;

/// Resource keys that sites do not manage; they are dropped from a request.
pub const UNMANAGED_RESOURCES: [&str; 2] = ["num_of_cpus", "memory"];
/// The key whose value 0 drops every GPU key from a request.
pub const GPU_COUNT: &str = "num_of_gpus";

/// The back-off after `count` tries (count >= 1): `min(max_schedule_interval,
/// 2^(count-1) * min_schedule_interval)`; zero for a job never tried.
pub fn backoff(settings: &Settings, count: u32) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(count - 1).unwrap_or(u32::MAX);
    settings
        .min_schedule_interval
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(settings.max_schedule_interval)
}

/// When a queued job may be tried: at once if never tried, else after its back-off.
pub fn due_at(job: &Job, settings: &Settings) -> Timestamp {
    match job.last_schedule_time {
        None => job.submit_time,
        Some(last) => last.plus(backoff(settings, job.schedule_count)),
    }
}

/// What a site is asked to hold for a job: its own `resource_spec` entry merged over
/// `@default`, without `num_of_cpus` and `memory`, and without any GPU key when
/// `num_of_gpus` is 0.
pub fn resources_for(meta: &JobMeta, site: &str) -> BTreeMap<String, f64> {
    let mut merged = BTreeMap::new();
    for amounts in [DEFAULT_RESOURCES, site].map(|key| meta.resource_spec.get(key)) {
        merged.extend(amounts.into_iter().flatten().map(|(k, v)| (k.clone(), *v)));
    }
    merged.retain(|key, _| !UNMANAGED_RESOURCES.contains(&key.as_str()));
    if merged.get(GPU_COUNT) == Some(&0.0) {
        merged.retain(|key, _| !key.to_ascii_lowercase().contains("gpu"));
    }
    merged
}

/// The site-side rule: a site can hold a request when, for every key, the amount asked is
/// at most the amount free (declared minus reserved or in use; every key is a plain pool).
/// A key the site does not declare has nothing free. The error names each shortfall.
pub fn check_fit(
    asked: &BTreeMap<String, f64>,
    free: &BTreeMap<String, f64>,
) -> Result<(), String> {
    let short: Vec<String> = asked
        .iter()
        .filter_map(|(key, amount)| {
            let have = free.get(key).copied().unwrap_or(0.0);
            (*amount > have).then(|| format!("not enough {key} (asked {amount}, free {have})"))
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(short.join(", "))
    }
}

/// One step of a scheduling pass.
#[derive(Clone, Debug, PartialEq)]
pub enum PassStep {
    /// Nothing to do now: no due candidate, `max_jobs` reached, a try in flight, or the
    /// server is still recovering.
    Idle,
    /// The first due candidate cannot get sites this time; record a try with this reason.
    NoResources {
        /// The job.
        job_id: JobId,
        /// The reason, with numbers.
        reason: String,
    },
    /// Ask these sites to reserve resources for the first due candidate.
    AskSites {
        /// The job.
        job_id: JobId,
        /// Who to ask for what, by site name.
        asked: Vec<ResourceRequest>,
    },
}

/// Whether a pass may run at all, and why not.
pub fn blocked(state: &State, settings: &Settings) -> Option<&'static str> {
    if state.recovery.is_some() {
        return Some("the server is recovering after a restart");
    }
    if state.schedule_try.is_some() {
        return Some("a schedule try is in flight");
    }
    if max_jobs_reached(state, settings) {
        return Some("max_jobs jobs are dispatched, running or stopping");
    }
    None
}

/// Whether `max_jobs` jobs count against the limit (SPEC section 7, rule 1): no pass
/// starts a try, and no try in flight dispatches its job.
pub fn max_jobs_reached(state: &State, settings: &Settings) -> bool {
    state.active_job_count() >= settings.max_jobs as usize
}

/// The next step of a pass: the first due `SUBMITTED` job (oldest `submit_time` first,
/// ties in history order) that is not in `skip` (jobs already tried in this pass), found
/// by a scan of the whole queue. A pass reads the due index instead ([`due_jobs`]); this
/// scan is the reference it is checked against.
pub fn next_step(
    state: &State,
    settings: &Settings,
    now: Timestamp,
    skip: &BTreeSet<JobId>,
) -> PassStep {
    if blocked(state, settings).is_some() {
        return PassStep::Idle;
    }
    let candidate = state
        .queue
        .iter()
        .filter_map(|(_, _, id)| state.jobs.get(id))
        .find(|job| {
            job.status == RunStatus::Submitted
                && !skip.contains(&job.id)
                && due_at(job, settings) <= now
        });
    match candidate {
        Some(job) => step_for(state, job),
        None => PassStep::Idle,
    }
}

/// The `SUBMITTED` jobs due at `now`, in queue order, read from the state's due index:
/// of each schedule count's jobs (ordered by the time their back-off counts from) only
/// the due ones at its front are read, so the cost follows the jobs due, not the jobs
/// queued. A pass tries them in this order; a try changes only the job tried, so the
/// list stays right for the whole pass (its steps are checked against [`next_step`]'s
/// scan in debug builds).
pub fn due_jobs(state: &State, settings: &Settings, now: Timestamp) -> Vec<QueueKey> {
    let mut due: Vec<QueueKey> = state
        .index()
        .due
        .iter()
        .flat_map(|(count, jobs)| {
            let wait = backoff(settings, *count);
            jobs.iter()
                .take_while(move |(base, _)| base.plus(wait) <= now)
                .map(|(_, key)| *key)
        })
        .collect();
    due.sort_unstable();
    due
}

/// The step for one due `SUBMITTED` job: the sites to ask, or why it cannot get any.
pub fn step_for(state: &State, job: &Job) -> PassStep {
    let meta = &job.meta;
    // Looked up per listed site rather than collected per step: a pass may take many
    // steps, and there may be many sites.
    let applicable: Vec<String> = if meta.is_all_sites() {
        state
            .connected_sites()
            .map(|(name, _)| name.clone())
            .collect()
    } else {
        meta.listed_sites()
            .into_iter()
            .filter(|s| state.sites.get(s).is_some_and(|f| f.connected))
            .collect()
    };
    let missing_mandatory: Vec<&str> = meta
        .mandatory_clients
        .iter()
        .filter(|m| !applicable.contains(m))
        .map(String::as_str)
        .collect();
    if !missing_mandatory.is_empty() {
        return PassStep::NoResources {
            job_id: job.id,
            reason: cap_reason(&format!(
                "mandatory sites not connected: {}",
                missing_mandatory.join(", ")
            )),
        };
    }
    if applicable.len() < meta.min_clients as usize {
        return PassStep::NoResources {
            job_id: job.id,
            reason: format!(
                "connected sites ({}) < min_clients ({})",
                applicable.len(),
                meta.min_clients
            ),
        };
    }
    let asked = applicable
        .into_iter()
        .map(|site| ResourceRequest {
            resources: resources_for(meta, &site),
            site,
        })
        .collect();
    PassStep::AskSites {
        job_id: job.id,
        asked,
    }
}

/// The verdict on a completed (or timed out) resource check.
#[derive(Clone, Debug, PartialEq)]
pub enum TryVerdict {
    /// Dispatch to these sites (sorted), with their reservation tokens.
    Dispatch {
        /// The chosen sites.
        sites: Vec<String>,
        /// Their tokens.
        reservations: BTreeMap<String, String>,
    },
    /// No resources this time; cancel these reservations (site, token).
    NoResources {
        /// Each site's answer, with numbers.
        reason: String,
        /// The reservations made, to give back.
        cancel: Vec<(String, String)>,
    },
}

/// Judges a try whose answers are all in (a missing answer counts as no reply).
pub fn evaluate_try(meta: &JobMeta, schedule_try: &ScheduleTry) -> TryVerdict {
    let mut reserved: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = Vec::new();
    for request in schedule_try.asked.iter() {
        let answer = schedule_try
            .answers
            .get(&request.site)
            .unwrap_or(&ResourceAnswer::NoReply);
        match answer {
            ResourceAnswer::Reserved(token) => {
                reserved.insert(request.site.clone(), token.clone());
                lines.push(format!("{}: reserved", request.site));
            }
            ResourceAnswer::Refused(why) => lines.push(format!("{}: {}", request.site, why)),
            ResourceAnswer::NoReply => lines.push(format!("{}: no reply", request.site)),
        }
    }
    let missing_mandatory: Vec<&str> = meta
        .mandatory_clients
        .iter()
        .filter(|m| !reserved.contains_key(*m))
        .map(String::as_str)
        .collect();
    let failure = if !missing_mandatory.is_empty() {
        Some(format!(
            "mandatory sites without resources: {}",
            missing_mandatory.join(", ")
        ))
    } else if reserved.len() < meta.min_clients as usize {
        Some(format!(
            "sites with resources ({}) < min_clients ({})",
            reserved.len(),
            meta.min_clients
        ))
    } else {
        None
    };
    match failure {
        Some(head) => TryVerdict::NoResources {
            reason: cap_reason(&format!("{head}; {}", lines.join("; "))),
            cancel: reserved.into_iter().collect(),
        },
        None => TryVerdict::Dispatch {
            sites: reserved.keys().cloned().collect(),
            reservations: reserved,
        },
    }
}

/// When the next pass is due because of a back-off, if a pass could run at all. Reads
/// the state's due index: the first job of each schedule count, not the whole queue.
pub fn next_due(state: &State, settings: &Settings) -> Option<Timestamp> {
    if blocked(state, settings).is_some() {
        return None;
    }
    state
        .index()
        .due
        .iter()
        .filter_map(|(count, jobs)| {
            let (base, _) = jobs.get_min()?;
            Some(base.plus(backoff(settings, *count)))
        })
        .min()
}

/// [`next_due`] by a scan of the whole queue, the way it was computed before the index:
/// the reference the index is checked against.
pub fn next_due_by_scan(state: &State, settings: &Settings) -> Option<Timestamp> {
    if blocked(state, settings).is_some() {
        return None;
    }
    state
        .queue
        .iter()
        .filter_map(|(_, _, id)| state.jobs.get(id))
        .filter(|job| job.status == RunStatus::Submitted)
        .map(|job| due_at(job, settings))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let settings = Settings::default();
        let secs: Vec<u64> = (0..=8).map(|c| backoff(&settings, c).as_secs()).collect();
        // 10 s base, doubling: 10, 20, 40, 80, 160, 320, then capped at 600 (10 m).
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(&settings, 200), Duration::from_secs(600));
    }

    #[test]
    fn fit_names_every_shortfall() {
        let asked = BTreeMap::from([("num_of_gpus".to_string(), 2.0), ("disk".to_string(), 1.0)]);
        let free = BTreeMap::from([("num_of_gpus".to_string(), 1.0)]);
        assert_eq!(
            check_fit(&asked, &free),
            Err(
                "not enough disk (asked 1, free 0), not enough num_of_gpus (asked 2, free 1)"
                    .to_string()
            )
        );
        let enough = BTreeMap::from([("num_of_gpus".to_string(), 2.0), ("disk".to_string(), 5.0)]);
        assert_eq!(check_fit(&asked, &enough), Ok(()));
    }
}
