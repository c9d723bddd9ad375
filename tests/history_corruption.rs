//! Corruption: edits through sled's own API are found by the audit, which names the
//! first bad sequence number; damage to sled's data file is reported as data loss
//! against the anchor.
mod history_support;

use std::path::Path;

use fedrun::history::{record, History, OpenError};
use history_support::{steps, Step, Steps};

const RECORDS: u64 = 20;

/// A closed history of `RECORDS` events in `dir`.
fn closed_history(dir: &Path) {
    let mut history = History::<Step>::open(dir).unwrap();
    history.append_batch(&steps(1, RECORDS)).unwrap();
    history.close().unwrap();
}

/// Runs `edit` on the raw sled tree of records, then audits the history.
fn audit_after(edit: impl FnOnce(&sled::Tree)) -> fedrun::history::VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    closed_history(dir.path());
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        edit(&events);
        db.flush().unwrap();
    }
    let history = History::<Step>::open(dir.path()).unwrap();
    history.verify(Steps::default())
}

#[test]
fn an_overwritten_record_is_named() {
    let report = audit_after(|events| {
        // A well-formed record 8 with another event, linked correctly to record 7: only
        // the link of record 9 can show it.
        let prev = record::ChainHash::of(&events.get(record::seq_key(7)).unwrap().unwrap());
        let forged = Step {
            seq: 8,
            job: 999,
            step: 1,
            note: "forged".into(),
        };
        let bytes = record::encode(8, prev, &forged).unwrap();
        events.insert(record::seq_key(8), bytes).unwrap();
    });
    assert_eq!(report.first_bad_seq(), Some(8), "{report:?}");
    assert_eq!(
        report.records_ok, 8,
        "records 1..=8 still chain; 9 does not"
    );
    assert!(report.problems[0]
        .message
        .contains("record 9 does not link to record 8"));
}

#[test]
fn garbage_in_a_record_is_named() {
    let report = audit_after(|events| {
        events
            .insert(record::seq_key(5), &b"\xc1 not msgpack"[..])
            .unwrap();
    });
    assert_eq!(report.first_bad_seq(), Some(5), "{report:?}");
    assert!(report.problems[0]
        .message
        .contains("record 5 does not decode"));
}

#[test]
fn a_removed_record_is_named() {
    let report = audit_after(|events| {
        events.remove(record::seq_key(12)).unwrap();
    });
    assert_eq!(report.first_bad_seq(), Some(12), "{report:?}");
    assert!(report.problems[0].message.contains("record 12 is missing"));
}

#[test]
fn two_swapped_records_are_named() {
    let report = audit_after(|events| {
        let a = events.get(record::seq_key(3)).unwrap().unwrap();
        let b = events.get(record::seq_key(4)).unwrap().unwrap();
        events.insert(record::seq_key(3), b).unwrap();
        events.insert(record::seq_key(4), a).unwrap();
    });
    assert_eq!(report.first_bad_seq(), Some(3), "{report:?}");
    assert!(report.problems[0]
        .message
        .contains("stored as 3 says it is record 4"));
}

#[test]
fn an_untouched_history_audits_clean() {
    let report = audit_after(|_| {});
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_ok, RECORDS);
}

#[test]
fn a_removed_last_record_is_data_loss_against_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    closed_history(dir.path());
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        events.remove(record::seq_key(RECORDS)).unwrap();
        db.flush().unwrap();
    }
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, OpenError::DataLoss { anchor_seq: RECORDS, found_seq } if found_seq == RECORDS - 1),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("up to {RECORDS}")),
        "{err}"
    );
}

#[test]
fn damage_to_sleds_data_file_is_reported_as_data_loss_against_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    // Many small batches, so the data file holds many log entries.
    for batch in 0..40 {
        history.append_batch(&steps(1 + batch * 5, 5)).unwrap();
    }
    let anchor = history.head().seq;
    history.close().unwrap();

    // Flip 64 bytes in the middle of the data file. sled's recovery stops at the first
    // log entry that fails its checksum and silently drops everything after it.
    let path = dir.path().join("history").join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = History::<Step>::open(dir.path()).unwrap_err();
    let OpenError::DataLoss {
        anchor_seq,
        found_seq,
    } = err
    else {
        panic!("expected data loss, got: {err}");
    };
    assert_eq!(anchor_seq, anchor);
    assert!(found_seq < anchor_seq, "{found_seq} < {anchor_seq}");
    let message = OpenError::DataLoss {
        anchor_seq,
        found_seq,
    }
    .to_string();
    assert!(message.contains(&anchor_seq.to_string()) && message.contains(&found_seq.to_string()));
}

#[test]
fn a_changed_record_at_the_anchor_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    closed_history(dir.path());
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        let prev =
            record::ChainHash::of(&events.get(record::seq_key(RECORDS - 1)).unwrap().unwrap());
        let forged = Step {
            seq: RECORDS,
            job: 4242,
            step: 1,
            note: "forged".into(),
        };
        let bytes = record::encode(RECORDS, prev, &forged).unwrap();
        events.insert(record::seq_key(RECORDS), bytes).unwrap();
        db.flush().unwrap();
    }
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, OpenError::AnchorMismatch { seq: RECORDS, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains(&format!("record {RECORDS} differs from the anchor")));
}

#[test]
fn a_missing_snapshot_blob_falls_back_to_full_replay_and_the_audit_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 10)).unwrap();
    let state = history.replay(Steps::default()).unwrap();
    let snapshot = history.take_snapshot(&state).unwrap();
    history.append_batch(&steps(11, 5)).unwrap();
    history.close().unwrap();
    std::fs::remove_file(dir.path().join("blobs").join(snapshot.state.to_hex())).unwrap();

    let history = History::<Step>::open(dir.path()).unwrap();
    let recovered = history.recover(Steps::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, None);
    assert_eq!(recovered.replayed, 15);
    assert_eq!(recovered.state, history.replay(Steps::default()).unwrap());
    let report = history.verify(Steps::default());
    assert!(!report.is_ok());
    assert!(
        report.problems[0]
            .message
            .contains("snapshot cannot be read"),
        "{report:?}"
    );
}
