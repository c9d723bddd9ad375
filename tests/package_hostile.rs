//! Every rejection of a hostile package, each with a hand-made input: the zip is built
//! byte by byte (tests/common) so it can say what no honest tool would.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::{build_zip, end_record, valid_job_entries, write_job, RawEntry};
use fedrun::job::limits::{LimitError, Limits, NameError};
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack, IngestError, UnpackError};
use fedrun::job::zipread::ZipReadError;

fn ingest_entries(entries: &[RawEntry]) -> Result<(), IngestError> {
    ingest_zip_bytes(&build_zip(entries), "job", &Limits::default()).map(|_| ())
}

fn with(extra: RawEntry) -> Vec<RawEntry> {
    let mut entries = valid_job_entries("");
    entries.push(extra);
    entries
}

/// A valid job folder with one app, `<tmp>/job`, for a test to add its hostile file to;
/// the temporary folder is returned so it lives as long as the test needs it.
fn one_app_job() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(
        &job,
        r#"{"deploy_map": {"app": ["server", "s"]}}"#,
        &["app"],
    );
    (tmp, job)
}

#[test]
fn the_valid_baseline_is_accepted() {
    // Guards every test below: each differs from this one by its hostile entry only.
    ingest_entries(&valid_job_entries("")).unwrap();
    ingest_entries(&valid_job_entries("job/")).unwrap();
}

#[test]
fn zip_slip_is_refused() {
    for name in ["../evil.sh", "app/../../evil.sh", "job/../x"] {
        let err = ingest_entries(&with(RawEntry::file(name, b"x"))).unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::Zip(ZipReadError::BadName {
                    rule: NameError::ParentComponent,
                    ..
                })
            ),
            "{name}: {err}"
        );
        assert!(
            err.to_string().starts_with(name),
            "the message names the entry: {err}"
        );
    }
}

#[test]
fn absolute_paths_are_refused() {
    for name in ["/etc/passwd", "C:/Windows/evil"] {
        let err = ingest_entries(&with(RawEntry::file(name, b"x"))).unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::Zip(ZipReadError::BadName {
                    rule: NameError::Absolute,
                    ..
                })
            ),
            "{name}: {err}"
        );
    }
    let err = ingest_entries(&with(RawEntry::file("app\\..\\..\\x", b"x"))).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::Zip(ZipReadError::BadName {
                rule: NameError::Backslash,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_symlink_in_a_zip_is_refused() {
    let link = RawEntry {
        mode: Some(0o120777),
        ..RawEntry::file("app/link", b"/etc/passwd")
    };
    let err = ingest_entries(&with(link)).unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::Symlink { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "app/link: symbolic links are not allowed in a job package"
    );
}

#[test]
fn a_device_or_fifo_in_a_zip_is_refused() {
    let fifo = RawEntry {
        mode: Some(0o010644),
        ..RawEntry::file("app/fifo", b"")
    };
    let err = ingest_entries(&with(fifo)).unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::SpecialFile { .. })),
        "{err}"
    );
}

#[test]
fn a_symlink_in_a_folder_is_refused() {
    let (_tmp, job) = one_app_job();
    std::os::unix::fs::symlink("/etc/passwd", job.join("app/passwd")).unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::Symlink { entry } if entry == "app/passwd"),
        "{err}"
    );
}

#[test]
fn a_symlinked_folder_in_a_folder_is_refused() {
    let (_tmp, job) = one_app_job();
    std::os::unix::fs::symlink("/", job.join("app/root")).unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::Symlink { entry } if entry == "app/root"),
        "{err}"
    );
}

#[test]
fn a_fifo_in_a_folder_is_refused() {
    let (_tmp, job) = one_app_job();
    let fifo = job.join("app/fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::SpecialFile { entry } if entry == "app/fifo"),
        "{err}"
    );
}

