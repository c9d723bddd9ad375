//! The invariants the simulator checks after every step of the engine and at the end of a
//! run, against what physically exists: the bytes in the simulated storage, the simulated
//! app processes, the archives written. Never against the engine's own counters.
//!
//! - Every stored record replays (checked like a restart does) into a state equal to the
//!   engine's live state, and every status change follows SPEC section 2's table, written
//!   out here independently of the core. The comparison after each step is exact and costs
//!   what the step changed: both states are persistent maps, and the jobs and queue entries
//!   either side changed since the last comparison (found by diffing against the copies kept
//!   then, which skips the shared structure) are compared, with everything else of the
//!   state. Only the kept idempotency keys are compared in part at each step (their counts,
//!   oldest and newest, and the keys the new events carry) and in full once as many events
//!   as keys have been folded since the last full comparison; the live index the fold keeps
//!   likewise (its sizes and slot count at each step, whole at the same bounded rate); the
//!   end of a run compares the whole state.
//! - Every event the engine acknowledged (its append returned) is still stored, byte for
//!   byte, after any crash and power loss.
//! - Jobs with a simulated process alive (a server app, or a site app on a connected site,
//!   or on a disconnected site within `site_reconnect_grace`) never exceed `max_jobs`.
//!   Apps a site brings back after staying away past its grace are not counted: SPEC 8
//!   counted them as ended when the grace ran out, so their slots may already belong to
//!   other jobs; they are held to the `abort_grace` rule below instead.
//! - An archive, once recorded, is never replaced (by a failure, or another archive), and
//!   its blob exists.
//! - No app process on a connected site (or the server) outlives its job's terminal status
//!   by more than `abort_grace` of connected time.
//! - No site report is recorded for a job that site never ran, and no report id is
//!   recorded twice for a job.
//! - At the end of a run whose faults stopped: every job is terminal, its run stopped and
//!   its archive settled, and no simulated process is left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use imbl::OrdSet;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::history::record::{ChainHash, GENESIS_HASH};
use crate::job::JobId;
use crate::lifecycle::state::{KeptRequests, LiveIndex, RequestKey};
use crate::lifecycle::{
    Archive, BlobHash, Event, EventKind, Job, Jobs, QueueKey, RunPhase, RunStatus, State,
};
use crate::sim::lives::Lives;

/// A defect of the core that the fault campaign found and that is routed for a fix. The
/// campaign may tolerate a known defect, precisely scoped, so that it keeps checking every
/// other invariant; `fedrun sim` and the regression tests never tolerate one. None is
/// open: every defect the campaign found is fixed and kept as a must-pass regression case
/// (`tests/sim_regressions.rs`). A new one is added here, with its scoped tolerance in the
/// checker, only while its fix is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KnownBug {}

impl KnownBug {
    /// Every known defect.
    pub const ALL: [KnownBug; 0] = [];
}

/// SPEC section 2's legal status changes, with `None` for a job that did not exist yet.
/// Written from the SPEC's table, not from the core's code.
pub fn legal_transition(from: Option<RunStatus>, to: RunStatus) -> bool {
    use RunStatus::*;
    matches!(
        (from, to),
        (None, Submitted)
            | (Some(Submitted), Dispatched)
            | (Some(Submitted), CanNotSchedule)
            | (Some(Submitted), Aborted)
            | (Some(Dispatched), Running)
            | (Some(Dispatched), FailedToRun)
            | (Some(Dispatched), Aborted)
            | (Some(Dispatched), Abandoned)
            | (Some(Running), Completed)
            | (Some(Running), ExecutionException)
            | (Some(Running), Abnormal)
            | (Some(Running), Aborted)
            | (Some(Running), Abandoned)
            | (Some(Running), Running)
    )
}

/// A simulated site as it physically is.
#[derive(Clone, Debug)]
pub struct SiteNow {
    /// Its name.
    pub name: String,
    /// Whether it is connected to a running server.
    pub connected: bool,
    /// Since when (virtual time) it is connected, or since when the server knows it is
    /// disconnected (its recorded disconnect, from which SPEC 8 counts the grace).
    pub since: Duration,
    /// The jobs whose app processes run there.
    pub apps: Vec<JobId>,
    /// While the server is down: the site went away while a server was up and its
    /// `site_reconnect_grace` ran out before the server went down, so SPEC 8 counted its
    /// processes as ended (their slots may belong to other jobs).
    pub lapsed: bool,
    /// When the site last came back after staying away past `site_reconnect_grace`, and
    /// the apps it still ran then. SPEC 8 counts such a site's processes as ended when its
    /// grace ran out (their slots may be given to other jobs), so the server can only stop
    /// them once it is back: they do not count against `max_jobs`, even if the site leaves
    /// again before the stop arrives.
    pub returned: Option<(Duration, Vec<JobId>)>,
}

/// The physical world at one instant.
#[derive(Clone, Debug)]
pub struct World {
    /// Virtual time.
    pub now: Duration,
    /// When the running server started (`None` while it is down).
    pub server_up_since: Option<Duration>,
    /// The jobs whose server app process runs.
    pub server_apps: Vec<JobId>,
    /// Of those, the ones started by an earlier server run (found again at a restart).
    pub earlier_server_apps: Vec<JobId>,
    /// The sites.
    pub sites: Vec<SiteNow>,
}

/// The settings the invariants are measured with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `max_jobs`.
    pub max_jobs: usize,
    /// `abort_grace`.
    pub abort_grace: Duration,
    /// `site_reconnect_grace`.
    pub site_reconnect_grace: Duration,
}

