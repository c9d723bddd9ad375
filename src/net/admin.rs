//! The admin API: HTTP/JSON over the server's mutual-TLS port (SPEC section 11).
//!
//! One route per operation of SPEC section 9 (`/v1/jobs...`), plus `sites`, `history`,
//! `audit` and the Prometheus `/metrics`, and the OpenAPI document that describes them all (`/v1/openapi.json`, kept in
//! `docs/openapi.json`). The caller's identity comes from its certificate: the accept loop
//! hands it to [`serve_connection`], which puts it in every request's extensions; nothing
//! in a request can change it. The roles of section 9 are the core's: a refused request is
//! refused (and recorded) by the core, and this module only turns the refusal into an HTTP
//! status and a stable error code.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::engine::server::{AdminError, DownloadError, HistoryReadError, Server, SubmitError};
use crate::history::events::event_json_line;
use crate::job::JobId;
use crate::lifecycle::view::{find_job, job_view, list_jobs, FindJobError, ListFilter};
use crate::lifecycle::{AdminRequest, Answer, Event, Identity, Origin, Rejection, State as Core};
use crate::net::logs::{read_server_chunk, send_archived, SiteLinks};
use crate::site::logs::{LogAnswer, LogStream};

/// The OpenAPI 3 document of the admin API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// How long a client is asked to wait after a 503 (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 1;

/// How long a connection may take to send a request's head, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Events read from the history per round trip to the history thread.
const HISTORY_CHUNK: usize = 256;

/// What the admin API serves from.
pub struct AdminContext {
    /// The running server.
    pub server: Server,
    /// The largest job upload accepted (bytes); a larger body is answered 413.
    pub upload_bytes_max: u64,
    /// How long a connection may take to send a request's head before it is closed.
    pub header_read_timeout: Duration,
    /// The connected sites, for reads of their apps' output (`logs`).
    pub site_logs: Arc<SiteLinks>,
}

impl AdminContext {
    /// The admin API of `server`, with the package size limit of SPEC section 5.
    pub fn new(server: Server) -> AdminContext {
        AdminContext {
            server,
            upload_bytes_max: crate::job::limits::Limits::default().package_bytes_max,
            header_read_timeout: HEADER_READ_TIMEOUT,
            site_logs: Arc::new(SiteLinks::default()),
        }
    }
}

/// Serves one admin connection whose certificate said `identity`: HTTP/1.1 with keep-alive
/// until the client closes it (or the connection fails).
pub async fn serve_connection<S>(ctx: Arc<AdminContext>, identity: Identity, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let name = identity.name.clone();
    let timeout = ctx.header_read_timeout;
    let service = hyper_util::service::TowerToHyperService::new(router_for(ctx, identity));
    let io = hyper_util::rt::TokioIo::new(stream);
    // A client that opens a connection and sends no complete request head in time (a
    // half-open or trickling peer) is dropped, so it holds no task for long.
    if let Err(err) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(admin = %name, error = %err, "admin connection ended with an error");
    }
}

/// The router for one connection: [`router`] with `identity` in every request.
pub fn router_for(ctx: Arc<AdminContext>, identity: Identity) -> Router {
    router(ctx).layer(Extension(identity))
}

/// Every route of the API: method, path (in OpenAPI's syntax, which is axum's), handler.
/// The router is built from this list and the OpenAPI test compares the document with it.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<Arc<AdminContext>>)> {
    vec![
        (Method::POST, "/v1/jobs", post(submit)),
        (Method::GET, "/v1/jobs", get(list)),
        (Method::GET, "/v1/jobs/{id}", get(show)),
        (Method::DELETE, "/v1/jobs/{id}", delete(delete_job)),
        (Method::POST, "/v1/jobs/{id}/abort", post(abort)),
        (Method::POST, "/v1/jobs/{id}/clone", post(clone_job)),
        (Method::GET, "/v1/jobs/{id}/download", get(download)),
        (Method::GET, "/v1/jobs/{id}/logs", get(logs)),
        (Method::GET, "/v1/sites", get(sites)),
        (Method::GET, "/v1/history", get(history)),
        (Method::GET, "/v1/audit", get(audit)),
        (Method::GET, "/v1/openapi.json", get(openapi)),
        (Method::GET, "/metrics", get(metrics)),
    ]
}

