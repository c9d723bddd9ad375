//! The engine as a server: one tokio task owns the [`Engine`]; everything else talks to it
//! through a bounded queue of [`Input`]s and reads a published copy of the state.
//!
//! The task waits for the first input or the engine's next deadline, whichever comes first
//! (no polling tick), then takes every input already waiting, steps the engine with the
//! whole batch (one flush), publishes the new state, answers the admin requests,
//! acknowledges recorded site reports, and hands the effects to workers. Workers (site
//! senders, the server app runner, the archiver) never block the task: each runs on its
//! own task or blocking thread and reports back as a new input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::blobs::BlobStore;
use crate::engine::archive;
use crate::engine::clock::Clock;
use crate::engine::ids::RandomIds;
use crate::engine::owner::{Engine, EngineLimits, EngineRefusal, Ids, StartError};
use crate::history::{DataPaths, History};
use crate::job::JobId;
use crate::lifecycle::{
    AdminRequest, BlobHash, Command, Effect, Event, Identity, Origin, Reply, State, Timer,
};
use crate::settings::Settings;
use crate::site::process::{self, AppLaunch, AppProcess, Reattached};
use crate::site::protocol::{ExitOutcome, SiteReport, SiteRequest};
use crate::site::workspace;
use crate::trust::policy::TrustPolicy;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The data folder: the history, blobs and the server's own workspace.
    pub data_dir: PathBuf,
    /// The settings of SPEC section 7.
    pub settings: Settings,
    /// Limits on queued jobs and snapshots.
    pub limits: EngineLimits,
    /// Inputs that may wait for the engine; admin requests beyond it are answered "busy".
    pub queue_capacity: usize,
    /// Package bytes that may be in flight to sites at once (deploys wait beyond it).
    pub package_bytes_in_flight_max: usize,
    /// Signature policy for what the server deploys (SPEC section 6).
    pub trust: TrustPolicy,
}

impl ServerConfig {
    /// A server on `data_dir` with default settings and limits.
    pub fn new(data_dir: &Path) -> Self {
        ServerConfig {
            data_dir: data_dir.to_path_buf(),
            settings: Settings::default(),
            limits: EngineLimits::default(),
            queue_capacity: 1024,
            package_bytes_in_flight_max: 256 * 1024 * 1024,
            trust: TrustPolicy {
                root_ca: None,
                require_signed_jobs: None,
            },
        }
    }
}

/// Why an admin request got no answer from the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The engine's queue is full: try again shortly.
    #[error("the server is busy; try again shortly")]
    Busy,
    /// The engine refused before deciding (a limit).
    #[error(transparent)]
    Refused(#[from] EngineRefusal),
    /// The engine has stopped (after a failed write, or a shutdown).
    #[error("the server's engine has stopped")]
    Stopped,
}

/// The answer to an admin request: the core's reply (accepted, or a typed rejection).
pub type AdminAnswer = Result<Reply, AdminError>;

