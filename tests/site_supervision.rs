//! Supervision of app processes against a hostile or unlucky world: an app that rewrites
//! its run folder, a record whose pid now names an unrelated process, a start cut short
//! before its release, an app nobody claims, and the allow-listed environment.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedrun::job::JobId;
use fedrun::site::process::{self, AppLaunch, AppProcess, ProcessEnd, ProcessRecord, Reattached};
use fedrun::site::protocol::ExitOutcome;
use fedrun::site::workspace;

/// Upper bound for anything a test waits on; generous because the machine is shared.
const BOUND: Duration = Duration::from_secs(30);
const SITE: &str = "site-1";

fn job(n: u8) -> JobId {
    JobId(uuid::Uuid::from_bytes([n; 16]))
}

struct App {
    _root: tempfile::TempDir,
    launch: AppLaunch,
}

/// An app of job `n` in a workspace laid out as a site's (`<root>/<job_id>/app`), whose run
/// file runs `script` with `sh` and adds `env`.
fn app(n: u8, script: &str, env: &[(&str, &str)]) -> App {
    let root = tempfile::tempdir().expect("temp dir");
    let job_id = job(n);
    let run_dir = workspace::job_dir(root.path(), job_id);
    let app_dir = run_dir.join("app");
    std::fs::create_dir_all(&app_dir).expect("create app dir");
    std::fs::write(app_dir.join("run.sh"), script).expect("write script");
    let mut run_file = String::from("command = \"sh\"\nargs = [\"run.sh\"]\n[env]\n");
    for (name, value) in env {
        run_file.push_str(&format!("{name} = {}\n", toml_string(value)));
    }
    std::fs::write(app_dir.join("run.toml"), run_file).expect("write run file");
    App {
        _root: root,
        launch: AppLaunch {
            job_id,
            site: SITE.to_string(),
            run_dir,
            app_dir,
        },
    }
}

/// A TOML basic string holding `value`.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn wait(process: &AppProcess) -> ProcessEnd {
    tokio::time::timeout(BOUND, process.wait())
        .await
        .expect("the app ends within the bound")
        .expect("the watcher reports the end")
}

/// Makes a named pipe in the run folder and returns a task reading what the app writes
/// into it (opening blocks until the app opens it, the read ends when the app closes it).
fn fifo_reader(run_dir: &Path, name: &str) -> tokio::task::JoinHandle<String> {
    std::fs::create_dir_all(run_dir).expect("run dir");
    let path = run_dir.join(name);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path).expect("read pipe"))
}

async fn bounded<T>(handle: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(BOUND, handle)
        .await
        .expect("within the bound")
        .expect("join")
}

/// An unrelated process leading its own session and group (as an app's wrapper would), with
/// `env` as its whole environment. Killed and reaped when dropped.
struct Bystander {
    child: std::process::Child,
}

