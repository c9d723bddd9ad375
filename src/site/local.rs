//! The local site: a site in the same program as the server, running apps as real child
//! processes, speaking only the messages of [`crate::site::protocol`].
//!
//! [`LocalSite::spawn`] starts one tokio task per site. The engine sends [`SiteRequest`]s
//! on [`SiteHandle::requests`] and receives `(site name, SiteReport)` pairs on the channel
//! it passed in; the first report is always `Connected`. The site task owns everything
//! about the site (its resource ledger, deployed apps, running processes, unacknowledged
//! reports), so nothing is shared and nothing is locked.
//!
//! App exits are reported as `AppExited` with the report id `<site>:<job_id>:exit` (a job
//! runs at most once per site, so the id is unique and stays the same when the report is
//! sent again). A report is kept in memory and resent on every reconnect until the engine
//! sends `Acknowledge`; an acknowledgement also leaves a marker file in the job's run
//! folder, so a restarted site does not report an old exit again.
//!
//! A site that is spawned on a workspace that already has run folders re-attaches to the
//! apps still running there (see [`crate::site::process::reattach`]): they are listed in
//! `Connected` and their exits are reported like any other. Apps that ended while the site
//! was down are reported at once unless acknowledged before.
//!
//! Requests are handled one at a time, in order. A deploy unpacks on a blocking thread
//! while the site task waits for it, so a request sent during a long unpack waits too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::job::limits::Limits;
use crate::job::JobId;
use crate::site::ledger::Ledger;
use crate::site::process::{self, AppLaunch, AppProcess, ProcessEnd, Reattached};
use crate::site::protocol::{SiteReport, SiteRequest};
use crate::site::workspace;
use crate::trust::TrustPolicy;

/// The marker file written in a job's run folder once its exit report was acknowledged.
pub const ACKNOWLEDGED_FILE: &str = "exit_acknowledged";
/// The resources a started job holds, in the job's supervision folder (out of the app's
/// reach, beside its process record), so a restarted site can restore them in its ledger.
pub const RESOURCES_FILE: &str = "resources.json";
/// The name of the deployed app, in the job's run folder.
const APP_NAME_FILE: &str = "app_name";

/// How big the request queue of a site is.
const REQUEST_QUEUE: usize = 256;

/// A local site's settings.
#[derive(Clone, Debug)]
pub struct LocalSiteConfig {
    /// The site's name (unique in the federation).
    pub name: String,
    /// What the site declares it can hold, by resource name.
    pub resources: BTreeMap<String, f64>,
    /// The site's workspace root; one run folder per job goes in it.
    pub workspace: PathBuf,
    /// Between asking an app to stop (`SIGTERM`) and killing it (`SIGKILL`).
    pub abort_grace: Duration,
    /// How long a reservation holds unless its job starts.
    pub reservation_timeout: Duration,
    /// The project root CA and the `require_signed_jobs` setting: every deploy is checked
    /// against them (SPEC section 6).
    pub trust: TrustPolicy,
    /// Limits on what a deploy unpacks.
    pub unpack_limits: Limits,
    /// The time certificates are checked at; `None` means the wall clock at each deploy.
    /// Set it to replay a verification as it was at a given time.
    pub verify_at: Option<std::time::SystemTime>,
    /// Names of variables of the site's own environment that apps may see, besides the
    /// allow-list of [`crate::site::process::INHERITED_ENV`] and `LC_*` (the site setting
    /// `app_env_pass`). Nothing else of the site's environment reaches an app.
    pub app_env_pass: Vec<String>,
    /// Set to the number of apps the site runs after every step (the site agent's
    /// `fedrun_site_running_apps` metric); a gauge of its own unless one is given.
    pub running_apps: prometheus_client::metrics::gauge::Gauge,
}

