//! Replays every committed input of the `sig_json` fuzz corpus (fuzz/corpus/sig_json)
//! through the same library check the fuzz target runs.

use std::path::Path;

#[test]
fn sig_json_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sig_json");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        fedrun::trust::sigfile::fuzz_check(&bytes);
        count += 1;
    }
    assert!(
        count >= 10,
        "the corpus in {} has {count} inputs",
        dir.display()
    );
}

#[test]
fn corpus_covers_both_accepted_and_rejected_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sig_json");
    let parse = |name: &str| {
        fedrun::trust::sigfile::SignatureFile::parse(&std::fs::read(dir.join(name)).unwrap())
    };
    assert_eq!(parse("nvflare-top.json").unwrap().len(), 3);
    assert!(parse("escaped-unicode.json").unwrap().get("café").is_some());
    for rejected in [
        "duplicate.json",
        "non-string.json",
        "trailing.json",
        "truncated-array.json",
        "binary-key.json",
    ] {
        assert!(parse(rejected).is_err(), "{rejected}");
    }
}
