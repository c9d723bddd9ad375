//! A strict reader for zip archives that come from outside, and the writer of the
//! canonical zip.
//!
//! The reader is written here rather than taken from a general zip library because a
//! package must be judged on what its bytes say, not on what a forgiving reader makes
//! of them: duplicate names must be seen (a map keyed by name hides them), names must be
//! checked as raw bytes (UTF-8 or refused, never guessed as CP437), entries must not
//! overlap (the overlapping-entry zip bomb), and every size is checked against the
//! [`Limits`] from the directory *before* anything is inflated, then enforced while
//! inflating. Only what job packages need is supported: Stored and Deflate entries, no
//! encryption, no zip64, no multi-disk archives.
//!
//! The writer produces the canonical form: entries in the order given (the caller sorts
//! them), every entry Stored, the DOS timestamp 1980-01-01 00:00:00, UTF-8 names, and
//! Unix modes `0644`/`0755` for files and `0755` for folders. It depends on nothing but
//! this file, so the same tree gives the same bytes on every version of fedrun.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Read;

use crate::job::limits::{
    check_entry_name, shorten_name, LimitError, Limits, NameError, FORMAT_ENTRY_COUNT_MAX,
    FORMAT_PACKAGE_BYTES_MAX,
};

const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY_SIGNATURE: u32 = 0x0605_4b50;
const LOCAL_HEADER_BYTES: usize = 30;
const CENTRAL_HEADER_BYTES: usize = 46;
const END_OF_CENTRAL_DIRECTORY_BYTES: usize = 22;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;
const FLAG_UTF8: u16 = 0x0800;
const HOST_UNIX: u8 = 3;
const HOST_MACOS: u8 = 19;
const FILE_TYPE_MASK: u32 = 0o170_000;
const FILE_TYPE_DIRECTORY: u32 = 0o040_000;
const FILE_TYPE_REGULAR: u32 = 0o100_000;
const FILE_TYPE_SYMLINK: u32 = 0o120_000;
/// MS-DOS date of 1980-01-01 (year 0 since 1980, month 1, day 1), the earliest a zip holds.
const CANONICAL_DOS_DATE: u16 = (1 << 5) | 1;
/// MS-DOS time 00:00:00.
const CANONICAL_DOS_TIME: u16 = 0;
/// "Made by" Unix, spec version 2.0, so readers honour the modes in the external attributes.
const CANONICAL_VERSION_MADE_BY: u16 = ((HOST_UNIX as u16) << 8) | 20;
const CANONICAL_VERSION_NEEDED: u16 = 20;
/// Mode of an ordinary file in the canonical zip.
pub const FILE_MODE: u32 = 0o644;
/// Mode of an executable file (any execute bit set at the source) in the canonical zip.
pub const EXECUTABLE_FILE_MODE: u32 = 0o755;
/// Mode of a folder in the canonical zip.
pub const FOLDER_MODE: u32 = 0o755;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A folder.
    Folder,
    /// A regular file; `executable` when any execute bit was set.
    File {
        /// Whether it is written with mode `0755` rather than `0644`.
        executable: bool,
    },
}

/// One checked, inflated entry of a zip. A Stored file's bytes are borrowed from the
/// zip, so reading a canonical zip copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZipEntry<'a> {
    /// The package-relative path, checked by [`check_entry_name`], without trailing `/`.
    pub name: String,
    /// File or folder.
    pub kind: EntryKind,
    /// The file's bytes (empty for a folder).
    pub data: Cow<'a, [u8]>,
}

