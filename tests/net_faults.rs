//! Faults of a real federation on loopback (SPEC sections 8 and 11): `fedrun serve` and
//! three `fedrun site` agents as processes, jobs submitted with the admin CLI, and then
//! a site agent or the server killed with SIGKILL while the job's apps run. Each test
//! ends by checking, in /proc, that no app process is left under its folder; a failed
//! test kills whatever it left (its children, and the app process groups under its
//! folder) when its federation is dropped.
//!
//! The job's app waits until the test creates a release file, so a test decides when the
//! apps may finish instead of racing them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod proc_support;
use proc_support::{alive, apps_under, processes_under};

/// The longest any single wait of these tests may take.
const BOUND: Duration = Duration::from_secs(30);
/// How often a wait looks again at what it waits for.
const POLL: Duration = Duration::from_millis(150);
const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];
const ADMIN: &str = "boss@ops";

fn fedrun() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedrun"));
    command
        .env_remove("FEDRUN_KIT")
        .env_remove("FEDRUN_LOG")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("FEDRUN_SETTING_") {
            command.env_remove(name);
        }
    }
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `check` every [`POLL`] until it gives a value, for at most [`BOUND`].
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL sent");
    child.wait().expect("reaped");
}

fn sigterm_and_wait(mut child: Child, what: &str) -> Option<i32> {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit after SIGTERM");
        }
        std::thread::sleep(POLL);
    }
}

/// The events of `events` of type `kind`.
fn of_type<'e>(events: &'e [serde_json::Value], kind: &str) -> Vec<&'e serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The sites whose app exit was reported as a normal `0` (not caused by a stop), sorted.
fn normal_exits(events: &[serde_json::Value]) -> Vec<String> {
    let mut sites: Vec<String> = of_type(events, "site_outcome_reported")
        .into_iter()
        .filter(|e| {
            e["kind"]["outcome"] == serde_json::json!({"kind": "code", "value": 0})
                && e["kind"]["stop_requested"] != true
        })
        .map(|e| e["kind"]["site"].as_str().expect("a site").to_string())
        .collect();
    sites.sort();
    sites
}

/// A federation of real processes in a temporary folder.
struct Federation {
    dir: tempfile::TempDir,
    addr: String,
    server: Option<Child>,
    agents: Vec<(&'static str, Option<Child>)>,
}

impl Federation {
    /// Provisions, starts the server with `settings` (the `[server]` table's lines) and
    /// the three site agents, and waits until every site is connected.
    fn start(settings: &str) -> Federation {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let mut project = format!(
            "name = \"faults\"\n[server]\nhost = \"localhost\"\norg = \"ops\"\n\
             [[admin]]\nname = \"{ADMIN}\"\norg = \"ops\"\nrole = \"project_admin\"\n"
        );
        for site in SITES {
            project.push_str(&format!("[[site]]\nname = \"{site}\"\norg = \"o\"\n"));
        }
        std::fs::write(root.join("project.toml"), project).expect("project file");
        let out = fedrun()
            .arg("provision")
            .arg(root.join("project.toml"))
            .arg("-o")
            .arg(root.join("kits"))
            .output()
            .expect("provision runs");
        assert!(out.status.success(), "{}", text(&out));
        std::fs::write(
            root.join("settings.toml"),
            format!(
                "[server]\nheartbeat_interval = \"300ms\"\nheartbeat_timeout = \"2s\"\n\
                 min_schedule_interval = \"1s\"\n{settings}"
            ),
        )
        .expect("settings");
        let mut fed = Federation {
            dir,
            addr: String::new(),
            server: None,
            agents: SITES.iter().map(|s| (*s, None)).collect(),
        };
        fed.start_server("127.0.0.1:0");
        for site in SITES {
            fed.start_agent(site);
        }
        fed.wait_connected(&SITES);
        fed
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.root().join("data")
    }

    fn work(&self, site: &str) -> PathBuf {
        self.root().join("work").join(site)
    }

