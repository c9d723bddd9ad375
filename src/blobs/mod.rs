//! Content-addressed blob store: large bytes (job packages, workspace archives, state
//! snapshots) kept as files named by the BLAKE3 hash of their content.
//!
//! Architecture invariant: a blob file only ever appears under its final name complete
//! and durable (temp file, fsync, rename, fsync of the folder), and a read hands out
//! bytes only after checking they still hash to their name. The store never decides on
//! its own what is referenced: the caller derives that from the history and passes the
//! set to [`BlobStore::sweep_unreferenced`].
//!
//! Pins (SPEC section 3, Changed): a blob being stored is *pinned* from the moment its
//! hash is known until the event that refers to it is durable, or its request is refused.
//! [`BlobStore::put_pinned`] returns a [`BlobPin`] guard; the caller drops it after the
//! append (or the refusal). A pinned blob is never removed by [`BlobStore::free`],
//! [`BlobStore::remove`] or a sweep, so freeing a blob can never race a new put of the
//! same bytes: the pin is taken, and removals decided, under one lock, so either the
//! removal came first and the put writes the file again, or the put came first and the
//! removal skips it. Pins live in memory only: after a crash nothing is pinned, and the
//! start-up sweep removes what no durable event refers to.
//!
//! Privacy (SPEC section 3, Changed): the blob folder is `0700` and every blob `0600`,
//! whatever the umask.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::lifecycle::BlobHash;

/// From this many bytes on, [`hash_of`] hashes on every core: below it, handing work to
/// other threads costs more than it saves (BLAKE3's own advice is 128 KiB at the least).
const HASH_ON_EVERY_CORE_FROM: usize = 1 << 20;

/// The BLAKE3 hash of `bytes`: the name they get in the store. A large blob is hashed on
/// every core (BLAKE3's tree, split by `blake3` itself): the same hash, sooner.
pub fn hash_of(bytes: &[u8]) -> BlobHash {
    if bytes.len() < HASH_ON_EVERY_CORE_FROM {
        return BlobHash::from(blake3::hash(bytes));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(bytes);
    BlobHash::from(hasher.finalize())
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
    #[error("blob store: {what} {path}: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
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
    /// Unreferenced blobs kept because a put in progress has pinned them.
    pub pinned: Vec<BlobHash>,
}

/// What [`BlobStore::free`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freed {
    /// The blob file was removed.
    Removed,
    /// The blob was not stored (already freed, or never stored).
    Absent,
    /// The blob is pinned by a put in progress and was kept.
    Pinned,
}

/// A folder of blobs named by their BLAKE3 hash. Clones share the folder and the pins.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    guarded: Arc<Mutex<Guarded>>,
}

/// What the store's lock protects: which blobs are pinned (with how many pins each) and
/// which temp files belong to puts in progress, so a sweep leaves both alone.
#[derive(Debug, Default)]
struct Guarded {
    pins: BTreeMap<BlobHash, usize>,
    temp_files: BTreeSet<OsString>,
}

/// Keeps a blob from being freed or swept while it lives (see the module documentation).
/// Returned by [`BlobStore::put_pinned`] and [`BlobStore::pin`]; dropping it unpins. The
/// node holds it until the event that refers to the blob is durable, or drops it when the
/// request is refused.
#[derive(Debug)]
#[must_use = "the blob is unpinned as soon as the pin is dropped"]
pub struct BlobPin {
    hash: BlobHash,
    guarded: Arc<Mutex<Guarded>>,
}

impl BlobPin {
    /// The pinned blob's hash.
    pub fn hash(&self) -> BlobHash {
        self.hash
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut guarded = lock(&self.guarded);
        if let Some(count) = guarded.pins.get_mut(&self.hash) {
            *count -= 1;
            if *count == 0 {
                guarded.pins.remove(&self.hash);
            }
        }
    }
}

/// Locks the store's pins. A panic while holding the lock leaves the maps consistent
/// (every change is a single insert or remove), so a poisoned lock is taken as it is.
fn lock(guarded: &Mutex<Guarded>) -> MutexGuard<'_, Guarded> {
    guarded
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const TEMP_PREFIX: &str = ".tmp-";
/// Mode of the blob folder: private to the server's user.
pub const FOLDER_MODE: u32 = 0o700;
/// Mode of every blob file: private to the server's user.
pub const FILE_MODE: u32 = 0o600;

