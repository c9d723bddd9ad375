//! What the past costs the state: one command with 1,000 against 100,000 finished jobs
//! in it, and the memory a live and a finished job take.
//!
//! The states are built through the pure core (`decide`, then `apply`), the way a server
//! builds them: each finished job was submitted for two sites, scheduled, deployed,
//! started, ran, ended with exit code 0 at the server and both sites, and had its
//! workspace archived. Live jobs are `RUNNING` on two sites.
//!
//! Memory is read twice, apart from the code under test: the bytes the process holds
//! from its allocator (a counting global allocator in this binary) and the resident set
//! (`/proc/self/statm`), each before and after adding the jobs, each case in a child
//! process of its own. Printed once, before the criterion groups (which
//! `FEDRUN_BENCH_STATE_SKIP_MEMORY=1` runs alone):
//!
//! ```text
//! memory: <n> finished jobs: <bytes>/job allocated, <bytes>/job resident
//! memory breakdown: <part>: <bytes>/job
//! ```
//!
//! One case has each finished job run on ten sites (the simulator's day scenario):
//! a run's per-site maps past a few entries. Another holds queued jobs as the start-up
//! bench's history does (three tries each, a `resource_spec` of one GPU).
//!
//! Criterion groups (`command_cost/<n>_finished`): a submit decided and applied (its
//! scheduling try included), the same submit folded twice (decided, then each event
//! applied again: the engine's path before it adopted `decide`'s state), an abort of a
//! running job decided and applied, a site's connect report (a reconnect) decided and
//! applied, and the next deadline, each on a state holding `n` finished jobs, 1,000 or
//! 100,000.
//! `pass_cost/submit_<n>_waiting`: a submit with 1,000 or 10,000 jobs queued in a back-off;
//! `pass_cost/next_deadline_<n>_waiting` and `pass_cost/site_reconnect_<n>_waiting`: the
//! next deadline of that state, and a site's connect report decided and applied in it.
//! `restart_cost/decide_restart_<n>_finished_<s>_sites`: the restart decision with 1,000 or
//! 10,000 finished jobs and 2 or 1,000 sites connected.
//!
//! Run: `cargo bench --bench state`.

#[path = "../tests/lifecycle_support/mod.rs"]
mod lifecycle_support;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, BatchSize, Criterion};
use fedrun::job::JobId;
use fedrun::lifecycle::{decide, AdminRequest, Command, Job, Origin, RunStatus, State};
use fedrun::settings::Settings;
use fedrun::site::protocol::SiteReport;
use lifecycle_support::*;

/// The allocator the `fedrun` binary runs with (`fedrun::Allocator`), counting the bytes
/// currently handed out.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to fedrun's allocator unchanged; the counter is a
// side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        fedrun::Allocator.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        fedrun::Allocator.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        fedrun::Allocator.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        fedrun::Allocator.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The process's resident set in bytes, from `/proc/self/statm`.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

const SITES: [&str; 2] = ["site-1", "site-2"];

/// A federation of ten sites, as the simulator's day scenario has.
const TEN_SITES: [&str; 10] = [
    "site-0", "site-1", "site-2", "site-3", "site-4", "site-5", "site-6", "site-7", "site-8",
    "site-9",
];

/// A world with both sites connected and room for every job to run at once.
fn world() -> World {
    world_of(&SITES)
}

/// A world with `sites` connected and room for every job to run at once.
fn world_of(sites: &[&str]) -> World {
    let mut w = World::new(Settings {
        max_jobs: 1_000_000,
        ..Settings::default()
    });
    for site in sites {
        w.connect(site);
    }
    w.log.clear();
    w
}

/// Runs one job on both sites to `FINISHED:COMPLETED` with its workspace archived. The
/// world's event log is emptied: the bench keeps the state only.
fn finish_one(w: &mut World, n: u64) {
    finish_one_on(w, n, &SITES)
}

/// Runs one job on every one of `sites` to `FINISHED:COMPLETED` with its workspace
/// archived, the event log emptied.
fn finish_one_on(w: &mut World, n: u64, sites: &[&str]) {
    w.finished_on(sites, n);
    w.advance_ms(1_000);
    w.log.clear();
}

