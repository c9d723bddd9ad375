//! `fedrun demo`: a server with three local sites runs the example jobs, live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig, EXIT_ENGINE_STOPPED};
use fedrun::history::History;
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Answer, Event, Identity, Origin, RunPhase, RunStatus, State,
};
use fedrun::site::local::{LocalSite, LocalSiteConfig, SiteHandle};

/// Arguments of `fedrun demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The data folder (history, blobs, workspaces). Default: a new temporary folder, kept
    /// and named at the end so it can be inspected with `fedrun history` and `fedrun audit`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The folder holding the example jobs. Default: `examples` in the current folder, or
    /// the one in the source tree.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Give up when the jobs have not all finished after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Run the federation as separate processes on loopback: a freshly provisioned
    /// project in the data folder, `fedrun serve`, three `fedrun site` agents, and the
    /// jobs driven through the admin CLI over mutual TLS.
    #[arg(long)]
    pub net: bool,
}

const JOBS: [&str; 3] = ["hello-complete", "hello-fail", "long-running"];
const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.net {
        let examples = examples_dir(args.examples)?;
        return super::demo_net::run(
            args.data_dir,
            &examples,
            Duration::from_secs(args.timeout_secs),
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(demo(args));
    // Blocking work still under way (a site's deploy, an archive) must not keep a process
    // whose engine has stopped alive: give it a moment, then go.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn examples_dir(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let candidates = match arg {
        Some(dir) => vec![dir],
        None => vec![
            PathBuf::from("examples"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        ],
    };
    for dir in &candidates {
        if JOBS.iter().all(|j| dir.join(j).join("meta.json").is_file()) {
            return Ok(dir.clone());
        }
    }
    bail!(
        "cannot find the example jobs ({}) in {}; pass --examples DIR",
        JOBS.join(", "),
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

fn admin() -> Identity {
    Identity {
        name: "demo-admin".to_string(),
        org: "demo".to_string(),
        role: fedrun::lifecycle::Role::ProjectAdmin,
    }
}

fn settled(state: &State, ids: &[JobId]) -> bool {
    ids.iter().all(|id| {
        state.jobs.get(id).is_some_and(|j| {
            j.status.is_terminal()
                && matches!(j.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
                && j.archive.is_settled()
        })
    })
}

/// The exit code when the server's engine has stopped for good (it never comes back
/// without a restart, so the demo ends instead of waiting for jobs that cannot move).
fn engine_stopped(server: &Server) -> Option<i32> {
    let cause = server.stopped()?;
    let cause = super::term::clean(&cause.to_string()).into_owned();
    eprintln!("error: the server's engine stopped for good: {cause}");
    Some(EXIT_ENGINE_STOPPED)
}

/// Where the demo's lines go: stdout, until it is closed (`fedrun demo | head`). A closed
/// stdout is not a crash: the demo then stops its jobs as an interrupt would.
struct Out {
    closed: bool,
}

/// Why the demo ended early: an interrupt (SIGINT, SIGTERM) or a closed stdout.
#[derive(Debug)]
enum Interrupt {
    Signal(&'static str),
    StdoutClosed,
}

/// The exit code of a demo stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

impl Out {
    fn line(&mut self, text: std::fmt::Arguments<'_>) -> Result<(), Interrupt> {
        use std::io::Write as _;
        if self.closed {
            return Err(Interrupt::StdoutClosed);
        }
        let mut stdout = std::io::stdout().lock();
        match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.closed = true;
                Err(Interrupt::StdoutClosed)
            }
        }
    }
}

/// Writes one line to the demo's [`Out`]; `?` ends the demo's run on a closed stdout.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

/// Waits for SIGINT or SIGTERM.
async fn interrupted() -> Interrupt {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for SIGINT/SIGTERM; the demo cannot be interrupted cleanly");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Interrupt::Signal("SIGINT"),
        _ = term.recv() => Interrupt::Signal("SIGTERM"),
    }
}

/// Stops an interrupted demo without leaving anything behind: every unfinished job is
/// aborted (SPEC section 9, recorded like any abort), the jobs get `abort_grace` and a
/// margin to settle, then each site stops whatever app still runs (SIGTERM, grace,
/// SIGKILL) and the server shuts down with its history anchored.
async fn stop_interrupted(server: &Server, sites: Vec<SiteHandle>, abort_grace: Duration) {
    let state = server.state();
    let open: Vec<JobId> = state
        .jobs
        .iter()
        .filter(|(_, job)| !job.status.is_terminal())
        .map(|(id, _)| *id)
        .collect();
    for job_id in &open {
        let answer = server
            .request(
                Origin {
                    identity: admin(),
                    request_id: Some(format!("demo-interrupt-abort-{job_id}")),
                },
                AdminRequest::AbortJob { job_id: *job_id },
            )
            .await;
        if !matches!(answer, Ok(Ok(_))) {
            tracing::warn!(%job_id, ?answer, "abort of an unfinished job refused");
        }
    }
    let all: Vec<JobId> = state.jobs.keys().copied().collect();
    let bound = abort_grace + Duration::from_secs(15);
    let mut watch = server.watch();
    if tokio::time::timeout(bound, watch.wait_for(|s| settled(s, &all)))
        .await
        .is_err()
    {
        eprintln!(
            "warning: the jobs did not settle within {} s; their apps are stopped now",
            bound.as_secs()
        );
    }
    for site in sites {
        site.stop_apps_and_shutdown().await;
    }
    server.shutdown().await;
}

/// How the demo's run of the jobs ended, when it did not end with every job settled.
enum Stop {
    /// Ctrl-C, SIGTERM or a closed stdout: abort what is unfinished and clean up.
    Interrupted(Interrupt),
    /// The engine stopped for good: exit with this code.
    Engine(i32),
    /// Anything else.
    Failed(anyhow::Error),
}

impl From<Interrupt> for Stop {
    fn from(interrupt: Interrupt) -> Self {
        Stop::Interrupted(interrupt)
    }
}

/// The end of an engine that stopped for good, or `failed` when it still runs.
fn stop_or(server: &Server, failed: anyhow::Error) -> Stop {
    match engine_stopped(server) {
        Some(code) => Stop::Engine(code),
        None => Stop::Failed(failed),
    }
}

async fn demo(args: Args) -> anyhow::Result<i32> {
    let examples = examples_dir(args.examples)?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("fedrun-demo-")
            .tempdir()
            .context("creating a temporary data folder")?
            .keep(),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut out = Out { closed: false };
    let _ = say!(out, "fedrun demo: data folder {}", data_dir.display());
    let config = ServerConfig::new(&data_dir);
    let abort_grace = config.settings.abort_grace;
    let server = Server::start(config, Arc::new(WallClock))
        .with_context(|| format!("starting the server on {}", data_dir.display()))?;
    let mut sites = Vec::new();
    for name in SITES {
        let mut site =
            LocalSiteConfig::new(name, data_dir.join("sites").join(name), BTreeMap::new());
        site.abort_grace = abort_grace;
        let (reports_tx, reports_rx) = tokio::sync::mpsc::channel(256);
        let handle = LocalSite::spawn(site, reports_tx);
        server.attach_site(name, handle.requests.clone(), reports_rx);
        sites.push(handle);
    }
    let run = tokio::select! {
        run = run_jobs(&server, &examples, args.timeout_secs, &data_dir, &mut out) => run,
        interrupt = interrupted() => Err(Stop::Interrupted(interrupt)),
    };
    let (ids, names, elapsed) = match run {
        Ok(done) => done,
        Err(Stop::Interrupted(interrupt)) => {
            match interrupt {
                Interrupt::Signal(signal) => {
                    eprintln!("{signal}: aborting the unfinished jobs and stopping their apps")
                }
                Interrupt::StdoutClosed => {
                    eprintln!("stdout closed: aborting the unfinished jobs and stopping their apps")
                }
            }
            stop_interrupted(&server, sites, abort_grace).await;
            eprintln!(
                "stopped; data folder {} (fedrun history --data-dir {0})",
                data_dir.display()
            );
            return Ok(EXIT_INTERRUPTED);
        }
        Err(Stop::Engine(code)) => return Ok(code),
        Err(Stop::Failed(error)) => {
            // Nothing is left running behind a failed demo either.
            stop_interrupted(&server, sites, abort_grace).await;
            return Err(error);
        }
    };
    let state = server.state();
    server.shutdown().await;
    for site in sites {
        site.shutdown().await;
    }
    match report(&state, &ids, &names, elapsed, &data_dir, &mut out) {
        Ok(code) => Ok(code),
        Err(Stop::Failed(error)) => Err(error),
        Err(Stop::Engine(code)) => Ok(code),
        // The jobs are settled and everything is stopped: a closed stdout only cuts the
        // report short.
        Err(Stop::Interrupted(_)) => Ok(EXIT_INTERRUPTED),
    }
}

/// The three jobs, their ids in submit order and names, and the time until all settled.
type Ran = (Vec<JobId>, BTreeMap<JobId, &'static str>, Duration);

/// Submits the example jobs once the sites are connected, follows them live, aborts the
/// long-running one, and returns once all three have settled.
async fn run_jobs(
    server: &Server,
    examples: &Path,
    timeout_secs: u64,
    data_dir: &Path,
    out: &mut Out,
) -> Result<Ran, Stop> {
    // Submit once every site is connected, as an operator would: a job tried before its
    // sites are there waits out a back-off (10 s by default).
    let mut watch = server.watch();
    let connected = tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_for(|state| state.connected_sites().count() == SITES.len()),
    )
    .await
    .map(|r| r.map(|_| ()));
    if !matches!(connected, Ok(Ok(_))) {
        return Err(stop_or(
            server,
            anyhow::anyhow!("the sites did not connect within 30 s"),
        ));
    }
    say!(out, "server started; sites {} connected", SITES.join(", "))?;

    let started = Instant::now();
    let mut names: BTreeMap<JobId, &'static str> = BTreeMap::new();
    let mut ids = Vec::new();
    for job in JOBS {
        let answer = server
            .submit_path(
                &examples.join(job),
                admin(),
                Some(format!("demo-submit-{job}")),
            )
            .await
            .map_err(|e| Stop::Failed(e.into()))?;
        match answer {
            Ok(Ok(Answer::Submitted { job_id })) => {
                say!(
                    out,
                    "[{:>6.2}s] submitted {job} as {job_id}",
                    started.elapsed().as_secs_f64()
                )?;
                names.insert(job_id, job);
                ids.push(job_id);
            }
            other => {
                return Err(stop_or(
                    server,
                    anyhow::anyhow!("submitting {job} failed: {other:?}"),
                ))
            }
        }
    }

    let long_running = ids[2];
    let mut seen: BTreeMap<JobId, RunStatus> = BTreeMap::new();
    let mut abort_sent = false;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut running_since: Option<Instant> = None;
    loop {
        let state = watch.borrow_and_update().clone();
        for id in &ids {
            if let Some(job) = state.jobs.get(id) {
                if seen.get(id) != Some(&job.status) {
                    let from = seen
                        .get(id)
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|| "(new)".into());
                    let reason = job
                        .finish_reason
                        .as_deref()
                        .filter(|_| job.status.is_terminal())
                        .map(|r| format!(" ({})", super::term::clean(r)))
                        .unwrap_or_default();
                    say!(
                        out,
                        "[{:>6.2}s] {:<15} {from} -> {}{reason}",
                        started.elapsed().as_secs_f64(),
                        names[id],
                        job.status
                    )?;
                    seen.insert(*id, job.status);
                }
            }
        }
        let long_status = state.jobs.get(&long_running).map(|j| j.status);
        if long_status == Some(RunStatus::Running) && running_since.is_none() {
            running_since = Some(Instant::now());
        }
        // Abort the long job once it has run a little and the others have finished, so
        // the demo shows all three endings.
        let others_done = ids[..2]
            .iter()
            .all(|id| state.jobs.get(id).is_some_and(|j| j.status.is_terminal()));
        if !abort_sent
            && others_done
            && running_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
        {
            say!(
                out,
                "[{:>6.2}s] aborting long-running",
                started.elapsed().as_secs_f64()
            )?;
            let answer = server
                .request(
                    Origin {
                        identity: admin(),
                        request_id: Some("demo-abort-long-running".into()),
                    },
                    AdminRequest::AbortJob {
                        job_id: long_running,
                    },
                )
                .await;
            if !matches!(answer, Ok(Ok(_))) {
                return Err(stop_or(
                    server,
                    anyhow::anyhow!("aborting long-running failed: {answer:?}"),
                ));
            }
            abort_sent = true;
        }
        if settled(&state, &ids) {
            break;
        }
        if let Some(code) = engine_stopped(server) {
            return Err(Stop::Engine(code));
        }
        let wait = if !abort_sent && running_since.is_some() {
            // Wake up to send the abort even if nothing changes meanwhile.
            Duration::from_millis(250)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        if Instant::now() >= deadline {
            return Err(Stop::Failed(anyhow::anyhow!(
                "the jobs did not finish within {} s; data folder {}",
                timeout_secs,
                data_dir.display()
            )));
        }
        let _ = tokio::time::timeout(wait, watch.changed()).await;
    }
    Ok((ids, names, started.elapsed()))
}

/// Prints the settled jobs, one job's history and the audit; the exit code.
fn report(
    state: &State,
    ids: &[JobId],
    names: &BTreeMap<JobId, &'static str>,
    elapsed: Duration,
    data_dir: &Path,
    out: &mut Out,
) -> Result<i32, Stop> {
    say!(out, "")?;
    say!(
        out,
        "{:<15}  {:<36}  {:<30}  {:<22}  ARCHIVE",
        "JOB",
        "JOB ID",
        "STATUS",
        "CLIENTS"
    )?;
    for id in ids {
        let job = &state.jobs[id];
        let archive = match &job.archive {
            fedrun::lifecycle::Archive::Archived { hash } => format!("{}…", &hash.to_hex()[..12]),
            other => format!("{other:?}"),
        };
        say!(
            out,
            "{:<15}  {:<36}  {:<30}  {:<22}  {archive}",
            names[id],
            id.to_string(),
            job.status.as_str(),
            super::term::clean(&job.run.job_clients.join(","))
        )?;
    }
    say!(out, "all jobs settled in {:.2} s", elapsed.as_secs_f64())?;

    let history = History::<Event>::open(data_dir)
        .with_context(|| format!("reopening the history in {}", data_dir.display()))
        .map_err(Stop::Failed)?;
    let failed = ids[1];
    say!(out, "")?;
    say!(out, "history of hello-fail ({failed}):")?;
    for record in history.records_from(1) {
        let record = record
            .context("reading the history back")
            .map_err(Stop::Failed)?;
        if record.event.kind.job_id() == Some(failed) {
            let line = fedrun::history::events::event_text(&record.event);
            say!(out, "  {}", super::term::clean(&line))?;
        }
    }
    let report = history.verify(State::new());
    say!(out, "")?;
    if report.is_ok() {
        say!(
            out,
            "audit: OK: {} records, hash chain intact, head seq {}, replay matches",
            report.records_ok,
            report.head.seq
        )?;
    } else {
        say!(out, "audit: FAILED: {:?}", report.problems)?;
    }
    say!(out, "")?;
    say!(
        out,
        "inspect it: fedrun history --data-dir {0} ; fedrun audit verify --data-dir {0}",
        data_dir.display()
    )?;
    Ok(if report.is_ok() { 0 } else { 1 })
}
