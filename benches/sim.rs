//! Simulator benchmarks.
//!
//! - `sim_campaign_seed`: simulated seeds per second for the fault campaign's scenarios: one
//!   iteration runs one whole scenario under one seed (faults, invariants after every step,
//!   reference model).
//! - `sim_day`: a simulated day of traffic with 1,000 and 10,000 jobs through the simulator
//!   library (criterion, 10 samples each), the whole run from parsed scenario to result.
//! - `scenario_parse`: the day's scenario text (below) parsed and checked, 1,000 and 10,000
//!   jobs, read a job at a time (`scenario::parse`) beside the same text read as one TOML
//!   document (`scenario::parse_whole`).
//! - `sim_day_cli` (printed first, not criterion): the same days with 1,000, 10,000 and
//!   100,000 jobs, each run once by the `fedrun sim` binary in a child process, with its
//!   wall time, peak RSS (`ru_maxrss` from `wait4`, taken before this process grows) and
//!   event count.
//!
//! The day: 10 sites with 4 GPUs each (one of them fails every app with exit code 1), N
//! jobs submitted evenly over 24 hours, each deployed to `@ALL` with `min_clients = 3`,
//! every other job asking for one GPU per site. The apps run for three submit intervals
//! (2.5 at the sites), so at every size about three jobs run at once and the day's work
//! per job is the same; the run ends when every job has settled. `max_jobs = 32` and
//! `min_schedule_interval = 500ms` leave room, so no queue builds up.
//!
//! `cargo bench --bench sim -- --warm-up-time 1 --measurement-time 3` runs it all;
//! `cargo bench --bench sim -- sim_day` only the days. `FEDRUN_SIM_DAY_JOBS=1000,10000`
//! chooses the sizes (criterion runs the sizes up to 10,000; the printed part all of them).
//! The scenario files are written to `target/tmp/sim-day/day-N.toml`, so one day can be
//! rerun by hand: `target/release/fedrun sim target/tmp/sim-day/day-10000.toml`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use fedrun::sim::driver::{Ended, RunOptions};
use fedrun::sim::invariants::KnownBug;

fn campaign(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_campaign_seed");
    group.throughput(Throughput::Elements(1));
    // The campaign tolerates the known core defects it reports; the bench runs what it runs.
    let options = RunOptions {
        tolerate: KnownBug::ALL.to_vec(),
        ..Default::default()
    };
    for name in ["network", "storage", "everything"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scenarios/campaign")
            .join(format!("{name}.toml"));
        let checked = fedrun::sim::scenario::load(&path).expect("campaign scenario");
        let mut seed = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                seed += 1;
                fedrun::sim::driver::run_with(&checked, seed, &options).expect("seed passes")
            })
        });
    }
    group.finish();
}

/// The scenario of a simulated day with `jobs` jobs (see the module comment).
fn day_scenario(jobs: u64) -> String {
    let spacing_ms = 86_400_000 / jobs;
    let mut s = String::from("[server]\nmax_jobs = 32\nmin_schedule_interval = \"500ms\"\n\n");
    for i in 0..10 {
        s.push_str(&format!(
            "[[site]]\nname = \"site-{i}\"\nresources = {{ num_of_gpus = 4 }}\nrun_for = \"{}ms\"\n",
            spacing_ms * 5 / 2
        ));
        if i == 3 {
            s.push_str("exit_code = 1\n");
        }
        s.push('\n');
    }
    for j in 0..jobs {
        s.push_str(&format!(
            "[[job]]\nname = \"j{j}\"\nsubmit_at = \"{}ms\"\nrun_for = \"{}ms\"\n\
             meta = {{ deploy_map = {{ app = [\"@ALL\"] }}, min_clients = 3, \
             resource_spec = {{ \"@default\" = {{ num_of_gpus = {} }} }} }}\n\n",
            j * spacing_ms,
            spacing_ms * 3,
            j % 2
        ));
    }
    s
}

/// The sizes to run, from `FEDRUN_SIM_DAY_JOBS` (default 1,000, 10,000 and 100,000).
fn sizes() -> Vec<u64> {
    match std::env::var("FEDRUN_SIM_DAY_JOBS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().expect("FEDRUN_SIM_DAY_JOBS: numbers"))
            .collect(),
        Err(_) => vec![1_000, 10_000, 100_000],
    }
}

/// Writes the day's scenario file and returns its path.
fn day_file(jobs: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim-day");
    std::fs::create_dir_all(&dir).expect("scenario folder");
    let path = dir.join(format!("day-{jobs}.toml"));
    std::fs::write(&path, day_scenario(jobs)).expect("scenario file");
    path
}

