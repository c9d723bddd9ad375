//! `fedrun audit verify`: check the history of a data folder.

use std::path::PathBuf;

use anyhow::Context;
use fedrun::history::events::{audit, EventHistory};
use fedrun::history::{SledStorage, READER_LOCK_WAIT};

use super::term::clean;

/// Subcommands of `fedrun audit`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check the whole chain, the anchor, that replay equals the snapshot, and the blobs
    /// live jobs need.
    Verify(VerifyArgs),
}

/// Arguments of `fedrun audit verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// A stopped server's data folder (holding `history/`, `blobs/` and `anchor`),
    /// instead of the live server through `--kit`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub target: super::remote::Target,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The checks the audit really made and passed, in words: only those (no anchor, no
/// snapshot or no blob to check means that check is not claimed).
fn checks_made(report: &fedrun::history::VerifyReport) -> String {
    let mut checks = vec![format!(
        "chain intact ({} records, every transition legal)",
        report.records_ok
    )];
    if report.anchor_matches {
        if let Some(anchor) = report.anchor {
            checks.push(format!("anchor matches record {}", anchor.seq));
        }
    }
    if report.snapshot_matches {
        if let Some(seq) = report.snapshot_seq {
            checks.push(format!("replay equals the snapshot at record {seq}"));
        }
    }
    if report.blobs_checked > 0 {
        checks.push(format!("{} blobs intact", report.blobs_checked));
    }
    checks.join(", ")
}

/// Runs the command; the returned code is the process exit code: 0 only when all is well,
/// 1 when a problem was found (or the history could not be read).
pub fn run(command: Command) -> anyhow::Result<i32> {
    let Command::Verify(args) = command;
    let data_dir = match args.target.source(args.data_dir.as_deref()) {
        Ok(super::remote::Source::Folder(dir)) => dir,
        Ok(super::remote::Source::Live(client)) => return super::remote::audit(client, args.json),
        Err(code) => return Ok(code),
    };
    // A private copy of the history is audited (the data folder is never changed);
    // blobs are read in place.
    let cannot = || format!("cannot audit the history in {}", data_dir.display());
    let storage = SledStorage::open_copy(&data_dir, READER_LOCK_WAIT).with_context(cannot)?;
    let blobs = storage.blobs().clone();
    let history = EventHistory::for_audit(Box::new(storage)).with_context(cannot)?;
    let report = audit(&history, &blobs);
    if args.json {
        let mut value = serde_json::to_value(&report).context("encoding the report")?;
        if let Some(object) = value.as_object_mut() {
            object.insert("ok".into(), report.is_ok().into());
            object.insert("first_bad_seq".into(), report.first_bad_seq().into());
        }
        println!("{value}");
    } else {
        let dir = data_dir.display().to_string();
        let dir = clean(&dir);
        println!("history:  {dir}");
        println!(
            "records:  {} checked and good, last stored is {}",
            report.records_ok, report.head.seq
        );
        match report.anchor {
            Some(anchor) => println!("anchor:   record {} ({})", anchor.seq, anchor.hash),
            None => println!("anchor:   none"),
        }
        match report.snapshot_seq {
            Some(seq) => println!("snapshot: covers records up to {seq}"),
            None => println!("snapshot: none"),
        }
        if report.is_ok() {
            println!("result:   OK: {}", checks_made(&report));
        } else {
            if let Some(seq) = report.first_bad_seq() {
                println!("result:   FAILED: first bad record is {seq}");
            } else {
                println!("result:   FAILED");
            }
            for problem in &report.problems {
                match problem.seq {
                    Some(seq) => println!("  record {seq}: {}", clean(&problem.message)),
                    None => println!("  {}", clean(&problem.message)),
                }
            }
        }
    }
    Ok(if report.is_ok() { 0 } else { 1 })
}