impl Bystander {
    fn spawn(env: &[(&str, &str)]) -> Bystander {
        let mut command = std::process::Command::new("sleep");
        command.arg("1000").env_clear().envs(env.iter().copied());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn bystander");
        // The environment is read from /proc by fedrun: wait until the exec has replaced
        // the forked copy, which `spawn` already guarantees (it returns after the exec).
        Bystander { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn start_time(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        stat[stat.rfind(')').expect("comm") + 1..]
            .split_whitespace()
            .nth(19)
            .expect("field 22")
            .parse()
            .expect("a number")
    }

    /// True while the bystander has not been signalled to death (it never exits by itself).
    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits, bounded, until the bystander has died, and says how.
    fn wait_dead(&mut self) -> std::process::ExitStatus {
        let pidfd = pidfd(self.pid());
        let mut poll = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, BOUND.as_millis() as i32) };
        // SAFETY: closes the fd opened above.
        unsafe { libc::close(pidfd) };
        assert_eq!(
            ready,
            1,
            "process {} did not die within the bound",
            self.pid()
        );
        self.child.wait().expect("wait")
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pidfd(pid: i32) -> i32 {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open {pid}");
    fd as i32
}

fn write_record(run_dir: &Path, record: &ProcessRecord) -> PathBuf {
    let path = process::record_path(run_dir);
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("supervision folder");
    std::fs::write(&path, serde_json::to_vec(record).expect("json")).expect("write record");
    path
}

#[tokio::test]
async fn records_are_kept_outside_the_run_folder_in_a_private_folder() {
    let app = app(1, "sleep 1000 & wait\n", &[]);
    let process = process::start(&app.launch).expect("start");
    let record_file = process::record_path(&app.launch.run_dir);
    assert!(!record_file.starts_with(&app.launch.run_dir));
    let record: ProcessRecord =
        serde_json::from_slice(&std::fs::read(&record_file).expect("record")).expect("json");
    assert_eq!(&record, process.record());
    assert!(
        record.released,
        "a running app's record says it was released"
    );
    use std::os::unix::fs::PermissionsExt;
    for dir in [
        record_file.parent().expect("folder"),
        record_file.parent().and_then(Path::parent).expect("root"),
    ] {
        let mode = std::fs::metadata(dir)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{} is private", dir.display());
    }
    process.stop(Duration::ZERO);
    wait(&process).await;
}

#[tokio::test]
async fn an_app_that_rewrites_its_run_folder_cannot_make_fedrun_signal_another_group() {
    let mut victim = Bystander::spawn(&[]);
    let app = app(2, "", &[]);
    let forged = ProcessRecord {
        pid: victim.pid(),
        pgid: victim.pid(),
        start_time_ticks: victim.start_time(),
        job_id: app.launch.job_id,
        site: SITE.to_string(),
        released: true,
    };
    let forged = serde_json::to_string(&forged).expect("json");
    // The app overwrites every regular file in its run folder, and plants the forged
    // record under every name fedrun ever used there, then waits to be stopped.
    std::fs::write(
        app.launch.app_dir.join("run.sh"),
        "for f in \"$FEDRUN_WORKSPACE\"/* \"$FEDRUN_WORKSPACE\"/process.json; do\n\
           [ -p \"$f\" ] || printf '%s' \"$FORGED\" > \"$f\"\n\
         done\n\
         printf '%s' \"$FORGED\" > \"$FEDRUN_WORKSPACE/../process.json\"\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n",
    )
    .expect("script");
    std::fs::write(
        app.launch.app_dir.join("run.toml"),
        format!(
            "command = \"sh\"\nargs = [\"run.sh\"]\n[env]\nFORGED = {}\n",
            toml_string(&forged)
        ),
    )
    .expect("run file");
    let ready = fifo_reader(&app.launch.run_dir, "ready");
    let first = process::start(&app.launch).expect("start");
    assert_eq!(bounded(ready).await, "ready\n");
    let pgid = first.pgid();
    // The starter restarts: it knows only the run folder, which the app has rewritten.
    drop(first);
    let second = match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Running(p) => p,
        other => panic!("expected the running app, found {other:?}"),
    };
    assert_eq!(second.pgid(), pgid, "the re-attached group is the app's");
    second.stop(Duration::ZERO);
    let end = wait(&second).await;
    assert!(end.stop_requested);
    assert!(!process::group_alive(pgid));
    assert!(victim.alive(), "the victim's group was not signalled");
}

#[tokio::test]
async fn a_record_whose_pid_now_names_an_unrelated_process_is_not_signalled() {
    let root = tempfile::tempdir().expect("temp dir");
    let job_id = job(3);
    let run_dir = workspace::job_dir(root.path(), job_id);
    let mut bystander = Bystander::spawn(&[("PATH", "/usr/bin:/bin")]);
    // The worst case: the pid was reused by a process that even started at the recorded
    // tick. Its job id (it has none) gives it away. And the ordinary case: another start
    // time.
    for start_time_ticks in [bystander.start_time(), bystander.start_time() + 1] {
        let record = ProcessRecord {
            pid: bystander.pid(),
            pgid: bystander.pid(),
            start_time_ticks,
            job_id,
            site: SITE.to_string(),
            released: true,
        };
        write_record(&run_dir, &record);
        match process::reattach(&run_dir).expect("reattach") {
            Reattached::Ended(end) => {
                assert_eq!(end.outcome, ExitOutcome::Signal(libc::SIGKILL))
            }
            other => panic!("the bystander was taken for the app: {other:?}"),
        }
        assert!(!process::kill_unclaimed(&run_dir));
        assert!(bystander.alive(), "the bystander was not signalled");
    }
    // A bystander that carries another job's id is no better.
    let other_job = job(4).to_string();
    let mut other = Bystander::spawn(&[("FEDRUN_JOB_ID", &other_job), ("FEDRUN_SITE", SITE)]);
    let record = ProcessRecord {
        pid: other.pid(),
        pgid: other.pid(),
        start_time_ticks: other.start_time(),
        job_id,
        site: SITE.to_string(),
        released: false,
    };
    write_record(&run_dir, &record);
    assert!(matches!(
        process::reattach(&run_dir).expect("reattach"),
        Reattached::NotFound
    ));
    assert!(other.alive(), "another job's process was not signalled");
    // Records of no live app can be forgotten.
    write_record(&run_dir, &record);
    process::forget(&run_dir).expect("forget");
    assert!(!workspace::supervision_dir(&run_dir).exists());
}

#[tokio::test]
async fn a_start_cut_short_before_its_release_is_killed_on_reattach() {
    let root = tempfile::tempdir().expect("temp dir");
    let job_id = job(5);
    let run_dir = workspace::job_dir(root.path(), job_id);
    let job_text = job_id.to_string();
    // What a crash between the record and the release leaves: a wrapper of the job, in its
    // own group, with a record that was never marked released.
    let mut wrapper = Bystander::spawn(&[("FEDRUN_JOB_ID", &job_text), ("FEDRUN_SITE", SITE)]);
    let record = ProcessRecord {
        pid: wrapper.pid(),
        pgid: wrapper.pid(),
        start_time_ticks: wrapper.start_time(),
        job_id,
        site: SITE.to_string(),
        released: false,
    };
    let record_file = write_record(&run_dir, &record);
    assert!(matches!(
        process::reattach(&run_dir).expect("reattach"),
        Reattached::NotFound
    ));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(wrapper.wait_dead().signal(), Some(libc::SIGKILL));
    assert!(!record_file.exists(), "the record of the cut start is gone");
}

#[tokio::test]
async fn an_app_nobody_claims_is_killed() {
    let app = app(6, "sleep 1000 & wait\n", &[]);
    let process = process::start(&app.launch).expect("start");
    let pgid = process.pgid();
    assert!(process::kill_unclaimed(&app.launch.run_dir));
    let end = wait(&process).await;
    assert_eq!(end.outcome, ExitOutcome::Signal(libc::SIGKILL));
    assert!(!process::group_alive(pgid));
    assert!(!process::kill_unclaimed(&app.launch.run_dir));
}

#[tokio::test]
async fn the_app_sees_only_the_allow_listed_environment() {
    // Names no other test uses, so setting them here races with nothing.
    std::env::set_var("SUPERVISION_TEST_SECRET", "hunter2");
    std::env::set_var("SUPERVISION_TEST_PASSED", "visible");
    std::env::set_var("LC_SUPERVISION_TEST", "C");
    std::env::set_var("FEDRUN_SUPERVISION_TEST", "server-only");
    let app = app(
        7,
        "env > \"$FEDRUN_WORKSPACE/env\"\n",
        &[("APP_GREETING", "hello"), ("FEDRUN_SITE", "forged")],
    );
    let process =
        process::start_with(&app.launch, &["SUPERVISION_TEST_PASSED".to_string()]).expect("start");
    assert_eq!(wait(&process).await.outcome, ExitOutcome::Code(0));
    let text = std::fs::read_to_string(app.launch.run_dir.join("env")).expect("env dump");
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("SUPERVISION_TEST_SECRET"), None, "secrets stay out");
    assert_eq!(
        env.get("FEDRUN_SUPERVISION_TEST"),
        None,
        "fedrun's own settings stay out"
    );
    assert_eq!(env.get("SUPERVISION_TEST_PASSED"), Some(&"visible"));
    assert_eq!(env.get("LC_SUPERVISION_TEST"), Some(&"C"));
    assert_eq!(env.get("APP_GREETING"), Some(&"hello"));
    assert_eq!(
        env.get("FEDRUN_SITE"),
        Some(&SITE),
        "the run file cannot forge it"
    );
    let job_text = app.launch.job_id.to_string();
    assert_eq!(env.get("FEDRUN_JOB_ID"), Some(&job_text.as_str()));
    assert!(env.contains_key("PATH"));
    // Nothing outside the allow-list (the shell adds a few of its own: PWD, SHLVL, `_`).
    for name in env.keys() {
        let allowed = ["PATH", "HOME", "USER", "LANG", "TZ", "TMPDIR"].contains(name)
            || name.starts_with("LC_")
            || name.starts_with("FEDRUN_")
            || [
                "SUPERVISION_TEST_PASSED",
                "APP_GREETING",
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ]
            .contains(name);
        assert!(allowed, "{name} reached the app");
    }
    // Without the name in app_env_pass the passed variable stays out too.
    let again = process::start(&app.launch).expect("start");
    wait(&again).await;
    let text = std::fs::read_to_string(app.launch.run_dir.join("env")).expect("env dump");
    assert!(!text.contains("SUPERVISION_TEST_PASSED"));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_stop_asked_before_the_starter_crashed_still_kills_on_time() {
    let app = app(
        8,
        "trap '' TERM\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n",
        &[],
    );
    // The first starter asks for a stop with a short grace and crashes before the grace is
    // over: its runtime, and the watcher that would have killed, are gone.
    let first = runtime();
    let pgid = first.block_on(async {
        let ready = fifo_reader(&app.launch.run_dir, "ready");
        let process = process::start(&app.launch).expect("start");
        assert_eq!(bounded(ready).await, "ready\n");
        process.stop(Duration::from_millis(300));
        process.pgid()
    });
    drop(first);
    runtime().block_on(async {
        let second = match process::reattach(&app.launch.run_dir).expect("reattach") {
            Reattached::Running(p) => p,
            other => panic!("expected the running app, found {other:?}"),
        };
        // The app ignores TERM: only the resumed kill can end it within the bound.
        assert_eq!(
            wait(&second).await,
            ProcessEnd {
                outcome: ExitOutcome::Signal(libc::SIGKILL),
                stop_requested: true
            }
        );
        assert!(!process::group_alive(pgid));
    });
}

#[tokio::test]
async fn an_end_after_a_requested_stop_stays_requested_across_a_restart() {
    let app = app(
        9,
        "trap 'echo term > \"$FEDRUN_WORKSPACE/term\"; read line < \"$FEDRUN_WORKSPACE/release\"; exit 0' TERM\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n",
        &[],
    );
    let ready = fifo_reader(&app.launch.run_dir, "ready");
    let term = fifo_reader(&app.launch.run_dir, "term");
    let release = app.launch.run_dir.join("release");
    let c_path = std::ffi::CString::new(release.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let first = process::start(&app.launch).expect("start");
    assert_eq!(bounded(ready).await, "ready\n");
    first.stop(Duration::from_secs(3600));
    assert_eq!(bounded(term).await, "term\n");
    drop(first);
    let second = match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Running(p) => p,
        other => panic!("expected the running app, found {other:?}"),
    };
    bounded(tokio::task::spawn_blocking(move || {
        std::fs::write(release, "go\n").expect("write pipe")
    }))
    .await;
    assert_eq!(
        wait(&second).await,
        ProcessEnd {
            outcome: ExitOutcome::Code(0),
            stop_requested: true
        },
        "the end is fedrun's doing, though this starter never asked"
    );
    match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Ended(end) => assert!(end.stop_requested),
        other => panic!("expected the ended app, found {other:?}"),
    }
}

