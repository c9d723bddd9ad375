//! The cost of one `/metrics` scrape of a server with 10,000 jobs and 1,000 connected sites
//! (run with `cargo bench --bench metrics`).
//!
//! The state is built by the real engine on an in-memory history: 1,000 sites report
//! `Connected`, 10,000 jobs are submitted (each tried once and queued). A scrape reads the
//! published state (jobs by status is one pass over the jobs, connected sites one over
//! the sites), the recorded counters and histograms (fed with the facts of every batch
//! the engine appended), and encodes it all as OpenMetrics text. The history folder is
//! not measured (an in-memory history has none); on disk that adds a `readdir` of sled's
//! folder. The size of one scrape in bytes is printed before the timing.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedrun::engine::clock::SIM_EPOCH;
use fedrun::engine::ids::SeededIds;
use fedrun::engine::node::{Input, Participant, ReplyToken};
use fedrun::engine::owner::{Engine, EngineLimits, Ids};
use fedrun::history::{History, MemoryStorage};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::lifecycle::{AdminRequest, BlobHash, Event, Identity, Origin, Role};
use fedrun::metrics::{BatchFacts, ServerMetrics, ServerProbe};
use fedrun::settings::Settings;
use fedrun::site::protocol::SiteReport;

const JOBS: usize = 10_000;
const SITES: usize = 1_000;

fn meta(n: usize) -> JobMeta {
    JobMeta {
        name: format!("job-{n}"),
        // A site that never connects: every try fails at once and the job stays queued.
        deploy_map: vec![AppTargets {
            app: "app".into(),
            targets: vec!["server".into(), "missing-site".into()],
        }],
        min_clients: 1,
        mandatory_clients: vec![],
        resource_spec: Default::default(),
    }
}

/// A server's metrics over the state of an engine with [`JOBS`] jobs and [`SITES`] sites.
fn loaded_metrics() -> ServerMetrics {
    let history = History::<Event>::in_memory(MemoryStorage::new()).expect("history");
    let (mut engine, _) = Engine::start(
        history,
        Settings::default(),
        Ids::Seeded(SeededIds::new(1)),
        EngineLimits {
            queued_jobs_max: 20_000,
            snapshot_every_events: u64::MAX,
        },
        SIM_EPOCH,
    )
    .expect("engine");
    let connects: Vec<Input> = (0..SITES)
        .map(|i| Input::Report {
            from: Participant::Site(format!("site-{i}")),
            report: SiteReport::Connected {
                resources: Default::default(),
                running: vec![],
            },
        })
        .collect();
    engine.step(connects, SIM_EPOCH).expect("connect");
    for chunk in 0..JOBS / 100 {
        let submits: Vec<Input> = (0..100)
            .map(|k| Input::Admin {
                token: ReplyToken((chunk * 100 + k) as u64),
                origin: Origin {
                    identity: Identity {
                        name: "bench".into(),
                        org: "bench".into(),
                        role: Role::ProjectAdmin,
                    },
                    request_id: None,
                },
                request: AdminRequest::SubmitJob {
                    meta: meta(chunk * 100 + k),
                    package: BlobHash([1; 32]),
                    signature: fedrun::lifecycle::SubmitSignature::NoSigner,
                },
            })
            .collect();
        engine.step(submits, SIM_EPOCH).expect("submit");
    }
    let state = engine.state().clone();
    assert_eq!(state.jobs.len(), JOBS);
    assert_eq!(state.connected_sites().count(), SITES);
    let events: Vec<Event> = engine
        .history()
        .records_from(1)
        .map(|r| r.expect("record").event)
        .collect();
    let (_keep, state_rx) = tokio::sync::watch::channel(Arc::new(state.clone()));
    // The sender is leaked so the receiver keeps its value for the whole bench.
    std::mem::forget(_keep);
    let metrics = ServerMetrics::new(ServerProbe {
        state: state_rx,
        input_queue: Box::new(|| (0, 1024)),
        history_dir: None,
        ready: Box::new(|| Ok(())),
    });
    metrics.record_batch(&BatchFacts::of(&events, &state));
    metrics
}

fn scrape(c: &mut Criterion) {
    let metrics = loaded_metrics();
    let bytes = metrics.encode().len();
    println!("one scrape with {JOBS} jobs and {SITES} sites: {bytes} bytes");
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("scrape 10,000 jobs, 1,000 sites", |b| {
        b.iter(|| metrics.encode())
    });
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
