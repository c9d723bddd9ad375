//! Engine benchmarks (a small harness, run with `cargo bench --bench engine`):
//! - submit -> RUNNING and submit -> finished, median of 20 jobs, one at a time, on a real
//!   server (sled history with fsync) with two local sites whose apps exit at once;
//! - 10 jobs submitted at once with max_jobs = 4, until all have finished;
//! - CPU time of an idle server with its sites over 10 s, read from /proc;
//! - one scheduling pass with 10,000 queued jobs and 1,000 connected sites;
//! - a simulated day with 1,000 jobs, in wall time.
//!
//! `FEDRUN_BENCH_QUICK=1` shortens it (5 jobs, 2 s idle) for a smoke run.

use fedrun::lifecycle::SubmitSignature;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fedrun::engine::clock::{WallClock, SIM_EPOCH};
use fedrun::engine::ids::SeededIds;
use fedrun::engine::node::{Input, Participant, ReplyToken};
use fedrun::engine::owner::{Engine, EngineLimits, Ids};
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::history::{History, MemoryStorage};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, Identity, Origin, Role, RunStatus, State,
};
use fedrun::settings::Settings;
use fedrun::site::local::{LocalSite, LocalSiteConfig, SiteHandle};
use fedrun::site::protocol::SiteReport;

fn admin() -> Identity {
    Identity {
        name: "bench".into(),
        org: "bench".into(),
        role: Role::ProjectAdmin,
    }
}

fn instant_job(dir: &Path) -> PathBuf {
    let root = dir.join("instant");
    std::fs::create_dir_all(root.join("app")).expect("job folder");
    std::fs::write(
        root.join("meta.json"),
        r#"{"name": "instant", "deploy_map": {"app": ["@ALL"]}, "min_clients": 2}"#,
    )
    .expect("meta");
    std::fs::write(root.join("app/run.toml"), "command = \"true\"\n").expect("run.toml");
    root
}

async fn server(dir: &Path, max_jobs: u32) -> (Server, Vec<SiteHandle>) {
    let mut config = ServerConfig::new(&dir.join("data"));
    config.settings.max_jobs = max_jobs;
    let server = Server::start(config, Arc::new(WallClock)).expect("server");
    let mut sites = Vec::new();
    for name in ["site-1", "site-2"] {
        let cfg = LocalSiteConfig::new(name, dir.join("sites").join(name), BTreeMap::new());
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let handle = LocalSite::spawn(cfg, tx);
        server.attach_site(name, handle.requests.clone(), rx);
        sites.push(handle);
    }
    let mut watch = server.watch();
    watch
        .wait_for(|s| s.connected_sites().count() == 2)
        .await
        .expect("sites connect");
    (server, sites)
}

async fn submit(server: &Server, job: &Path) -> JobId {
    match server
        .submit_path(job, admin(), None)
        .await
        .expect("ingest")
    {
        Ok(Ok(Answer::Submitted { job_id })) => job_id,
        other => panic!("submit failed: {other:?}"),
    }
}

async fn wait(server: &Server, pred: impl Fn(&State) -> bool) {
    let mut watch = server.watch();
    let waited = tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|s| pred(s))).await;
    if waited.is_err() {
        let state = server.state();
        for job in state.jobs.values() {
            eprintln!(
                "{} {} {:?} {:?}",
                job.id, job.status, job.schedule_history, job.finish_reason
            );
        }
        panic!("timed out waiting on the server");
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

async fn live(quick: bool, rows: &mut Vec<(String, String)>) {
    let n = if quick { 5 } else { 20 };
    let dir = tempfile::tempdir().expect("temp dir");
    let job = instant_job(dir.path());
    let (srv, sites) = server(dir.path(), 4).await;
    let mut to_running = Vec::new();
    let mut to_finished = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let id = submit(&srv, &job).await;
        wait(&srv, |s| {
            s.jobs.get(&id).is_some_and(|j| {
                j.status != RunStatus::Submitted && j.status != RunStatus::Dispatched
            })
        })
        .await;
        to_running.push(start.elapsed());
        wait(&srv, |s| {
            s.jobs.get(&id).is_some_and(|j| j.status.is_terminal())
        })
        .await;
        to_finished.push(start.elapsed());
    }
    rows.push((
        format!("submit -> RUNNING (median of {n})"),
        ms(median(to_running)),
    ));
    rows.push((
        format!("submit -> finished (median of {n})"),
        ms(median(to_finished)),
    ));

    // Idle: nothing queued or running; the engine has no deadline and sleeps.
    let idle_for = Duration::from_secs(if quick { 2 } else { 10 });
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks();
    tokio::time::sleep(idle_for).await;
    let used = (cpu_ticks() - before) as f64 / ticks_per_s;
    rows.push((
        format!("idle server + 2 sites, CPU over {} s", idle_for.as_secs()),
        format!(
            "{:.3} s ({:.2}% of a core)",
            used,
            used / idle_for.as_secs_f64() * 100.0
        ),
    ));
    srv.shutdown().await;
    for s in sites {
        s.shutdown().await;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let job = instant_job(dir.path());
    let (srv, sites) = server(dir.path(), 4).await;
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(submit(&srv, &job).await);
    }
    wait(&srv, |s| {
        ids.iter()
            .all(|id| s.jobs.get(id).is_some_and(|j| j.status.is_terminal()))
    })
    .await;
    rows.push((
        "10 jobs at once, max_jobs = 4, all finished".into(),
        ms(start.elapsed()),
    ));
    srv.shutdown().await;
    for s in sites {
        s.shutdown().await;
    }
}

