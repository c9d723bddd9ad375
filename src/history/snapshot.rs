//! Snapshots: the state at a sequence number, stored as a blob and named by a small
//! record. Start-up loads the snapshot and replays only the tail after it.
//!
//! # The state's layout (format 2)
//!
//! A snapshot blob is a header and the state as positional MessagePack (structs as
//! arrays, no field names), the layout that decodes fastest:
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 | [`MAGIC`], `fedrunSS` |
//! | 4 | the format, [`SNAPSHOT_FORMAT`], little-endian |
//! | 32 | the [`Layout`] the state was written with |
//! | ... | the state, positional MessagePack |
//! | rest | for a [`State`]: the jobs index (below) |
//!
//! The jobs index says where blocks of [`JOBS_PER_BLOCK`] job entries start in the
//! state's map of jobs, so start-up can hand the blocks to two threads as each comes
//! free without first walking the jobs to find them (all little-endian):
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 per offset | where each block's first entry starts, counted from the state's first byte, then where the jobs end |
//! | 4 | jobs per block |
//! | 4 | the number of offsets (blocks + 1) |
//! | 8 | [`JOBS_INDEX_TAG`], `fedrunJX` |
//!
//! The index is derived from the state's bytes and checked against them when used: an
//! index that does not tile the jobs exactly is not believed (the state is then read in
//! one piece), and a state blob without one does not decode.
//!
//! Positional MessagePack names no field, so a state type whose fields were reordered,
//! or changed to another type of the same MessagePack shape, would decode into wrong
//! values. The [`Layout`] guards against that: it is a BLAKE3 hash of the state type's
//! name and of the source of every file that defines a type the state holds, so any
//! change to those types (and, conservatively, any other edit of those files) changes
//! it. A snapshot whose layout is not this build's is not decoded at all: start-up
//! replays the whole history instead (a snapshot is only a shortcut) and says so in a
//! warning. The layout is stored twice, in the [`SnapshotRecord`] (checked before the
//! blob is read) and in the blob's header (checked before the state is decoded).
//!
//! Format 1 snapshots (named-field MessagePack, no header) still load: field names are
//! checked by the decoder, so they never decode into wrong values. The state types
//! must not use `skip_serializing_if`: positional MessagePack cannot leave a field out
//! (a test round-trips a state holding every kind of value).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::record::ChainHash;
use crate::blobs::BlobHash;
use crate::job::JobId;
use crate::lifecycle::state::{
    Contribution, KeptRequest, KeptRequests, LiveIndex, LoadedJob, RequestKey, StoredFields,
};
use crate::lifecycle::Jobs;
use crate::lifecycle::{Job, State};
use imbl::OrdMap;
use std::sync::Arc;

/// The snapshot format this build writes: 2, positional MessagePack with a header.
/// Format 1 is named-field MessagePack without a header.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// The first bytes of every format-2 snapshot blob. A format-1 blob starts with a
/// MessagePack map marker, never with these.
pub const MAGIC: [u8; 8] = *b"fedrunSS";

/// The length of a format-2 blob's header.
pub const HEADER_LEN: usize = MAGIC.len() + 4 + 32;

/// The last bytes of a [`State`] blob: the end of its jobs index.
pub const JOBS_INDEX_TAG: [u8; 8] = *b"fedrunJX";

/// The job entries per block of the jobs index: small enough that the two threads of
/// start-up end within a block's decoding of each other (a fraction of a millisecond),
/// large enough that the index of a million jobs is 16 KB.
pub const JOBS_PER_BLOCK: usize = 512;

/// The source files that define the state's types (the state, its jobs, runs, sites,
/// kept requests, and every value they hold). A type the state comes to hold from
/// another file must have its file added here.
const LAYOUT_SOURCES: &[(&str, &str)] = &[
    ("lifecycle/state.rs", include_str!("../lifecycle/state.rs")),
    ("lifecycle/event.rs", include_str!("../lifecycle/event.rs")),
    (
        "lifecycle/participant.rs",
        include_str!("../lifecycle/participant.rs"),
    ),
    ("lifecycle/actor.rs", include_str!("../lifecycle/actor.rs")),
    (
        "lifecycle/rejection.rs",
        include_str!("../lifecycle/rejection.rs"),
    ),
    (
        "lifecycle/status.rs",
        include_str!("../lifecycle/status.rs"),
    ),
    ("lifecycle/time.rs", include_str!("../lifecycle/time.rs")),
    (
        "lifecycle/schedule_history.rs",
        include_str!("../lifecycle/schedule_history.rs"),
    ),
    (
        "lifecycle/small_map.rs",
        include_str!("../lifecycle/small_map.rs"),
    ),
    ("job/mod.rs", include_str!("../job/mod.rs")),
    ("job/flat_map.rs", include_str!("../job/flat_map.rs")),
    ("job/meta.rs", include_str!("../job/meta.rs")),
];

/// The source files a snapshot's layout covers, by name (relative to `src/`), with
/// their text as this build has it.
pub fn layout_sources() -> impl Iterator<Item = (&'static str, &'static str)> {
    LAYOUT_SOURCES.iter().copied()
}

/// The layout a state type has in this build (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout(pub [u8; 32]);

impl Layout {
    /// The layout of `S` in this build. Computed once per type name (hashing the
    /// sources takes well under a millisecond).
    pub fn of<S: ?Sized>() -> Layout {
        static SOURCES: OnceLock<blake3::Hash> = OnceLock::new();
        let sources = SOURCES.get_or_init(|| {
            let mut hasher = blake3::Hasher::new();
            for (name, text) in LAYOUT_SOURCES {
                hasher.update(name.as_bytes());
                hasher.update(&(text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            hasher.finalize()
        });
        let name = std::any::type_name::<S>();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"fedrun snapshot layout");
        hasher.update(&SNAPSHOT_FORMAT.to_le_bytes());
        // What follows a state's bytes (its jobs index) is part of the blob's layout.
        hasher.update(&JOBS_INDEX_TAG);
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(sources.as_bytes());
        Layout(*hasher.finalize().as_bytes())
    }

    /// The layout as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Layout> {
        blake3::Hash::from_hex(text)
            .ok()
            .map(|hash| Layout(*hash.as_bytes()))
    }
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Layout({})", self.to_hex())
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Layout {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Layout {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Layout, D::Error> {
        let text = String::deserialize(deserializer)?;
        Layout::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "a snapshot layout is 64 hex digits, not {} characters",
                text.len()
            ))
        })
    }
}

