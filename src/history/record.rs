//! The record codec: how one event is laid out in the history, and how records chain.
//!
//! Each record holds the BLAKE3 hash of the previous record's bytes: editing, removing or
//! reordering any record breaks the link of the record after it. Two layouts exist:
//!
//! - **Version 1** (read only): a MessagePack map with named fields
//!   (`rmp_serde::to_vec_named`) `{v, seq, prev, event}`, `prev` as 64 hex digits and the
//!   event in its named-field form. Its first byte is a MessagePack map marker.
//! - **Version 2** (written): a fixed 42-byte header, then the event.
//!
//!   | bytes | what |
//!   |---|---|
//!   | 0 | `0xC1`, the one marker MessagePack never uses, so no version-1 record starts with it |
//!   | 1 | the format version (2) |
//!   | 2..10 | the sequence number, big-endian |
//!   | 10..42 | `prev`, the 32 raw bytes of the previous record's hash |
//!   | 42.. | the event in its version-2 layout ([`RecordEvent::encode_v2`]) |
//!
//!   The header is read without touching the event, so the chain can be checked even when
//!   an event no longer decodes.

use rmp_serde::decode::ReadRefReader;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Sequenced;

/// The record layout this build writes.
pub const FORMAT_VERSION: u32 = 2;

/// The newest format version this build can read. A database whose minimum reader
/// version is above this is refused.
pub const READER_VERSION: u32 = 2;

/// The minimum reader version this build records in a database it writes to: a database
/// that holds version-2 records must refuse a reader of version 1, which cannot read them.
/// A version-1 database opened for writing is raised to this before anything is appended.
pub const MIN_READER_VERSION: u32 = 2;

/// The first byte of a record in the version-2 (or a later binary) layout.
pub const BINARY_MARKER: u8 = 0xC1;

/// The length of a version-2 record's header (marker, version, seq, prev).
pub const V2_HEADER_BYTES: usize = 42;

/// Where a version-2 record holds `prev`, the 32 raw bytes of the previous record's hash.
pub const V2_PREV_BYTES: std::ops::Range<usize> = 10..V2_HEADER_BYTES;

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

/// Decodes MessagePack (positional or named) with nesting limited to `max_depth`, and
/// refuses bytes left over after the value: a version-2 event fills its record exactly.
pub fn from_slice_exact<T: DeserializeOwned>(
    bytes: &[u8],
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    // Read in place: a reader over `io::Read` copies every string into a buffer of its
    // own first. A borrowed reader does not say where the value ended, so the bytes are
    // known to be used up when reading one more marker finds their end. Only one: a
    // reader of a whole value (`IgnoredAny`) would also meet the end inside a cut
    // container after the event, and call that nothing.
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(max_depth);
    let value = T::deserialize(&mut deserializer)?;
    if !used_up(&mut deserializer) {
        // Only to say how many: where the value ends, found by walking its markers.
        let end = super::snapshot::msgpack::skip(bytes, 0, max_depth).unwrap_or(0);
        return Err(left_over(bytes.len() - end));
    }
    Ok(value)
}

/// Whether an in-place reader has read all its bytes: reading one more marker finds
/// their end.
pub(super) fn used_up(deserializer: &mut rmp_serde::Deserializer<ReadRefReader<'_, [u8]>>) -> bool {
    matches!(
        OneMarker::deserialize(&mut *deserializer),
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
    )
}

/// The error of `left` bytes after an event that should fill its record.
fn left_over(left: usize) -> rmp_serde::decode::Error {
    <rmp_serde::decode::Error as serde::de::Error>::custom(format_args!(
        "{left} bytes left over after the event"
    ))
}

/// Reads one MessagePack marker and refuses whatever it starts without reading further
/// (every `Visitor` method is the refusing default): [`from_slice_exact`]'s probe for
/// bytes after the event.
struct OneMarker;

impl<'de> Deserialize<'de> for OneMarker {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl serde::de::Visitor<'_> for Refuse {
            type Value = OneMarker;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the end of the record")
            }
        }
        deserializer.deserialize_any(Refuse)
    }
}

