//! The app process runner with real child processes: exit codes, signals, stop with grace
//! and with kill, the recorded process group, and re-attach after a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedrun::job::JobId;
use fedrun::site::process::{
    self, group_alive, AppLaunch, AppProcess, ProcessEnd, ProcessRecord, Reattached,
};
use fedrun::site::protocol::ExitOutcome;

/// Upper bound for anything a test waits on; generous because the machine is shared.
const BOUND: Duration = Duration::from_secs(30);

struct App {
    _root: tempfile::TempDir,
    launch: AppLaunch,
}

/// An app folder whose run file runs `script` with `sh`.
fn app(script: &str) -> App {
    let root = tempfile::tempdir().expect("temp dir");
    let run_dir = root.path().join("job");
    let app_dir = run_dir.join("app");
    std::fs::create_dir_all(&app_dir).expect("create app dir");
    std::fs::write(app_dir.join("run.sh"), script).expect("write script");
    std::fs::write(
        app_dir.join("run.toml"),
        "command = \"sh\"\nargs = [\"run.sh\"]\n[env]\nAPP_GREETING = \"hello\"\n",
    )
    .expect("write run file");
    let job_id: JobId = "6f1c1f4e-8a53-4a8e-9d59-3c1b1a7e2b10"
        .parse()
        .expect("valid uuid");
    App {
        _root: root,
        launch: AppLaunch {
            job_id,
            site: "site-1".to_string(),
            run_dir,
            app_dir,
        },
    }
}

async fn wait(process: &AppProcess) -> ProcessEnd {
    tokio::time::timeout(BOUND, process.wait())
        .await
        .expect("the app ends within the bound")
        .expect("the watcher reports the end")
}

/// Makes a named pipe in the run folder, through which an app tells the test it is ready.
fn fifo(run_dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(run_dir).expect("run dir");
    let path = run_dir.join(name);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    path
}

/// Reads what the app writes into the pipe `path`: opening blocks until the app opens it
/// for writing, and the read ends when the app closes it. Bounded.
async fn read_fifo(path: &Path) -> String {
    let path = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(path));
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the app writes its pipe within the bound")
        .expect("join")
        .expect("read pipe")
}

/// Writes into the pipe `path` that the app reads. Bounded.
async fn write_fifo(path: &Path, text: &'static str) {
    let path = path.to_path_buf();
    let write = tokio::task::spawn_blocking(move || std::fs::write(path, text));
    tokio::time::timeout(BOUND, write)
        .await
        .expect("the app opens its pipe within the bound")
        .expect("join")
        .expect("write pipe");
}

/// No process of the group runs any more: the runner waits for that before it reports the
/// end, so this holds at once.
fn assert_group_dead(pgid: i32) {
    assert!(!group_alive(pgid), "a process of group {pgid} still runs");
}

/// The whole group is gone, down to `kill(-pgid, 0)` failing. Killed app children are
/// orphans whose zombies init reaps on its own schedule (there is no event for that), so
/// after the immediate check this waits, bounded, by yielding the thread.
fn assert_group_gone(pgid: i32) {
    assert_group_dead(pgid);
    let started = std::time::Instant::now();
    // SAFETY: kill with signal 0 only checks for existence.
    while unsafe { libc::kill(-pgid, 0) } == 0 {
        assert!(started.elapsed() < BOUND, "group {pgid} was never reaped");
        std::thread::yield_now();
    }
}

/// The process `pid` is not alive (gone, or a zombie waiting to be reaped).
fn assert_dead(pid: i32) {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat[stat.rfind(')')? + 1..].to_string();
            after.split_whitespace().next().map(str::to_string)
        });
    assert!(
        matches!(state.as_deref(), None | Some("Z") | Some("X")),
        "process {pid} is still alive: state {state:?}"
    );
}

fn read_record(run_dir: &Path) -> ProcessRecord {
    let text = std::fs::read(process::record_path(run_dir)).expect("process record");
    serde_json::from_slice(&text).expect("valid process record")
}

/// Writes `record` where fedrun keeps the record of the app of `run_dir`.
fn write_record(run_dir: &Path, record: &ProcessRecord) {
    let path = process::record_path(run_dir);
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("supervision folder");
    std::fs::write(&path, serde_json::to_vec(record).expect("json")).expect("write record");
}

#[tokio::test]
async fn exit_codes_are_reported_as_codes() {
    for code in [0, 1, 101, 104] {
        let app = app(&format!("exit {code}\n"));
        let process = process::start(&app.launch).expect("start");
        let end = wait(&process).await;
        assert_eq!(
            end,
            ProcessEnd {
                outcome: ExitOutcome::Code(code),
                stop_requested: false
            },
            "exit {code}"
        );
    }
}

