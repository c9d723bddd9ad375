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
    // Killed if the test fails before it stops the server itself.
    let mut server = KillOnDrop(Some(server));
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
    assert!(
        !stderr.contains("fedrun-verify") && !stderr.contains("/tmp"),
        "the refusal names the server's temporary folder: {stderr}"
    );
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
    // The refusal is recorded (SPEC section 9), with who asked and why.
    let refused = signature_refusals(&history);
    assert_eq!(refused.len(), 1, "{history}");
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

    // On a terminal the upload shows a progress bar on stderr (SPEC section 11); through a
    // pipe (every call above) stderr stays free of it.
    let mut upload = fedrun();
    upload
        .args(["submit", job, "--kit"])
        .arg(kits.join("admin@ops"))
        .args(["--server", &addr]);
    let tty = on_terminal(upload);
    assert!(tty.contains("uploading"), "no progress bar: {tty:?}");
    assert!(!String::from_utf8_lossy(&signed.stderr).contains("uploading"));

    let mut server = server.0.take().expect("the server runs");
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
    // What is on disk, read offline: two submitted jobs (the signed one and the one
    // uploaded on a terminal), and the one recorded refusal.
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
        2,
        "{offline}"
    );
    assert_eq!(signature_refusals(&offline).len(), 1, "{offline}");
}

/// Runs `command` with its stderr on a new pseudo-terminal and returns what it wrote there
/// (stdout and stdin stay pipes). Bounded: the command must end within 60 s.
fn on_terminal(mut command: Command) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the integers given; the name, the
    // termios and the window size are optional and passed as null.
    let made = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(made, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("fedrun runs");
    // The command holds its copy of the terminal's end until it is dropped; after that the
    // child holds the only one, and reading ends (EIO) once it has exited.
    drop(command);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the command ends within 60 s");
    let status = child.wait().expect("wait");
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(status.success(), "{status:?}: {text}");
    text
}

/// A child process killed (and reaped) when dropped, unless taken out first.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The recorded refusals of a submit for its signature, from `history --json` lines: each
/// is a `request_refused` event whose rejection is `signature_refused`, by the admin, with
/// the reason.
fn signature_refusals(history: &str) -> Vec<serde_json::Value> {
    history
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            let kind = &event["kind"];
            kind["type"] == "request_refused"
                && kind["operation"] == "submit"
                && kind["rejection"]["rejection"] == "signature_refused"
        })
        .inspect(|event| {
            let reason = event["kind"]["rejection"]["reason"].as_str().unwrap_or("");
            assert!(reason.contains("not signed"), "{event}");
            assert!(!reason.contains("fedrun-verify"), "{event}");
            assert!(
                event.to_string().contains("admin@ops"),
                "the refusal names who asked: {event}"
            );
        })
        .collect()
}
