//! Sustained load through the engine: 1, 10, 100 and 1,000 concurrent clients, each
//! submitting a job and then aborting it, back to back, through the in-process [`Server`]
//! API the admin API calls (`Server::request`), on a sled history on this machine's disk
//! with an fdatasync per batch. Beside it, in the same run and the same folder, the raw
//! rate of a small overwrite + fdatasync of a preallocated file.
//!
//! Run: `cargo bench --bench load`. `FEDRUN_LOAD_SECONDS` sets the measurement time of
//! each client count (default 10 s; warm-up 2 s).
//!
//! What each request does (no sites are attached, so a job stays queued until aborted):
//!
//! - **submit**: `AdminRequest::SubmitJob` of a small job (server app and one site app)
//!   whose package blob was stored once before the run and stays pinned; the engine
//!   decides it (`JobSubmitted`), the history makes the batch durable, and then the
//!   answer `Submitted { job_id }` comes back. Package ingest and signature checks of the
//!   admin API's upload are not part of it (they run before the engine, off its task).
//! - **abort**: `AdminRequest::AbortJob` of that job (`JobFinished: ABORTED`), answered
//!   once durable.
//!
//! The latency of a request is from the call to its answer (the ack: the answer is sent
//! only after the batch holding its events is durable). The batch sizes are counted where
//! the bytes go: a wrapper around the sled store notes the number of records of every
//! durable append (`Storage::append`), not the engine's own metrics.
//!
//! Criterion measures each client count as "time per request" while the clients run
//! continuously: a sample is the time until the next N answers arrived, so there is no
//! ramp-up or drain inside a sample. A summary table (requests/s, p50/p99 latency, batch
//! sizes, appends/s beside the raw fdatasync rate) is printed at the end; it counts what
//! happened inside criterion's samples (warm-up included), not during its analysis.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::history::snapshot::{SnapshotRecord, SnapshotSink};
use fedrun::history::storage::{RecordIter, SharedRecordIter};
use fedrun::history::{Anchor, Head, History, SledOptions, SledStorage, Storage, StorageError};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, Identity, Origin, Role, SubmitSignature,
};
use tokio::sync::Notify;

/// What the counting store saw while recording: records per durable append.
#[derive(Default)]
struct Appends {
    recording: AtomicBool,
    sizes: Mutex<Vec<u32>>,
}

/// The sled store, unchanged, with every successful append's record count noted.
struct CountingStorage {
    inner: SledStorage,
    appends: Arc<Appends>,
}

impl Storage for CountingStorage {
    fn append(&mut self, expected: Head, records: &[(u64, Vec<u8>)]) -> Result<Head, StorageError> {
        let head = self.inner.append(expected, records)?;
        if self.appends.recording.load(Ordering::SeqCst) && !records.is_empty() {
            let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
            self.appends.sizes.lock().expect("not poisoned").push(n);
        }
        Ok(head)
    }
    fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.read(seq)
    }
    fn read_from(&self, from: u64) -> RecordIter<'_> {
        self.inner.read_from(from)
    }
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        self.inner.last()
    }
    fn save_snapshot(&mut self, record: &SnapshotRecord, state: Bytes) -> Result<(), StorageError> {
        self.inner.save_snapshot(record, state)
    }
    fn load_snapshot(&self) -> Result<Option<(SnapshotRecord, bytes::Bytes)>, StorageError> {
        self.inner.load_snapshot()
    }
    fn snapshot_record(&self) -> Result<Option<SnapshotRecord>, StorageError> {
        self.inner.snapshot_record()
    }
    // What the server uses of sled beyond the defaults: shared reads and snapshots
    // written off the history thread. Without these the bench would measure snapshots
    // taken on the history thread, which a server does not do.
    fn read_shared_from(&self, from: u64) -> SharedRecordIter<'_> {
        self.inner.read_shared_from(from)
    }
    fn snapshot_sink(&self) -> Option<Box<dyn SnapshotSink>> {
        self.inner.snapshot_sink()
    }
    fn install_snapshot(&mut self, record: &SnapshotRecord) -> Result<(), StorageError> {
        self.inner.install_snapshot(record)
    }
    fn anchor(&self) -> Result<Option<Anchor>, StorageError> {
        self.inner.anchor()
    }
    fn settle_anchor(&mut self, head: Head) -> Result<(), StorageError> {
        self.inner.settle_anchor(head)
    }
}

