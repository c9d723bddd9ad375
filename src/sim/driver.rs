//! The deterministic loop of `fedrun sim`: a virtual clock, an agenda of things due at
//! virtual times, the real [`Engine`] on an in-memory history, and simulated sites and
//! server apps, all on one thread. The invariant checks of a long run run behind it on a
//! thread of their own, in the same order (`sim::check_thread`); what a run prints and
//! the first violation it ends with do not depend on how far apart the two are.
//!
//! At each instant the driver takes everything due, in the order it was scheduled (scenario
//! order for the scenario's own items), hands it to the engine as one batch, and carries out
//! the batch's effects: site requests go to the simulated sites, whose answers are due at the
//! same instant (and so form the next batch); app ends are due later. Timers come from the
//! engine's own deadline, so nothing polls. A crash drops the engine; a restart builds a new
//! one from the stored history, as a real server does.

use crate::lifecycle::command::SubmitSignature;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::{VirtualClock, SIM_EPOCH};
use crate::engine::ids::SeededIds;
use crate::engine::node::{Input, Output, Participant, ReplyToken, Request};
use crate::engine::owner::{Engine, EngineLimits, Ids, StartError, StepError};
use crate::history::record::{ChainHash, GENESIS_HASH};
use crate::history::{History, Storage};
use crate::job::JobId;
use crate::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, Identity, Job, Jobs, Origin, Role, State, Timestamp,
};
use crate::settings::Settings;
use crate::sim::check_thread::{Behind, Checks, Fed, Found, Mark};
use crate::sim::faults::{CrashPoint, Delivery, Direction, Faults, Lie, TickFault};
use crate::sim::invariants::{Checker, KnownBug, Limits, SiteNow, World};
use crate::sim::lives::Lives;
use crate::sim::model::Fact;
use crate::sim::scenario::{Action, AppEnd, Behaviour, Checked, JobSpec};
use crate::sim::site::{SimSite, SiteOutput, KILL_SIGNAL, STOP_SIGNAL};
use crate::sim::storage::FaultyStorage;
use crate::site::protocol::{ExitOutcome, SiteReport, SiteRequest};

/// A run ends at the latest after this much virtual time.
pub const CAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often a site resends the exit reports the server has not acknowledged (under
/// faults; without them every report is acknowledged at once).
const RESEND_EVERY: Duration = Duration::from_secs(5);

/// Steps allowed at one instant before the run is declared stuck (a rule that keeps
/// answering itself without time passing).
const STEPS_PER_INSTANT_MAX: u32 = 100_000;

/// Why a simulation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every job is terminal, its run and archive are settled, and no action is pending.
    AllTerminal,
    /// The scenario's `until` was reached.
    Until,
    /// The 30-day cap was reached.
    Cap,
}

impl Ended {
    /// The word `--json` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::AllTerminal => "all_terminal",
            Ended::Until => "until",
            Ended::Cap => "cap",
        }
    }
}

/// Why a simulation could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario's `[server]` table is not a valid set of settings.
    #[error("invalid scenario: [server]: {0}")]
    Settings(String),
    /// The engine could not start (or restart) on the stored history.
    #[error("at {at}: the server could not start: {source}")]
    Start {
        /// Virtual time.
        at: String,
        /// The engine's error.
        source: Box<StartError>,
    },
    /// A step of the engine failed.
    #[error("at {at}: the engine stopped: {source}")]
    Step {
        /// Virtual time.
        at: String,
        /// The engine's error.
        source: Box<StepError>,
    },
    /// The stored history could not be read back.
    #[error("reading the stored history back failed: {0}")]
    Replay(String),
    /// An invariant of [`crate::sim::invariants`] or the reference model was broken.
    #[error("at {at}: invariant broken: {what}")]
    Invariant {
        /// Virtual time.
        at: String,
        /// What was broken.
        what: String,
        /// The stored history and the driver's notes up to the failure, one line each,
        /// for a person replaying the seed (not part of the message).
        trail: Vec<String>,
    },
    /// The same instant kept producing work without time moving.
    #[error("the simulation made no progress at {at}: over {STEPS_PER_INSTANT_MAX} steps at one instant")]
    Stuck {
        /// Virtual time.
        at: String,
    },
}

/// One job's line of the result, in the order jobs appear (scenario order, then clones).
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    /// The scenario's name (`j1`, `j1#1` for a clone).
    pub name: String,
    /// Its id, once the server accepted it.
    pub job_id: Option<JobId>,
    /// The job as the final state holds it (`None` when never submitted).
    pub job: Option<Arc<crate::lifecycle::Job>>,
}

/// What a simulation produced.
#[derive(Clone, Debug)]
pub struct SimResult {
    /// Why it ended.
    pub ended: Ended,
    /// The virtual time it ended at.
    pub ended_at: Duration,
    /// The jobs.
    pub jobs: Vec<JobResult>,
    /// The stored history the run left, read back by [`SimResult::events`] (a day of
    /// 10,000 jobs is half a million events: they stay encoded until read).
    stored: FaultyStorage,
    /// The events the text output describes (their sequence numbers, in order): noted in
    /// the end's pass over the history, so the text decodes these alone.
    notable: Vec<u64>,
    /// The state rebuilt from the stored history at the end.
    pub state: State,
    /// Things the driver itself noted (postponed or skipped actions), with virtual times.
    pub notes: Vec<(Duration, String)>,
    /// How many faults of each kind the run had (all zero without a `[faults]` table).
    pub faults: crate::sim::faults::FaultCounts,
    /// How often each tolerated known defect of the core showed (empty unless
    /// [`RunOptions::tolerate`] named one).
    pub known_hits: BTreeMap<KnownBug, u32>,
    /// How many jobs the reference model predicted (and agreed with).
    pub model_checked: u32,
}

impl SimResult {
    /// Every stored record, oldest first, as bytes.
    #[cfg(test)]
    pub(crate) fn stored_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.stored.all_records()
    }

    /// How many events the stored history holds.
    pub fn event_count(&self) -> u64 {
        self.stored.record_count()
    }

    /// Every event of the history, oldest first, decoded from the stored records by a
    /// thread of its own ahead of the caller (who writes them out), so the two halves of
    /// printing a long day share the machine's cores. The iteration ends after the first
    /// record that does not read back.
    pub fn events(&self) -> impl Iterator<Item = Result<Event, SimError>> + '_ {
        let stored = self.stored.clone();
        produced_ahead(self.stored.record_count(), move |sink| {
            use crate::history::Storage as _;
            for item in stored.read_from(1) {
                let event = item
                    .map_err(|e| SimError::Replay(e.to_string()))
                    .and_then(|(seq, bytes)| event_of(seq, &bytes));
                if !sink(event) {
                    return;
                }
            }
        })
    }

    /// The events the text output describes ([`crate::sim::output::is_notable`]), oldest
    /// first, decoded from the stored records (the others are not read), by a thread of
    /// their own ahead of the caller as [`SimResult::events`] does.
    pub fn notable_events(&self) -> impl Iterator<Item = Result<Event, SimError>> + '_ {
        let stored = self.stored.clone();
        let notable = self.notable.clone();
        produced_ahead(notable.len() as u64, move |sink| {
            for seq in notable {
                // The chain was checked as the records were folded; only events are read.
                let event = match stored.event_bytes(seq) {
                    Some(bytes) => event_of(seq, &bytes),
                    None => Err(SimError::Replay(format!("stored record {seq} is gone"))),
                };
                if !sink(event) {
                    return;
                }
            }
        })
    }
}

/// The event stored as record `seq`.
fn event_of(seq: u64, bytes: &[u8]) -> Result<Event, SimError> {
    crate::history::record::decode::<Event>(bytes)
        .map(|record| record.event)
        .map_err(|e| SimError::Replay(format!("stored record {seq} does not decode: {e}")))
}

/// Fewer items than this are made on the caller's thread: a thread of their own would cost
/// more than it saves (the fault campaign runs thousands of short runs).
const AHEAD_FROM: u64 = 4_096;

/// The items `produce` hands to its sink (about `expected` of them). From [`AHEAD_FROM`]
/// on they are made on a thread of their own and passed to the caller in chunks, so
/// making the next ones and using the last ones overlap; fewer are made at once, on this
/// thread. The sink says `false` once the caller has stopped reading or after the first
/// error, which is the last item; `produce` should then return.
fn produced_ahead<T: Send + 'static>(
    expected: u64,
    produce: impl FnOnce(&mut dyn FnMut(Result<T, SimError>) -> bool) + Send + 'static,
) -> Box<dyn Iterator<Item = Result<T, SimError>>> {
    const CHUNK: usize = 256;
    if expected < AHEAD_FROM {
        let mut made = Vec::new();
        produce(&mut |item| {
            let failed = item.is_err();
            made.push(item);
            !failed
        });
        return Box::new(made.into_iter());
    }
    let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<Result<T, SimError>>>(4);
    std::thread::spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut open = true;
        produce(&mut |item| {
            if !open {
                return false;
            }
            let failed = item.is_err();
            chunk.push(item);
            if chunk.len() == CHUNK || failed {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                // A closed channel: the caller stopped reading.
                open = chunks.send(full).is_ok() && !failed;
            }
            open
        });
        if open && !chunk.is_empty() {
            let _ = chunks.send(chunk);
        }
    });
    Box::new(received.into_iter().flatten())
}

/// How to run a simulation beyond its scenario and seed.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Known defects of the core to count instead of failing on (the campaign's only).
    pub tolerate: Vec<KnownBug>,
    /// Whether the invariant checks run behind the driver on a thread of their own
    /// (`None`: from [`CHECKS_BEHIND_FROM_JOBS`] jobs in the scenario on). What a run
    /// prints or ends with does not depend on it; tests compare the two.
    pub checks_behind: Option<bool>,
}

