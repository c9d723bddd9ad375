//! The server's accept loop (SPEC section 11): one port for sites and admins, mutual TLS,
//! and a dispatch by ALPN and certificate kind. A site certificate with the site protocol
//! becomes a site link; an admin certificate with HTTP goes to the admin API; any other
//! combination is refused with a log line that says why (and a message to the peer where
//! its protocol can carry one).
//!
//! Each known site has a **hub**, attached to the engine once with
//! [`Server::attach_site`]: the engine's requests for the site go to its current
//! connection (or are dropped while it has none, as a network would), and every
//! connection's reports go through the hub's one report queue, in order. When a connection
//! ends (closed, a bad frame, no frame within the heartbeat timeout, or replaced by a newer
//! connection of the same site) the hub reports `Disconnected`; a newer connection waits
//! until the old one has said so before it is attached, so the engine always sees
//! `Disconnected` before the `Connected` that follows it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::admin::{serve_connection, AdminContext};
use super::kit::Kit;
use super::logs::{LogRead, SiteLinks, READ_QUEUE};
use super::tls::{peer_from_cert, server_config, Peer, TlsError, ALPN_HTTP, ALPN_SITE};
use super::wire::{
    decode, encode_chunk, encode_message, stopped, Frame, FromSite, ToSite, WireConfig, WireRequest,
};
use crate::engine::server::Server;
use crate::site::logs::{LogAnswer, LOG_CHUNK_MAX};
use crate::site::protocol::{SiteReport, SiteRequest};

/// How long a peer has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a newer connection of a site waits for the old one to close.
const REPLACE_WAIT: Duration = Duration::from_secs(5);
/// Reports of one site that may wait for the engine.
const REPORT_QUEUE: usize = 256;

/// Options of the accept loop.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The site protocol's settings (heartbeats, frame and chunk sizes).
    pub wire: WireConfig,
}

/// A running accept loop.
pub struct Serving {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The address the loop listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection, and waits for the loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Why the accept loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeNetError {
    /// The kit's TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `listen` and serves `server` to the sites and admins of `kit` until stopped.
pub async fn start(
    kit: &Kit,
    server: Server,
    listen: SocketAddr,
    options: ServeOptions,
) -> Result<Serving, ServeNetError> {
    let acceptor = TlsAcceptor::from(server_config(kit)?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeNetError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeNetError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let (stop, stop_rx) = watch::channel(false);
    let links = Arc::new(SiteLinks::default());
    let inner = Arc::new(Inner {
        admin: Arc::new(AdminContext {
            site_logs: links.clone(),
            ..AdminContext::new(server.clone())
        }),
        links,
        server,
        sites: kit.sites.clone(),
        hubs: Mutex::new(BTreeMap::new()),
        wire: options.wire,
        stop: stop_rx.clone(),
    });
    tracing::info!(%addr, sites = inner.sites.len(), "listening for sites and admins");
    let task = tokio::spawn(accept_loop(inner, listener, acceptor, stop_rx));
    Ok(Serving { addr, stop, task })
}

struct Inner {
    server: Server,
    admin: Arc<AdminContext>,
    /// Each connected site's connection, for log reads.
    links: Arc<SiteLinks>,
    sites: std::collections::BTreeSet<String>,
    hubs: Mutex<BTreeMap<String, Arc<Hub>>>,
    wire: WireConfig,
    stop: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only whole values are stored under these locks; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(connection(inner.clone(), acceptor.clone(), tcp, peer));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    // Every connection watches the same stop signal; wait for them to close (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    tracing::info!("accept loop stopped");
}

async fn connection(inner: Arc<Inner>, acceptor: TlsAcceptor, tcp: TcpStream, addr: SocketAddr) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "TLS handshake failed; connection refused");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "TLS handshake not finished in time; connection closed");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let Some(der) = conn.peer_certificates().and_then(|c| c.first()) else {
        tracing::warn!(peer = %addr, "no client certificate; connection refused");
        return;
    };
    let peer = match peer_from_cert(der) {
        Ok(peer) => peer,
        Err(e) => {
            tracing::warn!(peer = %addr, error = %e, "unusable client certificate; connection refused");
            return;
        }
    };
    match (peer, alpn.as_deref()) {
        (Peer::Site { name, .. }, Some(ALPN_SITE)) => site_connection(inner, name, addr, tls).await,
        (Peer::Admin(identity), Some(ALPN_HTTP)) => {
            tracing::debug!(peer = %addr, admin = %identity, "admin connected");
            serve_connection(inner.admin.clone(), identity, tls).await;
        }
        (Peer::Admin(identity), Some(ALPN_SITE)) => {
            let reason = format!(
                "{} holds an admin certificate, which cannot be used as a site",
                identity.name
            );
            tracing::warn!(peer = %addr, admin = %identity, "admin certificate on the site protocol; refused");
            refuse_site(tls, &inner.wire, reason).await;
        }
        (Peer::Site { name, .. }, Some(ALPN_HTTP)) => {
            tracing::warn!(peer = %addr, site = %name, "site certificate on the admin API; refused");
            refuse_http(tls, &name).await;
        }
        (peer, other) => {
            tracing::warn!(peer = %addr, who = ?peer, alpn = ?other.map(String::from_utf8_lossy), "no known protocol negotiated; connection closed");
        }
    }
}

