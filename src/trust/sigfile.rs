//! The `.__nvfl_sig.json` file: a JSON object from entry name to the base64 of its
//! RSA-PSS signature, read strictly and written the way NVFlare's Python signer writes it.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};

/// The largest signature file accepted (bytes). One entry takes about 360 bytes, so this
/// allows tens of thousands of entries in one directory while bounding memory.
pub const SIG_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// A parsed signature file: entry name -> base64 signature text, not yet decoded, so a
/// garbled value is reported against the entry that uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignatureFile {
    entries: BTreeMap<String, String>,
}

/// Why a signature file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SigFileError {
    /// The bytes are larger than [`SIG_FILE_MAX_BYTES`].
    #[error("signature file is {size} bytes, over the limit of {SIG_FILE_MAX_BYTES}")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// The bytes are not a JSON object of strings, or name an entry twice.
    #[error("signature file is not a JSON object of name -> base64 string: {0}")]
    Json(serde_json::Error),
}

// By hand, not `#[from]`: the message already holds the cause, so it is not also the
// `source()` (an error chain would print it twice).
impl From<serde_json::Error> for SigFileError {
    fn from(error: serde_json::Error) -> Self {
        SigFileError::Json(error)
    }
}

/// Why one signature value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature is not valid standard base64: {reason}")]
pub struct GarbledSignature {
    /// What the decoder said.
    pub reason: String,
}

impl SignatureFile {
    /// Parses the bytes of a `.__nvfl_sig.json`. Duplicate names are rejected rather than
    /// letting the last one win, since two values for one entry can only be tampering.
    pub fn parse(bytes: &[u8]) -> Result<Self, SigFileError> {
        if bytes.len() as u64 > SIG_FILE_MAX_BYTES {
            return Err(SigFileError::TooLarge {
                size: bytes.len() as u64,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let entries = (&mut de).deserialize_map(EntriesVisitor)?;
        de.end()?;
        Ok(Self { entries })
    }

    /// The base64 text stored for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(String::as_str)
    }

    /// The decoded signature stored for `name`: `None` when there is no entry.
    pub fn signature(&self, name: &str) -> Option<Result<Vec<u8>, GarbledSignature>> {
        self.get(name).map(decode_signature)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// Decodes a signature value: standard alphabet, with padding, as Python's `b64encode`.
pub fn decode_signature(text: &str) -> Result<Vec<u8>, GarbledSignature> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| GarbledSignature {
            reason: e.to_string(),
        })
}

/// Encodes a signature value as NVFlare does (standard alphabet, padded).
pub fn encode_signature(signature: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// Writes entries in the given order exactly as Python's `json.dump(dict)` does with its
/// defaults: `{"a": "x", "b": "y"}`, `", "` and `": "` separators, non-ASCII escaped as
/// `\uXXXX` (surrogate pairs above the BMP), no trailing newline.
pub fn to_python_json(entries: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (index, (name, value)) in entries.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        push_python_string(&mut out, name);
        out.push_str(": ");
        push_python_string(&mut out, value);
    }
    out.push('}');
    out
}

fn push_python_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The check the `sig_json` fuzz target runs (and the corpus replay test): parsing any
/// bytes never panics, and a file that parses survives a round trip through the
/// NVFlare writer with the same entries, each decoded or rejected the same way.
pub fn fuzz_check(data: &[u8]) {
    let Ok(parsed) = SignatureFile::parse(data) else {
        return;
    };
    let entries: Vec<(String, String)> = parsed
        .entries
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let written = to_python_json(&entries);
    let reparsed = SignatureFile::parse(written.as_bytes());
    assert!(
        reparsed.as_ref().is_ok_and(|again| *again == parsed),
        "a parsed signature file must survive the NVFlare writer unchanged: {reparsed:?}"
    );
    for name in parsed.names() {
        let _ = parsed.signature(name);
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object whose values are strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some((name, value)) = map.next_entry::<String, String>()? {
            if entries.contains_key(&name) {
                return Err(serde::de::Error::custom(format!(
                    "entry {name:?} appears twice"
                )));
            }
            entries.insert(name, value);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_shape_matches_json_dump() {
        let entries = vec![
            ("meta.json".to_owned(), "ab+/==".to_owned()),
            ("café \"q\"".to_owned(), "x".to_owned()),
            ("😀".to_owned(), "y".to_owned()),
        ];
        assert_eq!(
            to_python_json(&entries),
            r#"{"meta.json": "ab+/==", "caf\u00e9 \"q\"": "x", "\ud83d\ude00": "y"}"#
        );
    }

    #[test]
    fn written_json_parses_back() {
        let entries = vec![
            ("é/ü".to_owned(), "AAEC".to_owned()),
            ("tab\there".to_owned(), "AQ==".to_owned()),
        ];
        let parsed = SignatureFile::parse(to_python_json(&entries).as_bytes()).unwrap();
        assert_eq!(parsed.get("é/ü"), Some("AAEC"));
        assert_eq!(parsed.signature("tab\there"), Some(Ok(vec![1])));
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn rejects_duplicates_non_strings_and_trailing_data() {
        assert!(SignatureFile::parse(br#"{"a": "AA==", "a": "AQ=="}"#).is_err());
        assert!(SignatureFile::parse(br#"{"a": 1}"#).is_err());
        assert!(SignatureFile::parse(br#"["a"]"#).is_err());
        assert!(SignatureFile::parse(br#"{"a": "AA=="} x"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_entries_round_trip_through_the_python_writer(
            map in proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..6)
        ) {
            let entries: Vec<(String, String)> = map.clone().into_iter().collect();
            let parsed = SignatureFile::parse(to_python_json(&entries).as_bytes()).unwrap();
            proptest::prop_assert_eq!(parsed.entries, map);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            fuzz_check(&data);
        }
    }

    #[test]
    fn garbled_base64_is_reported_per_entry() {
        let parsed = SignatureFile::parse(br#"{"a": "not base64!", "b": "AA=="}"#).unwrap();
        assert!(matches!(parsed.signature("a"), Some(Err(_))));
        assert_eq!(parsed.signature("b"), Some(Ok(vec![0])));
        assert_eq!(parsed.signature("c"), None);
    }
}