/// The small record that names a snapshot. It lives in the record store's metadata,
/// while the state bytes live in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The format version of the snapshot encoding ([`SNAPSHOT_FORMAT`]; records of
    /// format 1 carry the history's record format, 1, here).
    pub v: u32,
    /// The last sequence number the state covers.
    pub seq: u64,
    /// The hash of the record at `seq`, so the tail's first record must link to it.
    pub chain: ChainHash,
    /// The BLAKE3 hash of the serialized state (its blob name).
    pub state: BlobHash,
    /// The layout the state was written with (format 2 on; absent in format 1).
    #[serde(default)]
    pub layout: Option<Layout>,
}

impl SnapshotRecord {
    /// Encodes the record (named-field MessagePack).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of integers and strings into a Vec cannot fail.
        rmp_serde::to_vec_named(self).expect("a snapshot record always encodes")
    }

    /// Decodes a record; never panics on bad bytes.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, rmp_serde::decode::Error> {
        super::record::from_slice_limited(bytes, super::record::MAX_RECORD_DEPTH)
    }

    /// Whether this build can decode the state the record names as a state of type
    /// `S`; `Err` says why not. Format 1 records are usable (their state names its
    /// fields); format 2 ones only with this build's layout of `S`.
    pub fn usable_for<S: ?Sized>(&self) -> Result<(), SnapshotDecodeError> {
        match (self.v, self.layout) {
            (1, None) => Ok(()),
            (SNAPSHOT_FORMAT, Some(layout)) => {
                let expected = Layout::of::<S>();
                if layout == expected {
                    Ok(())
                } else {
                    Err(SnapshotDecodeError::LayoutChanged {
                        stored: layout,
                        expected,
                    })
                }
            }
            (SNAPSHOT_FORMAT, None) => Err(SnapshotDecodeError::NoLayout),
            (found, _) => Err(SnapshotDecodeError::UnknownFormat { found }),
        }
    }
}

/// Why a snapshot's state was not decoded. None of these loses anything: start-up
/// replays the whole history instead.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    /// The blob starts with the format-2 marker but is shorter than its header.
    #[error("the snapshot is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated {
        /// The blob's length.
        len: usize,
    },
    /// A format this build does not know (written by a newer fedrun).
    #[error("the snapshot has format {found}; this fedrun reads formats 1 and {SNAPSHOT_FORMAT}")]
    UnknownFormat {
        /// The format found.
        found: u32,
    },
    /// A format-2 record without a layout.
    #[error("the snapshot record has format {SNAPSHOT_FORMAT} but names no layout")]
    NoLayout,
    /// The state was written by a build whose state types differ from this one's.
    #[error("the snapshot was written with state layout {stored}, this fedrun's is {expected} (the state's types changed)")]
    LayoutChanged {
        /// The layout the snapshot was written with.
        stored: Layout,
        /// This build's.
        expected: Layout,
    },
    /// A state blob that does not end with a whole jobs index (cut short, or not
    /// written by this build).
    #[error("the snapshot does not end with its jobs index (cut short?)")]
    NoJobsIndex,
    /// The state bytes do not decode.
    #[error("the snapshot's state does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Serializes a state for a snapshot: the format-2 header, then positional MessagePack,
/// then, for a [`State`], its jobs index. The reference encoding: the state's derived
/// `Serialize`, and the index found by walking the bytes written. Every snapshot the
/// engines write goes through a [`StateEncoder`] (the same bytes, the index noted as the
/// jobs are written, unchanged jobs copied); tests compare the two, and the audit
/// compares a stored snapshot with this encoding of the replayed state.
pub fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut bytes = format_2_blob::<S>(64 * 1024);
    rmp_serde::encode::write(&mut bytes, state)?;
    if indexed::<S>() && !append_jobs_index(&mut bytes) {
        // A state whose bytes this build cannot walk could not be read back either.
        return Err(rmp_serde::encode::Error::Syntax(
            "the state's jobs do not end where their index must say".into(),
        ));
    }
    Ok(bytes)
}

/// Whether a blob of a state of type `S` ends with a jobs index: only a [`State`]'s.
fn indexed<S: ?Sized>() -> bool {
    Layout::of::<S>() == Layout::of::<State>()
}

/// Appends to `blob` (a format-2 header and a state's bytes) the jobs index of those
/// bytes, found by walking them; false, and nothing appended, when they do not hold a
/// state's nine fields with the jobs' map fifth. The index [`StateEncoder`] writes from
/// where it put each job is the same.
pub fn append_jobs_index(blob: &mut Vec<u8>) -> bool {
    let Some(payload) = blob.get(HEADER_LEN..) else {
        return false;
    };
    let Some(JobsMap { first, count, .. }) = jobs_map(payload) else {
        return false;
    };
    let entry = STATE_DEPTH - 2;
    let mut starts = Vec::with_capacity(count / JOBS_PER_BLOCK + 1);
    let mut at = first;
    for n in 0..count {
        if n % JOBS_PER_BLOCK == 0 {
            starts.push(at);
        }
        let Some(next) = msgpack::skip(payload, at, entry)
            .and_then(|job_at| msgpack::skip(payload, job_at, entry))
        else {
            return false;
        };
        at = next;
    }
    starts.push(at);
    write_jobs_index(blob, &starts, 0);
    true
}

/// Writes the jobs index of blocks starting at `starts` (then where the jobs end), each
/// less `base`: positions in the blob when `base` is the header's length.
fn write_jobs_index(out: &mut Vec<u8>, starts: &[usize], base: usize) {
    for start in starts {
        out.extend_from_slice(&((start - base) as u64).to_le_bytes());
    }
    out.extend_from_slice(&(JOBS_PER_BLOCK as u32).to_le_bytes());
    out.extend_from_slice(&(starts.len() as u32).to_le_bytes());
    out.extend_from_slice(&JOBS_INDEX_TAG);
}

