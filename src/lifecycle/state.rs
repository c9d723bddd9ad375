//! The projection: every job's status and sub-states, the sites, the try in flight, and
//! the answers of past requests. A pure fold of events ([`State::apply`]).

use imbl::{OrdMap, OrdSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::job::meta::JobMeta;
use crate::job::JobId;
use crate::lifecycle::actor::Identity;
use crate::lifecycle::event::{
    BlobHash, BootId, Event, EventKind, ResourceAnswer, ResourceRequest, StepResult,
};
use crate::lifecycle::jobs::Jobs;
use crate::lifecycle::participant::ExitOutcome;
use crate::lifecycle::schedule_history::ScheduleHistory;
use crate::lifecycle::small_map::{SmallMap, SmallSet, SparseMap, SparseSet};
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::lifecycle::{Rejection, ReplayError};

/// The first answer given to an admin request, kept by its idempotency key.
pub type Reply = Result<Answer, Rejection>;

/// What an accepted admin request answers.
/// Externally tagged (the variant's name, then its fields), which a binary format reads
/// without buffering the entry first (an internally tagged enum is buffered whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A job was submitted (or cloned) under this id.
    Submitted {
        /// The new job.
        job_id: JobId,
    },
    /// The request about this job was carried out (abort, delete, download).
    Accepted {
        /// The job.
        job_id: JobId,
    },
}

/// The run of a job (SPEC section 2's run sub-state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Nothing deployed or started yet.
    #[default]
    NotStarted,
    /// Deploying and starting (the job is `DISPATCHED`).
    Starting,
    /// The processes run.
    Running,
    /// fedrun asked the processes to stop and waits for them to end.
    Stopping,
    /// Every process has ended.
    Stopped,
}

impl RunPhase {
    /// Every phase, in the order a run goes through them.
    pub const ALL: [RunPhase; 5] = [
        RunPhase::NotStarted,
        RunPhase::Starting,
        RunPhase::Running,
        RunPhase::Stopping,
        RunPhase::Stopped,
    ];
}

/// Where a `DISPATCHED` job's start-up is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartStep {
    /// Waiting for the server app's deploy.
    DeployingServer,
    /// Waiting for the sites' deploy answers.
    DeployingSites,
    /// Waiting for the server app process to start.
    StartingServer,
    /// Waiting for the sites' start answers.
    StartingSites,
}

/// A failure recorded for a run (SPEC section 8's failure order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `"server"` or the site.
    pub participant: String,
    /// The outcome (a lapsed site report counts as code 104).
    pub outcome: ExitOutcome,
}

impl Failure {
    /// `104` and death by a signal: nothing replaces them.
    pub fn is_sticky(&self) -> bool {
        matches!(
            self.outcome,
            ExitOutcome::Code(104) | ExitOutcome::Signal(_)
        )
    }
}

/// Whether an outcome is a failure at all (anything but code 0).
pub fn is_failure(outcome: ExitOutcome) -> bool {
    outcome != ExitOutcome::Code(0)
}

/// Whether a site report with this outcome stops the run (SPEC section 8): `101`, `102`,
/// `103`, `104`, `9` or a signal. A report of `1` (or another code) is recorded only.
pub fn stops_run(outcome: ExitOutcome) -> bool {
    matches!(
        outcome,
        ExitOutcome::Code(101 | 102 | 103 | 104 | 9) | ExitOutcome::Signal(_)
    )
}

/// Merges a new failure into the recorded one by SPEC section 8's order: `104` and signals
/// are sticky, `9` never replaces an earlier failure, otherwise the later one replaces.
pub fn merge_failure(current: Option<Box<Failure>>, new: Failure) -> Option<Box<Failure>> {
    match current {
        None => Some(Box::new(new)),
        Some(old) if old.is_sticky() => Some(old),
        Some(old) if new.outcome == ExitOutcome::Code(9) => Some(old),
        Some(_) => Some(Box::new(new)),
    }
}

/// The status a finished run ends in, from its recorded failure (rules 2 and 3; rule 1,
/// an admin abort, ends the job when it happens).
pub fn final_status(failure: Option<&Failure>) -> RunStatus {
    match failure.map(|f| f.outcome) {
        None => RunStatus::Completed,
        Some(ExitOutcome::Code(104) | ExitOutcome::Signal(_)) => RunStatus::Abnormal,
        Some(ExitOutcome::Code(9)) => RunStatus::Aborted,
        Some(_) => RunStatus::ExecutionException,
    }
}

/// Words for an outcome: `code 101`, `signal 9`.
pub fn describe_outcome(outcome: ExitOutcome) -> String {
    match outcome {
        ExitOutcome::Code(code) => format!("code {code}"),
        ExitOutcome::Signal(signal) => format!("signal {signal}"),
    }
}

/// A short text kept inline (site names, report ids): up to 24 bytes take no allocation,
/// so copying a run's maps of answers, which grow one answer at a time, copies no heap
/// text, and reading a snapshot allocates none for them. Written and read as a string.
pub type ShortStr = compact_str::CompactString;

/// A job's run: deploy and start answers, who took part, exits, failure, stop.
///
/// Serialized field by field in this order ([`RunOut`], [`RunIn`]); in a binary format (a
/// snapshot) `start` is nil when it equals `deploy` and `job_clients` nil when it equals
/// `sites`, which is what nearly every run holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// The run sub-state.
    pub phase: RunPhase,
    /// While `Starting`: the step and when it began.
    pub step: Option<(StartStep, Timestamp)>,
    /// The sites the job was dispatched to, sorted.
    pub sites: Arc<[String]>,
    /// Reservation tokens by site, until the run starts or they are cancelled.
    pub reservations: SparseMap<String, String>,
    /// Deploy answers by participant (`"server"` and sites).
    pub deploy: SmallMap<ShortStr, StepResult>,
    /// Start answers by participant.
    pub start: SmallMap<ShortStr, StepResult>,
    /// When the job went `RUNNING` (`start_time`).
    pub started_at: Option<Timestamp>,
    /// The sites that took part (`job_clients`), set when the job went `RUNNING`.
    pub job_clients: Arc<[String]>,
    /// How and when the server app process ended.
    pub server_exit: Option<(ExitOutcome, Timestamp)>,
    /// Site reports, by site.
    pub site_exits: SmallMap<ShortStr, ExitOutcome>,
    /// Sites whose report lapsed after `site_reconnect_grace` (counted as `104`).
    pub lapsed: SparseSet<String>,
    /// The failure that decides the final status, if any (boxed: most runs have none,
    /// and every job kept would hold its bytes inline).
    pub failure: Option<Box<Failure>>,
    /// When fedrun asked the processes to stop; exits after it are not failures.
    pub stop_requested_at: Option<Timestamp>,
    /// Report ids already recorded, so a resent report is not counted twice.
    pub report_ids: SmallSet<ShortStr>,
    /// Sites whose app ended because fedrun asked it to stop (their exit is not a failure).
    pub stopped_exits: SparseSet<String>,
    /// After a restart, the server app did not re-attach: it has ended, outcome unknown.
    pub server_lost: bool,
    /// Sites left out of the run that may still run its app: their start answer was lost
    /// (recorded as no reply), or the job ended while it was awaited. Such a site is not a
    /// participant (its exit is never the job's outcome), but it holds the run's
    /// `max_jobs` slot (see [`Run::all_ended`]) until it is known not to run the app: its
    /// exit report, a reconnect that does not list the job, or the end of the stop wait
    /// (SPEC section 8, "a stop is over"), each recorded as `LeftOutSiteEnded` or
    /// `RunStopped`.
    pub left_out: SparseSet<String>,
    /// Derived, not stored: the sites of `site_exits` whose outcome stops a run
    /// ([`stops_run`]) and whose exit fedrun's own stop did not cause, so the stop rule
    /// looks at these few instead of every exit of a large run. Kept by the fold and
    /// rebuilt when a state is loaded ([`State::rebuild_index`]).
    pub stop_candidates: SparseSet<ShortStr>,
}

/// [`Run`] as written: its fields by reference, `start` and `job_clients` left out (nil)
/// where a binary format can take them from `deploy` and `sites`.
#[derive(Serialize)]
#[serde(rename = "Run")]
struct RunOut<'a> {
    phase: RunPhase,
    step: &'a Option<(StartStep, Timestamp)>,
    sites: &'a Arc<[String]>,
    reservations: &'a SparseMap<String, String>,
    deploy: &'a SmallMap<ShortStr, StepResult>,
    start: Option<&'a SmallMap<ShortStr, StepResult>>,
    started_at: Option<Timestamp>,
    job_clients: Option<&'a Arc<[String]>>,
    server_exit: Option<(ExitOutcome, Timestamp)>,
    site_exits: &'a SmallMap<ShortStr, ExitOutcome>,
    lapsed: &'a SparseSet<String>,
    failure: &'a Option<Box<Failure>>,
    stop_requested_at: Option<Timestamp>,
    report_ids: &'a SmallSet<ShortStr>,
    stopped_exits: &'a SparseSet<String>,
    server_lost: bool,
    left_out: &'a SparseSet<String>,
}

/// [`Run`] as read: [`RunOut`]'s fields, a nil `start` or `job_clients` taken from
/// `deploy` or `sites` (shared, not copied).
#[derive(Deserialize)]
#[serde(rename = "Run")]
struct RunIn {
    phase: RunPhase,
    step: Option<(StartStep, Timestamp)>,
    sites: Arc<[String]>,
    reservations: SparseMap<String, String>,
    deploy: SmallMap<ShortStr, StepResult>,
    start: Option<SmallMap<ShortStr, StepResult>>,
    started_at: Option<Timestamp>,
    job_clients: Option<Arc<[String]>>,
    server_exit: Option<(ExitOutcome, Timestamp)>,
    site_exits: SmallMap<ShortStr, ExitOutcome>,
    lapsed: SparseSet<String>,
    failure: Option<Box<Failure>>,
    stop_requested_at: Option<Timestamp>,
    report_ids: SmallSet<ShortStr>,
    #[serde(default)]
    stopped_exits: SparseSet<String>,
    #[serde(default)]
    server_lost: bool,
    #[serde(default)]
    left_out: SparseSet<String>,
}

impl Serialize for Run {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Every field named: a field added to `Run` is a compile error here until it is
        // written (or said not to be), as it is in the reading below.
        let Run {
            phase,
            step,
            sites,
            reservations,
            deploy,
            start,
            started_at,
            job_clients,
            server_exit,
            site_exits,
            lapsed,
            failure,
            stop_requested_at,
            report_ids,
            stopped_exits,
            server_lost,
            left_out,
            stop_candidates: _,
        } = self;
        // A human-readable format (JSON) gets every field as it is.
        let whole = serializer.is_human_readable();
        RunOut {
            phase: *phase,
            step,
            sites,
            reservations,
            deploy,
            start: (whole || start != deploy).then_some(start),
            started_at: *started_at,
            // `Arc`'s equality compares the pointers first.
            job_clients: (whole || job_clients != sites).then_some(job_clients),
            server_exit: *server_exit,
            site_exits,
            lapsed,
            failure,
            stop_requested_at: *stop_requested_at,
            report_ids,
            stopped_exits,
            server_lost: *server_lost,
            left_out,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Run {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let run = RunIn::deserialize(deserializer)?;
        Ok(Run {
            phase: run.phase,
            step: run.step,
            start: run.start.unwrap_or_else(|| run.deploy.clone()),
            job_clients: run.job_clients.unwrap_or_else(|| run.sites.clone()),
            sites: run.sites,
            reservations: run.reservations,
            deploy: run.deploy,
            started_at: run.started_at,
            server_exit: run.server_exit,
            site_exits: run.site_exits,
            lapsed: run.lapsed,
            failure: run.failure,
            stop_requested_at: run.stop_requested_at,
            report_ids: run.report_ids,
            stopped_exits: run.stopped_exits,
            server_lost: run.server_lost,
            left_out: run.left_out,
            // Derived from the exits when a state is loaded.
            stop_candidates: SparseSet::new(),
        })
    }
}

impl Run {
    /// [`Run::stop_candidates`] computed from the exits themselves.
    pub fn stop_candidates_from_exits(&self) -> SparseSet<ShortStr> {
        self.site_exits
            .iter()
            .filter(|(site, outcome)| {
                stops_run(**outcome) && !self.stopped_exits.contains(site.as_str())
            })
            .map(|(site, _)| site.clone())
            .collect()
    }

    /// The `job_deploy_detail` lines: the server first, then sites by name.
    pub fn deploy_detail(&self) -> Vec<String> {
        let line = |who: &str, result: &StepResult| match result {
            StepResult::Ok => format!("{who}: OK"),
            StepResult::Error(reason) => format!("{who}: {reason}"),
            StepResult::NoReply => format!("{who}: no reply (deployment timeout)"),
        };
        let server = crate::job::meta::SERVER;
        let mut lines: Vec<String> = self
            .deploy
            .get(server)
            .map(|r| line(server, r))
            .into_iter()
            .collect();
        lines.extend(
            self.deploy
                .iter()
                .filter(|(who, _)| who.as_str() != server)
                .map(|(who, r)| line(who, r)),
        );
        lines
    }

