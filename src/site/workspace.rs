//! A participant's workspace: one run folder per job, with the deployed app inside.
//!
//! Layout under the workspace root:
//!
//! ```text
//! <root>/<job_id>/            the job's run folder (FEDRUN_WORKSPACE): logs, process records
//! <root>/<job_id>/<app>/      the unpacked app (FEDRUN_APP_DIR), the app's working directory
//! ```
//!
//! Deploy unpacks one app of the canonical job zip into a temporary folder beside its
//! destination and renames it into place, so a failed or refused deploy leaves nothing
//! half-written. The zip is treated as hostile input: every entry of the package (not only
//! the app's) is checked before anything is written.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::job::JobId;

/// Limits on what a deploy unpacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Entries in the whole package.
    pub max_entries: usize,
    /// Uncompressed bytes of one file.
    pub max_file_bytes: u64,
    /// Uncompressed bytes of the app.
    pub max_total_bytes: u64,
    /// Uncompressed size over compressed size of one compressed entry.
    pub max_ratio: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_entries: 10_000,
            max_file_bytes: 256 * 1024 * 1024,
            max_total_bytes: 1024 * 1024 * 1024,
            max_ratio: 100,
        }
    }
}

/// Why an app could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The app name is not a plain folder name.
    #[error("app name {0:?} is not a plain folder name")]
    BadAppName(String),
    /// The bytes are not a readable zip.
    #[error("the job package is not a readable zip: {0}")]
    NotZip(String),
    /// An entry is unsafe or over a limit.
    #[error("job package entry {entry:?} refused: {reason}")]
    BadEntry {
        /// The entry's name (lossy when it is not UTF-8).
        entry: String,
        /// Why.
        reason: String,
    },
    /// A limit of the whole package is exceeded.
    #[error("job package refused: {0}")]
    OverLimit(String),
    /// The package has no `meta.json` at its root or under one top folder.
    #[error("the job package has no meta.json")]
    NoMeta,
    /// The app is not in the package.
    #[error("app {0:?} is not in the job package")]
    NoSuchApp(String),
    /// The app has no run file.
    #[error("app {0:?} has no run.toml")]
    NoRunFile(String),
    /// The signature policy refused the app.
    #[error("signature check failed: {0}")]
    Signature(String),
    /// Writing the workspace failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The run folder of `job_id` under `root`.
pub fn job_dir(root: &Path, job_id: JobId) -> PathBuf {
    root.join(job_id.to_string())
}

/// The app folder of `app` for `job_id` under `root`.
pub fn app_dir(root: &Path, job_id: JobId, app: &str) -> PathBuf {
    job_dir(root, job_id).join(app)
}