impl LocalSiteConfig {
    /// A site with the default settings of SPEC section 7 (`abort_grace` 10 s,
    /// `reservation_timeout` 30 s), no root CA and `require_signed_jobs` unset (so unsigned
    /// jobs are accepted), the default package limits, and no `app_env_pass` names.
    pub fn new(name: &str, workspace: PathBuf, resources: BTreeMap<String, f64>) -> Self {
        LocalSiteConfig {
            name: name.to_string(),
            resources,
            workspace,
            abort_grace: Duration::from_secs(10),
            reservation_timeout: Duration::from_secs(30),
            trust: TrustPolicy {
                root_ca: None,
                require_signed_jobs: None,
            },
            unpack_limits: Limits::default(),
            verify_at: None,
            app_env_pass: Vec::new(),
            running_apps: Default::default(),
        }
    }
}

/// Out-of-band controls that model the connection of a remote site.
#[derive(Debug)]
enum Control {
    Disconnect,
    Reconnect,
    Shutdown,
    StopAppsAndShutdown,
}

/// The engine's side of a running local site.
#[derive(Debug)]
pub struct SiteHandle {
    /// The site's name, as it appears in its reports.
    pub name: String,
    /// Where the engine sends requests.
    pub requests: mpsc::Sender<SiteRequest>,
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

impl SiteHandle {
    /// Drops the site's connection, as a network failure would: the site reports
    /// `Disconnected`, ignores requests, and keeps its reports (and running apps) until
    /// [`SiteHandle::reconnect`].
    pub fn disconnect(&self) {
        let _ = self.control.send(Control::Disconnect);
    }

    /// Restores the connection: the site reports `Connected` with what it runs, then
    /// resends every unacknowledged report.
    pub fn reconnect(&self) {
        let _ = self.control.send(Control::Reconnect);
    }

    /// Ends the site in an orderly way: every running app is stopped as an abort would
    /// stop it (`SIGTERM`, `abort_grace`, `SIGKILL`), its exit is reported, and then the
    /// task ends. Waits until the task has ended.
    pub async fn stop_apps_and_shutdown(self) {
        let _ = self.control.send(Control::StopAppsAndShutdown);
        if let Err(e) = self.task.await {
            tracing::warn!(site = %self.name, error = %e, "site task ended abnormally");
        }
    }