/// Why a zip is refused. Every entry-level message starts with the entry's name.
#[derive(Debug, thiserror::Error)]
pub enum ZipReadError {
    /// The bytes do not end with a zip directory.
    #[error("not a zip archive: {reason}")]
    NotAZip {
        /// What was missing.
        reason: &'static str,
    },
    /// The directory or an entry's header is cut off or inconsistent.
    #[error("the zip is truncated or corrupt: {reason}")]
    Corrupt {
        /// What is inconsistent.
        reason: String,
    },
    /// A feature job packages do not use.
    #[error("the zip uses {feature}, which job packages do not support")]
    UnsupportedArchive {
        /// The feature.
        feature: &'static str,
    },
    /// A size or count limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// An entry name that is not UTF-8.
    #[error("{entry}: the name is not valid UTF-8")]
    NonUtf8Name {
        /// The name, with invalid bytes replaced.
        entry: String,
    },
    /// An entry name that breaks a rule.
    #[error("{entry}: {rule}")]
    BadName {
        /// The name as stored.
        entry: String,
        /// The rule.
        rule: NameError,
    },
    /// A symbolic link.
    #[error("{entry}: symbolic links are not allowed in a job package")]
    Symlink {
        /// The name.
        entry: String,
    },
    /// A device, pipe or socket.
    #[error("{entry}: only regular files and folders are allowed in a job package")]
    SpecialFile {
        /// The name.
        entry: String,
    },
    /// Two entries with the same path.
    #[error("{entry}: appears more than once in the zip")]
    Duplicate {
        /// The name.
        entry: String,
    },
    /// An entry feature job packages do not use.
    #[error("{entry}: uses {feature}, which job packages do not support")]
    UnsupportedEntry {
        /// The name.
        entry: String,
        /// The feature.
        feature: String,
    },
    /// An entry's data does not match its directory record.
    #[error("{entry}: {reason}")]
    BadData {
        /// The name.
        entry: String,
        /// What does not match.
        reason: String,
    },
}

fn corrupt(reason: impl Into<String>) -> ZipReadError {
    ZipReadError::Corrupt {
        reason: reason.into(),
    }
}

/// Little-endian reads that fail with [`ZipReadError::Corrupt`] instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], at: usize, what: &'static str) -> Self {
        Cursor { bytes, at, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ZipReadError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt(format!("{} is cut off", self.what)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, ZipReadError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ZipReadError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// One record of the central directory, checked but not yet inflated.
struct CentralRecord<'a> {
    name: String,
    kind: EntryKind,
    method: u16,
    crc32: u32,
    compressed: u64,
    size: u64,
    header_offset: usize,
    name_raw: &'a [u8],
}

/// Finds the end-of-central-directory record: the last signature whose comment length
/// reaches exactly to the end of the bytes.
fn finpush_end_record(bytes: &[u8]) -> Result<usize, ZipReadError> {
    if bytes.len() < END_OF_CENTRAL_DIRECTORY_BYTES {
        return Err(ZipReadError::NotAZip {
            reason: "too short to hold a zip directory",
        });
    }
    let last = bytes.len() - END_OF_CENTRAL_DIRECTORY_BYTES;
    let first = last.saturating_sub(usize::from(u16::MAX));
    for at in (first..=last).rev() {
        if bytes[at..at + 4] == END_OF_CENTRAL_DIRECTORY_SIGNATURE.to_le_bytes() {
            let comment = usize::from(u16::from_le_bytes([bytes[at + 20], bytes[at + 21]]));
            if at + END_OF_CENTRAL_DIRECTORY_BYTES + comment == bytes.len() {
                return Ok(at);
            }
        }
    }
    Err(ZipReadError::NotAZip {
        reason: "no end-of-central-directory record",
    })
}

/// Reads and checks a zip held in memory: structure, names, kinds, duplicates and every
/// [`Limits`] field, all from the directory before inflating anything; then inflates each
/// file, enforcing its declared size and CRC-32. Entries come back in directory order.
/// Never panics, whatever the bytes.
pub fn read_zip<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Vec<ZipEntry<'a>>, ZipReadError> {
    limits.check_package_size(bytes.len() as u64)?;
    let end_at = finpush_end_record(bytes)?;
    let mut end = Cursor::new(bytes, end_at + 4, "the end-of-central-directory record");
    let disk = end.u16()?;
    let directory_disk = end.u16()?;
    let count_on_disk = end.u16()?;
    let count = end.u16()?;
    let directory_size = end.u32()?;
    let directory_offset = end.u32()?;
    if count == u16::MAX || directory_size == u32::MAX || directory_offset == u32::MAX {
        return Err(ZipReadError::UnsupportedArchive { feature: "zip64" });
    }
    if disk != 0 || directory_disk != 0 || count_on_disk != count {
        return Err(ZipReadError::UnsupportedArchive {
            feature: "several disks",
        });
    }
    limits.check_entry_count(u64::from(count))?;
    let directory_start = directory_offset as usize;
    let directory_end = directory_start
        .checked_add(directory_size as usize)
        .ok_or_else(|| corrupt("the central directory's size overflows"))?;
    if directory_end != end_at {
        return Err(corrupt(format!(
            "the central directory should end at byte {end_at} but its record says {directory_end}"
        )));
    }

    let mut records = Vec::with_capacity(usize::from(count));
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    let mut cursor = Cursor::new(
        &bytes[..directory_end],
        directory_start,
        "the central directory",
    );
    for _ in 0..count {
        let record = read_central_record(&mut cursor, directory_start, limits, &mut total)?;
        if !seen.insert(record.name.clone()) {
            return Err(ZipReadError::Duplicate { entry: record.name });
        }
        records.push(record);
    }
    if cursor.at != directory_end {
        return Err(corrupt(
            "the central directory holds more bytes than its entries",
        ));
    }
    limits.check_archive_ratio(bytes.len() as u64, total)?;

    // Locate every entry's data and refuse overlaps, which would let one compressed
    // stream be counted as many entries.
    let mut spans = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let (data_start, data_end) = locate_data(bytes, record, directory_start)?;
        spans.push((record.header_offset, data_end, index, data_start));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(ZipReadError::BadData {
                entry: records[pair[1].2].name.clone(),
                reason: "its data overlaps another entry".to_owned(),
            });
        }
    }
    let mut data_starts = vec![0usize; records.len()];
    for &(_, _, index, data_start) in &spans {
        data_starts[index] = data_start;
    }

    let mut entries = Vec::with_capacity(records.len());
    for (record, data_start) in records.into_iter().zip(data_starts) {
        let compressed = &bytes[data_start..data_start + record.compressed as usize];
        let data = inflate(&record, compressed)?;
        entries.push(ZipEntry {
            name: record.name,
            kind: record.kind,
            data,
        });
    }
    Ok(entries)
}

