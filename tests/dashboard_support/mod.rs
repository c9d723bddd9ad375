//! What the dashboard tests and bench share: a federation on loopback in one process (the
//! server's accept loop on a running `Server`, optional site agents), the dashboard in
//! front of it through a relay that counts the connections that reach the server, and a
//! raw HTTP/1.1 client that sends exactly the `Host` it is given.

#![allow(dead_code)]

#[path = "../proc_support/mod.rs"]
mod proc_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::job::JobId;
use fedrun::lifecycle::{Answer, Identity, Role};
use fedrun::net::agent::{Agent, AgentConfig};
use fedrun::net::client::Client;
use fedrun::net::dashboard::{self, Dashboard};
use fedrun::net::kit::Kit;
use fedrun::net::serve::{start, ServeOptions, Serving};
use fedrun::net::wire::WireConfig;
use fedrun::site::local::LocalSiteConfig;
use fedrun::trust::provision::{provision, Project, ProvisionOptions};
use http_body_util::{BodyExt, Empty};
use proc_support::{kill_apps_under, processes_under};
use tokio::net::{TcpListener, TcpStream};

/// How long any one wait may take.
pub const BOUND: Duration = Duration::from_secs(30);

/// The admin whose kit the dashboard uses.
pub const ADMIN: &str = "boss@ops";

/// The project: a server on localhost, one admin, and `sites` sites.
pub fn project(sites: &[&str]) -> String {
    let mut text = format!(
        "name = \"dash\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
         [[admin]]\nname = \"{ADMIN}\"\norg = \"ops\"\nrole = \"project_admin\"\n"
    );
    for site in sites {
        text.push_str(&format!(
            "[[site]]\nname = \"{site}\"\norg = \"org-{site}\"\n"
        ));
    }
    text
}

fn wire() -> WireConfig {
    WireConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        ..WireConfig::default()
    }
}

/// A TCP relay to the server that counts the connections made through it.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            connections,
            task,
        }
    }

    /// Connections that reached the server so far.
    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A server on loopback with its kits, and a dashboard in front of it.
pub struct Federation {
    /// Kits, data, sites' work folders.
    pub dir: tempfile::TempDir,
    /// The running server.
    pub server: Server,
    serving: Option<Serving>,
    /// Between the dashboard and the server.
    pub relay: Relay,
    dashboard: Option<Dashboard>,
}

impl Federation {
    /// Provisions `sites`, starts the server on a free port, and a dashboard on another
    /// one that reaches the server through the counting relay with the admin's kit.
    pub async fn start(sites: &[&str]) -> Federation {
        Federation::start_with(sites, |config| {
            config.settings.min_schedule_interval = Duration::from_millis(200);
        })
        .await
    }

    /// [`Federation::start`] with the server's configuration changed by `configure`.
    pub async fn start_with(
        sites: &[&str],
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let project: Project = project(sites).parse().expect("project");
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
        configure(&mut config);
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
        let relay = Relay::start(serving.local_addr()).await;
        let client = Client::from_kit(
            &dir.path().join("kits").join(ADMIN),
            Some(&relay.addr.to_string()),
        )
        .expect("admin client");
        let dashboard = dashboard::start(client, 0).await.expect("dashboard");
        Federation {
            dir,
            server,
            serving: Some(serving),
            relay,
            dashboard: Some(dashboard),
        }
    }

    /// The server's own address (not through the relay).
    pub fn server_addr(&self) -> SocketAddr {
        self.serving.as_ref().expect("serving").local_addr()
    }

    /// The dashboard's address.
    pub fn dashboard_addr(&self) -> SocketAddr {
        self.dashboard.as_ref().expect("dashboard").local_addr()
    }

    /// The admin kit's folder.
    pub fn admin_kit(&self) -> PathBuf {
        self.dir.path().join("kits").join(ADMIN)
    }

