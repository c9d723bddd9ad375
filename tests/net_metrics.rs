//! Metrics, health and readiness (SPEC section 11, Observation): a federation over real
//! mutual TLS on loopback in one process (the server's accept loop, two site agents, real
//! app processes), a scripted workload, then `/metrics` scraped over plain HTTP from the
//! server's and a site's `metrics_listen` listeners, parsed with an independent parser
//! (`prometheus-parse`) and checked against what exists: the events read back from the
//! history, the package bytes in the blob store, the app processes in `/proc`.

#[path = "engine_support/mod.rs"]
mod engine_support;
mod proc_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use engine_support::{identity, settled, submit_ok, wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Answer, Event, EventKind, Origin, Role, RunStatus, ScheduleOutcome,
};
use fedrun::metrics::SiteMetrics;
use fedrun::net::agent::{Agent, AgentConfig};
use fedrun::net::kit::Kit;
use fedrun::net::observe::{self, Observing};
use fedrun::net::serve::{start, ServeOptions, Serving};
use fedrun::net::wire::WireConfig;
use fedrun::site::local::LocalSiteConfig;
use fedrun::trust::provision::{provision, Project, ProvisionOptions};
use proc_support::{apps_under, kill_apps_under, processes_under};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SITES: [&str; 2] = ["site-1", "site-2"];

fn project() -> String {
    let mut text = String::from(
        "name = \"metrics\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
         [[admin]]\nname = \"boss@ops\"\norg = \"ops\"\nrole = \"project_admin\"\n",
    );
    for site in SITES {
        text.push_str(&format!(
            "[[site]]\nname = \"{site}\"\norg = \"org-{site}\"\n"
        ));
    }
    text
}

fn wire() -> WireConfig {
    WireConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        chunk_size: 16 * 1024,
        ..WireConfig::default()
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The hello example with `rounds` rounds (about a second each) and `min_clients`.
fn hello(dir: &Path, name: &str, rounds: u32, min_clients: u32) -> PathBuf {
    let job = dir.join(name);
    let from = examples().join("hello-complete");
    std::fs::create_dir_all(job.join("app")).expect("job folder");
    let meta = format!(
        "{{\"name\": \"{name}\", \"deploy_map\": {{\"app\": [\"@ALL\"]}}, \"min_clients\": {min_clients}}}"
    );
    std::fs::write(job.join("meta.json"), meta).expect("meta");
    std::fs::copy(from.join("app/run.sh"), job.join("app/run.sh")).expect("run.sh");
    let run = std::fs::read_to_string(from.join("app/run.toml")).expect("run.toml");
    let run = run.replace(
        "HELLO_ROUNDS = \"2\"",
        &format!("HELLO_ROUNDS = \"{rounds}\""),
    );
    assert!(run.contains(&format!("\"{rounds}\"")), "{run}");
    std::fs::write(job.join("app/run.toml"), run).expect("run.toml");
    job
}

struct Federation {
    dir: tempfile::TempDir,
    server: Server,
    serving: Option<Serving>,
    observing: Option<Observing>,
}

impl Federation {
    async fn start() -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let project: Project = project().parse().expect("project");
        provision(
            &project,
            &dir.path().join("kits"),
            ProvisionOptions {
                force: false,
                now: SystemTime::now(),
            },
        )
        .expect("provision");
        let mut config = ServerConfig::new(&dir.path().join("data"));
        config.settings.abort_grace = Duration::from_secs(2);
        config.settings.min_schedule_interval = Duration::from_millis(200);
        let server = Server::start(config, Arc::new(WallClock)).expect("server");
        let kit = Kit::load(&dir.path().join("kits/localhost")).expect("server kit");
        let serving = start(
            &kit,
            server.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            ServeOptions { wire: wire() },
        )
        .await
        .expect("serve");
        let observing = observe::start(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(server.clone()),
        )
        .await
        .expect("metrics listener");
        Federation {
            dir,
            server,
            serving: Some(serving),
            observing: Some(observing),
        }
    }

    fn metrics_addr(&self) -> SocketAddr {
        self.observing.as_ref().expect("observing").local_addr()
    }

    fn site_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("sites").join(name)
    }

    fn agent(&self, name: &str) -> Agent {
        self.agent_with(name, Arc::default())
    }

    fn agent_with(&self, name: &str, metrics: Arc<SiteMetrics>) -> Agent {
        let mut site = LocalSiteConfig::new(name, self.site_dir(name), Default::default());
        site.abort_grace = Duration::from_secs(2);
        let kit = Kit::load(&self.dir.path().join("kits").join(name)).expect("kit");
        let mut config = AgentConfig::new(kit, site);
        config.server = self
            .serving
            .as_ref()
            .expect("serving")
            .local_addr()
            .to_string();
        config.wire = wire();
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        config.metrics = metrics;
        Agent::spawn(config).expect("agent")
    }
}