fn read_central_record<'a>(
    cursor: &mut Cursor<'a>,
    directory_start: usize,
    limits: &Limits,
    total: &mut u64,
) -> Result<CentralRecord<'a>, ZipReadError> {
    if cursor.u32()? != CENTRAL_HEADER_SIGNATURE {
        return Err(corrupt(format!(
            "no central directory record at byte {}",
            cursor.at - 4
        )));
    }
    let version_made_by = cursor.u16()?;
    let _version_needed = cursor.u16()?;
    let flags = cursor.u16()?;
    let method = cursor.u16()?;
    let _time = cursor.u16()?;
    let _date = cursor.u16()?;
    let crc32 = cursor.u32()?;
    let compressed = cursor.u32()?;
    let size = cursor.u32()?;
    let name_len = usize::from(cursor.u16()?);
    let extra_len = usize::from(cursor.u16()?);
    let comment_len = usize::from(cursor.u16()?);
    let _disk = cursor.u16()?;
    let _internal = cursor.u16()?;
    let external = cursor.u32()?;
    let header_offset = cursor.u32()?;
    let name_raw = cursor.take(name_len)?;
    cursor.take(extra_len)?;
    cursor.take(comment_len)?;

    let raw = std::str::from_utf8(name_raw).map_err(|_| ZipReadError::NonUtf8Name {
        entry: String::from_utf8_lossy(name_raw).into_owned(),
    })?;
    let unsupported = |feature: String| ZipReadError::UnsupportedEntry {
        entry: raw.to_owned(),
        feature,
    };
    if compressed == u32::MAX || size == u32::MAX || header_offset == u32::MAX {
        return Err(unsupported("zip64".to_owned()));
    }
    if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 {
        return Err(unsupported("encryption".to_owned()));
    }
    if method != METHOD_STORED && method != METHOD_DEFLATE {
        return Err(unsupported(format!("compression method {method}")));
    }

    let (name, slash) = match raw.strip_suffix('/') {
        Some(stripped) => (stripped, true),
        None => (raw, false),
    };
    check_entry_name(name).map_err(|rule| ZipReadError::BadName {
        entry: shorten_name(raw),
        rule,
    })?;
    let host = (version_made_by >> 8) as u8;
    let mode = if host == HOST_UNIX || host == HOST_MACOS {
        external >> 16
    } else {
        0
    };
    let kind = match mode & FILE_TYPE_MASK {
        FILE_TYPE_SYMLINK => {
            return Err(ZipReadError::Symlink {
                entry: raw.to_owned(),
            })
        }
        FILE_TYPE_DIRECTORY => EntryKind::Folder,
        0 if slash => EntryKind::Folder,
        0 | FILE_TYPE_REGULAR if !slash => EntryKind::File {
            executable: mode & 0o111 != 0,
        },
        FILE_TYPE_REGULAR => {
            return Err(ZipReadError::BadData {
                entry: raw.to_owned(),
                reason: "a regular file's name ends with `/`".to_owned(),
            })
        }
        _ => {
            return Err(ZipReadError::SpecialFile {
                entry: raw.to_owned(),
            })
        }
    };
    let (compressed, size) = (u64::from(compressed), u64::from(size));
    match kind {
        EntryKind::Folder if size != 0 || compressed > 2 => {
            return Err(ZipReadError::BadData {
                entry: raw.to_owned(),
                reason: "a folder entry holds data".to_owned(),
            })
        }
        EntryKind::Folder => {}
        EntryKind::File { .. } => {
            limits.add_entry_size(name, size, total)?;
            if method == METHOD_STORED && compressed != size {
                return Err(ZipReadError::BadData {
                    entry: raw.to_owned(),
                    reason: format!("a stored entry of {size} bytes occupies {compressed} bytes"),
                });
            }
            limits.check_entry_ratio(name, size, compressed)?;
        }
    }
    if header_offset as usize >= directory_start {
        return Err(corrupt(format!(
            "{raw}: its header offset points past the entries"
        )));
    }
    Ok(CentralRecord {
        name: name.to_owned(),
        kind,
        method,
        crc32,
        compressed,
        size,
        header_offset: header_offset as usize,
        name_raw,
    })
}

