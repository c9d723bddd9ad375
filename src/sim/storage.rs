//! [`FaultyStorage`]: the simulator's history store, an in-memory [`Storage`] that can fail
//! the way a disk does.
//!
//! It keeps what a file system keeps: records that were synced, and records that were
//! written but not yet synced (they are read back like any other, as from the page cache,
//! until a crash with power loss drops them). A write can be told in advance to fail
//! ([`WriteFault`]), and the disk can be full. Like `MemoryStorage`, clones share the same
//! bytes, so a simulated server restarts by opening a new history on a clone.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::history::record::{BINARY_MARKER, V2_PREV_BYTES};
use crate::history::storage::{head_after, head_of, KeptSnapshot, RecordIter};
use crate::history::{Anchor, ChainHash, Head, SnapshotRecord, Storage, StorageError};
use crate::sim::faults::WriteFault;

/// The bytes of each chunk of the record log (a record longer than this has a chunk of
/// its own).
const CHUNK_BYTES: usize = 1 << 20;

/// Every record written, oldest first, end to end in chunks that are never reallocated:
/// a day of 10,000 jobs is half a million records, and one allocation each (plus a map
/// node) took half again their bytes. A chunk that is full is packed with LZ4 on a thread
/// of its own, and read back rarely (a restart, a power loss), in order, a chunk unpacked
/// at a time. Packed, a record's link (the 32 bytes of the hash of the record before it,
/// which no compression shrinks) is left out when it is that hash, and computed again
/// when the chunk is unpacked: the records of such a day (80.7 MB) take 32.0 MB packed
/// with their links, 15.5 MB without.
struct RecordLog {
    chunks: Vec<Chunk>,
    /// Per chunk, the index of its first record (record `i + 1` at index `i`: records are
    /// numbered from 1 without a gap, as [`head_after`] checks).
    firsts: Vec<u32>,
    /// Per record, where it ends in its chunk (unpacked); it starts where the one before
    /// ended, or at 0 as its chunk's first.
    ends: Vec<u32>,
    /// The last record's number and hash.
    head: Head,
    /// The packed chunk read last, unpacked, by its index, and whether its links were
    /// computed again (`Links::LeftOut` when it was read for events only): reads go
    /// forward, so each packed chunk is unpacked once per pass.
    unpacked: Option<(usize, Links, Vec<u8>)>,
    /// Buffers given back by chunks once packed and by the threads that packed them,
    /// taken again by the next chunk and the next packing: a fresh megabyte is zeroed by
    /// the kernel page by page as it is first written, and a day of 10,000 jobs packs
    /// 80 chunks, each through three such buffers.
    spare: Spare,
}

/// Empty buffers kept for reuse (a few: the chunks are packed one after another).
#[derive(Default)]
struct Spare {
    /// Buffers made for an ordinary chunk (of [`CHUNK_BYTES`], not one made larger for a
    /// record that does not fit one), for the next open chunk.
    chunks: Vec<Vec<u8>>,
    /// The working buffers of a finished packing, for the next.
    packing: Vec<PackBuffers>,
}

/// How many buffers of each kind [`Spare`] keeps.
const SPARE_KEPT: usize = 2;

/// A packing's working buffers: the chunk's bytes with links left out, and the LZ4
/// output before its exact-size copy.
#[derive(Default)]
struct PackBuffers {
    unlinked: Vec<u8>,
    packed: Vec<u8>,
}

/// A chunk of the record log.
enum Chunk {
    /// The last chunk, records still being added.
    Open(Vec<u8>),
    /// A full chunk, read from these bytes until the thread packing them is done (it
    /// hands its working buffers back with the packed bytes).
    Packing(Arc<Vec<u8>>, std::thread::JoinHandle<(Packed, PackBuffers)>),
    /// A full chunk, packed.
    Packed(Packed),
}

/// Whether a packed chunk is read back with the links it left out computed again (each
/// record's bytes exactly as written) or without them (zeroes where a link was left out:
/// enough to read the records' events, which a link is not part of, without hashing
/// every record of the chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Links {
    Restored,
    LeftOut,
}

/// A full chunk's records with the links that follow from the record before left out
/// (zeroed), LZ4-packed.
struct Packed {
    bytes: Box<[u8]>,
    /// The length of the bytes packed.
    length: usize,
    /// The records after the chunk's first (by index in the chunk, in order) whose link
    /// is stored as it is: any that is not a version-2 record linked to the record before
    /// it (whatever bytes a store is handed, it gives back). The first keeps its link.
    linked: Box<[u32]>,
}

