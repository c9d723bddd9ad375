//! The limits a job package must stay within, and the rules every entry name obeys.
//!
//! A package comes from outside the server, so its size is bounded before anything is
//! decompressed or written: a zip bomb is rejected from the sizes its directory declares,
//! and the declared sizes are then enforced while inflating.

use serde::{Deserialize, Serialize};

/// One mebibyte, the unit most of the defaults below are written in.
const MIB: u64 = 1024 * 1024;

/// Entries smaller than this are never rejected for their compression ratio: small
/// files of repeated bytes (blank configs, padding) compress far beyond any sane ratio,
/// yet cannot harm anyone.
pub const RATIO_CHECK_FLOOR_BYTES: u64 = MIB;

/// The most entries the canonical zip can hold: it is written without zip64, whose
/// entry count field is 16 bits wide.
pub const FORMAT_ENTRY_COUNT_MAX: u64 = u16::MAX as u64;

/// The largest canonical zip: it is written without zip64, whose offsets are 32 bits wide.
pub const FORMAT_PACKAGE_BYTES_MAX: u64 = u32::MAX as u64;

/// The longest entry path in a package, in bytes (Linux's `PATH_MAX`: a longer relative
/// path cannot be opened in one call anyway). Checked on each name as it is read, before
/// any tree is built: building the folders a name implies costs memory that grows with
/// the square of its depth, so a 0.5 MB zip of 65 KB names once took gigabytes.
pub const ENTRY_NAME_BYTES_MAX: usize = 4096;

/// The most components (folders and the file) an entry path may have.
pub const ENTRY_DEPTH_MAX: usize = 64;

/// How big a job package may be. The defaults suit a typical federated-learning job
/// (code, configs, a starting model); a user with bigger jobs raises them (the CLI has
/// one flag per field).
///
/// In a config file every field is optional; a missing one keeps its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Size of the package as submitted (a zip file) and of its canonical zip.
    pub package_bytes_max: u64,
    /// Number of entries (files and folders).
    pub entry_count_max: u64,
    /// Uncompressed size of any one file.
    pub entry_bytes_max: u64,
    /// Uncompressed size of all files together.
    pub total_bytes_max: u64,
    /// Uncompressed size divided by compressed size, per entry (entries of at least
    /// [`RATIO_CHECK_FLOOR_BYTES`]) and for the whole zip.
    pub compression_ratio_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            package_bytes_max: 1024 * MIB,
            entry_count_max: 10_000,
            entry_bytes_max: 512 * MIB,
            total_bytes_max: 1024 * MIB,
            compression_ratio_max: 100,
        }
    }
}

/// A package, or one of its entries, is over a [`Limits`] field. Each message names the
/// field, so the user knows which flag raises it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// The package file or its canonical zip is too big.
    #[error("the package is {size} bytes, over the limit of {limit} bytes (package_bytes_max)")]
    PackageTooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// Too many files and folders.
    #[error(
        "the package has {count} entries or more, over the limit of {limit} (entry_count_max)"
    )]
    TooManyEntries {
        /// How many entries were counted when the limit was crossed.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// One file is too big.
    #[error(
        "{entry}: {size} bytes uncompressed, over the limit of {limit} bytes (entry_bytes_max)"
    )]
    EntryTooLarge {
        /// The entry's path in the package.
        entry: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// All files together are too big; `entry` is the one that crossed the limit.
    #[error(
        "{entry}: the package reaches {total} bytes uncompressed with it, over the limit of {limit} bytes (total_bytes_max)"
    )]
    TotalTooLarge {
        /// The entry that crossed the limit.
        entry: String,
        /// The total in bytes, counting this entry.
        total: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// One entry compresses suspiciously well: a zip bomb.
    #[error(
        "{entry}: {size} bytes from {compressed} compressed is a ratio over the limit of {limit}:1 (compression_ratio_max)"
    )]
    EntryRatioTooHigh {
        /// The entry's path in the package.
        entry: String,
        /// Its declared uncompressed size.
        size: u64,
        /// Its compressed size.
        compressed: u64,
        /// The limit.
        limit: u64,
    },
    /// The zip as a whole compresses suspiciously well.
    #[error(
        "the zip expands {size} bytes into {total} bytes, a ratio over the limit of {limit}:1 (compression_ratio_max)"
    )]
    ArchiveRatioTooHigh {
        /// The zip's size in bytes.
        size: u64,
        /// The uncompressed size of all its entries.
        total: u64,
        /// The limit.
        limit: u64,
    },
}

