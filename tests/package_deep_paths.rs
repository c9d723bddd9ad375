//! Entry names are bounded before any tree is built: a small zip of very deep paths once
//! took memory quadratic in the depth (a 0.5 MB zip used 4.2 GB and 20 s before it was
//! refused).
mod common;

use std::time::{Duration, Instant};

use common::{build_zip, valid_job_entries, RawEntry};
use fedrun::job::limits::{Limits, NameError, ENTRY_DEPTH_MAX, ENTRY_NAME_BYTES_MAX};
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack, IngestError};
use fedrun::job::zipread::ZipReadError;

/// A name of `depth` components (`a/a/.../a/f`) under its own top folder `d{index}/`.
fn deep_name(index: usize, depth: usize) -> String {
    format!("d{index}/{}f", "a/".repeat(depth - 2))
}

/// The hostile zip: a valid job plus four files 32,700 folders deep (about 0.5 MB).
fn deep_zip() -> Vec<u8> {
    let mut entries = valid_job_entries("");
    for index in 0..4 {
        entries.push(RawEntry::file(&deep_name(index, 32_700), b"x"));
    }
    build_zip(&entries)
}

#[test]
fn a_zip_of_32700_deep_paths_is_refused_quickly_for_its_name() {
    let zip = deep_zip();
    assert!(
        zip.len() < 600_000,
        "the hostile zip is small: {}",
        zip.len()
    );
    let started = Instant::now();
    let err = ingest_zip_bytes(&zip, "deep", &Limits::default()).unwrap_err();
    let took = started.elapsed();
    let IngestError::Zip(ZipReadError::BadName { entry, rule }) = &err else {
        panic!("expected a name refusal, got {err}")
    };
    assert_eq!(
        *rule,
        NameError::TooLong {
            bytes: deep_name(0, 32_700).len(),
            limit: ENTRY_NAME_BYTES_MAX
        }
    );
    // The message names the entry without printing 65 KB of it.
    assert!(entry.starts_with("d0/a/a/"), "{entry}");
    assert!(err.to_string().len() < 400, "{err}");
    assert!(err.to_string().contains("bytes long"), "{err}");
    // Refused from the directory, before inflating or building anything: far under the
    // 20 s the old code took (a generous bound for a slow, shared machine).
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // unpack applies the same rule.
    let dest = tempfile::tempdir().unwrap();
    assert!(unpack(&zip, None, dest.path(), &Limits::default()).is_err());
}

#[test]
fn short_but_deep_names_are_refused_for_their_depth() {
    let depth = ENTRY_DEPTH_MAX + 1;
    let mut entries = valid_job_entries("");
    entries.push(RawEntry::file(&deep_name(0, depth), b"x"));
    let err = ingest_zip_bytes(&build_zip(&entries), "deep", &Limits::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            IngestError::Zip(ZipReadError::BadName {
                rule: NameError::TooDeep { depth: d, limit: ENTRY_DEPTH_MAX },
                ..
            }) if *d == depth
        ),
        "{err}"
    );
    // One level less is fine.
    let mut entries = valid_job_entries("");
    entries.push(RawEntry::file(&deep_name(0, ENTRY_DEPTH_MAX), b"x"));
    ingest_zip_bytes(&build_zip(&entries), "deep", &Limits::default()).expect("at the limit");
}

#[test]
fn folders_implied_by_names_count_against_the_entry_limit_as_they_are_made() {
    // Three files name 3 x 40 folders between them: far over a limit of 50 entries,
    // though the zip itself holds only five.
    let mut entries = valid_job_entries("");
    for index in 0..3 {
        entries.push(RawEntry::file(&deep_name(index, 41), b"x"));
    }
    let limits = Limits {
        entry_count_max: 50,
        ..Limits::default()
    };
    let err = ingest_zip_bytes(&build_zip(&entries), "deep", &limits).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::Limit(fedrun::job::limits::LimitError::TooManyEntries { limit: 50, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_deep_job_folder_is_refused_for_its_depth() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    common::write_job(&job, r#"{"deploy_map": {"app": ["server"]}}"#, &["app"]);
    let mut deep = job.join("app");
    for _ in 0..ENTRY_DEPTH_MAX {
        deep.push("a");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            IngestError::BadName {
                rule: NameError::TooDeep { .. },
                ..
            }
        ),
        "{err}"
    );
}
