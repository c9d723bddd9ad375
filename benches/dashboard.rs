//! The dashboard's first load in headless Chromium, with no job and with 10,000 jobs.
//!
//! Set-up: an in-process server on loopback with no site (so every job stays SUBMITTED
//! and the schedule is tried once, the retry an hour away), 10,000 submissions of one
//! small job folder through the server's submit path, and the dashboard in front of it
//! with the admin's kit. Each run starts a fresh headless Chromium that loads the page,
//! lets its first poll answer (`/v1/jobs` with every job through the dashboard, over
//! mutual TLS) and render, and dumps the DOM; each run is checked to have rendered a full
//! first page of rows. The figure is the wall time of the whole Chromium run, start-up
//! included, so the empty case is the baseline and the difference is what 10,000 jobs
//! cost. (The page's own clock is not used: under `--virtual-time-budget` Chromium runs
//! the page on a virtual clock.)
//!
//! Run: `cargo bench --bench dashboard` (needs Debian's `chromium`, or FEDRUN_CHROMIUM).

#[path = "../tests/dashboard_support/mod.rs"]
mod dashboard_support;

use std::time::{Duration, Instant};

use dashboard_support::{dump_dom, elements, job_named, submit, Federation};

const JOBS: usize = 10_000;
const RUNS: usize = 10;
/// Submissions in flight at once while filling the server.
const IN_FLIGHT: usize = 16;

fn summary(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    println!("{name:<52} median {median:>10.2?}   p90 {p90:>10.2?}");
}

async fn case(fed: &Federation, jobs: usize) {
    let url = format!("http://{}/", fed.dashboard_addr());
    let mut wall = Vec::new();
    for run in 0..RUNS {
        let profile = fed.dir.path().join(format!("profile-{jobs}-{run}"));
        let started = Instant::now();
        // One poll fits in the budget: the first load only.
        let dom = dump_dom(&profile, &url, 1500).await;
        wall.push(started.elapsed());
        let body = &elements(&dom, "body")[0];
        assert!(
            body.attr("data-renders").is_some(),
            "the page did not render its data: {dom}"
        );
        let rows = elements(&dom, "tr")
            .into_iter()
            .filter(|row| row.attr("class").is_some_and(|c| c.contains("job-row")))
            .count();
        assert_eq!(rows, jobs.min(100), "a full first page of rows");
        let info = elements(&dom, "span")
            .into_iter()
            .find(|span| span.attr("id") == Some("page-info"))
            .expect("the pager");
        assert!(
            info.text().ends_with(&format!("of {jobs}")),
            "{}",
            info.text()
        );
        let _ = std::fs::remove_dir_all(&profile);
    }
    summary(
        &format!("first load, {jobs} jobs: Chromium run (wall)"),
        wall,
    );
}

async fn bench() {
    let fed = Federation::start_with(&[], |config| {
        config.settings.min_schedule_interval = Duration::from_secs(3600);
        config.settings.max_schedule_interval = Duration::from_secs(3600);
    })
    .await;
    case(&fed, 0).await;

    let folder = job_named(fed.dir.path(), "job", "bench job", 1);
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..JOBS {
        if pending.len() >= IN_FLIGHT {
            pending
                .join_next()
                .await
                .expect("a submission")
                .expect("joined");
        }
        let server = fed.server.clone();
        let folder = folder.clone();
        pending.spawn(async move {
            submit(&server, &folder).await;
        });
    }
    while let Some(done) = pending.join_next().await {
        done.expect("joined");
    }
    assert_eq!(fed.server.state().jobs.len(), JOBS);
    println!("set-up: {JOBS} jobs submitted in {:.1?}", started.elapsed());
    case(&fed, JOBS).await;
    fed.stop(Vec::new()).await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
