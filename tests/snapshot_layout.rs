//! The snapshot layout: format 2 (positional, with a layout fingerprint) round-trips
//! the state, a snapshot of another layout is never decoded (start-up replays
//! everything instead), format 1 (named) snapshots still load, and no bytes make the
//! decoder panic.

use fedrun::job::flat_map::FlatMap;
use std::collections::BTreeMap;

use fedrun::history::snapshot::{
    self, Layout, SnapshotDecodeError, SnapshotRecord, HEADER_LEN, MAGIC, SNAPSHOT_FORMAT,
};
use fedrun::history::{History, MemoryStorage, Storage};
use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
mod source_scan;

use fedrun::lifecycle::{
    Actor, BlobHash, BootId, Event, EventKind, Identity, Role, ScheduleOutcome, State, Timestamp,
};

fn envelope(seq: u64, actor: Actor, kind: EventKind) -> Event {
    Event {
        seq,
        at: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
        actor,
        request_id: None,
        boot_id: BootId(uuid::Uuid::from_u128(7)),
        kind,
    }
}

fn job(n: u64) -> JobId {
    JobId(uuid::Uuid::from_u128(0x3000 + u128::from(n)))
}

/// Job `seq / 2` submitted, then tried once.
fn event_at(seq: u64) -> Event {
    let n = (seq - 1) / 2;
    if (seq - 1).is_multiple_of(2) {
        let bob = Identity {
            name: "bob".into(),
            org: "org-b".into(),
            role: Role::Lead,
        };
        envelope(
            seq,
            Actor::admin(&bob),
            EventKind::JobSubmitted {
                job_id: job(n),
                meta: JobMeta {
                    name: format!("job-{n}"),
                    deploy_map: vec![AppTargets {
                        app: "app".into(),
                        targets: vec!["server".into(), "site-1".into()],
                    }],
                    min_clients: 1,
                    mandatory_clients: vec!["site-1".into()],
                    resource_spec: FlatMap::from([(
                        "site-1".to_string(),
                        FlatMap::from([("mem".to_string(), 2.5)]),
                    )]),
                },
                package: BlobHash::from(blake3::hash(b"one package")),
                submitter: bob,
                signer: None,
                submit_time: Timestamp::from_millis(1_764_288_000_000 + seq as i64),
                cloned_from: (n > 0).then(|| job(n - 1)),
            },
        )
    } else {
        envelope(
            seq,
            Actor::Scheduler,
            EventKind::ScheduleAttempted {
                job_id: job(n),
                outcome: ScheduleOutcome::NoResources {
                    reason: "connected sites (0) < min_clients (1)".into(),
                },
            },
        )
    }
}

/// A memory history of `events` events, and the state after them.
fn history_of(events: u64) -> (MemoryStorage, History<Event>, State) {
    let storage = MemoryStorage::default();
    let mut history =
        History::<Event>::from_storage(Box::new(storage.clone()), std::path::Path::new("memory"))
            .expect("opens");
    let batch: Vec<Event> = (1..=events).map(event_at).collect();
    history.append_batch(&batch).expect("appends");
    let state = history.replay(State::new()).expect("replays");
    (storage, history, state)
}

#[test]
fn format_2_round_trips_the_state_and_is_smaller_than_format_1() {
    let (_, _, state) = history_of(200);
    assert_eq!(state.jobs.len(), 100);
    let bytes = snapshot::encode_state(&state).expect("encodes");
    assert_eq!(&bytes[..MAGIC.len()], &MAGIC);
    let decoded: State = snapshot::decode_state(&bytes).expect("decodes");
    assert_eq!(decoded, state);
    let named = snapshot::encode_state_v1(&state).expect("encodes");
    assert!(
        bytes.len() < named.len(),
        "positional {} bytes, named {}",
        bytes.len(),
        named.len()
    );
    // Format 1 still decodes to the same state.
    let old: State = snapshot::decode_state(&named).expect("decodes");
    assert_eq!(old, state);
}

