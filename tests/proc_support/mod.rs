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

/// The apps running under `dir`: the processes there that lead their own process group
/// (fedrun starts each app as one). An app's subshells and children, which come and go
/// with the same command line, are not apps of their own.
pub fn apps_under(dir: &Path) -> Vec<u32> {
    let mut apps: Vec<u32> = processes_under(dir)
        .into_iter()
        .filter(|pid| process_group(*pid) == Some(*pid))
        .collect();
    apps.sort_unstable();
    apps
}

/// Kills (SIGKILL) every app group under `dir`: what a test that failed half-way must not
/// leave running.
pub fn kill_apps_under(dir: &Path) {
    for pid in apps_under(dir) {
        // SAFETY: kill(2) of a process group led by a process under the test's own folder.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// The process group of `pid` (`/proc/PID/stat` field 5, after the command name in
/// parentheses), if it is alive.
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
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

/// Waits for `child` to end and collects its output (with `stdout`/`stderr` piped as the
/// caller set them), within `bound`: past it the child is killed and the test fails, so a
/// hang is a failure with a message, never a test that runs forever.
pub fn output_within(
    child: std::process::Child,
    bound: std::time::Duration,
    what: &str,
) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => out.expect("collecting the output"),
        Err(_) => {
            // SAFETY: SIGKILL to the child this test started and has not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} did not end within {bound:?}");
        }
    }
}

/// Reads one line from `reader` within `bound` (the reader moves to a thread that is left
/// behind if the bound passes, and the test fails).
pub fn line_within<R: std::io::Read + Send + 'static>(
    reader: R,
    bound: std::time::Duration,
    what: &str,
) -> String {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::BufReader::new(reader).read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("{what}: no line within {bound:?}"))
        .expect("reading a line")
}