impl Packed {
    /// Packs `bytes`, the records that end at `ends`, working in `buffers`.
    fn pack(bytes: &[u8], ends: &[u32], buffers: &mut PackBuffers) -> Packed {
        let unlinked = &mut buffers.unlinked;
        unlinked.clear();
        unlinked.extend_from_slice(bytes);
        let mut linked = Vec::new();
        for (index, before, record) in records_after_the_first(ends) {
            let link = link_of(&record);
            let follows = link.end <= record.end
                && bytes[record.start] == BINARY_MARKER
                && bytes[link.clone()] == ChainHash::of(&bytes[before]).0;
            if follows {
                unlinked[link].fill(0);
            } else {
                linked.push(index);
            }
        }
        let out = &mut buffers.packed;
        out.resize(lz4_flex::block::get_maximum_output_size(unlinked.len()), 0);
        let written = lz4_flex::block::compress_into(unlinked, out)
            .expect("LZ4's worst case fits the room made for it");
        Packed {
            bytes: out[..written].into(),
            length: unlinked.len(),
            linked: linked.into_boxed_slice(),
        }
    }

    /// The chunk's bytes, up to the records that end at `ends` (the chunk's first ones,
    /// or all), each with its link when `links` says so; written into `bytes`' memory.
    fn unpack(&self, ends: &[u32], links: Links, mut bytes: Vec<u8>) -> Vec<u8> {
        // Only this log packs chunks, in memory no one else writes to.
        bytes.clear();
        bytes.resize(self.length, 0);
        let unpacked = lz4_flex::block::decompress_into(&self.bytes, &mut bytes)
            .expect("a packed chunk of the log unpacks");
        assert_eq!(
            unpacked, self.length,
            "a packed chunk unpacks to its length"
        );
        if links == Links::LeftOut {
            return bytes;
        }
        let mut linked = self.linked.iter().peekable();
        for (index, before, record) in records_after_the_first(ends) {
            // In order: the record before has its link again when it is hashed.
            if linked.next_if(|&&kept| kept == index).is_none() {
                let hash = ChainHash::of(&bytes[before]);
                bytes[link_of(&record)].copy_from_slice(&hash.0);
            }
        }
        bytes
    }
}

/// Each record of a chunk but the first, whose records end at `ends`: its index, the
/// bytes of the record before it, and its own.
fn records_after_the_first(
    ends: &[u32],
) -> impl Iterator<Item = (u32, std::ops::Range<usize>, std::ops::Range<usize>)> + '_ {
    let starts = std::iter::once(0).chain(ends.iter().map(|&end| end as usize));
    let records = starts.zip(ends).map(|(start, &end)| start..end as usize);
    records
        .clone()
        .zip(records.skip(1))
        .zip(1..)
        .map(|((before, record), index)| (index, before, record))
}

/// Where a version-2 record at `record` holds its link (past its end for a shorter one).
fn link_of(record: &std::ops::Range<usize>) -> std::ops::Range<usize> {
    record.start + V2_PREV_BYTES.start..record.start + V2_PREV_BYTES.end
}

impl Default for RecordLog {
    fn default() -> Self {
        RecordLog {
            chunks: Vec::new(),
            firsts: Vec::new(),
            ends: Vec::new(),
            head: Head::EMPTY,
            unpacked: None,
            spare: Spare::default(),
        }
    }
}

impl RecordLog {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where record index `index` (which exists) lies: its chunk and its bytes there.
    fn place(&self, index: usize) -> (usize, std::ops::Range<usize>) {
        let chunk = self
            .firsts
            .partition_point(|&first| first as usize <= index)
            - 1;
        let start = if self.firsts[chunk] as usize == index {
            0
        } else {
            self.ends[index - 1] as usize
        };
        (chunk, start..self.ends[index] as usize)
    }

    /// Where the records of chunk `chunk` end (those that are still in the log).
    fn ends_of(&self, chunk: usize) -> &[u32] {
        let first = self.firsts[chunk] as usize;
        let after = self
            .firsts
            .get(chunk + 1)
            .map_or(self.len(), |&next| next as usize);
        &self.ends[first..after.min(self.len())]
    }