/// Where a state's bytes hold its jobs: see [`jobs_map`].
struct JobsMap {
    /// Where the state's first field starts (after the array's header).
    head: usize,
    /// Where the map of jobs (its header) starts, after the first four fields.
    map: usize,
    /// Where its first entry starts.
    first: usize,
    /// How many entries its header claims.
    count: usize,
}

/// Where the jobs are in a state's bytes; `None` unless the bytes start with a state's
/// nine fields and the fifth begins a map.
fn jobs_map(payload: &[u8]) -> Option<JobsMap> {
    let mut rest = payload;
    if rmp::decode::read_array_len(&mut rest).ok()? != 9 {
        return None;
    }
    let head = payload.len() - rest.len();
    let mut map = head;
    for _ in 0..4 {
        map = msgpack::skip(payload, map, STATE_DEPTH - 1)?;
    }
    let mut entries = payload.get(map..)?;
    let count = usize::try_from(rmp::decode::read_map_len(&mut entries).ok()?).ok()?;
    Some(JobsMap {
        head,
        map,
        first: payload.len() - entries.len(),
        count,
    })
}

/// A state blob's jobs index as read from its end: the offsets (blocks' starts, then
/// the jobs' end) and the jobs per block. Not yet checked against the state's bytes.
struct JobsIndex<'a> {
    offsets: &'a [u8],
    per_block: usize,
}

impl JobsIndex<'_> {
    fn len(&self) -> usize {
        self.offsets.len() / 8
    }

    fn offset(&self, n: usize) -> Option<usize> {
        let bytes = self.offsets.get(n * 8..n * 8 + 8)?;
        usize::try_from(u64::from_le_bytes(bytes.try_into().ok()?)).ok()
    }
}

/// Splits what follows a [`State`] blob's header into the state's bytes and its jobs
/// index; `None` when the blob does not end with a whole index.
fn split_jobs_index(after_header: &[u8]) -> Option<(&[u8], JobsIndex<'_>)> {
    let (rest, tag) = after_header.split_at_checked(after_header.len().checked_sub(8)?)?;
    if tag != JOBS_INDEX_TAG {
        return None;
    }
    let (rest, counts) = rest.split_at_checked(rest.len().checked_sub(8)?)?;
    let per_block = u32::from_le_bytes(counts[..4].try_into().ok()?);
    let offsets = u32::from_le_bytes(counts[4..].try_into().ok()?);
    let offsets_len = usize::try_from(offsets).ok()?.checked_mul(8)?;
    let (payload, offsets) = rest.split_at_checked(rest.len().checked_sub(offsets_len)?)?;
    Some((
        payload,
        JobsIndex {
            offsets,
            per_block: usize::try_from(per_block).ok()?,
        },
    ))
}

/// A format-2 blob for a state of type `S` so far: its header, with room for `capacity`
/// bytes.
fn format_2_blob<S>(capacity: usize) -> Vec<u8> {
    format_2_blob_in::<S>(Vec::with_capacity(capacity.max(HEADER_LEN)))
}

/// [`format_2_blob`] written into `bytes`' memory (`bytes` is empty).
fn format_2_blob_in<S>(mut bytes: Vec<u8>) -> Vec<u8> {
    debug_assert!(bytes.is_empty());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
    bytes.extend_from_slice(&Layout::of::<S>().0);
    bytes
}

/// Encodes the states of one history one after another, byte for byte as
/// [`encode_state`] does, but copies a job's bytes from the last encoding when the state
/// still holds that very job: the same `Arc`, which this encoder holds too (in its cheap
/// copy of the last state's jobs), so the pointer cannot be reused and the job cannot have
/// changed in place (a shared job is copied before it changes). Settled jobs never
/// change, so a long history's snapshot costs an encoding of the jobs that changed since
/// the last one and a copy of the rest, instead of an encoding of every job. The kept
/// requests (about as many as the jobs) are copied the same way. It keeps the last
/// encoding, the one before (the next is written into its memory) and where each job and
/// kept request starts in the last: two snapshots' size in memory, one of them shared
/// where the store keeps the same bytes (an in-memory store keeps the shared bytes it was
/// given). The synchronous engine (the simulator's) uses it, on its own thread or, when
/// asked, on a thread per snapshot that hands the encoder back with the bytes.
#[derive(Default)]
pub struct StateEncoder {
    last: bytes::Bytes,
    /// The encoding before the last: the next one is written into its memory once
    /// nothing else holds it (a store lets go of it when the last is installed). A fresh
    /// snapshot-sized buffer is faulted in page by page at every snapshot, a third of the
    /// simulator's snapshot thread's time.
    spare: bytes::Bytes,
    jobs: Written<Jobs>,
    requests: Written<OrdMap<Arc<RequestKey>, Arc<KeptRequest>>>,
}

/// A collection as the last encoding holds it (a persistent map's cheap copy), with where
/// each of its entries starts in that encoding, in order, then where the last ends.
#[derive(Default)]
struct Written<T> {
    items: T,
    starts: Vec<usize>,
}

/// Bytes copied from the last encoding, gathered into one copy while they follow on
/// (`run`: the bytes not yet written out).
struct Copier<'a> {
    from: &'a [u8],
    run: std::ops::Range<usize>,
}

impl Copier<'_> {
    fn copy(&mut self, bytes: std::ops::Range<usize>, out: &mut Vec<u8>) {
        if self.run.end != bytes.start {
            self.flush(out);
            self.run.start = bytes.start;
        }
        self.run.end = bytes.end;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.from[self.run.clone()]);
        self.run = 0..0;
    }
}

impl std::fmt::Debug for StateEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateEncoder")
            .field("last", &self.last.len())
            .field("jobs", &self.jobs.items.len())
            .finish()
    }
}

