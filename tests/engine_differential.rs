//! Differential test: one table of jobs runs twice, in the simulator (virtual clock,
//! simulated sites) and on a real server with local sites and real processes. Both must end
//! with the same statuses, `job_clients` and `job_deploy_detail`: the simulator runs the
//! same engine, so where it differs from reality it would be lying.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::job::JobId;
use fedrun::lifecycle::{Answer, Identity, Role, RunPhase, State};
use fedrun::site::local::{LocalSite, LocalSiteConfig};

const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];

struct Case {
    name: &'static str,
    /// The deploy map's one app's targets.
    targets: &'static [&'static str],
    min_clients: u32,
    server_code: i32,
    /// Exit codes of site apps that do not exit 0.
    site_codes: &'static [(&'static str, i32)],
}

const CASES: &[Case] = &[
    Case {
        name: "all-ok",
        targets: &["server", "site-1", "site-2"],
        min_clients: 2,
        server_code: 0,
        site_codes: &[],
    },
    Case {
        name: "site-exception",
        targets: &["@ALL"],
        min_clients: 2,
        server_code: 0,
        site_codes: &[("site-2", 101)],
    },
    Case {
        name: "site-infrastructure",
        targets: &["server", "site-1", "site-3"],
        min_clients: 1,
        server_code: 0,
        site_codes: &[("site-3", 104)],
    },
    Case {
        name: "server-fails",
        targets: &["server", "site-2"],
        min_clients: 1,
        server_code: 1,
        site_codes: &[],
    },
    Case {
        name: "listed-site-missing",
        targets: &["server", "site-1", "site-9"],
        min_clients: 1,
        server_code: 0,
        site_codes: &[],
    },
];

fn code_at(case: &Case, site: &str) -> i32 {
    case.site_codes
        .iter()
        .find(|(s, _)| *s == site)
        .map_or(0, |(_, c)| *c)
}

fn targets_json(case: &Case) -> String {
    let quoted: Vec<String> = case.targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn scenario() -> String {
    let mut s = String::new();
    for site in SITES {
        s.push_str(&format!(
            "[[site]]\nname = \"{site}\"\nrun_for = \"200ms\"\n"
        ));
        for case in CASES {
            let code = code_at(case, site);
            if code != 0 {
                s.push_str(&format!("[site.jobs.{}]\nexit_code = {code}\n", case.name));
            }
        }
        s.push('\n');
    }
    for case in CASES {
        s.push_str(&format!(
            "[[job]]\nname = \"{}\"\nrun_for = \"500ms\"\nserver_exit_code = {}\n\
             meta = {{ deploy_map = {{ app = {} }}, min_clients = {} }}\n\n",
            case.name,
            case.server_code,
            targets_json(case),
            case.min_clients
        ));
    }
    s
}

fn write_job(dir: &Path, case: &Case) -> std::path::PathBuf {
    let root = dir.join(case.name);
    std::fs::create_dir_all(root.join("app")).expect("job folder");
    std::fs::write(
        root.join("meta.json"),
        format!(
            r#"{{"name": "{}", "deploy_map": {{"app": {}}}, "min_clients": {}}}"#,
            case.name,
            targets_json(case),
            case.min_clients
        ),
    )
    .expect("meta.json");
    let mut script = String::from("trap 'exit 0' TERM\ncase \"$FEDRUN_SITE\" in\n");
    script.push_str(&format!(
        "  server) sleep 0.5 & wait $!; exit {};;\n",
        case.server_code
    ));
    for site in SITES {
        script.push_str(&format!(
            "  {site}) sleep 0.2 & wait $!; exit {};;\n",
            code_at(case, site)
        ));
    }
    script.push_str("esac\n");
    std::fs::write(root.join("app/run.sh"), script).expect("run.sh");
    std::fs::write(
        root.join("app/run.toml"),
        "command = \"sh\"\nargs = [\"run.sh\"]\n",
    )
    .expect("run.toml");
    root
}

type Outcome = (String, Vec<String>, Vec<String>);

fn outcome_of(state: &State, id: &JobId) -> Outcome {
    let job = &state.jobs[id];
    (
        job.status.as_str().to_string(),
        job.run.job_clients.to_vec(),
        job.run.deploy_detail(),
    )
}

fn simulated() -> BTreeMap<String, Outcome> {
    let checked = fedrun::sim::scenario::parse(&scenario()).expect("scenario is valid");
    let result = fedrun::sim::driver::run(&checked, 0).expect("simulation runs");
    assert_eq!(result.ended.as_str(), "all_terminal");
    result
        .jobs
        .iter()
        .map(|j| {
            let id = j.job_id.expect("submitted");
            (j.name.clone(), outcome_of(&result.state, &id))
        })
        .collect()
}

async fn real() -> BTreeMap<String, Outcome> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.settings.abort_grace = Duration::from_secs(2);
    let server = Server::start(config, Arc::new(WallClock)).expect("server starts");
    let mut handles = Vec::new();
    for name in SITES {
        let mut site =
            LocalSiteConfig::new(name, dir.path().join("sites").join(name), BTreeMap::new());
        site.abort_grace = Duration::from_secs(2);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let handle = LocalSite::spawn(site, tx);
        server.attach_site(name, handle.requests.clone(), rx);
        handles.push(handle);
    }
    let mut watch = server.watch();
    tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_for(|s| s.connected_sites().count() == SITES.len()),
    )
    .await
    .expect("sites connect in time")
    .expect("server runs");
    let identity = Identity {
        name: "alice".into(),
        org: "org".into(),
        role: Role::ProjectAdmin,
    };
    let mut ids = Vec::new();
    for case in CASES {
        let path = write_job(dir.path(), case);
        match server
            .submit_path(&path, identity.clone(), None)
            .await
            .expect("package accepted")
        {
            Ok(Ok(Answer::Submitted { job_id })) => ids.push((case.name.to_string(), job_id)),
            other => panic!("submit of {} failed: {other:?}", case.name),
        }
    }
    let all_settled = |s: &State| {
        ids.iter().all(|(_, id)| {
            s.jobs.get(id).is_some_and(|j| {
                j.status.is_terminal()
                    && matches!(j.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
                    && j.archive.is_settled()
            })
        })
    };
    let state = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let state = watch.borrow_and_update().clone();
            if all_settled(&state) {
                return state;
            }
            watch.changed().await.expect("server runs");
        }
    })
    .await
    .expect("every job settles in time");
    server.shutdown().await;
    for handle in handles {
        handle.shutdown().await;
    }
    ids.iter()
        .map(|(name, id)| (name.clone(), outcome_of(&state, id)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_and_real_sites_agree() {
    let sim = simulated();
    let real = real().await;
    assert_eq!(sim.len(), CASES.len());
    for case in CASES {
        assert_eq!(
            sim[case.name], real[case.name],
            "{}: simulator (left) and real sites (right) disagree",
            case.name
        );
    }
    // The table is not trivial: it covers several endings.
    let statuses: std::collections::BTreeSet<&str> =
        sim.values().map(|(s, _, _)| s.as_str()).collect();
    assert!(statuses.len() >= 3, "{statuses:?}");
}