/// The API's router; each request must carry the caller's [`Identity`] as an extension
/// (see [`router_for`]).
pub fn router(ctx: Arc<AdminContext>) -> Router {
    // Routes of one path with different methods are merged by axum.
    let mut router = Router::new();
    for (_, path, method_router) in routes() {
        router = router.route(path, method_router);
    }
    router
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(ctx)
}

/// An error answer: a status and `{"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// What happened, in words.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        let status = match &rejection {
            Rejection::UnknownJob { .. } => StatusCode::NOT_FOUND,
            Rejection::JobAlreadyFinished { .. }
            | Rejection::JobIsRunning { .. }
            | Rejection::JobNotFinished { .. }
            | Rejection::ArchivePending { .. }
            | Rejection::IdempotencyKeyReused { .. } => StatusCode::CONFLICT,
            Rejection::NotAllowed { .. }
            | Rejection::SignerNotAllowed { .. }
            | Rejection::SignatureRefused { .. } => StatusCode::FORBIDDEN,
            Rejection::NotAParticipant { .. } => StatusCode::NOT_FOUND,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BadRequestId { .. }
            | Rejection::BadIdentity { .. }
            | Rejection::BadMeta { .. } => StatusCode::BAD_REQUEST,
            Rejection::Recovering { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        let code = rejection.code();
        ApiError::new(status, code, rejection.to_string())
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> ApiError {
        let code = match &err {
            AdminError::Busy => "busy",
            AdminError::Refused(_) => "too_many_queued_jobs",
            AdminError::Stopped => "stopped",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, err.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> ApiError {
        let (status, code) = match &err {
            SubmitError::Package(_) => (StatusCode::BAD_REQUEST, "bad_package"),
            SubmitError::Signature(_) => (StatusCode::FORBIDDEN, "signature_refused"),
            SubmitError::Blob(_) | SubmitError::Check(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage_failed")
            }
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<DownloadError> for ApiError {
    fn from(err: DownloadError) -> ApiError {
        match err {
            DownloadError::Admin(err) => err.into(),
            DownloadError::Refused(rejection) => rejection.into(),
            DownloadError::Blob(reason) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_failed",
                format!("reading the job's blobs failed: {reason}"),
            ),
        }
    }
}

impl From<HistoryReadError> for ApiError {
    fn from(err: HistoryReadError) -> ApiError {
        match err {
            HistoryReadError::Admin(err) => err.into(),
            HistoryReadError::Damaged(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "history_damaged",
                err.to_string(),
            ),
        }
    }
}

impl From<FindJobError> for ApiError {
    fn from(err: FindJobError) -> ApiError {
        match err {
            FindJobError::Unknown { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_job", err.to_string())
            }
            FindJobError::Ambiguous { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "ambiguous_job_id", err.to_string())
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The job an id (or unambiguous prefix) names. A complete id the server does not know
/// is passed on as it is, so the core refuses it and records the refusal.
fn resolve(state: &Core, given: &str) -> Result<JobId, ApiError> {
    match find_job(state, given) {
        Ok(job) => Ok(job.id),
        Err(FindJobError::Unknown { .. }) if given.parse::<JobId>().is_ok() => given
            .parse::<JobId>()
            .map_err(|e| ApiError::bad_request(e.to_string())),
        Err(err) => Err(err.into()),
    }
}

/// The `Idempotency-Key` header, if any (the core checks its length).
fn request_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|key| Some(key.to_string()))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request_id",
                    "the Idempotency-Key header is not visible ASCII",
                )
            }),
    }
}

/// The query's `key=value` pairs, percent-decoded.
fn query_pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("malformed percent-encoding in the query")
                    })?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("the query is not UTF-8"))
}

/// Reads the query into `known` names; an unknown name is a bad request.
fn query<'k>(
    raw: Option<String>,
    known: &[&'k str],
) -> Result<std::collections::BTreeMap<&'k str, String>, ApiError> {
    let mut found = std::collections::BTreeMap::new();
    for (key, value) in query_pairs(raw)? {
        let Some(name) = known.iter().find(|k| **k == key) else {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?} (expected one of: {})",
                known.join(", ")
            )));
        };
        found.insert(*name, value);
    }
    Ok(found)
}

