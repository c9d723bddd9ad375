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

/// How deeply a record may nest. fedrun's events nest about eight levels; the limit keeps
/// hostile bytes (thousands of nested arrays) from exhausting a thread's stack, which
/// the decoder's own default of 1024 levels can do on a 2 MiB thread.
pub const MAX_RECORD_DEPTH: usize = 32;

/// Decodes named-field MessagePack with nesting limited to `max_depth`.
pub fn from_slice_limited<T: DeserializeOwned>(
    bytes: &[u8],
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(max_depth);
    T::deserialize(&mut deserializer)
}

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
    #[error("record bytes do not decode ({len} bytes): {cause}")]
    Malformed {
        /// How many bytes were offered.
        len: usize,
        /// What the decoder said.
        cause: rmp_serde::decode::Error,
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
    #[error("event {seq} does not encode: {cause}")]
    Serialize {
        /// The event's sequence number.
        seq: u64,
        /// What the encoder said.
        cause: rmp_serde::encode::Error,
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
        .map_err(|source| EncodeError::Serialize { seq, cause: source })?;
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
        from_slice_limited(bytes, MAX_RECORD_DEPTH).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            cause: source,
        })?;
    if record.v > READER_VERSION {
        return Err(DecodeError::TooNew { found: record.v });
    }
    Ok(record)
}

/// Decodes only the header of a record (version, seq, link). Never panics.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    let header: RecordHeader =
        from_slice_limited(bytes, MAX_RECORD_DEPTH).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            cause: source,
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

/// The check the `history_record` fuzz target (and the test replaying its corpus) runs
/// on arbitrary bytes. Decoding must never panic; whatever decodes must agree with its
/// header, re-encode to a record that decodes to the same value, and pass or fail the
/// chain check without panicking.
///
/// # Panics
///
/// Only when one of those properties is broken, which is a bug the fuzzer reports.
pub fn fuzz_check_record<E>(bytes: &[u8])
where
    E: Serialize + DeserializeOwned + super::Sequenced,
{
    let header = decode_header(bytes);
    let Ok(record) = decode::<E>(bytes) else {
        return;
    };
    let header = header.expect("a record that decodes has a header that decodes");
    assert_eq!(
        (header.v, header.seq, header.prev),
        (record.v, record.seq, record.prev),
        "header and record disagree"
    );
    let _ = super::check_record::<E>(record.seq, record.prev, record.seq, bytes);
    if let Ok(again) = encode(record.seq, record.prev, &record.event) {
        let decoded = decode::<E>(&again).expect("an encoded record decodes");
        assert_eq!(decoded.seq, record.seq);
        assert_eq!(decoded.prev, record.prev);
        // Compared as bytes rather than values, so a NaN inside an event is no false
        // alarm: encoding what was decoded gives the same bytes again.
        let third = encode(decoded.seq, decoded.prev, &decoded.event)
            .expect("a record that encoded once encodes again");
        assert_eq!(third, again, "record changed in a round trip");
    }
}

/// The check the `event_decode` fuzz target runs on arbitrary bytes: decoding an event
/// from MessagePack never panics, and a decoded event survives a round trip through the
/// record codec and through its JSON line.
///
/// # Panics
///
/// Only when a round trip changes the event, which is a bug the fuzzer reports.
pub fn fuzz_check_event<E>(bytes: &[u8])
where
    E: Serialize + DeserializeOwned,
{
    let Ok(event) = from_slice_limited::<E>(bytes, MAX_RECORD_DEPTH) else {
        return;
    };
    if let Ok(encoded) = rmp_serde::to_vec_named(&event) {
        let decoded: E =
            from_slice_limited(&encoded, MAX_RECORD_DEPTH).expect("an encoded event decodes");
        let again = rmp_serde::to_vec_named(&decoded).expect("a decoded event encodes again");
        assert_eq!(again, encoded, "event changed in a MessagePack round trip");
    }
    if let Ok(line) = serde_json::to_string(&event) {
        assert!(!line.contains('\n'), "a JSON line holds no newline");
    }
}
