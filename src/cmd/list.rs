//! `fedrun list`: the jobs of a data folder, oldest first, read while the server is stopped.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fedrun::engine::clock::{Clock, WallClock};
use fedrun::history::events::EventHistory;
use fedrun::lifecycle::view::{list_jobs, JobSummary, ListFilter, StatusFilter};
use fedrun::lifecycle::State;

use super::term::clean;

/// Arguments of `fedrun list`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A stopped server's data folder (holding `history/`, `blobs/` and `anchor`),
    /// instead of the live server through `--kit`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub target: super::remote::Target,
    /// Only jobs with this status (`SUBMITTED`, `RUNNING`, `FINISHED:COMPLETED`, ...), or
    /// `FINISHED` for any terminal one; case does not matter.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only jobs whose name contains this text.
    #[arg(long, value_name = "SUBSTRING")]
    pub name: Option<String>,
    /// Deleted jobs too.
    #[arg(long)]
    pub all: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Opens the history in `data_dir` for reading: the one way the read-only commands
/// (`list`, `show`, `history`) open a data folder. It opens a private copy, so the
/// folder is never changed (not even created), and it works on a read-only folder.
pub fn open_history(data_dir: &Path) -> anyhow::Result<EventHistory> {
    EventHistory::open_read_only(data_dir)
        .with_context(|| format!("cannot read the history in {}", data_dir.display()))
}

/// Rebuilds the projection from the history in `data_dir` without writing anything: the
/// snapshot plus the tail, every record checked. A running server's lock is refused with
/// the history's own message.
pub fn load_state(data_dir: &Path) -> anyhow::Result<State> {
    let recovered = open_history(data_dir)?
        .recover(State::new())
        .context("the history is damaged; run `fedrun audit verify`")?;
    Ok(recovered.state)
}

/// Writes `text` to stdout; a closed pipe (`fedrun list | head`) is the reader's choice.
pub fn print(text: &str) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to standard output")
        }
        _ => Ok(0),
    }
}

/// The aligned table: one header line, one line per job. Every cell is cleaned first, so
/// a name cannot break the table or reach the terminal raw.
pub fn table(rows: &[JobSummary]) -> String {
    let header = [
        "JOB_ID",
        "NAME",
        "STATUS",
        "SUBMITTER",
        "SUBMIT_TIME",
        "DURATION",
    ];
    let mut lines: Vec<[String; 6]> = vec![header.map(str::to_string)];
    for row in rows {
        let mut status = row.status.to_string();
        if row.deleted {
            status.push_str(" (deleted)");
        }
        let cells = [
            row.job_id.clone(),
            row.name.clone(),
            status,
            format!(
                "{} ({}, {})",
                row.submitter_name, row.submitter_org, row.submitter_role
            ),
            row.submit_time_iso.clone(),
            row.duration.clone().unwrap_or_else(|| "-".to_string()),
        ];
        lines.push(cells.map(|cell| clean(&cell).into_owned()));
    }
    let mut widths = [0usize; 6];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, (cell, width)) in line.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.push_str(&" ".repeat(width - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The `--status` filter in any case (`running`, `Finished:Completed`); an unknown word
/// is named as it was given.
fn parse_status(given: &str) -> anyhow::Result<StatusFilter> {
    match given.trim().to_ascii_uppercase().parse::<StatusFilter>() {
        Ok(filter) => Ok(filter),
        Err(mut err) => {
            err.given = given.to_string();
            Err(err.into())
        }
    }
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    // A wrong filter is the user's mistake; say so before touching the folder.
    let status = args.status.as_deref().map(parse_status).transpose()?;
    let filter = ListFilter {
        status,
        name_contains: args.name,
        include_deleted: args.all,
    };
    let data_dir = match args.target.source(args.data_dir.as_deref()) {
        Ok(super::remote::Source::Folder(dir)) => dir,
        Ok(super::remote::Source::Live(client)) => {
            let (status, name) = (args.status.as_deref(), filter.name_contains.as_deref());
            return super::remote::list(client, status, name, args.all, args.json);
        }
        Err(code) => return Ok(code),
    };
    let state = load_state(&data_dir)?;
    let rows = list_jobs(&state, &filter, WallClock.now());
    let text = if args.json {
        let mut text = String::new();
        for row in &rows {
            text.push_str(&serde_json::to_string(row).context("encoding a job as JSON")?);
            text.push('\n');
        }
        text
    } else {
        table(&rows)
    };
    print(&text)
}
