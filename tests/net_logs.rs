//! `fedrun logs` (SPEC sections 9 and 11) against a federation over real mutual TLS on
//! loopback, in one process: an app that prints known lines at the server and at two site
//! agents; its output read through the server's admin API with the admins' kits, and
//! through the `fedrun logs` binary. Checked against the log files on disk and the
//! recorded history.

#[path = "engine_support/mod.rs"]
mod engine_support;
mod proc_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use engine_support::{settled, wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::job::JobId;
use fedrun::lifecycle::{Answer, Identity, Role, RunStatus};
use fedrun::net::agent::{Agent, AgentConfig};
use fedrun::net::client::{Client, ClientError};
use fedrun::net::kit::Kit;
use fedrun::net::serve::{start, ServeOptions, Serving};
use fedrun::net::wire::WireConfig;
use fedrun::site::local::LocalSiteConfig;
use fedrun::site::logs::LOG_CHUNK_MAX;
use fedrun::trust::provision::{provision, Project, ProvisionOptions};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use proc_support::{kill_apps_under, processes_under};

const SITES: [&str; 2] = ["site-1", "site-2"];

/// What site-1's app writes to its standard error after its first line: enough for many
/// chunks.
const BIG_BYTES: usize = 3_000_000;

const PROJECT: &str = r#"
name = "logs"
[server]
host = "localhost"
org = "ops"
[[site]]
name = "site-1"
org = "org-s1"
[[site]]
name = "site-2"
org = "org-s2"
[[admin]]
name = "lead-a"
org = "org-a"
role = "lead"
[[admin]]
name = "lead-b"
org = "org-b"
role = "lead"
[[admin]]
name = "orgadmin-a"
org = "org-a"
role = "org_admin"
[[admin]]
name = "member-a"
org = "org-a"
role = "member"
"#;

/// The app: a first line, a line with a terminal escape, a line on standard error (and,
/// at site-1, [`BIG_BYTES`] more), then it waits for the gate file and prints one more
/// line.
const RUN_SH: &str = r#"#!/bin/sh
echo "first line from $FEDRUN_SITE"
printf 'an escape \033[2J in the output\n'
echo "error line from $FEDRUN_SITE" >&2
if [ "$FEDRUN_SITE" = site-1 ]; then
    head -c 3000000 /dev/zero | tr '\0' x >&2
fi
while [ ! -e "$GATE" ]; do sleep 0.05; done
echo "after the gate from $FEDRUN_SITE"
exit 0
"#;

fn wire() -> WireConfig {
    WireConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        ..WireConfig::default()
    }
}

struct Federation {
    dir: tempfile::TempDir,
    server: Server,
    serving: Option<Serving>,
}

impl Federation {
    async fn start() -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let project: Project = PROJECT.parse().expect("project");
        provision(
            &project,
            &dir.path().join("kits"),
            ProvisionOptions {
                force: false,
                now: SystemTime::now(),
            },
        )
        .expect("provision");
        let mut config = ServerConfig::new(&dir.path().join("data"));
        config.settings.abort_grace = Duration::from_secs(2);
        config.settings.min_schedule_interval = Duration::from_secs(1);
        let server = Server::start(config, Arc::new(WallClock)).expect("server");
        let kit = Kit::load(&dir.path().join("kits/localhost")).expect("server kit");
        let serving = start(
            &kit,
            server.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            ServeOptions { wire: wire() },
        )
        .await
        .expect("serve");
        Federation {
            dir,
            server,
            serving: Some(serving),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.serving.as_ref().expect("serving").local_addr()
    }

    fn kit_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("kits").join(name)
    }

    fn site_root(&self, site: &str) -> PathBuf {
        self.dir.path().join("sites").join(site)
    }

    fn agent(&self, name: &str) -> Agent {
        let mut site = LocalSiteConfig::new(name, self.site_root(name), Default::default());
        site.abort_grace = Duration::from_secs(2);
        let kit = Kit::load(&self.kit_dir(name)).expect("site kit");
        let mut config = AgentConfig::new(kit, site);
        config.server = self.addr().to_string();
        config.wire = wire();
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        Agent::spawn(config).expect("agent")
    }

    fn client(&self, admin: &str) -> Client {
        Client::from_kit(&self.kit_dir(admin), Some(&self.addr().to_string()))
            .expect("admin client")
    }
}

