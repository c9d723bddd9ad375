//! App processes: start an app from its run file, stop it, and find it again after a restart.
//!
//! Every app runs under a tiny `/bin/sh` wrapper that is the leader of a new session and
//! process group (`setsid`), so the app is detached from the process that started it and a
//! stop reaches every process the app spawned. The wrapper runs the app's command in the
//! foreground, traps `TERM`, `INT` and `HUP` only so that it outlives the app when the whole
//! group is asked to stop, and then writes the app's exit status to [`EXIT_FILE`] (temp
//! file, then rename). That file is what lets a restarted server or site learn how an app
//! ended that it did not start itself.
//!
//! **Recorded before it runs.** The wrapper first blocks reading a pipe on its fd 3. fedrun
//! writes the [`ProcessRecord`] durably (temp file, fsync, rename, fsync of the folder),
//! then writes `go` into the pipe, then rewrites the record with `released: true`. So a
//! crash at any moment leaves one of: no record and a wrapper that reads end-of-file (the
//! starter is gone) and exits without running the app; a record that is not `released`,
//! whose group a restarted starter kills (nobody was told the app started); or a released
//! record of a running app, which a restart re-attaches to.
//!
//! **Records outside the app's reach, never trusted alone.** The records live in the
//! supervision folder ([`crate::site::workspace::supervision_dir`]), beside the run folder
//! and not in it, made 0700 and never named to the app. fedrun signals a process group only
//! when its leader's start time (field 22 of `/proc/<pid>/stat`) matches the record and the
//! leader's environment carries the record's `FEDRUN_JOB_ID` and `FEDRUN_SITE` (checked when
//! this fedrun takes the process on: it started it, or re-attached after that check; the
//! start time then proves it is still the same process). When the leader is gone, only the
//! group's processes whose environment carries the job and site are signalled, one by one.
//!
//! **Allow-listed environment.** An app sees `PATH`, `HOME`, `USER`, `LANG`, `LC_*`, `TZ`
//! and `TMPDIR` from fedrun's own environment, the names the site passes on
//! (`app_env_pass`), the run file's `[env]`, and the `FEDRUN_*` variables fedrun sets for it
//! (`FEDRUN_JOB_ID`, `FEDRUN_SITE`, `FEDRUN_WORKSPACE`, `FEDRUN_APP_DIR`); nothing else of
//! the server's or site's environment.
//!
//! Files in the supervision folder:
//! - [`PROCESS_FILE`]: JSON `{"pid", "pgid", "start_time_ticks", "job_id", "site",
//!   "released"}`.
//! - [`STOP_FILE`]: present once fedrun asked the app to stop; holds the kill time.
//! - [`EXIT_FILE`]: the exit status as the shell reports it: a number, where `128 + n`
//!   means "killed by signal `n`" (the shell convention; an app that calls `exit(130)` is
//!   therefore read as killed by signal 2).
//!
//! Files in the run folder (`FEDRUN_WORKSPACE`): [`STDOUT_FILE`], [`STDERR_FILE`], the
//! app's output, appended.
//!
//! Ends are reported through an async wait, never a polling loop: a Linux pidfd that
//! becomes readable when the wrapper exits. For a process this program started, the
//! wrapper is reaped only after the rest of its group is gone, so its zombie keeps the
//! group id from being reused while fedrun still signals it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::job::runfile::{self, RunFile, RunFileError};
use crate::job::JobId;
use crate::site::protocol::ExitOutcome;
use crate::site::workspace::supervision_dir;

/// The record of a started app's process group, in the supervision folder.
pub const PROCESS_FILE: &str = "process.json";
/// The app's exit status, written by the wrapper when the app ends, in the supervision
/// folder.
pub const EXIT_FILE: &str = "exit_status";
/// Written when fedrun asks the app to stop, in the supervision folder: the time (Unix
/// milliseconds) at which the group is to be killed. A restarted starter that re-attaches
/// keeps the stop (the end stays fedrun's doing) and kills at that time.
pub const STOP_FILE: &str = "stop_requested";
/// The app's standard output, in the run folder.
pub const STDOUT_FILE: &str = "stdout.log";
/// The app's standard error, in the run folder.
pub const STDERR_FILE: &str = "stderr.log";