impl StateEncoder {
    /// `state` as [`encode_state`] writes it. The bytes returned are the ones it keeps as
    /// its last encoding (shared, not copied).
    pub fn encode(&mut self, state: &State) -> Result<bytes::Bytes, rmp_serde::encode::Error> {
        use rmp_serde::encode::write as put;
        // `State`'s derived `Serialize`, field by field (an array of the fields not
        // skipped, in order). Naming every field makes a new one a compile error here;
        // `lifecycle_model` compares the bytes with `encode_state`'s after every step.
        let State {
            last_seq,
            last_at,
            boot_id,
            recovery,
            jobs,
            queue,
            sites,
            schedule_try,
            requests,
            index: _,
            identities: _,
        } = state;
        // Room for the last encoding and a quarter more: a growing state would otherwise
        // outgrow a buffer of the last size by a little and double it (three copies of
        // the snapshot in memory while it moves).
        let room = (self.last.len() + self.last.len() / 4).max(64 * 1024);
        let mut out = match std::mem::take(&mut self.spare).try_into_mut() {
            Ok(mut spare) if spare.capacity() >= room => {
                // Emptied before it becomes a `Vec`, which then moves no bytes.
                spare.clear();
                format_2_blob_in::<State>(Vec::from(spare))
            }
            // A spare too small is let go rather than grown (growing copies all its
            // memory, used or not). The new buffer has room for the state to grow by
            // more than a quarter again before it serves as the spare, two encodings on:
            // with room for a quarter only, a growing state outgrew every spare.
            _ => format_2_blob::<State>(room + room / 4),
        };
        rmp::encode::write_array_len(&mut out, 9)?;
        put(&mut out, last_seq)?;
        put(&mut out, last_at)?;
        put(&mut out, boot_id)?;
        put(&mut out, recovery)?;
        rmp::encode::write_map_len(&mut out, jobs.len() as u32)?;
        let mut copier = Copier {
            from: &self.last,
            run: 0..0,
        };
        // An entry is unchanged when its value is the very `Arc` the last encoding wrote:
        // held by this encoder since, it can neither have changed in place nor been freed
        // and its address reused.
        let jobs_at = copy_or_put(
            jobs,
            &self.jobs,
            |(id, _)| *id,
            |(_, job), (_, was_job)| Arc::ptr_eq(job, was_job),
            |(id, job), out| {
                put(out, *id)?;
                put(out, &***job)
            },
            &mut copier,
            &mut out,
        )?;
        put(&mut out, queue)?;
        crate::lifecycle::state::shared_sites::serialize(
            sites,
            &mut rmp_serde::Serializer::new(&mut out),
        )?;
        put(&mut out, schedule_try)?;
        // `KeptRequests`' `Serialize`: the map by key alone.
        let KeptRequests { by_key, by_time: _ } = requests;
        rmp::encode::write_map_len(&mut out, by_key.len() as u32)?;
        let by_key_at = copy_or_put(
            by_key,
            &self.requests,
            |(key, _)| *key,
            |(_, kept), (_, was_kept)| Arc::ptr_eq(kept, was_kept),
            |(key, kept), out| {
                put(out, &***key)?;
                put(out, &***kept)
            },
            &mut copier,
            &mut out,
        )?;
        let blocks: Vec<usize> = jobs_at.starts[..jobs.len()]
            .iter()
            .step_by(JOBS_PER_BLOCK)
            .chain(jobs_at.starts.last())
            .copied()
            .collect();
        write_jobs_index(&mut out, &blocks, HEADER_LEN);
        self.jobs = jobs_at;
        self.requests = by_key_at;
        self.spare = std::mem::replace(&mut self.last, bytes::Bytes::from(out));
        Ok(self.last.clone())
    }
}

/// Writes `items` in order, copying from the last encoding the bytes of each item whose
/// key `last` (the collection the last encoding wrote, in the same order) also holds and
/// that `unchanged` finds the same; answers the collection with where each item starts.
fn copy_or_put<'a, T: Clone + 'a, K: Ord>(
    items: &'a T,
    last: &'a Written<T>,
    key: impl Fn(&<&'a T as IntoIterator>::Item) -> K,
    unchanged: impl Fn(&<&'a T as IntoIterator>::Item, &<&'a T as IntoIterator>::Item) -> bool,
    mut put: impl FnMut(
        &<&'a T as IntoIterator>::Item,
        &mut Vec<u8>,
    ) -> Result<(), rmp_serde::encode::Error>,
    copier: &mut Copier<'_>,
    out: &mut Vec<u8>,
) -> Result<Written<T>, rmp_serde::encode::Error>
where
    &'a T: IntoIterator,
{
    let mut starts = Vec::new();
    let mut before = last
        .items
        .into_iter()
        .zip(last.starts.windows(2))
        .peekable();
    for item in items {
        starts.push(out.len() + copier.run.len());
        // The last encoding's items before this one's key are gone from the collection.
        while before.next_if(|(was, _)| key(was) < key(&item)).is_some() {}
        let copied = before
            .next_if(|(was, _)| key(was) == key(&item))
            .filter(|(was, _)| unchanged(&item, was));
        match copied {
            Some((_, at)) => copier.copy(at[0]..at[1], out),
            None => {
                copier.flush(out);
                put(&item, out)?;
            }
        }
    }
    copier.flush(out);
    starts.push(out.len());
    Ok(Written {
        items: items.clone(),
        starts,
    })
}

/// The layout in a format-2 blob's header; `None` for a format-1 blob (no [`MAGIC`]).
fn format_2_header(bytes: &[u8]) -> Result<Option<Layout>, SnapshotDecodeError> {
    if !bytes.starts_with(&MAGIC) {
        return Ok(None);
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotDecodeError::Truncated { len: bytes.len() });
    }
    let (format, rest) = bytes[MAGIC.len()..].split_at(4);
    let format = u32::from_le_bytes(format.try_into().expect("4 bytes"));
    if format != SNAPSHOT_FORMAT {
        return Err(SnapshotDecodeError::UnknownFormat { found: format });
    }
    Ok(Some(Layout(rest[..32].try_into().expect("32 bytes"))))
}