/// A failed test must not leave its apps running.
impl Drop for Federation {
    fn drop(&mut self) {
        kill_apps_under(self.dir.path());
    }
}

/// One plain HTTP/1.1 GET; the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(BOUND, async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8(answer).expect("UTF-8 answer");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        assert!(
            status != 200
                || path != "/metrics"
                || head
                    .to_ascii_lowercase()
                    .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        (status, body.to_string())
    })
    .await
    .expect("answered in time")
}

/// A parsed scrape: every sample by name and labels (histograms as `_sum`, `_count` and
/// `_bucket{le}` samples, as PromQL names them).
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let mut samples = BTreeMap::new();
        for sample in parsed.samples {
            let labels: BTreeMap<String, String> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut put = |name: String, labels: BTreeMap<String, String>, value: f64| {
                let old = samples.insert((name.clone(), labels), value);
                assert!(old.is_none(), "{name} appears twice");
            };
            match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => put(sample.metric, labels, v),
                prometheus_parse::Value::Histogram(buckets) => {
                    for bucket in buckets {
                        let mut with_le = labels.clone();
                        with_le.insert("le".into(), bucket.less_than.to_string());
                        put(format!("{}_bucket", sample.metric), with_le, bucket.count);
                    }
                }
                prometheus_parse::Value::Summary(_) => panic!("no summaries are exported"),
            }
        }
        Scrape { samples }
    }

    /// The value of the sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    fn one(&self, name: &str) -> f64 {
        self.value(name, &[])
            .unwrap_or_else(|| panic!("{name} missing from the scrape: {self:?}"))
    }

    /// Every sample of `name`, by its value of `label`.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), value)| (labels.get(label).cloned().unwrap_or_default(), *value))
            .collect()
    }

    fn names(&self) -> BTreeSet<String> {
        self.samples.keys().map(|(n, _)| n.clone()).collect()
    }
}

/// Every durable event, read back from the live history.
async fn all_events(server: &Server) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let next = events.last().map_or(1, |e: &Event| e.seq + 1);
        let chunk = server.read_events(next, 1024).await.expect("history read");
        if chunk.is_empty() {
            return events;
        }
        events.extend(chunk);
    }
}

/// Jobs by status as the history tells it (deleted jobs left out).
fn statuses_from(events: &[Event]) -> BTreeMap<String, f64> {
    let mut jobs: BTreeMap<JobId, Option<RunStatus>> = BTreeMap::new();
    for event in events {
        match &event.kind {
            EventKind::JobSubmitted { job_id, .. } => {
                jobs.insert(*job_id, Some(RunStatus::Submitted));
            }
            EventKind::JobDispatched { job_id, .. } => {
                jobs.insert(*job_id, Some(RunStatus::Dispatched));
            }
            EventKind::RunStarted { job_id, .. } => {
                jobs.insert(*job_id, Some(RunStatus::Running));
            }
            EventKind::JobFinished { job_id, status, .. } => {
                jobs.insert(*job_id, Some(*status));
            }
            EventKind::JobDeleted { job_id } => {
                jobs.insert(*job_id, None);
            }
            _ => {}
        }
    }
    let mut counts: BTreeMap<String, f64> = RunStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0.0))
        .collect();
    for status in jobs.values().flatten() {
        *counts.entry(status.as_str().to_string()).or_default() += 1.0;
    }
    counts
}

