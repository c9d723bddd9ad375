//! The dashboard in a real browser (SPEC section 11, "Observation"): a federation of two
//! site agents runs jobs, `fedrun dashboard`'s page is loaded in headless Chromium, and
//! the DOM Chromium rendered is checked against the server: the job rows and their
//! statuses, one job's drawn timeline beside its events and the chain check, the sites
//! with their running job, a filter, and a job named with markup that shows as text and
//! runs nothing. A screenshot is saved (set `FEDRUN_DASHBOARD_SCREENSHOT=PATH` to keep a
//! copy, as `docs/dashboard.png` is made).

mod dashboard_support;

use std::time::Duration;

use bytes::Bytes;
use dashboard_support::{
    dump_dom, elements, job_named, screenshot, submit, Element, Federation, BOUND,
};
use fedrun::lifecycle::RunStatus;
use hyper::Method;

const SITES: [&str; 2] = ["site-1", "site-2"];

/// Markup that would change the page's title if the page ever treated a name as HTML.
const HOSTILE_NAME: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

/// Waits (bounded) until the server's state satisfies `pred`.
async fn wait_until(
    fed: &Federation,
    what: &str,
    pred: impl Fn(&fedrun::lifecycle::State) -> bool,
) {
    let mut watch = fed.server.watch();
    let found = tokio::time::timeout(BOUND, async {
        loop {
            if pred(&watch.borrow_and_update()) {
                return;
            }
            watch.changed().await.expect("the server runs");
        }
    })
    .await;
    assert!(found.is_ok(), "timed out waiting for {what}");
}

fn settled(state: &fedrun::lifecycle::State, id: &fedrun::job::JobId) -> bool {
    state.jobs.get(id).is_some_and(|job| {
        job.status.is_terminal()
            && matches!(
                job.run.phase,
                fedrun::lifecycle::RunPhase::NotStarted | fedrun::lifecycle::RunPhase::Stopped
            )
            && job.archive.is_settled()
    })
}

