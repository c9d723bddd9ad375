//! Network benchmarks (SPEC section 11), on loopback with the real binaries, run with
//! `cargo bench --bench net`:
//!
//! 1. A federation of one `fedrun serve` and three `fedrun site` processes, and a job whose
//!    apps exit at once (`command = "true"`, at the server and every site): submit ->
//!    RUNNING and submit -> finished (terminal, workspace archive settled), through the
//!    admin API (the mutual-TLS client of `fedrun::net::client` in this process, which
//!    follows the job on the live history stream) and through `fedrun submit --wait` (a
//!    process). Criterion measures; the medians of the measured runs are printed.
//! 2. The same server, idle with its three sites connected: its CPU time (utime + stime
//!    from `/proc/PID/stat`) over 60 s and its RSS.
//! 3. 1,000 site connections to one `fedrun serve`: light sites in this process that speak
//!    the site protocol (`fedrun::net::wire`), each with its own provisioned certificate.
//!    The server's RSS per connected site (read from `/proc` before and after), and the
//!    time to deploy a job with a 1 MiB app to all of them and collect their answers
//!    (resource check, deploy, start, exit report).
//!
//! The kits of the 1,000 sites (one RSA key each) are provisioned once into
//! `target/bench-net/` and reused by later runs.
//!
//! `FEDRUN_BENCH_QUICK=1` shortens it for a smoke run (5 s idle, 100 light sites);
//! `FEDRUN_BENCH_SITES=N` sets the number of light sites.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::Method;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};

use fedrun::job::limits::Limits;
use fedrun::job::package::ingest;
use fedrun::net::client::Client;
use fedrun::net::kit::Kit;
use fedrun::net::tls::{client_config, server_name, ALPN_SITE};
use fedrun::net::wire::{decode, encode_message, Frame, FromSite, ToSite, WireConfig, WireRequest};
use fedrun::site::local::exit_report_id;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use fedrun::trust::provision::{provision, Project, ProvisionOptions};

/// How long any one step may take before the bench gives up.
const BOUND: Duration = Duration::from_secs(120);
const ADMIN: &str = "bench@ops";

fn quick() -> bool {
    std::env::var("FEDRUN_BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn fedrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command
        .env_remove("FEDRUN_KIT")
        .env_remove("FEDRUN_LOG")
        .env_remove("FEDRUN_SERVER");
    for (name, _) in std::env::vars() {
        if name.starts_with("FEDRUN_SETTING_") {
            command.env_remove(name);
        }
    }
    command
}

/// `target/` (the bench runs from `target/release/deps/`), for the cached kits.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn project(sites: &[String]) -> String {
    let mut text = format!(
        "name = \"bench\"\nvalid_days = 3650\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
         [[admin]]\nname = \"{ADMIN}\"\norg = \"ops\"\nrole = \"project_admin\"\n"
    );
    for site in sites {
        text.push_str(&format!(
            "[[site]]\nname = \"{site}\"\norg = \"org-{site}\"\n"
        ));
    }
    text
}

/// Provisions (or completes) the kits of `sites` under `dir`; existing kits are kept.
fn kits(dir: &Path, sites: &[String]) -> Duration {
    let started = Instant::now();
    let project: Project = project(sites).parse().expect("project");
    provision(
        &project,
        dir,
        ProvisionOptions {
            force: false,
            now: SystemTime::now(),
        },
    )
    .expect("provision");
    started.elapsed()
}

