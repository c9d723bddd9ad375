//! Blob pins (SPEC section 3, Changed): a blob being stored stays on disk until the
//! event that refers to it is durable, whatever frees and sweeps run meanwhile.
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fedrun::blobs::{hash_of, BlobHash, BlobStore, Freed};

/// True when the blob's file is on disk and its bytes hash to its name: what physically
/// exists, not what the store believes.
fn on_disk(store: &BlobStore, hash: &BlobHash) -> bool {
    std::fs::read(store.path_of(hash)).is_ok_and(|bytes| hash_of(&bytes) == *hash)
}

/// Waits (bounded) until `counter` has moved past `seen` by at least `steps`.
fn wait_for_progress(counter: &AtomicU64, seen: u64, steps: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < seen + steps {
        assert!(
            Instant::now() < deadline,
            "the freeing thread made no progress"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_pinned_put_survives_frees_and_sweeps_of_the_same_bytes_running_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let bytes = b"a package that a deleted job and a new submit share".to_vec();
    let hash = hash_of(&bytes);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    // Frees and sweeps the blob as fast as it can: a delete of the old job racing the
    // new submit of the same bytes.
    let freer = {
        let (store, stop, rounds) = (store.clone(), stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                store.free(&hash).unwrap();
                store.sweep(&BTreeSet::new()).unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut written_again = 0;
    for _ in 0..100 {
        let pin = store.put_bytes_pinned(&bytes).unwrap();
        assert_eq!(pin.hash(), hash);
        // Let at least two whole free-and-sweep rounds run while the blob is pinned.
        let seen = rounds.load(Ordering::SeqCst);
        wait_for_progress(&rounds, seen, 2);
        assert!(
            on_disk(&store, &hash),
            "a pinned blob was removed after its put returned"
        );
        drop(pin);
        // Unpinned, the next full round frees it: the pin, not luck, kept it.
        let seen = rounds.load(Ordering::SeqCst);
        wait_for_progress(&rounds, seen, 2);
        assert!(
            !on_disk(&store, &hash),
            "an unpinned, unreferenced blob was kept"
        );
        written_again += 1;
    }
    stop.store(true, Ordering::SeqCst);
    freer.join().unwrap();
    assert_eq!(written_again, 100);
}

#[test]
fn free_says_whether_it_removed_kept_a_pinned_blob_or_found_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let first = store.put_bytes_pinned(b"x").unwrap();
    let second = store.pin(&first.hash());
    let hash = first.hash();
    drop(first);
    assert!(store.is_pinned(&hash), "pins nest");
    assert_eq!(store.free(&hash).unwrap(), Freed::Pinned);
    assert!(on_disk(&store, &hash));
    drop(second);
    assert!(!store.is_pinned(&hash));
    assert_eq!(store.free(&hash).unwrap(), Freed::Removed);
    assert_eq!(store.free(&hash).unwrap(), Freed::Absent);
    assert!(!on_disk(&store, &hash));
}

#[test]
fn the_start_up_sweep_removes_the_unreferenced_and_keeps_the_referenced_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let referenced = store.put_bytes(b"package of a live job").unwrap();
    let orphan = store.put_bytes(b"archive no event refers to").unwrap();
    let pinned = store
        .put_bytes_pinned(b"package of a submit in progress")
        .unwrap();
    std::fs::write(dir.path().join(".tmp-left-by-a-crash"), b"half").unwrap();

    let set: BTreeSet<BlobHash> = [referenced].into_iter().collect();
    let report = store.sweep_unreferenced(&set).unwrap();
    assert_eq!(report.removed, vec![orphan]);
    assert_eq!(report.pinned, vec![pinned.hash()]);
    assert_eq!(report.kept, 1);
    assert_eq!(report.temp_files_removed, 1);
    assert!(on_disk(&store, &referenced) && on_disk(&store, &pinned.hash()));
    assert!(!on_disk(&store, &orphan));

    // The submit was refused: once unpinned, the next sweep removes its package.
    let hash = pinned.hash();
    drop(pinned);
    let report = store.sweep_unreferenced(&set).unwrap();
    assert_eq!(report.removed, vec![hash]);
    assert_eq!(store.list().unwrap(), set);
}

/// A reader that hands out its bytes only after the test says so, so a put can be held
/// in the middle of writing its temp file.
struct HeldReader {
    started: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
    bytes: &'static [u8],
}

impl Read for HeldReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(started) = self.started.take() {
            started.send(()).unwrap();
            self.release.recv().unwrap();
        }
        let n = self.bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn a_sweep_never_removes_the_temp_file_of_a_put_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let putter = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut reader = HeldReader {
                started: Some(started_tx),
                release: release_rx,
                bytes: b"a large package still arriving",
            };
            store.put_pinned(&mut reader).map(|pin| pin.hash())
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the put started");
    let temps = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count()
    };
    assert_eq!(temps(), 1, "the put in progress has its temp file");
    let report = store.sweep_unreferenced(&BTreeSet::new()).unwrap();
    assert_eq!(report.temp_files_removed, 0);
    assert_eq!(temps(), 1);
    release_tx.send(()).unwrap();
    let hash = putter.join().unwrap().expect("the put completes");
    assert!(on_disk(&store, &hash));
    assert_eq!(temps(), 0, "no temp file is left behind");
}
