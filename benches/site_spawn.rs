//! How long fedrun's own part of running an app takes, with an app that exits at once
//! (`command = "true"`): the process runner alone (start -> end reported), and a local
//! site's full round trip (resource check, deploy of a one-app job zip, start, exit
//! report). Prints the median and the 90th percentile of 50 runs each.
//!
//! Run: `cargo bench --bench site_spawn`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrun::job::JobId;
use fedrun::site::local::{LocalSite, LocalSiteConfig};
use fedrun::site::process::{self, AppLaunch};
use fedrun::site::protocol::{SiteReport, SiteRequest};
use tokio::sync::mpsc;

const RUNS: u8 = 50;

fn job(n: u8) -> JobId {
    JobId(uuid::Uuid::from_bytes([n; 16]))
}

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    println!("{name:<48} median {median:>10.2?}   p90 {p90:>10.2?}");
}

/// A one-app job zip in the canonical layout (entries at the root, sorted, Stored).
fn package() -> Arc<Vec<u8>> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, contents) in [
        ("app/run.toml", "command = \"true\"\n"),
        (
            "meta.json",
            "{\"name\":\"bench\",\"deploy_map\":{\"app\":[\"@ALL\"]}}",
        ),
    ] {
        writer.start_file(name, options).expect("zip entry");
        writer.write_all(contents.as_bytes()).expect("zip write");
    }
    Arc::new(writer.finish().expect("zip").into_inner())
}

async fn next(rx: &mut mpsc::Receiver<(String, SiteReport)>) -> SiteReport {
    rx.recv().await.expect("the site runs").1
}

async fn bench() {
    let root = tempfile::tempdir().expect("temp dir");

    let mut times = Vec::new();
    for n in 0..RUNS {
        let run_dir = root.path().join(format!("runner-{n}"));
        let app_dir = run_dir.join("app");
        std::fs::create_dir_all(&app_dir).expect("app dir");
        std::fs::write(app_dir.join("run.toml"), "command = \"true\"\n").expect("run file");
        let started = Instant::now();
        let app = process::start(&AppLaunch {
            job_id: job(n),
            site: "server".into(),
            run_dir,
            app_dir,
        })
        .expect("start");
        app.wait().await.expect("end");
        times.push(started.elapsed());
    }
    summary("process runner: start -> end reported", times);

    let (tx, mut rx) = mpsc::channel(16);
    let site = LocalSite::spawn(
        LocalSiteConfig::new("site-1", root.path().join("site"), BTreeMap::new()),
        tx,
    );
    next(&mut rx).await;
    let package = package();
    let mut times = Vec::new();
    for n in 0..RUNS {
        let job_id = job(n);
        let started = Instant::now();
        let requests = [
            SiteRequest::CheckResources {
                try_id: u64::from(n),
                job_id,
                resources: BTreeMap::new(),
            },
            SiteRequest::Deploy {
                job_id,
                app_name: "app".into(),
                package: package.clone(),
                hash: fedrun::lifecycle::BlobHash([0; 32]),
                verify_at: None,
            },
            SiteRequest::Start { job_id },
        ];
        for request in requests {
            site.requests.send(request).await.expect("site runs");
            next(&mut rx).await;
        }
        match next(&mut rx).await {
            SiteReport::AppExited { .. } => {}
            other => panic!("expected an exit report, got {other:?}"),
        }
        times.push(started.elapsed());
    }
    summary("local site: check + deploy + start + exit report", times);
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench());
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
