//! The local site with real child processes: the protocol round trip (resources, deploy,
//! start, exit), stop, delete, refused deploys, the resource ledger through the protocol,
//! acknowledgements and resends, and re-attach after a site restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fedrun::job::JobId;
use fedrun::site::local::{exit_report_id, LocalSite, LocalSiteConfig, SiteHandle};
use fedrun::site::process::{self, group_alive};
use fedrun::site::protocol::{ExitOutcome, SiteReport, SiteRequest};
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(30);
const SITE: &str = "site-1";

fn job(n: u8) -> JobId {
    JobId(uuid::Uuid::from_bytes([n; 16]))
}

fn gpus(n: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("num_of_gpus".to_string(), n)])
}

/// A job zip: `meta.json` and the app `app` whose `run.sh` is `script`, plus `extra`
/// entries (name, contents) added as they are.
fn package_with(script: &str, extra: &[(&str, &str)]) -> Arc<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut files: Vec<(String, String)> = vec![
        (
            "meta.json".into(),
            r#"{"name":"t","deploy_map":{"app":["@ALL"]}}"#.into(),
        ),
        (
            "app/run.toml".into(),
            "command = \"sh\"\nargs = [\"run.sh\"]\n".into(),
        ),
        ("app/run.sh".into(), script.into()),
    ];
    files.extend(extra.iter().map(|(n, c)| (n.to_string(), c.to_string())));
    for (name, contents) in files {
        writer.start_file(name, options).expect("start entry");
        writer.write_all(contents.as_bytes()).expect("write entry");
    }
    Arc::new(writer.finish().expect("finish zip").into_inner())
}

fn package(script: &str) -> Arc<Vec<u8>> {
    package_with(script, &[])
}

struct Site {
    _root: tempfile::TempDir,
    workspace: PathBuf,
    handle: SiteHandle,
    reports: mpsc::Receiver<(String, SiteReport)>,
}

fn config(workspace: &Path) -> LocalSiteConfig {
    let mut config = LocalSiteConfig::new(SITE, workspace.to_path_buf(), gpus(2.0));
    config.abort_grace = Duration::from_millis(300);
    config
}

/// Spawns a site on a fresh workspace and checks its first report.
async fn site() -> Site {
    let root = tempfile::tempdir().expect("temp dir");
    let workspace = root.path().join("ws");
    let (tx, mut reports) = mpsc::channel(64);
    let handle = LocalSite::spawn(config(&workspace), tx);
    match next(&mut reports).await {
        SiteReport::Connected { resources, running } => {
            assert_eq!(resources, gpus(2.0));
            assert!(running.is_empty());
        }
        other => panic!("expected Connected first, got {other:?}"),
    }
    Site {
        _root: root,
        workspace,
        handle,
        reports,
    }
}

async fn next(reports: &mut mpsc::Receiver<(String, SiteReport)>) -> SiteReport {
    let (name, report) = tokio::time::timeout(BOUND, reports.recv())
        .await
        .expect("a report within the bound")
        .expect("the site is alive");
    assert_eq!(name, SITE);
    report
}

impl Site {
    async fn send(&self, request: SiteRequest) {
        self.handle
            .requests
            .send(request)
            .await
            .expect("site alive");
    }

    async fn next(&mut self) -> SiteReport {
        next(&mut self.reports).await
    }

    async fn check(&mut self, job_id: JobId, amount: f64) -> Result<String, String> {
        self.send(SiteRequest::CheckResources {
            try_id: 7,
            job_id,
            resources: gpus(amount),
        })
        .await;
        match self.next().await {
            SiteReport::ResourceAnswer {
                try_id: 7,
                job_id: j,
                answer,
            } if j == job_id => answer,
            other => panic!("expected a resource answer, got {other:?}"),
        }
    }

    async fn deploy(&mut self, job_id: JobId, package: Arc<Vec<u8>>) -> Result<(), String> {
        self.send(SiteRequest::Deploy {
            job_id,
            app_name: "app".into(),
            package,
            hash: fedrun::lifecycle::BlobHash([0; 32]),
            verify_at: None,
        })
        .await;
        match self.next().await {
            SiteReport::DeployAnswer { job_id: j, result } if j == job_id => result,
            other => panic!("expected a deploy answer, got {other:?}"),
        }
    }

    async fn start(&mut self, job_id: JobId) -> Result<(), String> {
        self.send(SiteRequest::Start { job_id }).await;
        match self.next().await {
            SiteReport::StartAnswer { job_id: j, result } if j == job_id => result,
            other => panic!("expected a start answer, got {other:?}"),
        }
    }

