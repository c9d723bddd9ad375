//! The demo's example jobs, run for real: each example folder is ingested as submit does,
//! deployed to a local site and to a server run folder, and started; the exits are the
//! ones the demo relies on (complete: 0 everywhere; fail: the site exits 101 and the server app ends on
//! fedrun's stop; long-running: runs until stopped and then exits 0 on TERM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedrun::job::limits::Limits;
use fedrun::job::JobId;
use fedrun::site::local::{LocalSite, LocalSiteConfig};
use fedrun::site::process::{self, AppLaunch, AppProcess, ProcessEnd};
use fedrun::site::protocol::{ExitOutcome, SiteReport, SiteRequest};
use fedrun::site::workspace;
use fedrun::trust::TrustPolicy;
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(30);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// The example's canonical package, exactly as submit stores it.
fn canonical_package(dir: &Path) -> Arc<Vec<u8>> {
    let package = fedrun::job::package::ingest(dir, &Limits::default()).expect("valid example");
    Arc::new(package.zip)
}

fn job(n: u8) -> JobId {
    JobId(uuid::Uuid::from_bytes([n; 16]))
}

/// Deploys and starts the example's app for the server, as the engine does for its own app.
fn start_server_app(root: &Path, job_id: JobId, package: &[u8]) -> AppProcess {
    let policy = TrustPolicy {
        root_ca: None,
        require_signed_jobs: None,
    };
    let deployed = workspace::deploy_app(
        root,
        job_id,
        "app",
        package,
        &Limits::default(),
        &policy,
        std::time::SystemTime::now(),
    )
    .expect("server deploy");
    process::start(&AppLaunch {
        job_id,
        site: "server".into(),
        run_dir: workspace::job_dir(root, job_id),
        app_dir: deployed.app_dir,
    })
    .expect("server start")
}

async fn server_end(app: &AppProcess) -> ProcessEnd {
    tokio::time::timeout(BOUND, app.wait())
        .await
        .expect("server app ends within the bound")
        .expect("end reported")
}

struct Run {
    _root: tempfile::TempDir,
    server_root: PathBuf,
    site_root: PathBuf,
    requests: mpsc::Sender<SiteRequest>,
    reports: mpsc::Receiver<(String, SiteReport)>,
}

async fn run() -> Run {
    let root = tempfile::tempdir().expect("temp dir");
    let server_root = root.path().join("server");
    let site_root = root.path().join("site-1");
    let (tx, mut reports) = mpsc::channel(64);
    let handle = LocalSite::spawn(
        LocalSiteConfig::new("site-1", site_root.clone(), BTreeMap::new()),
        tx,
    );
    assert!(matches!(
        next(&mut reports).await,
        SiteReport::Connected { .. }
    ));
    Run {
        _root: root,
        server_root,
        site_root,
        requests: handle.requests.clone(),
        reports,
    }
}

async fn next(reports: &mut mpsc::Receiver<(String, SiteReport)>) -> SiteReport {
    tokio::time::timeout(BOUND, reports.recv())
        .await
        .expect("report within the bound")
        .expect("site alive")
        .1
}

impl Run {
    async fn deploy_and_start_site(&mut self, job_id: JobId, package: Arc<Vec<u8>>) {
        self.requests
            .send(SiteRequest::Deploy {
                job_id,
                app_name: "app".into(),
                package,
                hash: fedrun::lifecycle::BlobHash([0; 32]),
                verify_at: None,
            })
            .await
            .expect("site alive");
        match next(&mut self.reports).await {
            SiteReport::DeployAnswer { result, .. } => result.expect("site deploy"),
            other => panic!("expected a deploy answer, got {other:?}"),
        }
        self.requests
            .send(SiteRequest::Start { job_id })
            .await
            .expect("site alive");
        match next(&mut self.reports).await {
            SiteReport::StartAnswer { result, .. } => result.expect("site start"),
            other => panic!("expected a start answer, got {other:?}"),
        }
    }