impl Limits {
    /// Checks the size of a submitted package file or of a canonical zip.
    pub fn check_package_size(&self, size: u64) -> Result<(), LimitError> {
        if size > self.package_bytes_max {
            return Err(LimitError::PackageTooLarge {
                size,
                limit: self.package_bytes_max,
            });
        }
        Ok(())
    }

    /// Checks an entry count.
    pub fn check_entry_count(&self, count: u64) -> Result<(), LimitError> {
        if count > self.entry_count_max {
            return Err(LimitError::TooManyEntries {
                count,
                limit: self.entry_count_max,
            });
        }
        Ok(())
    }

    /// Checks one file's size and adds it to `total`, checking the total too.
    pub fn add_entry_size(
        &self,
        entry: &str,
        size: u64,
        total: &mut u64,
    ) -> Result<(), LimitError> {
        if size > self.entry_bytes_max {
            return Err(LimitError::EntryTooLarge {
                entry: entry.to_owned(),
                size,
                limit: self.entry_bytes_max,
            });
        }
        *total = total.saturating_add(size);
        if *total > self.total_bytes_max {
            return Err(LimitError::TotalTooLarge {
                entry: entry.to_owned(),
                total: *total,
                limit: self.total_bytes_max,
            });
        }
        Ok(())
    }

    /// Checks one compressed entry's ratio (entries under [`RATIO_CHECK_FLOOR_BYTES`] pass).
    pub fn check_entry_ratio(
        &self,
        entry: &str,
        size: u64,
        compressed: u64,
    ) -> Result<(), LimitError> {
        if size >= RATIO_CHECK_FLOOR_BYTES
            && size / compressed.max(1) >= self.compression_ratio_max.saturating_add(1)
        {
            return Err(LimitError::EntryRatioTooHigh {
                entry: entry.to_owned(),
                size,
                compressed,
                limit: self.compression_ratio_max,
            });
        }
        Ok(())
    }

    /// Checks the ratio of a whole zip (totals under [`RATIO_CHECK_FLOOR_BYTES`] pass).
    pub fn check_archive_ratio(&self, size: u64, total: u64) -> Result<(), LimitError> {
        if total >= RATIO_CHECK_FLOOR_BYTES
            && total / size.max(1) >= self.compression_ratio_max.saturating_add(1)
        {
            return Err(LimitError::ArchiveRatioTooHigh {
                size,
                total,
                limit: self.compression_ratio_max,
            });
        }
        Ok(())
    }
}

/// Why an entry name is refused. Names are package-relative paths with `/` separators.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum NameError {
    /// An empty name.
    #[error("an empty name is not allowed")]
    Empty,
    /// `/etc/passwd`, `C:/x`: would land outside the destination folder.
    #[error("absolute paths are not allowed")]
    Absolute,
    /// `../x`: would land outside the destination folder (zip slip).
    #[error("`..` components are not allowed")]
    ParentComponent,
    /// `a//b` or `./a`: two names for one path would defeat the duplicate check.
    #[error("empty and `.` components are not allowed")]
    EmptyComponent,
    /// `a\b`: a path separator on some systems, so it could hide a `..`.
    #[error("backslashes are not allowed (use `/`)")]
    Backslash,
    /// NUL and other control characters cannot be file names everywhere.
    #[error("control characters are not allowed")]
    ControlCharacter,
    /// A path longer than [`ENTRY_NAME_BYTES_MAX`].
    #[error("the path is {bytes} bytes long, over the limit of {limit} bytes")]
    TooLong {
        /// Its length in bytes.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A path with more components than [`ENTRY_DEPTH_MAX`].
    #[error("the path is {depth} levels deep, over the limit of {limit} levels")]
    TooDeep {
        /// Its number of components.
        depth: usize,
        /// The limit.
        limit: usize,
    },
}