/// A child process stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
struct Running {
    child: Child,
    what: String,
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on a child this bench started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop after SIGTERM; killed", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fedrun serve` on a free loopback port; returns it and its address.
fn serve(kits: &Path, dir: &Path) -> (Running, String) {
    let mut child = fedrun()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--kit")
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(log_file(dir, "serve"))
        .spawn()
        .expect("fedrun serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let server = Running {
        child,
        what: "fedrun serve".into(),
    };
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(BOUND)
        .expect("the server prints where it listens");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (server, addr)
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(format!("{name}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn site(kits: &Path, dir: &Path, name: &str, addr: &str) -> Running {
    let child = fedrun()
        .arg("site")
        .arg("--kit")
        .arg(kits.join(name))
        .arg("--work-dir")
        .arg(dir.join(name))
        .args(["--server", addr])
        .stdout(Stdio::null())
        .stderr(log_file(dir, name))
        .spawn()
        .expect("fedrun site starts");
    Running {
        child,
        what: format!("fedrun site {name}"),
    }
}

/// A job whose apps (server and every site) exit at once, with `extra` bytes of data that
/// do not compress in its app.
fn instant_job(dir: &Path, name: &str, min_clients: usize, extra: usize) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("app")).expect("job folder");
    std::fs::write(
        root.join("meta.json"),
        format!(
            "{{\"name\": \"{name}\", \"deploy_map\": {{\"app\": [\"@ALL\"]}}, \"min_clients\": {min_clients}}}"
        ),
    )
    .expect("meta");
    std::fs::write(root.join("app/run.toml"), "command = \"true\"\n").expect("run.toml");
    if extra > 0 {
        let data: Vec<u8> = (0..extra).map(|_| rand::random::<u8>()).collect();
        std::fs::write(root.join("app/data.bin"), data).expect("data");
    }
    root
}

/// The job at `job`, signed with the admin kit's key in a copy, as the canonical zip the
/// API takes.
fn signed_zip(admin_kit: &Path, job: &Path, scratch: &Path) -> Bytes {
    let kit = Kit::load(admin_kit).expect("admin kit");
    let signer = fedrun::trust::Signer::load(&kit.cert, &kit.key).expect("signer");
    let copy = scratch.join(format!(
        "signed-{}",
        job.file_name().and_then(|n| n.to_str()).unwrap_or("job")
    ));
    copy_tree(job, &copy);
    fedrun::trust::sign_job_folder(&copy, &signer).expect("sign");
    let package = ingest(&copy, &Limits::default()).expect("package");
    Bytes::from(package.zip)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The history as the API streams it (`/v1/history?follow=true`), one parsed event at a
/// time, and the task that reads it.
async fn follow_history(
    client: &Client,
) -> (
    mpsc::UnboundedReceiver<serde_json::Value>,
    tokio::task::JoinHandle<()>,
) {
    let response = client
        .send(Method::GET, "/v1/history?follow=true", &[], Bytes::new())
        .await
        .expect("the history stream opens");
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event = serde_json::from_slice(&line).expect("a JSON event line");
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    (rx, task)
}

/// When a job went RUNNING and when it was finished with its archive settled, after
/// `started`.
struct Milestones {
    running: Duration,
    finished: Duration,
    /// From `job_submitted` to `run_started` by the events' own times (the server's
    /// clock, in milliseconds): the part of `running` spent after the upload was taken.
    recorded: Option<Duration>,
}

/// Reads the history stream until the job is terminal and its workspace archive settled.
async fn follow_job(
    events: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    job_id: &str,
    started: Instant,
) -> Milestones {
    let (mut running, mut finished, mut archived) = (None, None, false);
    let (mut submitted_ms, mut started_ms) = (None, None);
    loop {
        let event = tokio::time::timeout(BOUND, events.recv())
            .await
            .unwrap_or_else(|_| panic!("job {job_id} did not settle within {BOUND:?}"))
            .expect("the history stream stays open");
        if event["job_id"].as_str() != Some(job_id) {
            continue;
        }
        match event["type"].as_str() {
            Some("job_submitted") => submitted_ms = event["at_ms"].as_u64(),
            Some("run_started") => {
                running = Some(started.elapsed());
                started_ms = event["at_ms"].as_u64();
            }
            Some("job_finished") => finished = Some(started.elapsed()),
            Some("workspace_archived" | "workspace_archive_failed") => archived = true,
            _ => {}
        }
        if let (Some(finished), true) = (finished, archived) {
            let running = running.unwrap_or_else(|| panic!("job {job_id} never ran: {event}"));
            let recorded = submitted_ms
                .zip(started_ms)
                .map(|(from, to)| Duration::from_millis(to.saturating_sub(from)));
            return Milestones {
                running,
                finished: finished.max(started.elapsed()),
                recorded,
            };
        }
    }
}

/// Checks through the API that the job completed on `sites` sites and was archived.
async fn check_completed(client: &Client, job_id: &str, sites: usize) {
    let view = client
        .json(
            Method::GET,
            &format!("/v1/jobs/{job_id}"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("the job's view");
    assert_eq!(view["status"], "FINISHED:COMPLETED", "{view}");
    assert_eq!(view["archive"]["state"], "archived", "{view}");
    let clients = view["job_clients"].as_array().map_or(0, Vec::len);
    assert_eq!(clients, sites, "every site took part: {view}");
}

async fn submit(client: &Client, zip: &Bytes, name: &str) -> String {
    let answer = client
        .json(
            Method::POST,
            &format!("/v1/jobs?name={name}"),
            &[("content-type", "application/zip".to_string())],
            zip.clone(),
        )
        .await
        .expect("the submit is accepted");
    answer["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {answer}"))
        .to_string()
}

/// Polls `/v1/sites` (bounded) until `count` sites are connected.
async fn wait_sites(client: &Client, count: usize) -> Duration {
    let started = Instant::now();
    loop {
        let sites = client
            .json(Method::GET, "/v1/sites", &[], Bytes::new())
            .await
            .expect("sites");
        let connected = sites.as_array().map_or(0, Vec::len);
        if connected == count {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < BOUND,
            "{connected} of {count} sites connected after {BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A process's CPU time (user + system) from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which may hold spaces) start at field 3.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Results printed at the end, one line each.
#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn line(&mut self, text: String) {
        println!("{text}");
        self.0.push(text);
    }

    /// The medians of both milestones over the jobs of every bench in `runs` (each
    /// bench's first job, criterion's warm-up run, left out).
    fn medians(&mut self, what: &str, first: &str, runs: &[Vec<Milestones>]) {
        let measured: Vec<&Milestones> = runs.iter().flat_map(|r| r.iter().skip(1)).collect();
        let running: Vec<Duration> = measured.iter().map(|m| m.running).collect();
        let finished: Vec<Duration> = measured.iter().map(|m| m.finished).collect();
        let recorded: Vec<Duration> = measured.iter().filter_map(|m| m.recorded).collect();
        let server_part = if recorded.is_empty() {
            String::new()
        } else {
            format!(
                "; job_submitted -> run_started as the server recorded them, median {:.0?}",
                median(&recorded)
            )
        };
        self.line(format!(
            "{what}: submit -> {first} median {:.1?}, submit -> finished median {:.1?} (n = {} jobs){server_part}",
            median(&running),
            median(&finished),
            measured.len()
        ));
    }
}

fn group_settings(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    secs: u64,
) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(secs));
}

/// Parts 1 and 2: three `fedrun site` processes, the API and the CLI, then idle.
fn federation(criterion: &mut Criterion, rt: &tokio::runtime::Runtime, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let sites: Vec<String> = (1..=3).map(|i| format!("site-{i}")).collect();
    let kit_dir = root.join("kits");
    kits(&kit_dir, &sites);
    let (server, addr) = serve(&kit_dir, root);
    let agents: Vec<Running> = sites
        .iter()
        .map(|s| site(&kit_dir, root, s, &addr))
        .collect();
    let admin_kit = kit_dir.join(ADMIN);
    let client = Client::from_kit(&admin_kit, Some(&addr)).expect("admin client");
    rt.block_on(wait_sites(&client, sites.len()));
    let job = instant_job(root, "instant", sites.len(), 0);
    let zip = signed_zip(&admin_kit, &job, root);
    let (mut events, reader) = rt.block_on(follow_history(&client));

    // Through the API: one job at a time, followed on the history stream.
    let (mut api_running, mut api_finished) = (Vec::new(), Vec::new());
    let mut group = criterion.benchmark_group("api_3_sites");
    group_settings(&mut group, 3);
    group.bench_function("submit_to_running", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let job_id = submit(&client, &zip, "instant").await;
                    let seen = follow_job(&mut events, &job_id, started).await;
                    check_completed(&client, &job_id, sites.len()).await;
                    total += seen.running;
                    api_running.push(seen);
                }
                total
            })
        })
    });
    group.bench_function("submit_to_finished", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let job_id = submit(&client, &zip, "instant").await;
                    let seen = follow_job(&mut events, &job_id, started).await;
                    check_completed(&client, &job_id, sites.len()).await;
                    total += seen.finished;
                    api_finished.push(seen);
                }
                total
            })
        })
    });
    group.finish();
    reader.abort();
    report.medians("API, 3 sites", "RUNNING", &[api_running, api_finished]);

    // Through the CLI: `fedrun submit --wait`, which signs the job and polls every 100 ms.
    let (mut cli_running, mut cli_finished) = (Vec::new(), Vec::new());
    let cli = || -> Milestones {
        let started = Instant::now();
        let mut child = fedrun()
            .arg("submit")
            .arg(&job)
            .arg("--wait")
            .arg("--kit")
            .arg(&admin_kit)
            .args(["--server", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fedrun submit starts");
        let stderr = child.stderr.take().expect("stderr");
        let child = Running {
            child,
            what: "fedrun submit".into(),
        };
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send((line, started.elapsed()));
            }
        });
        // The first status it shows at RUNNING or later (a job that is quicker than its
        // 100 ms poll may show FINISHED first).
        let mut lines = Vec::new();
        let seen_running = loop {
            let (line, at) = rx.recv_timeout(BOUND).unwrap_or_else(|_| {
                panic!("fedrun submit --wait showed no RUNNING or later: {lines:?}")
            });
            if line.ends_with(": RUNNING") || line.contains(": FINISHED:") {
                break at;
            }
            lines.push(line);
        };
        let mut child = child;
        let status = child.child.wait().expect("fedrun submit ends");
        let done = started.elapsed();
        assert_eq!(status.code(), Some(0), "fedrun submit --wait: {lines:?}");
        Milestones {
            running: seen_running,
            finished: done,
            recorded: None,
        }
    };
    let mut group = criterion.benchmark_group("cli_3_sites");
    group_settings(&mut group, 5);
    group.bench_function("submit_wait_to_running_shown", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let seen = cli();
                total += seen.running;
                cli_running.push(seen);
            }
            total
        })
    });
    group.bench_function("submit_wait_to_exit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let seen = cli();
                total += seen.finished;
                cli_finished.push(seen);
            }
            total
        })
    });
    group.finish();
    report.medians(
        "CLI `fedrun submit --wait`, 3 sites",
        "RUNNING shown",
        &[cli_running, cli_finished],
    );

    // Idle: the server with its three sites and nothing to do (after the jobs above have
    // settled, and a moment for their connections to close).
    let window = if quick() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    };
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = agents.iter().map(Running::pid).collect();
    let server_before = cpu_time(server.pid());
    let sites_before: Duration = pids.iter().map(|pid| cpu_time(*pid)).sum();
    std::thread::sleep(window);
    let server_cpu = cpu_time(server.pid()) - server_before;
    let sites_cpu = pids.iter().map(|pid| cpu_time(*pid)).sum::<Duration>() - sites_before;
    report.line(format!(
        "idle server, 3 sites, {window:?}: server CPU {server_cpu:?} ({:.3}% of a core), RSS {} KiB; the 3 site agents' CPU {sites_cpu:?}",
        server_cpu.as_secs_f64() * 100.0 / window.as_secs_f64(),
        status_kib(server.pid(), "VmRSS"),
    ));
    drop(agents);
    drop(server);
}

