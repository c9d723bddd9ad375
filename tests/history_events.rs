//! fedrun's own events in the history: stored, replayed into the lifecycle state,
//! snapshotted, printed; and the committed version-1 record fixture still decodes.
mod history_support;

use fedrun::history::events::{event_json_line, event_text, EventHistory};
use fedrun::history::{record, ChainHash, ReplayError, GENESIS_HASH};
use fedrun::lifecycle::{Actor, EventKind, RunStatus, State};
use history_support::lifecycle::{event, job, sample_history};

#[test]
fn lifecycle_events_replay_into_the_state_and_snapshot_plus_tail_equals_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let events = sample_history(30);
    let mut history = EventHistory::open(dir.path()).unwrap();
    history.append_batch(&events[..20]).unwrap();
    let at_snapshot = history.replay(State::new()).unwrap();
    assert_eq!(at_snapshot.last_seq, 20);
    history.take_snapshot(&at_snapshot).unwrap();
    history.append_batch(&events[20..]).unwrap();
    history.close().unwrap();

    let history = EventHistory::open(dir.path()).unwrap();
    let recovered = history.recover(State::new()).unwrap();
    assert_eq!(recovered.snapshot_seq, Some(20));
    assert_eq!(recovered.replayed, events.len() as u64 - 20);
    let full = history.replay(State::new()).unwrap();
    assert_eq!(recovered.state, full);
    assert_eq!(full.jobs.len(), 30);
    assert_eq!(full.jobs[&job(1)].status, RunStatus::Aborted);
    let report = history.verify(State::new());
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn a_replay_from_nothing_builds_at_its_end_the_index_a_record_by_record_fold_keeps() {
    // More jobs than the index's two parts are built apart from (4,096), so the build
    // on two threads is the one checked; the model proptest checks the one-thread build.
    let events = sample_history(5_000);
    let mut history = EventHistory::in_memory(fedrun::history::MemoryStorage::new()).unwrap();
    history.append_batch(&events).unwrap();
    let replayed = history.replay(State::new()).unwrap();
    let mut folded = State::new();
    for event in &events {
        folded.apply_checked(event).unwrap();
    }
    assert_eq!(replayed, folded);
    assert_eq!(replayed.index(), folded.index());
    // Job 1, never tried, was aborted; every queued job was tried once.
    assert_eq!(replayed.index().due.len(), 1);
    assert_eq!(replayed.index().due[&1].len(), 4_999);
}

#[test]
fn an_illegal_lifecycle_record_stops_replay_naming_its_sequence_number() {
    let mut events = sample_history(2);
    let seq = events.len() as u64 + 1;
    // Job 1 is already FINISHED:ABORTED; a RunStarted cannot follow.
    events.push(event(
        seq,
        Actor::System,
        None,
        EventKind::RunStarted {
            job_id: job(1),
            job_clients: vec!["site-1".into()],
        },
    ));
    let mut history = EventHistory::in_memory(Default::default()).unwrap();
    history.append_batch(&events).unwrap();
    let err = history.replay(State::new()).unwrap_err();
    assert!(
        matches!(err, ReplayError::Illegal { seq: s, .. } if s == seq),
        "{err}"
    );
    let report = history.verify(State::new());
    assert_eq!(report.first_bad_seq(), Some(seq));
}

#[test]
fn an_event_prints_as_one_json_object_with_iso_time_and_actor() {
    let events = sample_history(1);
    let submitted = &events[2];
    let line = event_json_line(submitted).unwrap();
    assert!(!line.contains('\n'));
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["seq"], 3);
    assert_eq!(value["at"], "2025-11-28T00:00:03.000Z");
    assert_eq!(value["type"], "job_submitted");
    assert_eq!(value["job_id"], job(1).to_string());
    assert_eq!(value["actor"]["type"], "admin");
    assert_eq!(value["actor"]["name"], "alice");
    assert_eq!(value["request_id"], "submit-1");
    assert_eq!(value["kind"]["meta"]["name"], "job-1");
}

#[test]
fn an_event_prints_as_one_readable_line_and_control_characters_are_escaped() {
    let mut events = sample_history(1);
    let finished = events.pop().unwrap();
    let text = event_text(&finished);
    assert!(text.contains("2025-11-28T00:00:04.000Z"), "{text}");
    assert!(text.contains("admin alice (org-a, lead)"), "{text}");
    assert!(text.contains("job_finished"), "{text}");
    assert!(text.contains(&format!("job={}", job(1))), "{text}");
    assert!(text.contains("status=FINISHED:ABORTED"), "{text}");

    let hostile = event(
        9,
        Actor::Site {
            name: "site-1".into(),
        },
        None,
        EventKind::WorkspaceArchiveAttemptFailed {
            job_id: job(1),
            reason: "line one\nline two \u{1b}[31mred".into(),
        },
    );
    let text = event_text(&hostile);
    assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
    assert!(text.contains("line one\\nline two"), "{text}");
}

