//! `fedrun provision`.

use std::path::PathBuf;
use std::time::SystemTime;

use fedrun::trust::provision::{provision, Project, ProvisionOptions};

use super::term::clean;

/// Arguments of `fedrun provision`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The project file (TOML: name, [server] host and org, [[site]] name and org,
    /// [[admin]] name, org and role).
    pub project_file: PathBuf,
    /// Output folder: `ca/` holds the root CA, and one startup kit folder per participant.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Replace an existing root CA and existing startup kits.
    #[arg(long)]
    pub force: bool,
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let project = Project::load(&args.project_file)?;
    let options = ProvisionOptions {
        force: args.force,
        now: SystemTime::now(),
    };
    let report = provision(&project, &args.output, options)?;
    // The project's and participants' names come from the project file: cleaned.
    let shown = |path: &std::path::Path| clean(&path.display().to_string()).into_owned();
    let ca = shown(&args.output.join("ca"));
    if report.new_ca {
        println!("created root CA {} in {ca}", clean(&project.name));
    } else {
        println!("kept existing root CA in {ca}");
    }
    for kit in &report.kits_written {
        println!("wrote {}", shown(kit));
    }
    for kit in &report.kits_kept {
        println!("kept  {} (use --force to replace it)", shown(kit));
    }
    Ok(0)
}