fn meta(client: usize) -> JobMeta {
    JobMeta {
        name: format!("load-{client}"),
        deploy_map: vec![AppTargets {
            app: "app".into(),
            targets: vec!["server".into(), "site-1".into()],
        }],
        min_clients: 1,
        mandatory_clients: vec![],
        resource_spec: Default::default(),
    }
}

fn origin(client: usize) -> Origin {
    Origin {
        identity: Identity {
            name: format!("client-{client}"),
            org: "load".into(),
            role: Role::ProjectAdmin,
        },
        request_id: None,
    }
}

/// The shared counters of a running load.
struct Shared {
    acks: AtomicU64,
    acked: Notify,
    recording: AtomicBool,
    stop: AtomicBool,
}

/// One client: submit, then abort what it submitted, until told to stop. Returns the
/// latencies (microseconds) of the requests answered while recording.
async fn client(server: Server, shared: Arc<Shared>, n: usize, package: BlobHash) -> Vec<u32> {
    let mut latencies = Vec::new();
    let note = |began: Instant, latencies: &mut Vec<u32>| {
        if shared.recording.load(Ordering::Relaxed) {
            let us = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
            latencies.push(us);
        }
        shared.acks.fetch_add(1, Ordering::SeqCst);
        shared.acked.notify_waiters();
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let submit = AdminRequest::SubmitJob {
            meta: meta(n),
            package,
            signature: SubmitSignature::NoSigner,
        };
        let job_id = match server.request(origin(n), submit).await {
            Ok(Ok(Answer::Submitted { job_id })) => job_id,
            other => panic!("client {n}: submit failed: {other:?}"),
        };
        note(began, &mut latencies);
        let began = Instant::now();
        match server
            .request(origin(n), AdminRequest::AbortJob { job_id })
            .await
        {
            Ok(Ok(Answer::Accepted { .. })) => {}
            other => panic!("client {n}: abort failed: {other:?}"),
        }
        note(began, &mut latencies);
    }
    latencies
}

/// Waits until `target` answers in all have arrived.
async fn wait_acks(shared: &Shared, target: u64) {
    loop {
        let notified = shared.acked.notified();
        if shared.acks.load(Ordering::SeqCst) >= target {
            return;
        }
        notified.await;
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One row of the summary.
struct Row {
    clients: usize,
    requests: u64,
    seconds: f64,
    latencies: Vec<u32>,
    batches: Vec<u32>,
    jobs_at_end: usize,
}

impl Row {
    fn print(&self) {
        let mut lat = self.latencies.clone();
        lat.sort_unstable();
        let mut b = self.batches.clone();
        b.sort_unstable();
        let events: u64 = b.iter().map(|&n| u64::from(n)).sum();
        let mean = events as f64 / b.len().max(1) as f64;
        println!(
            "| {:>5} | {:>8.0} | {:>8.2} | {:>8.2} | {:>9.1} | {:>3} / {:>3} / {:>4} / {:>4} | {:>9.0} | {:>6.2} | {:>7} |",
            self.clients,
            self.requests as f64 / self.seconds,
            f64::from(percentile(&lat, 50.0)) / 1000.0,
            f64::from(percentile(&lat, 99.0)) / 1000.0,
            mean,
            percentile(&b, 50.0),
            percentile(&b, 90.0),
            percentile(&b, 99.0),
            b.last().copied().unwrap_or(0),
            b.len() as f64 / self.seconds,
            self.requests as f64 / b.len().max(1) as f64,
            self.jobs_at_end,
        );
    }
}

fn load(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    root: &Path,
    clients: usize,
    measure: Duration,
) -> Row {
    let dir = tempfile::tempdir_in(root).expect("temp dir");
    let data = dir.path().join("data");
    let appends = Arc::new(Appends::default());
    let shared = Arc::new(Shared {
        acks: AtomicU64::new(0),
        acked: Notify::new(),
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let (server, pin, handles) = rt.block_on(async {
        let storage = SledStorage::open(&data, SledOptions::default()).expect("sled");
        let storage = CountingStorage {
            inner: storage,
            appends: appends.clone(),
        };
        let history = History::<Event>::from_storage(Box::new(storage), &data).expect("history");
        let mut config = ServerConfig::new(&data);
        config.queue_capacity = config.queue_capacity.max(clients + 64);
        let server = Server::start_on(config, history, Arc::new(WallClock)).expect("server");
        // Stored once and pinned, so the frees that aborts decide never remove it.
        let pin = server
            .blobs()
            .put_bytes_pinned(b"a load test package")
            .expect("package blob");
        let package = pin.hash();
        let handles: Vec<_> = (0..clients)
            .map(|n| tokio::spawn(client(server.clone(), shared.clone(), n, package)))
            .collect();
        (server, pin, handles)
    });

    // Only the time inside criterion's samples counts (its analysis between client
    // counts runs while nothing is recorded).
    let mut requests = 0u64;
    let mut busy = Duration::ZERO;
    let mut group = c.benchmark_group("load");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(measure)
        .throughput(Throughput::Elements(1));
    group.bench_function(format!("{clients}_clients_submit_abort"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                appends.recording.store(true, Ordering::SeqCst);
                shared.recording.store(true, Ordering::SeqCst);
                let start = Instant::now();
                let target = shared.acks.load(Ordering::SeqCst) + iters;
                wait_acks(&shared, target).await;
                let took = start.elapsed();
                shared.recording.store(false, Ordering::SeqCst);
                appends.recording.store(false, Ordering::SeqCst);
                requests += iters;
                busy += took;
                took
            })
        })
    });
    group.finish();
    let seconds = busy.as_secs_f64();

    shared.stop.store(true, Ordering::SeqCst);
    let latencies = rt.block_on(async {
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.expect("client ended cleanly"));
        }
        all
    });
    let jobs_at_end = server.state().jobs.len();
    rt.block_on(server.shutdown());
    drop(pin);
    let batches = std::mem::take(&mut *appends.sizes.lock().expect("not poisoned"));
    Row {
        clients,
        requests,
        seconds,
        latencies,
        batches,
        jobs_at_end,
    }
}

