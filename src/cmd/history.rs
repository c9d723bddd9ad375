//! `fedrun history`: print the events of a data folder, oldest first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use fedrun::history::events::{event_json_line, event_text};
use fedrun::lifecycle::view::find_job;
use fedrun::lifecycle::State;

use super::list::open_history;
use super::term::clean;

/// Arguments of `fedrun history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A stopped server's data folder (holding `history/`, `blobs/` and `anchor`),
    /// instead of the live server through `--kit`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub target: super::remote::Target,
    /// Only the events of this job: its id, or a prefix of it that names one job only.
    #[arg(long, value_name = "JOB_ID")]
    pub job: Option<String>,
    /// Keep following the live server's new events (with `--kit` only).
    #[arg(long, conflicts_with = "data_dir")]
    pub follow: bool,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let data_dir = match args.target.source(args.data_dir.as_deref()) {
        Ok(super::remote::Source::Folder(dir)) => dir,
        Ok(super::remote::Source::Live(client)) => {
            return super::remote::history(client, args.job.as_deref(), args.follow, args.json);
        }
        Err(code) => return Ok(code),
    };
    let history = open_history(&data_dir)?;
    // The job is found as `show` finds it: an unknown id or an ambiguous prefix is an
    // error, not an empty listing.
    let job = match &args.job {
        Some(given) => {
            let state = history
                .recover(State::new())
                .context("the history is damaged; run `fedrun audit verify`")?
                .state;
            Some(find_job(&state, given)?.id)
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for record in history.records_from(1) {
        let record = record.context("the history is damaged; run `fedrun audit verify`")?;
        let event = record.event;
        if job.is_some() && event.kind.job_id() != job {
            continue;
        }
        let line = if args.json {
            event_json_line(&event).context("encoding an event as JSON")?
        } else {
            clean(&event_text(&event)).into_owned()
        };
        if let Err(err) = writeln!(out, "{line}") {
            // A closed pipe (`fedrun history | head`) is the reader's choice, not an error.
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(err).context("writing to standard output");
        }
    }
    match out.flush() {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to standard output")
        }
        _ => Ok(0),
    }
}
