//! `fedrun list` and `fedrun show` against a data folder whose history the real engine made:
//! a scenario runs in the simulator, its events are stored in a sled history, and the built
//! binary reads them back. Expected values are taken from the events, never written in.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fedrun::history::events::EventHistory;
use fedrun::job::JobId;
use fedrun::lifecycle::view::job_view;
use fedrun::lifecycle::{Event, EventKind, RunStatus, ScheduleOutcome, State, StepResult};
use fedrun::settings::format_duration;
use serde_json::Value;

/// Four jobs on two sites, `max_jobs = 1`:
/// - `trained` needs both sites, and site-2 connects only at 15s, so its first tries find
///   too few sites; it then runs 90s and completes;
/// - `failing` waits its turn and ends `FINISHED:EXECUTION_EXCEPTION` (site-1 reports 101);
/// - `dropped` is deleted while queued (`FINISHED:ABORTED`, hidden);
/// - `stuck` needs three sites that never come, so it is still `SUBMITTED` at the end.
const SCENARIO: &str = r#"
[sim]
until = "20m"

[server]
max_jobs = 1
min_schedule_interval = "10s"

[[site]]
name = "site-1"
resources = { num_of_gpus = 2 }
[site.jobs.failing]
exit_code = 101
[[site]]
name = "site-2"
online_at = "15s"

[[job]]
name = "trained"
meta = { deploy_map = { app = ["server", "site-1", "site-2"] }, min_clients = 2, mandatory_clients = ["site-1"], resource_spec = { "site-1" = { num_of_gpus = 1 } } }
run_for = "90s"

[[job]]
name = "failing"
submit_at = "1s"
meta = { deploy_map = { app = ["server", "site-1"] } }
run_for = "30s"

[[job]]
name = "dropped"
submit_at = "2s"
meta = { deploy_map = { app = ["server", "site-1"] } }

[[job]]
name = "stuck"
submit_at = "3s"
meta = { deploy_map = { app = ["@ALL"] }, min_clients = 3 }

[[action]]
at = "5s"
do = "delete dropped"
"#;

/// The simulator's seed: it draws the job ids, and with this one two of them share their
/// first hex digit, which the ambiguous-prefix check needs.
const SEED: u64 = 3;

/// Runs the scenario and stores its events in a sled history in `dir`, left open.
fn store(dir: &Path) -> (Vec<Event>, EventHistory) {
    let checked = fedrun::sim::scenario::parse(SCENARIO).expect("the scenario is valid");
    let result = fedrun::sim::driver::run(&checked, SEED).expect("the scenario runs");
    let events: Vec<Event> = result
        .events()
        .collect::<Result<_, _>>()
        .expect("the stored history reads back");
    let mut history = EventHistory::open(dir).expect("a new history opens");
    history.append_batch(&events).expect("the events append");
    (events, history)
}

/// A data folder as a stopped server leaves it: the scenario's events, the history closed.
fn data_folder(dir: &Path) -> Vec<Event> {
    let (events, history) = store(dir);
    history.close().expect("the history closes");
    events
}