/// Small overwrites of a preallocated file, each followed by an fdatasync, in `root`.
/// Returns the rate measured over all of criterion's calls.
fn raw_fdatasync(c: &mut Criterion, root: &Path, measure: Duration) -> f64 {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir_in(root).expect("temp dir");
    let path = dir.path().join("raw-preallocated");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw file");
    const SLOT: usize = 512;
    const SLOTS: u64 = 2048;
    file.write_all_at(&vec![0u8; SLOT * SLOTS as usize], 0)
        .expect("fill");
    file.sync_all().expect("fsync");
    let payload = vec![0x5au8; SLOT];
    let mut slot = 0u64;
    let mut total = (0u64, Duration::ZERO);
    let mut group = c.benchmark_group("load");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(measure)
        .throughput(Throughput::Elements(1));
    group.bench_function("raw_overwrite_512_and_fdatasync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                file.write_all_at(&payload, (slot % SLOTS) * SLOT as u64)
                    .expect("write");
                file.sync_data().expect("fdatasync");
                slot += 1;
            }
            let took = start.elapsed();
            total.0 += iters;
            total.1 += took;
            took
        })
    });
    group.finish();
    total.0 as f64 / total.1.as_secs_f64()
}

fn main() {
    let measure = Duration::from_secs(
        std::env::var("FEDRUN_LOAD_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    // The history and the raw file live in the same folder, on the disk of the build.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).expect("target tmp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    let raw_before = raw_fdatasync(&mut c, root, measure);
    let mut rows = Vec::new();
    for clients in [1, 10, 100, 1000] {
        rows.push(load(&mut c, &rt, root, clients, measure));
    }
    let raw_after = raw_fdatasync(&mut c, root, measure);
    println!();
    println!("raw overwrite (512 B) + fdatasync, same folder: {raw_before:.0}/s before the loads, {raw_after:.0}/s after");
    println!();
    println!("| clients | requests/s | p50 ms | p99 ms | events/append (mean) | events/append p50 / p90 / p99 / max | appends/s | requests/append | jobs at end |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // A client count left out by a filter measured nothing.
    for row in rows.iter().filter(|r| r.requests > 0) {
        row.print();
    }
    c.final_summary();
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
