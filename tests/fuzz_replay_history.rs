//! Replays the committed corpora and regressions of the `history_record`,
//! `event_decode` and `snapshot_decode` fuzz targets through the same library checks the targets call, plus
//! deterministic damage of every hand-made seed (each truncation, each single-bit flip) and
//! a few hand-made hostile inputs. The inputs a fuzzing run kept (named by their SHA-1, as
//! libFuzzer names them) are replayed as they are: damaging thousands of them bit by bit
//! would cost minutes of every test run and find what the fuzzer already explored.
use std::path::{Path, PathBuf};

use fedrun::history::events::{fuzz_event_decode, fuzz_history_record};
use fedrun::history::snapshot::fuzz_snapshot_decode;

/// A fuzz target's library check.
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("history_record", fuzz_history_record),
    ("event_decode", fuzz_event_decode),
    ("snapshot_decode", fuzz_snapshot_decode),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// True for a seed written by hand (a descriptive name), false for an input a fuzzing run
/// kept (40 hex digits).
fn is_hand_made(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !(name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn corpora_and_regressions_replay_without_failure() {
    for (target, check) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(corpus.len() >= 4, "{target}: the seed corpus is committed");
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        for path in corpus.iter().chain(&regressions) {
            check(&std::fs::read(path).unwrap());
        }
    }
}

#[test]
fn every_truncation_and_bit_flip_of_the_seeds_is_handled() {
    for (target, check) in TARGETS {
        let seeds: Vec<PathBuf> = files(&fuzz_dir().join("corpus").join(target))
            .into_iter()
            .filter(|path| is_hand_made(path))
            .collect();
        assert!(
            seeds.len() >= 4,
            "{target}: the hand-made seeds are committed"
        );
        for path in seeds {
            let bytes = std::fs::read(&path).unwrap();
            for len in 0..bytes.len() {
                check(&bytes[..len]);
            }
            let mut flipped = bytes.clone();
            for index in 0..flipped.len() {
                for bit in 0..8 {
                    flipped[index] ^= 1 << bit;
                    check(&flipped);
                    flipped[index] ^= 1 << bit;
                }
            }
        }
    }
}

#[test]
fn hostile_inputs_are_refused_without_panic() {
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xc1],                         // a byte MessagePack never uses
        vec![0xdd, 0xff, 0xff, 0xff, 0xff], // an array claiming 4 billion items
        vec![0xdf, 0xff, 0xff, 0xff, 0xff], // a map claiming 4 billion entries
        vec![0xdb, 0xff, 0xff, 0xff, 0xf0], // a string claiming 4 GiB
    ];
    // Deep nesting must hit the decoder's depth limit, not the stack.
    inputs.push(vec![0x91; 100_000]);
    inputs.push([0x81, 0xa1, b'v'].repeat(30_000));
    // A well-formed record from a newer format version is refused.
    #[derive(serde::Serialize)]
    struct Future<'a> {
        v: u32,
        seq: u64,
        prev: &'a str,
        event: u8,
    }
    let zeros = "0".repeat(64);
    inputs.push(
        rmp_serde::to_vec_named(&Future {
            v: 3,
            seq: 1,
            prev: &zeros,
            event: 0,
        })
        .unwrap(),
    );
    // The same in the binary layout of version 2 on.
    let mut binary = vec![fedrun::history::record::BINARY_MARKER, 3];
    binary.extend_from_slice(&1u64.to_be_bytes());
    binary.extend_from_slice(&[0; 32]);
    binary.push(0xc0);
    inputs.push(binary);
    for (_, check) in TARGETS {
        for input in &inputs {
            check(input);
        }
    }
    for future in &inputs[inputs.len() - 2..] {
        let err = fedrun::history::record::decode_header(future).unwrap_err();
        assert!(err.to_string().contains("format version 3"), "{err}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Between fuzzing runs, random bytes and random splices of corpus records keep the
    /// checks exercised on every test run.
    #[test]
    fn random_bytes_and_splices_are_handled(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        pick in proptest::prelude::any::<proptest::sample::Index>(),
        at in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        for (target, check) in TARGETS {
            check(&bytes);
            let corpus = files(&fuzz_dir().join("corpus").join(target));
            let seed = std::fs::read(pick.get(&corpus)).unwrap();
            let cut = at.index(seed.len() + 1);
            let mut spliced = seed[..cut].to_vec();
            spliced.extend(&bytes);
            check(&spliced);
        }
    }
}
