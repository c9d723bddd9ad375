//! The scenario file of `fedrun sim` (SPEC section 10): its model, parsing and validation.
//!
//! A scenario is TOML. Every table refuses unknown keys, so a typo is an error rather than a
//! silently ignored setting. Parsing checks everything that can be checked before the run
//! starts: names are unique, actions name jobs and sites that exist (clones included, named
//! `JOB#1`, `JOB#2`, ... in the order they happen), and job metas follow SPEC section 5.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::job::meta::{JobMeta, SERVER};

mod by_job;

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("invalid scenario: {0}")]
    Syntax(String),
    /// The TOML is well formed but names something that does not exist or breaks a rule.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// A parsed and validated scenario.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The `[sim]` table.
    #[serde(default)]
    pub sim: SimTable,
    /// The `[server]` table: settings of SPEC section 7 plus `resume_runs`, kept as TOML
    /// here and turned into the server's settings by the simulator.
    #[serde(default)]
    pub server: toml::Table,
    /// The `[[site]]` tables, in file order.
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteSpec>,
    /// The `[[job]]` tables, in file order.
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobSpec>,
    /// The `[[action]]` tables, in file order.
    #[serde(default, rename = "action")]
    pub actions: Vec<ActionSpec>,
    /// The optional `[faults]` table: seeded faults (see [`crate::sim::faults`]).
    #[serde(default)]
    pub faults: Option<crate::sim::faults::FaultsSpec>,
}

/// The `[sim]` table.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimTable {
    /// Stop the run at this virtual time, even if jobs are still in flight.
    #[serde(default, deserialize_with = "opt_duration")]
    pub until: Option<Duration>,
    /// The server snapshots its state every this many events (default: the server's own
    /// 10,000). A small number makes restarts load snapshots, which a short run would
    /// otherwise never take.
    #[serde(default)]
    pub snapshot_every: Option<u64>,
}

/// How a simulated site answers a deploy or start request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// Answer OK at once.
    #[default]
    Ok,
    /// Answer with an error at once.
    Error,
    /// Never answer, so the engine's timeout decides.
    Timeout,
}

/// How a simulated app process ends when nothing stops it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnd {
    /// It exits with this code.
    Code(i32),
    /// It is killed by SIGKILL (an infrastructure failure).
    Killed,
}

impl Default for AppEnd {
    fn default() -> Self {
        AppEnd::Code(0)
    }
}

impl<'de> Deserialize<'de> for AppEnd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AppEndVisitor;
        impl Visitor<'_> for AppEndVisitor {
            type Value = AppEnd;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an exit code (integer) or \"killed\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<AppEnd, E> {
                i32::try_from(v)
                    .map(AppEnd::Code)
                    .map_err(|_| E::custom(format!("exit code {v} is out of range")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<AppEnd, E> {
                i32::try_from(v)
                    .map(AppEnd::Code)
                    .map_err(|_| E::custom(format!("exit code {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AppEnd, E> {
                if v == "killed" {
                    Ok(AppEnd::Killed)
                } else {
                    Err(E::custom(format!(
                        "exit code must be an integer or \"killed\", not \"{v}\""
                    )))
                }
            }
        }
        deserializer.deserialize_any(AppEndVisitor)
    }
}

/// One `[[site]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// The site's name.
    pub name: String,
    /// What the site can reserve: resource name -> amount.
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    /// The site's default behaviour; `[site.jobs.NAME]` overrides it for one job.
    #[serde(flatten)]
    pub behaviour: SiteBehaviour,
    /// When the site first connects (default at once).
    #[serde(default, deserialize_with = "opt_duration")]
    pub online_at: Option<Duration>,
    /// Behaviour for single jobs, by job name (a clone's own name, e.g. `j1#1`, or the name
    /// of the job it was cloned from).
    #[serde(default)]
    pub jobs: BTreeMap<String, SiteBehaviour>,
}

/// How a site treats a job. Every field is optional: a per-job table overrides only what it
/// names, and the site-wide table falls back to the defaults below.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBehaviour {
    /// Deploy answer (default `"ok"`).
    pub deploy: Option<Answer>,
    /// Start answer (default `"ok"`).
    pub start: Option<Answer>,
    /// The app's exit code or `"killed"` (default 0).
    pub exit_code: Option<AppEnd>,
    /// How long the app runs (default: as long as the job's server app, `run_for` of the job).
    #[serde(default, deserialize_with = "opt_duration")]
    pub run_for: Option<Duration>,
}

