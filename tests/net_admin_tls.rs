//! The admin CLI against a real federation on loopback (SPEC section 11): `fedrun
//! provision`, `fedrun serve` and `fedrun site` as processes, then `fedrun submit --wait`
//! over mutual TLS with the admin kit, a download of the finished job, a refusal, and the
//! exit codes scripts rely on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);

mod proc_support;
use proc_support::line_within;

fn fedrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command.env_remove("FEDRUN_KIT").env_remove("FEDRUN_LOG");
    command
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("fedrun runs")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const PROJECT: &str = r#"
name = "loopback"
valid_days = 30
[server]
host = "localhost"
org = "example"
port = 8443
[[site]]
name = "site-1"
org = "hospital-a"
[[admin]]
name = "lead@example.org"
org = "example"
role = "lead"
[[admin]]
name = "member@hospital-a.org"
org = "hospital-a"
role = "member"
"#;

#[test]
fn submit_wait_and_download_over_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::write(root.join("project.toml"), PROJECT).expect("project file");
    let provisioned = run(fedrun()
        .arg("provision")
        .arg(root.join("project.toml"))
        .arg("-o")
        .arg(root.join("kits")));
    assert!(provisioned.status.success(), "{}", text(&provisioned));
    let kits = root.join("kits");

    let mut serve = fedrun()
        .arg("serve")
        .arg("--kit")
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = serve.stdout.take().expect("stdout");
    let serve = Running(serve);
    // The server prints its bound address once it listens.
    let line = line_within(stdout, Duration::from_secs(60), "the server's address");
    let addr = line
        .split_whitespace()
        .find(|word| word.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();

    let site = Running(
        fedrun()
            .arg("site")
            .arg("--kit")
            .arg(kits.join("site-1"))
            .arg("--work-dir")
            .arg(root.join("site-1"))
            .args(["--server", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("site starts"),
    );

    let lead = kits.join("lead@example.org");
    let admin = |kit: &Path, args: &[&str]| {
        run(fedrun()
            .args(args)
            .arg("--kit")
            .arg(kit)
            .args(["--server", &addr]))
    };

    // `history --follow` streams the site's connection as soon as it is durable.
    let mut follow = fedrun()
        .args(["history", "--follow", "--json", "--kit"])
        .arg(&lead)
        .args(["--server", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("history --follow starts");
    let lines = follow.stdout.take().expect("stdout");
    let follow = Running(follow);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(lines).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + BOUND;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("site-1 connects in time")
            .expect("a line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if event["type"] == "site_connected" && event["kind"]["site"] == "site-1" {
            break;
        }
    }
    drop(follow);
    let sites = admin(&lead, &["sites", "--json"]);
    assert!(sites.status.success(), "{}", text(&sites));
    let listed: serde_json::Value =
        serde_json::from_slice(&sites.stdout).expect("one site, one JSON line");
    assert_eq!(listed["name"], "site-1");

    // An unsigned job is signed with the lead's key in a copy; the example stays unsigned.
    let job = examples().join("hello-complete");
    let submitted = admin(
        &lead,
        &[
            "submit",
            job.to_str().expect("UTF-8 path"),
            "--wait",
            "--json",
        ],
    );
    assert_eq!(submitted.status.code(), Some(0), "{}", text(&submitted));
    assert!(
        !job.join(".__nvfl_sig.json").exists(),
        "the user's folder is never signed in place"
    );
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().expect("the submit's answer")).expect("JSON");
    let job_id = first["job_id"].as_str().expect("job_id").to_string();
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("the final view")).expect("JSON");
    assert_eq!(last["status"], "FINISHED:COMPLETED");
    assert_eq!(last["archive"]["state"], "archived");

    let out = root.join("downloads");
    let downloaded = admin(
        &lead,
        &["download", &job_id[..8], "-o", out.to_str().expect("UTF-8")],
    );
    assert!(downloaded.status.success(), "{}", text(&downloaded));
    let folder = out.join(&job_id);
    for name in ["meta.json", "package.zip", "workspace.zip"] {
        let bytes = std::fs::read(folder.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!bytes.is_empty(), "{name} is empty");
    }
    let workspace = std::fs::read(folder.join("workspace.zip")).expect("workspace");
    zip::ZipArchive::new(std::io::Cursor::new(workspace)).expect("the workspace is a zip");

    // A member may not abort (exit 1, refused by the server); the refusal is recorded.
    let refused = admin(&kits.join("member@hospital-a.org"), &["abort", &job_id]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not_allowed"));
    let history = admin(&lead, &["history", "--job", &job_id, "--json"]);
    assert!(history.status.success(), "{}", text(&history));
    let refusals: Vec<serde_json::Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|e| e["type"] == "request_refused")
        .collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["actor"]["name"], "member@hospital-a.org");

    let audit = admin(&lead, &["audit", "verify"]);
    assert!(audit.status.success(), "{}", text(&audit));

    // Usage errors exit 2, an unreachable server 3.
    let both = run(fedrun()
        .args(["list", "--data-dir"])
        .arg(root.join("data"))
        .arg("--kit")
        .arg(&lead));
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    drop(site);
    drop(serve);
    let gone = admin(&lead, &["list"]);
    assert_eq!(gone.status.code(), Some(3), "{}", text(&gone));

    // The stopped server's folder gives the same download, read-only.
    let offline = root.join("offline");
    let local = run(fedrun()
        .args(["download", &job_id, "-o"])
        .arg(&offline)
        .arg("--data-dir")
        .arg(root.join("data")));
    assert!(local.status.success(), "{}", text(&local));
    for name in ["meta.json", "package.zip", "workspace.zip"] {
        assert_eq!(
            std::fs::read(offline.join(&job_id).join(name)).expect("offline file"),
            std::fs::read(folder.join(name)).expect("live file"),
            "{name} is the same from the folder as from the live server"
        );
    }
}
