//! Time in the core: UTC milliseconds since the epoch, handed in as `now`, never read.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: UTC milliseconds since 1970-01-01T00:00:00Z. Serialized as an integer.
///
/// The core never reads a clock; every `Timestamp` comes from an input (`now`) or from the
/// history.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down), as `meta.json`'s `submit_time` shows it.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time plus a duration, saturating instead of overflowing.
    pub fn plus(self, duration: Duration) -> Timestamp {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// ISO-8601 in UTC with milliseconds, e.g. `2000-01-01T00:00:12.500Z`.
    pub fn to_iso8601(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timestamp {
    /// Written straight into the formatter (the fold writes one into every schedule
    /// line it keeps).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            // Outside the calendar range `time` supports; the raw number is still exact.
            Err(_) => write!(f, "@{}ms", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_of_known_instants() {
        assert_eq!(Timestamp(0).to_iso8601(), "1970-01-01T00:00:00.000Z");
        // 2000-01-01T00:00:00Z is 946684800 seconds after the epoch.
        assert_eq!(
            Timestamp(946_684_800_000 + 12_500).to_iso8601(),
            "2000-01-01T00:00:12.500Z"
        );
        assert_eq!(Timestamp(i64::MAX).to_iso8601(), format!("@{}ms", i64::MAX));
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp(5).plus(Duration::from_millis(7)), Timestamp(12));
        assert_eq!(
            Timestamp(i64::MAX).plus(Duration::from_secs(1)),
            Timestamp(i64::MAX)
        );
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
        assert_eq!(Timestamp(-1).as_secs(), -1);
    }
}