/// The resolved behaviour of one site for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Deploy answer.
    pub deploy: Answer,
    /// Start answer.
    pub start: Answer,
    /// How the app ends.
    pub exit: AppEnd,
    /// How long the app runs.
    pub run_for: Duration,
}

impl SiteSpec {
    /// The behaviour of this site for the job named `job` (a clone `a#1` falls back to the
    /// entry of `a`), whose server app runs for `job_run_for`.
    pub fn behaviour_for(&self, job: &str, job_run_for: Duration) -> Behaviour {
        // The most specific entry wins: the clone's own name, then its ancestors, then
        // the site's own behaviour. Asked for every request a site answers, so nothing is
        // allocated.
        let (mut deploy, mut start, mut exit, mut run_for) = (None, None, None, None);
        let mut layer = |l: &SiteBehaviour| {
            deploy = deploy.or(l.deploy);
            start = start.or(l.start);
            exit = exit.or(l.exit_code);
            run_for = run_for.or(l.run_for);
        };
        if !self.jobs.is_empty() {
            let mut name = Some(job);
            while let Some(n) = name {
                if let Some(b) = self.jobs.get(n) {
                    layer(b);
                }
                name = n.rfind('#').map(|i| &n[..i]);
            }
        }
        layer(&self.behaviour);
        Behaviour {
            deploy: deploy.unwrap_or_default(),
            start: start.unwrap_or_default(),
            exit: exit.unwrap_or_default(),
            run_for: run_for.unwrap_or(job_run_for),
        }
    }
}

/// One `[[job]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name in the scenario (and its meta name).
    pub name: String,
    /// When it is submitted (default at once).
    #[serde(default, deserialize_with = "opt_duration")]
    pub submit_at: Option<Duration>,
    /// Its `meta.json`, as a TOML table with the keys of SPEC section 5.
    pub meta: MetaSpec,
    /// How the server app ends (default exit code 0).
    #[serde(default)]
    pub server_exit_code: AppEnd,
    /// How long the server app runs (default 60 s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub run_for: Option<Duration>,
}

/// The server app's run time when a job does not say.
pub const DEFAULT_RUN_FOR: Duration = Duration::from_secs(60);

impl JobSpec {
    /// How long the server app runs.
    pub fn run_for(&self) -> Duration {
        self.run_for.unwrap_or(DEFAULT_RUN_FOR)
    }
}

/// A deploy-map entry: a list of targets, or `{"sites": [...]}`, or `{"targets": [...]}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TargetsSpec {
    /// `app = ["server", "site-1"]`.
    List(Vec<String>),
    /// `app = { sites = [...] }`.
    Sites {
        /// The targets.
        sites: Vec<String>,
    },
    /// `app = { targets = [...] }`.
    Targets {
        /// The targets.
        targets: Vec<String>,
    },
}

impl TargetsSpec {
    fn targets(&self) -> &[String] {
        match self {
            TargetsSpec::List(t) => t,
            TargetsSpec::Sites { sites } => sites,
            TargetsSpec::Targets { targets } => targets,
        }
    }
}

/// The `meta` of a `[[job]]`: the keys of `meta.json` (SPEC section 5) other than `name`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSpec {
    /// App name -> targets.
    pub deploy_map: BTreeMap<String, TargetsSpec>,
    /// Default 1.
    pub min_clients: Option<i64>,
    /// Default none.
    #[serde(default)]
    pub mandatory_clients: Vec<String>,
    /// Site name or `@default` -> resource -> amount.
    #[serde(default)]
    pub resource_spec: BTreeMap<String, BTreeMap<String, f64>>,
}