#[test]
fn a_bomb_by_ratio_is_refused_before_inflating() {
    // 64 MiB of zeros deflate to about 64 KiB: a ratio near 1000:1.
    let bomb = RawEntry::file("app/zeros.bin", &vec![0u8; 64 << 20]).deflated();
    let err = ingest_entries(&with(bomb)).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::Limit(LimitError::EntryRatioTooHigh { entry, .. })) if entry == "app/zeros.bin"),
        "{err}"
    );
    assert!(err.to_string().contains("compression_ratio_max"), "{err}");
}

#[test]
fn a_bomb_by_size_is_refused_per_entry_and_in_total() {
    let limits = Limits {
        entry_bytes_max: 1000,
        total_bytes_max: 1500,
        ..Limits::default()
    };
    let big = build_zip(&with(RawEntry::file("app/big", &[7u8; 1001])));
    let err = ingest_zip_bytes(&big, "job", &limits).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::Limit(LimitError::EntryTooLarge { entry, size: 1001, .. })) if entry == "app/big"),
        "{err}"
    );
    let mut entries = with(RawEntry::file("app/a", &[7u8; 800]));
    entries.push(RawEntry::file("app/b", &[7u8; 800]));
    let err = ingest_zip_bytes(&build_zip(&entries), "job", &limits).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::Limit(LimitError::TotalTooLarge { entry, .. })) if entry == "app/b"),
        "{err}"
    );
    // The same limits hold for a folder.
    let (_tmp, job) = one_app_job();
    fs::write(job.join("app/big"), [7u8; 1001]).unwrap();
    let err = ingest(&job, &limits).unwrap_err();
    assert!(
        matches!(err, IngestError::Limit(LimitError::EntryTooLarge { .. })),
        "{err}"
    );
}

#[test]
fn an_entry_that_inflates_past_its_declared_size_is_refused() {
    // Declares 10 bytes (so no limit fires) but inflates to 100,000.
    let liar = RawEntry {
        declared_size: Some(10),
        ..RawEntry::file("app/liar", &vec![1u8; 100_000]).deflated()
    };
    let err = ingest_entries(&with(liar)).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::BadData { entry, .. }) if entry == "app/liar"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("or more bytes but the directory says 10"),
        "{err}"
    );
}

#[test]
fn a_duplicate_entry_is_refused() {
    let err =
        ingest_entries(&with(RawEntry::file("app/run.toml", b"command = \"rm\"\n"))).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::Duplicate { entry }) if entry == "app/run.toml"),
        "{err}"
    );
    // A file that is also a folder is a duplicate in disguise.
    let err = ingest_entries(&with(RawEntry::file("app/run.toml/x", b"x"))).unwrap_err();
    assert!(
        matches!(&err, IngestError::PathConflict { entry } if entry == "app/run.toml"),
        "{err}"
    );
}

#[test]
fn a_non_utf8_name_is_refused_in_a_zip_and_in_a_folder() {
    let mut bad = RawEntry::file("x", b"x");
    bad.name = b"app/caf\xe9.txt".to_vec();
    let err = ingest_entries(&with(bad)).unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::NonUtf8Name { .. })),
        "{err}"
    );

    let (_tmp, job) = one_app_job();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(job.join("app").join(name), "x").unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::NonUtf8Name { entry } if entry.starts_with("app/caf")),
        "{err}"
    );
}

#[test]
fn a_truncated_zip_is_refused_at_every_length() {
    let zip = build_zip(&valid_job_entries(""));
    for cut in 0..zip.len() {
        let result = ingest_zip_bytes(&zip[..cut], "job", &Limits::default());
        assert!(
            result.is_err(),
            "accepted a zip cut at {cut} of {}",
            zip.len()
        );
    }
}

#[test]
fn garbage_is_not_a_zip() {
    let err = ingest_zip_bytes(
        b"this is not a zip archive at all, just text",
        "job",
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::NotAZip { .. })),
        "{err}"
    );
    let err = ingest_zip_bytes(b"", "job", &Limits::default()).unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::NotAZip { .. })),
        "{err}"
    );
}

