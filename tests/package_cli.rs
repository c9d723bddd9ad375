//! `fedrun package` as a user runs it: exit codes, the printed hash, the written file.

mod common;

use std::process::Command;

fn fedrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
}

#[test]
fn a_valid_job_is_written_and_its_hash_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    common::write_job(
        &job,
        r#"{"deploy_map": {"app": ["server", "site-1"]}}"#,
        &["app"],
    );
    let out = tmp.path().join("job.fedrun.zip");
    let run = fedrun()
        .arg("package")
        .arg(&job)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let written = std::fs::read(&out).unwrap();
    let hash = blake3::hash(&written).to_hex().to_string();
    assert!(stdout.contains(&format!("blake3:   {hash}")), "{stdout}");
    assert!(
        stdout.contains("app:      app -> server, site-1 (runs true)"),
        "{stdout}"
    );

    // The written file is a package too, with the same hash.
    let run = fedrun()
        .args(["package", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["blake3"], hash.as_str());
    assert_eq!(report["ok"], true);
}

#[test]
fn a_bad_job_exits_non_zero_and_says_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    common::write_job(
        &job,
        r#"{"deploy_map": {"app": ["server", "site-1"]}}"#,
        &["app"],
    );
    std::os::unix::fs::symlink("/etc/passwd", job.join("app/passwd")).unwrap();
    let out = tmp.path().join("never.zip");
    let run = fedrun()
        .arg("package")
        .arg(&job)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(
        stderr.contains("app/passwd: symbolic links are not allowed"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written for a refused package");

    let run = fedrun()
        .args(["package", "--json"])
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["error"].as_str().unwrap().contains("app/passwd"));
}

#[test]
fn limit_flags_raise_and_lower_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    common::write_job(
        &job,
        r#"{"deploy_map": {"app": ["server", "site-1"]}}"#,
        &["app"],
    );
    std::fs::write(job.join("app/model.bin"), vec![1u8; 2048]).unwrap();
    let run = fedrun()
        .arg("package")
        .arg(&job)
        .args(["--entry-size-max", "1KiB"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(
        stderr.contains("app/model.bin: 2048 bytes uncompressed, over the limit of 1024 bytes"),
        "{stderr}"
    );
    let run = fedrun()
        .arg("package")
        .arg(&job)
        .args(["--entry-size-max", "2KiB"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
}