fn flag(value: Option<&String>, name: &str) -> Result<bool, ApiError> {
    match value.map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding_failed",
            e.to_string(),
        )
    })?;
    Ok((
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The answer to a request that changes a job: the core's reply, as JSON.
fn answer(reply: Result<Answer, Rejection>) -> ApiResult {
    match reply? {
        Answer::Submitted { job_id } => json_response(
            StatusCode::CREATED,
            &json!({ "job_id": job_id.to_string() }),
        ),
        Answer::Accepted { job_id } => {
            json_response(StatusCode::OK, &json!({ "job_id": job_id.to_string() }))
        }
    }
}

/// Durations of running jobs end at the wall clock's now, as the local `list` does.
fn now() -> crate::lifecycle::Timestamp {
    use crate::engine::clock::Clock;
    crate::engine::clock::WallClock.now()
}

/// Keeps the job's name usable as a file name (the fallback name of a package whose
/// `meta.json` names none).
fn upload_file_name(name: Option<&String>) -> String {
    let name = name
        .map(String::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 128
                && !n.starts_with('.')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or("job");
    format!("{name}.zip")
}

async fn submit(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> ApiResult {
    let params = query(raw, &["name"])?;
    let request_id = request_id(&headers)?;
    let limit = ctx.upload_bytes_max;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > limit {
            return Err(too_large(limit));
        }
    }
    let scratch = tempfile::tempdir().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_failed",
            format!("no temporary folder for the upload: {e}"),
        )
    })?;
    let path = scratch.path().join(upload_file_name(params.get("name")));
    let storage_failed = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_failed",
            format!("writing the upload failed: {e}"),
        )
    };
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(storage_failed)?;
    let mut body = body;
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            if received > limit {
                return Err(too_large(limit));
            }
            file.write_all(&data).await.map_err(storage_failed)?;
        }
    }
    file.flush().await.map_err(storage_failed)?;
    drop(file);
    if received == 0 {
        return Err(ApiError::bad_request(
            "the upload is empty; send the job's zip as the body",
        ));
    }
    let reply = ctx
        .server
        .submit_path(&path, identity, request_id)
        .await??;
    answer(reply)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the upload is larger than the limit of {limit} bytes"),
    )
}

async fn list(State(ctx): State<Arc<AdminContext>>, RawQuery(raw): RawQuery) -> ApiResult {
    let params = query(raw, &["status", "name", "all"])?;
    let status = params
        .get("status")
        .map(|s| s.parse())
        .transpose()
        .map_err(|e: crate::lifecycle::view::StatusFilterError| {
            ApiError::bad_request(e.to_string())
        })?;
    let filter = ListFilter {
        status,
        name_contains: params.get("name").cloned(),
        include_deleted: flag(params.get("all"), "all")?,
    };
    let rows = list_jobs(&ctx.server.state(), &filter, now());
    json_response(StatusCode::OK, &rows)
}

async fn show(State(ctx): State<Arc<AdminContext>>, Path(id): Path<String>) -> ApiResult {
    let state = ctx.server.state();
    let job = find_job(&state, &id)?;
    json_response(StatusCode::OK, &job_view(job, now()))
}

/// Sends a request about the job `id` names to the core and answers its reply.
async fn change(
    ctx: &AdminContext,
    identity: Identity,
    headers: &HeaderMap,
    id: &str,
    make: impl FnOnce(JobId) -> AdminRequest,
) -> ApiResult {
    let job_id = resolve(&ctx.server.state(), id)?;
    let origin = Origin {
        identity,
        request_id: request_id(headers)?,
    };
    answer(ctx.server.request(origin, make(job_id)).await?)
}

async fn abort(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(&ctx, identity, &headers, &id, |job_id| {
        AdminRequest::AbortJob { job_id }
    })
    .await
}

async fn delete_job(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(&ctx, identity, &headers, &id, |job_id| {
        AdminRequest::DeleteJob { job_id }
    })
    .await
}

async fn clone_job(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    change(&ctx, identity, &headers, &id, |job_id| {
        AdminRequest::CloneJob { job_id }
    })
    .await
}

/// The names of the entries of a download's zip.
pub mod download_entries {
    /// The job's `meta.json` as the server stored it.
    pub const META: &str = "meta.json";
    /// The canonical job package.
    pub const PACKAGE: &str = "package.zip";
    /// The server workspace archive, when there is one.
    pub const WORKSPACE: &str = "workspace.zip";
}

