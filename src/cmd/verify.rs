//! `fedrun verify`.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use fedrun::trust::{verify_job_folder, RootCa};

/// Arguments of `fedrun verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The signed job folder (the one holding meta.json and `.__nvfl_sig.json`).
    pub job_folder: PathBuf,
    /// The project root CA (a startup kit's rootCA.pem).
    #[arg(long, value_name = "PEM")]
    pub root_ca: PathBuf,
    /// Verify as of this time (RFC 3339, e.g. 2027-01-01T00:00:00Z) instead of now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<SystemTime>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e}: expected an RFC 3339 time such as 2027-01-01T00:00:00Z"))
}

/// Runs the command; the returned code is the process exit code (0 verified, 1 not).
pub fn run(args: Args) -> anyhow::Result<i32> {
    let root = RootCa::load(&args.root_ca)
        .with_context(|| format!("cannot use {} as root CA", args.root_ca.display()))?;
    let at = args.at.unwrap_or_else(SystemTime::now);
    let result = verify_job_folder(&args.job_folder, &root, at);
    let at_text = fedrun::trust::certs::format_time(at);
    match (&result, args.json) {
        (Ok(signer), true) => println!(
            "{}",
            serde_json::json!({"verified": true, "at": at_text, "signer": signer})
        ),
        (Ok(signer), false) => println!("verified: signed by {signer}"),
        (Err(reason), true) => println!(
            "{}",
            serde_json::json!({"verified": false, "at": at_text, "reason": reason.to_string()})
        ),
        (Err(reason), false) => println!("NOT verified: {reason}"),
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}
