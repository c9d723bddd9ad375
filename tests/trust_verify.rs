//! Every rejection of job verification, each with a hand-made input, plus the jobs that
//! must pass. Keys and certificates are the committed ones in tests/fixtures/trust.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedrun::trust::certs::ChainError;
use fedrun::trust::{
    check_job, sign_job_folder, verify_job_folder, JobTrust, PolicyError, RootCa, SignError,
    Signer, SignerIdentity, TrustPolicy, VerifyError, SIG_FILE, SUBMITTER_CERT_FILE,
};

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

/// 2027-01-01T00:00:00Z, inside the validity of every test certificate that should pass.
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

fn root() -> RootCa {
    RootCa::load(&trust_dir().join("ca.pem")).unwrap()
}

fn signer(cert: &str) -> Signer {
    Signer::load(&trust_dir().join(cert), &trust_dir().join("leaf.key")).unwrap()
}

/// A small job: meta.json, two apps, a nested folder and an empty file.
fn make_job(parent: &Path) -> PathBuf {
    let job = parent.join("job");
    let files: [(&str, &[u8]); 5] = [
        (
            "meta.json",
            br#"{"name": "j", "deploy_map": {"app": ["@ALL"]}}"#,
        ),
        ("app/config/run.toml", b"command = \"python3\"\n"),
        ("app/custom/train.py", b"print('train')\n"),
        ("app/custom/nested/empty.txt", b""),
        ("app_server/config/server.json", b"{}"),
    ];
    for (path, bytes) in files {
        let path = job.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    job
}

fn signed_job(parent: &Path, cert: &str) -> PathBuf {
    let job = make_job(parent);
    sign_job_folder(&job, &signer(cert)).unwrap();
    job
}

fn chain_error(cert: &str) -> ChainError {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), cert);
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::Chain { path, source }) => {
            assert!(path.ends_with(SUBMITTER_CERT_FILE));
            source
        }
        other => panic!("{cert}: expected a chain error, got {other:?}"),
    }
}

fn identity(name: &str, org: &str, role: &str) -> SignerIdentity {
    SignerIdentity {
        name: name.into(),
        org: org.into(),
        role: Some(role.into()),
    }
}

#[test]
fn fedrun_signed_job_verifies_with_signer_identity() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let id = verify_job_folder(&job, &root(), at()).unwrap();
    assert_eq!(
        id,
        identity("admin@example.org", "example", "project_admin")
    );
    // Every directory got both files.
    for sub in [
        "",
        "app",
        "app/config",
        "app/custom",
        "app/custom/nested",
        "app_server",
    ] {
        assert!(job.join(sub).join(SIG_FILE).is_file(), "{sub}");
        assert!(job.join(sub).join(SUBMITTER_CERT_FILE).is_file(), "{sub}");
    }
}

#[test]
fn signature_file_has_nvflares_shape() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let text = fs::read_to_string(job.join("app/custom").join(SIG_FILE)).unwrap();
    // Files first, then subdirectories, as Python's json.dump writes them.
    assert!(text.starts_with(r#"{"train.py": ""#), "{text}");
    assert!(text.contains(r#"", "nested": ""#), "{text}");
    assert!(text.ends_with("\"}"));
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed.len(), 2);
    // The certificate file is the signer's PEM, byte for byte.
    assert_eq!(
        fs::read(job.join(SUBMITTER_CERT_FILE)).unwrap(),
        fs::read(trust_dir().join("admin.pem")).unwrap()
    );
}

#[test]
fn chain_through_an_intermediate_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "via-intermediate.pem");
    let id = verify_job_folder(&job, &root(), at()).unwrap();
    assert_eq!(id, identity("deep@example.org", "example", "lead"));
}

#[test]
fn leaf_without_key_usage_extensions_verifies() {
    // NVFlare's own participant certificates carry no key usage and no EKU.
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "bare.pem");
    let id = verify_job_folder(&job, &root(), at()).unwrap();
    assert_eq!(id, identity("bare@example.org", "example", "member"));
}

#[test]
fn expired_certificate_is_rejected() {
    assert!(
        matches!(chain_error("expired.pem"), ChainError::Expired { subject, .. } if subject.contains("expired@example.org"))
    );
}

