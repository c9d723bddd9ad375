//! [`FaultyStorage`]: the simulator's history store, an in-memory [`Storage`] that can fail
//! the way a disk does.
//!
//! It keeps what a file system keeps: records that were synced, and records that were
//! written but not yet synced (they are read back like any other, as from the page cache,
//! until a crash with power loss drops them). A write can be told in advance to fail
//! ([`WriteFault`]), and the disk can be full. Like `MemoryStorage`, clones share the same
//! bytes, so a simulated server restarts by opening a new history on a clone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::history::storage::{head_after, head_of, RecordIter};
use crate::history::{Anchor, Head, SnapshotRecord, Storage, StorageError};
use crate::sim::faults::WriteFault;

#[derive(Default)]
struct Disk {
    synced: BTreeMap<u64, Vec<u8>>,
    unsynced: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<(SnapshotRecord, Vec<u8>)>,
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
            .field("synced", &disk.synced.len())
            .field("unsynced", &disk.unsynced.len())
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
        // consistent maps.
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
            disk.unsynced.clear();
            disk.unsynced_anchor = None;
        }
        disk.plan = None;
    }

    /// The synced record `seq`, exactly as stored.
    pub fn synced(&self, seq: u64) -> Option<Vec<u8>> {
        self.lock().synced.get(&seq).cloned()
    }

    /// Every record that exists now, synced or not, in order.
    pub fn all_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.records_from(0)
    }

    /// Every record from `from` on that exists now, synced or not, in order: what a step
    /// just wrote, without copying the history before it.
    pub fn records_from(&self, from: u64) -> Vec<(u64, Vec<u8>)> {
        let disk = self.lock();
        let mut found: BTreeMap<u64, Vec<u8>> = disk
            .synced
            .range(from..)
            .map(|(seq, bytes)| (*seq, bytes.clone()))
            .collect();
        for (seq, bytes) in disk.unsynced.range(from..) {
            found.insert(*seq, bytes.clone());
        }
        found.into_iter().collect()
    }

    fn get(disk: &Disk, seq: u64) -> Option<&Vec<u8>> {
        disk.unsynced.get(&seq).or_else(|| disk.synced.get(&seq))
    }

    fn head(disk: &Disk) -> Head {
        let a = disk.synced.iter().next_back();
        let b = disk.unsynced.iter().next_back();
        let last = match (a, b) {
            (Some(x), Some(y)) => Some(if y.0 >= x.0 { y } else { x }),
            (x, y) => x.or(y),
        };
        head_of(last.map(|(seq, bytes)| (*seq, bytes.clone())))
    }

    /// An fsync makes the whole file durable, earlier unsynced writes included.
    fn sync(disk: &mut Disk) {
        let earlier = std::mem::take(&mut disk.unsynced);
        disk.synced.extend(earlier);
        if let Some(anchor) = disk.unsynced_anchor.take() {
            disk.anchor = Some(anchor);
        }
    }
}

impl Storage for FaultyStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        let new_head = head_after(expected, records)?;
        let mut disk = self.lock();
        let found = Self::head(&disk);
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
                for (seq, bytes) in records {
                    disk.unsynced.insert(*seq, bytes.clone());
                }
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
                for (seq, bytes) in records.iter().take(written) {
                    disk.unsynced.insert(*seq, bytes.clone());
                }
                disk.crashed = true;
                Err(io_error(
                    "write of the history",
                    std::io::ErrorKind::Interrupted,
                    "the process died during the write (simulated)",
                ))
            }
            None => {
                for (seq, bytes) in records {
                    disk.unsynced.insert(*seq, bytes.clone());
                }
                disk.unsynced_anchor = Some(anchor);
                Self::sync(&mut disk);
                Ok(new_head)
            }
        }
    }

    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(Self::get(&self.lock(), seq).cloned())
    }

    fn read_from(&self, from: u64) -> RecordIter<'_> {
        let mut next = from;
        let mut done = false;
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let disk = self.lock();
            let a = disk.synced.range(next..).next();
            let b = disk.unsynced.range(next..).next();
            let found = match (a, b) {
                (Some(x), Some(y)) => Some(if y.0 <= x.0 { y } else { x }),
                (x, y) => x.or(y),
            };
            match found {
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
        let disk = self.lock();
        let a = disk.synced.iter().next_back();
        let b = disk.unsynced.iter().next_back();
        let last = match (a, b) {
            (Some(x), Some(y)) => Some(if y.0 >= x.0 { y } else { x }),
            (x, y) => x.or(y),
        };
        Ok(last.map(|(seq, bytes)| (*seq, bytes.clone())))
    }

    fn save_snapshot(&mut self, record: &SnapshotRecord, state: &[u8]) -> Result<(), StorageError> {
        let mut disk = self.lock();
        if disk.full {
            return Err(io_error(
                "write of a snapshot",
                // `ErrorKind::StorageFull` is newer than the crate's minimum Rust version.
                std::io::ErrorKind::Other,
                "no space left on device (simulated)",
            ));
        }
        disk.snapshot = Some((record.clone(), state.to_vec()));
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, Vec<u8>)>, StorageError> {
        Ok(self.lock().snapshot.clone())
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
        FaultyStorage::head(&s.lock())
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
