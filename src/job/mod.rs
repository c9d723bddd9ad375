//! What a job is: its id, its `meta.json`, and its package.

pub mod limits;
pub mod meta;
pub mod package;
pub mod runfile;
pub mod zipread;

use serde::{Deserialize, Serialize};

/// A job's id: a UUID v4, drawn by the engine (never by the pure core) and injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(JobId)
    }
}
