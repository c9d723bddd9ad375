//! Record format version 2: the binary layout round-trips every event, keeps its header
//! readable without the event, refuses hostile bytes with clear errors, and a history
//! written by version 1 and extended by this version replays, verifies and finds
//! tampering in either part. The database records that it needs a version-2 reader once
//! it holds version-2 records.
mod history_support;

use std::path::{Path, PathBuf};

use fedrun::history::events::EventHistory;
use fedrun::history::record::{self, DecodeError, RecordEvent};
use fedrun::history::{ChainHash, History, OpenError, ReplayError, GENESIS_HASH};
use fedrun::lifecycle::{Event, State};
use history_support::lifecycle::sample_history;
use history_support::{steps, Step, Steps};

fn read_u32(meta: &sled::Tree, key: &str) -> Option<u32> {
    meta.get(key)
        .unwrap()
        .map(|bytes| u32::from_be_bytes(<[u8; 4]>::try_from(bytes.as_ref()).unwrap()))
}

/// The format and minimum reader versions the database in `dir` records.
fn versions(dir: &Path) -> (Option<u32>, Option<u32>) {
    let db = history_support::raw_sled(dir);
    let meta = db.open_tree("meta").unwrap();
    (
        read_u32(&meta, "format_version"),
        read_u32(&meta, "min_reader_version"),
    )
}

/// The raw bytes of every record in `dir`, in key order.
fn raw_records(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let db = history_support::raw_sled(dir);
    let events = db.open_tree("events").unwrap();
    events
        .iter()
        .map(|item| {
            let (key, value) = item.unwrap();
            (record::key_seq(&key).unwrap(), value.to_vec())
        })
        .collect()
}

