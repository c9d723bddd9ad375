//! A server with `require_signed_jobs = true` over the network (SPEC sections 6 and 11):
//! an unsigned job is refused with a clear error and exit 1, and nothing is stored for it;
//! the same job signed by the admin kit's key (what `fedrun submit` does by default) is
//! accepted, with its signer recorded.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn fedrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command.env_remove("FEDRUN_LOG").env_remove("FEDRUN_KIT");
    command
}

#[test]
fn an_unsigned_job_is_refused_and_a_signed_one_accepted_under_require_signed_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project.toml");
    std::fs::write(
        &project,
        "name = \"signed\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
         [[admin]]\nname = \"admin@ops\"\norg = \"ops\"\nrole = \"project_admin\"\n",
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
    assert!(out.status.success(), "{out:?}");
    let settings = dir.path().join("settings.toml");
    std::fs::write(&settings, "[server]\nrequire_signed_jobs = true\n").expect("settings");
    let data = dir.path().join("data");
    let mut server = fedrun()
        .args(["serve", "--listen", "127.0.0.1:0", "--kit"])
        .arg(kits.join("localhost"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&settings)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve runs");
    let (tx, rx) = mpsc::channel();
    let stdout = server.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server says where it listens");
    let addr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address")
        .to_string();
    let admin = |args: &[&str]| {
        fedrun()
            .args(args)
            .arg("--kit")
            .arg(kits.join("admin@ops"))
            .args(["--server", &addr])
            .output()
            .expect("fedrun runs")
    };
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-complete");
    let job = job.to_str().expect("utf-8 path");

    let unsigned = admin(&["submit", "--no-sign", job]);
    let stderr = String::from_utf8_lossy(&unsigned.stderr);
    assert_eq!(unsigned.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not signed"), "{stderr}");
    assert!(stderr.contains("require_signed_jobs"), "{stderr}");
    let listed = admin(&["list", "--json", "--all"]);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        listed.stdout.is_empty(),
        "a refused job was stored: {}",
        String::from_utf8_lossy(&listed.stdout)
    );

    let signed = admin(&["submit", "--json", job]);
    assert!(signed.status.success(), "{signed:?}");
    let history = admin(&["history", "--json"]);
    let history = String::from_utf8_lossy(&history.stdout);
    let submitted: Vec<&str> = history
        .lines()
        .filter(|l| l.contains("\"type\":\"job_submitted\""))
        .collect();
    assert_eq!(submitted.len(), 1, "{history}");
    assert!(
        submitted[0].contains("\"signer\":{\"name\":\"admin@ops\""),
        "{}",
        submitted[0]
    );
    // The folder submitted signed was never changed: signing went into a copy.
    for folder in ["", "app"] {
        let sig = Path::new(job).join(folder).join(fedrun::trust::SIG_FILE);
        assert!(!sig.exists(), "{} was written", sig.display());
    }

    // SAFETY: SIGTERM to the server this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server exits within 30 s of SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // What is on disk, read offline: one submitted job, the signed one.
    let offline = fedrun()
        .args(["history", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .expect("fedrun history");
    assert!(offline.status.success(), "{offline:?}");
    let offline = String::from_utf8_lossy(&offline.stdout);
    assert_eq!(
        offline
            .lines()
            .filter(|l| l.contains("\"type\":\"job_submitted\""))
            .count(),
        1,
        "{offline}"
    );
}
