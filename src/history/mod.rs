//! The history: an append-only, hash-chained log of events, durable on sled or kept in
//! memory for the simulator.
//!
//! Architecture invariant: nothing is acknowledged before it is durable. An
//! [`History::append_batch`] returns only after sled's flush and an fsync of sled's data
//! file; after any failed write the history refuses every later one. Records are never
//! rewritten or removed, and reading never trusts a record: every read checks the
//! sequence, the chain link, and (through [`Fold`]) that the event is legal for the
//! state so far, and reports the sequence number of the first problem. No bytes, however
//! bad, make it panic.
//!
//! The history is generic over the event type: it needs to encode events, and each
//! event's own sequence number ([`Sequenced`]). Replay folds events into any state that
//! implements [`Fold`].

pub mod anchor;
pub mod events;
pub mod private;
pub mod record;
pub mod sled_store;
pub mod snapshot;
pub mod storage;
pub mod verify;
mod wire;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use anchor::Anchor;
pub use events::{event_json_line, event_text, EventHistory};
pub use record::{ChainHash, Record, RecordEvent, GENESIS_HASH, MAX_VALUE_BYTES};
pub use sled_store::{
    DataFileSync, DataPaths, FsyncDataFile, SledOptions, SledStorage, READER_LOCK_WAIT,
    SLED_SEGMENT_SIZE,
};
pub use snapshot::{SnapshotRecord, SnapshotTicket, WrittenSnapshot};
pub use storage::{Head, MemoryStorage, Storage, StorageError};
pub use verify::{Problem, VerifyReport};

/// An event that knows its own sequence number (the engine assigns it before append).
pub trait Sequenced {
    /// The event's sequence number; the first event of a history has 1.
    fn seq(&self) -> u64;
}

/// A state built by folding events, refusing any event that is illegal for it.
pub trait Fold<E> {
    /// Why an event was refused.
    type Error: std::fmt::Display;
    /// Applies `event` if it is legal for the state so far; otherwise leaves the state
    /// as it was and says why.
    fn apply_checked(&mut self, event: &E) -> Result<(), Self::Error>;

    /// The same for a caller that hands the event over (a replay), so the state may keep
    /// parts of it instead of copying them.
    fn apply_owned(&mut self, event: E) -> Result<(), Self::Error> {
        self.apply_checked(&event)
    }

    /// Called once before a replay folds its first record into this state, and
    /// [`Fold::replay_ends`] once after it folded its last: a state may put off work
    /// only its final value needs (a derived index built once instead of kept in step
    /// with every record). A replay that fails drops the state without calling
    /// `replay_ends`.
    fn replay_begins(&mut self) {}

    /// See [`Fold::replay_begins`].
    fn replay_ends(&mut self) {}

    /// Decodes a snapshot's state bytes, as [`snapshot::decode_state`] does. A state may
    /// read its snapshots its own way, with the same result for any bytes.
    fn decode_snapshot(bytes: &[u8]) -> Result<Self, snapshot::SnapshotDecodeError>
    where
        Self: DeserializeOwned + Sized,
    {
        snapshot::decode_state(bytes)
    }
}

/// Why a history could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The folder holds no history (and creating one was not asked for).
    #[error("no fedrun history in {dir}")]
    NotFound {
        /// The data folder.
        dir: PathBuf,
    },
    /// Another process holds sled's folder lock.
    #[error("a fedrun server is running on {dir} (it holds the history's lock); stop it, or ask it through its admin API")]
    ServerRunning {
        /// The data folder.
        dir: PathBuf,
    },
    /// Offline readers (`fedrun list`, `audit verify`, ...) kept the data folder's lock
    /// for longer than a server waits.
    #[error("offline commands are still reading {dir} (they hold its lock); try again when they are done")]
    ReadersHoldLock {
        /// The data folder.
        dir: PathBuf,
    },
    /// The database needs a newer reader than this build.
    #[error("the history in {dir} has format version {format} and needs a reader of version {min_reader} or newer; this fedrun reads version {reader}: upgrade fedrun")]
    TooNew {
        /// The data folder.
        dir: PathBuf,
        /// The database's format version.
        format: u32,
        /// The minimum reader version it records.
        min_reader: u32,
        /// This build's reader version.
        reader: u32,
    },
    /// The store failed.
    #[error("history in {dir}: {cause}")]
    Storage {
        /// The data folder (or "memory").
        dir: PathBuf,
        /// The store's error.
        cause: StorageError,
    },
    /// The database was made by an older fedrun, with another sled segment size; sled
    /// cannot reopen it with this one, and there is no migration.
    #[error("the history in {dir} was made by an older fedrun (sled segment size {found} bytes; this fedrun needs {needed}, so that sled never keeps a log item in a file it does not fsync); it cannot be opened by this version: keep using the older fedrun for it, or start a new data folder")]
    OldLayout {
        /// The data folder.
        dir: PathBuf,
        /// The segment size recorded in the database.
        found: usize,
        /// The segment size this build uses.
        needed: usize,
    },
    /// The anchor is missing or unreadable (or older than the snapshot) while the
    /// history holds records or a snapshot: what was acknowledged can no longer be
    /// checked, which is data loss too.
    #[error("data loss: the anchor {detail}, but the history holds records up to {found_seq}{}", snapshot_seq.map(|seq| format!(" and a snapshot at record {seq}")).unwrap_or_default())]
    AnchorLost {
        /// What is wrong with the anchor.
        detail: String,
        /// The last sequence number found.
        found_seq: u64,
        /// The snapshot's sequence number, if there is one.
        snapshot_seq: Option<u64>,
    },
    /// The history is shorter than its anchor: records that were durable are gone.
    #[error("data loss: the anchor says records up to {anchor_seq} were durable, but the history ends at {found_seq}")]
    DataLoss {
        /// The last sequence number the anchor records as durable.
        anchor_seq: u64,
        /// The last sequence number found.
        found_seq: u64,
    },
    /// The record at the anchor's sequence number is not the one the anchor recorded.
    #[error(
        "record {seq} differs from the anchor: anchor hash {anchor_hash}, record hash {found_hash}"
    )]
    AnchorMismatch {
        /// The anchor's sequence number.
        seq: u64,
        /// The hash the anchor recorded.
        anchor_hash: ChainHash,
        /// The hash of the record found.
        found_hash: ChainHash,
    },
    /// A record needed to open the history does not decode or sits under the wrong key.
    #[error("record {seq} is corrupt: {detail}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