/// Checks that a day ran whole: every job submitted and settled.
fn check_day(result: &fedrun::sim::driver::SimResult, jobs: u64) {
    assert_eq!(result.ended, Ended::AllTerminal, "the day ran to its end");
    let settled = result
        .jobs
        .iter()
        .filter(|j| j.job.as_ref().is_some_and(|j| j.status.is_terminal()))
        .count();
    assert_eq!(settled as u64, jobs, "every job of the day settled");
}

fn scenario_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("scenario_parse");
    group.sample_size(10);
    for jobs in sizes().into_iter().filter(|n| *n <= 10_000) {
        let text = day_scenario(jobs);
        assert!(
            fedrun::sim::scenario::reads_by_job(&text),
            "the day is read a job at a time"
        );
        group.throughput(Throughput::Elements(jobs));
        group.bench_with_input(BenchmarkId::new("by_job", jobs), &text, |b, text| {
            b.iter(|| fedrun::sim::scenario::parse(text).expect("day scenario"))
        });
        group.bench_with_input(BenchmarkId::new("whole", jobs), &text, |b, text| {
            b.iter(|| fedrun::sim::scenario::parse_whole(text).expect("day scenario"))
        });
    }
    group.finish();
}

fn day(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_day");
    group.sample_size(10);
    for jobs in sizes().into_iter().filter(|n| *n <= 10_000) {
        let checked = fedrun::sim::scenario::parse(&day_scenario(jobs)).expect("day scenario");
        // One run outside the timing, to check the day is what it claims to be; not when
        // the filter names another group (`scenario_parse`), which it would precede.
        let name = format!("sim_day/{jobs}");
        if filter().is_none_or(|f| f.contains(&name) || name.contains(&f)) {
            check_day(
                &fedrun::sim::driver::run(&checked, 0).expect("the day runs"),
                jobs,
            );
        }
        group.throughput(Throughput::Elements(jobs));
        group.bench_with_input(BenchmarkId::from_parameter(jobs), &checked, |b, checked| {
            b.iter(|| fedrun::sim::driver::run(checked, 0).expect("the day runs"))
        });
    }
    group.finish();
}

/// One run of `fedrun sim FILE` in a child: wall time, peak RSS in KiB, and its first line.
fn cli_run(file: &Path) -> (Duration, i64, String) {
    let start = Instant::now();
    // Waited for below with wait4 (not `Child::wait`), to read its peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_fedrun"))
        .arg("sim")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("fedrun sim starts");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped stdout");
    // The output is read while the child runs, so a full pipe cannot stall it.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).expect("output");
        text
    });
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; the pid is our own child, waited
    // for once here (the `Child` handle was consumed above and never waits).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert_eq!(waited, pid, "wait4 on fedrun sim");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fedrun sim failed"
    );
    let text = reader.join().expect("reader");
    let first = text.lines().next().unwrap_or_default().to_string();
    (took, usage.ru_maxrss, first)
}

/// The events count out of `ended: all_terminal at +24h (N events)`.
fn events_of(first_line: &str) -> u64 {
    first_line
        .rsplit('(')
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the first line counts the events")
}

fn day_cli() {
    println!();
    println!("sim_day_cli: `fedrun sim` in a child process, one run per size");
    println!("| jobs | wall time | peak RSS | events | time per job | ended |");
    println!("|---|---|---|---|---|---|");
    for jobs in sizes() {
        let file = day_file(jobs);
        let (took, rss_kib, first) = cli_run(&file);
        assert!(
            first.starts_with("ended: all_terminal"),
            "the day of {jobs} jobs ran to its end: {first}"
        );
        println!(
            "| {jobs} | {:.2} s | {:.1} MiB | {} | {:.1} us | {first} |",
            took.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            events_of(&first),
            took.as_secs_f64() * 1e6 / jobs as f64,
        );
    }
}

fn main() {
    // The printed part runs first (unless a filter names something else): a child's
    // `ru_maxrss` also counts the high-water mark of the memory it was started from,
    // which is this process's until the child execs (the spawn shares it), so the
    // children must start while this process is still small, before the in-process
    // days below have grown it.
    if filter().is_none_or(|f| f.contains("sim_day")) {
        day_cli();
    }
    let mut criterion = Criterion::default().configure_from_args();
    campaign(&mut criterion);
    scenario_parse(&mut criterion);
    day(&mut criterion);
    criterion.final_summary();
}

/// Criterion's filter: the first argument that is neither an option nor an option's value.
fn filter() -> Option<String> {
    const WITH_VALUE: [&str; 12] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--profile-time",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
