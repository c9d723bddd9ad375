//! Ingest + hash of a 100 MB job of 1,000 files, side by side with plain BLAKE3 hashing
//! of the same bytes in memory. Nothing here fsyncs: ingest produces the canonical zip in
//! memory, and storing it durably is the blob store's cost, measured there.
//!
//! Run with `cargo bench --bench package`.

use std::fs;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, ingest_zip_bytes, unpack};

const FILE_COUNT: usize = 1_000;
const FILE_BYTES: usize = 100_000;

/// Writes the job: meta.json, one app with its run file and 1,000 files of 100 kB of
/// incompressible bytes in 10 folders (100 MB in all).
fn write_job(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(
        root.join("meta.json"),
        r#"{"deploy_map": {"app": ["server", "site-1"]}}"#,
    )
    .unwrap();
    fs::create_dir_all(root.join("app")).unwrap();
    fs::write(root.join("app/run.toml"), "command = \"true\"\n").unwrap();
    // xorshift: fast, deterministic, and incompressible enough for a package.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut data = vec![0u8; FILE_BYTES];
    for index in 0..FILE_COUNT {
        for chunk in data.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let folder = root.join(format!("app/data/part-{:02}", index % 10));
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join(format!("shard-{index:04}.bin")), &data).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job");
    write_job(&job);
    let limits = Limits::default();
    let package = ingest(&job, &limits).unwrap();
    let bytes = package.zip.len() as u64;

    let mut group = c.benchmark_group("package_100MB_1000_files");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("blake3_in_memory", |b| {
        b.iter(|| blake3::hash(&package.zip))
    });
    group.bench_function("ingest_folder", |b| {
        b.iter(|| ingest(&job, &limits).unwrap().hash)
    });
    group.bench_function("ingest_zip_in_memory", |b| {
        b.iter(|| ingest_zip_bytes(&package.zip, "job", &limits).unwrap().hash)
    });
    group.bench_function("unpack_whole_job", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(tmp.path()).unwrap(),
            |dest| {
                unpack(&package.zip, None, dest.path(), &limits).unwrap();
                // Returned, so removing the folder happens outside the timing.
                dest
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