/// Deserializes a snapshot's state, format 2 (only with this build's layout of `S`) or
/// format 1 (named fields). Never panics on bad bytes.
pub fn decode_state<S: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<S, SnapshotDecodeError> {
    comparable_with::<S>(bytes)?;
    // Format 1 is named-field MessagePack, the whole blob.
    let mut payload = bytes
        .get(HEADER_LEN..)
        .filter(|_| bytes.starts_with(&MAGIC))
        .unwrap_or(bytes);
    if bytes.starts_with(&MAGIC) && indexed::<S>() {
        // Read in one piece, the state needs no index; but a blob without a whole one
        // is not what this build writes (most likely one cut short).
        (payload, _) = split_jobs_index(payload).ok_or(SnapshotDecodeError::NoJobsIndex)?;
    }
    Ok(super::record::from_slice_limited(payload, STATE_DEPTH)?)
}

/// The nesting a snapshot's state may have (the state nests deeper than an event: jobs,
/// runs, their maps, but not by much).
const STATE_DEPTH: usize = 4 * super::record::MAX_RECORD_DEPTH;

/// A [`State`] with at least this many jobs has its jobs decoded on two threads at
/// start-up ([`decode_state_parallel`]); a smaller one (a few milliseconds of decoding)
/// is decoded in one piece.
pub const TWO_THREADS_FROM: usize = 4096;

/// Decodes a snapshot's [`State`] as [`decode_state`] does, with the same result for any
/// bytes, but a format-2 state of at least `threads_from` jobs is read on two threads:
/// one decodes the fields other than the jobs while the other begins on the jobs, block
/// by block as the jobs index marks them, then each takes the next block not yet taken
/// until none is left; then one thread puts the jobs into their maps while the other
/// builds the live index from them. Bytes this reading finds anything odd in (an index
/// whose blocks do not tile the jobs, a field count, unsorted or repeated job ids, bytes
/// that end early) are decoded in one piece instead, which names the problem.
pub fn decode_state_parallel(
    bytes: &[u8],
    threads_from: usize,
) -> Result<State, SnapshotDecodeError> {
    match decode_state_in_parts(bytes, threads_from) {
        Some(state) => Ok(state),
        None => decode_state(bytes),
    }
}

/// The state [`decode_state_parallel`] reads on two threads; `None` when it would read
/// it in one piece instead (not a format-2 [`State`] of this build, fewer than
/// `threads_from` jobs, a jobs index that is missing or does not tile the jobs, or
/// anything odd in the bytes).
pub fn decode_state_in_parts(bytes: &[u8], threads_from: usize) -> Option<State> {
    if format_2_header(bytes).ok()? != Some(Layout::of::<State>()) {
        return None;
    }
    let (payload, index) = split_jobs_index(&bytes[HEADER_LEN..])?;
    state_in_parts(payload, &index, threads_from)
}

/// The index of `jobs` built from their contributions, its two parts (the sets and the
/// due sets) on two threads at once from [`TWO_THREADS_FROM`] jobs, as a snapshot's are:
/// what a replay from nothing builds when it ends ([`State::end_replay_with`]).
pub(super) fn index_of(jobs: &Jobs) -> LiveIndex {
    if jobs.len() < TWO_THREADS_FROM {
        return LiveIndex::of_jobs(jobs);
    }
    let contributions: Vec<Contribution> =
        jobs.iter().map(|(_, job)| Contribution::of(job)).collect();
    std::thread::scope(|scope| {
        let sets = scope.spawn(|| LiveIndex::sets_of(&contributions));
        let due = LiveIndex::due_of(&contributions);
        LiveIndex::of_parts(joined(sets), due)
    })
}

/// What a scoped thread returned; its panic goes on in the caller.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One block of jobs decoded: its number, its jobs and their contributions.
type Block = (usize, Vec<LoadedJob>, Vec<Contribution>);