async fn download(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let job_id = resolve(&ctx.server.state(), &id)?;
    let origin = Origin {
        identity,
        request_id: request_id(&headers)?,
    };
    let download = ctx.server.download(origin, job_id).await?;
    let zip = tokio::task::spawn_blocking(move || download_zip(&download))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding_failed", e))?;
    let disposition = format!("attachment; filename=\"{job_id}.zip\"");
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
        ],
        zip,
    )
        .into_response())
}

/// A download as one zip (entries stored, not compressed: they are zips already):
/// `meta.json`, `package.zip` and, when there is one, `workspace.zip`.
pub fn download_zip(download: &crate::engine::server::Download) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let meta = serde_json::to_vec_pretty(&download.meta).map_err(|e| e.to_string())?;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(download.package.len() as u64 >= u32::MAX as u64);
    let mut entries: Vec<(&str, &[u8])> = vec![
        (download_entries::META, &meta),
        (download_entries::PACKAGE, &download.package),
    ];
    if let Some(workspace) = &download.workspace {
        entries.push((download_entries::WORKSPACE, workspace));
    }
    for (name, bytes) in entries {
        writer
            .start_file(
                name,
                options.large_file(bytes.len() as u64 >= u32::MAX as u64),
            )
            .map_err(|e| e.to_string())?;
        writer.write_all(bytes).map_err(|e| e.to_string())?;
    }
    writer
        .finish()
        .map(std::io::Cursor::into_inner)
        .map_err(|e| e.to_string())
}

/// A connected site as `sites` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SiteView {
    /// The site's name.
    pub name: String,
    /// When it connected (ISO-8601 UTC).
    pub connected_since: String,
    /// What it declares it can hold.
    pub resources: std::collections::BTreeMap<String, f64>,
    /// The unfinished jobs dispatched to it.
    pub running: Vec<String>,
}

/// The connected sites, by name, with the unfinished jobs dispatched to each.
pub fn site_views(state: &Core) -> Vec<SiteView> {
    state
        .connected_sites()
        .map(|(name, facts)| SiteView {
            name: name.clone(),
            connected_since: facts.since.to_iso8601(),
            resources: facts.resources.clone(),
            running: state
                .jobs
                .values()
                .filter(|job| !job.status.is_terminal() && job.run.sites.contains(name))
                .map(|job| job.id.to_string())
                .collect(),
        })
        .collect()
}

async fn sites(State(ctx): State<Arc<AdminContext>>) -> ApiResult {
    json_response(StatusCode::OK, &site_views(&ctx.server.state()))
}

async fn audit(State(ctx): State<Arc<AdminContext>>) -> ApiResult {
    let report = ctx.server.audit().await?;
    let mut value = serde_json::to_value(&report).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding_failed",
            e.to_string(),
        )
    })?;
    if let Some(object) = value.as_object_mut() {
        object.insert("ok".into(), report.is_ok().into());
        object.insert("first_bad_seq".into(), report.first_bad_seq().into());
    }
    json_response(StatusCode::OK, &value)
}

/// The server's Prometheus metrics, to any admin (as on `metrics_listen`).
async fn metrics(State(ctx): State<Arc<AdminContext>>) -> Response {
    super::observe::metrics_response(ctx.server.metrics().encode())
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn history(State(ctx): State<Arc<AdminContext>>, RawQuery(raw): RawQuery) -> ApiResult {
    let params = query(raw, &["job", "follow", "from"])?;
    let follow = flag(params.get("follow"), "follow")?;
    let job = match params.get("job") {
        Some(given) => Some(find_job(&ctx.server.state(), given)?.id),
        None => None,
    };
    let from = match params.get("from") {
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("from must be a sequence number, not {text:?}"))
        })?,
        None => 1,
    };
    // The first chunk is read before the answer starts, so a history that cannot be read
    // is an error status rather than a cut stream.
    let first = ctx.server.read_events(from, HISTORY_CHUNK).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let server = ctx.server.clone();
    tokio::spawn(async move {
        if let Err(reason) = stream_history(server, first, from, job, follow, &tx).await {
            tracing::debug!(%reason, "history stream ended");
        }
    });
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        Body::new(ChannelBody { rx }),
    )
        .into_response())
}

