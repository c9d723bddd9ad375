//! `fedrun sim`.

use std::path::PathBuf;

use anyhow::Context;
use fedrun::sim::driver::SimResult;
use fedrun::trust::files::read_bounded;

use std::io::Write as _;

use super::term::clean;

/// The largest scenario file read (64 MiB: a day of 100,000 jobs is about 20 MiB).
const SCENARIO_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Arguments of `fedrun sim`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file (TOML; see SPEC section 10).
    pub scenario: PathBuf,
    /// The seed: it drives job ids and any randomness, so a seed reproduces a run exactly.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object: `{"ended", "jobs", "events"}`.
    #[arg(long)]
    pub json: bool,
    /// Count the known defects of the core (listed in `sim::invariants::KnownBug`) instead
    /// of failing on them, as the fault campaign does, so its failing seeds replay exactly.
    #[arg(long)]
    pub tolerate_known_defects: bool,
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let path = args.scenario.display();
    let bytes = read_bounded(&args.scenario, SCENARIO_FILE_MAX_BYTES, "scenario file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("scenario {path} is not UTF-8 text"))?;
    let checked =
        fedrun::sim::scenario::parse(&text).with_context(|| format!("scenario {path}"))?;
    drop(text);
    // After the parse: its many short-lived allocations, given back within 10 ms, would
    // be faulted in and zeroed again page by page (about 50 ms of a 10,000-job day's
    // parse, by perf's samples).
    fedrun::return_freed_pages_soon();
    let options = fedrun::sim::driver::RunOptions {
        tolerate: if args.tolerate_known_defects {
            fedrun::sim::invariants::KnownBug::ALL.to_vec()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let result = match fedrun::sim::driver::run_with(&checked, args.seed, &options) {
        Ok(result) => result,
        Err(err) => {
            // A broken invariant comes with the history that led to it, so the replayed
            // seed shows how it happened.
            if let fedrun::sim::driver::SimError::Invariant { trail, .. } = &err {
                for line in trail {
                    eprintln!("{}", clean(line));
                }
            }
            return Err(anyhow::Error::new(err).context(format!("scenario {path}")));
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        fedrun::sim::output::write_json(&result, &mut out)
            .and_then(|()| writeln!(out))
            .context("write the result")?;
    } else {
        // Every line is cleaned as it is printed: a line break or an escape sequence in
        // a job name, a reason or a site name from the scenario cannot forge a row or
        // reach the terminal. The job names are cleaned first too, so the table's column
        // is as wide as they are shown.
        fedrun::sim::output::write_text(&cleaned(result), &mut |line| {
            writeln!(out, "{}", clean(line))
        })
        .context("write the result")?;
    }
    out.flush().context("write the result")?;
    Ok(0)
}

/// The result with its job names cleaned.
fn cleaned(mut result: SimResult) -> SimResult {
    for job in &mut result.jobs {
        job.name = clean(&job.name).into_owned();
    }
    result
}
