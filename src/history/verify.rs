//! The audit: check every record, the anchor, and the snapshot, and report the first
//! sequence number that cannot be trusted.

use serde::Serialize;

use super::record::GENESIS_HASH;
use super::snapshot;
use super::{check_record, ChainHash, Fold, Head, History, RecordEvent, ReplayError};

/// One thing the audit found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first sequence number it makes untrustworthy, when it is about a record.
    pub seq: Option<u64>,
    /// What is wrong, in words.
    pub message: String,
}

/// The audit's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked and found good (from 1, without a gap).
    pub records_ok: u64,
    /// The last record found.
    pub head: Head,
    /// The anchor's head, if an anchor was found.
    pub anchor: Option<Head>,
    /// Whether the anchor was compared with the records and matched them.
    pub anchor_matches: bool,
    /// The sequence number the snapshot covers, if there is one.
    pub snapshot_seq: Option<u64>,
    /// Whether replay up to the snapshot was compared with the snapshot's state and
    /// matched it.
    pub snapshot_matches: bool,
    /// How many blobs were read back and found to hash to their names (filled in by
    /// [`crate::history::events::audit`]; 0 when none were checked).
    pub blobs_checked: u64,
    /// Everything found wrong; empty when all is well.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether all is well.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The lowest sequence number named by a problem.
    pub fn first_bad_seq(&self) -> Option<u64> {
        self.problems.iter().filter_map(|problem| problem.seq).min()
    }
}

pub(super) fn verify<E, S>(history: &History<E>, mut state: S) -> VerifyReport
where
    E: RecordEvent,
    S: Fold<E> + Serialize,
{
    let storage = history.storage();
    let mut problems = Vec::new();
    let snapshot = match storage.load_snapshot() {
        Ok(snapshot) => snapshot,
        Err(err) => {
            problems.push(Problem {
                seq: None,
                message: format!("the snapshot cannot be read: {err}"),
            });
            None
        }
    };
    let snapshot_seq = snapshot.as_ref().map(|(record, _)| record.seq);
    let mut snapshot_checked = snapshot.is_none();
    // Whether the replayed state is the snapshot's: compared in the snapshot's own
    // encoding (format 1 or this build's format 2). A snapshot of another build's state
    // layout cannot be compared; start-up ignores it, so it is not a problem either.
    let check_snapshot = |state: &S, hash: ChainHash, problems: &mut Vec<Problem>| -> bool {
        let Some((record, bytes)) = &snapshot else {
            return false;
        };
        let before = problems.len();
        if record.chain != hash {
            problems.push(Problem {
                seq: Some(record.seq),
                message: format!(
                    "the snapshot names record {} with hash {}, but that record hashes to {hash}",
                    record.seq, record.chain
                ),
            });
        }
        if let Err(err) = snapshot::comparable_with::<S>(bytes) {
            tracing::warn!(seq = record.seq, error = %err, "snapshot not compared with the replayed state");
            return false;
        }
        match snapshot::encode_state_like(state, bytes) {
            Ok(replayed) if &replayed == bytes => {}
            Ok(_) => problems.push(Problem {
                seq: Some(record.seq),
                message: format!(
                    "replaying records 1..={} does not give the snapshot's state",
                    record.seq
                ),
            }),
            Err(err) => problems.push(Problem {
                seq: Some(record.seq),
                message: format!("the replayed state does not serialize: {err}"),
            }),
        }
        problems.len() == before
    };
    let mut snapshot_ok = false;
    if snapshot_seq == Some(0) {
        snapshot_ok = check_snapshot(&state, GENESIS_HASH, &mut problems);
        snapshot_checked = true;
    }

    let mut expected_seq = 1;
    let mut prev = GENESIS_HASH;
    let mut last_found = 0;
    let mut chain_broken = false;
    for item in storage.read_shared_from(1) {
        let result = match item {
            Err(source) => Err(ReplayError::Storage {
                seq: expected_seq,
                cause: source,
            }),
            Ok((seq, bytes)) => {
                last_found = seq;
                check_record::<E>(expected_seq, prev, seq, &bytes)
            }
        };
        let (record, hash) = match result {
            Ok(ok) => ok,
            Err(err) => {
                problems.push(Problem {
                    seq: Some(err.first_bad_seq()),
                    message: err.to_string(),
                });
                chain_broken = true;
                break;
            }
        };
        if let Err(reason) = state.apply_checked(&record.event) {
            problems.push(Problem {
                seq: Some(record.seq),
                message: format!("record {} is not a legal transition: {reason}", record.seq),
            });
            chain_broken = true;
            break;
        }
        if snapshot_seq == Some(record.seq) {
            snapshot_ok = check_snapshot(&state, hash, &mut problems);
            snapshot_checked = true;
        }
        prev = hash;
        expected_seq += 1;
    }
    let records_ok = expected_seq - 1;
    // The head is what the store holds last, even when the chain broke before it.
    let head = match storage.last() {
        Ok(Some((seq, bytes))) => Head {
            seq,
            hash: ChainHash::of(&bytes),
        },
        Ok(None) => Head::EMPTY,
        Err(err) => {
            problems.push(Problem {
                seq: None,
                message: format!("the last record cannot be read: {err}"),
            });
            Head {
                seq: last_found,
                hash: prev,
            }
        }
    };
    if !snapshot_checked && !chain_broken {
        if let Some(seq) = snapshot_seq {
            problems.push(Problem {
                seq: Some(records_ok + 1),
                message: format!(
                    "the snapshot covers records up to {seq}, but the history ends at {records_ok}"
                ),
            });
        }
    }

    let anchor = storage.anchor().ok().flatten();
    let mut anchor_matches = false;
    match super::judge_anchor(storage, head, std::path::Path::new("the history")) {
        super::AnchorVerdict::Fresh => {}
        super::AnchorVerdict::Matches(_) => anchor_matches = true,
        super::AnchorVerdict::Unacknowledged { first, last } => {
            // Not a problem: the machine stopped before this batch was durable, and it
            // was never acknowledged. Said in the log, not as a failure.
            tracing::warn!(
                first,
                last,
                "records named by the anchor were never acknowledged"
            );
        }
        super::AnchorVerdict::Refused(err) => {
            let seq = match &err {
                super::OpenError::DataLoss { found_seq, .. } => Some(found_seq + 1),
                super::OpenError::AnchorLost { found_seq, .. } => Some(found_seq + 1),
                super::OpenError::AnchorMismatch { seq, .. } => Some(*seq),
                _ => None,
            };
            problems.push(Problem {
                seq,
                message: err.to_string(),
            });
        }
    }
    let snapshot_matches = snapshot_seq.is_some() && snapshot_ok;
    problems.sort_by_key(|problem| problem.seq.unwrap_or(0));
    VerifyReport {
        records_ok,
        head,
        anchor: anchor.map(|anchor| anchor.head),
        anchor_matches,
        snapshot_seq,
        snapshot_matches,
        blobs_checked: 0,
        problems,
    }
}
