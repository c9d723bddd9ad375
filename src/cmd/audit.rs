//! `fedrun audit verify`: check the history of a data folder.

use std::path::PathBuf;

use anyhow::Context;
use fedrun::blobs::BlobStore;
use fedrun::history::events::{audit, EventHistory};
use fedrun::history::DataPaths;

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
    /// The server's data folder (holding `history/`, `blobs/` and `anchor`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; the returned code is the process exit code: 0 only when all is well,
/// 1 when a problem was found (or the history could not be read).
pub fn run(command: Command) -> anyhow::Result<i32> {
    let Command::Verify(args) = command;
    let history = EventHistory::open_for_audit(&args.data_dir)
        .with_context(|| format!("cannot audit the history in {}", args.data_dir.display()))?;
    let blobs_dir = DataPaths::new(&args.data_dir).blobs;
    let blobs = BlobStore::open(&blobs_dir)
        .with_context(|| format!("cannot open the blob store {}", blobs_dir.display()))?;
    let report = audit(&history, &blobs);
    if args.json {
        let mut value = serde_json::to_value(&report).context("encoding the report")?;
        if let Some(object) = value.as_object_mut() {
            object.insert("ok".into(), report.is_ok().into());
            object.insert("first_bad_seq".into(), report.first_bad_seq().into());
        }
        println!("{value}");
    } else {
        let dir = args.data_dir.display();
        println!("history:  {dir}");
        println!(
            "records:  {} checked and good, last stored is {}",
            report.records_ok, report.head.seq
        );
        match report.anchor {
            Some(anchor) => println!("anchor:   record {} ({})", anchor.seq, anchor.hash),
            None => println!("anchor:   none written yet"),
        }
        match report.snapshot_seq {
            Some(seq) => println!("snapshot: covers records up to {seq}"),
            None => println!("snapshot: none"),
        }
        if report.is_ok() {
            println!(
                "result:   OK: chain intact, anchor matches, replay equals the snapshot, blobs intact"
            );
        } else {
            if let Some(seq) = report.first_bad_seq() {
                println!("result:   FAILED: first bad record is {seq}");
            } else {
                println!("result:   FAILED");
            }
            for problem in &report.problems {
                match problem.seq {
                    Some(seq) => println!("  record {seq}: {}", problem.message),
                    None => println!("  {}", problem.message),
                }
            }
        }
    }
    Ok(if report.is_ok() { 0 } else { 1 })
}