    /// Ends the site task as a crash of the site would: running apps keep running
    /// (they are detached), and a site spawned later on the same workspace re-attaches to
    /// them. Waits until the task has ended.
    pub async fn shutdown(self) {
        let _ = self.control.send(Control::Shutdown);
        if let Err(e) = self.task.await {
            tracing::warn!(site = %self.name, error = %e, "site task ended abnormally");
        }
    }
}

/// The local site (see the module documentation).
pub struct LocalSite {
    config: LocalSiteConfig,
    ledger: Ledger,
    reports: mpsc::Sender<(String, SiteReport)>,
    /// Deployed apps by job: the app folder.
    deployed: BTreeMap<JobId, PathBuf>,
    running: BTreeMap<JobId, AppProcess>,
    /// Reports sent (or to be sent) and not yet acknowledged, by report id.
    unacknowledged: BTreeMap<String, (JobId, SiteReport)>,
    connected: bool,
    /// Set by an orderly shutdown: the task ends once no app runs.
    shutting_down: bool,
    exits_tx: mpsc::UnboundedSender<(JobId, ProcessEnd)>,
}

/// The site task ends because the engine is gone or the site was shut down.
struct Stopped;

impl LocalSite {
    /// Starts the site task and returns its handle. Must be called inside a tokio runtime.
    /// The site first re-attaches to apps recorded in its workspace, then reports
    /// `Connected`.
    pub fn spawn(
        config: LocalSiteConfig,
        reports: mpsc::Sender<(String, SiteReport)>,
    ) -> SiteHandle {
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let name = config.name.clone();
        let incarnation = format!("{:08x}", rand::random::<u32>());
        let site = LocalSite {
            ledger: Ledger::new(&config.name, config.resources.clone(), &incarnation),
            config,
            reports,
            deployed: BTreeMap::new(),
            running: BTreeMap::new(),
            unacknowledged: BTreeMap::new(),
            connected: true,
            shutting_down: false,
            exits_tx,
        };
        let task = tokio::spawn(site.run(requests_rx, control_rx, exits_rx));
        SiteHandle {
            name,
            requests: requests_tx,
            control: control_tx,
            task,
        }
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<SiteRequest>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut exits: mpsc::UnboundedReceiver<(JobId, ProcessEnd)>,
    ) {
        tracing::info!(site = %self.config.name, workspace = %self.config.workspace.display(), "local site starting");
        self.recover();
        self.config.running_apps.set(self.running.len() as i64);
        if self.announce().await.is_err() {
            return;
        }
        loop {
            let step = tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request).await,
                    None => Err(Stopped),
                },
                Some(control) = control.recv() => self.handle_control(control).await,
                Some((job_id, end)) = exits.recv() => self.handle_exit(job_id, end).await,
            };
            self.config.running_apps.set(self.running.len() as i64);
            if step.is_err() || (self.shutting_down && self.running.is_empty()) {
                break;
            }
        }
        tracing::info!(site = %self.config.name, "local site stopped");
    }

    /// Re-attaches to the apps recorded in the workspace.
    fn recover(&mut self) {
        for job_id in workspace::job_ids(&self.config.workspace) {
            let run_dir = workspace::job_dir(&self.config.workspace, job_id);
            match process::reattach(&run_dir) {
                Ok(Reattached::Running(app)) => {
                    let resources = read_resources(&run_dir);
                    self.ledger.restore_in_use(job_id, resources);
                    self.watch(job_id, &app);
                    self.running.insert(job_id, app);
                }
                Ok(Reattached::Ended(end)) => {
                    if !run_dir.join(ACKNOWLEDGED_FILE).exists() {
                        self.keep_exit_report(job_id, end);
                    }
                }
                Ok(Reattached::NotFound) => {
                    if let Ok(app) = std::fs::read_to_string(run_dir.join(APP_NAME_FILE)) {
                        let app_dir = run_dir.join(app.trim());
                        if app_dir.is_dir() {
                            self.deployed.insert(job_id, app_dir);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(site = %self.config.name, job = %job_id, error = %e, "cannot re-attach");
                }
            }
        }
    }

    /// Reports `Connected`, then every unacknowledged report.
    async fn announce(&mut self) -> Result<(), Stopped> {
        let running = self.running.keys().copied().collect();
        self.send(SiteReport::Connected {
            resources: self.config.resources.clone(),
            running,
        })
        .await?;
        let pending: Vec<SiteReport> = self
            .unacknowledged
            .values()
            .map(|(_, r)| r.clone())
            .collect();
        for report in pending {
            self.send(report).await?;
        }
        Ok(())
    }

    async fn send(&self, report: SiteReport) -> Result<(), Stopped> {
        if !self.connected {
            return Ok(());
        }
        self.reports
            .send((self.config.name.clone(), report))
            .await
            .map_err(|_| Stopped)
    }

    async fn handle_control(&mut self, control: Control) -> Result<(), Stopped> {
        match control {
            Control::Disconnect if self.connected => {
                self.send(SiteReport::Disconnected).await?;
                self.connected = false;
                Ok(())
            }
            Control::Reconnect if !self.connected => {
                self.connected = true;
                self.announce().await
            }
            Control::Disconnect | Control::Reconnect => Ok(()),
            Control::Shutdown => Err(Stopped),
            Control::StopAppsAndShutdown => {
                self.shutting_down = true;
                for app in self.running.values() {
                    app.stop(self.config.abort_grace);
                }
                Ok(())
            }
        }
    }

    async fn handle_request(&mut self, request: SiteRequest) -> Result<(), Stopped> {
        if !self.connected {
            // A disconnected remote site never receives what is sent to it.
            tracing::debug!(site = %self.config.name, ?request, "request dropped while disconnected");
            return Ok(());
        }
        match request {
            SiteRequest::CheckResources {
                try_id,
                job_id,
                resources,
            } => {
                let answer = self
                    .ledger
                    .reserve(job_id, &resources, now(), self.config.reservation_timeout)
                    .map_err(|e| e.to_string());
                self.send(SiteReport::ResourceAnswer {
                    try_id,
                    job_id,
                    answer,
                })
                .await
            }
            SiteRequest::CancelReservation { job_id, token } => {
                if !self.ledger.cancel(job_id, &token) {
                    tracing::debug!(site = %self.config.name, job = %job_id, %token, "no reservation to cancel");
                }
                Ok(())
            }
            SiteRequest::Deploy {
                job_id,
                app_name,
                package,
                verify_at,
                // The bytes came from the blob store (checked there) or from a link that
                // checked them against it.
                hash: _,
            } => {
                let result = self.deploy(job_id, app_name, package, verify_at).await;
                self.send(SiteReport::DeployAnswer { job_id, result }).await
            }
            SiteRequest::Start { job_id } => {
                let result = self.start(job_id);
                self.send(SiteReport::StartAnswer { job_id, result }).await
            }
            SiteRequest::Stop { job_id } => {
                match self.running.get(&job_id) {
                    Some(app) => app.stop(self.config.abort_grace),
                    None => {
                        // Nothing runs: whatever the job had reserved is no longer needed.
                        self.ledger.release(job_id);
                        tracing::debug!(site = %self.config.name, job = %job_id, "stop: no app running");
                    }
                }
                Ok(())
            }
            SiteRequest::Delete { job_id } => {
                self.delete(job_id).await;
                Ok(())
            }
            SiteRequest::Acknowledge { report_id } => {
                if let Some((job_id, _)) = self.unacknowledged.remove(&report_id) {
                    let marker =
                        workspace::job_dir(&self.config.workspace, job_id).join(ACKNOWLEDGED_FILE);
                    if marker.parent().map(Path::is_dir).unwrap_or(false) {
                        if let Err(e) = std::fs::write(&marker, report_id.as_bytes()) {
                            tracing::warn!(site = %self.config.name, path = %marker.display(), error = %e, "cannot write acknowledgement marker");
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn deploy(
        &mut self,
        job_id: JobId,
        app_name: String,
        package: Arc<Vec<u8>>,
        verify_at: Option<crate::lifecycle::Timestamp>,
    ) -> Result<(), String> {
        if self.running.contains_key(&job_id) {
            return Err(format!("job {job_id} is running at this site"));
        }
        let root = self.config.workspace.clone();
        let limits = self.config.unpack_limits.clone();
        let policy = self.config.trust.clone();
        // The server's time (the job's submit) first, then the site's configured one.
        let at = verify_at
            .map(crate::trust::submit::timestamp_to_system_time)
            .or(self.config.verify_at)
            .unwrap_or_else(std::time::SystemTime::now);
        let unpack = tokio::task::spawn_blocking(move || {
            let deployed =
                workspace::deploy_app(&root, job_id, &app_name, &package, &limits, &policy, at)?;
            let name_file = workspace::job_dir(&root, job_id).join(APP_NAME_FILE);
            std::fs::write(&name_file, app_name.as_bytes()).map_err(|source| {
                workspace::DeployError::Io {
                    path: name_file,
                    cause: source,
                }
            })?;
            Ok::<_, workspace::DeployError>(deployed)
        });
        match unpack.await {
            Ok(Ok(deployed)) => {
                tracing::info!(site = %self.config.name, job = %job_id, app = %deployed.app_dir.display(), trust = ?deployed.trust, "app deployed");
                self.deployed.insert(job_id, deployed.app_dir);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("deploy task failed: {e}")),
        }
    }

    fn start(&mut self, job_id: JobId) -> Result<(), String> {
        if self.shutting_down {
            return Err(format!("site {} is shutting down", self.config.name));
        }
        if self.running.contains_key(&job_id) {
            return Err(format!("job {job_id} is already running at this site"));
        }
        let Some(app_dir) = self.deployed.get(&job_id).cloned() else {
            return Err(format!("job {job_id} is not deployed at this site"));
        };
        self.ledger
            .start(job_id, now())
            .map_err(|e| format!("cannot hold the job's resources: {e}"))?;
        let run_dir = workspace::job_dir(&self.config.workspace, job_id);
        let held = self
            .ledger
            .reservation(job_id)
            .map(|r| r.resources.clone())
            .unwrap_or_default();
        if let Err(e) = write_resources(&run_dir, &held) {
            self.ledger.release(job_id);
            return Err(e);
        }
        let launch = AppLaunch {
            job_id,
            site: self.config.name.clone(),
            run_dir,
            app_dir,
        };
        match process::start_with(&launch, &self.config.app_env_pass) {
            Ok(app) => {
                self.watch(job_id, &app);
                self.running.insert(job_id, app);
                Ok(())
            }
            Err(e) => {
                self.ledger.release(job_id);
                Err(e.to_string())
            }
        }
    }

    /// Forwards the app's end to the site task.
    fn watch(&self, job_id: JobId, app: &AppProcess) {
        let ended = app.ended();
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            if let Some(end) = process::wait_end(ended).await {
                let _ = exits.send((job_id, end));
            }
        });
    }

    async fn delete(&mut self, job_id: JobId) {
        if let Some(app) = self.running.remove(&job_id) {
            // Deleting means nothing may keep running in the folder about to go: no grace.
            app.stop(Duration::ZERO);
            let _ = app.wait().await;
        }
        self.ledger.release(job_id);
        self.deployed.remove(&job_id);
        let root = self.config.workspace.clone();
        match tokio::task::spawn_blocking(move || workspace::remove_job(&root, job_id)).await {
            Ok(Ok(())) => {
                tracing::info!(site = %self.config.name, job = %job_id, "job deleted")
            }
            Ok(Err(e)) => {
                tracing::warn!(site = %self.config.name, job = %job_id, error = %e, "cannot delete job folder")
            }
            Err(e) => {
                tracing::warn!(site = %self.config.name, job = %job_id, error = %e, "delete task failed")
            }
        }
    }

    async fn handle_exit(&mut self, job_id: JobId, end: ProcessEnd) -> Result<(), Stopped> {
        self.running.remove(&job_id);
        self.ledger.release(job_id);
        let report = self.keep_exit_report(job_id, end);
        self.send(report).await
    }

    fn keep_exit_report(&mut self, job_id: JobId, end: ProcessEnd) -> SiteReport {
        let report_id = exit_report_id(&self.config.name, job_id);
        let report = SiteReport::AppExited {
            job_id,
            report_id: report_id.clone(),
            outcome: end.outcome,
            stop_requested: end.stop_requested,
        };
        self.unacknowledged
            .insert(report_id, (job_id, report.clone()));
        report
    }
}

/// The id of the exit report of `job_id` at `site`.
pub fn exit_report_id(site: &str, job_id: JobId) -> String {
    format!("{site}:{job_id}:exit")
}

/// The site's clock, as tokio sees it, so tests can drive it with a paused clock.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn write_resources(run_dir: &Path, resources: &BTreeMap<String, f64>) -> Result<(), String> {
    let dir = workspace::supervision_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(RESOURCES_FILE);
    let bytes = serde_json::to_vec(resources).map_err(|e| e.to_string())?;
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read_resources(run_dir: &Path) -> BTreeMap<String, f64> {
    std::fs::read(workspace::supervision_dir(run_dir).join(RESOURCES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
