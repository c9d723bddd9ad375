//! The pure core (lifecycle, scheduler, settings) never touches tokio, sled, the file
//! system, the network, a clock, a random source, or hash-ordered collections.
//!
//! Two checks: the imports form a graph (every `crate::...` path in a core module is an
//! edge to the module it names), and everything the core reaches through that graph must
//! be on an explicit allow-list of pure modules; and no file the core reaches uses a
//! forbidden word (tokio, sled, `std::fs`, clocks...).

use std::collections::{BTreeMap, BTreeSet};
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

/// Where the core starts: every module under these is core.
const CORE_ROOTS: &[&str] = &["lifecycle", "schedule", "settings"];

/// The modules the core may reach. Each is pure: `job` holds `JobId` (its `pub mod`
/// lines declare modules, they do not import them), `job::meta` parses and validates
/// `meta.json` from bytes. Anything else (site, engine, history, blobs, trust, sim, cmd,
/// job::package and the other IO modules of `job`) is refused.
const ALLOWED: &[&str] = &["lifecycle", "schedule", "settings", "job", "job::meta"];

/// The source with comments removed, line by line (so line numbers stay right).
fn code_lines(source: &str) -> Vec<String> {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => line[..at].to_string(),
            None => line.to_string(),
        })
        .collect()
}

/// The forbidden things a piece of Rust source uses, with line numbers. Comments are
/// skipped, since they may name what the code must not do.
fn violations(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, code) in code_lines(source).iter().enumerate() {
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

/// The `crate::...` paths a source names, as segment lists (`crate::job::meta::SERVER`
/// gives `["job", "meta", "SERVER"]`; a group `crate::job::{meta, JobId}` gives one path
/// per member).
fn crate_paths(source: &str) -> Vec<Vec<String>> {
    let code: String = code_lines(source).join("\n");
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    let mut rest = compact.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        out.extend(expand(rest));
    }
    out
}

/// Reads one path (with `{...}` groups) from the start of `text`.
fn expand(text: &str) -> Vec<Vec<String>> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if let Some(inner) = text.strip_prefix('{') {
            return group_members(inner)
                .into_iter()
                .flat_map(|member| expand(&member))
                .collect();
        }
        return Vec::new();
    }
    let after = &text[ident.len()..];
    match after.strip_prefix("::") {
        Some(more) => {
            let tails = expand(more);
            if tails.is_empty() {
                vec![vec![ident]]
            } else {
                tails
                    .into_iter()
                    .map(|tail| {
                        let mut path = vec![ident.clone()];
                        path.extend(tail);
                        path
                    })
                    .collect()
            }
        }
        None => vec![vec![ident]],
    }
}

/// The comma-separated members of a `{...}` group whose opening brace is already read.
fn group_members(inner: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in inner.chars() {
        match c {
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' if depth == 0 => break,
            '}' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => members.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        members.push(current);
    }
    members
}

/// Every module of the crate by its path (`lifecycle::decide`), with its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] {
            continue;
        }
        out.insert(parts.join("::"), file);
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
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

/// Whether a module is on the allow-list (a listed module or one inside a listed core
/// root).
fn allowed(module: &str) -> bool {
    ALLOWED.contains(&module)
        || CORE_ROOTS
            .iter()
            .any(|root| module.starts_with(&format!("{root}::")))
}

/// Walks the import graph from the core roots. Returns every module reached (with the
/// module that first reached it) and the edges that leave the allow-list.
fn reach(modules: &BTreeMap<String, PathBuf>) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let mut reached: BTreeMap<String, String> = BTreeMap::new();
    let mut queue: Vec<String> = modules
        .keys()
        .filter(|m| {
            CORE_ROOTS
                .iter()
                .any(|root| *m == root || m.starts_with(&format!("{root}::")))
        })
        .cloned()
        .collect();
    for m in &queue {
        reached.insert(m.clone(), "(core root)".to_string());
    }
    let mut bad = Vec::new();
    while let Some(module) = queue.pop() {
        let file = &modules[&module];
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for path in crate_paths(&source) {
            let Some(target) = module_of(&path, modules) else {
                continue;
            };
            if !allowed(&target) {
                bad.push((module.clone(), target.clone()));
                continue;
            }
            if !reached.contains_key(&target) {
                reached.insert(target.clone(), module.clone());
                queue.push(target);
            }
        }
    }
    (reached, bad)
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
fn the_path_reader_follows_groups_and_inline_paths() {
    let paths = crate_paths(
        "use crate::job::{meta::SERVER, JobId};\nlet x = crate::site::protocol::Foo;\n// crate::engine is a comment",
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["job::meta::SERVER", "job::JobId", "site::protocol::Foo"]
    );
    let mods: BTreeMap<String, PathBuf> = ["job", "job::meta", "site", "site::protocol"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(
        module_of(&paths[0], &mods).as_deref(),
        Some("job::meta"),
        "the longest module prefix"
    );
    assert_eq!(module_of(&paths[1], &mods).as_deref(), Some("job"));
    assert!(!allowed("site::protocol"));
    assert!(!allowed("job::package"));
    assert!(allowed("lifecycle::decide"));
}

#[test]
fn the_core_reaches_only_pure_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(
        modules.contains_key("lifecycle::decide") && modules.contains_key("job::meta"),
        "the crate's modules were found: {:?}",
        modules.keys().collect::<Vec<_>>()
    );
    let (reached, bad) = reach(&modules);
    assert!(
        bad.is_empty(),
        "the core reaches modules outside the pure allow-list:\n{}",
        bad.iter()
            .map(|(from, to)| format!("  {from} -> {to}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(reached.contains_key("job::meta"), "the graph was walked");
    let mut problems = Vec::new();
    let reached_files: BTreeSet<&PathBuf> = reached.keys().map(|m| &modules[m]).collect();
    for file in reached_files {
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