#[test]
fn a_state_of_another_layout_is_never_decoded() {
    let (_, _, state) = history_of(20);
    let mut bytes = snapshot::encode_state(&state).expect("encodes");
    // Another build's layout in the header.
    bytes[MAGIC.len() + 4] ^= 1;
    match snapshot::decode_state::<State>(&bytes) {
        Err(SnapshotDecodeError::LayoutChanged { stored, expected }) => {
            assert_eq!(expected, Layout::of::<State>());
            assert_ne!(stored, expected);
        }
        other => panic!("decoded a state of another layout: {other:?}"),
    }
    // The same bytes read as another type's state are refused too: its layout differs.
    let good = snapshot::encode_state(&state).expect("encodes");
    assert!(matches!(
        snapshot::decode_state::<BTreeMap<String, u64>>(&good),
        Err(SnapshotDecodeError::LayoutChanged { .. })
    ));
    // A format this build does not know.
    let mut newer = good.clone();
    newer[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&(SNAPSHOT_FORMAT + 1).to_le_bytes());
    assert!(matches!(
        snapshot::decode_state::<State>(&newer),
        Err(SnapshotDecodeError::UnknownFormat { found }) if found == SNAPSHOT_FORMAT + 1
    ));
}

#[test]
fn start_up_replays_everything_when_the_snapshot_layout_changed() {
    let (mut storage, mut history, state) = history_of(40);
    let taken = history.take_snapshot(&state).expect("snapshot");
    assert_eq!(taken.v, SNAPSHOT_FORMAT);
    assert_eq!(taken.layout, Some(Layout::of::<State>()));
    let tail: Vec<Event> = (41..=60).map(event_at).collect();
    history.append_batch(&tail).expect("appends");
    let full = history.replay(State::new()).expect("replays");
    let recovered = history.recover(State::new()).expect("recovers");
    assert_eq!(recovered.snapshot_seq, Some(40));
    assert_eq!(recovered.replayed, 20);
    assert_eq!(recovered.state, full);

    // The record says another layout: the snapshot is not used, nothing is lost.
    let (_, bytes) = storage.load_snapshot().expect("reads").expect("held");
    let other = SnapshotRecord {
        layout: Some(Layout([9; 32])),
        ..taken.clone()
    };
    storage
        .save_snapshot(&other, bytes.clone())
        .expect("stored");
    assert!(other.usable_for::<State>().is_err());
    let recovered = history.recover(State::new()).expect("recovers");
    assert_eq!(recovered.snapshot_seq, None);
    assert_eq!(recovered.replayed, 60);
    assert_eq!(recovered.state, full);

    // A format-2 record naming no layout is not used either.
    let none = SnapshotRecord {
        layout: None,
        ..taken
    };
    storage.save_snapshot(&none, bytes).expect("stored");
    let recovered = history.recover(State::new()).expect("recovers");
    assert_eq!(recovered.snapshot_seq, None);
    assert_eq!(recovered.state, full);
}

#[test]
fn a_format_1_snapshot_still_loads() {
    let (mut storage, mut history, state) = history_of(30);
    let head = history.head();
    let named = snapshot::encode_state_v1(&state).expect("encodes");
    // As an older fedrun stored it: version 1, no layout (the field is absent).
    let record = SnapshotRecord {
        v: 1,
        seq: head.seq,
        chain: head.hash,
        state: fedrun::blobs::hash_of(&named),
        layout: None,
    };
    storage
        .save_snapshot(&record, named.into())
        .expect("stored");
    let tail: Vec<Event> = (31..=40).map(event_at).collect();
    history.append_batch(&tail).expect("appends");
    let recovered = history.recover(State::new()).expect("recovers");
    assert_eq!(recovered.snapshot_seq, Some(30));
    assert_eq!(recovered.replayed, 10);
    assert_eq!(
        recovered.state,
        history.replay(State::new()).expect("replays")
    );
    // The audit compares it in its own encoding: an old data folder is not reported.
    let report = history.verify(State::new());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.snapshot_matches);
    // A format-1 snapshot that is not the replayed state is still found.
    let mut other = state.clone();
    other.last_at = other.last_at.plus(std::time::Duration::from_secs(1));
    let wrong = snapshot::encode_state_v1(&other).expect("encodes");
    let record = SnapshotRecord {
        state: fedrun::blobs::hash_of(&wrong),
        ..record
    };
    storage
        .save_snapshot(&record, wrong.into())
        .expect("stored");
    let report = history.verify(State::new());
    assert!(!report.snapshot_matches);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.seq == Some(30) && p.message.contains("does not give the snapshot's state")),
        "{:?}",
        report.problems
    );
}