    async fn exited(&mut self, job_id: JobId) -> ExitOutcome {
        match self.next().await {
            SiteReport::AppExited {
                job_id: j,
                report_id,
                outcome,
                ..
            } if j == job_id => {
                assert_eq!(report_id, exit_report_id(SITE, job_id));
                outcome
            }
            other => panic!("expected an exit report, got {other:?}"),
        }
    }

    fn run_dir(&self, job_id: JobId) -> PathBuf {
        self.workspace.join(job_id.to_string())
    }

    fn pgid(&self, job_id: JobId) -> i32 {
        let record: process::ProcessRecord = serde_json::from_slice(
            &std::fs::read(process::record_path(&self.run_dir(job_id))).expect("record"),
        )
        .expect("valid record");
        record.pgid
    }
}

/// An app that says it is ready through the pipe `ready` in its run folder, then waits.
const WAITS_AFTER_READY: &str = "trap 'exit 0' TERM\n\
     echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
     sleep 1000 & wait\n";

/// Makes the pipe `ready` in the job's run folder and returns a future that reads it.
async fn ready_pipe(site: &Site, job_id: JobId) -> tokio::task::JoinHandle<String> {
    let dir = site.run_dir(job_id);
    std::fs::create_dir_all(&dir).expect("run dir");
    let path = dir.join("ready");
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    tokio::task::spawn_blocking(move || std::fs::read_to_string(path).expect("read pipe"))
}

async fn bounded<T>(handle: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(BOUND, handle)
        .await
        .expect("within the bound")
        .expect("join")
}

#[tokio::test]
async fn a_job_runs_from_reservation_to_exit_and_frees_its_resources() {
    let mut site = site().await;
    let j = job(1);
    let token = site.check(j, 2.0).await.expect("two GPUs free");
    assert!(token.starts_with("site-1-"));
    site.deploy(j, package("echo \"$FEDRUN_SITE\"\nexit 0\n"))
        .await
        .expect("deploys");
    assert!(site.run_dir(j).join("app").join("run.toml").is_file());
    site.start(j).await.expect("starts");
    assert_eq!(site.exited(j).await, ExitOutcome::Code(0));
    let out =
        std::fs::read_to_string(site.run_dir(j).join(process::STDOUT_FILE)).expect("stdout log");
    assert_eq!(out, "site-1\n");
    // The exit freed both GPUs.
    site.check(job(2), 2.0).await.expect("freed at exit");
}

#[tokio::test]
async fn failing_apps_report_their_codes() {
    let mut site = site().await;
    for (n, code) in [(1u8, 1), (2, 101), (3, 104)] {
        let j = job(n);
        site.deploy(j, package(&format!("exit {code}\n")))
            .await
            .expect("deploys");
        site.start(j).await.expect("starts");
        assert_eq!(site.exited(j).await, ExitOutcome::Code(code));
    }
}

#[tokio::test]
async fn stop_asks_then_kills_and_the_group_is_gone() {
    let mut site = site().await;
    // Honours TERM: ends with its own exit code 0.
    let j = job(1);
    site.deploy(j, package(WAITS_AFTER_READY))
        .await
        .expect("deploys");
    let ready = ready_pipe(&site, j).await;
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");
    let pgid = site.pgid(j);
    site.send(SiteRequest::Stop { job_id: j }).await;
    assert_eq!(site.exited(j).await, ExitOutcome::Code(0));
    assert!(!group_alive(pgid));

    // Ignores TERM: killed after the grace.
    let j = job(2);
    site.deploy(
        j,
        package(
            "trap '' TERM\n\
             echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
             sleep 1000 & wait\n",
        ),
    )
    .await
    .expect("deploys");
    let ready = ready_pipe(&site, j).await;
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");
    let pgid = site.pgid(j);
    site.send(SiteRequest::Stop { job_id: j }).await;
    assert_eq!(site.exited(j).await, ExitOutcome::Signal(libc::SIGKILL));
    assert!(!group_alive(pgid));
}

#[tokio::test]
async fn delete_kills_the_app_and_removes_its_folder() {
    let mut site = site().await;
    let j = job(1);
    site.check(j, 1.0).await.expect("free");
    site.deploy(j, package(WAITS_AFTER_READY))
        .await
        .expect("deploys");
    let ready = ready_pipe(&site, j).await;
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");
    let pgid = site.pgid(j);
    site.send(SiteRequest::Delete { job_id: j }).await;
    // The app was killed without grace; its end is still reported.
    assert_eq!(site.exited(j).await, ExitOutcome::Signal(libc::SIGKILL));
    assert!(!group_alive(pgid));
    // Requests are handled in order, so once the next answer arrives the delete is done.
    site.check(job(2), 2.0).await.expect("resources freed");
    assert!(!site.run_dir(j).exists());
    assert_eq!(
        site.start(j).await,
        Err(format!("job {j} is not deployed at this site"))
    );
}

