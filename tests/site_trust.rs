//! A local site checks what it deploys against its signature policy (SPEC section 6): a
//! job signed by a project identity deploys, an unsigned one is refused when the policy
//! is on, and a signed job changed after signing is refused with the reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fedrun::job::JobId;
use fedrun::site::local::{LocalSite, LocalSiteConfig, SiteHandle};
use fedrun::site::protocol::{SiteReport, SiteRequest};
use fedrun::trust::{sign_job_folder, RootCa, Signer, TrustPolicy};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(30);

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

/// 2027-01-01, inside the validity of the committed test certificates (2026 to 2036).
fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
}

/// Copies the example `hello-complete` into a temp folder, optionally signs it, and
/// returns the zip of the folder (entries sorted, paths relative to the job folder).
fn job_zip(sign: bool, tamper: bool) -> Arc<Vec<u8>> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-complete");
    let dst = tmp.path().join("hello-complete");
    copy_dir(&src, &dst);
    if sign {
        let signer = Signer::load(
            &trust_dir().join("admin.pem"),
            &trust_dir().join("leaf.key"),
        )
        .expect("test signer");
        sign_job_folder(&dst, &signer).expect("sign");
    }
    if tamper {
        std::fs::write(dst.join("app/run.sh"), "exit 0\n").expect("tamper");
    }
    zip_folder(&dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

fn zip_folder(dir: &Path) -> Arc<Vec<u8>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let name = path
                    .strip_prefix(base)
                    .expect("under base")
                    .to_str()
                    .expect("UTF-8")
                    .to_string();
                out.push((name, std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files {
        writer.start_file(name, options).expect("entry");
        writer.write_all(&bytes).expect("write");
    }
    Arc::new(writer.finish().expect("zip").into_inner())
}

async fn site(
    trust: TrustPolicy,
) -> (
    tempfile::TempDir,
    SiteHandle,
    mpsc::Receiver<(String, SiteReport)>,
) {
    let root = tempfile::tempdir().expect("temp dir");
    let mut config = LocalSiteConfig::new("site-1", root.path().join("ws"), BTreeMap::new());
    config.trust = trust;
    config.verify_at = Some(at());
    let (tx, mut rx) = mpsc::channel(16);
    let handle = LocalSite::spawn(config, tx);
    assert!(matches!(next(&mut rx).await, SiteReport::Connected { .. }));
    (root, handle, rx)
}

async fn next(rx: &mut mpsc::Receiver<(String, SiteReport)>) -> SiteReport {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("report within the bound")
        .expect("site alive")
        .1
}

async fn deploy(
    handle: &SiteHandle,
    rx: &mut mpsc::Receiver<(String, SiteReport)>,
    n: u8,
    package: Arc<Vec<u8>>,
) -> Result<(), String> {
    let job_id = JobId(uuid::Uuid::from_bytes([n; 16]));
    handle
        .requests
        .send(SiteRequest::Deploy {
            job_id,
            app_name: "app".into(),
            package,
            hash: fedrun::lifecycle::BlobHash([0; 32]),
            verify_at: None,
        })
        .await
        .expect("site alive");
    match next(rx).await {
        SiteReport::DeployAnswer { job_id: j, result } if j == job_id => result,
        other => panic!("expected a deploy answer, got {other:?}"),
    }
}

fn with_root_ca(require: Option<bool>) -> TrustPolicy {
    TrustPolicy {
        root_ca: Some(RootCa::load(&trust_dir().join("ca.pem")).expect("test CA")),
        require_signed_jobs: require,
    }
}

#[tokio::test]
async fn signed_jobs_deploy_and_unsigned_or_tampered_ones_are_refused() {
    // With a root CA and the setting unset, the policy is on.
    let (_root, handle, mut rx) = site(with_root_ca(None)).await;
    deploy(&handle, &mut rx, 1, job_zip(true, false))
        .await
        .expect("signed job deploys");

    let err = deploy(&handle, &mut rx, 2, job_zip(false, false))
        .await
        .expect_err("unsigned refused");
    assert!(err.contains("not signed"), "{err}");

    let err = deploy(&handle, &mut rx, 3, job_zip(true, true))
        .await
        .expect_err("tampered refused");
    assert!(err.contains("signature rejected"), "{err}");
}

#[tokio::test]
async fn policy_off_accepts_unsigned_but_still_checks_signed_jobs() {
    let (_root, handle, mut rx) = site(with_root_ca(Some(false))).await;
    deploy(&handle, &mut rx, 1, job_zip(false, false))
        .await
        .expect("unsigned accepted with the policy off");
    let err = deploy(&handle, &mut rx, 2, job_zip(true, true))
        .await
        .expect_err("a signature that fails is refused whatever the policy");
    assert!(err.contains("signature rejected"), "{err}");
}

#[tokio::test]
async fn policy_on_without_a_root_ca_refuses_with_a_clear_message() {
    let policy = TrustPolicy {
        root_ca: None,
        require_signed_jobs: Some(true),
    };
    let (_root, handle, mut rx) = site(policy).await;
    let err = deploy(&handle, &mut rx, 1, job_zip(true, false))
        .await
        .expect_err("no CA to check against");
    assert!(err.contains("no project root CA"), "{err}");
}
