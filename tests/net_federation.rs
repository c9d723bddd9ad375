//! A federation over real mutual TLS on loopback, in one process: the server's accept
//! loop on a running `Server`, three site agents with their own work folders, real app
//! processes (SPEC section 11).

#[path = "engine_support/mod.rs"]
mod engine_support;
mod proc_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use engine_support::{settled, submit_ok, wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::lifecycle::RunStatus;
use fedrun::net::agent::{connect, Agent, AgentConfig, ConnectError};
use fedrun::net::kit::Kit;
use fedrun::net::serve::{start, ServeOptions, Serving};
use fedrun::net::tls::{client_config, server_name, ALPN_HTTP};
use fedrun::net::wire::WireConfig;
use fedrun::site::local::LocalSiteConfig;
use fedrun::trust::provision::{provision, Project, ProvisionOptions};
use proc_support::{apps_under, kill_apps_under, processes_under};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];

fn project(extra: &str) -> String {
    let mut text = String::from(
        "name = \"net\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
         [[admin]]\nname = \"boss@ops\"\norg = \"ops\"\nrole = \"project_admin\"\n",
    );
    for site in SITES {
        text.push_str(&format!(
            "[[site]]\nname = \"{site}\"\norg = \"org-{site}\"\n"
        ));
    }
    text.push_str(extra);
    text
}

fn provision_into(out: &Path, text: &str, now: SystemTime) {
    let project: Project = text.parse().expect("project");
    provision(&project, out, ProvisionOptions { force: false, now }).expect("provision");
}

fn wire() -> WireConfig {
    WireConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        chunk_size: 64 * 1024,
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
        provision_into(&dir.path().join("kits"), &project(""), SystemTime::now());
        let mut config = ServerConfig::new(&dir.path().join("data"));
        config.settings.abort_grace = Duration::from_secs(2);
        config.settings.min_schedule_interval = Duration::from_secs(1);
        config.settings.site_reconnect_grace = Duration::from_secs(30);
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

    fn kit(&self, name: &str) -> Kit {
        Kit::load(&self.dir.path().join("kits").join(name)).expect("kit")
    }

    fn agent(&self, name: &str, server: SocketAddr) -> Agent {
        let mut site = LocalSiteConfig::new(
            name,
            self.dir.path().join("sites").join(name),
            Default::default(),
        );
        site.abort_grace = Duration::from_secs(2);
        let mut config = AgentConfig::new(self.kit(name), site);
        config.server = server.to_string();
        config.wire = wire();
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        Agent::spawn(config).expect("agent")
    }

    async fn stop(mut self, agents: Vec<Agent>) {
        for agent in agents {
            agent.stop().await;
        }
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
        self.server.shutdown().await;
        let left = processes_under(self.dir.path());
        assert!(left.is_empty(), "app processes left: {left:?}");
    }
}

/// A failed test must not leave its apps running: every process group led by a process
/// under the test's folder is killed when the federation is dropped (after `stop` has
/// checked that none is left, this finds nothing).
impl Drop for Federation {
    fn drop(&mut self) {
        kill_apps_under(self.dir.path());
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

async fn all_connected(server: &Server) {
    wait_for(server, "three connected sites", |s| {
        s.connected_sites().count() == SITES.len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_completes_on_three_site_agents_over_tls() {
    let fed = Federation::start().await;
    let agents: Vec<Agent> = SITES.iter().map(|s| fed.agent(s, fed.addr())).collect();
    all_connected(&fed.server).await;
    // A package of many chunks: the app carries 600 KiB that do not compress.
    let job_dir = slow_hello(fed.dir.path(), 2);
    let data: Vec<u8> = (0..600 * 1024).map(|_| rand_byte()).collect();
    std::fs::write(job_dir.join("app/data.bin"), &data).expect("data");
    let job = submit_ok(&fed.server, &job_dir).await;
    let state = wait_for(&fed.server, "the job settled", |s| settled(s, &job)).await;
    let status = state.jobs[&job].status;
    assert_eq!(status, RunStatus::Completed, "{:?}", state.jobs[&job]);
    for site in SITES {
        let root = fed.dir.path().join("sites").join(site);
        let app = fedrun::site::workspace::app_dir(&root, job, "app");
        let got = std::fs::read(app.join("data.bin")).expect("the app was unpacked");
        assert!(got == data, "{site} received the package intact");
    }
    fed.stop(agents).await;
}

/// A TCP relay between one agent and the server that can cut every connection through it
/// and refuse new ones until restored.
struct Relay {
    addr: SocketAddr,
    open: Arc<Mutex<bool>>,
    pipes: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(Mutex::new(true));
        let pipes = Arc::new(Mutex::new(Vec::new()));
        let (o, p) = (open.clone(), pipes.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*o.lock().expect("lock") {
                    drop(inbound);
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                p.lock().expect("lock").push(pipe);
            }
        });
        Relay { addr, open, pipes }
    }

    fn cut(&self) {
        *self.open.lock().expect("lock") = false;
        for pipe in self.pipes.lock().expect("lock").drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        *self.open.lock().expect("lock") = true;
    }
}

/// A byte from a small xorshift generator (no dependency needed for test data).
fn rand_byte() -> u8 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 24) as u8
    })
}

