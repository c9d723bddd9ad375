//! The blob store is private whatever the umask (SPEC section 3, Changed). This file holds
//! one test only: the umask belongs to the whole process, and no other test may run
//! while it is cleared.
use std::os::unix::fs::PermissionsExt;

use fedrun::blobs::BlobStore;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn blob_folders_are_0700_and_blobs_0600_even_under_umask_000() {
    // SAFETY: umask only swaps the process's file creation mask; no memory is involved.
    let old = unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("data/blobs");
    let store = BlobStore::open(&fresh).unwrap();
    let hash = store.put_bytes(b"job package").unwrap();
    let pinned = store.put_bytes_pinned(b"another").unwrap();
    // A folder an older version created open to everyone is made private at open.
    let old_folder = dir.path().join("old-blobs");
    std::fs::create_dir(&old_folder).unwrap();
    std::fs::set_permissions(&old_folder, std::fs::Permissions::from_mode(0o777)).unwrap();
    BlobStore::open(&old_folder).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old) };

    assert_eq!(mode(&fresh), 0o700, "new blob folder");
    assert_eq!(
        mode(&dir.path().join("data")),
        0o700,
        "folders created above it"
    );
    assert_eq!(mode(&store.path_of(&hash)), 0o600, "blob file");
    assert_eq!(
        mode(&store.path_of(&pinned.hash())),
        0o600,
        "pinned blob file"
    );
    assert_eq!(mode(&old_folder), 0o700, "existing folder made private");
}