/// At most the first 120 characters of an entry name, marked when cut: what error
/// messages show of a name, which may be up to 64 KiB long.
pub fn shorten_name(name: &str) -> String {
    const SHOWN: usize = 120;
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} bytes)", &name[..cut], name.len()),
        None => name.to_owned(),
    }
}

/// Checks a package-relative entry path (no trailing `/`). Length and depth come first,
/// so a hostile name costs no more than one pass over its bytes.
pub fn check_entry_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > ENTRY_NAME_BYTES_MAX {
        return Err(NameError::TooLong {
            bytes: name.len(),
            limit: ENTRY_NAME_BYTES_MAX,
        });
    }
    let depth = name.bytes().filter(|&b| b == b'/').count() + 1;
    if depth > ENTRY_DEPTH_MAX {
        return Err(NameError::TooDeep {
            depth,
            limit: ENTRY_DEPTH_MAX,
        });
    }
    if name.starts_with('/') || name.as_bytes().get(1) == Some(&b':') {
        return Err(NameError::Absolute);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    for component in name.split('/') {
        match component {
            ".." => return Err(NameError::ParentComponent),
            "" | "." => return Err(NameError::EmptyComponent),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        assert_eq!(check_entry_name("/etc/passwd"), Err(NameError::Absolute));
        assert_eq!(check_entry_name("C:/x"), Err(NameError::Absolute));
        assert_eq!(
            check_entry_name("a/../../x"),
            Err(NameError::ParentComponent)
        );
        assert_eq!(check_entry_name(".."), Err(NameError::ParentComponent));
        assert_eq!(check_entry_name("a//b"), Err(NameError::EmptyComponent));
        assert_eq!(check_entry_name("./a"), Err(NameError::EmptyComponent));
        assert_eq!(check_entry_name("a\\..\\b"), Err(NameError::Backslash));
        assert_eq!(check_entry_name("a\0b"), Err(NameError::ControlCharacter));
        assert_eq!(check_entry_name(""), Err(NameError::Empty));
        assert_eq!(check_entry_name("app/run.toml"), Ok(()));
        assert_eq!(check_entry_name("..a/b..c/.x"), Ok(()));
    }

    #[test]
    fn ratio_is_checked_only_above_the_floor() {
        let limits = Limits::default();
        assert!(limits
            .check_entry_ratio("small", RATIO_CHECK_FLOOR_BYTES - 1, 1)
            .is_ok());
        assert!(limits
            .check_entry_ratio("bomb", RATIO_CHECK_FLOOR_BYTES, 1)
            .is_err());
        assert!(limits
            .check_entry_ratio(
                "fine",
                100 * RATIO_CHECK_FLOOR_BYTES,
                RATIO_CHECK_FLOOR_BYTES
            )
            .is_ok());
        assert!(limits
            .check_entry_ratio(
                "over",
                101 * RATIO_CHECK_FLOOR_BYTES,
                RATIO_CHECK_FLOOR_BYTES
            )
            .is_err());
    }

    #[test]
    fn a_config_sets_some_limits_and_keeps_the_other_defaults() {
        let limits: Limits = toml::from_str("entry_count_max = 50000").unwrap();
        assert_eq!(limits.entry_count_max, 50_000);
        assert_eq!(limits.total_bytes_max, Limits::default().total_bytes_max);
        assert!(
            toml::from_str::<Limits>("entry_count = 5").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn totals_accumulate_until_the_limit() {
        let limits = Limits {
            total_bytes_max: 10,
            ..Limits::default()
        };
        let mut total = 0;
        assert!(limits.add_entry_size("a", 6, &mut total).is_ok());
        assert_eq!(
            limits.add_entry_size("b", 5, &mut total),
            Err(LimitError::TotalTooLarge {
                entry: "b".into(),
                total: 11,
                limit: 10
            })
        );
    }
}