/// One input of the engine task. Closed: everything the engine reacts to is one of these.
#[derive(Debug)]
pub enum Input {
    /// An admin request, answered on `reply` once its events are durable.
    Admin {
        /// Who asked, with the idempotency key.
        origin: Origin,
        /// What.
        request: AdminRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<AdminAnswer>,
    },
    /// A site's report.
    Site {
        /// The site.
        site: String,
        /// What it said.
        report: SiteReport,
    },
    /// A worker's result (server app deploy/start/exit, archive, re-attach).
    Worker(Command),
    /// Stop the task after the inputs before this one.
    Shutdown(oneshot::Sender<()>),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The history could not be opened.
    #[error("cannot open the history in {dir}: {source}")]
    Open {
        /// The data folder.
        dir: PathBuf,
        /// The cause.
        source: crate::history::OpenError,
    },
    /// The blob store could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
    /// The engine could not start on the history.
    #[error(transparent)]
    Start(#[from] StartError),
}

enum Outgoing {
    Request(SiteRequest),
    Deploy {
        job_id: JobId,
        app: String,
        package: BlobHash,
    },
}

struct Shared {
    sites: Mutex<BTreeMap<String, mpsc::UnboundedSender<Outgoing>>>,
    apps: Mutex<BTreeMap<JobId, AppProcess>>,
}

/// The handle of a running server: send requests, read the state, attach sites.
#[derive(Clone)]
pub struct Server {
    inputs: mpsc::Sender<Input>,
    state: watch::Receiver<Arc<State>>,
    shared: Arc<Shared>,
    blobs: BlobStore,
    package_budget: Arc<Semaphore>,
    data_dir: PathBuf,
    trust: TrustPolicy,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only inserted into and read; a panic elsewhere while holding the lock
    // cannot leave them half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Opens the history in the data folder, starts the engine task (with the wall clock
    /// passed in) and re-attaches to server apps still running from an earlier run. Must be
    /// called inside a tokio runtime.
    pub fn start(config: ServerConfig, clock: Arc<dyn Clock>) -> Result<Server, ServeError> {
        let paths = DataPaths::new(&config.data_dir);
        let history =
            History::<Event>::open(&config.data_dir).map_err(|source| ServeError::Open {
                dir: config.data_dir.clone(),
                source,
            })?;
        let blobs = BlobStore::open(paths.blobs.clone())?;
        let (engine, released) = Engine::start(
            history,
            config.settings.clone(),
            Ids::Random(RandomIds),
            config.limits.clone(),
            clock.now(),
        )?;
        let (inputs_tx, inputs_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(Arc::new(engine.state().clone()));
        let server = Server {
            inputs: inputs_tx,
            state: state_rx,
            shared: Arc::new(Shared {
                sites: Mutex::new(BTreeMap::new()),
                apps: Mutex::new(BTreeMap::new()),
            }),
            blobs,
            package_budget: Arc::new(Semaphore::new(config.package_bytes_in_flight_max.max(1))),
            data_dir: config.data_dir.clone(),
            trust: config.trust.clone(),
        };
        server.reattach_server_apps(engine.state());
        let task = EngineTask {
            engine: Some(engine),
            server: server.clone(),
            clock,
            state_tx,
        };
        task.dispatch(released.effects);
        tokio::spawn(task.run(inputs_rx));
        Ok(server)
    }

    /// The server's own workspace: one run folder per job.
    pub fn workspace(&self) -> PathBuf {
        self.data_dir.join("server")
    }

    /// The blob store (packages and workspace archives).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The state after the last durable batch.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every newly published state.
    pub fn watch(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// Connects a site: `requests` is where the engine sends its requests, `reports`
    /// where the site sends its reports. The site's link exists before its first report
    /// is forwarded, so the engine can always answer it.
    pub fn attach_site(
        &self,
        name: &str,
        requests: mpsc::Sender<SiteRequest>,
        mut reports: mpsc::Receiver<(String, SiteReport)>,
    ) {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
        lock(&self.shared.sites).insert(name.to_string(), out_tx);
        let blobs = self.blobs.clone();
        let budget = self.package_budget.clone();
        let site = name.to_string();
        // One sender task per site keeps its requests in order without ever blocking the
        // engine: deploys read the package blob here, within the bytes-in-flight budget.
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let request = match out {
                    Outgoing::Request(r) => r,
                    Outgoing::Deploy {
                        job_id,
                        app,
                        package,
                    } => {
                        let blobs = blobs.clone();
                        let read = tokio::task::spawn_blocking(move || blobs.get(&package)).await;
                        let bytes = match read {
                            Ok(Ok(bytes)) => bytes,
                            Ok(Err(e)) => {
                                tracing::error!(%site, %job_id, error = %e, "package unreadable; deploy not sent");
                                continue;
                            }
                            Err(e) => {
                                tracing::error!(%site, %job_id, error = %e, "package read failed");
                                continue;
                            }
                        };
                        let permits = u32::try_from(bytes.len().max(1)).unwrap_or(u32::MAX);
                        let permit = budget.clone().acquire_many_owned(permits).await;
                        let request = SiteRequest::Deploy {
                            job_id,
                            app_name: app,
                            package: Arc::new(bytes),
                        };
                        if requests.send(request).await.is_err() {
                            break;
                        }
                        drop(permit);
                        continue;
                    }
                };
                if requests.send(request).await.is_err() {
                    break;
                }
            }
        });
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            while let Some((site, report)) = reports.recv().await {
                if inputs.send(Input::Site { site, report }).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Sends an admin request without waiting: `Busy` when the queue is full.
    pub fn try_request(
        &self,
        origin: Origin,
        request: AdminRequest,
    ) -> Result<oneshot::Receiver<AdminAnswer>, AdminError> {
        let (tx, rx) = oneshot::channel();
        match self.inputs.try_send(Input::Admin {
            origin,
            request,
            reply: tx,
        }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(AdminError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AdminError::Stopped),
        }
    }

    /// Sends an admin request and waits for its answer (after its events are durable).
    pub async fn request(&self, origin: Origin, request: AdminRequest) -> AdminAnswer {
        let rx = self.try_request(origin, request)?;
        rx.await.unwrap_or(Err(AdminError::Stopped))
    }

    /// Ingests the job folder (or zip) at `path`, stores its package blob, and submits it.
    pub async fn submit_path(
        &self,
        path: &Path,
        identity: Identity,
        request_id: Option<String>,
    ) -> Result<AdminAnswer, SubmitError> {
        let blobs = self.blobs.clone();
        let owned = path.to_path_buf();
        let (meta, hash) = tokio::task::spawn_blocking(move || {
            let package =
                crate::job::package::ingest(&owned, &crate::job::limits::Limits::default())
                    .map_err(|e| SubmitError::Package(e.to_string()))?;
            let hash = blobs
                .put_bytes(&package.zip)
                .map_err(|e| SubmitError::Blob(e.to_string()))?;
            Ok::<_, SubmitError>((package.meta, hash))
        })
        .await
        .map_err(|e| SubmitError::Package(e.to_string()))??;
        Ok(self
            .request(
                Origin {
                    identity,
                    request_id,
                },
                AdminRequest::SubmitJob {
                    meta,
                    package: hash,
                    signer: None,
                },
            )
            .await)
    }

    /// Downloads a finished job (SPEC section 9): records the download (the core refuses a
    /// job that is not terminal or whose archive has not settled), then reads the package
    /// and the workspace archive from the blob store, each checked against its hash.
    pub async fn download(&self, origin: Origin, job_id: JobId) -> Result<Download, DownloadError> {
        match self
            .request(origin, AdminRequest::DownloadJob { job_id })
            .await
            .map_err(DownloadError::Admin)?
        {
            Ok(_) => {}
            Err(rejection) => return Err(DownloadError::Refused(rejection)),
        }
        let state = self.state();
        let job = state
            .jobs
            .get(&job_id)
            .cloned()
            .ok_or(DownloadError::Refused(
                crate::lifecycle::Rejection::UnknownJob { job_id },
            ))?;
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let package = blobs
                .get(&job.package)
                .map_err(|e| DownloadError::Blob(e.to_string()))?;
            let workspace = match &job.archive {
                crate::lifecycle::Archive::Archived { hash } => Some(
                    blobs
                        .get(hash)
                        .map_err(|e| DownloadError::Blob(e.to_string()))?,
                ),
                _ => None,
            };
            Ok(Download {
                meta: job.meta.clone(),
                package,
                workspace,
            })
        })
        .await
        .map_err(|e| DownloadError::Blob(e.to_string()))?
    }