/// A history holding one submitted job, `job_id`, in the data folder `data`.
fn history_with_one_job(data: &Path, job_id: JobId) {
    use fedrun::job::meta::{AppTargets, JobMeta};
    use fedrun::lifecycle::{Actor, BlobHash, BootId, Event, EventKind, Identity, Role, Timestamp};
    let lead = Identity {
        name: "lead@example.org".into(),
        org: "example".into(),
        role: Role::Lead,
    };
    let at = Timestamp::from_millis(1_764_288_000_000);
    let event = Event {
        seq: 1,
        at,
        actor: Actor::admin(&lead),
        request_id: None,
        boot_id: BootId(uuid::Uuid::from_u128(1)),
        kind: EventKind::JobSubmitted {
            job_id,
            meta: JobMeta {
                name: "left-over".into(),
                deploy_map: vec![AppTargets {
                    app: "app".into(),
                    targets: vec!["server".into(), SITE.into()],
                }],
                min_clients: 1,
                mandatory_clients: vec![],
                resource_spec: Default::default(),
            },
            package: BlobHash::from(blake3::hash(b"no such package")),
            submitter: lead,
            signer: None,
            submit_time: at,
            cloned_from: None,
        },
    };
    let mut history = fedrun::history::events::EventHistory::open(data).expect("open history");
    history.append_batch(&[event]).expect("append");
}