/// Tells a site-protocol peer why it is refused, then closes.
async fn refuse_site<S>(stream: S, wire: &WireConfig, reason: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut sink = FramedWrite::new(stream, wire.codec());
    if let Ok(body) = encode_message(&ToSite::Refused { reason }) {
        let _ = tokio::time::timeout(Duration::from_secs(5), sink.send(body)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.get_mut().shutdown()).await;
}

/// Answers an HTTP client with a site certificate: 403 with a JSON error, then closes.
async fn refuse_http<S>(mut stream: S, site: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = serde_json::json!({
        "code": "site_certificate",
        "message": format!("{site} holds a site certificate, which cannot be used as an admin"),
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// One site's link to the engine, whatever connection it has now.
struct Hub {
    name: String,
    reports: mpsc::Sender<(String, SiteReport)>,
    current: Mutex<Option<Current>>,
    /// Held while a connection replaces the old one, so two never interleave.
    switch: tokio::sync::Mutex<u64>,
}

struct Current {
    generation: u64,
    requests: mpsc::Sender<SiteRequest>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Inner {
    /// The hub of `name`, attached to the engine the first time the site connects.
    fn hub(&self, name: &str) -> Arc<Hub> {
        let mut hubs = lock(&self.hubs);
        if let Some(hub) = hubs.get(name) {
            return hub.clone();
        }
        let (requests_tx, mut requests_rx) = mpsc::channel::<SiteRequest>(1);
        let (reports_tx, reports_rx) = mpsc::channel(REPORT_QUEUE);
        let hub = Arc::new(Hub {
            name: name.to_string(),
            reports: reports_tx,
            current: Mutex::new(None),
            switch: tokio::sync::Mutex::new(0),
        });
        self.server.attach_site(name, requests_tx, reports_rx);
        let forward = hub.clone();
        tokio::spawn(async move {
            while let Some(request) = requests_rx.recv().await {
                let link = lock(&forward.current).as_ref().map(|c| c.requests.clone());
                match link {
                    Some(link) => {
                        if link.send(request).await.is_err() {
                            tracing::debug!(site = %forward.name, "request dropped: the connection closed");
                        }
                    }
                    None => {
                        tracing::debug!(site = %forward.name, ?request, "request dropped: the site is not connected")
                    }
                }
            }
        });
        hubs.insert(name.to_string(), hub.clone());
        hub
    }
}

async fn site_connection<S>(inner: Arc<Inner>, name: String, addr: SocketAddr, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !inner.sites.contains(&name) {
        tracing::warn!(peer = %addr, site = %name, "unknown site name (not in the server kit's list of sites); refused");
        let reason = format!("site {name} is not one of this project's sites");
        refuse_site(stream, &inner.wire, reason).await;
        return;
    }
    let hub = inner.hub(&name);
    let (requests_tx, requests_rx) = mpsc::channel::<SiteRequest>(2);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let generation = {
        let mut switch = hub.switch.lock().await;
        let old = lock(&hub.current).take();
        if let Some(mut old) = old {
            tracing::info!(site = %name, peer = %addr, "a newer connection replaces the site's current one");
            if let Some(stop) = old.stop.take() {
                let _ = stop.send(());
            }
            if let Some(done) = old.done.take() {
                let _ = tokio::time::timeout(REPLACE_WAIT, done).await;
            }
        }
        *switch += 1;
        *lock(&hub.current) = Some(Current {
            generation: *switch,
            requests: requests_tx,
            stop: Some(stop_tx),
            done: Some(done_rx),
        });
        *switch
    };
    tracing::info!(site = %name, peer = %addr, "site connected");
    let (reads_tx, reads_rx) = mpsc::channel::<LogRead>(READ_QUEUE);
    inner.links.attach(&name, generation, reads_tx);
    let why = run_link(&inner, &hub, stream, requests_rx, reads_rx, stop_rx).await;
    inner.links.detach(&name, generation);
    {
        let mut current = lock(&hub.current);
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }
    let _ = hub
        .reports
        .send((name.clone(), SiteReport::Disconnected))
        .await;
    let _ = done_tx.send(());
    tracing::info!(site = %name, peer = %addr, reason = %why, "site disconnected");
}

/// Serves one site connection until it ends; returns why it ended.
async fn run_link<S>(
    inner: &Inner,
    hub: &Hub,
    stream: S,
    requests: mpsc::Receiver<SiteRequest>,
    reads: mpsc::Receiver<LogRead>,
    mut replaced: oneshot::Receiver<()>,
) -> String
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire = inner.wire.clone();
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, wire.codec());
    let mut sink = FramedWrite::new(write, wire.codec());
    let welcome = ToSite::Welcome {
        heartbeat_interval_ms: wire.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms: wire.heartbeat_timeout.as_millis() as u64,
    };
    match encode_message(&welcome) {
        Ok(body) => {
            if let Err(e) = sink.send(body).await {
                return format!("cannot send the welcome: {e}");
            }
        }
        Err(e) => return e.to_string(),
    }
    // Log reads sent and not yet answered; dropped with the connection, which tells each
    // reader that the site went offline.
    let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
    let mut writer = tokio::spawn(write_loop(
        sink,
        requests,
        reads,
        pending.clone(),
        wire.clone(),
    ));
    let mut stop = inner.stop.clone();
    let why = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(wire.heartbeat_timeout, frames.next()) => next,
            _ = &mut replaced => break "replaced by a newer connection".to_string(),
            _ = stopped(&mut stop) => break "the server is stopping".to_string(),
            ended = &mut writer => break match ended {
                Ok(Ok(())) => "the link to the engine closed".to_string(),
                Ok(Err(e)) => e,
                Err(e) => format!("writer failed: {e}"),
            },
        };
        let body = match next {
            Err(_) => {
                break format!(
                    "no frame for {:?} (heartbeat timeout)",
                    wire.heartbeat_timeout
                )
            }
            Ok(None) => break "closed by the site".to_string(),
            Ok(Some(Err(e))) => break format!("unreadable frame: {e}"),
            Ok(Some(Ok(body))) => body,
        };
        match decode::<FromSite>(body) {
            Ok(Frame::Message(FromSite::Heartbeat)) => {}
            Ok(Frame::Message(FromSite::Report {
                report: SiteReport::Disconnected,
                ..
            })) => {
                // Only the server concludes that a site is gone; a site cannot say it.
                break "the site sent a Disconnected report, which only the server makes"
                    .to_string();
            }
            Ok(Frame::Message(FromSite::Log { id, answer })) => {
                // An answer nobody waits for any more (or never asked for) is dropped.
                if let Some(reply) = lock(&pending).remove(&id) {
                    let _ = reply.send(answer);
                }
            }
            Ok(Frame::Message(FromSite::Report { id, report })) => {
                tracing::trace!(site = %hub.name, id, ?report, "report");
                if hub.reports.send((hub.name.clone(), report)).await.is_err() {
                    break "the engine is gone".to_string();
                }
            }
            Ok(Frame::Chunk { .. }) => break "a site sent a package chunk".to_string(),
            Err(e) => break format!("{e}"),
        }
    };
    writer.abort();
    lock(&pending).clear();
    if why.starts_with("unreadable") || why.starts_with("malformed") || why.contains("chunk") {
        tracing::warn!(site = %hub.name, reason = %why, "bad frame from the site; its connection is closed");
    }
    why
}

/// Log reads of one connection waiting for the site's answer, by read id.
type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<LogAnswer>>>>;

/// Log reads one connection may have waiting for answers; more are answered at once as
/// failed, so a flood of readers cannot grow the table.
const PENDING_READS_MAX: usize = 64;

/// Sends the engine's requests (deploys in chunks), log reads and heartbeats to a site.
async fn write_loop<W>(
    mut sink: FramedWrite<W, tokio_util::codec::LengthDelimitedCodec>,
    mut requests: mpsc::Receiver<SiteRequest>,
    mut reads: mpsc::Receiver<LogRead>,
    pending: Pending,
    wire: WireConfig,
) -> Result<(), String>
where
    W: AsyncWrite + Unpin,
{
    let mut beat = tokio::time::interval(wire.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_id = 0u64;
    let fail = |e: std::io::Error| format!("cannot write to the site: {e}");
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let body = encode_message(&ToSite::Heartbeat).map_err(|e| e.to_string())?;
                sink.send(body).await.map_err(fail)?;
            }
            Some(read) = reads.recv() => {
                next_id += 1;
                let id = next_id;
                {
                    let mut waiting = lock(&pending);
                    if waiting.len() >= PENDING_READS_MAX {
                        let _ = read.reply.send(LogAnswer::Failed(
                            "too many log reads are waiting for this site; try again".into(),
                        ));
                        continue;
                    }
                    waiting.insert(id, read.reply);
                }
                let message = ToSite::ReadLog {
                    id,
                    job_id: read.job_id,
                    stream: read.stream,
                    offset: read.offset,
                    max: LOG_CHUNK_MAX as u32,
                };
                let body = encode_message(&message).map_err(|e| e.to_string())?;
                sink.send(body).await.map_err(fail)?;
            }
            request = requests.recv() => {
                let Some(request) = request else { return Ok(()) };
                next_id += 1;
                let id = next_id;
                match WireRequest::from_request(&request) {
                    Some(request) => {
                        let body = encode_message(&ToSite::Request { id, request })
                            .map_err(|e| e.to_string())?;
                        sink.send(body).await.map_err(fail)?;
                    }
                    None => {
                        let SiteRequest::Deploy { job_id, app_name, package, hash, verify_at } = request
                        else {
                            continue;
                        };
                        let begin = ToSite::DeployBegin {
                            id,
                            job_id,
                            app_name,
                            size: package.len() as u64,
                            blake3: hash.to_hex(),
                            verify_at,
                        };
                        sink.send(encode_message(&begin).map_err(|e| e.to_string())?)
                            .await
                            .map_err(fail)?;
                        // Each chunk is cut from the shared package bytes when the previous
                        // one has been taken by the connection.
                        for chunk in package.chunks(wire.chunk_size.max(1)) {
                            sink.send(encode_chunk(id, chunk)).await.map_err(fail)?;
                        }
                        tracing::debug!(%job_id, bytes = package.len(), "package sent");
                        // The write buffer grew to a chunk; an idle link keeps none of it
                        // (`send` flushed it, so it is empty).
                        *sink.write_buffer_mut() = bytes::BytesMut::new();
                    }
                }
            }
        }
    }
}