/// Builds, in `dir`, the history an older fedrun left: `events` as version-1 records, and
/// a database that says format 1, reader 1. The records go through the store (so the
/// anchor names them), then the version keys are set back to what version 1 wrote.
fn version_1_history(dir: &Path, events: &[Event]) {
    {
        use fedrun::history::{SledOptions, SledStorage, Storage};
        let mut storage = SledStorage::open(dir, SledOptions::default()).unwrap();
        let mut prev = GENESIS_HASH;
        let mut records = Vec::new();
        for event in events {
            let bytes = record::encode_v1(event.seq, prev, event).unwrap();
            prev = ChainHash::of(&bytes);
            records.push((event.seq, bytes));
        }
        let head = storage
            .append(fedrun::history::Head::EMPTY, &records)
            .unwrap();
        storage.settle_anchor(head).unwrap();
    }
    let db = history_support::raw_sled(dir);
    let meta = db.open_tree("meta").unwrap();
    meta.insert("format_version", &1u32.to_be_bytes()).unwrap();
    meta.insert("min_reader_version", &1u32.to_be_bytes())
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn a_version_2_record_round_trips_and_its_header_needs_no_event() {
    let events = sample_history(5);
    let mut prev = GENESIS_HASH;
    for event in &events {
        let bytes = record::encode(event.seq, prev, event).unwrap();
        assert_eq!(
            &bytes[..2],
            &[record::BINARY_MARKER, 2],
            "seq {}",
            event.seq
        );
        assert_eq!(&bytes[2..10], &event.seq.to_be_bytes());
        assert_eq!(&bytes[10..42], &prev.0, "the link is 32 raw bytes");
        let v1 = record::encode_v1(event.seq, prev, event).unwrap();
        assert!(
            bytes.len() < v1.len(),
            "seq {}: version 2 takes {} bytes, version 1 {}",
            event.seq,
            bytes.len(),
            v1.len()
        );
        let decoded = record::decode::<Event>(&bytes).unwrap();
        assert_eq!((decoded.v, decoded.seq, decoded.prev), (2, event.seq, prev));
        assert_eq!(&decoded.event, event);
        // The header is read from the first 42 bytes alone: the event may be anything.
        let mut broken_event = bytes[..record::V2_HEADER_BYTES].to_vec();
        broken_event.extend_from_slice(&[0xff, 0x00, 0x13]);
        let header = record::decode_header(&broken_event).unwrap();
        assert_eq!((header.v, header.seq, header.prev), (2, event.seq, prev));
        assert!(record::decode::<Event>(&broken_event).is_err());
        prev = ChainHash::of(&bytes);
    }
}

#[test]
fn the_json_users_see_is_the_same_for_an_event_read_from_a_version_2_record() {
    let events = sample_history(3);
    let mut prev = GENESIS_HASH;
    for event in &events {
        let bytes = record::encode(event.seq, prev, event).unwrap();
        let decoded = record::decode::<Event>(&bytes).unwrap().event;
        assert_eq!(
            fedrun::history::event_json_line(&decoded).unwrap(),
            fedrun::history::event_json_line(event).unwrap()
        );
        prev = ChainHash::of(&bytes);
    }
}

#[test]
fn hostile_version_2_bytes_get_clear_errors() {
    let event = &sample_history(1)[0];
    let good = record::encode(1, GENESIS_HASH, event).unwrap();

    // A version this build does not read.
    let mut future = good.clone();
    future[1] = 3;
    let err = record::decode_header(&future).unwrap_err();
    assert!(matches!(err, DecodeError::TooNew { found: 3 }), "{err}");
    assert!(err.to_string().contains("format version 3"), "{err}");

    // A binary record claiming version 1, which never used this layout.
    let mut old = good.clone();
    old[1] = 1;
    let err = record::decode_header(&old).unwrap_err();
    assert!(
        err.to_string()
            .contains("format version 1 does not use the binary layout"),
        "{err}"
    );

    // Cut inside the header, and just after it.
    for cut in [1, 2, 20, record::V2_HEADER_BYTES - 1] {
        let err = record::decode_header(&good[..cut]).unwrap_err();
        assert!(
            err.to_string().contains("ends inside its"),
            "cut at {cut}: {err}"
        );
    }
    let err = record::decode::<Event>(&good[..record::V2_HEADER_BYTES]).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err}");

    // Bytes after the event: a whole value, a reserved marker, the start of a string.
    for (tail, left) in [
        (&[0u8][..], 1),
        (&[0xc1][..], 1),
        (&[0xd9, 40, b'a'][..], 3),
        (&[0x92, 1, 2, 3][..], 4),
        // Nested arrays cut short: reading them would meet the end inside them.
        (&[0x9b; 48][..], 48),
        (&[0x91][..], 1),
    ] {
        let mut longer = good.clone();
        longer.extend_from_slice(tail);
        let err = record::decode::<Event>(&longer).unwrap_err();
        assert!(
            err.to_string().contains(&format!("{left} bytes left over")),
            "{tail:x?}: {err}"
        );
    }

    // A status number that names no status, in a JobFinished.
    let finished = sample_history(1).pop().unwrap();
    let mut event_bytes = Vec::new();
    finished.encode_v2(&mut event_bytes).unwrap();
    let status_at = event_bytes
        .windows(b"aborted by".len())
        .position(|w| w == b"aborted by")
        .expect("the reason is in the bytes")
        // The status number, then the reason's one-byte marker (a str of 30 bytes).
        - 2;
    assert_eq!(event_bytes[status_at], 4, "FINISHED:ABORTED is status 4");
    event_bytes[status_at] = 99;
    let err = Event::decode_v2(&event_bytes).unwrap_err();
    assert!(
        err.to_string().contains("status number 99 is not a status"),
        "{err}"
    );
}