fn row_of<'a>(rows: &'a [Element], id: &str) -> &'a Element {
    rows.iter()
        .find(|row| row.attr("data-job-id") == Some(id))
        .unwrap_or_else(|| panic!("no row for job {id} in {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_jobs_timeline_and_sites_in_chromium() {
    let fed = Federation::start(&SITES).await;
    let agents: Vec<_> = SITES.iter().map(|site| fed.agent(site)).collect();
    wait_until(&fed, "both sites connected", |s| {
        s.connected_sites().count() == SITES.len()
    })
    .await;

    // One job that completes, one whose name is markup, one that keeps running.
    let done = submit(&fed.server, &job_named(fed.dir.path(), "done", "hello", 1)).await;
    let hostile = submit(
        &fed.server,
        &job_named(fed.dir.path(), "hostile", HOSTILE_NAME, 1),
    )
    .await;
    wait_until(&fed, "the two short jobs settled", |s| {
        settled(s, &done) && settled(s, &hostile)
    })
    .await;
    let long = submit(
        &fed.server,
        &job_named(fed.dir.path(), "long", "long run", 600),
    )
    .await;
    wait_until(&fed, "the long job running", |s| {
        s.jobs[&long].status == RunStatus::Running
    })
    .await;
    let state = fed.server.state();
    assert_eq!(state.jobs[&done].status, RunStatus::Completed);

    let dash = fed.dashboard_addr();
    let profile = fed.dir.path().join("chromium-profile");
    let url = format!("http://{dash}/#job={done}");
    let dom = dump_dom(&profile, &url, 5000).await;

    // The page ran: its first poll rendered, and nothing in a name ran as script.
    let body = &elements(&dom, "body")[0];
    let renders: u32 = body
        .attr("data-renders")
        .unwrap_or_else(|| panic!("the page never rendered data: {dom}"))
        .parse()
        .expect("a count");
    assert!(renders >= 1);
    let titles = elements(&dom, "title");
    assert_eq!(titles[0].text(), "fedrun dashboard", "a name's script ran");
    let scripts = elements(&dom, "script");
    assert_eq!(scripts.len(), 1, "only the page's own script: {scripts:#?}");
    assert!(elements(&dom, "img").is_empty(), "a name became an element");

    // Job rows: one per job, the status the server holds, the hostile name as text.
    let rows: Vec<Element> = elements(&dom, "tr")
        .into_iter()
        .filter(|row| row.attr("class").is_some_and(|c| c.contains("job-row")))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let state = fed.server.state();
    for id in [done, hostile, long] {
        let row = row_of(&rows, &id.to_string());
        let status = state.jobs[&id].status.as_str();
        assert_eq!(row.attr("data-status"), Some(status));
        let badge = row
            .find("span")
            .into_iter()
            .find(|span| span.attr("class").is_some_and(|c| c.starts_with("status")))
            .expect("a status badge");
        assert_eq!(badge.text(), status);
        let name = row
            .find("td")
            .into_iter()
            .find(|td| td.attr("class") == Some("name"))
            .expect("a name cell");
        assert_eq!(name.text(), state.jobs[&id].meta.name);
    }
    let hostile_row = row_of(&rows, &hostile.to_string());
    assert!(
        hostile_row.inner.contains("&lt;script&gt;"),
        "the name is escaped text: {}",
        hostile_row.inner
    );
    assert!(row_of(&rows, &done.to_string())
        .attr("class")
        .is_some_and(|c| c.contains("selected")));

    // The chosen job: its events are those of the history, with the chain check.
    let history = fed
        .direct()
        .send_full(
            Method::GET,
            &format!("/v1/history?job={done}"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("history");
    let history: Vec<serde_json::Value> = String::from_utf8_lossy(&history)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let event_rows: Vec<Element> = elements(&dom, "tr")
        .into_iter()
        .filter(|row| row.attr("class") == Some("event-row"))
        .collect();
    let shown: Vec<(u64, String)> = event_rows
        .iter()
        .map(|row| {
            (
                row.attr("data-seq")
                    .expect("seq")
                    .parse()
                    .expect("a number"),
                row.attr("data-type").expect("type").to_string(),
            )
        })
        .collect();
    let stored: Vec<(u64, String)> = history
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().expect("seq"),
                e["type"].as_str().expect("type").to_string(),
            )
        })
        .collect();
    assert_eq!(shown, stored, "the event list is the job's history");
    let marks: Vec<String> = event_rows
        .iter()
        .map(|row| row.find("td").last().expect("cells").text())
        .collect();
    assert!(marks.iter().all(|m| m == "✓"), "chain marks {marks:?}");
    let chain = elements(&dom, "p")
        .into_iter()
        .find(|p| p.attr("id") == Some("chain"))
        .expect("the chain check");
    assert_eq!(chain.attr("data-ok"), Some("true"), "{}", chain.text());
    assert!(chain.text().starts_with("chain intact"), "{}", chain.text());

    // Its timeline is drawn: one bar per phase the events show, each site's deploy and
    // start among them.
    let timeline = elements(&dom, "svg")
        .into_iter()
        .find(|svg| svg.attr("id") == Some("timeline"))
        .unwrap_or_else(|| panic!("no timeline in {dom}"));
    let lanes: Vec<String> = timeline
        .find("rect")
        .iter()
        .filter_map(|rect| rect.attr("data-lane").map(str::to_string))
        .collect();
    // Each participant's bar, in the order its answer was recorded.
    let answered = |step: &str| -> Vec<String> {
        history
            .iter()
            .filter(|e| e["type"] == step)
            .map(|e| {
                e["kind"]["participant"]
                    .as_str()
                    .expect("participant")
                    .to_string()
            })
            .collect()
    };
    let deployed = answered("deploy_finished");
    let started = answered("start_finished");
    for site in SITES {
        assert!(deployed.iter().any(|p| p == site), "{deployed:?}");
        assert!(started.iter().any(|p| p == site), "{started:?}");
    }
    let mut expected = vec!["queued".to_string(), "dispatched".to_string()];
    expected.extend(deployed.iter().map(|p| format!("deploy {p}")));
    expected.extend(started.iter().map(|p| format!("start {p}")));
    expected.extend(["running".to_string(), "outcome barrier".to_string()]);
    if history
        .iter()
        .any(|e| e["type"] == "workspace_archive_started")
    {
        expected.push("archive".to_string());
    }
    assert_eq!(lanes, expected, "timeline lanes");
    for rect in timeline.find("rect") {
        let width: f64 = rect
            .attr("width")
            .expect("width")
            .parse()
            .expect("a number");
        assert!(width >= 2.0, "{rect:?}");
    }

    // The sites, with the long job running on both.
    let site_rows: Vec<Element> = elements(&dom, "tr")
        .into_iter()
        .filter(|row| row.attr("class") == Some("site-row"))
        .collect();
    let names: Vec<&str> = site_rows
        .iter()
        .filter_map(|r| r.attr("data-site"))
        .collect();
    assert_eq!(names, SITES.to_vec());
    for row in &site_rows {
        let running: Vec<String> = row
            .find("a")
            .iter()
            .filter_map(|a| a.attr("title").map(str::to_string))
            .collect();
        assert_eq!(running, vec![long.to_string()], "{row:?}");
    }

    // A filter in the address: only the running job is listed.
    let filtered = dump_dom(&profile, &format!("http://{dash}/#status=RUNNING"), 3000).await;
    let rows: Vec<Element> = elements(&filtered, "tr")
        .into_iter()
        .filter(|row| row.attr("class").is_some_and(|c| c.contains("job-row")))
        .collect();
    let ids: Vec<&str> = rows.iter().filter_map(|r| r.attr("data-job-id")).collect();
    assert_eq!(ids, vec![long.to_string().as_str()]);

    // A screenshot of the view.
    let png = fed.dir.path().join("dashboard.png");
    screenshot(&profile, &url, &png, 1100).await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes.len() > 20_000,
        "a real picture: {} bytes",
        bytes.len()
    );
    if let Some(keep) = std::env::var_os("FEDRUN_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("keep the screenshot");
    }

    // The long job is aborted so that no app outlives the test.
    fed.direct()
        .send(
            Method::POST,
            &format!("/v1/jobs/{long}/abort"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("abort");
    wait_until(&fed, "the long job settled", |s| settled(s, &long)).await;
    tokio::time::timeout(Duration::from_secs(60), fed.stop(agents))
        .await
        .expect("the federation stops");
}
