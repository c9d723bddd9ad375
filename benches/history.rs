//! Benchmarks of the durable history: one durable append against a raw write + fsync
//! of the same size on the same disk, batches of 64, replay of a million events, and
//! start-up from a snapshot plus a tail.
//!
//! Run: `cargo bench --bench history`. Sizes are kept small enough that the whole run
//! takes a few minutes; set `FEDRUN_BENCH_REPLAY_EVENTS` to change the replay size.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedrun::history::{Fold, History, Sequenced};
use serde::{Deserialize, Serialize};

/// An event shaped like a lifecycle event: envelope (seq, time, actor, request id, boot
/// id) and a job id with a status.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchEvent {
    seq: u64,
    at_ms: u64,
    actor: String,
    request_id: String,
    boot_id: String,
    job_id: String,
    kind: String,
    status: u8,
}

impl Sequenced for BenchEvent {
    fn seq(&self) -> u64 {
        self.seq
    }
}

fn event(seq: u64, job: u64, status: u8) -> BenchEvent {
    BenchEvent {
        seq,
        at_ms: 1_764_000_000_000 + seq,
        actor: "admin:alice@org-a/project_admin".to_string(),
        request_id: format!("req-{seq:016x}"),
        boot_id: "3f2a9c1e-0b7d-4e8a-9c55-1d2e3f4a5b6c".to_string(),
        job_id: format!("{job:08x}-0000-4000-8000-000000000000"),
        kind: "StatusChanged".to_string(),
        status,
    }
}

/// A state of jobs and their statuses; an event must move a job's status forward.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BenchState {
    jobs: BTreeMap<String, u8>,
}

impl Fold<BenchEvent> for BenchState {
    type Error = String;
    fn apply_checked(&mut self, event: &BenchEvent) -> Result<(), String> {
        let status = self.jobs.entry(event.job_id.clone()).or_insert(0);
        if event.status <= *status && event.status != 0 {
            return Err(format!("status {} after {}", event.status, status));
        }
        *status = event.status;
        Ok(())
    }
}

fn encoded_size() -> usize {
    fedrun::history::record::encode(1, fedrun::history::GENESIS_HASH, &event(1, 1, 0))
        .expect("a bench event encodes")
        .len()
}

fn durable_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("durable_append_one");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6));

    let mut history = History::<BenchEvent>::open(&dir.path().join("h")).expect("open");
    group.bench_function("history_append_batch_of_1", |b| {
        b.iter(|| {
            let seq = history.next_seq();
            history.append_batch(&[event(seq, seq, 0)]).expect("append");
        })
    });

    let size = encoded_size();
    let path = dir.path().join("raw");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("raw file");
    let payload = vec![0x5au8; size];
    group.bench_function("raw_write_and_fdatasync_same_size", |b| {
        b.iter(|| {
            file.write_all(&payload).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });
    group.finish();
}

fn batches_of_64(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = History::<BenchEvent>::open(dir.path()).expect("open");
    let mut group = c.benchmark_group("batch_of_64");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(64));
    group.bench_function("append_batch_64", |b| {
        // Building the events is not timed: only the durable append is.
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let first = history.next_seq();
                let events: Vec<BenchEvent> =
                    (first..first + 64).map(|seq| event(seq, seq, 0)).collect();
                let start = Instant::now();
                history.append_batch(&events).expect("append");
                spent += start.elapsed();
            }
            spent
        })
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let events: u64 = std::env::var("FEDRUN_BENCH_REPLAY_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = History::<BenchEvent>::open(dir.path()).expect("open");
    let build = Instant::now();
    let batch = 1000;
    let mut seq = 1;
    while seq <= events {
        let end = (seq + batch).min(events + 1);
        // Each job gets a few events: submitted (0), then statuses 1, 2, 3.
        let chunk: Vec<BenchEvent> = (seq..end)
            .map(|s| event(s, (s - 1) / 4, ((s - 1) % 4) as u8))
            .collect();
        history.append_batch(&chunk).expect("append");
        seq = end;
    }
    eprintln!(
        "built a {events}-event history in {:.1} s",
        build.elapsed().as_secs_f64()
    );
    let mut group = c.benchmark_group("replay");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(events));
    group.bench_function(format!("replay_{events}_events"), |b| {
        b.iter(|| {
            let state = history.replay(BenchState::default()).expect("replay");
            assert_eq!(state.jobs.len() as u64, events.div_ceil(4));
        })
    });
    group.finish();
}

fn startup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = History::<BenchEvent>::open(dir.path()).expect("open");
    let jobs = 10_000u64;
    let mut state = BenchState::default();
    let mut seq = 1;
    for chunk in 0..jobs / 1000 {
        let events: Vec<BenchEvent> = (0..1000)
            .map(|i| {
                let e = event(seq + i, chunk * 1000 + i, 0);
                state.apply_checked(&e).expect("legal");
                e
            })
            .collect();
        seq += 1000;
        history.append_batch(&events).expect("append");
    }
    history.take_snapshot(&state).expect("snapshot");
    // A tail of 10,000 events: every job moves to status 1.
    for chunk in 0..jobs / 1000 {
        let events: Vec<BenchEvent> = (0..1000)
            .map(|i| event(seq + i, chunk * 1000 + i, 1))
            .collect();
        seq += 1000;
        history.append_batch(&events).expect("append");
    }
    history.close().expect("close");

    let mut group = c.benchmark_group("startup");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    group.bench_function("open_snapshot_10k_jobs_plus_10k_tail", |b| {
        b.iter(|| {
            let history = History::<BenchEvent>::open(dir.path()).expect("open");
            let recovered = history.recover(BenchState::default()).expect("recover");
            assert_eq!(recovered.replayed, jobs);
            assert_eq!(recovered.state.jobs.len() as u64, jobs);
        })
    });
    group.finish();
}

criterion_group!(benches, durable_append, batches_of_64, replay, startup);
criterion_main!(benches);