/// The job ids that have a run folder under `root`, in order.
pub fn job_ids(root: &Path) -> Vec<JobId> {
    let Ok(entries) = std::fs::read_dir(root) else {
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

/// Unpacks `app` from the job zip `package` into `<root>/<job_id>/<app>`, replacing an
/// earlier deploy of it, and returns the app folder. Blocking: call it from a blocking
/// thread in async code.
pub fn deploy_app(
    root: &Path,
    job_id: JobId,
    app: &str,
    package: &[u8],
    limits: &UnpackLimits,
) -> Result<PathBuf, DeployError> {
    if app.is_empty() || app == "." || app == ".." || app.contains(['/', '\\', '\0']) {
        return Err(DeployError::BadAppName(app.to_string()));
    }
    let run_dir = job_dir(root, job_id);
    std::fs::create_dir_all(&run_dir).map_err(|source| DeployError::Io {
        path: run_dir.clone(),
        source,
    })?;
    let staging = run_dir.join(format!(".deploy-{app}"));
    remove_if_present(&staging)?;
    std::fs::create_dir(&staging).map_err(|source| DeployError::Io {
        path: staging.clone(),
        source,
    })?;
    let result = unpack_app(package, app, &staging, limits);
    if let Err(e) = result {
        // Best effort: the staging folder is ours and holds nothing anyone needs.
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let dest = run_dir.join(app);
    remove_if_present(&dest)?;
    std::fs::rename(&staging, &dest).map_err(|source| DeployError::Io {
        path: dest.clone(),
        source,
    })?;
    Ok(dest)
}

/// Removes the job's run folder and everything in it. Missing is fine.
pub fn remove_job(root: &Path, job_id: JobId) -> Result<(), DeployError> {
    remove_if_present(&job_dir(root, job_id))
}

fn remove_if_present(path: &Path) -> Result<(), DeployError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DeployError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Checks every entry of the zip and writes the files of `app` into `dest`.
///
/// This is the one place that reads job zips at a site, so moving to the job package's
/// own safe unpacker is a change to this function only.
fn unpack_app(
    package: &[u8],
    app: &str,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<(), DeployError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(package))
        .map_err(|e| DeployError::NotZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(DeployError::OverLimit(format!(
            "{} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        )));
    }
    // First pass: names only, all of them, so a hostile entry anywhere refuses the package.
    let mut names: Vec<(Vec<String>, bool)> = Vec::with_capacity(archive.len());
    let mut seen = BTreeSet::new();
    for index in 0..archive.len() {
        let file = archive
            .by_index_raw(index)
            .map_err(|e| DeployError::NotZip(e.to_string()))?;
        let raw = file.name_raw();
        let lossy = String::from_utf8_lossy(raw).into_owned();
        let bad = |reason: &str| DeployError::BadEntry {
            entry: lossy.clone(),
            reason: reason.to_string(),
        };
        let name = std::str::from_utf8(raw).map_err(|_| bad("name is not UTF-8"))?;
        if file.is_symlink() {
            return Err(bad("symbolic links are not allowed"));
        }
        let is_dir = file.is_dir();
        let parts = split_entry_name(name).map_err(&bad)?;
        if !seen.insert(parts.join("/")) {
            return Err(bad("duplicate entry"));
        }
        if !is_dir {
            if file.size() > limits.max_file_bytes {
                return Err(bad(&format!(
                    "{} bytes, more than the limit of {}",
                    file.size(),
                    limits.max_file_bytes
                )));
            }
            if file.compression() != zip::CompressionMethod::Stored
                && file.size() > file.compressed_size().saturating_mul(limits.max_ratio)
                && file.size() > 4096
            {
                return Err(bad(&format!(
                    "compression ratio over the limit of {}",
                    limits.max_ratio
                )));
            }
        }
        names.push((parts, is_dir));
    }
    let prefix = package_root(&names).ok_or(DeployError::NoMeta)?;
    let app_prefix: Vec<String> = prefix
        .iter()
        .cloned()
        .chain(std::iter::once(app.to_string()))
        .collect();
    let mut found = false;
    let mut has_run_file = false;
    let mut total: u64 = 0;
    for (index, (parts, is_dir)) in names.iter().enumerate() {
        if parts.len() <= app_prefix.len() || parts[..app_prefix.len()] != app_prefix[..] {
            if *parts == app_prefix {
                found = true;
            }
            continue;
        }
        found = true;
        let relative = &parts[app_prefix.len()..];
        let target = relative.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        if *is_dir {
            std::fs::create_dir_all(&target).map_err(|source| DeployError::Io {
                path: target.clone(),
                source,
            })?;
            continue;
        }
        if relative == ["run.toml"] {
            has_run_file = true;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| DeployError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut file = archive
            .by_index(index)
            .map_err(|e| DeployError::NotZip(e.to_string()))?;
        let mode = file.unix_mode();
        // Read at most one byte past the limit: the header's size may lie.
        let mut bytes = Vec::new();
        (&mut file)
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| DeployError::BadEntry {
                entry: parts.join("/"),
                reason: format!("cannot be read: {e}"),
            })?;
        if bytes.len() as u64 > limits.max_file_bytes {
            return Err(DeployError::BadEntry {
                entry: parts.join("/"),
                reason: format!("more than the limit of {} bytes", limits.max_file_bytes),
            });
        }
        total += bytes.len() as u64;
        if total > limits.max_total_bytes {
            return Err(DeployError::OverLimit(format!(
                "app {app:?} unpacks to more than {} bytes",
                limits.max_total_bytes
            )));
        }
        write_new_file(&target, &bytes, mode)?;
    }
    if !found {
        return Err(DeployError::NoSuchApp(app.to_string()));
    }
    if !has_run_file {
        return Err(DeployError::NoRunFile(app.to_string()));
    }
    Ok(())
}

/// Splits a zip entry name into path components, refusing anything that could point
/// outside the destination.
fn split_entry_name(name: &str) -> Result<Vec<String>, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err("absolute path or backslash");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" => return Err("empty path component"),
            "." | ".." => return Err("`.` or `..` in path"),
            p if p.contains(':') && parts.is_empty() && p.len() == 2 => {
                return Err("drive-letter path")
            }
            p => parts.push(p.to_string()),
        }
    }
    Ok(parts)
}

/// The components before `meta.json`: empty when it is at the root, the folder's name when
/// the package is one folder.
fn package_root(names: &[(Vec<String>, bool)]) -> Option<Vec<String>> {
    let is_meta = |parts: &[String], prefix: &[String]| {
        parts.len() == prefix.len() + 1
            && parts[..prefix.len()] == *prefix
            && parts[prefix.len()] == "meta.json"
    };
    if names.iter().any(|(p, dir)| !dir && is_meta(p, &[])) {
        return Some(Vec::new());
    }
    let top: BTreeSet<&String> = names.iter().filter_map(|(p, _)| p.first()).collect();
    if top.len() == 1 {
        let prefix = vec![(*top.iter().next()?).clone()];
        if names.iter().any(|(p, dir)| !dir && is_meta(p, &prefix)) {
            return Some(prefix);
        }
    }
    None
}

/// Creates `path` (which must not exist: the staging folder is fresh) with `bytes`,
/// keeping the owner-execute bit of the zip's Unix mode so scripts stay runnable.
fn write_new_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), DeployError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let executable = mode.map(|m| m & 0o100 != 0).unwrap_or(false);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)
        .map_err(|source| DeployError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(bytes).map_err(|source| DeployError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_split_or_refused() {
        assert_eq!(
            split_entry_name("job/app/run.toml").expect("plain"),
            vec!["job", "app", "run.toml"]
        );
        assert_eq!(split_entry_name("app/").expect("dir"), vec!["app"]);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "C:/x",
        ] {
            assert!(split_entry_name(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
