//! The tokio driver of the node, end to end: appends run on the history thread, never on a
//! tokio worker; a failed append stops the server for good
//! (requests answer "stopped", the stop is observable so the process exits), a submit is
//! authorized before anything is stored, a signed job is verified at submit and its signer
//! recorded, a package larger than the deploy budget still deploys, start-up sweeps blobs
//! no event refers to, a missing run folder is an archive failure, and the server's clock
//! does not follow a wall clock that jumps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod engine_support;

use engine_support::{identity, settled, submit_ok, wait_for, TestStorage, BOUND};
use fedrun::blobs::BlobStore;
use fedrun::engine::archive::{archive_folder, ArchiveError};
use fedrun::engine::clock::{Clock, ServerClock, WallClock, WallSource};
use fedrun::engine::server::{deploy_permits, AdminError, Server, ServerConfig};
use fedrun::history::History;
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Event, EventKind, Origin, Rejection, Role, RunStatus, Timestamp,
};
use fedrun::site::local::{LocalSite, LocalSiteConfig, SiteHandle};
use fedrun::trust::{sign_job_folder, RootCa, Signer, TrustPolicy};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

/// Attaches a local site with `config` and waits until the server sees it connected.
async fn attach(server: &Server, config: LocalSiteConfig) -> SiteHandle {
    let name = config.name.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handle = LocalSite::spawn(config, tx);
    server.attach_site(&name, handle.requests.clone(), rx);
    wait_for(server, "site connected", |s| {
        s.connected_sites().any(|(c, _)| *c == name)
    })
    .await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_stops_the_server_for_good() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fail = Arc::new(AtomicBool::new(false));
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let storage = TestStorage {
        fail: fail.clone(),
        threads: threads.clone(),
        ..TestStorage::default()
    };
    let history =
        History::<Event>::from_storage(Box::new(storage), dir.path()).expect("history opens");
    let config = ServerConfig::new(dir.path());
    let server = Server::start_on(config, history, Arc::new(WallClock)).expect("server starts");
    wait_for(&server, "ServerStarted", |s| s.last_seq >= 1).await;
    assert_eq!(server.stopped(), None);
    fail.store(true, Ordering::SeqCst);
    let answer = tokio::time::timeout(
        BOUND,
        server.submit_path(
            &examples().join("hello-complete"),
            identity(Role::ProjectAdmin),
            None,
        ),
    )
    .await
    .expect("answered within the bound")
    .expect("package accepted");
    assert_eq!(answer, Err(AdminError::Stopped));
    let cause = tokio::time::timeout(BOUND, server.wait_stopped())
        .await
        .expect("the stop is observable, so the process can exit");
    assert!(cause.contains("disk full"), "{cause}");
    // For good: the disk is back, and the server still refuses.
    fail.store(false, Ordering::SeqCst);
    let origin = Origin {
        identity: identity(Role::ProjectAdmin),
        request_id: None,
    };
    let again = server
        .request(
            origin,
            AdminRequest::AbortJob {
                job_id: JobId(uuid::Uuid::nil()),
            },
        )
        .await;
    assert_eq!(again, Err(AdminError::Stopped));
    // Every append ran on the history thread, never on a tokio worker.
    let threads = threads.lock().expect("not poisoned").clone();
    assert!(!threads.is_empty());
    assert!(
        threads.iter().all(|t| t == "fedrun-history"),
        "appends ran on {threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_is_authorized_before_its_package_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServerConfig::new(&dir.path().join("data"));
    let server = Server::start(config, Arc::new(WallClock)).expect("server starts");
    let answer = server
        .submit_path(
            &examples().join("hello-complete"),
            identity(Role::Member),
            Some("member-submit".into()),
        )
        .await
        .expect("package valid");
    assert!(
        matches!(answer, Ok(Err(Rejection::NotAllowed { .. }))),
        "{answer:?}"
    );
    let stored = server.blobs().list().expect("blob store lists");
    assert!(
        stored.is_empty(),
        "nothing is stored for a refused submit: {stored:?}"
    );
    server.shutdown().await;
}

fn signed_copy(dir: &Path, signer: &str) -> PathBuf {
    let dst = dir.join(format!("hello-complete-{signer}"));
    copy_dir(&examples().join("hello-complete"), &dst);
    let signer = Signer::load(&trust_dir().join(signer), &trust_dir().join("leaf.key"))
        .expect("test signer");
    sign_job_folder(&dst, &signer).expect("sign");
    dst
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

/// The test certificates are valid at this time (2027-01-01).
struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(1_798_761_600_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_job_is_verified_at_submit_and_its_signer_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.trust = TrustPolicy {
        root_ca: Some(RootCa::load(&trust_dir().join("ca.pem")).expect("test CA")),
        require_signed_jobs: None,
    };
    let server = Server::start(config, Arc::new(FixedClock)).expect("server starts");
    // Unsigned under the policy: refused at submit, never queued, nothing stored.
    let unsigned = server
        .submit_path(
            &examples().join("hello-complete"),
            identity(Role::ProjectAdmin),
            None,
        )
        .await;
    assert!(
        matches!(&unsigned, Ok(Ok(Err(Rejection::SignatureRefused { reason }))) if reason.contains("not signed")),
        "{unsigned:?}"
    );
    // Tampered after signing: refused with the reason.
    let tampered = signed_copy(dir.path(), "admin.pem");
    std::fs::write(tampered.join("app/run.sh"), "exit 0\n").expect("tamper");
    let refused = server
        .submit_path(&tampered, identity(Role::ProjectAdmin), None)
        .await;
    assert!(
        matches!(&refused, Ok(Ok(Err(Rejection::SignatureRefused { reason }))) if reason.contains("app/run.sh")),
        "{refused:?}"
    );
    // Signed by a member, whose role may not submit: refused at submit, typed and named.
    let by_member = server
        .submit_path(
            &signed_copy(dir.path(), "bare.pem"),
            identity(Role::ProjectAdmin),
            None,
        )
        .await;
    assert!(
        matches!(&by_member, Ok(Ok(Err(Rejection::SignatureRefused { reason }))) if reason.contains("may not submit")),
        "{by_member:?}"
    );
    assert!(server.state().jobs.is_empty(), "nothing was queued");
    // Each refusal is recorded (SPEC section 9), with its reason; none names the server's
    // temporary folder the package was checked in.
    let recorded: Vec<Rejection> = server
        .read_events(1, 100)
        .await
        .expect("history")
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::RequestRefused { rejection, .. } => Some(rejection),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for rejection in &recorded {
        let Rejection::SignatureRefused { reason } = rejection else {
            panic!("{rejection:?}")
        };
        assert!(!reason.contains("fedrun-verify"), "{reason}");
    }
    assert!(server.blobs().list().expect("lists").is_empty());
    // Signed: queued, with the signer from the certificate.
    let job_id = submit_ok(&server, &signed_copy(dir.path(), "admin.pem")).await;
    let state = server.state();
    let signer = state.jobs[&job_id]
        .signer
        .clone()
        .expect("the signer is recorded");
    assert_eq!(signer.role, Role::ProjectAdmin, "{signer:?}");
    assert!(!signer.name.is_empty());
    server.shutdown().await;
}

#[test]
fn a_deploy_never_asks_for_more_than_the_whole_budget() {
    assert_eq!(deploy_permits(10, 100), 10);
    assert_eq!(deploy_permits(1000, 100), 100);
    assert_eq!(deploy_permits(0, 100), 1);
    assert_eq!(deploy_permits(usize::MAX, usize::MAX), u32::MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_larger_than_the_deploy_budget_still_deploys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(&dir.path().join("data"));
    // Far below the package's size: a deploy must take the whole budget, not wait forever.
    config.package_bytes_in_flight_max = 64;
    let server = Server::start(config, Arc::new(WallClock)).expect("server starts");
    let config = LocalSiteConfig::new("site-1", dir.path().join("site-1"), BTreeMap::new());
    let site = attach(&server, config).await;
    let job_id = submit_ok(&server, &examples().join("hello-complete")).await;
    let state = wait_for(&server, "the job settled", |s| settled(s, &job_id)).await;
    assert_eq!(state.jobs[&job_id].status, RunStatus::Completed);
    server.shutdown().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_sweeps_blobs_that_no_event_refers_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let server =
        Server::start(ServerConfig::new(&data), Arc::new(WallClock)).expect("server starts");
    submit_ok(&server, &examples().join("hello-complete")).await;
    let orphan = server
        .blobs()
        .put_bytes(b"no event refers to me")
        .expect("put");
    server.shutdown().await;
    drop(server);
    let blobs = BlobStore::open(data.join("blobs")).expect("blob store");
    assert!(blobs.contains(&orphan));
    let mut before = blobs.list().expect("list");
    let server =
        Server::start(ServerConfig::new(&data), Arc::new(WallClock)).expect("server restarts");
    assert!(
        !blobs.contains(&orphan),
        "the orphan is swept at start-up (checked on disk)"
    );
    // Nothing else: the package and the snapshot taken at shutdown stay.
    before.remove(&orphan);
    assert!(before.len() >= 2, "a package and a snapshot: {before:?}");
    for hash in &before {
        assert!(blobs.contains(hash), "blob {hash} was swept");
    }
    let state = server.state();
    for job in state.jobs.values() {
        assert!(blobs.contains(&job.package), "a live job's package is kept");
    }
    server.shutdown().await;
}

#[test]
fn a_missing_run_folder_is_an_archive_failure_not_an_empty_zip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = BlobStore::open(dir.path().join("blobs")).expect("blob store");
    let job_id = JobId(uuid::Uuid::nil());
    let run = fedrun::site::workspace::job_dir(&dir.path().join("server"), job_id);
    let err = archive_folder(&run, &blobs).expect_err("nothing to archive");
    assert!(
        matches!(&err, ArchiveError::RunFolderMissing { path } if *path == run),
        "{err}"
    );
    assert!(
        blobs.list().expect("lists").is_empty(),
        "no empty zip stored"
    );
    // With the folder there, the archive is made and the folder is left for the node.
    std::fs::create_dir_all(&run).expect("run folder");
    std::fs::write(run.join("out.log"), b"done\n").expect("file");
    let hash = archive_folder(&run, &blobs).expect("archive");
    assert!(blobs.contains(&hash));
    assert!(run.join("out.log").is_file(), "archiving removes nothing");
}

/// A wall clock a test can move, backwards too.
struct Jumpy(AtomicI64);

impl Clock for Jumpy {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

#[test]
fn the_server_clock_ignores_wall_clock_jumps_and_never_goes_before_the_history() {
    let wall = Arc::new(Jumpy(AtomicI64::new(1_000_000)));
    // The wall clock is behind the last recorded event: time starts at the event.
    let clock = ServerClock::start_with(
        WallSource::new(wall.clone()),
        Some(Timestamp::from_millis(5_000_000)),
    );
    assert!(clock.now() >= Timestamp::from_millis(5_000_000));
    let clock = ServerClock::start_with(WallSource::new(wall.clone()), None);
    let first = clock.now();
    wall.0.store(0, Ordering::SeqCst);
    let after_back = clock.now();
    assert!(
        after_back >= first,
        "a wall clock jumping back moves nothing"
    );
    wall.0.store(i64::MAX / 2, Ordering::SeqCst);
    let after_forward = clock.now();
    assert!(
        after_forward.as_millis() - first.as_millis() < 60_000,
        "a wall clock jumping forward fires nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_verifies_a_deploy_at_the_job_submit_time_not_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trust = TrustPolicy {
        root_ca: Some(RootCa::load(&trust_dir().join("ca.pem")).expect("test CA")),
        require_signed_jobs: None,
    };
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.trust = trust.clone();
    // The server's time is 2027, inside the certificates' validity.
    let server = Server::start(config, Arc::new(FixedClock)).expect("server starts");
    // The site's own time is 2040, after the certificates ran out (2036): only the
    // submit time the request carries lets it deploy the accepted job.
    let mut site = LocalSiteConfig::new("site-1", dir.path().join("site-1"), BTreeMap::new());
    site.trust = trust;
    site.verify_at = Some(std::time::UNIX_EPOCH + Duration::from_secs(2_208_988_800));
    let handle = attach(&server, site).await;
    let job_id = submit_ok(&server, &signed_copy(dir.path(), "admin.pem")).await;
    let state = wait_for(&server, "the job settled", |s| settled(s, &job_id)).await;
    assert_eq!(
        state.jobs[&job_id].status,
        RunStatus::Completed,
        "{:?}",
        state.jobs[&job_id]
    );
    server.shutdown().await;
    handle.shutdown().await;
}
