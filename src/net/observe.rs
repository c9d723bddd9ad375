//! The observation listener (SPEC section 11): the optional plain-HTTP `metrics_listen`
//! address of the server and of a site agent, serving `/metrics` (Prometheus, OpenMetrics
//! text), `/healthz` (the process is alive) and `/readyz` (it does its work: a server
//! whose history is open and that accepts requests; a site connected to its server).
//!
//! It is the only thing a site ever listens for, so it serves nothing else and reads
//! nothing from a request but its method and path. Loopback unless an address says
//! otherwise: a bare port means `127.0.0.1:PORT`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::wire::stopped;
use crate::engine::server::Server;
use crate::metrics::{SiteMetrics, CONTENT_TYPE};

/// How long a connection may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the listener serves: the metrics text and the readiness of a process.
pub trait Observed: Send + Sync + 'static {
    /// Every metric, in the OpenMetrics text format.
    fn metrics(&self) -> String;
    /// `Ok` when the process does its work; `Err` says why not.
    fn ready(&self) -> Result<(), String>;
}

impl Observed for Server {
    fn metrics(&self) -> String {
        Server::metrics(self).encode()
    }

    fn ready(&self) -> Result<(), String> {
        Server::ready(self)
    }
}

impl Observed for SiteMetrics {
    fn metrics(&self) -> String {
        self.encode()
    }

    fn ready(&self) -> Result<(), String> {
        SiteMetrics::ready(self)
    }
}

/// Reads a `metrics_listen` value: `HOST:PORT` with an IP literal, `localhost:PORT`, or a
/// bare `PORT` (loopback).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!(
            "metrics_listen = {text:?} is not an address: give PORT (loopback), \
             IP:PORT or localhost:PORT"
        )
    })
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct ObserveError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A running observation listener.
pub struct Observing {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Observing {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for the loop to end (open connections are dropped).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The router of the listener: `/metrics`, `/healthz`, `/readyz`, nothing else.
pub fn router(observed: Arc<dyn Observed>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: this address serves /metrics, /healthz and /readyz\n",
            )
        })
        .with_state(observed)
}

/// The `/metrics` answer for `text`.
pub fn metrics_response(text: String) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

async fn metrics(
    axum::extract::State(observed): axum::extract::State<Arc<dyn Observed>>,
) -> Response {
    metrics_response(observed.metrics())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(
    axum::extract::State(observed): axum::extract::State<Arc<dyn Observed>>,
) -> Response {
    match observed.ready() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

/// Binds `addr` and serves `observed` until stopped.
pub async fn start(
    addr: SocketAddr,
    observed: Arc<dyn Observed>,
) -> Result<Observing, ObserveError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ObserveError { addr, source })?;
    let (stop, mut stop_rx) = watch::channel(false);
    let app = router(observed);
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let service = hyper_util::service::TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT)
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stopped(&mut stop_rx) => break,
            }
        }
        connections.abort_all();
    });
    Ok(Observing { addr, stop, task })
}
