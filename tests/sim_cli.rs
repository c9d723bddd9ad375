//! `fedrun sim` as a user runs it: the same scenario and seed print the same bytes, another
//! seed gives other job ids, `--json` has the documented shape, and an invalid scenario
//! exits non-zero with a message that names the problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(args)
        .output()
        .expect("fedrun runs")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn same_seed_same_bytes_other_seed_other_ids() {
    let path = scenario("outcome_codes.toml");
    let a = fedrun(&["sim", &path, "--seed", "7", "--json"]);
    let b = fedrun(&["sim", &path, "--seed", "7", "--json"]);
    let c = fedrun(&["sim", &path, "--seed", "8", "--json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(
        a.stdout, b.stdout,
        "same scenario and seed must print the same bytes"
    );
    assert_ne!(a.stdout, c.stdout, "the seed drives the job ids");
    let text_a = fedrun(&["sim", &path, "--seed", "7"]);
    let text_b = fedrun(&["sim", &path, "--seed", "7"]);
    assert_eq!(text_a.stdout, text_b.stdout);
}

#[test]
fn json_has_the_documented_shape() {
    let out = fedrun(&["sim", &scenario("deploy_timeout.toml"), "--json"]);
    assert!(out.status.success());
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(value["ended"], "all_terminal");
    let job = &value["jobs"][0];
    for key in [
        "name",
        "job_id",
        "status",
        "schedule_count",
        "schedule_history",
        "job_deploy_detail",
        "job_clients",
    ] {
        assert!(job.get(key).is_some(), "job lacks {key}: {job}");
    }
    assert_eq!(
        job["job_deploy_detail"][3],
        "site-3: no reply (deployment timeout)"
    );
    let events = value["events"].as_array().expect("events list");
    assert!(!events.is_empty());
    // The event lines are those of `fedrun history --json`.
    let first = &events[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["type"], "server_started");
    assert_eq!(
        first["at"], "2000-01-01T00:00:00.000Z",
        "virtual time 0 is 2000-01-01"
    );
}

#[test]
fn until_and_cap_end_a_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write scenario");
        p
    };
    let never =
        "[[job]]\nname = \"j\"\nmeta = { deploy_map = { app = [\"server\", \"nowhere\"] } }\n";
    let until = write("until.toml", &format!("[sim]\nuntil = \"15s\"\n{never}"));
    let out = fedrun(&["sim", until.to_str().expect("utf-8"), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(value["ended"], "until");
    // Tries at 0 s and 10 s (SPEC 7.3 back-off), the next would be at 30 s > until 15 s.
    assert_eq!(value["jobs"][0]["schedule_count"], 2);
    assert_eq!(value["jobs"][0]["status"], "SUBMITTED");
    // A crash with no restart leaves the server down until the 30-day cap.
    let cap = write(
        "cap.toml",
        &format!("{never}[[action]]\nat = \"1s\"\ndo = \"crash_server\"\n"),
    );
    let out = fedrun(&["sim", cap.to_str().expect("utf-8"), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(value["ended"], "cap");
}

#[test]
fn an_invalid_scenario_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("[server]\nmax_job = 2\n", "max_job"),
        (
            "[[site]]\nname = \"a\"\ndeploy = \"sometimes\"\n",
            "sometimes",
        ),
        ("[[action]]\nat = \"1s\"\ndo = \"abort ghost\"\n", "ghost"),
        ("[sim]\nuntil = \"two hours\"\n", "two hours"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = fedrun(&["sim", path.to_str().expect("utf-8")]);
        assert!(!out.status.success(), "{text} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "message for {text:?} lacks {needle:?}: {stderr}"
        );
    }
    let out = fedrun(&["sim", "/no/such/scenario.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/scenario.toml"));
}

#[test]
fn a_fault_seed_replays_byte_for_byte() {
    let path = scenario("campaign/storage.toml");
    let a = fedrun(&["sim", &path, "--seed", "3", "--json"]);
    let b = fedrun(&["sim", &path, "--seed", "3", "--json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "a seed replays its faults exactly");
}

#[test]
fn unknown_fault_keys_and_bad_rates_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("s.toml");
    std::fs::write(&file, "[faults]\ndrop = 0.1\ncrash_rate = 0.1\n").expect("write");
    let out = fedrun(&["sim", &file.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("crash_rate"));
    std::fs::write(&file, "[faults]\ndrop = 2\n").expect("write");
    let out = fedrun(&["sim", &file.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("probability"));
}
