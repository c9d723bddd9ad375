//! The admin API in-process (SPEC section 11): the router driven with injected identities
//! against a real server on a temporary data folder, and the client over an in-memory
//! stream served by `serve_connection`. Role refusals are the core's and recorded in the
//! history; errors are JSON with a stable code; the OpenAPI document matches the routes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod engine_support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use engine_support::{wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::job::limits::Limits;
use fedrun::lifecycle::{Identity, Role};
use fedrun::net::admin::{router_for, routes, serve_connection, AdminContext, OPENAPI};
use fedrun::net::client::{Client, ClientError, Connector, Stream};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn who(name: &str, org: &str, role: Role) -> Identity {
    Identity {
        name: name.into(),
        org: org.into(),
        role,
    }
}

fn lead_a() -> Identity {
    who("alice", "org-a", Role::Lead)
}

/// The canonical zip of an example job (a `min_clients: 1` job that stays SUBMITTED while
/// no site is attached).
fn package(example: &str) -> Vec<u8> {
    fedrun::job::package::ingest(&examples().join(example), &Limits::default())
        .expect("the example is a valid job")
        .zip
}

struct Api {
    ctx: Arc<AdminContext>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut AdminContext)) -> Api {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start(ServerConfig::new(dir.path()), Arc::new(WallClock))
            .expect("server starts");
        wait_for(&server, "ServerStarted", |s| s.last_seq >= 1).await;
        let mut ctx = AdminContext::new(server);
        adjust(&mut ctx);
        Api {
            ctx: Arc::new(ctx),
            _dir: dir,
        }
    }

    fn server(&self) -> &Server {
        &self.ctx.server
    }

    /// One request as `identity`; returns status, headers and the whole body.
    async fn call(
        &self,
        identity: &Identity,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, axum::http::HeaderMap, Bytes) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body)).expect("request");
        let response = tokio::time::timeout(
            BOUND,
            router_for(self.ctx.clone(), identity.clone()).oneshot(request),
        )
        .await
        .expect("answered in time")
        .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(BOUND, response.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        (status, headers, body)
    }

    async fn json(
        &self,
        identity: &Identity,
        method: Method,
        uri: &str,
    ) -> (StatusCode, serde_json::Value) {
        let (status, _, body) = self.call(identity, method, uri, &[], Vec::new()).await;
        let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&body))
        });
        (status, value)
    }

    async fn submit(&self, identity: &Identity, zip: Vec<u8>) -> String {
        let (status, _, body) = self
            .call(identity, Method::POST, "/v1/jobs?name=hello", &[], zip)
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        value["job_id"].as_str().expect("job_id").to_string()
    }

    /// The history as JSON values, all or of one job.
    async fn events(&self, job: Option<&str>) -> Vec<serde_json::Value> {
        let uri = match job {
            Some(job) => format!("/v1/history?job={job}"),
            None => "/v1/history".to_string(),
        };
        let (status, headers, body) = self
            .call(&lead_a(), Method::GET, &uri, &[], Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/x-ndjson");
        std::str::from_utf8(&body)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect()
    }
}