/// Why a batch was not appended. Nothing of the batch is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// An earlier write failed; the history refuses all writes until reopened.
    #[error("the history refuses writes after an earlier failure: {cause}")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// An event's sequence number is not the next one.
    #[error("event has sequence number {found}, but the next one is {expected}")]
    OutOfSequence {
        /// The next sequence number.
        expected: u64,
        /// The event's.
        found: u64,
    },
    /// An event does not encode, or is too large.
    #[error(transparent)]
    Encode(#[from] record::EncodeError),
    /// The store's head is not this history's: another writer appended. Nothing of the
    /// batch was written; the history refuses further writes.
    #[error("appending records {first_seq}..={last_seq} was refused: the stored head is record {} ({}), not record {} as this history expected: another writer appended", found.seq, found.hash, expected.seq)]
    HeadMoved {
        /// The first sequence number of the batch.
        first_seq: u64,
        /// The last.
        last_seq: u64,
        /// The head this history expected.
        expected: Head,
        /// The head the store holds.
        found: Head,
    },
    /// The store failed: the batch may be partly on disk, so the history is poisoned.
    #[error("appending records {first_seq}..={last_seq} failed: {cause}")]
    Storage {
        /// The first sequence number of the batch.
        first_seq: u64,
        /// The last.
        last_seq: u64,
        /// The store's error.
        cause: StorageError,
    },
}

/// Why replay (or start-up) stopped. Each names the sequence number it stopped at.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The store failed to read.
    #[error("reading the history failed near record {seq}: {cause}")]
    Storage {
        /// The record being read (or the last good one).
        seq: u64,
        /// The store's error.
        cause: StorageError,
    },
    /// A record's bytes do not decode.
    #[error("record {seq} does not decode: {cause}")]
    Decode {
        /// Its sequence number (its key).
        seq: u64,
        /// The decoder's error.
        cause: record::DecodeError,
    },
    /// The record under key `seq` says it is another one (records were swapped or moved).
    #[error("the record stored as {seq} says it is record {found}")]
    Misplaced {
        /// The key.
        seq: u64,
        /// The sequence number inside.
        found: u64,
    },
    /// A record is missing.
    #[error("record {expected} is missing (the next record found is {found:?})")]
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one found instead, if any.
        found: Option<u64>,
    },
    /// A record does not link to the one before it: one of the two was altered.
    #[error("record {seq} does not link to record {prev_seq}: it names {found}, record {prev_seq} hashes to {expected} (one of the two was altered)")]
    BrokenLink {
        /// The record whose link fails.
        seq: u64,
        /// The one before it.
        prev_seq: u64,
        /// The hash of the record before.
        expected: ChainHash,
        /// The hash the record names.
        found: ChainHash,
    },
    /// The event inside the record carries another sequence number.
    #[error("record {seq} holds an event numbered {found}")]
    EventSeq {
        /// The record's sequence number.
        seq: u64,
        /// The event's.
        found: u64,
    },
    /// The event is illegal for the state so far.
    #[error("record {seq} is not a legal transition: {reason}")]
    Illegal {
        /// Its sequence number.
        seq: u64,
        /// Why the state refused it.
        reason: String,
    },
    /// The snapshot cannot be used.
    #[error("snapshot at record {seq}: {detail}")]
    Snapshot {
        /// The sequence number it covers.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

impl ReplayError {
    /// The first sequence number that cannot be trusted. For a broken link that is the
    /// earlier of the two records, since either may have been altered.
    pub fn first_bad_seq(&self) -> u64 {
        match self {
            ReplayError::Storage { seq, .. }
            | ReplayError::Decode { seq, .. }
            | ReplayError::Misplaced { seq, .. }
            | ReplayError::EventSeq { seq, .. }
            | ReplayError::Illegal { seq, .. }
            | ReplayError::Snapshot { seq, .. } => *seq,
            ReplayError::Gap { expected, .. } => *expected,
            ReplayError::BrokenLink { prev_seq, .. } => *prev_seq,
        }
    }
}

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state does not serialize.
    #[error("the state at record {seq} does not serialize: {cause}")]
    Encode {
        /// The head it would cover.
        seq: u64,
        /// The encoder's error.
        cause: rmp_serde::encode::Error,
    },
    /// The history refuses writes.
    #[error("the history refuses writes after an earlier failure: {cause}")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// The snapshot names a record the history does not hold.
    #[error("the snapshot covers record {seq}, but the history ends at {head}")]
    NotInHistory {
        /// The record it covers.
        seq: u64,
        /// The history's head.
        head: u64,
    },
    /// The history already holds a snapshot of a later record.
    #[error(
        "the snapshot at record {seq} is older than the one the history holds (record {newer})"
    )]
    Superseded {
        /// The record it covers.
        seq: u64,
        /// The record the held snapshot covers.
        newer: u64,
    },
    /// The store failed.
    #[error("storing the snapshot at record {seq} failed: {cause}")]
    Storage {
        /// The head it would cover.
        seq: u64,
        /// The store's error.
        cause: StorageError,
    },
}