fn fedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(args)
        .output()
        .expect("the fedrun binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The id of the job submitted under `name`.
fn job_named(events: &[Event], name: &str) -> JobId {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::JobSubmitted { job_id, meta, .. } if meta.name == name => Some(*job_id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("job {name} was submitted"))
}

fn of_job(events: &[Event], id: JobId) -> impl Iterator<Item = &Event> {
    events.iter().filter(move |e| e.kind.job_id() == Some(id))
}

/// The terminal status the history records for a job, if any.
fn final_status(events: &[Event], id: JobId) -> Option<RunStatus> {
    of_job(events, id).find_map(|e| match &e.kind {
        EventKind::JobFinished { status, .. } => Some(*status),
        _ => None,
    })
}

fn list_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["list", "--data-dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = fedrun(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["job_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_hides_deleted_jobs_filters_and_goes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let trained = job_named(&events, "trained");
    let failing = job_named(&events, "failing");
    let dropped = job_named(&events, "dropped");
    let stuck = job_named(&events, "stuck");
    assert_eq!(final_status(&events, trained), Some(RunStatus::Completed));
    assert_eq!(
        final_status(&events, failing),
        Some(RunStatus::ExecutionException)
    );
    assert_eq!(final_status(&events, dropped), Some(RunStatus::Aborted));
    assert_eq!(final_status(&events, stuck), None);
    assert!(of_job(&events, dropped).any(|e| matches!(e.kind, EventKind::JobDeleted { .. })));

    // Default: the deleted job is hidden; the others come in submit order.
    let rows = list_json(dir.path(), &[]);
    assert_eq!(
        ids(&rows),
        [trained, failing, stuck].map(|id| id.to_string())
    );
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "FINISHED:COMPLETED",
            "FINISHED:EXECUTION_EXCEPTION",
            "SUBMITTED"
        ]
    );
    assert_eq!(rows[0]["submitter_name"], "admin");
    assert_eq!(rows[0]["submitter_role"], "project_admin");
    assert!(rows[2]["duration"].is_null(), "never started: no duration");

    // --all shows it, marked deleted.
    let rows = list_json(dir.path(), &["--all"]);
    assert_eq!(
        ids(&rows),
        [trained, failing, dropped, stuck].map(|id| id.to_string())
    );
    assert_eq!(rows[2]["deleted"], true);
    assert_eq!(rows[2]["status"], "FINISHED:ABORTED");

    // Exact status, FINISHED for any terminal one, and the name filter.
    let rows = list_json(dir.path(), &["--status", "SUBMITTED"]);
    assert_eq!(ids(&rows), [stuck.to_string()]);
    let rows = list_json(dir.path(), &["--status", "FINISHED"]);
    assert_eq!(ids(&rows), [trained, failing].map(|id| id.to_string()));
    let rows = list_json(dir.path(), &["--status", "FINISHED", "--all"]);
    assert_eq!(
        ids(&rows),
        [trained, failing, dropped].map(|id| id.to_string())
    );
    let rows = list_json(dir.path(), &["--name", "fail"]);
    assert_eq!(ids(&rows), [failing.to_string()]);
}

