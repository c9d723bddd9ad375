//! Ingest and unpack of well-formed job packages: the canonical form, its stability, and
//! the round trip through `unpack`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack, IngestError, UnpackError};
use fedrun::job::runfile::read_run_file;

/// Writes a two-app job (server app and one site app) into `dir`.
fn write_job(dir: &Path) {
    fs::create_dir_all(dir.join("server_app/config")).unwrap();
    fs::create_dir_all(dir.join("site_app")).unwrap();
    fs::write(
        dir.join("meta.json"),
        r#"{"deploy_map": {"server_app": ["server"], "site_app": {"sites": ["site-1", "site-2"]}},
            "min_clients": 2, "resource_spec": {"@default": {"num_of_gpus": 1}}}"#,
    )
    .unwrap();
    fs::write(
        dir.join("server_app/run.toml"),
        "command = \"sh\"\nargs = [\"serve.sh\"]\n",
    )
    .unwrap();
    fs::write(dir.join("server_app/serve.sh"), "echo serving\n").unwrap();
    fs::write(dir.join("server_app/config/fed.json"), "{}").unwrap();
    fs::write(
        dir.join("site_app/run.toml"),
        "command = \"./train.sh\"\n[env]\nLEARNING_RATE = \"0.01\"\n",
    )
    .unwrap();
    fs::write(dir.join("site_app/train.sh"), "#!/bin/sh\necho training\n").unwrap();
    fs::set_permissions(
        dir.join("site_app/train.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(dir.join(".__nvfl_sig.json"), "{}").unwrap();
}

#[test]
fn a_folder_ingests_to_a_validated_canonical_package() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("hello-job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    assert_eq!(package.meta.name, "hello-job");
    assert_eq!(package.meta.min_clients, 2);
    assert_eq!(package.meta.listed_sites(), ["site-1", "site-2"]);
    assert_eq!(
        package.apps.keys().collect::<Vec<_>>(),
        ["server_app", "site_app"]
    );
    assert_eq!(package.apps["site_app"].env["LEARNING_RATE"], "0.01");
    assert!(package.signed);
    assert_eq!(package.hash, blake3::hash(&package.zip));
    // meta.json, the signature file, 2 app folders + config folder, 5 app files.
    assert_eq!(package.entry_count, 10);
}

#[test]
fn the_same_folder_gives_the_same_bytes_whatever_the_file_times() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let first = ingest(&job, &Limits::default()).unwrap();
    // Rewriting a file changes its modification time, never the canonical bytes.
    fs::write(job.join("server_app/serve.sh"), "echo serving\n").unwrap();
    let file = fs::File::options()
        .write(true)
        .open(job.join("meta.json"))
        .unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let second = ingest(&job, &Limits::default()).unwrap();
    assert_eq!(first.zip, second.zip);
    // And a different folder name only changes the defaulted name, not the bytes.
    let other = tmp.path().join("other-name");
    fs::rename(&job, &other).unwrap();
    let third = ingest(&other, &Limits::default()).unwrap();
    assert_eq!(third.hash, first.hash);
    assert_eq!(third.meta.name, "other-name");
}

#[test]
fn a_canonical_zip_ingests_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    let again = ingest_zip_bytes(&package.zip, "job", &Limits::default()).unwrap();
    assert_eq!(again.zip, package.zip);
    assert_eq!(again.meta, package.meta);
    let path = tmp.path().join("job.zip");
    fs::write(&path, &package.zip).unwrap();
    assert_eq!(
        ingest(&path, &Limits::default()).unwrap().hash,
        package.hash
    );
}

#[test]
fn unpacking_the_whole_job_restores_every_file_and_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    let dest = tmp.path().join("out");
    let done = unpack(&package.zip, None, &dest, &Limits::default()).unwrap();
    assert_eq!((done.files, done.folders), (7, 3));
    for file in [
        "meta.json",
        ".__nvfl_sig.json",
        "server_app/config/fed.json",
        "site_app/train.sh",
    ] {
        assert_eq!(
            fs::read(dest.join(file)).unwrap(),
            fs::read(job.join(file)).unwrap(),
            "{file}"
        );
    }
    let mode = fs::metadata(dest.join("site_app/train.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let mode = fs::metadata(dest.join("meta.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // The unpacked folder ingests to the same package.
    assert_eq!(
        ingest(&dest, &Limits::default()).unwrap().hash,
        package.hash
    );
}

#[test]
fn unpacking_one_app_writes_only_that_app() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    let dest = tmp.path().join("site");
    unpack(&package.zip, Some("site_app"), &dest, &Limits::default()).unwrap();
    let mut top: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["site_app"]);
    let run = read_run_file(&dest.join("site_app")).unwrap();
    assert_eq!(run, package.apps["site_app"]);
    assert!(run.program(&dest.join("site_app")).is_file());

    let err = unpack(&package.zip, Some("nope"), &dest, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::AppMissing { .. }), "{err}");
    let err = unpack(&package.zip, Some("../x"), &dest, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::BadAppName { .. }), "{err}");
}

#[test]
fn unpack_never_replaces_or_follows_what_is_already_there() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    let dest = tmp.path().join("out");
    fs::create_dir_all(dest.join("site_app")).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, dest.join("site_app/train.sh")).unwrap();
    let err = unpack(&package.zip, Some("site_app"), &dest, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");

    // A symlinked folder in the destination is not entered either.
    let dest2 = tmp.path().join("out2");
    fs::create_dir_all(&dest2).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dest2.join("site_app")).unwrap();
    let err = unpack(&package.zip, Some("site_app"), &dest2, &Limits::default()).unwrap_err();
    assert!(matches!(err, UnpackError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_missing_path_is_an_io_error_naming_it() {
    let err = ingest(Path::new("/nonexistent/job"), &Limits::default()).unwrap_err();
    assert!(matches!(err, IngestError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/job"), "{err}");
}

#[test]
fn unpack_refuses_a_destination_that_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let package = ingest(&job, &Limits::default()).unwrap();
    let dest = tmp.path().join("a-file");
    fs::write(&dest, "x").unwrap();
    let err = unpack(&package.zip, None, &dest, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, UnpackError::DestinationNotFolder { .. }),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&dest).unwrap(), "x");
}