/// The state rebuilt at start-up.
#[derive(Debug)]
pub struct Recovered<S> {
    /// The state after the last record.
    pub state: S,
    /// The sequence number the snapshot covered, if one was used.
    pub snapshot_seq: Option<u64>,
    /// How many records were replayed after the snapshot (or from the start).
    pub replayed: u64,
}

/// The history of events of type `E`.
pub struct History<E> {
    storage: Box<dyn Storage>,
    head: Head,
    poisoned: Option<String>,
    _event: PhantomData<fn(E) -> E>,
}

impl<E> std::fmt::Debug for History<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("head", &self.head)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<E: RecordEvent> History<E> {
    /// Opens (creating if needed) the durable history in data folder `dir`.
    pub fn open(dir: &Path) -> Result<History<E>, OpenError> {
        History::open_with(dir, SledOptions::default())
    }

    /// Opens the durable history in `dir` for writing, with explicit options (tests pass
    /// a sync seam or a shorter lock wait).
    pub fn open_with(dir: &Path, options: SledOptions) -> Result<History<E>, OpenError> {
        let storage = SledStorage::open(dir, options)?;
        History::from_storage(Box::new(storage), dir)
    }

    /// Opens the history in `dir` for reading only (`fedrun list`, `show`, `history`):
    /// a private copy is opened (see [`SledStorage::open_copy`]), so the data folder is
    /// never changed, and the anchor is checked as at a server's start.
    pub fn open_read_only(dir: &Path) -> Result<History<E>, OpenError> {
        let storage = SledStorage::open_copy(dir, READER_LOCK_WAIT)?;
        History::checked(Box::new(storage), dir, false)
    }

    /// A history over `storage` kept in memory (for the simulator). Open it again on a
    /// clone of the same `MemoryStorage` to simulate a restart.
    pub fn in_memory(storage: MemoryStorage) -> Result<History<E>, OpenError> {
        History::from_storage(Box::new(storage), Path::new("memory"))
    }

    /// Opens the history in `dir` for the audit, on a private copy like
    /// [`History::open_read_only`]: neither the anchor nor the last record is checked
    /// here, since the audit reports on them itself ([`History::verify`]) instead of
    /// refusing to look. (`fedrun audit verify` opens the copy itself with
    /// [`SledStorage::open_copy`], to keep its blob store.)
    pub fn open_for_audit(dir: &Path) -> Result<History<E>, OpenError> {
        let storage = SledStorage::open_copy(dir, READER_LOCK_WAIT)?;
        History::for_audit(Box::new(storage)).map_err(|source| OpenError::Storage {
            dir: dir.to_path_buf(),
            cause: source,
        })
    }

    /// A read-only history over any store for the audit: neither the anchor nor the last
    /// record is checked, since [`History::verify`] reports on them instead.
    pub fn for_audit(storage: Box<dyn Storage>) -> Result<History<E>, StorageError> {
        let head = storage::head_of(storage.last()?);
        Ok(History {
            storage,
            head,
            // Nothing the audit does writes; refuse writes outright all the same.
            poisoned: Some("opened read-only for the audit".to_string()),
            _event: PhantomData,
        })
    }