/// Checks an entry's local header against its directory record; returns where its data
/// starts and ends.
fn locate_data(
    bytes: &[u8],
    record: &CentralRecord<'_>,
    directory_start: usize,
) -> Result<(usize, usize), ZipReadError> {
    let entries = &bytes[..directory_start];
    let mut local = Cursor::new(entries, record.header_offset, "a local file header");
    if local.u32()? != LOCAL_HEADER_SIGNATURE {
        return Err(ZipReadError::BadData {
            entry: record.name.clone(),
            reason: "no local file header where the directory points".to_owned(),
        });
    }
    local.take(LOCAL_HEADER_BYTES - 4 - 4)?;
    let name_len = usize::from(local.u16()?);
    let extra_len = usize::from(local.u16()?);
    let local_name = local.take(name_len)?;
    local.take(extra_len)?;
    if local_name != record.name_raw {
        return Err(ZipReadError::BadData {
            entry: record.name.clone(),
            reason: "the local header names a different entry than the directory".to_owned(),
        });
    }
    let data_start = local.at;
    let data_end = data_start
        .checked_add(record.compressed as usize)
        .filter(|&end| end <= directory_start)
        .ok_or_else(|| ZipReadError::BadData {
            entry: record.name.clone(),
            reason: "its data runs past the end of the entries (truncated zip)".to_owned(),
        })?;
    Ok((data_start, data_end))
}

/// Inflates one entry, never producing more than its declared size plus one byte, and
/// checks the size and CRC-32.
fn inflate<'a>(
    record: &CentralRecord<'_>,
    compressed: &'a [u8],
) -> Result<Cow<'a, [u8]>, ZipReadError> {
    let bad = |reason: String| ZipReadError::BadData {
        entry: record.name.clone(),
        reason,
    };
    if record.kind == EntryKind::Folder {
        return Ok(Cow::Borrowed(&[]));
    }
    let data = if record.method == METHOD_STORED {
        Cow::Borrowed(compressed)
    } else {
        // The declared size is within the limits (checked from the directory), so this
        // allocation is bounded; `take` stops a stream that inflates past it.
        let mut data = Vec::with_capacity(record.size as usize);
        flate2::read::DeflateDecoder::new(compressed)
            .take(record.size + 1)
            .read_to_end(&mut data)
            .map_err(|err| bad(format!("its compressed data is corrupt ({err})")))?;
        Cow::Owned(data)
    };
    if data.len() as u64 != record.size {
        return Err(bad(format!(
            "its data inflates to {}{} bytes but the directory says {}",
            data.len(),
            if data.len() as u64 > record.size {
                " or more"
            } else {
                ""
            },
            record.size
        )));
    }
    if crc32fast::hash(&data) != record.crc32 {
        return Err(bad("its CRC-32 does not match its data".to_owned()));
    }
    Ok(data)
}

