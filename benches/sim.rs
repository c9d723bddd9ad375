//! Simulated seeds per second for the fault campaign's scenarios: one iteration runs one
//! whole scenario under one seed (faults, invariants after every step, reference model).
//!
//! `cargo bench --bench sim -- --warm-up-time 1 --measurement-time 3` prints the time per
//! seed; seeds per second is its inverse.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedrun::sim::driver::RunOptions;
use fedrun::sim::invariants::KnownBug;

fn campaign(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim_campaign_seed");
    group.throughput(Throughput::Elements(1));
    // The campaign tolerates the known core defects it reports; the bench runs what it runs.
    let options = RunOptions {
        tolerate: KnownBug::ALL.to_vec(),
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

criterion_group!(benches, campaign);
criterion_main!(benches);