/// Adds `n` finished jobs; prints how long it took.
fn add_finished(w: &mut World, n: u64) {
    let began = Instant::now();
    let first = w.state.jobs.len() as u64;
    for i in 0..n {
        finish_one(w, first + i);
    }
    eprintln!(
        "built {n} finished jobs in {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

/// Bytes per job added by `add`, by the allocator's count and by the resident set.
fn per_job(w: &mut World, n: u64, add: impl FnOnce(&mut World, u64)) -> (f64, f64) {
    let bytes_before = LIVE_BYTES.load(Ordering::Relaxed);
    let resident_before = resident_bytes();
    add(w, n);
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - bytes_before;
    let resident = resident_bytes() - resident_before;
    (bytes as f64 / n as f64, resident as f64 / n as f64)
}

/// Adds `n` jobs that wait in the queue, as the start-up bench's jobs do: no site is
/// connected, each job has been tried three times (each try "no resources") and its
/// meta, parsed from `meta.json` as a submit's is, asks one GPU of every site.
fn add_queued(w: &mut World, n: u64) {
    let meta = fedrun::job::meta::JobMeta::parse(
        br#"{"name": "job", "deploy_map": {"app": ["server", "site-1", "site-2"]},
             "min_clients": 2, "resource_spec": {"@default": {"num_of_gpus": 1}}}"#,
        "job",
    )
    .expect("a valid meta");
    for _ in 0..n {
        w.submit(meta.clone());
        w.log.clear();
    }
    // Each schedule pass tries the first due job; the back-off makes each due again.
    while w.state.jobs.values().any(|job| job.schedule_count < 3) {
        let (at, timer) =
            fedrun::lifecycle::next_deadline(&w.state, &w.settings).expect("a job is due");
        w.advance_ms((at.as_millis() - w.now.as_millis()).max(0));
        w.timer(timer);
        w.log.clear();
    }
    assert!(w
        .state
        .jobs
        .values()
        .all(|job| job.schedule_count == 3 && job.status == RunStatus::Submitted));
}

/// Where a finished job's bytes go: 10,000 finished jobs, then each part emptied in
/// every job in turn, the allocator's count read around each step (the last steps drop
/// the kept request ids, the jobs, then the index). Printed one line per part.
fn memory_breakdown(w: &mut World, add: fn(&mut World, u64)) {
    add(w, 10_000);
    let ids: Vec<JobId> = w.state.jobs.keys().copied().collect();
    let per_job =
        |before: isize| (before - LIVE_BYTES.load(Ordering::Relaxed)) as f64 / ids.len() as f64;
    type Empty = fn(&mut Job);
    let parts: [(&str, Empty); 9] = [
        ("run: deploy and start answers", |j| {
            j.run.deploy = Default::default();
            j.run.start = Default::default();
        }),
        ("run: site exits", |j| j.run.site_exits = Default::default()),
        ("run: report ids", |j| j.run.report_ids = Default::default()),
        ("run: other sets", |j| {
            j.run.lapsed = Default::default();
            j.run.stopped_exits = Default::default();
            j.run.left_out = Default::default();
            j.run.stop_candidates = Default::default();
            j.run.reservations = Default::default();
        }),
        ("run: sites and job_clients", |j| {
            j.run.sites = Arc::from(Vec::<String>::new());
            j.run.job_clients = Arc::from(Vec::<String>::new());
        }),
        ("schedule history", |j| {
            j.schedule_history = Default::default()
        }),
        ("finish reason", |j| j.finish_reason = None),
        ("meta", |j| {
            // Each job's meta is its own (not shared), so this empties it in place.
            let meta = Arc::make_mut(&mut j.meta);
            meta.name = String::new();
            meta.deploy_map = Vec::new();
            meta.mandatory_clients = Vec::new();
            meta.resource_spec = Default::default();
        }),
        // The submitter is one copy shared by every job of the same identity.
        ("signer", |j| j.signer = None),
    ];
    for (label, empty) in parts {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        for id in &ids {
            empty(Arc::make_mut(w.state.jobs.get_mut(id).expect("the job")));
        }
        eprintln!(
            "memory breakdown: {label}: {:.0} bytes/job",
            per_job(before)
        );
    }
    // The rest taken out of the state whole, one after another.
    let dropped = |label: &str, part: Box<dyn std::any::Any>| {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        drop(part);
        eprintln!(
            "memory breakdown: {label}: {:.0} bytes/job",
            per_job(before)
        );
    };
    dropped(
        "kept request ids (each expires 24 hours of event time after its request)",
        Box::new(std::mem::take(&mut w.state.requests)),
    );
    let jobs_label = format!(
        "the job structs ({} bytes each) and the jobs maps",
        std::mem::size_of::<Job>()
    );
    dropped(&jobs_label, Box::new(std::mem::take(&mut w.state.jobs)));
    dropped(
        "the live index",
        Box::new(std::mem::take(&mut w.state.index)),
    );
}

/// One memory case, in a process of its own so the resident set starts from nothing
/// freed by an earlier case.
fn memory_case(case: &str) {
    let mut w = world();
    let (label, n, (allocated, resident)) = match case {
        "finished-10000" => (
            "finished jobs",
            10_000,
            per_job(&mut w, 10_000, add_finished),
        ),
        "finished-100000" => (
            "finished jobs",
            100_000,
            per_job(&mut w, 100_000, add_finished),
        ),
        "finished-10000-ten-sites" => {
            w = world_of(&TEN_SITES);
            (
                "finished jobs on ten sites",
                10_000,
                per_job(&mut w, 10_000, |w, n| {
                    for i in 0..n {
                        finish_one_on(w, i, &TEN_SITES);
                    }
                }),
            )
        }
        "live-10000" => (
            "live (RUNNING, two sites) jobs",
            10_000,
            per_job(&mut w, 10_000, |w, n| {
                for _ in 0..n {
                    w.running(&SITES, 2);
                    w.log.clear();
                }
            }),
        ),
        "queued-10000" => {
            w = World::new(Settings::default());
            (
                "queued jobs (three tries each, a resource_spec)",
                10_000,
                per_job(&mut w, 10_000, add_queued),
            )
        }
        "finished-breakdown" => return memory_breakdown(&mut w, add_finished),
        "queued-breakdown" => {
            return memory_breakdown(&mut World::new(Settings::default()), add_queued)
        }
        other => panic!("unknown memory case {other}"),
    };
    eprintln!(
        "memory: {n} {label}: {allocated:.0} bytes/job allocated, {resident:.0} bytes/job resident"
    );
}

/// Runs each memory case in a child process of this binary.
fn memory() {
    let me = std::env::current_exe().expect("this bench's path");
    for case in [
        "live-10000",
        "finished-10000",
        "finished-100000",
        "finished-10000-ten-sites",
        "queued-10000",
        "finished-breakdown",
        "queued-breakdown",
    ] {
        let status = std::process::Command::new(&me)
            .env(MEMORY_CASE_ENV, case)
            .status()
            .expect("the memory case runs");
        assert!(status.success(), "memory case {case} failed");
    }
}

/// Set in a child process: the memory case it measures.
const MEMORY_CASE_ENV: &str = "FEDRUN_BENCH_STATE_MEMORY_CASE";

fn submit_command(n: u64) -> Command {
    Command::Admin {
        origin: Origin {
            identity: boss(),
            request_id: Some(format!("bench-{n}")),
        },
        request: AdminRequest::SubmitJob {
            meta: meta(&SITES, 2),
            package: package(),
            signature: fedrun::lifecycle::SubmitSignature::NoSigner,
        },
    }
}

/// Decides `command` on `state` at the frozen world's time, the way the engine does:
/// `state` becomes the scratch state the decision folded its events into.
fn decide_and_apply(w: &mut Frozen, state: &mut State, command: Command) {
    let decision =
        fedrun::lifecycle::decide_and_apply(state, &w.settings, command, w.now, &mut w.ids)
            .expect("the command is recordable");
    black_box(decision);
}

/// The engine's earlier path, kept beside it for comparison: decide, then fold every
/// event a second time into `state`.
fn decide_then_fold(w: &mut Frozen, state: &mut State, command: Command) {
    let decision =
        decide(state, &w.settings, command, w.now, &mut w.ids).expect("the command is recordable");
    for event in &decision.events {
        state.apply(event);
    }
    black_box(decision);
}

/// How a bench case turns a command into the state after it.
type CommandPath = fn(&mut Frozen, &mut State, Command);

/// A built world's state, with what deciding on copies of it needs.
struct Frozen {
    state: State,
    settings: Settings,
    now: fedrun::lifecycle::Timestamp,
    ids: CountingIds,
}

impl Frozen {
    fn of(w: World) -> Frozen {
        Frozen {
            state: w.state,
            settings: w.settings,
            now: w.now,
            ids: w.ids,
        }
    }
}

/// Benches `command` decided and applied on a fresh copy of `kept` each iteration.
fn bench_command(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: String,
    w: &mut Frozen,
    kept: &State,
    path: CommandPath,
    command: impl Fn() -> Command,
) {
    group.bench_function(name, |b| {
        b.iter_batched(
            || kept.clone(),
            |mut state| {
                path(w, &mut state, command());
                state
            },
            BatchSize::SmallInput,
        )
    });
}

/// A connected site's connect report (a reconnect) naming no running job.
fn reconnect() -> Command {
    Command::Site {
        site: SITES[0].to_string(),
        report: SiteReport::Connected {
            resources: Default::default(),
            running: Vec::new(),
        },
    }
}

fn command_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("command_cost");
    for finished in [1_000u64, 100_000] {
        let mut w = world();
        add_finished(&mut w, finished);
        // One running job to abort (never aborted in the kept state: each iteration
        // aborts it on a copy).
        let running = w.running(&SITES, 2);
        let mut w = Frozen::of(w);
        let kept = w.state.clone();
        bench_command(
            &mut group,
            format!("submit_{finished}_finished"),
            &mut w,
            &kept,
            decide_and_apply,
            || submit_command(finished),
        );
        bench_command(
            &mut group,
            format!("submit_{finished}_finished_folded_twice"),
            &mut w,
            &kept,
            decide_then_fold,
            || submit_command(finished),
        );
        bench_command(
            &mut group,
            format!("abort_running_{finished}_finished"),
            &mut w,
            &kept,
            decide_and_apply,
            || Command::Admin {
                origin: Origin {
                    identity: boss(),
                    request_id: None,
                },
                request: AdminRequest::AbortJob { job_id: running },
            },
        );
        bench_command(
            &mut group,
            format!("site_reconnect_{finished}_finished"),
            &mut w,
            &kept,
            decide_and_apply,
            reconnect,
        );
        group.bench_function(format!("next_deadline_{finished}_finished"), |b| {
            b.iter(|| fedrun::lifecycle::next_deadline(black_box(&w.state), &w.settings))
        });
    }
    group.finish();
}