    fn get(&mut self, seq: u64) -> Option<&[u8]> {
        self.get_with(seq, Links::Restored)
    }

    /// Record `seq` as [`RecordLog::get`] gives it, or with zeroes for a link its packed
    /// chunk left out (`Links::LeftOut`).
    fn get_with(&mut self, seq: u64, links: Links) -> Option<&[u8]> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        if index >= self.len() {
            return None;
        }
        let (chunk, range) = self.place(index);
        let bytes = match &self.chunks[chunk] {
            Chunk::Open(bytes) => bytes,
            Chunk::Packing(bytes, _) => &**bytes,
            Chunk::Packed(packed) => {
                // Unpacked with its links, a chunk serves either kind of read; without
                // them, only a read for events.
                let cached = matches!(
                    &self.unpacked,
                    Some((at, had, _)) if *at == chunk && (*had == Links::Restored || links == Links::LeftOut)
                );
                if !cached {
                    let memory = self.unpacked.take().map(|(_, _, bytes)| bytes);
                    let bytes =
                        packed.unpack(self.ends_of(chunk), links, memory.unwrap_or_default());
                    self.unpacked = Some((chunk, links, bytes));
                }
                &self.unpacked.as_ref().expect("unpacked just now").2
            }
        };
        Some(&bytes[range])
    }

    /// Takes the packed bytes of the chunks whose packing is done (all of them, waiting
    /// for each, with `wait`), keeping their buffers for reuse.
    fn collect_packed(&mut self, wait: bool) {
        for chunk in &mut self.chunks {
            if !matches!(chunk, Chunk::Packing(_, thread) if wait || thread.is_finished()) {
                continue;
            }
            if let Chunk::Packing(bytes, thread) = std::mem::replace(chunk, Chunk::Open(Vec::new()))
            {
                let (packed, buffers) = thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                *chunk = Chunk::Packed(packed);
                if self.spare.packing.len() < SPARE_KEPT {
                    self.spare.packing.push(buffers);
                }
                // The packing thread has let go of its copy: nothing else holds the bytes.
                if let Ok(mut bytes) = Arc::try_unwrap(bytes) {
                    let ordinary = (CHUNK_BYTES..2 * CHUNK_BYTES).contains(&bytes.capacity());
                    if self.spare.chunks.len() < SPARE_KEPT && ordinary {
                        bytes.clear();
                        self.spare.chunks.push(bytes);
                    }
                }
            }
        }
    }

    /// Hands the full last chunk to a thread that packs it, and takes the packed bytes
    /// of the chunks whose packing is done.
    fn seal_last(&mut self) {
        self.collect_packed(false);
        let Some(&first) = self.firsts.last() else {
            return;
        };
        let Some(last) = self.chunks.last_mut() else {
            return;
        };
        if let Chunk::Open(full) = last {
            let ends = self.ends[first as usize..].to_vec();
            let mut buffers = self.spare.packing.pop().unwrap_or_default();
            let bytes = Arc::new(std::mem::take(full));
            let packer = Arc::clone(&bytes);
            let thread = std::thread::Builder::new()
                .name("sim-disk-pack".into())
                .spawn(move || {
                    let packed = Packed::pack(&packer, &ends, &mut buffers);
                    (packed, buffers)
                })
                .expect("the simulator starts a thread to pack a chunk of its disk");
            *last = Chunk::Packing(bytes, thread);
        }
    }

    /// Adds records that [`head_after`] found to follow the last one, whose head it gave.
    fn push(&mut self, records: &[(u64, Vec<u8>)], head: Head) {
        for (seq, bytes) in records {
            debug_assert_eq!(*seq, self.len() as u64 + 1);
            let fits = matches!(
                self.chunks.last(),
                Some(Chunk::Open(chunk)) if chunk.capacity() - chunk.len() >= bytes.len()
            );
            if !fits {
                self.seal_last();
                let spare = if bytes.len() <= CHUNK_BYTES {
                    self.spare.chunks.pop()
                } else {
                    None
                };
                let chunk =
                    spare.unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES.max(bytes.len())));
                self.chunks.push(Chunk::Open(chunk));
                self.firsts.push(
                    u32::try_from(self.len())
                        .expect("fewer than 2^32 records on the simulated disk"),
                );
            }
            let Some(Chunk::Open(last)) = self.chunks.last_mut() else {
                unreachable!("a chunk was opened above when the last one was not open")
            };
            last.extend_from_slice(bytes);
            self.ends
                .push(u32::try_from(last.len()).expect("a chunk is at most one record or 1 MiB"));
        }
        if !records.is_empty() {
            self.head = head;
        }
    }

    /// Keeps the first `keep` records only.
    fn truncate(&mut self, keep: usize) {
        if keep >= self.len() {
            return;
        }
        if keep == 0 {
            *self = RecordLog::default();
            return;
        }
        let (chunk, last_record) = self.place(keep - 1);
        self.ends.truncate(keep);
        self.chunks.truncate(chunk + 1);
        self.firsts.truncate(chunk + 1);
        let unpacked = self.unpacked.take();
        // Records are added to the last chunk only: this one opens again (a thread still
        // packing it is left to finish, and what it packed is dropped).
        let mut bytes = match std::mem::replace(&mut self.chunks[chunk], Chunk::Open(Vec::new())) {
            Chunk::Open(bytes) => bytes,
            Chunk::Packing(bytes, _) => bytes.as_ref().clone(),
            Chunk::Packed(packed) => match unpacked {
                Some((at, Links::Restored, bytes)) if at == chunk => bytes,
                _ => packed.unpack(self.ends_of(chunk), Links::Restored, Vec::new()),
            },
        };
        bytes.truncate(last_record.end);
        self.chunks[chunk] = Chunk::Open(bytes);
        let seq = keep as u64;
        self.head = head_of(self.get(seq).map(|bytes| (seq, bytes)));
    }
}