    /// Stops the engine task after the inputs already queued, and waits for it.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Input::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn send_input(&self, input: Input) {
        let inputs = self.inputs.clone();
        // Workers wait for room in the queue on their own task; the engine never waits.
        tokio::spawn(async move {
            let _ = inputs.send(input).await;
        });
    }

    fn reattach_server_apps(&self, state: &State) {
        for job in state.jobs.values() {
            let in_flight = !matches!(
                job.run.phase,
                crate::lifecycle::RunPhase::NotStarted | crate::lifecycle::RunPhase::Stopped
            );
            let run_dir = workspace::job_dir(&self.workspace(), job.id);
            if !in_flight || !job.run.server_started() {
                // An app started just before a crash, whose start never became durable, is
                // waited for by nobody: it must not run on.
                process::kill_unclaimed(&run_dir);
                continue;
            }
            match process::reattach(&run_dir) {
                Ok(Reattached::Running(app)) => {
                    let job_id = job.id;
                    self.watch_app(job_id, app, Some(Command::RunReattached { job_id }));
                }
                Ok(Reattached::Ended(end)) => {
                    self.send_input(Input::Worker(Command::ServerAppExited {
                        job_id: job.id,
                        outcome: end.outcome,
                    }));
                }
                Ok(Reattached::NotFound) => {}
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "server app not re-attached")
                }
            }
        }
    }

    fn watch_app(&self, job_id: JobId, app: AppProcess, first: Option<Command>) {
        let ended = app.ended();
        lock(&self.shared.apps).insert(job_id, app);
        let server = self.clone();
        tokio::spawn(async move {
            if let Some(command) = first {
                if server.inputs.send(Input::Worker(command)).await.is_err() {
                    return;
                }
            }
            let end = process::wait_end(ended).await;
            lock(&server.shared.apps).remove(&job_id);
            let outcome = end.map_or(ExitOutcome::Signal(9), |e| e.outcome);
            let _ = server
                .inputs
                .send(Input::Worker(Command::ServerAppExited { job_id, outcome }))
                .await;
        });
    }
}

