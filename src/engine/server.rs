//! The tokio driver of the [`Node`]: one task feeds the node and carries out what it hands
//! out; everything else talks to it through a bounded queue and reads a published copy of
//! the state.
//!
//! The task waits for the first input or the node's next deadline (no polling tick), takes
//! every input already waiting, and hands the node's batch to the **history thread**, a
//! dedicated OS thread that owns the [`History`] and does the append, flush and fsync (never
//! a tokio worker). While a batch is out the task waits only for its completion. Then it
//! publishes the new state and carries out the node's outputs: replies, site requests
//! (each site has its own sender task; deploys read the package blob there, shared between
//! sites and within a bytes-in-flight budget), requests to the server's local participant
//! (which runs the server apps off the workers), archives, run folder removals and blob
//! frees. The rules (the durability barrier, routing, acknowledgements, timers) are the
//! node's; this file only moves bytes.
//!
//! Blob frees run on the history thread, in order with the appends, and a submit holds a
//! pin on its package blob until its answer (which follows the durable `JobSubmitted`):
//! so a free decided before a submit of the same bytes either runs before the put (which
//! then writes the blob again) or finds it pinned, and never removes the package of an
//! accepted job (SPEC section 3, Changed).
//!
//! When the node stops (a failed append, an illegal decision) the task ends: requests are
//! answered [`AdminError::Stopped`], [`Server::wait_stopped`] returns the cause, and the
//! `fedrun` process exits with [`EXIT_ENGINE_STOPPED`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::blobs::BlobStore;
use crate::engine::archive;
use crate::engine::clock::{Clock, ServerClock, WallSource};
use crate::engine::ids::RandomIds;
use crate::engine::local::LocalParticipant;
use crate::engine::node::{self, Node, NodeError, Output, Participant, ReplyToken, Request};
use crate::engine::owner::{EngineLimits, EngineRefusal, Ids, StartError};
use crate::history::snapshot::StateEncoder;
use crate::history::{DataPaths, History, SnapshotTicket, WrittenSnapshot};
use crate::job::JobId;
use crate::lifecycle::{
    AdminRequest, BlobHash, Event, Identity, Origin, Reply, State, SubmitSignature, Timestamp,
};
use crate::metrics::{BatchFacts, ServerMetrics, ServerProbe};
use crate::settings::Settings;
use crate::site::protocol::{SiteReport, SiteRequest};
use crate::site::workspace;
use crate::trust::policy::{JobTrust, TrustPolicy};
use crate::trust::submit::{check_package_zip, timestamp_to_system_time, SubmitRefusal};

/// The exit code of a `fedrun` process whose engine stopped for good (a failed append to
/// the history, or an event the core's own fold refused): `EX_SOFTWARE` of sysexits.h. A
/// supervisor restarts the server, which rebuilds its state from the durable history.
pub const EXIT_ENGINE_STOPPED: i32 = 70;

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
    /// Package bytes that may be in flight to sites at once. A deploy of a package larger
    /// than this takes the whole budget (it waits for the others, never forever).
    pub package_bytes_in_flight_max: usize,
    /// Signature policy for what the server accepts and deploys (SPEC section 6).
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

impl From<NodeError> for AdminError {
    fn from(err: NodeError) -> Self {
        match err {
            NodeError::Refused(refusal) => AdminError::Refused(refusal),
            NodeError::Stopped { .. } => AdminError::Stopped,
        }
    }
}

/// The answer to an admin request: the core's reply (accepted, or a typed rejection).
pub type AdminAnswer = Result<Reply, AdminError>;