/// A submit decided and applied with `n` jobs queued and waiting out a back-off (each
/// listed a site that never connects, so its one try found no resources). A scheduling
/// pass once scanned the whole queue on every command; it reads the due index now, so
/// the cost should not follow `n`.
fn pass_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("pass_cost");
    for waiting in [1_000u64, 10_000] {
        let mut w = world();
        for _ in 0..waiting {
            let job_id = w.submit(meta(&["site-never"], 1));
            assert_eq!(w.job(job_id).schedule_count, 1, "the job was tried once");
            w.log.clear();
        }
        let mut w = Frozen::of(w);
        assert_eq!(
            w.state.queue.len() as u64,
            waiting,
            "the jobs wait in the queue"
        );
        let kept = w.state.clone();
        bench_command(
            &mut group,
            format!("submit_{waiting}_waiting"),
            &mut w,
            &kept,
            decide_and_apply,
            || submit_command(waiting),
        );
        // Every queued job is live, but none of them has a deadline of its own, nor a
        // site left out of a run that a site's connect must look for.
        group.bench_function(format!("next_deadline_{waiting}_waiting"), |b| {
            b.iter(|| fedrun::lifecycle::next_deadline(black_box(&w.state), &w.settings))
        });
        bench_command(
            &mut group,
            format!("site_reconnect_{waiting}_waiting"),
            &mut w,
            &kept,
            decide_and_apply,
            reconnect,
        );
    }
    group.finish();
}