#[test]
fn too_many_entries_are_refused_in_a_zip_and_in_a_folder() {
    let limits = Limits {
        entry_count_max: 3,
        ..Limits::default()
    };
    let mut entries = valid_job_entries("");
    entries.push(RawEntry::file("app/a", b"a"));
    entries.push(RawEntry::file("app/b", b"b"));
    let err = ingest_zip_bytes(&build_zip(&entries), "job", &limits).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::Zip(ZipReadError::Limit(LimitError::TooManyEntries {
                count: 4,
                limit: 3
            }))
        ),
        "{err}"
    );
    let (_tmp, job) = one_app_job();
    fs::write(job.join("app/a"), "a").unwrap();
    let err = ingest(&job, &limits).unwrap_err();
    assert!(
        matches!(err, IngestError::Limit(LimitError::TooManyEntries { .. })),
        "{err}"
    );
}

#[test]
fn a_package_file_over_the_size_limit_is_refused_unread() {
    let limits = Limits {
        package_bytes_max: 100,
        ..Limits::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("job.zip");
    fs::write(&path, build_zip(&valid_job_entries(""))).unwrap();
    let err = ingest(&path, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::Limit(LimitError::PackageTooLarge { limit: 100, .. })
        ),
        "{err}"
    );
}

#[test]
fn overlapping_entries_are_refused() {
    // Entry "app/outer" stores, as its data, a complete local header and data of
    // "app/inner"; the directory lists both, so one stream would count twice.
    let inner = RawEntry::file("app/inner", b"shared bytes");
    let outer = RawEntry::file("app/outer", &inner.local());
    let mut zip = Vec::new();
    let mut central = Vec::new();
    for entry in valid_job_entries("") {
        central.extend_from_slice(&entry.central(zip.len() as u32));
        zip.extend_from_slice(&entry.local());
    }
    let outer_offset = zip.len() as u32;
    central.extend_from_slice(&outer.central(outer_offset));
    central.extend_from_slice(&inner.central(outer_offset + 30 + outer.name.len() as u32));
    zip.extend_from_slice(&outer.local());
    let directory_offset = zip.len() as u32;
    zip.extend_from_slice(&central);
    zip.extend_from_slice(&end_record(4, central.len() as u32, directory_offset));
    let err = ingest_zip_bytes(&zip, "job", &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::Zip(ZipReadError::BadData { entry, reason }) if entry == "app/inner" && reason.contains("overlaps")),
        "{err}"
    );
}

#[test]
fn encrypted_entries_are_refused() {
    let secret = RawEntry {
        flags: 1,
        ..RawEntry::file("app/secret", b"x")
    };
    let err = ingest_entries(&with(secret)).unwrap_err();
    assert!(
        matches!(err, IngestError::Zip(ZipReadError::UnsupportedEntry { .. })),
        "{err}"
    );
}

#[test]
fn a_zip_of_two_folders_is_not_a_job() {
    let mut entries = valid_job_entries("a/");
    entries.push(RawEntry::file("b/x", b"x"));
    let err = ingest_entries(&entries).unwrap_err();
    assert!(matches!(err, IngestError::NotOneFolder), "{err}");
}

#[test]
fn unpacking_a_hostile_zip_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let zip = build_zip(&with(RawEntry::file("../escaped", b"x")));
    let err = unpack(&zip, None, &dest, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::Zip(ZipReadError::BadName { .. })),
        "{err}"
    );
    assert!(!tmp.path().join("escaped").exists());
    assert!(
        !dest.join("meta.json").exists(),
        "nothing is written before every entry is checked"
    );

    let link = RawEntry {
        mode: Some(0o120777),
        ..RawEntry::file("app/link", b"/etc")
    };
    let err = unpack(&build_zip(&with(link)), None, &dest, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::Zip(ZipReadError::Symlink { .. })),
        "{err}"
    );
    assert!(!Path::new(&dest.join("app")).exists());
}