/// The state of a format-2 payload read in parts (see [`decode_state_parallel`]);
/// `None` when it holds fewer than `threads_from` jobs or is not read this way.
fn state_in_parts(payload: &[u8], index: &JobsIndex<'_>, threads_from: usize) -> Option<State> {
    // The state is an array of its 9 stored fields, the jobs (a map) the fifth; values
    // inside the array may nest one level less, a job one level less again.
    let JobsMap {
        head,
        map,
        first,
        count,
    } = jobs_map(payload)?;
    if count < threads_from {
        return None;
    }
    let inner = STATE_DEPTH - 1;
    let entry = inner - 1;
    // The index must mark every block of the map: the first where the first entry
    // starts, each after the one before, the last where the jobs end.
    if index.per_block == 0 {
        return None;
    }
    let blocks = count.div_ceil(index.per_block);
    if index.len() != blocks + 1 || index.offset(0)? != first {
        return None;
    }
    let bounds: Vec<usize> = (0..=blocks)
        .map(|n| index.offset(n))
        .collect::<Option<_>>()?;
    if !bounds.windows(2).all(|w| w[0] < w[1]) || bounds[blocks] > payload.len() {
        return None;
    }
    // Block `n`, whose entries must fill its bytes exactly: then the blocks, read one
    // after another, are what one reader of the whole map reads.
    let block = |n: usize| -> Option<Block> {
        let bytes = &payload[bounds[n]..bounds[n + 1]];
        let jobs = index.per_block.min(count - n * index.per_block);
        let mut reader = reader(bytes, entry);
        let (loaded, contributions) = jobs_in(&mut reader, jobs, bytes.len())?;
        super::record::used_up(&mut reader).then_some((n, loaded, contributions))
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Takes blocks until none is left; `None` at the first that does not read.
    let take_blocks = || -> Option<Vec<Block>> {
        let mut taken = Vec::new();
        loop {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n >= blocks {
                return Some(taken);
            }
            taken.push(block(n)?);
        }
    };
    let (fields, mut taken) = std::thread::scope(|scope| {
        let other = scope.spawn(take_blocks);
        // The fields other than the jobs (the four before them, then the four after),
        // then blocks while any is left.
        let read_here = || {
            let fields = fields_in(
                &mut reader(&payload[head..map], inner),
                &mut reader(&payload[bounds[blocks]..], inner),
            )?;
            Some((fields, take_blocks()?))
        };
        let here = read_here();
        let other = joined(other);
        let (fields, mut taken) = here?;
        taken.extend(other?);
        Some((fields, taken))
    })?;
    taken.sort_unstable_by_key(|(n, _, _)| *n);
    let ids = taken
        .iter()
        .flat_map(|(_, jobs, _)| jobs)
        .map(LoadedJob::id);
    if taken.len() != blocks || !ids.clone().zip(ids.skip(1)).all(|(a, b)| a < b) {
        return None;
    }
    let (jobs, contributions): (Vec<_>, Vec<_>) = taken
        .into_iter()
        .map(|(_, jobs, contributions)| (jobs, contributions))
        .unzip();
    let contributions = || contributions.iter().flatten();
    // The jobs map and the due sets here, the live set and the blob counts beside them.
    Some(std::thread::scope(|scope| {
        let sets = scope.spawn(|| LiveIndex::sets_of(contributions()));
        State::from_stored_parts(fields, jobs.into_iter().flatten(), |_| {
            let due = LiveIndex::due_of(contributions());
            LiveIndex::of_parts(joined(sets), due)
        })
    }))
}

/// The check of the `snapshot_decode` fuzz target: `payload` behind this build's format-2
/// header of a [`State`] reads the same on two threads (from the first job on) as in one
/// piece: the same state, its index included, or an error for both; and neither reading
/// panics or reserves room for more than the bytes can hold. Checked for the payload as
/// it is (its own jobs index, if it ends with one, believed or not) and, when its bytes
/// have a state's shape, with the jobs index of those bytes appended.
pub fn fuzz_snapshot_decode(payload: &[u8]) {
    let mut blob = format_2_blob::<State>(HEADER_LEN + payload.len());
    blob.extend_from_slice(payload);
    same_on_two_threads(&blob);
    if append_jobs_index(&mut blob) {
        same_on_two_threads(&blob);
    }
}

/// [`fuzz_snapshot_decode`]'s comparison of the two readings of one blob.
fn same_on_two_threads(blob: &[u8]) {
    match (decode_state_parallel(blob, 0), decode_state::<State>(blob)) {
        (Ok(parallel), Ok(whole)) => {
            assert!(parallel == whole, "the two readings give different states");
            assert!(parallel.index() == whole.index(), "and different indexes");
        }
        (Err(_), Err(_)) => {}
        (parallel, whole) => panic!(
            "two threads read {:?} jobs, one piece {:?}",
            parallel.map(|s| s.jobs.len()),
            whole.map(|s| s.jobs.len())
        ),
    }
}

/// Reads MessagePack values one after another from a slice.
type Reader<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

/// A reader of the values from the start of `bytes`, nested at most `depth` deep.
fn reader(bytes: &[u8], depth: usize) -> Reader<'_> {
    let mut reader = rmp_serde::Deserializer::from_read_ref(bytes);
    reader.set_max_depth(depth);
    reader
}

/// The next `count` job entries (id, then job) of `reader`, each taken in, with their
/// contributions to the live index.
fn jobs_in(
    reader: &mut Reader<'_>,
    count: usize,
    bytes: usize,
) -> Option<(Vec<LoadedJob>, Vec<Contribution>)> {
    // Room for the entries the reader's `bytes` can hold, not for the count a map's
    // header claims (a hostile one claims four billion in a few bytes): an entry is an
    // 18-byte id and a job of more than a dozen fields.
    let room = count.min(bytes / 32);
    let mut jobs = Vec::with_capacity(room);
    let mut contributions = Vec::with_capacity(room);
    for _ in 0..count {
        let id = JobId::deserialize(&mut *reader).ok()?;
        let job = LoadedJob::new(id, Job::deserialize(&mut *reader).ok()?);
        contributions.push(job.contribution());
        jobs.push(job);
    }
    Some((jobs, contributions))
}

/// The state's fields other than its jobs: the four before them from `head`, the four
/// after them from `tail`.
fn fields_in(head: &mut Reader<'_>, tail: &mut Reader<'_>) -> Option<StoredFields> {
    Some(StoredFields {
        last_seq: Deserialize::deserialize(&mut *head).ok()?,
        last_at: Deserialize::deserialize(&mut *head).ok()?,
        boot_id: Deserialize::deserialize(&mut *head).ok()?,
        recovery: Deserialize::deserialize(&mut *head).ok()?,
        queue: crate::lifecycle::state::cautious::set(&mut *tail).ok()?,
        sites: crate::lifecycle::state::shared_sites::deserialize(&mut *tail).ok()?,
        schedule_try: Deserialize::deserialize(&mut *tail).ok()?,
        requests: Deserialize::deserialize(&mut *tail).ok()?,
    })
}

/// MessagePack values' bounds, found without decoding them.
pub(super) mod msgpack {
    use rmp::Marker;

    /// The big-endian unsigned number of `len` bytes at `at`.
    fn number(bytes: &[u8], at: usize, len: usize) -> Option<usize> {
        let digits = bytes.get(at..at.checked_add(len)?)?;
        let value = digits.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
        usize::try_from(value).ok()
    }

