//! `fedrun verify` takes a job zip as well as a folder, and file arguments are read with
//! a size limit (`/dev/zero` as a certificate once used 8 GB).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use fedrun::job::limits::Limits;
use fedrun::trust::{verify_job_zip, RootCa, ZipVerifyError};

fn fedrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
}

fn nvflare() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvflare-signed")
}

const AT: &str = "2027-01-01T00:00:00Z";

/// A zip of `folder` as a zip tool makes it: every file under one top folder named
/// after it.
fn zip_of(folder: &Path) -> Vec<u8> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let name = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(folder, folder.parent().unwrap(), &mut files);
    files.sort();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in files {
        writer.start_file(name, options).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn write_zip(dir: &Path, job: &str) -> PathBuf {
    let path = dir.join(format!("{job}.zip"));
    std::fs::write(
        &path,
        zip_of(&nvflare().join("jobs").join(job).join("hello-fixture")),
    )
    .unwrap();
    path
}

#[test]
fn verify_accepts_a_zip_of_a_signed_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = fedrun()
        .arg("verify")
        .arg(write_zip(dir.path(), "good-lead"))
        .arg("--root-ca")
        .arg(nvflare().join("rootCA.pem"))
        .args(["--at", AT])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "verified: signed by lead@nvidia.com (org nvidia, role lead)"
    );
}

#[test]
fn a_changed_zip_names_the_file_inside_the_zip_not_a_temporary_path() {
    let dir = tempfile::tempdir().unwrap();
    let zip = write_zip(dir.path(), "bad-changed-file");
    let out = fedrun()
        .arg("verify")
        .arg(&zip)
        .arg("--root-ca")
        .arg(nvflare().join("rootCA.pem"))
        .args(["--at", AT, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{}: app_client/custom/train.py", zip.display())),
        "{reason}"
    );
    assert!(!reason.contains(".fedrun-verify-"), "{reason}");

    // The library function says the same, and keeps the typed reason.
    let root = RootCa::load(&nvflare().join("rootCA.pem")).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
    let err = verify_job_zip(
        &std::fs::read(&zip).unwrap(),
        &root,
        at,
        &Limits::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, ZipVerifyError::Verify { .. }), "{err}");
    assert!(
        err.to_string().starts_with("app_client/custom/train.py"),
        "{err}"
    );
}

#[test]
fn dev_zero_as_a_root_ca_is_refused_with_a_size_error() {
    let out = fedrun()
        .arg("verify")
        .arg(nvflare().join("jobs/good-lead/hello-fixture"))
        .args(["--root-ca", "/dev/zero", "--at", AT])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/dev/zero is over the limit of"),
        "{stderr}"
    );
}

#[test]
fn dev_zero_as_a_project_file_is_refused_with_a_size_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = fedrun()
        .args(["provision", "/dev/zero", "-o"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/dev/zero is over the limit of"),
        "{stderr}"
    );
}

#[test]
fn dev_zero_as_a_package_is_refused() {
    let out = fedrun().args(["package", "/dev/zero"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("neither a job folder nor a zip file"),
        "{stderr}"
    );
}