    /// A history over any store, for writing: finds the head, checks it against the
    /// anchor (see [`judge_anchor`]), and then records it as the anchor, durably, so the
    /// anchor of every later batch builds on what was found. `dir` names the store in
    /// errors.
    pub fn from_storage(storage: Box<dyn Storage>, dir: &Path) -> Result<History<E>, OpenError> {
        History::checked(storage, dir, true)
    }

    fn checked(
        mut storage: Box<dyn Storage>,
        dir: &Path,
        writable: bool,
    ) -> Result<History<E>, OpenError> {
        let storage_err = |source| OpenError::Storage {
            dir: dir.to_path_buf(),
            cause: source,
        };
        let head = match storage.last().map_err(storage_err)? {
            None => Head::EMPTY,
            Some((seq, bytes)) => {
                let header = record::decode_header(&bytes).map_err(|err| OpenError::Corrupt {
                    seq,
                    detail: err.to_string(),
                })?;
                if header.seq != seq {
                    return Err(OpenError::Corrupt {
                        seq,
                        detail: format!("stored as {seq} but says it is record {}", header.seq),
                    });
                }
                Head {
                    seq,
                    hash: ChainHash::of(&bytes),
                }
            }
        };
        match judge_anchor(storage.as_ref(), head, dir) {
            AnchorVerdict::Refused(err) => {
                tracing::error!(error = %err, "the history does not match its anchor");
                return Err(err);
            }
            AnchorVerdict::Unacknowledged { first, last } => tracing::warn!(
                first,
                last,
                "records {first}..={last} were being written when the machine stopped and \
                 were never acknowledged; they are not in the history"
            ),
            AnchorVerdict::Fresh | AnchorVerdict::Matches(_) => {}
        }
        if writable {
            storage.settle_anchor(head).map_err(storage_err)?;
        }
        tracing::debug!(seq = head.seq, "history opened");
        Ok(History {
            storage,
            head,
            poisoned: (!writable).then(|| "opened read-only".to_string()),
            _event: PhantomData,
        })
    }

    /// The last record's sequence number and hash.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The sequence number the next event must carry.
    pub fn next_seq(&self) -> u64 {
        self.head.seq + 1
    }

    /// Whether an earlier write failed (every later write is refused).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Appends `events` (numbered `next_seq()`, `next_seq() + 1`, ...) with one flush and
    /// one fsync of the data file, and returns the new head only when all are durable.
    /// On a store failure the history is poisoned: this and every later append fails.
    pub fn append_batch(&mut self, events: &[E]) -> Result<Head, AppendError> {
        if let Some(cause) = &self.poisoned {
            return Err(AppendError::Poisoned {
                cause: cause.clone(),
            });
        }
        if events.is_empty() {
            return Ok(self.head);
        }
        let mut records = Vec::with_capacity(events.len());
        let mut prev = self.head.hash;
        let mut expected = self.head.seq + 1;
        for event in events {
            if event.seq() != expected {
                return Err(AppendError::OutOfSequence {
                    expected,
                    found: event.seq(),
                });
            }
            let bytes = record::encode(expected, prev, event)?;
            prev = ChainHash::of(&bytes);
            records.push((expected, bytes));
            expected += 1;
        }
        let first_seq = self.head.seq + 1;
        let last_seq = expected - 1;
        match self.storage.append(self.head, &records) {
            Ok(head) => {
                self.head = head;
                Ok(head)
            }
            Err(StorageError::HeadMoved { expected, found }) => {
                tracing::error!(first_seq, last_seq, %found.seq, "another writer appended; history poisoned");
                self.poisoned.get_or_insert_with(|| {
                    format!(
                        "another writer appended (the stored head is record {})",
                        found.seq
                    )
                });
                Err(AppendError::HeadMoved {
                    first_seq,
                    last_seq,
                    expected: *expected,
                    found: *found,
                })
            }
            Err(source) => {
                tracing::error!(first_seq, last_seq, error = %source, "append failed; history poisoned");
                self.poisoned.get_or_insert_with(|| {
                    format!("appending records {first_seq}..={last_seq}: {source}")
                });
                Err(AppendError::Storage {
                    first_seq,
                    last_seq,
                    cause: source,
                })
            }
        }
    }

