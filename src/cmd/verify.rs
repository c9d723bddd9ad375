//! `fedrun verify`.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use fedrun::job::limits::Limits;
use fedrun::trust::files::read_bounded;
use fedrun::trust::{verify_job_folder, verify_job_zip, RootCa};

use super::term::clean;

/// Arguments of `fedrun verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The signed job folder (the one holding meta.json and `.__nvfl_sig.json`), or a zip
    /// of it.
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
    let result = verify_folder_or_zip(&args.job_folder, &root, at)?;
    let at_text = fedrun::trust::certs::format_time(at);
    match (&result, args.json) {
        (Ok(signer), true) => println!(
            "{}",
            serde_json::json!({"verified": true, "at": at_text, "signer": signer})
        ),
        (Ok(signer), false) => println!("verified: signed by {}", clean(&signer.to_string())),
        (Err(reason), true) => println!(
            "{}",
            serde_json::json!({"verified": false, "at": at_text, "reason": reason.to_string()})
        ),
        (Err(reason), false) => println!("NOT verified: {}", clean(reason)),
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

/// Verifies a job folder, or a zip file of one. The outer error is for an input that
/// cannot be read at all; the inner result is the verdict.
fn verify_folder_or_zip(
    path: &std::path::Path,
    root: &RootCa,
    at: SystemTime,
) -> anyhow::Result<Result<fedrun::trust::SignerIdentity, String>> {
    let is_file = std::fs::metadata(path).is_ok_and(|meta| meta.is_file());
    if !is_file {
        return Ok(verify_job_folder(path, root, at).map_err(|e| e.to_string()));
    }
    // The same size limit as a submitted package: a zip bigger than that would not be
    // accepted as a job anyway.
    let limits = Limits::default();
    let zip = read_bounded(path, limits.package_bytes_max, "job zip")?;
    Ok(verify_job_zip(&zip, root, at, &limits, None)
        .map_err(|e| format!("{}: {e}", path.display())))
}