/// Sends the events from `from` on (the first chunk already read), one JSON line each,
/// keeping the job's only when `job` is given; with `follow`, then every new event as it
/// becomes durable, until the reader goes away or the server stops.
async fn stream_history(
    server: Server,
    first: Vec<Event>,
    from: u64,
    job: Option<JobId>,
    follow: bool,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let mut next = from;
    let mut chunk = first;
    let mut states = server.watch();
    loop {
        while !chunk.is_empty() {
            let mut lines = String::new();
            for event in &chunk {
                next = event.seq + 1;
                if job.is_some() && event.kind.job_id() != job {
                    continue;
                }
                lines.push_str(&event_json_line(event).map_err(|e| e.to_string())?);
                lines.push('\n');
            }
            if !lines.is_empty() && tx.send(Bytes::from(lines)).await.is_err() {
                return Ok(());
            }
            chunk = read_more(&server, next).await?;
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            seen = states.wait_for(|state| state.last_seq >= next) => {
                if seen.is_err() {
                    return Err("the server stopped".into());
                }
            }
            _ = tx.closed() => return Ok(()),
        }
        chunk = read_more(&server, next).await?;
    }
}

async fn read_more(server: &Server, next: u64) -> Result<Vec<Event>, String> {
    // A busy engine is waited out: the reader has the stream already.
    for _ in 0..50 {
        match server.read_events(next, HISTORY_CHUNK).await {
            Err(HistoryReadError::Admin(AdminError::Busy)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
    Err("the server stayed busy".into())
}

/// A response body fed by a channel: each message is one data frame; the body ends when
/// the sender is dropped.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|message| message.map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

// ---- logs ----

/// How often a followed log that is at its end is read again.
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Whose output a `logs` request reads.
#[derive(Clone)]
struct LogSource {
    ctx: Arc<AdminContext>,
    job_id: JobId,
    /// `None` for the server app.
    site: Option<String>,
    stream: LogStream,
}

/// One read of a log.
enum LogStep {
    /// Bytes from the offset.
    Data(Bytes),
    /// Nothing past the offset yet.
    AtEnd,
    /// No such log (not started, or the run folder is gone).
    Missing,
}

impl LogSource {
    async fn read(&self, offset: u64) -> Result<LogStep, ApiError> {
        let answer = match &self.site {
            Some(site) => self
                .ctx
                .site_logs
                .read(site, self.job_id, self.stream, offset)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "site_offline",
                        e.to_string(),
                    )
                })?,
            None => {
                read_server_chunk(
                    &self.ctx.server.workspace(),
                    self.job_id,
                    self.stream,
                    offset,
                )
                .await
            }
        };
        match answer {
            LogAnswer::Chunk(chunk) if chunk.data.is_empty() => Ok(LogStep::AtEnd),
            LogAnswer::Chunk(chunk) => Ok(LogStep::Data(chunk.data)),
            LogAnswer::Missing => Ok(LogStep::Missing),
            LogAnswer::Failed(why) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_unreadable",
                format!(
                    "the {} log of job {} cannot be read: {why}",
                    self.stream.as_str(),
                    self.job_id
                ),
            )),
        }
    }

    /// The server app's workspace archive, once there is one.
    fn archive(&self) -> Option<crate::lifecycle::BlobHash> {
        if self.site.is_some() {
            return None;
        }
        match self
            .ctx
            .server
            .state()
            .jobs
            .get(&self.job_id)
            .map(|job| job.archive.clone())
        {
            Some(crate::lifecycle::Archive::Archived { hash }) => Some(hash),
            _ => None,
        }
    }

    /// Whether no process of the job can write any more: the job is gone, or it has
    /// ended and its run is not being stopped.
    fn ended(&self) -> bool {
        let state = self.ctx.server.state();
        match state.jobs.get(&self.job_id) {
            None => true,
            Some(job) => {
                job.deleted
                    || (job.status.is_terminal()
                        && job.run.phase != crate::lifecycle::RunPhase::Stopping)
            }
        }
    }
}