async fn request(server: &Server, role: Role, request: AdminRequest) -> Result<Answer, String> {
    let origin = Origin {
        identity: identity(role),
        request_id: None,
    };
    match tokio::time::timeout(BOUND, server.request(origin, request))
        .await
        .expect("answered in time")
    {
        Ok(reply) => reply.map_err(|r| r.code().to_string()),
        Err(e) => panic!("the engine did not answer: {e}"),
    }
}

/// Polls `check` (bounded) until it holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_history_after_a_workload() {
    let mut fed = Federation::start().await;
    let addr = fed.metrics_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let agents: Vec<Agent> = SITES.iter().map(|s| fed.agent(s)).collect();
    wait_for(&fed.server, "both sites connected", |s| {
        s.connected_sites().count() == SITES.len()
    })
    .await;
    assert_eq!(
        get(addr, "/readyz").await.0,
        200,
        "a running server is ready"
    );

    // A job that completes.
    let done = submit_ok(&fed.server, &hello(fed.dir.path(), "done", 1, 1)).await;
    let mut package_bytes = BTreeMap::new();
    package_bytes.insert(done, stored_package_bytes(&fed.server, done));
    wait_for(&fed.server, "the first job settled", |s| settled(s, &done)).await;
    // A long job, aborted while it runs.
    let long = submit_ok(&fed.server, &hello(fed.dir.path(), "long", 600, 1)).await;
    package_bytes.insert(long, stored_package_bytes(&fed.server, long));
    wait_for(&fed.server, "the long job running", |s| {
        s.jobs[&long].status == RunStatus::Running
    })
    .await;
    request(
        &fed.server,
        Role::ProjectAdmin,
        AdminRequest::AbortJob { job_id: long },
    )
    .await
    .expect("abort accepted");
    wait_for(&fed.server, "the long job settled", |s| settled(s, &long)).await;
    // A job no federation of two sites can take: tried, then aborted.
    let wide = submit_ok(&fed.server, &hello(fed.dir.path(), "wide", 1, 5)).await;
    wait_for(&fed.server, "a schedule try of the wide job", |s| {
        s.jobs[&wide].schedule_count >= 1
    })
    .await;
    request(
        &fed.server,
        Role::ProjectAdmin,
        AdminRequest::AbortJob { job_id: wide },
    )
    .await
    .expect("abort accepted");
    // Refusals: abort a finished job; a member may not delete.
    let refused = request(
        &fed.server,
        Role::ProjectAdmin,
        AdminRequest::AbortJob { job_id: done },
    )
    .await
    .expect_err("a finished job cannot be aborted");
    assert_eq!(refused, "job_already_finished");
    let refused = request(
        &fed.server,
        Role::Member,
        AdminRequest::DeleteJob { job_id: done },
    )
    .await
    .expect_err("a member may not delete");
    assert_eq!(refused, "not_allowed");
    // A deleted job is not counted by status.
    request(
        &fed.server,
        Role::ProjectAdmin,
        AdminRequest::DeleteJob { job_id: done },
    )
    .await
    .expect("delete accepted");
    let last = wait_for(&fed.server, "every job settled", |s| {
        [done, long, wide].iter().all(|j| settled(s, j)) && s.jobs[&done].deleted
    })
    .await
    .last_seq;

    let scrape = Scrape::parse(&get(addr, "/metrics").await.1);
    let events = all_events(&fed.server).await;
    assert_eq!(
        events.last().map(|e| e.seq),
        Some(last),
        "nothing new since"
    );
    assert_eq!(scrape.one("fedrun_history_events"), last as f64);

    // Jobs by status, from the published state, equal the statuses the history tells.
    assert_eq!(scrape.by("fedrun_jobs", "status"), statuses_from(&events));
    assert_eq!(
        scrape.value("fedrun_jobs", &[("status", "FINISHED:ABORTED")]),
        Some(2.0)
    );
    assert_eq!(scrape.one("fedrun_queue_length"), 0.0);

    // Schedule tries by outcome.
    let mut tries: BTreeMap<String, f64> = BTreeMap::new();
    for event in &events {
        let outcome = match &event.kind {
            EventKind::ScheduleAttempted {
                outcome: ScheduleOutcome::Dispatched { .. },
                ..
            } => "dispatched",
            EventKind::ScheduleAttempted {
                outcome: ScheduleOutcome::NoResources { .. },
                ..
            } => "no_resources",
            EventKind::ScheduleTryCancelled { .. } => "cancelled",
            _ => continue,
        };
        *tries.entry(outcome.into()).or_default() += 1.0;
    }
    assert_eq!(tries.get("dispatched"), Some(&2.0), "{tries:?}");
    assert!(
        tries.get("no_resources").is_some_and(|n| *n >= 1.0),
        "{tries:?}"
    );
    assert_eq!(scrape.by("fedrun_schedule_tries_total", "outcome"), tries);

    // Refusals by code equal the RequestRefused events.
    let mut refusals: BTreeMap<String, f64> = BTreeMap::new();
    for event in &events {
        if let EventKind::RequestRefused { rejection, .. } = &event.kind {
            *refusals.entry(rejection.code().into()).or_default() += 1.0;
        }
    }
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(scrape.by("fedrun_requests_refused_total", "code"), refusals);

    // Time from submit to running and to finished, from the events' own times.
    let submitted: BTreeMap<JobId, i64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::JobSubmitted { job_id, .. } => Some((*job_id, e.at.as_millis())),
            _ => None,
        })
        .collect();
    let waits = |pick: &dyn Fn(&EventKind) -> Option<JobId>| -> (f64, f64) {
        let mut count = 0.0;
        let mut sum = 0.0;
        for event in &events {
            if let Some(job) = pick(&event.kind) {
                count += 1.0;
                sum += (event.at.as_millis() - submitted[&job]) as f64 / 1000.0;
            }
        }
        (count, sum)
    };
    let (count, sum) = waits(&|k| match k {
        EventKind::RunStarted { job_id, .. } => Some(*job_id),
        _ => None,
    });
    assert_eq!(count, 2.0);
    assert_eq!(
        scrape.one("fedrun_job_submit_to_running_seconds_count"),
        count
    );
    assert!((scrape.one("fedrun_job_submit_to_running_seconds_sum") - sum).abs() < 1e-6);
    let (count, sum) = waits(&|k| match k {
        EventKind::JobFinished { job_id, .. } => Some(*job_id),
        _ => None,
    });
    assert_eq!(count, 3.0);
    assert_eq!(
        scrape.one("fedrun_job_submit_to_finished_seconds_count"),
        count
    );
    assert!((scrape.one("fedrun_job_submit_to_finished_seconds_sum") - sum).abs() < 1e-6);

    // Every event of this fresh history was appended by this server: the batch sizes add
    // up to the history's length.
    assert_eq!(
        scrape.one("fedrun_history_append_batch_events_sum"),
        last as f64
    );
    let appends = scrape.one("fedrun_history_append_seconds_count");
    assert_eq!(
        scrape.one("fedrun_history_append_batch_events_count"),
        appends
    );
    assert!(appends >= 1.0 && appends <= last as f64);

    // Sites.
    let connects = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SiteConnected { .. }))
        .count() as f64;
    assert_eq!(scrape.one("fedrun_site_connections_total"), connects);
    assert_eq!(scrape.one("fedrun_sites_connected"), SITES.len() as f64);

    // Deploy bytes: each dispatched job's package, once per site it went to, as stored.
    let mut deployed = 0u64;
    for event in &events {
        if let EventKind::JobDispatched { job_id, sites, .. } = &event.kind {
            deployed += package_bytes[job_id] * sites.len() as u64;
        }
    }
    assert!(deployed > 0);
    assert_eq!(scrape.one("fedrun_deploy_bytes_total"), deployed as f64);

    // The history's size is what is on disk.
    let on_disk = folder_bytes(&fed.dir.path().join("data/history"));
    let reported = scrape.one("fedrun_history_size_bytes");
    assert!(
        reported > 0.0 && reported <= 2.0 * on_disk as f64,
        "{reported} vs {on_disk}"
    );
    assert_eq!(scrape.one("fedrun_engine_input_queue_capacity"), 1024.0);
    assert_eq!(scrape.one("fedrun_ready"), 1.0);

    // No job id and no site name is a label value.
    let text = get(addr, "/metrics").await.1;
    for job in [done, long, wide] {
        assert!(!text.contains(&job.to_string()), "a job id in the metrics");
    }
    for site in SITES {
        assert!(!text.contains(site), "a site name in the metrics");
    }

    // After the engine stops, the server is alive but not ready.
    for agent in agents {
        agent.stop().await;
    }
    if let Some(serving) = fed.serving.take() {
        serving.stop().await;
    }
    fed.server.shutdown().await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        Scrape::parse(&get(addr, "/metrics").await.1).one("fedrun_ready"),
        0.0
    );
    assert_eq!(get(addr, "/nothing").await.0, 404);
    if let Some(observing) = fed.observing.take() {
        observing.stop().await;
    }
    let left = processes_under(fed.dir.path());
    assert!(left.is_empty(), "app processes left: {left:?}");
}

