//! What a job is: its id, its `meta.json`, and its package.

pub mod flat_map;
pub mod limits;
pub mod meta;
pub mod package;
pub mod runfile;
pub mod zipread;

use serde::{Deserialize, Serialize};

/// A job's id: a UUID v4, drawn by the engine (never by the pure core) and injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

/// The UUID's byte order, compared as one big-endian number: the same order as comparing
/// the 16 bytes one by one, in two machine comparisons instead of a `memcmp` call (the
/// state's job maps compare ids at every step of every lookup).
impl Ord for JobId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_u128().cmp(&other.0.as_u128())
    }
}

impl PartialOrd for JobId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

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

#[cfg(test)]
mod tests {
    use super::JobId;
    use proptest::prelude::*;

    proptest! {
        /// The order of ids is the order of their bytes (the order the derived one gave,
        /// which every stored map and listing follows).
        #[test]
        fn ids_order_as_their_bytes(a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
            let (x, y) = (JobId(uuid::Uuid::from_bytes(a)), JobId(uuid::Uuid::from_bytes(b)));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x == y, a == b);
        }
    }
}
