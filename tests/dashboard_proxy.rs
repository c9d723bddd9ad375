//! `fedrun dashboard` without a browser (SPEC section 11, "Observation"): read routes pass
//! through with the admin's kit, changes and downloads are refused without reaching the
//! server, requests for another `Host` are refused, and the command prints its address and
//! stops cleanly on SIGTERM.

mod dashboard_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use dashboard_support::{fetch, get, job_named, request, submit, Federation, BOUND};
use http_body_util::BodyExt;
use hyper::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_routes_pass_through_and_changes_never_reach_the_server() {
    let fed = Federation::start(&[]).await;
    let job = submit(
        &fed.server,
        &job_named(fed.dir.path(), "first", "first job", 1),
    )
    .await;
    let dash = fed.dashboard_addr();
    let direct = fed.direct();

    // The page and its parts come from the binary, with a policy that allows no inline
    // script.
    let page = get(dash, "/").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("<script src=\"/dashboard.js\""),
        "{}",
        page.text()
    );
    let policy = page.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    let script = get(dash, "/dashboard.js").await;
    assert_eq!(script.status, 200);
    assert!(script.text().contains("textContent"));
    assert!(
        !script.text().contains(".innerHTML"),
        "the page builds no element from HTML text"
    );
    assert_eq!(get(dash, "/dashboard.css").await.status, 200);

    // Every read route answers what the server answers.
    let jobs = get(dash, "/v1/jobs").await;
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    let rows = jobs.json();
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["job_id"], job.to_string());
    assert_eq!(rows[0]["name"], "first job");
    let filtered = get(dash, "/v1/jobs?name=nothing-like-it").await;
    assert_eq!(filtered.json(), serde_json::json!([]));
    let one = get(dash, &format!("/v1/jobs/{job}")).await;
    assert_eq!(one.json()["name"], "first job", "{}", one.text());
    assert_eq!(get(dash, "/v1/sites").await.json(), serde_json::json!([]));
    let audit = get(dash, "/v1/audit").await;
    assert_eq!(audit.json()["ok"], true, "{}", audit.text());
    let openapi = get(dash, "/v1/openapi.json").await;
    assert_eq!(
        openapi.body,
        Bytes::from_static(fedrun::net::admin::OPENAPI.as_bytes())
    );
    let history = get(dash, &format!("/v1/history?job={job}")).await;
    assert_eq!(
        history.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let first_line: serde_json::Value =
        serde_json::from_str(history.text().lines().next().expect("a line")).expect("JSON");
    assert_eq!(first_line["type"], "job_submitted");
    assert_eq!(first_line["job_id"], job.to_string());
    // Errors of the server pass through unchanged: an unknown job, a bad query, and
    // `/metrics` (served by the server or answered 404 by it, as the server decides).
    for path in [
        "/v1/jobs/00000000-0000-0000-0000-000000000000".to_string(),
        "/v1/jobs?status=NOT_A_STATUS".to_string(),
        "/metrics".to_string(),
    ] {
        let through = get(dash, &path).await;
        let straight = direct
            .send_any(Method::GET, &path, &[], Bytes::new())
            .await
            .expect("the server answers");
        let status = straight.status().as_u16();
        let body = straight
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(through.status, status, "{path}: {}", through.text());
        if path != "/metrics" {
            // The metrics change between two scrapes; the error bodies do not.
            assert_eq!(through.body, body, "{path}");
        }
    }

    // A followed history streams through: the line of a job submitted after the stream
    // opened arrives on it.
    let stream = request(
        dash,
        "GET",
        "/v1/history?follow=true",
        Some(&dash.to_string()),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let later = submit(
        &fed.server,
        &job_named(fed.dir.path(), "later", "later job", 1),
    )
    .await;
    let mut body = stream.into_body();
    let mut seen = String::new();
    tokio::time::timeout(BOUND, async {
        while !seen.contains(&later.to_string()) {
            let frame = body
                .frame()
                .await
                .expect("the stream stays open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .expect("the later job's event came through the followed stream");
    drop(body);

    // Changes and downloads are answered by the dashboard itself: no connection reaches
    // the server, and the job is still there, not deleted, aborted or downloaded.
    let before = fed.relay.count();
    let refused = [
        ("POST", "/v1/jobs".to_string(), 405),
        ("DELETE", format!("/v1/jobs/{job}"), 405),
        ("PUT", format!("/v1/jobs/{job}"), 405),
        ("PATCH", "/v1/sites".to_string(), 405),
        ("POST", format!("/v1/jobs/{job}/abort"), 404),
        ("POST", format!("/v1/jobs/{job}/clone"), 404),
        ("GET", format!("/v1/jobs/{job}/download"), 404),
        ("GET", format!("/v1/jobs/{job}%2Fdownload"), 400),
        ("GET", "/v1/unknown".to_string(), 404),
        ("GET", "/../v1/jobs".to_string(), 404),
    ];
    for (method, path, status) in &refused {
        let answer = fetch(dash, method, path, Some(&dash.to_string())).await;
        assert_eq!(answer.status, *status, "{method} {path}: {}", answer.text());
        let code = answer.json()["code"].as_str().expect("a code").to_string();
        assert!(!code.is_empty(), "{method} {path}");
    }
    assert_eq!(
        fed.relay.count(),
        before,
        "a refused request reached the server"
    );
    let state = fed.server.state();
    let stored = &state.jobs[&job];
    assert!(!stored.deleted, "the job was deleted");
    let events = direct
        .send_full(Method::GET, "/v1/history", &[], Bytes::new())
        .await
        .expect("history");
    let events = String::from_utf8_lossy(&events).into_owned();
    for forbidden in [
        "job_deleted",
        "job_downloaded",
        "run_stop_requested",
        "request_refused",
    ] {
        assert!(
            !events.contains(&format!("\"type\":\"{forbidden}\"")),
            "{forbidden} in {events}"
        );
    }
    let jobs_now = direct
        .json(Method::GET, "/v1/jobs", &[], Bytes::new())
        .await
        .expect("jobs");
    assert_eq!(
        jobs_now.as_array().map(Vec::len),
        Some(2),
        "no clone was made: {jobs_now}"
    );
    fed.stop(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_another_host_are_refused() {
    let fed = Federation::start(&[]).await;
    let dash = fed.dashboard_addr();
    let port = dash.port();
    let before = fed.relay.count();
    for host in [
        Some("evil.example".to_string()),
        Some(format!("evil.example:{port}")),
        Some(format!("127.0.0.1.evil.example:{port}")),
        Some(format!("localhost.evil.example:{port}")),
        Some(format!("127.0.0.2:{port}")),
        Some(format!("[::1]:{port}")),
        Some("localhost:".to_string()),
        Some("localhost:80x".to_string()),
        Some(String::new()),
        None,
    ] {
        for path in ["/", "/v1/jobs", "/metrics"] {
            let answer = fetch(dash, "GET", path, host.as_deref()).await;
            assert_eq!(
                answer.status,
                403,
                "Host {host:?} {path}: {}",
                answer.text()
            );
            assert_eq!(answer.json()["code"], "host_refused");
        }
    }
    assert_eq!(
        fed.relay.count(),
        before,
        "a refused request reached the server"
    );
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ] {
        let answer = fetch(dash, "GET", "/v1/sites", Some(&host)).await;
        assert_eq!(answer.status, 200, "Host {host}: {}", answer.text());
    }
    assert!(
        fed.relay.count() > before,
        "the allowed reads reached the server"
    );
    fed.stop(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_bad_gateway() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let fed = Federation::start(&[]).await;
    let client = fedrun::net::client::Client::from_kit(&fed.admin_kit(), Some(&closed.to_string()))
        .expect("client");
    let dashboard = fedrun::net::dashboard::start(client, 0)
        .await
        .expect("dashboard");
    let answer = get(dashboard.local_addr(), "/v1/jobs").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["code"], "server_unreachable");
    // The page itself does not need the server.
    assert_eq!(get(dashboard.local_addr(), "/").await.status, 200);
    dashboard.stop().await;
    fed.stop(Vec::new()).await;
}

/// The command itself: it prints where it listens, serves through the kit, and stops on
/// SIGTERM with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_its_address_and_stops_on_sigterm() {
    let fed = Federation::start(&[]).await;
    let job = submit(
        &fed.server,
        &job_named(fed.dir.path(), "cli", "from the command", 1),
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .env_remove("FEDRUN_KIT")
        .env_remove("FEDRUN_LOG")
        .arg("dashboard")
        .arg("--kit")
        .arg(fed.admin_kit())
        .arg("--server")
        .arg(fed.server_addr().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fedrun dashboard starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(BOUND).expect("the address is printed");
    let addr: std::net::SocketAddr = line
        .strip_prefix("fedrun dashboard: listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .expect("an address");
    assert!(addr.ip().is_loopback(), "{addr}");
    let jobs = get(addr, "/v1/jobs").await;
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    assert_eq!(jobs.json()[0]["job_id"], job.to_string());
    assert_eq!(
        fetch(addr, "POST", "/v1/jobs", Some(&addr.to_string()))
            .await
            .status,
        405
    );
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        rx.recv_timeout(BOUND).as_deref(),
        Ok("fedrun dashboard: stopped")
    );
    // Without a kit it is a usage error.
    let output = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .env_remove("FEDRUN_KIT")
        .arg("dashboard")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--kit"));
    fed.stop(Vec::new()).await;
}