/// The size of a job's package blob as stored.
fn stored_package_bytes(server: &Server, job: JobId) -> u64 {
    let state = server.state();
    let path = server.blobs().path_of(&state.jobs[&job].package);
    std::fs::metadata(&path).expect("the package blob").len()
}

fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("history folder").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            folder_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// A site agent's own metrics on its listener: running apps against the app processes in
/// `/proc`, deploy bytes against the stored package, and its connection across a lost and
/// regained link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_agent_serves_its_own_metrics() {
    let mut fed = Federation::start().await;
    let metrics = Arc::new(SiteMetrics::new());
    let observing = observe::start("127.0.0.1:0".parse().expect("addr"), metrics.clone())
        .await
        .expect("site metrics listener");
    let addr = observing.local_addr();
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let agent = fed.agent_with("site-1", metrics.clone());
    wait_for(&fed.server, "site-1 connected", |s| {
        s.connected_sites().count() == 1
    })
    .await;
    let site = || async { Scrape::parse(&get(addr, "/metrics").await.1) };
    assert_eq!(
        get(addr, "/readyz").await.0,
        200,
        "a connected site is ready"
    );
    let scrape = site().await;
    assert_eq!(scrape.one("fedrun_agent_connected"), 1.0);
    assert_eq!(scrape.one("fedrun_agent_connects_total"), 1.0);
    assert_eq!(scrape.one("fedrun_agent_reconnects_total"), 0.0);

    let long = submit_ok(&fed.server, &hello(fed.dir.path(), "long", 600, 1)).await;
    wait_for(&fed.server, "the job running", |s| {
        s.jobs[&long].status == RunStatus::Running
    })
    .await;
    let site_dir = fed.site_dir("site-1");
    until("the site's app in /proc and in the gauge", || {
        metrics.running_apps.get() == 1 && apps_under(&site_dir).len() == 1
    })
    .await;
    let scrape = site().await;
    assert_eq!(
        scrape.one("fedrun_agent_running_apps"),
        apps_under(&site_dir).len() as f64
    );
    let package_bytes = stored_package_bytes(&fed.server, long);
    assert_eq!(
        scrape.one("fedrun_agent_deploy_received_bytes_total"),
        package_bytes as f64
    );

    // The link is lost (the server stops listening) and regained (it listens again).
    let server_addr = fed.serving.as_ref().expect("serving").local_addr();
    fed.serving.take().expect("serving").stop().await;
    until("the site sees the link lost", || {
        metrics.connected.get() == 0
    })
    .await;
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "a site without its server is not ready"
    );
    assert_eq!(site().await.one("fedrun_agent_connected"), 0.0);
    let kit = Kit::load(&fed.dir.path().join("kits/localhost")).expect("server kit");
    fed.serving = Some(
        start(
            &kit,
            fed.server.clone(),
            server_addr,
            ServeOptions { wire: wire() },
        )
        .await
        .expect("serve again on the same address"),
    );
    until("the site reconnected", || metrics.connected.get() == 1).await;
    let scrape = site().await;
    assert_eq!(scrape.one("fedrun_agent_connects_total"), 2.0);
    assert_eq!(scrape.one("fedrun_agent_reconnects_total"), 1.0);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    request(
        &fed.server,
        Role::ProjectAdmin,
        AdminRequest::AbortJob { job_id: long },
    )
    .await
    .expect("abort accepted");
    wait_for(&fed.server, "the job settled", |s| settled(s, &long)).await;
    until("the site's app ended in /proc and in the gauge", || {
        metrics.running_apps.get() == 0 && apps_under(&site_dir).is_empty()
    })
    .await;
    assert_eq!(site().await.one("fedrun_agent_running_apps"), 0.0);

    // The server counts the connections its history records, after the first of a site
    // as reconnections.
    let server = Scrape::parse(&fed.server.metrics().encode());
    let events = all_events(&fed.server).await;
    let connections = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SiteConnected { .. }))
        .count() as f64;
    assert_eq!(
        connections, 2.0,
        "one SiteConnected per welcomed connection"
    );
    assert_eq!(server.one("fedrun_site_connections_total"), connections);
    assert_eq!(
        server.one("fedrun_site_reconnections_total"),
        connections - 1.0
    );

    agent.stop().await;
    observing.stop().await;
    if let Some(serving) = fed.serving.take() {
        serving.stop().await;
    }
    fed.server.shutdown().await;
    let left = processes_under(fed.dir.path());
    assert!(left.is_empty(), "app processes left: {left:?}");
}

