//! The history of fedrun's own events: the lifecycle core's [`Event`] stored, and its
//! [`State`] rebuilt, by the generic history; plus the two ways a person or a tool reads
//! an event (one line of text, one line of JSON).

use serde_json::{Map, Value};

use std::collections::BTreeMap;

use super::record::RecordEvent;
use super::{Fold, Sequenced};
use crate::blobs::reference_counts;
use crate::lifecycle::{Archive, BlobHash, Event, Job, State};

/// The history fedrun's server keeps.
pub type EventHistory = super::History<Event>;

impl Sequenced for Event {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Version-2 records hold an event in the layout of [`super::wire`]: externally tagged,
/// positional, decoded in one pass without serde's buffering of tagged enums.
impl RecordEvent for Event {
    fn encode_v2(&self, out: &mut Vec<u8>) -> Result<(), rmp_serde::encode::Error> {
        rmp_serde::encode::write(out, &super::wire::WireEvent::of(self))
    }

    fn decode_v2(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        super::record::from_slice_exact::<super::wire::WireEvent<'static>>(
            bytes,
            super::record::MAX_RECORD_DEPTH,
        )
        .map(super::wire::WireEvent::into_event)
    }
}

impl Fold<Event> for State {
    type Error = crate::lifecycle::ReplayError;
    fn apply_checked(&mut self, event: &Event) -> Result<(), Self::Error> {
        // The inherent method checks order, time and transition the way `decide` does.
        State::apply_checked(self, event)
    }
    fn apply_owned(&mut self, event: Event) -> Result<(), Self::Error> {
        State::apply_owned(self, event)
    }
    fn replay_begins(&mut self) {
        State::begin_replay(self);
    }
    fn replay_ends(&mut self) {
        self.end_replay_with(super::snapshot::index_of);
    }
    fn decode_snapshot(bytes: &[u8]) -> Result<State, super::snapshot::SnapshotDecodeError> {
        // A large state's jobs are decoded on two threads.
        super::snapshot::decode_state_parallel(bytes, super::snapshot::TWO_THREADS_FROM)
    }
}

/// One event as a JSON object on one line (no newline): `seq`, `at` (ISO-8601 UTC),
/// `at_ms`, `actor`, `request_id`, `boot_id`, `job_id` (or null), `type` (the event's
/// name), and `kind` (the event's own fields, with its `type` tag). This is what
/// `fedrun history --json` prints, and what the simulator embeds in its `events`.
///
/// Encoding a JSON value into a string does not fail today; the `Result` leaves room for
/// a field that might one day refuse to encode, without changing callers.
pub fn event_json_line(event: &Event) -> Result<String, serde_json::Error> {
    let mut object = Map::new();
    object.insert("seq".into(), Value::from(event.seq));
    object.insert("at".into(), Value::from(event.at.to_iso8601()));
    object.insert("at_ms".into(), Value::from(event.at.as_millis()));
    object.insert("actor".into(), to_value(&event.actor));
    object.insert("request_id".into(), to_value(&event.request_id));
    object.insert("boot_id".into(), Value::from(event.boot_id.to_string()));
    object.insert(
        "job_id".into(),
        event
            .kind
            .job_id()
            .map_or(Value::Null, |id| Value::from(id.to_string())),
    );
    object.insert("type".into(), Value::from(event.kind.name()));
    object.insert("kind".into(), to_value(&event.kind));
    serde_json::to_string(&Value::Object(object))
}

/// One event as a line a person reads: sequence number, time, actor, event name, job,
/// and the event's other fields as `key=value`.
pub fn event_text(event: &Event) -> String {
    let mut line = format!(
        "{:>6}  {}  {:<28}  {}",
        event.seq,
        event.at.to_iso8601(),
        event.actor.to_string(),
        event.kind.name()
    );
    if let Some(job_id) = event.kind.job_id() {
        line.push_str(&format!("  job={job_id}"));
    }
    if let Value::Object(fields) = to_value(&event.kind) {
        for (key, value) in fields {
            if key == "type" || key == "job_id" {
                continue;
            }
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            line.push_str(&format!("  {key}={}", printable(&text)));
        }
    }
    if let Some(request_id) = &event.request_id {
        line.push_str(&format!("  request={}", printable(request_id)));
    }
    line
}