/// `GET /v1/jobs/{id}/logs`: an app's output (SPEC section 11), streamed from `offset`.
/// The read is recorded first (the core checks the role of SPEC section 9 and records a
/// refusal too); a site's output comes from that site (503 while it is offline), the
/// server app's from its run folder or, once archived, from its workspace archive. With
/// `follow`, the answer goes on until the job has ended and the log is drained.
async fn logs(
    State(ctx): State<Arc<AdminContext>>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let params = query(raw, &["site", "stream", "offset", "follow"])?;
    let follow = flag(params.get("follow"), "follow")?;
    let stream = match params.get("stream") {
        Some(text) => LogStream::parse(text).map_err(ApiError::bad_request)?,
        None => LogStream::Stdout,
    };
    let offset = match params.get("offset") {
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("offset must be a byte count, not {text:?}"))
        })?,
        None => 0,
    };
    let site = params.get("site").filter(|s| !s.is_empty()).cloned();
    let job_id = resolve(&ctx.server.state(), &id)?;
    // A read changes nothing, so it is recorded each time and carries no idempotency key.
    let origin = Origin {
        identity,
        request_id: None,
    };
    ctx.server
        .request(
            origin,
            AdminRequest::ReadLogs {
                job_id,
                site: site.clone(),
            },
        )
        .await??;
    let source = LogSource {
        ctx: ctx.clone(),
        job_id,
        site,
        stream,
    };
    // The first read happens before the answer starts, so an offline site is a 503 and a
    // missing log a 404 rather than an empty stream.
    let ended = source.ended();
    let first = source.read(offset).await?;
    if matches!(first, LogStep::Missing) && !follow && source.archive().is_none() {
        let whose = match &source.site {
            Some(site) => format!("site {site}"),
            None => "the server app".to_string(),
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_log",
            format!(
                "{whose} has no {} log of job {job_id} (the app has not started, or its run folder was removed)",
                stream.as_str()
            ),
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let (failed_tx, failed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let read = LogPosition {
            step: first,
            offset,
            ended,
        };
        if let Err(reason) = stream_log(source, read, follow, &tx).await {
            tracing::debug!(%reason, "log stream broken off");
            // Said before the last sender goes, so the body ends as an error, which the
            // reader sees as a broken answer rather than the end of the log.
            let _ = failed_tx.send(reason);
        }
        drop(tx);
    });
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::new(LogBody { rx, failed }),
    )
        .into_response())
}

/// A read of a log at `offset`, and whether the job had ended before it was made: a read
/// that finds nothing new after the job has ended is the end for good.
struct LogPosition {
    step: LogStep,
    offset: u64,
    ended: bool,
}

/// Sends the log from `offset` on, chunk by chunk, until its end, or with `follow` until
/// the job has ended and the log is drained (or the reader goes away).
async fn stream_log(
    source: LogSource,
    first: LogPosition,
    follow: bool,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let mut states = source.ctx.server.watch();
    let LogPosition {
        mut step,
        mut offset,
        mut ended,
    } = first;
    loop {
        match step {
            LogStep::Data(bytes) => {
                offset += bytes.len() as u64;
                if tx.send(bytes).await.is_err() {
                    return Ok(());
                }
            }
            LogStep::Missing if source.archive().is_some() => {
                let hash = source.archive().expect("just checked");
                let blobs = source.ctx.server.blobs().clone();
                let stream = source.stream;
                let tx = tx.clone();
                return tokio::task::spawn_blocking(move || {
                    send_archived(&blobs, &hash, stream, offset, &tx)
                })
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(|e| e.to_string());
            }
            LogStep::AtEnd | LogStep::Missing => {
                if !follow || ended {
                    return Ok(());
                }
                tokio::select! {
                    _ = tx.closed() => return Ok(()),
                    _ = tokio::time::timeout(LOG_FOLLOW_POLL, states.changed()) => {}
                }
            }
        }
        ended = source.ended();
        step = source.read(offset).await.map_err(|e| e.message)?;
    }
}

/// A log's answer: the chunks of a channel, ending as an error when the stream was broken
/// off (a site went offline, a read failed), so the reader never takes a cut log for a
/// whole one.
struct LogBody {
    rx: mpsc::Receiver<Bytes>,
    failed: tokio::sync::oneshot::Receiver<String>,
}

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
            Poll::Ready(None) => Poll::Ready(
                self.failed
                    .try_recv()
                    .ok()
                    .map(|reason| Err(std::io::Error::other(reason))),
            ),
        }
    }
}