/// hello-complete with sites that work for `rounds` rounds of 0.2 s.
fn slow_hello(dir: &Path, rounds: u32) -> PathBuf {
    let job = dir.join("slow-hello");
    let from = examples().join("hello-complete");
    std::fs::create_dir_all(job.join("app")).expect("job folder");
    std::fs::copy(from.join("meta.json"), job.join("meta.json")).expect("meta");
    std::fs::copy(from.join("app/run.sh"), job.join("app/run.sh")).expect("run.sh");
    let run = std::fs::read_to_string(from.join("app/run.toml")).expect("run.toml");
    let run = run.replace(
        "HELLO_ROUNDS = \"2\"",
        &format!("HELLO_ROUNDS = \"{rounds}\""),
    );
    assert!(run.contains(&format!("\"{rounds}\"")), "{run}");
    std::fs::write(job.join("app/run.toml"), run).expect("run.toml");
    job
}

/// Polls `/proc` (bounded) until none of `pids` is alive.
async fn all_ended(pids: &[u32]) {
    tokio::time::timeout(BOUND, async {
        while pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}/cmdline")).exists())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the apps ended in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_connection_is_cut_and_restored_keeps_its_app() {
    let fed = Federation::start().await;
    let relay = Relay::start(fed.addr()).await;
    let agents = vec![
        fed.agent("site-1", fed.addr()),
        fed.agent("site-2", relay.addr),
        fed.agent("site-3", fed.addr()),
    ];
    all_connected(&fed.server).await;
    let job_dir = slow_hello(fed.dir.path(), 20);
    let job = submit_ok(&fed.server, &job_dir).await;
    wait_for(&fed.server, "the job running", |s| {
        s.jobs
            .get(&job)
            .is_some_and(|j| j.status == RunStatus::Running)
    })
    .await;
    let site2 = fed.dir.path().join("sites/site-2");
    let before = apps_under(&site2);
    assert!(!before.is_empty(), "site-2 runs its app");
    relay.cut();
    wait_for(&fed.server, "site-2 seen disconnected", |s| {
        s.sites.get("site-2").is_some_and(|f| !f.connected)
    })
    .await;
    let now = apps_under(&site2);
    assert!(
        before.iter().all(|pid| now.contains(pid)),
        "the app outlives the connection: {before:?} then {now:?}"
    );
    // The app ends while its site is away: its exit report must survive the cut.
    all_ended(&before).await;
    assert_eq!(
        fed.server.state().jobs[&job].status,
        RunStatus::Running,
        "the job waits for site-2's report"
    );
    relay.restore();
    let state = wait_for(&fed.server, "the job settled", |s| settled(s, &job)).await;
    assert_eq!(
        state.jobs[&job].status,
        RunStatus::Completed,
        "{:?}",
        state.jobs[&job]
    );
    assert!(
        state.sites.get("site-2").is_some_and(|f| f.connected),
        "site-2 is back"
    );
    fed.stop(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_reaches_apps_over_the_network() {
    let fed = Federation::start().await;
    let agents: Vec<Agent> = SITES.iter().map(|s| fed.agent(s, fed.addr())).collect();
    all_connected(&fed.server).await;
    // long-running trains until aborted.
    let job = submit_ok(&fed.server, &examples().join("long-running")).await;
    wait_for(&fed.server, "the job running", |s| {
        s.jobs
            .get(&job)
            .is_some_and(|j| j.status == RunStatus::Running)
    })
    .await;
    let running = apps_under(&fed.dir.path().join("sites"));
    assert!(!running.is_empty(), "the sites run their apps");
    let aborted = fed
        .server
        .request(
            fedrun::lifecycle::Origin {
                identity: engine_support::identity(fedrun::lifecycle::Role::ProjectAdmin),
                request_id: None,
            },
            fedrun::lifecycle::AdminRequest::AbortJob { job_id: job },
        )
        .await
        .expect("answered");
    assert!(aborted.is_ok(), "{aborted:?}");
    let state = wait_for(&fed.server, "the job settled", |s| settled(s, &job)).await;
    assert_eq!(state.jobs[&job].status, RunStatus::Aborted);
    all_ended(&running).await;
    fed.stop(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason_and_leave_the_server_serving() {
    let fed = Federation::start().await;
    let addr = fed.addr().to_string();
    let wire = wire();
    // A site of another project's CA.
    let other = tempfile::tempdir().expect("temp dir");
    provision_into(other.path(), &project(""), SystemTime::now());
    let foreign = Kit::load(&other.path().join("site-1")).expect("kit");
    let err = connect(&foreign, &addr, &wire)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
    // An expired site certificate of our CA.
    let kits = fed.dir.path().join("kits");
    let past = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    provision_into(
        &kits,
        &project("[[site]]\nname = \"old-site\"\norg = \"o\"\n")
            .replace("name = \"net\"", "name = \"net\"\nvalid_days = 1"),
        past,
    );
    let err = connect(&fed.kit("old-site"), &addr, &wire)
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ConnectError::Handshake { .. }), "{err}");
    // A site of our CA whose name the running server's kit does not list.
    provision_into(
        &kits,
        &project("[[site]]\nname = \"new-site\"\norg = \"o\"\n"),
        SystemTime::now(),
    );
    let err = connect(&fed.kit("new-site"), &addr, &wire)
        .await
        .err()
        .expect("refused");
    match err {
        ConnectError::Refused(reason) => assert!(reason.contains("new-site"), "{reason}"),
        other => panic!("not refused by name: {other}"),
    }
    // An admin certificate on the site protocol.
    let err = connect(&fed.kit("boss@ops"), &addr, &wire)
        .await
        .err()
        .expect("refused");
    match err {
        ConnectError::Refused(reason) => assert!(reason.contains("admin"), "{reason}"),
        other => panic!("not refused as an admin: {other}"),
    }
    // A site certificate on the admin API.
    let site = fed.kit("site-1");
    let connector = tokio_rustls::TlsConnector::from(client_config(&site, ALPN_HTTP).expect("tls"));
    let tcp = TcpStream::connect(fed.addr()).await.expect("dial");
    let mut tls = connector
        .connect(server_name(&site).expect("name"), tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET /v1/jobs HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(BOUND, tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("site certificate"), "{answer}");
    // Garbage and an oversized frame close only their own connection.
    let mut raw = TcpStream::connect(fed.addr()).await.expect("dial");
    raw.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])
        .await
        .expect("write");
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(BOUND, raw.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server closes a garbage connection in time"
    );
    // Everyone else is still served: the three known sites connect.
    let agents: Vec<Agent> = SITES.iter().map(|s| fed.agent(s, fed.addr())).collect();
    all_connected(&fed.server).await;
    let state = fed.server.state();
    assert!(
        !state.sites.contains_key("new-site") && !state.sites.contains_key("old-site"),
        "no refused site ever reached the engine"
    );
    fed.stop(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_that_site_connection_only() {
    let fed = Federation::start().await;
    let agents: Vec<Agent> = ["site-1", "site-3"]
        .iter()
        .map(|s| fed.agent(s, fed.addr()))
        .collect();
    // site-2 by hand: welcomed, then an oversized length, then garbage.
    let kit = fed.kit("site-2");
    let connector = tokio_rustls::TlsConnector::from(
        client_config(&kit, fedrun::net::tls::ALPN_SITE).expect("tls"),
    );
    for bad in [
        &[0xff, 0xff, 0xff, 0xff, 1, 2][..],
        &[0, 0, 0, 3, 9, 9, 9][..],
    ] {
        let tcp = TcpStream::connect(fed.addr()).await.expect("dial");
        let mut tls = connector
            .connect(server_name(&kit).expect("name"), tcp)
            .await
            .expect("handshake");
        tls.write_all(bad).await.expect("write");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(BOUND, tls.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the server closes the connection in time");
    }
    wait_for(&fed.server, "site-1 and site-3 connected", |s| {
        s.sites.get("site-1").is_some_and(|f| f.connected)
            && s.sites.get("site-3").is_some_and(|f| f.connected)
    })
    .await;
    let state = fed.server.state();
    assert!(
        state.sites.get("site-2").is_none_or(|f| !f.connected),
        "the bad connection is not a connected site"
    );
    fed.stop(agents).await;
}

/// A site connection made by hand: welcomed, it says `Connected`, then does only what the
/// test says.
struct HandSite {
    frames: tokio_util::codec::FramedRead<
        tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
        tokio_util::codec::LengthDelimitedCodec,
    >,
    sink: Arc<
        tokio::sync::Mutex<
            tokio_util::codec::FramedWrite<
                tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
                tokio_util::codec::LengthDelimitedCodec,
            >,
        >,
    >,
}

impl HandSite {
    async fn connect(fed: &Federation, name: &str) -> HandSite {
        use fedrun::net::wire::{decode, encode_message, Frame, FromSite, ToSite};
        use fedrun::site::protocol::SiteReport;
        use futures_util::{SinkExt, StreamExt};
        let kit = fed.kit(name);
        let connector = tokio_rustls::TlsConnector::from(
            client_config(&kit, fedrun::net::tls::ALPN_SITE).expect("tls"),
        );
        let tcp = TcpStream::connect(fed.addr()).await.expect("dial");
        let tls = connector
            .connect(server_name(&kit).expect("name"), tcp)
            .await
            .expect("handshake");
        let (read, write) = tokio::io::split(tls);
        let mut frames = tokio_util::codec::FramedRead::new(read, wire().codec());
        let mut sink = tokio_util::codec::FramedWrite::new(write, wire().codec());
        let first = tokio::time::timeout(BOUND, frames.next())
            .await
            .expect("welcome in time")
            .expect("a frame")
            .expect("readable");
        assert!(matches!(
            decode::<ToSite>(first).expect("decodes"),
            Frame::Message(ToSite::Welcome { .. })
        ));
        let hello = FromSite::Report {
            id: 1,
            report: SiteReport::Connected {
                resources: Default::default(),
                running: vec![],
            },
        };
        sink.send(encode_message(&hello).expect("encode"))
            .await
            .expect("send");
        HandSite {
            frames,
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
        }
    }

    /// Sends heartbeats until the connection fails.
    fn keep_beating(&self) {
        use futures_util::SinkExt;
        let sink = self.sink.clone();
        tokio::spawn(async move {
            let beat = fedrun::net::wire::encode_message(&fedrun::net::wire::FromSite::Heartbeat)
                .expect("encode");
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                if sink.lock().await.send(beat.clone()).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Reads until the server closes the connection (bounded).
    async fn closed_by_server(mut self) {
        use futures_util::StreamExt;
        tokio::time::timeout(BOUND, async {
            while let Some(Ok(_)) = self.frames.next().await {}
        })
        .await
        .expect("the server closes the connection in time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_site_is_disconnected_after_the_heartbeat_timeout() {
    let fed = Federation::start().await;
    let hand = HandSite::connect(&fed, "site-2").await;
    wait_for(&fed.server, "site-2 connected", |s| {
        s.sites.get("site-2").is_some_and(|f| f.connected)
    })
    .await;
    // The connection stays open but says nothing more: a half-open peer.
    wait_for(&fed.server, "site-2 disconnected", |s| {
        s.sites.get("site-2").is_some_and(|f| !f.connected)
    })
    .await;
    hand.closed_by_server().await;
    fed.stop(vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_of_a_site_replaces_the_old_one() {
    let fed = Federation::start().await;
    let old = HandSite::connect(&fed, "site-2").await;
    old.keep_beating();
    wait_for(&fed.server, "site-2 connected", |s| {
        s.sites.get("site-2").is_some_and(|f| f.connected)
    })
    .await;
    let agent = fed.agent("site-2", fed.addr());
    // The heartbeats keep the old connection alive: only the replacement closes it.
    old.closed_by_server().await;
    let mut connected = agent.connected();
    tokio::time::timeout(BOUND, connected.wait_for(|c| *c))
        .await
        .expect("the agent is connected in time")
        .expect("agent alive");
    wait_for(&fed.server, "site-2 connected again", |s| {
        s.sites.get("site-2").is_some_and(|f| f.connected)
    })
    .await;
    fed.stop(vec![agent]).await;
}
