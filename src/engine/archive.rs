//! Zipping a job's server run folder into the blob store (the workspace archive).
//!
//! The zip is written with sorted entries, Stored (uncompressed) and with a fixed
//! timestamp, so the same folder gives the same bytes. Symlinks are skipped: an app may
//! leave one behind, and following it could archive files from outside the run folder.
//!
//! Crash safety (SPEC section 8): archiving is two steps the node runs on either side of
//! the durable `WorkspaceArchived` event. [`archive_folder`] zips the folder into the blob
//! store and leaves the folder alone; [`remove_run_folder`] removes it, and the node calls
//! it only once the event naming the archive's hash is durable. A crash between the two
//! leaves the folder in place, so archiving it again after the restart gives the same
//! bytes and hash. A folder that is missing when an archive starts is an
//! [`ArchiveError::RunFolderMissing`], never an empty archive that would replace the
//! workspace a crashed run left behind.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use crate::blobs::{BlobError, BlobStore};
use crate::lifecycle::BlobHash;

/// Why a workspace could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the folder or writing the temporary zip failed.
    #[error("archiving {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the zip failed.
    #[error("archiving {path}: {source}")]
    Zip {
        /// The run folder.
        path: PathBuf,
        /// The cause.
        source: zip::result::ZipError,
    },
    /// Storing the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The run folder does not exist (or is not a folder) when the archive starts. An
    /// archive is never made from nothing: a missing folder usually means an earlier
    /// attempt already archived and removed it, and an empty zip would replace that
    /// workspace with a worse one.
    #[error("archiving {path}: the run folder is missing, so there is no workspace to archive")]
    RunFolderMissing {
        /// The run folder.
        path: PathBuf,
    },
}

