//! Prometheus metrics of the server and of a site agent (SPEC section 11, Observation),
//! through `prometheus-client`, in the OpenMetrics text exposition format.
//!
//! Two kinds of values:
//!
//! - **Recorded** ones (counters and histograms) are fed by the IO edge: the server's
//!   engine task records the facts of each batch once the history thread has made it
//!   durable ([`BatchFacts`], so only what was acknowledged counts), the history thread
//!   times its appends and notes its snapshots, the site senders count deploy bytes. The
//!   core (`lifecycle`, `schedule`) never sees a metric.
//! - **Read at scrape time** ones (gauges) come from the published state and the server's
//!   queues through a [`Collector`]: jobs by status, queue length, connected sites,
//!   history length and size, snapshot age, engine input queue depth. A scrape costs a pass
//!   over the jobs of the published state and nothing of the engine's time.
//!
//! Label values are bounded: statuses, schedule outcomes and refusal codes are closed
//! sets; no job id or site name is ever a label.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::lifecycle::{Event, EventKind, RunStatus, ScheduleOutcome, State};

/// The content type of [`ServerMetrics::encode`] and [`SiteMetrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the job durations: 0.1 s to 24 h.
const JOB_SECONDS_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0,
];

type Labels = Vec<(&'static str, &'static str)>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only whole values are stored under these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the server's scrape reads besides the recorded values: the published state, the
/// engine's input queue and the data folder.
pub struct ServerProbe {
    /// The published state (after the last durable batch).
    pub state: watch::Receiver<Arc<State>>,
    /// Inputs waiting for the engine task, and the queue's capacity.
    pub input_queue: Box<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// The history's folder (its size on disk is reported), if it is on disk.
    pub history_dir: Option<PathBuf>,
    /// Whether the server accepts requests now (`/readyz`): `Err` says why not.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for ServerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProbe")
            .field("history_dir", &self.history_dir)
            .finish()
    }
}

/// The last snapshot this server knows of: when it was taken and the sequence number it
/// covers.
#[derive(Clone, Copy, Debug, Default)]
struct SnapshotSeen {
    at: Option<SystemTime>,
    seq: u64,
}

/// The server's metrics: the recorded values and the registry that encodes them with the
/// values read from the [`ServerProbe`].
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    schedule_tries: Family<Labels, Counter>,
    submit_to_running: Histogram,
    submit_to_finished: Histogram,
    append_seconds: Histogram,
    append_batch_events: Histogram,
    site_connects: Counter,
    site_reconnects: Counter,
    site_disconnects: Counter,
    deploy_bytes: Counter,
    refused: Family<Labels, Counter>,
    queue_full: Counter,
    seen_sites: Mutex<BTreeSet<String>>,
    snapshot: Arc<Mutex<SnapshotSeen>>,
    probe: Arc<ServerProbe>,
}

/// The facts of one batch that metrics record, taken when the batch is handed to the
/// history and recorded only once it is durable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchFacts {
    /// Each schedule try that ended: `dispatched`, `no_resources` or `cancelled`.
    pub tries: Vec<&'static str>,
    /// Seconds from submit to `RunStarted`, per job that started.
    pub to_running: Vec<f64>,
    /// Seconds from submit to `JobFinished`, per job that finished.
    pub to_finished: Vec<f64>,
    /// Sites that connected.
    pub connected: Vec<String>,
    /// How many site disconnections.
    pub disconnected: u64,
    /// The stable code of each recorded refusal.
    pub refused: Vec<&'static str>,
}

impl BatchFacts {
    /// The facts of `events`, with submit times looked up in `state` (a state that has
    /// applied them).
    pub fn of(events: &[Event], state: &State) -> BatchFacts {
        let mut facts = BatchFacts::default();
        let since_submit = |job_id, at: crate::lifecycle::Timestamp| {
            state
                .jobs
                .get(&job_id)
                .map(|job| (at.as_millis() - job.submit_time.as_millis()).max(0) as f64 / 1000.0)
        };
        for event in events {
            match &event.kind {
                EventKind::ScheduleAttempted { outcome, .. } => facts.tries.push(match outcome {
                    ScheduleOutcome::Dispatched { .. } => "dispatched",
                    ScheduleOutcome::NoResources { .. } => "no_resources",
                }),
                EventKind::ScheduleTryCancelled { .. } => facts.tries.push("cancelled"),
                EventKind::RunStarted { job_id, .. } => {
                    facts.to_running.extend(since_submit(*job_id, event.at))
                }
                EventKind::JobFinished { job_id, .. } => {
                    facts.to_finished.extend(since_submit(*job_id, event.at))
                }
                EventKind::SiteConnected { site, .. } => facts.connected.push(site.clone()),
                EventKind::SiteDisconnected { .. } => facts.disconnected += 1,
                EventKind::RequestRefused { rejection, .. } => facts.refused.push(rejection.code()),
                _ => {}
            }
        }
        facts
    }
}

