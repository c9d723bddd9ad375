//! The on-disk store: sled 0.34.7, made durable by an fsync of its data file after
//! every flush.
//!
//! Folder layout under the data folder `D`: `D/history/` is sled's folder (its data
//! file is `D/history/db`), `D/blobs/` the blob store (snapshots live there), and
//! `D/anchor` the anchor.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::anchor::{self, Anchor, AnchorFile};
use super::private;
use super::record::{key_seq, seq_key, FORMAT_VERSION, MIN_READER_VERSION, READER_VERSION};
use super::snapshot::{SnapshotRecord, SnapshotSink};
use super::storage::{
    head_after, head_of, Head, RecordBytes, RecordIter, SharedRecordIter, Storage, StorageError,
};
use super::OpenError;
use crate::blobs::{BlobError, BlobStore};

const EVENTS_TREE: &str = "events";
const META_TREE: &str = "meta";
const KEY_FORMAT_VERSION: &str = "format_version";
const KEY_MIN_READER_VERSION: &str = "min_reader_version";
const KEY_SNAPSHOT: &str = "snapshot";

/// sled's segment size for every history.
///
/// sled 0.34 writes a log item larger than a quarter of a segment (less a 20-byte
/// header) to its own file under `history/blobs/`, a file it never fsyncs; an item can
/// be a whole consolidated leaf, and a leaf splits only once it holds more than 16
/// values. With values of at most 64 KiB ([`super::MAX_VALUE_BYTES`]) a leaf is at most
/// about 17 x 64 KiB = 1.1 MiB, and a quarter of 8 MiB is 2 MiB: every node stays in the
/// data file, which the history fsyncs. sled refuses to reopen a database made with
/// another segment size.
pub const SLED_SEGMENT_SIZE: usize = 8 * 1024 * 1024;

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

/// How long a server waits for offline readers to let go of the data folder's lock
/// before it reports that another server holds it.
pub const SERVER_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long an offline reader waits for the data folder's lock. A server holds it for
/// good; anyone else holds it for a moment only (a process that forked a child shares
/// the open lock file until the child's `exec` closes it).
pub const READER_LOCK_WAIT: Duration = Duration::from_secs(1);

/// How to open a [`SledStorage`].
pub struct SledOptions {
    /// Create the history when the folder holds none (the server does; offline
    /// commands do not, so a mistyped path is an error, not a new empty history).
    pub create: bool,
    /// The data-file sync seam.
    pub sync: Box<dyn DataFileSync>,
    /// How long to wait for the data folder's lock (held shared by offline readers,
    /// exclusive by a server) before refusing with [`OpenError::ServerRunning`].
    pub lock_wait: Duration,
}

impl Default for SledOptions {
    fn default() -> SledOptions {
        SledOptions {
            create: true,
            sync: Box::new(FsyncDataFile),
            lock_wait: SERVER_LOCK_WAIT,
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
    /// The lock file: a server holds it exclusive, offline readers shared.
    pub lock: PathBuf,
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
            lock: root.join("lock"),
        }
    }
}

/// A held `flock` on the data folder's lock file; released when dropped (the file is
/// closed).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Takes the lock at `path`: `exclusive` for the server, shared for readers,
    /// waiting at most `wait`. `Ok(None)` when the file is missing and `create` is false
    /// (a folder no server of this version ever opened: nothing to coordinate with).
    /// `Err(None)` when the wait ran out.
    fn acquire(
        path: &Path,
        exclusive: bool,
        create: bool,
        wait: Duration,
    ) -> Result<Option<DataLock>, Option<std::io::Error>> {
        use std::os::fd::AsRawFd;
        let file = if create {
            private::create_file(path)
        } else {
            File::open(path)
        };
        let file = match file {
            Ok(file) => file,
            Err(err) if !create && err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Some(err)),
        };
        let operation = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        wait_while_held(wait, || {
            // SAFETY: flock on a file descriptor this function owns; no memory is shared.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(code) if code == libc::EINTR || code == libc::EWOULDBLOCK => Err(None),
                _ => Err(Some(err)),
            }
        })?;
        Ok(Some(DataLock { _file: file }))
    }
}