    /// The checked records from `from` on, in order: each is checked for its place, its
    /// chain link and its event's sequence number. The iteration ends after the first
    /// error.
    pub fn records_from(&self, from: u64) -> RecordReader<'_, E> {
        let from = from.max(1);
        let (expected_prev, error) = if from == 1 {
            (GENESIS_HASH, None)
        } else {
            match self.storage.read(from - 1) {
                Ok(Some(bytes)) => (ChainHash::of(&bytes), None),
                Ok(None) => (
                    GENESIS_HASH,
                    Some(ReplayError::Gap {
                        expected: from - 1,
                        found: None,
                    }),
                ),
                Err(source) => (
                    GENESIS_HASH,
                    Some(ReplayError::Storage {
                        seq: from - 1,
                        cause: source,
                    }),
                ),
            }
        };
        RecordReader::new(
            self.storage.read_shared_from(from),
            from,
            expected_prev,
            error,
        )
    }

    /// Rebuilds the state by folding every record into `state` (normally empty),
    /// checking each record's link and transition.
    pub fn replay<S: Fold<E> + Send>(&self, state: S) -> Result<S, ReplayError>
    where
        E: Send,
    {
        let (state, _) = fold_pipelined(state, self.storage.read_shared_from(1), 1, GENESIS_HASH)?;
        Ok(state)
    }

    /// Start-up: the latest snapshot plus the tail of records after it (or a full replay
    /// from `empty` when there is no snapshot). Snapshot + tail equals full replay.
    pub fn recover<S: Fold<E> + DeserializeOwned + Send>(
        &self,
        empty: S,
    ) -> Result<Recovered<S>, ReplayError>
    where
        E: Send,
    {
        // A snapshot is only a shortcut: when its blob is missing or damaged, or its
        // state no longer decodes (an older state layout), start-up replays everything
        // instead, which gives the same state. The audit still reports the snapshot.
        // The record says which layout the state was written with: a snapshot of
        // another layout is not even read.
        let usable = match self.storage.snapshot_record() {
            Ok(Some(record)) => match record.usable_for::<S>() {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(seq = record.seq, error = %err,
                        "snapshot not usable; replaying the whole history");
                    false
                }
            },
            Ok(None) => false,
            Err(err) => {
                tracing::warn!(error = %err, "snapshot record unreadable; replaying the whole history");
                false
            }
        };
        let snapshot = if usable {
            match self.storage.load_snapshot() {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    tracing::warn!(error = %err, "snapshot unreadable; replaying the whole history");
                    None
                }
            }
        } else {
            None
        };
        let decoded = snapshot.and_then(|(record, bytes)| match S::decode_snapshot(&bytes) {
            Ok(state) => Some((record, state)),
            Err(err) => {
                tracing::warn!(seq = record.seq, error = %err,
                        "snapshot state not usable; replaying the whole history");
                None
            }
        });
        let Some((record, state)) = decoded else {
            let (state, replayed) =
                fold_pipelined(empty, self.storage.read_shared_from(1), 1, GENESIS_HASH)?;
            return Ok(Recovered {
                state,
                snapshot_seq: None,
                replayed,
            });
        };
        if record.seq > self.head.seq {
            return Err(ReplayError::Snapshot {
                seq: record.seq,
                detail: format!(
                    "it covers records up to {}, but the history ends at {}",
                    record.seq, self.head.seq
                ),
            });
        }
        if record.seq > 0 {
            let at = self
                .storage
                .read(record.seq)
                .map_err(|source| ReplayError::Storage {
                    seq: record.seq,
                    cause: source,
                })?;
            let found = at.as_deref().map(ChainHash::of);
            if found != Some(record.chain) {
                return Err(ReplayError::Snapshot {
                    seq: record.seq,
                    detail: "the record it covers is not the one it was taken at".to_string(),
                });
            }
        }
        let (state, replayed) = fold_pipelined(
            state,
            self.storage.read_shared_from(record.seq + 1),
            record.seq + 1,
            record.chain,
        )?;
        Ok(Recovered {
            state,
            snapshot_seq: Some(record.seq),
            replayed,
        })
    }

    /// Takes a snapshot of `state`, which must be the state after the current head:
    /// stores it as a blob and names it by a small record, all on this thread. A failure
    /// leaves the history writable. A server does the same in three steps so that the
    /// encoding and the blob's write never delay an append:
    /// [`History::snapshot_ticket`], [`SnapshotTicket::write`] on another thread, and
    /// [`History::install_snapshot`].
    pub fn take_snapshot<S: Serialize>(
        &mut self,
        state: &S,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let written = self.snapshot_ticket()?.write(state)?;
        self.install_snapshot(written)
    }

    /// [`History::take_snapshot`] of a [`crate::lifecycle::State`] through `encoder`,
    /// which reuses the bytes of the jobs unchanged since its last snapshot.
    pub fn take_snapshot_with(
        &mut self,
        encoder: &mut snapshot::StateEncoder,
        state: &crate::lifecycle::State,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let written = self.snapshot_ticket()?.write_with(encoder, state)?;
        self.install_snapshot(written)
    }

    /// Begins a snapshot at the current head: the state given to
    /// [`SnapshotTicket::write`] must be the state after it. Cheap (no I/O).
    pub fn snapshot_ticket(&self) -> Result<SnapshotTicket, SnapshotError> {
        if let Some(cause) = &self.poisoned {
            return Err(SnapshotError::Poisoned {
                cause: cause.clone(),
            });
        }
        Ok(SnapshotTicket {
            seq: self.head.seq,
            chain: self.head.hash,
            sink: self.storage.snapshot_sink(),
        })
    }

    /// Names a written snapshot as the latest one, durably: the small record install
    /// that must stay in order with the appends. Refused, and its blob removed, when the
    /// history already holds a snapshot of a later record. A failure leaves the history
    /// writable: the records are durable and start-up replays a longer tail.
    pub fn install_snapshot(
        &mut self,
        written: WrittenSnapshot,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let WrittenSnapshot {
            record,
            held,
            size,
            mut sink,
        } = written;
        let seq = record.seq;
        let discard = |sink: &mut Option<Box<dyn snapshot::SnapshotSink>>,
                       keep: Option<crate::blobs::BlobHash>| {
            if let Some(sink) = sink.as_mut() {
                if keep != Some(record.state) {
                    sink.discard(&record.state);
                }
            }
        };
        let current = self.storage.snapshot_record().ok().flatten();
        let current_state = current.as_ref().map(|current| current.state);
        if let Some(cause) = &self.poisoned {
            discard(&mut sink, current_state);
            return Err(SnapshotError::Poisoned {
                cause: cause.clone(),
            });
        }
        if seq > self.head.seq {
            discard(&mut sink, current_state);
            return Err(SnapshotError::NotInHistory {
                seq,
                head: self.head.seq,
            });
        }
        if let Some(current) = current.as_ref().filter(|current| current.seq > seq) {
            discard(&mut sink, current_state);
            return Err(SnapshotError::Superseded {
                seq,
                newer: current.seq,
            });
        }
        // A failed snapshot loses nothing: the records are durable and start-up replays
        // a longer tail. So it does not poison the history; the caller logs it and tries
        // again later. (A failure of the database file itself poisons inside the store,
        // and every later write then says so.)
        let stored = match held {
            Some(bytes) => self.storage.save_snapshot(&record, bytes),
            None => self.storage.install_snapshot(&record),
        };
        if let Err(source) = stored {
            discard(&mut sink, current_state);
            tracing::warn!(seq, error = %source, "snapshot failed; the history goes on without it");
            return Err(SnapshotError::Storage { seq, cause: source });
        }
        // The sink (and the pin it holds on the blob) is dropped only now that the
        // record names the blob.
        drop(sink);
        tracing::info!(seq, state = %record.state, bytes = size, "snapshot taken");
        Ok(record)
    }

    /// The latest snapshot's record, if any (its `state` blob is referenced and must
    /// not be swept).
    pub fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        Ok(self.storage.load_snapshot()?.map(|(record, _)| record))
    }

    /// Checks everything: every record (place, link, event number, transition through
    /// `empty`'s [`Fold`]), the anchor, and that replay up to the snapshot gives exactly
    /// the snapshot's state.
    pub fn verify<S: Fold<E> + Serialize>(&self, empty: S) -> VerifyReport {
        verify::verify(self, empty)
    }

    /// The store underneath (for the audit and for tests).
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// Clean shutdown: records the head as the anchor, with nothing pending.
    pub fn close(mut self) -> Result<(), StorageError> {
        if let Some(cause) = self.poisoned.take() {
            return Err(StorageError::Poisoned { cause });
        }
        self.storage.settle_anchor(self.head)
    }
}