#[test]
fn a_version_1_history_extended_by_version_2_replays_verifies_and_needs_a_new_reader() {
    let dir = tempfile::tempdir().unwrap();
    let events = sample_history(4);
    let (old, new) = events.split_at(5);
    version_1_history(dir.path(), old);
    assert_eq!(versions(dir.path()), (Some(1), Some(1)));

    // A reader's private copy reads it and changes nothing.
    {
        let reader = EventHistory::open_read_only(dir.path()).unwrap();
        let state = reader.replay(State::new()).unwrap();
        assert_eq!(state.jobs.len(), 3);
    }
    assert_eq!(versions(dir.path()), (Some(1), Some(1)));

    // The writer raises the database's versions before it appends.
    let mut history = EventHistory::open(dir.path()).unwrap();
    history.append_batch(new).unwrap();
    history.close().unwrap();
    assert_eq!(
        versions(dir.path()),
        (
            Some(record::FORMAT_VERSION),
            Some(record::MIN_READER_VERSION)
        )
    );
    assert_eq!(
        record::MIN_READER_VERSION,
        2,
        "a version-1 reader is refused"
    );

    // On disk: version-1 records, then version-2 records, chained across the seam.
    let raw = raw_records(dir.path());
    assert_eq!(raw.len(), events.len());
    let mut prev = GENESIS_HASH;
    for (seq, bytes) in &raw {
        let header = record::decode_header(bytes).unwrap();
        let expected_v = if *seq <= old.len() as u64 { 1 } else { 2 };
        assert_eq!(header.v, expected_v, "record {seq}");
        assert_eq!(header.prev, prev, "record {seq} links to the one before");
        prev = ChainHash::of(bytes);
    }

    let history = EventHistory::open(dir.path()).unwrap();
    let replayed: Vec<Event> = history
        .records_from(1)
        .map(|record| record.unwrap().event)
        .collect();
    assert_eq!(replayed, events);
    let state = history.replay(State::new()).unwrap();
    let mut expected = State::new();
    for event in &events {
        expected.apply_checked(event).unwrap();
    }
    assert_eq!(
        fedrun::history::snapshot::encode_state(&state).unwrap(),
        fedrun::history::snapshot::encode_state(&expected).unwrap()
    );
    let report = history.verify(State::new());
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_ok, events.len() as u64);
}

/// A closed mixed history (version 1 up to record 5, version 2 after) in a new folder.
fn mixed_history() -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let events = sample_history(4);
    let (old, new) = events.split_at(5);
    version_1_history(dir.path(), old);
    let mut history = EventHistory::open(dir.path()).unwrap();
    history.append_batch(new).unwrap();
    history.close().unwrap();
    (dir, events.len())
}

/// Runs `edit` on the raw records of a mixed history, then replays and audits it.
fn after_edit(edit: impl FnOnce(&sled::Tree)) -> (ReplayError, fedrun::history::VerifyReport) {
    let (dir, _) = mixed_history();
    {
        let db = history_support::raw_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        edit(&events);
        db.flush().unwrap();
    }
    let history = EventHistory::open_for_audit(dir.path()).unwrap();
    let err = history.replay(State::new()).unwrap_err();
    let report = history.verify(State::new());
    (err, report)
}