/// Runs `attempt` until it succeeds or fails for good (`Err(Some)`), trying again while
/// it says someone else holds a lock (`Err(None)`), with pauses from 2 ms doubling to
/// 100 ms, for at most `wait`. `Err(None)` when the wait ran out.
fn wait_while_held<T, E>(
    wait: Duration,
    mut attempt: impl FnMut() -> Result<T, Option<E>>,
) -> Result<T, Option<E>> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match attempt() {
            Err(None) if started.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

/// sled's data-file fsync on a thread of its own, so it overlaps the anchor's.
struct DbSyncer {
    requests: Option<std::sync::mpsc::Sender<()>>,
    results: std::sync::mpsc::Receiver<std::io::Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DbSyncer {
    fn start(file: File, path: PathBuf, mut sync: Box<dyn DataFileSync>) -> std::io::Result<Self> {
        let (requests, request_rx) = std::sync::mpsc::channel::<()>();
        let (result_tx, results) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fedrun-history-sync".into())
            .spawn(move || {
                for () in request_rx {
                    if result_tx.send(sync.sync(&file, &path)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(DbSyncer {
            requests: Some(requests),
            results,
            thread: Some(thread),
        })
    }

    /// Starts an fsync of the data file on the sync thread.
    fn begin(&self) -> std::io::Result<()> {
        self.requests
            .as_ref()
            .and_then(|tx| tx.send(()).ok())
            .ok_or_else(|| std::io::Error::other("the history's sync thread has stopped"))
    }

    /// Waits for the fsync started by [`DbSyncer::begin`].
    fn finish(&self) -> std::io::Result<()> {
        self.results.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the history's sync thread has stopped",
            ))
        })
    }

    fn sync(&self) -> std::io::Result<()> {
        self.begin()?;
        self.finish()
    }
}

impl Drop for DbSyncer {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// sled on disk, with the durability sled 0.34 lacks on its own.
pub struct SledStorage {
    paths: DataPaths,
    db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    /// Where the anchor read and written lives (in the private copy for readers).
    anchor_path: PathBuf,
    anchor_file: Option<AnchorFile>,
    /// `None` for a read-only copy, which never writes.
    syncer: Option<DbSyncer>,
    blobs: BlobStore,
    poisoned: Option<String>,
    _lock: Option<DataLock>,
    /// A reader's private copy of `history/` and the anchor; removed when dropped, after
    /// sled (fields drop in order).
    _copy: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStorage")
            .field("root", &self.paths.root)
            .field("read_only", &self.syncer.is_none())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// True when sled could not take its folder lock.
fn is_lock_error(io: &std::io::Error) -> bool {
    io.to_string().contains("could not acquire lock")
}

/// The segment size a sled folder was made with, read from sled's `conf` file
/// (`segment_size: N` lines); `None` when there is no such file yet.
fn recorded_segment_size(sled_dir: &Path) -> Option<usize> {
    let bytes = std::fs::read(sled_dir.join("conf")).ok()?;
    String::from_utf8_lossy(&bytes).lines().find_map(|line| {
        line.strip_prefix("segment_size: ")
            .and_then(|value| value.trim().parse().ok())
    })
}

fn check_segment_size(root: &Path, sled_dir: &Path) -> Result<(), OpenError> {
    match recorded_segment_size(sled_dir) {
        Some(found) if found != SLED_SEGMENT_SIZE => Err(OpenError::OldLayout {
            dir: root.to_path_buf(),
            found,
            needed: SLED_SEGMENT_SIZE,
        }),
        _ => Ok(()),
    }
}

/// Opens sled's database, waiting at most `wait` for sled's own lock on its files. With
/// the data folder's lock held, that lock is only held by a database of this process
/// being let go (sled releases it from its flusher thread, a moment after the last handle
/// is dropped) or by a tool that opened sled's files directly; both let go by themselves.
fn open_sled(root: &Path, path: &Path, wait: Duration) -> Result<sled::Db, OpenError> {
    let opened = wait_while_held(wait, || {
        sled::Config::new()
            .path(path)
            .segment_size(SLED_SEGMENT_SIZE)
            .flush_every_ms(None)
            .open()
            .map_err(|source| match source {
                sled::Error::Io(ref io) if is_lock_error(io) => None,
                source => Some(source),
            })
    });
    opened.map_err(|source| match source {
        None => OpenError::ServerRunning {
            dir: root.to_path_buf(),
        },
        Some(source) => OpenError::Storage {
            dir: root.to_path_buf(),
            cause: sled_error("open", source),
        },
    })
}

fn sled_error(what: &'static str, source: sled::Error) -> StorageError {
    StorageError::Database {
        what,
        detail: sled_words(&source),
    }
}

/// sled's error in words for a person. sled's own text for a damaged file is its debug
/// output ("Read corrupted data at file offset None backtrace ()"), which says nothing
/// to a user; the other kinds keep sled's explanation.
fn sled_words(error: &sled::Error) -> String {
    match error {
        sled::Error::Corruption { .. } => {
            "its files hold damaged data (sled could not read them back)".to_string()
        }
        sled::Error::Io(io) => io.to_string(),
        sled::Error::CollectionNotFound(_) => "a tree of the database is missing".to_string(),
        sled::Error::Unsupported(text) => format!("unsupported use: {text}"),
        sled::Error::ReportableBug(text) => format!("sled failed unexpectedly: {text}"),
    }
}

/// Copies the folder `from` to `to` (files and folders only), privately.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    private::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            private::restrict(&target)?;
        }
    }
    Ok(())
}

impl SledStorage {
    /// Opens the history in data folder `root` for writing (the server). Takes the data
    /// folder's lock exclusive, waiting at most `options.lock_wait` for offline readers,
    /// and refuses with [`OpenError::ServerRunning`] when it stays held; refuses with
    /// [`OpenError::TooNew`] when the database needs a newer reader and with
    /// [`OpenError::OldLayout`] when an older fedrun made it.
    pub fn open(root: &Path, options: SledOptions) -> Result<SledStorage, OpenError> {
        let paths = DataPaths::new(root);
        if !options.create && !paths.sled_data_file.exists() {
            return Err(OpenError::NotFound {
                dir: root.to_path_buf(),
            });
        }
        let io_err = |what: &'static str, path: &Path| {
            let dir = root.to_path_buf();
            let path = path.to_path_buf();
            move |source| OpenError::Storage {
                dir,
                cause: StorageError::Io { what, path, source },
            }
        };
        private::create_dir_all(root).map_err(io_err("create folder", root))?;
        if private::restrict(root).map_err(io_err("restrict the mode of", root))? {
            tracing::warn!(root = %root.display(), "the data folder was readable by others; it is now 0700");
        }
        let lock = match DataLock::acquire(&paths.lock, true, true, options.lock_wait) {
            Ok(lock) => lock,
            Err(None) => {
                // Whoever holds it: a shared lock that can be taken at once means only
                // readers do; otherwise another server does.
                let dir = root.to_path_buf();
                return Err(
                    match DataLock::acquire(&paths.lock, false, false, Duration::ZERO) {
                        Ok(_) => OpenError::ReadersHoldLock { dir },
                        Err(_) => OpenError::ServerRunning { dir },
                    },
                );
            }
            Err(Some(source)) => return Err(io_err("lock", &paths.lock)(source)),
        };
        check_segment_size(root, &paths.sled)?;
        private::create_dir_all(&paths.sled).map_err(io_err("create folder", &paths.sled))?;
        private::create_dir_all(&paths.blobs).map_err(io_err("create folder", &paths.blobs))?;
        let db = open_sled(root, &paths.sled, options.lock_wait)?;
        private::restrict_tree(&paths.sled).map_err(io_err("restrict the mode of", &paths.sled))?;
        for path in [&paths.lock, &paths.anchor, &paths.blobs] {
            match private::restrict(path) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                other => {
                    other.map_err(io_err("restrict the mode of", path))?;
                }
            }
        }
        let data_file = File::open(&paths.sled_data_file)
            .map_err(io_err("open sled's data file", &paths.sled_data_file))?;
        let syncer = DbSyncer::start(data_file, paths.sled_data_file.clone(), options.sync)
            .map_err(io_err("start the sync thread for", &paths.sled_data_file))?;
        let anchor_file =
            AnchorFile::open(&paths.anchor).map_err(io_err("open the anchor", &paths.anchor))?;
        let blobs = BlobStore::open(&paths.blobs).map_err(|err| OpenError::Storage {
            dir: root.to_path_buf(),
            cause: blob_err(err),
        })?;
        let mut storage = SledStorage::assemble(root, paths, db, blobs)?;
        storage.anchor_file = anchor_file;
        storage.syncer = Some(syncer);
        storage._lock = lock;
        storage.check_versions(root)?;
        Ok(storage)
    }

    /// Opens a private copy of the history in `root` for reading (offline commands):
    /// takes the data folder's lock shared (so any number of readers never collide, and
    /// a server cannot start meanwhile), copies `history/` and the anchor into a private
    /// temporary folder, and opens the copy. sled writes at every open, so this is what
    /// keeps the data folder unchanged; it works on a read-only folder. Blobs are read in
    /// place.
    pub fn open_copy(root: &Path, lock_wait: Duration) -> Result<SledStorage, OpenError> {
        let paths = DataPaths::new(root);
        if !paths.sled_data_file.exists() {
            return Err(OpenError::NotFound {
                dir: root.to_path_buf(),
            });
        }
        let io_err = |what: &'static str, path: &Path| {
            let dir = root.to_path_buf();
            let path = path.to_path_buf();
            move |source| OpenError::Storage {
                dir,
                cause: StorageError::Io { what, path, source },
            }
        };
        let lock = match DataLock::acquire(&paths.lock, false, false, lock_wait) {
            Ok(lock) => lock,
            Err(None) => {
                return Err(OpenError::ServerRunning {
                    dir: root.to_path_buf(),
                })
            }
            Err(Some(source)) => return Err(io_err("lock", &paths.lock)(source)),
        };
        check_segment_size(root, &paths.sled)?;
        let copy = tempfile::Builder::new()
            .prefix("fedrun-read-")
            .tempdir()
            .map_err(io_err("create a private folder in", &std::env::temp_dir()))?;
        let copy_sled = copy.path().join("history");
        copy_tree(&paths.sled, &copy_sled).map_err(io_err("copy", &paths.sled))?;
        let copy_anchor = copy.path().join("anchor");
        match std::fs::copy(&paths.anchor, &copy_anchor) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("copy", &paths.anchor)(err)),
        }
        // A private copy: nobody else holds its lock.
        let db = open_sled(root, &copy_sled, Duration::ZERO)?;
        // A folder without blobs has none to read; an empty private folder stands in, so
        // nothing is created in the data folder.
        let blob_dir = if paths.blobs.is_dir() {
            paths.blobs.clone()
        } else {
            copy.path().join("blobs")
        };
        let blobs = BlobStore::open(&blob_dir).map_err(|err| OpenError::Storage {
            dir: root.to_path_buf(),
            cause: blob_err(err),
        })?;
        let mut storage = SledStorage::assemble(root, paths, db, blobs)?;
        storage.anchor_path = copy_anchor;
        storage._lock = lock;
        storage._copy = Some(copy);
        storage.check_versions(root)?;
        Ok(storage)
    }

    fn assemble(
        root: &Path,
        paths: DataPaths,
        db: sled::Db,
        blobs: BlobStore,
    ) -> Result<SledStorage, OpenError> {
        let tree = |name: &'static str| {
            db.open_tree(name).map_err(|source| OpenError::Storage {
                dir: root.to_path_buf(),
                cause: sled_error("open tree", source),
            })
        };
        let events = tree(EVENTS_TREE)?;
        let meta = tree(META_TREE)?;
        Ok(SledStorage {
            anchor_path: paths.anchor.clone(),
            paths,
            db,
            events,
            meta,
            anchor_file: None,
            syncer: None,
            blobs,
            poisoned: None,
            _lock: None,
            _copy: None,
        })
    }

    /// The data folder's paths.
    pub fn paths(&self) -> &DataPaths {
        &self.paths
    }

    /// The blob store beside the history.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn check_versions(&mut self, root: &Path) -> Result<(), OpenError> {
        let storage_err = |source| OpenError::Storage {
            dir: root.to_path_buf(),
            cause: source,
        };
        let read_u32 = |key: &str| -> Result<Option<u32>, OpenError> {
            let value = self
                .meta
                .get(key)
                .map_err(|source| storage_err(sled_error("read metadata", source)))?;
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
        let put = |meta: &sled::Tree, key: &str, value: u32| {
            meta.insert(key, &value.to_be_bytes())
                .map(|_| ())
                .map_err(|source| sled_error("write metadata", source))
        };
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
                // A writer appends records of FORMAT_VERSION, which a reader below
                // MIN_READER_VERSION cannot read: the database says so, durably, before
                // the first such record is written. Readers (private copies) never
                // change what they read.
                if self.syncer.is_some()
                    && (format < FORMAT_VERSION || min_reader < MIN_READER_VERSION)
                {
                    put(&self.meta, KEY_FORMAT_VERSION, format.max(FORMAT_VERSION))
                        .map_err(storage_err)?;
                    put(
                        &self.meta,
                        KEY_MIN_READER_VERSION,
                        min_reader.max(MIN_READER_VERSION),
                    )
                    .map_err(storage_err)?;
                    self.make_durable().map_err(storage_err)?;
                    tracing::info!(
                        root = %root.display(),
                        from = format,
                        to = FORMAT_VERSION,
                        "history format raised: new records use the new layout, and fedrun \
                         older than reader version {MIN_READER_VERSION} can no longer open it"
                    );
                }
                Ok(())
            }
            (None, None) if self.syncer.is_some() => {
                let empty = self.events.is_empty();
                if !empty {
                    return Err(storage_err(StorageError::Corrupt {
                        detail: "records present but no format version".to_string(),
                    }));
                }
                put(&self.meta, KEY_FORMAT_VERSION, FORMAT_VERSION).map_err(storage_err)?;
                put(&self.meta, KEY_MIN_READER_VERSION, MIN_READER_VERSION).map_err(storage_err)?;
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
            (None, None) => Err(storage_err(StorageError::Corrupt {
                detail: "the database records no format version".to_string(),
            })),
            _ => Err(storage_err(StorageError::Corrupt {
                detail: "only one of format version and minimum reader version is recorded"
                    .to_string(),
            })),
        }
    }

    /// sled's flush, then the fsync of its data file; the first failure poisons.
    fn make_durable(&mut self) -> Result<(), StorageError> {
        self.check_poison()?;
        self.flush()?;
        let result = match &self.syncer {
            Some(syncer) => syncer.sync(),
            None => Err(std::io::Error::other("the history was opened read-only")),
        };
        if let Err(source) = result {
            return Err(self.poison(StorageError::Io {
                what: "fsync of sled's data file",
                path: self.paths.sled_data_file.clone(),
                source,
            }));
        }
        Ok(())
    }

    /// sled's flush: hands every pending write to the kernel (and `sync_file_range`),
    /// after which a process crash no longer loses it. The first failure poisons.
    fn flush(&mut self) -> Result<(), StorageError> {
        if let Err(source) = self.db.flush() {
            return Err(self.poison(sled_error("flush", source)));
        }
        Ok(())
    }

    fn poison(&mut self, err: StorageError) -> StorageError {
        tracing::error!(error = %err, "history write failed; refusing all later writes");
        self.poisoned.get_or_insert_with(|| err.to_string());
        err
    }

    fn check_poison(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn anchor_io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = self.anchor_path.clone();
        move |source| StorageError::Io { what, path, source }
    }

    /// Writes `anchor` into the anchor file (creating it, durably, when missing).
    /// Returns whether it still needs an fsync.
    fn write_anchor(&mut self, anchor: &Anchor) -> Result<bool, StorageError> {
        match &mut self.anchor_file {
            Some(file) => {
                file.write(anchor)
                    .map_err(self.anchor_io("write the anchor"))?;
                Ok(true)
            }
            None => {
                let file = AnchorFile::create(&self.anchor_path, anchor)
                    .map_err(self.anchor_io("create the anchor"))?;
                self.anchor_file = Some(file);
                Ok(false)
            }
        }
    }
}

