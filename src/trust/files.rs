//! Reading the small files a user names on the command line or in a kit (certificates,
//! keys, project files) with a size limit, so that `/dev/zero` or a huge file given by
//! mistake is refused with a clear message instead of filling memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest certificate, certificate chain or private key file read (1 MiB: a PEM
/// chain of a dozen 4096-bit certificates is under 30 KiB).
pub const PEM_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// The largest project file `fedrun provision` reads.
pub const PROJECT_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Why a bounded file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file holds more than the limit for its kind.
    #[error("{path} is over the limit of {limit} bytes for a {what}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What the file was read as (`certificate`, `private key`, ...).
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Reads the whole of `path` if it holds at most `limit` bytes. Never reads more than
/// `limit + 1` bytes, whatever the file is (a device, a pipe, a file that grows).
/// `what` names the kind of file in the error.
pub fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, ReadFileError> {
    let io = |source| ReadFileError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let file = File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadFileError::TooLarge {
            path: path.to_path_buf(),
            what,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_is_refused_after_reading_at_most_the_limit() {
        let err = read_bounded(Path::new("/dev/zero"), 4096, "certificate").unwrap_err();
        assert!(
            matches!(&err, ReadFileError::TooLarge { limit: 4096, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "/dev/zero is over the limit of 4096 bytes for a certificate"
        );
    }

    #[test]
    fn a_file_at_the_limit_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, [b'x'; 10]).unwrap();
        assert_eq!(read_bounded(&path, 10, "certificate").unwrap().len(), 10);
        assert!(read_bounded(&path, 9, "certificate").is_err());
    }
}
