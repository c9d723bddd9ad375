//! The deterministic loop of `fedrun sim`: one thread, a virtual clock, an agenda of things
//! due at virtual times, the real [`Engine`] on an in-memory history, and simulated sites
//! and server apps.
//!
//! At each instant the driver takes everything due, in the order it was scheduled (scenario
//! order for the scenario's own items), hands it to the engine as one batch, and carries out
//! the batch's effects: site requests go to the simulated sites, whose answers are due at the
//! same instant (and so form the next batch); app ends are due later. Timers come from the
//! engine's own deadline, so nothing polls. A crash drops the engine; a restart builds a new
//! one from the stored history, as a real server does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::{Clock, VirtualClock, SIM_EPOCH};
use crate::engine::ids::SeededIds;
use crate::engine::node::{Input, Output, Participant, ReplyToken, Request};
use crate::engine::owner::{Engine, EngineLimits, Ids, StartError, StepError};
use crate::history::{History, MemoryStorage};
use crate::job::JobId;
use crate::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, Identity, Origin, Role, State, Timestamp,
};
use crate::settings::Settings;
use crate::sim::scenario::{Action, AppEnd, Behaviour, Checked, JobSpec};
use crate::sim::site::{SimSite, SiteOutput, KILL_SIGNAL, STOP_SIGNAL};
use crate::site::protocol::{ExitOutcome, SiteReport, SiteRequest};

/// A run ends at the latest after this much virtual time.
pub const CAP: Duration = Duration::from_secs(30 * 24 * 3600);

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
    /// Every event of the history, oldest first.
    pub events: Vec<Event>,
    /// The state rebuilt from the stored history at the end.
    pub state: State,
    /// Things the driver itself noted (postponed or skipped actions), with virtual times.
    pub notes: Vec<(Duration, String)>,
}

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
    },
    ToNode(Input),
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
}

/// Hook called after every event the engine makes durable, with the state after it; the
/// property test checks its invariants here.
pub type Observer<'a> = &'a mut dyn FnMut(&Event, &State);

struct Sim<'a> {
    checked: &'a Checked,
    seed: u64,
    settings: Settings,
    clock: VirtualClock,
    storage: MemoryStorage,
    engine: Option<Engine>,
    boots: u64,
    sites: Vec<SimSite>,
    agenda: BTreeMap<(Duration, u64), Item>,
    agenda_seq: u64,
    names: Vec<(String, Option<JobId>)>,
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