#[test]
fn not_yet_valid_certificate_is_rejected() {
    assert!(matches!(
        chain_error("not-yet-valid.pem"),
        ChainError::NotYetValid { .. }
    ));
}

#[test]
fn certificate_from_another_ca_is_rejected() {
    assert!(matches!(
        chain_error("other-ca-admin.pem"),
        ChainError::UntrustedIssuer { issuer, .. } if issuer == "CN=fedrun-test-other-root"
    ));
}

#[test]
fn ca_certificate_as_leaf_is_rejected() {
    assert!(matches!(
        chain_error("ca-as-leaf.pem"),
        ChainError::LeafIsCa { .. }
    ));
}

#[test]
fn leaf_without_digital_signature_is_rejected() {
    assert!(matches!(
        chain_error("no-digital-signature.pem"),
        ChainError::LeafLacksDigitalSignature { .. }
    ));
}

#[test]
fn leaf_whose_eku_lacks_client_auth_is_rejected() {
    assert!(matches!(
        chain_error("server-only-eku.pem"),
        ChainError::LeafLacksClientAuth { .. }
    ));
}

#[test]
fn leaf_without_common_name_is_rejected() {
    assert!(matches!(
        chain_error("no-common-name.pem"),
        ChainError::LeafWithoutCommonName { .. }
    ));
}

#[test]
fn leaf_with_nvflares_placeholder_name_is_rejected() {
    assert!(matches!(
        chain_error("placeholder-name.pem"),
        ChainError::LeafWithPlaceholderName { .. }
    ));
}

#[test]
fn chain_through_a_non_ca_is_rejected() {
    assert!(matches!(
        chain_error("issued-by-leaf.pem"),
        ChainError::NotAUsableCa { subject, reason } if subject.contains("admin@example.org") && reason.contains("cA is false")
    ));
}

#[test]
fn intermediates_in_any_order_verify() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "edge-misordered-chain.pem");
    let id = verify_job_folder(&job, &root(), at()).unwrap();
    assert_eq!(id, identity("u5@example.org", "example", "lead"));
}

#[test]
fn path_length_constraint_is_enforced() {
    assert!(matches!(
        chain_error("edge-pathlen-chain.pem"),
        ChainError::PathLenExceeded { subject, limit: 0, found: 1 } if subject == "CN=edge-pathlen0"
    ));
}

#[test]
fn version_1_leaf_is_rejected() {
    assert!(matches!(
        chain_error("edge-v1-leaf.pem"),
        ChainError::LeafNotVersion3 { .. }
    ));
}

/// Signs a job with `leaf` and verifies it against the root CA file `root_file`.
fn chain_error_under(root_file: &str, leaf: &str) -> ChainError {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), leaf);
    let root = RootCa::load(&trust_dir().join(root_file)).unwrap();
    match verify_job_folder(&job, &root, at()) {
        Err(VerifyError::Chain { source, .. }) => source,
        other => panic!("{leaf}: expected a chain error, got {other:?}"),
    }
}

#[test]
fn root_without_key_cert_sign_is_rejected() {
    assert!(matches!(
        chain_error_under("edge-root-noku.pem", "edge-root-noku-leaf.pem"),
        ChainError::NotAUsableCa { reason, .. } if reason.contains("no key usage")
    ));
}

#[test]
fn root_with_non_critical_basic_constraints_is_rejected() {
    assert!(matches!(
        chain_error_under("edge-root-noncritical.pem", "edge-root-noncritical-leaf.pem"),
        ChainError::NotAUsableCa { reason, .. } if reason.contains("not critical")
    ));
}

#[test]
fn root_with_a_1024_bit_key_is_rejected() {
    assert!(matches!(
        chain_error_under("edge-root-small.pem", "edge-root-small-leaf.pem"),
        ChainError::IssuerKeyTooSmall { bits: 1024, .. }
    ));
}

#[test]
fn expired_root_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(2_100_000_000); // 2036-07
    assert!(matches!(
        verify_job_folder(&job, &root(), later),
        Err(VerifyError::Chain {
            source: ChainError::Expired { .. },
            ..
        })
    ));
}

