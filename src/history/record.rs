//! The record codec: how one event is laid out in the history, and how records chain.
//!
//! A record is a MessagePack map with named fields (`rmp_serde::to_vec_named`), so a
//! later reader can add fields and still read the old ones. Each record holds the BLAKE3
//! hash of the previous record's bytes: editing, removing or reordering any record breaks
//! the link of the record after it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The record layout this build writes.
pub const FORMAT_VERSION: u32 = 1;

/// The newest format version this build can read. A database whose minimum reader
/// version is above this is refused.
pub const READER_VERSION: u32 = 1;

/// The minimum reader version this build records in a database it creates.
pub const MIN_READER_VERSION: u32 = 1;

/// No value stored in sled exceeds this many bytes. sled 0.34 writes any value over a
/// quarter of its segment size (512 KiB by default) to a separate file that it never
/// fsyncs, so the history keeps every value well below that.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The `prev` hash of the first record: there is no record before it.
pub const GENESIS_HASH: ChainHash = ChainHash([0; 32]);

/// The BLAKE3 hash of a record's bytes, the link of the hash chain.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The hash of `record_bytes`.
    pub fn of(record_bytes: &[u8]) -> ChainHash {
        ChainHash(*blake3::hash(record_bytes).as_bytes())
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<ChainHash> {
        blake3::Hash::from_hex(text)
            .ok()
            .map(|hash| ChainHash(*hash.as_bytes()))
    }
}

impl std::fmt::Display for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl Serialize for ChainHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ChainHash::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a chain hash is 64 hex digits"))
    }
}

/// One history record as stored: format version, sequence number, link to the previous
/// record, and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<E> {
    /// The format version the record was written with.
    pub v: u32,
    /// The sequence number; equal to the event's own and to the record's key.
    pub seq: u64,
    /// BLAKE3 hash of the previous record's bytes ([`GENESIS_HASH`] for the first).
    pub prev: ChainHash,
    /// The event.
    pub event: E,
}

/// The part of a record that the chain check needs; reading it skips the event, so the
/// chain can be checked even when an event no longer decodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordHeader {
    /// The format version the record was written with.
    pub v: u32,
    /// The sequence number.
    pub seq: u64,
    /// The link to the previous record.
    pub prev: ChainHash,
}

/// Why a record's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a record of a known layout.
    #[error("record bytes do not decode ({len} bytes): {source}")]
    Malformed {
        /// How many bytes were offered.
        len: usize,
        /// What the decoder said.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The record was written by a newer format than this build reads.
    #[error("record has format version {found}, this build reads up to {READER_VERSION}")]
    TooNew {
        /// The record's version.
        found: u32,
    },
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The serializer refused the event.
    #[error("event {seq} does not encode: {source}")]
    Serialize {
        /// The event's sequence number.
        seq: u64,
        /// What the encoder said.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The encoded record is over [`MAX_VALUE_BYTES`].
    #[error("event {seq} encodes to {len} bytes, over the {MAX_VALUE_BYTES}-byte limit of a history value")]
    TooLarge {
        /// The event's sequence number.
        seq: u64,
        /// The encoded length.
        len: usize,
    },
}

/// Encodes a record for `event` at `seq`, linked to `prev`. Refuses a record over
/// [`MAX_VALUE_BYTES`] before anything is written.
pub fn encode<E: Serialize>(seq: u64, prev: ChainHash, event: &E) -> Result<Vec<u8>, EncodeError> {
    let record = RecordRef {
        v: FORMAT_VERSION,
        seq,
        prev,
        event,
    };
    let bytes = rmp_serde::to_vec_named(&record)
        .map_err(|source| EncodeError::Serialize { seq, source })?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(EncodeError::TooLarge {
            seq,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Borrowing twin of [`Record`] so encoding does not clone the event.
#[derive(Serialize)]
struct RecordRef<'a, E> {
    v: u32,
    seq: u64,
    prev: ChainHash,
    event: &'a E,
}

/// Decodes a whole record. Never panics, whatever the bytes.
pub fn decode<E: DeserializeOwned>(bytes: &[u8]) -> Result<Record<E>, DecodeError> {
    let record: Record<E> =
        rmp_serde::from_slice(bytes).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            source,
        })?;
    if record.v > READER_VERSION {
        return Err(DecodeError::TooNew { found: record.v });
    }
    Ok(record)
}

/// Decodes only the header of a record (version, seq, link). Never panics.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    let header: RecordHeader =
        rmp_serde::from_slice(bytes).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            source,
        })?;
    if header.v > READER_VERSION {
        return Err(DecodeError::TooNew { found: header.v });
    }
    Ok(header)
}

/// The big-endian key of sequence number `seq`, so sled's byte order is sequence order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of a big-endian key, or `None` when the key is not 8 bytes.
pub fn key_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}
