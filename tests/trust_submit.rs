//! The server verifies a stored package at submit and at deploy (SPEC section 6, Changed):
//! the signer comes back, or a typed refusal says why the job is not queued.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedrun::blobs::BlobStore;
use fedrun::job::limits::Limits;
use fedrun::job::package::ingest;
use fedrun::trust::{
    check_package_blob, check_package_zip, sign_job_folder, JobTrust, RootCa, Signer,
    SubmitRefusal, TrustPolicy,
};

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

/// 2027-01-01, inside the validity of the committed test certificates (2026 to 2036).
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

fn policy(require: Option<bool>) -> TrustPolicy {
    TrustPolicy {
        root_ca: Some(RootCa::load(&trust_dir().join("ca.pem")).expect("test root CA")),
        require_signed_jobs: require,
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// The canonical zip (what the blob store holds) of the example job, signed with
/// `cert` (all test leaves share `leaf.key`) or not, and changed after signing or not.
fn package(cert: Option<&str>, tamper: bool) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("hello-complete");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-complete"),
        &job,
    );
    if let Some(cert) = cert {
        let signer = Signer::load(&trust_dir().join(cert), &trust_dir().join("leaf.key"))
            .expect("test signer");
        sign_job_folder(&job, &signer).expect("sign");
    }
    if tamper {
        std::fs::write(job.join("app/run.sh"), "exit 0\n").unwrap();
    }
    ingest(&job, &Limits::default()).expect("ingest").zip
}

fn check(zip: &[u8], policy: &TrustPolicy, at: SystemTime) -> Result<JobTrust, SubmitRefusal> {
    check_package_zip(zip, policy, at, &Limits::default(), None)
}

#[test]
fn a_package_signed_by_a_project_admin_verifies_and_names_its_signer() {
    let trust = check(&package(Some("admin.pem"), false), &policy(None), at()).unwrap();
    let JobTrust::Signed(signer) = trust else {
        panic!("a signed job must come back signed, got {trust:?}")
    };
    assert_eq!(signer.name, "admin@example.org");
    assert_eq!(signer.org, "example");
    assert_eq!(signer.role.as_deref(), Some("project_admin"));
}

#[test]
fn an_unsigned_package_is_refused_under_the_policy_and_accepted_without_it() {
    let zip = package(None, false);
    let err = check(&zip, &policy(None), at()).unwrap_err();
    assert!(matches!(err, SubmitRefusal::Unsigned(_)), "{err:?}");
    assert!(err.to_string().contains("is not signed"), "{err}");
    assert_eq!(
        check(&zip, &policy(Some(false)), at()).unwrap(),
        JobTrust::Unsigned
    );
}

#[test]
fn a_package_changed_after_signing_is_refused_with_the_reason() {
    let err = check(&package(Some("admin.pem"), true), &policy(None), at()).unwrap_err();
    assert!(matches!(err, SubmitRefusal::BadSignature(_)), "{err:?}");
    assert!(err.to_string().contains("run.sh"), "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn a_signer_whose_role_may_not_submit_is_refused() {
    let err = check(&package(Some("bare.pem"), false), &policy(None), at()).unwrap_err();
    let SubmitRefusal::SignerMayNotSubmit { signer } = &err else {
        panic!("expected SignerMayNotSubmit, got {err:?}")
    };
    assert_eq!(signer.role.as_deref(), Some("member"));
    assert!(err.to_string().contains("may not submit"), "{err}");
}

#[test]
fn deploy_verifies_at_the_submit_time_not_now() {
    // The certificates run out in 2036: a job submitted in 2027 still deploys at that
    // time, and the same check as of 2040 refuses it.
    let zip = package(Some("lead.pem"), false);
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    let hash = blobs.put_bytes(&zip).unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let limits = Limits::default();
    let submitted = fedrun::trust::submit::timestamp_to_system_time(
        fedrun::lifecycle::time::Timestamp::from_millis(1_798_761_600_000),
    );
    assert_eq!(submitted, at());
    let trust = check_package_blob(
        &blobs,
        &hash,
        &policy(None),
        submitted,
        &limits,
        Some(&scratch),
    );
    assert!(matches!(trust, Ok(JobTrust::Signed(_))), "{trust:?}");
    let in_2040 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_208_988_800);
    let err = check_package_blob(
        &blobs,
        &hash,
        &policy(None),
        in_2040,
        &limits,
        Some(&scratch),
    )
    .unwrap_err();
    assert!(matches!(err, SubmitRefusal::BadSignature(_)), "{err:?}");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the unpacked copy is removed"
    );
}