fn types(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_list_show_abort_history() {
    let api = Api::start().await;
    let zip = package("hello-complete");
    let job = api.submit(&lead_a(), zip).await;

    let (status, list) = api.json(&lead_a(), Method::GET, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let rows = list.as_array().expect("an array");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["job_id"], job.as_str());
    assert_eq!(rows[0]["status"], "SUBMITTED");
    assert_eq!(rows[0]["submitter_name"], "alice");

    // A prefix names the job; another admin (any role) may read it.
    let reader = who("mo", "org-b", Role::Member);
    let (status, view) = api
        .json(&reader, Method::GET, &format!("/v1/jobs/{}", &job[..8]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["job_id"], job.as_str());
    assert_eq!(view["name"], "hello-complete");

    let key = [("idempotency-key", "abort-1")];
    let uri = format!("/v1/jobs/{}/abort", &job[..8]);
    let (status, _, body) = api
        .call(&lead_a(), Method::POST, &uri, &key, Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let state = api.server().state();
    let stored = state
        .jobs
        .values()
        .find(|j| j.id.to_string() == job)
        .expect("the job is in the state");
    assert_eq!(stored.status.as_str(), "FINISHED:ABORTED");

    // The same key again gets the first answer and writes nothing.
    let seq = api.server().state().last_seq;
    let (status, _, _) = api
        .call(&lead_a(), Method::POST, &uri, &key, Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.server().state().last_seq, seq);
    // Without the key, the abort of a finished job is a conflict.
    let (status, error) = api.json(&lead_a(), Method::POST, &uri).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "job_already_finished");

    let events = api.events(Some(&job)).await;
    let kinds = types(&events);
    assert_eq!(kinds.first().map(String::as_str), Some("job_submitted"));
    let aborted = events
        .iter()
        .find(|e| e["type"] == "job_finished")
        .unwrap_or_else(|| panic!("the abort finished the job: {kinds:?}"));
    assert_eq!(aborted["kind"]["status"], "FINISHED:ABORTED");
    assert_eq!(aborted["actor"]["name"], "alice");
    assert_eq!(aborted["request_id"], "abort-1");
    // The whole history is the job's events and the server's own.
    let all = api.events(None).await;
    assert_eq!(
        all.last().and_then(|e| e["seq"].as_u64()),
        Some(api.server().state().last_seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_refusals_are_403_and_recorded() {
    let api = Api::start().await;
    let job = api.submit(&lead_a(), package("hello-complete")).await;
    let abort = format!("/v1/jobs/{job}/abort");

    let member = who("mo", "org-a", Role::Member);
    let (status, error) = api.json(&member, Method::POST, &abort).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "not_allowed");

    let other_lead = who("bob", "org-b", Role::Lead);
    let (status, error) = api.json(&other_lead, Method::POST, &abort).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error["code"], "not_allowed");

    // A member may not submit either; nothing is stored for it.
    let (status, _, body) = api
        .call(
            &member,
            Method::POST,
            "/v1/jobs",
            &[],
            package("hello-complete"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );

    let refusals: Vec<serde_json::Value> = api
        .events(None)
        .await
        .into_iter()
        .filter(|e| e["type"] == "request_refused")
        .collect();
    let by: Vec<(String, String)> = refusals
        .iter()
        .map(|e| {
            (
                e["actor"]["name"].as_str().unwrap_or("").to_string(),
                e["kind"]["operation"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        by,
        vec![
            ("mo".to_string(), "abort".to_string()),
            ("bob".to_string(), "abort".to_string()),
            ("mo".to_string(), "submit".to_string()),
        ]
    );
    // The job itself is untouched.
    let (_, view) = api
        .json(&lead_a(), Method::GET, &format!("/v1/jobs/{job}"))
        .await;
    assert_eq!(view["status"], "SUBMITTED");
    let (_, list) = api.json(&lead_a(), Method::GET, "/v1/jobs").await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "the member's submit stored no job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_ambiguous_ids() {
    let api = Api::start().await;
    let admin = who("pat", "org-a", Role::ProjectAdmin);
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (status, error) = api
        .json(&admin, Method::POST, &format!("/v1/jobs/{unknown}/abort"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "unknown_job");
    let (status, error) = api.json(&admin, Method::GET, "/v1/jobs/abc").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "unknown_job");

    // Seventeen ids over sixteen hex digits: two share their first digit.
    let zip = package("hello-complete");
    let mut ids = Vec::new();
    for _ in 0..17 {
        ids.push(api.submit(&admin, zip.clone()).await);
    }
    let shared = ids
        .iter()
        .map(|id| &id[..1])
        .find(|first| ids.iter().filter(|id| id.starts_with(*first)).count() > 1)
        .expect("pigeonhole");
    let (status, error) = api
        .json(&admin, Method::POST, &format!("/v1/jobs/{shared}/abort"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "ambiguous_job_id");
    assert!(error["message"]
        .as_str()
        .unwrap_or("")
        .contains("ambiguous"));
    // Nothing was aborted.
    let (_, list) = api
        .json(&admin, Method::GET, "/v1/jobs?status=SUBMITTED")
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(17));
    // A bad filter is a bad request, with the valid words.
    let (status, error) = api.json(&admin, Method::GET, "/v1/jobs?status=DONE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_upload_is_413_and_stores_nothing() {
    let api = Api::start_with(|ctx| ctx.upload_bytes_max = 1024).await;
    let admin = who("pat", "org-a", Role::ProjectAdmin);
    let big = vec![0u8; 4096];
    // Announced by its length, and streamed without one.
    let (status, _, body) = api
        .call(
            &admin,
            Method::POST,
            "/v1/jobs",
            &[("content-length", "4096")],
            big.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(error["code"], "too_large");
    let (status, _, _) = api.call(&admin, Method::POST, "/v1/jobs", &[], big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, list) = api.json(&admin, Method::GET, "/v1/jobs").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    // A body that is no zip is a bad package.
    let (status, _, body) = api
        .call(&admin, Method::POST, "/v1/jobs", &[], b"not a zip".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(error["code"], "bad_package");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_a_finished_job_and_conflict_before() {
    let api = Api::start().await;
    let zip = package("hello-complete");
    let job = api.submit(&lead_a(), zip.clone()).await;
    let download = format!("/v1/jobs/{job}/download");
    let (status, error) = api.json(&lead_a(), Method::GET, &download).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["code"], "job_not_finished");

    let (status, _) = api
        .json(&lead_a(), Method::POST, &format!("/v1/jobs/{job}/abort"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = api
        .call(&lead_a(), Method::GET, &download, &[], Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/zip");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body.to_vec())).expect("a zip");
    let names: BTreeSet<String> = archive.file_names().map(str::to_string).collect();
    assert_eq!(
        names,
        BTreeSet::from(["meta.json".to_string(), "package.zip".to_string()]),
        "a job never dispatched has no workspace"
    );
    let mut package_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut archive.by_name("package.zip").expect("package"),
        &mut package_bytes,
    )
    .expect("read");
    assert_eq!(package_bytes, zip, "the stored package, byte for byte");
    let events = api.events(Some(&job)).await;
    assert!(
        types(&events).iter().any(|k| k == "job_downloaded"),
        "the download is recorded: {:?}",
        types(&events)
    );

    // Another org's lead may not download it; the refusal is recorded.
    let (status, _) = api
        .json(&who("bob", "org-b", Role::Lead), Method::GET, &download)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follow_streams_new_events_as_they_become_durable() {
    let api = Api::start().await;
    let job = api.submit(&lead_a(), package("hello-complete")).await;
    let request = Request::builder()
        .uri(format!("/v1/history?job={job}&follow=true"))
        .body(Body::empty())
        .expect("request");
    let response = router_for(api.ctx.clone(), lead_a())
        .oneshot(request)
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = String::new();
    let mut next_line = async || -> serde_json::Value {
        loop {
            if let Some(end) = seen.find('\n') {
                let line: String = seen.drain(..=end).collect();
                return serde_json::from_str(line.trim_end()).expect("JSON line");
            }
            let frame = tokio::time::timeout(BOUND, body.frame())
                .await
                .expect("a frame in time")
                .expect("the stream stays open")
                .expect("no error");
            if let Ok(data) = frame.into_data() {
                seen.push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    };
    assert_eq!(next_line().await["type"], "job_submitted");
    // An event written after the stream began arrives on it.
    let abort = api.server().clone();
    let (status, _) = api
        .json(&lead_a(), Method::POST, &format!("/v1/jobs/{job}/abort"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k| k == "job_finished") {
        let event = next_line().await;
        assert_eq!(event["job_id"], job.as_str(), "only the job's events");
        kinds.push(event["type"].as_str().unwrap_or("").to_string());
    }
    drop(abort);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sites_and_a_stopped_server() {
    let api = Api::start().await;
    let admin = who("pat", "org-a", Role::ProjectAdmin);
    api.submit(&admin, package("hello-complete")).await;
    let (status, report) = api.json(&admin, Method::GET, "/v1/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["records_ok"].as_u64(),
        Some(api.server().state().last_seq)
    );
    let (status, sites) = api.json(&admin, Method::GET, "/v1/sites").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sites, serde_json::json!([]), "no site is attached");

    api.server().shutdown().await;
    let (status, headers, body) = api
        .call(
            &admin,
            Method::POST,
            "/v1/jobs",
            &[],
            package("hello-complete"),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(error["code"], "stopped");
    let (status, _) = api.json(&admin, Method::GET, "/v1/audit").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Every route of the router is in the OpenAPI document and every operation of the
/// document is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let api = Api::start().await;
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, routed);
    // And the router really answers each documented operation (a route it does not have
    // is `no_such_route`, a method it does not take `method_not_allowed`).
    let admin = who("pat", "org-a", Role::ProjectAdmin);
    for (method, path) in &documented {
        let uri = path.replace("{id}", "0123");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (_, _, body) = api
            .call(&admin, method.clone(), &uri, &[], Vec::new())
            .await;
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string));
        assert!(
            !matches!(
                code.as_deref(),
                Some("no_such_route" | "method_not_allowed")
            ),
            "{method} {path} is not routed"
        );
    }
    let (status, error) = api.json(&admin, Method::GET, "/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["code"], "no_such_route");
    let (status, served) = api.json(&admin, Method::GET, "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, doc);
}

/// The client over an in-memory stream served by `serve_connection`, as the accept loop
/// serves a TLS stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_to_serve_connection() {
    let api = Api::start().await;
    let ctx = api.ctx.clone();
    let connector: Connector = Arc::new(move || {
        let ctx = ctx.clone();
        Box::pin(async move {
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve_connection(ctx, lead_a(), server_end));
            Ok(Box::new(client_end) as Box<dyn Stream>)
        })
    });
    let client = Client::new("in-memory", connector);
    let answer = client
        .json(
            Method::POST,
            "/v1/jobs?name=hello",
            &[("idempotency-key", "submit-1".to_string())],
            Bytes::from(package("hello-complete")),
        )
        .await
        .expect("submitted");
    let job = answer["job_id"].as_str().expect("job_id").to_string();
    let list = client
        .json(Method::GET, "/v1/jobs", &[], Bytes::new())
        .await
        .expect("listed");
    assert_eq!(list[0]["job_id"], job.as_str());
    let refused = client
        .json(Method::GET, "/v1/jobs/ffffffff", &[], Bytes::new())
        .await
        .expect_err("unknown");
    match refused {
        ClientError::Refused { status, code, .. } => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(code, "unknown_job");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A server that cannot be reached is a connection error (the CLI's exit 3).
    let nowhere: Connector = Arc::new(|| {
        Box::pin(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            ))
        })
    });
    let err = Client::new("nowhere", nowhere)
        .json(Method::GET, "/v1/jobs", &[], Bytes::new())
        .await
        .expect_err("no connection");
    assert!(err.is_connection(), "{err:?}");
}

/// A connection that never sends a request head is closed after the header timeout, and
/// the API goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api =
        Api::start_with(|ctx| ctx.header_read_timeout = std::time::Duration::from_millis(200))
            .await;
    let (mut silent, server_end) = tokio::io::duplex(1024);
    let served = tokio::spawn(serve_connection(api.ctx.clone(), lead_a(), server_end));
    // Half a request head, then nothing.
    silent
        .write_all(b"GET /v1/jobs HTTP/1.1\r\n")
        .await
        .expect("write");
    tokio::time::timeout(BOUND, served)
        .await
        .expect("the connection is dropped within the bound")
        .expect("the connection task ends cleanly");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(BOUND, silent.read_to_end(&mut rest)).await;
    let (status, _) = api.json(&lead_a(), Method::GET, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "others are still served");
}

/// A connection lost after the client has reached the server is tried again (with the same
/// request) until it comes back; a server never reached fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_retries_a_lost_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let api = Api::start().await;
    let ctx = api.ctx.clone();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    // Attempts 2 and 3 fail as if the server were restarting; the others reach it.
    let connector: Connector = Arc::new(move || {
        let ctx = ctx.clone();
        let attempt = counted.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if attempt == 2 || attempt == 3 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "restarting",
                ));
            }
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve_connection(ctx, lead_a(), server_end));
            Ok(Box::new(client_end) as Box<dyn Stream>)
        })
    });
    let client = Client::new("flaky", connector.clone());
    client
        .json(Method::GET, "/v1/jobs", &[], Bytes::new())
        .await
        .expect("the first attempt reaches the server");
    let list = tokio::time::timeout(
        BOUND,
        client.retrying(|| client.json(Method::GET, "/v1/jobs", &[], Bytes::new())),
    )
    .await
    .expect("in time")
    .expect("reached again");
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        4,
        "two lost attempts, then one that worked"
    );

    // A client that never reached its server does not wait.
    attempts.store(1, Ordering::SeqCst);
    let fresh = Client::new("flaky", connector);
    let err = fresh
        .retrying(|| fresh.json(Method::GET, "/v1/jobs", &[], Bytes::new()))
        .await
        .expect_err("never reached");
    assert!(err.is_connection());
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "one attempt only");
}
