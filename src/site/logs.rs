//! An app's output, read back in bounded chunks (SPEC section 11, `fedrun logs`).
//!
//! An app's standard output and error go straight to [`STDOUT_FILE`] and [`STDERR_FILE`]
//! in its run folder (the app holds the file itself, so it keeps writing while the site
//! agent or the server is away). Readers never load a whole log: each read hands out at
//! most [`LOG_CHUNK_MAX`] bytes from an offset, with the log's size at that moment, so a
//! reader that follows a growing log asks again from where it stopped. A log is opened
//! without following a symlink: an app may replace its log with a link, and a read must
//! not hand out a file outside the run folder.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::site::process::{STDERR_FILE, STDOUT_FILE};

/// The most bytes one read hands out.
pub const LOG_CHUNK_MAX: usize = 64 * 1024;

/// Which of an app's two outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output ([`STDOUT_FILE`]).
    #[default]
    Stdout,
    /// Standard error ([`STDERR_FILE`]).
    Stderr,
}

impl LogStream {
    /// The file in the run folder that holds this output.
    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => STDOUT_FILE,
            LogStream::Stderr => STDERR_FILE,
        }
    }

    /// The name used in queries and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    /// The stream a query or command line names (`stdout` or `stderr`).
    pub fn parse(text: &str) -> Result<LogStream, String> {
        match text {
            "stdout" => Ok(LogStream::Stdout),
            "stderr" => Ok(LogStream::Stderr),
            other => Err(format!("stream must be stdout or stderr, not {other:?}")),
        }
    }

    /// The log of this stream in `run_dir`.
    pub fn path_in(self, run_dir: &Path) -> PathBuf {
        run_dir.join(self.file_name())
    }
}

/// Bytes of a log from an offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// At most [`LOG_CHUNK_MAX`] bytes from the offset asked (none at or past the end).
    pub data: Bytes,
    /// The log's size when it was read.
    pub size: u64,
}

/// The answer to a log read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogAnswer {
    /// The bytes.
    Chunk(LogChunk),
    /// There is no such log (the app has not started, or its run folder is gone).
    Missing,
    /// The log exists but could not be read, and why.
    Failed(String),
}

/// Reads at most `max` (capped at [`LOG_CHUNK_MAX`]) bytes of the log at `path` from
/// `offset`. Blocking: call it off the async workers.
pub fn read_chunk(path: &Path, offset: u64, max: usize) -> LogAnswer {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LogAnswer::Missing,
        Err(e) => return LogAnswer::Failed(format!("cannot open the log: {e}")),
    };
    match read_open(&mut file, offset, max) {
        Ok(chunk) => LogAnswer::Chunk(chunk),
        Err(e) => LogAnswer::Failed(format!("cannot read the log: {e}")),
    }
}

/// Reads at most `max` (capped at [`LOG_CHUNK_MAX`]) bytes of an open log from `offset`.
pub fn read_open(file: &mut std::fs::File, offset: u64, max: usize) -> std::io::Result<LogChunk> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("the log is not a regular file"));
    }
    let size = meta.len();
    let want = size
        .saturating_sub(offset)
        .min(max.min(LOG_CHUNK_MAX) as u64) as usize;
    let mut data = vec![0u8; want];
    let mut got = 0;
    if want > 0 {
        file.seek(SeekFrom::Start(offset))?;
        while got < want {
            match file.read(&mut data[got..])? {
                0 => break,
                n => got += n,
            }
        }
    }
    data.truncate(got);
    Ok(LogChunk {
        data: Bytes::from(data),
        size: size.max(offset + got as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_resume_at_an_offset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = LogStream::Stdout.path_in(dir.path());
        assert_eq!(read_chunk(&path, 0, LOG_CHUNK_MAX), LogAnswer::Missing);
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let mut back = Vec::new();
        let mut offset = 0u64;
        loop {
            let LogAnswer::Chunk(chunk) = read_chunk(&path, offset, usize::MAX) else {
                panic!("the log is there");
            };
            assert!(chunk.data.len() <= LOG_CHUNK_MAX, "a chunk is bounded");
            assert_eq!(chunk.size, content.len() as u64);
            if chunk.data.is_empty() {
                break;
            }
            offset += chunk.data.len() as u64;
            back.extend_from_slice(&chunk.data);
        }
        assert_eq!(back, content);
        let LogAnswer::Chunk(past) = read_chunk(&path, 10_000_000, 10) else {
            panic!("the log is there");
        };
        assert!(past.data.is_empty(), "nothing past the end");
    }

    #[test]
    fn a_symlinked_log_is_not_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"key material").expect("write");
        let path = LogStream::Stderr.path_in(dir.path());
        std::os::unix::fs::symlink(&secret, &path).expect("symlink");
        match read_chunk(&path, 0, 100) {
            LogAnswer::Failed(_) => {}
            other => panic!("a link must not be read: {other:?}"),
        }
    }
}
