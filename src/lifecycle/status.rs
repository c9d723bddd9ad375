//! A job's status: the exact strings of SPEC section 2, printed and parsed here only.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A job's status. Its text form is the SPEC string (`SUBMITTED`, `FINISHED:COMPLETED`, ...);
/// serde uses the same text (read without copying it: see the `Deserialize` below).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum RunStatus {
    /// `SUBMITTED`: stored, waiting for the scheduler.
    Submitted,
    /// `DISPATCHED`: the scheduler picked it; deployment and start in progress.
    Dispatched,
    /// `RUNNING`: the server app and the site apps started.
    Running,
    /// `FINISHED:COMPLETED`: the server app ended normally and no site reported a failure.
    Completed,
    /// `FINISHED:ABORTED`: an admin aborted or deleted it, or a site reported code 9.
    Aborted,
    /// `FINISHED:EXECUTION_EXCEPTION`: an app failed.
    ExecutionException,
    /// `FINISHED:ABNORMAL`: infrastructure failure (process killed, site lost, code 104).
    Abnormal,
    /// `FINISHED:CAN_NOT_SCHEDULE`: the attempt limit was reached without finding sites.
    CanNotSchedule,
    /// `FINISHED:FAILED_TO_RUN`: deployment or start failed.
    FailedToRun,
    /// `FINISHED:ABANDONED`: the server restarted while the job was in flight and could
    /// not resume it.
    Abandoned,
}

impl RunStatus {
    /// Every status, in the order of SPEC section 2's table.
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Submitted,
        RunStatus::Dispatched,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Aborted,
        RunStatus::ExecutionException,
        RunStatus::Abnormal,
        RunStatus::CanNotSchedule,
        RunStatus::FailedToRun,
        RunStatus::Abandoned,
    ];

    /// The status's place in [`RunStatus::ALL`].
    pub fn index(self) -> usize {
        RunStatus::ALL
            .iter()
            .position(|s| *s == self)
            .expect("ALL lists every status")
    }

    /// The SPEC string.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Submitted => "SUBMITTED",
            RunStatus::Dispatched => "DISPATCHED",
            RunStatus::Running => "RUNNING",
            RunStatus::Completed => "FINISHED:COMPLETED",
            RunStatus::Aborted => "FINISHED:ABORTED",
            RunStatus::ExecutionException => "FINISHED:EXECUTION_EXCEPTION",
            RunStatus::Abnormal => "FINISHED:ABNORMAL",
            RunStatus::CanNotSchedule => "FINISHED:CAN_NOT_SCHEDULE",
            RunStatus::FailedToRun => "FINISHED:FAILED_TO_RUN",
            RunStatus::Abandoned => "FINISHED:ABANDONED",
        }
    }

    /// True for the `FINISHED:` statuses, which are absorbing.
    pub fn is_terminal(self) -> bool {
        self.as_str().starts_with("FINISHED:")
    }

    /// Whether SPEC section 2 allows `self -> to`. `RUNNING -> RUNNING` is the restore after
    /// a restart. The move from "no job" to `SUBMITTED` is not a transition between statuses.
    pub fn can_move_to(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, to),
            (Submitted, Dispatched)
                | (Submitted, CanNotSchedule)
                | (Submitted, Aborted)
                | (Dispatched, Running)
                | (Dispatched, FailedToRun)
                | (Dispatched, Aborted)
                | (Dispatched, Abandoned)
                | (Running, Completed)
                | (Running, ExecutionException)
                | (Running, Abnormal)
                | (Running, Aborted)
                | (Running, Abandoned)
                | (Running, Running)
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of the SPEC status strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}` (expected one of SUBMITTED, DISPATCHED, RUNNING, FINISHED:...)")]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl From<RunStatus> for &'static str {
    fn from(status: RunStatus) -> Self {
        status.as_str()
    }
}

impl TryFrom<String> for RunStatus {
    type Error = UnknownStatus;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Reads the text where it lies (a snapshot holds a status per job; no `String` is made
/// for it), and refuses any text that is not a SPEC status.
impl<'de> Deserialize<'de> for RunStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = RunStatus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a job status (SUBMITTED, DISPATCHED, RUNNING, FINISHED:...)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RunStatus, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_terminal_means_finished_prefix() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
            assert_eq!(
                status.is_terminal(),
                status.as_str().starts_with("FINISHED:")
            );
            if status.is_terminal() {
                for to in RunStatus::ALL {
                    assert!(!status.can_move_to(to), "{status} -> {to}");
                }
            }
        }
        assert!("APPROVED".parse::<RunStatus>().is_err());
        let json = serde_json::to_string(&RunStatus::CanNotSchedule).expect("serializes");
        assert_eq!(json, "\"FINISHED:CAN_NOT_SCHEDULE\"");
        for status in RunStatus::ALL {
            let json = serde_json::to_string(&status).expect("serializes");
            assert_eq!(serde_json::from_str::<RunStatus>(&json).ok(), Some(status));
            let packed = rmp_serde::to_vec(&status).expect("serializes");
            assert_eq!(
                packed,
                rmp_serde::to_vec(status.as_str()).expect("serializes")
            );
            assert_eq!(
                rmp_serde::from_slice::<RunStatus>(&packed).ok(),
                Some(status)
            );
        }
        let odd = serde_json::from_str::<RunStatus>("\"FINISHED:LATE\"")
            .expect_err("not a status")
            .to_string();
        assert!(odd.contains("unknown job status `FINISHED:LATE`"), "{odd}");
        let packed = rmp_serde::to_vec(&7u8).expect("serializes");
        assert!(rmp_serde::from_slice::<RunStatus>(&packed).is_err());
    }
}