/// A wrapper of `job_id` running in its own group, recorded in the server's run folder
/// of that job as a released app (what a crash after the start leaves).
fn left_over_app(data: &Path, job_id: JobId) -> Bystander {
    let job_text = job_id.to_string();
    let wrapper = Bystander::spawn(&[("FEDRUN_JOB_ID", &job_text), ("FEDRUN_SITE", "server")]);
    let record = ProcessRecord {
        pid: wrapper.pid(),
        pgid: wrapper.pid(),
        start_time_ticks: wrapper.start_time(),
        job_id,
        site: "server".to_string(),
        released: true,
    };
    write_record(&workspace::job_dir(&data.join("server"), job_id), &record);
    wrapper
}

#[tokio::test]
async fn a_starting_server_kills_the_app_of_a_known_job_that_nobody_claims() {
    use fedrun::engine::clock::WallClock;
    use fedrun::engine::server::{Server, ServerConfig};
    let data = tempfile::tempdir().expect("temp dir");
    let known = job(8);
    history_with_one_job(data.path(), known);
    // The job never started its server app in the history, so nobody claims this one.
    let mut unclaimed = left_over_app(data.path(), known);
    // A folder of a job the history does not hold is not the server's to judge.
    let mut stranger = left_over_app(data.path(), job(9));
    let server = Server::start(
        ServerConfig::new(data.path()),
        std::sync::Arc::new(WallClock),
    )
    .expect("server starts");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(unclaimed.wait_dead().signal(), Some(libc::SIGKILL));
    assert!(stranger.alive(), "the app of an unknown job was signalled");
    drop(server);
}