/// Runs a checked scenario with a seed, calling `observer` after every durable event.
pub fn run_observed<'a>(
    checked: &'a Checked,
    seed: u64,
    observer: Option<Observer<'a>>,
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
    let sim = Sim {
        checked,
        seed,
        settings,
        clock: VirtualClock::new(),
        storage: MemoryStorage::new(),
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
                .map(|t| offset(t).max(self.now()));
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
        self.finish(ended)
    }

    fn settled(&self) -> bool {
        // Cheap checks first: the state's own check walks every job.
        if self.scenario_items_pending > 0 || !self.postponed.is_empty() {
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
                self.collect(item, &mut batch);
            }
            let mut timer_due = false;
            if let Some(engine) = &mut self.engine {
                if let Some(due) = engine.next_deadline() {
                    if offset(due) <= t {
                        engine.fire_timers(timestamp(t));
                        timer_due = true;
                    }
                }
            }
            if batch.is_empty() && !timer_due {
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
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, id)| *id)
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
                        signer: None,
                    },
                };
                batch.push((command, Tag::NewJob(name)));
            }
            Item::Action(i) => self.collect_action(i, batch),
            Item::SiteOnline(s) => self.site_online(s, batch),
            Item::Report { site, report } => {
                if up && self.sites[site].online {
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
            Item::ToNode(input) => {
                if up {
                    batch.push((input, Tag::None));
                } else if matches!(
                    input,
                    Input::Report {
                        from: Participant::Local,
                        report: SiteReport::AppExited { .. },
                    }
                ) {
                    // The server app's exit is recorded in its workspace and found again
                    // when the server restarts.
                    self.server_outbox.push(input);
                }
            }
            Item::SiteAppEnd {
                site,
                job_id,
                generation,
            } => {
                if let Some(report) = self.sites[site].app_due(job_id, generation) {
                    self.collect(Item::Report { site, report }, batch);
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
                        self.collect(Item::ToNode(local_exit(job_id, outcome)), batch);
                    }
                }
            }
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
                    if self.sites[s].online {
                        self.sites[s].online = false;
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
                    self.site_online(s, batch);
                }
            }
            Action::CrashServer | Action::RestartServer => {
                // Handled by run_instant, which splits the batch around them.
            }
        }
    }

    fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name() == name)
    }

    fn site_online(&mut self, s: usize, batch: &mut Vec<(Input, Tag)>) {
        if self.sites[s].online {
            return;
        }
        self.sites[s].online = true;
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
            self.note("server crashed".to_string());
        }
        if self.checked.actions[i] == Action::RestartServer {
            self.start_engine()?;
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
            .and_then(|n| self.names.iter().position(|(m, _)| m == n))
            .unwrap_or(usize::MAX)
    }

    fn start_engine(&mut self) -> Result<(), SimError> {
        let at = self.at_text();
        let history = History::in_memory(self.storage.clone()).map_err(|e| SimError::Start {
            at: at.clone(),
            source: Box::new(StartError::Open(e)),
        })?;
        self.boots += 1;
        let ids = Ids::Seeded(SeededIds::stream(self.seed, self.boots));
        let (engine, released) = Engine::start(
            history,
            self.settings.clone(),
            ids,
            EngineLimits::default(),
            self.clock.now(),
        )
        .map_err(|source| SimError::Start {
            at,
            source: Box::new(source),
        })?;
        self.engine = Some(engine);
        self.notify_observer()?;
        if self.boots > 1 {
            self.note("server restarted from its stored history".to_string());
        }
        self.dispatch(released);
        Ok(())
    }

    fn token(&mut self) -> ReplyToken {
        self.next_token += 1;
        ReplyToken(self.next_token)
    }

    fn feed(&mut self, batch: Vec<(Input, Tag)>) -> Result<(), SimError> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        if batch.is_empty() && engine.node().queued_inputs() == 0 {
            return Ok(());
        }
        let mut tags: BTreeMap<ReplyToken, String> = BTreeMap::new();
        let mut inputs = Vec::with_capacity(batch.len());
        for (input, tag) in batch {
            if let (Input::Admin { token, .. }, Tag::NewJob(name)) = (&input, tag) {
                tags.insert(*token, name);
            }
            inputs.push(input);
        }
        let outputs = engine
            .step(inputs, self.clock.now())
            .map_err(|source| SimError::Step {
                at: format!(
                    "+{}",
                    crate::settings::format_duration(self.clock.elapsed())
                ),
                source: Box::new(source),
            })?;
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
                    if let Some(slot) = self.names.iter_mut().find(|(n, _)| *n == name) {
                        slot.1 = Some(*job_id);
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
        self.dispatch(outputs);
        Ok(())
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
        let name = self.name_of.get(&job_id).cloned().unwrap_or_default();
        let run_for = self
            .job_spec(&name)
            .map(|j| j.run_for())
            .unwrap_or_default();
        self.sites[site].spec().behaviour_for(&name, run_for)
    }

    fn job_spec(&self, name: &str) -> Option<&JobSpec> {
        let base = name.split('#').next().unwrap_or(name);
        self.checked.scenario.jobs.iter().find(|j| j.name == base)
    }

    fn send_to_site(&mut self, site: &str, request: SiteRequest, job_id: JobId) {
        let Some(s) = self.site_index(site) else {
            return;
        };
        if !self.sites[s].online {
            // The request is lost with the connection; the engine's timeout decides.
            return;
        }
        let now = self.now();
        let behaviour = self.behaviour(s, job_id);
        for output in self.sites[s].handle(request, now, behaviour) {
            match output {
                SiteOutput::Report(report) => self.schedule(now, Item::Report { site: s, report }),
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
    /// the simulated sites, the local participant's requests to the simulated server apps,
    /// archives succeed at once. The routing itself is the node's.
    fn dispatch(&mut self, outputs: Vec<Output>) {
        let now = self.now();
        for output in outputs {
            match output {
                Output::Send {
                    to: Participant::Site(site),
                    request,
                } => {
                    let (request, job_id) = site_request(request);
                    if let Some(job_id) = job_id {
                        self.send_to_site(&site, request, job_id);
                    }
                }
                Output::Send {
                    to: Participant::Local,
                    request,
                } => self.local_request(request),
                Output::Archive { job_id } => {
                    let hash =
                        BlobHash::from(blake3::hash(format!("sim archive {job_id}").as_bytes()));
                    self.schedule(
                        now,
                        Item::ToNode(Input::ArchiveFinished {
                            job_id,
                            result: Ok(hash),
                        }),
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
        let report = |report| {
            Item::ToNode(Input::Report {
                from: Participant::Local,
                report,
            })
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
                self.server_apps
                    .insert(job_id, ServerApp { generation, end });
                self.schedule(
                    now,
                    report(SiteReport::StartAnswer {
                        job_id,
                        result: Ok(()),
                    }),
                );
                self.schedule(now + run_for, Item::ServerAppEnd { job_id, generation });
            }
            Request::Stop { job_id } => {
                if self.server_apps.remove(&job_id).is_some() {
                    self.schedule(
                        now,
                        Item::ToNode(local_exit(job_id, ExitOutcome::Signal(STOP_SIGNAL))),
                    );
                }
            }
            Request::Delete { .. }
            | Request::Acknowledge { .. }
            | Request::CheckResources { .. }
            | Request::CancelReservation { .. } => {}
        }
    }

    fn finish(mut self, ended: Ended) -> Result<SimResult, SimError> {
        let ended_at = self.now();
        // The result is read back from the stored history, not from the live engine: what
        // the output shows is exactly what a restart would rebuild.
        let live = self.engine.take().map(|e| e.state().clone());
        let history = History::<Event>::in_memory(self.storage.clone())
            .map_err(|e| SimError::Replay(e.to_string()))?;
        // One pass over the stored records: each is checked (chain, order, transition)
        // and folded, exactly as a restart would rebuild the state.
        let mut events = Vec::new();
        let mut state = State::new();
        for record in history.records_from(1) {
            let record = record.map_err(|e| SimError::Replay(e.to_string()))?;
            state
                .apply_checked(&record.event)
                .map_err(|e| SimError::Replay(e.to_string()))?;
            events.push(record.event);
        }
        if let Some(live) = live {
            if live != state {
                return Err(SimError::Replay(
                    "the state replayed from the history differs from the live state".into(),
                ));
            }
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
            events,
            state,
            notes: self.notes,
        })
    }
}

/// The exit report of a server app, as the server's local participant sends it.
fn local_exit(job_id: JobId, outcome: ExitOutcome) -> Input {
    Input::Report {
        from: Participant::Local,
        report: SiteReport::AppExited {
            job_id,
            report_id: crate::engine::local::exit_report_id(job_id),
            outcome,
        },
    }
}

/// A node request as a simulated site takes it (a simulated deploy carries no bytes), with
/// the job it concerns (an acknowledgement concerns none: the simulated site forgets a
/// report once it is delivered).
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
            verify_at,
            ..
        } => (
            SiteRequest::Deploy {
                job_id,
                app_name,
                package: Arc::new(Vec::new()),
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
