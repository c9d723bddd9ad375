//! App processes: start an app from its run file, stop it, and find it again after a restart.
//!
//! Every app runs under a tiny `/bin/sh` wrapper that is the leader of a new session and
//! process group (`setsid`), so the app is detached from the process that started it and a
//! stop reaches every process the app spawned. The wrapper runs the app's command in the
//! foreground, traps `TERM`, `INT` and `HUP` only so that it outlives the app when the whole
//! group is asked to stop, and then writes the app's exit status to the file
//! [`EXIT_FILE`] in the run folder (temp file, then rename). That file is what lets a
//! restarted server or site learn how an app ended that it did not start itself.
//!
//! Files in the run folder (`FEDRUN_WORKSPACE`):
//! - [`PROCESS_FILE`]: JSON `{"pid", "pgid", "start_time_ticks", "job_id", "site"}`,
//!   written (and fsynced) right after the spawn; `start_time_ticks` is field 22 of
//!   `/proc/<pid>/stat`, so a recycled pid is never mistaken for the app.
//! - [`EXIT_FILE`]: the exit status as the shell reports it: a number, where `128 + n`
//!   means "killed by signal `n`" (the shell convention; an app that calls `exit(130)` is
//!   therefore read as killed by signal 2).
//! - [`STDOUT_FILE`], [`STDERR_FILE`]: the app's output, appended.
//!
//! Ends are reported through an async wait, never a polling loop: for a process this
//! program started, tokio's child wait; for a re-attached one, a Linux pidfd that becomes
//! readable when the wrapper exits.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::job::runfile::{self, RunFile, RunFileError};
use crate::job::JobId;
use crate::site::protocol::ExitOutcome;

/// The record of a started app's process group, in the run folder.
pub const PROCESS_FILE: &str = "process.json";
/// The app's exit status, written by the wrapper when the app ends, in the run folder.
pub const EXIT_FILE: &str = "exit_status";
/// The app's standard output, in the run folder.
pub const STDOUT_FILE: &str = "stdout.log";
/// The app's standard error, in the run folder.
pub const STDERR_FILE: &str = "stderr.log";

/// The wrapper script. `$1` is the exit file; the rest is the app's command and arguments.
/// The trap handler is `:` (not an empty string) on purpose: an ignored signal stays ignored
/// across `exec`, so an empty trap would make the app deaf to `TERM`.
const WRAPPER_SCRIPT: &str = r#"exit_file=$1
shift
trap ':' TERM INT HUP
"$@"
code=$?
printf '%s\n' "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
"#;

/// Reads and checks the run file of the app in `app_dir`.
///
/// This is the one place the runner reads run files, so the runner and the job package
/// checks always agree on the format ([`crate::job::runfile`]).
pub fn load_run_file(app_dir: &Path) -> Result<RunFile, StartError> {
    runfile::read_run_file(app_dir).map_err(|source| StartError::RunFile {
        app_dir: app_dir.to_path_buf(),
        source,
    })
}

/// What to start: one app of one job at one participant.
#[derive(Clone, Debug)]
pub struct AppLaunch {
    /// The job the app belongs to (`FEDRUN_JOB_ID`).
    pub job_id: JobId,
    /// The participant: a site's name, or `"server"` for the server's app (`FEDRUN_SITE`).
    pub site: String,
    /// The job's run folder at this participant (`FEDRUN_WORKSPACE`): logs and the process
    /// records go here.
    pub run_dir: PathBuf,
    /// The unpacked app folder (`FEDRUN_APP_DIR`), the app's working directory.
    pub app_dir: PathBuf,
}

/// How an app process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEnd {
    /// The app's exit code or the signal that killed it.
    pub outcome: ExitOutcome,
    /// True when fedrun asked this process to stop before it ended, so the end is fedrun's
    /// own doing and not a failure of the app.
    pub stop_requested: bool,
}

/// The record of a started app, kept in [`PROCESS_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The wrapper's pid (the group leader).
    pub pid: i32,
    /// The process group id (equal to `pid`: the wrapper leads its own group).
    pub pgid: i32,
    /// The leader's start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time_ticks: u64,
    /// The job.
    pub job_id: JobId,
    /// The participant that started it.
    pub site: String,
}