/// What a download hands out.
#[derive(Clone, Debug, PartialEq)]
pub struct Download {
    /// The job's meta, as the server stored it.
    pub meta: crate::job::meta::JobMeta,
    /// The canonical job package (zip).
    pub package: Vec<u8>,
    /// The server workspace archive (zip), unless archiving failed or there was none.
    pub workspace: Option<Vec<u8>>,
}

/// Why a download failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DownloadError {
    /// The request did not reach the engine.
    #[error(transparent)]
    Admin(AdminError),
    /// The core refused (not finished, archive pending, not allowed, unknown job).
    #[error(transparent)]
    Refused(crate::lifecycle::Rejection),
    /// A blob is missing or corrupt.
    #[error("reading the job's blobs failed: {0}")]
    Blob(String),
}

/// Why a submission did not reach the engine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The package was refused (SPEC section 5).
    #[error("job package refused: {0}")]
    Package(String),
    /// The package could not be stored.
    #[error("storing the package failed: {0}")]
    Blob(String),
}

struct EngineTask {
    engine: Option<Engine>,
    server: Server,
    clock: Arc<dyn Clock>,
    state_tx: watch::Sender<Arc<State>>,
}

/// Inputs taken in one batch at most: bounds the latency of the batch's first answer.
const BATCH_MAX: usize = 512;

