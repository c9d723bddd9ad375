//! `fedrun demo --net`: the server and three site agents as separate processes on
//! loopback, provisioned on the fly, the jobs driven through the admin CLI. It ends with
//! the three endings and no process left; Ctrl-C aborts what runs, stops everything and
//! exits 130.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod proc_support;
use proc_support::processes_of as processes_in;

/// Kills what a failed test left behind.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            for pid in processes_in(self.0) {
                // SAFETY: a signal to a process working in this test's own temp folder.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn demo_net(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command
        .args(["demo", "--net", "--timeout-secs", "60", "--data-dir"])
        .arg(data)
        .arg("--examples")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .env_remove("FEDRUN_KIT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` to exit, bounded; its status code and stderr.
fn finish(child: Child, bound: Duration) -> (Option<i32>, String, String) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(bound)
        .expect("the demo did not end in time")
        .expect("demo output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn audit_passes(server_data: &Path) {
    let audit = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["audit", "verify", "--data-dir"])
        .arg(server_data)
        .output()
        .expect("fedrun audit");
    assert!(audit.status.success(), "{audit:?}");
}

#[test]
fn the_networked_demo_runs_the_three_endings_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    std::fs::create_dir_all(&data).expect("data folder");
    let _cleanup = Cleanup(&data);
    let child = demo_net(&data).spawn().expect("fedrun runs");
    let (code, stdout, stderr) = finish(child, Duration::from_secs(90));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "sites site-1, site-2, site-3 connected over mutual TLS",
        "hello-complete  RUNNING -> FINISHED:COMPLETED",
        "-> FINISHED:EXECUTION_EXCEPTION",
        "long-running    RUNNING -> FINISHED:ABORTED",
        "all jobs settled",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
    let left = processes_in(&data);
    assert!(left.is_empty(), "processes left: {left:?}");
    audit_passes(&data.join("server"));
}

#[test]
fn ctrl_c_during_the_networked_demo_aborts_stops_everything_and_exits_130() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    std::fs::create_dir_all(&data).expect("data folder");
    let _cleanup = Cleanup(&data);
    let mut child = demo_net(&data).spawn().expect("fedrun runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let bound = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = bound.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("long-running never ran:\n{}", seen.join("\n")));
        let running = line.contains("long-running") && line.ends_with("-> RUNNING");
        seen.push(line);
        if running {
            break;
        }
    }
    assert!(!processes_in(&data).is_empty(), "nothing runs");
    // SAFETY: a signal to the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, _, stderr) = finish(child, Duration::from_secs(60));
    assert_eq!(code, Some(130), "stderr:\n{stderr}");
    assert!(stderr.contains("interrupted"), "stderr:\n{stderr}");
    let left = processes_in(&data);
    assert!(left.is_empty(), "processes left: {left:?}");
    let list = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["list", "--json", "--data-dir"])
        .arg(data.join("server"))
        .output()
        .expect("fedrun list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("FINISHED:ABORTED"), "{listed}");
    assert!(!listed.contains("\"RUNNING\""), "{listed}");
    audit_passes(&data.join("server"));
}
