//! Replays the committed fuzz corpora and regressions of `zip_ingest`, `meta_json` and
//! `scenario_split` through the same library checks the fuzz targets call, so every input
//! a fuzzer ever found stays covered by `cargo test`. Hand-written seeds have a file
//! extension: those named `bad-*` must be refused and the others accepted, which keeps the
//! seeds meaningful; a scenario seed named `split-*` must be read a job at a time, one
//! named `whole-*` read whole. Inputs the fuzzer kept (named by their hash, no extension)
//! are checked for the property only.

use std::path::{Path, PathBuf};

use fedrun::job::meta::{check_meta_parse, JobMeta};
use fedrun::job::package::{check_ingest_is_canonical, fuzz_limits, ingest_zip_bytes};
use fedrun::sim::scenario::{check_read_by_job, parse, parse_whole, reads_by_job};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// A hand-written seed, as opposed to an input the fuzzer found (named by its hash).
fn is_named_seed(path: &Path) -> bool {
    path.extension().is_some()
}

fn is_bad_seed(path: &Path) -> bool {
    path.file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("bad-")
}

#[test]
fn zip_ingest_corpus_and_regressions_replay() {
    let corpus = files("fuzz/corpus/zip_ingest");
    assert!(corpus.len() >= 5, "the seed corpus is committed");
    for path in corpus.iter().chain(&files("fuzz/regressions/zip_ingest")) {
        let bytes = std::fs::read(path).unwrap();
        check_ingest_is_canonical(&bytes);
    }
    for path in corpus.iter().filter(|p| is_named_seed(p)) {
        let bytes = std::fs::read(path).unwrap();
        let result = ingest_zip_bytes(&bytes, "seed", &fuzz_limits());
        assert_eq!(
            result.is_err(),
            is_bad_seed(path),
            "{}: {:?}",
            path.display(),
            result.err()
        );
    }
}

#[test]
fn meta_json_corpus_and_regressions_replay() {
    let corpus = files("fuzz/corpus/meta_json");
    assert!(corpus.len() >= 5, "the seed corpus is committed");
    for path in corpus.iter().chain(&files("fuzz/regressions/meta_json")) {
        check_meta_parse(&std::fs::read(path).unwrap());
    }
    for path in corpus.iter().filter(|p| is_named_seed(p)) {
        let result = JobMeta::parse(&std::fs::read(path).unwrap(), "seed");
        assert_eq!(
            result.is_err(),
            is_bad_seed(path),
            "{}: {:?}",
            path.display(),
            result.err()
        );
    }
}

#[test]
fn scenario_split_corpus_and_regressions_replay() {
    let corpus = files("fuzz/corpus/scenario_split");
    assert!(corpus.len() >= 5, "the seed corpus is committed");
    for path in corpus
        .iter()
        .chain(&files("fuzz/regressions/scenario_split"))
    {
        check_read_by_job(&std::fs::read(path).unwrap());
    }
    for path in corpus.iter().filter(|p| is_named_seed(p)) {
        let text = std::fs::read_to_string(path).unwrap();
        let split = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("split-");
        assert_eq!(reads_by_job(&text), split, "{}", path.display());
        if !split {
            // `parse` reads it with `parse_whole` itself: nothing to compare.
            continue;
        }
        // What a user sees is the same either way, checks after the parse included.
        let (read, whole) = (parse(&text), parse_whole(&text));
        assert_eq!(
            read.as_ref()
                .map(|c| &c.scenario)
                .map_err(|e| e.to_string()),
            whole
                .as_ref()
                .map(|c| &c.scenario)
                .map_err(|e| e.to_string()),
            "{}",
            path.display()
        );
    }
}
