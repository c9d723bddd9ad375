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
use fedrun::history::events::EventHistory;
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, Identity, Role, ScheduleOutcome, State, Timestamp,
};

fn job(n: u64) -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x1000_0000_0000_4000_8000_0000_0000_0000 + u128::from(n),
    ))
}

fn envelope(seq: u64, actor: Actor, kind: EventKind) -> Event {
    Event {
        seq,
        at: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
        actor,
        request_id: None,
        boot_id: BootId(uuid::Uuid::from_u128(7)),
        kind,
    }
}

/// A `JobSubmitted` of job `n` (about 500 bytes encoded: meta, package hash, submitter).
fn submitted(seq: u64, n: u64) -> Event {
    let alice = Identity {
        name: "alice".into(),
        org: "org-a".into(),
        role: Role::Lead,
    };
    envelope(
        seq,
        Actor::admin(&alice),
        EventKind::JobSubmitted {
            job_id: job(n),
            meta: JobMeta {
                name: format!("job-{n}"),
                deploy_map: vec![AppTargets {
                    app: "app".into(),
                    targets: vec!["server".into(), "site-1".into(), "site-2".into()],
                }],
                min_clients: 2,
                mandatory_clients: vec![],
                resource_spec: BTreeMap::from([(
                    "@default".to_string(),
                    BTreeMap::from([("num_of_gpus".to_string(), 1.0)]),
                )]),
            },
            package: BlobHash::from(blake3::hash(&n.to_le_bytes())),
            submitter: alice,
            signer: None,
            submit_time: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
            cloned_from: None,
        },
    )
}

/// A `ScheduleAttempted` of job `n` that found no resources (about 200 bytes encoded).
fn attempted(seq: u64, n: u64) -> Event {
    envelope(
        seq,
        Actor::Scheduler,
        EventKind::ScheduleAttempted {
            job_id: job(n),
            outcome: ScheduleOutcome::NoResources {
                reason: "connected sites (1) < min_clients (2)".into(),
            },
        },
    )
}

/// The event at `seq` of a legal history: each job is submitted, then tried three times.
fn event_at(seq: u64) -> Event {
    let n = (seq - 1) / 4;
    if (seq - 1) % 4 == 0 {
        submitted(seq, n)
    } else {
        attempted(seq, n)
    }
}

fn encoded_size() -> usize {
    fedrun::history::record::encode(1, fedrun::history::GENESIS_HASH, &event_at(1))
        .expect("a bench event encodes")
        .len()
}

fn durable_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("durable_append_one");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(6));

    let mut history = EventHistory::open(&dir.path().join("h")).expect("open");
    group.bench_function("history_append_batch_of_1", |b| {
        b.iter(|| {
            let seq = history.next_seq();
            history.append_batch(&[event_at(seq)]).expect("append");
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
    let mut history = EventHistory::open(dir.path()).expect("open");
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
                let events: Vec<Event> = (first..first + 64).map(event_at).collect();
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
    let mut history = EventHistory::open(dir.path()).expect("open");
    let build = Instant::now();
    let batch = 1000;
    let mut seq = 1;
    while seq <= events {
        let end = (seq + batch).min(events + 1);
        let chunk: Vec<Event> = (seq..end).map(event_at).collect();
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
            let state = history.replay(State::new()).expect("replay");
            assert_eq!(state.jobs.len() as u64, events.div_ceil(4));
        })
    });
    group.finish();
}

fn startup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut history = EventHistory::open(dir.path()).expect("open");
    let jobs = 10_000u64;
    let mut state = State::new();
    let mut seq = 1;
    for chunk in 0..jobs / 1000 {
        let events: Vec<Event> = (0..1000)
            .map(|i| submitted(seq + i, chunk * 1000 + i))
            .collect();
        for event in &events {
            state.apply(event);
        }
        seq += 1000;
        history.append_batch(&events).expect("append");
    }
    history.take_snapshot(&state).expect("snapshot");
    // A tail of 10,000 events: every job is tried once.
    for chunk in 0..jobs / 1000 {
        let events: Vec<Event> = (0..1000)
            .map(|i| attempted(seq + i, chunk * 1000 + i))
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
            let history = EventHistory::open(dir.path()).expect("open");
            let recovered = history.recover(State::new()).expect("recover");
            assert_eq!(recovered.replayed, jobs);
            assert_eq!(recovered.state.jobs.len() as u64, jobs);
        })
    });
    group.finish();
}

criterion_group!(benches, durable_append, batches_of_64, replay, startup);
criterion_main!(benches);
