//! The minimum Rust version that Cargo.toml states must be the one the lockfile really
//! needs: the highest `rust-version` declared by any locked package whose source cargo has
//! downloaded for this platform. A dependency upgrade that raises it fails here until the
//! manifest (and README) say so.

use std::path::{Path, PathBuf};

/// Parses "1.89" or "1.89.0" into a comparable triple.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.trim().split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|e| panic!("rust-version {text:?} is not numeric: {e}"))
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    (major, minor, patch)
}

fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo"),
    }
}

/// Every unpacked registry folder (one per registry index).
fn registry_roots() -> Vec<PathBuf> {
    let src = cargo_home().join("registry").join("src");
    let Ok(entries) = std::fs::read_dir(&src) else {
        return Vec::new();
    };
    entries.filter_map(|e| e.ok().map(|e| e.path())).collect()
}

fn declared_rust_version(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    value
        .get("package")?
        .get("rust-version")?
        .as_str()
        .map(str::to_owned)
}

#[test]
fn stated_rust_version_is_the_highest_the_lockfile_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock"))
            .expect("Cargo.lock is TOML");
    let roots = registry_roots();
    let mut highest: Option<((u64, u64, u64), String)> = None;
    let mut found = 0usize;
    for package in lock["package"].as_array().expect("[[package]] entries") {
        // Only registry packages: the crate itself states the version under test.
        if package.get("source").is_none() {
            continue;
        }
        let name = package["name"].as_str().expect("package name");
        let ver = package["version"].as_str().expect("package version");
        let Some(manifest) = roots
            .iter()
            .map(|r| r.join(format!("{name}-{ver}")).join("Cargo.toml"))
            .find(|m| m.exists())
        else {
            // Not downloaded: a dependency of another platform (windows-sys, wasm-bindgen...).
            continue;
        };
        found += 1;
        if let Some(required) = declared_rust_version(&manifest) {
            let v = version(&required);
            if highest.as_ref().is_none_or(|(h, _)| v > *h) {
                highest = Some((v, format!("{name} {ver} needs {required}")));
            }
        }
    }
    // The test binary was built, so the dependencies it links were unpacked; if none is
    // found the registry lives somewhere this test does not know, and it must say so.
    assert!(
        found > 20,
        "found only {found} unpacked dependencies under {}",
        cargo_home().display()
    );
    let (needed, why) = highest.expect("some dependency declares a rust-version");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml"))
            .expect("Cargo.toml is TOML");
    let stated = manifest["package"]["rust-version"]
        .as_str()
        .expect("Cargo.toml states rust-version");
    assert_eq!(
        version(stated),
        needed,
        "Cargo.toml states rust-version {stated}, but the lockfile needs {needed:?} ({why})"
    );
}
