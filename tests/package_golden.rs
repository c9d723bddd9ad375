//! The canonical form is a format: the same job must give the same bytes on every
//! version of fedrun. These hashes were taken when the format was defined; a change to
//! them is a format change, never a refactor.

use std::fs;
use std::path::Path;

use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack};

fn corpus(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/zip_ingest")
        .join(name)
}

#[test]
fn the_canonical_bytes_of_known_jobs_never_change() {
    let cases = [
        (
            "valid-top-folder.zip",
            "2624ee10593724c28d759f7f461b46abd2a36e69675077270398f0d31493b14b",
        ),
        (
            "valid-stored.zip",
            "40a657c9cbcc93017efd3bedc53f6fd3e05489c8c032ee9b7689237b4e4780f1",
        ),
    ];
    for (file, hash) in cases {
        let package = ingest(&corpus(file), &Limits::default()).unwrap();
        assert_eq!(package.hash.to_hex().as_str(), hash, "{file}");
    }
    // The committed canonical zip is exactly what ingest writes today.
    let canonical = fs::read(corpus("canonical.zip")).unwrap();
    let package = ingest(&corpus("valid-top-folder.zip"), &Limits::default()).unwrap();
    assert_eq!(package.zip, canonical);
}

#[test]
fn a_large_job_filled_on_several_threads_round_trips() {
    // 24 MiB of files with distinct contents: over the size where the canonical zip is
    // filled in parallel, so a file written into another's slice would show.
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    fs::create_dir_all(job.join("app/data")).unwrap();
    fs::write(
        job.join("meta.json"),
        r#"{"deploy_map": {"app": ["server", "s1"]}}"#,
    )
    .unwrap();
    fs::write(job.join("app/run.toml"), "command = \"true\"\n").unwrap();
    for index in 0..48u32 {
        let data: Vec<u8> = (0..512 * 1024u32)
            .map(|i| (i.wrapping_mul(index + 7) >> 3) as u8)
            .collect();
        fs::write(job.join(format!("app/data/{index:02}.bin")), data).unwrap();
    }
    let package = ingest(&job, &Limits::default()).unwrap();
    assert_eq!(package.hash, blake3::hash(&package.zip));
    // Reading it back checks every entry's CRC-32 against its bytes.
    let again = ingest_zip_bytes(&package.zip, "job", &Limits::default()).unwrap();
    assert_eq!(again.zip, package.zip);
    let out = tmp.path().join("out");
    unpack(&package.zip, None, &out, &Limits::default()).unwrap();
    for index in 0..48u32 {
        let name = format!("app/data/{index:02}.bin");
        assert!(
            fs::read(out.join(&name)).unwrap() == fs::read(job.join(&name)).unwrap(),
            "{name}"
        );
    }
}