/// Scenarios of this many jobs or more have their invariants checked on a thread of
/// their own; shorter runs (the fault campaign's thousands) check beside the driver,
/// where handing each few steps to a thread cost more than it saved.
pub const CHECKS_BEHIND_FROM_JOBS: usize = 1_000;

/// The virtual time of a timestamp, as an offset from virtual time 0.
pub fn offset(at: Timestamp) -> Duration {
    at.since(SIM_EPOCH)
}

/// The timestamp of a virtual time.
pub fn timestamp(at: Duration) -> Timestamp {
    SIM_EPOCH.plus(at)
}

// Items are short-lived entries of the agenda; boxing the large ones would only add
// allocations on the simulator's hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Item {
    Submit(usize),
    Action(usize),
    SiteOnline(usize),
    Report {
        site: usize,
        report: SiteReport,
        /// The server boot and the site's connection it was sent on: a report in flight
        /// is lost with its connection.
        conn: (u64, u64),
    },
    /// An input from the server's own workers (its local participant, its archiver), for
    /// the server process of this boot.
    ToNode(Box<Input>, u64),
    // FAULTS: items that only runs with a `[faults]` table schedule.
    /// A request on its way to a site (delayed), sent on this connection.
    Request {
        site: usize,
        request: Box<SiteRequest>,
        job_id: JobId,
        epoch: u64,
    },
    /// The next fault tick.
    FaultTick,
    /// A site that a fault disconnected comes back.
    SiteBack(usize),
    /// A site resends the exit reports not yet acknowledged.
    Resend(usize),
    /// The server starts again after a crash or a stop.
    Restart,
    /// The fault window ends: the disk has room again.
    FaultsEnd,
    SiteAppEnd {
        site: usize,
        job_id: JobId,
        generation: u64,
    },
    ServerAppEnd {
        job_id: JobId,
        generation: u64,
    },
}

#[derive(Clone, Debug)]
enum Tag {
    None,
    NewJob(String),
}

struct ServerApp {
    generation: u64,
    end: AppEnd,
    /// The server run that started it.
    boot: u64,
}

/// Hook called after every event the engine makes durable, with the state after it; the
/// property test checks its invariants here.
pub type Observer<'a> = &'a mut dyn FnMut(&Event, &State);

struct Sim<'a> {
    checked: &'a Checked,
    seed: u64,
    settings: Settings,
    clock: VirtualClock,
    storage: FaultyStorage,
    engine: Option<Engine>,
    boots: u64,
    sites: Vec<SimSite>,
    agenda: BTreeMap<(Duration, u64), Item>,
    agenda_seq: u64,
    names: Vec<(String, Option<JobId>)>,
    /// Where each name sits in `names` (jobs and clones are found by name at every submit
    /// answer, action and app start).
    name_index: FxHashMap<String, usize>,
    /// The scenario's jobs by name.
    spec_index: FxHashMap<&'a str, usize>,
    /// The sites by name.
    site_of: FxHashMap<&'a str, usize>,
    name_of: BTreeMap<JobId, String>,
    clone_counts: BTreeMap<String, u32>,
    server_apps: BTreeMap<JobId, ServerApp>,
    server_outbox: Vec<Input>,
    next_token: u64,
    postponed: Vec<Item>,
    next_generation: u64,
    notes: Vec<(Duration, String)>,
    observer: Option<Observer<'a>>,
    observed: State,
    scenario_items_pending: usize,
    // FAULTS: the fault decisions, the invariant checker and the physical facts they use.
    faults: Faults,
    /// The invariant checks: behind the driver on a thread of their own (long runs), or
    /// beside it.
    checks: Checks,
    /// A violation the checker reported while the driver waited for it before a crash,
    /// with the trail of records that existed then: the run ends with it.
    stopped: Option<SimError>,
    /// Per site: its connection number (a new one at every connect or loss).
    epochs: Vec<u64>,
    /// Per site: since when (virtual) it is connected or disconnected.
    site_since: Vec<Duration>,
    /// Per site: the scenario took it offline (a fault must not bring it back).
    held_offline: Vec<bool>,
    /// Per site: a resend of unacknowledged reports is scheduled.
    resend_pending: Vec<bool>,
    /// Per link (site, towards the server): when its last message arrives.
    link_last: BTreeMap<(usize, bool), Duration>,
    /// The wall clock minus virtual time, in milliseconds (clock steps move it).
    wall_offset_ms: i64,
    /// The server clock's origin: its time and the virtual time it started at.
    server_base: (Timestamp, Duration),
    /// When the running server started (virtual), `None` while it is down.
    server_up_since: Option<Duration>,
    /// When the server last went down (a crash), for the sites whose grace ran out while it
    /// was up.
    server_down_at: Duration,
    /// Lies told: (report id, outcome).
    lies: std::collections::BTreeSet<(String, ExitOutcome)>,
    lies_told: u64,
    /// Records that a start found although no append acknowledged them.
    unacked_survivors: std::collections::BTreeSet<u64>,
    /// Per site: its current disconnect was recorded by a running server.
    away_recorded: Vec<bool>,
    /// Per site: it came back past its grace while the server was down (its return then
    /// counts from the restart).
    returned_while_down: Vec<bool>,
    /// Per site: when it came back after staying away past its grace, and its apps then.
    returned: Vec<Option<(Duration, Vec<JobId>)>>,
    /// An IO point decided to crash the server; the crash happens once the effect loop
    /// returns.
    crash_requested: bool,
}

/// The identity every scenario action acts as.
pub fn sim_admin() -> Identity {
    Identity {
        name: "admin".to_string(),
        org: "sim".to_string(),
        role: Role::ProjectAdmin,
    }
}

/// Runs a checked scenario with a seed.
pub fn run(checked: &Checked, seed: u64) -> Result<SimResult, SimError> {
    run_observed(checked, seed, None)
}

/// Runs a checked scenario with a seed and options.
pub fn run_with(checked: &Checked, seed: u64, options: &RunOptions) -> Result<SimResult, SimError> {
    run_full(checked, seed, None, options)
}

/// Runs a checked scenario with a seed, calling `observer` after every durable event.
pub fn run_observed<'a>(
    checked: &'a Checked,
    seed: u64,
    observer: Option<Observer<'a>>,
) -> Result<SimResult, SimError> {
    run_full(checked, seed, observer, &RunOptions::default())
}

/// Runs a checked scenario with a seed and options, calling `observer` after every
/// durable event.
pub fn run_full<'a>(
    checked: &'a Checked,
    seed: u64,
    observer: Option<Observer<'a>>,
    options: &RunOptions,
) -> Result<SimResult, SimError> {
    let settings: Settings = checked
        .scenario
        .server
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| SimError::Settings(e.message().to_string()))?;
    let sites = checked
        .scenario
        .sites
        .iter()
        .map(|s| SimSite::new(s.clone(), settings.reservation_timeout))
        .collect();
    let site_count = checked.scenario.sites.len();
    let sim = Sim {
        checked,
        seed,
        settings,
        clock: VirtualClock::new(),
        storage: FaultyStorage::new(),
        engine: None,
        boots: 0,
        sites,
        agenda: BTreeMap::new(),
        agenda_seq: 0,
        names: checked
            .scenario
            .jobs
            .iter()
            .map(|j| (j.name.clone(), None))
            .collect(),
        name_index: checked
            .scenario
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.clone(), i))
            .collect(),
        spec_index: checked
            .scenario
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect(),
        site_of: checked
            .scenario
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect(),
        name_of: BTreeMap::new(),
        clone_counts: BTreeMap::new(),
        server_apps: BTreeMap::new(),
        server_outbox: Vec::new(),
        next_token: 0,
        postponed: Vec::new(),
        next_generation: 0,
        notes: Vec::new(),
        observer,
        observed: State::new(),
        scenario_items_pending: 0,
        // The fault stream is seeded apart from the job ids, so adding a fault to a
        // scenario does not change the ids of its jobs.
        faults: Faults::new(
            checked.scenario.faults.as_ref(),
            seed ^ 0x5eed_fa17_5eed_fa17,
        ),
        checks: {
            let mut checker = Checker::new();
            for bug in &options.tolerate {
                checker.tolerate(*bug);
            }
            let jobs = checked.scenario.jobs.len();
            if options
                .checks_behind
                .unwrap_or(jobs >= CHECKS_BEHIND_FROM_JOBS)
            {
                Checks::behind(checker)
            } else {
                Checks::beside(checker)
            }
        },
        stopped: None,
        epochs: vec![0; site_count],
        site_since: vec![Duration::ZERO; site_count],
        held_offline: vec![false; site_count],
        resend_pending: vec![false; site_count],
        link_last: BTreeMap::new(),
        wall_offset_ms: 0,
        server_base: (SIM_EPOCH, Duration::ZERO),
        server_up_since: None,
        server_down_at: Duration::ZERO,
        lies: Default::default(),
        lies_told: 0,
        crash_requested: false,
        away_recorded: vec![false; site_count],
        unacked_survivors: Default::default(),
        returned: vec![None; site_count],
        returned_while_down: vec![false; site_count],
    };
    sim.run()
}

impl<'a> Sim<'a> {
    fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    fn at_text(&self) -> String {
        format!("+{}", crate::settings::format_duration(self.now()))
    }

    fn schedule(&mut self, at: Duration, item: Item) {
        self.agenda_seq += 1;
        if matches!(item, Item::Submit(_) | Item::Action(_)) {
            self.scenario_items_pending += 1;
        }
        self.agenda.insert((at, self.agenda_seq), item);
    }

    fn note(&mut self, text: String) {
        self.notes.push((self.now(), text));
    }

    fn run(mut self) -> Result<SimResult, SimError> {
        match self.run_to_end() {
            Ok(ended) => self.finish(ended),
            Err(error) => Err(self.first_error(error)),
        }
    }