fn files(root: &Path) -> Result<Vec<(String, PathBuf, bool)>, ArchiveError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ArchiveError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| ArchiveError::Io {
                path: path.clone(),
                source,
            })?;
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let name = relative.to_string_lossy().replace('\\', "/");
            if kind.is_dir() {
                out.push((format!("{name}/"), path.clone(), true));
                stack.push(path);
            } else if kind.is_file() {
                out.push((name, path, false));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Opens a file that was listed as a regular file, without following a symlink: an app
/// may replace a file by a link after the listing, and following it could put a file
/// from outside the run folder (readable by the server, not by the app) into the
/// archive. A file that became a link, or vanished, is skipped (`None`), as links are.
fn open_listed_file(path: &Path) -> Result<Option<std::fs::File>, ArchiveError> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path);
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP)
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::warn!(path = %path.display(), "a file of the run folder became a link or vanished while archiving; skipped");
            Ok(None)
        }
        Err(source) => Err(ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Zips `run_dir` into `blobs` and returns the archive's hash; the folder is left as it
/// is (see [`remove_run_folder`]). The blob is durable when this returns. The same folder
/// always gives the same bytes and hash, so a retry after a crash is harmless.
///
/// A missing `run_dir` (or one that is not a folder, a symlink included) is
/// [`ArchiveError::RunFolderMissing`]: a workspace is never archived as an empty zip.
pub fn archive_folder(run_dir: &Path, blobs: &BlobStore) -> Result<BlobHash, ArchiveError> {
    match std::fs::symlink_metadata(run_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(ArchiveError::RunFolderMissing {
                path: run_dir.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArchiveError::RunFolderMissing {
                path: run_dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(ArchiveError::Io {
                path: run_dir.to_path_buf(),
                source,
            })
        }
    }
    let mut temp = tempfile::tempfile().map_err(|source| ArchiveError::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    {
        let zip_err = |source| ArchiveError::Zip {
            path: run_dir.to_path_buf(),
            source,
        };
        let mut writer = zip::ZipWriter::new(&mut temp);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .large_file(true);
        for (name, path, is_dir) in files(run_dir)? {
            if is_dir {
                writer.add_directory(name, options).map_err(zip_err)?;
            } else {
                let Some(mut file) = open_listed_file(&path)? else {
                    continue;
                };
                writer.start_file(name, options).map_err(zip_err)?;
                std::io::copy(&mut file, &mut writer).map_err(|source| ArchiveError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        writer.finish().map_err(zip_err)?;
    }
    let io = |source| ArchiveError::Io {
        path: run_dir.to_path_buf(),
        source,
    };
    temp.flush().map_err(io)?;
    temp.rewind().map_err(io)?;
    let hash = blobs.put(&mut temp)?;
    Ok(hash)
}

/// Removes a run folder after its archive is recorded. The node calls this only once the
/// `WorkspaceArchived` event that names the archive is durable; a folder already gone is
/// fine (the removal is repeated after a crash). Errors are returned rather than logged so
/// the caller decides; a folder left behind only costs disk space.
pub fn remove_run_folder(run_dir: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_dir_all(run_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ArchiveError::Io {
            path: run_dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_folder_same_archive_and_the_folder_goes_only_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("app/sub")).expect("folders");
        std::fs::write(run.join("app/sub/model.bin"), b"weights").expect("file");
        std::fs::write(run.join("stdout.log"), b"round 1\n").expect("file");
        let first = archive_folder(&run, &blobs).expect("archive");
        let second = archive_folder(&run, &blobs).expect("archive");
        assert_eq!(first, second, "the same folder must give the same archive");
        assert!(
            run.join("stdout.log").is_file(),
            "archiving removes nothing"
        );
        remove_run_folder(&run).expect("removed");
        assert!(
            !run.exists(),
            "the folder goes when asked, after the archive"
        );
        remove_run_folder(&run).expect("removing a folder already gone is fine");
        let bytes = blobs.get(&first).expect("blob is stored");
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
        let names: Vec<String> = (0..zip.len())
            .map(|i| zip.by_index(i).expect("entry").name().to_string())
            .collect();
        assert_eq!(
            names,
            ["app/", "app/sub/", "app/sub/model.bin", "stdout.log"]
        );
    }

    #[test]
    fn a_missing_run_folder_is_an_error_never_an_empty_archive() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
        let run = dir.path().join("never-created");
        let err = archive_folder(&run, &blobs).expect_err("a missing folder must not archive");
        assert!(
            matches!(&err, ArchiveError::RunFolderMissing { path } if *path == run),
            "{err}"
        );
        assert!(err.to_string().contains("run folder is missing"), "{err}");
        assert!(blobs.list().expect("list").is_empty(), "nothing was stored");
        // A file where the folder should be is not a workspace either.
        std::fs::write(&run, b"x").expect("file");
        assert!(matches!(
            archive_folder(&run, &blobs),
            Err(ArchiveError::RunFolderMissing { .. })
        ));
    }

    #[test]
    fn a_file_swapped_for_a_link_after_listing_is_skipped_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"server-only").expect("file");
        let link = dir.path().join("model.bin");
        std::os::unix::fs::symlink(&secret, &link).expect("link");
        // What the archive does with a path it listed as a file that is now a link.
        assert!(open_listed_file(&link).expect("not an error").is_none());
        assert!(open_listed_file(&dir.path().join("gone"))
            .expect("not an error")
            .is_none());
        assert!(open_listed_file(&secret).expect("a file").is_some());
    }

    #[test]
    fn a_crash_before_removal_archives_again_to_the_same_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("app")).expect("folders");
        std::fs::write(run.join("app/out.txt"), b"result").expect("file");
        let before_crash = archive_folder(&run, &blobs).expect("archive");
        // The crash: `WorkspaceArchived` was never recorded, so the folder must still be
        // there and archiving it again after the restart must give the same workspace.
        assert!(
            run.join("app/out.txt").is_file(),
            "archiving leaves the folder"
        );
        let after_restart = archive_folder(&run, &blobs).expect("archive again");
        assert_eq!(before_crash, after_restart);
        remove_run_folder(&run).expect("remove");
        assert!(!run.exists());
        remove_run_folder(&run).expect("removing twice is fine");
        assert!(
            blobs.get(&before_crash).is_ok(),
            "the archive survives removal"
        );
    }
}