/// Escapes control characters (newlines, terminal escape sequences a site may have sent)
/// so one event stays one harmless line.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The blobs the history still needs, with how many holders each has: the package and
/// workspace archive of every live (not deleted) job (a clone shares its source's
/// package, so that package counts twice), and the state of the current snapshot. A
/// stored blob absent from this map may be swept ([`crate::blobs::BlobStore::sweep`]).
pub fn referenced_blobs(
    state: &State,
    snapshot: Option<&super::SnapshotRecord>,
) -> BTreeMap<BlobHash, usize> {
    let live: Vec<&Job> = state
        .jobs
        .values()
        .filter(|job| !job.deleted)
        .map(|job| &**job)
        .collect();
    let packages = live.iter().map(|job| &job.package);
    let archives = live.iter().filter_map(|job| match &job.archive {
        Archive::Archived { hash } => Some(hash),
        _ => None,
    });
    let snapshots = snapshot.map(|record| &record.state);
    reference_counts(packages.chain(archives).chain(snapshots))
}

/// The full audit of a data folder: [`super::History::verify`] (chain, transitions,
/// anchor, snapshot), and then, when the records replay, that every blob the final state
/// still needs is in `blobs` and hashes to its name.
pub fn audit(history: &EventHistory, blobs: &crate::blobs::BlobStore) -> super::VerifyReport {
    let mut report = history.verify(State::new());
    if !report.is_ok() {
        return report;
    }
    let state = match history.replay(State::new()) {
        Ok(state) => state,
        Err(err) => {
            report.problems.push(super::Problem {
                seq: Some(err.first_bad_seq()),
                message: err.to_string(),
            });
            return report;
        }
    };
    let snapshot = match history.snapshot_record() {
        Ok(snapshot) => snapshot,
        Err(err) => {
            report.problems.push(super::Problem {
                seq: None,
                message: format!("the snapshot record cannot be read: {err}"),
            });
            None
        }
    };
    for hash in referenced_blobs(&state, snapshot.as_ref()).keys() {
        match blobs.get(hash) {
            Ok(_) => report.blobs_checked += 1,
            Err(err) => report.problems.push(super::Problem {
                seq: None,
                message: err.to_string(),
            }),
        }
    }
    report
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // The core's types serialize to JSON without error: string map keys, no
    // non-serializable fields. A NaN resource amount becomes null rather than failing.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The check of the `history_record` fuzz target, for fedrun's events.
pub fn fuzz_history_record(bytes: &[u8]) {
    super::record::fuzz_check_record::<Event>(bytes);
}

/// The check of the `event_decode` fuzz target: decoding arbitrary bytes as an event
/// never panics; a decoded event survives a MessagePack round trip, and both of its
/// printed forms are single lines.
pub fn fuzz_event_decode(bytes: &[u8]) {
    super::record::fuzz_check_event::<Event>(bytes);
    // The in-place reading of a version-2 event agrees with the io::Read reader it
    // replaced: the same event (compared as bytes, so a NaN is no false alarm), or an
    // error from both, with the same count of left-over bytes.
    let depth = super::record::MAX_RECORD_DEPTH;
    let in_place = super::record::from_slice_exact::<super::wire::WireEvent<'static>>(bytes, depth);
    let by_reader =
        super::record::from_slice_exact_by_reader::<super::wire::WireEvent<'static>>(bytes, depth);
    match (in_place, by_reader) {
        (Ok(a), Ok(b)) => {
            let bytes_of = |wire: super::wire::WireEvent<'static>| {
                let mut out = Vec::new();
                wire.into_event()
                    .encode_v2(&mut out)
                    .map(|()| out)
                    .map_err(|e| e.to_string())
            };
            assert_eq!(
                bytes_of(a),
                bytes_of(b),
                "the two readings decoded different events"
            );
        }
        (Err(a), Err(b)) => {
            let left = |e: &rmp_serde::decode::Error| {
                let text = e.to_string();
                text.contains("left over").then_some(text)
            };
            assert_eq!(
                left(&a),
                left(&b),
                "the readings disagree on what is left over"
            );
        }
        (a, b) => panic!(
            "one reading decoded, the other did not: in place {:?}, by reader {:?}",
            a.err().map(|e| e.to_string()),
            b.err().map(|e| e.to_string())
        ),
    }
    if let Ok(event) =
        super::record::from_slice_limited::<Event>(bytes, super::record::MAX_RECORD_DEPTH)
    {
        let line = event_json_line(&event).expect("an event's JSON value encodes");
        assert!(!line.contains('\n'), "a JSON line holds no newline");
        let _ = event_text(&event);
    }
}