#[test]
fn list_text_is_an_aligned_table() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let out = fedrun(&["list", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header and three live jobs:\n{stdout}");
    assert!(lines[0].starts_with("JOB_ID"), "{stdout}");
    // Every column starts at the same place on every line.
    let status_at = lines[0].find("STATUS").unwrap();
    let time_at = lines[0].find("SUBMIT_TIME").unwrap();
    let trained = job_named(&events, "trained");
    let submit_iso = of_job(&events, trained)
        .find_map(|e| match &e.kind {
            EventKind::JobSubmitted { submit_time, .. } => Some(submit_time.to_iso8601()),
            _ => None,
        })
        .unwrap();
    assert!(lines[1].starts_with(&trained.to_string()), "{stdout}");
    assert_eq!(&lines[1][status_at..status_at + 18], "FINISHED:COMPLETED");
    assert!(lines[1][time_at..].starts_with(&submit_iso), "{stdout}");
    assert_eq!(&lines[3][status_at..status_at + 9], "SUBMITTED");
}

#[test]
fn list_refuses_an_unknown_status_naming_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let out = fedrun(&[
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--status",
        "DONE",
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown status `DONE`"), "{stderr}");
    for status in RunStatus::ALL {
        assert!(stderr.contains(status.as_str()), "{stderr}");
    }
    assert!(stderr.contains("FINISHED"), "{stderr}");
}

#[test]
fn show_prints_the_projection_of_a_finished_job_as_the_events_say() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let trained = job_named(&events, "trained");
    let out = fedrun(&[
        "show",
        "--data-dir",
        dir.path().to_str().unwrap(),
        &trained.to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let view: Value = serde_json::from_str(&stdout).unwrap();

    let mut keys: Vec<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec![
        "job_id",
        "name",
        "submitter_name",
        "submitter_org",
        "submitter_role",
        "submit_time",
        "submit_time_iso",
        "status",
        "finish_reason",
        "start_time",
        "duration",
        "schedule_count",
        "last_schedule_time",
        "schedule_history",
        "job_deploy_detail",
        "job_clients",
        "meta",
        "run",
        "archive",
        "deleted",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);

    let mine: Vec<&Event> = of_job(&events, trained).collect();
    let (submit_time, submitter) = mine
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::JobSubmitted {
                submit_time,
                submitter,
                ..
            } => Some((*submit_time, submitter.clone())),
            _ => None,
        })
        .unwrap();
    let (started, clients) = mine
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RunStarted { job_clients, .. } => Some((e.at, job_clients.clone())),
            _ => None,
        })
        .unwrap();
    let (finished, finish_reason) = mine
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::JobFinished { reason, .. } => Some((e.at, reason.clone())),
            _ => None,
        })
        .unwrap();
    let tries: Vec<&Event> = mine
        .iter()
        .copied()
        .filter(|e| matches!(e.kind, EventKind::ScheduleAttempted { .. }))
        .collect();
    assert!(tries.len() >= 2, "site-2 came late, so a try failed first");
    let last_try = tries.last().unwrap();
    assert!(matches!(
        &last_try.kind,
        EventKind::ScheduleAttempted {
            outcome: ScheduleOutcome::Dispatched { .. },
            ..
        }
    ));
    let deploys: Vec<(String, StepResult)> = mine
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DeployFinished {
                participant,
                result,
                ..
            } => Some((participant.clone(), result.clone())),
            _ => None,
        })
        .collect();
    let archive_hash = mine
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::WorkspaceArchived { hash, .. } => Some(hash.to_hex()),
            _ => None,
        })
        .expect("the workspace was archived");

    assert_eq!(view["job_id"], trained.to_string());
    assert_eq!(view["name"], "trained");
    assert_eq!(view["status"], "FINISHED:COMPLETED");
    assert_eq!(view["submitter_name"], submitter.name.as_str());
    assert_eq!(view["submitter_org"], submitter.org.as_str());
    assert_eq!(view["submitter_role"], submitter.role.as_str());
    assert_eq!(view["submit_time"], submit_time.as_secs());
    assert_eq!(view["submit_time_iso"], submit_time.to_iso8601());
    assert_eq!(view["start_time"], started.to_iso8601());
    assert_eq!(
        view["duration"],
        format_duration(finished.since(started)).as_str()
    );
    assert_eq!(view["schedule_count"], tries.len());
    assert_eq!(view["last_schedule_time"], last_try.at.to_iso8601());
    let history: Vec<&str> = view["schedule_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(history.len(), tries.len());
    for (n, (line, event)) in history.iter().zip(&tries).enumerate() {
        let head = format!("{} try {}: ", event.at.to_iso8601(), n + 1);
        assert!(line.starts_with(&head), "{line} / {head}");
    }
    assert!(history[0].contains("no resources"), "{}", history[0]);
    assert!(
        history[tries.len() - 1].ends_with("dispatched to site-1, site-2"),
        "{}",
        history[tries.len() - 1]
    );
    let detail: Vec<&str> = view["job_deploy_detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(detail.len(), deploys.len());
    assert_eq!(detail[0], "server: OK");
    for (participant, result) in &deploys {
        assert_eq!(result, &StepResult::Ok);
        assert!(detail.contains(&format!("{participant}: OK").as_str()));
    }
    assert_eq!(view["job_clients"], serde_json::to_value(&clients).unwrap());
    assert_eq!(clients, ["site-1", "site-2"]);
    assert_eq!(
        view["meta"],
        serde_json::json!({
            "deploy_map": {"app": ["server", "site-1", "site-2"]},
            "min_clients": 2,
            "mandatory_clients": ["site-1"],
            "resource_spec": {"site-1": {"num_of_gpus": 1.0}},
        })
    );
    assert_eq!(view["run"], "stopped");
    assert_eq!(
        view["archive"],
        serde_json::json!({"state": "archived", "hash": archive_hash})
    );
    assert_eq!(view["deleted"], false);
    assert_eq!(view["finish_reason"], finish_reason.as_str());

    // The text form names the same values, and a unique prefix of the id is enough.
    let prefix = &trained.to_string()[..8];
    let out = fedrun(&["show", "--data-dir", dir.path().to_str().unwrap(), prefix]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let value_of = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} in\n{stdout}"))
            .to_string()
    };
    assert_eq!(value_of("job_id"), trained.to_string());
    assert_eq!(value_of("status"), "FINISHED:COMPLETED");
    assert_eq!(value_of("start_time"), started.to_iso8601());
    assert_eq!(
        value_of("duration"),
        format_duration(finished.since(started))
    );
    assert_eq!(value_of("job_clients"), "site-1, site-2");
    assert_eq!(value_of("archive"), format!("archived {archive_hash}"));
    for line in history.iter().chain(&detail) {
        assert!(
            stdout.contains(&format!("\n  {line}\n")),
            "{line} in\n{stdout}"
        );
    }
}