    /// A client straight to the server with the admin's kit (no dashboard, no relay).
    pub fn direct(&self) -> Client {
        Client::from_kit(&self.admin_kit(), Some(&self.server_addr().to_string()))
            .expect("admin client")
    }

    /// A site agent that dials the server.
    pub fn agent(&self, name: &str) -> Agent {
        let kit = Kit::load(&self.dir.path().join("kits").join(name)).expect("site kit");
        let mut site = LocalSiteConfig::new(
            name,
            self.dir.path().join("sites").join(name),
            Default::default(),
        );
        site.abort_grace = Duration::from_secs(2);
        let mut config = AgentConfig::new(kit, site);
        config.server = self.server_addr().to_string();
        config.wire = wire();
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        Agent::spawn(config).expect("agent")
    }

    /// Stops the agents, the dashboard and the server, and checks no app is left.
    pub async fn stop(mut self, agents: Vec<Agent>) {
        for agent in agents {
            agent.stop().await;
        }
        if let Some(dashboard) = self.dashboard.take() {
            dashboard.stop().await;
        }
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
        self.relay.task.abort();
        self.server.shutdown().await;
        let left = processes_under(self.dir.path());
        assert!(left.is_empty(), "app processes left: {left:?}");
    }
}

/// A failed test must not leave its apps running.
impl Drop for Federation {
    fn drop(&mut self) {
        kill_apps_under(self.dir.path());
    }
}

/// The example `hello-complete` copied under `dir` with `name` in its meta.json and
/// sites that work for `rounds` rounds of 0.2 s.
pub fn job_named(dir: &Path, folder: &str, name: &str, rounds: u32) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-complete");
    let job = dir.join(folder);
    std::fs::create_dir_all(job.join("app")).expect("job folder");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("meta.json")).expect("meta"))
            .expect("meta is JSON");
    meta["name"] = name.into();
    std::fs::write(job.join("meta.json"), meta.to_string()).expect("meta");
    std::fs::copy(from.join("app/run.sh"), job.join("app/run.sh")).expect("run.sh");
    let run = std::fs::read_to_string(from.join("app/run.toml")).expect("run.toml");
    let changed = run.replace(
        "HELLO_ROUNDS = \"2\"",
        &format!("HELLO_ROUNDS = \"{rounds}\""),
    );
    assert!(changed.contains(&format!("\"{rounds}\"")), "{run}");
    std::fs::write(job.join("app/run.toml"), changed).expect("run.toml");
    job
}

/// Submits the job folder `path` as a project admin; its id.
pub async fn submit(server: &Server, path: &Path) -> JobId {
    let identity = Identity {
        name: ADMIN.into(),
        org: "ops".into(),
        role: Role::ProjectAdmin,
    };
    let answer = tokio::time::timeout(BOUND, server.submit_path(path, identity, None))
        .await
        .expect("the submit is answered in time")
        .expect("package accepted");
    match answer {
        Ok(Ok(Answer::Submitted { job_id })) => job_id,
        other => panic!("submit failed: {other:?}"),
    }
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answered {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answered {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// One header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header text").to_string())
    }
}

/// Opens a connection to `addr` and sends one request with exactly the `Host` given (or
/// none); the answer's head, with its body still streaming.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> hyper::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("handshake");
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder().method(method).uri(path);
    if let Some(host) = host {
        builder = builder.header(hyper::header::HOST, host);
    }
    let request = builder.body(Empty::new()).expect("request");
    tokio::time::timeout(BOUND, sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("an answer")
}

/// [`request`] with its whole body.
pub async fn fetch(addr: SocketAddr, method: &str, path: &str, host: Option<&str>) -> Answered {
    let response = request(addr, method, path, host).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(BOUND, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("body")
        .to_bytes();
    Answered {
        status,
        headers,
        body,
    }
}

/// [`fetch`] with the dashboard's own `Host`.
pub async fn get(addr: SocketAddr, path: &str) -> Answered {
    fetch(addr, "GET", path, Some(&addr.to_string())).await
}

/// The Chromium binary: `FEDRUN_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("FEDRUN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "headless Chromium is needed at {} (Debian: apt-get install chromium; or set FEDRUN_CHROMIUM)",
        path.display()
    );
    path
}