#[test]
fn the_audit_does_not_report_a_snapshot_of_another_layout() {
    let (mut storage, mut history, state) = history_of(20);
    let taken = history.take_snapshot(&state).expect("snapshot");
    let report = history.verify(State::new());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.snapshot_matches);
    // As another build wrote it: its layout in the header and the record.
    let (_, stored) = storage.load_snapshot().expect("reads").expect("held");
    let mut bytes = stored.to_vec();
    bytes[MAGIC.len() + 4] ^= 1;
    let other = SnapshotRecord {
        state: fedrun::blobs::hash_of(&bytes),
        layout: Some(Layout(
            bytes[MAGIC.len() + 4..MAGIC.len() + 36]
                .try_into()
                .expect("32"),
        )),
        ..taken
    };
    storage.save_snapshot(&other, bytes.into()).expect("stored");
    let report = history.verify(State::new());
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        !report.snapshot_matches,
        "another layout cannot be compared"
    );
}

#[test]
fn a_record_written_before_the_layout_field_decodes() {
    // The version-1 record had exactly these four fields.
    #[derive(serde::Serialize)]
    struct OldRecord {
        v: u32,
        seq: u64,
        chain: fedrun::history::ChainHash,
        state: fedrun::blobs::BlobHash,
    }
    let old = OldRecord {
        v: 1,
        seq: 7,
        chain: fedrun::history::ChainHash([3; 32]),
        state: fedrun::blobs::BlobHash([4; 32]),
    };
    let bytes = rmp_serde::to_vec_named(&old).expect("encodes");
    let record = SnapshotRecord::decode(&bytes).expect("decodes");
    assert_eq!(record.layout, None);
    assert_eq!(record.seq, 7);
    assert!(record.usable_for::<State>().is_ok());
    let round = SnapshotRecord::decode(&record.encode()).expect("decodes");
    assert_eq!(round, record);
}

#[test]
fn hostile_snapshot_bytes_give_errors_not_panics() {
    let (_, _, state) = history_of(10);
    let bytes = snapshot::encode_state(&state).expect("encodes");
    // Every truncation of a real blob.
    for len in 0..bytes.len() {
        let result = snapshot::decode_state::<State>(&bytes[..len]);
        assert!(result.is_err(), "a blob cut to {len} bytes decoded");
        if len >= MAGIC.len() && len < HEADER_LEN {
            assert!(matches!(result, Err(SnapshotDecodeError::Truncated { .. })));
        }
    }
    // Flipped bytes in the payload: an error or some state, never a panic.
    for at in HEADER_LEN..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0xff;
        let _ = snapshot::decode_state::<State>(&bad);
    }
    // A huge declared array length after a valid header.
    let mut huge = bytes[..HEADER_LEN].to_vec();
    huge.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert!(snapshot::decode_state::<State>(&huge).is_err());
    // Text is named in the error.
    let err = snapshot::decode_state::<State>(&bytes[..HEADER_LEN - 1]).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");
}

/// Jobs of one submitter share one copy of the identity, in the replayed state and in a
/// state loaded from a snapshot (a state keeps a job per job ever submitted; a copy of
/// the name and organisation each would grow it by their bytes).
#[test]
fn jobs_of_one_submitter_share_one_identity_after_replay_and_after_a_load() {
    let (_, _, state) = history_of(20);
    let decoded: State =
        snapshot::decode_state(&snapshot::encode_state(&state).expect("encodes")).expect("decodes");
    for state in [&state, &decoded] {
        let submitters: Vec<_> = state.jobs.values().map(|j| j.submitter.clone()).collect();
        assert_eq!(submitters.len(), 10);
        assert_eq!(submitters[0].name, "bob");
        assert!(
            submitters
                .iter()
                .all(|s| std::sync::Arc::ptr_eq(s, &submitters[0])),
            "every job holds the same copy"
        );
    }
    assert_eq!(decoded, state);
}

