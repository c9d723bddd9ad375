//! The content-addressed blob store.
use std::collections::BTreeSet;

use fedrun::blobs::{hash_of, reference_counts, BlobError, BlobHash, BlobStore};

#[test]
fn a_streamed_blob_is_named_by_its_blake3_hash_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    // Bigger than the copy buffer, so the put streams in several pieces.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let hash = store.put(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(hash.to_hex(), blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(store.get(&hash).unwrap(), bytes);
    assert!(dir.path().join(hash.to_hex()).is_file());
    // The same bytes again give the same name and one file.
    assert_eq!(store.put_bytes(&bytes).unwrap(), hash);
    assert_eq!(store.list().unwrap().len(), 1);
    // No temp file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_changed_blob_is_reported_as_corrupt_naming_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let hash = store.put_bytes(b"job package").unwrap();
    std::fs::write(store.path_of(&hash), b"job packagf").unwrap();
    let err = store.get(&hash).unwrap_err();
    assert!(
        matches!(err, BlobError::Corrupt { hash: named, .. } if named == hash),
        "{err}"
    );
    assert!(err.to_string().contains(&hash.to_hex()), "{err}");
}

#[test]
fn a_missing_blob_is_reported_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let hash = hash_of(b"never stored");
    assert!(matches!(store.get(&hash), Err(BlobError::Missing { .. })));
}

#[test]
fn a_blob_read_in_place_is_checked_as_a_copied_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    // Large enough to be hashed on every core; its name is still the one-thread hash.
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let hash = store.put_bytes(&bytes).unwrap();
    assert_eq!(hash.to_hex(), blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(hash_of(&bytes), hash);
    assert_eq!(&store.get_mapped(&hash).unwrap()[..], &bytes[..]);
    // An empty blob has no pages to map and reads as no bytes.
    let empty = store.put_bytes(b"").unwrap();
    assert!(store.get_mapped(&empty).unwrap().is_empty());
    // One byte changed far into the file, then the file cut short: each is corrupt.
    let mut changed = bytes.clone();
    changed[2_500_000] ^= 1;
    for damaged in [&changed[..], &bytes[..1_000_000]] {
        std::fs::write(store.path_of(&hash), damaged).unwrap();
        let err = store.get_mapped(&hash).unwrap_err();
        assert!(
            matches!(err, BlobError::Corrupt { hash: named, actual } if named == hash && actual == hash_of(damaged)),
            "{err}"
        );
    }
    let missing = hash_of(b"never stored");
    assert!(matches!(
        store.get_mapped(&missing),
        Err(BlobError::Missing { .. })
    ));
}

#[test]
fn sweep_removes_exactly_the_unreferenced_blobs_and_leftover_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let package = store
        .put_bytes(b"package shared by a job and its clone")
        .unwrap();
    let archive = store.put_bytes(b"workspace of a deleted job").unwrap();
    let snapshot = store.put_bytes(b"state snapshot").unwrap();
    std::fs::write(dir.path().join(".tmp-interrupted"), b"half a blob").unwrap();

    // A job and its clone both refer to the package; the snapshot is referenced too.
    let references = [package, package, snapshot];
    let counts = reference_counts(references.iter());
    assert_eq!(counts.get(&package), Some(&2));
    assert_eq!(counts.get(&archive), None);
    let referenced: BTreeSet<BlobHash> = counts.keys().copied().collect();

    let report = store.sweep(&referenced).unwrap();
    assert_eq!(report.removed, vec![archive]);
    assert_eq!(report.kept, 2);
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(store.list().unwrap(), referenced);
    assert!(store.get(&package).is_ok());
}

#[test]
fn blob_hash_text_round_trips_and_bad_names_are_refused_and_ignored() {
    let hash = hash_of(b"x");
    assert_eq!(hash.to_hex().parse::<BlobHash>().unwrap(), hash);
    // A file whose name is the hash in capitals is not a blob the store wrote.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    std::fs::write(dir.path().join(hash.to_hex().to_uppercase()), b"x").unwrap();
    assert!(store.list().unwrap().is_empty());
    let err = "not-a-hash".parse::<BlobHash>().unwrap_err();
    assert!(err.to_string().contains("not a BLAKE3 hash"), "{err}");
    // 64 characters that a number parser would take as signed digit pairs are still not hex.
    assert!("+0".repeat(32).parse::<BlobHash>().is_err());
    assert_eq!(
        hash.to_hex().to_uppercase().parse::<BlobHash>().unwrap(),
        hash,
        "capitals parse as the same hash; only the store's file names must be lowercase"
    );
}
