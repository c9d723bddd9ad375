//! Start-up with a long history of 1,000,000 events, a snapshot 10,000 events before its
//! end and that tail after it, in two shapes:
//! - `startup_1m`: 250,000 jobs, each submitted and tried three times, all still queued
//!   (the largest live state a million events can make);
//! - `startup_1m_finished`: what a long-lived server's history mostly holds: jobs that
//!   each ran on two sites, ended `FINISHED:COMPLETED` and had their workspace archived
//!   (decided and applied through the pure core, as a server does), about 60,000 of them.
//!
//! Measured, each on its own:
//! - `sled_open_after_clean_stop`: opening the history (sled's own open, the anchor
//!   check) after a clean close;
//! - `sled_open_after_kill`: the same after a child process that opened the history
//!   and appended a batch was killed with SIGKILL (sled recovers its log);
//! - `recover`: from the history being open to the state rebuilt (snapshot blob read
//!   and hashed, state decoded, tail replayed);
//! - `open_to_accepting`: from the history being open to `Server::start_on` returning,
//!   that is, to the server accepting requests (recover, the blob sweep, the engine's
//!   threads and task). Each run appends the server's start-up events; the server is
//!   then dropped without a shutdown, so no new snapshot is taken and the tail grows
//!   by a few events per run.
//!
//! Each history is built once into `target/bench-startup/` (the queued one) or
//! `target/bench-startup-finished/` and reused (building it prints how long it took).
//! Delete the folder to rebuild it; each takes about 1 GB.
//!
//! Run: `cargo bench --bench startup`.

#[path = "../tests/lifecycle_support/mod.rs"]
mod lifecycle_support;

use fedrun::job::flat_map::FlatMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::history::events::EventHistory;
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, Identity, Role, ScheduleOutcome, State, Timestamp,
};

const EVENTS: u64 = 1_000_000;
const TAIL: u64 = 10_000;
/// Set in the child process the kill benchmark starts: the data folder to open.
const CHILD_ENV: &str = "FEDRUN_BENCH_STARTUP_CHILD";

fn job(n: u64) -> JobId {
    JobId(uuid::Uuid::from_u128(
        0x2000_0000_0000_4000_8000_0000_0000_0000 + u128::from(n),
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

/// The event at `seq` of a legal history: each job is submitted, then tried three
/// times without finding resources.
fn event_at(seq: u64) -> Event {
    let n = (seq - 1) / 4;
    if (seq - 1).is_multiple_of(4) {
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
                    resource_spec: FlatMap::from([(
                        "@default".to_string(),
                        FlatMap::from([("num_of_gpus".to_string(), 1.0)]),
                    )]),
                },
                package: BlobHash::from(blake3::hash(&n.to_le_bytes())),
                submitter: alice,
                signer: None,
                submit_time: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
                cloned_from: None,
            },
        )
    } else {
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
}

/// The two histories the bench starts from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// 250,000 jobs, each submitted and tried three times, all queued.
    Queued,
    /// Jobs that ran on two sites, finished and were archived.
    Finished,
}

impl Shape {
    fn folder(self) -> PathBuf {
        let name = match self {
            Shape::Queued => "target/bench-startup",
            Shape::Finished => "target/bench-startup-finished",
        };
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }
}

