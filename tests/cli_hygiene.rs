//! The command line a careful operator can trust: text from outside (job names, site
//! names, reasons, folder names) never reaches the terminal raw, `--json` keeps it
//! exact, an error says its chain once, logs carry no colour codes off a terminal, the
//! `--log` flag wins over `FEDRUN_LOG`, `history --job` takes prefixes as `show` does,
//! `list --status` ignores case, and file arguments have size limits.
mod common;
mod proc_support;
use proc_support::output_within;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use fedrun::history::events::EventHistory;
use fedrun::job::JobId;
use fedrun::lifecycle::{Event, EventKind};
use serde_json::Value;

/// A job name that clears the screen, rings the bell, returns the cursor and forges a
/// second table row, then turns the rest of the line around.
const EVIL_NAME: &str = "evil\u{1b}[2J\u{7}\r\nFORGED  ROW\u{202e}reversed";
/// A site name that turns the terminal red.
const EVIL_SITE: &str = "s\u{1b}[31m1";

/// The scenario: the evil job on the evil site, then enough plain jobs that two job ids
/// share their first hex digit whatever the seed (17 ids, 16 digits).
fn scenario() -> String {
    let toml_text = |text: &str| serde_json::to_string(text).unwrap();
    let site = toml_text(EVIL_SITE);
    let mut text = format!(
        "[sim]\nuntil = \"10m\"\n\n[[site]]\nname = {site}\n[site.jobs.{name}]\nexit_code = 101\n\n\
         [[job]]\nname = {name}\nmeta = {{ deploy_map = {{ app = [\"server\", {site}] }} }}\nrun_for = \"30s\"\n",
        name = toml_text(EVIL_NAME),
    );
    for n in 0..17 {
        text.push_str(&format!(
            "\n[[job]]\nname = \"plain-{n}\"\nsubmit_at = \"{}s\"\nmeta = {{ deploy_map = {{ app = [\"server\", {site}] }} }}\nrun_for = \"5s\"\n",
            n + 1
        ));
    }
    text
}

/// Runs the scenario and leaves its events in a closed sled history in `dir`.
fn data_folder(dir: &Path) -> Vec<Event> {
    let checked = fedrun::sim::scenario::parse(&scenario()).expect("the scenario is valid");
    let result = fedrun::sim::driver::run(&checked, 1).expect("the scenario runs");
    let events: Vec<Event> = result
        .events()
        .collect::<Result<_, _>>()
        .expect("the stored history reads back");
    let mut history = EventHistory::open(dir).expect("a new history opens");
    history.append_batch(&events).expect("the events append");
    history.close().expect("the history closes");
    events
}

