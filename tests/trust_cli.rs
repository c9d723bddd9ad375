//! The `fedrun provision`, `sign` and `verify` commands as a user runs them: output,
//! JSON shape and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fedrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedrun"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const AT: &str = "2027-01-01T00:00:00Z";

#[test]
fn verify_prints_signer_and_exits_zero_on_nvflare_job() {
    let nv = fixtures().join("nvflare-signed");
    let out = fedrun()
        .arg("verify")
        .arg(nv.join("jobs/good-lead/hello-fixture"))
        .arg("--root-ca")
        .arg(nv.join("rootCA.pem"))
        .args(["--at", AT])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        "verified: signed by lead@nvidia.com (org nvidia, role lead)"
    );
}

#[test]
fn verify_json_names_the_failing_file_and_exits_one() {
    let nv = fixtures().join("nvflare-signed");
    let out = fedrun()
        .arg("verify")
        .arg(nv.join("jobs/bad-changed-file/hello-fixture"))
        .arg("--root-ca")
        .arg(nv.join("rootCA.pem"))
        .args(["--at", AT, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], false);
    assert_eq!(json["at"], AT);
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.contains("app_client/custom/train.py")
            && reason.contains("signature does not verify"),
        "{reason}"
    );
}

#[test]
fn verify_rejects_a_bad_time_argument() {
    let nv = fixtures().join("nvflare-signed");
    let out = fedrun()
        .arg("verify")
        .arg(nv.join("jobs/good/hello-fixture"))
        .arg("--root-ca")
        .arg(nv.join("rootCA.pem"))
        .args(["--at", "next tuesday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

#[test]
fn sign_with_nvflare_signer_then_verify() {
    let nv = fixtures().join("nvflare-signed");
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    std::fs::create_dir_all(job.join("app/config")).unwrap();
    std::fs::write(job.join("meta.json"), b"{\"name\": \"x\"}").unwrap();
    std::fs::write(job.join("app/config/run.toml"), b"command = \"true\"").unwrap();
    let out = fedrun()
        .arg("sign")
        .arg(&job)
        .arg("--cert")
        .arg(nv.join("signer/client.crt"))
        .arg("--key")
        .arg(nv.join("signer/client.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = fedrun()
        .arg("verify")
        .arg(&job)
        .arg("--root-ca")
        .arg(nv.join("rootCA.pem"))
        .args(["--at", AT, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["signer"],
        serde_json::json!({"name": "admin@nvidia.com", "org": "nvidia", "role": "project_admin"})
    );
}

#[test]
fn provision_reports_an_invalid_project_file() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project.toml");
    std::fs::write(&project, "name = \"p\"\n[server]\nhost = \"h\"\norg = \"o\"\n[[admin]]\nname = \"a\"\norg = \"o\"\nrole = \"king\"\n").unwrap();
    let out = fedrun()
        .arg("provision")
        .arg(&project)
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("role \"king\""), "{stderr}");
    assert!(!dir.path().join("out/ca/rootCA.key").exists());
}