/// What the anchor says about the records a store holds.
#[derive(Debug)]
pub enum AnchorVerdict {
    /// No anchor, and nothing it would have to protect (no record, no snapshot).
    Fresh,
    /// The anchor's head is there with its hash (the records may go further: a batch
    /// handed to the disk whose anchor was not yet written when the process stopped).
    Matches(Anchor),
    /// The last batch the anchor names is missing, but the machine has restarted since
    /// the anchor was written and the records end exactly where the batch began: the
    /// machine stopped between the anchor's fsync and the database's, so the batch was
    /// never acknowledged. Not data loss.
    Unacknowledged {
        /// The batch's first sequence number.
        first: u64,
        /// Its last.
        last: u64,
    },
    /// Data loss, or an anchor that no longer matches.
    Refused(OpenError),
}

/// Judges the records `storage` holds (ending at `head`) against its anchor.
///
/// Each batch's anchor records the head before it (`acked`) and after it (`head`), and
/// is written only after sled's flush handed the batch to the kernel; both fsyncs then
/// run at once and the batch is acknowledged when both are done. So:
/// - after a process crash (same machine boot: the page cache survived), the records
///   always reach the anchor's head; anything shorter is data loss;
/// - after a machine stop (another boot id), the database may lack exactly the last
///   batch, if the stop fell between the two fsyncs; that batch was not acknowledged.
///   Records ending exactly at `acked` are accepted then, anything shorter is data loss.
///
/// The residual window: after a machine stop, a damaged database that lost exactly the
/// last batch, and nothing before it, is taken for that unacknowledged batch. A missing
/// or unreadable anchor beside records or a snapshot, or an anchor older than the
/// snapshot (a reset one), is data loss.
pub fn judge_anchor(storage: &dyn Storage, head: Head, dir: &Path) -> AnchorVerdict {
    let snapshot_seq = storage
        .snapshot_record()
        .map(|record| record.map(|record| record.seq))
        // A snapshot record that cannot be read still says a snapshot was taken.
        .unwrap_or(Some(0));
    let anchor = match storage.anchor() {
        Ok(Some(anchor)) => anchor,
        Ok(None) | Err(_) if head.seq == 0 && snapshot_seq.is_none() => {
            return AnchorVerdict::Fresh
        }
        Ok(None) => {
            return AnchorVerdict::Refused(OpenError::AnchorLost {
                detail: "is missing".to_string(),
                found_seq: head.seq,
                snapshot_seq,
            })
        }
        Err(err) => {
            return AnchorVerdict::Refused(OpenError::AnchorLost {
                detail: format!("cannot be used ({err})"),
                found_seq: head.seq,
                snapshot_seq,
            })
        }
    };
    if let Some(snapshot) = snapshot_seq {
        if anchor.head.seq < snapshot {
            return AnchorVerdict::Refused(OpenError::AnchorLost {
                detail: format!(
                    "names record {}, older than the snapshot (it was reset)",
                    anchor.head.seq
                ),
                found_seq: head.seq,
                snapshot_seq,
            });
        }
    }
    let hash_at = |seq: u64| -> Result<Option<ChainHash>, OpenError> {
        if seq == 0 {
            return Ok(Some(GENESIS_HASH));
        }
        storage
            .read(seq)
            .map(|bytes| bytes.as_deref().map(ChainHash::of))
            .map_err(|source| OpenError::Storage {
                dir: dir.to_path_buf(),
                cause: source,
            })
    };
    if anchor.head.seq <= head.seq {
        return match hash_at(anchor.head.seq) {
            Err(err) => AnchorVerdict::Refused(err),
            Ok(Some(found_hash)) if found_hash == anchor.head.hash => {
                AnchorVerdict::Matches(anchor)
            }
            Ok(Some(found_hash)) => AnchorVerdict::Refused(OpenError::AnchorMismatch {
                seq: anchor.head.seq,
                anchor_hash: anchor.head.hash,
                found_hash,
            }),
            Ok(None) => AnchorVerdict::Refused(OpenError::DataLoss {
                anchor_seq: anchor.head.seq,
                found_seq: head.seq,
            }),
        };
    }
    let now = anchor::current_boot_id();
    let unknown = [0u8; 16];
    let restarted = now != unknown && anchor.boot != unknown && anchor.boot != now;
    if restarted && head == anchor.acked {
        return AnchorVerdict::Unacknowledged {
            first: anchor.acked.seq + 1,
            last: anchor.head.seq,
        };
    }
    AnchorVerdict::Refused(OpenError::DataLoss {
        anchor_seq: anchor.head.seq,
        found_seq: head.seq,
    })
}