    /// Whether the server app process was started (and so an exit is expected).
    pub fn server_started(&self) -> bool {
        matches!(
            self.start.get(crate::job::meta::SERVER),
            Some(StepResult::Ok)
        )
    }

    /// Whether the server app was started and has not yet ended (nor been lost in a
    /// restart).
    pub fn server_outstanding(&self) -> bool {
        self.server_started() && self.server_exit.is_none() && !self.server_lost
    }

    /// Whether the site is one the job was dispatched to (`sites` is sorted).
    pub fn was_sent(&self, site: &str) -> bool {
        self.sites
            .binary_search_by(|s| s.as_str().cmp(site))
            .is_ok()
    }

    /// True when some expected site has neither reported nor lapsed. Unlike
    /// [`Run::outstanding_sites`] it copies nothing, so it is cheap for a run of many
    /// sites.
    pub fn any_site_outstanding(&self) -> bool {
        let pending = |s: &str| !self.site_exits.contains_key(s) && !self.lapsed.contains(s);
        if self.started_at.is_some() {
            // Each expected site that is not outstanding has an exit or has lapsed, so with
            // fewer of those than expected sites one is outstanding: the answer for almost
            // every report of a large run, without a scan.
            if self.site_exits.len() + self.lapsed.len() < self.job_clients.len() {
                return true;
            }
            return self.job_clients.iter().any(|s| pending(s));
        }
        self.start
            .iter()
            .any(|(who, r)| who.as_str() != crate::job::meta::SERVER && r.is_ok() && pending(who))
    }

    /// The sites whose app process may run: `job_clients` once the job went `RUNNING`,
    /// else the sites that answered their start with OK.
    pub fn expected_sites(&self) -> impl Iterator<Item = &str> + '_ {
        let running = self.started_at.is_some();
        let clients = running.then(|| self.job_clients.iter().map(String::as_str));
        let started = (!running).then(|| {
            self.start
                .iter()
                .filter(|(who, r)| who.as_str() != crate::job::meta::SERVER && r.is_ok())
                .map(|(who, _)| who.as_str())
        });
        clients
            .into_iter()
            .flatten()
            .chain(started.into_iter().flatten())
    }

    /// Expected sites that have neither reported nor lapsed, in order (borrowed: the
    /// deadlines of every running job are asked for this at each step).
    pub fn outstanding_sites(&self) -> impl Iterator<Item = &str> + '_ {
        self.expected_sites()
            .filter(|s| !self.site_exits.contains_key(*s) && !self.lapsed.contains(*s))
    }

    /// True while the server's own deploy or start answer is awaited (an abort that lands
    /// then waits for it, so the workspace is not archived under a running unpack).
    pub fn server_step_in_flight(&self) -> bool {
        matches!(
            self.step,
            Some((StartStep::DeployingServer | StartStep::StartingServer, _))
        )
    }

    /// True when no process of the run can still be running.
    pub fn all_ended(&self) -> bool {
        !self.server_outstanding()
            && !self.server_step_in_flight()
            && !self.any_site_outstanding()
            && self.left_out.is_empty()
    }

    /// Whether the site is a participant whose exit is still awaited (it has neither
    /// reported nor lapsed).
    pub fn site_outstanding(&self, site: &str) -> bool {
        let expected = if self.started_at.is_some() {
            self.job_clients
                .binary_search_by(|s| s.as_str().cmp(site))
                .is_ok()
        } else {
            self.start.get(site).is_some_and(StepResult::is_ok)
        };
        expected && !self.site_exits.contains_key(site) && !self.lapsed.contains(site)
    }

    /// Sites whose start was asked and whose answer is still awaited while the run is
    /// starting: they may have started the app. A job that ends now leaves them out of a
    /// run that may still have their app (see [`Run::left_out`]).
    pub fn start_awaited(&self) -> Vec<String> {
        if !matches!(self.step, Some((StartStep::StartingSites, _))) {
            return Vec::new();
        }
        self.sites
            .iter()
            .filter(|s| self.deploy.get(s.as_str()).is_some_and(StepResult::is_ok))
            .filter(|s| !self.start.contains_key(s.as_str()))
            .cloned()
            .collect()
    }

    /// Whether a site's outcome counts for the run: it is one of `job_clients` once the job
    /// is `RUNNING`, else a site that started or whose start answer is awaited.
    pub fn counts_site(&self, site: &str) -> bool {
        // Both lists are sorted.
        if self.started_at.is_some() {
            self.job_clients
                .binary_search_by(|s| s.as_str().cmp(site))
                .is_ok()
        } else {
            // Before the run is RUNNING, a site takes part if it started, or if it
            // deployed and its start answer is still awaited (its exit may arrive before
            // that answer). A site that failed its deploy or its start, or was left out
            // after no reply, has no app whose exit could decide the run.
            match self.start.get(site) {
                Some(result) => result.is_ok(),
                None => self.deploy.get(site).is_some_and(StepResult::is_ok),
            }
        }
    }

    /// True while fedrun's own stop request is in effect.
    pub fn stopping(&self) -> bool {
        self.stop_requested_at.is_some()
    }
}

/// The workspace archive sub-state.
/// Externally tagged, as [`Answer`], so a snapshot reads it without buffering.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Archive {
    /// The job never had a server workspace (it was never dispatched).
    #[default]
    NoWorkspace,
    /// A workspace exists and is not archived yet.
    Pending {
        /// Whether an archive try is under way.
        in_flight: bool,
        /// Failed tries so far.
        failures: u32,
        /// When the first try failed (retries stop `archive_retry_for` after it).
        first_failed_at: Option<Timestamp>,
        /// When the last try failed.
        last_failed_at: Option<Timestamp>,
        /// The last failure's reason.
        last_reason: Option<Box<str>>,
    },
    /// Archived in the blob store.
    Archived {
        /// The archive blob.
        #[serde(with = "crate::lifecycle::event::stored_hash")]
        hash: BlobHash,
    },
    /// Archiving gave up.
    Failed {
        /// The last failure.
        reason: Box<str>,
    },
}

impl Archive {
    /// True unless the archive is pending: download and delete may proceed.
    pub fn is_settled(&self) -> bool {
        !matches!(self, Archive::Pending { .. })
    }
}

/// One job in the projection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The id.
    pub id: JobId,
    /// The validated `meta.json`. It never changes once submitted, so it is shared: the
    /// copy of a job that an event changes (`decide`'s scratch state shares every job
    /// with the published one) copies a pointer, not the meta's strings and maps.
    #[serde(with = "shared_value")]
    pub meta: Arc<JobMeta>,
    /// The package blob.
    #[serde(with = "crate::lifecycle::event::stored_hash")]
    pub package: BlobHash,
    /// Who submitted (or cloned) it; shared with every job and kept request of the same
    /// identity ([`Identities`]).
    #[serde(with = "shared_value")]
    pub submitter: Arc<Identity>,
    /// Who signed it (shared the same way).
    #[serde(with = "shared_value::optional")]
    pub signer: Option<Arc<Identity>>,
    /// When it was submitted.
    pub submit_time: Timestamp,
    /// The sequence number of its `JobSubmitted` (ties in the queue go in history order).
    pub submitted_seq: u64,
    /// The job it was cloned from.
    pub cloned_from: Option<JobId>,
    /// The status.
    pub status: RunStatus,
    /// When the status became terminal.
    pub finished_at: Option<Timestamp>,
    /// The reason recorded with the terminal status.
    pub finish_reason: Option<Box<str>>,
    /// Schedule tries so far.
    pub schedule_count: u32,
    /// When the last try ended.
    pub last_schedule_time: Option<Timestamp>,
    /// One entry per try: time and outcome with reason and numbers.
    pub schedule_history: ScheduleHistory,
    /// The run sub-state and its facts.
    pub run: Run,
    /// The workspace archive sub-state.
    pub archive: Archive,
    /// Hidden from listings; blobs freed once unreferenced.
    pub deleted: bool,
}

/// A job equals itself: its only floating-point values are resource amounts, which
/// fedrun accepts only finite (SPEC section 5), so equality is reflexive. Being `Eq` lets
/// `Arc<Job>` comparisons (the simulator's diff of the jobs map, state equality) stop at
/// a shared pointer instead of comparing the job field by field.
impl Eq for Job {}

impl Job {
    /// Where the job sits in [`State::queue`] while it is `SUBMITTED`.
    pub fn queue_key(&self) -> QueueKey {
        (self.submit_time, self.submitted_seq, self.id)
    }

    /// `duration`: from `start_time` to the end (or `now` while it runs).
    pub fn duration_ms(&self, now: Timestamp) -> Option<i64> {
        let start = self.run.started_at?;
        let end = self.finished_at.unwrap_or(now);
        Some(end.as_millis().saturating_sub(start.as_millis()).max(0))
    }
}

/// What the server knows of a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteFacts {
    /// Whether its connection is up.
    pub connected: bool,
    /// When it last connected or disconnected.
    pub since: Timestamp,
    /// What it declares it can hold.
    pub resources: BTreeMap<String, f64>,
    /// Jobs it said it runs at its last connect.
    pub running: Vec<JobId>,
}

/// The schedule try in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleTry {
    /// Its id (the sequence number of its `ScheduleTryStarted`).
    pub try_id: u64,
    /// The job tried.
    pub job_id: JobId,
    /// When it started.
    pub started_at: Timestamp,
    /// Who was asked for what, sorted by site (shared: it does not change once the try
    /// has started, and a try may ask ten thousand sites).
    #[serde(with = "shared_value")]
    pub asked: Arc<Vec<ResourceRequest>>,
    /// The answers so far (a persistent map: the copy each decision makes is a pointer).
    #[serde(deserialize_with = "cautious::map")]
    pub answers: OrdMap<String, ResourceAnswer>,
}

impl ScheduleTry {
    /// True when every site asked has answered (or was marked as not replying). Only
    /// sites asked may answer (the fold checks it), so counting is enough.
    pub fn complete(&self) -> bool {
        self.answers.len() >= self.asked.len()
    }

    /// Whether the try asked this site (`asked` is sorted by site).
    pub fn asks(&self, site: &str) -> bool {
        self.asked
            .binary_search_by(|r| r.site.as_str().cmp(site))
            .is_ok()
    }
}

/// The restart window: open from `ServerStarted` until `RecoveryFinished`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryWindow {
    /// When the server started.
    pub started_at: Timestamp,
    /// Runs whose server app process re-attached in the window.
    pub reattached: BTreeSet<JobId>,
}

/// One request per site from the grouped form the events store.
fn flatten(groups: &[crate::lifecycle::event::ResourceGroup]) -> Vec<ResourceRequest> {
    groups
        .iter()
        .flat_map(|g| {
            g.sites.iter().map(|site| ResourceRequest {
                site: site.clone(),
                resources: g.resources.clone(),
            })
        })
        .collect()
}

/// The whole projection. Ordered maps only, so iteration (and every output) is
/// deterministic. Serializable: a snapshot is this value with the sequence number it covers.
/// The derived [`LiveIndex`] is not written; loading a state rebuilds it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredState")]
pub struct State {
    /// The last applied event's sequence number (0 before any).
    pub last_seq: u64,
    /// The last applied event's time.
    pub last_at: Timestamp,
    /// The current server run (from the last `ServerStarted`).
    pub boot_id: BootId,
    /// Open while the restart decisions are pending.
    pub recovery: Option<RecoveryWindow>,
    /// Every job ever submitted, deleted ones included, the live ones apart from the
    /// settled ([`Jobs`]). Each job sits behind an `Arc`, so the scratch copy `decide`
    /// works on costs a pointer per job, and only the jobs a decision changes are copied.
    #[serde(with = "shared_values")]
    pub jobs: Jobs,
    /// `SUBMITTED` jobs in queue order: oldest `submit_time` first, ties in history order.
    pub queue: OrdSet<QueueKey>,
    /// The sites, by name. The map and each site are shared, so the scratch copy a
    /// decision works on copies nothing of them until a site connects or leaves (a
    /// federation may have ten thousand sites).
    #[serde(with = "shared_sites")]
    pub sites: Arc<BTreeMap<String, Arc<SiteFacts>>>,
    /// The schedule try in flight (at most one).
    pub schedule_try: Option<ScheduleTry>,
    /// First answers by identity and idempotency key, for 24 hours of event time
    /// (persistent maps: a copy of the state shares them, and recording a request copies
    /// only the path to it).
    pub requests: KeptRequests,
    /// Derived, not stored: what lets the engine's questions (next deadline, `max_jobs`,
    /// settled, blob in use, next due job) look at live jobs only. Kept by the fold.
    #[serde(skip)]
    pub index: LiveIndex,
    /// Derived, not stored: one shared copy of each identity the jobs and kept requests
    /// name.
    #[serde(skip)]
    pub identities: Identities,
}

/// One shared copy of each identity that submitted, signed or sent a kept request: a
/// federation has a few admins and many jobs, and each job would otherwise hold its own
/// copy of its submitter's name and organisation. A cache, not part of the state's value
/// (two states are equal whatever their pools hold), cloned as one pointer; it grows only
/// with identities never seen before.
#[derive(Clone, Debug, Default)]
pub struct Identities(Arc<BTreeSet<Arc<Identity>>>);

