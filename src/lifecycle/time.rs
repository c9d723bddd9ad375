//! Time in the core: UTC milliseconds since the epoch, handed in as `now`, never read.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time: UTC milliseconds since 1970-01-01T00:00:00Z. Serialized as an integer.
///
/// The core never reads a clock; every `Timestamp` comes from an input (`now`) or from the
/// history.
///
/// Any `i64` but `i64::MIN` (292 million years before the epoch) is a timestamp. Kept with
/// its sign bit flipped in a `NonZeroU64`, so the order is the order of the milliseconds
/// and an `Option<Timestamp>` takes 8 bytes, not 16: a job and its run hold four, a
/// pending archive two. [`Timestamp::from_millis`] reads `i64::MIN` as one millisecond
/// later; a record that holds it is refused as corrupt.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(NonZeroU64);

/// The bit that turns the order of `i64` into the order of `u64`.
const SIGN: u64 = 1 << 63;

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp::from_millis(0);

    /// From milliseconds since the epoch; `i64::MIN` is read as `i64::MIN + 1`.
    pub const fn from_millis(ms: i64) -> Self {
        match Timestamp::try_from_millis(ms) {
            Some(t) => t,
            None => Timestamp::from_millis(i64::MIN + 1),
        }
    }

    /// From milliseconds since the epoch; `None` for `i64::MIN`.
    pub const fn try_from_millis(ms: i64) -> Option<Self> {
        match NonZeroU64::new(ms as u64 ^ SIGN) {
            Some(bits) => Some(Timestamp(bits)),
            None => None,
        }
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        (self.0.get() ^ SIGN) as i64
    }

    /// Whole seconds since the epoch (rounded down), as `meta.json`'s `submit_time` shows it.
    pub const fn as_secs(self) -> i64 {
        self.as_millis().div_euclid(1000)
    }

    /// This time plus a duration, saturating instead of overflowing.
    pub fn plus(self, duration: Duration) -> Timestamp {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp::from_millis(self.as_millis().saturating_add(ms))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(
            u64::try_from(self.as_millis().saturating_sub(earlier.as_millis())).unwrap_or(0),
        )
    }

    /// ISO-8601 in UTC with milliseconds, e.g. `2000-01-01T00:00:12.500Z`.
    pub fn to_iso8601(self) -> String {
        self.to_string()
    }
}

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp::EPOCH
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_millis()).finish()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.as_millis())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ms = i64::deserialize(deserializer)?;
        Timestamp::try_from_millis(ms).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "timestamp {ms} is out of range (it is i64::MIN)"
            ))
        })
    }
}

impl fmt::Display for Timestamp {
    /// Written straight into the formatter (the fold writes one into every schedule
    /// line it keeps): the digits of years 0 to 9999 are put in place by hand, a
    /// formatted write per field cost more than the calendar arithmetic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.as_millis();
        let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
        let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs) else {
            // Outside the calendar range `time` supports; the raw number is still exact.
            return write!(f, "@{millis}ms");
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
        assert_eq!(
            Timestamp::from_millis(0).to_iso8601(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-01-01T00:00:00Z is 946684800 seconds after the epoch.
        assert_eq!(
            Timestamp::from_millis(946_684_800_000 + 12_500).to_iso8601(),
            "2000-01-01T00:00:12.500Z"
        );
        assert_eq!(
            Timestamp::from_millis(i64::MAX).to_iso8601(),
            format!("@{}ms", i64::MAX)
        );
        assert_eq!(
            Timestamp::from_millis(-1).to_iso8601(),
            "1969-12-31T23:59:59.999Z"
        );
        // The last instant of year 9999, the first past the calendar, and one in year -1.
        assert_eq!(
            Timestamp::from_millis(253_402_300_799_999).to_iso8601(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp::from_millis(253_402_300_800_000).to_iso8601(),
            "@253402300800000ms"
        );
        assert_eq!(
            Timestamp::from_millis(-62_167_219_200_001).to_iso8601(),
            "-0001-12-31T23:59:59.999Z"
        );
    }

    proptest::proptest! {
        /// The hand-placed digits read back as the instant they were written from.
        #[test]
        fn iso8601_reads_back(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let text = Timestamp::from_millis(ms).to_iso8601();
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

    proptest::proptest! {
        /// Timestamps order as their milliseconds do, and give them back unchanged, also
        /// through a record's encoding.
        #[test]
        fn order_and_millis_are_the_integers(a in (i64::MIN + 1)..=i64::MAX, b in proptest::num::i64::ANY) {
            let (ta, tb) = (Timestamp::from_millis(a), Timestamp::from_millis(b));
            let b = b.max(i64::MIN + 1);
            proptest::prop_assert_eq!(ta.as_millis(), a);
            proptest::prop_assert_eq!(tb.as_millis(), b);
            proptest::prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            let bytes = rmp_serde::to_vec(&ta).expect("encodes");
            proptest::prop_assert_eq!(&bytes, &rmp_serde::to_vec(&a).expect("encodes"));
            proptest::prop_assert_eq!(rmp_serde::from_slice::<Timestamp>(&bytes).expect("decodes"), ta);
        }
    }

    #[test]
    fn the_one_integer_left_out_is_refused_in_a_record() {
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8);
        assert_eq!(
            Timestamp::from_millis(i64::MIN).as_millis(),
            i64::MIN + 1,
            "read as one millisecond later"
        );
        assert_eq!(Timestamp::try_from_millis(i64::MIN), None);
        let bytes = rmp_serde::to_vec(&i64::MIN).expect("encodes");
        let error = rmp_serde::from_slice::<Timestamp>(&bytes).expect_err("refused");
        assert!(error.to_string().contains("out of range"), "{error}");
        let error = serde_json::from_str::<Timestamp>(&i64::MIN.to_string()).expect_err("refused");
        assert!(error.to_string().contains("out of range"), "{error}");
        assert_eq!(format!("{:?}", Timestamp::from_millis(-5)), "Timestamp(-5)");
        assert_eq!(Timestamp::default(), Timestamp::EPOCH);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp::from_millis(5).plus(Duration::from_millis(7)),
            Timestamp::from_millis(12)
        );
        assert_eq!(
            Timestamp::from_millis(i64::MAX).plus(Duration::from_secs(1)),
            Timestamp::from_millis(i64::MAX)
        );
        assert_eq!(
            Timestamp::from_millis(5).since(Timestamp::from_millis(9)),
            Duration::ZERO
        );
        assert_eq!(Timestamp::from_millis(-1).as_secs(), -1);
    }
}
