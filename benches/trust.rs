//! Sign and verify of one job: a generated job of about 10 MB in 320 files spread over
//! 17 directories, signed with the committed 2048-bit test key.
//!
//! Run: `cargo bench --bench trust`. Criterion prints MB/s (throughput in bytes); files/s
//! is 320 divided by the time per iteration.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedrun::trust::{sign_job_folder, verify_job_folder, RootCa, Signer};

const FILES: usize = 320;
const DIRS: usize = 16;
const TOTAL_BYTES: usize = 10 * 1024 * 1024;

fn trust_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

/// Writes the job and returns its total file bytes. Contents are deterministic and vary
/// per file, sizes alternate between small and large files as in real apps.
fn make_job(job: &Path) -> u64 {
    let mut total = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..FILES {
        let dir = job.join(format!("app_{}/custom/part_{}", i % 2, i % DIRS));
        fs::create_dir_all(&dir).unwrap();
        // Every 8th file is large; together they hold most of the bytes.
        let size = if i % 8 == 0 {
            TOTAL_BYTES * 7 / 8 / (FILES / 8)
        } else {
            TOTAL_BYTES / 8 / (FILES - FILES / 8)
        };
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(dir.join(format!("file_{i}.py")), &bytes).unwrap();
        total += bytes.len() as u64;
    }
    fs::write(job.join("meta.json"), b"{\"name\": \"bench\"}").unwrap();
    total + 17
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job");
    let bytes = make_job(&job);
    let signer = Signer::load(
        &trust_dir().join("admin.pem"),
        &trust_dir().join("leaf.key"),
    )
    .unwrap();
    let root = RootCa::load(&trust_dir().join("ca.pem")).unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);

    let mut group = c.benchmark_group("trust_10MB_320_files");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("sign", |b| {
        b.iter(|| sign_job_folder(&job, &signer).unwrap())
    });
    group.bench_function("verify", |b| {
        b.iter(|| verify_job_folder(&job, &root, at).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The allocator the `fedrun` binary runs with, so what is timed here is what the server
/// does.
#[global_allocator]
static GLOBAL: fedrun::Allocator = fedrun::Allocator;