/// The jobs and queue of the live and the replayed state when they were last found equal:
/// cheap copies (persistent maps), so the next comparison looks only at what either side
/// changed since.
#[derive(Debug)]
struct Compared {
    live_jobs: Jobs,
    live_queue: OrdSet<QueueKey>,
    replayed_jobs: Jobs,
    replayed_queue: OrdSet<QueueKey>,
}

/// The jobs a comparison of the live and the replayed state found equal.
#[derive(Debug, Default)]
enum FoundEqual {
    #[default]
    None,
    /// Every job (a full comparison).
    All,
    /// The jobs either side changed since the comparison before (others were equal then
    /// and are unchanged).
    These(Vec<JobId>),
}

/// The checker: what it has seen so far.
#[derive(Debug, Default)]
pub struct Checker {
    replayed: State,
    /// The chain hash of the last record folded into `replayed` (the genesis hash before
    /// the first): each next one must link to it.
    chain: ChainHash,
    /// What the end needs of the events folded into `replayed`.
    lives: Lives,
    /// The states at the last comparison that found them equal (`None`: compare in full).
    compared: Option<Compared>,
    /// The jobs the last comparison found equal, for [`Checker::remember`] to share.
    found_equal: FoundEqual,
    /// The replayed jobs when the world was last checked against all of them (`None`:
    /// check every job).
    world_checked: Option<Jobs>,
    /// The idempotency keys the events folded since the last comparison carry.
    request_keys: Vec<RequestKey>,
    /// Events folded since the kept idempotency keys were last compared in full.
    requests_debt: usize,
    /// Events folded since the states' live indexes were last compared in full.
    index_debt: usize,
    // Looked up only, never walked: hashed.
    statuses: FxHashMap<JobId, RunStatus>,
    finished_at: FxHashMap<JobId, Duration>,
    archived: FxHashMap<JobId, BlobHash>,
    report_ids: FxHashSet<(JobId, String)>,
    acked: Acked,
    lie_ids: BTreeSet<String>,
    tolerated: BTreeSet<KnownBug>,
    /// How often a tolerated known defect showed (each would have been a violation).
    pub known_hits: BTreeMap<KnownBug, u32>,
}

/// How many records of an acknowledged run [`Acked`] keeps one digest for.
const ACKED_RUN: u64 = 1024;

/// The records acknowledged so far (records 1 to `len`), as one digest per run of
/// [`ACKED_RUN`] records: a day of 10,000 jobs acknowledges half a million records, and
/// a hash of each took 17 MB. A run's digest is taken over its records' own hashes
/// ([`ChainHash::of`] their bytes), which the checker has at hand when it folds them:
/// digesting each record's bytes once more was nearly a tenth of the checker's work,
/// and a record whose bytes change has another hash all the same.
#[derive(Debug, Default)]
struct Acked {
    len: u64,
    /// The digests of the full runs.
    runs: Vec<blake3::Hash>,
    /// The run being filled.
    open: blake3::Hasher,
}

impl Acked {
    fn digest(hasher: &mut blake3::Hasher, seq: u64, hash: &ChainHash) {
        hasher.update(&seq.to_le_bytes());
        hasher.update(&hash.0);
    }

    /// Record `seq` (the one after the last), whose bytes hash to `hash`, was
    /// acknowledged.
    fn push(&mut self, seq: u64, hash: &ChainHash) {
        Acked::digest(&mut self.open, seq, hash);
        self.len = seq;
        if seq.is_multiple_of(ACKED_RUN) {
            self.runs.push(self.open.finalize());
            self.open = blake3::Hasher::new();
        }
    }

    /// Every acknowledged record is among `records` (everything stored, oldest first),
    /// byte for byte.
    fn check(&self, records: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let mut run = blake3::Hasher::new();
        for seq in 1..=self.len {
            let bytes = match records.get(seq as usize - 1) {
                Some((s, bytes)) if *s == seq => bytes,
                _ => return Err(format!("acknowledged record {seq} was lost after a crash")),
            };
            Acked::digest(&mut run, seq, &ChainHash::of(bytes));
            let full = seq.is_multiple_of(ACKED_RUN);
            if full || seq == self.len {
                let want = if full {
                    self.runs[(seq / ACKED_RUN - 1) as usize]
                } else {
                    self.open.finalize()
                };
                if run.finalize() != want {
                    let first = (seq - 1) / ACKED_RUN * ACKED_RUN + 1;
                    return Err(format!(
                        "an acknowledged record among records {first} to {seq} changed after a crash"
                    ));
                }
                run = blake3::Hasher::new();
            }
        }
        Ok(())
    }
}

impl Checker {
    /// A checker for a run that has not started.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Tolerates a known defect of the core (for the campaign only).
    pub fn tolerate(&mut self, bug: KnownBug) {
        self.tolerated.insert(bug);
    }

    /// A site's app of `job` is about to be stopped (or its deployment deleted) by the
    /// server: that is wrong while the job is live, not being stopped, and the site takes
    /// part in its run.
    /// With `delete`, it is the site's deployment that is about to be deleted.
    pub fn stop_arrives(&mut self, site: &str, job_id: &JobId, delete: bool) -> Result<(), String> {
        let Some(job) = self.replayed.job(job_id) else {
            return Ok(());
        };
        let live = !job.status.is_terminal() && !job.run.stopping();
        let answered = if delete {
            job.run.deploy.get(site).is_some_and(|r| r.is_ok())
                && job.run.start.get(site).is_none_or(|r| r.is_ok())
        } else {
            job.run.start.get(site).is_some_and(|r| r.is_ok())
        };
        let takes_part = answered
            && (job.run.started_at.is_none() || job.run.job_clients.iter().any(|s| s == site));
        if live && takes_part {
            let what = format!(
                "the server {} of job {job_id} on site {site}, a participant of its live run \
                 ({}, not stopping)",
                if delete {
                    "deleted the deployment"
                } else {
                    "stopped the app"
                },
                job.status
            );
            return Err(what);
        }
        Ok(())
    }

