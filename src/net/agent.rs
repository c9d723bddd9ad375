//! The site agent (SPEC section 11): a [`LocalSite`] whose link to the engine is one
//! long-lived mutual-TLS connection that the agent dials out to the server.
//!
//! The agent keeps the connection with heartbeats and, when it is lost or refused, dials
//! again after a back-off with jitter. The local site is told: `disconnect()` when the
//! connection goes (it keeps its apps and its unacknowledged exit reports) and
//! `reconnect()` when a new one is up (it reports `Connected` with the jobs it runs, then
//! every unacknowledged report again). Stopping the agent ends the site task as a crash
//! would: apps keep running and the next agent on the same work folder re-attaches them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::kit::Kit;
use super::tls::{client_config, server_name, TlsError, ALPN_SITE};
use super::wire::{decode, encode_message, stopped, Frame, FromSite, Incoming, ToSite, WireConfig};
use crate::metrics::SiteMetrics;
use crate::site::local::{LocalSite, LocalSiteConfig, SiteHandle};
use crate::site::logs::{read_chunk, LogAnswer};
use crate::site::protocol::{SiteReport, SiteRequest};
use crate::site::workspace;

/// How a site agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The site's kit.
    pub kit: Kit,
    /// The address dialled (`host:port`); the TLS name stays the kit's server host.
    pub server: String,
    /// The site protocol's settings.
    pub wire: WireConfig,
    /// The local site the agent wraps (its name must be the kit's).
    pub site: LocalSiteConfig,
    /// The first back-off after a lost or failed connection.
    pub backoff_min: Duration,
    /// The longest back-off.
    pub backoff_max: Duration,
    /// The agent's metrics (served on `metrics_listen` by `fedrun site`).
    pub metrics: std::sync::Arc<SiteMetrics>,
}

impl AgentConfig {
    /// An agent for `kit` with the default protocol settings and back-off (0.5 s to 30 s).
    pub fn new(kit: Kit, site: LocalSiteConfig) -> AgentConfig {
        AgentConfig {
            server: kit.server_address(),
            kit,
            wire: WireConfig::default(),
            site,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            metrics: Default::default(),
        }
    }
}

/// Why a connection to the server could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kit's TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {source}")]
    Dial {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (a certificate refused on either end).
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the site, and said why.
    #[error("the server refused this site: {0}")]
    Refused(String),
    /// The server closed the connection or said something else than a welcome.
    #[error("the server did not welcome this site: {0}")]
    NoWelcome(String),
}

/// A connection the server has welcomed.
pub struct Link {
    frames: FramedRead<tokio::io::ReadHalf<TlsStream<TcpStream>>, LengthDelimitedCodec>,
    sink: FramedWrite<tokio::io::WriteHalf<TlsStream<TcpStream>>, LengthDelimitedCodec>,
}