    /// Where the value that starts at `at` ends; `None` when the bytes end first, hold a
    /// reserved marker, or nest deeper than `depth` allows (counted as `rmp_serde`
    /// counts it: a container inside `depth` 1 is too deep).
    pub(in crate::history) fn skip(bytes: &[u8], at: usize, depth: usize) -> Option<usize> {
        let marker = Marker::from_u8(*bytes.get(at)?);
        let at = at + 1;
        // (where the marker's own bytes end, bytes of data after them, nested values)
        let (data, len, values) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (at, 0, 0)
            }
            Marker::U8 | Marker::I8 => (at, 1, 0),
            Marker::U16 | Marker::I16 => (at, 2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (at, 4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (at, 8, 0),
            Marker::FixStr(len) => (at, usize::from(len), 0),
            Marker::Str8 | Marker::Bin8 => (at + 1, number(bytes, at, 1)?, 0),
            Marker::Str16 | Marker::Bin16 => (at + 2, number(bytes, at, 2)?, 0),
            Marker::Str32 | Marker::Bin32 => (at + 4, number(bytes, at, 4)?, 0),
            // An extension: its type byte, then its data.
            Marker::FixExt1 => (at, 2, 0),
            Marker::FixExt2 => (at, 3, 0),
            Marker::FixExt4 => (at, 5, 0),
            Marker::FixExt8 => (at, 9, 0),
            Marker::FixExt16 => (at, 17, 0),
            Marker::Ext8 => (at + 1, number(bytes, at, 1)?.checked_add(1)?, 0),
            Marker::Ext16 => (at + 2, number(bytes, at, 2)?.checked_add(1)?, 0),
            Marker::Ext32 => (at + 4, number(bytes, at, 4)?.checked_add(1)?, 0),
            Marker::FixArray(len) => (at, 0, usize::from(len)),
            Marker::Array16 => (at + 2, 0, number(bytes, at, 2)?),
            Marker::Array32 => (at + 4, 0, number(bytes, at, 4)?),
            Marker::FixMap(len) => (at, 0, 2 * usize::from(len)),
            Marker::Map16 => (at + 2, 0, 2 * number(bytes, at, 2)?),
            Marker::Map32 => (at + 4, 0, number(bytes, at, 4)?.checked_mul(2)?),
            Marker::Reserved => return None,
        };
        let end = data.checked_add(len)?;
        if end > bytes.len() {
            return None;
        }
        let is_container = matches!(
            marker,
            Marker::FixArray(_)
                | Marker::Array16
                | Marker::Array32
                | Marker::FixMap(_)
                | Marker::Map16
                | Marker::Map32
        );
        if !is_container {
            return Some(end);
        }
        let inner = depth.checked_sub(1).filter(|&d| d > 0)?;
        (0..values).try_fold(end, |at, _| skip(bytes, at, inner))
    }
}

/// Whether state bytes `stored` can be compared with a state of type `S` of this build
/// by encoding it ([`encode_state_like`]): format 1, or format 2 with this build's layout.
pub fn comparable_with<S: ?Sized>(stored: &[u8]) -> Result<(), SnapshotDecodeError> {
    match format_2_header(stored)? {
        None => Ok(()),
        Some(stored) => {
            let expected = Layout::of::<S>();
            if stored == expected {
                Ok(())
            } else {
                Err(SnapshotDecodeError::LayoutChanged { stored, expected })
            }
        }
    }
}

/// Encodes `state` as `stored` (a snapshot's state bytes) was encoded: format 2 when it
/// starts with [`MAGIC`], else format 1. The audit compares a replayed state with a
/// stored snapshot this way.
pub fn encode_state_like<S: Serialize>(
    state: &S,
    stored: &[u8],
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    if stored.starts_with(&MAGIC) {
        encode_state(state)
    } else {
        encode_state_v1(state)
    }
}

/// Serializes a state in format 1 (named-field MessagePack), as fedrun wrote snapshots
/// before format 2. For tests of old data folders.
pub fn encode_state_v1<S: Serialize>(state: &S) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(state)
}

/// Stores snapshot state bytes on a thread of its own, while the history goes on
/// appending (see [`super::Storage::snapshot_sink`]).
pub trait SnapshotSink: Send {
    /// Stores `state` durably under its hash `hash`. What it stored is kept from any
    /// sweep or free of the blob store until the sink is dropped, so the snapshot can
    /// be installed first.
    fn store(&mut self, hash: &BlobHash, state: &[u8]) -> Result<(), super::StorageError>;

    /// Removes what [`SnapshotSink::store`] stored, for a snapshot that will not be
    /// installed. A failure leaves a stray blob for the next sweep, nothing worse.
    fn discard(&mut self, hash: &BlobHash);
}

/// A snapshot begun at the history's head: [`SnapshotTicket::write`] encodes and stores
/// the state, on any thread, and [`super::History::install_snapshot`] then names it.
pub struct SnapshotTicket {
    pub(super) seq: u64,
    pub(super) chain: ChainHash,
    pub(super) sink: Option<Box<dyn SnapshotSink>>,
}

impl std::fmt::Debug for SnapshotTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTicket")
            .field("seq", &self.seq)
            .field("chain", &self.chain)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl SnapshotTicket {
    /// The sequence number the snapshot covers: `state` must be the state after it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Encodes `state` (the state after record [`SnapshotTicket::seq`]) and, when the
    /// store has a sink, stores it durably. Touches neither the records nor the history:
    /// meant to run off the thread that appends.
    pub fn write<S: Serialize>(self, state: &S) -> Result<WrittenSnapshot, super::SnapshotError> {
        self.store(
            encode_state(state).map(bytes::Bytes::from),
            Layout::of::<S>(),
        )
    }

    /// [`SnapshotTicket::write`] for a [`State`], encoded by `encoder` (the same bytes,
    /// reusing those of the jobs unchanged since its last encoding).
    pub fn write_with(
        self,
        encoder: &mut StateEncoder,
        state: &State,
    ) -> Result<WrittenSnapshot, super::SnapshotError> {
        self.store(encoder.encode(state), Layout::of::<State>())
    }

    /// Hashes and, when the store has a sink, stores the encoded state bytes.
    fn store(
        mut self,
        encoded: Result<bytes::Bytes, rmp_serde::encode::Error>,
        layout: Layout,
    ) -> Result<WrittenSnapshot, super::SnapshotError> {
        let seq = self.seq;
        let bytes =
            encoded.map_err(|source| super::SnapshotError::Encode { seq, cause: source })?;
        let hash = crate::blobs::hash_of(&bytes);
        let record = SnapshotRecord {
            v: SNAPSHOT_FORMAT,
            seq,
            chain: self.chain,
            state: hash,
            layout: Some(layout),
        };
        let size = bytes.len();
        let held = match &mut self.sink {
            Some(sink) => {
                sink.store(&hash, &bytes)
                    .map_err(|source| super::SnapshotError::Storage { seq, cause: source })?;
                None
            }
            None => Some(bytes),
        };
        Ok(WrittenSnapshot {
            record,
            held,
            size,
            sink: self.sink,
        })
    }
}

