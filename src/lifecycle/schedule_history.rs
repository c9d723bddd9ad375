//! A job's `schedule_history`: one entry per schedule try (SPEC section 7), kept as the
//! time and the outcome's text; the line `show` prints (`<time> try <n>: <outcome>`) is
//! made when it is shown.
//!
//! A job tried again and again mostly gets the same outcome (`no resources: connected
//! sites (1) < min_clients (2)` until a site comes), so a try whose outcome is the last
//! try's shares its text: a queued job of three such tries holds one text, not three
//! lines with the time and try number written into each (a quarter of a million queued
//! jobs: 337 bytes each for the lines, 100 for the tries). Reading a stored history shares
//! the texts the same way.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

use super::time::Timestamp;

/// One schedule try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Try {
    /// When the try ended.
    pub at: Timestamp,
    /// What came of it, with its reason and numbers (`dispatched to site-1, site-2`,
    /// `no resources: ...`).
    pub outcome: Arc<str>,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleHistory(ThinVec<Try>);

impl ScheduleHistory {
    /// No tries.
    pub fn new() -> Self {
        ScheduleHistory::default()
    }

    /// How many tries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True before the first try.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tries, oldest first.
    pub fn tries(&self) -> &[Try] {
        &self.0
    }

    /// Records a try that ended at `at` with `outcome`.
    pub fn push(&mut self, at: Timestamp, outcome: &str) {
        let outcome = self.shared(outcome);
        self.0.push(Try { at, outcome });
    }

    /// The lines `show` prints, oldest first: `<time> try <n>: <outcome>`.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = String> + '_ {
        self.0
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{} try {}: {}", t.at, i + 1, t.outcome))
    }

    /// Gives back the room a push left to grow in (a settled job's tries are final).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    /// `outcome` as a shared text: the last try's when it is the same.
    fn shared(&self, outcome: &str) -> Arc<str> {
        match self.0.last() {
            Some(last) if *last.outcome == *outcome => last.outcome.clone(),
            _ => Arc::from(outcome),
        }
    }
}

impl Serialize for ScheduleHistory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

/// A try as stored, its outcome read in place where the bytes allow.
#[derive(Deserialize)]
struct StoredTry<'a> {
    at: Timestamp,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
}

impl<'de> Deserialize<'de> for ScheduleHistory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Tries;
        impl<'de> Visitor<'de> for Tries {
            type Value = ScheduleHistory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of schedule tries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Room for what the header claims only up to a bound: a hostile header
                // claims four billion tries in five bytes.
                let mut history =
                    ScheduleHistory(ThinVec::with_capacity(seq.size_hint().unwrap_or(0).min(64)));
                while let Some(stored) = seq.next_element::<StoredTry<'de>>()? {
                    history.push(stored.at, &stored.outcome);
                }
                Ok(history)
            }
        }
        deserializer.deserialize_seq(Tries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn history_of(tries: &[(i64, u8)]) -> ScheduleHistory {
        let mut history = ScheduleHistory::new();
        for (at, outcome) in tries {
            history.push(Timestamp::from_millis(*at), &format!("outcome {outcome}"));
        }
        history
    }

    proptest! {
        /// The lines are the time, the try's number from 1 and the outcome; the history
        /// reads back the same (its texts shared again) from positional and named
        /// MessagePack and from JSON.
        #[test]
        fn lines_and_stored_forms(
            tries in proptest::collection::vec((0i64..2_000_000_000_000, 0u8..3), 0..12),
        ) {
            let history = history_of(&tries);
            let lines: Vec<String> = history.lines().collect();
            let expected: Vec<String> = tries
                .iter()
                .enumerate()
                .map(|(i, (at, outcome))| {
                    format!("{} try {}: outcome {outcome}", Timestamp::from_millis(*at), i + 1)
                })
                .collect();
            prop_assert_eq!(lines, expected);
            let packed = rmp_serde::to_vec(&history).unwrap();
            let named = rmp_serde::to_vec_named(&history).unwrap();
            let json = serde_json::to_string(&history).unwrap();
            for back in [
                rmp_serde::from_slice::<ScheduleHistory>(&packed).unwrap(),
                rmp_serde::from_slice::<ScheduleHistory>(&named).unwrap(),
                serde_json::from_str::<ScheduleHistory>(&json).unwrap(),
            ] {
                prop_assert_eq!(&back, &history);
                for (a, b) in back.tries().iter().zip(back.tries().iter().skip(1)) {
                    prop_assert_eq!(Arc::ptr_eq(&a.outcome, &b.outcome), a.outcome == b.outcome);
                }
            }
        }
    }

    #[test]
    fn a_repeated_outcome_shares_the_last_text_and_no_other() {
        let history = history_of(&[(1, 0), (2, 0), (3, 1), (4, 0)]);
        let t = history.tries();
        assert!(Arc::ptr_eq(&t[0].outcome, &t[1].outcome));
        assert!(
            !Arc::ptr_eq(&t[1].outcome, &t[3].outcome),
            "only the last try's text"
        );
        // Four tries, two texts: the first shared by two tries and this history.
        assert_eq!(Arc::strong_count(&t[0].outcome), 2);
        assert_eq!(Arc::strong_count(&t[3].outcome), 1);
    }

    #[test]
    fn a_hostile_length_reserves_no_more_than_the_bytes_hold() {
        // An array header claiming 2^32 - 1 tries, then nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(rmp_serde::from_slice::<ScheduleHistory>(&bytes).is_err());
        let err = serde_json::from_str::<ScheduleHistory>(r#"[{"at": 1}]"#).unwrap_err();
        assert!(err.to_string().contains("outcome"), "{err}");
    }
}
