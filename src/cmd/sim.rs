//! `fedrun sim`.

use std::path::PathBuf;

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
    let checked = fedrun::sim::scenario::load(&args.scenario)?;
    let options = fedrun::sim::driver::RunOptions {
        tolerate: if args.tolerate_known_defects {
            fedrun::sim::invariants::KnownBug::ALL.to_vec()
        } else {
            Vec::new()
        },
    };
    let result = match fedrun::sim::driver::run_with(&checked, args.seed, &options) {
        Ok(result) => result,
        Err(err) => {
            // A broken invariant comes with the history that led to it, so the replayed
            // seed shows how it happened.
            if let fedrun::sim::driver::SimError::Invariant { trail, .. } = &err {
                for line in trail {
                    eprintln!("{line}");
                }
            }
            return Err(
                anyhow::Error::new(err).context(format!("scenario {}", args.scenario.display()))
            );
        }
    };
    if args.json {
        println!("{}", fedrun::sim::output::to_json(&result)?);
    } else {
        print!("{}", fedrun::sim::output::to_text(&result));
    }
    Ok(0)
}
