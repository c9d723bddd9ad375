//! `fedrun demo`.

/// Arguments of `fedrun demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the command; the returned code is the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("fedrun demo: this command is not built in this version")
}
