//! `fedrun demo --net`: the demo as a real federation on loopback. The data folder gets a
//! freshly provisioned project; the server and three site agents run as separate `fedrun`
//! processes (each in its own process group, so a terminal's Ctrl-C reaches only the
//! demo), and the jobs are submitted, followed and aborted through the admin CLI over
//! mutual TLS, as an operator would.
//!
//! On Ctrl-C or SIGTERM the demo aborts every unfinished job through the API, waits
//! (bounded) for the jobs to settle, so no app is left running, then stops the sites and
//! the server with SIGTERM and exits 130.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

const JOBS: [&str; 3] = ["hello-complete", "hello-fail", "long-running"];
const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];
const ADMIN: &str = "admin@demo.local";
/// How often the demo asks the server for the jobs' statuses.
const POLL: Duration = Duration::from_millis(250);
/// How long the interrupted jobs get to settle: `abort_grace` (10 s) plus a margin.
const SETTLE_BOUND: Duration = Duration::from_secs(25);
/// The exit code of an interrupted demo (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The processes of the federation; on drop, whatever still runs gets SIGTERM, then
/// SIGKILL, so a failing demo leaves no server or agent behind.
struct Federation {
    server: Option<Child>,
    sites: Vec<Child>,
    admin_kit: PathBuf,
    /// Where the server listens (a free loopback port).
    addr: String,
}

impl Federation {
    fn fedrun(&self) -> Command {
        let mut command = Command::new(exe());
        command.env("FEDRUN_KIT", &self.admin_kit);
        command
    }

    /// Runs an admin command with `--json` and parses its answer: JSON values, one per
    /// line for the listing commands.
    fn admin_json(&self, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self
            .fedrun()
            .args(args)
            .args(["--json", "--server", &self.addr])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running fedrun {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "fedrun {} failed: {}",
                args.join(" "),
                super::term::clean(String::from_utf8_lossy(&out.stderr).trim())
            );
        }
        serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<serde_json::Value>()
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading the answer of fedrun {}", args.join(" ")))
    }

    /// Runs an admin command with `--json` whose answer is one JSON object.
    fn admin_one(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.admin_json(args)?
            .into_iter()
            .next()
            .with_context(|| format!("fedrun {} answered nothing", args.join(" ")))
    }

    /// Stops the sites, then the server, with SIGTERM, and waits for them (bounded).
    fn stop(&mut self) {
        for child in self.sites.iter_mut().chain(self.server.iter_mut()) {
            terminate(child);
        }
        self.sites.clear();
        self.server = None;
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to `child`'s process group, a bounded wait, then SIGKILL.
fn terminate(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: signals to the process group of a child this demo started and has not
    // reaped yet (its own group: it was started with process_group(0)).
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fedrun"))
}

/// Starts `fedrun args` in its own process group.
fn spawn(args: &[&std::ffi::OsStr], stdout: Stdio, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting fedrun")
}

fn say(text: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // A closed stdout stops the demo cleanly, as an interrupt does.
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
}

macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

/// Runs `fedrun demo --net`; the returned code is the process exit code.
pub fn run(data_dir: Option<PathBuf>, examples: &Path, timeout: Duration) -> anyhow::Result<i32> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let data_dir = match data_dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("fedrun-demo-net-")
            .tempdir()
            .context("creating a temporary data folder")?
            .keep(),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    say!("fedrun demo --net: data folder {}", data_dir.display());
    let kits = provision(&data_dir)?;
    let mut federation = Federation {
        server: None,
        sites: Vec::new(),
        admin_kit: kits.join(ADMIN),
        addr: String::new(),
    };
    let addr = start_server(&mut federation, &kits, &data_dir)?;
    federation.addr = addr.clone();
    say!(
        "server listening on {addr} (log: {}/server.log)",
        data_dir.display()
    );
    for site in SITES {
        let work = data_dir.join("sites").join(site);
        let child = spawn(
            &[
                "site".as_ref(),
                "--kit".as_ref(),
                kits.join(site).as_os_str(),
                "--work-dir".as_ref(),
                work.as_os_str(),
                "--server".as_ref(),
                addr.as_ref(),
            ],
            Stdio::null(),
            &data_dir.join(format!("{site}.log")),
        )?;
        federation.sites.push(child);
    }
    wait_for_sites(&federation)?;
    say!("sites {} connected over mutual TLS", SITES.join(", "));

    let result = run_jobs(&federation, examples, timeout);
    match result {
        Ok(ids) if !interrupted() => {
            federation.stop();
            say!("");
            for (id, name) in &ids {
                say!("{name:<15} {id}");
            }
            say!("");
            say!(
                "inspect it: fedrun list --data-dir {0}/server ; fedrun audit verify --data-dir {0}/server",
                data_dir.display()
            );
            Ok(0)
        }
        other => {
            if let Err(error) = &other {
                eprintln!("error: {error:#}");
            }
            if interrupted() {
                eprintln!("interrupted: aborting the unfinished jobs and stopping their apps");
            }
            abort_unfinished(&federation);
            federation.stop();
            eprintln!("stopped; data folder {}", data_dir.display());
            Ok(if interrupted() { EXIT_INTERRUPTED } else { 1 })
        }
    }
}

