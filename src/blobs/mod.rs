//! Content-addressed blob store: large bytes (job packages, workspace archives, state
//! snapshots) kept as files named by the BLAKE3 hash of their content.
//!
//! Architecture invariant: a blob file only ever appears under its final name complete
//! and durable (temp file, fsync, rename, fsync of the folder), and a read hands out
//! bytes only after checking they still hash to their name. The store never decides on
//! its own what is referenced: the caller derives that from the history and passes the
//! set to [`BlobStore::sweep`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use crate::lifecycle::BlobHash;

/// The BLAKE3 hash of `bytes`: the name they get in the store.
pub fn hash_of(bytes: &[u8]) -> BlobHash {
    BlobHash::from(blake3::hash(bytes))
}

/// The blob named by file `name`, when the name is exactly a hash as the store writes it
/// (64 lowercase hex digits).
fn blob_name(name: &str) -> Option<BlobHash> {
    let hash: BlobHash = name.parse().ok()?;
    (hash.to_hex() == name).then_some(hash)
}

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed.
    #[error("blob store: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No blob has this hash.
    #[error("blob {hash} is not in the store")]
    Missing {
        /// The hash asked for.
        hash: BlobHash,
    },
    /// The file named by a hash no longer hashes to it.
    #[error("blob {hash} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The name (expected hash).
        hash: BlobHash,
        /// What the content hashes to now.
        actual: BlobHash,
    },
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs kept because they are referenced.
    pub kept: usize,
    /// Blobs removed because nothing refers to them.
    pub removed: Vec<BlobHash>,
    /// Leftover temp files (from a put interrupted by a crash) removed.
    pub temp_files_removed: usize,
}

/// A folder of blobs named by their BLAKE3 hash.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

const TEMP_PREFIX: &str = ".tmp-";

impl BlobStore {
    /// Opens (creating if needed) the blob folder `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
            what: "create folder",
            path: dir.clone(),
            source,
        })?;
        Ok(BlobStore { dir })
    }

    /// The folder holding the blobs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path a blob with this hash has.
    pub fn path_of(&self, hash: &BlobHash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// Streams `reader` into the store and returns its hash. The blob is durable when
    /// this returns: written to a temp file, fsynced, renamed to its hash, and the
    /// folder fsynced. Putting bytes that are already stored changes nothing.
    pub fn put(&self, reader: &mut dyn Read) -> Result<BlobHash, BlobError> {
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|source| self.io("create temp file in", &self.dir, source))?;
        let temp_path = temp.path().to_path_buf();
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io("read blob input for", &temp_path, source)),
            };
            hasher.update(&buffer[..n]);
            temp.write_all(&buffer[..n])
                .map_err(|source| self.io("write", &temp_path, source))?;
        }
        let hash = BlobHash::from(hasher.finalize());
        let final_path = self.path_of(&hash);
        if final_path.exists() {
            // Same content is already stored and durable; the temp file is dropped.
            return Ok(hash);
        }
        temp.as_file()
            .sync_all()
            .map_err(|source| self.io("fsync", &temp_path, source))?;
        temp.persist(&final_path)
            .map_err(|err| self.io("rename temp file to", &final_path, err.error))?;
        sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))?;
        tracing::debug!(%hash, "blob stored");
        Ok(hash)
    }

    /// Stores `bytes`; see [`BlobStore::put`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobHash, BlobError> {
        self.put(&mut &bytes[..])
    }

    /// Reads a blob and checks that it still hashes to its name.
    pub fn get(&self, hash: &BlobHash) -> Result<Vec<u8>, BlobError> {
        let path = self.path_of(hash);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { hash: *hash })
            }
            Err(source) => return Err(self.io("read", &path, source)),
        };
        let actual = hash_of(&bytes);
        if actual != *hash {
            return Err(BlobError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether a blob with this hash is stored (its content is not checked).
    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// The hashes of every stored blob, in order.
    pub fn list(&self) -> Result<BTreeSet<BlobHash>, BlobError> {
        let mut hashes = BTreeSet::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|source| self.io("list", &self.dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| self.io("list", &self.dir, source))?;
            if let Some(hash) = entry.file_name().to_str().and_then(blob_name) {
                hashes.insert(hash);
            }
        }
        Ok(hashes)
    }

    /// Removes one blob (absent is fine) and fsyncs the folder.
    pub fn remove(&self, hash: &BlobHash) -> Result<(), BlobError> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(self.io("remove", &path, source)),
        }
        sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))
    }

    /// Removes every blob not in `referenced`, and temp files left by interrupted puts.
    /// The caller derives `referenced` from the history (see [`reference_counts`]).
    pub fn sweep(&self, referenced: &BTreeSet<BlobHash>) -> Result<SweepReport, BlobError> {
        let mut report = SweepReport::default();
        let entries =
            fs::read_dir(&self.dir).map_err(|source| self.io("list", &self.dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| self.io("list", &self.dir, source))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| self.io("remove", &path, source))?;
                report.temp_files_removed += 1;
                continue;
            }
            let Some(hash) = blob_name(name) else {
                continue;
            };
            if referenced.contains(&hash) {
                report.kept += 1;
            } else {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| self.io("remove", &path, source))?;
                report.removed.push(hash);
            }
        }
        if !report.removed.is_empty() || report.temp_files_removed > 0 {
            sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))?;
        }
        report.removed.sort();
        tracing::info!(
            kept = report.kept,
            removed = report.removed.len(),
            "blob sweep"
        );
        Ok(report)
    }

    fn io(&self, what: &'static str, path: &Path, source: std::io::Error) -> BlobError {
        BlobError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counts references per blob from the references that live jobs (and the current
/// snapshot) hold, as derived from the history. A blob with a count of zero, that is,
/// absent from the map, may be swept.
pub fn reference_counts<'a>(
    references: impl IntoIterator<Item = &'a BlobHash>,
) -> BTreeMap<BlobHash, usize> {
    let mut counts = BTreeMap::new();
    for hash in references {
        *counts.entry(*hash).or_insert(0) += 1;
    }
    counts
}

/// Fsyncs a folder so a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