/// The variables an app inherits from fedrun's own environment, besides `LC_*` and the
/// names a site passes on.
pub const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "USER", "LANG", "TZ", "TMPDIR"];

/// The fd on which the wrapper reads its release.
const RELEASE_FD: i32 = 3;

/// The wrapper script. `$1` is the exit file; the rest is the app's command and arguments.
/// It runs nothing until it reads `go` on fd 3; end-of-file there means the starter died
/// before the app was recorded, and the wrapper leaves without running it.
/// The trap handler is `:` (not an empty string) on purpose: an ignored signal stays ignored
/// across `exec`, so an empty trap would make the app deaf to `TERM`.
const WRAPPER_SCRIPT: &str = r#"exit_file=$1
shift
IFS= read -r release <&3
exec 3<&-
if [ "$release" != go ]; then exit 125; fi
trap ':' TERM INT HUP
"$@"
code=$?
printf '%s\n' "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
"#;

/// Where the process record of the app whose run folder is `run_dir` is kept.
pub fn record_path(run_dir: &Path) -> PathBuf {
    supervision_dir(run_dir).join(PROCESS_FILE)
}

/// Where the exit status of the app whose run folder is `run_dir` is kept.
pub fn exit_path(run_dir: &Path) -> PathBuf {
    supervision_dir(run_dir).join(EXIT_FILE)
}

/// Reads and checks the run file of the app in `app_dir`.
///
/// This is the one place the runner reads run files, so the runner and the job package
/// checks always agree on the format ([`crate::job::runfile`]).
pub fn load_run_file(app_dir: &Path) -> Result<RunFile, StartError> {
    runfile::read_run_file(app_dir).map_err(|source| StartError::RunFile {
        app_dir: app_dir.to_path_buf(),
        cause: source,
    })
}

/// What to start: one app of one job at one participant.
#[derive(Clone, Debug)]
pub struct AppLaunch {
    /// The job the app belongs to (`FEDRUN_JOB_ID`).
    pub job_id: JobId,
    /// The participant: a site's name, or `"server"` for the server's app (`FEDRUN_SITE`).
    pub site: String,
    /// The job's run folder at this participant (`FEDRUN_WORKSPACE`): the logs go here, and
    /// the supervision records beside it ([`supervision_dir`]).
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

/// The end of an app: another name for [`ProcessEnd`].
pub type AppEnd = ProcessEnd;

/// The record of a started app, kept in [`PROCESS_FILE`] in the supervision folder.
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
    /// True once fedrun has released the wrapper to run the app. A record that is not
    /// released belongs to a start cut short by a crash: nobody was told the app started,
    /// so a restart kills its group.
    #[serde(default)]
    pub released: bool,
}