/// The committed version-1 records: ServerStarted, SiteConnected, JobSubmitted,
/// JobFinished, as written by format version 1.
const FIXTURE_RECORDS: [&str; 4] = [
    "v1-000001-server-started.msgpack",
    "v1-000002-site-connected.msgpack",
    "v1-000003-job-submitted.msgpack",
    "v1-000004-job-finished.msgpack",
];

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/history")
        .join(name)
}

#[test]
fn the_committed_version_1_records_still_decode_chain_and_replay() {
    let mut prev = GENESIS_HASH;
    let mut state = State::new();
    let mut decoded = Vec::new();
    for (index, name) in FIXTURE_RECORDS.iter().enumerate() {
        let bytes = std::fs::read(fixture_path(name)).unwrap();
        let (record, hash) = fedrun::history::check_record::<fedrun::lifecycle::Event>(
            index as u64 + 1,
            prev,
            index as u64 + 1,
            &bytes,
        )
        .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(record.v, 1, "{name}");
        state.apply_checked(&record.event).unwrap();
        prev = hash;
        decoded.push(record.event);
    }
    // The fixture holds exactly what `sample_history(1)` describes.
    assert_eq!(decoded, sample_history(1));
    assert_eq!(state.jobs[&job(1)].status, RunStatus::Aborted);
    assert_eq!(state.jobs[&job(1)].meta.name, "job-1");
}

/// Writes the fixture files. Run once, by hand, when the fixture is first made:
/// `FEDRUN_WRITE_FIXTURE=1 cargo test --test history_events todays_encoder`; the
/// files are committed and never rewritten by later versions.
#[test]
fn todays_encoder_writes_exactly_the_committed_version_1_bytes() {
    if std::env::var_os("FEDRUN_WRITE_FIXTURE").is_none() {
        // Outside fixture writing, check that today's encoder still produces the
        // committed bytes: format version 1 has not changed under our feet.
        let mut prev = GENESIS_HASH;
        for (event, name) in sample_history(1).iter().zip(FIXTURE_RECORDS) {
            let bytes = record::encode_v1(event.seq, prev, event).unwrap();
            assert_eq!(
                bytes,
                std::fs::read(fixture_path(name)).unwrap(),
                "{name}: today's encoder no longer writes the version-1 bytes. If an optional \
                 field was added on purpose, keep these files (every version must read them), \
                 and pin today's bytes as fixtures of the new version next to them"
            );
            prev = ChainHash::of(&bytes);
        }
        return;
    }
    let mut prev = GENESIS_HASH;
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (event, name) in sample_history(1).iter().zip(FIXTURE_RECORDS) {
        let bytes = record::encode_v1(event.seq, prev, event).unwrap();
        std::fs::write(fixture_path(name), &bytes).unwrap();
        // The same records seed the fuzz corpora: whole records, and bare events.
        std::fs::write(corpus.join("history_record").join(name), &bytes).unwrap();
        let event_bytes = rmp_serde::to_vec_named(event).unwrap();
        std::fs::write(corpus.join("event_decode").join(name), event_bytes).unwrap();
        prev = ChainHash::of(&bytes);
    }
}

#[test]
fn referenced_blobs_count_live_jobs_and_the_snapshot_but_not_deleted_jobs() {
    use fedrun::history::events::referenced_blobs;
    use fedrun::lifecycle::BlobHash;

    let mut events = sample_history(3);
    let seq = events.len() as u64 + 1;
    // Job 1 was aborted; now it is deleted, so its package is no longer needed.
    events.push(event(
        seq,
        Actor::admin(&history_support::lifecycle::alice()),
        Some("delete-1"),
        EventKind::JobDeleted { job_id: job(1) },
    ));
    let mut history = EventHistory::in_memory(Default::default()).unwrap();
    history.append_batch(&events).unwrap();
    let state = history.replay(State::new()).unwrap();
    let snapshot = history.take_snapshot(&state).unwrap();

    let counts = referenced_blobs(&state, Some(&snapshot));
    let package = |n: u128| BlobHash::from(blake3::hash(format!("package {n}").as_bytes()));
    assert_eq!(
        counts.get(&package(1)),
        None,
        "deleted job's package is free"
    );
    assert_eq!(counts.get(&package(2)), Some(&1));
    assert_eq!(counts.get(&package(3)), Some(&1));
    assert_eq!(counts.get(&snapshot.state), Some(&1));
    assert_eq!(counts.len(), 3);
}