/// A snapshot of thousands of jobs, whose jobs go straight into the job maps as they are
/// decoded and whose index is built after: the state it gives is the replayed one (index
/// included), its jobs share their submitter, and a blob cut short or damaged inside the
/// jobs gives an error, not a panic.
#[test]
fn a_large_snapshot_loads_to_the_same_state() {
    let (_, _, state) = history_of(2 * 5_000 + 1);
    assert_eq!(state.jobs.len(), 5_001);
    let bytes = snapshot::encode_state(&state).expect("encodes");
    let decoded: State = snapshot::decode_state(&bytes).expect("decodes");
    assert_eq!(decoded, state);
    assert_eq!(decoded.index(), state.index());
    // Start-up reads a state this large on two threads.
    assert!(state.jobs.len() >= snapshot::TWO_THREADS_FROM);
    let parallel =
        snapshot::decode_state_in_parts(&bytes, snapshot::TWO_THREADS_FROM).expect("in parts");
    assert_eq!(parallel, state);
    assert_eq!(parallel.index(), state.index());
    for decoded in [&decoded, &parallel] {
        let first = decoded
            .jobs
            .values()
            .next()
            .expect("a job")
            .submitter
            .clone();
        assert!(decoded
            .jobs
            .values()
            .all(|j| std::sync::Arc::ptr_eq(&j.submitter, &first)));
    }
    let named: State = snapshot::decode_state(&snapshot::encode_state_v1(&state).expect("encodes"))
        .expect("decodes");
    assert_eq!(named, state);
    // Cut in the middle of the jobs, and damaged there.
    for at in [bytes.len() / 2, bytes.len() * 3 / 4] {
        assert!(snapshot::decode_state::<State>(&bytes[..at]).is_err());
        same_on_two_threads(&bytes[..at], "cut in the jobs");
        let mut bad = bytes.clone();
        bad[at..at + 64].fill(0xc1); // 0xc1 is never used in MessagePack
        assert!(snapshot::decode_state::<State>(&bad).is_err());
        same_on_two_threads(&bad, "damaged in the jobs");
    }
}

/// Where the jobs' map starts in `state`'s snapshot blob: after the header, the state's
/// array marker and its 4 fields before the jobs, as long as a tuple of those 4 (whose
/// own array marker is one byte too).
fn jobs_map_at(state: &State) -> usize {
    let head = rmp_serde::to_vec(&(
        state.last_seq,
        state.last_at,
        state.boot_id,
        &state.recovery,
    ))
    .expect("encodes");
    HEADER_LEN + head.len()
}

/// `state`'s format-2 snapshot with `entries` as its jobs, in that order (a real
/// snapshot lists each job once, in id order).
fn with_jobs(state: &State, entries: &[(JobId, &fedrun::lifecycle::Job)]) -> Vec<u8> {
    struct Entries<'a>(&'a [(JobId, &'a fedrun::lifecycle::Job)]);
    impl serde::Serialize for Entries<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(id, job)| (id, *job)))
        }
    }
    struct Sites<'a>(&'a State);
    impl serde::Serialize for Sites<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.sites.iter().map(|(name, site)| (name, &**site)))
        }
    }
    let mut bytes = snapshot::encode_state(state).expect("encodes")[..HEADER_LEN].to_vec();
    let fields = (
        state.last_seq,
        state.last_at,
        state.boot_id,
        &state.recovery,
        Entries(entries),
        &state.queue,
        Sites(state),
        &state.schedule_try,
        &state.requests,
    );
    rmp_serde::encode::write(&mut bytes, &fields).expect("encodes");
    assert!(snapshot::append_jobs_index(&mut bytes), "a state's shape");
    bytes
}

/// Reading a snapshot on two threads gives what reading it in one piece gives, for the
/// bytes of a real snapshot and for any damage to them: the same state (its index
/// included), or an error for both.
fn same_on_two_threads(bytes: &[u8], what: &str) {
    let parallel = snapshot::decode_state_parallel(bytes, 0);
    let whole = snapshot::decode_state::<State>(bytes);
    match (&parallel, &whole) {
        (Ok(parallel), Ok(whole)) => {
            assert_eq!(parallel, whole, "{what}");
            assert_eq!(parallel.index(), whole.index(), "{what}");
        }
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{what}: two threads gave {:?}, one piece {:?}",
            parallel.map(|s| s.jobs.len()),
            whole.map(|s| s.jobs.len())
        ),
    }
}

