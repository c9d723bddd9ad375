//! What really runs, read from `/proc`: the tests that start servers, agents and apps
//! check leftovers against this, never against fedrun's own view.

#![allow(dead_code)]

use std::path::Path;

/// Is `pid` a live process (not a zombie, not gone)?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next()),
            Some("Z") | Some("X") | None
        )
    })
}

/// The live processes for which `keep(pid)` holds.
fn live_processes(mut keep: impl FnMut(u32) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if keep(pid) && alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Live processes whose working folder is under `dir`: the apps fedrun started there.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    live_processes(|pid| {
        std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
    })
}

/// Live processes that work under `dir` or name it on their command line (a `fedrun
/// serve --data-dir DIR/...` started from elsewhere).
pub fn processes_of(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.to_string_lossy().into_owned();
    live_processes(|pid| {
        std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
    })
}