/// A snapshot whose state is encoded (and, with a sink, durably stored), waiting for
/// [`super::History::install_snapshot`]. Dropped without being installed, it leaves at
/// most a stray blob, which the next start-up's sweep removes.
pub struct WrittenSnapshot {
    pub(super) record: SnapshotRecord,
    /// The state bytes, for a store without a sink (it stores them at install).
    pub(super) held: Option<bytes::Bytes>,
    pub(super) size: usize,
    pub(super) sink: Option<Box<dyn SnapshotSink>>,
}

impl std::fmt::Debug for WrittenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrittenSnapshot")
            .field("record", &self.record)
            .field("size", &self.size)
            .finish()
    }
}

impl WrittenSnapshot {
    /// The record it will install.
    pub fn record(&self) -> &SnapshotRecord {
        &self.record
    }

    /// The size of the encoded state in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::msgpack::skip;
    use std::collections::BTreeMap;

    /// Values of every MessagePack kind, each as its own bytes.
    fn values() -> Vec<Vec<u8>> {
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut put = |value: &dyn erased::Value| values.push(value.bytes());
        for n in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX) + 1,
        ] {
            put(&n);
        }
        for n in [-1i64, -32, -33, -128, -129, -32_768, -32_769, i64::MIN] {
            put(&n);
        }
        put(&1.5f32);
        put(&-2.25f64);
        put(&true);
        put(&Option::<u8>::None);
        for len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            put(&"x".repeat(len));
            put(&vec![1u8; len]);
        }
        let map: BTreeMap<String, Vec<Option<(u8, String)>>> = (0..40)
            .map(|n| {
                (
                    format!("key {n}"),
                    vec![Some((n, "v".repeat(n.into()))), None],
                )
            })
            .collect();
        put(&map);
        for len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            let mut bytes = Vec::new();
            rmp::encode::write_bin(&mut bytes, &vec![7u8; len]).expect("writes");
            values.push(bytes);
        }
        for len in [1u32, 2, 4, 8, 16, 0, 3, 300, 70_000] {
            let mut bytes = Vec::new();
            rmp::encode::write_ext_meta(&mut bytes, len, 5).expect("writes");
            bytes.resize(bytes.len() + len as usize, 9);
            values.push(bytes);
        }
        values
    }

    /// Serializes any value (a trait object, so one list holds them all).
    mod erased {
        pub trait Value {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Value for T {
            fn bytes(&self) -> Vec<u8> {
                rmp_serde::to_vec(self).expect("encodes")
            }
        }
    }

    #[test]
    fn skip_finds_where_every_kind_of_value_ends() {
        let values = values();
        let all: Vec<u8> = values.concat();
        let mut at = 0;
        for value in &values {
            let end = skip(&all, at, 8).expect("a whole value");
            assert_eq!(end - at, value.len(), "value starting {:x?}", &value[..1]);
            at = end;
        }
        assert_eq!(at, all.len());
        for value in &values {
            for cut in 0..value.len().min(300) {
                assert_eq!(
                    skip(&value[..cut], 0, 8),
                    None,
                    "{:x?} cut to {cut}",
                    &value[..1]
                );
            }
        }
        assert_eq!(skip(&[0xc1], 0, 8), None, "the reserved marker");
    }

    #[test]
    fn skip_counts_depth_as_the_decoder_does() {
        use serde::Deserialize;
        // Arrays nested `n` deep decode with a depth limit above `n`, not at `n`.
        for n in 1..6usize {
            let mut bytes = vec![0x91; n - 1];
            bytes.push(0x90);
            let limited = |depth: usize| {
                let mut reader = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
                reader.set_max_depth(depth);
                serde::de::IgnoredAny::deserialize(&mut reader).is_ok()
            };
            for depth in 1..8 {
                assert_eq!(
                    skip(&bytes, 0, depth).is_some(),
                    limited(depth),
                    "{n} deep, limit {depth}"
                );
            }
        }
    }
}

#[cfg(test)]
mod encoder_tests {
    use super::*;
    use crate::lifecycle::state::{Answer, KeptRequest, RequestFingerprint, RequestKey};
    use crate::lifecycle::time::Timestamp;
    use crate::lifecycle::{Identity, Role};

    /// A kept request the state changes after an encoding (as the fold does: the encoder
    /// holds it, so the change copies it first) is written anew, not copied from the
    /// last encoding: each encoding is byte for byte a fresh one (`encode_state`'s).
    #[test]
    fn a_kept_request_changed_since_the_last_encoding_is_written_anew() {
        let identity = Arc::new(Identity {
            name: "admin@a.org".into(),
            org: "a".into(),
            role: Role::ProjectAdmin,
        });
        let mut state = State::new();
        let mut keys = Vec::new();
        for n in 0..3u8 {
            let at = Timestamp::from_millis(1_000 * i64::from(n));
            let key = Arc::new(RequestKey {
                identity: identity.clone(),
                key: format!("key-{n}").into(),
            });
            let kept = KeptRequest {
                reply: Ok(Answer::Accepted {
                    job_id: JobId(uuid::Uuid::from_u128(u128::from(n))),
                }),
                at,
                fingerprint: RequestFingerprint {
                    operation: "abort".into(),
                    job_id: None,
                    package: None,
                },
                last_seq: u64::from(n),
            };
            state.requests.by_key.insert(key.clone(), Arc::new(kept));
            state.requests.by_time.insert((at, key.clone()));
            keys.push(key);
        }
        let mut encoder = StateEncoder::default();
        let first = encoder.encode(&state).expect("encodes");
        assert_eq!(&first[..], &encode_state(&state).expect("encodes")[..]);
        let shared = state.requests.by_key.get_mut(&keys[1]).expect("kept");
        Arc::make_mut(shared).last_seq = 99;
        let second = encoder.encode(&state).expect("encodes");
        assert_ne!(first, second, "the change is in the bytes");
        assert_eq!(&second[..], &encode_state(&state).expect("encodes")[..]);
    }
}