fn fedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(args)
        .env_remove("FEDRUN_LOG")
        .env_remove("NO_COLOR")
        .output()
        .expect("the fedrun binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a terminal acts on, decided here apart from the binary's own list: C0 and C1
/// controls, DEL, and the bidi marks, embeddings, overrides and isolates.
fn acts_on_terminal(c: char) -> bool {
    let code = u32::from(c);
    code < 0x20
        || (0x7f..=0x9f).contains(&code)
        || matches!(code, 0x61c | 0x200e | 0x200f | 0x2028 | 0x2029)
        || (0x202a..=0x202e).contains(&code)
        || (0x2066..=0x2069).contains(&code)
}

/// Asserts that `out` holds nothing a terminal acts on but line breaks.
fn assert_harmless(what: &str, out: &str) {
    let raw: Vec<char> = out
        .chars()
        .filter(|&c| c != '\n' && acts_on_terminal(c))
        .collect();
    assert!(raw.is_empty(), "{what} prints {raw:?} raw:\n{out}");
}

/// The id of the job submitted under `name`.
fn job_named(events: &[Event], name: &str) -> JobId {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::JobSubmitted { job_id, meta, .. } if meta.name == name => Some(*job_id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("job {name:?} was submitted"))
}

fn job_ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::JobSubmitted { job_id, .. } => Some(job_id.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn list_show_and_history_escape_what_the_history_holds() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let evil = job_named(&events, EVIL_NAME).to_string();
    let data = dir.path().to_str().unwrap();

    // The table keeps one row per job: the name's line break forged none.
    let out = fedrun(&["list", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_harmless("list", &table);
    assert_eq!(table.lines().count(), job_ids(&events).len() + 1, "{table}");
    let row = table.lines().find(|l| l.starts_with(&evil)).unwrap();
    assert!(
        row.contains(r"evil\u{1b}[2J\u{7}\r\nFORGED  ROW\u{202e}reversed"),
        "{row}"
    );
    assert!(!table.lines().any(|l| l.starts_with("FORGED")), "{table}");

    // --json keeps the name exactly.
    let out = fedrun(&["list", "--data-dir", data, "--json"]);
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(names.iter().any(|n| n == EVIL_NAME), "{names:?}");

    let out = fedrun(&["show", "--data-dir", data, &evil]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_harmless("show", &shown);
    assert!(
        shown.contains(r"s\u{1b}[31m1"),
        "the site is named: {shown}"
    );
    let out = fedrun(&["show", "--data-dir", data, &evil, "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], EVIL_NAME);

    let out = fedrun(&["history", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert_harmless("history", &lines);
    assert_eq!(lines.lines().count(), events.len(), "one line per event");
    let out = fedrun(&["history", "--data-dir", data, "--json"]);
    let sites: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == "run_started")
        .collect();
    assert!(!sites.is_empty());
    assert!(
        sites
            .iter()
            .all(|e| e["kind"]["job_clients"] == serde_json::json!([EVIL_SITE])),
        "{sites:?}"
    );
}

#[test]
fn sim_text_escapes_names_and_sites_and_json_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evil.toml");
    std::fs::write(&file, scenario()).unwrap();
    let file = file.to_str().unwrap();
    let out = fedrun(&["sim", file, "--seed", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_harmless("sim", &shown);
    assert!(shown.contains(r"evil\u{1b}[2J\u{7}\r\nFORGED"), "{shown}");
    assert!(!shown.lines().any(|l| l.starts_with("FORGED")), "{shown}");

    let out = fedrun(&["sim", file, "--seed", "1", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["jobs"][0]["name"], EVIL_NAME);
}

#[test]
fn package_text_escapes_the_job_name_and_json_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let meta = serde_json::json!({"name": EVIL_NAME, "deploy_map": {"app": ["server", EVIL_SITE]}});
    common::write_job(&job, &meta.to_string(), &["app"]);
    let job = job.to_str().unwrap();
    let out = fedrun(&["package", job]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_harmless("package", &shown);
    assert!(shown.contains(r"evil\u{1b}[2J"), "{shown}");
    assert!(shown.contains(r"s\u{1b}[31m1"), "{shown}");

    let out = fedrun(&["package", job, "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], EVIL_NAME);
    assert_eq!(json["deploy_map"]["app"][1], EVIL_SITE);
}

#[test]
fn audit_and_errors_escape_a_hostile_folder_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data\u{1b}]0;owned\u{7}");
    data_folder(&data);
    let data = data.to_str().unwrap();
    let out = fedrun(&["audit", "verify", "--data-dir", data]);
    let shown = text(&out.stdout);
    // The simulator stores no blobs, so the audit fails on them; it still names the
    // folder, escaped.
    assert!(
        shown.starts_with("history:"),
        "{shown}{}",
        text(&out.stderr)
    );
    assert_harmless("audit", &shown);
    assert!(shown.contains(r"data\u{1b}]0;owned\u{7}"), "{shown}");

    // An error naming the folder is escaped too.
    let missing = format!("{data}/missing\u{1b}[2J");
    let out = fedrun(&["list", "--data-dir", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_harmless("an error", &stderr);
    assert!(stderr.contains(r"missing\u{1b}[2J"), "{stderr}");
}

#[test]
fn an_error_says_each_cause_once_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = fedrun(&["sim", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let os = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.matches(os.as_str()).count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[test]
fn a_damaged_database_is_reported_once_in_words_not_sled_debug_text() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    // sled's log file is damaged in place: every seventh byte flipped.
    let db = dir.path().join("history").join("db");
    let mut bytes = std::fs::read(&db).expect("the history has sled's log file");
    for byte in bytes.iter_mut().step_by(7) {
        *byte ^= 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["list", "--data-dir", data],
        vec!["history", "--data-dir", data],
        vec!["audit", "verify", "--data-dir", data],
    ] {
        let out = fedrun(&args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let said = text(&out.stderr) + &text(&out.stdout);
        assert!(!said.contains("backtrace"), "{args:?}: {said}");
        assert!(!said.contains("offset None"), "{args:?}: {said}");
        assert!(
            said.contains("damaged data") || said.contains("corrupt"),
            "{args:?} says why: {said}"
        );
        // Each part of the chain is said once.
        let stderr = text(&out.stderr);
        if let Some(line) = stderr.lines().find(|l| l.starts_with("error: ")) {
            let parts: Vec<&str> = line.split(": ").collect();
            let distinct: std::collections::BTreeSet<&str> = parts.iter().copied().collect();
            assert_eq!(distinct.len(), parts.len(), "{args:?}: {line}");
        }
    }
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let out = fedrun(&[
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--log",
        "trace",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.trim().is_empty(), "trace logs something");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

/// Runs `fedrun args` with its stderr on a new pseudo-terminal, and returns what the
/// terminal received.
fn stderr_on_a_terminal(args: &[&str], no_color: Option<&str>) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut leader, follower) = {
        let mut leader = -1;
        let mut follower = -1;
        // SAFETY: openpty writes two new descriptors into the given places; the null
        // pointers ask for no name, settings or size.
        let rc = unsafe {
            libc::openpty(
                &mut leader,
                &mut follower,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are new and owned by nothing else.
        unsafe {
            (
                std::fs::File::from_raw_fd(leader),
                OwnedFd::from_raw_fd(follower),
            )
        }
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command
        .args(args)
        .env_remove("FEDRUN_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(follower);
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    // The command (holding the only other copy of the follower) is dropped once the
    // child runs, so the leader reads end of file (EIO on Linux) when the child exits.
    let mut child = command.spawn().expect("the fedrun binary runs");
    drop(command);
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match leader.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    assert!(child.wait().unwrap().success());
    text(&received)
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let args = [
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--log",
        "trace",
    ];
    let coloured = stderr_on_a_terminal(&args, None);
    assert!(
        coloured.contains("\u{1b}["),
        "a terminal gets colour: {coloured}"
    );
    let plain = stderr_on_a_terminal(&args, Some("1"));
    assert!(!plain.trim().is_empty(), "trace logs something");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain}");
}

/// Whether the run logged anything at TRACE level.
fn traced(out: &Output) -> bool {
    text(&out.stderr).contains("TRACE")
}

#[test]
fn the_log_flag_wins_over_fedrun_log() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let data = dir.path().to_str().unwrap();
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
        command
            .args(["list", "--data-dir", data])
            .env_remove("FEDRUN_LOG");
        if let Some(filter) = env {
            command.env("FEDRUN_LOG", filter);
        }
        if let Some(filter) = flag {
            command.args(["--log", filter]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    assert!(!traced(&run(None, None)), "the default is warn");
    assert!(traced(&run(Some("trace"), None)), "FEDRUN_LOG is read");
    assert!(traced(&run(None, Some("trace"))), "--log is read");
    assert!(!traced(&run(Some("trace"), Some("warn"))), "--log wins");
    assert!(traced(&run(Some("warn"), Some("trace"))), "--log wins");
}

#[test]
fn history_job_takes_a_prefix_and_refuses_unknown_or_ambiguous_ones() {
    let dir = tempfile::tempdir().unwrap();
    let events = data_folder(dir.path());
    let data = dir.path().to_str().unwrap();
    let ids = job_ids(&events);
    let evil = job_named(&events, EVIL_NAME);

    // A prefix that names one job: the events of that job only, all of them.
    let evil_id = evil.to_string();
    let prefix = (1..=36)
        .map(|n| &evil_id[..n])
        .find(|p| ids.iter().filter(|id| id.starts_with(p)).count() == 1)
        .unwrap()
        .to_string();
    let out = fedrun(&["history", "--data-dir", data, "--job", &prefix, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let expected: Vec<u64> = events
        .iter()
        .filter(|e| e.kind.job_id() == Some(evil))
        .map(|e| e.seq)
        .collect();
    assert!(expected.len() > 2);
    assert_eq!(printed, expected);
    // Upper case works as it does for `show`.
    let out = fedrun(&[
        "history",
        "--data-dir",
        data,
        "--job",
        &prefix.to_uppercase(),
    ]);
    assert_eq!(text(&out.stdout).lines().count(), expected.len());

    // 18 jobs, 16 hex digits: some first digit starts two ids.
    let shared = "0123456789abcdef"
        .chars()
        .map(String::from)
        .find(|d| ids.iter().filter(|id| id.starts_with(d.as_str())).count() > 1)
        .unwrap();
    let out = fedrun(&["history", "--data-dir", data, "--job", &shared]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("is ambiguous"),
        "{}",
        text(&out.stderr)
    );

    let unknown = "0123456789abcdef"
        .chars()
        .map(String::from)
        .find(|d| !ids.iter().any(|id| id.starts_with(d.as_str())))
        .map(|d| format!("{d}0"))
        .unwrap_or_else(|| "not-an-id".to_string());
    let out = fedrun(&["history", "--data-dir", data, "--job", &unknown]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains(&format!("no job with id {unknown}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn list_status_ignores_case() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let data = dir.path().to_str().unwrap();
    let ids = |status: &str| {
        let out = fedrun(&["list", "--data-dir", data, "--json", "--status", status]);
        assert!(out.status.success(), "{status}: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["job_id"].clone())
            .collect::<Vec<_>>()
    };
    let exact = ids("FINISHED:EXECUTION_EXCEPTION");
    assert_eq!(exact.len(), 1, "the evil job failed with 101");
    assert_eq!(ids("finished:execution_exception"), exact);
    assert_eq!(ids("Finished:Execution_Exception"), exact);
    let completed = ids("FINISHED:COMPLETED");
    assert_eq!(completed.len(), 17);
    assert_eq!(ids("finished:completed"), completed);
    assert_eq!(ids("finished").len(), 18);

    let out = fedrun(&["list", "--data-dir", data, "--status", "Done"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown status `Done`"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs fedrun and asserts it fails within a few seconds (the whole of `/dev/zero` would
/// take minutes and gigabytes), naming the limit.
fn refused_quickly(args: &[&str]) -> String {
    // Killed and failed past the bound: reading all of /dev/zero never ends.
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_fedrun"))
            .args(args)
            .env_remove("FEDRUN_LOG")
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fedrun runs"),
        Duration::from_secs(20),
        &format!("{args:?}"),
    );
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/dev/zero is over the limit of"),
        "{args:?}: {stderr}"
    );
    stderr
}

#[test]
fn dev_zero_as_a_scenario_certificate_or_key_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    common::write_job(&job, r#"{"deploy_map": {"app": ["server"]}}"#, &["app"]);
    let job = job.to_str().unwrap();
    refused_quickly(&["sim", "/dev/zero"]);
    refused_quickly(&["sign", job, "--cert", "/dev/zero", "--key", "/dev/zero"]);
    refused_quickly(&["verify", job, "--root-ca", "/dev/zero"]);
}
