//! Crash test of app starts: the test binary re-runs itself as a child that starts apps
//! one after another; the parent kills it with SIGKILL at a random moment (often in the
//! middle of a start: spawning the wrapper, writing the record, releasing it), then does
//! what a restarted site does (re-attach every run folder and stop what it finds) and
//! checks against /proc that no process of the round's apps is left. A start cut short at
//! any moment must leave nothing that a restarted site cannot find.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fedrun::job::JobId;
use fedrun::site::process::{self, AppLaunch, Reattached};
use fedrun::site::workspace;
use rand::Rng;

const CHILD_ENV: &str = "FEDRUN_SITE_CRASH_CHILD_DIR";
const TAG_ENV: &str = "FEDRUN_SITE_CRASH_TAG";
const TEST_NAME: &str = "no_app_outlives_a_crash_during_its_start_unfound";
const ROUNDS: usize = 64;
/// The most apps a child starts before it gives up waiting to be killed.
const MAX_STARTS: u32 = 50;
/// Upper bound for anything a round waits on.
const BOUND: Duration = Duration::from_secs(20);
/// The whole test must end in this time.
const TEST_BOUND: Duration = Duration::from_secs(240);

fn job(n: u32) -> JobId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    bytes[15] = 0xc7;
    JobId(uuid::Uuid::from_bytes(bytes))
}

/// The child: start apps that run long, one after another, until killed. Each app carries
/// the round's tag in its environment, so the parent can find every process of the round.
fn child(root: &Path, tag: &str) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("child runtime");
    runtime.block_on(async {
        let mut out = std::io::stdout().lock();
        let mut apps = Vec::new();
        // Far more starts than the parent lets happen; the cap only keeps a parent that
        // fails to kill from leaving an endless stream of apps behind.
        for n in 0..MAX_STARTS {
            let job_id = job(n);
            let run_dir = workspace::job_dir(root, job_id);
            let app_dir = run_dir.join("app");
            std::fs::create_dir_all(&app_dir).expect("child creates the app folder");
            std::fs::write(
                app_dir.join("run.toml"),
                format!("command = \"sleep\"\nargs = [\"1000\"]\n[env]\n{TAG_ENV} = \"{tag}\"\n"),
            )
            .expect("child writes the run file");
            writeln!(out, "START {n}").expect("child writes to its pipe");
            out.flush().expect("child flushes its pipe");
            let launch = AppLaunch {
                job_id,
                site: "site-1".to_string(),
                run_dir,
                app_dir,
            };
            apps.push(process::start(&launch).expect("child starts an app"));
            writeln!(out, "STARTED {n}").expect("child writes to its pipe");
            out.flush().expect("child flushes its pipe");
        }
        for app in &apps {
            app.stop(Duration::ZERO);
            let _ = app.wait().await;
        }
    });
    std::process::exit(1)
}

/// Kills every live process of a round's apps when dropped, so a failing round leaves
/// nothing behind.
struct Cleanup<'a>(&'a str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for pid in tagged_processes(self.0) {
            // SAFETY: plain syscall on a pid whose environment carries this round's tag.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The live (not zombie) processes whose environment carries `TAG_ENV=tag`.
fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("{TAG_ENV}={tag}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        if matches!(state, Some("Z") | Some("X") | None) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Waits, bounded, until `pid` has exited (through its pidfd). False if it is still
/// alive when the bound runs out.
fn wait_exit(pid: i32, bound: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true;
    }
    let mut poll = libc::pollfd {
        fd: fd as i32,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads one valid pollfd; close closes the fd opened above.
    let ready = unsafe { libc::poll(&mut poll, 1, bound.as_millis() as i32) };
    unsafe { libc::close(fd as i32) };
    ready == 1
}

/// What the restarted site found in one run folder.
#[derive(Debug, Default)]
struct Found {
    running: usize,
    ended: usize,
    cut_short: usize,
    no_record: usize,
}

/// Does what a restarted site does with every run folder, and stops whatever runs.
async fn recover(root: &Path, found: &mut Found) {
    for job_id in workspace::job_ids(root) {
        let run_dir: PathBuf = workspace::job_dir(root, job_id);
        let record = std::fs::read(process::record_path(&run_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<process::ProcessRecord>(&b).ok());
        match process::reattach(&run_dir).expect("reattach") {
            Reattached::Running(app) => {
                found.running += 1;
                app.stop(Duration::ZERO);
                tokio::time::timeout(BOUND, app.wait())
                    .await
                    .expect("a stopped app ends within the bound")
                    .expect("the watcher reports the end");
            }
            Reattached::Ended(_) => found.ended += 1,
            Reattached::NotFound => match record {
                Some(_) => found.cut_short += 1,
                None => found.no_record += 1,
            },
        }
    }
}

#[test]
fn no_app_outlives_a_crash_during_its_start_unfound() {
    if let (Some(dir), Some(tag)) = (std::env::var_os(CHILD_ENV), std::env::var(TAG_ENV).ok()) {
        child(Path::new(&dir), &tag);
    }
    let test_started = Instant::now();
    let exe = std::env::current_exe().expect("test binary");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = rand::thread_rng();
    let mut found = Found::default();
    for round in 0..ROUNDS {
        assert!(
            test_started.elapsed() < TEST_BOUND,
            "round {round}: the test ran out of time"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let tag = format!("{:016x}", rng.gen::<u64>());
        let _cleanup = Cleanup(&tag);
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(TAG_ENV, &tag)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Kill once the child has begun a random start, after a random delay of up to a
        // few starts' length: the kill lands anywhere in that start or a later one. The
        // sleep picks the moment of the crash; it waits for nothing.
        let kill_at_start = rng.gen_range(0..3);
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: the child ended before being killed"))
                .expect("read the child's pipe");
            // The harness prints the test's name without a line end before the first line.
            if line.ends_with(&format!("START {kill_at_start}")) {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..20_000)));
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");

        runtime.block_on(recover(dir.path(), &mut found));
        // A wrapper that never got its release and was never recorded leaves by itself when
        // its starter dies; give every tagged process the bound to be gone.
        let deadline = Instant::now() + BOUND;
        let mut left = Vec::new();
        for pid in tagged_processes(&tag) {
            if !wait_exit(pid, deadline.saturating_duration_since(Instant::now())) {
                left.push(pid);
            }
        }
        if !left.is_empty() {
            let described: Vec<String> = left
                .iter()
                .map(|pid| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                        .unwrap_or_default();
                    format!("{pid}: {cmdline}")
                })
                .collect();
            panic!(
                "round {round}: processes left that no restart found: {described:?} ({found:?})"
            );
        }
    }
    eprintln!("after {ROUNDS} rounds the restarted site found: {found:?}");
    assert!(
        found.running > 0,
        "no round killed the child after an app was running: the test exercised too little"
    );
}