/// Runs headless Chromium with `args` and a fresh profile under `profile`, within a bound;
/// its standard output. The sandbox is off: it needs privileges a container or root
/// lacks, and the only page loaded is the dashboard's own.
pub async fn run_chromium(profile: &Path, args: &[String]) -> String {
    let mut command = tokio::process::Command::new(chromium());
    command
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-extensions")
        .arg("--disable-background-networking")
        .arg("--hide-scrollbars")
        .arg("--mute-audio")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("Chromium ends within a minute")
        .expect("Chromium runs");
    assert!(
        output.status.success(),
        "Chromium failed ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// The DOM of `url` once the page's scripts have run for `budget_ms` of Chromium's
/// virtual time (which waits for the page's requests to be answered).
pub async fn dump_dom(profile: &Path, url: &str, budget_ms: u32) -> String {
    run_chromium(
        profile,
        &[
            "--window-size=1400,1000".to_string(),
            format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom".to_string(),
            url.to_string(),
        ],
    )
    .await
}

/// A PNG of `url` as a 1400×`height` window shows it, written to `png`.
pub async fn screenshot(profile: &Path, url: &str, png: &Path, height: u32) {
    run_chromium(
        profile,
        &[
            format!("--window-size=1400,{height}"),
            "--virtual-time-budget=3000".to_string(),
            format!("--screenshot={}", png.display()),
            url.to_string(),
        ],
    )
    .await;
}

/// One element of a serialized DOM: its attributes and the HTML inside it.
#[derive(Debug, Clone)]
pub struct Element {
    /// Attribute name to (decoded) value.
    pub attrs: std::collections::BTreeMap<String, String>,
    /// The serialized content up to the element's closing tag (the same tag is never
    /// nested in what these tests look at: rows, cells, paragraphs, SVG parts).
    pub inner: String,
}

impl Element {
    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// The text inside, tags removed and character references decoded.
    pub fn text(&self) -> String {
        text_of(&self.inner)
    }

    /// The elements `tag` inside this one.
    pub fn find(&self, tag: &str) -> Vec<Element> {
        elements(&self.inner, tag)
    }
}

/// Decodes the character references Chromium's serializer writes.
pub fn decode(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The text of serialized HTML: tags removed, references decoded.
pub fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    decode(&out)
}

/// Every `<tag ...>` element of a serialized DOM (as Chromium writes it: lower-case tag
/// names, attribute values in double quotes with `"` escaped).
pub fn elements(dom: &str, tag: &str) -> Vec<Element> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        // `<tr` must not match `<track`.
        if !after.starts_with([' ', '>', '/']) {
            rest = after;
            continue;
        }
        // The head ends at the first `>` outside a quoted value.
        let mut quoted = false;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.expect("a tag ends");
        let head = &after[..end];
        let body = &after[end + 1..];
        let inner_end = body.find(&close).unwrap_or(0);
        found.push(Element {
            attrs: attributes(head),
            inner: body[..inner_end].to_string(),
        });
        rest = body;
    }
    found
}

fn attributes(head: &str) -> std::collections::BTreeMap<String, String> {
    let mut attrs = std::collections::BTreeMap::new();
    let mut rest = head.trim_start();
    while !rest.is_empty() && !rest.starts_with('/') {
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_string();
        rest = &rest[name_end..];
        if let Some(value) = rest.strip_prefix("=\"") {
            let value_end = value.find('"').expect("a quoted value ends");
            attrs.insert(name, decode(&value[..value_end]));
            rest = &value[value_end + 1..];
        } else {
            attrs.insert(name, String::new());
        }
        rest = rest.trim_start();
    }
    attrs
}