/// The canonical zip would exceed what a zip without zip64 can describe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the canonical zip would exceed the format's limits (4 GiB, 65,535 entries)")]
pub struct FormatLimitError;

/// One entry to write into the canonical zip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CanonicalEntry<'a> {
    /// The package-relative path, without trailing `/`.
    pub name: &'a str,
    /// File or folder.
    pub kind: EntryKind,
    /// The file's exact size in bytes (0 for a folder).
    pub size: u64,
}

/// Below this much file data the canonical zip is filled on the calling thread; above
/// it, on up to [`FILL_THREADS_MAX`] threads, since copying file bytes (from the page
/// cache or from memory) is most of an ingest.
const PARALLEL_FILL_BYTES_MIN: u64 = 16 << 20;
/// The most threads that fill one canonical zip.
const FILL_THREADS_MAX: usize = 4;

/// Writes the canonical zip of `entries` (sorted by path, each folder before what it
/// holds) and returns it with its BLAKE3 hash.
///
/// Every offset is known from the sizes before a byte is written, so the buffer is
/// allocated once at its final size and `fill(index, slice)` writes file `index`'s bytes
/// into exactly its own slice; large packages are filled by several threads over
/// disjoint slices. `fill` must fill the whole slice (or fail). Errors of `fill` come
/// back as `Ok(Err(..))`, so the caller keeps its own error type.
pub fn write_canonical<E: Send>(
    entries: &[CanonicalEntry<'_>],
    fill: impl Fn(usize, &mut [u8]) -> Result<(), E> + Sync,
) -> Result<Result<(Vec<u8>, blake3::Hash), E>, FormatLimitError> {
    if entries.len() as u64 > FORMAT_ENTRY_COUNT_MAX {
        return Err(FormatLimitError);
    }
    // Lay out every entry: [local header, stored name, data], then the directory.
    let stored_name_len =
        |e: &CanonicalEntry<'_>| e.name.len() + usize::from(e.kind == EntryKind::Folder);
    let mut data_end = 0u64;
    let mut directory_len = 0u64;
    let mut data_bytes = 0u64;
    for entry in entries {
        data_end += (LOCAL_HEADER_BYTES + stored_name_len(entry)) as u64 + entry.size;
        directory_len += (CENTRAL_HEADER_BYTES + stored_name_len(entry)) as u64;
        data_bytes += entry.size;
    }
    let total = data_end + directory_len + END_OF_CENTRAL_DIRECTORY_BYTES as u64;
    if total > FORMAT_PACKAGE_BYTES_MAX || entries.iter().any(|e| e.size > FORMAT_PACKAGE_BYTES_MAX)
    {
        return Err(FormatLimitError);
    }
    let total = usize::try_from(total).map_err(|_| FormatLimitError)?;
    // A large zeroed allocation is fresh zero pages from the kernel, not a pass over the
    // bytes; every byte is overwritten below.
    let mut out = vec![0u8; total];
    advise_huge_pages(&mut out);

    // Cut the entry area into one (header, data) pair per entry.
    let (mut rest, _) = out.split_at_mut(data_end as usize);
    let mut headers = Vec::with_capacity(entries.len());
    let mut files: Vec<(usize, &mut [u8])> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let (header, after) = rest.split_at_mut(LOCAL_HEADER_BYTES + stored_name_len(entry));
        let (data, after) = after.split_at_mut(entry.size as usize);
        headers.push(header);
        if entry.kind != EntryKind::Folder {
            files.push((index, data));
        }
        rest = after;
    }

    let threads = if data_bytes < PARALLEL_FILL_BYTES_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(FILL_THREADS_MAX))
    };
    let crcs = match fill_files(files, threads, data_bytes, &fill) {
        Ok(crcs) => crcs,
        Err(err) => return Ok(Err(err)),
    };

    let mut directory = Vec::with_capacity(directory_len as usize + END_OF_CENTRAL_DIRECTORY_BYTES);
    let mut offset = 0u32;
    for ((entry, header), crc) in entries.iter().zip(headers).zip(crcs) {
        let (mode, dos_attributes) = match entry.kind {
            EntryKind::Folder => (FILE_TYPE_DIRECTORY | FOLDER_MODE, 0x10),
            EntryKind::File { executable: true } => (FILE_TYPE_REGULAR | EXECUTABLE_FILE_MODE, 0),
            EntryKind::File { executable: false } => (FILE_TYPE_REGULAR | FILE_MODE, 0),
        };
        // `total` fits in u32 (checked above), so every size and offset does too.
        let size = entry.size as u32;
        let mut name = entry.name.as_bytes().to_vec();
        if entry.kind == EntryKind::Folder {
            name.push(b'/');
        }
        let mut local = Vec::with_capacity(header.len());
        local.extend_from_slice(&LOCAL_HEADER_SIGNATURE.to_le_bytes());
        local.extend_from_slice(&CANONICAL_VERSION_NEEDED.to_le_bytes());
        local.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        local.extend_from_slice(&METHOD_STORED.to_le_bytes());
        local.extend_from_slice(&CANONICAL_DOS_TIME.to_le_bytes());
        local.extend_from_slice(&CANONICAL_DOS_DATE.to_le_bytes());
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(&name);
        header.copy_from_slice(&local);

        let d = &mut directory;
        d.extend_from_slice(&CENTRAL_HEADER_SIGNATURE.to_le_bytes());
        d.extend_from_slice(&CANONICAL_VERSION_MADE_BY.to_le_bytes());
        d.extend_from_slice(&CANONICAL_VERSION_NEEDED.to_le_bytes());
        d.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        d.extend_from_slice(&METHOD_STORED.to_le_bytes());
        d.extend_from_slice(&CANONICAL_DOS_TIME.to_le_bytes());
        d.extend_from_slice(&CANONICAL_DOS_DATE.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(&(name.len() as u16).to_le_bytes());
        d.extend_from_slice(&[0; 8]); // extra length, comment length, disk, internal attributes
        d.extend_from_slice(&((mode << 16) | dos_attributes).to_le_bytes());
        d.extend_from_slice(&offset.to_le_bytes());
        d.extend_from_slice(&name);
        offset += (LOCAL_HEADER_BYTES + name.len()) as u32 + size;
    }
    let count = entries.len() as u16;
    push_end_record(&mut directory, count, directory_len as u32, data_end as u32);
    out[data_end as usize..].copy_from_slice(&directory);
    let hash = blake3::hash(&out);
    Ok(Ok((out, hash)))
}

