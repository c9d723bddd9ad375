//! Zipping a job's server run folder into the blob store (the workspace archive).
//!
//! The zip is written with sorted entries, Stored (uncompressed) and with a fixed
//! timestamp, so the same folder gives the same bytes. Symlinks are skipped: an app may
//! leave one behind, and following it could archive files from outside the run folder.
//! The folder is removed only after the blob is durable, so a failed archive never loses
//! the sources.

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

/// Zips `run_dir` into `blobs` and returns the archive's hash. A missing folder archives as
/// an empty zip (the job never wrote anything at the server).
pub fn archive_folder(run_dir: &Path, blobs: &BlobStore) -> Result<BlobHash, ArchiveError> {
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
        if run_dir.exists() {
            for (name, path, is_dir) in files(run_dir)? {
                if is_dir {
                    writer.add_directory(name, options).map_err(zip_err)?;
                } else {
                    writer.start_file(name, options).map_err(zip_err)?;
                    let mut file =
                        std::fs::File::open(&path).map_err(|source| ArchiveError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    std::io::copy(&mut file, &mut writer).map_err(|source| ArchiveError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
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

/// Archives `run_dir`, then removes it once the archive is durable.
pub fn archive_and_remove(run_dir: &Path, blobs: &BlobStore) -> Result<BlobHash, ArchiveError> {
    let hash = archive_folder(run_dir, blobs)?;
    match std::fs::remove_dir_all(run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // The archive is safe; a folder left behind only costs disk space.
        Err(e) => tracing::warn!(path = %run_dir.display(), error = %e, "run folder not removed"),
    }
    Ok(hash)
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
        let second = archive_and_remove(&run, &blobs).expect("archive");
        assert_eq!(first, second, "the same folder must give the same archive");
        assert!(!run.exists(), "the folder is removed after archiving");
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
}