impl EngineTask {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut fired: Option<(crate::lifecycle::Timestamp, Timer)> = None;
        loop {
            let deadline = self.engine.as_ref().and_then(|e| e.next_deadline());
            // A timer that fired and changed nothing would fire again at once; wait for an
            // input instead (the core recomputes deadlines from the state it changes).
            let deadline = deadline.filter(|d| Some(d) != fired.as_ref());
            let mut batch: Vec<Input> = Vec::new();
            let mut timer: Option<(crate::lifecycle::Timestamp, Timer)> = None;
            let sleep = deadline.as_ref().map(|(due, _)| {
                // One extra millisecond: the wall clock must have reached `due` on waking.
                let wait_ms = due.as_millis() - self.clock.now().as_millis() + 1;
                Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
            });
            tokio::select! {
                first = inputs.recv() => match first {
                    Some(input) => batch.push(input),
                    None => break,
                },
                _ = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    }
                } => timer = deadline.clone(),
            }
            while batch.len() < BATCH_MAX {
                match inputs.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            let mut commands = Vec::new();
            let mut replies = Vec::new();
            let mut acks: Vec<(String, String)> = Vec::new();
            let mut shutdown = None;
            for input in batch {
                match input {
                    Input::Admin {
                        origin,
                        request,
                        reply,
                    } => {
                        replies.push((commands.len(), reply));
                        commands.push(Command::Admin { origin, request });
                    }
                    Input::Site { site, report } => {
                        if let SiteReport::AppExited { report_id, .. } = &report {
                            acks.push((site.clone(), report_id.clone()));
                        }
                        commands.push(Command::Site { site, report });
                    }
                    Input::Worker(command) => commands.push(command),
                    Input::Shutdown(done) => {
                        shutdown = Some(done);
                        break;
                    }
                }
            }
            if let Some((_, t)) = &timer {
                commands.push(Command::TimerFired(t.clone()));
            }
            let Some(engine) = self.engine.as_mut() else {
                break;
            };
            let before = engine.state().last_seq;
            let now = self.clock.now();
            match engine.step(commands, now) {
                Ok(released) => {
                    let after = engine.state().last_seq;
                    // A timer woken a little early (the sleep and the wall clock are
                    // different clocks) is simply slept for again; only one that was due
                    // and still changed nothing is held back until the next input.
                    fired = match timer {
                        Some((due, t)) if after == before && due <= now => Some((due, t)),
                        _ => None,
                    };
                    if after != before {
                        let _ = self.state_tx.send(Arc::new(engine.state().clone()));
                    }
                    for (index, reply) in replies {
                        let answer =
                            match released.outcomes.get(index).and_then(|o| o.reply.clone()) {
                                Some(Ok(reply)) => Ok(reply),
                                Some(Err(refusal)) => Err(AdminError::Refused(refusal)),
                                None => Err(AdminError::Stopped),
                            };
                        let _ = reply.send(answer);
                    }
                    // Reports are acknowledged only now that they are durable.
                    for (site, report_id) in acks {
                        self.to_site(
                            &site,
                            Outgoing::Request(SiteRequest::Acknowledge { report_id }),
                        );
                    }
                    self.dispatch(released.effects);
                }
                Err(err) => {
                    tracing::error!(%err, "engine stopped");
                    for (_, reply) in replies {
                        let _ = reply.send(Err(AdminError::Stopped));
                    }
                    self.engine = None;
                    break;
                }
            }
            if let Some(done) = shutdown {
                if let Some(engine) = self.engine.take() {
                    if let Err(err) = engine.shut_down() {
                        tracing::warn!(%err, "clean shutdown of the history failed");
                    }
                }
                let _ = done.send(());
                break;
            }
        }
    }

    fn to_site(&self, site: &str, out: Outgoing) {
        match lock(&self.server.shared.sites).get(site) {
            Some(link) => {
                // A closed link means the site is gone; the engine's timeouts decide.
                let _ = link.send(out);
            }
            None => tracing::debug!(%site, "request for a site that is not attached"),
        }
    }

    fn settings(&self) -> Settings {
        self.engine
            .as_ref()
            .map(|e| e.settings().clone())
            .unwrap_or_default()
    }

    fn app_for_server(&self, job_id: JobId) -> Option<String> {
        let state = self.server.state.borrow().clone();
        state
            .jobs
            .get(&job_id)
            .and_then(|j| j.meta.app_for(crate::job::meta::SERVER).map(str::to_string))
            .or_else(|| {
                self.engine.as_ref().and_then(|e| {
                    e.state()
                        .jobs
                        .get(&job_id)
                        .and_then(|j| j.meta.app_for(crate::job::meta::SERVER).map(str::to_string))
                })
            })
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        let server = &self.server;
        for effect in effects {
            match effect {
                Effect::CheckResources {
                    site,
                    try_id,
                    job_id,
                    resources,
                } => self.to_site(
                    &site,
                    Outgoing::Request(SiteRequest::CheckResources {
                        try_id,
                        job_id,
                        resources,
                    }),
                ),
                Effect::CancelReservation {
                    site,
                    job_id,
                    token,
                } => self.to_site(
                    &site,
                    Outgoing::Request(SiteRequest::CancelReservation { job_id, token }),
                ),
                Effect::DeploySiteApp {
                    site,
                    job_id,
                    app,
                    package,
                } => self.to_site(
                    &site,
                    Outgoing::Deploy {
                        job_id,
                        app,
                        package,
                    },
                ),
                Effect::StartSiteApp { site, job_id } => {
                    self.to_site(&site, Outgoing::Request(SiteRequest::Start { job_id }))
                }
                Effect::StopSiteApp { site, job_id } => {
                    self.to_site(&site, Outgoing::Request(SiteRequest::Stop { job_id }))
                }
                Effect::DeleteSiteDeployment { site, job_id } => {
                    self.to_site(&site, Outgoing::Request(SiteRequest::Delete { job_id }))
                }
                Effect::DeployServerApp {
                    job_id,
                    app,
                    package,
                } => {
                    let blobs = server.blobs.clone();
                    let root = server.workspace();
                    let inputs = server.clone();
                    let trust = server.trust.clone();
                    // Certificates are checked at the engine's time, from the injected clock.
                    let at = std::time::UNIX_EPOCH
                        + Duration::from_millis(
                            u64::try_from(self.clock.now().as_millis()).unwrap_or(0),
                        );
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || {
                            let bytes = blobs.get(&package).map_err(|e| e.to_string())?;
                            workspace::deploy_app(
                                &root,
                                job_id,
                                &app,
                                &bytes,
                                &crate::job::limits::Limits::default(),
                                &trust,
                                at,
                            )
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("deploy task failed: {e}")));
                        inputs.send_input(Input::Worker(Command::ServerDeployFinished {
                            job_id,
                            result,
                        }));
                    });
                }
                Effect::StartServerApp { job_id } => {
                    let root = server.workspace();
                    let Some(app) = self.app_for_server(job_id) else {
                        server.send_input(Input::Worker(Command::ServerAppStarted {
                            job_id,
                            result: Err("the deploy map has no app for the server".into()),
                        }));
                        continue;
                    };
                    let launch = AppLaunch {
                        job_id,
                        site: crate::job::meta::SERVER.to_string(),
                        run_dir: workspace::job_dir(&root, job_id),
                        app_dir: workspace::app_dir(&root, job_id, &app),
                    };
                    match process::start(&launch) {
                        Ok(process) => {
                            // The start is reported before the exit, on the same task:
                            // an app that exits at once must not have its exit overtake
                            // its start.
                            server.watch_app(
                                job_id,
                                process,
                                Some(Command::ServerAppStarted {
                                    job_id,
                                    result: Ok(()),
                                }),
                            );
                        }
                        Err(e) => server.send_input(Input::Worker(Command::ServerAppStarted {
                            job_id,
                            result: Err(e.to_string()),
                        })),
                    }
                }
                Effect::StopServerApp { job_id } => {
                    let grace = self.settings().abort_grace;
                    if let Some(app) = lock(&server.shared.apps).get(&job_id) {
                        app.stop(grace);
                    }
                }
                Effect::DeleteServerDeployment { job_id } => {
                    let root = server.workspace();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = workspace::remove_job(&root, job_id) {
                            tracing::warn!(%job_id, error = %e, "server deployment not removed");
                        }
                    });
                }
                Effect::ArchiveWorkspace { job_id } => {
                    let blobs = server.blobs.clone();
                    let run_dir = workspace::job_dir(&server.workspace(), job_id);
                    let inputs = server.clone();
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || {
                            archive::archive_and_remove(&run_dir, &blobs).map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("archive task failed: {e}")));
                        inputs
                            .send_input(Input::Worker(Command::ArchiveFinished { job_id, result }));
                    });
                }
                Effect::FreeBlob { hash } => {
                    let blobs = server.blobs.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = blobs.remove(&hash) {
                            tracing::warn!(%hash, error = %e, "blob not freed");
                        }
                    });
                }
            }
        }
    }
}