    /// Remembers the id of a report that was a lie: recording it is a violation.
    pub fn lie_told(&mut self, report_id: &str) {
        self.lie_ids.insert(report_id.to_string());
    }

    /// How many records were acknowledged so far.
    pub fn acked_len(&self) -> u64 {
        self.acked.len
    }

    /// The state replayed from the stored records so far.
    pub fn replayed(&self) -> &State {
        &self.replayed
    }

    /// The run is over: let go of the state replayed step by step and the copies kept for
    /// comparing it, so the end's replay of the whole stored history is not a third state
    /// held beside it and the live one.
    pub fn release_replayed(&mut self) {
        self.replayed = State::new();
        self.lives = Lives::default();
        self.compared = None;
        self.world_checked = None;
    }

    /// The run is over: the state replayed step by step and the [`Lives`] gathered with
    /// it, when the state is the fold of exactly the `count` records stored now, the last
    /// of which hashes to `head`. Each record was checked to link to the one folded
    /// before it, so equal heads mean equal records all the way down (the records the
    /// checker was handed since the last start are the stored ones, which change only at
    /// the tail). Otherwise `None`, and the state is let go of as
    /// [`Checker::release_replayed`] does.
    pub fn take_replayed_if_stored(
        &mut self,
        count: u64,
        head: ChainHash,
    ) -> Option<(State, Lives)> {
        let folded = self.replayed.last_seq == count && self.chain == head;
        let replayed = std::mem::take(&mut self.replayed);
        let lives = std::mem::take(&mut self.lives);
        self.release_replayed();
        folded.then_some((replayed, lives))
    }

    /// The server (re)started on `records` (everything stored, oldest first): every
    /// acknowledged record must still be there, byte for byte, and the state is replayed
    /// from scratch.
    pub fn on_start(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), String> {
        self.acked.check(records)?;
        // The whole stored history is replayed and checked again from the start; what the
        // earlier run saw of records that did not survive does not count.
        self.replayed = State::new();
        self.chain = GENESIS_HASH;
        self.lives = Lives::default();
        self.compared = None;
        self.world_checked = None;
        self.request_keys.clear();
        self.statuses.clear();
        self.archived.clear();
        self.report_ids.clear();
        Ok(())
    }

    /// After a start replayed everything: forget end times of jobs whose end did not
    /// survive the crash.
    pub fn after_start(&mut self) {
        let replayed = &self.replayed;
        self.finished_at
            .retain(|job, _| replayed.job(job).is_some_and(|j| j.status.is_terminal()));
    }

    /// The engine made `records` durable (its step returned): fold them into the replayed
    /// state, check every change they make, and remember them as acknowledged. Their
    /// events go to `events` when asked for (a step's few); a start's whole history asks
    /// for none (its events would take several times its bytes at once).
    pub fn on_records(
        &mut self,
        records: &[(u64, Vec<u8>)],
        acked: bool,
        now: Duration,
        mut events: Option<&mut Vec<Event>>,
    ) -> Result<(), String> {
        for (seq, bytes) in records {
            // As a restart checks it: the next after the last folded, under its own
            // number, linked to the last folded, and holding an event of that number.
            let (record, chain) = crate::history::check_record::<Event>(
                self.replayed.last_seq + 1,
                self.chain,
                *seq,
                bytes,
            )
            .map_err(|e| format!("stored record {seq}: {e}"))?;
            self.chain = chain;
            let event = record.event;
            self.replayed
                .apply_checked(&event)
                .map_err(|e| format!("stored record {seq} does not replay: {e}"))?;
            self.lives.see(&event);
            if let (Some(key), Some(identity)) = (&event.request_id, event.actor.identity()) {
                self.request_keys.push(RequestKey {
                    identity: std::sync::Arc::new(identity),
                    key: key.as_str().into(),
                });
            }
            self.requests_debt += 1;
            self.index_debt += 1;
            if acked && self.acked.len + 1 == *seq {
                self.acked.push(*seq, &chain);
            }
            self.check_event(&event, now)?;
            if let Some(events) = events.as_deref_mut() {
                events.push(event);
            }
        }
        Ok(())
    }