#[tokio::test]
async fn death_by_signal_is_reported_as_the_signal() {
    let app = app("kill -KILL $$\n");
    let process = process::start(&app.launch).expect("start");
    let end = wait(&process).await;
    assert_eq!(end.outcome, ExitOutcome::Signal(libc::SIGKILL));
    assert!(!end.stop_requested);
}

#[tokio::test]
async fn environment_working_directory_and_logs() {
    let app = app(
        "echo \"$FEDRUN_JOB_ID $FEDRUN_SITE $FEDRUN_WORKSPACE $FEDRUN_APP_DIR $APP_GREETING\"\n\
         pwd\n\
         echo oops >&2\n",
    );
    let process = process::start(&app.launch).expect("start");
    assert_eq!(wait(&process).await.outcome, ExitOutcome::Code(0));
    let out =
        std::fs::read_to_string(app.launch.run_dir.join(process::STDOUT_FILE)).expect("stdout log");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "{} site-1 {} {} hello",
                app.launch.job_id,
                app.launch.run_dir.display(),
                app.launch.app_dir.display()
            )
            .as_str()
        )
    );
    let cwd = PathBuf::from(lines.next().expect("pwd line"));
    assert_eq!(
        cwd.canonicalize().expect("cwd exists"),
        app.launch.app_dir.canonicalize().expect("app dir exists")
    );
    let err =
        std::fs::read_to_string(app.launch.run_dir.join(process::STDERR_FILE)).expect("stderr log");
    assert_eq!(err, "oops\n");
}

#[tokio::test]
async fn group_id_is_recorded_and_is_the_apps_group() {
    // The app prints its own process group (field 5 of /proc/self/stat of the shell) and
    // then waits to be stopped.
    let app = app("set -- $(cat /proc/$$/stat | sed 's/.*) //')\n\
         echo \"$3\" > \"$FEDRUN_WORKSPACE/pgrp\"\n\
         sleep 1000 & wait\n");
    let pgrp = fifo(&app.launch.run_dir, "pgrp");
    let process = process::start(&app.launch).expect("start");
    let record = read_record(&app.launch.run_dir);
    assert_eq!(record.pgid, process.pgid());
    assert_eq!(record.pid, record.pgid, "the wrapper leads its own group");
    assert_eq!(record.job_id, app.launch.job_id);
    assert_eq!(record.site, "site-1");
    assert!(record.start_time_ticks > 0);
    let app_pgrp: i32 = read_fifo(&pgrp).await.trim().parse().expect("a number");
    assert_eq!(app_pgrp, record.pgid, "the app runs in the recorded group");
    // SAFETY: getpgrp has no preconditions.
    let own_pgrp = unsafe { libc::getpgrp() };
    assert_ne!(
        record.pgid, own_pgrp,
        "the app is detached from the starter"
    );
    assert!(group_alive(record.pgid));
    process.stop(Duration::from_millis(100));
    wait(&process).await;
    assert_group_dead(record.pgid);
}

#[tokio::test]
async fn stop_with_grace_lets_the_app_finish_on_term() {
    let app = app("trap 'echo bye; exit 0' TERM\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n");
    let ready = fifo(&app.launch.run_dir, "ready");
    let process = process::start(&app.launch).expect("start");
    assert_eq!(read_fifo(&ready).await, "ready\n");
    let pgid = process.pgid();
    // A grace far longer than the bound: the app can only end in time by honouring TERM.
    process.stop(Duration::from_secs(3600));
    let end = wait(&process).await;
    assert_eq!(
        end,
        ProcessEnd {
            outcome: ExitOutcome::Code(0),
            stop_requested: true
        }
    );
    let out =
        std::fs::read_to_string(app.launch.run_dir.join(process::STDOUT_FILE)).expect("stdout log");
    assert_eq!(out, "bye\n");
    assert_group_dead(pgid);
}

#[tokio::test]
async fn stop_kills_an_app_that_ignores_term() {
    let app = app("trap '' TERM\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n");
    let ready = fifo(&app.launch.run_dir, "ready");
    let process = process::start(&app.launch).expect("start");
    assert_eq!(read_fifo(&ready).await, "ready\n");
    let pgid = process.pgid();
    process.stop(Duration::from_millis(200));
    let end = wait(&process).await;
    assert_eq!(
        end,
        ProcessEnd {
            outcome: ExitOutcome::Signal(libc::SIGKILL),
            stop_requested: true
        }
    );
    assert_group_gone(pgid);
}