#[tokio::test]
async fn unsafe_or_incomplete_packages_are_refused_and_write_nothing_outside() {
    let mut site = site().await;
    let j = job(1);
    let err = site
        .deploy(j, package_with("exit 0\n", &[("../evil.txt", "x")]))
        .await
        .expect_err("parent path refused");
    assert!(err.contains("../evil.txt"), "{err}");
    assert!(!site.workspace.join("evil.txt").exists());
    assert!(!site.run_dir(j).join("app").exists());

    let err = site
        .deploy(j, package_with("exit 0\n", &[("/abs.txt", "x")]))
        .await
        .expect_err("absolute path refused");
    assert!(err.contains("abs.txt"), "{err}");

    let err = site
        .deploy(j, Arc::new(b"not a zip".to_vec()))
        .await
        .expect_err("garbage refused");
    assert!(err.contains("not a zip"), "{err}");

    site.send(SiteRequest::Deploy {
        job_id: j,
        app_name: "other".into(),
        package: package("exit 0\n"),
        hash: fedrun::lifecycle::BlobHash([0; 32]),
        verify_at: None,
    })
    .await;
    match site.next().await {
        SiteReport::DeployAnswer { result, .. } => {
            assert_eq!(
                result,
                Err("app \"other\" is not in the job package".to_string())
            )
        }
        other => panic!("expected a deploy answer, got {other:?}"),
    }
    assert_eq!(
        site.start(j).await,
        Err(format!("job {j} is not deployed at this site"))
    );
}

#[tokio::test]
async fn symlink_entries_are_refused() {
    let mut site = site().await;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    writer.start_file("meta.json", options).expect("entry");
    writer.write_all(b"{}").expect("write");
    writer.start_file("app/run.toml", options).expect("entry");
    writer.write_all(b"command = \"sh\"\n").expect("write");
    writer
        .add_symlink("app/link", "/etc/passwd", options)
        .expect("symlink entry");
    let bytes = Arc::new(writer.finish().expect("zip").into_inner());
    let err = site.deploy(job(1), bytes).await.expect_err("refused");
    assert!(err.contains("symbolic link"), "{err}");
}

#[tokio::test]
async fn a_script_named_by_the_run_file_keeps_its_execute_bit() {
    let mut site = site().await;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    for (name, contents) in [
        ("app/run.sh", "#!/bin/sh\nexit 7\n"),
        ("app/run.toml", "command = \"./run.sh\"\n"),
        ("meta.json", "{}"),
    ] {
        writer.start_file(name, options).expect("entry");
        writer.write_all(contents.as_bytes()).expect("write");
    }
    let bytes = Arc::new(writer.finish().expect("zip").into_inner());
    let j = job(1);
    site.deploy(j, bytes).await.expect("deploys");
    site.start(j).await.expect("starts");
    assert_eq!(site.exited(j).await, ExitOutcome::Code(7));
}

#[tokio::test]
async fn an_app_without_a_run_file_is_refused_at_deploy() {
    let mut site = site().await;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, contents) in [("app/run.sh", "exit 0\n"), ("meta.json", "{}")] {
        writer.start_file(name, options).expect("entry");
        writer.write_all(contents.as_bytes()).expect("write");
    }
    let bytes = Arc::new(writer.finish().expect("zip").into_inner());
    let err = site.deploy(job(1), bytes).await.expect_err("refused");
    assert!(err.contains("run.toml"), "{err}");
    assert!(!site.run_dir(job(1)).join("app").exists());
}

#[tokio::test]
async fn reservations_refuse_when_full_and_cancel_gives_back() {
    let mut site = site().await;
    let token = site.check(job(1), 2.0).await.expect("free");
    let refused = site.check(job(2), 1.0).await.expect_err("full");
    assert_eq!(
        refused,
        "not enough free resources: num_of_gpus: asked 1, free 0 of 2"
    );
    site.send(SiteRequest::CancelReservation {
        job_id: job(1),
        token,
    })
    .await;
    site.check(job(2), 2.0).await.expect("cancelled");
}