    fn check_event(&mut self, event: &Event, now: Duration) -> Result<(), String> {
        let seq = event.seq;
        if let Some(job_id) = event.kind.job_id() {
            if let Some(job) = self.replayed.job(&job_id) {
                let before = self.statuses.get(&job_id).copied();
                let restored = matches!(event.kind, EventKind::RunRestored { .. });
                if before != Some(job.status) || restored {
                    if !legal_transition(before, job.status) {
                        return Err(format!(
                            "event {seq}: job {job_id} went {before:?} -> {} (illegal)",
                            job.status
                        ));
                    }
                    self.statuses.insert(job_id, job.status);
                }
            }
        }
        match &event.kind {
            EventKind::JobFinished { job_id, .. } => {
                self.finished_at.entry(*job_id).or_insert(now);
            }
            EventKind::WorkspaceArchived { job_id, hash } => {
                if let Some(old) = self.archived.get(job_id) {
                    if old != hash {
                        return Err(format!(
                            "event {seq}: the archive of job {job_id} was replaced"
                        ));
                    }
                }
                self.archived.insert(*job_id, *hash);
            }
            EventKind::WorkspaceArchiveFailed { job_id, .. }
            | EventKind::WorkspaceArchiveAttemptFailed { job_id, .. }
            | EventKind::WorkspaceArchiveStarted { job_id }
                if self.archived.contains_key(job_id) =>
            {
                return Err(format!(
                    "event {seq}: job {job_id} was archived, and then archiving went on ({})",
                    crate::history::event_text(event)
                ));
            }
            EventKind::SiteOutcomeReported {
                job_id, report_id, ..
            } => {
                if self.lie_ids.contains(report_id) {
                    let job = self.replayed.job(job_id);
                    return Err(format!(
                        "event {seq}: a site's lie was recorded as the outcome of job {job_id} \
                         (report id {}; the job is {:?}, run {:?}, dispatched to {:?}, \
                         job_clients {:?}, start answers {:?})",
                        report_id.chars().take(40).collect::<String>(),
                        job.map(|j| j.status),
                        job.map(|j| j.run.phase),
                        job.map(|j| &j.run.sites),
                        job.map(|j| &j.run.job_clients),
                        job.map(|j| &j.run.start),
                    ));
                }
                if !self.report_ids.insert((*job_id, report_id.clone())) {
                    return Err(format!(
                        "event {seq}: report {report_id} of job {job_id} was recorded twice"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After a step: the live state equals the replayed one, and the physical world keeps
    /// the limits. `ran` says whether a site ever ran a job's app.
    pub fn after_step(
        &mut self,
        live: Option<&State>,
        world: &World,
        limits: Limits,
        archives: &FxHashMap<JobId, BlobHash>,
        ran: &dyn Fn(&str, &JobId) -> bool,
    ) -> Result<(), String> {
        self.check_world(live, world, limits, archives, ran)
    }

    /// Keeps cheap copies of the jobs and queues just found equal. The replayed state
    /// first takes the live state's copy of each job found equal: the two hold one copy
    /// of a job until either changes it (a change copies a shared job first, so neither
    /// side sees the other's), which halves the memory the checker's state takes, and the
    /// next comparison of a job neither side changed stops at the shared pointer. The
    /// replayed state's value is the same either way.
    fn remember(&mut self, live: &State) {
        let replayed = &mut self.replayed.jobs;
        let mut share = |id: &JobId| {
            if let Some(theirs) = live.jobs.get(id) {
                replayed.share(theirs);
            }
        };
        match std::mem::take(&mut self.found_equal) {
            FoundEqual::None => {}
            FoundEqual::All => live.jobs.keys().for_each(&mut share),
            FoundEqual::These(ids) => ids.iter().for_each(share),
        }
        self.compared = Some(Compared {
            live_jobs: live.jobs.clone(),
            live_queue: live.queue.clone(),
            replayed_jobs: self.replayed.jobs.clone(),
            replayed_queue: self.replayed.queue.clone(),
        });
    }

    /// Whether the live state equals the replayed one. Exact when `compared` is from the
    /// last comparison: what neither side changed since was equal then.
    fn live_equals_replayed(&mut self, live: &State) -> bool {
        let replayed = &self.replayed;
        let keys = std::mem::take(&mut self.request_keys);
        self.found_equal = FoundEqual::None;
        let Some(was) = self.compared.take() else {
            self.requests_debt = 0;
            self.index_debt = 0;
            let equal = live == replayed;
            if equal {
                self.found_equal = FoundEqual::All;
            }
            return equal;
        };
        // Everything but the jobs, the queue, the kept keys and the live index, compared
        // in full.
        let rest = |state: &State| State {
            jobs: Jobs::new(),
            queue: OrdSet::new(),
            requests: KeptRequests::default(),
            index: LiveIndex::default(),
            ..state.clone()
        };
        if rest(live) != rest(replayed) {
            return false;
        }
        // The jobs either side added, changed or removed.
        if live.jobs.len() != replayed.jobs.len() {
            return false;
        }
        let job_key = |item: imbl::ordmap::DiffItem<'_, '_, JobId, Arc<Job>>| match item {
            imbl::ordmap::DiffItem::Add(k, _) | imbl::ordmap::DiffItem::Remove(k, _) => *k,
            imbl::ordmap::DiffItem::Update { new: (k, _), .. } => *k,
        };
        let changed: Vec<JobId> = was
            .live_jobs
            .diff(&live.jobs)
            .chain(was.replayed_jobs.diff(&replayed.jobs))
            .map(job_key)
            .collect();
        if changed
            .iter()
            .any(|id| live.jobs.get(id) != replayed.jobs.get(id))
        {
            return false;
        }
        // The queue entries either side added or removed.
        if live.queue.len() != replayed.queue.len() {
            return false;
        }
        let queue_key = |item: imbl::ordset::DiffItem<'_, '_, QueueKey>| match item {
            imbl::ordset::DiffItem::Add(k) | imbl::ordset::DiffItem::Remove(k) => *k,
        };
        let queue_differs = was
            .live_queue
            .diff(&live.queue)
            .chain(was.replayed_queue.diff(&replayed.queue))
            .map(queue_key)
            .any(|k| live.queue.contains(&k) != replayed.queue.contains(&k));
        if queue_differs {
            return false;
        }
        // The kept keys: their counts, oldest and newest, and the keys just used at each
        // step; all of them once as many events as keys were folded since the last time.
        let (a, b) = (&live.requests, &replayed.requests);
        if a.by_key.len() != b.by_key.len()
            || a.by_time.len() != b.by_time.len()
            || a.by_time.get_min() != b.by_time.get_min()
            || a.by_time.get_max() != b.by_time.get_max()
            || keys.iter().any(|k| a.by_key.get(k) != b.by_key.get(k))
        {
            return false;
        }
        if self.requests_debt >= a.by_key.len() {
            self.requests_debt = 0;
            if a != b {
                return false;
            }
        }
        // The live index (derived by the fold, so its use is what the jobs are checked
        // for): its sizes and counter at every step, all of it once as many events as it
        // has entries were folded since the last time (it holds an entry per blob of
        // every job kept, so comparing it whole at every step made a day quadratic).
        let (x, y) = (live.index(), replayed.index());
        if x.active != y.active
            || x.live.len() != y.live.len()
            || x.blob_refs.len() != y.blob_refs.len()
            || x.due.len() != y.due.len()
            || x.archiving.len() != y.archiving.len()
            || x.timed.len() != y.timed.len()
        {
            return false;
        }
        if self.index_debt >= x.live.len() + x.blob_refs.len() + x.due.len() {
            self.index_debt = 0;
            if x != y {
                return false;
            }
        }
        self.found_equal = FoundEqual::These(changed);
        true
    }

    fn check_world(
        &mut self,
        live: Option<&State>,
        world: &World,
        limits: Limits,
        archives: &FxHashMap<JobId, BlobHash>,
        ran: &dyn Fn(&str, &JobId) -> bool,
    ) -> Result<(), String> {
        match live {
            Some(live) => {
                if !self.live_equals_replayed(live) {
                    return Err(format!(
                        "after event {}, the state replayed from the stored history differs \
                         from the live state",
                        self.replayed.last_seq
                    ));
                }
                self.remember(live);
            }
            // While the server is down nothing is compared; the next comparison is full.
            None => self.compared = None,
        }
        // Jobs with a process alive.
        let mut alive: BTreeSet<JobId> = world.server_apps.iter().copied().collect();
        for site in &world.sites {
            let counted = site.connected
                || (!site.lapsed
                    && world.now < grace_end(site.since, world.server_up_since, limits));
            if counted {
                // SPEC 8 counted these apps as ended when the site's grace ran out, and
                // their slots may have gone to other jobs before the site came back: they
                // are stopped on its return (the run holds its slot again from then, but
                // cannot take back a slot already given), so they do not count here. The
                // rule that no app on a connected site outlives its job's end by more
                // than `abort_grace` still holds them to account.
                let returning = |job: &JobId| {
                    site.returned
                        .as_ref()
                        .is_some_and(|(_, apps)| apps.contains(job))
                };
                alive.extend(site.apps.iter().filter(|j| !returning(j)).copied());
            }
        }
        if alive.len() > limits.max_jobs {
            return Err(format!(
                "{} jobs have app processes alive, over max_jobs = {}: {alive:?}",
                alive.len(),
                limits.max_jobs
            ));
        }
        // Apps outliving their job's end on a connected site or the server.
        let over = |started: Duration, job: &JobId| -> Option<Duration> {
            let finished = *self.finished_at.get(job)?;
            let from = finished.max(started);
            let lived = world.now.checked_sub(from)?;
            (lived > limits.abort_grace).then_some(lived)
        };
        if let Some(up) = world.server_up_since {
            for job in &world.server_apps {
                if let Some(lived) = over(up, job) {
                    let what = format!(
                        "the server app of job {job} still runs {}s after the job ended \
                         (abort_grace {}s)",
                        lived.as_secs_f64(),
                        limits.abort_grace.as_secs_f64()
                    );
                    return Err(what);
                }
            }
        }
        for site in world.sites.iter().filter(|s| s.connected) {
            for job in &site.apps {
                if let Some(lived) = over(site.since, job) {
                    let what = format!(
                        "the app of job {job} on connected site {} still runs {}s after the \
                         job ended (abort_grace {}s)",
                        site.name,
                        lived.as_secs_f64(),
                        limits.abort_grace.as_secs_f64()
                    );
                    return Err(what);
                }
            }
        }
        // Archives and site outcomes of the jobs that changed since the last check (all of
        // them after a start): the blob store and the sites' record of what they ran only
        // grow, so a job that passed and did not change still passes.
        let changed: Vec<Arc<Job>> = match &self.world_checked {
            Some(before) => before.changed_in(&self.replayed.jobs).cloned().collect(),
            None => self.replayed.jobs.values().cloned().collect(),
        };
        for job in changed {
            if let Archive::Archived { hash } = &job.archive {
                if archives.get(&job.id) != Some(hash) {
                    return Err(format!(
                        "job {} is recorded as archived, but no such archive was written",
                        job.id
                    ));
                }
            }
            for (site, _) in job.run.site_exits.iter() {
                if !ran(site, &job.id) {
                    return Err(format!(
                        "job {} has an outcome recorded for site {site}, which never ran it",
                        job.id
                    ));
                }
            }
        }
        self.world_checked = Some(self.replayed.jobs.clone());
        Ok(())
    }

    /// At the end of a run whose faults stopped: everything settled (in `replayed`, the
    /// state replayed from the whole stored history), nothing left running.
    pub fn at_end(&mut self, replayed: &State, world: &World) -> Result<(), String> {
        for job in replayed.jobs.values() {
            if !job.status.is_terminal() {
                return Err(format!(
                    "job {} is still {} after the faults stopped",
                    job.id, job.status
                ));
            }
            if !matches!(job.run.phase, RunPhase::NotStarted | RunPhase::Stopped) {
                return Err(format!(
                    "job {} ended {} but its run is {:?}",
                    job.id, job.status, job.run.phase
                ));
            }
            if !job.archive.is_settled() {
                return Err(format!("job {} ended but its archive is pending", job.id));
            }
        }
        if let Some(job) = world.server_apps.first() {
            return Err(format!("the server app of job {job} still runs at the end"));
        }
        for site in world.sites.iter().filter(|s| s.connected) {
            if let Some(job) = site.apps.first() {
                return Err(format!(
                    "the app of job {job} still runs on site {} at the end",
                    site.name
                ));
            }
        }
        Ok(())
    }
}

/// When a disconnected site's processes stop counting: `site_reconnect_grace` after the
/// server knew it went away.
fn grace_end(since: Duration, server_up_since: Option<Duration>, limits: Limits) -> Duration {
    let from = match server_up_since {
        Some(_) => since,
        // While the server is down nobody counts the grace: the processes count.
        None => Duration::MAX - limits.site_reconnect_grace,
    };
    from + limits.site_reconnect_grace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_allows_exactly_the_spec_transitions() {
        use RunStatus::*;
        assert!(legal_transition(None, Submitted));
        assert!(legal_transition(Some(Running), Running));
        assert!(!legal_transition(Some(Dispatched), Completed));
        assert!(!legal_transition(Some(Completed), Running));
        assert!(!legal_transition(None, Running));
    }

    /// A state in the middle of a run: jobs running and queued, kept idempotency keys.
    fn busy_state() -> State {
        let checked =
            crate::sim::scenario::parse(include_str!("../../tests/scenarios/max_jobs.toml"))
                .expect("scenario");
        let mut captured: Option<State> = None;
        let mut observer = |_: &Event, state: &State| {
            if captured.is_none()
                && state.queue.len() >= 2
                && state.requests.by_key.len() >= 3
                && state.jobs.len() >= 3
                && !state.index().timed.is_empty()
            {
                captured = Some(state.clone());
            }
        };
        crate::sim::driver::run_observed(&checked, 0, Some(&mut observer)).expect("run");
        captured.expect("the run queued jobs")
    }

    #[test]
    fn the_end_refuses_unsettled_jobs_and_apps_still_running() {
        let world = |server_apps: Vec<JobId>| World {
            now: Duration::from_secs(3600),
            server_up_since: Some(Duration::ZERO),
            server_apps,
            earlier_server_apps: Vec::new(),
            sites: Vec::new(),
        };
        let busy = busy_state();
        let error = Checker::new()
            .at_end(&busy, &world(Vec::new()))
            .expect_err("jobs still queued and running");
        assert!(error.contains("after the faults stopped"), "{error}");
        let checked =
            crate::sim::scenario::parse(include_str!("../../tests/scenarios/max_jobs.toml"))
                .expect("scenario");
        let settled = crate::sim::driver::run_observed(&checked, 0, None)
            .expect("run")
            .state;
        let job = *settled.jobs.keys().next().expect("a job");
        Checker::new()
            .at_end(&settled, &world(Vec::new()))
            .expect("every job settled, nothing running");
        let error = Checker::new()
            .at_end(&settled, &world(vec![job]))
            .expect_err("a server app still runs");
        assert!(error.contains("still runs at the end"), "{error}");
    }

    /// A checker whose replayed state is `state`, just compared equal to the same live one.
    fn compared_on(state: &State) -> Checker {
        let mut checker = Checker::new();
        checker.replayed = state.clone();
        assert!(checker.live_equals_replayed(state), "the full comparison");
        checker.remember(state);
        checker
    }

    #[test]
    fn the_step_comparison_finds_what_either_side_changed() {
        let state = busy_state();
        let id = *state.jobs.keys().nth(1).expect("a job");
        let mut checker = compared_on(&state);
        assert!(checker.live_equals_replayed(&state), "nothing changed");

        // A job only the live side changed.
        let mut live = state.clone();
        Arc::make_mut(live.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&live));

        // A job only the replayed side changed.
        let mut checker = compared_on(&state);
        Arc::make_mut(checker.replayed.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        assert!(!checker.live_equals_replayed(&state));

        // The same change on both sides is no difference.
        let mut checker = compared_on(&state);
        Arc::make_mut(checker.replayed.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        assert!(checker.live_equals_replayed(&live));

        // One job swapped for another on the live side: the counts agree.
        let mut swapped = state.clone();
        let job = swapped.jobs.remove(&id).expect("job");
        let other = JobId(uuid::Uuid::from_u128(7));
        let mut moved = (*job).clone();
        moved.id = other;
        swapped.jobs.insert(other, Arc::new(moved));
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&swapped));

        // A queue entry swapped for another.
        let mut queue = state.clone();
        let first = queue.queue.iter().next().cloned().expect("queued");
        queue.queue.remove(&first);
        queue.queue.insert((first.0, first.1, other));
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&queue));

        // A field outside the jobs and the queue.
        let mut later = state.clone();
        later.last_seq += 1;
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&later));
    }

    /// A job found equal is held once by both states afterwards, and a later change on
    /// either side is still found (the change copies the shared job first).
    #[test]
    fn a_job_found_equal_is_shared_and_a_later_change_still_shows() {
        let state = busy_state();
        let id = *state.jobs.keys().nth(1).expect("a job");
        let same = |a: &State, b: &State| Arc::ptr_eq(&a.jobs[&id], &b.jobs[&id]);
        // Built apart: equal values, two copies.
        let mut checker = Checker::new();
        checker.replayed = state.clone();
        let job = (*state.jobs[&id]).clone();
        checker.replayed.jobs.insert(id, Arc::new(job));
        assert!(!same(&checker.replayed, &state));
        assert!(checker.live_equals_replayed(&state), "the full comparison");
        checker.remember(&state);
        assert!(
            same(&checker.replayed, &state),
            "shared after the full comparison"
        );

        // The same change made on both sides apart: shared again after the step's
        // comparison.
        let mut live = state.clone();
        Arc::make_mut(live.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        Arc::make_mut(checker.replayed.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        assert!(!same(&checker.replayed, &live));
        assert!(checker.live_equals_replayed(&live));
        checker.remember(&live);
        assert!(
            same(&checker.replayed, &live),
            "shared after the step's comparison"
        );

        // A change on the replayed side alone leaves the live job as it was, and shows.
        Arc::make_mut(checker.replayed.jobs.get_mut(&id).expect("job")).schedule_count += 1;
        assert_eq!(
            live.jobs[&id].schedule_count,
            state.jobs[&id].schedule_count + 1
        );
        assert!(!checker.live_equals_replayed(&live));
    }

    #[test]
    fn a_kept_key_no_event_names_is_compared_in_full_at_the_bounded_rate() {
        let state = busy_state();
        let mut changed = state.clone();
        let key = changed
            .requests
            .by_key
            .keys()
            .next()
            .cloned()
            .expect("a kept key");
        std::sync::Arc::make_mut(changed.requests.by_key.get_mut(&key).expect("kept")).last_seq +=
            1;
        // Named by an event folded since: found at once.
        let mut checker = compared_on(&state);
        checker.request_keys.push((*key).clone());
        assert!(!checker.live_equals_replayed(&changed));
        // Named by none: found once as many events as keys were folded.
        let mut checker = compared_on(&state);
        assert!(checker.live_equals_replayed(&changed));
        checker.remember(&changed);
        checker.requests_debt = state.requests.by_key.len();
        assert!(!checker.live_equals_replayed(&changed));
    }

    #[test]
    fn a_live_index_that_differs_is_found_by_its_sizes_at_once_or_in_full_at_the_bounded_rate() {
        let state = busy_state();
        let size = |s: &State| {
            let index = s.index();
            index.live.len() + index.blob_refs.len() + index.due.len()
        };
        // A blob counted once more: the sizes agree, the contents do not.
        let mut recounted = state.clone();
        let hash = *recounted.index.blob_refs.keys().next().expect("a blob");
        *recounted.index.blob_refs.get_mut(&hash).expect("counted") += 1;
        let mut checker = compared_on(&state);
        assert!(
            checker.live_equals_replayed(&recounted),
            "not yet compared whole"
        );
        checker.remember(&recounted);
        checker.index_debt = size(&state);
        assert!(!checker.live_equals_replayed(&recounted));
        // A job missing from the live set: found at once by the size.
        let mut shorter = state.clone();
        let job_id = *shorter.index.live.iter().next().expect("a live job");
        shorter.index.live.remove(&job_id);
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&shorter));
        // A job in flight missing from the jobs that may have deadlines: found at once.
        let mut untimed = state.clone();
        let job_id = *untimed.index.timed.iter().next().expect("a job in flight");
        untimed.index.timed.remove(&job_id);
        let mut checker = compared_on(&state);
        assert!(!checker.live_equals_replayed(&untimed));
    }

    /// The stored records of a short run with a crash and a restart, oldest first.
    fn records_of_a_run() -> Vec<(u64, Vec<u8>)> {
        let checked = crate::sim::scenario::parse(include_str!(
            "../../tests/scenarios/crash_running_resume.toml"
        ))
        .expect("scenario");
        crate::sim::driver::run(&checked, 0)
            .expect("run")
            .stored_records()
    }

    #[test]
    fn the_replayed_state_is_handed_over_only_as_the_fold_of_exactly_what_is_stored() {
        let records = records_of_a_run();
        let count = records.len() as u64;
        let head = ChainHash::of(&records.last().expect("records").1);
        let mut folded = State::new();
        let (mut starts, mut finished) = (Vec::new(), BTreeMap::new());
        for (_, bytes) in &records {
            let record = crate::history::record::decode::<Event>(bytes).expect("decodes");
            folded.apply_checked(&record.event).expect("folds");
            match record.event.kind {
                EventKind::ServerStarted { .. } => starts.push(record.event.seq),
                EventKind::JobFinished { job_id, .. } => {
                    finished.entry(job_id).or_insert(record.event.seq);
                }
                _ => {}
            }
        }
        let checked = || {
            let mut checker = Checker::new();
            checker
                .on_records(&records, true, Duration::ZERO, None)
                .expect("the records check");
            checker
        };
        let mut checker = checked();
        let (state, lives) = checker
            .take_replayed_if_stored(count, head)
            .expect("handed over");
        assert!(state == folded, "the fold of the stored records");
        // What the end needs of the events was gathered from the same records: the
        // run's two starts and its jobs' ends.
        assert_eq!(starts.len(), 2, "the run restarts once");
        assert_eq!(lives.starts, starts);
        let ends: BTreeMap<JobId, u64> = lives
            .jobs
            .iter()
            .filter_map(|(id, life)| life.finished.map(|seq| (*id, seq)))
            .collect();
        assert!(!finished.is_empty());
        assert_eq!(ends, finished);
        assert!(checker.replayed().jobs.is_empty(), "let go of");
        // Another last record, or another count: not handed over, and let go of all the same.
        let other = ChainHash::of(b"another record");
        let mut checker = checked();
        assert!(checker.take_replayed_if_stored(count, other).is_none());
        assert!(checker.replayed().jobs.is_empty());
        assert!(checked().take_replayed_if_stored(count - 1, head).is_none());
        assert!(checked().take_replayed_if_stored(count + 1, head).is_none());
    }

    /// The events asked for are the stored records' own, in order (decoded apart here);
    /// a start asks for none, and its fold is checked against a fold of its own above.
    #[test]
    fn the_events_asked_for_are_those_of_the_records() {
        let records = records_of_a_run();
        let decoded: Vec<Event> = records
            .iter()
            .map(|(_, bytes)| {
                crate::history::record::decode::<Event>(bytes)
                    .expect("decodes")
                    .event
            })
            .collect();
        let mut events = Vec::new();
        Checker::new()
            .on_records(&records, true, Duration::ZERO, Some(&mut events))
            .expect("the records check");
        assert_eq!(events, decoded);
    }

    #[test]
    fn a_stored_record_out_of_its_place_is_caught() {
        let records = records_of_a_run();
        let mut checker = Checker::new();
        let misplaced = [(1, records[0].1.clone()), (2, records[0].1.clone())];
        let err = checker
            .on_records(&misplaced, true, Duration::ZERO, None)
            .expect_err("record 1 stored as record 2");
        assert!(
            err.contains("the record stored as 2 says it is record 1"),
            "{err}"
        );
    }

    #[test]
    fn a_stored_record_that_does_not_link_to_the_one_folded_before_is_caught() {
        let records = records_of_a_run();
        let mut checker = Checker::new();
        checker
            .on_records(&records[..2], true, Duration::ZERO, None)
            .expect("two in order");
        let err = checker
            .on_records(&records[3..4], true, Duration::ZERO, None)
            .expect_err("record 3 is missing");
        assert!(err.contains("record 3 is missing"), "{err}");
        // Record 3 of another history: in its place, but linked to another record 2.
        let other =
            crate::sim::scenario::parse(include_str!("../../tests/scenarios/complete.toml"))
                .expect("scenario");
        let other = crate::sim::driver::run(&other, 0)
            .expect("run")
            .stored_records();
        // The two histories part at index `d`; the other's next record links to its own.
        let d = (0..records.len().min(other.len()))
            .find(|&i| records[i].1 != other[i].1)
            .expect("the histories part");
        let mut checker = Checker::new();
        checker
            .on_records(&records[..=d], true, Duration::ZERO, None)
            .expect("ours, in order");
        let err = checker
            .on_records(&other[d + 1..d + 2], true, Duration::ZERO, None)
            .expect_err("the next record links to another one before it");
        let (next, before) = (d + 2, d + 1);
        assert!(
            err.contains(&format!("record {next} does not link to record {before}")),
            "{err}"
        );
        // A start folds the whole history again from the first record.
        checker
            .on_start(&records)
            .expect("everything acknowledged is there");
        checker
            .on_records(&records, false, Duration::ZERO, None)
            .expect("all of them, in order");
    }

    #[test]
    fn an_acknowledged_record_lost_or_changed_after_a_crash_is_caught() {
        let mut checker = Checker::new();
        checker.acked.push(1, &ChainHash::of(b"one"));
        checker.acked.push(2, &ChainHash::of(b"two"));
        let kept = vec![
            (1, b"one".to_vec()),
            (2, b"two".to_vec()),
            (3, b"new".to_vec()),
        ];
        assert!(
            checker.on_start(&kept).is_ok(),
            "more than acknowledged is fine"
        );
        let lost = vec![(1, b"one".to_vec())];
        let err = checker.on_start(&lost).expect_err("record 2 is gone");
        assert!(err.contains("acknowledged record 2 was lost"), "{err}");
        let changed = vec![(1, b"one".to_vec()), (2, b"TWO".to_vec())];
        let err = checker.on_start(&changed).expect_err("record 2 differs");
        assert!(err.contains("changed"), "{err}");
    }

    /// Past one run of digests: a change in a full run and in the open one, a record
    /// lost at the end, a record moved by one.
    #[test]
    fn acknowledged_records_are_checked_across_runs_of_digests() {
        let count = 2 * ACKED_RUN + 5;
        let records: Vec<(u64, Vec<u8>)> = (1..=count)
            .map(|seq| (seq, seq.to_le_bytes().to_vec()))
            .collect();
        let mut acked = Acked::default();
        for (seq, bytes) in &records {
            acked.push(*seq, &ChainHash::of(bytes));
        }
        assert_eq!(acked.check(&records), Ok(()));
        for changed_at in [1, ACKED_RUN, ACKED_RUN + 1, count] {
            let mut changed = records.clone();
            changed[changed_at as usize - 1].1.push(0);
            let err = acked.check(&changed).expect_err("a record differs");
            assert!(err.contains("changed after a crash"), "{err}");
            let first = (changed_at - 1) / ACKED_RUN * ACKED_RUN + 1;
            assert!(err.contains(&format!("records {first} to")), "{err}");
        }
        let err = acked
            .check(&records[..records.len() - 1])
            .expect_err("the last is gone");
        assert!(err.contains(&format!("record {count} was lost")), "{err}");
        let mut moved = records.clone();
        moved.remove(ACKED_RUN as usize);
        let err = acked.check(&moved).expect_err("one is missing");
        assert!(
            err.contains(&format!("record {} was lost", ACKED_RUN + 1)),
            "{err}"
        );
    }
}