impl Identities {
    /// The shared copy of `identity`, added if it is new.
    pub fn share(&mut self, identity: &Identity) -> Arc<Identity> {
        self.shared(identity, || Arc::new(identity.clone()))
    }

    /// The shared copy of `identity`; `identity` itself becomes it if it is new.
    fn adopt(&mut self, identity: &Arc<Identity>) -> Arc<Identity> {
        self.shared(identity, || identity.clone())
    }

    fn shared(
        &mut self,
        identity: &Identity,
        own: impl FnOnce() -> Arc<Identity>,
    ) -> Arc<Identity> {
        if let Some(shared) = self.0.get(identity) {
            return shared.clone();
        }
        let shared = own();
        Arc::make_mut(&mut self.0).insert(shared.clone());
        shared
    }
}

/// Sets the fields of a loaded job that a snapshot does not hold but the fold keeps: each
/// run's stop candidates, the site lists and answers shared as the fold shares them, and
/// the pool's copy of each identity. Copies the job only when one of them differs.
fn derive_loaded(shared: &mut Arc<Job>, identities: &mut Identities) {
    derive_run(shared);
    adopt_identities(shared, identities);
}

/// The run fields of [`derive_loaded`]: stop candidates and shared site lists. They
/// depend on the job alone, so jobs read on several threads can each be given them there.
fn derive_run(shared: &mut Arc<Job>) {
    let candidates = shared.run.stop_candidates_from_exits();
    if candidates != shared.run.stop_candidates {
        Arc::make_mut(shared).run.stop_candidates = candidates;
    }
    let run = &shared.run;
    if !Arc::ptr_eq(&run.job_clients, &run.sites) && run.job_clients == run.sites {
        let run = &mut Arc::make_mut(shared).run;
        run.job_clients = run.sites.clone();
    }
    let mut start = shared.run.start.clone();
    if start.share_if_equal(&shared.run.deploy) {
        Arc::make_mut(shared).run.start = start;
    }
}

/// The identities of [`derive_loaded`]: the job's submitter and signer become the pool's
/// shared copies.
fn adopt_identities(shared: &mut Arc<Job>, identities: &mut Identities) {
    let submitter = identities.adopt(&shared.submitter);
    let signer = shared.signer.as_ref().map(|s| identities.adopt(s));
    let same = |a: &Arc<Identity>, b: &Arc<Identity>| Arc::ptr_eq(a, b);
    let signer_same = match (&signer, &shared.signer) {
        (Some(a), Some(b)) => same(a, b),
        _ => true,
    };
    if !same(&submitter, &shared.submitter) || !signer_same {
        let job = Arc::make_mut(shared);
        job.submitter = submitter;
        job.signer = signer;
    }
}

impl PartialEq for Identities {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The stored fields of [`State`], in the same encoding; reading one rebuilds the index.
#[derive(Deserialize)]
struct StoredState {
    last_seq: u64,
    last_at: Timestamp,
    boot_id: BootId,
    recovery: Option<RecoveryWindow>,
    #[serde(deserialize_with = "loaded_jobs")]
    jobs: Vec<LoadedJob>,
    #[serde(deserialize_with = "cautious::set")]
    queue: OrdSet<QueueKey>,
    #[serde(with = "shared_sites")]
    sites: Arc<BTreeMap<String, Arc<SiteFacts>>>,
    schedule_try: Option<ScheduleTry>,
    requests: KeptRequests,
}

/// Reads the stored jobs map, each job taken in as it is decoded ([`LoadedJob::new`]),
/// no map built first. A job listed twice keeps its last entry, as a map would.
fn loaded_jobs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<LoadedJob>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<LoadedJob>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of jobs by id")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Vec<LoadedJob>, A::Error> {
            let mut jobs = Vec::new();
            while let Some((id, job)) = map.next_entry()? {
                jobs.push(LoadedJob::new(id, job));
            }
            if !jobs.windows(2).all(|pair| pair[0].id < pair[1].id) {
                // Reversed, then a stable sort: of equal ids the last entry comes first,
                // and `dedup` keeps the first of each run.
                jobs.reverse();
                jobs.sort_by_key(|job| job.id);
                jobs.dedup_by_key(|job| job.id);
            }
            Ok(jobs)
        }
    }
    deserializer.deserialize_map(Entries)
}

/// The fields of a stored state other than its jobs, for a reader that takes the jobs
/// apart from the rest (`history::snapshot` reads a large snapshot's jobs on two threads).
/// In the order a stored state holds them, the jobs between `recovery` and `queue`.
#[derive(Debug)]
pub struct StoredFields {
    /// [`State::last_seq`].
    pub last_seq: u64,
    /// [`State::last_at`].
    pub last_at: Timestamp,
    /// [`State::boot_id`].
    pub boot_id: BootId,
    /// [`State::recovery`].
    pub recovery: Option<RecoveryWindow>,
    /// [`State::queue`].
    pub queue: OrdSet<QueueKey>,
    /// [`State::sites`].
    pub sites: Arc<BTreeMap<String, Arc<SiteFacts>>>,
    /// [`State::schedule_try`].
    pub schedule_try: Option<ScheduleTry>,
    /// [`State::requests`].
    pub requests: KeptRequests,
}

/// One job of a stored state, taken in on its own: its run's derived fields set (as
/// [`derive_loaded`] sets them; the identities are adopted when the jobs are put
/// together). Jobs can be taken in on several threads; [`State::from_stored_parts`] puts
/// them together.
#[derive(Debug)]
pub struct LoadedJob {
    id: JobId,
    job: Arc<Job>,
}

impl LoadedJob {
    /// Takes in the job stored under `id`.
    pub fn new(id: JobId, job: Job) -> LoadedJob {
        let mut job = Arc::new(job);
        derive_run(&mut job);
        LoadedJob { id, job }
    }

    /// The id the job was stored under.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// What the job puts into the index.
    pub fn contribution(&self) -> Contribution {
        Contribution::of(&self.job)
    }
}

impl State {
    /// A stored state put together from its fields and its jobs taken in apart, which
    /// must come with distinct ids (as a state stores them), and `index`, which gives the
    /// index of those same jobs: called once the jobs are in their maps (and given them),
    /// so it may instead wait for another thread that builds it meanwhile from the jobs'
    /// contributions ([`LiveIndex::of_parts`]). Both readings of a snapshot, in one piece
    /// and in parts on two threads, put their state together here.
    pub fn from_stored_parts(
        fields: StoredFields,
        jobs: impl IntoIterator<Item = LoadedJob>,
        index: impl FnOnce(&Jobs) -> LiveIndex,
    ) -> State {
        let mut identities = Identities::default();
        let mut all = Jobs::new();
        for LoadedJob { id, mut job } in jobs {
            adopt_identities(&mut job, &mut identities);
            all.insert_new(id, job);
        }
        let index = index(&all);
        State {
            last_seq: fields.last_seq,
            last_at: fields.last_at,
            boot_id: fields.boot_id,
            recovery: fields.recovery,
            jobs: all,
            queue: fields.queue,
            sites: fields.sites,
            schedule_try: fields.schedule_try,
            requests: fields.requests,
            index,
            identities,
        }
    }
}

impl From<StoredState> for State {
    fn from(stored: StoredState) -> State {
        let fields = StoredFields {
            last_seq: stored.last_seq,
            last_at: stored.last_at,
            boot_id: stored.boot_id,
            recovery: stored.recovery,
            queue: stored.queue,
            sites: stored.sites,
            schedule_try: stored.schedule_try,
            requests: stored.requests,
        };
        State::from_stored_parts(fields, stored.jobs, LiveIndex::of_jobs)
    }
}

/// Facts derived from the jobs, kept up to date by [`State::apply`] so that no question
/// the engine asks on every loop or command walks every job ever submitted. Each job
/// puts in its [`Contribution`]; the fold compares a touched job's contribution before
/// and after the event and changes the index where they differ ([`LiveIndex::change`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveIndex {
    /// Jobs with something still to happen: not terminal, a run not settled, an archive
    /// pending, or a left-out site that may run the app. Only these have deadlines.
    pub live: OrdSet<JobId>,
    /// Jobs holding a `max_jobs` slot (see [`State::active_job_count`]).
    pub active: usize,
    /// References to each blob by jobs not deleted (package and archive).
    pub blob_refs: OrdMap<BlobHash, u32>,
    /// `SUBMITTED` jobs by schedule count (0 for a job never tried), then by the time
    /// their back-off counts from (last try, or the submit): the next due job of each
    /// count is the first of its set, so the next due time is the earliest of the
    /// counts' firsts, each plus its count's back-off (which depends on the settings).
    pub due: OrdMap<u32, OrdSet<(Timestamp, QueueKey)>>,
    /// Jobs not deleted, by status (indexed as [`RunStatus::ALL`]): what the metrics
    /// report on every scrape, without a walk of every job ever submitted.
    pub by_status: [usize; RunStatus::ALL.len()],
    /// Jobs with an archive try in flight (`Archive::Pending { in_flight: true }`): the
    /// only jobs a restart changes, so its fold touches these and not every live job.
    pub archiving: OrdSet<JobId>,
    /// Live jobs that may have a deadline of their own ([`job_may_have_timers`]): every
    /// live job but those that only wait in the queue, so the next deadline is looked
    /// for among the jobs in flight and not the whole queue.
    pub timed: OrdSet<JobId>,
    /// True only for the stand-in the state holds while the fold changes its jobs
    /// ([`State::index`] refuses to hand it out).
    in_fold: bool,
    /// True while a replay from nothing folds its records ([`State::begin_replay`]):
    /// only `archiving` is kept (a restart's fold reads it); the rest is built once, when
    /// the replay ends ([`State::end_replay`]). [`State::index`] refuses it meanwhile.
    deferred: bool,
}

/// One part of a [`LiveIndex`] built from contributions ([`LiveIndex::sets_of`]): its
/// job sets, counters and blob reference counts.
#[derive(Debug, Default)]
pub struct IndexSets {
    live: OrdSet<JobId>,
    active: usize,
    by_status: [usize; RunStatus::ALL.len()],
    archiving: OrdSet<JobId>,
    timed: OrdSet<JobId>,
    blob_refs: OrdMap<BlobHash, u32>,
}

/// The other part ([`LiveIndex::due_of`]): the due sets.
#[derive(Debug, Default)]
pub struct IndexDue(OrdMap<u32, OrdSet<(Timestamp, QueueKey)>>);

/// `names` as a shared list: `existing` itself when it holds the same names (a run whose
/// every dispatched site took part keeps one list for both), so a job does not hold two
/// copies of its site names.
fn same_or_new(existing: &Arc<[String]>, names: Vec<String>) -> Arc<[String]> {
    if existing[..] == names[..] {
        existing.clone()
    } else {
        names.into()
    }
}

/// Whether the job has something still to happen (see [`LiveIndex::live`]).
pub fn job_is_live(job: &Job) -> bool {
    !(job.status.is_terminal()
        && matches!(job.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
        && job.archive.is_settled()
        && job.run.left_out.is_empty())
}

/// Whether the job may have a deadline of its own ([`crate::lifecycle::timers`]): it is
/// live and does more than wait in the queue. A `SUBMITTED` job whose run is not under
/// way and has no left-out site has none: no step to time out, no exit or site to wait
/// for, no stop wait, and no archive (it is not terminal).
pub fn job_may_have_timers(job: &Job) -> bool {
    job_is_live(job)
        && !(job.status == RunStatus::Submitted
            && matches!(job.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
            && job.run.left_out.is_empty())
}

/// Whether the job holds a `max_jobs` slot: `DISPATCHED`, `RUNNING`, with a run still
/// stopping, or with a site left out of the run that may still run its app.
pub fn job_holds_slot(job: &Job) -> bool {
    matches!(job.status, RunStatus::Dispatched | RunStatus::Running)
        || job.run.phase == RunPhase::Stopping
        || !job.run.left_out.is_empty()
}

/// The blobs a job refers to while it is not deleted: its package and its archive.
fn job_blobs(job: &Job) -> impl Iterator<Item = BlobHash> + '_ {
    let archive = match &job.archive {
        Archive::Archived { hash } => Some(*hash),
        _ => None,
    };
    std::iter::once(job.package)
        .chain(archive)
        .filter(move |_| !job.deleted)
}

/// What one job puts into the [`LiveIndex`]. The fold takes a job's contribution before
/// an event and after it, and changes the index only where they differ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contribution {
    id: JobId,
    /// In [`LiveIndex::live`].
    live: bool,
    /// Counted in [`LiveIndex::active`].
    slot: bool,
    /// Its package and its archive, while it is not deleted.
    blobs: [Option<BlobHash>; 2],
    /// Its entry in [`LiveIndex::due`] while `SUBMITTED`: schedule count, back-off base
    /// and queue key.
    due: Option<(u32, (Timestamp, QueueKey))>,
    /// In [`LiveIndex::archiving`].
    archiving: bool,
    /// In [`LiveIndex::timed`].
    timed: bool,
    /// Counted in [`LiveIndex::by_status`] under this status (none once deleted).
    counted: Option<RunStatus>,
}