#[test]
fn root_with_same_name_but_other_key_is_rejected() {
    // A forged root carrying the real root's name cannot vouch for a chain.
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "impostor-admin.pem");
    let impostor = RootCa::load(&trust_dir().join("impostor-ca.pem")).unwrap();
    assert!(verify_job_folder(&job, &impostor, at()).is_ok());
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::Chain { source: ChainError::BadSignature { issuer, .. }, .. }) if issuer == "CN=fedrun-test-root"
    ));
}

#[test]
fn missing_signature_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::remove_file(job.join("app/config").join(SIG_FILE)).unwrap();
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::MissingSignatureFile { dir }) => assert!(dir.ends_with("app/config")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_certificate_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::remove_file(job.join("app_server").join(SUBMITTER_CERT_FILE)).unwrap();
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::MissingCertificate { dir }) => assert!(dir.ends_with("app_server")),
        other => panic!("{other:?}"),
    }
}

/// Rewrites one directory's signature file through `edit`.
fn edit_signatures(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join(SIG_FILE);
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut map);
    fs::write(&path, serde_json::to_vec(&map).unwrap()).unwrap();
}

#[test]
fn missing_entry_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    edit_signatures(&job.join("app/custom"), |m| {
        m.remove("train.py");
    });
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::MissingEntry { path, sig_file }) => {
            assert!(path.ends_with("app/custom/train.py"));
            assert!(sig_file.ends_with(Path::new("app/custom").join(SIG_FILE)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn changed_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::write(job.join("app/config/run.toml"), b"command = \"rm\"\n").unwrap();
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::SignatureMismatch { path, what }) => {
            assert!(path.ends_with("app/config/run.toml"));
            assert_eq!(what, "file content");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn extra_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::write(job.join("app/custom/nested/payload.py"), b"evil()").unwrap();
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::MissingEntry { path, .. }) if path.ends_with("nested/payload.py")
    ));
}

#[test]
fn renamed_subdirectory_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::rename(job.join("app/custom"), job.join("app/custom2")).unwrap();
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::MissingEntry { path, .. }) if path.ends_with("app/custom2")
    ));
    // Moving the old entry to the new name does not help: the name itself is signed.
    edit_signatures(&job.join("app"), |m| {
        let old = m.remove("custom").unwrap();
        m.insert("custom2".into(), old);
    });
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::SignatureMismatch { path, what: "directory name" }) if path.ends_with("app/custom2")
    ));
}

#[test]
fn swapped_file_contents_are_rejected() {
    // Swapping two files' contents is caught: each signature covers the bytes it was
    // made over, not just a name.
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let custom = job.join("app/custom");
    fs::write(custom.join("train.py"), b"").unwrap();
    fs::write(custom.join("nested/empty.txt"), b"print('train')\n").unwrap();
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::SignatureMismatch { .. })
    ));
}

#[test]
fn garbled_base64_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    edit_signatures(&job, |m| {
        m.insert("meta.json".into(), "not*base64!".into());
    });
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::GarbledSignature { path, .. }) => assert!(path.ends_with("meta.json")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn signature_of_wrong_length_is_a_mismatch_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    edit_signatures(&job, |m| {
        m.insert("meta.json".into(), "AAECAw==".into());
    });
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::SignatureMismatch { .. })
    ));
}

#[test]
fn malformed_signature_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::write(job.join("app").join(SIG_FILE), b"{\"custom\": 1}").unwrap();
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::BadSignatureFile { path, .. }) if path.ends_with(Path::new("app").join(SIG_FILE))
    ));
}

#[test]
fn malformed_certificate_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::write(
        job.join(SUBMITTER_CERT_FILE),
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::BadCertificate { .. })
    ));
}

#[test]
fn extra_entries_for_absent_names_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    edit_signatures(&job, |m| {
        m.insert("deleted.py".into(), "AAAA".into());
    });
    assert!(verify_job_folder(&job, &root(), at()).is_ok());
}