/// The keys of the server settings file that belong to the site protocol, not to
/// [`Settings`].
const WIRE_KEYS: [&str; 2] = ["heartbeat_interval", "heartbeat_timeout"];

/// The key of the observation listener's address (SPEC section 11), a server setting that
/// belongs to neither [`Settings`] nor the site protocol.
pub const METRICS_LISTEN_KEY: &str = "metrics_listen";

/// Everything a server's settings file and environment set.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// The settings of SPEC sections 4, 6, 7 and 8.
    pub settings: crate::settings::Settings,
    /// The site protocol's heartbeats.
    pub wire: WireConfig,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (off when `None`).
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads the server's settings (SPEC section 11): see [`load_server_options`], without
/// `metrics_listen`.
pub fn load_server_settings(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(crate::settings::Settings, WireConfig), String> {
    load_server_options(file, env).map(|o| (o.settings, o.wire))
}

/// Reads the server's settings (SPEC section 11): the `[server]` table of `file` (a
/// scenario's `[server]` table: the settings of sections 4, 6, 7 and 8 plus
/// `resume_runs`, the site protocol's `heartbeat_interval` and `heartbeat_timeout`, and
/// `metrics_listen`), then every `FEDRUN_SETTING_<NAME>` of `env` over it, then the
/// defaults for the rest. Unknown keys, in the file or the environment, are errors.
pub fn load_server_options(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ServerSettings, String> {
    let mut table = match file {
        None => toml::Table::new(),
        Some(path) => {
            let mut top = read_table(path)?;
            let server = match top.remove("server") {
                None => toml::Table::new(),
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(format!("{}: `server` must be a table", path.display())),
            };
            if let Some(key) = top.keys().next() {
                return Err(format!(
                    "{}: unknown key `{key}` (the settings go in the [server] table)",
                    path.display()
                ));
            }
            server
        }
    };
    let known = server_setting_names();
    for (name, value) in env {
        let Some(key) = name.strip_prefix("FEDRUN_SETTING_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if !known.contains(&key) {
            return Err(format!(
                "{name}: unknown setting `{key}` (known: {})",
                known.join(", ")
            ));
        }
        table.insert(key, env_value(&value));
    }
    let wire = take_wire(&mut table, WireConfig::default())?;
    let metrics_listen = take_metrics_listen(&mut table)?;
    let settings: crate::settings::Settings = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("server settings: {}", e.message()))?;
    settings
        .validate()
        .map_err(|e| format!("server settings: {e}"))?;
    Ok(ServerSettings {
        settings,
        wire,
        metrics_listen,
    })
}

/// Takes `metrics_listen` out of a settings table: an address text (see
/// [`super::observe::parse_listen`]) or a port number.
pub fn take_metrics_listen(table: &mut toml::Table) -> Result<Option<SocketAddr>, String> {
    match table.remove(METRICS_LISTEN_KEY) {
        None => Ok(None),
        Some(toml::Value::String(text)) => super::observe::parse_listen(&text).map(Some),
        Some(toml::Value::Integer(port)) => u16::try_from(port)
            .map(|port| Some(SocketAddr::from(([127, 0, 0, 1], port))))
            .map_err(|_| format!("metrics_listen = {port} is not a port")),
        Some(other) => Err(format!(
            "metrics_listen must be an address text like \"127.0.0.1:9464\", not {other}"
        )),
    }
}

/// Every key the server's settings accept.
pub fn server_setting_names() -> Vec<String> {
    let defaults = toml::Value::try_from(crate::settings::Settings::default())
        .ok()
        .and_then(|v| v.as_table().cloned())
        .unwrap_or_default();
    let mut names: Vec<String> = defaults.keys().cloned().collect();
    // Unset by default, so absent from the serialized defaults.
    names.push("require_signed_jobs".into());
    names.extend(WIRE_KEYS.iter().map(|k| k.to_string()));
    names.push(METRICS_LISTEN_KEY.into());
    names.sort();
    names.dedup();
    names
}

/// A TOML file's top-level table, size-bounded.
pub fn read_table(path: &std::path::Path) -> Result<toml::Table, String> {
    let bytes = crate::trust::files::read_bounded(
        path,
        crate::trust::files::PROJECT_FILE_MAX_BYTES,
        "settings file",
    )
    .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    text.parse().map_err(|e: toml::de::Error| {
        let message = crate::settings::toml_message(&text, &e);
        format!("{}: {message}", path.display())
    })
}

/// An environment value as TOML: a number or boolean when it reads as one, else text.
fn env_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Takes the heartbeat keys out of a settings table into `wire`.
pub fn take_wire(table: &mut toml::Table, mut wire: WireConfig) -> Result<WireConfig, String> {
    for key in WIRE_KEYS {
        let Some(value) = table.remove(key) else {
            continue;
        };
        let text = value
            .as_str()
            .ok_or_else(|| format!("{key} must be a duration text like \"5s\""))?;
        let duration = crate::settings::parse_duration(text).map_err(|e| format!("{key}: {e}"))?;
        if duration.is_zero() {
            return Err(format!("{key} must be longer than zero"));
        }
        match key {
            "heartbeat_interval" => wire.heartbeat_interval = duration,
            _ => wire.heartbeat_timeout = duration,
        }
    }
    if wire.heartbeat_timeout <= wire.heartbeat_interval {
        return Err(format!(
            "heartbeat_timeout ({:?}) must be longer than heartbeat_interval ({:?})",
            wire.heartbeat_timeout, wire.heartbeat_interval
        ));
    }
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_env_over_file_over_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.toml");
        std::fs::write(
            &file,
            "[server]\nmax_jobs = 2\nabort_grace = \"3s\"\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"4s\"\n",
        )
        .expect("write");
        let env = [
            ("FEDRUN_SETTING_MAX_JOBS".to_string(), "7".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let (settings, wire) = load_server_settings(Some(&file), env).expect("settings");
        assert_eq!(settings.max_jobs, 7, "the environment wins over the file");
        assert_eq!(
            settings.abort_grace,
            Duration::from_secs(3),
            "the file wins over defaults"
        );
        assert_eq!(settings.max_schedule_count, 10, "default");
        assert_eq!(wire.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(wire.heartbeat_timeout, Duration::from_secs(4));
    }

    #[test]
    fn metrics_listen_is_a_setting_with_loopback_for_a_bare_port() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.toml");
        std::fs::write(&file, "[server]\nmetrics_listen = \"0.0.0.0:9464\"\n").expect("write");
        let options = load_server_options(Some(&file), []).expect("settings");
        assert_eq!(
            options.metrics_listen,
            Some("0.0.0.0:9464".parse().expect("addr"))
        );
        let env = [(
            "FEDRUN_SETTING_METRICS_LISTEN".to_string(),
            "9465".to_string(),
        )];
        let options = load_server_options(Some(&file), env).expect("settings");
        assert_eq!(
            options.metrics_listen,
            Some("127.0.0.1:9465".parse().expect("addr")),
            "the environment wins; a bare port is loopback"
        );
        assert_eq!(
            load_server_options(None, [])
                .expect("defaults")
                .metrics_listen,
            None
        );
        std::fs::write(&file, "[server]\nmetrics_listen = \"here\"\n").expect("write");
        let err = load_server_options(Some(&file), []).expect_err("not an address");
        assert!(err.contains("metrics_listen"), "{err}");
    }

    #[test]
    fn unknown_settings_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.toml");
        std::fs::write(&file, "[server]\nmax_jobz = 2\n").expect("write");
        let err = load_server_settings(Some(&file), []).expect_err("unknown key");
        assert!(err.contains("max_jobz"), "{err}");
        std::fs::write(&file, "max_jobs = 2\n").expect("write");
        let err = load_server_settings(Some(&file), []).expect_err("outside [server]");
        assert!(err.contains("max_jobs"), "{err}");
        let env = [("FEDRUN_SETTING_NOPE".to_string(), "1".to_string())];
        let err = load_server_settings(None, env).expect_err("unknown env setting");
        assert!(err.contains("nope"), "{err}");
        let env = [("FEDRUN_SETTING_ABORT_GRACE".to_string(), "soon".to_string())];
        assert!(load_server_settings(None, env).is_err(), "bad duration");
    }
}
