//! Properties of signing: sign-then-verify always passes; any change to a signed file's
//! bytes, and any rename of a file or directory, makes verification fail.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedrun::trust::{sign_job_folder, verify_job_folder, RootCa, Signer};
use proptest::prelude::*;

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

fn root() -> RootCa {
    RootCa::load(&trust_dir().join("ca.pem")).unwrap()
}

fn signer() -> Signer {
    Signer::load(
        &trust_dir().join("admin.pem"),
        &trust_dir().join("leaf.key"),
    )
    .unwrap()
}

/// A random job tree: up to 8 files at depth 1 to 3, names from a small alphabet so
/// directories are shared, contents of 0 to 64 bytes.
fn tree() -> impl Strategy<Value = Vec<(Vec<String>, Vec<u8>)>> {
    let name = "[a-c]{1,2}(\\.py)?";
    prop::collection::vec(
        (
            prop::collection::vec(name, 1..=3),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        1..8,
    )
}

/// Writes the tree, skipping paths that would clash with an earlier file or directory.
/// Returns the files and directories (relative paths) it made.
fn write_tree(job: &Path, entries: &[(Vec<String>, Vec<u8>)]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fs::create_dir_all(job).unwrap();
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (parts, bytes) in entries {
        let path: PathBuf = parts.iter().collect();
        let ancestors: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        if files.contains(&path)
            || dirs.contains(&path)
            || ancestors.iter().any(|a| files.contains(a))
        {
            continue;
        }
        dirs.extend(ancestors);
        fs::create_dir_all(job.join(&path).parent().unwrap()).unwrap();
        fs::write(job.join(&path), bytes).unwrap();
        files.insert(path);
    }
    (files.into_iter().collect(), dirs.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sign_then_verify_passes(entries in tree()) {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        write_tree(&job, &entries);
        sign_job_folder(&job, &signer()).unwrap();
        let id = verify_job_folder(&job, &root(), at()).unwrap();
        prop_assert_eq!(id.name, "admin@example.org");
    }

    #[test]
    fn any_byte_change_fails(entries in tree(), pick in any::<prop::sample::Index>(), offset in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let (files, _) = write_tree(&job, &entries);
        sign_job_folder(&job, &signer()).unwrap();
        let target = job.join(pick.get(&files));
        let mut bytes = fs::read(&target).unwrap();
        if bytes.is_empty() {
            bytes.push(flip);
        } else {
            let i = offset.index(bytes.len());
            bytes[i] ^= flip;
        }
        fs::write(&target, bytes).unwrap();
        prop_assert!(verify_job_folder(&job, &root(), at()).is_err());
    }

    #[test]
    fn any_rename_fails(entries in tree(), pick in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let (files, dirs) = write_tree(&job, &entries);
        sign_job_folder(&job, &signer()).unwrap();
        let all: Vec<&PathBuf> = files.iter().chain(dirs.iter()).collect();
        let from = job.join(pick.get(&all));
        // The alphabet has no 'z', so the new name never exists yet.
        let mut new_name = from.file_name().unwrap().to_os_string();
        new_name.push("z");
        fs::rename(&from, from.with_file_name(new_name)).unwrap();
        prop_assert!(verify_job_folder(&job, &root(), at()).is_err());
    }
}
