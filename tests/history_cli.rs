//! `fedrun history` and `fedrun audit verify` against a data folder.
mod history_support;

use std::path::Path;
use std::process::{Command, Output};

use fedrun::blobs::BlobStore;
use fedrun::history::events::EventHistory;
use fedrun::history::record;
use history_support::lifecycle::{job, sample_history};

fn fedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(args)
        .output()
        .expect("the fedrun binary runs")
}

/// Runs `fedrun audit verify` on `dir`, with `--json` when asked.
fn audit_verify(dir: &Path, json: bool) -> Output {
    let dir = dir.to_str().expect("temporary folders have UTF-8 paths");
    let mut args = vec!["audit", "verify", "--data-dir", dir];
    if json {
        args.push("--json");
    }
    fedrun(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A data folder holding `sample_history(3)` with a snapshot after record 5.
fn data_folder(dir: &Path) -> usize {
    let events = sample_history(3);
    let mut history = EventHistory::open(dir).unwrap();
    history.append_batch(&events[..5]).unwrap();
    let state = history.replay(fedrun::lifecycle::State::new()).unwrap();
    history.take_snapshot(&state).unwrap();
    history.append_batch(&events[5..]).unwrap();
    history.close().unwrap();
    let blobs = BlobStore::open(dir.join("blobs")).unwrap();
    for n in 1..=3 {
        blobs.put_bytes(format!("package {n}").as_bytes()).unwrap();
    }
    events.len()
}

#[test]
fn history_prints_every_event_oldest_first_with_time_and_actor() {
    let dir = tempfile::tempdir().unwrap();
    let count = data_folder(dir.path());
    let out = fedrun(&["history", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), count, "{stdout}");
    assert!(lines[0].contains("server_started") && lines[0].contains("system"));
    assert!(
        lines[2].contains("2025-11-28T00:00:03.000Z"),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("admin alice (org-a, lead)"),
        "{}",
        lines[2]
    );
    assert!(lines[count - 1].contains("FINISHED:ABORTED"));
}

#[test]
fn history_json_is_one_object_per_line_and_job_filters() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let job_2 = job(2).to_string();
    let out = fedrun(&[
        "history",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--job",
        &job_2,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let values: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let types: Vec<&str> = values.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job_submitted", "schedule_attempted"]);
    assert!(values.iter().all(|v| v["job_id"] == job_2.as_str()));
    let seqs: Vec<u64> = values.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn audit_verify_passes_on_an_intact_history() {
    let dir = tempfile::tempdir().unwrap();
    let count = data_folder(dir.path());
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains("snapshot: covers records up to 5"),
        "{stdout}"
    );

    let out = audit_verify(dir.path(), true);
    assert_eq!(out.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["records_ok"], count as u64);
    assert_eq!(value["first_bad_seq"], serde_json::Value::Null);
}

#[test]
fn audit_verify_fails_naming_the_first_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        events.remove(record::seq_key(4)).unwrap();
        db.flush().unwrap();
    }
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("first bad record is 4"), "{stdout}");
    assert!(stdout.contains("record 4 is missing"), "{stdout}");

    let out = audit_verify(dir.path(), true);
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["first_bad_seq"], 4);
}

#[test]
fn audit_verify_reports_a_history_shorter_than_its_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let count = data_folder(dir.path());
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        events.remove(record::seq_key(count as u64)).unwrap();
        db.flush().unwrap();
    }
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("data loss: the anchor says records up to {count} were durable, but the history ends at {}", count - 1)), "{stdout}");
}

#[test]
fn offline_commands_say_when_a_server_holds_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let _server = EventHistory::open(dir.path()).unwrap();
    for args in [
        vec!["history", "--data-dir"],
        vec!["audit", "verify", "--data-dir"],
    ] {
        let mut args = args.clone();
        args.push(dir.path().to_str().unwrap());
        let out = fedrun(&args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("a fedrun server is running on"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn offline_commands_refuse_a_folder_without_history() {
    let dir = tempfile::tempdir().unwrap();
    let out = fedrun(&["history", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no fedrun history in"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("history").exists());
}

#[test]
fn audit_verify_names_a_damaged_package_blob() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let package = fedrun::blobs::hash_of(b"package 2");
    let path = dir.path().join("blobs").join(package.to_hex());
    std::fs::write(&path, b"package 2, changed").unwrap();
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("blob {package} is corrupt")),
        "{stdout}"
    );

    std::fs::remove_file(&path).unwrap();
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("blob {package} is not in the store")),
        "{stdout}"
    );
}

/// A data folder with two events (a server start and a site connecting): no job, so no
/// blob, and no snapshot.
fn folder_without_snapshot_or_blobs(dir: &Path) {
    let events = sample_history(0);
    let mut history = EventHistory::open(dir).unwrap();
    history.append_batch(&events[..2]).unwrap();
    history.close().unwrap();
}

#[test]
fn audit_verify_claims_only_the_checks_it_made() {
    let dir = tempfile::tempdir().unwrap();
    folder_without_snapshot_or_blobs(dir.path());
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let result = stdout
        .lines()
        .find(|line| line.starts_with("result:"))
        .unwrap_or_else(|| panic!("a result line: {stdout}"));
    assert!(result.contains("chain intact"), "{result}");
    assert!(result.contains("anchor matches record 2"), "{result}");
    assert!(
        !result.contains("snapshot"),
        "no snapshot was compared: {result}"
    );
    assert!(!result.contains("blob"), "no blob was checked: {result}");

    // Without its anchor, the audit claims no anchor check: it reports data loss.
    std::fs::remove_file(dir.path().join("anchor")).unwrap();
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(!stdout.contains("anchor matches"), "{stdout}");
    assert!(stdout.contains("the anchor is missing"), "{stdout}");
}

#[test]
fn audit_verify_names_the_snapshot_and_blob_checks_it_made() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let out = audit_verify(dir.path(), false);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("replay equals the snapshot at record 5"),
        "{stdout}"
    );
    // Three packages and the snapshot's state.
    assert!(stdout.contains("4 blobs intact"), "{stdout}");
}
