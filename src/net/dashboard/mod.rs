//! `fedrun dashboard` (SPEC section 11, "Observation"): a read-only page on 127.0.0.1 that
//! reaches the server's admin API with an admin's kit, as `kubectl proxy` does, so no
//! browser needs a client certificate.
//!
//! The same local address serves the page (HTML, script and style compiled into the
//! binary from `page/`) and forwards the server's read-only routes ([`FORWARDED`]). Every
//! forwarded request goes to the server as a `GET` of one of those routes: any other
//! method or path is answered here (405 or 404) and never reaches the server, so the
//! dashboard offers no way to change a job (downloads included: the server records them).
//! A request whose `Host` is not `127.0.0.1` or `localhost` is refused with 403, so a web
//! page whose name is made to resolve to 127.0.0.1 (DNS rebinding) cannot read through it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::json;

use crate::net::client::Client;

/// The page's HTML.
pub const INDEX_HTML: &str = include_str!("page/index.html");
/// The page's script: it builds every element with `textContent`, never from HTML text.
pub const SCRIPT: &str = include_str!("page/dashboard.js");
/// The page's style.
pub const STYLE: &str = include_str!("page/dashboard.css");

/// The server routes the dashboard forwards (in axum's path syntax), all with `GET` only.
/// `/v1/jobs/{id}/download` is not among them: a download is recorded in the history.
pub const FORWARDED: [&str; 7] = [
    "/v1/jobs",
    "/v1/jobs/{id}",
    "/v1/sites",
    "/v1/history",
    "/v1/audit",
    "/v1/openapi.json",
    "/metrics",
];

/// The headers of the server's answer that are passed on to the browser.
const PASSED_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::RETRY_AFTER,
];

/// What every answer carries: the page loads only its own script and style and talks only
/// to its own origin, and no other site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// How long a browser connection may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a `Host` header names this machine's loopback as the dashboard is reached:
/// `127.0.0.1` or `localhost` (any case), with or without a port.
pub fn host_is_local(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost");
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
    });
    name_ok && port_ok
}

/// An error answered by the dashboard itself, in the admin API's shape.
fn refusal(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "code": code, "message": message.into() });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// The dashboard's router: the page, the forwarded routes (through `client`), and the
/// refusals, behind the `Host` check.
pub fn router(client: Client) -> Router {
    let mut router = Router::new()
        .route("/", get(index))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style));
    for path in FORWARDED {
        router = router.route(path, get(forward));
    }
    router
        .fallback(|| async {
            refusal(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "the dashboard serves its page and forwards only the read-only routes",
            )
        })
        .method_not_allowed_fallback(|| async {
            refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the dashboard is read-only: it forwards GET requests only",
            )
        })
        .layer(middleware::from_fn(guard))
        .with_state(Arc::new(client))
}

/// Refuses a request whose `Host` is not local, and adds the security headers to every
/// answer.
async fn guard(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let mut response = match host {
        Some(host) if host_is_local(host) => next.run(request).await,
        _ => {
            tracing::warn!(host = ?host, path = %request.uri().path(), "refused a request for another host");
            refusal(
                StatusCode::FORBIDDEN,
                "host_refused",
                "the dashboard answers only requests for 127.0.0.1 or localhost",
            )
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Forwards one read-only request to the server and streams its answer back (a followed
/// history stays open as long as the browser reads it).
async fn forward(State(client): State<Arc<Client>>, uri: Uri) -> Response {
    let Some(path) = uri.path_and_query().map(|p| p.as_str()) else {
        return refusal(StatusCode::BAD_REQUEST, "bad_request", "no path");
    };
    // The route was matched on the path as sent; an encoded character could make the
    // server see another path (`%2F` is a `/` once decoded), so none is forwarded.
    if uri.path().contains('%') {
        return refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the dashboard forwards no percent-encoded path",
        );
    }
    match client.send_any(Method::GET, path, &[], Bytes::new()).await {
        Ok(answer) => {
            let (parts, body) = answer.into_parts();
            let mut response = Response::new(Body::new(body));
            *response.status_mut() = parts.status;
            copy_headers(&parts.headers, response.headers_mut());
            response
        }
        Err(err) => {
            tracing::warn!(error = %err, %path, "the server could not be reached");
            refusal(
                StatusCode::BAD_GATEWAY,
                "server_unreachable",
                err.to_string(),
            )
        }
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in PASSED_HEADERS {
        if let Some(value) = from.get(&name) {
            to.insert(name, value.clone());
        }
    }
    to.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A running dashboard.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// The address it listens on (always on 127.0.0.1).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and closes every open connection (followed histories included).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts a dashboard on `127.0.0.1:port` (0 picks a free port) that reaches the server
/// through `client`. It never listens on another interface.
pub async fn start(client: Client, port: u16) -> std::io::Result<Dashboard> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let addr = listener.local_addr()?;
    let app = router(client);
    let task = tokio::spawn(async move {
        // The connections live in this set, so aborting the task closes them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let service = hyper_util::service::TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let _ = stream.set_nodelay(true);
                            let io = hyper_util::rt::TokioIo::new(stream);
                            if let Err(err) = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .header_read_timeout(HEADER_READ_TIMEOUT)
                                .serve_connection(io, service)
                                .await
                            {
                                tracing::debug!(%peer, error = %err, "dashboard connection ended with an error");
                            }
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %err, "accepting a dashboard connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Dashboard { addr, task })
}