/// The data folder holding the history of this shape, built once.
fn built_history(shape: Shape) -> PathBuf {
    let root = shape.folder();
    let data = root.join("data");
    // The marker names this build's state layout: a history built by a build whose
    // state types differ has a snapshot start-up would not use, so it is built again.
    let layout = fedrun::history::snapshot::Layout::of::<State>();
    let done = root.join(format!("built-{EVENTS}-{TAIL}-{layout}"));
    if done.is_file() {
        return data;
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench folder");
    let began = Instant::now();
    let mut history = EventHistory::open(&data).expect("open");
    let jobs = match shape {
        Shape::Queued => build_queued(&mut history),
        Shape::Finished => build_finished(&mut history),
    };
    history.close().expect("close");
    eprintln!(
        "built {EVENTS} events ({jobs} jobs, {shape:?}) with a snapshot {TAIL} events before the end in {:?}",
        began.elapsed()
    );
    std::fs::write(&done, b"").expect("marker");
    data
}

/// Takes the snapshot of `state` (the state of every event appended so far).
fn snapshot(history: &mut EventHistory, state: &State) {
    let began = Instant::now();
    let record = history.take_snapshot(state).expect("snapshot");
    eprintln!(
        "snapshot at record {}: {:?} (encode + write + install)",
        record.seq,
        began.elapsed()
    );
}

/// The queued history: [`event_at`] for every sequence number. Returns the job count.
fn build_queued(history: &mut EventHistory) -> u64 {
    let mut state = State::new();
    let mut seq = 1;
    while seq <= EVENTS {
        let end = (seq + 999).min(EVENTS);
        let events: Vec<Event> = (seq..=end).map(event_at).collect();
        if end <= EVENTS - TAIL {
            for event in &events {
                state.apply(event);
            }
        }
        history.append_batch(&events).expect("append");
        if end == EVENTS - TAIL {
            snapshot(history, &state);
        }
        seq = end + 1;
    }
    EVENTS / 4
}

/// The finished history: two sites connect, then job after job is submitted, scheduled,
/// deployed and started on both, exits with code 0 at the server and both sites, and has
/// its workspace archived, a second apart; every decision is made by `decide` and applied
/// as a server does. Ends at the first job boundary at or past [`EVENTS`], the snapshot
/// at the first one at or past `EVENTS - TAIL`. Returns the job count.
fn build_finished(history: &mut EventHistory) -> u64 {
    const SITES: [&str; 2] = ["site-1", "site-2"];
    let mut w = lifecycle_support::World::new(fedrun::settings::Settings {
        max_jobs: 1_000_000,
        ..fedrun::settings::Settings::default()
    });
    for site in SITES {
        w.connect(site);
    }
    let mut appended = 0u64;
    let mut snapshot_taken = false;
    let mut jobs = 0u64;
    while appended < EVENTS {
        w.finished_on(&SITES, jobs);
        w.advance_ms(1_000);
        jobs += 1;
        if w.log.len() >= 1_000 || appended + w.log.len() as u64 >= EVENTS - TAIL {
            let events = std::mem::take(&mut w.log);
            history.append_batch(&events).expect("append");
            appended += events.len() as u64;
        }
        if !snapshot_taken && appended >= EVENTS - TAIL {
            snapshot(history, &w.state);
            snapshot_taken = true;
        }
    }
    jobs
}

/// The child of the kill benchmark: opens the history, appends one batch (durable),
/// says so, and waits to be killed.
fn child(data: &Path) {
    let mut history = EventHistory::open(data).expect("child opens");
    // A schedule try of the last job: legal after any number of tries.
    let next = history.next_seq();
    let n = (EVENTS - 1) / 4;
    // Never before the last event: the servers the bench starts record theirs at the
    // wall clock's time, after the history's own.
    let last_at = history
        .records_from(next - 1)
        .next()
        .and_then(Result::ok)
        .map(|record| record.event.at);
    let mut event = envelope(
        next,
        Actor::Scheduler,
        EventKind::ScheduleAttempted {
            job_id: job(n),
            outcome: ScheduleOutcome::NoResources {
                reason: "connected sites (1) < min_clients (2)".into(),
            },
        },
    );
    event.at = event.at.max(last_at.unwrap_or(event.at));
    history.append_batch(&[event]).expect("child appends");
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// Starts a child that opens the history and appends, and kills it with SIGKILL once
/// it says it is ready.
fn kill_a_writer(data: &Path) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_ENV, data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("child reads");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert_eq!(line.trim(), "ready", "the child did not get ready");
}

/// Opens the history once the server of the previous iteration, dropped without a
/// shutdown, has let the data folder go (untimed; bounded at two minutes).
fn open_when_released(data: &Path) -> EventHistory {
    let began = Instant::now();
    loop {
        match EventHistory::open(data) {
            Ok(history) => return history,
            Err(fedrun::history::OpenError::ServerRunning { .. })
                if began.elapsed() < Duration::from_secs(120) => {}
            Err(err) => panic!("open after {:?}: {err}", began.elapsed()),
        }
    }
}

fn startup(c: &mut Criterion, shape: Shape) {
    let data = built_history(shape);
    let mut group = c.benchmark_group(match shape {
        Shape::Queued => "startup_1m",
        Shape::Finished => "startup_1m_finished",
    });
    // Each iteration takes tens to hundreds of milliseconds, and the kill and server
    // runs spend more untimed (a child process, a runtime): few, flat samples.
    group
        .sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));

    // Once, where the time goes.
    let (snapshot_seq, jobs) = {
        let began = Instant::now();
        let history = EventHistory::open(&data).expect("open");
        let opened = began.elapsed();
        let began = Instant::now();
        let (record, bytes) = history
            .storage()
            .load_snapshot()
            .expect("snapshot")
            .expect("a snapshot exists");
        let loaded = began.elapsed();
        let began = Instant::now();
        let _: State = fedrun::history::snapshot::decode_state(&bytes).expect("decode");
        let decoded = began.elapsed();
        let began = Instant::now();
        let _ = fedrun::history::snapshot::decode_state_parallel(
            &bytes,
            fedrun::history::snapshot::TWO_THREADS_FROM,
        )
        .expect("decode");
        let parallel = began.elapsed();
        let began = Instant::now();
        let recovered = history.recover(State::new()).expect("recover");
        let all = began.elapsed();
        // What writing a snapshot through `encode_state` (the server's snapshot thread)
        // adds to the encoding: the walk over the jobs that finds its jobs index. The
        // index's length is in its last 16 bytes (see the snapshot module's layout).
        let offsets = u32::from_le_bytes(bytes[bytes.len() - 12..][..4].try_into().expect("4"));
        let mut unindexed = bytes[..bytes.len() - 16 - 8 * offsets as usize].to_vec();
        let began = Instant::now();
        assert!(fedrun::history::snapshot::append_jobs_index(&mut unindexed));
        let walked = began.elapsed();
        assert!(
            unindexed[..] == bytes[..],
            "the walk finds the index the snapshot has"
        );
        let began = Instant::now();
        let encoded = fedrun::history::snapshot::encode_state(&recovered.state).expect("encodes");
        let by_walk = began.elapsed();
        drop(encoded);
        let began = Instant::now();
        let encoded = fedrun::history::snapshot::StateEncoder::default()
            .encode(&recovered.state)
            .expect("encodes");
        let by_encoder = began.elapsed();
        drop(encoded);
        eprintln!(
            "start-up parts ({shape:?}, {} jobs): sled open {opened:?}; snapshot at {} ({} bytes) \
             read+hash {loaded:?}, decode in one piece {decoded:?}, on two threads {parallel:?}; \
             recover (load + decode + {} tail events) {all:?}; writing a snapshot, the walk \
             that finds the jobs index {walked:?}, the state encoded with it \
             (`encode_state`) {by_walk:?}, by a fresh `StateEncoder` (the server's) \
             {by_encoder:?}",
            recovered.state.jobs.len(),
            record.seq,
            bytes.len(),
            recovered.replayed
        );
        (record.seq, recovered.state.jobs.len())
    };

    // Sled's own open does not depend on what the events say: timed on one shape.
    if shape == Shape::Queued {
        // Sled's own open, after `before` each time (untimed).
        let opens = |b: &mut criterion::Bencher, before: &dyn Fn()| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    before();
                    let began = Instant::now();
                    let history = EventHistory::open(&data).expect("open");
                    total += began.elapsed();
                    history.close().expect("close");
                }
                total
            })
        };
        group.bench_function("sled_open_after_clean_stop", |b| opens(b, &|| {}));
        group.bench_function("sled_open_after_kill", |b| {
            opens(b, &|| kill_a_writer(&data))
        });
    }
    group.bench_function("recover", |b| {
        let history = EventHistory::open(&data).expect("open");
        // The recovered state is dropped untimed: freeing a quarter of a million jobs is
        // not part of a start-up.
        b.iter_with_large_drop(|| {
            let recovered = history.recover(State::new()).expect("recover");
            assert_eq!(recovered.snapshot_seq, Some(snapshot_seq));
            assert!(recovered.replayed >= TAIL);
            recovered
        })
    });
    group.bench_function("open_to_accepting", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let history = open_when_released(&data);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let guard = rt.enter();
                let mut config = ServerConfig::new(&data);
                // No snapshot while measuring: each run starts from the same one.
                config.limits.snapshot_every_events = u64::MAX;
                // No scheduling pass after the start (it runs after accepting, untimed):
                // with a quarter of a million waiting jobs and no site, each pass records
                // a try per due job, and the tail the next run replays grew by tens of
                // thousands of events per run.
                config.settings.max_jobs = 0;
                let began = Instant::now();
                let server =
                    Server::start_on(config, history, Arc::new(WallClock)).expect("server starts");
                total += began.elapsed();
                // Accepting: the rebuilt state is published.
                assert!(server.watch().borrow().jobs.len() >= jobs);
                // The state's jobs are shared by every copy of it (the node's, the
                // published ones, the metrics'), and the last copy may be dropped by a
                // thread of this server after the folder is let go.
                let last_job = server.state().jobs.values().last().map(Arc::downgrade);
                // Stopped as if killed: no shutdown, no snapshot. The history thread
                // lets the folder go when the runtime's tasks are dropped; the next
                // open waits for that, untimed.
                drop(server);
                drop(guard);
                drop(rt);
                // ...and for this server's jobs to be freed, untimed: freeing a quarter
                // of a million jobs on another thread during the next run's recover
                // made the later runs up to twice as slow as the first.
                let began_waiting = Instant::now();
                while last_job.as_ref().is_some_and(|job| job.strong_count() > 0) {
                    assert!(
                        began_waiting.elapsed() < Duration::from_secs(120),
                        "the previous server's jobs were not freed within 120 s"
                    );
                    std::thread::yield_now();
                }
            }
            total
        })
    });
    group.finish();
}

fn main() {
    if let Some(data) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&data));
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    startup(&mut criterion, Shape::Queued);
    startup(&mut criterion, Shape::Finished);
    criterion.final_summary();
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