/// Why an app could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The run file is missing or invalid.
    #[error("app in {app_dir}: {cause}")]
    RunFile {
        /// The app folder.
        app_dir: PathBuf,
        /// What is wrong with its run file.
        cause: RunFileError,
    },
    /// The command named by the run file does not exist.
    #[error("command {command:?} of the app in {app_dir} was not found")]
    CommandNotFound {
        /// The command.
        command: String,
        /// The app folder.
        app_dir: PathBuf,
    },
    /// A file in the run or supervision folder could not be written.
    #[error("cannot write {path}: {cause}")]
    RunFolder {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The process could not be spawned.
    #[error("cannot spawn the app in {app_dir}: {cause}")]
    Spawn {
        /// The app folder.
        app_dir: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The wrapper could not be released to run the app.
    #[error("cannot release the app in {app_dir}: {cause}")]
    Release {
        /// The app folder.
        app_dir: PathBuf,
        /// The cause.
        cause: std::io::Error,
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
    #[error("cannot watch process {pid} recorded in {path}: {cause}")]
    Watch {
        /// The pid.
        pid: i32,
        /// The record file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
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
    supervision: PathBuf,
    stop: mpsc::UnboundedSender<Duration>,
    end: watch::Receiver<Option<ProcessEnd>>,
}

impl AppProcess {
    /// The process group id, as recorded.
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
    /// asking. A later request can only bring the kill nearer.
    ///
    /// The request is recorded ([`STOP_FILE`]) before it is acted on, so a starter that
    /// restarts meanwhile still reports the end as requested and still kills on time.
    pub fn stop(&self, grace: Duration) {
        let kill_at = std::time::SystemTime::now() + grace;
        if let Err(e) = write_stop_file(&self.supervision, kill_at) {
            tracing::warn!(job = %self.record.job_id, site = %self.record.site, error = %e, "cannot record a stop request");
        }
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

/// Starts the app described by `launch` with no extra inherited variables; see
/// [`start_with`].
pub fn start(launch: &AppLaunch) -> Result<AppProcess, StartError> {
    start_with(launch, &[])
}

/// Starts the app described by `launch` as a detached child in its own session and process
/// group, recorded durably before it can run (see the module documentation). `env_pass`
/// names variables of fedrun's own environment the app may see besides the allow-list (the
/// site setting `app_env_pass`). Must be called inside a tokio runtime: the watcher that
/// reports the end is a tokio task.
pub fn start_with(launch: &AppLaunch, env_pass: &[String]) -> Result<AppProcess, StartError> {
    let spec = load_run_file(&launch.app_dir)?;
    let program = spec.program(&launch.app_dir);
    check_command(&program, &spec.command, &launch.app_dir)?;
    std::fs::create_dir_all(&launch.run_dir).map_err(|source| StartError::RunFolder {
        path: launch.run_dir.clone(),
        cause: source,
    })?;
    let supervision = supervision_dir(&launch.run_dir);
    create_private_dir(&supervision).map_err(|source| StartError::RunFolder {
        path: supervision.clone(),
        cause: source,
    })?;
    // A stale exit file from an earlier start of the same run folder would be read as this
    // start's outcome.
    let exit_file = supervision.join(EXIT_FILE);
    for stale in [exit_file.clone(), supervision.join(STOP_FILE)] {
        remove_file_if_present(&stale).map_err(|source| StartError::RunFolder {
            path: stale.clone(),
            cause: source,
        })?;
    }
    let stdout = open_log(&launch.run_dir.join(STDOUT_FILE))?;
    let stderr = open_log(&launch.run_dir.join(STDERR_FILE))?;
    let spawn_error = |source| StartError::Spawn {
        app_dir: launch.app_dir.clone(),
        cause: source,
    };
    let (release_read, release_write) = release_pipe().map_err(spawn_error)?;

    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(WRAPPER_SCRIPT)
        .arg("fedrun-app")
        .arg(&exit_file)
        .arg(&program)
        .args(&spec.args)
        .current_dir(&launch.app_dir)
        .env_clear()
        .envs(app_environment(launch, &spec.env, env_pass))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    let read_fd = release_read.as_raw_fd();
    // SAFETY: `setsid`, `dup2` and `fcntl` are async-signal-safe and touch no memory of the
    // parent, which is all that may happen between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if read_fd == RELEASE_FD {
                // dup2 onto itself keeps close-on-exec; clear it by hand.
                if libc::fcntl(read_fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(read_fd, RELEASE_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(spawn_error)?;
    // The wrapper has its own copy; this one must go so that the wrapper sees end-of-file if
    // the write end is closed without a release.
    drop(release_read);
    let pid = child
        .id()
        .expect("a child that was just spawned and not yet waited for has a pid")
        as i32;
    // The wrapper is blocked on its release and is our unreaped child: its pid and start
    // time are stable.
    let pidfd = match open_pidfd(pid).and_then(|fd| {
        // SAFETY: the fd is an `OwnedFd` moved into the `AsyncFd`, which owns it.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
    }) {
        Ok(fd) => fd,
        Err(source) => {
            abandon(child, pid);
            return Err(spawn_error(source));
        }
    };
    let Some(start_time_ticks) = process_start_time(pid) else {
        abandon(child, pid);
        return Err(spawn_error(std::io::Error::other(format!(
            "the wrapper {pid} vanished before it was released"
        ))));
    };
    let mut record = ProcessRecord {
        pid,
        pgid: pid,
        start_time_ticks,
        job_id: launch.job_id,
        site: launch.site.clone(),
        released: false,
    };
    let record_file = supervision.join(PROCESS_FILE);
    if let Err(source) = write_record(&record_file, &record) {
        // Without the record a restart could not find the group: it must not run.
        abandon(child, pid);
        return Err(StartError::RunFolder {
            path: record_file,
            cause: source,
        });
    }
    let mut release = std::fs::File::from(release_write);
    if let Err(source) = release.write_all(b"go\n") {
        abandon(child, pid);
        return Err(StartError::Release {
            app_dir: launch.app_dir.clone(),
            cause: source,
        });
    }
    drop(release);
    record.released = true;
    if let Err(source) = write_record(&record_file, &record) {
        // A restart would take the app for one that never started and kill it; better that
        // the start fails now, visibly.
        abandon(child, pid);
        return Err(StartError::RunFolder {
            path: record_file,
            cause: source,
        });
    }
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let (end_tx, end_rx) = watch::channel(None);
    tokio::spawn(watch_process(
        Waiter::Child { child, pidfd },
        record.clone(),
        exit_file,
        stop_rx,
        end_tx,
        None,
    ));
    tracing::info!(job = %launch.job_id, site = %launch.site, pgid = pid, "app started");
    Ok(AppProcess {
        record,
        supervision,
        stop: stop_tx,
        end: end_rx,
    })
}

/// Kills the group of a wrapper whose start failed and reaps it on a task, so a failed
/// start leaves neither a process nor a zombie. The wrapper is our unreaped child, so its
/// pid is still its own and names its group.
fn abandon(mut child: tokio::process::Child, pid: i32) {
    kill_group(pid, libc::SIGKILL);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

/// The environment an app gets: the allow-list from fedrun's own environment, the names
/// in `env_pass`, the run file's `[env]`, then fedrun's `FEDRUN_*` variables (last, so a
/// run file cannot pretend to be another job).
fn app_environment(
    launch: &AppLaunch,
    run_file_env: &BTreeMap<String, String>,
    env_pass: &[String],
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(name, _)| {
            name.to_str().is_some_and(|name| {
                INHERITED_ENV.contains(&name)
                    || name.starts_with("LC_")
                    || env_pass.iter().any(|pass| pass == name)
            })
        })
        .collect();
    for (name, value) in run_file_env {
        env.insert(name.into(), value.into());
    }
    env.insert("FEDRUN_JOB_ID".into(), launch.job_id.to_string().into());
    env.insert("FEDRUN_SITE".into(), launch.site.clone().into());
    env.insert("FEDRUN_WORKSPACE".into(), launch.run_dir.clone().into());
    env.insert("FEDRUN_APP_DIR".into(), launch.app_dir.clone().into());
    env.into_iter().collect()
}

/// A close-on-exec pipe: (read end, write end).
fn release_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a look-up of a recorded app after a restart found.
#[derive(Debug)]
pub enum Reattached {
    /// The app is still running; the handle reports its end.
    Running(AppProcess),
    /// The app ended while nobody watched; this is how.
    Ended(ProcessEnd),
    /// No app was ever started in this run folder (or its start was cut short before
    /// anyone was told, and whatever it left was killed).
    NotFound,
}

/// Reads the record of the app whose run folder is `run_dir`, if any, and checks that it
/// can be an app's record: a group leader other than init and this program's own group,
/// and, when the run folder is named after a job, that job.
fn read_record(run_dir: &Path) -> Result<Option<ProcessRecord>, ReattachError> {
    let path = record_path(run_dir);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReattachError::Record {
                path,
                message: e.to_string(),
            })
        }
    };
    let record: ProcessRecord =
        serde_json::from_slice(&text).map_err(|e| ReattachError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    if record.pid <= 1 || record.pgid != record.pid || record.pgid == own_group {
        // Never signal a group on the word of a record that cannot be the app's.
        return Err(ReattachError::Record {
            path,
            message: format!(
                "pid {} / pgid {} cannot be an app's group leader",
                record.pid, record.pgid
            ),
        });
    }
    let folder_job = run_dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<JobId>().ok());
    if let Some(folder_job) = folder_job {
        if folder_job != record.job_id {
            return Err(ReattachError::Record {
                path,
                message: format!(
                    "the record names job {}, not the job {folder_job} of its run folder",
                    record.job_id
                ),
            });
        }
    }
    Ok(Some(record))
}

/// Finds the app recorded for `run_dir` after a restart of the server or site, and, if its
/// group is still running, watches it (pidfd) so its end is reported like that of a
/// process started here. A recorded app that is gone without an exit file was killed
/// together with its wrapper; it is reported as killed by `SIGKILL`. A record that was
/// never released belongs to a start cut short by a crash: its group is killed and the
/// record forgotten ([`Reattached::NotFound`]). Must be called inside a tokio runtime.
pub fn reattach(run_dir: &Path) -> Result<Reattached, ReattachError> {
    let Some(record) = read_record(run_dir)? else {
        return Ok(Reattached::NotFound);
    };
    let record_file = record_path(run_dir);
    if !record.released {
        tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, "killing an app whose start was cut short");
        kill_unreleased(&record);
        if let Err(e) = std::fs::remove_dir_all(supervision_dir(run_dir)) {
            tracing::warn!(job = %record.job_id, error = %e, "cannot remove the records of a start cut short");
        }
        return Ok(Reattached::NotFound);
    }
    let exit_file = exit_path(run_dir);
    let supervision = supervision_dir(run_dir);
    let stop = read_stop_file(&supervision);
    if let Some(outcome) = read_exit_file(&exit_file) {
        // The app ended; anything it left behind in its group goes with it.
        kill_app_leftovers(&record, libc::SIGKILL);
        return Ok(Reattached::Ended(ProcessEnd {
            outcome,
            stop_requested: stop.is_some(),
        }));
    }
    match open_pidfd(record.pid) {
        Ok(fd) => {
            // The pidfd pins the process: if it is the recorded leader now (start time, job
            // and site), the fd refers to it and not to a process that later got the pid.
            if leader_verified(&record) {
                // SAFETY: the fd is an `OwnedFd` moved into the `AsyncFd`, so it stays open
                // for as long as the registration and is closed by nothing else.
                let afd =
                    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                        .map_err(|e| ReattachError::Watch {
                        pid: record.pid,
                        path: record_file.clone(),
                        cause: e.into(),
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
                    stop,
                ));
                return Ok(Reattached::Running(AppProcess {
                    record,
                    supervision,
                    stop: stop_tx,
                    end: end_rx,
                }));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(source) => {
            return Err(ReattachError::Watch {
                pid: record.pid,
                path: record_file,
                cause: source,
            })
        }
    }
    // The wrapper is gone. It may have written the exit file between the first look and
    // now, so look once more before calling the end unknown.
    let outcome = read_exit_file(&exit_file).unwrap_or(ExitOutcome::Signal(libc::SIGKILL));
    kill_app_leftovers(&record, libc::SIGKILL);
    Ok(Reattached::Ended(ProcessEnd {
        outcome,
        stop_requested: stop.is_some(),
    }))
}

/// Kills what is recorded for `run_dir` if it is still running, whatever its record says:
/// for a starter that finds an app it has no use for (its start was never recorded where
/// the starter keeps its state, so nobody will ever wait for it). Returns true when a live,
/// verified app was found and its group killed.
pub fn kill_unclaimed(run_dir: &Path) -> bool {
    let Ok(Some(record)) = read_record(run_dir) else {
        return false;
    };
    // Only a live leader is looked for: this runs for every job a server knows at start-up,
    // and a scan of every process per job would be paid for every archived job to find, at
    // most, the leftovers of an app whose wrapper has already ended.
    let found = leader_verified(&record);
    if found {
        tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, "killing an app nobody claims");
        kill_group(record.pgid, libc::SIGKILL);
    }
    found
}

/// Removes the supervision records of `run_dir`, unless they name an app that is still
/// running (a restart must still find it). Missing records are fine.
pub fn forget(run_dir: &Path) -> std::io::Result<()> {
    if let Ok(Some(record)) = read_record(run_dir) {
        if leader_verified(&record) {
            tracing::warn!(job = %record.job_id, site = %record.site, pgid = record.pgid, "keeping the records of a running app");
            return Ok(());
        }
    }
    match std::fs::remove_dir_all(supervision_dir(run_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Kills the group of a start cut short: the leader if it proves to be the recorded one,
/// and any process of the group that carries the job (the app may have run for a moment
/// when the crash came after the release).
fn kill_unreleased(record: &ProcessRecord) {
    if leader_verified(record) {
        kill_group(record.pgid, libc::SIGKILL);
    }
    kill_app_leftovers(record, libc::SIGKILL);
}

/// True when `record.pid` is, now, the recorded wrapper: alive (not a zombie), started at
/// the recorded time, leading its own session and group, with the record's job and site in
/// its environment (the wrapper's environment is the app's, set by fedrun at spawn).
fn leader_verified(record: &ProcessRecord) -> bool {
    let Some(stat) = read_stat(record.pid) else {
        return false;
    };
    if matches!(stat.state, 'Z' | 'X')
        || record.start_time_ticks == 0
        || stat.start_time != record.start_time_ticks
        || stat.pgrp != record.pid
        || stat.session != record.pid
    {
        return false;
    }
    carries_job(record.pid, record)
}

/// True when the environment of `pid` carries the record's `FEDRUN_JOB_ID` and
/// `FEDRUN_SITE`.
fn carries_job(pid: i32, record: &ProcessRecord) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let job = format!("FEDRUN_JOB_ID={}", record.job_id);
    let site = format!("FEDRUN_SITE={}", record.site);
    let mut vars = environ.split(|b| *b == 0);
    vars.clone().any(|v| v == job.as_bytes()) && vars.any(|v| v == site.as_bytes())
}

/// True while `record.pid` is the recorded leader, alive or a zombie not yet reaped: its
/// start time matches. A process this fedrun took on (started, or re-attached after
/// [`leader_verified`]) is known to carry the job; while its pid shows the same start time
/// it is still that process, and its group id can name no other group.
fn leader_pinned(record: &ProcessRecord) -> bool {
    record.start_time_ticks != 0 && process_start_time(record.pid) == Some(record.start_time_ticks)
}

/// Sends `signal` to the app: to its whole group while the leader is pinned, else to each
/// live process of the group that carries the job.
fn signal_app(record: &ProcessRecord, signal: i32) {
    if leader_pinned(record) {
        kill_group(record.pgid, signal);
    } else {
        kill_app_leftovers(record, signal);
    }
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
        let Some(stat) = read_stat(pid) else {
            continue;
        };
        if stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X') {
            members.push(pid);
        }
    }
    members
}

/// The live processes of the recorded group that carry the record's `FEDRUN_JOB_ID` and
/// `FEDRUN_SITE`. The environment check matters because the recorded pgid may by now name
/// someone else's group (after a reboot, pids start over).
fn app_members(record: &ProcessRecord) -> Vec<i32> {
    live_group_members(record.pgid)
        .into_iter()
        .filter(|pid| carries_job(*pid, record))
        .collect()
}

/// Sends `signal` to each live process of the recorded group that carries the job.
fn kill_app_leftovers(record: &ProcessRecord, signal: i32) {
    for pid in app_members(record) {
        tracing::info!(job = %record.job_id, pid, signal, "signalling a process of an app whose leader is gone");
        // SAFETY: plain syscall on a pid checked just above to belong to the app.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Kills the app and waits until every process of it has died, each through its pidfd, so
/// that "ended" means the whole group is gone and not only its leader. While the leader is
/// pinned (our unreaped child, or a re-attached leader not yet reaped) that is the whole
/// group; after, only the processes that carry the job.
async fn kill_app_and_wait(record: &ProcessRecord) {
    loop {
        let members = if leader_pinned(record) {
            live_group_members(record.pgid)
        } else {
            app_members(record)
        };
        if members.is_empty() {
            return;
        }
        signal_app(record, libc::SIGKILL);
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
                    tracing::warn!(pgid = record.pgid, pid, error = %e, "cannot watch a process of the group");
                    return;
                }
            }
        }
    }
}

/// How the watcher learns that the wrapper has ended.
enum Waiter {
    /// A child of this process: its pidfd says when it exits, and it is reaped (giving its
    /// status) only after the rest of its group is gone.
    Child {
        child: tokio::process::Child,
        pidfd: AsyncFd<OwnedFd>,
    },
    /// A re-attached process: its pidfd becomes readable when it exits.
    Pidfd(AsyncFd<OwnedFd>),
}

impl Waiter {
    /// Waits until the wrapper has exited. Cancel-safe.
    async fn exited(&self) {
        let fd = match self {
            Waiter::Child { pidfd, .. } => pidfd,
            Waiter::Pidfd(fd) => fd,
        };
        // Readable once and for good: a pidfd of an exited process stays readable.
        match fd.readable().await {
            Ok(mut guard) => guard.retain_ready(),
            Err(e) => {
                tracing::warn!(error = %e, "pidfd wait failed; treating the app as ended");
            }
        }
    }

    /// Reaps a child and returns its status; nothing for a re-attached process.
    async fn status(self) -> Option<std::process::ExitStatus> {
        match self {
            Waiter::Child { mut child, .. } => child.wait().await.ok(),
            Waiter::Pidfd(_) => None,
        }
    }
}

/// Owns one app process: applies stop requests, notices the end, reads the outcome and
/// publishes it. `resumed_stop` is the kill time of a stop an earlier starter asked for.
async fn watch_process(
    waiter: Waiter,
    record: ProcessRecord,
    exit_file: PathBuf,
    mut stop_rx: mpsc::UnboundedReceiver<Duration>,
    end_tx: watch::Sender<Option<ProcessEnd>>,
    resumed_stop: Option<std::time::SystemTime>,
) {
    let mut stop_requested = resumed_stop.is_some();
    // The earlier starter sent TERM (or died just before); what is left is the kill.
    let mut kill_at: Option<tokio::time::Instant> = resumed_stop.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + left
    });
    loop {
        tokio::select! {
            _ = waiter.exited() => break,
            Some(grace) = stop_rx.recv() => {
                let at = tokio::time::Instant::now() + grace;
                if kill_at.is_some_and(|k| k <= at) {
                    // A stop that kills no sooner than the one under way changes nothing.
                    continue;
                }
                tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, ?grace, "stopping app");
                if grace.is_zero() {
                    signal_app(&record, libc::SIGKILL);
                } else if !stop_requested {
                    signal_app(&record, libc::SIGTERM);
                }
                stop_requested = true;
                kill_at = (!grace.is_zero()).then_some(at);
            }
            _ = sleep_until_opt(kill_at) => {
                tracing::info!(job = %record.job_id, site = %record.site, pgid = record.pgid, "grace over; killing app");
                signal_app(&record, libc::SIGKILL);
                kill_at = None;
            }
        }
    }
    // The wrapper is gone; so must be whatever the app left running in its group. A child
    // is reaped only after that, so its zombie keeps the group id ours meanwhile.
    kill_app_and_wait(&record).await;
    let status = waiter.status().await;
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

/// The fields of `/proc/<pid>/stat` that supervision looks at.
struct Stat {
    /// Field 3.
    state: char,
    /// Field 5: the process group.
    pgrp: i32,
    /// Field 6: the session.
    session: i32,
    /// Field 22: the start time in clock ticks since boot.
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; count after it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks since boot.
fn process_start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
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
            cause: source,
        })
}

