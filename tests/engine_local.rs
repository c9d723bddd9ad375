//! End to end with real child processes: a server on sled with local sites runs a job that
//! completes, one that fails, and one that is aborted while running (its process groups are
//! gone afterwards); the workspace archive is in the blob store. Also: a full queue answers
//! admin requests "busy" instead of waiting, and reads come from the published state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod engine_support;

use engine_support::{settled, wait_for};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{AdminError, Server, ServerConfig};
use fedrun::job::JobId;
use fedrun::lifecycle::{AdminRequest, Answer, Archive, Identity, Origin, Role, RunStatus};
use fedrun::site::local::{LocalSite, LocalSiteConfig, SiteHandle};

fn admin() -> Identity {
    Identity {
        name: "alice".into(),
        org: "org".into(),
        role: Role::ProjectAdmin,
    }
}

/// Writes a job folder whose one app runs `script` (sh) everywhere (`@ALL`).
fn job(dir: &Path, name: &str, script: &str) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("app")).expect("job folder");
    std::fs::write(
        root.join("meta.json"),
        format!(r#"{{"name": "{name}", "deploy_map": {{"app": ["@ALL"]}}, "min_clients": 2}}"#),
    )
    .expect("meta.json");
    std::fs::write(
        root.join("app/run.toml"),
        "command = \"sh\"\nargs = [\"run.sh\"]\n",
    )
    .expect("run.toml");
    std::fs::write(root.join("app/run.sh"), script).expect("run.sh");
    root
}

async fn start(dir: &Path, sites: &[&str]) -> (Server, Vec<SiteHandle>) {
    let mut config = ServerConfig::new(&dir.join("data"));
    config.settings.abort_grace = Duration::from_secs(2);
    let server = Server::start(config, Arc::new(WallClock)).expect("server starts");
    let mut handles = Vec::new();
    for name in sites {
        let mut site = LocalSiteConfig::new(name, dir.join("sites").join(name), BTreeMap::new());
        site.abort_grace = Duration::from_secs(2);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let handle = LocalSite::spawn(site, tx);
        server.attach_site(name, handle.requests.clone(), rx);
        handles.push(handle);
    }
    let count = sites.len();
    wait_for(&server, "sites connected", |s| {
        s.connected_sites().count() == count
    })
    .await;
    (server, handles)
}

async fn submit(server: &Server, path: &Path) -> JobId {
    match server
        .submit_path(path, admin(), None)
        .await
        .expect("package accepted")
    {
        Ok(Ok(Answer::Submitted { job_id })) => job_id,
        other => panic!("submit failed: {other:?}"),
    }
}

/// True while a process of the group runs (zombies awaiting their reaper do not count:
/// they run nothing).
fn group_alive(pgid: i32) -> bool {
    fedrun::site::process::group_alive(pgid)
}