#[derive(Default)]
struct Disk {
    records: RecordLog,
    /// How many of the records (the first ones) were synced; the rest are in the page
    /// cache only.
    synced: usize,
    snapshot: KeptSnapshot,
    anchor: Option<Anchor>,
    /// The anchor of a batch whose fsync did not return: read back like the unsynced
    /// records, and lost with them.
    unsynced_anchor: Option<Anchor>,
    full: bool,
    plan: Option<WriteFault>,
    crashed: bool,
}

/// An in-memory store with synced and unsynced records and injectable failures.
#[derive(Clone, Default)]
pub struct FaultyStorage {
    disk: Arc<Mutex<Disk>>,
}

impl std::fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let disk = self.lock();
        f.debug_struct("FaultyStorage")
            .field("synced", &disk.synced)
            .field("unsynced", &(disk.records.len() - disk.synced))
            .finish()
    }
}

fn io_error(what: &'static str, kind: std::io::ErrorKind, text: &str) -> StorageError {
    StorageError::Io {
        what,
        path: PathBuf::from("memory"),
        source: std::io::Error::new(kind, text.to_string()),
    }
}

impl FaultyStorage {
    /// An empty disk.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // Nothing below panics while holding the lock; a poisoned guard still holds
        // consistent records.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next write fail this way.
    pub fn plan(&self, fault: WriteFault) {
        self.lock().plan = Some(fault);
    }

    /// Forgets a planned failure that no write used (a step that wrote nothing).
    pub fn unplan(&self) {
        self.lock().plan = None;
    }

    /// Fills the disk (`true`) or frees it (`false`).
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// True once, after a write that was planned to crash the process in its middle.
    pub fn take_crash(&self) -> bool {
        std::mem::take(&mut self.lock().crashed)
    }

    /// The process died. With `power_loss`, what was written but not synced is gone;
    /// without, it stays in the page cache and the next start reads it.
    pub fn crash(&self, power_loss: bool) {
        let mut disk = self.lock();
        if power_loss {
            let synced = disk.synced;
            disk.records.truncate(synced);
            disk.unsynced_anchor = None;
        }
        disk.plan = None;
    }

    /// The synced record `seq`, exactly as stored.
    pub fn synced(&self, seq: u64) -> Option<Vec<u8>> {
        let mut disk = self.lock();
        if seq > disk.synced as u64 {
            return None;
        }
        disk.records.get(seq).map(<[u8]>::to_vec)
    }

    /// Record `seq` (synced or not) for reading its event: its bytes as stored, except
    /// that a link a packed chunk left out may read as zeroes. A reader of events only
    /// (the end's text output) skips hashing every record of each chunk to restore them.
    pub fn event_bytes(&self, seq: u64) -> Option<Vec<u8>> {
        self.lock()
            .records
            .get_with(seq, Links::LeftOut)
            .map(<[u8]>::to_vec)
    }