/// Writes the project file and provisions it into `DATA/kits`.
fn provision(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let project = data_dir.join("project.toml");
    let mut text = String::from(
        "name = \"fedrun-demo\"\n\n[server]\nhost = \"localhost\"\norg = \"demo\"\n\n",
    );
    for site in SITES {
        text.push_str(&format!("[[site]]\nname = \"{site}\"\norg = \"demo\"\n\n"));
    }
    text.push_str(&format!(
        "[[admin]]\nname = \"{ADMIN}\"\norg = \"demo\"\nrole = \"project_admin\"\n"
    ));
    std::fs::write(&project, text).with_context(|| format!("writing {}", project.display()))?;
    let kits = data_dir.join("kits");
    let out = Command::new(exe())
        .arg("provision")
        .arg(&project)
        .arg("-o")
        .arg(&kits)
        .output()
        .context("running fedrun provision")?;
    if !out.status.success() {
        bail!(
            "provisioning failed: {}",
            super::term::clean(String::from_utf8_lossy(&out.stderr).trim())
        );
    }
    Ok(kits)
}

/// Starts the server on a free loopback port and returns the address it printed.
fn start_server(
    federation: &mut Federation,
    kits: &Path,
    data_dir: &Path,
) -> anyhow::Result<String> {
    let server_data = data_dir.join("server");
    let mut child = spawn(
        &[
            "serve".as_ref(),
            "--kit".as_ref(),
            kits.join("localhost").as_os_str(),
            "--data-dir".as_ref(),
            server_data.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        Stdio::piped(),
        &data_dir.join("server.log"),
    )?;
    let stdout = child.stdout.take().context("the server's stdout")?;
    federation.server = Some(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the server did not say where it listens within 30 s (see server.log)")?;
    let addr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("unexpected first line of the server: {line}"))?;
    Ok(addr.to_string())
}

fn wait_for_sites(federation: &Federation) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = federation.admin_json(&["sites"])?.len();
        if count == SITES.len() {
            return Ok(());
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!("the sites did not connect within 30 s (see the site logs)");
        }
        std::thread::sleep(POLL);
    }
}

/// A job's status and whether it has settled (terminal, run over, archive not pending),
/// from `fedrun show --json`.
fn status_of(view: &serde_json::Value) -> (String, bool) {
    let status = view["status"].as_str().unwrap_or("?").to_string();
    let run_over = matches!(view["run"].as_str(), Some("not_started" | "stopped"));
    let archive_pending = view["archive"]["state"].as_str() == Some("pending");
    let terminal = status
        .parse::<fedrun::lifecycle::RunStatus>()
        .is_ok_and(|s| s.is_terminal());
    let settled = terminal && run_over && !archive_pending;
    (status, settled)
}

/// Submits the example jobs, prints each status change, aborts the long one once the
/// others are done, and returns once all three have settled.
fn run_jobs(
    federation: &Federation,
    examples: &Path,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, &'static str)>> {
    let started = Instant::now();
    let mut ids = Vec::new();
    for job in JOBS {
        let folder = examples.join(job);
        let answer = federation.admin_one(&["submit", &folder.to_string_lossy()])?;
        let id = answer["job_id"]
            .as_str()
            .context("the submit answer has no job_id")?
            .to_string();
        say!(
            "[{:>6.2}s] submitted {job} as {id}",
            started.elapsed().as_secs_f64()
        );
        ids.push((id, job));
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut running_since = None;
    let mut abort_sent = false;
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        let mut all_settled = true;
        let mut others_done = true;
        for (id, name) in &ids {
            let view = federation.admin_one(&["show", id])?;
            let (status, settled) = status_of(&view);
            all_settled &= settled;
            if *name != "long-running" {
                others_done &= status.starts_with("FINISHED");
            } else if status == "RUNNING" && running_since.is_none() {
                running_since = Some(Instant::now());
            }
            if seen.get(id) != Some(&status) {
                let from = seen.get(id).cloned().unwrap_or_else(|| "(new)".into());
                let reason = view["finish_reason"]
                    .as_str()
                    .filter(|_| status.starts_with("FINISHED"))
                    .map(|r| format!(" ({})", super::term::clean(r)))
                    .unwrap_or_default();
                say!(
                    "[{:>6.2}s] {name:<15} {from} -> {status}{reason}",
                    started.elapsed().as_secs_f64()
                );
                seen.insert(id.clone(), status);
            }
        }
        if all_settled {
            say!(
                "all jobs settled in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(ids);
        }
        if !abort_sent
            && others_done
            && running_since.is_some_and(|t: Instant| t.elapsed() >= Duration::from_secs(2))
        {
            say!(
                "[{:>6.2}s] aborting long-running",
                started.elapsed().as_secs_f64()
            );
            federation.admin_one(&["abort", &ids[2].0])?;
            abort_sent = true;
        }
        if Instant::now() >= deadline {
            bail!("the jobs did not settle within {} s", timeout.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// Aborts every job that is not finished and waits (bounded) until every job settled.
fn abort_unfinished(federation: &Federation) {
    let Ok(list) = federation.admin_json(&["list"]) else {
        eprintln!("warning: cannot list the jobs; stopping the federation as it is");
        return;
    };
    let ids: Vec<String> = list
        .iter()
        .filter_map(|job| job["job_id"].as_str().map(str::to_string))
        .collect();
    for id in &ids {
        if let Ok(view) = federation.admin_one(&["show", id]) {
            if !status_of(&view).0.starts_with("FINISHED") {
                if let Err(error) = federation.admin_one(&["abort", id]) {
                    eprintln!("warning: {error:#}");
                }
            }
        }
    }
    let deadline = Instant::now() + SETTLE_BOUND;
    while Instant::now() < deadline {
        let settled = ids.iter().all(|id| {
            federation
                .admin_one(&["show", id])
                .is_ok_and(|view| status_of(&view).1)
        });
        if settled {
            return;
        }
        std::thread::sleep(POLL);
    }
    eprintln!(
        "warning: the jobs did not settle within {} s",
        SETTLE_BOUND.as_secs()
    );
}
