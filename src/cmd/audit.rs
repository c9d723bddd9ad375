//! `fedrun audit ...`.

/// Subcommands of `fedrun audit`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check the whole chain, the anchor, and that replay equals the snapshot.
    Verify(VerifyArgs),
}

/// Arguments of `fedrun audit verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

/// Runs the command; the returned code is the process exit code.
pub fn run(_command: Command) -> anyhow::Result<i32> {
    anyhow::bail!("fedrun audit: this command is not built in this version")
}
