//! The site protocol (SPEC section 11): what the server and a site agent say to each other
//! over one mutual-TLS connection with ALPN [`crate::net::tls::ALPN_SITE`].
//!
//! Every frame is a 4-byte big-endian length and a body of at most
//! [`WireConfig::max_frame`] bytes; a longer length, or a body that does not decode, closes
//! that connection (and only it). A body is either a message (tag `0`, then MessagePack
//! of [`ToSite`] or [`FromSite`]) or a package chunk (tag `1`, the 8-byte big-endian id of
//! the deploy, then raw bytes).
//!
//! The server speaks first: [`ToSite::Welcome`] when the site is accepted, or
//! [`ToSite::Refused`] with the reason, then it closes. After the welcome both ends send
//! [`ToSite::Heartbeat`] / [`FromSite::Heartbeat`] every `heartbeat_interval`; an end that
//! has read nothing for `heartbeat_timeout` drops the connection.
//!
//! Requests carry an id (counted per connection); a report carries its own id and, when it
//! answers a request, that request's id. The exit report of an app (`AppExited`) has a
//! stable `report_id` and is resent by the site on every (re)connection until the server
//! sends `Acknowledge` for it, once it is durable: so a lost answer is resent, not timed
//! out. Other answers belong to one try of the engine, whose own timeouts decide when
//! they are lost.
//!
//! A deploy is a [`ToSite::DeployBegin`] (size and BLAKE3 of the package) followed by
//! chunks of at most [`WireConfig::chunk_size`] bytes, cut from the package bytes the
//! server holds once for all sites; each chunk is written only when the connection has
//! taken the previous one, so a slow site holds back only itself. The site checks the
//! size and the hash before it hands the package on to be verified and unpacked.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::job::JobId;
use crate::lifecycle::Timestamp;
use crate::site::logs::{LogAnswer, LogStream};
use crate::site::protocol::{SiteReport, SiteRequest};

/// Settings of the site protocol.
#[derive(Clone, Debug)]
pub struct WireConfig {
    /// How often each end sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long an end waits for any frame before it drops the connection.
    pub heartbeat_timeout: Duration,
    /// The largest frame body accepted.
    pub max_frame: usize,
    /// The size of the package chunks a deploy is cut into.
    pub chunk_size: usize,
    /// The largest package a site accepts.
    pub max_package: u64,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            max_frame: 1024 * 1024,
            chunk_size: 256 * 1024,
            max_package: crate::job::limits::Limits::default().package_bytes_max,
        }
    }
}

impl WireConfig {
    /// The frame codec of this configuration.
    pub fn codec(&self) -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(self.max_frame)
            .new_codec()
    }
}

/// What the server sends a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToSite {
    /// The site is accepted; these are the server's heartbeat settings.
    Welcome {
        /// The server's heartbeat interval, in milliseconds.
        heartbeat_interval_ms: u64,
        /// The server's heartbeat timeout, in milliseconds.
        heartbeat_timeout_ms: u64,
    },
    /// The site is refused, and why; the server closes the connection.
    Refused {
        /// Why.
        reason: String,
    },
    /// Nothing to say, but still here.
    Heartbeat,
    /// A request of the engine.
    Request {
        /// The request id.
        id: u64,
        /// The request.
        request: WireRequest,
    },
    /// A deploy; its package follows in chunks with the same id.
    DeployBegin {
        /// The request id (also the chunks' id).
        id: u64,
        /// The job.
        job_id: JobId,
        /// The app to unpack.
        app_name: String,
        /// The package size in bytes.
        size: u64,
        /// The package's BLAKE3, hex.
        blake3: String,
        /// The time signatures are checked at.
        verify_at: Option<Timestamp>,
    },
    /// A read of an app's output for `fedrun logs`; answered by [`FromSite::Log`] with the
    /// same id. Not an engine request: nothing is recorded by the site, and a read lost
    /// with its connection is answered by the server as "site offline".
    ReadLog {
        /// The read's id on this connection.
        id: u64,
        /// The job.
        job_id: JobId,
        /// Which output.
        stream: LogStream,
        /// The first byte wanted.
        offset: u64,
        /// The most bytes wanted (the site hands out at most
        /// [`LOG_CHUNK_MAX`](crate::site::logs::LOG_CHUNK_MAX)).
        max: u32,
    },
}

/// The requests of [`SiteRequest`] except the deploy, as they travel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireRequest {
    /// [`SiteRequest::CheckResources`].
    CheckResources {
        /// The schedule try.
        try_id: u64,
        /// The job.
        job_id: JobId,
        /// The resources asked for.
        resources: BTreeMap<String, f64>,
    },
    /// [`SiteRequest::CancelReservation`].
    CancelReservation {
        /// The job.
        job_id: JobId,
        /// The reservation.
        token: String,
    },
    /// [`SiteRequest::Start`].
    Start {
        /// The job.
        job_id: JobId,
    },
    /// [`SiteRequest::Stop`].
    Stop {
        /// The job.
        job_id: JobId,
    },
    /// [`SiteRequest::Delete`].
    Delete {
        /// The job.
        job_id: JobId,
    },
    /// [`SiteRequest::Acknowledge`].
    Acknowledge {
        /// The report recorded.
        report_id: String,
    },
}

