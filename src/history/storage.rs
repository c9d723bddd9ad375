//! The storage seam: where record bytes live. Two implementations:
//! [`SledStorage`](crate::history::SledStorage) on disk, and [`MemoryStorage`] for the
//! simulator. Both
//! hold bytes produced by the same record codec and checked by the same chain code in
//! [`History`](crate::history::History); a store never interprets a record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::anchor::Anchor;
use super::record::ChainHash;
use super::snapshot::{SnapshotRecord, SnapshotSink};

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
    /// The database underneath reported an error.
    #[error("database {what}: {detail}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The database's own words.
        detail: String,
    },
    /// The append expected another head: someone else appended (or removed records)
    /// since this writer last looked. Nothing was written.
    #[error("the history's head is record {} ({}), not record {} ({}) as this writer expected: another writer changed it", found.seq, found.hash, expected.seq, expected.hash)]
    HeadMoved {
        /// The head the writer expected (boxed: errors stay small).
        expected: Box<Head>,
        /// The head the store holds.
        found: Box<Head>,
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

/// An iterator over `(seq, record bytes)` in sequence order, the bytes shared with the
/// store rather than copied where the store allows it; see [`Storage::read_shared_from`].
pub type SharedRecordIter<'a> =
    Box<dyn Iterator<Item = Result<(u64, RecordBytes), StorageError>> + 'a>;

/// The bytes of one record as a store hands them out: either the store's own buffer,
/// shared and not copied (sled's values are reference-counted slices of its pages), or
/// bytes the store copied out.
#[derive(Clone)]
pub struct RecordBytes(Shared);

#[derive(Clone)]
enum Shared {
    Owned(Vec<u8>),
    Sled(sled::IVec),
}

impl RecordBytes {
    /// A value sled handed out, kept as it is.
    pub(crate) fn sled(value: sled::IVec) -> RecordBytes {
        RecordBytes(Shared::Sled(value))
    }
}

impl From<Vec<u8>> for RecordBytes {
    fn from(bytes: Vec<u8>) -> RecordBytes {
        RecordBytes(Shared::Owned(bytes))
    }
}

impl std::ops::Deref for RecordBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Shared::Owned(bytes) => bytes.as_slice(),
            Shared::Sled(value) => value.as_ref(),
        }
    }
}

impl AsRef<[u8]> for RecordBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for RecordBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordBytes({} bytes)", self.len())
    }
}

/// The snapshot an in-memory store keeps (`MemoryStorage`, the simulator's
/// `FaultyStorage`): its record and its bytes, shared with whoever encoded them (the
/// simulator's engine keeps the same bytes as its last encoding): saving takes them
/// without a copy, and so does a load.
#[derive(Clone, Debug, Default)]
pub struct KeptSnapshot(Option<(SnapshotRecord, Bytes)>);

impl KeptSnapshot {
    /// Replaces the snapshot, keeping `state` itself (a count on shared bytes).
    pub fn save(&mut self, record: &SnapshotRecord, state: Bytes) {
        self.0 = Some((record.clone(), state));
    }

    /// The record and the bytes (a count on them, not a copy).
    pub fn load(&self) -> Option<(SnapshotRecord, Bytes)> {
        self.0.clone()
    }

    /// The record alone, without copying the bytes.
    pub fn record(&self) -> Option<SnapshotRecord> {
        self.0.as_ref().map(|(record, _)| record.clone())
    }
}

/// The head a store holds: its last record's number and the hash of its bytes.
pub fn head_of<B: AsRef<[u8]>>(last: Option<(u64, B)>) -> Head {
    match last {
        Some((seq, bytes)) => Head {
            seq,
            hash: ChainHash::of(bytes.as_ref()),
        },
        None => Head::EMPTY,
    }
}

/// Checks that `records` are numbered one after another from `expected.seq + 1`, and
/// returns the head they make. Every store calls this before writing anything.
pub fn head_after(expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
    let mut last = expected.seq;
    for (seq, _) in records {
        if Some(*seq) != last.checked_add(1) {
            return Err(StorageError::Corrupt {
                detail: format!("a batch after record {last} holds record {seq} out of order"),
            });
        }
        last = *seq;
    }
    // Only the last record's hash is the head's: hashing every record of a batch here
    // (a BLAKE3 each, which the history already did to link them) was wasted.
    Ok(match records.last() {
        Some((seq, bytes)) => Head {
            seq: *seq,
            hash: ChainHash::of(bytes),
        },
        None => expected,
    })
}

/// Where record bytes live. Object safe, so the engine holds a `History` without
/// knowing whether it is on disk or in memory, and it names no type of the database
/// underneath.
///
/// Appends are compare-and-append: the writer names the head it builds on, and a store
/// whose head is another one refuses with [`StorageError::HeadMoved`] before writing
/// anything, so a second writer (a stale handle, a second `History` on a shared memory
/// store) can never append.
pub trait Storage: Send {
    /// Stores `records` (key = sequence number, numbered from `expected.seq + 1`) after
    /// `expected`, which must be the store's current head, and returns the new head only
    /// once the records and the anchor naming them are durable. If this fails after
    /// writing began, the store may hold some of them; the caller must stop writing.
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError>;