/// One light site's counters, checked against what the server recorded.
#[derive(Default)]
struct Counts {
    welcomed: AtomicUsize,
    deployed: AtomicUsize,
    started: AtomicUsize,
}

/// A site that speaks the site protocol and nothing else: it answers resource checks with
/// a reservation, takes a package in chunks (hashing it as it comes, keeping no copy),
/// answers the deploy once size and BLAKE3 match, answers a start, and reports the app's
/// exit at once, as an agent whose app exits at once does.
async fn light_site(
    kit: Kit,
    addr: String,
    wire: WireConfig,
    counts: Arc<Counts>,
    welcomed: mpsc::Sender<()>,
) {
    let connector = TlsConnector::from(client_config(&kit, ALPN_SITE).expect("tls config"));
    let tcp = TcpStream::connect(&addr).await.expect("dial");
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(server_name(&kit).expect("server name"), tcp)
        .await
        .expect("handshake");
    let (read, write) = tokio::io::split(tls);
    let mut frames = FramedRead::new(read, wire.codec());
    let mut sink = FramedWrite::new(write, wire.codec());
    let name = kit.name.clone();
    let mut next_id = 0u64;
    let mut report = |report: SiteReport| {
        next_id += 1;
        encode_message(&FromSite::Report {
            id: next_id,
            report,
        })
        .expect("encode")
    };
    match frames.next().await {
        Some(Ok(body)) => match decode::<ToSite>(body).expect("frame") {
            Frame::Message(ToSite::Welcome { .. }) => {}
            other => panic!("{name}: not welcomed: {other:?}"),
        },
        other => panic!("{name}: no welcome: {other:?}"),
    }
    let connected = report(SiteReport::Connected {
        resources: BTreeMap::new(),
        running: Vec::new(),
    });
    sink.send(connected).await.expect("send");
    counts.welcomed.fetch_add(1, Ordering::Relaxed);
    let _ = welcomed.send(()).await;
    let mut beat = tokio::time::interval(wire.heartbeat_interval);
    // (deploy id) -> (job, size, expected hash, bytes so far, hasher)
    let mut deploys: BTreeMap<u64, (fedrun::job::JobId, u64, String, u64, blake3::Hasher)> =
        BTreeMap::new();
    loop {
        let body = tokio::select! {
            _ = beat.tick() => {
                let body = encode_message(&FromSite::Heartbeat).expect("encode");
                if sink.send(body).await.is_err() { return; }
                continue;
            }
            next = frames.next() => match next {
                Some(Ok(body)) => body,
                _ => return,
            },
        };
        let mut answers = Vec::new();
        match decode::<ToSite>(body).expect("a frame from the server") {
            Frame::Message(ToSite::Request { request, .. }) => match request {
                WireRequest::CheckResources { try_id, job_id, .. } => {
                    answers.push(SiteReport::ResourceAnswer {
                        try_id,
                        job_id,
                        answer: Ok(format!("{name}/{try_id}")),
                    })
                }
                WireRequest::Start { job_id } => {
                    counts.started.fetch_add(1, Ordering::Relaxed);
                    answers.push(SiteReport::StartAnswer {
                        job_id,
                        result: Ok(()),
                    });
                    answers.push(SiteReport::AppExited {
                        job_id,
                        report_id: exit_report_id(&name, job_id),
                        outcome: ExitOutcome::Code(0),
                        stop_requested: false,
                    });
                }
                WireRequest::Stop { .. }
                | WireRequest::Delete { .. }
                | WireRequest::CancelReservation { .. }
                | WireRequest::Acknowledge { .. } => {}
            },
            Frame::Message(ToSite::DeployBegin {
                id,
                job_id,
                size,
                blake3,
                ..
            }) => {
                deploys.insert(id, (job_id, size, blake3, 0, blake3::Hasher::new()));
            }
            Frame::Message(_) => {}
            Frame::Chunk { id, data } => {
                let (job_id, size, _, received, hasher) = deploys
                    .get_mut(&id)
                    .expect("a chunk of an announced deploy");
                hasher.update(&data);
                *received += data.len() as u64;
                if *received >= *size {
                    let job_id = *job_id;
                    let (_, size, expected, received, hasher) =
                        deploys.remove(&id).expect("present");
                    let hash = hasher.finalize().to_hex().to_string();
                    let result = if received == size && hash == expected {
                        counts.deployed.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    } else {
                        Err(format!("{received} bytes with BLAKE3 {hash}"))
                    };
                    answers.push(SiteReport::DeployAnswer { job_id, result });
                }
            }
        }
        for answer in answers {
            if sink.send(report(answer)).await.is_err() {
                return;
            }
        }
    }
}

