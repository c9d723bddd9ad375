//! `fedrun show`: one job's full projection, read from a data folder while the server is
//! stopped.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use fedrun::lifecycle::view::{find_job, job_view, JobView};

use fedrun::engine::clock::{Clock, WallClock};

use super::list::{load_state, print};
use super::term::clean;

/// Arguments of `fedrun show`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A stopped server's data folder (holding `history/`, `blobs/` and `anchor`),
    /// instead of the live server through `--kit`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub target: super::remote::Target,
    /// The job's id, or a prefix of it that names one job only.
    #[arg(value_name = "JOB_ID")]
    pub job_id: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A list as text: `-` when empty, else the items joined.
fn items(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_string()
    } else {
        values.join(", ")
    }
}

/// The readable form: `key: value` lines in the vocabulary of SPEC section 5, the
/// multi-line values indented below their key. Every value is cleaned, so what a
/// meta.json or a site said cannot reach the terminal raw or forge a line.
pub fn text(view: &JobView) -> anyhow::Result<String> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let mut out = String::new();
    let meta = &view.meta;
    let deploy_map = meta
        .deploy_map
        .iter()
        .map(|(app, targets)| format!("{app} -> {}", targets.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    let resource_spec = if meta.resource_spec.is_empty() {
        "-".to_string()
    } else {
        serde_json::to_string(&meta.resource_spec).context("encoding resource_spec")?
    };
    let pairs: [(&str, String); 19] = [
        ("job_id", view.job_id.clone()),
        ("name", view.name.clone()),
        ("status", view.status.to_string()),
        ("finish_reason", dash(&view.finish_reason)),
        ("submitter_name", view.submitter_name.clone()),
        ("submitter_org", view.submitter_org.clone()),
        ("submitter_role", view.submitter_role.clone()),
        ("submit_time", view.submit_time.to_string()),
        ("submit_time_iso", view.submit_time_iso.clone()),
        ("start_time", dash(&view.start_time)),
        ("duration", dash(&view.duration)),
        ("schedule_count", view.schedule_count.to_string()),
        ("last_schedule_time", dash(&view.last_schedule_time)),
        ("job_clients", items(&view.job_clients)),
        ("deploy_map", deploy_map),
        ("min_clients", meta.min_clients.to_string()),
        ("mandatory_clients", items(&meta.mandatory_clients)),
        ("resource_spec", resource_spec),
        ("run", view.run.to_string()),
    ];
    // Values line up after the longest key and its colon.
    let width = "last_schedule_time".len() + 1;
    let line = |out: &mut String, key: &str, value: &str| {
        writeln!(out, "{:<width$} {}", format!("{key}:"), clean(value))
    };
    for (key, value) in &pairs {
        line(&mut out, key, value)?;
    }
    line(&mut out, "archive", &view.archive.to_string())?;
    line(&mut out, "deleted", if view.deleted { "yes" } else { "no" })?;
    for (key, values) in [
        ("schedule_history", &view.schedule_history),
        ("job_deploy_detail", &view.job_deploy_detail),
    ] {
        if values.is_empty() {
            line(&mut out, key, "-")?;
        } else {
            writeln!(out, "{key}:")?;
            for value in values {
                writeln!(out, "  {}", clean(value))?;
            }
        }
    }
    Ok(out)
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let data_dir = match args.target.source(args.data_dir.as_deref()) {
        Ok(super::remote::Source::Folder(dir)) => dir,
        Ok(super::remote::Source::Live(client)) => {
            return super::remote::show(client, &args.job_id, args.json)
        }
        Err(code) => return Ok(code),
    };
    let state = load_state(&data_dir)?;
    let job = find_job(&state, &args.job_id)?;
    let view = job_view(job, WallClock.now());
    let out = if args.json {
        let mut line = serde_json::to_string(&view).context("encoding the job as JSON")?;
        line.push('\n');
        line
    } else {
        text(&view)?
    };
    print(&out)
}