/// Folds the stored records from `from` on (the first linking to `prev`) into `state`,
/// checking each; returns the state and the number of records folded.
///
/// Replay is a three-stage pipeline, so start-up uses a second core: this thread reads
/// the records from the store (sharing sled's buffers, no copy) and checks each one's
/// place and chain link, which needs only its header and the BLAKE3 hash of its bytes; a
/// decoder thread decodes the events; a folder thread applies them in order. Chunks keep
/// the hand-offs cheap and bounded channels keep memory flat. Order and error reporting
/// are those of a plain loop ([`check_record`], then the fold): the first bad record
/// stops all three stages, and the error reported is the one of the earliest record.
fn fold_pipelined<E, S>(
    state: S,
    raw: storage::SharedRecordIter<'_>,
    from: u64,
    prev: ChainHash,
) -> Result<(S, u64), ReplayError>
where
    E: RecordEvent + Send,
    S: Fold<E> + Send,
{
    const CHUNK: usize = 256;
    type Linked = Vec<Result<(u64, storage::RecordBytes), ReplayError>>;
    let (linked_tx, linked_rx) = std::sync::mpsc::sync_channel::<Linked>(8);
    let (record_tx, record_rx) =
        std::sync::mpsc::sync_channel::<Vec<Result<Record<E>, ReplayError>>>(8);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for chunk in linked_rx {
                let mut decoded = Vec::with_capacity(chunk.len());
                let mut failed = false;
                for item in chunk {
                    let result = item.and_then(|(seq, bytes)| decode_checked::<E>(seq, &bytes));
                    failed = result.is_err();
                    decoded.push(result);
                    if failed {
                        break;
                    }
                }
                if record_tx.send(decoded).is_err() || failed {
                    return;
                }
            }
        });
        let folder = scope.spawn(move || {
            let mut state = state;
            state.replay_begins();
            let mut count = 0u64;
            for chunk in record_rx {
                for record in chunk {
                    let record = record?;
                    let seq = record.seq;
                    state
                        .apply_owned(record.event)
                        .map_err(|reason| ReplayError::Illegal {
                            seq,
                            reason: reason.to_string(),
                        })?;
                    count += 1;
                }
            }
            state.replay_ends();
            Ok((state, count))
        });
        let mut expected_seq = from;
        let mut expected_prev = prev;
        let mut chunk: Linked = Vec::with_capacity(CHUNK);
        for item in raw {
            let result = match item {
                Err(source) => Err(ReplayError::Storage {
                    seq: expected_seq,
                    cause: source,
                }),
                Ok((seq, bytes)) => {
                    check_link(expected_seq, expected_prev, seq, &bytes).map(|hash| {
                        expected_seq += 1;
                        expected_prev = hash;
                        (seq, bytes)
                    })
                }
            };
            let stop = result.is_err();
            chunk.push(result);
            if chunk.len() == CHUNK || stop {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                // A closed channel means a later stage stopped at a bad record.
                if linked_tx.send(full).is_err() || stop {
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = linked_tx.send(chunk);
        }
        drop(linked_tx);
        match folder.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The first half of [`check_record`], which needs no event: the record stored under
/// `key_seq` is the one expected, says it is, and links to `expected_prev`. Returns the
/// hash of its bytes (the next record's link).
fn check_link(
    expected_seq: u64,
    expected_prev: ChainHash,
    key_seq: u64,
    bytes: &[u8],
) -> Result<ChainHash, ReplayError> {
    if key_seq != expected_seq {
        return Err(ReplayError::Gap {
            expected: expected_seq,
            found: Some(key_seq),
        });
    }
    let header = record::decode_header(bytes).map_err(|source| ReplayError::Decode {
        seq: key_seq,
        cause: source,
    })?;
    check_header(key_seq, expected_prev, header.seq, header.prev)?;
    Ok(ChainHash::of(bytes))
}

/// The second half of [`check_record`]: the event decodes and carries the record's
/// number.
fn decode_checked<E: RecordEvent>(key_seq: u64, bytes: &[u8]) -> Result<Record<E>, ReplayError> {
    let record = record::decode::<E>(bytes).map_err(|source| ReplayError::Decode {
        seq: key_seq,
        cause: source,
    })?;
    if record.event.seq() != key_seq {
        return Err(ReplayError::EventSeq {
            seq: key_seq,
            found: record.event.seq(),
        });
    }
    Ok(record)
}

/// An iterator over checked records; see [`History::records_from`].
pub struct RecordReader<'a, E> {
    inner: storage::SharedRecordIter<'a>,
    expected_seq: u64,
    expected_prev: ChainHash,
    pending_error: Option<ReplayError>,
    done: bool,
    _event: PhantomData<fn() -> E>,
}

impl<'a, E> RecordReader<'a, E> {
    fn new(
        inner: storage::SharedRecordIter<'a>,
        from: u64,
        expected_prev: ChainHash,
        pending_error: Option<ReplayError>,
    ) -> Self {
        RecordReader {
            inner,
            expected_seq: from,
            expected_prev,
            pending_error,
            done: false,
            _event: PhantomData,
        }
    }
}

impl<E: RecordEvent> Iterator for RecordReader<'_, E> {
    type Item = Result<Record<E>, ReplayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(err) = self.pending_error.take() {
            self.done = true;
            return Some(Err(err));
        }
        let result = match self.inner.next()? {
            Err(source) => Err(ReplayError::Storage {
                seq: self.expected_seq,
                cause: source,
            }),
            Ok((seq, bytes)) => check_record(self.expected_seq, self.expected_prev, seq, &bytes),
        };
        match result {
            Ok((record, hash)) => {
                self.expected_seq += 1;
                self.expected_prev = hash;
                Some(Ok(record))
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Checks one stored record: that it is the one expected next (`expected_seq`), stored
/// under its own number, linked to `expected_prev`, and holding an event of the same
/// number. Returns it decoded, with the hash of its bytes (the next record's link).
pub fn check_record<E: RecordEvent>(
    expected_seq: u64,
    expected_prev: ChainHash,
    key_seq: u64,
    bytes: &[u8],
) -> Result<(Record<E>, ChainHash), ReplayError> {
    // The place and link first, from the header alone (a version-2 header is read
    // without the event), so a misplaced or unlinked record is reported as such even
    // when its event does not decode; then the event.
    let hash = check_link(expected_seq, expected_prev, key_seq, bytes)?;
    Ok((decode_checked(key_seq, bytes)?, hash))
}

/// Checks that a record stored under `key_seq` says it is that record and links to
/// `expected_prev`.
fn check_header(
    key_seq: u64,
    expected_prev: ChainHash,
    seq: u64,
    prev: ChainHash,
) -> Result<(), ReplayError> {
    if seq != key_seq {
        return Err(ReplayError::Misplaced {
            seq: key_seq,
            found: seq,
        });
    }
    if prev != expected_prev {
        return Err(ReplayError::BrokenLink {
            seq: key_seq,
            prev_seq: key_seq.saturating_sub(1),
            expected: expected_prev,
            found: prev,
        });
    }
    Ok(())
}