#[test]
fn two_threads_read_what_one_piece_reads_whatever_the_bytes() {
    let (_, _, state) = history_of(20);
    let bytes = snapshot::encode_state(&state).expect("encodes");
    let parallel = snapshot::decode_state_parallel(&bytes, 0).expect("decodes");
    assert_eq!(parallel, state);
    assert_eq!(parallel.index(), state.index());
    for len in 0..bytes.len() {
        same_on_two_threads(&bytes[..len], &format!("cut to {len} bytes"));
    }
    for at in HEADER_LEN..bytes.len() {
        for flip in [0xff, 0x01, 0x10] {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            same_on_two_threads(&bad, &format!("byte {at} ^ {flip:#x}"));
        }
    }
    // Jobs out of order, and a job listed twice: a map keeps the last entry of an id.
    let entries: Vec<_> = state.jobs.iter().map(|(id, job)| (*id, &**job)).collect();
    assert_eq!(
        with_jobs(&state, &entries),
        bytes,
        "the helper writes a real snapshot"
    );
    let mut reversed = entries.clone();
    reversed.reverse();
    let mut twice = entries.clone();
    twice.insert(3, entries[7]);
    twice.push(entries[0]);
    // Listed twice with different entries: the first one is overwritten.
    let mut shadowed = entries.clone();
    shadowed.insert(0, (entries[0].0, entries[1].1));
    for (what, jobs) in [
        ("reversed", &reversed),
        ("listed twice", &twice),
        ("shadowed", &shadowed),
    ] {
        let odd = with_jobs(&state, jobs);
        same_on_two_threads(&odd, what);
        assert_eq!(
            snapshot::decode_state_parallel(&odd, 0).expect("decodes"),
            state,
            "{what}"
        );
    }
    // ... and the last one wins, whatever it holds.
    let mut overwritten = entries.clone();
    overwritten.push((entries[0].0, entries[1].1));
    let odd = with_jobs(&state, &overwritten);
    same_on_two_threads(&odd, "overwritten");
    let read = snapshot::decode_state::<State>(&odd).expect("decodes");
    assert_eq!(read.jobs.len(), state.jobs.len());
    assert_eq!(
        read.jobs.get(&entries[0].0).map(|job| &**job),
        Some(entries[1].1)
    );
}