/// Why an app could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The run file is missing or invalid.
    #[error("app in {app_dir}: {source}")]
    RunFile {
        /// The app folder.
        app_dir: PathBuf,
        /// What is wrong with its run file.
        source: RunFileError,
    },
    /// The command named by the run file does not exist.
    #[error("command {command:?} of the app in {app_dir} was not found")]
    CommandNotFound {
        /// The command.
        command: String,
        /// The app folder.
        app_dir: PathBuf,
    },
    /// A file in the run folder could not be written.
    #[error("cannot write {path}: {source}")]
    RunFolder {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The process could not be spawned.
    #[error("cannot spawn the app in {app_dir}: {source}")]
    Spawn {
        /// The app folder.
        app_dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why a recorded app could not be looked up after a restart.
#[derive(Debug, thiserror::Error)]
pub enum ReattachError {
    /// The process record exists but cannot be read or parsed.
    #[error("cannot read process record {path}: {message}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The recorded process is alive but cannot be watched.
    #[error("cannot watch process {pid} recorded in {path}: {source}")]
    Watch {
        /// The pid.
        pid: i32,
        /// The record file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running (or ended) app process and the way to stop it and learn how it ended.
///
/// A watcher task owns the process; this handle only talks to it, so dropping the handle
/// neither stops nor orphans the app's end report (a clone of [`AppProcess::ended`] taken
/// earlier still receives it).
#[derive(Debug)]
pub struct AppProcess {
    record: ProcessRecord,
    stop: mpsc::UnboundedSender<Duration>,
    end: watch::Receiver<Option<ProcessEnd>>,
}

impl AppProcess {
    /// The process group id, as recorded in the run folder.
    pub fn pgid(&self) -> i32 {
        self.record.pgid
    }

    /// The record kept in [`PROCESS_FILE`].
    pub fn record(&self) -> &ProcessRecord {
        &self.record
    }

    /// Asks the app to stop: `SIGTERM` to its whole process group now, `SIGKILL` to the
    /// group after `grace` if it has not ended. Returns at once; the end arrives through
    /// [`AppProcess::wait`] with `stop_requested` set. A zero `grace` kills at once without
    /// asking. A second request is ignored.
    pub fn stop(&self, grace: Duration) {
        // The watcher is gone only once the process has ended, so a failed send means there
        // is nothing left to stop.
        let _ = self.stop.send(grace);
    }

    /// A receiver that holds `Some(end)` once the process has ended.
    pub fn ended(&self) -> watch::Receiver<Option<ProcessEnd>> {
        self.end.clone()
    }

    /// Waits until the app has ended. `None` only when the watcher task was dropped without
    /// seeing the end (the runtime is shutting down).
    pub async fn wait(&self) -> Option<ProcessEnd> {
        wait_end(self.end.clone()).await
    }
}

/// Waits on an [`AppProcess::ended`] receiver until the end is known.
pub async fn wait_end(mut end: watch::Receiver<Option<ProcessEnd>>) -> Option<ProcessEnd> {
    match end.wait_for(|e| e.is_some()).await {
        Ok(value) => *value,
        Err(_) => None,
    }
}

/// Starts the app described by `launch` as a detached child in its own session and process
/// group, and records the group in the run folder. Must be called inside a tokio runtime:
/// the watcher that reports the end is a tokio task.
pub fn start(launch: &AppLaunch) -> Result<AppProcess, StartError> {
    let spec = load_run_file(&launch.app_dir)?;
    let program = spec.program(&launch.app_dir);
    check_command(&program, &spec.command, &launch.app_dir)?;
    std::fs::create_dir_all(&launch.run_dir).map_err(|source| StartError::RunFolder {
        path: launch.run_dir.clone(),
        source,
    })?;
    // A stale exit file from an earlier start of the same run folder would be read as this
    // start's outcome.
    let exit_file = launch.run_dir.join(EXIT_FILE);
    match std::fs::remove_file(&exit_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StartError::RunFolder {
                path: exit_file,
                source,
            })
        }
    }
    let stdout = open_log(&launch.run_dir.join(STDOUT_FILE))?;
    let stderr = open_log(&launch.run_dir.join(STDERR_FILE))?;

    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER_SCRIPT)
        .arg("fedrun-app")
        .arg(&exit_file)
        .arg(&program)
        .args(&spec.args)
        .current_dir(&launch.app_dir)
        .envs(&spec.env)
        .env("FEDRUN_JOB_ID", launch.job_id.to_string())
        .env("FEDRUN_SITE", &launch.site)
        .env("FEDRUN_WORKSPACE", &launch.run_dir)
        .env("FEDRUN_APP_DIR", &launch.app_dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent, which is
    // all that may happen between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| StartError::Spawn {
        app_dir: launch.app_dir.clone(),
        source,
    })?;
    let pid = child
        .id()
        .expect("a child that was just spawned and not yet waited for has a pid")
        as i32;
    // The process may already be gone (an app that exits at once); a zero start time then
    // only means a later re-attach will not trust the pid, which is right for a dead one.
    let start_time_ticks = process_start_time(pid).unwrap_or(0);
    let record = ProcessRecord {
        pid,
        pgid: pid,
        start_time_ticks,
        job_id: launch.job_id,
        site: launch.site.clone(),
    };
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = watch::channel(None);
    let record_path = launch.run_dir.join(PROCESS_FILE);
    let written = write_record(&record_path, &record);
    if written.is_err() {
        // Without the record a restart could not find the group: do not leave it running.
        kill_group(pid, libc::SIGKILL);
    }
    // The watcher reaps the child either way, so a failed start leaves no zombie.
    tokio::spawn(watch_process(
        Waiter::Child(child),
        record.clone(),
        exit_file,
        stop_rx,
        end_tx,
    ));
    if let Err(source) = written {
        return Err(StartError::RunFolder {
            path: record_path,
            source,
        });
    }
    tracing::info!(job = %launch.job_id, site = %launch.site, pgid = pid, "app started");
    Ok(AppProcess {
        record,
        stop: stop_tx,
        end: end_rx,
    })
}

