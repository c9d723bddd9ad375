//! A participant's workspace: one run folder per job, with the deployed app inside.
//!
//! Layout under the workspace root:
//!
//! ```text
//! <root>/<job_id>/            the job's run folder (FEDRUN_WORKSPACE): logs, process records
//! <root>/<job_id>/<app>/      the unpacked app (FEDRUN_APP_DIR), the app's working directory
//! <root>/.fedrun-supervision/<job_id>/
//!                             fedrun's supervision records of the job's app (process
//!                             record, exit status); outside the run folder, mode 0700,
//!                             and never named to the app
//! ```
//!
//! The supervision folder starts with a dot, so it never parses as a job id and
//! [`job_ids`] does not list it.
//!
//! Deploy unpacks the whole canonical job zip into a staging folder beside its
//! destination (with [`crate::job::package::unpack`], which treats the zip as hostile and
//! writes nothing outside the staging folder), checks the job's signature there per the
//! `require_signed_jobs` policy ([`crate::trust::check_job`]: a signature covers the whole
//! job, so the whole job is needed to check it), checks the app's run file, and then
//! renames the app's folder into place and drops the rest. A failed or refused deploy
//! leaves nothing half-written.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::job::limits::Limits;
use crate::job::package::{self, UnpackError};
use crate::job::runfile::{self, RunFileError};
use crate::job::JobId;
use crate::trust::{JobTrust, PolicyError, TrustPolicy};

/// The staging folder of a deploy, in the job's run folder.
const STAGING_DIR: &str = ".deploy-staging";

/// Why an app could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The app name is not a plain folder name.
    #[error("app name {0:?} is not a plain folder name")]
    BadAppName(String),
    /// The package could not be unpacked (malformed, hostile, over a limit).
    #[error("cannot unpack the job package: {0}")]
    Unpack(UnpackError),
    /// The app is not in the package.
    #[error("app {0:?} is not in the job package")]
    NoSuchApp(String),
    /// The app's run file is missing or invalid.
    #[error("app {app:?}: {cause}")]
    RunFile {
        /// The app.
        app: String,
        /// What is wrong with its run file.
        cause: RunFileError,
    },
    /// The signature policy refused the job.
    #[error(transparent)]
    Signature(#[from] PolicyError),
    /// Writing the workspace failed.
    #[error("cannot write {path}: {cause}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

// By hand, not `#[from]`: the message already holds the cause, so it is not also the
// `source()` (an error chain would print it twice).
impl From<UnpackError> for DeployError {
    fn from(error: UnpackError) -> Self {
        DeployError::Unpack(error)
    }
}

/// A deployed app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// The app folder.
    pub app_dir: PathBuf,
    /// Whether the job was signed, and by whom.
    pub trust: JobTrust,
}

/// The run folder of `job_id` under `root`.
pub fn job_dir(root: &Path, job_id: JobId) -> PathBuf {
    root.join(job_id.to_string())
}

/// The app folder of `app` for `job_id` under `root`.
pub fn app_dir(root: &Path, job_id: JobId, app: &str) -> PathBuf {
    job_dir(root, job_id).join(app)
}

/// The name of the folder, beside the run folders, that holds fedrun's supervision records.
pub const SUPERVISION_DIR: &str = ".fedrun-supervision";

/// The folder of fedrun's supervision records for the app whose run folder is `run_dir`:
/// `<run_dir>/../.fedrun-supervision/<run folder name>`. It is outside the run folder (the
/// app's `FEDRUN_WORKSPACE`), so nothing the app writes there can change what fedrun
/// believes about its processes.
pub fn supervision_dir(run_dir: &Path) -> PathBuf {
    let parent = run_dir.parent().unwrap_or_else(|| Path::new("/"));
    let name = run_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "root".into());
    parent.join(SUPERVISION_DIR).join(name)
}

/// The job ids that have a run folder under `root`, in order.
pub fn job_ids(root: &Path) -> Vec<JobId> {
    folder_ids(root)
}

/// The job ids that have supervision records under `root` (see [`supervision_dir`]),
/// in order: the only jobs that may have an app process.
pub fn supervised_job_ids(root: &Path) -> Vec<JobId> {
    folder_ids(&root.join(SUPERVISION_DIR))
}

/// The sub-folders of `dir` named by a job id, in order.
fn folder_ids(dir: &Path) -> Vec<JobId> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids: Vec<JobId> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    ids.sort();
    ids
}

/// Deploys `app` of the canonical job zip `package` into `<root>/<job_id>/<app>`,
/// replacing an earlier deploy of it, after checking the job's signature against `policy`
/// at time `at`. Blocking: call it from a blocking thread in async code.
pub fn deploy_app(
    root: &Path,
    job_id: JobId,
    app: &str,
    package: &[u8],
    limits: &Limits,
    policy: &TrustPolicy,
    at: SystemTime,
) -> Result<Deployed, DeployError> {
    if app.is_empty()
        || app == "."
        || app == ".."
        || app == STAGING_DIR
        || app.contains(['/', '\\', '\0'])
    {
        return Err(DeployError::BadAppName(app.to_string()));
    }
    let run_dir = job_dir(root, job_id);
    std::fs::create_dir_all(&run_dir).map_err(|source| DeployError::Io {
        path: run_dir.clone(),
        cause: source,
    })?;
    let staging = run_dir.join(STAGING_DIR);
    remove_if_present(&staging)?;
    let result = stage(package, app, &staging, limits, policy, at);
    let outcome = result.and_then(|trust| {
        let dest = run_dir.join(app);
        remove_if_present(&dest)?;
        std::fs::rename(staging.join(app), &dest).map_err(|source| DeployError::Io {
            path: dest.clone(),
            cause: source,
        })?;
        Ok(Deployed {
            app_dir: dest,
            trust,
        })
    });
    // The staging folder is ours and, after the rename, holds only other participants'
    // apps: nothing anyone needs, whether the deploy worked or not.
    if let Err(e) = remove_if_present(&staging) {
        tracing::warn!(error = %e, "cannot remove a deploy staging folder");
    }
    outcome
}

/// Unpacks the job into `staging` and checks the signature and the app's run file.
fn stage(
    package: &[u8],
    app: &str,
    staging: &Path,
    limits: &Limits,
    policy: &TrustPolicy,
    at: SystemTime,
) -> Result<JobTrust, DeployError> {
    package::unpack(package, None, staging, limits)?;
    let app_dir = staging.join(app);
    if !app_dir.is_dir() {
        return Err(DeployError::NoSuchApp(app.to_string()));
    }
    let trust = crate::trust::check_job(staging, policy, at)?;
    runfile::read_run_file(&app_dir).map_err(|source| DeployError::RunFile {
        app: app.to_string(),
        cause: source,
    })?;
    Ok(trust)
}

/// Removes the job's run folder and everything in it, and the job's supervision records
/// unless they still name a live app (a restart must be able to find a running app even if
/// its folder is gone). Missing is fine.
pub fn remove_job(root: &Path, job_id: JobId) -> Result<(), DeployError> {
    let run_dir = job_dir(root, job_id);
    remove_if_present(&run_dir)?;
    if let Err(source) = crate::site::process::forget(&run_dir) {
        return Err(DeployError::Io {
            path: supervision_dir(&run_dir),
            cause: source,
        });
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), DeployError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DeployError::Io {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}