impl BlobStore {
    /// Opens (creating if needed) the blob folder `dir`, and makes it private (`0700`)
    /// whatever the umask and whatever mode an older version left it with.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        let io = |what, source| BlobError::Io {
            what,
            path: dir.clone(),
            cause: source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(FOLDER_MODE)
            .create(&dir)
            .map_err(|source| io("create folder", source))?;
        let current = fs::metadata(&dir)
            .map_err(|source| io("inspect folder", source))?
            .permissions()
            .mode();
        if current & 0o777 != FOLDER_MODE {
            // Offline commands open the blob folder of a data folder that may be
            // read-only or another user's; they only read, so a folder they cannot make
            // private is reported, not refused.
            if let Err(error) = fs::set_permissions(&dir, fs::Permissions::from_mode(FOLDER_MODE)) {
                tracing::warn!(path = %dir.display(), %error, "cannot make the blob folder private (0700)");
            }
        }
        Ok(BlobStore {
            dir,
            guarded: Arc::default(),
        })
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
    ///
    /// The blob is pinned only while this runs; a caller that will record an event
    /// referring to it uses [`BlobStore::put_pinned`] instead.
    pub fn put(&self, reader: &mut dyn Read) -> Result<BlobHash, BlobError> {
        self.put_pinned(reader).map(|pin| pin.hash())
    }

    /// Streams `reader` into the store like [`BlobStore::put`], and returns the blob
    /// pinned: it cannot be freed or swept until the returned [`BlobPin`] is dropped. The
    /// pin is taken before the store looks for an existing copy, so a free of the same
    /// bytes running at the same time either completes before (and this put writes the
    /// file again) or skips the blob; when this returns the file is on disk.
    pub fn put_pinned(&self, reader: &mut dyn Read) -> Result<BlobPin, BlobError> {
        let mut temp = {
            // Created and registered under the lock, so a sweep never sees a temp file
            // of a put in progress that it does not know about.
            let mut guarded = lock(&self.guarded);
            let temp = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .permissions(fs::Permissions::from_mode(FILE_MODE))
                .tempfile_in(&self.dir)
                .map_err(|source| self.io("create temp file in", &self.dir, source))?;
            if let Some(name) = temp.path().file_name() {
                guarded.temp_files.insert(name.to_owned());
            }
            temp
        };
        let temp_path = temp.path().to_path_buf();
        let result = self.fill_and_persist(&mut temp, &temp_path, reader);
        if let Some(name) = temp_path.file_name() {
            lock(&self.guarded).temp_files.remove(name);
        }
        // On success the temp file was renamed; on failure `temp` removes it on drop.
        drop(temp);
        result
    }