fn push_end_record(directory: &mut Vec<u8>, count: u16, directory_len: u32, directory_offset: u32) {
    directory.extend_from_slice(&END_OF_CENTRAL_DIRECTORY_SIGNATURE.to_le_bytes());
    directory.extend_from_slice(&[0; 4]); // this disk, the directory's disk
    directory.extend_from_slice(&count.to_le_bytes());
    directory.extend_from_slice(&count.to_le_bytes());
    directory.extend_from_slice(&directory_len.to_le_bytes());
    directory.extend_from_slice(&directory_offset.to_le_bytes());
    directory.extend_from_slice(&0u16.to_le_bytes()); // comment length
}

/// Fills every file's slice and returns one CRC-32 per entry (0 for folders), splitting
/// the files into `threads` runs of about equal bytes.
fn fill_files<E: Send>(
    files: Vec<(usize, &mut [u8])>,
    threads: usize,
    data_bytes: u64,
    fill: &(impl Fn(usize, &mut [u8]) -> Result<(), E> + Sync),
) -> Result<Vec<u32>, E> {
    let entry_count = files.last().map_or(0, |(index, _)| index + 1);
    let fill_run = |run: Vec<(usize, &mut [u8])>| -> Result<Vec<(usize, u32)>, E> {
        run.into_iter()
            .map(|(index, data)| {
                fill(index, data)?;
                Ok((index, crc32fast::hash(data)))
            })
            .collect()
    };
    let mut runs: Vec<Vec<(usize, &mut [u8])>> = vec![Vec::new()];
    let share = data_bytes / threads.max(1) as u64 + 1;
    let mut in_run = 0u64;
    for file in files {
        if in_run >= share {
            runs.push(Vec::new());
            in_run = 0;
        }
        in_run += file.1.len() as u64;
        // `runs` starts with one run and only grows, so `last_mut` always finds one.
        runs.last_mut().expect("runs is never empty").push(file);
    }
    let results: Vec<Result<Vec<(usize, u32)>, E>> = if runs.len() == 1 {
        runs.into_iter().map(fill_run).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = runs
                .into_iter()
                .map(|run| scope.spawn(|| fill_run(run)))
                .collect();
            handles
                .into_iter()
                // A panic in `fill` is a bug; carry it to the caller's thread unchanged.
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    let mut crcs = vec![0u32; entry_count];
    for result in results {
        for (index, crc) in result? {
            crcs[index] = crc;
        }
    }
    Ok(crcs)
}

/// Asks Linux to back a large, fresh buffer with transparent huge pages. Filling 100 MB
/// of fresh 4 KiB pages costs one page fault per page, which measured as most of a folder
/// ingest's time; with 2 MiB pages it is a few dozen faults. The advice changes neither
/// the memory's contents nor its validity, and a kernel without huge pages ignores it.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buffer: &mut [u8]) {
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    const PAGE_BYTES: usize = 4096;
    if buffer.len() < 2 * HUGE_PAGE_BYTES {
        return;
    }
    let first = buffer.as_mut_ptr() as usize;
    let start = first.next_multiple_of(PAGE_BYTES);
    let end = (first + buffer.len()) & !(PAGE_BYTES - 1);
    // SAFETY: [start, end) is page-aligned and lies inside the buffer's own allocation;
    // MADV_HUGEPAGE is advice about how to back those pages and never unmaps, frees or
    // changes them, so no reference into the buffer is affected.
    let result =
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    if result != 0 {
        tracing::trace!("madvise(MADV_HUGEPAGE) refused; the buffer uses ordinary pages");
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buffer: &mut [u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let entries = [
            CanonicalEntry {
                name: "app",
                kind: EntryKind::Folder,
                size: 0,
            },
            CanonicalEntry {
                name: "app/run.toml",
                kind: EntryKind::File { executable: false },
                size: 17,
            },
            CanonicalEntry {
                name: "app/x.sh",
                kind: EntryKind::File { executable: true },
                size: 8,
            },
        ];
        let contents: [&[u8]; 3] = [b"", b"command = \"true\"\n", b"echo hi\n"];
        let (zip, hash) = write_canonical(&entries, |index, out| {
            out.copy_from_slice(contents[index]);
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(hash, blake3::hash(&zip));
        zip
    }

    #[test]
    fn the_writer_output_reads_back() {
        let zip = sample();
        let entries = read_zip(&zip, &Limits::default()).unwrap();
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            names,
            [
                ("app", EntryKind::Folder),
                ("app/run.toml", EntryKind::File { executable: false }),
                ("app/x.sh", EntryKind::File { executable: true }),
            ]
        );
        assert_eq!(&entries[2].data[..], b"echo hi\n");
    }

    #[test]
    fn every_truncation_is_refused_without_panicking() {
        let zip = sample();
        for cut in 0..zip.len() {
            assert!(
                read_zip(&zip[..cut], &Limits::default()).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_changed_data_byte_fails_the_crc_check() {
        let zip = sample();
        let at = zip.windows(7).position(|w| w == b"echo hi").unwrap();
        let mut changed = zip.clone();
        changed[at] ^= 0x20;
        let err = read_zip(&changed, &Limits::default()).unwrap_err();
        assert!(err.to_string().starts_with("app/x.sh: its CRC-32"), "{err}");
    }
}