impl ServerMetrics {
    /// The metrics of a server read through `probe`.
    pub fn new(probe: ServerProbe) -> ServerMetrics {
        let mut registry = Registry::default();
        let schedule_tries = Family::<Labels, Counter>::default();
        registry.register(
            "fedrun_schedule_tries",
            "Schedule tries that ended, by outcome (dispatched, no_resources, cancelled)",
            schedule_tries.clone(),
        );
        let submit_to_running = Histogram::new(JOB_SECONDS_BUCKETS);
        registry.register_with_unit(
            "fedrun_job_submit_to_running",
            "Time from a job's submit to its RunStarted (event times)",
            Unit::Seconds,
            submit_to_running.clone(),
        );
        let submit_to_finished = Histogram::new(JOB_SECONDS_BUCKETS);
        registry.register_with_unit(
            "fedrun_job_submit_to_finished",
            "Time from a job's submit to its JobFinished (event times)",
            Unit::Seconds,
            submit_to_finished.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "fedrun_history_append",
            "Time of one durable batch append (write, flush, fsync, anchor)",
            Unit::Seconds,
            append_seconds.clone(),
        );
        let append_batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "fedrun_history_append_batch_events",
            "Events per durable batch append",
            append_batch_events.clone(),
        );
        let site_connects = Counter::default();
        registry.register(
            "fedrun_site_connections",
            "Site connections recorded (SiteConnected events)",
            site_connects.clone(),
        );
        let site_reconnects = Counter::default();
        registry.register(
            "fedrun_site_reconnections",
            "Site connections of a site that had connected before since this server started",
            site_reconnects.clone(),
        );
        let site_disconnects = Counter::default();
        registry.register(
            "fedrun_site_disconnections",
            "Site disconnections recorded (SiteDisconnected events)",
            site_disconnects.clone(),
        );
        let deploy_bytes = Counter::default();
        registry.register_with_unit(
            "fedrun_deploy",
            "Package bytes handed to site connections for deploys",
            Unit::Bytes,
            deploy_bytes.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "fedrun_requests_refused",
            "Admin requests refused by the core and recorded (RequestRefused), by code",
            refused.clone(),
        );
        let queue_full = Counter::default();
        registry.register(
            "fedrun_engine_queue_full",
            "Admin requests answered busy because the engine's input queue was full",
            queue_full.clone(),
        );
        let snapshot = Arc::new(Mutex::new(SnapshotSeen::default()));
        let probe = Arc::new(probe);
        registry.register_collector(Box::new(StateCollector {
            probe: probe.clone(),
            snapshot: snapshot.clone(),
        }));
        ServerMetrics {
            registry,
            schedule_tries,
            submit_to_running,
            submit_to_finished,
            append_seconds,
            append_batch_events,
            site_connects,
            site_reconnects,
            site_disconnects,
            deploy_bytes,
            refused,
            queue_full,
            seen_sites: Mutex::new(BTreeSet::new()),
            snapshot,
            probe,
        }
    }

    /// Records the facts of a batch that is now durable.
    pub fn record_batch(&self, facts: &BatchFacts) {
        for outcome in &facts.tries {
            self.schedule_tries
                .get_or_create(&vec![("outcome", *outcome)])
                .inc();
        }
        for seconds in &facts.to_running {
            self.submit_to_running.observe(*seconds);
        }
        for seconds in &facts.to_finished {
            self.submit_to_finished.observe(*seconds);
        }
        if !facts.connected.is_empty() {
            let mut seen = lock(&self.seen_sites);
            for site in &facts.connected {
                self.site_connects.inc();
                // Only sites the project knows can connect, so the set is bounded.
                if !seen.insert(site.clone()) {
                    self.site_reconnects.inc();
                }
            }
        }
        self.site_disconnects.inc_by(facts.disconnected);
        for code in &facts.refused {
            self.refused.get_or_create(&vec![("code", *code)]).inc();
        }
    }

    /// Records one durable append of `events` events that took `took`.
    pub fn record_append(&self, took: Duration, events: usize) {
        self.append_seconds.observe(took.as_secs_f64());
        self.append_batch_events.observe(events as f64);
    }

    /// Notes a snapshot covering `seq`, taken (or, at start-up, last written) at `at`.
    pub fn record_snapshot(&self, at: SystemTime, seq: u64) {
        *lock(&self.snapshot) = SnapshotSeen { at: Some(at), seq };
    }

    /// Counts package bytes handed to a site's connection.
    pub fn record_deploy_bytes(&self, bytes: usize) {
        self.deploy_bytes.inc_by(bytes as u64);
    }

    /// Counts an admin request turned away because the engine's queue was full.
    pub fn record_queue_full(&self) {
        self.queue_full.inc();
    }

    /// Whether the server accepts requests now; `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        (self.probe.ready)()
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; a collector that fails would be a bug here.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String does not fail");
        text
    }
}