/// Part 3: many light sites on one `fedrun serve`.
fn wide(rt: &tokio::runtime::Runtime, report: &mut Report, count: usize) {
    let names: Vec<String> = (1..=count).map(|i| format!("light-{i:05}")).collect();
    let kit_dir = target_dir().join("bench-net").join(format!("kits-{count}"));
    let took = kits(&kit_dir, &names);
    println!(
        "kits of {count} sites ready in {took:.1?} (kept in {})",
        kit_dir.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (server, addr) = serve(&kit_dir, root);
    let admin_kit = kit_dir.join(ADMIN);
    let client = Client::from_kit(&admin_kit, Some(&addr)).expect("admin client");
    rt.block_on(wait_sites(&client, 0));
    let before = status_kib(server.pid(), "VmRSS");
    let site_kits: Vec<Kit> = names
        .iter()
        .map(|name| Kit::load(&kit_dir.join(name)).expect("site kit"))
        .collect();
    let counts = Arc::new(Counts::default());
    let wire = WireConfig::default();
    let started = Instant::now();
    let (welcomed_tx, mut welcomed) = mpsc::channel(count);
    let tasks: Vec<_> = rt.block_on(async {
        // A few handshakes at a time, as sites coming up over a while would.
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for kit in site_kits {
            let permit = limit.clone().acquire_owned().await.expect("semaphore");
            let (tx, mut one) = mpsc::channel(1);
            tasks.push(tokio::spawn(light_site(
                kit,
                addr.clone(),
                wire.clone(),
                counts.clone(),
                tx,
            )));
            let all = welcomed_tx.clone();
            tokio::spawn(async move {
                if one.recv().await.is_some() {
                    let _ = all.send(()).await;
                }
                drop(permit);
            });
        }
        for _ in 0..count {
            tokio::time::timeout(BOUND, welcomed.recv())
                .await
                .expect("every light site is welcomed in time")
                .expect("welcomed");
        }
        tasks
    });
    let connect_time = started.elapsed();
    rt.block_on(wait_sites(&client, count));
    let registered = started.elapsed();
    let after = status_kib(server.pid(), "VmRSS");
    let per_site = (after.saturating_sub(before)) as f64 / count as f64;
    report.line(format!(
        "{count} light sites: welcomed in {connect_time:.2?}, all listed by /v1/sites in {registered:.2?}; server RSS {before} KiB -> {after} KiB = {per_site:.1} KiB per connected site"
    ));

    let job = instant_job(root, "wide", count, 1024 * 1024);
    let zip = signed_zip(&admin_kit, &job, root);
    let zip_len = zip.len();
    let seen = rt.block_on(async {
        let (mut events, reader) = follow_history(&client).await;
        let started = Instant::now();
        let job_id = submit(&client, &zip, "wide").await;
        let seen = follow_job(&mut events, &job_id, started).await;
        reader.abort();
        check_completed(&client, &job_id, count).await;
        seen
    });
    assert_eq!(counts.welcomed.load(Ordering::Relaxed), count);
    assert_eq!(
        counts.deployed.load(Ordering::Relaxed),
        count,
        "every site received the whole package with the right hash"
    );
    assert_eq!(counts.started.load(Ordering::Relaxed), count);
    report.line(format!(
        "{count} light sites, a {zip_len}-byte package (1 MiB app): submit -> RUNNING (every deploy and start answered) {:.2?}, submit -> finished {:.2?}; server RSS after {} KiB, peak {} KiB",
        seen.running,
        seen.finished,
        status_kib(server.pid(), "VmRSS"),
        status_kib(server.pid(), "VmHWM"),
    ));
    drop(server);
    rt.block_on(async {
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    });
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    federation(&mut criterion, &rt, &mut report);
    let count = std::env::var("FEDRUN_BENCH_SITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick() { 100 } else { 1000 });
    wide(&rt, &mut report, count);
    criterion.final_summary();
    println!("\nnet benchmarks:");
    for line in &report.0 {
        println!("  {line}");
    }
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