impl Contribution {
    /// The job's contribution as it is now.
    pub fn of(job: &Job) -> Contribution {
        let mut blobs = job_blobs(job);
        Contribution {
            id: job.id,
            live: job_is_live(job),
            slot: job_holds_slot(job),
            blobs: [blobs.next(), blobs.next()],
            due: (job.status == RunStatus::Submitted).then(|| {
                (
                    LiveIndex::due_group(job),
                    (LiveIndex::due_base(job), job.queue_key()),
                )
            }),
            archiving: matches!(
                job.archive,
                Archive::Pending {
                    in_flight: true,
                    ..
                }
            ),
            timed: job_may_have_timers(job),
            counted: (!job.deleted).then_some(job.status),
        }
    }
}

impl LiveIndex {
    /// The stand-in for the index while the fold changes the jobs.
    fn in_fold() -> LiveIndex {
        LiveIndex {
            in_fold: true,
            ..LiveIndex::default()
        }
    }

    /// The index of these jobs, built in one go: the blob counts and due sets are sorted
    /// first and filled in order, since filling a persistent map in random order costs a
    /// cache miss at each step of each insert.
    pub fn of_jobs(jobs: &Jobs) -> LiveIndex {
        let contributions: Vec<Contribution> =
            jobs.iter().map(|(_, job)| Contribution::of(job)).collect();
        LiveIndex::of_parts(
            LiveIndex::sets_of(&contributions),
            LiveIndex::due_of(&contributions),
        )
    }

    /// The job sets, counters and blob reference counts of the index of the jobs these
    /// are the contributions of: one of its two parts, which two threads can build at
    /// once ([`LiveIndex::of_parts`]). A start-up fills the jobs map and then the due
    /// sets on one thread while another builds this part: filling each persistent
    /// collection costs about the same per entry, and so the two threads finish together.
    pub fn sets_of<'a>(contributions: impl IntoIterator<Item = &'a Contribution>) -> IndexSets {
        let mut sets = IndexSets::default();
        let mut blobs = Vec::new();
        for c in contributions {
            blobs.extend(c.blobs.into_iter().flatten());
            if c.live {
                sets.live.insert(c.id);
            }
            if c.archiving {
                sets.archiving.insert(c.id);
            }
            if c.timed {
                sets.timed.insert(c.id);
            }
            if c.slot {
                sets.active += 1;
            }
            if let Some(status) = c.counted {
                sets.by_status[status.index()] += 1;
            }
        }
        blobs.sort_unstable();
        for same in blobs.chunk_by(|a, b| a == b) {
            let count = u32::try_from(same.len()).expect("fewer than 2^32 jobs per blob");
            sets.blob_refs.insert(same[0], count);
        }
        sets
    }

    /// The due sets of the index: its other part.
    pub fn due_of<'a>(contributions: impl IntoIterator<Item = &'a Contribution>) -> IndexDue {
        let mut due: Vec<_> = contributions.into_iter().filter_map(|c| c.due).collect();
        due.sort_unstable();
        let mut sets = OrdMap::new();
        for group in due.chunk_by(|a, b| a.0 == b.0) {
            let set = group.iter().map(|(_, entry)| *entry).collect();
            sets.insert(group[0].0, set);
        }
        IndexDue(sets)
    }

    /// The index whose two parts, built from the same contributions, these are.
    pub fn of_parts(sets: IndexSets, due: IndexDue) -> LiveIndex {
        LiveIndex {
            live: sets.live,
            active: sets.active,
            blob_refs: sets.blob_refs,
            due: due.0,
            by_status: sets.by_status,
            archiving: sets.archiving,
            timed: sets.timed,
            in_fold: false,
            deferred: false,
        }
    }

    /// Replaces one job's contribution `before` (`None`: the job was not in the index)
    /// by `after` (`None`: it leaves), changing only what differs: an event that moves a
    /// queued job to its next schedule count touches the due index alone.
    pub fn change(&mut self, before: Option<&Contribution>, after: Option<&Contribution>) {
        let Some(id) = before.or(after).map(|c| c.id) else {
            return;
        };
        let member = |c: Option<&Contribution>, of: fn(&Contribution) -> bool| c.is_some_and(of);
        if self.deferred {
            match (
                member(before, |c| c.archiving),
                member(after, |c| c.archiving),
            ) {
                (false, true) => {
                    self.archiving.insert(id);
                }
                (true, false) => {
                    self.archiving.remove(&id);
                }
                _ => {}
            }
            return;
        }
        for (set, of) in [
            (&mut self.live, (|c| c.live) as fn(&Contribution) -> bool),
            (&mut self.archiving, |c| c.archiving),
            (&mut self.timed, |c| c.timed),
        ] {
            match (member(before, of), member(after, of)) {
                (false, true) => {
                    set.insert(id);
                }
                (true, false) => {
                    set.remove(&id);
                }
                _ => {}
            }
        }
        let slot = |c: Option<&Contribution>| c.is_some_and(|c| c.slot);
        match (slot(before), slot(after)) {
            (false, true) => self.active += 1,
            (true, false) => self.active -= 1,
            _ => {}
        }
        let blobs = |c: Option<&Contribution>| c.map_or([None, None], |c| c.blobs);
        let (old, new) = (blobs(before), blobs(after));
        if old != new {
            for hash in old.into_iter().flatten() {
                if let Some(count) = self.blob_refs.get_mut(&hash) {
                    *count -= 1;
                    if *count == 0 {
                        self.blob_refs.remove(&hash);
                    }
                }
            }
            // One walk for a blob already counted, two for a new one (imbl's `entry`
            // walks three times for a new key: looks, inserts, then finds it again).
            for hash in new.into_iter().flatten() {
                match self.blob_refs.get_mut(&hash) {
                    Some(count) => *count += 1,
                    None => {
                        self.blob_refs.insert(hash, 1);
                    }
                }
            }
        }
        let counted = |c: Option<&Contribution>| c.and_then(|c| c.counted);
        let (old, new) = (counted(before), counted(after));
        if old != new {
            if let Some(status) = old {
                self.by_status[status.index()] -= 1;
            }
            if let Some(status) = new {
                self.by_status[status.index()] += 1;
            }
        }
        let due = |c: Option<&Contribution>| c.and_then(|c| c.due);
        let (old, new) = (due(before), due(after));
        if old != new {
            if let Some((count, entry)) = old {
                if let Some(set) = self.due.get_mut(&count) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.due.remove(&count);
                    }
                }
            }
            if let Some((count, entry)) = new {
                match self.due.get_mut(&count) {
                    Some(set) => {
                        set.insert(entry);
                    }
                    None => {
                        self.due.insert(count, OrdSet::unit(entry));
                    }
                }
            }
        }
    }

    /// The time a queued job's back-off counts from.
    fn due_base(job: &Job) -> Timestamp {
        job.last_schedule_time.unwrap_or(job.submit_time)
    }

    /// The schedule count whose back-off applies: none (0) for a job never tried.
    fn due_group(job: &Job) -> u32 {
        match job.last_schedule_time {
            Some(_) => job.schedule_count,
            None => 0,
        }
    }

    /// References to the blob by jobs not deleted.
    pub fn blob_refs(&self, hash: &BlobHash) -> u32 {
        self.blob_refs.get(hash).copied().unwrap_or(0)
    }
}

/// How long an idempotency key is kept, in event time (SPEC section 9).
pub const REQUEST_KEY_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An idempotency key belongs to the identity that sent it: the same key from two admins
/// is two requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestKey {
    /// Who sent it (shared with the jobs and keys of the same identity).
    pub identity: Arc<Identity>,
    /// The key (boxed: 8 bytes less in every kept request than a `String`).
    pub key: Box<str>,
}

/// By identity, then key. Keys of one identity usually share its `Arc`, which then
/// compares equal without comparing its strings (the order is the same either way).
impl Ord for RequestKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let identity = if Arc::ptr_eq(&self.identity, &other.identity) {
            std::cmp::Ordering::Equal
        } else {
            self.identity.cmp(&other.identity)
        };
        identity.then_with(|| self.key.cmp(&other.key))
    }
}

impl PartialOrd for RequestKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What one admin request was: its operation, the job it was about, and the package it
/// carried. A key sent again with another request is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFingerprint {
    /// `submit`, `abort`, `delete`, `clone`, `download` or `logs`.
    pub operation: OperationName,
    /// The job it was about (the source job for a clone; none for a submit).
    pub job_id: Option<JobId>,
    /// The package of a submit; `None` when the record does not tell (a refused submit).
    #[serde(default, with = "crate::lifecycle::event::stored_hash::option")]
    pub package: Option<BlobHash>,
}

/// The admin operations a fingerprint names.
const OPERATIONS: [&str; 6] = ["submit", "abort", "delete", "clone", "download", "logs"];

/// An operation's name as a kept request holds it: one of the six admin operations by
/// its place in their list (no copy per request), any other name in a box of its own.
/// 16 bytes, where a `Cow<'static, str>` took 24: that keeps a kept request within
/// mimalloc's 128-byte class instead of the 160-byte one. Written as the name.
#[derive(Clone)]
pub struct OperationName(OperationRepr);

#[derive(Clone)]
enum OperationRepr {
    /// `OPERATIONS[i]`.
    Known(u8),
    /// A name that is none of them (an older or foreign record's).
    Other(Box<str>),
}

impl OperationName {
    /// The name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            OperationRepr::Known(i) => OPERATIONS[usize::from(*i)],
            OperationRepr::Other(name) => name,
        }
    }
}

impl From<&str> for OperationName {
    fn from(name: &str) -> Self {
        OperationName(match OPERATIONS.iter().position(|o| *o == name) {
            Some(i) => OperationRepr::Known(i as u8),
            None => OperationRepr::Other(name.into()),
        })
    }
}

impl std::ops::Deref for OperationName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for OperationName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for OperationName {}

impl std::fmt::Debug for OperationName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for OperationName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OperationName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = OperationName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an operation's name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<OperationName, E> {
                Ok(OperationName::from(name))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl RequestFingerprint {
    /// Whether `new` is the same request as the one kept (`self`). A kept fingerprint
    /// without a package matches any package.
    pub fn same_request(&self, new: &RequestFingerprint) -> bool {
        self.operation == new.operation
            && self.job_id == new.job_id
            && (self.package.is_none() || self.package == new.package)
    }
}

/// The first answer to one admin request, with what the request was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptRequest {
    /// The first answer. A refusal sits behind a box: nearly every kept answer is an
    /// acceptance, and a [`Rejection`] held inline would make every kept request 56 bytes
    /// larger. Written as the plain [`Reply`].
    pub reply: Result<Answer, Box<Rejection>>,
    /// When the request was recorded.
    pub at: Timestamp,
    /// What the request was.
    pub fingerprint: RequestFingerprint,
    /// The sequence number of the request's last event so far.
    pub last_seq: u64,
}

impl KeptRequest {
    /// The first answer, as it was given.
    pub fn reply(&self) -> Reply {
        self.reply.clone().map_err(|rejection| *rejection)
    }
}

/// The kept requests, by key and by time (so expired keys are dropped in order). Both are
/// persistent maps; only the map by key is written (as the plain map), the one by time
/// holds the same keys with the times their requests hold and is rebuilt from it when
/// read, sharing its keys. Keys and answers sit behind `Arc`: a copy of the state that
/// records a request copies the maps' nodes on the path to it, and copying a node then
/// costs a reference count per entry instead of a copy of each entry's strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeptRequests {
    /// By identity and key.
    pub by_key: OrdMap<Arc<RequestKey>, Arc<KeptRequest>>,
    /// The same keys by the time they were recorded (each key's request's `at`).
    pub by_time: OrdSet<(Timestamp, Arc<RequestKey>)>,
}

impl Serialize for KeptRequests {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_key.serialize(serializer)
    }
}

/// Reads the map by key straight into its persistent map (a key listed twice keeps its
/// last entry, as a map would), the keys of one identity sharing one copy of it, then
/// rebuilds the list by time.
impl<'de> Deserialize<'de> for KeptRequests {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = OrdMap<Arc<RequestKey>, Arc<KeptRequest>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of kept requests by key")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut by_key = OrdMap::new();
                let mut identities = Identities::default();
                while let Some((mut key, kept)) = map.next_entry::<RequestKey, KeptRequest>()? {
                    key.identity = identities.adopt(&key.identity);
                    by_key.insert(Arc::new(key), Arc::new(kept));
                }
                Ok(by_key)
            }
        }
        let by_key = deserializer.deserialize_map(Entries)?;
        let by_time = by_key
            .iter()
            .map(|(key, kept)| (kept.at, key.clone()))
            .collect();
        Ok(KeptRequests { by_key, by_time })
    }
}