/// Dials the server, does the TLS handshake as the kit's site, and waits for the server's
/// welcome (or refusal), all within the heartbeat timeout.
pub async fn connect(kit: &Kit, server: &str, wire: &WireConfig) -> Result<Link, ConnectError> {
    let connector = TlsConnector::from(client_config(kit, ALPN_SITE)?);
    let name = server_name(kit)?;
    let within = wire.heartbeat_timeout;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let tcp = tokio::time::timeout(within, TcpStream::connect(server))
        .await
        .map_err(|_| timed_out())
        .and_then(|r| r)
        .map_err(|source| ConnectError::Dial {
            addr: server.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(within, connector.connect(name, tcp))
        .await
        .map_err(|_| timed_out())
        .and_then(|r| r)
        .map_err(|source| ConnectError::Handshake {
            addr: server.to_string(),
            source,
        })?;
    let (read, write) = tokio::io::split(tls);
    let mut frames = FramedRead::new(read, wire.codec());
    let sink = FramedWrite::new(write, wire.codec());
    // In TLS 1.3 the server checks the client certificate after the client has finished
    // its handshake, so a refused certificate shows here, as the first read failing.
    let first = tokio::time::timeout(within, frames.next())
        .await
        .map_err(|_| ConnectError::NoWelcome("no answer within the heartbeat timeout".into()))?;
    match first {
        None => Err(ConnectError::NoWelcome(
            "the server closed the connection".into(),
        )),
        Some(Err(source)) => Err(ConnectError::Handshake {
            addr: server.to_string(),
            source,
        }),
        Some(Ok(body)) => match decode::<ToSite>(body) {
            Ok(Frame::Message(ToSite::Welcome { .. })) => Ok(Link { frames, sink }),
            Ok(Frame::Message(ToSite::Refused { reason })) => Err(ConnectError::Refused(reason)),
            Ok(other) => Err(ConnectError::NoWelcome(format!("unexpected {other:?}"))),
            Err(e) => Err(ConnectError::NoWelcome(e.to_string())),
        },
    }
}

/// A running site agent.
pub struct Agent {
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Starts the agent: the local site (which re-attaches to apps in its work folder) and
    /// the connection loop. Must be called inside a tokio runtime.
    pub fn spawn(config: AgentConfig) -> Result<Agent, TlsError> {
        // A kit that cannot make a TLS configuration never will: say so at once.
        client_config(&config.kit, ALPN_SITE)?;
        server_name(&config.kit)?;
        let (stop, stop_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let task = tokio::spawn(run(config, stop_rx, connected_tx));
        Ok(Agent {
            stop,
            connected,
            task,
        })
    }

    /// Whether the agent has a welcomed connection now.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Ends the agent, leaving its apps running (they are re-attached by the next agent).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(config: AgentConfig, mut stop: watch::Receiver<bool>, connected: watch::Sender<bool>) {
    let name = config.site.name.clone();
    let (reports_tx, mut reports) = mpsc::channel(256);
    let mut site_config = config.site.clone();
    site_config.running_apps = config.metrics.running_apps.clone();
    let site = LocalSite::spawn(site_config, reports_tx);
    // The local site starts connected; it is not until the server has welcomed it.
    site.disconnect();
    // It announces itself (`Connected`, then its unacknowledged reports) once it has
    // re-attached its apps; that announcement is for no server. It is awaited before the
    // first dial: a connection welcomed before it would carry it next to the `Connected`
    // of `reconnect()`, and the server would record the site connected twice.
    tokio::select! {
        _ = reports.recv() => {}
        _ = stopped(&mut stop) => {
            site.shutdown().await;
            return;
        }
    }
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            attempt = connect(&config.kit, &config.server, &config.wire) => Some(attempt),
            _ = stopped(&mut stop) => None,
            // Reports made while disconnected are not sent; the local site keeps what
            // must be resent.
            _ = drain_forever(&mut reports) => None,
        };
        let Some(attempt) = attempt else { break };
        match attempt {
            Ok(link) => {
                failures = 0;
                tracing::info!(site = %name, server = %config.server, "connected to the server");
                while reports.try_recv().is_ok() {}
                site.reconnect();
                config.metrics.record_connected();
                let _ = connected.send(true);
                let root = config.site.workspace.clone();
                let why = serve_link(
                    link,
                    &site,
                    &root,
                    &mut reports,
                    &config.wire,
                    &config.metrics,
                    &mut stop,
                )
                .await;
                config.metrics.record_disconnected();
                let _ = connected.send(false);
                site.disconnect();
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(site = %name, server = %config.server, reason = %why, "connection to the server lost");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(site = %name, server = %config.server, error = %e, "cannot connect to the server");
            }
        }
        let delay = backoff(&config, failures);
        tracing::debug!(site = %name, ?delay, "dialling again after a back-off");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
            _ = drain_forever(&mut reports) => {}
        }
    }
    site.shutdown().await;
    tracing::info!(site = %name, "site agent stopped; apps keep running");
}

/// Reads and drops reports; never ends while the local site lives.
async fn drain_forever(reports: &mut mpsc::Receiver<(String, SiteReport)>) {
    while reports.recv().await.is_some() {}
    std::future::pending::<()>().await
}

/// The back-off after `failures` failed attempts in a row (0 after a lost connection):
/// doubling from `backoff_min` up to `backoff_max`, with up to half of it as jitter.
fn backoff(config: &AgentConfig, failures: u32) -> Duration {
    let base = config
        .backoff_min
        .saturating_mul(1u32 << failures.min(16))
        .min(config.backoff_max);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.5);
    (base / 2 + jitter).max(Duration::from_millis(10))
}