#[test]
fn symlinks_are_rejected_wherever_they_are() {
    for (link, target) in [
        ("app/custom/link.py", "train.py"),
        ("app/linked_dir", "custom"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let job = signed_job(dir.path(), "admin.pem");
        std::os::unix::fs::symlink(target, job.join(link)).unwrap();
        assert!(
            matches!(verify_job_folder(&job, &root(), at()), Err(VerifyError::Symlink { path }) if path.ends_with(link)),
            "{link}"
        );
    }
    // The job folder itself may not be a symlink either.
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let alias = dir.path().join("alias");
    std::os::unix::fs::symlink(&job, &alias).unwrap();
    assert!(matches!(
        verify_job_folder(&alias, &root(), at()),
        Err(VerifyError::Symlink { .. })
    ));
}

#[test]
fn special_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    let fifo = job.join("app/pipe");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a valid NUL-terminated path and touches no Rust memory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::SpecialFile { path }) if path.ends_with("app/pipe")
    ));
}

#[test]
fn directories_signed_by_different_signers_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    // Re-sign one subtree with another valid certificate of the same project.
    sign_job_folder(&job.join("app_server"), &signer("lead.pem")).unwrap();
    match verify_job_folder(&job, &root(), at()) {
        Err(VerifyError::SignerChanged { path, first, this }) => {
            assert!(path.ends_with(Path::new("app_server").join(SUBMITTER_CERT_FILE)));
            assert_eq!(first.name, "admin@example.org");
            assert_eq!(this.name, "lead@example.org");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsigned_job_is_reported_as_missing_signature() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_job(dir.path());
    assert!(matches!(
        verify_job_folder(&job, &root(), at()),
        Err(VerifyError::MissingSignatureFile { dir }) if dir == job
    ));
}

#[test]
fn signing_refuses_a_symlink_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_job(dir.path());
    std::os::unix::fs::symlink("/etc/passwd", job.join("app/custom/nested/pw")).unwrap();
    assert!(matches!(
        sign_job_folder(&job, &signer("admin.pem")),
        Err(SignError::Folder(VerifyError::Symlink { .. }))
    ));
    assert!(!job.join(SIG_FILE).exists());
}

#[test]
fn signing_with_a_key_of_another_certificate_is_refused() {
    let result = Signer::load(&trust_dir().join("admin.pem"), &trust_dir().join("ca.key"));
    assert!(matches!(result, Err(SignError::KeyDoesNotMatch { .. })));
}

#[test]
fn resigning_replaces_old_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    fs::write(job.join("meta.json"), b"{\"name\": \"changed\"}").unwrap();
    assert!(verify_job_folder(&job, &root(), at()).is_err());
    sign_job_folder(&job, &signer("lead.pem")).unwrap();
    let id = verify_job_folder(&job, &root(), at()).unwrap();
    assert_eq!(id.name, "lead@example.org");
}

fn policy(root_ca: Option<RootCa>, setting: Option<bool>) -> TrustPolicy {
    TrustPolicy {
        root_ca,
        require_signed_jobs: setting,
    }
}

#[test]
fn policy_rejects_unsigned_job_when_root_ca_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_job(dir.path());
    let err = check_job(&job, &policy(Some(root()), None), at()).unwrap_err();
    assert!(matches!(err, PolicyError::UnsignedJobRejected { .. }));
    assert!(err.to_string().contains("not signed"), "{err}");
}

#[test]
fn policy_allows_unsigned_job_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let job = make_job(dir.path());
    assert_eq!(
        check_job(&job, &policy(None, None), at()).unwrap(),
        JobTrust::Unsigned
    );
    assert_eq!(
        check_job(&job, &policy(Some(root()), Some(false)), at()).unwrap(),
        JobTrust::Unsigned
    );
}

#[test]
fn policy_on_without_root_ca_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    assert!(matches!(
        check_job(&job, &policy(None, Some(true)), at()),
        Err(PolicyError::NoRootCa { .. })
    ));
}

#[test]
fn policy_verifies_signed_jobs_and_rejects_bad_ones_even_when_off() {
    let dir = tempfile::tempdir().unwrap();
    let job = signed_job(dir.path(), "admin.pem");
    assert_eq!(
        check_job(&job, &policy(Some(root()), None), at()).unwrap(),
        JobTrust::Signed(identity("admin@example.org", "example", "project_admin"))
    );
    fs::write(job.join("meta.json"), b"{}").unwrap();
    for setting in [None, Some(false), Some(true)] {
        let err = check_job(&job, &policy(Some(root()), setting), at()).unwrap_err();
        assert!(
            matches!(
                err,
                PolicyError::BadSignature(VerifyError::SignatureMismatch { .. })
            ),
            "{setting:?}"
        );
    }
}