/// What a look-up of a recorded app after a restart found.
#[derive(Debug)]
pub enum Reattached {
    /// The app is still running; the handle reports its end.
    Running(AppProcess),
    /// The app ended while nobody watched; this is how.
    Ended(ProcessEnd),
    /// No app was ever started in this run folder.
    NotFound,
}

/// Finds the app recorded in `run_dir` after a restart of the server or site, and, if its
/// group is still running, watches it (pidfd) so its end is reported like that of a
/// process started here. A recorded app that is gone without an exit file was killed
/// together with its wrapper; it is reported as killed by `SIGKILL`. Must be called inside
/// a tokio runtime.
pub fn reattach(run_dir: &Path) -> Result<Reattached, ReattachError> {
    let record_path = run_dir.join(PROCESS_FILE);
    let text = match std::fs::read(&record_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reattached::NotFound),
        Err(e) => {
            return Err(ReattachError::Record {
                path: record_path,
                message: e.to_string(),
            })
        }
    };
    let record: ProcessRecord =
        serde_json::from_slice(&text).map_err(|e| ReattachError::Record {
            path: record_path.clone(),
            message: e.to_string(),
        })?;
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    if record.pid <= 1 || record.pgid != record.pid || record.pgid == own_group {
        // Never signal a group on the word of a record that cannot be the app's.
        return Err(ReattachError::Record {
            path: record_path,
            message: format!(
                "pid {} / pgid {} cannot be an app's group leader",
                record.pid, record.pgid
            ),
        });
    }
    let exit_file = run_dir.join(EXIT_FILE);
    if let Some(outcome) = read_exit_file(&exit_file) {
        // The app ended; anything it left behind in its group goes with it.
        kill_app_leftovers(&record);
        return Ok(Reattached::Ended(ProcessEnd {
            outcome,
            stop_requested: false,
        }));
    }
    match open_pidfd(record.pid) {
        Ok(fd) => {
            // The pidfd pins the process: if its start time matches now, the fd refers to the
            // recorded wrapper and not to a process that later got the same pid.
            if record.start_time_ticks != 0
                && process_start_time(record.pid) == Some(record.start_time_ticks)
            {
                // SAFETY: the fd is an `OwnedFd` moved into the `AsyncFd`, so it stays open
                // for as long as the registration and is closed by nothing else.
                let afd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                        .map_err(|e| ReattachError::Watch {
                        pid: record.pid,
                        path: record_path.clone(),
                        source: e.into(),
                    })?;
                let (stop_tx, stop_rx) = mpsc::unbounded_channel();
                let (end_tx, end_rx) = watch::channel(None);
                tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, "app re-attached");
                tokio::spawn(watch_process(
                    Waiter::Pidfd(afd),
                    record.clone(),
                    exit_file,
                    stop_rx,
                    end_tx,
                ));
                return Ok(Reattached::Running(AppProcess {
                    record,
                    stop: stop_tx,
                    end: end_rx,
                }));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(source) => {
            return Err(ReattachError::Watch {
                pid: record.pid,
                path: record_path,
                source,
            })
        }
    }
    // The wrapper is gone. It may have written the exit file between the first look and
    // now, so look once more before calling the end unknown.
    let outcome = read_exit_file(&exit_file).unwrap_or(ExitOutcome::Signal(libc::SIGKILL));
    kill_app_leftovers(&record);
    Ok(Reattached::Ended(ProcessEnd {
        outcome,
        stop_requested: false,
    }))
}