    /// Starts `fedrun serve` on `listen` and remembers the address it printed.
    fn start_server(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("serve.log"))
            .expect("server log");
        let mut child = fedrun()
            .args(["--log", "info", "serve", "--listen", listen])
            .arg("--kit")
            .arg(self.root().join("kits/localhost"))
            .arg("--data-dir")
            .arg(self.data())
            .arg("--config")
            .arg(self.root().join("settings.toml"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("stdout");
        self.server = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + BOUND;
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the server says where it listens\n{}", self.logs()));
            if let Some(addr) = line
                .split_whitespace()
                .find(|word| word.starts_with("127.0.0.1:"))
            {
                break addr.to_string();
            }
        };
        assert!(!addr.ends_with(":0"), "{addr}");
        self.addr = addr;
    }

    fn start_agent(&mut self, site: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(format!("{site}.log")))
            .expect("site log");
        let child = fedrun()
            .args(["--log", "info", "site", "--server", &self.addr])
            .arg("--kit")
            .arg(self.root().join("kits").join(site))
            .arg("--work-dir")
            .arg(self.work(site))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("site starts");
        let slot = self
            .agents
            .iter_mut()
            .find(|(name, _)| *name == site)
            .expect("a known site");
        slot.1 = Some(child);
    }

    fn kill_agent(&mut self, site: &str) {
        let slot = self
            .agents
            .iter_mut()
            .find(|(name, _)| *name == site)
            .expect("a known site");
        sigkill(slot.1.as_mut().expect("the agent runs"));
        slot.1 = None;
    }