fn pgid_in(run_dir: &Path) -> i32 {
    let text = std::fs::read_to_string(fedrun::site::process::record_path(run_dir))
        .expect("process record");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["pgid"].as_i64().expect("pgid") as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_abort_with_real_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, sites) = start(dir.path(), &["site-1", "site-2"]).await;

    let ok = job(dir.path(), "ok", "echo \"$FEDRUN_SITE done\"\nexit 0\n");
    let fail = job(
        dir.path(),
        "fail",
        "if [ \"$FEDRUN_SITE\" = site-2 ]; then exit 1; fi\nsleep 0.3\nexit 0\n",
    );
    let long = job(
        dir.path(),
        "long",
        "trap 'exit 0' TERM\nwhile true; do sleep 1 & wait $!; done\n",
    );
    let ok_id = submit(&server, &ok).await;
    let fail_id = submit(&server, &fail).await;
    let long_id = submit(&server, &long).await;

    let state = wait_for(&server, "ok and fail settled", |s| {
        settled(s, &ok_id) && settled(s, &fail_id)
    })
    .await;
    assert_eq!(state.jobs[&ok_id].status, RunStatus::Completed);
    assert_eq!(*state.jobs[&ok_id].run.job_clients, ["site-1", "site-2"]);
    // SPEC 8: a site report of 1 is recorded and the job ends EXECUTION_EXCEPTION.
    assert_eq!(state.jobs[&fail_id].status, RunStatus::ExecutionException);

    // The workspace archive of the completed job downloads: a zip holding the server
    // app's output, with the package and the meta.
    assert!(matches!(
        state.jobs[&ok_id].archive,
        Archive::Archived { .. }
    ));
    let download = server
        .download(
            Origin {
                identity: admin(),
                request_id: None,
            },
            ok_id,
        )
        .await
        .expect("a finished job downloads");
    assert_eq!(download.meta.name, "ok");
    assert!(zip::ZipArchive::new(std::io::Cursor::new(download.package)).is_ok());
    let bytes = download.workspace.expect("the workspace was archived");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut out = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("stdout.log").expect("stdout.log"),
        &mut out,
    )
    .expect("read");
    assert!(out.contains("server done"), "{out}");

    // A job still running cannot be downloaded (SPEC 9: terminal, archive settled).
    let refused = server
        .download(
            Origin {
                identity: admin(),
                request_id: None,
            },
            long_id,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(fedrun::engine::server::DownloadError::Refused(_))
        ),
        "{refused:?}"
    );
    wait_for(&server, "long running", |s| {
        s.jobs
            .get(&long_id)
            .is_some_and(|j| j.status == RunStatus::Running)
    })
    .await;
    let server_run = fedrun::site::workspace::job_dir(&server.workspace(), long_id);
    let mut groups = vec![pgid_in(&server_run)];
    for site in ["site-1", "site-2"] {
        let root = dir.path().join("sites").join(site);
        groups.push(pgid_in(&fedrun::site::workspace::job_dir(&root, long_id)));
    }
    assert!(
        groups.iter().all(|g| group_alive(*g)),
        "apps run before the abort"
    );
    let answer = server
        .request(
            Origin {
                identity: admin(),
                request_id: Some("abort-long".into()),
            },
            AdminRequest::AbortJob { job_id: long_id },
        )
        .await;
    assert!(
        matches!(answer, Ok(Ok(Answer::Accepted { .. }))),
        "{answer:?}"
    );
    // The status is decided at once (SPEC 9) and read from the published state.
    assert_eq!(server.state().jobs[&long_id].status, RunStatus::Aborted);
    wait_for(&server, "long settled", |s| settled(s, &long_id)).await;
    for pgid in groups {
        assert!(
            !group_alive(pgid),
            "process group {pgid} outlived the abort"
        );
    }
    // The same idempotency key gives the first answer again, not a refusal.
    let again = server
        .request(
            Origin {
                identity: admin(),
                request_id: Some("abort-long".into()),
            },
            AdminRequest::AbortJob { job_id: long_id },
        )
        .await;
    assert_eq!(again, answer);

    server.shutdown().await;
    for site in sites {
        site.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_answers_busy_instead_of_waiting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.queue_capacity = 1;
    let server = Server::start(config, Arc::new(WallClock)).expect("server starts");
    let clone = |n: u8| AdminRequest::CloneJob {
        job_id: JobId(uuid::Uuid::from_u128(u128::from(n))),
    };
    let origin = || Origin {
        identity: admin(),
        request_id: None,
    };
    // On this single-threaded runtime the engine task has not run yet, so the first
    // request fills the one-slot queue and the second finds it full.
    let first = server.try_request(origin(), clone(1)).expect("queued");
    let second = server.try_request(origin(), clone(2));
    assert_eq!(second.err(), Some(AdminError::Busy));
    // The queued one is answered (a typed refusal: there is no such job).
    let answer = first.await.expect("answered");
    assert!(matches!(answer, Ok(Err(_))), "{answer:?}");
    server.shutdown().await;
}

/// Apps that exit at once, job after job: the server app's exit must never overtake the
/// report of its start (it did once, and the exit was dropped, leaving the job RUNNING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_apps_complete_every_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, sites) = start(dir.path(), &["site-1", "site-2"]).await;
    let instant = job(dir.path(), "instant", "exit 0\n");
    for round in 0..20 {
        let id = submit(&server, &instant).await;
        let state = wait_for(&server, &format!("round {round} finished"), |s| {
            s.jobs.get(&id).is_some_and(|j| j.status.is_terminal())
        })
        .await;
        assert_eq!(
            state.jobs[&id].status,
            RunStatus::Completed,
            "round {round}"
        );
    }
    server.shutdown().await;
    for site in sites {
        site.shutdown().await;
    }
}