/// True while any process of the group `pgid` is alive (exists and is not a zombie).
///
/// A killed process whose parent has not reaped it yet is a zombie: it runs nothing, but
/// `kill(-pgid, 0)` still finds it until its parent (often init, for an orphaned app
/// child) reaps it, so this looks at the processes themselves.
pub fn group_alive(pgid: i32) -> bool {
    !live_group_members(pgid).is_empty()
}

/// The pids of the live (not zombie) processes whose process group is `pgid`.
fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // After the command name: field 3 is the state, field 5 the process group.
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if group == Some(pgid) && state != Some("Z") && state != Some("X") {
            members.push(pid);
        }
    }
    members
}

/// Kills what is left of an app that ended while nobody watched it: the live processes of
/// its recorded group that carry its `FEDRUN_JOB_ID` and `FEDRUN_SITE`. The environment
/// check matters because the recorded pgid may by now name someone else's group (after a
/// reboot, pids start over).
fn kill_app_leftovers(record: &ProcessRecord) {
    let job = format!("FEDRUN_JOB_ID={}", record.job_id);
    let site = format!("FEDRUN_SITE={}", record.site);
    for pid in live_group_members(record.pgid) {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut vars = environ.split(|b| *b == 0);
        let ours = vars.clone().any(|v| v == job.as_bytes()) && vars.any(|v| v == site.as_bytes());
        if ours {
            tracing::info!(job = %record.job_id, pid, "killing a leftover process of an ended app");
            // SAFETY: plain syscall on a pid checked just above to belong to the app.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Kills the group and waits until every process in it has died, each through its pidfd,
/// so that "ended" means the whole group is gone and not only its leader.
async fn kill_group_and_wait(pgid: i32) {
    kill_group(pgid, libc::SIGKILL);
    loop {
        let members = live_group_members(pgid);
        if members.is_empty() {
            return;
        }
        for pid in members {
            let Ok(fd) = open_pidfd(pid) else {
                // Gone between the scan and the open.
                continue;
            };
            // SAFETY: the fd is an `OwnedFd` moved into the `AsyncFd`, which owns it.
            match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                Ok(afd) => {
                    if afd.readable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(pgid, pid, error = %e, "cannot watch a process of the group");
                    return;
                }
            }
        }
    }
}

/// How the watcher learns that the wrapper has ended.
enum Waiter {
    /// A child of this process: tokio's wait also gives its status.
    Child(tokio::process::Child),
    /// A re-attached process: its pidfd becomes readable when it exits.
    Pidfd(AsyncFd<OwnedFd>),
}

impl Waiter {
    /// Waits for the end; returns the wrapper's own status when known. Cancel-safe.
    async fn ended(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Waiter::Child(child) => child.wait().await.ok(),
            Waiter::Pidfd(fd) => {
                // Readable once and for good: a pidfd of an exited process stays readable.
                match fd.readable().await {
                    Ok(mut guard) => {
                        guard.retain_ready();
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pidfd wait failed; treating the app as ended");
                        None
                    }
                }
            }
        }
    }
}

/// Owns one app process: applies stop requests, notices the end, reads the outcome and
/// publishes it.
async fn watch_process(
    mut waiter: Waiter,
    record: ProcessRecord,
    exit_file: PathBuf,
    mut stop_rx: mpsc::UnboundedReceiver<Duration>,
    end_tx: watch::Sender<Option<ProcessEnd>>,
) {
    let mut stop_requested = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            status = waiter.ended() => break status,
            Some(grace) = stop_rx.recv(), if !stop_requested => {
                stop_requested = true;
                tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, ?grace, "stopping app");
                if grace.is_zero() {
                    kill_group(record.pgid, libc::SIGKILL);
                } else {
                    kill_group(record.pgid, libc::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + grace);
                }
            }
            _ = sleep_until_opt(kill_at) => {
                tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, "grace over; killing app");
                kill_group(record.pgid, libc::SIGKILL);
                kill_at = None;
            }
        }
    };
    // The wrapper is gone; so must be whatever the app left running in its group.
    kill_group_and_wait(record.pgid).await;
    let outcome = read_exit_file(&exit_file)
        .or_else(|| status.map(outcome_of_status))
        .unwrap_or(ExitOutcome::Signal(libc::SIGKILL));
    tracing::info!(job = %record.job_id, site = %record.site, ?outcome, stop_requested, "app ended");
    let _ = end_tx.send(Some(ProcessEnd {
        outcome,
        stop_requested,
    }));
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn outcome_of_status(status: std::process::ExitStatus) -> ExitOutcome {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => outcome_of_shell_code(code),
        (None, Some(signal)) => ExitOutcome::Signal(signal),
        // A wait status is either an exit or a signal; this arm only keeps the match total.
        (None, None) => ExitOutcome::Signal(libc::SIGKILL),
    }
}