#[tokio::test(start_paused = true)]
async fn a_reservation_lapses_after_the_timeout_unless_the_job_starts() {
    let mut site = site().await;
    site.check(job(1), 2.0).await.expect("free");
    tokio::time::advance(Duration::from_secs(29)).await;
    site.check(job(2), 1.0).await.expect_err("still reserved");
    tokio::time::advance(Duration::from_secs(1)).await;
    site.check(job(2), 2.0)
        .await
        .expect("lapsed after reservation_timeout (30 s)");
}

#[tokio::test]
async fn unacknowledged_reports_are_resent_on_reconnect_until_acknowledged() {
    let mut site = site().await;
    let j = job(1);
    site.deploy(j, package("exit 1\n")).await.expect("deploys");
    site.start(j).await.expect("starts");
    assert_eq!(site.exited(j).await, ExitOutcome::Code(1));

    site.handle.disconnect();
    assert!(matches!(site.next().await, SiteReport::Disconnected));
    site.handle.reconnect();
    assert!(matches!(site.next().await, SiteReport::Connected { .. }));
    assert_eq!(site.exited(j).await, ExitOutcome::Code(1), "resent");

    site.send(SiteRequest::Acknowledge {
        report_id: exit_report_id(SITE, j),
    })
    .await;
    // Requests are handled in order, but the connection controls are a separate channel:
    // wait for this answer so the acknowledgement is recorded before the disconnect.
    site.check(job(2), 1.0).await.expect("free");
    site.handle.disconnect();
    assert!(matches!(site.next().await, SiteReport::Disconnected));
    site.handle.reconnect();
    assert!(matches!(site.next().await, SiteReport::Connected { .. }));
    // The very next report answers this check: nothing was resent before it.
    site.check(job(3), 1.0).await.expect("free");
}