fn meta(n: usize) -> JobMeta {
    JobMeta {
        name: format!("job-{n}"),
        // A site that never connects: every try fails at once, without asking any site.
        deploy_map: vec![AppTargets {
            app: "app".into(),
            targets: vec!["server".into(), "missing-site".into()],
        }],
        min_clients: 1,
        mandatory_clients: vec![],
        resource_spec: Default::default(),
    }
}

fn scheduling_pass(rows: &mut Vec<(String, String)>) {
    let settings = Settings {
        max_schedule_count: 1000,
        ..Settings::default()
    };
    let history = History::<Event>::in_memory(MemoryStorage::new()).expect("history");
    let (mut engine, _) = Engine::start(
        history,
        settings.clone(),
        Ids::Seeded(SeededIds::new(1)),
        EngineLimits {
            queued_jobs_max: 20_000,
            snapshot_every_events: u64::MAX,
        },
        SIM_EPOCH,
    )
    .expect("engine");
    let connects: Vec<Input> = (0..1000)
        .map(|i| Input::Report {
            from: Participant::Site(format!("site-{i}")),
            report: SiteReport::Connected {
                resources: Default::default(),
                running: vec![],
            },
        })
        .collect();
    engine.step(connects, SIM_EPOCH).expect("connect");
    for chunk in 0..100 {
        let submits: Vec<Input> = (0..100)
            .map(|k| Input::Admin {
                token: ReplyToken((chunk * 100 + k) as u64),
                origin: Origin {
                    identity: admin(),
                    request_id: None,
                },
                request: AdminRequest::SubmitJob {
                    meta: meta(chunk * 100 + k),
                    package: BlobHash([1; 32]),
                    signature: SubmitSignature::NoSigner,
                },
            })
            .collect();
        engine.step(submits, SIM_EPOCH).expect("submit");
    }
    assert_eq!(engine.state().queue.len(), 10_000);
    // Every job was tried once at submit and waits out its back-off (10 s). At 10 s all
    // are due: one pass tries all 10,000 (the worst case).
    let due = SIM_EPOCH.plus(Duration::from_secs(10));
    let start = Instant::now();
    let before = engine.state().last_seq;
    engine.fire_timers(due);
    engine.step(Vec::new(), due).expect("pass");
    let worst = start.elapsed();
    let written = engine.state().last_seq - before;
    rows.push((
        format!("scheduling pass, 10,000 queued, 1,000 sites, all due ({written} events)"),
        ms(worst),
    ));
}

fn simulated_day(rows: &mut Vec<(String, String)>) {
    let mut s = String::from("[sim]\nuntil = \"24h\"\n\n");
    for i in 0..10 {
        s.push_str(&format!(
            "[[site]]\nname = \"site-{i}\"\nresources = {{ num_of_gpus = 1 }}\nrun_for = \"4m\"\n"
        ));
        if i == 3 {
            s.push_str("exit_code = 1\n");
        }
        s.push('\n');
    }
    for j in 0..1000 {
        let at = j * 86;
        s.push_str(&format!(
            "[[job]]\nname = \"j{j}\"\nsubmit_at = \"{at}s\"\nrun_for = \"5m\"\n\
             meta = {{ deploy_map = {{ app = [\"@ALL\"] }}, min_clients = 3, \
             resource_spec = {{ \"@default\" = {{ num_of_gpus = {} }} }} }}\n\n",
            j % 2
        ));
    }
    let checked = fedrun::sim::scenario::parse(&s).expect("scenario");
    let start = Instant::now();
    let result = fedrun::sim::driver::run(&checked, 0).expect("simulation");
    let took = start.elapsed();
    let finished = result
        .state
        .jobs
        .values()
        .filter(|j| j.status.is_terminal())
        .count();
    rows.push((
        format!(
            "simulated day: 1,000 jobs, 10 sites ({} events, {finished} finished)",
            result.event_count()
        ),
        ms(took),
    ));
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let quick = std::env::var("FEDRUN_BENCH_QUICK").is_ok();
    let mut rows = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(live(quick, &mut rows));
    scheduling_pass(&mut rows);
    simulated_day(&mut rows);
    println!("| measurement | fedrun |");
    println!("|---|---|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