/// [`from_slice_exact`] through `rmp_serde`'s `io::Read` reader, whose position says where
/// the value ended: what the in-place reading replaced, kept as its reference (the
/// `event_decode` fuzz target holds that both agree on any bytes).
pub fn from_slice_exact_by_reader<T: DeserializeOwned>(
    bytes: &[u8],
    max_depth: usize,
) -> Result<T, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    deserializer.set_max_depth(max_depth);
    let value = T::deserialize(&mut deserializer)?;
    let left = (bytes.len() as u64).saturating_sub(deserializer.position());
    if left != 0 {
        return Err(left_over(left as usize));
    }
    Ok(value)
}

/// An event the history can store: it knows its sequence number, has a named-field form
/// (version-1 records, JSON), and a version-2 form. The version-2 form defaults to
/// positional MessagePack of the type's own serde, which decodes without buffering as
/// long as the type has no internally tagged or untagged enums; fedrun's [`crate::lifecycle::Event`]
/// has such enums and brings a layout of its own.
pub trait RecordEvent: Serialize + DeserializeOwned + Sequenced {
    /// Appends the event's version-2 bytes to `out`.
    fn encode_v2(&self, out: &mut Vec<u8>) -> Result<(), rmp_serde::encode::Error> {
        rmp_serde::encode::write(out, self)
    }

    /// Decodes an event from exactly `bytes` in its version-2 form. Never panics.
    fn decode_v2(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        from_slice_exact(bytes, MAX_RECORD_DEPTH)
    }
}

/// The `prev` hash of the first record: there is no record before it.
pub const GENESIS_HASH: ChainHash = ChainHash([0; 32]);

/// The BLAKE3 hash of a record's bytes, the link of the hash chain.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainHash(pub [u8; 32]);

/// A chain begins at [`GENESIS_HASH`].
impl Default for ChainHash {
    fn default() -> ChainHash {
        GENESIS_HASH
    }
}

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

/// One history record as read: format version, sequence number, link to the previous
/// record, and the event. (Version-1 records are this struct in named-field MessagePack.)
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
    /// The bytes break the record layout itself (a short header, a version the layout
    /// does not carry).
    #[error("record bytes do not decode ({len} bytes): {detail}")]
    Layout {
        /// How many bytes were offered.
        len: usize,
        /// What is wrong.
        detail: String,
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

/// Encodes a version-2 record for `event` at `seq`, linked to `prev`. Refuses a record
/// over [`MAX_VALUE_BYTES`] before anything is written.
pub fn encode<E: RecordEvent>(
    seq: u64,
    prev: ChainHash,
    event: &E,
) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(BINARY_MARKER);
    bytes.push(FORMAT_VERSION as u8);
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&prev.0);
    event
        .encode_v2(&mut bytes)
        .map_err(|source| EncodeError::Serialize { seq, cause: source })?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(EncodeError::TooLarge {
            seq,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Encodes a record in the version-1 layout, as fedrun wrote it before format version 2.
/// Nothing in fedrun writes it any more; it exists so tests can build the histories an
/// older fedrun left behind (a version-1 history that a newer server then extends).
pub fn encode_v1<E: Serialize>(
    seq: u64,
    prev: ChainHash,
    event: &E,
) -> Result<Vec<u8>, EncodeError> {
    let record = RecordRef {
        v: 1,
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

/// Which layout `bytes` are in: the binary one (version 2 on) when they start with
/// [`BINARY_MARKER`], else version 1.
fn is_binary(bytes: &[u8]) -> bool {
    bytes.first() == Some(&BINARY_MARKER)
}

/// Reads the header of a binary-layout record; the rest is the event.
fn binary_header(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), DecodeError> {
    let layout = |detail: String| DecodeError::Layout {
        len: bytes.len(),
        detail,
    };
    let Some(&version) = bytes.get(1) else {
        return Err(layout("the record ends inside its header".to_string()));
    };
    let version = u32::from(version);
    if version > READER_VERSION {
        return Err(DecodeError::TooNew { found: version });
    }
    if version < 2 {
        return Err(layout(format!(
            "format version {version} does not use the binary layout"
        )));
    }
    if bytes.len() < V2_HEADER_BYTES {
        return Err(layout(format!(
            "the record ends inside its {V2_HEADER_BYTES}-byte header"
        )));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[2..10]);
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&bytes[V2_PREV_BYTES]);
    let header = RecordHeader {
        v: version,
        seq: u64::from_be_bytes(seq),
        prev: ChainHash(prev),
    };
    Ok((header, &bytes[V2_HEADER_BYTES..]))
}

/// Checks the version a version-1 (named map) record carries.
fn check_v1_version(v: u32, len: usize) -> Result<(), DecodeError> {
    if v > READER_VERSION {
        return Err(DecodeError::TooNew { found: v });
    }
    if v != 1 {
        return Err(DecodeError::Layout {
            len,
            detail: format!("format version {v} is not written in the version-1 layout"),
        });
    }
    Ok(())
}

/// Decodes a whole record, of either layout. Never panics, whatever the bytes.
pub fn decode<E: RecordEvent>(bytes: &[u8]) -> Result<Record<E>, DecodeError> {
    if is_binary(bytes) {
        let (header, event) = binary_header(bytes)?;
        let event = E::decode_v2(event).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            cause: source,
        })?;
        return Ok(Record {
            v: header.v,
            seq: header.seq,
            prev: header.prev,
            event,
        });
    }
    let record: Record<E> =
        from_slice_limited(bytes, MAX_RECORD_DEPTH).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            cause: source,
        })?;
    check_v1_version(record.v, bytes.len())?;
    Ok(record)
}