/// What a site sends the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromSite {
    /// Nothing to say, but still here.
    Heartbeat,
    /// A report.
    Report {
        /// The report's id on this connection.
        id: u64,
        /// The report (never `Disconnected`: the server refuses it from a site).
        report: SiteReport,
    },
    /// The answer to [`ToSite::ReadLog`].
    Log {
        /// The read's id.
        id: u64,
        /// The bytes, or why there are none.
        answer: LogAnswer,
    },
}

/// Waits until `stop` says true (or its sender is gone).
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame<T> {
    /// A message.
    Message(T),
    /// A package chunk of the deploy `id`.
    Chunk {
        /// The deploy's request id.
        id: u64,
        /// The bytes.
        data: Bytes,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The body is empty or has an unknown tag.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message does not decode.
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

const TAG_MESSAGE: u8 = 0;
const TAG_CHUNK: u8 = 1;

/// The frame body of a message.
pub fn encode_message<T: Serialize>(message: &T) -> Result<Bytes, WireError> {
    let mut body = vec![TAG_MESSAGE];
    rmp_serde::encode::write_named(&mut body, message)?;
    Ok(Bytes::from(body))
}

/// The frame body of a package chunk.
pub fn encode_chunk(id: u64, data: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(9 + data.len());
    body.put_u8(TAG_CHUNK);
    body.put_u64(id);
    body.put_slice(data);
    body.freeze()
}

/// Decodes a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: BytesMut) -> Result<Frame<T>, WireError> {
    let mut body = body.freeze();
    match body.first().copied() {
        Some(TAG_MESSAGE) => Ok(Frame::Message(rmp_serde::from_slice(&body[1..])?)),
        Some(TAG_CHUNK) if body.len() >= 9 => {
            let id = u64::from_be_bytes(body[1..9].try_into().unwrap_or_default());
            Ok(Frame::Chunk {
                id,
                data: body.split_off(9),
            })
        }
        Some(TAG_CHUNK) => Err(WireError::Malformed("chunk frame too short".into())),
        Some(tag) => Err(WireError::Malformed(format!("unknown frame tag {tag}"))),
        None => Err(WireError::Malformed("empty frame".into())),
    }
}

impl WireRequest {
    /// The request as it travels; `None` for a deploy, which travels in chunks.
    pub fn from_request(request: &SiteRequest) -> Option<WireRequest> {
        Some(match request.clone() {
            SiteRequest::CheckResources {
                try_id,
                job_id,
                resources,
            } => WireRequest::CheckResources {
                try_id,
                job_id,
                resources,
            },
            SiteRequest::CancelReservation { job_id, token } => {
                WireRequest::CancelReservation { job_id, token }
            }
            SiteRequest::Start { job_id } => WireRequest::Start { job_id },
            SiteRequest::Stop { job_id } => WireRequest::Stop { job_id },
            SiteRequest::Delete { job_id } => WireRequest::Delete { job_id },
            SiteRequest::Acknowledge { report_id } => WireRequest::Acknowledge { report_id },
            SiteRequest::Deploy { .. } => return None,
        })
    }

    /// The request the site carries out.
    pub fn into_request(self) -> SiteRequest {
        match self {
            WireRequest::CheckResources {
                try_id,
                job_id,
                resources,
            } => SiteRequest::CheckResources {
                try_id,
                job_id,
                resources,
            },
            WireRequest::CancelReservation { job_id, token } => {
                SiteRequest::CancelReservation { job_id, token }
            }
            WireRequest::Start { job_id } => SiteRequest::Start { job_id },
            WireRequest::Stop { job_id } => SiteRequest::Stop { job_id },
            WireRequest::Delete { job_id } => SiteRequest::Delete { job_id },
            WireRequest::Acknowledge { report_id } => SiteRequest::Acknowledge { report_id },
        }
    }
}

/// A package being received in chunks by a site.
#[derive(Debug)]
pub struct Incoming {
    /// The deploy's request id.
    pub id: u64,
    /// The job.
    pub job_id: JobId,
    /// The app to unpack.
    pub app_name: String,
    /// The announced size.
    pub size: u64,
    /// The announced BLAKE3, hex.
    pub blake3: String,
    /// The signature time.
    pub verify_at: Option<Timestamp>,
    /// The bytes so far.
    pub bytes: Vec<u8>,
}

impl Incoming {
    /// Adds a chunk; `Ok(true)` once the package is complete.
    pub fn push(&mut self, data: &[u8]) -> Result<bool, String> {
        if self.bytes.len() as u64 + data.len() as u64 > self.size {
            return Err(format!(
                "the package of job {} is longer than the {} bytes announced",
                self.job_id, self.size
            ));
        }
        self.bytes.extend_from_slice(data);
        Ok(self.bytes.len() as u64 == self.size)
    }

    /// The complete package as a deploy request, once its hash is checked.
    pub fn finish(self) -> Result<SiteRequest, (JobId, String)> {
        let computed = blake3::hash(&self.bytes);
        let hash = computed.to_hex().to_string();
        if hash != self.blake3 {
            return Err((
                self.job_id,
                format!(
                    "the package received has BLAKE3 {hash}, not the {} announced",
                    self.blake3
                ),
            ));
        }
        Ok(SiteRequest::Deploy {
            job_id: self.job_id,
            app_name: self.app_name,
            package: std::sync::Arc::new(self.bytes),
            hash: crate::lifecycle::BlobHash::from(computed),
            verify_at: self.verify_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::ExitOutcome;

    #[test]
    fn messages_and_chunks_round_trip() {
        let job_id = JobId(uuid::Uuid::from_u128(7));
        let message = ToSite::Request {
            id: 3,
            request: WireRequest::CheckResources {
                try_id: 1,
                job_id,
                resources: BTreeMap::from([("gpu".to_string(), 1.0)]),
            },
        };
        let body = encode_message(&message).expect("encode");
        let back: Frame<ToSite> = decode(BytesMut::from(&body[..])).expect("decode");
        assert_eq!(back, Frame::Message(message));
        let body = encode_chunk(9, b"abc");
        let back: Frame<ToSite> = decode(BytesMut::from(&body[..])).expect("decode");
        assert_eq!(
            back,
            Frame::Chunk {
                id: 9,
                data: Bytes::from_static(b"abc")
            }
        );
        let report = FromSite::Report {
            id: 1,
            report: SiteReport::AppExited {
                job_id,
                report_id: "s:j:exit".into(),
                outcome: ExitOutcome::Code(0),
                stop_requested: false,
            },
        };
        let body = encode_message(&report).expect("encode");
        let back: Frame<FromSite> = decode(BytesMut::from(&body[..])).expect("decode");
        assert_eq!(back, Frame::Message(report));
    }

    #[test]
    fn log_reads_and_answers_round_trip() {
        let job_id = JobId(uuid::Uuid::from_u128(8));
        let read = ToSite::ReadLog {
            id: 4,
            job_id,
            stream: LogStream::Stderr,
            offset: 17,
            max: crate::site::logs::LOG_CHUNK_MAX as u32,
        };
        let body = encode_message(&read).expect("encode");
        let back: Frame<ToSite> = decode(BytesMut::from(&body[..])).expect("decode");
        assert_eq!(back, Frame::Message(read));
        let data: Vec<u8> = (0..=255u8)
            .cycle()
            .take(crate::site::logs::LOG_CHUNK_MAX)
            .collect();
        let answer = FromSite::Log {
            id: 4,
            answer: LogAnswer::Chunk(crate::site::logs::LogChunk {
                data: Bytes::from(data),
                size: 1 << 40,
            }),
        };
        let body = encode_message(&answer).expect("encode");
        assert!(
            body.len() < crate::site::logs::LOG_CHUNK_MAX + 64,
            "a chunk travels as raw bytes, not as a list of numbers ({} bytes)",
            body.len()
        );
        assert!(body.len() <= WireConfig::default().max_frame);
        let back: Frame<FromSite> = decode(BytesMut::from(&body[..])).expect("decode");
        assert_eq!(back, Frame::Message(answer));
    }

    #[test]
    fn garbage_is_an_error() {
        for body in [&b""[..], b"\x07abc", b"\x01short", b"\x00\xc1\xc1"] {
            assert!(decode::<ToSite>(BytesMut::from(body)).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_package_is_checked_against_its_size_and_hash() {
        let package = b"the package bytes".to_vec();
        let incoming = |hash: String| Incoming {
            id: 1,
            job_id: JobId(uuid::Uuid::from_u128(1)),
            app_name: "app".into(),
            size: package.len() as u64,
            blake3: hash,
            verify_at: None,
            bytes: Vec::new(),
        };
        let good = blake3::hash(&package).to_hex().to_string();
        let mut ok = incoming(good.clone());
        assert!(!ok.push(&package[..4]).expect("fits"));
        assert!(ok.push(&package[4..]).expect("fits"));
        match ok.finish().expect("hash matches") {
            SiteRequest::Deploy { package: got, .. } => assert_eq!(*got, package),
            other => panic!("not a deploy: {other:?}"),
        }
        let mut bad = incoming(blake3::hash(b"other").to_hex().to_string());
        assert!(bad.push(&package).expect("fits"));
        assert!(bad.finish().is_err(), "a wrong hash is refused");
        let mut long = incoming(good);
        assert!(long.push(&[0u8; 64]).is_err(), "more than announced");
    }
}