/// One message to the engine task.
enum Message {
    Admin {
        origin: Origin,
        request: AdminRequest,
        reply: oneshot::Sender<AdminAnswer>,
    },
    Report(Participant, SiteReport),
    Archived {
        job_id: JobId,
        result: Result<BlobHash, String>,
    },
    Shutdown(oneshot::Sender<()>),
    /// A read of the durable history, answered by the history thread in order with the
    /// appends (the engine task only forwards it).
    History(HistoryJob),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The history could not be opened.
    #[error("cannot open the history in {dir}")]
    Open {
        /// The data folder.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: crate::history::OpenError,
    },
    /// The blob store could not be opened.
    #[error("cannot open the blob store")]
    Blobs(#[from] crate::blobs::BlobError),
    /// The engine could not start on the history.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The history thread could not be started.
    #[error("cannot start the history thread")]
    Thread(#[source] std::io::Error),
}

enum Outgoing {
    Request(SiteRequest),
    Deploy {
        job_id: JobId,
        app: String,
        package: BlobHash,
        verify_at: Timestamp,
    },
}

/// Package blobs read for deploys, shared while any deploy still holds them: a package
/// deployed to many sites at once is read once, not once per site (the reads of one batch's
/// deploys start together, so the first read is shared while it is still under way).
#[derive(Clone, Default)]
struct Packages {
    open: Arc<Mutex<BTreeMap<BlobHash, Arc<PackageRead>>>>,
}

/// One package's bytes, read by the first deploy that needs them.
type PackageRead = tokio::sync::OnceCell<Arc<Vec<u8>>>;

impl Packages {
    async fn get(&self, blobs: &BlobStore, hash: BlobHash) -> Result<Arc<Vec<u8>>, String> {
        let cell = lock(&self.open).entry(hash).or_default().clone();
        let bytes = cell
            .get_or_try_init(|| async {
                let blobs = blobs.clone();
                let bytes = tokio::task::spawn_blocking(move || blobs.get(&hash))
                    .await
                    .map_err(|e| format!("package read failed: {e}"))?
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(Arc::new(bytes))
            })
            .await?
            .clone();
        Ok(bytes)
    }

    /// Forgets every package no deploy holds any more, so its bytes are freed.
    fn trim(&self) {
        lock(&self.open).retain(|_, cell| {
            Arc::strong_count(cell) > 1 || cell.get().is_some_and(|b| Arc::strong_count(b) > 1)
        });
    }
}

/// The permits a deploy of `len` bytes takes from a budget of `budget` bytes: its size,
/// but never more than the whole budget, so a package larger than the budget waits for the
/// others to finish instead of waiting forever.
pub fn deploy_permits(len: usize, budget: usize) -> u32 {
    let budget = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    u32::try_from(len.clamp(1, budget)).unwrap_or(u32::MAX)
}

struct Shared {
    sites: Mutex<BTreeMap<String, mpsc::UnboundedSender<Outgoing>>>,
}

/// The handle of a running server: send requests, read the state, attach sites.
#[derive(Clone)]
pub struct Server {
    inputs: mpsc::Sender<Message>,
    state: watch::Receiver<Arc<State>>,
    stopped: watch::Receiver<Option<String>>,
    shared: Arc<Shared>,
    blobs: BlobStore,
    packages: Packages,
    package_budget: Arc<Semaphore>,
    package_budget_bytes: usize,
    data_dir: PathBuf,
    trust: TrustPolicy,
    clock: Arc<dyn Clock + Send + Sync>,
    metrics: Arc<ServerMetrics>,
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
    /// Opens the history in the data folder and starts the server on it (see
    /// [`Server::start_on`]). Must be called inside a tokio runtime.
    pub fn start(config: ServerConfig, wall: Arc<dyn Clock>) -> Result<Server, ServeError> {
        let history =
            History::<Event>::open(&config.data_dir).map_err(|source| ServeError::Open {
                dir: config.data_dir.clone(),
                source,
            })?;
        Server::start_on(config, history, wall)
    }

    /// Starts the server on an open history: rebuilds the state, sweeps blobs no event
    /// refers to, starts the history thread and the node's task, and re-attaches to server
    /// apps still running from an earlier run. `wall` is read once; the server's time then
    /// advances with the monotonic clock ([`ServerClock`]). Must be called inside a
    /// tokio runtime.
    pub fn start_on(
        config: ServerConfig,
        history: History<Event>,
        wall: Arc<dyn Clock>,
    ) -> Result<Server, ServeError> {
        let paths = DataPaths::new(&config.data_dir);
        let blobs = BlobStore::open(paths.blobs.clone())?;
        let recovered = history
            .recover(State::new())
            .map_err(|e| ServeError::Start(StartError::Replay(e)))?;
        tracing::info!(
            seq = recovered.state.last_seq,
            snapshot = ?recovered.snapshot_seq,
            replayed = recovered.replayed,
            "state rebuilt from the history"
        );
        sweep_blobs(&history, &recovered.state, &blobs);
        let snapshot_seen = last_snapshot(&history, &blobs);
        let clock = Arc::new(ServerClock::start_with(
            WallSource::new(wall),
            Some(recovered.state.last_at),
        ));
        let node = Node::start(
            recovered.state,
            recovered.snapshot_seq,
            config.settings.clone(),
            Ids::Random(RandomIds),
            config.limits.clone(),
            clock.now(),
        );
        let (appended_tx, appended_rx) = mpsc::unbounded_channel();
        let (inputs_tx, inputs_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (state_tx, state_rx) = watch::channel(Arc::new(node.state().clone()));
        let (stopped_tx, stopped_rx) = watch::channel(None);
        let metrics = Arc::new(ServerMetrics::new(server_probe(
            &inputs_tx,
            &state_rx,
            &stopped_rx,
            // A memory history (tests) has no folder to measure.
            Some(paths.sled.clone()).filter(|dir| dir.is_dir()),
        )));
        if let Some((at, seq)) = snapshot_seen {
            metrics.record_snapshot(at, seq);
        }
        let history_jobs =
            spawn_history(history, appended_tx, metrics.clone()).map_err(ServeError::Thread)?;
        let budget = config.package_bytes_in_flight_max.max(1);
        let server = Server {
            inputs: inputs_tx,
            state: state_rx,
            stopped: stopped_rx,
            shared: Arc::new(Shared {
                sites: Mutex::new(BTreeMap::new()),
            }),
            blobs: blobs.clone(),
            packages: Packages::default(),
            package_budget: Arc::new(Semaphore::new(
                budget.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize),
            )),
            package_budget_bytes: budget,
            data_dir: config.data_dir.clone(),
            trust: config.trust.clone(),
            clock: clock.clone(),
            metrics,
        };
        let (local_tx, mut local_rx) = mpsc::unbounded_channel();
        let local = LocalParticipant::new(
            server.workspace(),
            blobs,
            config.trust.clone(),
            config.settings.abort_grace,
            local_tx,
        );
        let inputs = server.inputs.clone();
        tokio::spawn(async move {
            while let Some(report) = local_rx.recv().await {
                if inputs
                    .send(Message::Report(Participant::Local, report))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        remove_archived_run_folders(&server.workspace(), node.state());
        let claimed = server_apps_in_flight(node.state());
        kill_unclaimed_server_apps(&server.workspace(), node.state(), &claimed);
        local.connect(claimed);
        let task = EngineTask {
            node,
            server: server.clone(),
            clock,
            state_tx,
            stopped_tx,
            history: history_jobs,
            appended: appended_rx,
            in_flight: None,
            replies: BTreeMap::new(),
            next_token: 0,
            local,
            published_seq: None,
            in_flight_facts: None,
        };
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

    /// The server's metrics (SPEC section 11): encode them for `/metrics`.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Whether the server accepts requests (`/readyz`): the history is open, the engine
    /// runs and the restart decisions are made. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        self.metrics.ready()
    }

    /// The state after the last durable batch.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every newly published state.
    pub fn watch(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// Why the engine stopped for good, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.borrow().clone()
    }

    /// Waits until the engine stops for good and returns why (a clean shutdown is not a
    /// stop). The process should then exit with [`EXIT_ENGINE_STOPPED`].
    pub async fn wait_stopped(&self) -> String {
        let mut stopped = self.stopped.clone();
        let cause = match stopped.wait_for(Option::is_some).await {
            Ok(cause) => cause.clone(),
            Err(_) => None,
        };
        match cause {
            Some(cause) => cause,
            // The task ended without a stop being published: it was shut down.
            None => std::future::pending().await,
        }
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
        let server = self.clone();
        let site = name.to_string();
        // One sender task per site keeps its requests in order without ever blocking the
        // engine: deploys get the package bytes here (shared with other sites' deploys of
        // the same package), within the bytes-in-flight budget.
        tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                let (request, permit) = match out {
                    Outgoing::Request(r) => (r, None),
                    Outgoing::Deploy {
                        job_id,
                        app,
                        package,
                        verify_at,
                    } => {
                        let bytes = match server.packages.get(&server.blobs, package).await {
                            Ok(bytes) => bytes,
                            Err(error) => {
                                // The site's deploy timeout decides; nothing else can.
                                tracing::error!(%site, %job_id, %error, "package unreadable; deploy not sent");
                                continue;
                            }
                        };
                        let permits = deploy_permits(bytes.len(), server.package_budget_bytes);
                        let permit = server
                            .package_budget
                            .clone()
                            .acquire_many_owned(permits)
                            .await;
                        let request = SiteRequest::Deploy {
                            job_id,
                            app_name: app,
                            package: bytes,
                            hash: package,
                            verify_at: Some(verify_at),
                        };
                        (request, permit.ok())
                    }
                };
                let deploy_bytes = match &request {
                    SiteRequest::Deploy { package, .. } => package.len(),
                    _ => 0,
                };
                let sent = requests.send(request).await;
                if sent.is_ok() && deploy_bytes > 0 {
                    server.metrics.record_deploy_bytes(deploy_bytes);
                }
                drop(permit);
                server.packages.trim();
                if sent.is_err() {
                    break;
                }
            }
        });
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            while let Some((site, report)) = reports.recv().await {
                let message = Message::Report(Participant::Site(site), report);
                if inputs.send(message).await.is_err() {
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
        match self.inputs.try_send(Message::Admin {
            origin,
            request,
            reply: tx,
        }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.record_queue_full();
                Err(AdminError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AdminError::Stopped),
        }
    }

    /// Sends an admin request and waits for its answer (after its events are durable).
    pub async fn request(&self, origin: Origin, request: AdminRequest) -> AdminAnswer {
        let rx = self.try_request(origin, request)?;
        rx.await.unwrap_or(Err(AdminError::Stopped))
    }

    /// Ingests the job folder (or zip) at `path` and submits it: the submitter's role is
    /// checked first (a refused submit stores nothing; the core records the refusal), then
    /// the signature (SPEC section 6, at the server's time: an unsigned job under the
    /// policy or a bad signature is refused, never queued, and the core records that
    /// refusal too), then the package blob is stored and the submit carries the signer.
    pub async fn submit_path(
        &self,
        path: &Path,
        identity: Identity,
        request_id: Option<String>,
    ) -> Result<AdminAnswer, SubmitError> {
        let blobs = self.blobs.clone();
        let trust = self.trust.clone();
        let owned = path.to_path_buf();
        let at = self.clock.now();
        let may_submit = identity.role.may_submit();
        let (meta, hash, signature, pin) = tokio::task::spawn_blocking(move || {
            let package =
                crate::job::package::ingest(&owned, &crate::job::limits::Limits::default())
                    .map_err(|e| SubmitError::Package(e.to_string()))?;
            let hash = BlobHash::from(package.hash);
            if !may_submit {
                // The core refuses it and records the refusal; nothing is stored for it.
                return Ok::<_, SubmitError>((package.meta, hash, SubmitSignature::NoSigner, None));
            }
            let signature = match verify_package(&package.zip, &trust, at) {
                Ok(Some(signer)) => SubmitSignature::Signer(signer),
                Ok(None) => SubmitSignature::NoSigner,
                // The core refuses it and records the refusal (SPEC section 9: every
                // refusal is recorded); nothing is stored for it.
                Err(SubmitError::Signature(reason)) => {
                    return Ok((package.meta, hash, SubmitSignature::Refused(reason), None));
                }
                Err(err) => return Err(err),
            };
            // Pinned until the answer below, which comes only once the `JobSubmitted` (or
            // the recorded refusal) is durable: a free or sweep of the same bytes decided
            // before then can never remove the blob the new job refers to (SPEC section 3).
            let pin = blobs
                .put_bytes_pinned(&package.zip)
                .map_err(|e| SubmitError::Blob(e.to_string()))?;
            debug_assert_eq!(
                pin.hash(),
                hash,
                "the blob store names a blob by its BLAKE3"
            );
            Ok((package.meta, pin.hash(), signature, Some(pin)))
        })
        .await
        .map_err(|e| SubmitError::Package(e.to_string()))??;
        let answer = self
            .request(
                Origin {
                    identity,
                    request_id,
                },
                AdminRequest::SubmitJob {
                    meta,
                    package: hash,
                    signature,
                },
            )
            .await;
        drop(pin);
        Ok(answer)
    }

    /// Up to `max` durable events from sequence number `from` on, oldest first (fewer, or
    /// none, at the end of the history). Read by the history thread in order with the
    /// appends, so every event of a state already published is there.
    pub async fn read_events(&self, from: u64, max: usize) -> Result<Vec<Event>, HistoryReadError> {
        let (reply, rx) = oneshot::channel();
        self.query(HistoryJob::Read {
            from,
            max: max.max(1),
            reply,
        })
        .map_err(HistoryReadError::Admin)?;
        rx.await
            .map_err(|_| HistoryReadError::Admin(AdminError::Stopped))?
            .map_err(HistoryReadError::Damaged)
    }

    /// The audit of the live history (chain, transitions, anchor, snapshot) and of the
    /// blobs its jobs still need, as `fedrun audit verify` makes it on a stopped server's
    /// folder. Appends wait while it runs.
    pub async fn audit(&self) -> Result<crate::history::VerifyReport, AdminError> {
        let (reply, rx) = oneshot::channel();
        self.query(HistoryJob::Audit(self.blobs.clone(), reply))?;
        rx.await.map_err(|_| AdminError::Stopped)
    }

    fn query(&self, job: HistoryJob) -> Result<(), AdminError> {
        match self.inputs.try_send(Message::History(job)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(AdminError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AdminError::Stopped),
        }
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
                meta: crate::job::meta::JobMeta::clone(&job.meta),
                package,
                workspace,
            })
        })
        .await
        .map_err(|e| DownloadError::Blob(e.to_string()))?
    }

