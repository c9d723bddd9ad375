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
    /// line it keeps): the digits of years 0 to 9999 are put in place by hand, a
    /// formatted write per field cost more than the calendar arithmetic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, ms) = (self.0.div_euclid(1000), self.0.rem_euclid(1000));
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
            // Outside the calendar range `time` supports; the raw number is still exact.
            return write!(f, "@{}ms", self.0);
        };
        // `time` stops at year 9999; only the years before 0 need a sign.
        let Ok(year) = u16::try_from(t.year()) else {
            return write_fields(f, &t, ms);
        };
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, value: u32| {
            let mut value = value;
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, u32::from(year));
        put(5, 2, u32::from(u8::from(t.month())));
        put(8, 2, u32::from(t.day()));
        put(11, 2, u32::from(t.hour()));
        put(14, 2, u32::from(t.minute()));
        put(17, 2, u32::from(t.second()));
        put(20, 3, ms as u32);
        f.write_str(std::str::from_utf8(&text).expect("ASCII digits"))
    }
}

/// The same form field by field, for the years before 0: a minus sign, then four digits
/// (ISO 8601's expanded form).
fn write_fields(f: &mut fmt::Formatter<'_>, t: &time::OffsetDateTime, ms: i64) -> fmt::Result {
    write!(
        f,
        "-{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year().unsigned_abs(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms
    )
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
        assert_eq!(Timestamp(-1).to_iso8601(), "1969-12-31T23:59:59.999Z");
        // The last instant of year 9999, the first past the calendar, and one in year -1.
        assert_eq!(
            Timestamp(253_402_300_799_999).to_iso8601(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp(253_402_300_800_000).to_iso8601(),
            "@253402300800000ms"
        );
        assert_eq!(
            Timestamp(-62_167_219_200_001).to_iso8601(),
            "-0001-12-31T23:59:59.999Z"
        );
    }

    proptest::proptest! {
        /// The hand-placed digits read back as the instant they were written from.
        #[test]
        fn iso8601_reads_back(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let text = Timestamp(ms).to_iso8601();
            let parsed = time::OffsetDateTime::parse(
                &text,
                &time::format_description::well_known::Rfc3339,
            )
            .expect("RFC 3339");
            proptest::prop_assert_eq!(
                parsed.unix_timestamp_nanos(),
                i128::from(ms) * 1_000_000,
                "{}", text
            );
        }
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
