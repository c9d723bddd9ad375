//! Server settings (SPEC section 7's table, plus `resume_runs` and `require_signed_jobs`).
//!
//! The same struct is read from the server config and from a sim scenario's `[server]`
//! table. Unknown keys are errors. Durations are written `250ms`, `10s`, `5m`, `1h30m`, and
//! [`parse_duration`] is the one parser for them, reused by the simulator.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every setting that shapes scheduling, running and recovery, with SPEC defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Jobs that may be `DISPATCHED`, `RUNNING`, or still stopping at once.
    pub max_jobs: u32,
    /// Schedule tries before `FINISHED:CAN_NOT_SCHEDULE`.
    pub max_schedule_count: u32,
    /// Back-off base between schedule tries of one job.
    #[serde(with = "duration_text")]
    pub min_schedule_interval: Duration,
    /// Back-off cap between schedule tries of one job.
    #[serde(with = "duration_text")]
    pub max_schedule_interval: Duration,
    /// How long a site keeps a resource reservation unless the job starts.
    #[serde(with = "duration_text")]
    pub reservation_timeout: Duration,
    /// How long a schedule try waits for the sites' resource answers.
    #[serde(with = "duration_text")]
    pub resource_check_timeout: Duration,
    /// How long the engine waits for a participant's deploy answer.
    #[serde(with = "duration_text")]
    pub deploy_timeout: Duration,
    /// How long the engine waits for a participant's start answer.
    #[serde(with = "duration_text")]
    pub start_timeout: Duration,
    /// The outcome barrier: how long to wait for site reports after the server app ends.
    #[serde(with = "duration_text")]
    pub client_outcome_wait: Duration,
    /// How long a disconnected site's outstanding report may wait before it counts as `104`.
    #[serde(with = "duration_text")]
    pub site_reconnect_grace: Duration,
    /// Time between asking processes to stop and killing them.
    #[serde(with = "duration_text")]
    pub abort_grace: Duration,
    /// How long a failing workspace archive is retried before the failure is recorded.
    #[serde(with = "duration_text")]
    pub archive_retry_for: Duration,
    /// After a restart, how long to wait for runs to re-attach and sites to report.
    #[serde(with = "duration_text")]
    pub reattach_grace: Duration,
    /// Whether runs that re-attach after a restart are restored (`RunRestored`). When
    /// false, every run in flight at a restart is abandoned.
    pub resume_runs: bool,
    /// Whether jobs must be signed. `None` means: on exactly when the root CA is present.
    pub require_signed_jobs: Option<bool>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_jobs: 4,
            max_schedule_count: 10,
            min_schedule_interval: Duration::from_secs(10),
            max_schedule_interval: Duration::from_secs(10 * 60),
            reservation_timeout: Duration::from_secs(30),
            resource_check_timeout: Duration::from_secs(15),
            deploy_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(20),
            client_outcome_wait: Duration::from_secs(15 * 60),
            site_reconnect_grace: Duration::from_secs(60),
            abort_grace: Duration::from_secs(10),
            archive_retry_for: Duration::from_secs(60),
            reattach_grace: Duration::from_secs(30),
            resume_runs: true,
            require_signed_jobs: None,
        }
    }
}

/// A setting whose value cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A count that must be at least one is zero.
    #[error("{setting} must be at least 1 (it is 0)")]
    Zero {
        /// The setting's name.
        setting: &'static str,
    },
    /// The back-off base is larger than its cap.
    #[error("min_schedule_interval ({min}) is larger than max_schedule_interval ({max})")]
    BackoffInverted {
        /// `min_schedule_interval` as written.
        min: String,
        /// `max_schedule_interval` as written.
        max: String,
    },
}

impl Settings {
    /// Checks the values that would make the server do nothing useful: `max_jobs` and
    /// `max_schedule_count` of 0, or a back-off base above its cap.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_jobs == 0 {
            return Err(SettingsError::Zero {
                setting: "max_jobs",
            });
        }
        if self.max_schedule_count == 0 {
            return Err(SettingsError::Zero {
                setting: "max_schedule_count",
            });
        }
        if self.min_schedule_interval > self.max_schedule_interval {
            return Err(SettingsError::BackoffInverted {
                min: format_duration(self.min_schedule_interval),
                max: format_duration(self.max_schedule_interval),
            });
        }
        Ok(())
    }
}

/// Why a duration text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text was empty.
    #[error("empty duration (write e.g. `250ms`, `10s`, `5m`, `1h30m`)")]
    Empty,
    /// A number was not followed by a unit.
    #[error("duration `{text}`: number without a unit (use ms, s, m, h or d)")]
    MissingUnit {
        /// The whole text as given.
        text: String,
    },
    /// A unit was not one of `ms`, `s`, `m`, `h`, `d`, or came without a number.
    #[error("duration `{text}`: bad unit or number at `{at}` (use ms, s, m, h or d)")]
    BadPart {
        /// The whole text as given.
        text: String,
        /// The part that could not be read.
        at: String,
    },
    /// The duration does not fit in 64-bit milliseconds.
    #[error("duration `{text}` is too large")]
    TooLarge {
        /// The whole text as given.
        text: String,
    },
}