/// Deploy, start and resource answers keep the JSON users see (the round trips of every
/// variant in every encoding are in `lifecycle_events`), and an answer whose detail does
/// not fit its kind, or that has too many parts, is refused in every encoding.
#[test]
fn answers_with_an_optional_detail_keep_their_json_and_refuse_odd_shapes() {
    use fedrun::lifecycle::{ResourceAnswer, StepResult};
    for (written, expected) in [
        (serde_json::to_string(&StepResult::Ok), r#"{"result":"ok"}"#),
        (
            serde_json::to_string(&StepResult::Error("x".into())),
            r#"{"result":"error","detail":"x"}"#,
        ),
        (
            serde_json::to_string(&ResourceAnswer::NoReply),
            r#"{"answer":"no_reply"}"#,
        ),
        (
            serde_json::to_string(&ResourceAnswer::Reserved("t".into())),
            r#"{"answer":"reserved","detail":"t"}"#,
        ),
    ] {
        assert_eq!(written.expect("encodes"), expected);
    }
    for odd in [
        r#"{"result":"error"}"#,
        r#"{"result":"ok","detail":"x"}"#,
        r#"{"result":"maybe"}"#,
        r#"{"detail":"x"}"#,
        r#"["ok","x"]"#,
        r#"["error","x","y"]"#,
        r#"[]"#,
        r#""ok""#,
    ] {
        assert!(serde_json::from_str::<StepResult>(odd).is_err(), "{odd}");
        let positional =
            rmp_serde::to_vec(&serde_json::from_str::<serde_json::Value>(odd).expect("json"))
                .expect("encodes");
        assert!(
            rmp_serde::from_slice::<StepResult>(&positional).is_err(),
            "{odd} as MessagePack"
        );
    }
    for odd in [
        r#"{"answer":"reserved"}"#,
        r#"{"answer":"no_reply","detail":"x"}"#,
        r#"["refused"]"#,
        r#"["no_reply","x"]"#,
    ] {
        assert!(
            serde_json::from_str::<ResourceAnswer>(odd).is_err(),
            "{odd}"
        );
    }
    // JSON can repeat a key (a JSON value cannot, so it is not tried as MessagePack).
    assert!(serde_json::from_str::<StepResult>(r#"{"result":"ok","result":"ok"}"#).is_err());
    // A field fedrun does not know is passed over, as the derived reading did.
    assert_eq!(
        serde_json::from_str::<StepResult>(r#"{"result":"ok","note":1}"#).expect("reads"),
        StepResult::Ok
    );
}

/// A jobs map that claims four billion entries in a few bytes is refused by both
/// readings, without reserving room for the entries it claims.
#[test]
fn a_jobs_map_claiming_billions_of_entries_is_refused() {
    let (_, _, state) = history_of(20);
    let empty = with_jobs(&state, &[]);
    let at = jobs_map_at(&state);
    assert_eq!(empty[at], 0x80, "an empty map where the jobs are");
    let mut claims = empty[..at].to_vec();
    claims.extend_from_slice(&[0xdf, 0xff, 0xff, 0xff, 0xff]);
    claims.extend_from_slice(&empty[at + 1..]);
    same_on_two_threads(&claims, "a map of 2^32 - 1 jobs");
    assert!(snapshot::decode_state_parallel(&claims, 0).is_err());
}

/// A kept requests map (the state's last field) that claims four billion entries in a
/// few bytes is refused by both readings, without reserving room for them.
#[test]
fn a_kept_requests_map_claiming_billions_of_entries_is_refused() {
    let (_, _, mut state) = history_of(20);
    state.requests = fedrun::lifecycle::state::KeptRequests::default();
    let bytes = snapshot::encode_state(&state).expect("encodes");
    let end = JobsIndex::of(&bytes).state_end;
    assert_eq!(
        bytes[end - 1],
        0x80,
        "an empty map where the kept requests are"
    );
    let mut claims = bytes[..end - 1].to_vec();
    claims.extend_from_slice(&[0xdf, 0xff, 0xff, 0xff, 0xff]);
    assert!(snapshot::append_jobs_index(&mut claims));
    same_on_two_threads(&claims, "a map of 2^32 - 1 kept requests");
    assert!(snapshot::decode_state_parallel(&claims, 0).is_err());
    assert!(snapshot::decode_state::<State>(&claims).is_err());
}

/// Every file of `src/lifecycle` and `src/job` that gives its types a serde form is
/// either covered by the snapshot's layout (so editing it changes the layout, and a
/// snapshot of the build before is replayed instead of read into the wrong fields) or
/// named here with why a snapshot never holds its types.
#[test]
fn the_layout_covers_every_file_whose_types_a_snapshot_holds() {
    const NEVER_IN_A_SNAPSHOT: &[(&str, &str)] = &[
        (
            "lifecycle/view.rs",
            "what list and show answer; written, never stored",
        ),
        ("job/limits.rs", "the settings' package limits"),
        ("job/runfile.rs", "the run file a site writes beside an app"),
    ];
    let covered: Vec<&str> = snapshot::layout_sources().map(|(name, _)| name).collect();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut unclassified = Vec::new();
    for dir in ["lifecycle", "job"] {
        for entry in std::fs::read_dir(src.join(dir)).expect("source folder") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source file");
            let name = format!(
                "{dir}/{}",
                path.file_name().expect("name").to_string_lossy()
            );
            let has_serde_form = text.contains("Serialize") || text.contains("Deserialize");
            if has_serde_form
                && !covered.contains(&name.as_str())
                && !NEVER_IN_A_SNAPSHOT.iter().any(|(never, _)| *never == name)
            {
                unclassified.push(name);
            }
        }
    }
    assert!(
        unclassified.is_empty(),
        "files with serde types neither in LAYOUT_SOURCES nor known to stay out of snapshots: {unclassified:?}"
    );
    for (never, _) in NEVER_IN_A_SNAPSHOT {
        assert!(
            src.join(never).exists(),
            "{never} is gone: drop it from the list"
        );
    }
}

/// `imbl`'s `Deserialize` reserves room for as many entries as the bytes claim, so a
/// snapshot claiming billions aborted the process; the state's `imbl` sets and maps are
/// read through `state::cautious` (or another reader of their own). Every field of an
/// `imbl` type in a struct of the layout's files that derives `Deserialize` must name
/// its reader.
#[test]
fn every_imbl_field_a_snapshot_reads_has_a_cautious_reader() {
    let mut careless = Vec::new();
    let mut checked = 0;
    for (file, text) in snapshot::layout_sources() {
        let lines: Vec<&str> = text.lines().collect();
        let mut reads = false;
        for (at, line) in lines.iter().enumerate() {
            if line.starts_with("pub struct ") || line.starts_with("struct ") {
                let attributes = || source_scan::attributes_above(&lines, at);
                // `#[serde(from = "...")]` reads another struct, whose fields count.
                reads = attributes()
                    .any(|l| l.starts_with("#[derive(") && l.contains("Deserialize"))
                    && !attributes().any(|l| l.contains("from = \""));
                continue;
            }
            if line.starts_with('}') {
                reads = false;
                continue;
            }
            let Some(field) = line.strip_prefix("    ") else {
                continue;
            };
            let field = field.strip_prefix("pub ").unwrap_or(field);
            let Some((_, ty)) = field.split_once(": ") else {
                continue;
            };
            let imbl = ["OrdSet<", "OrdMap<", "Vector<", "imbl::"]
                .iter()
                .any(|t| ty.contains(t));
            if !reads || !imbl || field.starts_with("//") {
                continue;
            }
            checked += 1;
            // `deserialize_with = "..."` or `with = "..."`.
            let own_reader =
                source_scan::attributes_above(&lines, at).any(|l| l.contains("with = "));
            if !own_reader {
                careless.push(format!("{file}:{}: {}", at + 1, line.trim()));
            }
        }
    }
    // The queue and a small map's entries; the jobs and the kept requests have readers
    // of their own (`loaded_jobs`, `KeptRequests`' `Deserialize`), checked by the
    // billions-of-entries tests above.
    assert!(checked >= 2, "the scan found only {checked} imbl fields");
    assert!(
        careless.is_empty(),
        "read with imbl's Deserialize (use state::cautious): {careless:?}"
    );
}

/// A state blob's jobs index as the module documentation lays it out, read here apart
/// from the code that writes and reads it.
#[derive(Clone, Debug)]
struct JobsIndex {
    /// Where the state's bytes end in the blob (and the index starts).
    state_end: usize,
    per_block: u32,
    /// Offsets from the state's first byte (the end of the header).
    offsets: Vec<u64>,
}

impl JobsIndex {
    fn of(blob: &[u8]) -> JobsIndex {
        let len = blob.len();
        assert_eq!(
            blob[len - 8..],
            snapshot::JOBS_INDEX_TAG,
            "the blob's last bytes"
        );
        let number = |at: usize| u32::from_le_bytes(blob[at..at + 4].try_into().expect("4"));
        let per_block = number(len - 16);
        let count = number(len - 12) as usize;
        let state_end = len - 16 - 8 * count;
        let offsets = blob[state_end..len - 16]
            .chunks(8)
            .map(|n| u64::from_le_bytes(n.try_into().expect("8")))
            .collect();
        JobsIndex {
            state_end,
            per_block,
            offsets,
        }
    }

    /// `blob` with this index in place of its own.
    fn put_into(&self, blob: &[u8]) -> Vec<u8> {
        let mut out = blob[..self.state_end].to_vec();
        for offset in &self.offsets {
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.extend_from_slice(&self.per_block.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        out.extend_from_slice(&snapshot::JOBS_INDEX_TAG);
        out
    }
}

/// The jobs index marks where every block of `JOBS_PER_BLOCK` jobs starts and where the
/// jobs end, as found from each job's own encoding; both encoders write the same one;
/// a truthful index is believed (the state is read in parts), one that lies about the
/// blocks is not (the state is read in one piece, and is still the state), and a blob
/// whose index is cut short does not decode.
#[test]
fn the_jobs_index_marks_each_block_of_jobs_and_a_lying_one_is_not_believed() {
    let (_, _, state) = history_of(2 * 1_300 + 1);
    let jobs: Vec<_> = state.jobs.iter().collect();
    assert_eq!(jobs.len(), 1_301);
    let bytes = snapshot::encode_state(&state).expect("encodes");
    let index = JobsIndex::of(&bytes);
    // Where each entry starts, from the entries' lengths, counted from the first.
    let first = index.offsets[0] as usize;
    assert_eq!(
        rmp_serde::from_slice::<JobId>(&bytes[HEADER_LEN + first..]).expect("an id"),
        *jobs[0].0,
        "the first offset is where the first job's id starts"
    );
    let mut starts = vec![first];
    for (id, job) in &jobs {
        let len = rmp_serde::to_vec(id).expect("id").len()
            + rmp_serde::to_vec(&***job).expect("job").len();
        starts.push(starts.last().expect("a start") + len);
    }
    let per_block = snapshot::JOBS_PER_BLOCK;
    assert_eq!(index.per_block as usize, per_block);
    let expected: Vec<u64> = (0..jobs.len())
        .step_by(per_block)
        .chain([jobs.len()])
        .map(|n| starts[n] as u64)
        .collect();
    assert_eq!(expected.len(), 1_301usize.div_ceil(per_block) + 1);
    assert_eq!(index.offsets, expected);
    // The encoder that copies unchanged jobs from its last encoding writes the same
    // index, for a first state and for a later one with more jobs.
    let mut encoder = snapshot::StateEncoder::default();
    let earlier = history_of(2 * 700 + 1).2;
    for state in [&earlier, &state] {
        let copied = encoder.encode(state).expect("encodes");
        let written = snapshot::encode_state(state).expect("encodes");
        assert!(copied[..] == written[..], "the two encoders differ");
    }

    // Whether the blob, which holds the state whatever its index says, is read in
    // parts (its index believed).
    let read = |blob: &[u8], what: &str| -> bool {
        same_on_two_threads(blob, what);
        let whole: State = snapshot::decode_state(blob).expect("decodes");
        assert_eq!(whole, state, "{what}");
        let parallel = snapshot::decode_state_parallel(blob, 0).expect("decodes");
        assert_eq!(parallel, state, "{what}");
        assert_eq!(parallel.index(), state.index(), "{what}");
        match snapshot::decode_state_in_parts(blob, 0) {
            Some(in_parts) => {
                assert_eq!(in_parts, state, "{what}");
                true
            }
            None => false,
        }
    };
    assert!(read(&bytes, "the index as written"));
    let entry_len = |n: usize| (starts[n + 1] - starts[n]) as u64;
    type Lie<'a> = Box<dyn Fn(&mut JobsIndex) + 'a>;
    let lies: Vec<(&str, Lie)> = vec![
        (
            "a block starting one job late",
            Box::new(|i| i.offsets[1] += entry_len(per_block)),
        ),
        (
            "a block starting one job early",
            Box::new(|i| i.offsets[1] -= entry_len(per_block - 1)),
        ),
        (
            "the jobs ending a byte early",
            Box::new(|i| *i.offsets.last_mut().expect("end") -= 1),
        ),
        ("two blocks swapped", Box::new(|i| i.offsets.swap(1, 2))),
        ("a block fewer", Box::new(|i| i.per_block += 1)),
        ("a block more", Box::new(|i| i.per_block -= 1)),
        ("no block size", Box::new(|i| i.per_block = 0)),
        ("an offset more", Box::new(|i| i.offsets.push(u64::MAX))),
        ("every block at once", Box::new(|i| i.offsets[1..].fill(0))),
    ];
    for (what, lie) in lies {
        let mut lying = index.clone();
        lie(&mut lying);
        assert!(!read(&lying.put_into(&bytes), what), "{what} believed");
    }
    // Blocks of another size, truthfully marked, read the same.
    let halves = JobsIndex {
        offsets: (0..jobs.len())
            .step_by(per_block / 2)
            .chain([jobs.len()])
            .map(|n| starts[n] as u64)
            .collect(),
        per_block: (per_block / 2) as u32,
        ..index.clone()
    };
    assert!(read(&halves.put_into(&bytes), "blocks half the size"));
    // An entry hidden inside the first block, which the map's count leaves out: read
    // in one piece, the jobs end one entry early and what follows is not the fields
    // after them, so the bytes do not decode; the blocks the index marks would each
    // read their count of jobs (the first leaving the hidden entry unread) and give
    // the state, but a block that leaves bytes unread is not believed.
    let mut hiding: Vec<_> = jobs.iter().map(|(id, job)| (**id, &***job)).collect();
    hiding.insert(per_block, hiding[0]);
    let mut hidden = with_jobs(&state, &hiding);
    let map = jobs_map_at(&state);
    assert_eq!(hidden[map..map + 3], [0xde, 0x05, 0x16], "a map of 1,302");
    hidden[map + 2] = 0x15;
    let mut written = JobsIndex::of(&hidden);
    let entry = |n: usize| written.offsets[0] + (starts[n] - starts[0]) as u64;
    let hidden_len = entry_len(0);
    written.offsets = vec![
        written.offsets[0],
        entry(per_block) + hidden_len,
        entry(2 * per_block) + hidden_len,
        entry(jobs.len()) + hidden_len,
    ];
    let hidden = written.put_into(&hidden);
    assert!(snapshot::decode_state::<State>(&hidden).is_err());
    assert!(snapshot::decode_state_in_parts(&hidden, 0).is_none());
    same_on_two_threads(&hidden, "an entry hidden in a block");
    // An index cut short, or none.
    for cut in [&bytes[..bytes.len() - 1], &bytes[..index.state_end]] {
        assert!(matches!(
            snapshot::decode_state::<State>(cut),
            Err(SnapshotDecodeError::NoJobsIndex)
        ));
        same_on_two_threads(cut, "the index cut");
    }
}
