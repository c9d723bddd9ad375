//! The on-disk store: sled 0.34.7, made durable by an fsync of its data file after
//! every flush.
//!
//! Folder layout under the data folder `D`: `D/history/` is sled's folder (its data
//! file is `D/history/db`), `D/blobs/` the blob store (snapshots live there), and
//! `D/anchor` the anchor.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::record::{key_seq, seq_key, FORMAT_VERSION, MIN_READER_VERSION, READER_VERSION};
use super::snapshot::SnapshotRecord;
use super::storage::{Head, RecordIter, Storage, StorageError};
use super::{anchor, OpenError};
use crate::blobs::{BlobError, BlobStore};

const EVENTS_TREE: &str = "events";
const META_TREE: &str = "meta";
const KEY_FORMAT_VERSION: &str = "format_version";
const KEY_MIN_READER_VERSION: &str = "min_reader_version";
const KEY_SNAPSHOT: &str = "snapshot";

/// The seam through which the store makes sled's data file durable. The real one calls
/// `fdatasync`; tests put a counting or failing one in its place to prove that every
/// acknowledgement follows a sync, and that a failed sync stops the history.
pub trait DataFileSync: Send {
    /// Makes everything written to `file` (at `path`) durable.
    fn sync(&mut self, file: &File, path: &Path) -> std::io::Result<()>;
}

/// The real [`DataFileSync`]: `File::sync_data` (fdatasync), which also forces the
/// device cache, unlike sled's own `sync_file_range`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsyncDataFile;

