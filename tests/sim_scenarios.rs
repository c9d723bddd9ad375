//! Scenario tests: each `tests/scenarios/NAME.toml` runs in the simulator and its result is
//! compared with `tests/scenarios/NAME.expect.toml`, whose values cite the SPEC rule and the
//! arithmetic they follow from. Every scenario also runs twice to show the output is the
//! same, byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedrun::job::JobId;
use fedrun::lifecycle::{EventKind, Job};
use fedrun::settings::parse_duration;
use fedrun::sim::driver::{offset, SimResult};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    ended: String,
    #[serde(default)]
    jobs: BTreeMap<String, JobExpect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobExpect {
    status: Option<String>,
    schedule_count: Option<u32>,
    job_clients: Option<Vec<String>>,
    job_deploy_detail: Option<Vec<String>>,
    dispatched_at: Option<String>,
    running_at: Option<String>,
    finished_at: Option<String>,
    schedule_times: Option<Vec<String>>,
    reason_contains: Option<String>,
    history_contains: Option<String>,
    deleted: Option<bool>,
    restored: Option<bool>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn dur(text: &str) -> Duration {
    parse_duration(text).unwrap_or_else(|e| panic!("bad duration in expect file: {e}"))
}

fn times_of(result: &SimResult, job_id: JobId, pick: fn(&EventKind) -> bool) -> Vec<Duration> {
    result
        .events()
        .map(|e| e.expect("the stored history reads back"))
        .filter(|e| e.kind.job_id() == Some(job_id) && pick(&e.kind))
        .map(|e| offset(e.at))
        .collect()
}

fn first_time(result: &SimResult, job_id: JobId, pick: fn(&EventKind) -> bool) -> Option<Duration> {
    times_of(result, job_id, pick).first().copied()
}

fn check_job(scenario: &str, name: &str, want: &JobExpect, job: &Job, result: &SimResult) {
    let ctx = format!("{scenario}: job {name}");
    let id = job.id;
    if let Some(status) = &want.status {
        assert_eq!(
            job.status.as_str(),
            status,
            "{ctx}: status (reason: {:?})",
            job.finish_reason
        );
    }
    if let Some(count) = want.schedule_count {
        assert_eq!(
            job.schedule_count, count,
            "{ctx}: schedule_count; history {:?}",
            job.schedule_history
        );
    }
    if let Some(clients) = &want.job_clients {
        assert_eq!(&*job.run.job_clients, clients, "{ctx}: job_clients");
    }
    if let Some(detail) = &want.job_deploy_detail {
        assert_eq!(&job.run.deploy_detail(), detail, "{ctx}: job_deploy_detail");
    }
    if let Some(at) = &want.dispatched_at {
        let got = first_time(result, id, |k| matches!(k, EventKind::JobDispatched { .. }));
        assert_eq!(got, Some(dur(at)), "{ctx}: dispatched_at");
    }
    if let Some(at) = &want.running_at {
        let got = first_time(result, id, |k| matches!(k, EventKind::RunStarted { .. }));
        assert_eq!(got, Some(dur(at)), "{ctx}: running_at");
    }
    if let Some(at) = &want.finished_at {
        let got = first_time(result, id, |k| matches!(k, EventKind::JobFinished { .. }));
        assert_eq!(
            got,
            Some(dur(at)),
            "{ctx}: finished_at (reason: {:?})",
            job.finish_reason
        );
    }
    if let Some(times) = &want.schedule_times {
        let got = times_of(result, id, |k| {
            matches!(k, EventKind::ScheduleAttempted { .. })
        });
        let want: Vec<Duration> = times.iter().map(|t| dur(t)).collect();
        assert_eq!(got, want, "{ctx}: schedule_times");
    }
    if let Some(text) = &want.reason_contains {
        let reason = job.finish_reason.clone().unwrap_or_default();
        assert!(
            reason.contains(text.as_str()),
            "{ctx}: reason {reason:?} lacks {text:?}"
        );
    }
    if let Some(text) = &want.history_contains {
        assert!(
            job.schedule_history
                .lines()
                .any(|l| l.contains(text.as_str())),
            "{ctx}: schedule_history {:?} lacks {text:?}",
            job.schedule_history
        );
    }
    if let Some(deleted) = want.deleted {
        assert_eq!(job.deleted, deleted, "{ctx}: deleted");
    }
    if let Some(restored) = want.restored {
        let got = first_time(result, id, |k| matches!(k, EventKind::RunRestored { .. })).is_some();
        assert_eq!(got, restored, "{ctx}: restored");
    }
}

fn run_scenario(name: &str) {
    let path = dir().join(format!("{name}.toml"));
    let checked = fedrun::sim::scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    // The simulator's invariants run strictly on every scenario.
    let options = fedrun::sim::driver::RunOptions::default();
    let result = fedrun::sim::driver::run_with(&checked, 0, &options)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let expect_text = std::fs::read_to_string(dir().join(format!("{name}.expect.toml")))
        .unwrap_or_else(|e| panic!("{name}: expect file: {e}"));
    let expect: Expect = toml::from_str(&expect_text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = fedrun::sim::output::to_text(&result).expect("the stored history reads back");
    assert_eq!(result.ended.as_str(), expect.ended, "{name}: ended\n{text}");
    for (job_name, want) in &expect.jobs {
        let line = result
            .jobs
            .iter()
            .find(|j| &j.name == job_name)
            .unwrap_or_else(|| panic!("{name}: no job {job_name} in the result"));
        let job = line
            .job
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: job {job_name} was never submitted\n{text}"));
        check_job(name, job_name, want, job, &result);
    }
    // Same scenario, same seed: the same bytes.
    let again = fedrun::sim::driver::run_with(&checked, 0, &options).expect("second run");
    assert_eq!(
        fedrun::sim::output::to_json(&result).expect("json"),
        fedrun::sim::output::to_json(&again).expect("json"),
        "{name}: a second run printed different output"
    );
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_scenario(stringify!($name));
            }
        )*

        #[test]
        fn every_scenario_file_has_a_test_and_an_expect_file() {
            let listed: Vec<&str> = vec![$(stringify!($name)),*];
            for entry in std::fs::read_dir(dir()).expect("scenario folder") {
                let file = entry.expect("entry").file_name().to_string_lossy().to_string();
                let Some(stem) = file.strip_suffix(".toml") else { continue };
                let stem = stem.strip_suffix(".expect").unwrap_or(stem);
                assert!(listed.contains(&stem), "tests/scenarios/{file} has no test in sim_scenarios.rs");
                assert!(dir().join(format!("{stem}.expect.toml")).exists(), "{stem} has no expect file");
            }
        }
    };
}

scenarios!(
    abort_each_status,
    abort_in_flight_try,
    all_sites,
    backoff_limit,
    barrier_timeout,
    clone,
    complete,
    crash_dispatched,
    crash_dispatched_no_resume,
    crash_running_no_resume,
    crash_running_resume,
    crash_submitted,
    crash_submitted_no_resume,
    crash_while_stopping,
    delete_rules,
    deploy_error_enough,
    deploy_error_short,
    deploy_mandatory_fail,
    deploy_timeout,
    failure_order,
    fifo_ties,
    mandatory_late,
    max_jobs,
    offline_listed,
    outcome_codes,
    resources_cancel,
    server_exit_dispatched,
    site_loss_past_grace,
    site_loss_within_grace,
    start_timeout,
    start_timeout_mandatory,
    stopping_counts,
);