impl Storage for SledStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        self.check_poison()?;
        let new_head = head_after(expected, records)?;
        let found = head_of(self.last()?);
        if found != expected {
            return Err(StorageError::HeadMoved {
                expected: Box::new(expected),
                found: Box::new(found),
            });
        }
        if records.is_empty() {
            return Ok(expected);
        }
        if self.syncer.is_none() {
            return Err(StorageError::Poisoned {
                cause: "the history was opened read-only".to_string(),
            });
        }
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&seq_key(*seq), bytes.as_slice());
        }
        // A sled batch is applied atomically: after a crash either all of it or none of
        // it is there.
        if let Err(source) = self.events.apply_batch(batch) {
            return Err(self.poison(sled_error("insert batch", source)));
        }
        // The batch is in the kernel once sled's flush returns, so from here on a
        // process crash keeps it: an anchor naming it is never ahead of the records
        // unless the machine stops before both fsyncs below are done (see
        // `History::open`).
        self.flush()?;
        let anchor = Anchor {
            acked: expected,
            head: new_head,
            boot: anchor::current_boot_id(),
        };
        let needs_sync = match self.write_anchor(&anchor) {
            Ok(needs_sync) => needs_sync,
            Err(err) => return Err(self.poison(err)),
        };
        // Both fdatasyncs run at once: the data file's on the sync thread, the
        // anchor's here. The batch is acknowledged only when both are done.
        let syncer = self
            .syncer
            .as_ref()
            .expect("checked above: a writable store has a syncer");
        let started = syncer.begin();
        let anchor_synced = match (&self.anchor_file, needs_sync) {
            (Some(file), true) => file.sync(),
            _ => Ok(()),
        };
        let db_synced = started.and_then(|()| syncer.finish());
        if let Err(source) = db_synced {
            return Err(self.poison(StorageError::Io {
                what: "fsync of sled's data file",
                path: self.paths.sled_data_file.clone(),
                source,
            }));
        }
        if let Err(source) = anchor_synced {
            let err = self.anchor_io("fsync of the anchor")(source);
            return Err(self.poison(err));
        }
        Ok(new_head)
    }

    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .events
            .get(seq_key(seq))
            .map_err(|source| sled_error("read record", source))?
            .map(|value| value.to_vec()))
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        Box::new(
            self.read_shared_from(from)
                .map(|item| item.map(|(seq, bytes)| (seq, bytes.to_vec()))),
        )
    }

    fn read_shared_from(&self, from: u64) -> SharedRecordIter<'_> {
        Box::new(self.events.range(seq_key(from)..).map(|item| {
            let (key, value) = item.map_err(|source| sled_error("read records", source))?;
            let seq = key_seq(&key).ok_or_else(|| StorageError::Corrupt {
                detail: format!("record key of {} bytes is not a sequence number", key.len()),
            })?;
            Ok((seq, RecordBytes::sled(value)))
        }))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        match self
            .events
            .last()
            .map_err(|source| sled_error("read last record", source))?
        {
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
        state: bytes::Bytes,
    ) -> Result<(), StorageError> {
        self.check_poison()?;
        // The state blob first: if it cannot be stored, nothing else changed and the
        // history goes on (a snapshot is only a shortcut). Pinned until the record
        // names it.
        let mut sink = BlobSink {
            blobs: self.blobs.clone(),
            pin: None,
        };
        sink.store(&record.state, &state)?;
        self.install_snapshot(record)
    }

    fn snapshot_sink(&self) -> Option<Box<dyn SnapshotSink>> {
        Some(Box::new(BlobSink {
            blobs: self.blobs.clone(),
            pin: None,
        }))
    }

    fn install_snapshot(&mut self, record: &SnapshotRecord) -> Result<(), StorageError> {
        self.check_poison()?;
        if !self.blobs.contains(&record.state) {
            return Err(StorageError::Blob(BlobError::Missing {
                hash: record.state,
            }));
        }
        let previous = self.snapshot_record()?;
        // The record lives in the same database file as the events, so a failure to
        // store it or make it durable is a failure of that file: it poisons.
        if let Err(source) = self.meta.insert(KEY_SNAPSHOT, record.encode()) {
            return Err(self.poison(sled_error("write snapshot record", source)));
        }
        self.make_durable()?;
        if let Some(previous) = previous {
            if previous.state != record.state {
                // The old state blob is no longer named by anything; a failure to remove
                // it leaves a stray blob for the next sweep, nothing worse.
                if let Err(err) = self.blobs.remove(&previous.state) {
                    tracing::warn!(error = %err, "could not remove the previous snapshot's state");
                }
            }
        }
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, bytes::Bytes)>, StorageError> {
        let Some(record) = self.snapshot_record()? else {
            return Ok(None);
        };
        let state = self.blobs.get_mapped(&record.state).map_err(blob_err)?;
        Ok(Some((record, state)))
    }

    fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(KEY_SNAPSHOT)
            .map_err(|source| sled_error("read snapshot record", source))?
        else {
            return Ok(None);
        };
        SnapshotRecord::decode(&bytes)
            .map(Some)
            .map_err(|err| StorageError::Corrupt {
                detail: format!("snapshot record does not decode: {err}"),
            })
    }

    fn anchor(&self) -> Result<Option<Anchor>, StorageError> {
        anchor::read(&self.anchor_path).map_err(|err| StorageError::Corrupt {
            detail: format!("the anchor {} {err}", self.paths.anchor.display()),
        })
    }

    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        self.make_durable()?;
        let anchor = Anchor::settled(head);
        let needs_sync = match self.write_anchor(&anchor) {
            Ok(needs_sync) => needs_sync,
            Err(err) => return Err(self.poison(err)),
        };
        if needs_sync {
            if let Some(file) = &self.anchor_file {
                if let Err(source) = file.sync() {
                    let err = self.anchor_io("fsync of the anchor")(source);
                    return Err(self.poison(err));
                }
            }
        }
        // sled may have written new files (snapshots of its own) since the open.
        if let Err(err) = private::restrict_tree(&self.paths.sled) {
            tracing::warn!(error = %err, "could not restrict the modes of the history's files");
        }
        Ok(())
    }
}