fn remove_file_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates `dir` and its parent (the supervision root) readable by fedrun's user only,
/// whatever the umask, and makes the new entries durable.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        // Made (and synced) by an earlier start of the same run folder; only the mode is
        // checked again, in case someone loosened it.
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let root = dir.parent().unwrap_or(dir);
    let new_root = !root.is_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Only new entries need their folder synced: the job's folder always, the supervision
    // root only the first time.
    let mut made = vec![dir];
    if new_root {
        made.push(root);
    }
    for path in made {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    if !new_root {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Records a stop request: the kill time in Unix milliseconds, synced.
fn write_stop_file(supervision: &Path, kill_at: std::time::SystemTime) -> std::io::Result<()> {
    let millis = kill_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    let path = supervision.join(STOP_FILE);
    if let Some(earlier) = read_stop_file(supervision) {
        if earlier <= kill_at {
            // The stop already recorded kills no later.
            return Ok(());
        }
    }
    let mut file = std::fs::File::create(&path)?;
    file.write_all(millis.to_string().as_bytes())?;
    file.sync_all()
}

/// The kill time of a recorded stop request, if any. A file that cannot be read as a time
/// still says a stop was asked for; it then means "kill now".
fn read_stop_file(supervision: &Path) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(supervision.join(STOP_FILE)).ok()?;
    let millis: u64 = text.trim().parse().unwrap_or(0);
    Some(std::time::UNIX_EPOCH + Duration::from_millis(millis))
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
