//! fedrun gives NVFlare's own verdict, with the same signer identity, on every job folder
//! that NVFlare's signer produced (tests/fixtures/nvflare-signed, verdicts in expected.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedrun::trust::{verify_job_folder, RootCa, VerifyError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvflare-signed")
}

/// 2027-01-01T00:00:00Z: inside the fixtures' validity window (2026-11-28 to 2027-11-23).
fn inside_window() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

#[derive(serde::Deserialize)]
struct Expected {
    verified: bool,
    signers: Vec<(String, String, String)>,
}

fn expected() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn root() -> RootCa {
    RootCa::load(&fixtures().join("rootCA.pem")).unwrap()
}

fn verify(name: &str) -> Result<fedrun::trust::SignerIdentity, VerifyError> {
    let job = fixtures().join("jobs").join(name).join("hello-fixture");
    verify_job_folder(&job, &root(), inside_window())
}

#[test]
fn every_fixture_gets_nvflares_verdict_and_signer() {
    let expected = expected();
    assert_eq!(
        expected.len(),
        7,
        "expected.json lists the seven fixture jobs"
    );
    for (name, want) in &expected {
        let got = verify(name);
        assert_eq!(got.is_ok(), want.verified, "{name}: got {got:?}");
        let signers: Vec<(String, String, String)> = got
            .into_iter()
            .map(|id| (id.name, id.org, id.role.unwrap_or_default()))
            .collect();
        assert_eq!(&signers, &want.signers, "{name}");
    }
}

#[test]
fn each_bad_fixture_fails_for_its_own_reason() {
    let reason = |name: &str| verify(name).expect_err(name);
    match reason("bad-changed-file") {
        VerifyError::SignatureMismatch { path, what } => {
            assert_eq!(what, "file content");
            assert!(path.ends_with("app_client/custom/train.py"), "{path:?}");
        }
        other => panic!("bad-changed-file: {other}"),
    }
    match reason("bad-extra-file") {
        VerifyError::MissingEntry { path, .. } => assert!(path.ends_with("custom/added.py")),
        other => panic!("bad-extra-file: {other}"),
    }
    match reason("bad-missing-sig") {
        VerifyError::MissingSignatureFile { dir } => assert!(dir.ends_with("app_client/custom")),
        other => panic!("bad-missing-sig: {other}"),
    }
    match reason("bad-other-ca") {
        VerifyError::Chain { source, .. } => assert!(
            matches!(source, fedrun::trust::certs::ChainError::UntrustedIssuer { ref issuer, .. } if issuer == "CN=project_B"),
            "{source}"
        ),
        other => panic!("bad-other-ca: {other}"),
    }
    // The shared copy of bad-symlink lost its symlink in transit: link.py is a plain,
    // unsigned file, so it fails as an extra file. The symlink itself is tested below.
    match reason("bad-symlink") {
        VerifyError::MissingEntry { path, .. } => assert!(path.ends_with("custom/link.py")),
        other => panic!("bad-symlink: {other}"),
    }
}

#[test]
fn other_ca_fixture_verifies_against_its_own_root() {
    let other = RootCa::load(&fixtures().join("otherRootCA.pem")).unwrap();
    let job = fixtures().join("jobs/bad-other-ca/hello-fixture");
    let id = verify_job_folder(&job, &other, inside_window()).unwrap();
    assert_eq!(id.name, "admin@nvidia.com");
    // And the good job, signed under project A, is refused by project B's root.
    let good = fixtures().join("jobs/good/hello-fixture");
    assert!(verify_job_folder(&good, &other, inside_window()).is_err());
}

#[test]
fn a_real_symlink_in_a_signed_job_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("hello-fixture");
    copy_tree(&fixtures().join("jobs/good/hello-fixture"), &job);
    verify_job_folder(&job, &root(), inside_window()).expect("the copy verifies before the link");
    std::os::unix::fs::symlink("train.py", job.join("app_client/custom/link.py")).unwrap();
    match verify_job_folder(&job, &root(), inside_window()) {
        Err(VerifyError::Symlink { path }) => assert!(path.ends_with("custom/link.py")),
        other => panic!("expected a symlink rejection, got {other:?}"),
    }
}

#[test]
fn fixtures_are_refused_outside_their_validity_window() {
    let job = fixtures().join("jobs/good/hello-fixture");
    let before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000); // 2026-11-18
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_830_000_000); // 2027-12-28
    assert!(matches!(
        verify_job_folder(&job, &root(), before),
        Err(VerifyError::Chain {
            source: fedrun::trust::certs::ChainError::NotYetValid { .. },
            ..
        })
    ));
    assert!(matches!(
        verify_job_folder(&job, &root(), after),
        Err(VerifyError::Chain {
            source: fedrun::trust::certs::ChainError::Expired { .. },
            ..
        })
    ));
}

#[test]
fn fedrun_sign_writes_what_nvflare_wrote_except_the_random_signatures() {
    // PSS signatures are randomized, so compare everything else: the same entries in the
    // same order with the same JSON punctuation, and the same certificate bytes.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("hello-fixture");
    let original = fixtures().join("jobs/good/hello-fixture");
    copy_tree(&original, &job);
    let signer = fedrun::trust::Signer::load(
        &fixtures().join("signer/client.crt"),
        &fixtures().join("signer/client.key"),
    )
    .unwrap();
    let report = fedrun::trust::sign_job_folder(&job, &signer).unwrap();
    assert_eq!(report.directories, 7);
    let mask = |text: String| {
        // Every signature of a 2048-bit key is 256 bytes: 344 base64 characters.
        let mut out = String::new();
        for (i, part) in text.split('"').enumerate() {
            if i > 0 {
                out.push('"');
            }
            let is_sig = part.len() == 344 && part.ends_with("==");
            out.push_str(if is_sig { "SIG" } else { part });
        }
        out
    };
    for sub in [
        "",
        "app_client",
        "app_client/config",
        "app_client/custom",
        "app_client/custom/nested",
        "app_server",
        "app_server/config",
    ] {
        let read = |root: &Path, name: &str| std::fs::read(root.join(sub).join(name)).unwrap();
        let ours = mask(String::from_utf8(read(&job, fedrun::trust::SIG_FILE)).unwrap());
        let theirs = mask(String::from_utf8(read(&original, fedrun::trust::SIG_FILE)).unwrap());
        assert_eq!(ours, theirs, "{sub}");
        assert!(
            !ours.contains("=="),
            "every value was masked in {sub}: {ours}"
        );
        assert_eq!(
            read(&job, fedrun::trust::SUBMITTER_CERT_FILE),
            read(&original, fedrun::trust::SUBMITTER_CERT_FILE),
            "{sub}"
        );
    }
    let id = verify_job_folder(&job, &root(), inside_window()).unwrap();
    assert_eq!(id.name, "admin@nvidia.com");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
