//! App output through the server (SPEC section 11, `fedrun logs`).
//!
//! A site's app output is read from that site: [`SiteLinks`] holds, for each connected
//! site, a way to its current connection, which sends [`ToSite::ReadLog`] and hands back
//! the site's [`FromSite::Log`] answer (see `serve.rs`). A site without a connection, or
//! whose connection goes while a read is out, is [`SiteOffline`]. The server app's output is
//! read from its run folder while the folder exists, then from the workspace archive,
//! which holds the same files.
//!
//! Memory stays bounded whatever the size of a log: every read is one chunk of at most
//! [`LOG_CHUNK_MAX`] bytes, and a streamed answer holds a few chunks at a time.
//!
//! [`ToSite::ReadLog`]: crate::net::wire::ToSite::ReadLog
//! [`FromSite::Log`]: crate::net::wire::FromSite::Log

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::blobs::BlobStore;
use crate::job::JobId;
use crate::lifecycle::BlobHash;
use crate::site::logs::{read_chunk, LogAnswer, LogStream, LOG_CHUNK_MAX};

/// How long a site has to answer one read before it counts as offline.
pub const SITE_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads a connection may have waiting to be sent.
pub const READ_QUEUE: usize = 16;

/// One read of a site's log, on its way to the site's connection.
#[derive(Debug)]
pub struct LogRead {
    /// The job.
    pub job_id: JobId,
    /// Which output.
    pub stream: LogStream,
    /// The first byte wanted.
    pub offset: u64,
    /// Where the site's answer goes.
    pub reply: oneshot::Sender<LogAnswer>,
}

/// The site is not connected, or its connection went before it answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("site {site} is offline ({why}); its app output can be read once it is connected")]
pub struct SiteOffline {
    /// The site.
    pub site: String,
    /// What happened.
    pub why: &'static str,
}

/// The current connection of every connected site, for log reads.
#[derive(Debug, Default)]
pub struct SiteLinks {
    links: Mutex<BTreeMap<String, (u64, mpsc::Sender<LogRead>)>>,
}

impl SiteLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, mpsc::Sender<LogRead>)>> {
        // Only whole values are stored; a poisoned lock is still consistent.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `site`'s connection number `generation` takes reads from now on.
    pub fn attach(&self, site: &str, generation: u64, reads: mpsc::Sender<LogRead>) {
        self.lock().insert(site.to_string(), (generation, reads));
    }

    /// `site`'s connection number `generation` has ended (a newer one stays).
    pub fn detach(&self, site: &str, generation: u64) {
        let mut links = self.lock();
        if links.get(site).is_some_and(|(g, _)| *g == generation) {
            links.remove(site);
        }
    }

    /// Reads one chunk of `site`'s log of `job_id` from `offset`.
    pub async fn read(
        &self,
        site: &str,
        job_id: JobId,
        stream: LogStream,
        offset: u64,
    ) -> Result<LogAnswer, SiteOffline> {
        let offline = |why| SiteOffline {
            site: site.to_string(),
            why,
        };
        let link = self.lock().get(site).map(|(_, tx)| tx.clone());
        let Some(link) = link else {
            return Err(offline("not connected"));
        };
        let (reply, answer) = oneshot::channel();
        let read = LogRead {
            job_id,
            stream,
            offset,
            reply,
        };
        match tokio::time::timeout(SITE_READ_TIMEOUT, async {
            link.send(read).await.ok()?;
            answer.await.ok()
        })
        .await
        {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(offline("the connection closed")),
            Err(_) => Err(offline("no answer in time")),
        }
    }
}

/// Reads one chunk of the server app's log of `job_id` in the server's workspace `root`.
pub async fn read_server_chunk(
    root: &Path,
    job_id: JobId,
    stream: LogStream,
    offset: u64,
) -> LogAnswer {
    let path = stream.path_in(&crate::site::workspace::job_dir(root, job_id));
    tokio::task::spawn_blocking(move || read_chunk(&path, offset, LOG_CHUNK_MAX))
        .await
        .unwrap_or_else(|e| LogAnswer::Failed(e.to_string()))
}

/// Why an archived log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchivedLogError {
    /// The archive has no such file (the app never wrote it).
    #[error("the workspace archive holds no {0}")]
    Missing(&'static str),
    /// The archive blob is missing, damaged or not a readable zip.
    #[error("the workspace archive cannot be read: {0}")]
    Unreadable(String),
}

/// Sends the server app's log from the workspace archive `hash`, from `offset` to its
/// end, in chunks of at most [`LOG_CHUNK_MAX`] bytes into `tx` (until the receiver goes).
/// The archive is checked against its hash first, as every blob read is. Blocking: run it
/// on a blocking thread.
pub fn send_archived(
    blobs: &BlobStore,
    hash: &BlobHash,
    stream: LogStream,
    offset: u64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<u64, ArchivedLogError> {
    let unreadable = |e: &dyn std::fmt::Display| ArchivedLogError::Unreadable(e.to_string());
    let path = blobs.path_of(hash);
    let mut file = std::fs::File::open(&path).map_err(|e| unreadable(&e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(&mut file)
        .map_err(|e| unreadable(&e))?;
    let actual = BlobHash::from(hasher.finalize());
    if actual != *hash {
        return Err(ArchivedLogError::Unreadable(format!(
            "blob {hash} hashes to {actual}"
        )));
    }
    let mut archive = zip::ZipArchive::new(file).map_err(|e| unreadable(&e))?;
    let mut entry = match archive.by_name(stream.file_name()) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ArchivedLogError::Missing(stream.file_name()))
        }
        Err(e) => return Err(unreadable(&e)),
    };
    std::io::copy(&mut (&mut entry).take(offset), &mut std::io::sink())
        .map_err(|e| unreadable(&e))?;
    let mut sent = 0u64;
    loop {
        let mut chunk = vec![0u8; LOG_CHUNK_MAX];
        let mut got = 0;
        while got < chunk.len() {
            match entry.read(&mut chunk[got..]).map_err(|e| unreadable(&e))? {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            return Ok(sent);
        }
        chunk.truncate(got);
        sent += got as u64;
        if tx.blocking_send(Bytes::from(chunk)).is_err() {
            return Ok(sent);
        }
    }
}
