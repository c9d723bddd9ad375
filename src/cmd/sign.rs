//! `fedrun sign`.

use std::path::PathBuf;

use fedrun::trust::{sign_job_folder, Signer};

use super::term::clean;

/// Arguments of `fedrun sign`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job folder to sign (the one holding meta.json); signature files are written
    /// into it and every directory below it.
    pub job_folder: PathBuf,
    /// The signer's certificate (PEM, leaf first), e.g. a startup kit's client.crt.
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// The signer's RSA private key (PEM), e.g. a startup kit's client.key.
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
}

/// Runs the command; the returned code is the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let signer = Signer::load(&args.cert, &args.key)?;
    let report = sign_job_folder(&args.job_folder, &signer)?;
    let text = format!(
        "signed {} as {}: {} files ({} bytes) in {} directories",
        args.job_folder.display(),
        signer.identity(),
        report.files,
        report.bytes,
        report.directories
    );
    println!("{}", clean(&text));
    Ok(0)
}