/// Carries requests and reports over one welcomed connection until it ends; returns why.
async fn serve_link(
    link: Link,
    site: &SiteHandle,
    root: &std::path::Path,
    reports: &mut mpsc::Receiver<(String, SiteReport)>,
    wire: &WireConfig,
    metrics: &SiteMetrics,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let Link { mut frames, sink } = link;
    let (out_tx, out_rx) = mpsc::channel::<FromSite>(64);
    let mut writer = tokio::spawn(site_writer(sink, out_rx, wire.heartbeat_interval));
    let mut incoming: BTreeMap<u64, Incoming> = BTreeMap::new();
    let mut refused_deploys: std::collections::BTreeSet<u64> = Default::default();
    let mut next_report = 0u64;
    let why = loop {
        tokio::select! {
            _ = stopped(stop) => break "the agent is stopping".to_string(),
            ended = &mut writer => break match ended {
                Ok(e) => e,
                Err(e) => format!("writer failed: {e}"),
            },
            report = reports.recv() => {
                let Some((_, report)) = report else { break "the local site ended".to_string() };
                if report == SiteReport::Disconnected {
                    // The server concludes that itself; it never travels.
                    continue;
                }
                next_report += 1;
                if out_tx.send(FromSite::Report { id: next_report, report }).await.is_err() {
                    break "the connection's writer ended".to_string();
                }
            }
            next = tokio::time::timeout(wire.heartbeat_timeout, frames.next()) => {
                let body = match next {
                    Err(_) => break format!("no frame for {:?} (heartbeat timeout)", wire.heartbeat_timeout),
                    Ok(None) => break "closed by the server".to_string(),
                    Ok(Some(Err(e))) => break format!("unreadable frame: {e}"),
                    Ok(Some(Ok(body))) => body,
                };
                let request = match decode::<ToSite>(body) {
                    Err(e) => break e.to_string(),
                    Ok(Frame::Message(ToSite::Heartbeat | ToSite::Welcome { .. })) => None,
                    Ok(Frame::Message(ToSite::Refused { reason })) => {
                        break format!("the server refused this site: {reason}")
                    }
                    Ok(Frame::Message(ToSite::Request { request, .. })) => Some(request.into_request()),
                    Ok(Frame::Message(ToSite::ReadLog { id, job_id, stream, offset, max })) => {
                        // Read off the connection's loop: a slow disk holds back only
                        // this answer, which goes out through the same writer.
                        let path = stream.path_in(&workspace::job_dir(root, job_id));
                        let out = out_tx.clone();
                        tokio::spawn(async move {
                            let answer = tokio::task::spawn_blocking(move || {
                                read_chunk(&path, offset, max as usize)
                            })
                            .await
                            .unwrap_or_else(|e| LogAnswer::Failed(e.to_string()));
                            let _ = out.send(FromSite::Log { id, answer }).await;
                        });
                        None
                    }
                    Ok(Frame::Message(ToSite::DeployBegin { id, job_id, app_name, size, blake3, verify_at })) => {
                        if size > wire.max_package {
                            refused_deploys.insert(id);
                            let result = Err(format!(
                                "the package of {size} bytes is larger than this site accepts ({} bytes)",
                                wire.max_package
                            ));
                            next_report += 1;
                            let report = SiteReport::DeployAnswer { job_id, result };
                            if out_tx.send(FromSite::Report { id: next_report, report }).await.is_err() {
                                break "the connection's writer ended".to_string();
                            }
                            None
                        } else if size == 0 {
                            let whole = Incoming { id, job_id, app_name, size, blake3, verify_at, bytes: Vec::new() };
                            finish(whole, &out_tx, &mut next_report).await
                        } else {
                            let capacity = usize::try_from(size).unwrap_or(0).min(64 * 1024 * 1024);
                            incoming.insert(id, Incoming { id, job_id, app_name, size, blake3, verify_at, bytes: Vec::with_capacity(capacity) });
                            None
                        }
                    }
                    Ok(Frame::Chunk { id, data }) => {
                        metrics.deploy_bytes_received.inc_by(data.len() as u64);
                        if refused_deploys.contains(&id) {
                            None
                        } else {
                            let Some(package) = incoming.get_mut(&id) else {
                                break format!("a package chunk for unknown deploy {id}");
                            };
                            match package.push(&data) {
                                Ok(false) => None,
                                Ok(true) => match incoming.remove(&id) {
                                    Some(whole) => finish(whole, &out_tx, &mut next_report).await,
                                    None => None,
                                },
                                Err(e) => break e,
                            }
                        }
                    }
                };
                if let Some(request) = request {
                    if site.requests.send(request).await.is_err() {
                        break "the local site ended".to_string();
                    }
                }
            }
        }
    };
    writer.abort();
    why
}

/// A complete package: the deploy request when its hash matches, or the refusal sent back.
async fn finish(
    whole: Incoming,
    out: &mpsc::Sender<FromSite>,
    next_report: &mut u64,
) -> Option<SiteRequest> {
    match whole.finish() {
        Ok(request) => Some(request),
        Err((job_id, why)) => {
            tracing::warn!(%job_id, reason = %why, "package refused before unpacking");
            *next_report += 1;
            let report = SiteReport::DeployAnswer {
                job_id,
                result: Err(why),
            };
            let _ = out
                .send(FromSite::Report {
                    id: *next_report,
                    report,
                })
                .await;
            None
        }
    }
}

/// Writes reports and heartbeats to the server; returns why it stopped.
async fn site_writer<W>(
    mut sink: FramedWrite<W, LengthDelimitedCodec>,
    mut out: mpsc::Receiver<FromSite>,
    interval: Duration,
) -> String
where
    W: AsyncWrite + Unpin,
{
    let mut beat = tokio::time::interval(interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = beat.tick() => FromSite::Heartbeat,
            message = out.recv() => match message {
                Some(message) => message,
                None => return "the link ended".to_string(),
            },
        };
        let body = match encode_message(&message) {
            Ok(body) => body,
            Err(e) => return e.to_string(),
        };
        if let Err(e) = sink.send(body).await {
            return format!("cannot write to the server: {e}");
        }
    }
}