/// Every metric a panel of the example Grafana dashboard queries is in a scrape of the
/// server or of a site; the admin API serves the same metrics as the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A clean stop leaves a snapshot, so the restarted server knows its age.
    let first = Server::start(ServerConfig::new(dir.path()), Arc::new(WallClock)).expect("server");
    wait_for(&first, "ServerStarted", |s| s.last_seq >= 1).await;
    first.shutdown().await;
    let server = Server::start(ServerConfig::new(dir.path()), Arc::new(WallClock)).expect("server");
    wait_for(&server, "ServerStarted", |s| s.last_seq >= 2).await;
    // A schedule try (no site is attached) and a refusal, so every family has a sample.
    let job = submit_ok(&server, &examples().join("hello-complete")).await;
    wait_for(&server, "a schedule try", |s| {
        s.jobs[&job].schedule_count >= 1
    })
    .await;
    request(
        &server,
        Role::ProjectAdmin,
        AdminRequest::AbortJob { job_id: job },
    )
    .await
    .expect("abort accepted");
    let refused = request(
        &server,
        Role::Member,
        AdminRequest::AbortJob {
            job_id: "00000000-0000-4000-8000-000000000000".parse().expect("id"),
        },
    )
    .await;
    assert!(refused.is_err());
    let text = fedrun::net::observe::Observed::metrics(&server);
    let mut names = Scrape::parse(&text).names();
    names.extend(Scrape::parse(&SiteMetrics::new().encode()).names());

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
        )
        .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            panels += 1;
            let mut rest = expr;
            while let Some(at) = rest.find("fedrun_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(panels >= 10, "{panels} queries");
    let missing: Vec<_> = queried.difference(&names).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");

    // The admin API's `/metrics` is the same exposition.
    let ctx = Arc::new(fedrun::net::admin::AdminContext::new(server.clone()));
    let response = tokio::time::timeout(
        BOUND,
        tower::ServiceExt::oneshot(
            fedrun::net::admin::router_for(ctx, identity(Role::Member)),
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .expect("request"),
        ),
    )
    .await
    .expect("in time")
    .expect("answer");
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let api_names = Scrape::parse(std::str::from_utf8(&body).expect("text")).names();
    assert_eq!(api_names, Scrape::parse(&text).names());
    server.shutdown().await;
}
