//! The anchor: the last sequence number and hash known durable, kept in a small file
//! outside sled. sled silently truncates its log at the first record that fails its own
//! checksum; comparing the history with the anchor turns that into reported data loss.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::storage::Head;
use crate::blobs::sync_dir;

/// The name prefix of an anchor's temp file before its rename.
pub const TEMP_PREFIX: &str = ".anchor-";

/// Reads the anchor file; `Ok(None)` when there is none yet.
pub fn read(path: &Path) -> std::io::Result<Option<Head>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

/// Writes the anchor atomically: a temp file beside it, fsync, rename over the old one,
/// fsync of the folder. A crash leaves either the old anchor or the new one.
pub fn write(path: &Path, head: Head) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    let text = serde_json::to_string(&head).map_err(std::io::Error::other)?;
    temp.write_all(text.as_bytes())?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    sync_dir(dir)
}