    /// The bytes of record `seq`, if present.
    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError>;

    /// Records with sequence numbers `>= from`, in order.
    fn read_from(&self, from: u64) -> RecordIter<'_>;

    /// Records with sequence numbers `>= from`, in order, without copying their bytes
    /// where the store can share them (replay reads every record once; sled's values are
    /// shared slices). By default, [`Storage::read_from`]'s copies.
    fn read_shared_from(&self, from: u64) -> SharedRecordIter<'_> {
        Box::new(
            self.read_from(from)
                .map(|item| item.map(|(seq, bytes)| (seq, RecordBytes::from(bytes)))),
        )
    }

    /// The record with the highest sequence number.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError>;

    /// Stores a snapshot's state bytes and the small record naming them, durably.
    /// A failure here leaves the records as they were. The bytes are shared: a store
    /// that keeps them in memory keeps these, without a copy.
    fn save_snapshot(&mut self, record: &SnapshotRecord, state: Bytes) -> Result<(), StorageError>;

    /// A writer that stores snapshot state bytes on another thread while this store
    /// goes on appending; [`Storage::install_snapshot`] then names them. `None` (the
    /// default): the store takes state and record together in
    /// [`Storage::save_snapshot`].
    fn snapshot_sink(&self) -> Option<Box<dyn SnapshotSink>> {
        None
    }

    /// Names state bytes that this store's [`Storage::snapshot_sink`] already stored
    /// durably as the latest snapshot, durably. A failure leaves the records as they
    /// were.
    fn install_snapshot(&mut self, record: &SnapshotRecord) -> Result<(), StorageError> {
        Err(StorageError::Database {
            what: "install snapshot",
            detail: format!(
                "this store has no snapshot writer, so it cannot name the state {} it never stored",
                record.state
            ),
        })
    }

    /// The latest snapshot record and its state bytes (verified against their hash),
    /// shared rather than copied where the store can (a mapped file, kept bytes).
    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Bytes)>, StorageError>;

    /// The latest snapshot record alone (its state is not read).
    fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        Ok(self.load_snapshot()?.map(|(record, _)| record))
    }

    /// The anchor: the head known outside the record store, written with every batch.
    /// `Ok(None)` when there is none; an error when it exists but cannot be read.
    fn anchor(&self) -> Result<Option<Anchor>, StorageError>;

    /// Makes everything stored durable and records `head` (the store's current head) as
    /// the anchor, with nothing pending: at open, once the records found are accepted,
    /// and at a clean shutdown.
    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError>;
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
    snapshot: KeptSnapshot,
    anchor: Option<Anchor>,
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

    /// Replaces the anchor (or removes it with `None`) without any check: for tests that
    /// show a lost or reset anchor is found.
    pub fn tamper_anchor(&self, anchor: Option<Anchor>) {
        self.lock().anchor = anchor;
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
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        let new_head = head_after(expected, records)?;
        // The check and the write happen under one lock, so two writers on clones of
        // one store cannot both pass the check.
        let mut inner = self.lock();
        let found = head_of(
            inner
                .records
                .iter()
                .next_back()
                .map(|(seq, bytes)| (*seq, bytes.clone())),
        );
        if found != expected {
            return Err(StorageError::HeadMoved {
                expected: Box::new(expected),
                found: Box::new(found),
            });
        }
        for (seq, bytes) in records {
            inner.records.insert(*seq, bytes.clone());
        }
        inner.anchor = Some(Anchor {
            acked: expected,
            head: new_head,
            boot: super::anchor::current_boot_id(),
        });
        Ok(new_head)
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

    fn save_snapshot(&mut self, record: &SnapshotRecord, state: Bytes) -> Result<(), StorageError> {
        self.lock().snapshot.save(record, state);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Bytes)>, StorageError> {
        Ok(self.lock().snapshot.load())
    }

    fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        Ok(self.lock().snapshot.record())
    }

    fn anchor(&self) -> Result<Option<Anchor>, StorageError> {
        Ok(self.lock().anchor)
    }

    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        self.lock().anchor = Some(Anchor::settled(head));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[u64]) -> Vec<(u64, Vec<u8>)> {
        seqs.iter().map(|&seq| (seq, vec![seq as u8; 3])).collect()
    }

    #[test]
    fn a_batch_head_is_its_last_record_and_its_numbers_follow_on() {
        let start = Head {
            seq: 4,
            hash: ChainHash([7; 32]),
        };
        let head = head_after(start, &batch(&[5, 6, 7])).expect("in order");
        assert_eq!(head.seq, 7);
        assert_eq!(head.hash.0, *blake3::hash(&[7, 7, 7]).as_bytes());
        assert_eq!(head_after(start, &[]).expect("nothing"), start);
        for wrong in [&[6][..], &[5, 7], &[5, 5], &[4]] {
            let err = head_after(start, &batch(wrong)).expect_err("out of order");
            assert!(err.to_string().contains("out of order"), "{wrong:?}: {err}");
        }
    }
}
