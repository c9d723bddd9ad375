//! `fedrun demo` as a new user runs it: it exits 0 within its bound, shows the three
//! endings, one job's history and a passing audit, and leaves a history that the offline
//! commands can read.

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_runs_the_examples_to_their_three_endings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let out = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["demo", "--timeout-secs", "60", "--data-dir"])
        .arg(&data)
        .arg("--examples")
        .arg(&examples)
        .output()
        .expect("fedrun runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "hello-complete  RUNNING -> FINISHED:COMPLETED",
        "hello-fail      RUNNING -> FINISHED:EXECUTION_EXCEPTION",
        "long-running    RUNNING -> FINISHED:ABORTED",
        "history of hello-fail",
        "audit: OK",
    ] {
        assert!(
            stdout.contains(needle),
            "output lacks {needle:?}:\n{stdout}"
        );
    }
    // The history it leaves is a normal data folder: the offline audit agrees.
    let audit = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("fedrun runs");
    assert!(
        audit.status.success(),
        "{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
}