/// The restart decision (SPEC section 4) on a state of `n` finished jobs, with the two
/// sites they ran on connected, or those and 998 more: a restart looks at every job, and
/// a job's sites that said they run its app were once found by asking every site.
fn restart_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("restart_cost");
    for finished in [1_000u64, 10_000] {
        let mut w = world();
        add_finished(&mut w, finished);
        for sites in [SITES.len(), 1_000] {
            for extra in w.state.sites.len()..sites {
                w.connect(&format!("extra-{extra}"));
                w.log.clear();
            }
            assert_eq!(w.state.sites.len(), sites, "the sites are connected");
            group.bench_function(
                format!("decide_restart_{finished}_finished_{sites}_sites"),
                |b| {
                    b.iter(|| {
                        fedrun::lifecycle::recovery::decide_restart(
                            black_box(&w.state),
                            &w.settings,
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

fn main() {
    if let Ok(case) = std::env::var(MEMORY_CASE_ENV) {
        memory_case(&case);
        return;
    }
    // `FEDRUN_BENCH_STATE_SKIP_MEMORY=1`: only the command costs.
    if std::env::var_os("FEDRUN_BENCH_STATE_SKIP_MEMORY").is_none() {
        memory();
    }
    let mut criterion = Criterion::default().configure_from_args();
    command_cost(&mut criterion);
    pass_cost(&mut criterion);
    restart_cost(&mut criterion);
    criterion.final_summary();
}