/// Decodes only the header of a record (version, seq, link), of either layout. Never
/// panics. A version-2 header is read without decoding the event at all.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    if is_binary(bytes) {
        return binary_header(bytes).map(|(header, _)| header);
    }
    let header: RecordHeader =
        from_slice_limited(bytes, MAX_RECORD_DEPTH).map_err(|source| DecodeError::Malformed {
            len: bytes.len(),
            cause: source,
        })?;
    check_v1_version(header.v, bytes.len())?;
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
pub fn fuzz_check_record<E: RecordEvent>(bytes: &[u8]) {
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
        // The version-2 layout keeps everything the named-field form holds.
        if let Ok(named) = encode_v1(record.seq, record.prev, &record.event) {
            let named_again = encode_v1(decoded.seq, decoded.prev, &decoded.event)
                .expect("an event whose named form encoded once encodes again");
            assert_eq!(
                named_again, named,
                "the version-2 layout lost part of the event"
            );
        }
    }
}

/// The check the `event_decode` fuzz target runs on arbitrary bytes: decoding an event
/// from MessagePack, in its named-field (version-1) form and in its version-2 form, never
/// panics, and a decoded event survives a round trip through either form and through its
/// JSON line.
///
/// # Panics
///
/// Only when a round trip changes the event, which is a bug the fuzzer reports.
pub fn fuzz_check_event<E: RecordEvent>(bytes: &[u8]) {
    if let Ok(event) = E::decode_v2(bytes) {
        let mut encoded = Vec::new();
        if event.encode_v2(&mut encoded).is_ok() {
            let decoded = E::decode_v2(&encoded).expect("an encoded version-2 event decodes");
            let mut again = Vec::new();
            decoded
                .encode_v2(&mut again)
                .expect("a decoded version-2 event encodes again");
            assert_eq!(again, encoded, "event changed in a version-2 round trip");
        }
    }
    let Ok(event) = from_slice_limited::<E>(bytes, MAX_RECORD_DEPTH) else {
        return;
    };
    if let Ok(encoded) = rmp_serde::to_vec_named(&event) {
        let decoded: E =
            from_slice_limited(&encoded, MAX_RECORD_DEPTH).expect("an encoded event decodes");
        let again = rmp_serde::to_vec_named(&decoded).expect("a decoded event encodes again");
        assert_eq!(again, encoded, "event changed in a MessagePack round trip");
        // The version-2 form keeps everything the named-field form holds.
        let mut v2 = Vec::new();
        if event.encode_v2(&mut v2).is_ok() {
            let back = E::decode_v2(&v2).expect("an encoded version-2 event decodes");
            let named = rmp_serde::to_vec_named(&back).expect("a decoded event encodes again");
            assert_eq!(named, encoded, "the version-2 form lost part of the event");
        }
    }
    if let Ok(line) = serde_json::to_string(&event) {
        assert!(!line.contains('\n'), "a JSON line holds no newline");
    }
}
