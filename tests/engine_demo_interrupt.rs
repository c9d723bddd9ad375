//! `fedrun demo` interrupted: Ctrl-C (SIGINT) while jobs run aborts them, stops every app,
//! and exits 130, leaving no process behind; a closed stdout is not a panic.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod proc_support;
use proc_support::{line_within, output_within, processes_under as processes_in};

fn demo(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command
        .args(["demo", "--timeout-secs", "60", "--data-dir"])
        .arg(data)
        .arg("--examples")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"));
    command
}

#[test]
fn ctrl_c_aborts_the_running_jobs_stops_their_apps_and_exits_130() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    let mut child = demo(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fedrun runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // Wait for the long job to run: its app is then a live process on every site.
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
    let apps = processes_in(&data);
    assert!(!apps.is_empty(), "no app runs in {}", data.display());
    // SAFETY: a signal to the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Wait for the exit itself, bounded: abort_grace is 10 s and the app stops at once.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let out = done_rx
        .recv_timeout(Duration::from_secs(45))
        .expect("the demo did not end within 45 s of SIGINT")
        .expect("demo output");
    let status = out.status;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert!(stderr.contains("SIGINT"), "stderr:\n{stderr}");
    let left = processes_in(&data);
    assert!(left.is_empty(), "processes left after the demo: {left:?}");
    // The interrupt is history like any abort: the offline audit passes and the long job
    // ended ABORTED.
    let list = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["list", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .expect("fedrun list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("FINISHED:ABORTED"), "{listed}");
    let audit = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("fedrun audit");
    assert!(audit.status.success(), "{:?}", audit);
}

#[test]
fn a_closed_stdout_stops_the_demo_without_a_panic_or_a_process_left() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    let mut child = demo(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fedrun runs");
    // Read the first line, then close the pipe, as `fedrun demo | head -1` does (the
    // reading thread owns the pipe and drops it after the line).
    let first = line_within(
        child.stdout.take().expect("stdout"),
        Duration::from_secs(60),
        "the demo's first line",
    );
    assert!(first.starts_with("fedrun demo"), "{first}");
    let out = output_within(child, Duration::from_secs(60), "the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    assert!(stderr.contains("stdout closed"), "stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(130), "stderr:\n{stderr}");
    let left = processes_in(&data);
    assert!(left.is_empty(), "processes left after the demo: {left:?}");
}

#[test]
fn reader_commands_whose_stdout_closes_end_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    let demo = output_within(
        demo(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("demo runs"),
        Duration::from_secs(60),
        "the demo",
    );
    assert!(demo.status.success(), "{demo:?}");
    for args in [
        &["history", "--data-dir"][..],
        &["audit", "verify", "--data-dir"][..],
        &["list", "--data-dir"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fedrun"))
            .args(args)
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fedrun runs");
        // Close the pipe at once, as `fedrun ... | true` does.
        drop(child.stdout.take());
        let out = output_within(child, Duration::from_secs(60), "the reader command");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} stderr:\n{stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?} {:?}: {stderr}",
            out.status
        );
    }
}