impl KeptRequests {
    /// Forgets the keys that have run out by `now`. Costs about the smaller of the keys
    /// forgotten and the keys kept: when more run out than stay (a server back after
    /// most of a day away, whose start is the first event since), the maps are built
    /// again from the keys that stay instead of losing the others one by one.
    fn forget_expired(&mut self, now: Timestamp) {
        let ran_out = |at: &Timestamp| now >= at.plus(REQUEST_KEY_KEPT_FOR);
        // Most events forget nothing: the oldest key, found without an iterator (an
        // `imbl` iterator seeks both ends, with two allocations), says so.
        if !self.by_time.get_min().is_some_and(|(at, _)| ran_out(at)) {
            return;
        }
        let half = self.by_time.len() / 2;
        let forgotten = self
            .by_time
            .iter()
            .take_while(|(at, _)| ran_out(at))
            .take(half + 1)
            .count();
        if forgotten > half {
            let mut stay = KeptRequests::default();
            for (at, key) in self.by_time.iter().rev().take_while(|(at, _)| !ran_out(at)) {
                if let Some(kept) = self.by_key.get(key).filter(|k| k.at == *at) {
                    stay.by_key.insert(key.clone(), kept.clone());
                    stay.by_time.insert((*at, key.clone()));
                }
            }
            *self = stay;
            return;
        }
        for _ in 0..forgotten {
            if let Some((at, key)) = self.by_time.remove_min() {
                if self.by_key.get(&key).is_some_and(|k| k.at == at) {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// The kept request under this key, unless it has expired by `at`.
    pub fn get(&self, key: &RequestKey, at: Timestamp) -> Option<&KeptRequest> {
        self.by_key
            .get(key)
            .map(|kept| &**kept)
            .filter(|kept| at < kept.at.plus(REQUEST_KEY_KEPT_FOR))
    }
}

/// A job's place in the queue: its `submit_time`, then its submit record's sequence
/// number (history order for ties), then its id.
pub type QueueKey = (Timestamp, u64, JobId);

/// Serde glue: a map whose values sit behind `Arc`, written as the plain map.
mod shared_values {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the map (any ordered map of shared values) with its values unwrapped.
    pub fn serialize<'a, K, V, M, S>(map: &'a M, serializer: S) -> Result<S::Ok, S::Error>
    where
        K: Serialize + 'a,
        V: Serialize + 'a,
        &'a M: IntoIterator<Item = (&'a K, &'a Arc<V>)>,
        S: Serializer,
    {
        serializer.collect_map(map.into_iter().map(|(k, v)| (k, &**v)))
    }

    /// Reads a plain map and wraps each value.
    pub fn deserialize<'de, K, V, M, D>(deserializer: D) -> Result<M, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        M: FromIterator<(K, Arc<V>)>,
        D: Deserializer<'de>,
    {
        let plain = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(plain.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}

/// Serde glue for imbl's ordered sets and maps, read through a `Vec` or a `BTreeMap`:
/// imbl's own reading reserves room for as many entries as the bytes claim (a snapshot
/// whose queue claimed billions of jobs in a few bytes aborted the process), serde's std
/// collections reserve no more than a little ahead of what they have read. The same
/// values come out: a set of the elements, a map whose repeated keys keep their last value.
pub(crate) mod cautious {
    use std::collections::BTreeMap;

    use imbl::{OrdMap, OrdSet};
    use serde::{Deserialize, Deserializer};

    /// Reads an imbl set.
    pub fn set<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        Vec::<T>::deserialize(deserializer).map(OrdSet::from)
    }

    /// Reads an imbl map.
    pub fn map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        BTreeMap::<K, V>::deserialize(deserializer).map(|map| map.into_iter().collect())
    }
}

/// Serde glue: the shared map of shared sites, written as the plain map.
pub(crate) mod shared_sites {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::{Deserializer, Serializer};

    use super::SiteFacts;

    /// Writes the map with its values unwrapped.
    pub fn serialize<S: Serializer>(
        map: &Arc<BTreeMap<String, Arc<SiteFacts>>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::shared_values::serialize(&**map, serializer)
    }

    /// Reads a plain map and wraps it.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<BTreeMap<String, Arc<SiteFacts>>>, D::Error> {
        super::shared_values::deserialize(deserializer).map(Arc::new)
    }
}

/// Serde glue: a value behind `Arc`, written as the plain value. Read straight into its
/// `Arc` (serde's own `Arc<T>` reads a `Box<T>` first, then moves it into a new
/// allocation: two allocations and a copy for each job's meta and identities).
mod shared_value {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the value itself.
    pub fn serialize<V: Serialize, S: Serializer>(
        value: &Arc<V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        (**value).serialize(serializer)
    }

    /// Reads the value and wraps it.
    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<V>, D::Error> {
        V::deserialize(deserializer).map(Arc::new)
    }

    /// The same for an optional value.
    pub mod optional {
        use std::sync::Arc;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes the value itself, or nil.
        pub fn serialize<V: Serialize, S: Serializer>(
            value: &Option<Arc<V>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            value.as_deref().serialize(serializer)
        }

        /// Reads the value, or nil, and wraps it.
        pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Arc<V>>, D::Error> {
            Ok(Option::<V>::deserialize(deserializer)?.map(Arc::new))
        }
    }
}

impl State {
    /// An empty state: no events applied.
    pub fn new() -> Self {
        State::default()
    }

    /// The job, deleted or not.
    pub fn job(&self, job_id: &JobId) -> Option<&Job> {
        self.jobs.get(job_id).map(|j| &**j)
    }

    /// The job, unless it does not exist or was deleted.
    pub fn live_job(&self, job_id: &JobId) -> Option<&Job> {
        self.jobs.get(job_id).map(|j| &**j).filter(|j| !j.deleted)
    }

    /// When every left-out site of the run counts as ended by SPEC section 8's rule (a
    /// stop is over): a connected one `abort_grace + client_outcome_wait` after it was
    /// last told to stop (its connect, or the run's stop request if later), an away one
    /// when its `site_reconnect_grace` runs out. `None` without left-out sites.
    pub fn left_out_wait_end(
        &self,
        run: &Run,
        settings: &crate::settings::Settings,
    ) -> Option<Timestamp> {
        run.left_out
            .iter()
            .map(|site| match self.sites.get(site) {
                Some(facts) if !facts.connected => facts.since.plus(settings.site_reconnect_grace),
                facts => {
                    let since = facts.map_or(self.last_at, |f| f.since);
                    let asked = run.stop_requested_at.map_or(since, |at| at.max(since));
                    asked.plus(settings.abort_grace + settings.client_outcome_wait)
                }
            })
            .max()
    }

    /// Jobs counted against `max_jobs`: `DISPATCHED`, `RUNNING`, with a run still stopping,
    /// or with a site left out of the run that may still run its app ([`job_holds_slot`]).
    /// A counter kept by the fold.
    pub fn active_job_count(&self) -> usize {
        self.index().active
    }

    /// The jobs that may still have something to happen ([`job_is_live`]), by id. Every
    /// other job is terminal and settled, and has no deadline.
    pub fn live_jobs(&self) -> impl Iterator<Item = &Job> {
        self.index().live.iter().filter_map(|id| self.job(id))
    }

    /// The live jobs that may have a deadline of their own ([`job_may_have_timers`]), by
    /// id: those in flight, not those that only wait in the queue.
    pub fn timed_jobs(&self) -> impl Iterator<Item = &Job> {
        self.index().timed.iter().filter_map(|id| self.job(id))
    }

    /// True when nothing is left to happen by itself: no job queued or in flight, every
    /// run and archive settled, no schedule try, and no restart decision pending. (A
    /// simulation that reaches this point has ended `all_terminal`.) Looks at live jobs
    /// only: a job outside [`LiveIndex::live`] is terminal and settled.
    pub fn all_settled(&self) -> bool {
        self.recovery.is_none()
            && self.schedule_try.is_none()
            && self.live_jobs().all(|j| {
                j.status.is_terminal()
                    && matches!(j.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
                    && j.archive.is_settled()
            })
    }

    /// The derived facts kept by the fold. Panics in debug builds when called from inside
    /// the fold, where the index is out of step with the jobs being changed.
    pub fn index(&self) -> &LiveIndex {
        debug_assert!(
            !self.index.deferred,
            "the live index was read during a replay that builds it at its end"
        );
        debug_assert!(
            !self.index.in_fold,
            "the live index was read while the fold was changing the jobs"
        );
        &self.index
    }

    /// A replay from nothing is about to fold a history into this state: the derived
    /// index (but for the archive tries in flight, which a restart's fold reads) is then
    /// built once, from the jobs, when it ends ([`State::end_replay`]), instead of being
    /// kept in step with every record. Nothing happens when the state already holds a
    /// job (a snapshot's tail keeps its index in step: it is short, the jobs many).
    pub fn begin_replay(&mut self) {
        if self.jobs.is_empty() {
            self.index.deferred = true;
        }
    }

    /// The end of the replay [`State::begin_replay`] began: builds the index it deferred.
    /// The index is then the one a fold of every record one at a time keeps.
    pub fn end_replay(&mut self) {
        self.end_replay_with(LiveIndex::of_jobs);
    }

    /// [`State::end_replay`] with the index built by `index` from the jobs (which must
    /// build the index of those jobs: the history layer builds its two parts on two
    /// threads, as it does for a snapshot's jobs).
    pub fn end_replay_with(&mut self, index: impl FnOnce(&Jobs) -> LiveIndex) {
        if self.index.deferred {
            self.index = index(&self.jobs);
        }
    }

    /// Recomputes the derived facts ([`LiveIndex`], each run's
    /// [`Run::stop_candidates`]) from the jobs. Loading a state calls it; so must any
    /// code that builds a `State` from its fields.
    pub fn rebuild_index(&mut self) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for job_id in ids {
            if let Some(shared) = self.jobs.get_mut(&job_id) {
                derive_loaded(shared, &mut self.identities);
            }
        }
        self.index = LiveIndex::of_jobs(&self.jobs);
    }

    /// The connected sites, by name.
    pub fn connected_sites(&self) -> impl Iterator<Item = (&String, &SiteFacts)> {
        self.sites
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(name, s)| (name, &**s))
    }

    /// Whether any job not deleted other than `except` refers to the blob (package or
    /// archive). A reference count kept by the fold.
    pub fn blob_in_use(&self, hash: &BlobHash, except: &JobId) -> bool {
        let own = self
            .job(except)
            .map_or(0, |j| job_blobs(j).filter(|h| h == hash).count());
        self.index().blob_refs(hash) as usize > own
    }

    /// Folds one event decided by `decide`. Panics on a sequence gap or an illegal record,
    /// which would mean `decide` itself broke a rule; replay of stored records uses
    /// [`State::apply_checked`] instead.
    pub fn apply(&mut self, event: &Event) {
        if let Err(err) = self.apply_checked(event) {
            panic!("an event from decide must always be legal: {err}");
        }
    }

    /// Checks the record the way `decide` would (order, time, transition) and folds it.
    /// On error the state is unchanged and the error names the record's sequence number.
    pub fn apply_checked(&mut self, event: &Event) -> Result<(), ReplayError> {
        self.check_next(event)?;
        self.fold(event, None);
        Ok(())
    }

    /// [`State::apply_checked`] for a caller that hands the event over (a replay): a
    /// submitted job's meta moves into the job instead of being copied.
    pub fn apply_owned(&mut self, mut event: Event) -> Result<(), ReplayError> {
        self.check_next(&event)?;
        let meta = match &mut event.kind {
            EventKind::JobSubmitted { meta, .. } => Some(std::mem::replace(
                meta,
                JobMeta {
                    name: String::new(),
                    deploy_map: Vec::new(),
                    min_clients: 0,
                    mandatory_clients: Vec::new(),
                    resource_spec: Default::default(),
                },
            )),
            _ => None,
        };
        self.fold(&event, meta);
        Ok(())
    }

    /// Whether `event` may come next: its order, its time and its transition.
    fn check_next(&self, event: &Event) -> Result<(), ReplayError> {
        let expected = self.last_seq + 1;
        if event.seq != expected {
            return Err(ReplayError::OutOfOrder {
                seq: event.seq,
                expected,
            });
        }
        if event.at < self.last_at {
            return Err(ReplayError::TimeWentBack {
                seq: event.seq,
                at_ms: event.at.as_millis(),
                previous_ms: self.last_at.as_millis(),
            });
        }
        self.check(event)
            .map_err(|reason| ReplayError::IllegalTransition {
                seq: event.seq,
                kind: event.kind.name(),
                reason,
            })
    }

    fn job_in(&self, job_id: &JobId, allowed: &[RunStatus], what: &str) -> Result<&Job, String> {
        let job = self.job_exists(job_id)?;
        if !allowed.contains(&job.status) {
            return Err(format!("job {job_id} is {} and cannot {what}", job.status));
        }
        Ok(job)
    }

    fn job_exists(&self, job_id: &JobId) -> Result<&Job, String> {
        self.jobs
            .get(job_id)
            .map(|j| &**j)
            .ok_or_else(|| format!("job {job_id} does not exist"))
    }

    /// The legality of a record against the state so far, as `decide` would make it; no
    /// mutation. Besides the transition itself it checks what `decide` always fills in
    /// (actors, ids, bounds), so a record `decide` could never have made is refused.
    fn check(&self, event: &Event) -> Result<(), String> {
        use EventKind::*;
        use RunStatus::*;
        let kind = &event.kind;
        let admin_actor = || match &event.actor {
            crate::lifecycle::actor::Actor::Admin { .. } => Ok(()),
            other => Err(format!("an admin request recorded with actor {other}")),
        };
        let site_name = |site: &str| {
            if site.is_empty()
                || site.len() > crate::lifecycle::event::MAX_ID_BYTES
                || site == crate::job::meta::SERVER
            {
                Err(format!(
                    "{:?} is not a valid site name",
                    site.chars().take(40).collect::<String>()
                ))
            } else {
                Ok(())
            }
        };
        match kind {
            ServerStarted { boot_id } => {
                if *boot_id != event.boot_id {
                    return Err(format!(
                        "boot id {boot_id} differs from the envelope's {}",
                        event.boot_id
                    ));
                }
                Ok(())
            }
            SiteConnected { site, .. } => site_name(site),
            SiteDisconnected { site } => {
                site_name(site)?;
                match self.sites.get(site) {
                    Some(facts) if facts.connected => Ok(()),
                    _ => Err(format!("site {site} is not connected")),
                }
            }
            RecoveryFinished => match self.recovery {
                Some(_) => Ok(()),
                None => Err("no recovery window is open".into()),
            },
            RequestRefused { .. } => admin_actor(),
            JobSubmitted {
                job_id,
                cloned_from,
                meta,
                package,
                submitter,
                submit_time,
                ..
            } => {
                admin_actor()?;
                if self.jobs.contains_key(job_id) {
                    return Err(format!("job {job_id} already exists"));
                }
                if *submit_time != event.at {
                    return Err(format!(
                        "submit time {submit_time} is not the event's time {}",
                        event.at
                    ));
                }
                if meta.app_for(crate::job::meta::SERVER).is_none() {
                    return Err(format!("job {job_id}'s meta has no app for the server"));
                }
                let actor = event.actor.identity();
                match cloned_from {
                    Some(source) => {
                        let source = self.job_exists(source)?;
                        if source.package != *package {
                            return Err(format!(
                                "clone {job_id} has another package than its source"
                            ));
                        }
                        // A clone keeps its source's submitter (version-1 records named
                        // the cloner instead).
                        if *submitter != *source.submitter && actor.as_ref() != Some(submitter) {
                            return Err(format!("clone {job_id} names another submitter"));
                        }
                    }
                    None if actor.as_ref() != Some(submitter) => {
                        return Err(format!(
                            "job {job_id}'s submitter is not the admin who submitted it"
                        ));
                    }
                    None => {}
                }
                Ok(())
            }
            ScheduleTryStarted { job_id, try_id, .. } => {
                self.job_in(job_id, &[Submitted], "be tried")?;
                if *try_id != event.seq {
                    return Err(format!(
                        "try id {try_id} is not the event's sequence number"
                    ));
                }
                match &self.schedule_try {
                    Some(t) => Err(format!("try {} is still in flight", t.try_id)),
                    None => Ok(()),
                }
            }
            ResourceAnswered { job_id, .. }
                if self
                    .schedule_try
                    .as_ref()
                    .is_some_and(|t| t.job_id != *job_id) =>
            {
                Err(format!("the try in flight is not job {job_id}'s"))
            }
            ResourceAnswered { try_id, site, .. } => match &self.schedule_try {
                Some(t) if t.try_id == *try_id && t.asks(site) && !t.answers.contains_key(site) => {
                    Ok(())
                }
                _ => Err(format!(
                    "try {try_id} is not in flight or did not ask {site}"
                )),
            },
            ScheduleTryExtended { job_id, try_id, .. } => match &self.schedule_try {
                Some(t) if t.try_id == *try_id && t.job_id == *job_id && t.answers.is_empty() => {
                    Ok(())
                }
                _ => Err(format!("try {try_id} of job {job_id} is not just started")),
            },
            JobDispatchExtended { job_id, sites, .. } => {
                let job = self.job_in(job_id, &[Dispatched], "extend its dispatch")?;
                let in_order = match (job.run.sites.last(), sites.first()) {
                    (Some(last), Some(first)) => last < first,
                    _ => true,
                };
                if !matches!(job.run.step, Some((StartStep::DeployingServer, _)))
                    || !job.run.deploy.is_empty()
                    || !in_order
                {
                    return Err(format!("job {job_id}'s dispatch cannot be extended now"));
                }
                Ok(())
            }
            RunClientsAdded {
                job_id,
                job_clients,
            } => {
                let job = self.job_in(job_id, &[Running], "add run clients")?;
                let in_order = match (job.run.job_clients.last(), job_clients.first()) {
                    (Some(last), Some(first)) => last < first,
                    _ => true,
                };
                if !in_order || job_clients.iter().any(|s| !job.run.was_sent(s)) {
                    return Err(format!(
                        "job {job_id}'s added clients are not new sites of its run"
                    ));
                }
                Ok(())
            }
            ServerAppLost { job_id } => {
                let job = self.job_exists(job_id)?;
                if self.recovery.is_none() {
                    return Err("no recovery window is open".into());
                }
                if !(job.run.server_outstanding() || job.run.server_step_in_flight()) {
                    return Err(format!("job {job_id} has no server app that may run"));
                }
                Ok(())
            }
            ScheduleTryCancelled { try_id, job_id } => match &self.schedule_try {
                Some(t) if t.try_id == *try_id && t.job_id == *job_id => Ok(()),
                _ => Err(format!("try {try_id} is not in flight")),
            },
            ScheduleAttempted { job_id, outcome } => {
                self.job_in(job_id, &[Submitted], "be tried")?;
                let try_of_job = self.schedule_try.as_ref().filter(|t| t.job_id == *job_id);
                match (outcome, &self.schedule_try, try_of_job) {
                    (crate::lifecycle::event::ScheduleOutcome::Dispatched { .. }, _, Some(t))
                        if t.complete() =>
                    {
                        Ok(())
                    }
                    (crate::lifecycle::event::ScheduleOutcome::Dispatched { .. }, _, _) => Err(
                        format!("job {job_id} has no completed try to be dispatched from"),
                    ),
                    (_, None, _) => Ok(()),
                    (_, Some(_), Some(t)) if t.complete() => Ok(()),
                    (_, Some(t), _) => Err(format!(
                        "try {} is in flight; no other try can end now",
                        t.try_id
                    )),
                }
            }
            JobDispatched {
                job_id,
                sites,
                reservations,
            } => {
                self.job_in(job_id, &[Submitted], "be dispatched")?;
                let job = self.job_exists(job_id)?;
                if job.schedule_count == 0 || job.last_schedule_time != Some(event.at) {
                    return Err(format!(
                        "job {job_id} is dispatched without a try that just ended"
                    ));
                }
                if sites.windows(2).any(|w| w[0] >= w[1])
                    || reservations.keys().any(|s| !sites.contains(s))
                {
                    return Err(format!(
                        "job {job_id}'s dispatch lists unsorted sites, or tokens of other sites"
                    ));
                }
                Ok(())
            }
            DeployFinished {
                job_id,
                participant,
                ..
            }
            | StartFinished {
                job_id,
                participant,
                ..
            } => {
                let job = self.job_exists(job_id)?;
                // After an abort, only the server's awaited answer may still be recorded.
                let late_server_answer = job.status.is_terminal()
                    && participant == crate::job::meta::SERVER
                    && job.run.server_step_in_flight();
                if job.status != Dispatched && !late_server_answer {
                    return Err(format!(
                        "job {job_id} is {} and cannot record a start-up step",
                        job.status
                    ));
                }
                let is_server = participant == crate::job::meta::SERVER;
                let (answers, expected) = match kind {
                    DeployFinished { .. } if is_server => {
                        (&job.run.deploy, StartStep::DeployingServer)
                    }
                    DeployFinished { .. } => (&job.run.deploy, StartStep::DeployingSites),
                    _ if is_server => (&job.run.start, StartStep::StartingServer),
                    _ => (&job.run.start, StartStep::StartingSites),
                };
                if answers.contains_key(participant.as_str()) {
                    return Err(format!(
                        "{participant} already answered this step of job {job_id}"
                    ));
                }
                if !matches!(job.run.step, Some((step, _)) if step == expected) {
                    return Err(format!(
                        "job {job_id} is not waiting for {participant}'s answer to this step"
                    ));
                }
                let known =
                    participant == crate::job::meta::SERVER || job.run.was_sent(participant);
                if known {
                    Ok(())
                } else {
                    Err(format!(
                        "{participant} is not a participant of job {job_id}"
                    ))
                }
            }
            RunStarted {
                job_id,
                job_clients,
            } => {
                let job = self.job_in(job_id, &[Dispatched], "start running")?;
                if !matches!(job.run.step, Some((StartStep::StartingSites, _)))
                    || !job.run.server_started()
                {
                    return Err(format!("job {job_id}'s apps have not been started"));
                }
                let started =
                    |s: &String| job.run.start.get(s.as_str()).is_some_and(StepResult::is_ok);
                if !job_clients.iter().all(started) {
                    return Err(format!(
                        "job {job_id}'s clients include a site whose app did not start"
                    ));
                }
                Ok(())
            }
            ServerAppExited { job_id, .. } => {
                let job = self.job_exists(job_id)?;
                if job.run.server_exit.is_some() {
                    return Err(format!("job {job_id}'s server app already exited"));
                }
                let may_exit = job.run.server_started()
                    || matches!(job.run.step, Some((StartStep::StartingServer, _)));
                if !may_exit || job.run.server_lost {
                    return Err(format!("job {job_id}'s server app was not running"));
                }
                Ok(())
            }
            SiteOutcomeReported {
                job_id,
                report_id,
                site,
                stop_requested,
                ..
            } => {
                let job = self.job_exists(job_id)?;
                if job.run.report_ids.contains(report_id.as_str()) {
                    return Err(format!("report {report_id} is already recorded"));
                }
                if report_id.is_empty() || report_id.len() > crate::lifecycle::event::MAX_ID_BYTES {
                    return Err("the report id is empty or too long".into());
                }
                // Records that carry the stop flag come from a decide that records one
                // exit per site the job was sent to; version-1 records did not check.
                if stop_requested.is_some()
                    && (!job.run.was_sent(site) || job.run.site_exits.contains_key(site.as_str()))
                {
                    return Err(format!(
                        "site {site} was not sent job {job_id} or already reported its exit"
                    ));
                }
                Ok(())
            }
            SiteReportLapsed { job_id, site } => {
                let job = self.job_exists(job_id)?;
                let expected = if job.run.started_at.is_some() {
                    job.run.job_clients.binary_search(site).is_ok()
                } else {
                    job.run
                        .start
                        .get(site.as_str())
                        .is_some_and(StepResult::is_ok)
                };
                if !expected
                    || job.run.site_exits.contains_key(site.as_str())
                    || job.run.lapsed.contains(site)
                {
                    return Err(format!(
                        "site {site}'s report for job {job_id} is not outstanding"
                    ));
                }
                Ok(())
            }
            RunStopRequested { job_id, reason } => {
                let job = self.job_exists(job_id)?;
                if !matches!(
                    job.run.phase,
                    RunPhase::Starting | RunPhase::Running | RunPhase::Stopping
                ) {
                    return Err(format!("job {job_id} has no run to stop"));
                }
                if reason.len() > crate::lifecycle::event::MAX_REASON_BYTES + 3 {
                    return Err("the reason is longer than a reason may be".into());
                }
                Ok(())
            }
            JobDownloaded { job_id } => {
                admin_actor()?;
                let job = self.job_exists(job_id)?;
                if !job.status.is_terminal() || !job.archive.is_settled() || job.deleted {
                    return Err(format!("job {job_id} cannot be downloaded now"));
                }
                Ok(())
            }
            LogsRead { job_id, site } => {
                admin_actor()?;
                let job = self.job_exists(job_id)?;
                if job.deleted {
                    return Err(format!("job {job_id} is deleted; its logs cannot be read"));
                }
                if let Some(site) = site {
                    if !job.run.sites.contains(site) {
                        return Err(format!("job {job_id} was not sent to site {site:?}"));
                    }
                }
                Ok(())
            }
            RunReattached { job_id } => {
                self.job_exists(job_id)?;
                match &self.recovery {
                    Some(w) if !w.reattached.contains(job_id) => Ok(()),
                    _ => Err(format!(
                        "no recovery window is open, or job {job_id} already re-attached"
                    )),
                }
            }
            RunStopped { job_id } => {
                let job = self.job_exists(job_id)?;
                if matches!(job.run.phase, RunPhase::Stopped | RunPhase::NotStarted) {
                    return Err(format!("job {job_id} has no run to be stopped"));
                }
                Ok(())
            }
            JobFinished {
                job_id,
                status,
                reason,
            } => {
                let job = self.job_exists(job_id)?;
                if reason.len() > crate::lifecycle::event::MAX_REASON_BYTES + 3 {
                    return Err("the reason is longer than a reason may be".into());
                }
                if !status.is_terminal() || !job.status.can_move_to(*status) {
                    return Err(format!(
                        "job {job_id} cannot move from {} to {status}",
                        job.status
                    ));
                }
                Ok(())
            }
            JobDeleted { job_id } => {
                admin_actor()?;
                let job = self.job_exists(job_id)?;
                if !job.status.is_terminal() || job.deleted {
                    return Err(format!(
                        "job {job_id} is {} (deleted: {}) and cannot be deleted",
                        job.status, job.deleted
                    ));
                }
                Ok(())
            }
            WorkspaceArchiveStarted { job_id } => {
                let job = self.job_exists(job_id)?;
                // A workspace is archived only once nothing of the run may still write
                // to it (SPEC section 8).
                let settled = matches!(job.run.phase, RunPhase::NotStarted | RunPhase::Stopped);
                match job.archive {
                    Archive::Pending {
                        in_flight: false, ..
                    } if job.status.is_terminal() && settled => Ok(()),
                    _ => Err(format!("job {job_id}'s archive cannot start now")),
                }
            }
            WorkspaceArchiveAttemptFailed { job_id, .. }
            | WorkspaceArchived { job_id, .. }
            | WorkspaceArchiveFailed { job_id, .. } => {
                let job = self.job_exists(job_id)?;
                if !matches!(job.archive, Archive::Pending { .. }) || !job.status.is_terminal() {
                    return Err(format!("job {job_id}'s archive is not pending"));
                }
                Ok(())
            }
            LeftOutSiteEnded { job_id, site, .. } => {
                let job = self.job_exists(job_id)?;
                if !job.run.left_out.contains(site) {
                    return Err(format!(
                        "site {site} is not a left-out site that may run job {job_id}'s app"
                    ));
                }
                Ok(())
            }
            RunRestored { job_id } => {
                self.job_in(job_id, &[Running], "be restored")?;
                match self.recovery {
                    Some(_) => Ok(()),
                    None => Err("no recovery window is open".into()),
                }
            }
        }
    }

    fn job_mut(&mut self, job_id: &JobId) -> &mut Job {
        let shared = self
            .jobs
            .get_mut(job_id)
            .expect("check() verified that the job exists before fold()");
        Arc::make_mut(shared)
    }

    fn set_status(&mut self, job_id: &JobId, status: RunStatus) {
        let job = self.job_mut(job_id);
        let before = job.status;
        job.status = status;
        let key = job.queue_key();
        if before == RunStatus::Submitted && status != RunStatus::Submitted {
            self.queue.remove(&key);
        }
    }

    /// The mutation of a checked record, with the derived index kept in step: the
    /// index changes where a touched job's contribution after the event differs from
    /// the one before. Never fails.
    /// Folds a checked event, and makes it the last one applied. `meta`, when given, is
    /// the submitted job's meta taken out of `event`.
    fn fold(&mut self, event: &Event, meta: Option<JobMeta>) {
        // Most events change their one job: no list is built for them.
        let single;
        let many: Vec<JobId>;
        let touched: &[JobId] = match &event.kind {
            EventKind::ServerStarted { .. } => {
                // The restart ends archive tries in flight, and changes no other job.
                many = self.index.archiving.iter().copied().collect();
                &many
            }
            EventKind::SiteConnected { running, .. } => {
                let mut jobs = running.clone();
                jobs.sort_unstable();
                jobs.dedup();
                many = jobs;
                &many
            }
            kind => {
                single = kind.job_id();
                single.as_slice()
            }
        };
        // The index is out of the state while the event changes the jobs: it is true of
        // neither the jobs before nor after, so the mutation must not read it (the
        // questions that do panic in debug builds while it is out).
        let mut index = std::mem::replace(&mut self.index, LiveIndex::in_fold());
        let before: Vec<Option<Contribution>> = touched
            .iter()
            .map(|job_id| self.jobs.get(job_id).map(|job| Contribution::of(job)))
            .collect();
        self.fold_event(event, touched, meta);
        for (job_id, before) in touched.iter().zip(&before) {
            let after = self.jobs.get(job_id).map(|job| Contribution::of(job));
            if after != *before {
                index.change(before.as_ref(), after.as_ref());
            }
            if after.map(|c| c.live) != before.map(|c| c.live) {
                self.jobs.place(job_id);
            }
        }
        self.index = index;
        self.last_seq = event.seq;
        self.last_at = event.at;
    }

    /// The mutation itself. `touched` holds every job the event may change (for a
    /// restart, every live job).
    fn fold_event(&mut self, event: &Event, touched: &[JobId], owned_meta: Option<JobMeta>) {
        use EventKind::*;
        let at = event.at;
        self.remember_reply(event);
        match &event.kind {
            ServerStarted { boot_id } => {
                self.boot_id = *boot_id;
                self.recovery = Some(RecoveryWindow {
                    started_at: at,
                    reattached: BTreeSet::new(),
                });
                // Connections belong to the previous server run; sites reconnect.
                let any_to_reset = self
                    .sites
                    .values()
                    .any(|s| s.connected || !s.running.is_empty());
                let sites = if any_to_reset {
                    Arc::make_mut(&mut self.sites).values_mut().collect()
                } else {
                    Vec::new()
                };
                for shared in sites {
                    if shared.connected || !shared.running.is_empty() {
                        let site = Arc::make_mut(shared);
                        if site.connected {
                            site.connected = false;
                            site.since = at;
                        }
                        site.running.clear();
                    }
                }
                // The try in flight died with the old run; its reservations lapse at the sites.
                self.schedule_try = None;
                // Archive tries in flight died too; recovery starts them again (the
                // touched are the jobs with one, from the index).
                for job_id in touched {
                    let in_flight = self.jobs.get(job_id).is_some_and(|job| {
                        matches!(
                            job.archive,
                            Archive::Pending {
                                in_flight: true,
                                ..
                            }
                        )
                    });
                    if in_flight {
                        if let Archive::Pending { in_flight, .. } =
                            &mut self.job_mut(job_id).archive
                        {
                            *in_flight = false;
                        }
                    }
                }
            }
            RecoveryFinished => self.recovery = None,
            SiteConnected {
                site,
                resources,
                running,
            } => {
                // A site that says it runs the app of a job that ended, or of a run being
                // stopped, while fedrun no longer waits for it (it reported, its report
                // lapsed, or it was left out) holds the run's slot again until that app
                // is known to have ended (SPEC section 8, "a stop is over").
                for job_id in running {
                    let returns = self.jobs.get(job_id).is_some_and(|j| {
                        j.run.was_sent(site)
                            && j.run.phase != RunPhase::NotStarted
                            && (j.status.is_terminal() || j.run.phase == RunPhase::Stopping)
                            && !j.run.site_outstanding(site)
                            && !j.run.left_out.contains(site)
                    });
                    if returns {
                        self.job_mut(job_id).run.left_out.insert(site.clone());
                    }
                }
                Arc::make_mut(&mut self.sites).insert(
                    site.clone(),
                    Arc::new(SiteFacts {
                        connected: true,
                        since: at,
                        resources: resources.clone(),
                        running: running.clone(),
                    }),
                );
            }
            SiteDisconnected { site } => {
                if let Some(shared) = Arc::make_mut(&mut self.sites).get_mut(site) {
                    let facts = Arc::make_mut(shared);
                    facts.connected = false;
                    facts.since = at;
                    facts.running.clear();
                }
            }
            JobSubmitted {
                job_id,
                meta,
                package,
                submitter,
                signer,
                submit_time,
                cloned_from,
            } => {
                self.queue.insert((*submit_time, event.seq, *job_id));
                // `check` refused an id already taken.
                self.jobs.insert_new(
                    *job_id,
                    Arc::new(Job {
                        id: *job_id,
                        meta: Arc::new(owned_meta.unwrap_or_else(|| meta.clone())),
                        package: *package,
                        submitter: self.identities.share(submitter),
                        signer: signer.as_ref().map(|s| self.identities.share(s)),
                        submit_time: *submit_time,
                        submitted_seq: event.seq,
                        cloned_from: *cloned_from,
                        status: RunStatus::Submitted,
                        finished_at: None,
                        finish_reason: None,
                        schedule_count: 0,
                        last_schedule_time: None,
                        schedule_history: Default::default(),
                        run: Run::default(),
                        archive: Archive::NoWorkspace,
                        deleted: false,
                    }),
                );
            }
            ScheduleTryStarted {
                job_id,
                try_id,
                asked,
                requests,
            } => {
                let mut asked = asked.clone();
                asked.extend(flatten(requests));
                asked.sort_by(|a, b| a.site.cmp(&b.site));
                self.schedule_try = Some(ScheduleTry {
                    try_id: *try_id,
                    job_id: *job_id,
                    started_at: at,
                    asked: Arc::new(asked),
                    answers: OrdMap::new(),
                });
            }
            ScheduleTryExtended { requests, .. } => {
                if let Some(t) = &mut self.schedule_try {
                    let asked = Arc::make_mut(&mut t.asked);
                    asked.extend(flatten(requests));
                    asked.sort_by(|a, b| a.site.cmp(&b.site));
                }
            }
            ResourceAnswered { site, answer, .. } => {
                if let Some(t) = &mut self.schedule_try {
                    t.answers.insert(site.clone(), answer.clone());
                }
            }
            ScheduleTryCancelled { .. } => self.schedule_try = None,
            ScheduleAttempted { job_id, outcome } => {
                self.schedule_try.take_if(|t| &t.job_id == job_id);
                let job = self.job_mut(job_id);
                job.schedule_count += 1;
                job.last_schedule_time = Some(at);
                let text = match outcome {
                    crate::lifecycle::event::ScheduleOutcome::Dispatched { sites, more } => {
                        let tail = if *more > 0 {
                            format!(" ... and {more} more")
                        } else {
                            String::new()
                        };
                        format!("dispatched to {}{tail}", sites.join(", "))
                    }
                    crate::lifecycle::event::ScheduleOutcome::NoResources { reason } => {
                        format!("no resources: {reason}")
                    }
                };
                job.schedule_history.push(at, &text);
            }
            JobDispatched {
                job_id,
                sites,
                reservations,
            } => {
                self.set_status(job_id, RunStatus::Dispatched);
                let job = self.job_mut(job_id);
                job.run.phase = RunPhase::Starting;
                job.run.step = Some((StartStep::DeployingServer, at));
                job.run.sites = sites.iter().cloned().collect();
                job.run.reservations = reservations
                    .iter()
                    .map(|(site, token)| (site.clone(), token.clone()))
                    .collect();
                job.archive = Archive::Pending {
                    in_flight: false,
                    failures: 0,
                    first_failed_at: None,
                    last_failed_at: None,
                    last_reason: None,
                };
            }
            JobDispatchExtended {
                job_id,
                sites,
                reservations,
            } => {
                let job = self.job_mut(job_id);
                // Follow-on events of a long list are few: rebuilding the shared list once
                // each keeps every other copy of the job a pointer copy.
                job.run.sites = job.run.sites.iter().chain(sites).cloned().collect();
                job.run
                    .reservations
                    .extend(reservations.iter().map(|(s, t)| (s.clone(), t.clone())));
            }
            RunClientsAdded {
                job_id,
                job_clients,
            } => {
                let job = self.job_mut(job_id);
                let all: Vec<String> = job
                    .run
                    .job_clients
                    .iter()
                    .chain(job_clients)
                    .cloned()
                    .collect();
                job.run.job_clients = same_or_new(&job.run.sites, all);
            }
            ServerAppLost { job_id } => {
                let job = self.job_mut(job_id);
                job.run.server_lost = true;
                if job.run.server_step_in_flight() {
                    job.run.step = None;
                }
            }
            DeployFinished {
                job_id,
                participant,
                result,
            } => {
                let job = self.job_mut(job_id);
                job.run.deploy.insert(participant.into(), result.clone());
                let server = crate::job::meta::SERVER;
                if job.status.is_terminal() {
                    job.run.step = None;
                } else {
                    if participant == server {
                        job.run.step = Some((StartStep::DeployingSites, at));
                    }
                    // Once every site has answered (at once, for a run without sites) the
                    // server app starts next. Only the server and the run's sites answer
                    // (the fold checks it), so counting is enough.
                    let site_answers =
                        job.run.deploy.len() - usize::from(job.run.deploy.contains_key(server));
                    let all_answered = site_answers >= job.run.sites.len();
                    if matches!(job.run.step, Some((StartStep::DeployingSites, _))) && all_answered
                    {
                        job.run.step = Some((StartStep::StartingServer, at));
                    }
                }
                if !result.is_ok() && participant != server {
                    job.run.reservations.remove(participant);
                }
            }
            StartFinished {
                job_id,
                participant,
                result,
            } => {
                let job = self.job_mut(job_id);
                job.run.start.insert(participant.into(), result.clone());
                // Start answers that repeat the deploy answers (every participant OK)
                // keep one slice for both, for as long as the job is kept.
                job.run.start.share_if_equal(&job.run.deploy);
                // A site whose start answer was lost may have started its app.
                if *result == StepResult::NoReply && participant != crate::job::meta::SERVER {
                    job.run.left_out.insert(participant.clone());
                }
                if job.status.is_terminal() {
                    job.run.step = None;
                } else if participant == crate::job::meta::SERVER {
                    job.run.step = Some((StartStep::StartingSites, at));
                }
            }
            RunStarted {
                job_id,
                job_clients,
            } => {
                self.set_status(job_id, RunStatus::Running);
                let job = self.job_mut(job_id);
                job.run.phase = RunPhase::Running;
                job.run.step = None;
                job.run.started_at = Some(at);
                job.run.job_clients = same_or_new(&job.run.sites, job_clients.to_vec());
                // Reservations are consumed by the start.
                job.run.reservations.clear();
            }
            ServerAppExited { job_id, outcome } => {
                let job = self.job_mut(job_id);
                job.run.server_exit = Some((*outcome, at));
                if !job.status.is_terminal() && !job.run.stopping() && is_failure(*outcome) {
                    job.run.failure = merge_failure(
                        job.run.failure.take(),
                        Failure {
                            participant: crate::job::meta::SERVER.to_string(),
                            outcome: *outcome,
                        },
                    );
                }
            }
            SiteOutcomeReported {
                job_id,
                site,
                report_id,
                outcome,
                stop_requested,
            } => {
                let job = self.job_mut(job_id);
                job.run.report_ids.insert(report_id.into());
                job.run.site_exits.insert(site.into(), *outcome);
                // An exit that fedrun's own stop caused is not a failure (SPEC section 8).
                // A site that says so is believed; a site that says it was not stopped
                // reports a failure even while the run is stopping; a version-1 record
                // (no flag) counts an exit after the stop request as caused by it.
                let caused_by_stop = match stop_requested {
                    Some(flag) => *flag,
                    None => job.run.stopping(),
                };
                if caused_by_stop {
                    job.run.stopped_exits.insert(site.clone());
                }
                if stops_run(*outcome) && !job.run.stopped_exits.contains(site) {
                    job.run.stop_candidates.insert(site.into());
                } else {
                    job.run.stop_candidates.remove(site.as_str());
                }
                if !job.status.is_terminal()
                    && !caused_by_stop
                    && job.run.counts_site(site)
                    && is_failure(*outcome)
                {
                    job.run.failure = merge_failure(
                        job.run.failure.take(),
                        Failure {
                            participant: site.clone(),
                            outcome: *outcome,
                        },
                    );
                }
            }
            SiteReportLapsed { job_id, site } => {
                let job = self.job_mut(job_id);
                job.run.lapsed.insert(site.clone());
                if !job.status.is_terminal() && !job.run.stopping() && job.run.counts_site(site) {
                    job.run.failure = merge_failure(
                        job.run.failure.take(),
                        Failure {
                            participant: site.clone(),
                            outcome: ExitOutcome::Code(104),
                        },
                    );
                }
            }
            RunStopRequested { job_id, .. } => {
                let job = self.job_mut(job_id);
                if job.run.stop_requested_at.is_none() {
                    job.run.stop_requested_at = Some(at);
                }
                job.run.phase = RunPhase::Stopping;
            }
            RunStopped { job_id } => {
                let job = self.job_mut(job_id);
                job.run.phase = RunPhase::Stopped;
                job.run.step = None;
                job.run.reservations.clear();
                // The stop is over: a left-out site counts as ended too (SPEC section 8).
                job.run.left_out.clear();
            }
            JobFinished {
                job_id,
                status,
                reason,
            } => {
                self.set_status(job_id, *status);
                self.schedule_try.take_if(|t| &t.job_id == job_id);
                let job = self.job_mut(job_id);
                job.finished_at = Some(at);
                job.finish_reason = Some(reason.as_str().into());
                // Sites asked to start whose answer never came may have started the app.
                let awaited = job.run.start_awaited();
                job.run.left_out.extend(awaited);
                // An abort keeps waiting for the server's own deploy or start answer; every
                // other ending has no step left in flight.
                if !(*status == RunStatus::Aborted && job.run.server_step_in_flight()) {
                    job.run.step = None;
                }
            }
            JobDeleted { job_id } => {
                self.job_mut(job_id).deleted = true;
            }
            JobDownloaded { .. } | LogsRead { .. } | RequestRefused { .. } => {}
            WorkspaceArchiveStarted { job_id } => {
                if let Archive::Pending { in_flight, .. } = &mut self.job_mut(job_id).archive {
                    *in_flight = true;
                }
            }
            WorkspaceArchiveAttemptFailed { job_id, reason } => {
                let job = self.job_mut(job_id);
                if let Archive::Pending {
                    in_flight,
                    failures,
                    first_failed_at,
                    last_failed_at,
                    last_reason,
                } = &mut job.archive
                {
                    *in_flight = false;
                    *failures += 1;
                    first_failed_at.get_or_insert(at);
                    *last_failed_at = Some(at);
                    *last_reason = Some(reason.as_str().into());
                }
            }
            WorkspaceArchived { job_id, hash } => {
                self.job_mut(job_id).archive = Archive::Archived { hash: *hash };
            }
            WorkspaceArchiveFailed { job_id, reason } => {
                self.job_mut(job_id).archive = Archive::Failed {
                    reason: reason.as_str().into(),
                };
            }
            RunReattached { job_id } => {
                if let Some(window) = &mut self.recovery {
                    window.reattached.insert(*job_id);
                }
            }
            RunRestored { .. } => {}
            LeftOutSiteEnded { job_id, site, .. } => {
                self.job_mut(job_id).run.left_out.remove(site);
            }
        }
    }

    /// Keeps the first answer given under an identity's idempotency key, with what the
    /// request was, and forgets keys older than [`REQUEST_KEY_KEPT_FOR`].
    fn remember_reply(&mut self, event: &Event) {
        self.requests.forget_expired(event.at);
        let (Some(key), Some(identity)) = (&event.request_id, event.actor.identity()) else {
            return;
        };
        let key = RequestKey {
            identity: self.identities.share(&identity),
            key: key.as_str().into(),
        };
        if let Some(kept) = self.requests.get(&key, event.at) {
            // The events of one request are consecutive; a delete of a queued job records
            // its abort first, so its deletion tells what the request was.
            let same_request = kept.last_seq + 1 == event.seq;
            if same_request {
                let kept = Arc::make_mut(
                    self.requests
                        .by_key
                        .get_mut(&key)
                        .expect("the key was just found"),
                );
                kept.last_seq = event.seq;
                if matches!(event.kind, EventKind::JobDeleted { .. }) {
                    kept.fingerprint.operation = "delete".into();
                }
            }
            return;
        }
        let (reply, fingerprint) = match &event.kind {
            EventKind::RequestRefused {
                rejection,
                job_id,
                operation,
            } => (
                Err(Box::new(rejection.clone())),
                RequestFingerprint {
                    operation: operation.as_str().into(),
                    job_id: *job_id,
                    package: None,
                },
            ),
            EventKind::JobSubmitted {
                job_id,
                package,
                cloned_from,
                ..
            } => (
                Ok(Answer::Submitted { job_id: *job_id }),
                match cloned_from {
                    Some(source) => RequestFingerprint {
                        operation: "clone".into(),
                        job_id: Some(*source),
                        package: None,
                    },
                    None => RequestFingerprint {
                        operation: "submit".into(),
                        job_id: None,
                        package: Some(*package),
                    },
                },
            ),
            other => match other.job_id() {
                Some(job_id) => (
                    Ok(Answer::Accepted { job_id }),
                    RequestFingerprint {
                        operation: match other {
                            EventKind::JobDeleted { .. } => "delete",
                            EventKind::JobDownloaded { .. } => "download",
                            EventKind::LogsRead { .. } => "logs",
                            _ => "abort",
                        }
                        .into(),
                        job_id: Some(job_id),
                        package: None,
                    },
                ),
                None => return,
            },
        };
        let kept = &mut self.requests;
        let key = Arc::new(key);
        if let Some(old) = kept.by_key.get(&key) {
            kept.by_time.remove(&(old.at, key.clone()));
        }
        kept.by_time.insert((event.at, key.clone()));
        kept.by_key.insert(
            key,
            Arc::new(KeptRequest {
                reply,
                at: event.at,
                fingerprint,
                last_seq: event.seq,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// A finished job's bytes are mostly its struct and its kept request, each in one of
    /// mimalloc's size classes (..., 40, 48, ..., 128, 160, ..., 512, 640 bytes; an `Arc`
    /// adds 16 bytes of counts). A field that pushes one past its class costs the whole
    /// step in every job kept: `cargo bench --bench state` prints the bytes per job.
    #[test]
    fn a_job_and_a_kept_request_stay_within_their_allocation_classes() {
        assert!(
            size_of::<Job>() + 16 <= 512,
            "a job takes {} bytes",
            size_of::<Job>()
        );
        assert!(
            size_of::<KeptRequest>() + 16 <= 128,
            "a kept request takes {} bytes",
            size_of::<KeptRequest>()
        );
        assert!(
            size_of::<RequestKey>() + 16 <= 40,
            "a request key takes {} bytes",
            size_of::<RequestKey>()
        );
        assert_eq!(size_of::<OperationName>(), 16);
    }

    /// A run's start answers equal to its deploy answers, and participants equal to its
    /// sites, are nil in MessagePack and read back shared; unequal ones, and every field
    /// in JSON, are written whole. Each run reads back equal to itself.
    #[test]
    fn a_run_writes_what_it_can_take_from_its_other_fields_as_nil() {
        let sites: Arc<[String]> = ["site-a", "site-b"].map(String::from).into();
        let answers = |extra: Option<&str>| -> SmallMap<ShortStr, StepResult> {
            ["server", "site-a", "site-b"]
                .into_iter()
                .chain(extra)
                .map(|who| (who.into(), StepResult::Ok))
                .collect()
        };
        let mut run = Run {
            phase: RunPhase::Stopped,
            sites: sites.clone(),
            deploy: answers(None),
            // Equal by value, not shared: what decides is what they hold.
            start: answers(None),
            job_clients: ["site-a", "site-b"].map(String::from).into(),
            ..Run::default()
        };
        let fields = |run: &Run| -> Vec<serde_json::Value> {
            let bytes = rmp_serde::to_vec(run).expect("encodes");
            rmp_serde::from_slice(&bytes).expect("an array of fields")
        };
        // Fields 5 and 7 are `start` and `job_clients`; 4 and 2 what they repeat.
        let written = fields(&run);
        assert_eq!(written.len(), 17);
        assert!(written[5].is_null() && written[7].is_null(), "{written:?}");
        assert!(written[4].is_object() && written[2].is_array());
        let back: Run =
            rmp_serde::from_slice(&rmp_serde::to_vec(&run).expect("encodes")).expect("decodes");
        assert_eq!(back, run);
        assert!(back.start.shares_entries_with(&back.deploy));
        assert!(Arc::ptr_eq(&back.job_clients, &back.sites));

        let json: serde_json::Value = serde_json::to_value(&run).expect("encodes");
        assert_eq!(json["start"], json["deploy"]);
        assert_eq!(json["job_clients"], serde_json::json!(["site-a", "site-b"]));
        let back: Run = serde_json::from_value(json).expect("decodes");
        assert_eq!(back, run);

        // Different: written whole.
        run.start = answers(Some("site-c"));
        run.job_clients = ["site-a"].map(String::from).into();
        let written = fields(&run);
        assert_eq!(written[5].as_object().map(|m| m.len()), Some(4));
        assert_eq!(written[7], serde_json::json!(["site-a"]));
        let back: Run =
            rmp_serde::from_slice(&rmp_serde::to_vec(&run).expect("encodes")).expect("decodes");
        assert_eq!(back, run);
        // A run before it started: no participants yet, whatever its sites.
        let fresh = Run {
            sites,
            ..Run::default()
        };
        assert_eq!(fields(&fresh)[7], serde_json::json!([]));
    }

    /// A value behind an `Arc` (a job's meta, submitter, signer) is written as the plain
    /// value, or nil, and read back equal.
    #[test]
    fn shared_values_are_written_as_the_values_themselves() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Held {
            #[serde(with = "shared_value")]
            one: Arc<Identity>,
            #[serde(with = "shared_value::optional")]
            maybe: Option<Arc<Identity>>,
        }
        #[derive(Serialize)]
        struct Plain<'a> {
            one: &'a Identity,
            maybe: Option<&'a Identity>,
        }
        let alice = Identity {
            name: "alice@example.org".into(),
            org: "hospital-a".into(),
            role: crate::lifecycle::actor::Role::Lead,
        };
        for maybe in [None, Some(Arc::new(alice.clone()))] {
            let held = Held {
                one: Arc::new(alice.clone()),
                maybe,
            };
            let bytes = rmp_serde::to_vec(&held).expect("encodes");
            let plain = Plain {
                one: &alice,
                maybe: held.maybe.as_deref(),
            };
            assert_eq!(bytes, rmp_serde::to_vec(&plain).expect("encodes"));
            let back: Held = rmp_serde::from_slice(&bytes).expect("decodes");
            assert_eq!(back, held);
        }
    }

    /// An operation's name reads back as the text it was written from, one of the six or
    /// any other, in MessagePack and in JSON.
    #[test]
    fn operation_names_read_back_as_their_text() {
        for name in OPERATIONS.iter().copied().chain(["frobnicate", ""]) {
            let operation = OperationName::from(name);
            assert_eq!(operation.as_str(), name);
            let packed = rmp_serde::to_vec(&operation).expect("encodes");
            assert_eq!(packed, rmp_serde::to_vec(name).expect("encodes"));
            let back: OperationName = rmp_serde::from_slice(&packed).expect("decodes");
            assert_eq!(back.as_str(), name);
            let json = serde_json::to_string(&operation).expect("encodes");
            let back: OperationName = serde_json::from_str(&json).expect("decodes");
            assert_eq!(back, operation);
        }
        assert!(matches!(
            OperationName::from("abort").0,
            OperationRepr::Known(1)
        ));
        assert!(matches!(
            OperationName::from("Abort").0,
            OperationRepr::Other(_)
        ));
    }
}