    /// The server's and agents' logs, to explain a failure.
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["serve"].into_iter().chain(SITES) {
            let log = std::fs::read_to_string(self.root().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            all.push_str(&format!("--- {name}.log (last lines)\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// Runs an admin command against the live server.
    fn admin(&self, args: &[&str]) -> Output {
        fedrun()
            .args(args)
            .arg("--kit")
            .arg(self.root().join("kits").join(ADMIN))
            .args(["--server", &self.addr])
            .output()
            .expect("fedrun runs")
    }

    /// The names of the connected sites, or `None` while the server cannot answer.
    fn connected(&self) -> Option<Vec<String>> {
        let out = self.admin(&["sites", "--json"]);
        if !out.status.success() {
            return None;
        }
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let site: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                site["name"].as_str().expect("a site name").to_string()
            })
            .collect();
        names.sort();
        Some(names)
    }

    fn wait_connected(&self, sites: &[&str]) {
        wait_until(&format!("{sites:?} connected"), || {
            self.connected()
                .filter(|names| sites.iter().all(|s| names.iter().any(|n| n == s)))
        });
    }

    fn wait_disconnected(&self, site: &str) {
        wait_until(&format!("{site} seen disconnected"), || {
            self.connected()
                .filter(|names| !names.iter().any(|n| n == site))
        });
    }

    /// Writes a job whose apps (server and sites) run until [`Federation::release`] and
    /// submits it; returns its id.
    fn submit_held_job(&self) -> String {
        let job = self.root().join("held-job");
        std::fs::create_dir_all(job.join("app")).expect("job folder");
        std::fs::write(
            job.join("meta.json"),
            r#"{ "name": "held", "deploy_map": { "app": ["@ALL"] }, "min_clients": 3 }"#,
        )
        .expect("meta.json");
        // Exits 0 once the release file exists, and at once on SIGTERM (fedrun's stop).
        std::fs::write(
            job.join("app/run.sh"),
            "#!/bin/sh\ntrap 'exit 0' TERM\necho \"$FEDRUN_SITE: held\"\n\
             while [ ! -e \"$HELD_RELEASE\" ]; do\n  sleep 0.1 &\n  wait $!\ndone\n\
             echo \"$FEDRUN_SITE: released\"\nexit 0\n",
        )
        .expect("run.sh");
        let release = self.release_file();
        std::fs::write(
            job.join("app/run.toml"),
            format!(
                "command = \"sh\"\nargs = [\"run.sh\"]\n[env]\nHELD_RELEASE = {:?}\n",
                release.to_str().expect("UTF-8 path")
            ),
        )
        .expect("run.toml");
        let out = self.admin(&["submit", job.to_str().expect("UTF-8 path"), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first: serde_json::Value =
            serde_json::from_str(stdout.lines().next().expect("the submit's answer"))
                .expect("JSON");
        first["job_id"].as_str().expect("job_id").to_string()
    }

    fn release_file(&self) -> PathBuf {
        self.root().join("release")
    }

    fn release(&self) {
        std::fs::write(self.release_file(), b"go").expect("release file");
    }

    /// The job's view from the live server, or `None` while it cannot answer.
    fn show(&self, job: &str) -> Option<serde_json::Value> {
        let out = self.admin(&["show", job, "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("a JSON view"))
    }

    /// The job's events from the live server's history, as JSON values.
    fn events(&self, job: &str) -> Vec<serde_json::Value> {
        let out = self.admin(&["history", "--job", job, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON event"))
            .collect()
    }

    /// Waits until the job runs and every participant's app shell is up.
    fn wait_running(&self, job: &str) {
        wait_until("the job running", || {
            self.show(job).filter(|view| view["status"] == "RUNNING")
        });
        for site in SITES {
            wait_until(&format!("{site}'s app running"), || {
                (!apps_under(&self.work(site)).is_empty()).then_some(())
            });
        }
        wait_until("the server app running", || {
            (!apps_under(&self.data()).is_empty()).then_some(())
        });
    }

    /// Waits until the job is terminal and its archive settled; returns its view.
    fn wait_settled(&self, job: &str) -> serde_json::Value {
        wait_until("the job settled", || {
            self.show(job).filter(|view| {
                view["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("FINISHED"))
                    && view["archive"]["state"] != "pending"
                    && !view["archive"].is_null()
            })
        })
    }

    /// Stops the agents and the server with SIGTERM (each must exit 0).
    fn stop_cleanly(&mut self) {
        for (site, slot) in &mut self.agents {
            if let Some(child) = slot.take() {
                assert_eq!(sigterm_and_wait(child, site), Some(0), "{site} exits 0");
            }
        }
        if let Some(server) = self.server.take() {
            assert_eq!(
                sigterm_and_wait(server, "the server"),
                Some(0),
                "the server exits 0"
            );
        }
    }

    /// Asserts that no process is left under the test's folder, waiting (bounded) for
    /// the ones that are already on their way out.
    fn assert_no_app_left(&self) {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = processes_under(self.root());
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let described: Vec<String> = left
                    .iter()
                    .map(|pid| {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                            .unwrap_or_default();
                        format!("{pid}: {cmd}")
                    })
                    .collect();
                panic!("app processes left: {described:?}\n{}", self.logs());
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        for (_, slot) in &mut self.agents {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        for pid in processes_under(self.dir.path()) {
            let pid = pid as i32;
            // SAFETY: getpgid/kill on processes started under this test's folder.
            unsafe {
                let group = libc::getpgid(pid);
                if group > 1 {
                    libc::kill(-group, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// SPEC 8 and 11: a site's apps keep running when its agent goes away; an agent
/// restarted on the same work folder re-attaches to the app, reports its exit, and the
/// job completes.
#[test]
fn a_site_agent_killed_and_restarted_reattaches_and_the_job_completes() {
    agent_killed_and_restarted(false);
}

/// SPEC 8 and 11: the app of a site whose agent is dead ends meanwhile; the restarted
/// agent finds its recorded exit, says the job ended while it was away, and its report
/// completes the job.
#[test]
fn a_site_app_that_ends_while_its_agent_is_dead_is_reported_after_the_restart() {
    agent_killed_and_restarted(true);
}

/// Kills site-2's agent while the job runs and restarts it on the same work folder; with
/// `ends_while_away` the apps are released (and site-2's has ended) before the restart.
fn agent_killed_and_restarted(ends_while_away: bool) {
    let mut fed = Federation::start(
        "site_reconnect_grace = \"20s\"\nclient_outcome_wait = \"20s\"\nabort_grace = \"2s\"\n",
    );
    let job = fed.submit_held_job();
    fed.wait_running(&job);
    let before = apps_under(&fed.work("site-2"));
    assert_eq!(before.len(), 1, "site-2 runs one app: {before:?}");

    fed.kill_agent("site-2");
    fed.wait_disconnected("site-2");
    assert!(
        before.iter().all(|pid| alive(*pid)),
        "site-2's app outlives its agent: {before:?}"
    );
    assert_eq!(
        fed.show(&job).expect("the server answers")["status"],
        "RUNNING",
        "the job waits for site-2 within site_reconnect_grace"
    );
    if ends_while_away {
        fed.release();
        wait_until("site-2's app ended without its agent", || {
            processes_under(&fed.work("site-2"))
                .is_empty()
                .then_some(())
        });
    }

    fed.start_agent("site-2");
    fed.wait_connected(&["site-2"]);
    if !ends_while_away {
        assert_eq!(
            apps_under(&fed.work("site-2")),
            before,
            "the restarted agent re-attached to the same app, it started no other"
        );
        fed.release();
    }
    let view = fed.wait_settled(&job);
    assert_eq!(
        view["status"],
        "FINISHED:COMPLETED",
        "{view:#}\n{}",
        fed.logs()
    );
    assert_eq!(view["archive"]["state"], "archived", "{view:#}");
    let events = fed.events(&job);
    assert_eq!(
        normal_exits(&events),
        SITES,
        "every site reported its app's exit, site-2 through its restarted agent: {events:#?}"
    );
    assert!(
        of_type(&events, "site_report_lapsed").is_empty(),
        "{events:#?}"
    );
    fed.stop_cleanly();
    fed.assert_no_app_left();
}

/// SPEC 8: a site that disconnects while its report is outstanding has
/// `site_reconnect_grace` to come back; after that its report counts as `104`, which
/// stops the run (the other participants' apps are asked to stop) and is sticky, so the
/// job ends `FINISHED:ABNORMAL` with the lost site named. Nobody is left to stop the app
/// of the site whose agent died: SPEC counts that site as ended when its grace runs out,
/// and the app runs on (observable in /proc). An agent started on that work folder after
/// the job ended says it runs the job's app (SPEC 11), and that app of an ended run is
/// stopped, so in the end no app is left.
#[test]
fn a_site_agent_killed_and_not_restarted_ends_the_job_abnormal() {
    let grace = Duration::from_secs(3);
    let mut fed = Federation::start(&format!(
        "site_reconnect_grace = \"{}s\"\nabort_grace = \"2s\"\nclient_outcome_wait = \"5s\"\n",
        grace.as_secs()
    ));
    let job = fed.submit_held_job();
    fed.wait_running(&job);
    let orphan = apps_under(&fed.work("site-2"));
    assert_eq!(orphan.len(), 1, "site-2 runs one app: {orphan:?}");
    let others: Vec<u32> = ["site-1", "site-3"]
        .iter()
        .flat_map(|s| apps_under(&fed.work(s)))
        .chain(apps_under(&fed.data()))
        .collect();

    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    fed.kill_agent("site-2");
    let view = fed.wait_settled(&job);
    assert_eq!(
        view["status"],
        "FINISHED:ABNORMAL",
        "{view:#}\n{}",
        fed.logs()
    );
    let reason = view["finish_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("site-2") && reason.contains("104"),
        "the reason names the lost site and code 104: {view:#}"
    );
    assert_eq!(view["archive"]["state"], "archived", "{view:#}");
    let events = fed.events(&job);
    let lapsed = of_type(&events, "site_report_lapsed");
    assert_eq!(lapsed.len(), 1, "{events:#?}");
    assert_eq!(lapsed[0]["kind"]["site"], "site-2");
    let lapsed_ms = u128::from(lapsed[0]["at_ms"].as_u64().expect("at_ms"));
    assert!(
        lapsed_ms >= killed_ms + grace.as_millis(),
        "the report lapsed only once site_reconnect_grace ran out ({} ms after the kill)",
        lapsed_ms.saturating_sub(killed_ms)
    );
    assert!(
        of_type(&events, "site_outcome_reported")
            .iter()
            .all(|e| e["kind"]["site"] != "site-2"),
        "nothing reported for site-2: {events:#?}"
    );
    assert_eq!(
        of_type(&events, "run_stop_requested").len(),
        1,
        "the lapse stopped the run: {events:#?}"
    );
    // The stop reached every app that still had someone to stop it: site-1 and site-3
    // report an exit their agent says the stop caused.
    let mut stopped: Vec<&str> = of_type(&events, "site_outcome_reported")
        .iter()
        .filter(|e| e["kind"]["stop_requested"] == true)
        .filter_map(|e| e["kind"]["site"].as_str())
        .collect();
    stopped.sort_unstable();
    assert_eq!(stopped, ["site-1", "site-3"], "{events:#?}");
    let still: Vec<u32> = others.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        still.is_empty(),
        "apps of the run left after its stop: {still:?}"
    );
    // The orphan is observable: nothing stopped it, and the job did not wait for it.
    assert!(
        orphan.iter().all(|p| alive(*p)),
        "site-2's app runs on with its agent dead: {orphan:?}"
    );
    fed.start_agent("site-2");
    fed.wait_connected(&["site-2"]);
    wait_until(
        "site-2's orphaned app stopped by its restarted agent",
        || orphan.iter().all(|p| !alive(*p)).then_some(()),
    );
    fed.stop_cleanly();
    fed.assert_no_app_left();
}

/// SPEC 4, 8 and 11: the server killed with SIGKILL while a job runs leaves the apps
/// running; restarted on the same data folder it re-attaches to its server app, the sites
/// reconnect and say which jobs they run, and the job completes. After a clean stop the
/// history's chain verifies and no app is left.
#[test]
fn a_server_killed_and_restarted_reattaches_and_the_job_completes() {
    server_killed_and_restarted(false);
}

/// SPEC 4 and 11: every app ends while the server is down; the restarted server finds
/// its app's recorded exit, the sites resend their reports, and the job completes.
#[test]
fn apps_that_end_while_the_server_is_down_complete_the_job_after_its_restart() {
    server_killed_and_restarted(true);
}

/// Kills the server while the job runs and restarts it on the same data folder; with
/// `ends_while_away` every app is released and has ended before the restart.
fn server_killed_and_restarted(ends_while_away: bool) {
    let mut fed = Federation::start(
        "site_reconnect_grace = \"20s\"\nclient_outcome_wait = \"20s\"\nabort_grace = \"2s\"\n\
         resume_runs = true\n",
    );
    let job = fed.submit_held_job();
    fed.wait_running(&job);
    let all_apps = |fed: &Federation| -> Vec<u32> {
        SITES
            .iter()
            .flat_map(|s| apps_under(&fed.work(s)))
            .chain(apps_under(&fed.data()))
            .collect()
    };
    let apps = all_apps(&fed);
    assert_eq!(
        apps.len(),
        SITES.len() + 1,
        "one app per participant: {apps:?}"
    );

    sigkill(fed.server.as_mut().expect("the server runs"));
    fed.server = None;
    assert!(
        apps.iter().all(|p| alive(*p)),
        "every app outlives the server: {apps:?}"
    );
    if ends_while_away {
        fed.release();
        wait_until("every app ended without the server", || {
            processes_under(fed.root()).is_empty().then_some(())
        });
    }
    let addr = fed.addr.clone();
    fed.start_server(&addr);
    assert_eq!(
        fed.addr, addr,
        "the restarted server listens where the sites dial"
    );
    fed.wait_connected(&SITES);
    if !ends_while_away {
        let view = fed.show(&job).expect("the restarted server answers");
        assert_eq!(view["status"], "RUNNING", "{view:#}\n{}", fed.logs());
        assert_eq!(
            all_apps(&fed),
            apps,
            "the restart stopped no app, started none"
        );
        fed.release();
    }
    let view = fed.wait_settled(&job);
    assert_eq!(
        view["status"],
        "FINISHED:COMPLETED",
        "{view:#}\n{}",
        fed.logs()
    );
    assert_eq!(view["archive"]["state"], "archived", "{view:#}");
    let events = fed.events(&job);
    assert_eq!(
        of_type(&events, "run_reattached").len(),
        usize::from(!ends_while_away),
        "the restarted server re-attached to its app if it still ran: {events:#?}"
    );
    assert!(
        of_type(&events, "server_app_lost").is_empty(),
        "{events:#?}"
    );
    let exited = of_type(&events, "server_app_exited");
    assert_eq!(exited.len(), 1, "{events:#?}");
    assert_eq!(
        exited[0]["kind"]["outcome"],
        serde_json::json!({"kind": "code", "value": 0})
    );
    assert_eq!(normal_exits(&events), SITES, "{events:#?}");
    fed.stop_cleanly();
    let audit = fedrun()
        .args(["audit", "verify", "--data-dir"])
        .arg(fed.data())
        .output()
        .expect("audit runs");
    assert!(audit.status.success(), "{}", text(&audit));
    fed.assert_no_app_left();
}

/// SPEC 4 and 8: an abort whose stop cannot be over yet (site-2's agent is dead, so its
/// app cannot be stopped and its grace has not run out) survives a server killed with
/// SIGKILL: the restarted server keeps the run stopping, site-2's restarted agent is asked
/// to stop its app, and the job ends `FINISHED:ABORTED` with no app left. The restarted
/// server sends that stop only once it has made its restart decisions, when
/// `reattach_grace` is over (SPEC 4), so the test keeps that grace short.
#[test]
fn an_abort_still_stopping_survives_a_server_restart() {
    let mut fed = Federation::start(
        "site_reconnect_grace = \"20s\"\nclient_outcome_wait = \"20s\"\nabort_grace = \"2s\"\n\
         resume_runs = true\nreattach_grace = \"5s\"\n",
    );
    let job = fed.submit_held_job();
    fed.wait_running(&job);
    let orphan = apps_under(&fed.work("site-2"));
    assert_eq!(orphan.len(), 1, "site-2 runs one app: {orphan:?}");
    fed.kill_agent("site-2");
    fed.wait_disconnected("site-2");

    let aborted = fed.admin(&["abort", &job]);
    assert!(aborted.status.success(), "{}", text(&aborted));
    for dir in [fed.work("site-1"), fed.work("site-3"), fed.data()] {
        wait_until(&format!("the apps under {} stopped", dir.display()), || {
            processes_under(&dir).is_empty().then_some(())
        });
    }
    let view = fed.show(&job).expect("the server answers");
    assert_eq!(view["status"], "FINISHED:ABORTED", "{view:#}");
    assert_eq!(
        (&view["run"], &view["archive"]["state"]),
        (
            &serde_json::json!("stopping"),
            &serde_json::json!("pending")
        ),
        "the stop is not over, and nothing is archived, while site-2 may still run its \
         app: {view:#}"
    );
    assert!(orphan.iter().all(|p| alive(*p)), "site-2's app runs on");

    sigkill(fed.server.as_mut().expect("the server runs"));
    fed.server = None;
    let addr = fed.addr.clone();
    fed.start_server(&addr);
    fed.wait_connected(&["site-1", "site-3"]);
    let view = fed.show(&job).expect("the restarted server answers");
    assert_eq!(
        (&view["run"], &view["archive"]["state"]),
        (
            &serde_json::json!("stopping"),
            &serde_json::json!("pending")
        ),
        "after the restart the run is still stopping: {view:#}\n{}",
        fed.logs()
    );

    fed.start_agent("site-2");
    fed.wait_connected(&["site-2"]);
    wait_until("site-2's app stopped once its agent is back", || {
        orphan.iter().all(|p| !alive(*p)).then_some(())
    });
    let view = fed.wait_settled(&job);
    assert_eq!(
        view["status"],
        "FINISHED:ABORTED",
        "{view:#}\n{}",
        fed.logs()
    );
    assert_eq!(view["archive"]["state"], "archived", "{view:#}");
    assert_eq!(view["run"], "stopped", "{view:#}");
    let events = fed.events(&job);
    assert!(
        of_type(&events, "site_report_lapsed").is_empty(),
        "site-2 came back within its grace: {events:#?}"
    );
    assert!(
        of_type(&events, "server_app_lost").is_empty(),
        "{events:#?}"
    );
    fed.stop_cleanly();
    let audit = fedrun()
        .args(["audit", "verify", "--data-dir"])
        .arg(fed.data())
        .output()
        .expect("audit runs");
    assert!(audit.status.success(), "{}", text(&audit));
    fed.assert_no_app_left();
}