impl MetaSpec {
    /// Builds the `meta.json` this table stands for and validates it with the package's own
    /// parser ([`JobMeta::parse`], SPEC section 5), so a scenario accepts exactly the metas a
    /// package would. Every app of the deploy map exists in a simulated package by
    /// construction, so the one rule that needs the package holds.
    pub fn to_job_meta(&self, name: &str) -> Result<JobMeta, String> {
        let deploy_map: serde_json::Map<String, serde_json::Value> = self
            .deploy_map
            .iter()
            .map(|(app, t)| (app.clone(), serde_json::json!(t.targets())))
            .collect();
        let resource_spec: serde_json::Map<String, serde_json::Value> = self
            .resource_spec
            .iter()
            .map(|(site, amounts)| {
                let amounts: serde_json::Map<String, serde_json::Value> = amounts
                    .iter()
                    .map(|(key, amount)| (key.clone(), json_amount(*amount)))
                    .collect();
                (site.clone(), serde_json::Value::Object(amounts))
            })
            .collect();
        let mut meta = serde_json::Map::new();
        meta.insert("name".into(), name.into());
        meta.insert("deploy_map".into(), deploy_map.into());
        if let Some(min_clients) = self.min_clients {
            meta.insert("min_clients".into(), min_clients.into());
        }
        meta.insert(
            "mandatory_clients".into(),
            serde_json::json!(self.mandatory_clients),
        );
        meta.insert("resource_spec".into(), resource_spec.into());
        let bytes = serde_json::to_vec(&serde_json::Value::Object(meta))
            .map_err(|e| format!("cannot encode the meta as JSON: {e}"))?;
        // The folder name only stands in for a missing `name`, and the name is always given.
        JobMeta::parse(&bytes, name).map_err(|e| e.to_string())
    }
}

/// A resource amount as JSON. JSON has no NaN or infinity (serde_json would turn them into
/// `null`), so those are passed as their TOML spelling in a string: the parser refuses it
/// and its message names the value the scenario wrote.
fn json_amount(amount: f64) -> serde_json::Value {
    if amount.is_finite() {
        amount.into()
    } else {
        amount.to_string().into()
    }
}

/// One `[[action]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// When it happens.
    #[serde(deserialize_with = "duration")]
    pub at: Duration,
    /// What happens, e.g. `"abort j1"`; parsed into [`Action`].
    #[serde(rename = "do")]
    pub what: String,
}

/// A parsed action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// An admin aborts the job of this scenario name.
    Abort(String),
    /// An admin deletes the job.
    Delete(String),
    /// An admin clones the job; the clone is named `JOB#n`.
    Clone(String),
    /// The site loses its connection.
    SiteOffline(String),
    /// The site connects again.
    SiteOnline(String),
    /// The server process dies: its in-memory state is gone.
    CrashServer,
    /// The server starts again from its stored history.
    RestartServer,
}

impl Action {
    /// Parses the `do` string of an action.
    pub fn parse(s: &str) -> Result<Action, String> {
        let mut words = s.split_whitespace();
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        if words.next().is_some() {
            return Err(format!("action \"{s}\" has too many words"));
        }
        let need = |arg: Option<&str>| {
            arg.map(str::to_string)
                .ok_or_else(|| format!("action \"{s}\" needs a name after {verb}"))
        };
        let none = |arg: Option<&str>, a: Action| match arg {
            None => Ok(a),
            Some(_) => Err(format!("action \"{s}\" takes no argument")),
        };
        match verb {
            "abort" => Ok(Action::Abort(need(arg)?)),
            "delete" => Ok(Action::Delete(need(arg)?)),
            "clone" => Ok(Action::Clone(need(arg)?)),
            "site_offline" => Ok(Action::SiteOffline(need(arg)?)),
            "site_online" => Ok(Action::SiteOnline(need(arg)?)),
            "crash_server" => none(arg, Action::CrashServer),
            "restart_server" => none(arg, Action::RestartServer),
            _ => Err(format!(
                "unknown action \"{s}\": expected abort JOB, delete JOB, clone JOB, \
                 site_offline SITE, site_online SITE, crash_server or restart_server"
            )),
        }
    }
}

/// A scenario checked and ready to run: the model plus what validation derived.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The scenario as written, but for each job's `meta`, which is taken once checked
    /// (its validated form is in `metas`; a day of 10,000 jobs kept both).
    pub scenario: Scenario,
    /// The validated meta of each `[[job]]`, in file order.
    pub metas: Vec<JobMeta>,
    /// The actions, parsed, in file order.
    pub actions: Vec<Action>,
}