/// Reads the gauges of a scrape from the published state and the server's queues.
#[derive(Debug)]
struct StateCollector {
    probe: Arc<ServerProbe>,
    snapshot: Arc<Mutex<SnapshotSeen>>,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Into<f64>,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value.into());
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let state = self.probe.state.borrow().clone();
        // Kept by the fold: a scrape does not walk every job ever submitted.
        let by_status = state.index().by_status;
        {
            let marker = ConstGauge::new(0i64);
            let mut metric = encoder.encode_descriptor(
                "fedrun_jobs",
                "Jobs by status (deleted jobs are not counted)",
                None,
                marker.metric_type(),
            )?;
            for (status, count) in RunStatus::ALL.iter().zip(by_status) {
                let labels = [("status", status.as_str())];
                let family = metric.encode_family(&labels)?;
                ConstGauge::new(count as i64).encode(family)?;
            }
        }
        gauge(
            &mut encoder,
            "fedrun_queue_length",
            "Jobs waiting to be scheduled (SUBMITTED)",
            None,
            state.queue.len() as f64,
        )?;
        gauge(
            &mut encoder,
            "fedrun_sites_connected",
            "Sites connected now",
            None,
            state.connected_sites().count() as f64,
        )?;
        gauge(
            &mut encoder,
            "fedrun_sites_known",
            "Sites the history knows of (connected or not)",
            None,
            state.sites.len() as f64,
        )?;
        gauge(
            &mut encoder,
            "fedrun_history_events",
            "Events in the history (the last sequence number)",
            None,
            state.last_seq as f64,
        )?;
        if let Some(dir) = &self.probe.history_dir {
            gauge(
                &mut encoder,
                "fedrun_history_size",
                "Size of the history's folder on disk",
                Some(&Unit::Bytes),
                folder_bytes(dir) as f64,
            )?;
        }
        let snapshot = *lock(&self.snapshot);
        gauge(
            &mut encoder,
            "fedrun_snapshot_events_behind",
            "Events in the history after the last snapshot",
            None,
            state.last_seq.saturating_sub(snapshot.seq) as f64,
        )?;
        if let Some(at) = snapshot.at {
            let age = SystemTime::now()
                .duration_since(at)
                .unwrap_or(Duration::ZERO);
            gauge(
                &mut encoder,
                "fedrun_snapshot_age",
                "Time since the last snapshot was written",
                Some(&Unit::Seconds),
                age.as_secs_f64(),
            )?;
        }
        let (depth, capacity) = (self.probe.input_queue)();
        gauge(
            &mut encoder,
            "fedrun_engine_input_queue_depth",
            "Inputs waiting for the engine task",
            None,
            depth as f64,
        )?;
        gauge(
            &mut encoder,
            "fedrun_engine_input_queue_capacity",
            "Inputs that may wait for the engine task before requests are answered busy",
            None,
            capacity as f64,
        )?;
        gauge(
            &mut encoder,
            "fedrun_ready",
            "1 when the server accepts requests (the /readyz answer), else 0",
            None,
            if (self.probe.ready)().is_ok() {
                1.0
            } else {
                0.0
            },
        )?;
        Ok(())
    }
}

/// The bytes of every file under `dir` (sled's folder holds a few files; a file that
/// vanishes while it is read counts 0).
fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A site agent's metrics: running apps, its connection, reconnects and deploy bytes.
#[derive(Debug)]
pub struct SiteMetrics {
    registry: Registry,
    /// Apps running now (kept by the local site).
    pub running_apps: Gauge,
    /// 1 while the server has welcomed the agent's connection, else 0.
    pub connected: Gauge,
    /// Welcomed connections.
    pub connects: Counter,
    /// Welcomed connections after the first.
    pub reconnects: Counter,
    /// Package bytes received in deploy chunks.
    pub deploy_bytes_received: Counter,
}

impl Default for SiteMetrics {
    fn default() -> Self {
        SiteMetrics::new()
    }
}

impl SiteMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> SiteMetrics {
        let mut registry = Registry::default();
        let running_apps = Gauge::default();
        registry.register(
            "fedrun_agent_running_apps",
            "Apps this site runs now",
            running_apps.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "fedrun_agent_connected",
            "1 while the server has welcomed this site's connection, else 0",
            connected.clone(),
        );
        let connects = Counter::default();
        registry.register(
            "fedrun_agent_connects",
            "Connections to the server that were welcomed",
            connects.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "fedrun_agent_reconnects",
            "Welcomed connections after the first (the link was lost and regained)",
            reconnects.clone(),
        );
        let deploy_bytes_received = Counter::default();
        registry.register_with_unit(
            "fedrun_agent_deploy_received",
            "Package bytes received from the server in deploy chunks",
            Unit::Bytes,
            deploy_bytes_received.clone(),
        );
        SiteMetrics {
            registry,
            running_apps,
            connected,
            connects,
            reconnects,
            deploy_bytes_received,
        }
    }

    /// Notes a welcomed connection (the first, or a reconnect).
    pub fn record_connected(&self) {
        if self.connects.inc() > 0 {
            self.reconnects.inc();
        }
        self.connected.set(1);
    }

    /// Notes that the connection is gone.
    pub fn record_disconnected(&self) {
        self.connected.set(0);
    }

    /// Whether the site is connected to the server (its `/readyz`); `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        if self.connected.get() == 1 {
            Ok(())
        } else {
            Err("the site is not connected to the server".into())
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String does not fail");
        text
    }
}