#[test]
fn a_changed_byte_in_a_version_2_event_is_found() {
    // Record 6 is version 2; one byte of its event changes (the job name's last digit).
    let (err, report) = after_edit(|events| {
        let mut bytes = events.get(record::seq_key(6)).unwrap().unwrap().to_vec();
        assert_eq!(bytes[0], record::BINARY_MARKER);
        let at = bytes
            .windows(5)
            .position(|w| w == b"job-4")
            .expect("record 6 submits job 4");
        bytes[at + 4] = b'9';
        events.insert(record::seq_key(6), bytes).unwrap();
    });
    assert!(
        matches!(
            err,
            ReplayError::BrokenLink {
                seq: 7,
                prev_seq: 6,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.first_bad_seq(), 6);
    assert_eq!(report.first_bad_seq(), Some(6), "{report:?}");
}

#[test]
fn a_changed_link_of_a_version_2_record_is_found() {
    let (err, report) = after_edit(|events| {
        let mut bytes = events.get(record::seq_key(6)).unwrap().unwrap().to_vec();
        bytes[10] ^= 0x01;
        events.insert(record::seq_key(6), bytes).unwrap();
    });
    assert!(
        matches!(
            err,
            ReplayError::BrokenLink {
                seq: 6,
                prev_seq: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(report.first_bad_seq(), Some(5), "{report:?}");
}

#[test]
fn a_truncated_version_2_record_is_found() {
    let (err, report) = after_edit(|events| {
        let bytes = events.get(record::seq_key(8)).unwrap().unwrap().to_vec();
        events
            .insert(record::seq_key(8), &bytes[..bytes.len() / 2])
            .unwrap();
    });
    // The header still links; the event does not decode.
    assert!(matches!(err, ReplayError::Decode { seq: 8, .. }), "{err}");
    assert_eq!(report.first_bad_seq(), Some(8), "{report:?}");
}

#[test]
fn a_record_moved_under_another_key_is_found_from_its_header() {
    let (err, _) = after_edit(|events| {
        let bytes = events.get(record::seq_key(9)).unwrap().unwrap();
        events.insert(record::seq_key(10), bytes).unwrap();
    });
    assert!(
        matches!(err, ReplayError::Misplaced { seq: 10, found: 9 }),
        "{err}"
    );
}

#[test]
fn a_new_database_says_it_needs_a_version_2_reader() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::<Step>::open(dir.path()).unwrap();
    history.append_batch(&steps(1, 3)).unwrap();
    history.close().unwrap();
    assert_eq!(versions(dir.path()), (Some(2), Some(2)));
    for (_, bytes) in raw_records(dir.path()) {
        assert_eq!(bytes[..2], [record::BINARY_MARKER, 2]);
    }
    let history = History::<Step>::open(dir.path()).unwrap();
    assert_eq!(
        history.replay(Steps::default()).unwrap().jobs.len(),
        3,
        "the default version-2 layout of a plain event type replays"
    );
}

#[test]
fn a_database_needing_reader_3_is_refused_by_this_reader() {
    let dir = tempfile::tempdir().unwrap();
    History::<Step>::open(dir.path()).unwrap().close().unwrap();
    {
        let db = history_support::raw_sled(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format_version", &3u32.to_be_bytes()).unwrap();
        meta.insert("min_reader_version", &3u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = History::<Step>::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::TooNew {
                format: 3,
                min_reader: 3,
                reader: 2,
                ..
            }
        ),
        "{err}"
    );
    // Refused before anything changed.
    assert_eq!(versions(dir.path()), (Some(3), Some(3)));
}

/// The committed version-2 records: `sample_history(1)` as format version 2 writes it.
const V2_FIXTURES: [&str; 4] = [
    "v2-000001-server-started.bin",
    "v2-000002-site-connected.bin",
    "v2-000003-job-submitted.bin",
    "v2-000004-job-finished.bin",
];

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/history")
        .join(name)
}

/// Today's encoder writes exactly the committed version-2 bytes, and they decode, chain
/// and replay. Run with `FEDRUN_WRITE_FIXTURE=1` once, when the fixture is first made; the
/// files are committed and never rewritten by later versions.
#[test]
fn todays_encoder_writes_exactly_the_committed_version_2_bytes() {
    let events = sample_history(1);
    let write = std::env::var_os("FEDRUN_WRITE_FIXTURE").is_some();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut prev = GENESIS_HASH;
    let mut state = State::new();
    for (index, (event, name)) in events.iter().zip(V2_FIXTURES).enumerate() {
        let bytes = record::encode(event.seq, prev, event).unwrap();
        if write {
            std::fs::write(fixture_path(name), &bytes).unwrap();
            std::fs::write(corpus.join("history_record").join(name), &bytes).unwrap();
            let mut event_bytes = Vec::new();
            event.encode_v2(&mut event_bytes).unwrap();
            std::fs::write(corpus.join("event_decode").join(name), event_bytes).unwrap();
        }
        let committed = std::fs::read(fixture_path(name)).unwrap();
        assert_eq!(
            bytes, committed,
            "{name}: today's encoder no longer writes the version-2 bytes; keep these files \
             (every version must read them) and pin a new version's bytes beside them"
        );
        let seq = index as u64 + 1;
        let (record, hash) =
            fedrun::history::check_record::<Event>(seq, prev, seq, &committed).unwrap();
        assert_eq!(record.v, 2);
        assert_eq!(&record.event, event);
        state.apply_checked(&record.event).unwrap();
        prev = hash;
    }
    assert_eq!(events.len(), V2_FIXTURES.len());
}