/// Parses a duration written like `250ms`, `10s`, `5m`, `1h30m` (the settings' parser).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::settings::parse_duration(text).map_err(|e| e.to_string())
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Checked, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Parses and checks scenario text.
pub fn parse(text: &str) -> Result<Checked, ScenarioError> {
    match by_job::by_job(text) {
        Some(scenario) => check(scenario),
        None => parse_whole(text),
    }
}

/// Parses scenario text as one TOML document, without reading its jobs one at a time:
/// what [`parse`] falls back to, and what the benchmarks compare it with.
pub fn parse_whole(text: &str) -> Result<Checked, ScenarioError> {
    let scenario: Scenario = toml::from_str(text)
        .map_err(|e| ScenarioError::Syntax(crate::settings::toml_report(text, &e)))?;
    check(scenario)
}

/// The property the `scenario_split` fuzz target and its replay test check on any bytes:
/// a text read a job at a time is the scenario the whole-document parse reads. Panics (a
/// bug) when they differ; texts that are not UTF-8 or are read whole pass.
pub fn check_read_by_job(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Some(split) = by_job::by_job(text) {
        let whole: Result<Scenario, _> = toml::from_str(text);
        match whole {
            Ok(whole) => assert_eq!(split, whole, "read by job, then whole:\n{text}"),
            Err(e) => panic!("read by job a text the whole parse refuses ({e}):\n{text}"),
        }
    }
}

/// Whether [`parse`] reads `text` a job at a time (for tests: a well-shaped scenario must).
pub fn reads_by_job(text: &str) -> bool {
    by_job::by_job(text).is_some()
}