#[tokio::test]
async fn reattach_to_a_running_group_and_get_its_end() {
    let app = app("echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         read line < \"$FEDRUN_WORKSPACE/release\"\n\
         exit 3\n");
    let release = fifo(&app.launch.run_dir, "release");
    let ready = fifo(&app.launch.run_dir, "ready");
    let first = process::start(&app.launch).expect("start");
    assert_eq!(read_fifo(&ready).await, "ready\n");
    let pgid = first.pgid();
    // A restarted starter knows only the run folder.
    drop(first);
    let second = match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Running(p) => p,
        other => panic!("expected a running app, found {other:?}"),
    };
    assert_eq!(second.pgid(), pgid);
    write_fifo(&release, "go\n").await;
    let end = wait(&second).await;
    assert_eq!(
        end,
        ProcessEnd {
            outcome: ExitOutcome::Code(3),
            stop_requested: false
        }
    );
    // Looking again after the end finds the recorded outcome.
    match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Ended(end) => assert_eq!(end.outcome, ExitOutcome::Code(3)),
        other => panic!("expected an ended app, found {other:?}"),
    }
}

#[tokio::test]
async fn reattached_group_can_be_stopped() {
    let app = app("trap '' TERM\n\
         echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
         sleep 1000 & wait\n");
    let ready = fifo(&app.launch.run_dir, "ready");
    let first = process::start(&app.launch).expect("start");
    assert_eq!(read_fifo(&ready).await, "ready\n");
    let pgid = first.pgid();
    drop(first);
    let second = match process::reattach(&app.launch.run_dir).expect("reattach") {
        Reattached::Running(p) => p,
        other => panic!("expected a running app, found {other:?}"),
    };
    second.stop(Duration::from_millis(100));
    let end = wait(&second).await;
    assert_eq!(end.outcome, ExitOutcome::Signal(libc::SIGKILL));
    assert!(end.stop_requested);
    assert_group_dead(pgid);
}

#[tokio::test]
async fn reattach_without_record_or_with_dead_pid() {
    let root = tempfile::tempdir().expect("temp dir");
    let run_dir = root.path().join("job");
    assert!(matches!(
        process::reattach(&run_dir).expect("reattach"),
        Reattached::NotFound
    ));
    // A record whose process is long gone and left no exit file: killed with its wrapper.
    let record = ProcessRecord {
        pid: i32::MAX - 1,
        pgid: i32::MAX - 1,
        start_time_ticks: 1,
        job_id: "6f1c1f4e-8a53-4a8e-9d59-3c1b1a7e2b10"
            .parse()
            .expect("valid uuid"),
        site: "site-1".to_string(),
        released: true,
    };
    write_record(&run_dir, &record);
    match process::reattach(&run_dir).expect("reattach") {
        Reattached::Ended(end) => assert_eq!(end.outcome, ExitOutcome::Signal(libc::SIGKILL)),
        other => panic!("expected an ended app, found {other:?}"),
    }
    std::fs::write(process::record_path(&run_dir), b"{not json").expect("write");
    assert!(process::reattach(&run_dir).is_err());
}

#[tokio::test]
async fn missing_run_file_or_command_is_a_start_error() {
    let app = app("exit 0\n");
    std::fs::write(
        app.launch.app_dir.join("run.toml"),
        "command = \"./no-such-program\"\n",
    )
    .expect("write run file");
    let err = process::start(&app.launch).expect_err("command missing");
    assert!(
        err.to_string().contains("no-such-program"),
        "message names the command: {err}"
    );
    std::fs::remove_file(app.launch.app_dir.join("run.toml")).expect("remove run file");
    let err = process::start(&app.launch).expect_err("run file missing");
    assert!(err.to_string().contains("run.toml"), "message: {err}");
}

#[tokio::test]
async fn processes_an_app_leaves_behind_are_killed_when_it_exits() {
    let app = app("sleep 1000 &\n\
         echo $! > \"$FEDRUN_WORKSPACE/child\"\n\
         exit 0\n");
    let child = fifo(&app.launch.run_dir, "child");
    let process = process::start(&app.launch).expect("start");
    let child_pid: i32 = read_fifo(&child).await.trim().parse().expect("a pid");
    let end = wait(&process).await;
    assert_eq!(end.outcome, ExitOutcome::Code(0));
    assert_dead(child_pid);
    assert_group_dead(process.pgid());
}

#[tokio::test]
async fn a_record_that_cannot_be_an_apps_group_is_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    let run_dir = root.path().join("job");
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    for (pid, pgid) in [
        (1, 1),
        (0, 0),
        (-7, -7),
        (4242, 4243),
        (own_group, own_group),
    ] {
        let record = ProcessRecord {
            pid,
            pgid,
            start_time_ticks: 1,
            job_id: "6f1c1f4e-8a53-4a8e-9d59-3c1b1a7e2b10"
                .parse()
                .expect("valid uuid"),
            site: "site-1".to_string(),
            released: true,
        };
        write_record(&run_dir, &record);
        let err = process::reattach(&run_dir).expect_err("refused");
        assert!(
            err.to_string().contains("cannot be an app's group leader"),
            "{err}"
        );
    }
}