    /// Stops the engine task after the inputs already queued, and waits for it (the history
    /// gets a snapshot and the anchor).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inputs.send(Message::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn send_input(&self, message: Message) {
        let inputs = self.inputs.clone();
        // Workers wait for room in the queue on their own task; the engine never waits.
        tokio::spawn(async move {
            let _ = inputs.send(message).await;
        });
    }
}

/// Verifies the canonical package `zip` by the trust policy at `at` (SPEC section 6, with
/// [`check_package_zip`], the same rules a deploy uses) and returns its signer (`None` for
/// an unsigned job the policy allows). An unsigned job under the policy, a bad signature
/// and a signer whose role may not submit are [`SubmitError::Signature`] with the reason;
/// a package that cannot even be unpacked is [`SubmitError::Package`]. Blocking.
pub fn verify_package(
    zip: &[u8],
    trust: &TrustPolicy,
    at: Timestamp,
) -> Result<Option<Identity>, SubmitError> {
    if trust.root_ca.is_none() && !trust.requires_signature() {
        // Nothing can be checked and nothing is required: the package is not unpacked.
        return Ok(None);
    }
    let limits = crate::job::limits::Limits::default();
    match check_package_zip(zip, trust, timestamp_to_system_time(at), &limits, None) {
        Ok(JobTrust::Signed(signer)) => Ok(Some(Identity {
            name: signer.name,
            org: signer.org,
            // `check_package_zip` refused every role that may not submit, so the role
            // parses; a role it does not know stays one that may not submit.
            role: signer
                .role
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or(crate::lifecycle::Role::Member),
        })),
        Ok(JobTrust::Unsigned) => Ok(None),
        Err(
            refusal @ (SubmitRefusal::Unsigned(_)
            | SubmitRefusal::BadSignature(_)
            | SubmitRefusal::SignerMayNotSubmit { .. }),
        ) => Err(SubmitError::Signature(refusal.to_string())),
        Err(refusal @ SubmitRefusal::Unpack(_)) => Err(SubmitError::Package(refusal.to_string())),
        Err(refusal @ (SubmitRefusal::Blob(_) | SubmitRefusal::Scratch { .. })) => {
            Err(SubmitError::Check(refusal.to_string()))
        }
    }
}

