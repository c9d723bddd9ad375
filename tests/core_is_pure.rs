//! The pure core (lifecycle, scheduler, settings) never touches tokio, sled, the file
//! system, the network, a clock, a random source, or hash-ordered collections.

use std::path::{Path, PathBuf};

/// Identifiers that must not appear in core code.
const FORBIDDEN_IDENTIFIERS: &[&str] = &[
    "tokio",
    "sled",
    "rand",
    "thread_rng",
    "new_v4",
    "SystemTime",
    "Instant",
    "HashMap",
    "HashSet",
];
/// Paths that must not appear in core code (whitespace removed before matching).
const FORBIDDEN_PATHS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::env",
    "std::process",
    "std::thread",
];

/// The forbidden things a piece of Rust source uses, with line numbers. Comments are
/// skipped, since they may name what the code must not do.
fn violations(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        for path in FORBIDDEN_PATHS {
            if compact.contains(path) {
                found.push((number + 1, path.to_string()));
            }
        }
        for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if FORBIDDEN_IDENTIFIERS.contains(&word) {
                found.push((number + 1, word.to_string()));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_scanner_catches_what_it_looks_for() {
    assert_eq!(
        violations("use tokio::sync::mpsc;"),
        [(1, "tokio".to_string())]
    );
    assert_eq!(
        violations("let f = std :: fs::read(p);"),
        [(1, "std::fs".to_string())]
    );
    assert_eq!(violations("let t = Instant::now();").len(), 1);
    assert_eq!(violations("let m: HashMap<u8, u8>;").len(), 1);
    assert_eq!(violations("let id = Uuid::new_v4();").len(), 1);
    assert!(violations("// tokio is not used here").is_empty());
    assert!(violations("let operand = random_access;").is_empty());
}

#[test]
fn lifecycle_schedule_and_settings_are_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root.join("lifecycle"), &mut files);
    rust_files(&root.join("schedule"), &mut files);
    files.push(root.join("settings.rs"));
    assert!(files.len() >= 10, "the core's files were found: {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (line, what) in violations(&source) {
            problems.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "the core must stay pure:\n{}",
        problems.join("\n")
    );
}