fn check(mut scenario: Scenario) -> Result<Checked, ScenarioError> {
    let invalid = ScenarioError::Invalid;
    if let Some(faults) = &scenario.faults {
        faults.check().map_err(invalid)?;
    }
    let mut site_names = BTreeSet::new();
    for s in &scenario.sites {
        if s.name.is_empty() || s.name == SERVER || s.name.starts_with('@') {
            return Err(invalid(format!(
                "\"{}\" cannot be a site name (empty, \"server\" and names starting with @ are reserved)",
                s.name
            )));
        }
        if !site_names.insert(s.name.as_str()) {
            return Err(invalid(format!("site {} is defined twice", s.name)));
        }
        for (key, amount) in &s.resources {
            if !amount.is_finite() || *amount < 0.0 {
                return Err(invalid(format!(
                    "site {}: resource {key} must be a non-negative number, not {amount}",
                    s.name
                )));
            }
        }
    }
    let mut job_names = BTreeSet::new();
    let mut metas = Vec::new();
    for j in &mut scenario.jobs {
        if j.name.is_empty() || j.name.contains('#') {
            return Err(invalid(format!(
                "\"{}\" cannot be a job name (it must be non-empty and without #, which names clones)",
                j.name
            )));
        }
        if !job_names.insert(j.name.clone()) {
            return Err(invalid(format!("job {} is defined twice", j.name)));
        }
        let meta = std::mem::take(&mut j.meta)
            .to_job_meta(&j.name)
            .map_err(|e| invalid(format!("job {}: {e}", j.name)))?;
        metas.push(meta);
    }
    for s in &scenario.sites {
        for name in s.jobs.keys() {
            let base = name.split('#').next().unwrap_or(name);
            if !job_names.contains(base) {
                return Err(invalid(format!(
                    "site {} has behaviour for job {name}, which the scenario does not define",
                    s.name
                )));
            }
        }
    }
    let mut actions = Vec::new();
    for (i, a) in scenario.actions.iter().enumerate() {
        let action =
            Action::parse(&a.what).map_err(|e| invalid(format!("action {}: {e}", i + 1)))?;
        actions.push(action);
    }
    // Clones are named in the order they happen: by time, then file order; the names must
    // resolve for every action that refers to a job.
    let mut order: Vec<usize> = (0..actions.len()).collect();
    order.sort_by_key(|&i| (scenario.actions[i].at, i));
    let mut known = job_names.clone();
    let mut clone_counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in order {
        let at = scenario.actions[i].at;
        match &actions[i] {
            Action::Abort(j) | Action::Delete(j) | Action::Clone(j) => {
                if !known.contains(j) {
                    return Err(invalid(format!(
                        "action {} ({}) at {}: no job named {j} exists by then",
                        i + 1,
                        scenario.actions[i].what,
                        crate::settings::format_duration(at)
                    )));
                }
                if let Action::Clone(j) = &actions[i] {
                    let n = clone_counts.entry(j.clone()).or_insert(0);
                    *n += 1;
                    known.insert(format!("{j}#{n}"));
                }
            }
            Action::SiteOffline(s) | Action::SiteOnline(s) => {
                if !site_names.contains(s.as_str()) {
                    return Err(invalid(format!(
                        "action {} ({}): no site named {s}",
                        i + 1,
                        scenario.actions[i].what
                    )));
                }
            }
            Action::CrashServer | Action::RestartServer => {}
        }
    }
    Ok(Checked {
        scenario,
        metas,
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[sim]
until = "2h"

[server]
max_jobs = 2
min_schedule_interval = "10s"
resume_runs = true

[[site]]
name = "site-1"
resources = { num_of_gpus = 2 }
deploy = "ok"
start = "ok"
exit_code = 0
run_for = "30s"
online_at = "0s"
[site.jobs.j1]
exit_code = 101

[[site]]
name = "site-2"
exit_code = "killed"

[[job]]
name = "j1"
submit_at = "0s"
meta = { deploy_map = { app = ["@ALL"] }, min_clients = 2 }
server_exit_code = 0
run_for = "60s"

[[action]]
at = "12s"
do = "abort j1"

[[action]]
at = "13s"
do = "clone j1"

[[action]]
at = "14s"
do = "delete j1#1"
"#;

    #[test]
    fn every_key_of_the_spec_example_parses() {
        let c = parse(FULL).expect("the SPEC example is valid");
        assert_eq!(c.scenario.sim.until, Some(Duration::from_secs(7200)));
        assert_eq!(c.scenario.sites.len(), 2);
        let b = c.scenario.sites[0].behaviour_for("j1", Duration::from_secs(60));
        assert_eq!(b.exit, AppEnd::Code(101));
        assert_eq!(b.run_for, Duration::from_secs(30));
        // A clone falls back to the entry of the job it was cloned from.
        let b = c.scenario.sites[0].behaviour_for("j1#1", Duration::from_secs(60));
        assert_eq!(b.exit, AppEnd::Code(101));
        // site-2 has no run_for: its app runs as long as the server app.
        let b = c.scenario.sites[1].behaviour_for("j1", Duration::from_secs(60));
        assert_eq!(b.exit, AppEnd::Killed);
        assert_eq!(b.run_for, Duration::from_secs(60));
        assert_eq!(c.actions[2], Action::Delete("j1#1".into()));
        assert!(c.metas[0].is_all_sites());
        assert_eq!(c.metas[0].min_clients, 2);
    }

    #[test]
    fn the_nearest_named_ancestor_wins_field_by_field() {
        let site: SiteSpec = toml::from_str(
            r#"
name = "s"
exit_code = 3
deploy = "error"
[jobs.j1]
exit_code = 101
run_for = "30s"
start = "timeout"
[jobs."j1#1"]
exit_code = 7
[jobs."j1#1#1"]
deploy = "ok"
"#,
        )
        .expect("a site table");
        let server = Duration::from_secs(60);
        let b = |name: &str| site.behaviour_for(name, server);
        // Each field comes from the most specific table that names it: the clone's own,
        // then the job it was cloned from, then that job's, then the site's.
        assert_eq!(
            b("j1#1#1"),
            Behaviour {
                deploy: Answer::Ok,
                start: Answer::Timeout,
                exit: AppEnd::Code(7),
                run_for: Duration::from_secs(30),
            }
        );
        assert_eq!(b("j1#1#2").exit, AppEnd::Code(7));
        assert_eq!(b("j1#1#2").deploy, Answer::Error);
        assert_eq!(b("j1#2").exit, AppEnd::Code(101));
        assert_eq!(
            b("j2#1"),
            Behaviour {
                deploy: Answer::Error,
                start: Answer::Ok,
                exit: AppEnd::Code(3),
                run_for: server,
            }
        );
        // A name that merely contains an entry's name is not its clone.
        assert_eq!(b("xj1").exit, AppEnd::Code(3));
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect_err("scenario must be refused")
            .to_string()
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(err("[sim]\nuntill = \"1h\"").contains("untill"));
        assert!(err("[[site]]\nname = \"a\"\ncolor = 1").contains("color"));
        let job = "[[job]]\nname = \"j\"\nmeta = { deploy_map = { app = [\"@ALL\"] }, x = 1 }";
        assert!(err(job).contains("x"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(err("[sim]\nuntil = \"soon\"").contains("soon"));
        assert!(err("[[site]]\nname = \"a\"\nexit_code = \"crashed\"").contains("crashed"));
        assert!(err("[[site]]\nname = \"a\"\ndeploy = \"maybe\"").contains("maybe"));
        assert!(err("[[site]]\nname = \"a\"\n[[site]]\nname = \"a\"").contains("twice"));
        assert!(err("[[action]]\nat = \"1s\"\ndo = \"abort nope\"").contains("nope"));
        assert!(err("[[action]]\nat = \"1s\"\ndo = \"explode\"").contains("explode"));
        assert!(err("[[action]]\nat = \"1s\"\ndo = \"site_online x\"").contains("no site"));
    }

    #[test]
    fn clone_names_follow_time_order() {
        let text = r#"
[[job]]
name = "a"
meta = { deploy_map = { app = ["@ALL"] } }
[[action]]
at = "5s"
do = "abort a#1"
[[action]]
at = "1s"
do = "clone a"
"#;
        let c = parse(text).expect("a#1 exists at 5s");
        assert_eq!(c.actions[1], Action::Clone("a".into()));
        let early = text.replace("at = \"5s\"", "at = \"0s\"");
        assert!(err(&early).contains("a#1"));
    }

    #[test]
    fn meta_rules_of_spec_section_5() {
        let job = |meta: &str| format!("[[job]]\nname = \"j\"\nmeta = {meta}");
        assert!(err(&job("{ deploy_map = {} }")).contains("empty"));
        assert!(err(&job("{ deploy_map = { a = [\"@ALL\", \"s1\"] } }")).contains("@ALL"));
        assert!(err(&job("{ deploy_map = { a = [\"s1\"] } }")).contains("server"));
        assert!(err(&job(
            "{ deploy_map = { a = [\"server\", \"s1\"], b = [\"s1\"] } }"
        ))
        .contains("listed more than once"));
        assert!(err(&job(
            "{ deploy_map = { a = [\"server\"], b = [\"server\", \"s1\"] } }"
        ))
        .contains("\"server\" is listed more than once"));
        assert!(err(&job(
            "{ deploy_map = { a = [\"server\", \"s1\"] }, min_clients = 2 }"
        ))
        .contains("min_clients"));
        assert!(err(&job(
            "{ deploy_map = { a = [\"server\", \"s1\"] }, min_clients = 0 }"
        ))
        .contains("positive"));
        assert!(err(&job(
            "{ deploy_map = { a = [\"server\", \"s1\"] }, mandatory_clients = [\"s2\"] }"
        ))
        .contains("mandatory client \"s2\""));
        let spec = |amount: &str| {
            job(&format!(
                "{{ deploy_map = {{ a = [\"server\", \"s1\"] }}, resource_spec = {{ s1 = {{ gpu = {amount} }} }} }}"
            ))
        };
        assert!(err(&spec("-1.0")).contains("non-negative number, not -1"));
        // NaN and infinity have no JSON form; the message still names what was written.
        assert!(
            err(&spec("nan")).contains("not \"NaN\""),
            "{}",
            err(&spec("nan"))
        );
        assert!(
            err(&spec("inf")).contains("not \"inf\""),
            "{}",
            err(&spec("inf"))
        );
        assert!(parse(&spec("1.5")).is_ok());
        let ok = job("{ deploy_map = { a = { sites = [\"server\", \"s1\"] } } }");
        assert!(parse(&ok).is_ok());
    }
}