#[test]
fn show_finds_deleted_jobs_and_refuses_unknown_and_ambiguous_ids() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let data = dir.path().to_str().unwrap();
    let dropped = job_named(&events, "dropped");
    let out = fedrun(&["show", "--data-dir", data, &dropped.to_string(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["deleted"], true);
    assert_eq!(view["run"], "not_started");
    assert_eq!(
        view["archive"],
        serde_json::json!({"state": "no_workspace"})
    );

    let unknown = "00000000-0000-4000-8000-000000000000";
    assert!(
        !events
            .iter()
            .any(|e| e.kind.job_id().is_some_and(|id| id.to_string() == unknown)),
        "the made-up id is not a real one"
    );
    let out = fedrun(&["show", "--data-dir", data, unknown]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains(&format!("no job with id {unknown}")),
        "{}",
        text(&out.stderr)
    );

    // An empty id names no job (rather than every job).
    let out = fedrun(&["show", "--data-dir", data, ""]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no job with id"),
        "{}",
        text(&out.stderr)
    );
    // A one-character prefix that two of the drawn ids share.
    let all: Vec<String> = ["trained", "failing", "dropped", "stuck"]
        .iter()
        .map(|n| job_named(&events, n).to_string())
        .collect();
    let shared = all.iter().find_map(|a| {
        let head = &a[..1];
        (all.iter().filter(|b| b.starts_with(head)).count() > 1).then(|| head.to_string())
    });
    let ambiguous = shared.expect("SEED draws two ids with the same first digit");
    let out = fedrun(&["show", "--data-dir", data, &ambiguous]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is ambiguous"), "{stderr}");
    for id in all.iter().filter(|id| id.starts_with(&ambiguous)) {
        assert!(stderr.contains(id.as_str()), "{id} in {stderr}");
    }
}

#[test]
fn list_and_show_refuse_a_folder_a_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    // This process holding the history open is what a running server looks like. (It is
    // never closed and reopened here: the lock might outlive a close for a moment while
    // another test's child process, forked in between, still shares the descriptor.)
    let (events, _held) = store(dir.path());
    let data = dir.path().to_str().unwrap();
    let id = job_named(&events, "trained").to_string();
    for args in [
        vec!["list", "--data-dir", data],
        vec!["show", "--data-dir", data, &id],
    ] {
        let out = fedrun(&args);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("a fedrun server is running on"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_running_job_lasts_until_now() {
    let events = {
        let checked = fedrun::sim::scenario::parse(SCENARIO).unwrap();
        let result = fedrun::sim::driver::run(&checked, SEED).unwrap();
        result.events().collect::<Result<Vec<_>, _>>().unwrap()
    };
    let trained = job_named(&events, "trained");
    let started = events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::RunStarted { job_id, .. } if *job_id == trained))
        .unwrap();
    let mut state = State::new();
    for event in &events[..=started] {
        state.apply_checked(event).unwrap();
    }
    let job = state.job(&trained).unwrap();
    let at = events[started].at;
    let view = job_view(job, at.plus(Duration::from_millis(90_250)));
    assert_eq!(view.status, RunStatus::Running);
    assert_eq!(view.run, "running");
    assert_eq!(view.start_time, Some(at.to_iso8601()));
    assert_eq!(view.duration.as_deref(), Some("1m30s250ms"));
}