/// The [`SnapshotSink`] of a [`SledStorage`]: stores the state in the blob store, durably
/// (temp file, fsync, rename, folder fsync), and keeps it pinned until dropped.
struct BlobSink {
    blobs: BlobStore,
    pin: Option<crate::blobs::BlobPin>,
}

impl SnapshotSink for BlobSink {
    fn store(&mut self, hash: &crate::blobs::BlobHash, state: &[u8]) -> Result<(), StorageError> {
        let pin = self.blobs.put_bytes_pinned(state).map_err(blob_err)?;
        if pin.hash() != *hash {
            return Err(StorageError::Corrupt {
                detail: format!(
                    "snapshot state stored as {} but its record names {hash}",
                    pin.hash()
                ),
            });
        }
        self.pin = Some(pin);
        Ok(())
    }

    fn discard(&mut self, hash: &crate::blobs::BlobHash) {
        self.pin = None;
        if let Err(err) = self.blobs.remove(hash) {
            tracing::warn!(error = %err, "could not remove an unused snapshot's state");
        }
    }
}

fn blob_err(err: BlobError) -> StorageError {
    StorageError::Blob(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_corruption_is_put_in_words_without_its_debug_text() {
        let error = sled_error("open", sled::Error::Corruption { at: None, bt: () });
        let text = error.to_string();
        assert_eq!(
            text,
            "database open: its files hold damaged data (sled could not read them back)"
        );
        assert!(
            !text.contains("backtrace") && !text.contains("None"),
            "{text}"
        );
    }
}
