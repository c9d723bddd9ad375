//! Offline commands (`fedrun list`, `show`, `history`, `audit verify`) never change the
//! data folder, work while other readers run, and a server waits for readers before it
//! refuses.
mod history_support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use fedrun::blobs::BlobStore;
use fedrun::history::events::EventHistory;
use fedrun::history::{OpenError, SledOptions};
use history_support::lifecycle::{job, sample_history};

fn fedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .args(args)
        .output()
        .expect("the fedrun binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A data folder as a stopped server leaves it: `sample_history(3)`, a snapshot after
/// record 5, the packages, closed.
fn data_folder(dir: &Path) {
    let events = sample_history(3);
    let mut history = EventHistory::open(dir).unwrap();
    history.append_batch(&events[..5]).unwrap();
    let state = history.replay(fedrun::lifecycle::State::new()).unwrap();
    history.take_snapshot(&state).unwrap();
    history.append_batch(&events[5..]).unwrap();
    history.close().unwrap();
    let blobs = BlobStore::open(dir.join("blobs")).unwrap();
    for n in 1..=3 {
        blobs.put_bytes(format!("package {n}").as_bytes()).unwrap();
    }
}

/// Every name under `dir` with its kind, mode and the BLAKE3 hash of its bytes.
fn fingerprint(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                found.insert(name, format!("dir {mode:o}"));
                walk(root, &path, found);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let hash = blake3::hash(&bytes);
                found.insert(name, format!("file {mode:o} {} {hash}", bytes.len()));
            }
        }
    }
    walk(dir, dir, &mut found);
    found
}

/// Runs every offline command on `dir` and checks that each succeeds.
fn run_offline_commands(dir: &Path) {
    let d = dir.to_str().unwrap();
    let job_1 = job(1).to_string();
    for args in [
        vec!["list", "--data-dir", d],
        vec!["list", "--data-dir", d, "--all", "--json"],
        vec!["show", "--data-dir", d, &job_1],
        vec!["history", "--data-dir", d],
        vec!["history", "--data-dir", d, "--json"],
        vec!["audit", "verify", "--data-dir", d],
        vec!["audit", "verify", "--data-dir", d, "--json"],
    ] {
        let out = fedrun(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn offline_commands_change_no_byte_and_no_name_in_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let before = fingerprint(dir.path());
    run_offline_commands(dir.path());
    let after = fingerprint(dir.path());
    assert_eq!(
        before, after,
        "the offline commands changed the data folder"
    );
}

#[test]
fn offline_commands_work_on_a_read_only_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let before = fingerprint(dir.path());
    let status = Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    // As root, file modes do not forbid writing; then only the byte comparison proves
    // anything, and it still runs.
    let writes_forbidden = std::fs::write(dir.path().join("probe"), b"x").is_err();
    run_offline_commands(dir.path());
    let _ = std::fs::remove_file(dir.path().join("probe"));
    let status = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut after = fingerprint(dir.path());
    let mut before = before;
    // Only the write bits changed, by the test's own chmod; compare without modes.
    for map in [&mut before, &mut after] {
        for value in map.values_mut() {
            let parts: Vec<&str> = value.split(' ').collect();
            *value = format!("{} {}", parts[0], parts[2..].join(" "));
        }
    }
    assert_eq!(
        before, after,
        "read-only or not (forbidden: {writes_forbidden})"
    );
}

#[test]
fn sixty_concurrent_readers_never_take_each_other_for_a_server() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let readers = 60;
    let barrier = Arc::new(Barrier::new(readers));
    let handles: Vec<_> = (0..readers)
        .map(|n| {
            let barrier = barrier.clone();
            let d = dir.path().to_str().unwrap().to_string();
            std::thread::spawn(move || {
                barrier.wait();
                let args: Vec<&str> = match n % 3 {
                    0 => vec!["history", "--data-dir", &d],
                    1 => vec!["list", "--data-dir", &d],
                    _ => vec!["audit", "verify", "--data-dir", &d],
                };
                fedrun(&args)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for handle in handles {
        let out = handle.join().unwrap();
        if !out.status.success() {
            failures.push(text(&out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {readers} failed: {failures:#?}",
        failures.len()
    );
}

/// Holds the data folder's lock shared, as an offline reader does.
fn hold_reader_lock(dir: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(dir.join("lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    assert_eq!(taken, 0, "the reader's lock is free");
    file
}

#[test]
fn a_server_waits_for_readers_and_names_them_when_they_stay() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let reader = hold_reader_lock(dir.path());
    let short = SledOptions {
        lock_wait: Duration::from_millis(50),
        ..SledOptions::default()
    };
    let err = EventHistory::open_with(dir.path(), short).unwrap_err();
    assert!(matches!(err, OpenError::ReadersHoldLock { .. }), "{err}");
    assert!(
        !err.to_string().contains("server is running"),
        "a reader is not a server: {err}"
    );

    let path = dir.path().to_path_buf();
    let server = std::thread::spawn(move || {
        let patient = SledOptions {
            lock_wait: Duration::from_secs(60),
            ..SledOptions::default()
        };
        EventHistory::open_with(&path, patient).map(|history| history.head().seq)
    });
    drop(reader);
    let head = server
        .join()
        .unwrap()
        .expect("the server opens once the reader is done");
    assert_eq!(head, sample_history(3).len() as u64);
}

#[test]
fn readers_are_told_when_a_server_holds_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    data_folder(dir.path());
    let _server = EventHistory::open(dir.path()).unwrap();
    let err = EventHistory::open_read_only(dir.path()).unwrap_err();
    assert!(matches!(err, OpenError::ServerRunning { .. }), "{err}");
    assert!(
        err.to_string().contains("a fedrun server is running on"),
        "{err}"
    );
}