/// Removes every stored blob the history does not refer to (interrupted puts, blobs of
/// deleted jobs whose free was lost in a crash). A failed sweep only costs disk space.
fn sweep_blobs(history: &History<Event>, state: &State, blobs: &BlobStore) {
    // The record alone: `History::snapshot_record` also reads and checks the state blob,
    // which recover has just done (141 MB with 250,000 jobs).
    let snapshot = match history.storage().snapshot_record() {
        Ok(snapshot) => snapshot,
        Err(err) => {
            tracing::warn!(%err, "blob sweep skipped: the snapshot record is unreadable");
            return;
        }
    };
    // The blobs jobs not deleted refer to are the fold's reference counts (the ones the
    // engine frees blobs by): no walk over every job ever submitted.
    let mut keep: BTreeSet<BlobHash> = state.index().blob_refs.keys().copied().collect();
    keep.extend(snapshot.map(|record| record.state));
    if let Err(err) = blobs.sweep(&keep) {
        tracing::warn!(%err, "blob sweep failed");
    }
}

/// Jobs whose server app may still run from an earlier server run.
fn server_apps_in_flight(state: &State) -> Vec<JobId> {
    state
        .jobs
        .values()
        .filter(|job| {
            !matches!(
                job.run.phase,
                crate::lifecycle::RunPhase::NotStarted | crate::lifecycle::RunPhase::Stopped
            ) && job.run.server_started()
        })
        .map(|job| job.id)
        .collect()
}