    fn run_to_end(&mut self) -> Result<Ended, SimError> {
        // Scenario order for things due at the same instant: sites, then jobs, then actions.
        for (i, s) in self.checked.scenario.sites.iter().enumerate() {
            self.schedule(s.online_at.unwrap_or_default(), Item::SiteOnline(i));
        }
        for (i, j) in self.checked.scenario.jobs.iter().enumerate() {
            self.schedule(j.submit_at.unwrap_or_default(), Item::Submit(i));
        }
        for (i, a) in self.checked.scenario.actions.iter().enumerate() {
            self.schedule(a.at, Item::Action(i));
        }
        // FAULTS: the end of the fault window comes first at its instant, then the ticks.
        if let Some(until) = self.faults.until() {
            self.schedule(until, Item::FaultsEnd);
        }
        if let Some(at) = self.faults.next_tick(Duration::ZERO) {
            self.schedule(at, Item::FaultTick);
        }
        self.start_engine()?;
        let until = self.checked.scenario.sim.until;
        let ended = loop {
            if self.settled() {
                break Ended::AllTerminal;
            }
            let next_item = self.agenda.keys().next().map(|(t, _)| *t);
            let next_timer = self
                .engine
                .as_ref()
                .and_then(|e| e.next_deadline())
                .map(|t| self.virtual_of(t).max(self.now()));
            let next = match (next_item, next_timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let limit = until.unwrap_or(CAP).min(CAP);
            match next {
                Some(t) if t <= limit => self.run_instant(t)?,
                _ => {
                    self.clock.advance_to(timestamp(limit));
                    break if until.is_some_and(|u| u <= CAP) {
                        Ended::Until
                    } else {
                        Ended::Cap
                    };
                }
            }
        };
        Ok(ended)
    }

    fn settled(&self) -> bool {
        // Cheap checks first: the state's own check walks every job.
        if self.scenario_items_pending > 0 || !self.postponed.is_empty() {
            return false;
        }
        // FAULTS: a run with faults is over only when nothing is on its way either: no
        // message in flight, no site or server waiting to come back.
        if self.faults.spec().is_some()
            && !self
                .agenda
                .values()
                .all(|i| matches!(i, Item::FaultTick | Item::Resend(_) | Item::FaultsEnd))
        {
            return false;
        }
        self.engine.as_ref().is_some_and(|e| e.is_settled())
    }

    fn run_instant(&mut self, t: Duration) -> Result<(), SimError> {
        self.clock.advance_to(timestamp(t));
        let mut steps = 0u32;
        loop {
            steps += 1;
            if steps > STEPS_PER_INSTANT_MAX {
                return Err(SimError::Stuck { at: self.at_text() });
            }
            let mut batch: Vec<(Input, Tag)> = Vec::new();
            while let Some(entry) = self.agenda.first_entry() {
                if entry.key().0 != t {
                    break;
                }
                let item = entry.remove();
                if matches!(item, Item::Submit(_) | Item::Action(_)) {
                    self.scenario_items_pending -= 1;
                }
                if let Item::Action(i) = &item {
                    if let Action::Abort(job) | Action::Delete(job) | Action::Clone(job) =
                        &self.checked.actions[*i]
                    {
                        // An action on a job submitted in this same batch needs the job's
                        // id, which the server gives only once the submit is decided.
                        if batch
                            .iter()
                            .any(|(_, tag)| matches!(tag, Tag::NewJob(n) if n == job))
                        {
                            self.feed(std::mem::take(&mut batch))?;
                        }
                    }
                }
                if let Item::Action(i) = item {
                    if matches!(
                        self.checked.actions[i],
                        Action::CrashServer | Action::RestartServer
                    ) {
                        // A crash or restart splits the instant: what came before it reaches
                        // the old server first.
                        self.feed(std::mem::take(&mut batch))?;
                        self.crash_or_restart(i)?;
                        continue;
                    }
                }
                if let Item::Restart = item {
                    // FAULTS: a supervisor restarts the server (after a crash, or once the
                    // faults stopped after its append failed).
                    self.feed(std::mem::take(&mut batch))?;
                    if self.engine.is_none() {
                        self.restart()?;
                    }
                    continue;
                }
                self.collect(item, &mut batch);
            }
            // The node's own deadline, on the server's clock: it decides the due timer with
            // the batch.
            let server_now = self.server_now();
            let due = self
                .engine
                .as_ref()
                .and_then(|e| e.next_deadline())
                .is_some_and(|due| self.virtual_of(due) <= t);
            if due {
                if let Some(engine) = &mut self.engine {
                    engine.fire_timers(server_now);
                }
            }
            if batch.is_empty() && !due {
                return Ok(());
            }
            self.feed(batch)?;
        }
    }

    fn origin(&self, what: &str) -> Origin {
        Origin {
            identity: sim_admin(),
            request_id: Some(format!("sim-{}-{what}", self.agenda_seq)),
        }
    }

    fn job_id_of(&self, name: &str) -> Option<JobId> {
        self.name_index.get(name).and_then(|i| self.names[*i].1)
    }

    fn package_of(name: &str) -> BlobHash {
        BlobHash::from(blake3::hash(format!("sim package {name}").as_bytes()))
    }

    fn collect(&mut self, item: Item, batch: &mut Vec<(Input, Tag)>) {
        let up = self.engine.is_some();
        match item {
            Item::Submit(i) => {
                if !up {
                    self.note(format!(
                        "submit of {} waits: the server is down",
                        self.checked.scenario.jobs[i].name
                    ));
                    self.postponed.push(Item::Submit(i));
                    return;
                }
                let name = self.checked.scenario.jobs[i].name.clone();
                let command = Input::Admin {
                    token: self.token(),
                    origin: self.origin(&format!("submit-{name}")),
                    request: AdminRequest::SubmitJob {
                        meta: self.checked.metas[i].clone(),
                        package: Self::package_of(&name),
                        signature: SubmitSignature::NoSigner,
                    },
                };
                batch.push((command, Tag::NewJob(name)));
            }
            Item::Action(i) => self.collect_action(i, batch),
            Item::SiteOnline(s) => self.site_online(s, batch),
            Item::Report { site, report, conn } => {
                let live = conn == (self.boots, self.epochs[site]);
                if up && self.sites[site].online && live {
                    let name = self.sites[site].name().to_string();
                    batch.push((
                        Input::Report {
                            from: Participant::Site(name),
                            report,
                        },
                        Tag::None,
                    ));
                } else if matches!(report, SiteReport::AppExited { .. }) {
                    self.sites[site].keep(report);
                }
            }
            Item::ToNode(input, boot) => {
                if up && boot == self.boots {
                    batch.push((*input, Tag::None));
                } else if matches!(
                    *input,
                    Input::Report {
                        from: Participant::Local,
                        report: SiteReport::AppExited { .. },
                    }
                ) {
                    // The server app's exit is recorded in its workspace and found again
                    // when the server restarts.
                    self.server_outbox.push(*input);
                }
            }
            Item::SiteAppEnd {
                site,
                job_id,
                generation,
            } => {
                if let Some(report) = self.sites[site].app_due(job_id, generation) {
                    self.send_report(site, report);
                }
            }
            Item::ServerAppEnd { job_id, generation } => {
                if self
                    .server_apps
                    .get(&job_id)
                    .is_some_and(|a| a.generation == generation)
                {
                    if let Some(app) = self.server_apps.remove(&job_id) {
                        let outcome = match app.end {
                            AppEnd::Code(c) => ExitOutcome::Code(c),
                            AppEnd::Killed => ExitOutcome::Signal(KILL_SIGNAL),
                        };
                        let boot = self.boots;
                        self.collect(
                            Item::ToNode(Box::new(local_exit(job_id, outcome, false)), boot),
                            batch,
                        );
                    }
                }
            }
            // FAULTS: the items of the fault model.
            Item::Request {
                site,
                request,
                job_id,
                epoch,
            } => {
                // A request sent on a connection that is gone is lost with it.
                if self.sites[site].online && epoch == self.epochs[site] {
                    self.handle_at_site(site, *request, job_id);
                }
            }
            Item::FaultTick => self.fault_tick(batch),
            Item::SiteBack(s) => {
                if !self.held_offline[s] {
                    self.site_online(s, batch);
                }
            }
            Item::Resend(s) => {
                self.resend_pending[s] = false;
                if self.sites[s].online && self.engine.is_some() {
                    for report in self.sites[s].take_outbox() {
                        self.send_report(s, report);
                    }
                }
            }
            Item::FaultsEnd => self.storage.set_full(false),
            // Handled by run_instant, which splits the batch around it.
            Item::Restart => {}
        }
    }

    fn collect_action(&mut self, i: usize, batch: &mut Vec<(Input, Tag)>) {
        let action = self.checked.actions[i].clone();
        let what = self.checked.scenario.actions[i].what.clone();
        let admin = matches!(
            action,
            Action::Abort(_) | Action::Delete(_) | Action::Clone(_)
        );
        if admin && self.engine.is_none() {
            self.note(format!("action \"{what}\" waits: the server is down"));
            self.postponed.push(Item::Action(i));
            return;
        }
        match action {
            Action::Abort(job) | Action::Delete(job) | Action::Clone(job) => {
                let Some(job_id) = self.job_id_of(&job) else {
                    self.note(format!(
                        "action \"{what}\" skipped: job {job} was never accepted by the server"
                    ));
                    return;
                };
                let (request, tag) = match &self.checked.actions[i] {
                    Action::Abort(_) => (AdminRequest::AbortJob { job_id }, Tag::None),
                    Action::Delete(_) => (AdminRequest::DeleteJob { job_id }, Tag::None),
                    _ => {
                        let n = self.clone_counts.entry(job.clone()).or_insert(0);
                        *n += 1;
                        let name = format!("{job}#{n}");
                        self.name_index.insert(name.clone(), self.names.len());
                        self.names.push((name.clone(), None));
                        (AdminRequest::CloneJob { job_id }, Tag::NewJob(name))
                    }
                };
                let command = Input::Admin {
                    token: self.token(),
                    origin: self.origin(&format!("action-{}", i + 1)),
                    request,
                };
                batch.push((command, tag));
            }
            Action::SiteOffline(site) => {
                if let Some(s) = self.site_index(&site) {
                    self.held_offline[s] = true;
                    if self.sites[s].online {
                        self.sites[s].online = false;
                        self.epochs[s] += 1;
                        self.site_since[s] = self.now();
                        self.away_recorded[s] = self.engine.is_some();
                        if self.engine.is_some() {
                            batch.push((
                                Input::Report {
                                    from: Participant::Site(site),
                                    report: SiteReport::Disconnected,
                                },
                                Tag::None,
                            ));
                        }
                    }
                }
            }
            Action::SiteOnline(site) => {
                if let Some(s) = self.site_index(&site) {
                    self.held_offline[s] = false;
                    self.site_online(s, batch);
                }
            }
            Action::CrashServer | Action::RestartServer => {
                // Handled by run_instant, which splits the batch around them.
            }
        }
    }

    fn site_index(&self, name: &str) -> Option<usize> {
        self.site_of.get(name).copied()
    }

    fn site_online(&mut self, s: usize, batch: &mut Vec<(Input, Tag)>) {
        if self.sites[s].online {
            return;
        }
        self.sites[s].online = true;
        self.epochs[s] += 1;
        // FAULTS: a site back after its grace ran out brings apps the server counts as ended.
        let now = self.now();
        if let Some(up) = self.server_up_since {
            let away_from = if self.away_recorded[s] {
                self.site_since[s]
            } else {
                self.site_since[s].max(up)
            };
            if now >= away_from + self.settings.site_reconnect_grace {
                self.returned[s] = Some((now, self.sites[s].running()));
            }
        } else if self.away_recorded[s]
            && now >= self.site_since[s] + self.settings.site_reconnect_grace
        {
            // The grace ran out while a server counted it, and the site came back while
            // the server was down: the server can stop its apps only once it runs again,
            // so the return counts from the restart (see `start_engine`).
            self.returned[s] = Some((now, self.sites[s].running()));
            self.returned_while_down[s] = true;
        }
        self.site_since[s] = now;
        if self.engine.is_some() {
            self.connect(s, batch);
        }
    }

    /// A site (re)connects: its connect report, then the exit reports it kept.
    fn connect(&mut self, s: usize, batch: &mut Vec<(Input, Tag)>) {
        let name = self.sites[s].name().to_string();
        batch.push((
            Input::Report {
                from: Participant::Site(name.clone()),
                report: self.sites[s].connected_report(),
            },
            Tag::None,
        ));
        for report in self.sites[s].take_outbox() {
            batch.push((
                Input::Report {
                    from: Participant::Site(name.clone()),
                    report,
                },
                Tag::None,
            ));
        }
    }

    fn crash_or_restart(&mut self, i: usize) -> Result<(), SimError> {
        if let Some(engine) = self.engine.take() {
            // A crash: the in-memory state is gone; only the stored history remains.
            drop(engine);
            self.server_up_since = None;
            self.server_down_at = self.now();
            self.note("server crashed".to_string());
        }
        if self.checked.actions[i] == Action::RestartServer {
            self.restart()?;
        }
        Ok(())
    }

    /// Starts the server on its stored history and lets everything that waited for it in:
    /// re-attaching runs, its workers' kept results, the sites, postponed actions.
    fn restart(&mut self) -> Result<(), SimError> {
        {
            self.start_engine()?;
            if self.engine.is_none() {
                // FAULTS: the start itself failed to append; the supervisor tries again.
                return Ok(());
            }
            let mut batch = Vec::new();
            if self.settings.resume_runs {
                // The server's local participant reconnects with the apps still running.
                let mut alive: Vec<JobId> = self.server_apps.keys().copied().collect();
                alive.sort_by_key(|id| self.order_of(id));
                batch.push((
                    Input::Report {
                        from: Participant::Local,
                        report: SiteReport::Connected {
                            resources: BTreeMap::new(),
                            running: alive,
                        },
                    },
                    Tag::None,
                ));
            }
            for input in std::mem::take(&mut self.server_outbox) {
                batch.push((input, Tag::None));
            }
            for s in 0..self.sites.len() {
                if self.sites[s].online {
                    self.connect(s, &mut batch);
                }
            }
            for item in std::mem::take(&mut self.postponed) {
                self.collect(item, &mut batch);
            }
            self.feed(batch)?;
        }
        Ok(())
    }

    fn order_of(&self, job_id: &JobId) -> usize {
        self.name_of
            .get(job_id)
            .and_then(|n| self.name_index.get(n).copied())
            .unwrap_or(usize::MAX)
    }

    fn start_engine(&mut self) -> Result<(), SimError> {
        let at = self.at_text();
        // FAULTS: what survived on disk must hold every acknowledged record.
        if let Some(stopped) = self.stopped.take() {
            return Err(stopped);
        }
        let stored = self.storage.all_records();
        self.start_clock(&stored);
        let count = stored.len() as u64;
        let mark = self.mark();
        let acked = match self.checks.start(stored, mark) {
            Ok(acked) => acked,
            Err(found) => return Err(self.broken_at(found)),
        };
        // Records that survived a failed append were never acknowledged: the reference
        // model does not know what was fed in them, so it leaves their jobs alone (records
        // are numbered from 1 without a gap).
        self.unacked_survivors.extend(acked + 1..=count);
        let history = History::from_storage(
            Box::new(self.storage.clone()),
            std::path::Path::new("memory"),
        )
        .map_err(|e| SimError::Start {
            at: at.clone(),
            source: Box::new(StartError::Open(e)),
        })?;
        self.boots += 1;
        let ids = Ids::Seeded(SeededIds::stream(self.seed, self.boots));
        let mut limits = EngineLimits::default();
        if let Some(every) = self.checked.scenario.sim.snapshot_every {
            limits.snapshot_every_events = every.max(1);
        }
        // The snapshot on the disk the start reads (the simulated disk never damages one).
        let stored_snapshot = self
            .storage
            .snapshot_record()
            .map_err(|e| self.broken(format!("the stored snapshot record: {e}")))?
            .map(|record| record.seq);
        let started = Engine::start(
            history,
            self.settings.clone(),
            ids,
            limits,
            self.server_now(),
        );
        let (engine, released) = match started {
            Ok(started) => started,
            Err(StartError::Step(StepError::Append { .. })) if self.faults.spec().is_some() => {
                // FAULTS: the storage refused `ServerStarted`: this start failed too.
                self.after_failed_append();
                return Ok(());
            }
            Err(source) => {
                return Err(SimError::Start {
                    at,
                    source: Box::new(source),
                })
            }
        };
        // INVARIANT: a start loads the snapshot its disk holds; one it cannot decode is
        // only a slower start (the whole history replayed), so nothing else notices.
        if engine.started_from_snapshot() != stored_snapshot {
            return Err(self.broken(format!(
                "the server started from {:?} although its disk holds a snapshot at {:?}",
                engine.started_from_snapshot(),
                stored_snapshot
            )));
        }
        // Snapshots are encoded while the driver goes on, as the server encodes them while
        // it goes on appending; each is installed at a step the history's length sets (see
        // `Engine::snapshot_off_thread`; a crash before it loses it, as a real one would).
        let mut engine = engine;
        engine.snapshot_off_thread();
        self.engine = Some(engine);
        self.server_up_since = Some(self.now());
        let now = self.now();
        for (s, returned) in self.returned.iter_mut().enumerate() {
            if std::mem::take(&mut self.returned_while_down[s]) {
                if let Some((at, _)) = returned {
                    *at = now;
                }
            }
        }
        if self.faults.spec().is_some() {
            self.observed = State::new();
        }
        // FAULTS: replay everything stored into a fresh state; the start made it durable.
        let stored = self.storage.all_records();
        let (now, mark) = (self.now(), self.mark());
        self.checks.records(stored, now, None, mark);
        self.checks.after_start();
        self.notify_observer()?;
        if self.boots > 1 {
            self.note("server restarted from its stored history".to_string());
        }
        self.dispatch(released);
        self.after_dispatch()
    }

    fn token(&mut self) -> ReplyToken {
        self.next_token += 1;
        ReplyToken(self.next_token)
    }

    fn feed(&mut self, batch: Vec<(Input, Tag)>) -> Result<(), SimError> {
        let Some(engine) = self.engine.as_ref() else {
            return Ok(());
        };
        // A due timer waits in the node's queue: a batch of no inputs still decides it.
        let queued = engine.node().queued_inputs();
        if batch.is_empty() && queued == 0 {
            return Ok(());
        }
        let mut tags: BTreeMap<ReplyToken, String> = BTreeMap::new();
        // FAULTS: what the reference model needs from the batch, in input order: a fact
        // fed, or an abort (a fact only once the node accepted it).
        let mut fed: Vec<(JobId, Fact, Option<ReplyToken>)> = Vec::new();
        let mut inputs = Vec::with_capacity(batch.len());
        for (input, tag) in batch {
            if let (Input::Admin { token, .. }, Tag::NewJob(name)) = (&input, tag) {
                tags.insert(*token, name);
            }
            if let Some((job_id, fact)) = self.fact_of(&input) {
                fed.push((job_id, fact, None));
            }
            if let Input::Admin {
                token,
                request: AdminRequest::AbortJob { job_id },
                ..
            } = &input
            {
                fed.push((*job_id, Fact::Abort, Some(*token)));
            }
            inputs.push(input);
        }
        let now = self.now();
        if let Some(fault) = self.faults.write_fault(now, inputs.len() + queued) {
            self.storage.plan(fault);
        }
        let server_now = self.server_now();
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        let first_new = engine.state().last_seq + 1;
        let stepped = engine.step(inputs, server_now);
        self.storage.unplan();
        let outputs = match stepped {
            Ok(outputs) => outputs,
            Err(source) => {
                let injected =
                    self.faults.spec().is_some() && matches!(source, StepError::Append { .. });
                if injected {
                    // FAULTS: the append failed: the node stops (or died in the write).
                    self.after_failed_append();
                    return Ok(());
                }
                return Err(SimError::Step {
                    at: self.at_text(),
                    source: Box::new(source),
                });
            }
        };
        // FAULTS: the step returned, so its records are acknowledged: the checker checks
        // and keeps them, and places the facts the batch fed at the events recording them.
        let stored = self.storage.records_from(first_new);
        let accepted = outputs
            .iter()
            .filter_map(|output| match output {
                Output::Reply {
                    token,
                    answer: Ok(Ok(Answer::Accepted { .. })),
                } => Some(*token),
                _ => None,
            })
            .collect();
        let fed = Fed {
            facts: fed,
            accepted,
            first_new,
        };
        let mark = self.mark();
        self.checks.records(stored, now, Some(fed), mark);
        for output in &outputs {
            let Output::Reply { token, answer } = output else {
                continue;
            };
            let Some(name) = tags.remove(token) else {
                continue;
            };
            match answer {
                Ok(Ok(Answer::Submitted { job_id })) => {
                    self.name_of.insert(*job_id, name.clone());
                    if let Some(i) = self.name_index.get(&name) {
                        self.names[*i].1 = Some(*job_id);
                    }
                }
                Ok(Err(rejection)) => {
                    self.note(format!("{name} refused: {rejection}"));
                }
                Err(refusal) => self.note(format!("{name} refused: {refusal}")),
                _ => {}
            }
        }
        self.notify_observer()?;
        if self.faults.crash_at(CrashPoint::AfterAppend, now) {
            // FAULTS: the batch is durable, but none of its outputs (answers, requests,
            // acknowledgements) left.
            self.crash("after an append, before its effects");
            return self.check_world();
        }
        self.dispatch(outputs);
        self.after_dispatch()
    }

    /// Feeds every event made durable since the last call to the observer, folded with the
    /// same checked replay a restart uses, and checks that this replayed state equals the
    /// engine's live state after each batch.
    fn notify_observer(&mut self) -> Result<(), SimError> {
        let Some(observer) = self.observer.as_mut() else {
            return Ok(());
        };
        let Some(engine) = self.engine.as_ref() else {
            return Ok(());
        };
        let from = self.observed.last_seq + 1;
        for record in engine.history().records_from(from) {
            let record = record.map_err(|e| SimError::Replay(e.to_string()))?;
            self.observed
                .apply_checked(&record.event)
                .map_err(|e| SimError::Replay(e.to_string()))?;
            observer(&record.event, &self.observed);
        }
        if &self.observed != engine.state() {
            return Err(SimError::Replay(format!(
                "after event {}, the replayed state differs from the live state",
                self.observed.last_seq
            )));
        }
        Ok(())
    }

    fn behaviour(&self, site: usize, job_id: JobId) -> Behaviour {
        let name = self.name_of.get(&job_id).map_or("", String::as_str);
        let run_for = self.job_spec(name).map(|j| j.run_for()).unwrap_or_default();
        self.sites[site].spec().behaviour_for(name, run_for)
    }

    fn job_spec(&self, name: &str) -> Option<&JobSpec> {
        let base = name.split('#').next().unwrap_or(name);
        self.spec_index
            .get(base)
            .map(|i| &self.checked.scenario.jobs[*i])
    }

    fn send_to_site(&mut self, site: &str, request: SiteRequest, job_id: JobId) {
        let Some(s) = self.site_index(site) else {
            return;
        };
        if !self.sites[s].online {
            // The request is lost with the connection; the engine's timeout decides.
            return;
        }
        // FAULTS: the network may lose the request with its connection, or delay it.
        let now = self.now();
        match self.faults.deliver(now, Direction::ToSite) {
            Delivery::LostWithConnection { reconnect_after } => {
                self.connection_lost(s, reconnect_after);
                return;
            }
            Delivery::Arrives(delays) => {
                let at = self.arrival(s, false, delays[0]);
                if at > now {
                    let epoch = self.epochs[s];
                    self.schedule(
                        at,
                        Item::Request {
                            site: s,
                            request: Box::new(request),
                            job_id,
                            epoch,
                        },
                    );
                    return;
                }
            }
        }
        self.handle_at_site(s, request, job_id);
    }

    /// The site takes a request that reached it.
    fn handle_at_site(&mut self, s: usize, request: SiteRequest, job_id: JobId) {
        let now = self.now();
        let undone = match &request {
            SiteRequest::Stop { job_id } if self.sites[s].is_running(*job_id) => {
                Some((*job_id, false))
            }
            SiteRequest::Delete { job_id } => Some((*job_id, true)),
            _ => None,
        };
        if let Some((undone, delete)) = undone {
            // FAULTS: the server must not stop or undeploy a participant of a live run.
            let site = self.sites[s].name().to_string();
            self.checks.stop_arrives(site, undone, delete);
        }
        let started = match &request {
            SiteRequest::Start { job_id } if !self.sites[s].ever_ran(job_id) => Some(*job_id),
            _ => None,
        };
        let behaviour = self.behaviour(s, job_id);
        let outputs = self.sites[s].handle(request, now, behaviour);
        if let Some(job_id) = started.filter(|job| self.sites[s].ever_ran(job)) {
            // The checker's record of what each site ever ran.
            let site = self.sites[s].name().to_string();
            self.checks.ran(site, job_id);
        }
        for output in outputs {
            match output {
                SiteOutput::Report(report) => self.send_report(s, report),
                SiteOutput::AppEndsAt {
                    at,
                    job_id,
                    generation,
                } => self.schedule(
                    at,
                    Item::SiteAppEnd {
                        site: s,
                        job_id,
                        generation,
                    },
                ),
            }
        }
    }

    /// Carries out the node's outputs as the outside world would: site requests go to
    /// the simulated sites (through the faulty network), the local participant's requests
    /// to the simulated server apps, archives to the simulated blob store. The routing
    /// itself is the node's.
    fn dispatch(&mut self, outputs: Vec<Output>) {
        let now = self.now();
        let boot = self.boots;
        for output in outputs {
            if self.crash_requested {
                // FAULTS: the server died at an IO point; the rest of the batch's outputs
                // never leave.
                break;
            }
            match output {
                Output::Send {
                    to: Participant::Site(site),
                    request,
                } => {
                    // An acknowledgement concerns no job; the nil id stands for none.
                    let (request, job_id) = site_request(request);
                    let job_id = job_id.unwrap_or(JobId(uuid::Uuid::nil()));
                    self.send_to_site(&site, request, job_id);
                }
                Output::Send {
                    to: Participant::Local,
                    request,
                } => self.local_request(request),
                Output::Archive { job_id } => {
                    let hash =
                        BlobHash::from(blake3::hash(format!("sim archive {job_id}").as_bytes()));
                    if self.faults.crash_at(CrashPoint::DuringArchive, now) {
                        // FAULTS: the server dies while zipping: the blob may or may not
                        // have been stored, and nothing was recorded.
                        if self.faults.coin() {
                            self.checks.archived(job_id, hash);
                        }
                        self.crash_requested = true;
                        continue;
                    }
                    let result = if self.faults.archive_fails(now) {
                        Err("zipping the workspace failed (simulated)".to_string())
                    } else {
                        self.checks.archived(job_id, hash);
                        Ok(hash)
                    };
                    self.schedule(
                        now,
                        Item::ToNode(Box::new(Input::ArchiveFinished { job_id, result }), boot),
                    );
                }
                Output::Reply { .. }
                | Output::RemoveRunFolder { .. }
                | Output::FreeBlob { .. }
                | Output::TakeSnapshot { .. } => {}
            }
        }
    }

    /// The server's local participant, simulated: deploys work at once, a started app ends
    /// after its scenario's run time, a stop ends it with the stop signal.
    fn local_request(&mut self, request: Request) {
        let now = self.now();
        let boot = self.boots;
        let report = |report| {
            Item::ToNode(
                Box::new(Input::Report {
                    from: Participant::Local,
                    report,
                }),
                boot,
            )
        };
        match request {
            Request::Deploy { job_id, .. } => self.schedule(
                now,
                report(SiteReport::DeployAnswer {
                    job_id,
                    result: Ok(()),
                }),
            ),
            Request::Start { job_id } => {
                let name = self.name_of.get(&job_id).cloned().unwrap_or_default();
                let (end, run_for) = self
                    .job_spec(&name)
                    .map(|j| (j.server_exit_code, j.run_for()))
                    .unwrap_or_default();
                self.next_generation += 1;
                let generation = self.next_generation;
                self.server_apps.insert(
                    job_id,
                    ServerApp {
                        generation,
                        end,
                        boot,
                    },
                );
                self.schedule(now + run_for, Item::ServerAppEnd { job_id, generation });
                if self.faults.crash_at(CrashPoint::AfterSpawn, now) {
                    // FAULTS: the process runs, but its start was never recorded.
                    self.crash_requested = true;
                    return;
                }
                self.schedule(
                    now,
                    report(SiteReport::StartAnswer {
                        job_id,
                        result: Ok(()),
                    }),
                );
            }
            Request::Stop { job_id } => {
                if self.server_apps.remove(&job_id).is_some() {
                    self.schedule(
                        now,
                        Item::ToNode(
                            Box::new(local_exit(job_id, ExitOutcome::Signal(STOP_SIGNAL), true)),
                            boot,
                        ),
                    );
                }
            }
            Request::Delete { .. }
            | Request::Acknowledge { .. }
            | Request::CheckResources { .. }
            | Request::CancelReservation { .. } => {}
        }
    }

    // FAULTS: the fault model's helpers. Everything below only acts when the scenario
    // has a `[faults]` table, except the clock and invariant checks, which hold always.

    /// An invariant violation at the current virtual time.
    fn broken(&self, what: String) -> SimError {
        self.broken_at(Found {
            what,
            mark: self.mark(),
        })
    }

    /// Where the run is now, for the checks asked for here.
    fn mark(&self) -> Mark {
        Mark {
            at: self.now(),
            stored: self.storage.record_count(),
            notes: self.notes.len(),
        }
    }

    /// An invariant violation found at `found.mark`: its time, and the records and notes
    /// that existed then.
    fn broken_at(&self, found: Found) -> SimError {
        let Found { what, mark } = found;
        let mut trail: Vec<String> = self
            .storage
            .all_records()
            .iter()
            .take(mark.stored as usize)
            .filter_map(|(_, bytes)| crate::history::record::decode::<Event>(bytes).ok())
            .map(|r| crate::history::event_text(&r.event))
            .collect();
        trail.extend(self.notes[..mark.notes].iter().map(|(at, note)| {
            format!("note at +{}: {note}", crate::settings::format_duration(*at))
        }));
        SimError::Invariant {
            at: format!("+{}", crate::settings::format_duration(mark.at)),
            what,
            trail,
        }
    }

    /// The server's clock: read from the wall clock when it started (never earlier than
    /// the last stored event), then advancing with virtual time (SPEC section 3).
    fn server_now(&self) -> Timestamp {
        let (base, since) = self.server_base;
        base.plus(self.now().saturating_sub(since))
    }

    /// The virtual time at which the server's clock shows `at`.
    fn virtual_of(&self, at: Timestamp) -> Duration {
        let (base, since) = self.server_base;
        since + at.since(base)
    }

    /// Sets the server clock's origin for a start on `stored`.
    fn start_clock(&mut self, stored: &[(u64, Vec<u8>)]) {
        let wall = Timestamp::from_millis(
            timestamp(self.now())
                .as_millis()
                .saturating_add(self.wall_offset_ms),
        );
        let last_at = stored
            .last()
            .and_then(|(_, bytes)| crate::history::record::decode::<Event>(bytes).ok())
            .map(|r| r.event.at)
            .unwrap_or(wall);
        self.server_base = (wall.max(last_at), self.now());
    }

    /// What a command tells the reference model, if anything. Lies are not facts.
    fn fact_of(&self, input: &Input) -> Option<(JobId, Fact)> {
        match input {
            Input::Report {
                from: Participant::Site(site),
                report:
                    SiteReport::AppExited {
                        job_id,
                        report_id,
                        outcome,
                        stop_requested,
                    },
            } => {
                if self.lies.contains(&(report_id.clone(), *outcome)) {
                    return None;
                }
                Some((
                    *job_id,
                    Fact::SiteExit {
                        site: site.clone(),
                        outcome: *outcome,
                        stop_requested: *stop_requested,
                    },
                ))
            }
            Input::Report {
                from: Participant::Local,
                report:
                    SiteReport::AppExited {
                        job_id, outcome, ..
                    },
            } => Some((*job_id, Fact::ServerExit(*outcome))),
            _ => None,
        }
    }

    /// When a message sent now on a link arrives after `delay`: links are first-in
    /// first-out unless the fault model lets this message overtake.
    fn arrival(&mut self, s: usize, to_server: bool, delay: Duration) -> Duration {
        let now = self.now();
        let last = self
            .link_last
            .get(&(s, to_server))
            .copied()
            .unwrap_or_default();
        let mut at = now + delay;
        if at < last && !self.faults.may_overtake(now) {
            at = last;
        }
        self.link_last.insert((s, to_server), at.max(last));
        at
    }

    /// A site sends a report to the server, through the (faulty) network.
    fn send_report(&mut self, s: usize, report: SiteReport) {
        let now = self.now();
        if self.faults.spec().is_some() && matches!(report, SiteReport::AppExited { .. }) {
            self.schedule_resend(s);
        }
        if !self.sites[s].online {
            if matches!(report, SiteReport::AppExited { .. }) {
                self.sites[s].keep(report);
            }
            return;
        }
        match self.faults.deliver(now, Direction::ToServer) {
            Delivery::LostWithConnection { reconnect_after } => {
                // An exit report stays kept by the site; an answer is gone.
                self.connection_lost(s, reconnect_after);
            }
            Delivery::Arrives(delays) => {
                let conn = (self.boots, self.epochs[s]);
                for delay in delays {
                    let at = self.arrival(s, true, delay);
                    self.schedule(
                        at,
                        Item::Report {
                            site: s,
                            report: report.clone(),
                            conn,
                        },
                    );
                }
            }
        }
    }

    /// A site resends its unacknowledged reports a while from now, as a real site does
    /// until they are acknowledged.
    fn schedule_resend(&mut self, s: usize) {
        if !self.resend_pending[s] {
            self.resend_pending[s] = true;
            self.schedule(self.now() + RESEND_EVERY, Item::Resend(s));
        }
    }

    /// A site's connection breaks now; the site dials again after `after`.
    fn connection_lost(&mut self, s: usize, after: Duration) {
        if !self.sites[s].online {
            return;
        }
        let now = self.now();
        self.sites[s].online = false;
        self.epochs[s] += 1;
        self.site_since[s] = now;
        self.away_recorded[s] = self.engine.is_some();
        let site = self.sites[s].name().to_string();
        self.schedule(
            now,
            Item::ToNode(
                Box::new(Input::Report {
                    from: Participant::Site(site),
                    report: SiteReport::Disconnected,
                }),
                self.boots,
            ),
        );
        self.schedule(now + after, Item::SiteBack(s));
    }

    /// A fault tick: the site, disk and clock faults it starts; then the next tick.
    fn fault_tick(&mut self, batch: &mut Vec<(Input, Tag)>) {
        let now = self.now();
        for fault in self.faults.tick(now, self.sites.len()) {
            match fault {
                TickFault::Disconnect { site, for_ } => {
                    if !self.held_offline[site] {
                        self.connection_lost(site, for_);
                    }
                }
                TickFault::SiteRestart { site } => {
                    if self.sites[site].online {
                        // The agent's new connection replaces the old one; whatever was
                        // in flight on the old one is lost.
                        self.epochs[site] += 1;
                        self.site_since[site] = now;
                        if self.engine.is_some() {
                            self.connect(site, batch);
                        }
                    }
                }
                TickFault::Lie { site, lie, pick } => self.lie(site, lie, pick),
                TickFault::DiskFull => self.storage.set_full(true),
                TickFault::ClockStep(ms) => {
                    self.wall_offset_ms = self.wall_offset_ms.saturating_add(ms);
                }
            }
        }
        if let Some(at) = self.faults.next_tick(now) {
            self.schedule(at, Item::FaultTick);
        }
    }

    /// Site `s` tells a lie.
    fn lie(&mut self, s: usize, lie: Lie, pick: u64) {
        self.lies_told += 1;
        let name = self.sites[s].name().to_string();
        let known: Vec<JobId> = self.name_of.keys().copied().collect();
        let report = match lie {
            Lie::NeverRan => {
                let never: Vec<JobId> = known
                    .iter()
                    .copied()
                    .filter(|j| !self.sites[s].ever_ran(j))
                    .collect();
                let job_id = if never.is_empty() {
                    JobId(uuid::Uuid::from_u64_pair(pick, self.lies_told))
                } else {
                    never[(pick % never.len() as u64) as usize]
                };
                let report_id = format!("{name}/lie-{}", self.lies_told);
                self.checks.lie_told(report_id.clone());
                SiteReport::AppExited {
                    job_id,
                    report_id,
                    outcome: ExitOutcome::Code(101),
                    stop_requested: false,
                }
            }
            Lie::RepeatedId => {
                let done: Vec<(JobId, String, ExitOutcome)> = self.sites[s]
                    .reports_made()
                    .filter(|(_, id, _)| !self.sites[s].is_unacked(id))
                    .collect();
                if done.is_empty() {
                    return;
                }
                let (job_id, report_id, outcome) =
                    done[(pick % done.len() as u64) as usize].clone();
                let outcome = if outcome == ExitOutcome::Code(104) {
                    ExitOutcome::Code(0)
                } else {
                    ExitOutcome::Code(104)
                };
                SiteReport::AppExited {
                    job_id,
                    report_id,
                    outcome,
                    stop_requested: false,
                }
            }
            Lie::OversizedId => {
                let running = self.sites[s].running();
                let pool = if running.is_empty() { &known } else { &running };
                let Some(job_id) = pool
                    .get((pick % pool.len().max(1) as u64) as usize)
                    .copied()
                else {
                    return;
                };
                let report_id = format!("{name}/{}", "x".repeat(100_000));
                self.checks.lie_told(report_id.clone());
                SiteReport::AppExited {
                    job_id,
                    report_id,
                    outcome: ExitOutcome::Code(101),
                    stop_requested: false,
                }
            }
        };
        if let SiteReport::AppExited {
            report_id, outcome, ..
        } = &report
        {
            self.lies.insert((report_id.clone(), *outcome));
        }
        // A lie goes out like any report, but the site does not keep it for resending.
        let now = self.now();
        if self.sites[s].online {
            if let Delivery::Arrives(delays) = self.faults.deliver(now, Direction::ToServer) {
                let conn = (self.boots, self.epochs[s]);
                let at = self.arrival(s, true, delays[0]);
                self.schedule(
                    at,
                    Item::Report {
                        site: s,
                        report,
                        conn,
                    },
                );
            }
        }
    }

    /// The server dies now: its memory is gone, and with a power loss so is everything
    /// its storage had not synced. A supervisor starts it again a little later.
    fn crash(&mut self, why: &str) {
        if self.engine.take().is_none() {
            return;
        }
        let power_loss = self.faults.power_loss();
        if power_loss {
            self.checks_caught_up();
        }
        self.storage.crash(power_loss);
        self.server_up_since = None;
        self.server_down_at = self.now();
        self.note(format!(
            "server crashed {why}{}",
            if power_loss { " (power loss)" } else { "" }
        ));
        let after = self.faults.restart_after();
        self.schedule(self.now() + after, Item::Restart);
    }

    /// An append failed. If the fault was a crash in the middle of the write, the server
    /// died; otherwise the node stops (the engine refuses every later step after
    /// `StepError::Append`) and its supervisor restarts it once the fault window is over.
    fn after_failed_append(&mut self) {
        if self.storage.take_crash() {
            if self.engine.is_none() {
                // The start itself died: the restart is tried again later.
                let after = self.faults.restart_after();
                let power_loss = self.faults.power_loss();
                if power_loss {
                    self.checks_caught_up();
                }
                self.storage.crash(power_loss);
                self.schedule(self.now() + after, Item::Restart);
                return;
            }
            self.crash("in the middle of an append");
            return;
        }
        self.engine = None;
        self.server_up_since = None;
        self.server_down_at = self.now();
        // The process exits; what it wrote stays in the page cache.
        self.storage.crash(false);
        self.note("server stopped: its history refused a write".to_string());
        let at = self.faults.until().unwrap_or_default().max(self.now());
        self.schedule(at, Item::Restart);
    }

    /// After a batch's effects left: a crash an IO point asked for, then the checks.
    fn after_dispatch(&mut self) -> Result<(), SimError> {
        if std::mem::take(&mut self.crash_requested) {
            self.crash("at an IO point");
        }
        self.check_world()
    }

    /// The physical world now.
    fn world(&self) -> World {
        let up = self.server_up_since;
        World {
            now: self.now(),
            server_up_since: up,
            // With `resume_runs = false` a server app of an earlier server run is out of
            // the server's reach by the scenario's definition (SPEC 10): it neither
            // re-attaches nor can be stopped, so the invariants do not hold it to account.
            server_apps: self
                .server_apps
                .iter()
                .filter(|(_, app)| self.settings.resume_runs || app.boot == self.boots)
                .map(|(job, _)| *job)
                .collect(),
            earlier_server_apps: self
                .server_apps
                .iter()
                .filter(|(_, app)| app.boot < self.boots)
                .map(|(job, _)| *job)
                .collect(),
            sites: self
                .sites
                .iter()
                .enumerate()
                .map(|(i, site)| SiteNow {
                    name: site.name().to_string(),
                    connected: site.online && up.is_some(),
                    since: match up {
                        Some(up) if site.online => self.site_since[i].max(up),
                        // A disconnect the server could not record (it was down) counts
                        // from its start.
                        Some(up) if self.site_since[i] < up && !self.away_recorded[i] => up,
                        _ => self.site_since[i],
                    },
                    apps: site.running(),
                    // SPEC 8 counted its processes as ended when its grace ran out while
                    // a server was up; a later crash does not bring them back.
                    lapsed: up.is_none()
                        && !site.online
                        && self.away_recorded[i]
                        && self.site_since[i] + self.settings.site_reconnect_grace
                            <= self.server_down_at,
                    returned: self.returned[i].clone(),
                })
                .collect(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_jobs: self.settings.max_jobs as usize,
            abort_grace: self.settings.abort_grace,
            site_reconnect_grace: self.settings.site_reconnect_grace,
        }
    }

    /// Checks the invariants of [`crate::sim::invariants`] against the world now.
    /// The checks run behind the driver; a violation they found at an earlier step
    /// ends the run as found there.
    fn check_world(&mut self) -> Result<(), SimError> {
        if let Some(stopped) = self.stopped.take() {
            return Err(stopped);
        }
        let live = self.engine.as_ref().map(|e| e.state().clone());
        let (world, limits, mark) = (self.world(), self.limits(), self.mark());
        match self.checks.after_step(live, world, limits, mark) {
            Some(found) => Err(self.broken_at(found)),
            None => Ok(()),
        }
    }

    /// Waits for the checker before a crash drops unsynced records: a violation it found
    /// is kept with the trail of records that existed when it was found.
    fn checks_caught_up(&mut self) {
        if self.stopped.is_none() {
            if let Some(found) = self.checks.sync() {
                self.stopped = Some(self.broken_at(found));
            }
        }
    }

    /// The run stopped on `error`; a violation the checker found before it comes first,
    /// as it did when the checks ran step by step with the driver.
    fn first_error(&mut self, error: SimError) -> SimError {
        if let Some(stopped) = self.stopped.take() {
            return stopped;
        }
        match self.checks.sync() {
            Some(found) => self.broken_at(found),
            None => error,
        }
    }

    /// The reference model's verdict on every job that ran without a restart in its life.
    fn check_model(
        &self,
        state: &State,
        lives: Lives,
        facts: &BTreeMap<JobId, Vec<(u64, Fact)>>,
    ) -> Result<u32, SimError> {
        let Lives {
            jobs: lives,
            starts,
            ..
        } = lives;
        let mut checked = 0;
        for job in state.jobs.values() {
            let id = job.id;
            let Some(life) = lives.get(&id) else {
                continue;
            };
            let (Some(dispatched), Some(finished)) = (life.dispatched, life.finished) else {
                continue;
            };
            // A server start strictly between the dispatch and the end.
            let after_dispatch = starts.partition_point(|seq| *seq <= dispatched);
            let restarted = starts
                .get(after_dispatch)
                .is_some_and(|seq| *seq < finished);
            if !life.ran || restarted || life.unknown {
                continue;
            }
            let mut facts: Vec<(u64, Fact)> = facts
                .get(&id)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|(at, _)| *at <= finished)
                .collect();
            for (seq, site) in &life.lapses {
                if *seq <= finished {
                    facts.push((*seq, Fact::Lapse { site: site.clone() }));
                }
            }
            facts.sort_by_key(|(at, _)| *at);
            let facts: Vec<Fact> = facts.into_iter().map(|(_, f)| f).collect();
            let clients: Vec<String> = job.run.job_clients.iter().cloned().collect();
            let predicted = crate::sim::model::predict(&clients, &facts);
            if predicted != job.status {
                return Err(self.broken(format!(
                    "job {id} ended {} but the reference model predicts {predicted} from {facts:?}",
                    job.status
                )));
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// The stored history, opened as a restart opens it.
    fn stored_history(storage: FaultyStorage) -> Result<History<Event>, SimError> {
        History::<Event>::from_storage(Box::new(storage), std::path::Path::new("memory"))
            .map_err(|e| SimError::Replay(e.to_string()))
    }

    /// Marks the jobs of the stored events that survived a crash unacknowledged (a few
    /// records after each crash, read back here).
    fn mark_unacked_survivors(&self, lives: &mut Lives) -> Result<(), SimError> {
        use crate::history::Storage as _;
        for &seq in self.unacked_survivors.range(..=self.storage.record_count()) {
            let bytes = self
                .storage
                .read(seq)
                .map_err(|e| SimError::Replay(e.to_string()))?
                .ok_or_else(|| SimError::Replay(format!("stored record {seq} is gone")))?;
            if let Some(job) = event_of(seq, &bytes)?.kind.job_id() {
                lives.mark_unknown(job);
            }
        }
        Ok(())
    }

    /// One pass over the stored history: each record is checked (chain, order,
    /// transition) and folded, exactly as a restart would rebuild the state, and what the
    /// reference model needs of it is gathered. The records are read, checked and decoded
    /// on a thread of their own, ahead of the fold on this one.
    fn fold_stored(&self, live: Option<&State>) -> Result<(State, Lives), SimError> {
        let storage = self.storage.clone();
        let records = produced_ahead(self.storage.record_count(), move |sink| {
            let history = match Sim::stored_history(storage) {
                Ok(history) => history,
                Err(e) => {
                    sink(Err(e));
                    return;
                }
            };
            for record in history.records_from(1) {
                if !sink(record.map_err(|e| SimError::Replay(e.to_string()))) {
                    return;
                }
            }
        });
        let mut lives = Lives::default();
        let mut state = State::new();
        // Every so many records, the jobs changed since are compared with the live
        // state's, and each found equal is shared with it (`Jobs::share`): a job whose
        // last event has been folded is held once, not twice, while the rest of the
        // history is folded (the live state is kept for the comparison at the end).
        const SHARE_EVERY: usize = 4096;
        let mut since = state.jobs.clone();
        for (n, record) in records.enumerate() {
            let event = record?.event;
            lives.see(&event);
            state
                .apply_owned(event)
                .map_err(|e| SimError::Replay(e.to_string()))?;
            if let Some(live) = live.filter(|_| n % SHARE_EVERY == SHARE_EVERY - 1) {
                share_equal_jobs(&mut state.jobs, &mut since, &live.jobs);
            }
        }
        Ok((state, lives))
    }

    fn finish(mut self, ended: Ended) -> Result<SimResult, SimError> {
        let ended_at = self.now();
        // The result is read back from the stored history, not from the live engine: what
        // the output shows is exactly what a restart would rebuild.
        let live = self.engine.take().map(|e| e.state().clone());
        // The checker finishes what it was handed.
        if let Some(stopped) = self.stopped.take() {
            return Err(stopped);
        }
        let behind = match self.checks.finish() {
            Ok(behind) => behind,
            Err(found) => return Err(self.broken_at(found)),
        };
        let Behind { mut checker, facts } = behind;
        // The checker folded every record as the engine stored it, each checked as a
        // restart checks it (place, chain link, event), and gathered what the reference
        // model needs. Stored records change only at the tail, when a crash takes them,
        // and every start hands the checker the whole stored history again. So when the
        // server is up at the end and the stored history ends in the record the checker
        // folded last (after a crash it may not: the checker folded what the crash then
        // took), the checker's state and lives are those of the stored history. Otherwise
        // the stored history is read and folded again here.
        let count = self.storage.record_count();
        let replayed = match &live {
            Some(_) => {
                let head = match self.storage.last() {
                    Ok(last) => last.map_or(GENESIS_HASH, |(_, bytes)| ChainHash::of(&bytes)),
                    Err(e) => return Err(SimError::Replay(e.to_string())),
                };
                checker.take_replayed_if_stored(count, head)
            }
            None => {
                checker.release_replayed();
                None
            }
        };
        let (state, mut lives) = match replayed {
            Some(folded) => folded,
            None => self.fold_stored(live.as_ref())?,
        };
        self.mark_unacked_survivors(&mut lives)?;
        if let Some(live) = live {
            if live != state {
                return Err(SimError::Replay(
                    "the state replayed from the history differs from the live state".into(),
                ));
            }
        }
        // FAULTS: the end-of-run invariants and the reference model. A run that ended on
        // its own (every job settled) must have left nothing running; one cut short by
        // `until` or the cap is checked only where its faults had stopped.
        let notable = std::mem::take(&mut lives.notable);
        let model_checked = self.check_model(&state, lives, &facts)?;
        let faults_over = self.faults.until().is_none_or(|u| ended_at >= u);
        if ended == Ended::AllTerminal && faults_over {
            checker
                .at_end(&state, &self.world())
                .map_err(|what| self.broken(what))?;
        }
        if ended == Ended::Cap && self.faults.spec().is_some() {
            return Err(self.broken(
                "30 virtual days passed after the faults stopped without every job settling"
                    .to_string(),
            ));
        }
        let jobs = self
            .names
            .iter()
            .map(|(name, id)| JobResult {
                name: name.clone(),
                job_id: *id,
                job: id.and_then(|id| state.jobs.get(&id).cloned()),
            })
            .collect();
        Ok(SimResult {
            ended,
            ended_at,
            jobs,
            stored: self.storage,
            notable,
            state,
            notes: self.notes,
            faults: self.faults.counts.clone(),
            known_hits: checker.known_hits,
            model_checked,
        })
    }
}

/// Shares with `theirs` each job of `ours` changed since `since` (the map as this last
/// left it) that equals theirs.
fn share_equal_jobs(ours: &mut Jobs, since: &mut Jobs, theirs: &Jobs) {
    let changed: Vec<Arc<Job>> = since
        .changed_in(ours)
        .filter_map(|job| theirs.get(&job.id).filter(|their| *their == job).cloned())
        .collect();
    for job in &changed {
        ours.share(job);
    }
    *since = ours.clone();
}

/// The exit report of a server app, as the server's local participant sends it.
fn local_exit(job_id: JobId, outcome: ExitOutcome, stop_requested: bool) -> Input {
    Input::Report {
        from: Participant::Local,
        report: SiteReport::AppExited {
            job_id,
            report_id: crate::engine::local::exit_report_id(job_id),
            outcome,
            stop_requested,
        },
    }
}

/// A node request as a simulated site takes it (a simulated deploy carries no bytes), with
/// the job it concerns (an acknowledgement concerns none).
fn site_request(request: Request) -> (SiteRequest, Option<JobId>) {
    match request {
        Request::CheckResources {
            try_id,
            job_id,
            resources,
        } => (
            SiteRequest::CheckResources {
                try_id,
                job_id,
                resources,
            },
            Some(job_id),
        ),
        Request::CancelReservation { job_id, token } => (
            SiteRequest::CancelReservation { job_id, token },
            Some(job_id),
        ),
        Request::Deploy {
            job_id,
            app_name,
            package,
            verify_at,
        } => (
            SiteRequest::Deploy {
                job_id,
                app_name,
                package: Arc::new(Vec::new()),
                hash: package,
                verify_at: Some(verify_at),
            },
            Some(job_id),
        ),
        Request::Start { job_id } => (SiteRequest::Start { job_id }, Some(job_id)),
        Request::Stop { job_id } => (SiteRequest::Stop { job_id }, Some(job_id)),
        Request::Delete { job_id } => (SiteRequest::Delete { job_id }, Some(job_id)),
        Request::Acknowledge { report_id } => (SiteRequest::Acknowledge { report_id }, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::EventKind;

    /// Of the jobs changed since the last pass, those equal to the other side's are
    /// shared with it, the rest kept; the map's value does not change.
    #[test]
    fn the_end_replay_shares_the_jobs_equal_to_the_live_ones() {
        let checked =
            crate::sim::scenario::parse(include_str!("../../tests/scenarios/max_jobs.toml"))
                .expect("scenario");
        let theirs = run(&checked, 0).expect("run").state.jobs;
        let mut ids = theirs.keys().copied();
        let (a, b) = (ids.next().expect("a job"), ids.next().expect("two jobs"));
        // Each job copied apart; `b` differs from theirs.
        let mut ours: Jobs = theirs
            .iter()
            .map(|(id, job)| (*id, Arc::new((**job).clone())))
            .collect();
        Arc::make_mut(ours.get_mut(&b).expect("b")).schedule_count += 1;
        let before = ours.clone();
        let mut since = Jobs::new();
        share_equal_jobs(&mut ours, &mut since, &theirs);
        assert!(ours == before, "the value is the same");
        assert!(
            Arc::ptr_eq(&ours[&a], &theirs[&a]),
            "an equal job is shared"
        );
        assert!(
            !Arc::ptr_eq(&ours[&b], &theirs[&b]),
            "a different one is not"
        );
        assert_eq!(ours[&b].schedule_count, theirs[&b].schedule_count + 1);
        // The next pass looks only at jobs changed since: `b`, unchanged, stays apart
        // even where the other side now holds an equal copy.
        let mut now_equal = theirs.clone();
        now_equal.insert(b, Arc::new((*ours[&b]).clone()));
        share_equal_jobs(&mut ours, &mut since, &now_equal);
        assert!(!Arc::ptr_eq(&ours[&b], &now_equal[&b]));
        // Changed since (back to the first side's value), it is looked at.
        Arc::make_mut(ours.get_mut(&b).expect("b")).schedule_count -= 1;
        share_equal_jobs(&mut ours, &mut since, &theirs);
        assert!(Arc::ptr_eq(&ours[&b], &theirs[&b]));
    }

    /// The state a run ends with is the fold of the history it stored, whether the end
    /// takes the checker's state (the server up) or folds the history again (the server
    /// down: crashed, and the run over before its restart). Checked against a fold of
    /// the stored records written here.
    #[test]
    fn the_end_state_is_the_fold_of_the_stored_history_with_the_server_up_or_down() {
        let up = include_str!("../../tests/scenarios/crash_running_resume.toml");
        let restart = "at = \"40s\"\ndo = \"restart_server\"";
        assert!(up.contains(restart));
        let down = "[sim]\nuntil = \"35s\"\n".to_string()
            + &up.replace(restart, "at = \"90s\"\ndo = \"restart_server\"");
        for (text, crashed) in [(up.to_string(), false), (down, true)] {
            let checked = crate::sim::scenario::parse(&text).expect("scenario");
            let result = run(&checked, 0).expect("run");
            let records = result.stored_records();
            let mut folded = State::new();
            for (seq, bytes) in &records {
                let record = crate::history::record::decode::<Event>(bytes).expect("decodes");
                assert_eq!(record.seq, *seq);
                folded.apply_checked(&record.event).expect("folds");
            }
            assert!(!records.is_empty());
            assert!(result.state == folded, "crashed {crashed}: the stored fold");
            // The crashed run ended before its restart: its last record is not the
            // restart's (the second `ServerStarted`).
            let starts = records
                .iter()
                .filter(|(_, bytes)| {
                    matches!(
                        crate::history::record::decode::<Event>(bytes).map(|r| r.event.kind),
                        Ok(EventKind::ServerStarted { .. })
                    )
                })
                .count();
            assert_eq!(starts, if crashed { 1 } else { 2 });
        }
    }

    #[test]
    fn items_made_ahead_come_in_order_and_end_after_the_first_error() {
        for expected in [10, AHEAD_FROM] {
            the_items_come_in_order_and_end_after_the_first_error(expected);
        }
    }

    fn the_items_come_in_order_and_end_after_the_first_error(expected: u64) {
        // More than one chunk, then an error, then items that must not arrive.
        let made: Vec<Result<u32, String>> = produced_ahead(expected, |sink| {
            for i in 0..600u32 {
                let item = if i == 555 {
                    Err(SimError::Replay(format!("bad item {i}")))
                } else {
                    Ok(i)
                };
                if !sink(item) {
                    return;
                }
            }
            panic!("the sink said go on after an error");
        })
        .map(|item| {
            item.map_err(|e| match e {
                SimError::Replay(what) => what,
                other => panic!("not the error made: {other}"),
            })
        })
        .collect();
        let mut want: Vec<Result<u32, String>> = (0..555).map(Ok).collect();
        want.push(Err("bad item 555".into()));
        assert_eq!(made, want);
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_maker() {
        let (told, stopped) = std::sync::mpsc::channel();
        let mut items = produced_ahead(AHEAD_FROM, move |sink| {
            let mut made = 0u64;
            while sink(Ok(made)) {
                made += 1;
            }
            told.send(made).expect("the test waits");
        });
        assert_eq!(items.next().map(|i| i.ok()), Some(Some(0)));
        drop(items);
        let made = stopped
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the maker stops once its reader is gone");
        // The sink refuses at the first chunk it cannot hand over: the four the channel
        // holds, the one received, and the one it failed to send.
        assert!(made <= 6 * 256, "made {made} items after the reader left");
    }
}
