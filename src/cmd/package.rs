//! `fedrun package`: check a job folder or zip on its own, as the server would at submit,
//! and optionally write its canonical zip.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use fedrun::job::limits::Limits;
use fedrun::job::package::{ingest, Package};

use super::term::clean;

/// Arguments of `fedrun package`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job folder, or a zip of one job folder.
    pub input: PathBuf,
    /// Write the canonical zip to this file. Without it the package is only checked.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Largest package file and canonical zip (bytes, or with KiB, MiB, GiB, KB, MB, GB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub package_size_max: Option<u64>,
    /// Most files and folders in the package.
    #[arg(long, value_name = "COUNT")]
    pub entry_count_max: Option<u64>,
    /// Largest uncompressed file.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub entry_size_max: Option<u64>,
    /// Largest uncompressed total of all files.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub total_size_max: Option<u64>,
    /// Largest compression ratio (uncompressed / compressed) of an entry or the whole zip.
    #[arg(long, value_name = "RATIO")]
    pub compression_ratio_max: Option<u64>,
}

impl Args {
    fn limits(&self) -> Limits {
        let default = Limits::default();
        Limits {
            package_bytes_max: self.package_size_max.unwrap_or(default.package_bytes_max),
            entry_count_max: self.entry_count_max.unwrap_or(default.entry_count_max),
            entry_bytes_max: self.entry_size_max.unwrap_or(default.entry_bytes_max),
            total_bytes_max: self.total_size_max.unwrap_or(default.total_bytes_max),
            compression_ratio_max: self
                .compression_ratio_max
                .unwrap_or(default.compression_ratio_max),
        }
    }
}

/// Parses `1048576`, `512KiB`, `64MiB`, `2GiB`, `10MB`, `1GB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Runs the command; the returned code is the process exit code: 0 for a valid package,
/// 1 for a refused one.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let package = match ingest(&args.input, &args.limits()) {
        Ok(package) => package,
        Err(err) => {
            if args.json {
                let report = serde_json::json!({ "ok": false, "input": args.input, "error": err.to_string() });
                println!("{report}");
            } else {
                let text = format!("{}: refused: {err}", args.input.display());
                eprintln!("{}", clean(&text));
            }
            return Ok(1);
        }
    };
    if let Some(output) = &args.output {
        write_atomically(output, &package.zip)?;
    }
    if args.json {
        println!("{}", json_report(&args, &package));
    } else {
        print_report(&args, &package);
    }
    Ok(0)
}

/// Writes through a temporary file in the same folder and a rename, so a reader never
/// sees half a package at `output`.
fn write_atomically(output: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(&folder)
        .with_context(|| format!("cannot create a file in {}", folder.display()))?;
    // A package is not a secret: readable by all, as any file the user writes.
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| temp.write_all(bytes))
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", output.display()))?;
    temp.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

fn apps_and_targets(package: &Package) -> Vec<(String, Vec<String>)> {
    let meta = &package.meta;
    meta.deploy_map
        .iter()
        .map(|a| (a.app.clone(), a.targets.clone()))
        .collect()
}

fn json_report(args: &Args, package: &Package) -> serde_json::Value {
    let apps: serde_json::Map<String, serde_json::Value> = apps_and_targets(package)
        .into_iter()
        .map(|(app, targets)| (app, serde_json::json!(targets)))
        .collect();
    serde_json::json!({
        "ok": true,
        "input": args.input,
        "name": package.meta.name,
        "blake3": package.hash.to_hex().as_str(),
        "package_bytes": package.zip.len(),
        "entries": package.entry_count,
        "total_bytes": package.total_bytes,
        "signed": package.signed,
        "deploy_map": apps,
        "output": args.output,
    })
}

/// The text report. The job's name, its apps, targets and commands come from the
/// package, so each is cleaned before it is printed.
fn print_report(args: &Args, package: &Package) {
    println!("job:      {}", clean(&package.meta.name));
    for (app, targets) in apps_and_targets(package) {
        let command = package
            .apps
            .get(&app)
            .map(|run| run.command.as_str())
            .unwrap_or_default();
        println!(
            "app:      {} -> {} (runs {})",
            clean(&app),
            clean(&targets.join(", ")),
            clean(command)
        );
    }
    println!(
        "entries:  {} ({} bytes of files)",
        package.entry_count, package.total_bytes
    );
    println!("signed:   {}", if package.signed { "yes" } else { "no" });
    match &args.output {
        Some(output) => println!(
            "wrote:    {} ({} bytes)",
            clean(&output.display().to_string()),
            package.zip.len()
        ),
        None => println!(
            "package:  {} bytes (not written; use -o FILE)",
            package.zip.len()
        ),
    }
    println!("blake3:   {}", package.hash.to_hex());
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