    /// How many records exist now, synced or not.
    pub fn record_count(&self) -> u64 {
        self.lock().records.len() as u64
    }

    /// Every record that exists now, synced or not, in order.
    pub fn all_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.records_from(0)
    }

    /// Every record from `from` on that exists now, synced or not, in order: what a step
    /// just wrote, without copying the history before it.
    pub fn records_from(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut disk = self.lock();
        (from.max(1)..=disk.records.len() as u64)
            .filter_map(|seq| disk.records.get(seq).map(|bytes| (seq, bytes.to_vec())))
            .collect()
    }

    /// An fsync makes the whole file durable, earlier unsynced writes included.
    fn sync(disk: &mut Disk) {
        disk.synced = disk.records.len();
        if let Some(anchor) = disk.unsynced_anchor.take() {
            disk.anchor = Some(anchor);
        }
    }
}

impl Storage for FaultyStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        let new_head = head_after(expected, records)?;
        let mut disk = self.lock();
        let found = disk.records.head;
        if found != expected {
            disk.plan = None;
            return Err(StorageError::HeadMoved {
                expected: Box::new(expected),
                found: Box::new(found),
            });
        }
        if disk.full {
            disk.plan = None;
            return Err(io_error(
                "write of the history",
                // `ErrorKind::StorageFull` is newer than the crate's minimum Rust version.
                std::io::ErrorKind::Other,
                "no space left on device (simulated)",
            ));
        }
        let anchor = Anchor {
            acked: expected,
            head: new_head,
            boot: crate::history::anchor::current_boot_id(),
        };
        match disk.plan.take() {
            Some(WriteFault::Fail) => Err(io_error(
                "write of the history",
                std::io::ErrorKind::Other,
                "input/output error (simulated)",
            )),
            Some(WriteFault::FsyncFail) => {
                // The records and the anchor reached the page cache; their fsync failed.
                disk.records.push(records, new_head);
                disk.unsynced_anchor = Some(anchor);
                Err(io_error(
                    "fsync of the history",
                    std::io::ErrorKind::Other,
                    "input/output error (simulated)",
                ))
            }
            Some(WriteFault::Crash { written }) => {
                // Records go to the kernel before the anchor: a death in the middle of
                // the write leaves a prefix of them and the previous anchor.
                let written = &records[..written.min(records.len())];
                let head = head_after(expected, written)?;
                disk.records.push(written, head);
                disk.crashed = true;
                Err(io_error(
                    "write of the history",
                    std::io::ErrorKind::Interrupted,
                    "the process died during the write (simulated)",
                ))
            }
            None => {
                disk.records.push(records, new_head);
                disk.unsynced_anchor = Some(anchor);
                Self::sync(&mut disk);
                Ok(new_head)
            }
        }
    }

    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().records.get(seq).map(<[u8]>::to_vec))
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        let mut next = from.max(1);
        Box::new(std::iter::from_fn(move || {
            let mut disk = self.lock();
            let bytes = disk.records.get(next)?.to_vec();
            let seq = next;
            next += 1;
            Some(Ok((seq, bytes)))
        }))
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let mut disk = self.lock();
        let seq = disk.records.len() as u64;
        Ok(disk.records.get(seq).map(|bytes| (seq, bytes.to_vec())))
    }

    fn save_snapshot(
        &mut self,
        record: &SnapshotRecord,
        state: bytes::Bytes,
    ) -> Result<(), StorageError> {
        let mut disk = self.lock();
        if disk.full {
            return Err(io_error(
                "write of a snapshot",
                // `ErrorKind::StorageFull` is newer than the crate's minimum Rust version.
                std::io::ErrorKind::Other,
                "no space left on device (simulated)",
            ));
        }
        disk.snapshot.save(record, state);
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, bytes::Bytes)>, StorageError> {
        Ok(self.lock().snapshot.load())
    }

    fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        Ok(self.lock().snapshot.record())
    }

    fn anchor(&self) -> Result<Option<Anchor>, StorageError> {
        let disk = self.lock();
        Ok(disk.unsynced_anchor.or(disk.anchor))
    }

    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        let mut disk = self.lock();
        Self::sync(&mut disk);
        disk.anchor = Some(Anchor::settled(head));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> (u64, Vec<u8>) {
        (seq, vec![seq as u8; 4])
    }

    fn head(s: &FaultyStorage) -> Head {
        s.lock().records.head
    }

    #[test]
    fn a_power_loss_drops_only_what_was_not_synced() {
        let mut s = FaultyStorage::new();
        let two = s
            .append(Head::EMPTY, &[rec(1), rec(2)])
            .expect("clean write");
        s.plan(WriteFault::FsyncFail);
        assert!(s.append(two, &[rec(3)]).is_err());
        // Written but not synced: readable until the power goes, anchor included.
        assert_eq!(s.last().expect("last").map(|r| r.0), Some(3));
        assert_eq!(s.anchor().expect("anchor").map(|a| a.head.seq), Some(3));
        s.crash(true);
        assert_eq!(s.last().expect("last").map(|r| r.0), Some(2));
        assert_eq!(s.synced(2), Some(rec(2).1));
        assert_eq!(s.anchor().expect("anchor").map(|a| a.head), Some(two));
    }

    #[test]
    fn a_crash_mid_write_keeps_a_prefix_and_a_later_sync_covers_it() {
        let mut s = FaultyStorage::new();
        s.plan(WriteFault::Crash { written: 1 });
        assert!(s.append(Head::EMPTY, &[rec(1), rec(2)]).is_err());
        assert!(s.take_crash());
        s.crash(false);
        let seqs: Vec<u64> = s.read_from(1).map(|r| r.expect("read").0).collect();
        assert_eq!(seqs, vec![1]);
        assert_eq!(s.anchor().expect("anchor"), None, "no anchor was written");
        let one = head(&s);
        s.append(one, &[rec(2)]).expect("clean write");
        s.crash(true);
        assert_eq!(
            s.synced(1),
            Some(rec(1).1),
            "the fsync of 2 made 1 durable too"
        );
    }

    #[test]
    fn records_from_reads_the_tail_synced_or_not() {
        let mut s = FaultyStorage::new();
        let two = s
            .append(Head::EMPTY, &[rec(1), rec(2)])
            .expect("clean write");
        s.plan(WriteFault::FsyncFail);
        assert!(s.append(two, &[rec(3)]).is_err());
        assert_eq!(s.records_from(2), vec![rec(2), rec(3)]);
        assert_eq!(s.records_from(1), vec![rec(1), rec(2), rec(3)]);
        assert!(s.records_from(4).is_empty());
        s.crash(true);
        assert_eq!(s.records_from(2), vec![rec(2)]);
    }

    use crate::history::record::V2_HEADER_BYTES;

    /// A version-2 record's header, `prev` and `len` bytes of `fill` after it.
    fn v2_record(seq: u64, prev: [u8; 32], len: usize, fill: u8) -> Vec<u8> {
        let mut bytes = vec![BINARY_MARKER, 2];
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&prev);
        bytes.resize(V2_HEADER_BYTES + len, fill);
        bytes
    }

    /// The log against a plain list of records: sizes around and past a chunk, batches,
    /// power losses at every kind of boundary, full chunks still being packed or packed;
    /// records linked to the one before (whose links a packed chunk leaves out), others
    /// linked to something else, and bytes of no record layout at all.
    #[test]
    fn the_record_log_holds_what_a_list_of_records_holds() {
        let mut s = FaultyStorage::new();
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut synced = 0;
        let mut packed_seen = 0;
        let mut zeroed_seen = 0;
        let mut draw = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            draw ^= draw << 13;
            draw ^= draw >> 7;
            draw ^= draw << 17;
            draw
        };
        for round in 0..60 {
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
            for i in 0..1 + next() % 40 {
                let len = match next() % 40 {
                    0 => CHUNK_BYTES + (next() % 1000) as usize,
                    1..=3 => CHUNK_BYTES / 8 + (next() % 1000) as usize,
                    _ => (next() % 300) as usize,
                };
                let seq = (model.len() + i as usize + 1) as u64;
                let fill = (seq as u8) ^ (round as u8);
                let before = batch.last().map(|(_, b)| b).or(model.last());
                let bytes = match (next() % 8, before) {
                    (0, _) => vec![fill; len],
                    (1, _) => v2_record(seq, [fill; 32], len, fill),
                    (_, Some(before)) => {
                        v2_record(seq, crate::history::ChainHash::of(before).0, len, fill)
                    }
                    (_, None) => v2_record(seq, crate::history::GENESIS_HASH.0, len, fill),
                };
                batch.push((seq, bytes));
            }
            if next() % 3 == 0 {
                s.plan(WriteFault::FsyncFail);
                assert!(s.append(head(&s), &batch).is_err());
            } else {
                s.append(head(&s), &batch).expect("clean write");
                synced = model.len() + batch.len();
            }
            model.extend(batch.into_iter().map(|(_, bytes)| bytes));
            if next() % 2 == 0 {
                // Every full chunk packed: reads and the power loss below unpack them.
                let mut disk = s.lock();
                disk.records.collect_packed(true);
                let chunks = &disk.records.chunks;
                let full = &chunks[..chunks.len().saturating_sub(1)];
                assert!(
                    full.iter().all(|c| matches!(c, Chunk::Packed(_))),
                    "round {round}"
                );
                packed_seen += full.len();
            }
            if next() % 4 == 0 {
                s.crash(true);
                model.truncate(synced);
            }
            let stored: Vec<Vec<u8>> = s.all_records().into_iter().map(|r| r.1).collect();
            assert_eq!(stored, model, "round {round}");
            // Read for events, a record differs at most in a link left out, as zeroes;
            // an exact read after it has every byte again.
            for (index, want) in model.iter().enumerate() {
                let got = s.event_bytes(index as u64 + 1).expect("the record exists");
                assert_eq!(got.len(), want.len(), "round {round}, record {index}");
                let link = link_of(&(0..want.len()));
                let differ = (0..want.len()).filter(|&at| got[at] != want[at]);
                for at in differ {
                    zeroed_seen += 1;
                    assert!(
                        link.contains(&at) && got[at] == 0,
                        "round {round}, record {index}: byte {at} differs outside its link"
                    );
                }
            }
            let again: Vec<Vec<u8>> = s.all_records().into_iter().map(|r| r.1).collect();
            assert_eq!(
                again, model,
                "round {round}, read exactly after a read for events"
            );
            let want = match model.last() {
                Some(bytes) => Head {
                    seq: model.len() as u64,
                    hash: crate::history::ChainHash::of(bytes),
                },
                None => Head::EMPTY,
            };
            assert_eq!(head(&s), want, "round {round}");
        }
        assert!(packed_seen > 0, "no chunk was read back packed");
        assert!(zeroed_seen > 0, "no read for events left a link out");
    }

    /// Links are random to a compressor: a packed chunk of linked records takes fewer
    /// bytes than their links alone would, and still reads back as written.
    #[test]
    fn a_packed_chunk_leaves_out_the_links_that_follow_from_the_record_before() {
        let mut s = FaultyStorage::new();
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut prev = crate::history::GENESIS_HASH;
        for seq in 1..=30_000u64 {
            let bytes = v2_record(seq, prev.0, 60, 7);
            prev = crate::history::ChainHash::of(&bytes);
            records.push((seq, bytes));
        }
        s.append(Head::EMPTY, &records).expect("clean write");
        let (packed_records, packed_bytes) = {
            let mut disk = s.lock();
            disk.records.collect_packed(true);
            let log = &disk.records;
            let full = log.chunks.len() - 1;
            let bytes: usize = log.chunks[..full]
                .iter()
                .map(|chunk| match chunk {
                    Chunk::Packed(packed) => packed.bytes.len(),
                    _ => panic!("a full chunk is packed once its thread is done"),
                })
                .sum();
            (log.firsts[full] as usize, bytes)
        };
        assert!(packed_records > 10_000, "{packed_records} records packed");
        assert!(
            packed_bytes < packed_records * 32,
            "{packed_records} records packed into {packed_bytes} bytes"
        );
        assert_eq!(s.all_records(), records);
    }

    #[test]
    fn a_full_disk_refuses_until_freed() {
        let mut s = FaultyStorage::new();
        s.set_full(true);
        let err = s.append(Head::EMPTY, &[rec(1)]).expect_err("full");
        assert!(err.to_string().contains("no space"), "{err}");
        s.set_full(false);
        s.append(Head::EMPTY, &[rec(1)]).expect("room again");
    }

    #[test]
    fn an_append_on_another_head_is_refused() {
        let mut s = FaultyStorage::new();
        s.append(Head::EMPTY, &[rec(1)]).expect("clean write");
        let err = s.append(Head::EMPTY, &[rec(1)]).expect_err("stale head");
        assert!(matches!(err, StorageError::HeadMoved { .. }), "{err}");
    }
}
