//! The data folder is private: every folder the history creates is 0700 and every file
//! 0600, whatever the umask. The history is built in a child process (the test binary
//! run again) whose umask is 000, the most permissive there is; the parent then checks
//! the mode of everything on disk.
mod history_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use fedrun::history::{private, History};
use history_support::{steps, Step, Steps};

const CHILD_ENV: &str = "FEDRUN_PRIVATE_CHILD_DIR";
const TEST_NAME: &str = "everything_the_history_creates_is_private_under_umask_000";

/// The child: umask 000, an existing data folder open to all, then a history with
/// records, a snapshot and a clean close, a reopen and a read-only open.
fn child(dir: &Path) {
    // SAFETY: umask only sets the process's file mode mask; this child process runs
    // just this one test.
    unsafe { libc::umask(0) };
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut history = History::<Step>::open(&data).unwrap();
    history.append_batch(&steps(1, 20)).unwrap();
    let state = history.replay(Steps::default()).unwrap();
    history.take_snapshot(&state).unwrap();
    history.append_batch(&steps(21, 5)).unwrap();
    history.close().unwrap();
    let history = History::<Step>::open(&data).unwrap();
    drop(history);
    History::<Step>::open_read_only(&data).unwrap();
    // The helpers others may reuse.
    private::create_dir_all(&dir.join("helper").join("nested")).unwrap();
    private::create_file(&dir.join("helper").join("nested").join("file")).unwrap();
}

fn modes(dir: &Path, found: &mut Vec<(String, bool, u32)>) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    found.push((
        dir.display().to_string(),
        meta.is_dir(),
        meta.permissions().mode() & 0o7777,
    ));
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            modes(&entry.unwrap().path(), found);
        }
    }
}

#[test]
fn everything_the_history_creates_is_private_under_umask_000() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let data = dir.path().join("data");
    for name in [
        "history",
        "blobs",
        "anchor",
        "lock",
        "history/db",
        "history/conf",
    ] {
        assert!(data.join(name).exists(), "{name} exists");
    }
    assert!(
        std::fs::read_dir(data.join("blobs")).unwrap().count() >= 1,
        "the snapshot's state is stored"
    );
    let mut found = Vec::new();
    modes(&data, &mut found);
    modes(&dir.path().join("helper"), &mut found);
    let wrong: Vec<String> = found
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(path, _, mode)| format!("{path}: {mode:o}"))
        .collect();
    assert!(wrong.is_empty(), "not private: {wrong:#?}");
}