/// Kills the server app of every known job that is not re-attached: an app started just
/// before a crash, whose start never became durable (or whose run is no longer in flight),
/// is waited for by nobody and must not run on. Only jobs with supervision records are
/// looked at: a job without them has no app, and a long history holds far more jobs.
fn kill_unclaimed_server_apps(root: &Path, state: &State, claimed: &[JobId]) {
    for job_id in workspace::supervised_job_ids(root) {
        if state.jobs.contains_key(&job_id) && !claimed.contains(&job_id) {
            crate::site::process::kill_unclaimed(&workspace::job_dir(root, job_id));
        }
    }
}

/// Removes an archived run folder and then its supervision records, so they do not pile
/// up beside the run folders.
fn remove_archived_run_folder(run_dir: &Path) -> Result<(), String> {
    archive::remove_run_folder(run_dir).map_err(|e| e.to_string())?;
    crate::site::process::forget(run_dir).map_err(|e| {
        format!(
            "supervision records of {} not removed: {e}",
            run_dir.display()
        )
    })
}

/// A crash between a durable `WorkspaceArchived` and the removal of the run folder leaves
/// the folder behind; the archive is safe, so the folder goes now.
fn remove_archived_run_folders(root: &Path, state: &State) {
    for job_id in workspace::job_ids(root) {
        let archived = state
            .jobs
            .get(&job_id)
            .is_some_and(|j| matches!(j.archive, crate::lifecycle::Archive::Archived { .. }));
        if archived {
            if let Err(e) = remove_archived_run_folder(&workspace::job_dir(root, job_id)) {
                tracing::warn!(%job_id, error = %e, "archived run folder not removed");
            }
        }
    }
}

/// What a scrape reads of a running server: its published state, its input queue, its
/// history folder and whether it accepts requests.
fn server_probe(
    inputs: &mpsc::Sender<Message>,
    state: &watch::Receiver<Arc<State>>,
    stopped: &watch::Receiver<Option<String>>,
    history_dir: Option<PathBuf>,
) -> ServerProbe {
    // Weak: the metrics must not keep the engine's queue open after the server is gone.
    let queue = inputs.downgrade();
    let ready_queue = inputs.downgrade();
    let ready_state = state.clone();
    let stopped = stopped.clone();
    ServerProbe {
        state: state.clone(),
        input_queue: Box::new(move || match queue.upgrade() {
            Some(tx) => (tx.max_capacity() - tx.capacity(), tx.max_capacity()),
            None => (0, 0),
        }),
        history_dir,
        ready: Box::new(move || {
            if let Some(cause) = stopped.borrow().as_ref() {
                return Err(format!("the engine stopped for good: {cause}"));
            }
            match ready_queue.upgrade() {
                Some(tx) if !tx.is_closed() => {}
                _ => return Err("the engine is not running (shut down)".into()),
            }
            if ready_state.borrow().recovery.is_some() {
                return Err("recovering: the restart decisions are not made yet".into());
            }
            Ok(())
        }),
    }
}

/// When the snapshot the history holds was written (its blob's modification time) and
/// the sequence number it covers, if there is one.
fn last_snapshot(
    history: &History<Event>,
    blobs: &BlobStore,
) -> Option<(std::time::SystemTime, u64)> {
    let record = history.storage().snapshot_record().ok().flatten()?;
    let at = std::fs::metadata(blobs.path_of(&record.state))
        .and_then(|m| m.modified())
        .ok()?;
    Some((at, record.seq))
}

