//! Snapshots: the state at a sequence number, stored as a blob and named by a small
//! record. Start-up loads the snapshot and replays only the tail after it.

use serde::{Deserialize, Serialize};

use super::record::ChainHash;
use crate::blobs::BlobHash;

/// The small record that names a snapshot. It lives in the record store's metadata,
/// while the state bytes live in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The format version of the snapshot encoding.
    pub v: u32,
    /// The last sequence number the state covers.
    pub seq: u64,
    /// The hash of the record at `seq`, so the tail's first record must link to it.
    pub chain: ChainHash,
    /// The BLAKE3 hash of the serialized state (its blob name).
    pub state: BlobHash,
}

impl SnapshotRecord {
    /// Encodes the record (named-field MessagePack).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a struct of integers and strings into a Vec cannot fail.
        rmp_serde::to_vec_named(self).expect("a snapshot record always encodes")
    }

    /// Decodes a record; never panics on bad bytes.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotRecord, rmp_serde::decode::Error> {
        super::record::from_slice_limited(bytes, super::record::MAX_RECORD_DEPTH)
    }
}

/// Serializes a state for a snapshot (named-field MessagePack, the record codec's).
pub fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(state)
}

/// Deserializes a snapshot's state.
pub fn decode_state<S: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<S, rmp_serde::decode::Error> {
    // The state nests deeper than an event (jobs, runs, their maps), but not by much.
    super::record::from_slice_limited(bytes, 4 * super::record::MAX_RECORD_DEPTH)
}