    async fn site_exit(&mut self) -> ExitOutcome {
        match next(&mut self.reports).await {
            SiteReport::AppExited { outcome, .. } => outcome,
            other => panic!("expected an exit report, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn hello_complete_exits_zero_everywhere() {
    let mut run = run().await;
    let package = canonical_package(&example("hello-complete"));
    let j = job(1);
    let server = start_server_app(&run.server_root, j, &package);
    run.deploy_and_start_site(j, package).await;
    assert_eq!(run.site_exit().await, ExitOutcome::Code(0));
    assert_eq!(
        server_end(&server).await,
        ProcessEnd {
            outcome: ExitOutcome::Code(0),
            stop_requested: false
        }
    );
    let log = std::fs::read_to_string(run.site_root.join(j.to_string()).join("stdout.log"))
        .expect("site log");
    assert!(log.contains("site-1: done"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_fail_site_raises_and_the_server_app_ends_on_stop() {
    let mut run = run().await;
    let package = canonical_package(&example("hello-fail"));
    let j = job(2);
    let mut server_log = stream_log(&run.server_root, j);
    let server = start_server_app(&run.server_root, j, &package);
    // Its TERM handler is set before it says it waits.
    line_containing(&mut server_log, "server: waiting for sites").await;
    run.deploy_and_start_site(j, package).await;
    assert_eq!(run.site_exit().await, ExitOutcome::Code(101));
    // The engine stops the run after a 101; the server app ends on that stop.
    server.stop(Duration::from_secs(10));
    line_containing(&mut server_log, "server: stopped by fedrun").await;
    assert_eq!(
        server_end(&server).await,
        ProcessEnd {
            outcome: ExitOutcome::Code(0),
            stop_requested: true
        }
    );
}

/// Makes the `stdout.log` of `job_id` under `root` a named pipe and streams its lines, so the
/// test can wait for what the app prints instead of guessing how long it takes.
fn stream_log(root: &Path, job_id: JobId) -> mpsc::UnboundedReceiver<String> {
    let dir = root.join(job_id.to_string());
    std::fs::create_dir_all(&dir).expect("run dir");
    let path = dir.join(process::STDOUT_FILE);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let file = std::fs::File::open(path).expect("open pipe");
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn line_containing(lines: &mut mpsc::UnboundedReceiver<String>, text: &str) {
    loop {
        let line = tokio::time::timeout(BOUND, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{text:?} printed within the bound"))
            .unwrap_or_else(|| panic!("log ended before {text:?}"));
        if line.contains(text) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_running_runs_until_stopped_and_exits_on_term() {
    let mut run = run().await;
    let package = canonical_package(&example("long-running"));
    let j = job(3);
    let mut log = stream_log(&run.site_root, j);
    run.deploy_and_start_site(j, package).await;
    // Its TERM handler is set before it prints its first round.
    line_containing(&mut log, "site-1: round 2").await;
    let pgid = {
        let record: process::ProcessRecord = serde_json::from_slice(
            &std::fs::read(process::record_path(&run.site_root.join(j.to_string())))
                .expect("record"),
        )
        .expect("valid record");
        record.pgid
    };
    assert!(process::group_alive(pgid), "still running after two rounds");
    run.requests
        .send(SiteRequest::Stop { job_id: j })
        .await
        .expect("site alive");
    line_containing(&mut log, "site-1: stop requested").await;
    // The site's default abort grace is 10 s; the app saves and exits well within it.
    assert_eq!(run.site_exit().await, ExitOutcome::Code(0));
    assert!(!process::group_alive(pgid));
    let last_round: u32 =
        std::fs::read_to_string(run.site_root.join(j.to_string()).join("last_round"))
            .expect("saved state")
            .trim()
            .parse()
            .expect("a round number");
    assert!(last_round >= 2);
}
