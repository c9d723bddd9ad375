//! The storage seam: where record bytes live. Two implementations:
//! [`SledStorage`](crate::history::SledStorage) on disk, and [`MemoryStorage`] for the
//! simulator. Both
//! hold bytes produced by the same record codec and checked by the same chain code in
//! [`History`](crate::history::History); a store never interprets a record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::record::ChainHash;
use super::snapshot::SnapshotRecord;

/// The last record a history holds (or held durably, for an anchor): its sequence
/// number and the hash of its bytes. Sequence number 0 means "no record yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// The sequence number of the last record, 0 when there is none.
    pub seq: u64,
    /// The hash of the last record's bytes ([`super::GENESIS_HASH`] when there is none).
    pub hash: ChainHash,
}

impl Head {
    /// The head of an empty history.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: super::record::GENESIS_HASH,
    };
}

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("fsync of sled's data file", ...).
        what: &'static str,
        /// The file or folder.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error.
    #[error("sled {what}: {source}")]
    Sled {
        /// What was being done.
        what: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// An earlier write failed, so the store refuses every later one: what is on disk
    /// may differ from what the process believes, and going on would diverge.
    #[error("the history refuses writes after an earlier failure: {cause}")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// The blob store beside the history failed.
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    /// A stored value is not what the store wrote (a key that is not a sequence number,
    /// a snapshot record that does not decode, a blob that fails its hash).
    #[error("stored data is corrupt: {detail}")]
    Corrupt {
        /// What is wrong, with the key or hash.
        detail: String,
    },
}

/// An iterator over `(seq, record bytes)` in sequence order.
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StorageError>> + 'a>;

/// Where record bytes live. Object safe, so the engine holds a `History` without
/// knowing whether it is on disk or in memory.
pub trait Storage: Send {
    /// Stores every record (key = sequence number) and returns only once all of them
    /// are durable. If this fails, the store may hold some of them; the caller must
    /// stop writing.
    fn write_batch(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError>;

    /// The bytes of record `seq`, if present.
    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError>;

    /// Records with sequence numbers `>= from`, in order.
    fn read_from(&self, from: u64) -> RecordIter<'_>;

    /// The record with the highest sequence number.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError>;

    /// Stores a snapshot's state bytes and the small record naming them, durably, then
    /// records `head` as the anchor.
    fn save_snapshot(
        &mut self,
        record: &SnapshotRecord,
        state: &[u8],
        head: Head,
    ) -> Result<(), StorageError>;

    /// The latest snapshot record and its state bytes (verified against their hash).
    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Vec<u8>)>, StorageError>;

    /// The anchor: the last head known durable, kept outside the record store.
    fn anchor(&self) -> Result<Option<Head>, StorageError>;

    /// Records `head` as the anchor on a clean shutdown.
    fn write_anchor(&mut self, head: Head) -> Result<(), StorageError>;
}

/// The in-memory store the simulator uses. Clones share the same records, so a
/// simulated server can "restart": drop its `History`, and open a new one on a clone.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    records: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<(SnapshotRecord, Vec<u8>)>,
    anchor: Option<Head>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock can only come from a bug in the few lines
        // below, none of which panic; recovering the guard keeps the data usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces record `seq`'s bytes (or removes it with `None`) without any check:
    /// for tests that show tampering is found.
    pub fn tamper(&self, seq: u64, bytes: Option<Vec<u8>>) {
        let mut inner = self.lock();
        match bytes {
            Some(bytes) => inner.records.insert(seq, bytes),
            None => inner.records.remove(&seq),
        };
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryStorage")
            .field("records", &inner.records.len())
            .finish()
    }
}

impl Storage for MemoryStorage {
    fn write_batch(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for (seq, bytes) in records {
            inner.records.insert(*seq, bytes.clone());
        }
        Ok(())
    }

    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().records.get(&seq).cloned())
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        // Copy out in chunks so the lock is not held while the caller folds.
        let mut next = from;
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let inner = self.lock();
            match inner.records.range(next..).next() {
                Some((seq, bytes)) => {
                    match seq.checked_add(1) {
                        Some(after) => next = after,
                        None => done = true,
                    }
                    Some(Ok((*seq, bytes.clone())))
                }
                None => {
                    done = true;
                    None
                }
            }
        }))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        Ok(self
            .lock()
            .records
            .iter()
            .next_back()
            .map(|(seq, bytes)| (*seq, bytes.clone())))
    }

    fn save_snapshot(
        &mut self,
        record: &SnapshotRecord,
        state: &[u8],
        head: Head,
    ) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner.snapshot = Some((record.clone(), state.to_vec()));
        inner.anchor = Some(head);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Vec<u8>)>, StorageError> {
        Ok(self.lock().snapshot.clone())
    }

    fn anchor(&self) -> Result<Option<Head>, StorageError> {
        Ok(self.lock().anchor)
    }

    fn write_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        self.lock().anchor = Some(head);
        Ok(())
    }
}
