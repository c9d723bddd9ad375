//! The admin API's client, as the admin CLI uses it: one HTTP/1.1 request per connection,
//! over mutual TLS with an admin kit (or over any stream, for tests), with errors sorted
//! the way the CLI's exit codes need them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a lost connection may stay lost before the CLI gives up (SPEC section 11).
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(30);

/// A byte stream to the server.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed connection attempt.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Stream>>> + Send>>;

/// Opens a new connection to the server.
pub type Connector = Arc<dyn Fn() -> Connecting + Send + Sync>;

/// Told how a request's body goes out (uploads) or an answer's body comes in (downloads);
/// the CLI draws a progress bar with it on a terminal.
pub trait Progress: Send + Sync {
    /// The transfer starts (again, on a retry) and will move `total` bytes, when known.
    fn start(&self, total: Option<u64>);
    /// `bytes` more have moved.
    fn advance(&self, bytes: u64);
}

/// No progress shown.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
}

/// Bytes per frame of an upload: the progress moves frame by frame.
const UPLOAD_FRAME: usize = 64 * 1024;

/// A request body handed to the connection in [`UPLOAD_FRAME`]-sized frames, each one told
/// to the progress as it goes.
struct UploadBody {
    rest: Bytes,
    progress: Arc<dyn Progress>,
}

impl http_body::Body for UploadBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let take = self.rest.len().min(UPLOAD_FRAME);
        let frame = self.rest.split_to(take);
        self.progress.advance(take as u64);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (or it broke before an answer came).
    #[error("cannot reach the server at {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the server refused ({status}, {code}): {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The stable code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the request never reached the server (or its answer never came back).
    pub fn is_connection(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }

    /// Whether the server said it is busy or stopped (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Refused { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// A client of one server's admin API.
#[derive(Clone)]
pub struct Client {
    connector: Connector,
    addr: String,
    connected_once: Arc<AtomicBool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).finish()
    }
}

/// Why a client could not be made from a kit.
#[derive(Debug, thiserror::Error)]
pub enum KitClientError {
    /// The kit is incomplete or unreadable.
    #[error(transparent)]
    Kit(#[from] crate::net::kit::KitError),
    /// Its TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
    /// The kit is not an admin's.
    #[error("the kit {0} is not an admin's kit; the admin commands need one")]
    NotAdmin(std::path::PathBuf),
}

impl Client {
    /// A client that opens each connection with `connector`; `addr` names the server in
    /// messages.
    pub fn new(addr: impl Into<String>, connector: Connector) -> Client {
        Client {
            connector,
            addr: addr.into(),
            connected_once: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A client over mutual TLS with the admin kit in `kit_dir`, dialling `server` (or the
    /// kit's server address); the server's certificate is checked against the kit's host
    /// name either way.
    pub fn from_kit(
        kit_dir: &std::path::Path,
        server: Option<&str>,
    ) -> Result<Client, KitClientError> {
        let kit = crate::net::kit::Kit::load(kit_dir)?;
        if !matches!(kit.kind, crate::net::kit::KitKind::Admin { .. }) {
            return Err(KitClientError::NotAdmin(kit_dir.to_path_buf()));
        }
        let config = crate::net::tls::client_config(&kit, crate::net::tls::ALPN_HTTP)?;
        let name = crate::net::tls::server_name(&kit)?;
        let addr = server.map_or_else(|| kit.server_address(), str::to_string);
        let dial = addr.clone();
        let connector: Connector = Arc::new(move || {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let name = name.clone();
            let dial = dial.clone();
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(&dial).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok(Box::new(tls) as Box<dyn Stream>)
            })
        });
        Ok(Client::new(addr, connector))
    }

    /// The address the client dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The connection broke while an answer's body was read.
    fn broke(&self, error: hyper::Error) -> ClientError {
        ClientError::Connect {
            addr: self.addr.clone(),
            reason: error.to_string(),
        }
    }

    /// Sends one request and returns the answer's head and streaming body. A non-2xx answer
    /// is [`ClientError::Refused`] with the server's code and message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send_counted(method, path, headers, body, Arc::new(NoProgress))
            .await
    }

    /// [`Client::send`], telling `upload` how the request's body goes out.
    pub async fn send_counted(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        upload: Arc<dyn Progress>,
    ) -> Result<Response<Incoming>, ClientError> {
        let response = self
            .send_any_counted(method, path, headers, body, upload)
            .await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broke(e))?
            .to_bytes();
        let (code, message) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => (
                value["code"].as_str().unwrap_or("unknown").to_string(),
                value["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            ),
            Err(_) => (
                "unknown".to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        Err(ClientError::Refused {
            status,
            code,
            message,
        })
    }

    /// Sends one request and returns the answer whatever its status, as a proxy needs it
    /// (`fedrun dashboard` passes the server's errors through unchanged).
    pub async fn send_any(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send_any_counted(method, path, headers, body, Arc::new(NoProgress))
            .await
    }

    /// [`Client::send_any`], telling `upload` how the request's body goes out.
    async fn send_any_counted(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        upload: Arc<dyn Progress>,
    ) -> Result<Response<Incoming>, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let stream = (self.connector)()
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, UploadBody>(TokioIo::new(stream))
                .await
                .map_err(|e| connect_error(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "admin API connection ended with an error");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.as_str());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        upload.start(Some(body.len() as u64));
        let request = request
            .body(UploadBody {
                rest: body,
                progress: upload,
            })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        self.connected_once.store(true, Ordering::Relaxed);
        Ok(response)
    }

    /// [`Client::send`] and the whole body.
    pub async fn send_full(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        self.send_full_counted(
            method,
            path,
            headers,
            body,
            Arc::new(NoProgress),
            Arc::new(NoProgress),
        )
        .await
    }

    /// [`Client::send`] and the whole body, telling `upload` how the request's body goes
    /// out and `download` how the answer's comes in.
    pub async fn send_full_counted(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        upload: Arc<dyn Progress>,
        download: Arc<dyn Progress>,
    ) -> Result<Bytes, ClientError> {
        let response = self
            .send_counted(method, path, headers, body, upload)
            .await?;
        let total = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        download.start(total);
        let mut body = response.into_body();
        let mut received = Vec::with_capacity(total.unwrap_or(0).min(64 << 20) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.broke(e))?;
            if let Ok(data) = frame.into_data() {
                download.advance(data.len() as u64);
                received.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(received))
    }

    /// A request whose answer is JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = self.send_full(method, path, headers, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Runs `attempt` again while the connection is lost (or the server is busy) and
    /// [`RECONNECT_WINDOW`] has not passed since it was lost; a server never reached at all
    /// fails at once. The same request (and idempotency key) is sent each time.
    pub async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut lost_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(100);
        loop {
            match attempt().await {
                Err(err) if err.is_connection() || err.is_unavailable() => {
                    if err.is_connection() && !self.connected_once.load(Ordering::Relaxed) {
                        return Err(err);
                    }
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= RECONNECT_WINDOW {
                        return Err(err);
                    }
                    tracing::info!(error = %err, "retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