enum HistoryJob {
    Append(node::Append),
    /// Begin a snapshot of this state (the state after the history's head): its
    /// encoding and blob are written on a thread of their own, which sends
    /// [`HistoryJob::InstallSnapshot`] back through the sender it carries.
    Snapshot(Arc<State>, std::sync::mpsc::Sender<HistoryJob>),
    /// Name a snapshot whose state is written: the small record, in order with the
    /// appends.
    InstallSnapshot(WrittenSnapshot),
    /// Remove a blob no live job refers to (a pinned one is kept).
    FreeBlob(BlobStore, BlobHash),
    /// A clean shutdown: a snapshot of the final state, then the anchor.
    Close(Arc<State>, oneshot::Sender<()>),
    /// Read up to `max` durable events from sequence number `from` on.
    Read {
        from: u64,
        max: usize,
        reply: oneshot::Sender<Result<Vec<Event>, String>>,
    },
    /// The full audit of the live history and its blobs.
    Audit(BlobStore, oneshot::Sender<crate::history::VerifyReport>),
}

/// Starts the history thread: it owns the history and does every append (flush and
/// fsync), snapshot and the close, so no tokio worker ever blocks on the disk.
fn spawn_history(
    mut history: History<Event>,
    done: mpsc::UnboundedSender<(u64, Result<(), String>)>,
    metrics: Arc<ServerMetrics>,
) -> std::io::Result<std::sync::mpsc::Sender<HistoryJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<HistoryJob>();
    std::thread::Builder::new()
        .name("fedrun-history".into())
        .spawn(move || {
            // The thread writing a snapshot's state, if one was started.
            let mut writer: Option<std::thread::JoinHandle<()>> = None;
            while let Ok(job) = rx.recv() {
                match job {
                    HistoryJob::Append(append) => {
                        let began = std::time::Instant::now();
                        let result = history
                            .append_batch(&append.events)
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        if result.is_ok() {
                            metrics.record_append(began.elapsed(), append.events.len());
                        }
                        if done.send((append.id, result)).is_err() {
                            break;
                        }
                    }
                    HistoryJob::Snapshot(state, jobs) => {
                        if writer.as_ref().is_some_and(|w| !w.is_finished()) {
                            // One snapshot at a time; the next is asked for after
                            // as many events again.
                            tracing::debug!(seq = state.last_seq, "snapshot skipped: one is being written");
                            continue;
                        }
                        if state.last_seq != history.head().seq {
                            tracing::warn!(
                                state = state.last_seq,
                                head = history.head().seq,
                                "snapshot skipped: the state is not the state after the history's head"
                            );
                            continue;
                        }
                        match history.snapshot_ticket() {
                            Ok(ticket) => match spawn_snapshot_writer(ticket, state, jobs) {
                                Ok(handle) => writer = Some(handle),
                                Err(err) => tracing::warn!(%err, "snapshot thread not started"),
                            },
                            Err(err) => tracing::warn!(%err, "snapshot failed"),
                        }
                    }
                    HistoryJob::InstallSnapshot(written) => {
                        // A failed snapshot loses nothing (the events are durable);
                        // start-up then replays a longer tail.
                        match history.install_snapshot(written) {
                            Ok(record) => {
                                metrics.record_snapshot(std::time::SystemTime::now(), record.seq)
                            }
                            Err(err) => tracing::warn!(%err, "snapshot failed"),
                        }
                    }
                    HistoryJob::FreeBlob(blobs, hash) => {
                        if let Err(e) = blobs.remove(&hash) {
                            tracing::warn!(%hash, error = %e, "blob not freed");
                        }
                    }
                    HistoryJob::Read { from, max, reply } => {
                        let events = history
                            .records_from(from)
                            .take(max)
                            .map(|record| record.map(|r| r.event).map_err(|e| e.to_string()))
                            .collect();
                        let _ = reply.send(events);
                    }
                    HistoryJob::Audit(blobs, reply) => {
                        let _ = reply.send(crate::history::events::audit(&history, &blobs));
                    }
                    HistoryJob::Close(state, closed) => {
                        // A snapshot being written is finished and installed first (it
                        // may be the final state already).
                        let mut covered = false;
                        if let Some(handle) = writer.take() {
                            let _ = handle.join();
                            for job in rx.try_iter() {
                                if let HistoryJob::InstallSnapshot(written) = job {
                                    match history.install_snapshot(written) {
                                        Ok(record) => covered = record.seq == history.head().seq,
                                        Err(err) => tracing::warn!(%err, "snapshot failed"),
                                    }
                                }
                            }
                        }
                        // The snapshot makes the next start-up quick; the anchor lets it
                        // tell a shorter history from data loss.
                        if !covered {
                            let mut encoder = StateEncoder::default();
                            if let Err(err) = history.take_snapshot_with(&mut encoder, &state) {
                                tracing::warn!(%err, "snapshot at shutdown failed");
                            }
                        }
                        if let Err(err) = history.close() {
                            tracing::warn!(%err, "clean shutdown of the history failed");
                        }
                        let _ = closed.send(());
                        return;
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Starts the thread that encodes a snapshot's state from its persistent copy and
/// stores it, then hands it back to the history thread to install. The history thread
/// goes on appending meanwhile, so no acknowledgement waits for a snapshot.
fn spawn_snapshot_writer(
    ticket: SnapshotTicket,
    state: Arc<State>,
    jobs: std::sync::mpsc::Sender<HistoryJob>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fedrun-snapshot".into())
        .spawn(move || {
            let seq = ticket.seq();
            let began = std::time::Instant::now();
            // A fresh encoder writes what `write` does and notes where each job starts
            // as it goes, where `write` walks the bytes again to find the jobs index.
            match ticket.write_with(&mut StateEncoder::default(), &state) {
                Ok(written) => {
                    tracing::debug!(seq, bytes = written.size(), took = ?began.elapsed(), "snapshot state written");
                    // The history thread has ended (a shutdown): the blob stays unnamed
                    // and the next start-up's sweep removes it.
                    let _ = jobs.send(HistoryJob::InstallSnapshot(written));
                }
                Err(err) => tracing::warn!(%err, "snapshot failed"),
            }
        })
}

struct EngineTask {
    node: Node,
    server: Server,
    clock: Arc<ServerClock<WallSource<Arc<dyn Clock>>>>,
    state_tx: watch::Sender<Arc<State>>,
    stopped_tx: watch::Sender<Option<String>>,
    history: std::sync::mpsc::Sender<HistoryJob>,
    appended: mpsc::UnboundedReceiver<(u64, Result<(), String>)>,
    in_flight: Option<u64>,
    replies: BTreeMap<u64, oneshot::Sender<AdminAnswer>>,
    next_token: u64,
    local: LocalParticipant,
    published_seq: Option<u64>,
    /// What the batch out at the history records in the metrics once it is durable.
    in_flight_facts: Option<BatchFacts>,
}

/// Inputs taken in one batch at most: bounds the latency of the batch's first answer.
const BATCH_MAX: usize = 512;

impl EngineTask {
    async fn run(mut self, mut inputs: mpsc::Receiver<Message>) {
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            if !self.node.is_appending() {
                // No batch is out, so the state is durable: it is published before any
                // answer leaves, so a requester that reads after its answer sees it.
                self.publish();
            }
            self.carry_out();
            if let Some(append) = self.node.poll_append() {
                self.in_flight = Some(append.id);
                self.in_flight_facts = Some(BatchFacts::of(&append.events, self.node.state()));
                let id = append.id;
                if self.history.send(HistoryJob::Append(append)).is_err() {
                    self.node
                        .append_done(id, Err("the history thread has ended".into()));
                    self.in_flight = None;
                }
            }
            // Inputs that wrote nothing (a refusal before the core) are answered at once.
            self.carry_out();
            if let Some(cause) = self.node.stopped() {
                tracing::error!(%cause, "the engine stopped for good; the server ends");
                let _ = self.stopped_tx.send(Some(cause.to_string()));
                // Requests still queued are dropped with the queue: they get `Stopped`.
                return;
            }
            if let Some(id) = self.in_flight {
                // The only thing the task waits on while a batch is out is its append.
                let (done, result) = self
                    .appended
                    .recv()
                    .await
                    .unwrap_or((id, Err("the history thread has ended".into())));
                self.in_flight = None;
                let facts = self.in_flight_facts.take();
                if let (Ok(()), Some(facts)) = (&result, facts) {
                    self.server.metrics.record_batch(&facts);
                }
                self.node.append_done(done, result);
                continue;
            }
            if let Some(done) = shutdown.take() {
                let (closed_tx, closed_rx) = oneshot::channel();
                let state = Arc::new(self.node.state().clone());
                if self
                    .history
                    .send(HistoryJob::Close(state, closed_tx))
                    .is_ok()
                {
                    let _ = closed_rx.await;
                }
                // Closed before the caller hears of it: from then on the server reads as
                // not ready (a probe right after `shutdown` returned saw it ready).
                inputs.close();
                let _ = done.send(());
                return;
            }
            let deadline = self.node.poll_timeout();
            let sleep = deadline.map(|due| {
                // One extra millisecond: the clock must have reached `due` on waking.
                let wait_ms = due.as_millis() - self.clock.now().as_millis() + 1;
                Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
            });
            tokio::select! {
                first = inputs.recv() => match first {
                    Some(message) => self.take(message, &mut shutdown),
                    None => return,
                },
                _ = async {
                    match sleep {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    }
                } => self.node.handle_timeout(self.clock.now()),
            }
            while shutdown.is_none() && self.node.queued_inputs() < BATCH_MAX {
                match inputs.try_recv() {
                    Ok(message) => self.take(message, &mut shutdown),
                    Err(_) => break,
                }
            }
        }
    }

    fn take(&mut self, message: Message, shutdown: &mut Option<oneshot::Sender<()>>) {
        let now = self.clock.now();
        let input = match message {
            Message::Admin {
                origin,
                request,
                reply,
            } => {
                self.next_token += 1;
                let token = ReplyToken(self.next_token);
                self.replies.insert(token.0, reply);
                node::Input::Admin {
                    token,
                    origin,
                    request,
                }
            }
            Message::Report(from, report) => node::Input::Report { from, report },
            Message::Archived { job_id, result } => node::Input::ArchiveFinished { job_id, result },
            Message::Shutdown(done) => {
                *shutdown = Some(done);
                return;
            }
            Message::History(job) => {
                // A dropped reply is answered `Stopped` to the reader.
                let _ = self.history.send(job);
                return;
            }
        };
        self.node.handle(now, input);
    }

    fn publish(&mut self) {
        let seq = self.node.state().last_seq;
        if self.published_seq != Some(seq) {
            self.published_seq = Some(seq);
            let _ = self.state_tx.send(Arc::new(self.node.state().clone()));
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

    /// Carries out every output the node has released. No rule lives here: each output
    /// is moved to where it is done.
    fn carry_out(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Reply { token, answer } => {
                    if let Some(reply) = self.replies.remove(&token.0) {
                        let _ = reply.send(answer.map_err(AdminError::from));
                    }
                }
                Output::Send {
                    to: Participant::Local,
                    request,
                } => self.local.request(request),
                Output::Send {
                    to: Participant::Site(site),
                    request,
                } => self.to_site(&site, outgoing(request)),
                Output::Archive { job_id } => {
                    let blobs = self.server.blobs.clone();
                    let root = self.server.workspace();
                    let server = self.server.clone();
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || {
                            let run_dir = workspace::job_dir(&root, job_id);
                            archive::archive_folder(&run_dir, &blobs).map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("archive task failed: {e}")));
                        server.send_input(Message::Archived { job_id, result });
                    });
                }
                Output::RemoveRunFolder { job_id } => {
                    let root = self.server.workspace();
                    tokio::task::spawn_blocking(move || {
                        // The archive is durable; a folder left behind only costs space
                        // and is removed at the next start.
                        let run_dir = workspace::job_dir(&root, job_id);
                        if let Err(e) = remove_archived_run_folder(&run_dir) {
                            tracing::warn!(%job_id, error = %e, "run folder not removed");
                        }
                    });
                }
                Output::FreeBlob { hash } => {
                    // On the history thread, in order: the removal is done before the
                    // next batch is durable, so before any submit of the same bytes that
                    // that batch accepts is answered and drops its pin.
                    let blobs = self.server.blobs.clone();
                    let _ = self.history.send(HistoryJob::FreeBlob(blobs, hash));
                }
                Output::TakeSnapshot { state } => {
                    let jobs = self.history.clone();
                    let _ = self.history.send(HistoryJob::Snapshot(state, jobs));
                }
            }
        }
    }
}

/// A node request as a site's link carries it (deploys get their bytes in the sender).
fn outgoing(request: Request) -> Outgoing {
    let request = match request {
        Request::Deploy {
            job_id,
            app_name,
            package,
            verify_at,
        } => {
            return Outgoing::Deploy {
                job_id,
                app: app_name,
                package,
                verify_at,
            }
        }
        Request::CheckResources {
            try_id,
            job_id,
            resources,
        } => SiteRequest::CheckResources {
            try_id,
            job_id,
            resources,
        },
        Request::CancelReservation { job_id, token } => {
            SiteRequest::CancelReservation { job_id, token }
        }
        Request::Start { job_id } => SiteRequest::Start { job_id },
        Request::Stop { job_id } => SiteRequest::Stop { job_id },
        Request::Delete { job_id } => SiteRequest::Delete { job_id },
        Request::Acknowledge { report_id } => SiteRequest::Acknowledge { report_id },
    };
    Outgoing::Request(request)
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

/// Why the live history could not be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HistoryReadError {
    /// The request did not reach the history (busy, or stopped).
    #[error(transparent)]
    Admin(AdminError),
    /// A record failed its checks.
    #[error("the history is damaged: {0}")]
    Damaged(String),
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
    /// The package's signature is missing under the policy, does not verify, or its
    /// signer's role may not submit.
    #[error("job refused at submit: {0}")]
    Signature(String),
    /// The server could not check the package (no temporary folder to unpack it in).
    #[error("checking the package failed: {0}")]
    Check(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_recovery_stop_and_shutdown() {
        let (inputs, inputs_rx) = mpsc::channel::<Message>(4);
        let (state_tx, state) = watch::channel(Arc::new(State::default()));
        let (stopped_tx, stopped) = watch::channel(None);
        let probe = server_probe(&inputs, &state, &stopped, None);
        assert_eq!((probe.ready)(), Ok(()), "running, no restart pending");
        assert_eq!((probe.input_queue)(), (0, 4));
        let recovering = State {
            recovery: Some(crate::lifecycle::state::RecoveryWindow {
                started_at: Timestamp::from_millis(0),
                reattached: Default::default(),
            }),
            ..State::default()
        };
        state_tx.send_replace(Arc::new(recovering));
        let why = (probe.ready)().expect_err("not ready while recovering");
        assert!(why.contains("recovering"), "{why}");
        state_tx.send_replace(Arc::new(State::default()));
        stopped_tx.send_replace(Some("disk full".into()));
        let why = (probe.ready)().expect_err("not ready after a stop");
        assert!(why.contains("disk full"), "{why}");
        stopped_tx.send_replace(None);
        drop(inputs_rx);
        let why = (probe.ready)().expect_err("not ready once the engine task is gone");
        assert!(why.contains("not running"), "{why}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deploys_of_one_package_share_one_read_and_free_it_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
        let hash = blobs.put_bytes(b"a package").expect("put");
        let packages = Packages::default();
        let (first, second) = tokio::join!(packages.get(&blobs, hash), packages.get(&blobs, hash));
        let (first, second) = (first.expect("read"), second.expect("read"));
        assert!(Arc::ptr_eq(&first, &second), "one read, shared");
        drop((first, second));
        packages.trim();
        assert!(lock(&packages.open).is_empty(), "no deploy holds it: freed");
    }
}