#[tokio::test]
async fn a_restarted_site_reattaches_to_its_running_app() {
    let mut site = site().await;
    let j = job(1);
    site.check(j, 2.0).await.expect("free");
    site.deploy(
        j,
        package(
            "echo ready > \"$FEDRUN_WORKSPACE/ready\"\n\
             read line < \"$FEDRUN_WORKSPACE/release\"\n\
             exit 3\n",
        ),
    )
    .await
    .expect("deploys");
    let ready = ready_pipe(&site, j).await;
    let release = site.run_dir(j).join("release");
    let c_path = std::ffi::CString::new(release.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo reads a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");

    // The site goes down; its app keeps running.
    let Site {
        _root,
        workspace,
        handle,
        reports,
    } = site;
    handle.shutdown().await;
    drop(reports);
    let (tx, rx) = mpsc::channel(64);
    let handle = LocalSite::spawn(config(&workspace), tx);
    let mut site = Site {
        _root,
        workspace,
        handle,
        reports: rx,
    };
    match site.next().await {
        SiteReport::Connected { running, .. } => assert_eq!(running, vec![j]),
        other => panic!("expected Connected, got {other:?}"),
    }
    // The restored ledger still holds the running job's two GPUs.
    site.check(job(2), 1.0).await.expect_err("held by the job");

    let write = tokio::task::spawn_blocking(move || std::fs::write(release, "go\n"));
    bounded(write).await.expect("write pipe");
    assert_eq!(site.exited(j).await, ExitOutcome::Code(3));
    site.check(job(2), 2.0).await.expect("freed at exit");
}

#[tokio::test]
async fn a_restarted_site_reports_exits_it_missed_unless_acknowledged() {
    let mut site = site().await;
    let (j1, j2) = (job(1), job(2));
    for j in [j1, j2] {
        site.deploy(j, package("exit 101\n"))
            .await
            .expect("deploys");
        site.start(j).await.expect("starts");
        assert_eq!(site.exited(j).await, ExitOutcome::Code(101));
    }
    site.send(SiteRequest::Acknowledge {
        report_id: exit_report_id(SITE, j1),
    })
    .await;
    // Handled in order: once this answer arrives, the acknowledgement is recorded.
    site.check(job(3), 1.0).await.expect("free");
    let Site {
        _root,
        workspace,
        handle,
        ..
    } = site;
    handle.shutdown().await;
    let (tx, mut rx) = mpsc::channel(64);
    let _handle = LocalSite::spawn(config(&workspace), tx);
    assert!(matches!(next(&mut rx).await, SiteReport::Connected { .. }));
    match next(&mut rx).await {
        SiteReport::AppExited {
            job_id, outcome, ..
        } => {
            assert_eq!(job_id, j2, "only the unacknowledged exit is reported again");
            assert_eq!(outcome, ExitOutcome::Code(101));
        }
        other => panic!("expected an exit report, got {other:?}"),
    }
}

#[tokio::test]
async fn an_orderly_shutdown_stops_running_apps_and_reports_them() {
    let mut site = site().await;
    let j = job(1);
    site.deploy(j, package(WAITS_AFTER_READY))
        .await
        .expect("deploys");
    let ready = ready_pipe(&site, j).await;
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");
    let pgid = site.pgid(j);
    let Site {
        _root,
        handle,
        mut reports,
        ..
    } = site;
    tokio::time::timeout(BOUND, handle.stop_apps_and_shutdown())
        .await
        .expect("shuts down within the bound");
    // The app honoured TERM; its exit was reported before the site ended.
    match next(&mut reports).await {
        SiteReport::AppExited {
            job_id, outcome, ..
        } => {
            assert_eq!(job_id, j);
            assert_eq!(outcome, ExitOutcome::Code(0));
        }
        other => panic!("expected an exit report, got {other:?}"),
    }
    assert!(!group_alive(pgid));
    assert!(
        reports.recv().await.is_none(),
        "the site ended and dropped its sender"
    );
}

/// Shuts the site down as a crash would (apps keep running) and spawns a new one on the
/// same workspace with `config`; returns it after its `Connected`, and what it runs.
async fn restart(site: Site, config: LocalSiteConfig) -> (Site, Vec<JobId>) {
    let Site {
        _root,
        workspace,
        handle,
        reports,
    } = site;
    handle.shutdown().await;
    drop(reports);
    let (tx, mut rx) = mpsc::channel(64);
    let handle = LocalSite::spawn(config, tx);
    let running = match next(&mut rx).await {
        SiteReport::Connected { running, .. } => running,
        other => panic!("expected Connected, got {other:?}"),
    };
    let site = Site {
        _root,
        workspace,
        handle,
        reports: rx,
    };
    (site, running)
}

#[tokio::test]
async fn an_app_that_rewrites_its_run_folder_cannot_free_its_resources_at_a_restart() {
    let mut site = site().await;
    let j = job(1);
    site.check(j, 2.0).await.expect("free");
    let script = format!(
        "for f in \"$FEDRUN_WORKSPACE\"/*.json; do printf '{{}}' > \"$f\"; done\n\
         printf '{{}}' > \"$FEDRUN_WORKSPACE/resources.json\"\n{WAITS_AFTER_READY}"
    );
    site.deploy(j, package(&script)).await.expect("deploys");
    let ready = ready_pipe(&site, j).await;
    site.start(j).await.expect("starts");
    assert_eq!(bounded(ready).await, "ready\n");
    let workspace = site.workspace.clone();
    let (mut site, running) = restart(site, config(&workspace)).await;
    assert_eq!(running, vec![j]);
    site.check(job(2), 1.0)
        .await
        .expect_err("the running job still holds both GPUs");
    site.send(SiteRequest::Stop { job_id: j }).await;
    assert_eq!(site.exited(j).await, ExitOutcome::Code(0));
}

#[tokio::test]
async fn apps_see_the_names_in_app_env_pass_and_no_other_variable_of_the_site() {
    // Names no other test uses, so setting them here races with nothing.
    std::env::set_var("SITE_LOCAL_TEST_SECRET", "hunter2");
    std::env::set_var("SITE_LOCAL_TEST_PASSED", "visible");
    let root = tempfile::tempdir().expect("temp dir");
    let workspace = root.path().join("ws");
    let mut config = config(&workspace);
    config.app_env_pass = vec!["SITE_LOCAL_TEST_PASSED".to_string()];
    let (tx, reports) = mpsc::channel(64);
    let handle = LocalSite::spawn(config, tx);
    let mut site = Site {
        _root: root,
        workspace,
        handle,
        reports,
    };
    assert!(matches!(site.next().await, SiteReport::Connected { .. }));
    let j = job(1);
    site.deploy(j, package("env > \"$FEDRUN_WORKSPACE/env\"\n"))
        .await
        .expect("deploys");
    site.start(j).await.expect("starts");
    assert_eq!(site.exited(j).await, ExitOutcome::Code(0));
    let env = std::fs::read_to_string(site.run_dir(j).join("env")).expect("env dump");
    assert!(env.lines().any(|l| l == "SITE_LOCAL_TEST_PASSED=visible"));
    assert!(
        !env.contains("SITE_LOCAL_TEST_SECRET"),
        "the secret reached the app"
    );
    assert!(env.lines().any(|l| l.starts_with("PATH=")));
}