/// Reads a shell exit status: `128 + n` for `n` in 1..=64 is death by signal `n`.
fn outcome_of_shell_code(code: i32) -> ExitOutcome {
    if (129..=192).contains(&code) {
        ExitOutcome::Signal(code - 128)
    } else {
        ExitOutcome::Code(code)
    }
}

fn read_exit_file(path: &Path) -> Option<ExitOutcome> {
    let text = std::fs::read_to_string(path).ok()?;
    let code: i32 = text.trim().parse().ok()?;
    Some(outcome_of_shell_code(code))
}

fn kill_group(pgid: i32, signal: i32) {
    // A pgid of 0 or 1 would address this process's own group or every process: never.
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    // SAFETY: plain syscall on an integer id; failure (ESRCH when the group is gone) is fine.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn open_pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Checks that the program exists, so a typo in the run file is a clear start error and
/// not an exit code 127 from the wrapper.
fn check_command(program: &Path, command: &str, app_dir: &Path) -> Result<(), StartError> {
    let found = if program.components().count() > 1 {
        program.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(StartError::CommandNotFound {
            command: command.to_string(),
            app_dir: app_dir.to_path_buf(),
        })
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, StartError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| StartError::RunFolder {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the record durably: temp file, fsync, rename, fsync of the folder.
fn write_record(path: &Path, record: &ProcessRecord) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes_above_128_are_signals() {
        assert_eq!(outcome_of_shell_code(0), ExitOutcome::Code(0));
        assert_eq!(outcome_of_shell_code(101), ExitOutcome::Code(101));
        assert_eq!(outcome_of_shell_code(128), ExitOutcome::Code(128));
        assert_eq!(outcome_of_shell_code(137), ExitOutcome::Signal(9));
        assert_eq!(outcome_of_shell_code(143), ExitOutcome::Signal(15));
        assert_eq!(outcome_of_shell_code(255), ExitOutcome::Code(255));
    }

    #[test]
    fn start_time_of_this_process_is_read() {
        let pid = std::process::id() as i32;
        assert!(process_start_time(pid).is_some());
        assert_eq!(process_start_time(-5), None);
    }
}