/// Reads a duration written as one or more `<integer><unit>` parts, units `ms`, `s`, `m`,
/// `h`, `d`, largest first or in any order (`250ms`, `10s`, `5m`, `1h30m`, `0s`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total_ms: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(DurationError::BadPart {
                text: text.to_string(),
                at: rest.to_string(),
            });
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge {
                text: text.to_string(),
            })?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit {
                text: text.to_string(),
            });
        }
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(DurationError::BadPart {
                    text: text.to_string(),
                    at: other.to_string(),
                })
            }
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| DurationError::TooLarge {
                text: text.to_string(),
            })?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Writes a duration in the form [`parse_duration`] reads, largest units first
/// (`1h30m`, `10s`, `250ms`, `0s`).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

/// A duration as a setting writes it, for places (scenario files) that need one alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for DurationText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        duration_text::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        duration_text::deserialize(deserializer).map(DurationText)
    }
}

/// A TOML parse error's message (no line, no source excerpt), naming the key of a
/// duplicate key: toml's parser says only "duplicate key" and marks the key in `text`.
pub fn toml_message(text: &str, err: &toml::de::Error) -> String {
    named_duplicate(err.message(), text, err)
}

/// A TOML parse error in full (line, column, the line with the spot marked, the message),
/// naming the key of a duplicate key as [`toml_message`] does.
pub fn toml_report(text: &str, err: &toml::de::Error) -> String {
    named_duplicate(err.to_string().trim(), text, err)
}

fn named_duplicate(message: &str, text: &str, err: &toml::de::Error) -> String {
    let key = err
        .span()
        .filter(|_| message.ends_with("duplicate key"))
        .and_then(|span| text.get(span))
        .filter(|key| !key.is_empty());
    match key {
        Some(key) => format!("{message} `{key}`"),
        None => message.to_string(),
    }
}

/// Serde glue: a `Duration` as text like `10s` (see [`parse_duration`]).
pub mod duration_text {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    /// Writes the duration as text, e.g. `1h30m`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    /// Reads a duration from text, e.g. `250ms`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_every_documented_form() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_duration("10x"),
            Err(DurationError::BadPart { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::BadPart { .. })
        ));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLarge { .. })
        ));
    }

    #[test]
    fn validate_refuses_settings_that_cannot_work() {
        assert_eq!(Settings::default().validate(), Ok(()));
        let zero = Settings {
            max_jobs: 0,
            ..Settings::default()
        };
        assert_eq!(
            zero.validate().map_err(|e| e.to_string()),
            Err("max_jobs must be at least 1 (it is 0)".to_string())
        );
        let inverted = Settings {
            min_schedule_interval: Duration::from_secs(700),
            ..Settings::default()
        };
        assert_eq!(
            inverted.validate().map_err(|e| e.to_string()),
            Err(
                "min_schedule_interval (11m40s) is larger than max_schedule_interval (10m)"
                    .to_string()
            )
        );
    }

    #[test]
    fn durations_print_in_the_form_they_are_read() {
        for text in ["250ms", "10s", "5m", "1h30m", "0s", "1d2h3m4s5ms"] {
            let parsed = parse_duration(text).expect("documented form parses");
            assert_eq!(format_duration(parsed), text);
        }
    }

    #[test]
    fn settings_default_to_the_spec_table_and_refuse_unknown_keys() {
        let settings: Settings =
            toml::from_str("max_jobs = 2\nabort_grace = \"250ms\"\n").expect("known keys parse");
        assert_eq!(settings.max_jobs, 2);
        assert_eq!(settings.abort_grace, Duration::from_millis(250));
        assert_eq!(settings.max_schedule_count, 10);
        assert_eq!(settings.client_outcome_wait, Duration::from_secs(900));
        assert!(settings.resume_runs);
        assert_eq!(settings.require_signed_jobs, None);
        let err = toml::from_str::<Settings>("max_job = 2\n").expect_err("typo is refused");
        assert!(err.to_string().contains("max_job"), "{err}");
    }

    #[test]
    fn a_duplicate_key_is_named() {
        for (text, key) in [
            ("max_jobs = 1\nmax_jobs = 2\n", "`max_jobs`"),
            ("[server]\n[server]\n", "`server`"),
            ("s = { a = 1, a = 2 }\n", "`a`"),
            ("[[site]]\nname = 'a'\n\"name\" = 'b'\n", "`\"name\"`"),
        ] {
            let err = text
                .parse::<toml::Table>()
                .expect_err("a duplicate key is refused");
            assert_eq!(toml_message(text, &err), format!("duplicate key {key}"));
            let report = toml_report(text, &err);
            assert!(report.starts_with("TOML parse error at line "), "{report}");
            assert!(
                report.ends_with(&format!("\nduplicate key {key}")),
                "{report}"
            );
        }
        let text = "max_job = 2\n";
        let err = toml::from_str::<Settings>(text).expect_err("typo is refused");
        assert_eq!(toml_message(text, &err), err.message());
    }
}
