//! The in-memory history: same codec and chain as on disk, survives a simulated restart.
mod history_support;

use fedrun::history::{AppendError, History, MemoryStorage, ReplayError};
use history_support::{steps, Step, Steps};

#[test]
fn appended_events_replay_in_order_after_a_simulated_restart() {
    let storage = MemoryStorage::new();
    let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
    assert_eq!(history.next_seq(), 1);
    history.append_batch(&steps(1, 10)).unwrap();
    history.append_batch(&steps(11, 5)).unwrap();
    assert_eq!(history.head().seq, 15);
    drop(history);

    let reopened = History::<Step>::in_memory(storage).unwrap();
    assert_eq!(reopened.head().seq, 15);
    let events: Vec<Step> = reopened
        .records_from(1)
        .map(|record| record.unwrap().event)
        .collect();
    assert_eq!(events, steps(1, 15));
    let state = reopened.replay(Steps::default()).unwrap();
    assert_eq!(state.jobs.len(), 15);
    assert_eq!(state.last_seq, 15);
}

#[test]
fn an_event_with_the_wrong_sequence_number_is_refused() {
    let mut history = History::<Step>::in_memory(MemoryStorage::new()).unwrap();
    let err = history.append_batch(&steps(2, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::OutOfSequence {
                expected: 1,
                found: 2
            }
        ),
        "{err}"
    );
    assert_eq!(history.head().seq, 0);
}

#[test]
fn an_oversized_event_is_refused_before_anything_is_written() {
    let storage = MemoryStorage::new();
    let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
    let mut big = steps(1, 1);
    big[0].note = "x".repeat(70 * 1024);
    let err = history.append_batch(&big).unwrap_err();
    assert!(err.to_string().contains("65536-byte limit"), "{err}");
    assert_eq!(history.head().seq, 0);
    assert!(fedrun::history::Storage::last(&storage).unwrap().is_none());
}

#[test]
fn replay_names_the_sequence_number_of_an_illegal_transition() {
    let mut history = History::<Step>::in_memory(MemoryStorage::new()).unwrap();
    let mut events = steps(1, 3);
    // Job 1 goes back from step 1 to step 1: illegal for the fold.
    events.push(Step {
        seq: 4,
        job: 1,
        step: 1,
        note: String::new(),
    });
    history.append_batch(&events).unwrap();
    let err = history.replay(Steps::default()).unwrap_err();
    assert!(matches!(err, ReplayError::Illegal { seq: 4, .. }), "{err}");
    assert!(err.to_string().contains("record 4"), "{err}");
}

#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let storage = MemoryStorage::new();
    let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
    history.append_batch(&steps(1, 20)).unwrap();
    let state = history.replay(Steps::default()).unwrap();
    let snapshot = history.take_snapshot(&state).unwrap();
    assert_eq!(snapshot.seq, 20);
    history.append_batch(&steps(21, 7)).unwrap();
    drop(history);

    let reopened = History::<Step>::in_memory(storage).unwrap();
    let recovered = reopened.recover(Steps::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(20));
    assert_eq!(recovered.replayed, 7);
    assert_eq!(recovered.state, reopened.replay(Steps::default()).unwrap());
    assert!(reopened.verify(Steps::default()).is_ok());
}

#[test]
fn tampering_is_found_and_named_by_sequence_number() {
    let storage = MemoryStorage::new();
    let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
    history.append_batch(&steps(1, 10)).unwrap();
    assert!(history.verify(Steps::default()).is_ok());
    storage.tamper(6, None);
    let report = history.verify(Steps::default());
    assert_eq!(report.first_bad_seq(), Some(6), "{report:?}");
    assert_eq!(report.records_ok, 5);
}

#[test]
fn a_snapshot_that_no_longer_decodes_falls_back_to_full_replay() {
    /// A state whose layout differs from `Steps`: an old snapshot of `Steps` does not
    /// decode into it.
    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Renamed {
        count: u64,
    }
    impl fedrun::history::Fold<Step> for Renamed {
        type Error = String;
        fn apply_checked(&mut self, _event: &Step) -> Result<(), String> {
            self.count += 1;
            Ok(())
        }
    }
    let storage = MemoryStorage::new();
    let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
    history.append_batch(&steps(1, 12)).unwrap();
    history
        .take_snapshot(&history.replay(Steps::default()).unwrap())
        .unwrap();
    history.append_batch(&steps(13, 3)).unwrap();
    let recovered = history.recover(Renamed::default()).unwrap();
    assert_eq!(recovered.snapshot_seq, None);
    assert_eq!(recovered.replayed, 15);
    assert_eq!(recovered.state, Renamed { count: 15 });
}