    /// The body of [`BlobStore::put_pinned`] once the temp file exists.
    fn fill_and_persist(
        &self,
        temp: &mut tempfile::NamedTempFile,
        temp_path: &Path,
        reader: &mut dyn Read,
    ) -> Result<BlobPin, BlobError> {
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io("read blob input for", temp_path, source)),
            };
            hasher.update(&buffer[..n]);
            temp.write_all(&buffer[..n])
                .map_err(|source| self.io("write", temp_path, source))?;
        }
        let hash = BlobHash::from(hasher.finalize());
        // Pinned before looking for an existing copy: from here no free or sweep removes
        // the blob, so "already stored" stays true until the pin is dropped.
        let pin = self.pin(&hash);
        let final_path = self.path_of(&hash);
        if final_path.is_file() {
            // Same content is already stored and durable; the temp file is dropped.
            return Ok(pin);
        }
        temp.as_file()
            .sync_all()
            .map_err(|source| self.io("fsync", temp_path, source))?;
        // `persist` would consume the temp file; a hard rename keeps `temp` for the
        // caller to drop, which then finds nothing left to remove.
        fs::rename(temp_path, &final_path)
            .map_err(|source| self.io("rename temp file to", &final_path, source))?;
        sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))?;
        tracing::debug!(%hash, "blob stored");
        Ok(pin)
    }

    /// Stores `bytes` pinned; see [`BlobStore::put_pinned`].
    pub fn put_bytes_pinned(&self, bytes: &[u8]) -> Result<BlobPin, BlobError> {
        self.put_pinned(&mut &bytes[..])
    }

    /// Pins a blob (stored or not) until the returned guard is dropped: it will not be
    /// freed or swept meanwhile. Pins nest; the blob is unpinned when the last is dropped.
    pub fn pin(&self, hash: &BlobHash) -> BlobPin {
        *lock(&self.guarded).pins.entry(*hash).or_insert(0) += 1;
        BlobPin {
            hash: *hash,
            guarded: Arc::clone(&self.guarded),
        }
    }

    /// Whether a blob is pinned now.
    pub fn is_pinned(&self, hash: &BlobHash) -> bool {
        lock(&self.guarded).pins.contains_key(hash)
    }

    /// Stores `bytes`; see [`BlobStore::put`].
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobHash, BlobError> {
        self.put(&mut &bytes[..])
    }

    /// Reads a blob and checks that it still hashes to its name.
    pub fn get(&self, hash: &BlobHash) -> Result<Vec<u8>, BlobError> {
        self.read_checked(hash, "read", |path| fs::read(path))
    }

    /// The blob with this hash, read in place: its file mapped into memory (the kernel's
    /// cached pages, no copy into a buffer of its size), checked against its hash as
    /// [`BlobStore::get`] checks. For large blobs read whole and only read (a snapshot).
    ///
    /// A mapping is only as steady as its file: a blob file is complete before it gets
    /// its name and never written again (the store replaces or removes a file by name,
    /// which leaves a mapping's pages alone), so only another process writing into the
    /// data folder could change the bytes under it, as it could any file fedrun reads.
    pub fn get_mapped(&self, hash: &BlobHash) -> Result<bytes::Bytes, BlobError> {
        self.read_checked(hash, "map", |path| {
            let file = File::open(path)?;
            // An empty file cannot be mapped; its bytes are no bytes.
            if file.metadata()?.len() == 0 {
                return Ok(bytes::Bytes::new());
            }
            // SAFETY: the mapping is read-only and the store never writes into a named
            // blob file (see above); `populate` reads the pages in now, in one call.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }?;
            Ok(bytes::Bytes::from_owner(map))
        })
    }

    /// The bytes `read` gets from the blob's file, once they are checked against its
    /// name: a missing file is [`BlobError::Missing`], other failures are `what` failing.
    fn read_checked<B: AsRef<[u8]>>(
        &self,
        hash: &BlobHash,
        what: &'static str,
        read: impl FnOnce(&Path) -> std::io::Result<B>,
    ) -> Result<B, BlobError> {
        let path = self.path_of(hash);
        let bytes = match read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::Missing { hash: *hash })
            }
            Err(source) => return Err(self.io(what, &path, source)),
        };
        let actual = hash_of(bytes.as_ref());
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

    /// Frees one blob: removes it and fsyncs the folder, unless it is pinned. The
    /// decision and the removal happen under the pin lock, so a put of the same bytes
    /// never returns while its blob is being removed.
    pub fn free(&self, hash: &BlobHash) -> Result<Freed, BlobError> {
        let path = self.path_of(hash);
        {
            let guarded = lock(&self.guarded);
            if guarded.pins.contains_key(hash) {
                tracing::debug!(%hash, "blob pinned by a put in progress; not freed");
                return Ok(Freed::Pinned);
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Freed::Absent),
                Err(source) => return Err(self.io("remove", &path, source)),
            }
        }
        sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))?;
        Ok(Freed::Removed)
    }

    /// Removes one blob (absent is fine) and fsyncs the folder; a pinned blob is kept.
    /// See [`BlobStore::free`], which also says which of these happened.
    pub fn remove(&self, hash: &BlobHash) -> Result<(), BlobError> {
        self.free(hash).map(|_| ())
    }

    /// The start-up sweep (SPEC section 3): removes every blob not in `referenced` and
    /// not pinned, and temp files left by puts a crash interrupted. The node calls this
    /// once the history is replayed, with the keys of
    /// [`crate::history::events::referenced_blobs`] for the replayed state and snapshot. Same as
    /// [`BlobStore::sweep`]; the name says when to call it.
    pub fn sweep_unreferenced(
        &self,
        referenced: &BTreeSet<BlobHash>,
    ) -> Result<SweepReport, BlobError> {
        self.sweep(referenced)
    }

    /// Removes every blob not in `referenced` and not pinned, and temp files left by
    /// interrupted puts (never those of a put in progress). The caller derives
    /// `referenced` from the history (see [`reference_counts`]).
    pub fn sweep(&self, referenced: &BTreeSet<BlobHash>) -> Result<SweepReport, BlobError> {
        let mut report = SweepReport::default();
        let entries =
            fs::read_dir(&self.dir).map_err(|source| self.io("list", &self.dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| self.io("list", &self.dir, source))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let path = entry.path();
            let remove = |path: &Path| match fs::remove_file(path) {
                Ok(()) => Ok(true),
                // Gone already: a put renamed its temp file, or another free removed it.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(source) => Err(self.io("remove", path, source)),
            };
            if name.starts_with(TEMP_PREFIX) {
                let guarded = lock(&self.guarded);
                if !guarded.temp_files.contains(&file_name) && remove(&path)? {
                    report.temp_files_removed += 1;
                }
                continue;
            }
            let Some(hash) = blob_name(name) else {
                continue;
            };
            if referenced.contains(&hash) {
                report.kept += 1;
                continue;
            }
            let guarded = lock(&self.guarded);
            if guarded.pins.contains_key(&hash) {
                report.pinned.push(hash);
            } else if remove(&path)? {
                report.removed.push(hash);
            }
        }
        if !report.removed.is_empty() || report.temp_files_removed > 0 {
            sync_dir(&self.dir).map_err(|source| self.io("fsync folder", &self.dir, source))?;
        }
        report.removed.sort();
        report.pinned.sort();
        tracing::info!(
            kept = report.kept,
            removed = report.removed.len(),
            pinned = report.pinned.len(),
            "blob sweep"
        );
        Ok(report)
    }

    fn io(&self, what: &'static str, path: &Path, source: std::io::Error) -> BlobError {
        BlobError::Io {
            what,
            path: path.to_path_buf(),
            cause: source,
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
