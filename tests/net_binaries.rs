//! The real binaries on loopback (SPEC section 11): `fedrun provision` writes the kits,
//! `fedrun serve --listen 127.0.0.1:0` prints its address, three `fedrun site` agents
//! connect, and after SIGTERM the server's history shows each site connected and no
//! process is left.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod proc_support;
use proc_support::alive;

const BOUND: Duration = Duration::from_secs(30);
const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];

fn fedrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command.env_remove("FEDRUN_LOG");
    command
}

/// Sends every line `stream` prints to `lines`, on its own thread.
fn lines_of(stream: impl std::io::Read + Send + 'static, lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

/// Waits (bounded) for a line with `needle`; returns it.
fn wait_line(lines: &mpsc::Receiver<String>, needle: &str, what: &str) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("timed out waiting for {what} ({needle:?})"),
        }
    }
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
}

/// Waits (bounded) for the child to exit and returns its status code.
fn wait_exit(mut child: Child, what: &str) -> Option<i32> {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(BOUND) {
        Ok(status) => status.expect("wait").code(),
        Err(_) => {
            // SAFETY: kill(2) on the child this test started, which has not been reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} did not exit after SIGTERM");
        }
    }
}

#[test]
fn provision_serve_and_three_sites_as_processes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project.toml");
    let mut text = String::from(
        "name = \"bin\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\nport = 18443\n",
    );
    for site in SITES {
        text.push_str(&format!("[[site]]\nname = \"{site}\"\norg = \"o\"\n"));
    }
    // An admin, to ask the live server which sites it has recorded as connected.
    text.push_str("[[admin]]\nname = \"lead@example.org\"\norg = \"ops\"\nrole = \"lead\"\n");
    std::fs::write(&project, text).expect("project file");
    let kits = dir.path().join("kits");
    let out = fedrun()
        .arg("provision")
        .arg(&project)
        .arg("-o")
        .arg(&kits)
        .output()
        .expect("provision runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server_toml = std::fs::read_to_string(kits.join("localhost/fedrun.toml")).expect("kit");
    assert!(server_toml.contains("port = 18443"), "{server_toml}");
    assert!(server_toml.contains("site-3"), "{server_toml}");

    let data = dir.path().join("data");
    let settings = dir.path().join("settings.toml");
    std::fs::write(
        &settings,
        "[server]\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"3s\"\n",
    )
    .expect("settings");
    let mut server = fedrun()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--kit")
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&settings)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let (tx, server_lines) = mpsc::channel();
    lines_of(server.stdout.take().expect("stdout"), tx);
    let line = wait_line(&server_lines, "listening on", "the server's address");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address")
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    // A second server on the same data folder is refused with a clear message.
    let second = fedrun()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--kit")
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("second serve runs");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("server is running"), "{err}");
    // So is a kit without its key.
    let broken = dir.path().join("broken-kit");
    std::fs::create_dir_all(broken.join("startup")).expect("folder");
    for file in ["fedrun.toml", "startup/rootCA.pem", "startup/server.crt"] {
        std::fs::copy(kits.join("localhost").join(file), broken.join(file)).expect("copy");
    }
    let incomplete = fedrun()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--kit")
        .arg(&broken)
        .arg("--data-dir")
        .arg(dir.path().join("other-data"))
        .output()
        .expect("serve runs");
    assert_eq!(incomplete.status.code(), Some(1));
    let err = String::from_utf8_lossy(&incomplete.stderr);
    assert!(
        err.contains("incomplete") && err.contains("server.key"),
        "{err}"
    );

    let mut sites = Vec::new();
    for site in SITES {
        let mut child = fedrun()
            .args(["--log", "info", "site", "--server", &addr])
            .arg("--kit")
            .arg(kits.join(site))
            .arg("--work-dir")
            .arg(dir.path().join("work").join(site))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("site starts");
        let (tx, rx) = mpsc::channel();
        lines_of(child.stderr.take().expect("stderr"), tx);
        sites.push((site, child, rx));
    }
    for (site, _, lines) in &sites {
        wait_line(
            lines,
            "connected to the server",
            &format!("{site} connected"),
        );
    }
    // A site says it is connected once its link is up, before the server has recorded
    // its connection: wait (bounded) until the server lists every site, so the stops
    // below come after the connections are in the history.
    let began = std::time::Instant::now();
    loop {
        let listed = fedrun()
            .args(["sites", "--json", "--kit"])
            .arg(kits.join("lead@example.org"))
            .args(["--server", &addr])
            .output()
            .expect("sites runs");
        let text = String::from_utf8_lossy(&listed.stdout);
        if SITES
            .iter()
            .all(|site| text.contains(&format!("\"name\":\"{site}\"")))
        {
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(30),
            "the server did not list every site within 30 s: {text} {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let mut pids = vec![server.id()];
    for (site, child, _) in sites {
        pids.push(child.id());
        sigterm(&child);
        assert_eq!(wait_exit(child, site), Some(0), "{site} exits 0 on SIGTERM");
    }
    sigterm(&server);
    assert_eq!(
        wait_exit(server, "the server"),
        Some(0),
        "serve exits 0 on SIGTERM"
    );

    let history = fedrun()
        .args(["history", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .expect("history runs");
    assert!(
        history.status.success(),
        "{}",
        String::from_utf8_lossy(&history.stderr)
    );
    let history = String::from_utf8_lossy(&history.stdout);
    for site in SITES {
        let connected = history.lines().any(|line| {
            line.contains("\"site_connected\"") && line.contains(&format!("\"{site}\""))
        });
        assert!(connected, "{site} connected in the history:\n{history}");
    }
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[test]
fn serve_writes_one_json_object_per_log_line_with_log_format_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project.toml");
    std::fs::write(
        &project,
        "name = \"logs\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n",
    )
    .expect("project file");
    let kits = dir.path().join("kits");
    let out = fedrun()
        .arg("provision")
        .arg(&project)
        .arg("-o")
        .arg(&kits)
        .output()
        .expect("provision runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = fedrun()
        .args(["--log", "info", "--log-format", "json"])
        .args(["serve", "--listen", "127.0.0.1:0", "--kit"])
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve runs");
    let (tx, rx) = mpsc::channel();
    lines_of(server.stderr.take().expect("stderr"), tx);
    let line = wait_line(
        &rx,
        "created a new history",
        "the log line of a new history",
    );
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
    assert_eq!(value["level"], "INFO", "{line}");
    assert_eq!(
        value["fields"]["message"], "created a new history",
        "{line}"
    );
    assert!(value["timestamp"].is_string(), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a JSON line: {line:?}"
    );
    // SIGTERM once it listens (its handlers are in place then): a clean stop.
    let (out_tx, out_rx) = mpsc::channel();
    lines_of(server.stdout.take().expect("stdout"), out_tx);
    wait_line(&out_rx, "listening on", "the server's address");
    sigterm(&server);
    assert_eq!(wait_exit(server, "the server"), Some(0));
}