/// A failed test must not leave its apps running.
impl Drop for Federation {
    fn drop(&mut self) {
        kill_apps_under(self.dir.path());
    }
}

fn lead_a() -> Identity {
    Identity {
        name: "lead-a".into(),
        org: "org-a".into(),
        role: Role::Lead,
    }
}

fn logs_job(dir: &Path, gate: &Path) -> PathBuf {
    logs_job_with(
        dir,
        gate,
        r#"{"name": "logs-job", "deploy_map": {"app": ["@ALL"]}, "min_clients": 2}"#,
    )
}

fn logs_job_with(dir: &Path, gate: &Path, meta: &str) -> PathBuf {
    let job = dir.join("logs-job");
    std::fs::create_dir_all(job.join("app")).expect("job folder");
    std::fs::write(job.join("meta.json"), meta).expect("meta");
    std::fs::write(job.join("app/run.sh"), RUN_SH).expect("run.sh");
    std::fs::write(
        job.join("app/run.toml"),
        format!(
            "command = \"sh\"\nargs = [\"run.sh\"]\n[env]\nGATE = {:?}\n",
            gate.display().to_string()
        ),
    )
    .expect("run.toml");
    job
}

/// A whole answer: the bytes and the largest frame seen.
async fn get(client: &Client, path: &str) -> Result<(Vec<u8>, usize), ClientError> {
    let response = tokio::time::timeout(BOUND, client.send(Method::GET, path, &[], Bytes::new()))
        .await
        .expect("answered in time")?;
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let mut largest = 0;
    tokio::time::timeout(BOUND, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("the body arrives whole").into_data() {
                largest = largest.max(data.len());
                bytes.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("the body ends in time");
    Ok((bytes, largest))
}

fn refused_code(result: Result<(Vec<u8>, usize), ClientError>) -> (StatusCode, String) {
    match result {
        Err(ClientError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {:?}", other.map(|(b, _)| b.len())),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Reads (bounded) until the answer holds `needle`.
async fn read_until(client: &Client, path: &str, needle: &str) -> Vec<u8> {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok((bytes, _)) = get(client, path).await {
            if contains(&bytes, needle) {
                return bytes;
            }
        }
        assert!(Instant::now() < deadline, "{path} never held {needle:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fedrun_logs(fed: &Federation, admin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .env_remove("FEDRUN_KIT")
        .env_remove("FEDRUN_LOG")
        .arg("logs")
        .args(args)
        .arg("--kit")
        .arg(fed.kit_dir(admin))
        .args(["--server", &fed.addr().to_string()])
        .output()
        .expect("fedrun runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_output_is_read_through_the_server_with_the_roles_of_spec_section_9() {
    let fed = Federation::start().await;
    let agents: Vec<Agent> = SITES.iter().map(|s| fed.agent(s)).collect();
    wait_for(&fed.server, "both sites connected", |s| {
        s.connected_sites().count() == SITES.len()
    })
    .await;
    let gate = fed.dir.path().join("gate");
    let job_dir = logs_job(fed.dir.path(), &gate);
    let answer = tokio::time::timeout(BOUND, fed.server.submit_path(&job_dir, lead_a(), None))
        .await
        .expect("submit answered")
        .expect("package accepted");
    let Ok(Ok(Answer::Submitted { job_id })) = answer else {
        panic!("submit refused: {answer:?}");
    };
    let job: JobId = job_id;
    let lead = fed.client("lead-a");
    let site_1 = format!("/v1/jobs/{job}/logs?site=site-1");

    // The submitter reads site-1's output while the app runs.
    let early = read_until(&lead, &site_1, "first line from site-1").await;
    assert!(
        !contains(&early, "after the gate"),
        "the app waits at its gate"
    );

    // A follow streams what is printed later and ends once the job has ended.
    let response = lead
        .send(
            Method::GET,
            &format!("{site_1}&follow=true"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("follow starts");
    let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
    let follower = tokio::spawn(async move {
        let mut body = response.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data).is_err() {
                    break;
                }
            }
        }
    });
    let mut followed = Vec::new();
    let deadline = Instant::now() + BOUND;
    while !contains(&followed, "first line from site-1") {
        let data = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the follow sends what was printed so far");
        followed.extend_from_slice(&data);
    }
    std::fs::write(&gate, b"").expect("open the gate");
    tokio::time::timeout(BOUND, follower)
        .await
        .expect("the follow ends once the job has ended")
        .expect("the follower task");
    while let Ok(data) = rx.try_recv() {
        followed.extend_from_slice(&data);
    }
    let state = fed.server.state();
    assert!(
        state.jobs[&job].status.is_terminal(),
        "the follow ended only after the job: {:?}",
        state.jobs[&job].status
    );
    assert_eq!(state.jobs[&job].status, RunStatus::Completed);
    let on_disk = std::fs::read(
        fedrun::site::workspace::job_dir(&fed.site_root("site-1"), job).join("stdout.log"),
    )
    .expect("site-1's log");
    assert_eq!(followed, on_disk, "the follow gave the whole log, in order");
    assert!(contains(&followed, "after the gate from site-1"));

    // A huge output arrives whole, in bounded chunks.
    let (stderr, largest) = get(&lead, &format!("{site_1}&stream=stderr"))
        .await
        .expect("stderr of site-1");
    let on_disk = std::fs::read(
        fedrun::site::workspace::job_dir(&fed.site_root("site-1"), job).join("stderr.log"),
    )
    .expect("site-1's error log");
    assert_eq!(on_disk.len(), "error line from site-1\n".len() + BIG_BYTES);
    assert!(stderr == on_disk, "the 3 MB error log arrives intact");
    assert!(
        largest <= LOG_CHUNK_MAX,
        "no frame is larger than a chunk ({largest} bytes)"
    );
    let (resumed, _) = get(&lead, &format!("{site_1}&stream=stderr&offset=2999990"))
        .await
        .expect("a read from an offset");
    assert_eq!(
        resumed,
        on_disk[2_999_990..],
        "a read resumes at its offset"
    );

    // The server app's output, from the workspace archive once the run folder is gone.
    wait_for(&fed.server, "the job settled", |s| settled(s, &job)).await;
    let run_dir = fedrun::site::workspace::job_dir(&fed.server.workspace(), job);
    let deadline = Instant::now() + BOUND;
    while run_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the run folder is removed after the archive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server_out, _) = get(&lead, &format!("/v1/jobs/{job}/logs"))
        .await
        .expect("the server app's output");
    assert_eq!(
        String::from_utf8_lossy(&server_out),
        "first line from server\nan escape \u{1b}[2J in the output\nafter the gate from server\n"
    );
    let (server_err, _) = get(&lead, &format!("/v1/jobs/{job}/logs?stream=stderr"))
        .await
        .expect("the server app's errors");
    assert_eq!(server_err, b"error line from server\n");

    // Roles: the org admin of the submitter's org reads; a member and another lead are
    // refused, and the refusals are recorded.
    let (by_org_admin, _) = get(&fed.client("orgadmin-a"), &format!("/v1/jobs/{job}/logs"))
        .await
        .expect("the org admin of org-a reads");
    assert_eq!(by_org_admin, server_out);
    for refused in ["member-a", "lead-b"] {
        let (status, code) = refused_code(get(&fed.client(refused), &site_1).await);
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "not_allowed")
        );
    }
    let (status, code) =
        refused_code(get(&lead, &format!("/v1/jobs/{job}/logs?site=site-9")).await);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_a_participant")
    );

    // The binary writes the bytes as they are to a pipe; a member is refused (exit 1).
    let prefix = &job.to_string()[..8];
    let cli = fedrun_logs(&fed, "lead-a", &[prefix, "--site", "site-1"]);
    assert_eq!(
        cli.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(cli.stdout, followed, "raw bytes on a pipe, escape included");
    let cli = fedrun_logs(&fed, "lead-a", &[prefix, "--site", "site-1", "--follow"]);
    assert_eq!(cli.status.code(), Some(0), "a follow of an ended job ends");
    assert_eq!(cli.stdout, followed);
    let cli = fedrun_logs(&fed, "lead-a", &[prefix, "--json"]);
    assert_eq!(cli.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["line"], "after the gate from server");
    assert_eq!(
        lines[2]["offset"],
        server_out.len() - "after the gate from server\n".len()
    );
    let cli = fedrun_logs(&fed, "member-a", &[prefix]);
    assert_eq!(cli.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("may not read the logs"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    // An offline site: 503, from the API and as the binary's exit code 1.
    let mut agents = agents;
    let site_2 = agents.pop().expect("site-2's agent");
    let (online, _) = get(&lead, &format!("/v1/jobs/{job}/logs?site=site-2"))
        .await
        .expect("site-2 answers while connected");
    assert!(contains(&online, "after the gate from site-2"));
    site_2.stop().await;
    wait_for(&fed.server, "site-2 disconnected", |s| {
        s.connected_sites().all(|(name, _)| name != "site-2")
    })
    .await;
    let (status, code) =
        refused_code(get(&lead, &format!("/v1/jobs/{job}/logs?site=site-2")).await);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "site_offline")
    );
    let cli = fedrun_logs(&fed, "lead-a", &[prefix, "--site", "site-2"]);
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("offline"));

    // Every read is in the history, refusals too, with who asked.
    let events = fed.server.read_events(1, 100_000).await.expect("history");
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.kind.job_id() == Some(job))
        .collect();
    let reads_by = |name: &str| {
        mine.iter()
            .filter(|e| e.kind.name() == "logs_read" && e.actor.to_string().contains(name))
            .count()
    };
    assert!(reads_by("lead-a") >= 8, "every read of lead-a is recorded");
    assert_eq!(reads_by("orgadmin-a"), 1);
    for refused in ["member-a", "lead-b"] {
        assert!(
            mine.iter().any(|e| matches!(
                &e.kind,
                fedrun::lifecycle::EventKind::RequestRefused { operation, .. } if operation == "logs"
            ) && e.actor.to_string().contains(refused)),
            "{refused}'s refusal is recorded"
        );
    }
    assert!(mine.iter().any(|e| e.kind
        == fedrun::lifecycle::EventKind::LogsRead {
            job_id: job,
            site: Some("site-1".into())
        }));

    for agent in agents {
        agent.stop().await;
    }
    let mut fed = fed;
    if let Some(serving) = fed.serving.take() {
        serving.stop().await;
    }
    fed.server.shutdown().await;
    let left = processes_under(fed.dir.path());
    assert!(left.is_empty(), "app processes left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_whose_site_goes_offline_is_broken_off_not_ended() {
    let mut fed = Federation::start().await;
    let agent = fed.agent("site-1");
    wait_for(&fed.server, "site-1 connected", |s| {
        s.connected_sites().count() == 1
    })
    .await;
    let gate = fed.dir.path().join("gate");
    let job_dir = logs_job_with(
        fed.dir.path(),
        &gate,
        r#"{"name": "logs-job", "deploy_map": {"app": ["server", "site-1"]}, "min_clients": 1}"#,
    );
    let answer = tokio::time::timeout(BOUND, fed.server.submit_path(&job_dir, lead_a(), None))
        .await
        .expect("submit answered")
        .expect("package accepted");
    let Ok(Ok(Answer::Submitted { job_id: job })) = answer else {
        panic!("submit refused: {answer:?}");
    };
    let lead = fed.client("lead-a");
    let site_1 = format!("/v1/jobs/{job}/logs?site=site-1");
    read_until(&lead, &site_1, "first line from site-1").await;
    let response = lead
        .send(
            Method::GET,
            &format!("{site_1}&follow=true"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("follow starts");
    let mut body = response.into_body();
    let mut followed = Vec::new();
    let deadline = Instant::now() + BOUND;
    while !contains(&followed, "first line from site-1") {
        let frame = tokio::time::timeout(deadline - Instant::now(), body.frame())
            .await
            .expect("the first line in time")
            .expect("the answer goes on")
            .expect("a good frame");
        if let Ok(data) = frame.into_data() {
            followed.extend_from_slice(&data);
        }
    }
    // The job still runs (its app waits at the gate) when the site goes away.
    agent.stop().await;
    let end = tokio::time::timeout(BOUND, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                other => return other.map(|frame| frame.map(|_| ())),
            }
        }
    })
    .await
    .expect("the follow stops in time");
    assert!(
        matches!(end, Some(Err(_))),
        "the answer breaks off instead of ending as if the log were whole: {end:?}"
    );
    assert!(!fed.server.state().jobs[&job].status.is_terminal());
    // The apps are still running; the gate ends them.
    std::fs::write(&gate, b"").expect("open the gate");
    let deadline = Instant::now() + BOUND;
    while !processes_under(fed.dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "the apps end after the gate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(serving) = fed.serving.take() {
        serving.stop().await;
    }
    fed.server.shutdown().await;
}