impl DataFileSync for FsyncDataFile {
    fn sync(&mut self, file: &File, _path: &Path) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// How to open a [`SledStorage`].
pub struct SledOptions {
    /// Create the history when the folder holds none (the server does; offline
    /// commands do not, so a mistyped path is an error, not a new empty history).
    pub create: bool,
    /// The data-file sync seam.
    pub sync: Box<dyn DataFileSync>,
}

impl Default for SledOptions {
    fn default() -> SledOptions {
        SledOptions {
            create: true,
            sync: Box::new(FsyncDataFile),
        }
    }
}

/// The data folder's paths.
#[derive(Debug, Clone)]
pub struct DataPaths {
    /// The data folder.
    pub root: PathBuf,
    /// sled's folder.
    pub sled: PathBuf,
    /// sled's data file, the one fsynced after each flush.
    pub sled_data_file: PathBuf,
    /// The blob folder.
    pub blobs: PathBuf,
    /// The anchor file.
    pub anchor: PathBuf,
}

impl DataPaths {
    /// The paths under data folder `root`.
    pub fn new(root: &Path) -> DataPaths {
        let sled = root.join("history");
        DataPaths {
            root: root.to_path_buf(),
            sled_data_file: sled.join("db"),
            sled,
            blobs: root.join("blobs"),
            anchor: root.join("anchor"),
        }
    }
}

/// sled on disk, with the durability sled 0.34 lacks on its own.
pub struct SledStorage {
    paths: DataPaths,
    db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    data_file: File,
    sync: Box<dyn DataFileSync>,
    blobs: BlobStore,
    poisoned: Option<String>,
}

impl std::fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStorage")
            .field("root", &self.paths.root)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// How long an open waits for sled's folder lock before it reports a running server.
///
/// The lock is an `flock` on sled's data file, held by every process that has the file
/// open, and a process that forks (to run any child program) shares the open file with
/// the child until the child's `exec` closes it. So a lock can be held for a moment by
/// someone who is not a server: a history closed just before a fork, in a process that
/// starts children. A running server holds it for good, so a short bounded wait tells the
/// two apart without ever reporting a transient holder as a server.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// True when sled could not take its folder lock.
fn is_lock_error(io: &std::io::Error) -> bool {
    io.to_string().contains("could not acquire lock")
}

/// Opens sled, retrying for at most [`LOCK_WAIT`] while its folder lock is held.
fn open_sled_waiting_for_lock(path: &Path) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Err(sled::Error::Io(ref io)) if is_lock_error(io) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

impl SledStorage {
    /// Opens the history in data folder `root`. Refuses with
    /// [`OpenError::ServerRunning`] when another process (a running server) holds
    /// sled's folder lock, and with [`OpenError::TooNew`] when the database needs a
    /// newer reader.
    pub fn open(root: &Path, options: SledOptions) -> Result<SledStorage, OpenError> {
        let paths = DataPaths::new(root);
        if !options.create && !paths.sled_data_file.exists() {
            return Err(OpenError::NotFound {
                dir: root.to_path_buf(),
            });
        }
        let storage_err = |source| OpenError::Storage {
            dir: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&paths.sled).map_err(|source| {
            storage_err(StorageError::Io {
                what: "create folder",
                path: paths.sled.clone(),
                source,
            })
        })?;
        let db = open_sled_waiting_for_lock(&paths.sled).map_err(|source| match source {
            sled::Error::Io(ref io) if is_lock_error(io) => OpenError::ServerRunning {
                dir: root.to_path_buf(),
            },
            source => storage_err(StorageError::Sled {
                what: "open",
                source,
            }),
        })?;
        let tree = |name: &'static str| {
            db.open_tree(name).map_err(|source| {
                storage_err(StorageError::Sled {
                    what: "open tree",
                    source,
                })
            })
        };
        let events = tree(EVENTS_TREE)?;
        let meta = tree(META_TREE)?;
        let data_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.sled_data_file)
            .map_err(|source| {
                storage_err(StorageError::Io {
                    what: "open sled's data file",
                    path: paths.sled_data_file.clone(),
                    source,
                })
            })?;
        let blobs = BlobStore::open(&paths.blobs).map_err(|err| storage_err(blob_err(err)))?;
        if options.create {
            // The server opens with `create`; offline commands leave the folder as is.
            remove_anchor_leftovers(root);
        }
        let mut storage = SledStorage {
            paths,
            db,
            events,
            meta,
            data_file,
            sync: options.sync,
            blobs,
            poisoned: None,
        };
        storage.check_versions(root)?;
        Ok(storage)
    }

    /// The data folder's paths.
    pub fn paths(&self) -> &DataPaths {
        &self.paths
    }

    /// The blob store beside the history.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The raw sled tree of records, for tests that tamper with the history through
    /// sled's own API.
    pub fn events_tree(&self) -> &sled::Tree {
        &self.events
    }

    fn check_versions(&mut self, root: &Path) -> Result<(), OpenError> {
        let storage_err = |source| OpenError::Storage {
            dir: root.to_path_buf(),
            source,
        };
        let read_u32 = |key: &str| -> Result<Option<u32>, OpenError> {
            let value = self.meta.get(key).map_err(|source| {
                storage_err(StorageError::Sled {
                    what: "read metadata",
                    source,
                })
            })?;
            match value {
                None => Ok(None),
                Some(bytes) => match <[u8; 4]>::try_from(bytes.as_ref()) {
                    Ok(array) => Ok(Some(u32::from_be_bytes(array))),
                    Err(_) => Err(storage_err(StorageError::Corrupt {
                        detail: format!("metadata {key} is {} bytes, not 4", bytes.len()),
                    })),
                },
            }
        };
        let format = read_u32(KEY_FORMAT_VERSION)?;
        let min_reader = read_u32(KEY_MIN_READER_VERSION)?;
        match (format, min_reader) {
            (Some(format), Some(min_reader)) => {
                if min_reader > READER_VERSION {
                    return Err(OpenError::TooNew {
                        dir: root.to_path_buf(),
                        format,
                        min_reader,
                        reader: READER_VERSION,
                    });
                }
                Ok(())
            }
            (None, None) => {
                let empty = self.events.is_empty();
                if !empty {
                    return Err(storage_err(StorageError::Corrupt {
                        detail: "records present but no format version".to_string(),
                    }));
                }
                let put = |key: &str, value: u32| {
                    self.meta
                        .insert(key, &value.to_be_bytes())
                        .map(|_| ())
                        .map_err(|source| StorageError::Sled {
                            what: "write metadata",
                            source,
                        })
                };
                put(KEY_FORMAT_VERSION, FORMAT_VERSION).map_err(storage_err)?;
                put(KEY_MIN_READER_VERSION, MIN_READER_VERSION).map_err(storage_err)?;
                self.make_durable().map_err(storage_err)?;
                // sled created its folder and files just now; make the names durable.
                for dir in [&self.paths.sled, &self.paths.root] {
                    crate::blobs::sync_dir(dir).map_err(|source| {
                        storage_err(StorageError::Io {
                            what: "fsync folder",
                            path: dir.clone(),
                            source,
                        })
                    })?;
                }
                tracing::info!(root = %root.display(), "created a new history");
                Ok(())
            }
            _ => Err(storage_err(StorageError::Corrupt {
                detail: "only one of format version and minimum reader version is recorded"
                    .to_string(),
            })),
        }
    }

    /// sled's flush, then the fsync of its data file; the first failure poisons.
    fn make_durable(&mut self) -> Result<(), StorageError> {
        if let Some(cause) = &self.poisoned {
            return Err(StorageError::Poisoned {
                cause: cause.clone(),
            });
        }
        if let Err(source) = self.db.flush() {
            let err = StorageError::Sled {
                what: "flush",
                source,
            };
            self.poison(&err);
            return Err(err);
        }
        if let Err(source) = self.sync.sync(&self.data_file, &self.paths.sled_data_file) {
            let err = StorageError::Io {
                what: "fsync of sled's data file",
                path: self.paths.sled_data_file.clone(),
                source,
            };
            self.poison(&err);
            return Err(err);
        }
        Ok(())
    }

    fn poison(&mut self, err: &StorageError) {
        tracing::error!(error = %err, "history write failed; refusing all later writes");
        self.poisoned.get_or_insert_with(|| err.to_string());
    }

    fn check_poison(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn sled_err(what: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |source| StorageError::Sled { what, source }
}

impl Storage for SledStorage {
    fn write_batch(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        self.check_poison()?;
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&seq_key(*seq), bytes.as_slice());
        }
        // A sled batch is applied atomically: after a crash either all of it or none of
        // it is there.
        if let Err(source) = self.events.apply_batch(batch) {
            let err = StorageError::Sled {
                what: "insert batch",
                source,
            };
            self.poison(&err);
            return Err(err);
        }
        self.make_durable()
    }

    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .events
            .get(seq_key(seq))
            .map_err(sled_err("read record"))?
            .map(|value| value.to_vec()))
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        Box::new(self.events.range(seq_key(from)..).map(|item| {
            let (key, value) = item.map_err(sled_err("read records"))?;
            let seq = key_seq(&key).ok_or_else(|| StorageError::Corrupt {
                detail: format!("record key of {} bytes is not a sequence number", key.len()),
            })?;
            Ok((seq, value.to_vec()))
        }))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        match self.events.last().map_err(sled_err("read last record"))? {
            None => Ok(None),
            Some((key, value)) => {
                let seq = key_seq(&key).ok_or_else(|| StorageError::Corrupt {
                    detail: format!("record key of {} bytes is not a sequence number", key.len()),
                })?;
                Ok(Some((seq, value.to_vec())))
            }
        }
    }

    fn save_snapshot(
        &mut self,
        record: &SnapshotRecord,
        state: &[u8],
        head: Head,
    ) -> Result<(), StorageError> {
        self.check_poison()?;
        let previous = self.load_snapshot_record()?;
        let hash = self.blobs.put_bytes(state).map_err(blob_err)?;
        if hash != record.state {
            return Err(StorageError::Corrupt {
                detail: format!(
                    "snapshot state stored as {hash} but its record names {}",
                    record.state
                ),
            });
        }
        if let Err(source) = self.meta.insert(KEY_SNAPSHOT, record.encode()) {
            let err = StorageError::Sled {
                what: "write snapshot record",
                source,
            };
            self.poison(&err);
            return Err(err);
        }
        self.make_durable()?;
        self.write_anchor(head)?;
        if let Some(previous) = previous {
            if previous.state != record.state {
                // The old state blob is no longer named by anything.
                self.blobs.remove(&previous.state).map_err(blob_err)?;
            }
        }
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Vec<u8>)>, StorageError> {
        let Some(record) = self.load_snapshot_record()? else {
            return Ok(None);
        };
        let state = self.blobs.get(&record.state).map_err(blob_err)?;
        Ok(Some((record, state)))
    }

    fn anchor(&self) -> Result<Option<Head>, StorageError> {
        anchor::read(&self.paths.anchor).map_err(|source| StorageError::Io {
            what: "read anchor",
            path: self.paths.anchor.clone(),
            source,
        })
    }

    fn write_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        anchor::write(&self.paths.anchor, head).map_err(|source| StorageError::Io {
            what: "write anchor",
            path: self.paths.anchor.clone(),
            source,
        })
    }
}

impl SledStorage {
    fn load_snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(KEY_SNAPSHOT)
            .map_err(sled_err("read snapshot record"))?
        else {
            return Ok(None);
        };
        SnapshotRecord::decode(&bytes)
            .map(Some)
            .map_err(|err| StorageError::Corrupt {
                detail: format!("snapshot record does not decode: {err}"),
            })
    }
}

/// Removes temp files of anchor writes that a crash interrupted. The anchor itself is
/// replaced by a rename, so a leftover is never the anchor; failing to remove one only
/// leaves a few bytes behind, which is logged, not fatal.
fn remove_anchor_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(anchor::TEMP_PREFIX) {
            if let Err(err) = std::fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %err,
                    "could not remove an interrupted anchor write");
            }
        }
    }
}

fn blob_err(err: BlobError) -> StorageError {
    StorageError::Blob(err)
}
