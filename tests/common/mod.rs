//! Helpers shared by the package tests: a raw zip builder that can write what no honest
//! zip tool writes (lying sizes, `..` names, symlink modes, duplicates), and a writer of
//! small valid job folders.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

/// One entry of a hand-made zip.
#[derive(Clone, Debug)]
pub struct RawEntry {
    /// The name exactly as stored.
    pub name: Vec<u8>,
    /// The uncompressed bytes.
    pub data: Vec<u8>,
    /// Deflate instead of Stored.
    pub deflate: bool,
    /// Unix mode with file type (`0o100644`, `0o120777`...); `None` writes a DOS entry.
    pub mode: Option<u32>,
    /// The uncompressed size the headers declare, when it should lie.
    pub declared_size: Option<u32>,
    /// General-purpose flags.
    pub flags: u16,
}

impl RawEntry {
    /// A Stored regular file.
    pub fn file(name: &str, data: &[u8]) -> Self {
        RawEntry {
            name: name.as_bytes().to_vec(),
            data: data.to_vec(),
            deflate: false,
            mode: Some(0o100644),
            declared_size: None,
            flags: 0,
        }
    }

    /// A folder entry (`name` without its trailing `/`).
    pub fn folder(name: &str) -> Self {
        RawEntry {
            mode: Some(0o040755),
            ..RawEntry::file(&format!("{name}/"), b"")
        }
    }

    /// The same entry, deflated.
    pub fn deflated(self) -> Self {
        RawEntry {
            deflate: true,
            ..self
        }
    }

    fn compressed(&self) -> Vec<u8> {
        if self.deflate {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(&self.data).unwrap();
            encoder.finish().unwrap()
        } else {
            self.data.clone()
        }
    }

    /// The local header followed by the data.
    pub fn local(&self) -> Vec<u8> {
        let compressed = self.compressed();
        let mut out = Vec::new();
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(if self.deflate { 8u16 } else { 0 }).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc32fast::hash(&self.data).to_le_bytes());
        out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.size().to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&compressed);
        out
    }

    fn size(&self) -> u32 {
        self.declared_size.unwrap_or(self.data.len() as u32)
    }

    /// The central directory record of this entry, whose local header is at `offset`.
    pub fn central(&self, offset: u32) -> Vec<u8> {
        let compressed = self.compressed();
        let (made_by, external) = match self.mode {
            Some(mode) => ((3u16 << 8) | 20, mode << 16),
            None => (20u16, 0),
        };
        let mut out = Vec::new();
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&made_by.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(if self.deflate { 8u16 } else { 0 }).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&crc32fast::hash(&self.data).to_le_bytes());
        out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.size().to_le_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&external.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&self.name);
        out
    }
}

/// The end-of-central-directory record.
pub fn end_record(count: u16, directory_size: u32, directory_offset: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&directory_size.to_le_bytes());
    out.extend_from_slice(&directory_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A zip of these entries, in this order.
pub fn build_zip(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = out.len() as u32;
        out.extend_from_slice(&entry.local());
        central.extend_from_slice(&entry.central(offset));
    }
    let directory_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&end_record(
        entries.len() as u16,
        central.len() as u32,
        directory_offset,
    ));
    out
}

/// The entries of a minimal valid job, under `prefix` (`""` or `"job/"`).
pub fn valid_job_entries(prefix: &str) -> Vec<RawEntry> {
    vec![
        RawEntry::file(
            &format!("{prefix}meta.json"),
            br#"{"deploy_map": {"app": ["server", "site-1"]}}"#,
        ),
        RawEntry::file(&format!("{prefix}app/run.toml"), b"command = \"true\"\n"),
    ]
}

/// Writes a minimal valid job folder with `meta` as its `meta.json`, and an app folder
/// with a run file for each name in `apps`.
pub fn write_job(dir: &Path, meta: &str, apps: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("meta.json"), meta).unwrap();
    for app in apps {
        fs::create_dir_all(dir.join(app)).unwrap();
        fs::write(dir.join(app).join("run.toml"), "command = \"true\"\n").unwrap();
    }
}
