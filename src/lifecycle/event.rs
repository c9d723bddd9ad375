//! Events: the past-tense facts the history stores, each in an [`Event`] envelope.
//!
//! The field names here are part of the history's format (MessagePack with named fields):
//! they change only by adding optional fields. Every variant stays small (see
//! [`MAX_EVENT_BYTES`]): reasons and site-given strings are capped, package bytes never
//! appear, only their hashes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::job::meta::JobMeta;
use crate::job::JobId;
use crate::lifecycle::actor::{Actor, Identity};
use crate::lifecycle::participant::ExitOutcome;
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::lifecycle::Rejection;

/// The largest encoded event (named-field MessagePack) the core emits. The history's limit
/// for a value is 64 KiB; the rest is left for the record's own envelope (hash, version).
pub const MAX_EVENT_BYTES: usize = 60 * 1024;
/// Reasons (failures, refusals, schedule outcomes) are cut to this many bytes.
pub const MAX_REASON_BYTES: usize = 2048;
/// Site-given identifiers (tokens, report ids, request ids) longer than this are refused.
pub const MAX_ID_BYTES: usize = 256;

/// The most bytes of site names (with their tokens) one event carries; a longer list is
/// split over continuation events ([`EventKind::ScheduleTryExtended`],
/// [`EventKind::JobDispatchExtended`], [`EventKind::RunClientsAdded`]).
pub const MAX_LIST_BYTES: usize = 32 * 1024;

/// Joins `items` with `separator` into at most `budget` bytes; when they do not all fit,
/// the text ends with `... and K more`, so a reader knows how many were left out.
pub fn capped_list(items: &[String], separator: &str, budget: usize) -> String {
    let mut out = String::new();
    for (index, item) in items.iter().enumerate() {
        let left = items.len() - index;
        // Room for the item itself and, should a later item not fit, the tail.
        let tail = format!(" ... and {left} more");
        let add = if out.is_empty() { 0 } else { separator.len() } + item.len();
        let room_for_tail = if left > 1 { tail.len() + 16 } else { 0 };
        if out.len() + add + room_for_tail > budget {
            out.push_str(&tail);
            return out;
        }
        if !out.is_empty() {
            out.push_str(separator);
        }
        out.push_str(item);
    }
    out
}

/// The encoded size of an event as the history stores it (named-field MessagePack),
/// counted without keeping the bytes. `usize::MAX` when it does not encode at all.
pub fn encoded_len(event: &Event) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match rmp_serde::encode::write_named(&mut counter, event) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Splits `items` into runs whose [`weigh`]ed bytes stay within [`MAX_LIST_BYTES`]; never
/// returns an empty run, and returns one empty run for no items.
pub fn chunk_by_bytes<T: Clone>(items: &[T], weigh: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = vec![Vec::new()];
    let mut bytes = 0;
    for item in items {
        let weight = weigh(item) + 8;
        let last = chunks.last_mut().expect("there is always a chunk");
        if !last.is_empty() && bytes + weight > MAX_LIST_BYTES {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += weight;
        chunks
            .last_mut()
            .expect("there is always a chunk")
            .push(item.clone());
    }
    chunks
}

/// Cuts a reason to [`MAX_REASON_BYTES`] on a character boundary, marking the cut.
pub fn cap_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

/// The id of one server process run, drawn by the engine at start-up.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BootId(pub uuid::Uuid);

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The BLAKE3 hash that names a blob (package, workspace archive, snapshot). Serialized as
/// 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobHash(pub [u8; 32]);

/// Byte by byte, as two big-endian 128-bit numbers: the same order as comparing the 32
/// bytes one by one, without a `memcmp` call (the live index's blob counts compare hashes
/// at every step of every lookup).
impl Ord for BlobHash {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let halves = |h: &BlobHash| {
            let (high, low) = h.0.split_at(16);
            let half = |bytes: &[u8]| u128::from_be_bytes(bytes.try_into().expect("16 bytes"));
            (half(high), half(low))
        };
        halves(self).cmp(&halves(other))
    }
}

impl PartialOrd for BlobHash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl BlobHash {
    /// The hash as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> Self {
        BlobHash(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

/// A text that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a BLAKE3 hash (64 hex characters)")]
pub struct BadBlobHash(pub String);

impl FromStr for BlobHash {
    type Err = BadBlobHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        blake3::Hash::from_hex(s)
            .map(BlobHash::from)
            .map_err(|_| BadBlobHash(s.chars().take(80).collect()))
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The text is read in place (no `String` per hash): a snapshot holds one or two
        // hashes per job.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = BlobHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a BLAKE3 hash as 64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BlobHash, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Hex)
    }
}

/// A [`BlobHash`] the state holds (a job's package, its archive, a kept request's
/// package), for `#[serde(with = "stored_hash")]`: 32 raw bytes in MessagePack (a
/// snapshot holds one or two per job: half the bytes of the hex text, and no hex to read
/// back at start-up), 64 hex characters in a human-readable encoding. Either form reads
/// back from either, so a format-1 snapshot (hex text) still loads.
pub mod stored_hash {
    use super::BlobHash;
    use serde::{Deserializer, Serialize, Serializer};
    use std::fmt;

    /// The hash as the state stores it.
    pub fn serialize<S: Serializer>(hash: &BlobHash, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            hash.serialize(serializer)
        } else {
            serializer.serialize_bytes(&hash.0)
        }
    }

    /// The hash from 32 bytes or 64 hex characters.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BlobHash, D::Error> {
        deserializer.deserialize_any(RawHash { hex: true })
    }

    /// The one reader of a hash as its 32 raw bytes (a version-2 history record's hashes,
    /// which take no other form), and of 64 hex characters too when `hex` is set (the
    /// state's, which format-1 snapshots hold as text).
    pub(crate) struct RawHash {
        /// Whether hex text is read too.
        pub hex: bool,
    }

    impl serde::de::Visitor<'_> for RawHash {
        type Value = BlobHash;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.hex {
                "a BLAKE3 hash as 32 bytes or 64 hex characters"
            } else {
                "a hash of 32 bytes"
            })
        }
        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<BlobHash, E> {
            <[u8; 32]>::try_from(bytes)
                .map(BlobHash)
                .map_err(|_| E::invalid_length(bytes.len(), &self))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BlobHash, E> {
            if !self.hex {
                return Err(E::invalid_type(serde::de::Unexpected::Str(text), &self));
            }
            text.parse().map_err(E::custom)
        }
    }

    /// An optional hash the state holds, stored as [`stored_hash`](self) stores one.
    pub mod option {
        use super::BlobHash;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        struct Stored(BlobHash);

        impl Serialize for Stored {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize(&self.0, serializer)
            }
        }

        impl<'de> Deserialize<'de> for Stored {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                super::deserialize(deserializer).map(Stored)
            }
        }

        /// The optional hash as the state stores it.
        pub fn serialize<S: Serializer>(
            hash: &Option<BlobHash>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            hash.map(Stored).serialize(serializer)
        }

        /// The optional hash from nil, 32 bytes or 64 hex characters.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<BlobHash>, D::Error> {
            Ok(Option::<Stored>::deserialize(deserializer)?.map(|stored| stored.0))
        }
    }
}

/// One history entry: a fact with who caused it, when, and in which server run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number: 1 for the first event, then +1 each, no gaps.
    pub seq: u64,
    /// When it was decided (UTC); never earlier than the previous event's `at`.
    pub at: Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// The idempotency key of the admin request that caused it, if any.
    pub request_id: Option<String>,
    /// The server process run that wrote it.
    pub boot_id: BootId,
    /// The fact itself.
    pub kind: EventKind,
}

/// The answer of one participant to a deploy or start request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum StepResult {
    /// It worked.
    Ok,
    /// The participant answered with this error.
    Error(String),
    /// No answer before the timeout.
    NoReply,
}

/// Read through [`tag_and_detail`]: the derived reading refuses a snapshot's `Ok`.
impl<'de> Deserialize<'de> for StepResult {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Tag {
            Ok,
            Error,
            NoReply,
        }
        Ok(match tag_and_detail(deserializer, "result")? {
            (Tag::Ok, None) => StepResult::Ok,
            (Tag::NoReply, None) => StepResult::NoReply,
            (Tag::Error, Some(detail)) => StepResult::Error(detail),
            (Tag::Error, None) => return Err(serde::de::Error::missing_field("detail")),
            (Tag::Ok | Tag::NoReply, Some(_)) => return Err(no_detail_expected()),
        })
    }
}

/// Reads an adjacently tagged enum whose variants carry at most one string (`tag` names
/// the tag's field, `detail` the content's), in what its derived `Serialize` writes: a
/// map `{tag: "error", detail: "..."}` (JSON, named MessagePack) or an array `[tag,
/// detail]` (a snapshot's positional MessagePack). A variant without detail is written as
/// an array of ONE element, which serde's derived reading of such an enum refuses (it
/// wants the tag and the content): a snapshot holding one did not decode, and start-up
/// replayed the whole history instead. Every enum of this shape reads through here.
fn tag_and_detail<'de, D, Tag>(
    deserializer: D,
    tag: &'static str,
) -> Result<(Tag, Option<String>), D::Error>
where
    D: Deserializer<'de>,
    Tag: Deserialize<'de>,
{
    use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct TagAndDetail<Tag> {
        tag: &'static str,
        marker: std::marker::PhantomData<Tag>,
    }

    impl<'de, Tag: Deserialize<'de>> Visitor<'de> for TagAndDetail<Tag> {
        type Value = (Tag, Option<String>);

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "a map with `{}` and an optional `detail`, or [{0}, detail?]",
                self.tag
            )
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let tag = seq
                .next_element()?
                .ok_or_else(|| A::Error::invalid_length(0, &self))?;
            let detail = seq.next_element()?;
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(A::Error::invalid_length(3, &self));
            }
            Ok((tag, detail))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut tag, mut detail) = (None, None);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == self.tag {
                    if tag.is_some() {
                        return Err(A::Error::duplicate_field(self.tag));
                    }
                    tag = Some(map.next_value()?);
                } else if key == "detail" {
                    if detail.is_some() {
                        return Err(A::Error::duplicate_field("detail"));
                    }
                    detail = Some(map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            let tag = tag.ok_or_else(|| A::Error::missing_field(self.tag))?;
            Ok((tag, detail))
        }
    }

    deserializer.deserialize_any(TagAndDetail {
        tag,
        marker: std::marker::PhantomData,
    })
}

/// The error of a detail given to a variant that has none.
fn no_detail_expected<E: serde::de::Error>() -> E {
    E::custom("this variant has no detail")
}

impl StepResult {
    /// True for [`StepResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, StepResult::Ok)
    }
}

/// A site's answer to a resource check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", content = "detail", rename_all = "snake_case")]
pub enum ResourceAnswer {
    /// The site reserved the resources under this token.
    Reserved(String),
    /// The site cannot hold the job, for this reason.
    Refused(String),
    /// No answer before `resource_check_timeout`.
    NoReply,
}

/// Read through [`tag_and_detail`]: the derived reading refuses a snapshot's `NoReply`.
impl<'de> Deserialize<'de> for ResourceAnswer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Tag {
            Reserved,
            Refused,
            NoReply,
        }
        Ok(match tag_and_detail(deserializer, "answer")? {
            (Tag::Reserved, Some(token)) => ResourceAnswer::Reserved(token),
            (Tag::Refused, Some(reason)) => ResourceAnswer::Refused(reason),
            (Tag::NoReply, None) => ResourceAnswer::NoReply,
            (Tag::Reserved | Tag::Refused, None) => {
                return Err(serde::de::Error::missing_field("detail"))
            }
            (Tag::NoReply, Some(_)) => return Err(no_detail_expected()),
        })
    }
}

/// What one schedule try led to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ScheduleOutcome {
    /// The job is dispatched to the server and these sites.
    Dispatched {
        /// The chosen sites, sorted; at most [`DISPATCHED_SITES_NAMED`] of them (the
        /// whole list is in `JobDispatched`).
        sites: Vec<String>,
        /// How many chosen sites `sites` leaves out.
        #[serde(default, skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// Not enough sites or resources this time; the reason carries the numbers.
    NoResources {
        /// E.g. `connected sites (3) < min_clients (4)`.
        reason: String,
    },
}

/// How many chosen sites a `ScheduleAttempted` names; the rest are counted.
pub const DISPATCHED_SITES_NAMED: usize = 16;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One resource request in a schedule try, shared by every site it names: a request that
/// is the same for many sites is stored once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceGroup {
    /// What each of the sites is asked to hold (merged and filtered, see SPEC section 7).
    pub resources: BTreeMap<String, f64>,
    /// The sites asked for it, sorted.
    pub sites: Vec<String>,
}

/// Groups per-site requests by identical resources, keeping the sites' order.
pub fn group_requests(asked: &[ResourceRequest]) -> Vec<ResourceGroup> {
    let mut groups: Vec<ResourceGroup> = Vec::new();
    for request in asked {
        match groups.iter_mut().find(|g| g.resources == request.resources) {
            Some(group) => group.sites.push(request.site.clone()),
            None => groups.push(ResourceGroup {
                resources: request.resources.clone(),
                sites: vec![request.site.clone()],
            }),
        }
    }
    groups
}

/// One site's resource request in a schedule try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// The site asked.
    pub site: String,
    /// What it is asked to hold (merged and filtered, see SPEC section 7).
    pub resources: BTreeMap<String, f64>,
}

/// How a left-out site is known not to run a job's app any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftOutEnd {
    /// It reported the app's exit.
    Exited,
    /// It reconnected and did not list the job among the apps it runs.
    NotRunning,
    /// The stop wait is over (SPEC section 8): it stayed connected and silent for
    /// `abort_grace + client_outcome_wait` after it was told to stop, or stayed away past
    /// its `site_reconnect_grace`.
    StopWaitOver,
}

/// The facts of the history (SPEC section 3). Past tense; each names its job when it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A server process started and replayed the history; its recovery window opened.
    ServerStarted {
        /// The new server run's id (also in the envelope).
        boot_id: BootId,
    },
    /// The restart decisions of SPEC section 4 are recorded; the recovery window is closed.
    RecoveryFinished,
    /// A site connected, declaring its resources and the jobs whose apps it runs now.
    SiteConnected {
        /// The site's name.
        site: String,
        /// What it declares it can hold.
        resources: BTreeMap<String, f64>,
        /// Jobs whose app processes it is running at connect time.
        running: Vec<JobId>,
    },
    /// A site's connection is gone.
    SiteDisconnected {
        /// The site's name.
        site: String,
    },
    /// A job was stored and is `SUBMITTED` (submit or clone).
    JobSubmitted {
        /// The new job's id.
        job_id: JobId,
        /// Its validated `meta.json`.
        meta: JobMeta,
        /// The package blob.
        package: BlobHash,
        /// Who submitted (or cloned) it.
        submitter: Identity,
        /// Who signed the package, when it is signed.
        signer: Option<Identity>,
        /// When it was submitted.
        submit_time: Timestamp,
        /// The job this one was cloned from.
        cloned_from: Option<JobId>,
    },
    /// A schedule try started: these sites were asked to reserve resources. A try that
    /// asks many sites lists the rest in `ScheduleTryExtended` events that follow at once.
    ScheduleTryStarted {
        /// The job tried.
        job_id: JobId,
        /// The try's id (the sequence number of this event).
        try_id: u64,
        /// Who was asked for what, one entry per site (version-1 records only; later
        /// records leave it empty and use `requests`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        asked: Vec<ResourceRequest>,
        /// Who was asked for what, one entry per distinct request.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        requests: Vec<ResourceGroup>,
    },
    /// More sites asked by the try that the previous event started (a long list of sites
    /// is split so that every event stays small).
    ScheduleTryExtended {
        /// The job tried.
        job_id: JobId,
        /// The try.
        try_id: u64,
        /// Who else was asked for what.
        requests: Vec<ResourceGroup>,
    },
    /// A site answered (or failed to answer) the resource check of the try in flight.
    ResourceAnswered {
        /// The job tried.
        job_id: JobId,
        /// The try.
        try_id: u64,
        /// The site.
        site: String,
        /// Its answer.
        answer: ResourceAnswer,
    },
    /// The try in flight ended without an outcome because its job was aborted or deleted.
    ScheduleTryCancelled {
        /// The job.
        job_id: JobId,
        /// The try.
        try_id: u64,
    },
    /// A schedule try ended: `schedule_count` went up by one, with this outcome.
    ScheduleAttempted {
        /// The job tried.
        job_id: JobId,
        /// The outcome with its reason and numbers.
        outcome: ScheduleOutcome,
    },
    /// The job is `DISPATCHED` to the server and these sites; deployment begins.
    JobDispatched {
        /// The job.
        job_id: JobId,
        /// The participating sites, sorted.
        sites: Vec<String>,
        /// Each site's reservation token (sites chosen without a resource check have none).
        reservations: BTreeMap<String, String>,
    },
    /// More sites of the dispatch that the previous event recorded (a long list of sites
    /// is split so that every event stays small).
    JobDispatchExtended {
        /// The job.
        job_id: JobId,
        /// More participating sites, sorted, after those recorded so far.
        sites: Vec<String>,
        /// Their reservation tokens.
        reservations: BTreeMap<String, String>,
    },
    /// The server's app was deployed (or not); sites are asked next.
    DeployFinished {
        /// The job.
        job_id: JobId,
        /// `"server"` or a site.
        participant: String,
        /// Its answer.
        result: StepResult,
    },
    /// A participant's app start finished (or failed, or timed out).
    StartFinished {
        /// The job.
        job_id: JobId,
        /// `"server"` or a site.
        participant: String,
        /// Its answer.
        result: StepResult,
    },
    /// Start completed: the job is `RUNNING` with these sites.
    RunStarted {
        /// The job.
        job_id: JobId,
        /// The sites that took part (`job_clients`).
        job_clients: Vec<String>,
    },
    /// More sites that took part in the run the previous `RunStarted` recorded (a long
    /// list of sites is split so that every event stays small).
    RunClientsAdded {
        /// The job.
        job_id: JobId,
        /// More sites that took part, sorted, after those recorded so far.
        job_clients: Vec<String>,
    },
    /// After a restart, the run's server app process was not found when `reattach_grace`
    /// ended. fedrun records an app process before it can run, so a process that did not
    /// re-attach does not exist: it has ended, with an unknown outcome.
    ServerAppLost {
        /// The job.
        job_id: JobId,
    },
    /// The server app process of the job ended.
    ServerAppExited {
        /// The job.
        job_id: JobId,
        /// How it ended.
        outcome: ExitOutcome,
    },
    /// A site reported how its app process ended.
    SiteOutcomeReported {
        /// The job.
        job_id: JobId,
        /// The site.
        site: String,
        /// The report's id; a resent report with a known id is not recorded again.
        report_id: String,
        /// How the app ended.
        outcome: ExitOutcome,
        /// Whether the site says the app ended because fedrun asked it to stop (then the
        /// exit is not a failure). Absent in version-1 records, where an exit after
        /// fedrun's stop request counted as caused by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_requested: Option<bool>,
    },
    /// A site stayed disconnected past `site_reconnect_grace` with its report outstanding:
    /// its report counts as `104`.
    SiteReportLapsed {
        /// The job.
        job_id: JobId,
        /// The site.
        site: String,
    },
    /// fedrun asked the run's processes to stop (grace, then kill).
    RunStopRequested {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// Every process of the run has ended (or was given up on).
    RunStopped {
        /// The job.
        job_id: JobId,
    },
    /// The job reached this terminal status. The only event that ends a job.
    JobFinished {
        /// The job.
        job_id: JobId,
        /// The terminal status decided.
        status: RunStatus,
        /// Why, in words a user reads.
        reason: String,
    },
    /// The job is hidden from listings; its blobs are freed once unreferenced.
    JobDeleted {
        /// The job.
        job_id: JobId,
    },
    /// An admin downloaded the job's package, meta and workspace archive.
    JobDownloaded {
        /// The job.
        job_id: JobId,
    },
    /// An admin read an app's output (`fedrun logs`): the server app's when `site` is
    /// `None`, else that site's.
    LogsRead {
        /// The job.
        job_id: JobId,
        /// The site whose app's output was read; `None` for the server app.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
    },
    /// A try to archive the server workspace began (the first, or a retry).
    WorkspaceArchiveStarted {
        /// The job.
        job_id: JobId,
    },
    /// One try to archive the server workspace failed; another follows after a back-off.
    WorkspaceArchiveAttemptFailed {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// The server workspace is archived in the blob store.
    WorkspaceArchived {
        /// The job.
        job_id: JobId,
        /// The archive blob.
        hash: BlobHash,
    },
    /// Archiving was retried for `archive_retry_for` and gave up.
    WorkspaceArchiveFailed {
        /// The job.
        job_id: JobId,
        /// The last failure.
        reason: String,
    },
    /// After a restart, the run's server app process was found alive and re-attached.
    RunReattached {
        /// The job.
        job_id: JobId,
    },
    /// After a restart, the job's run was restored (`RUNNING -> RUNNING`).
    RunRestored {
        /// The job.
        job_id: JobId,
    },
    /// A site left out of the run whose app may have started (its start answer was lost,
    /// or the job ended while it was awaited, or it came back saying it runs the app of an
    /// ended run) is known not to run the app any more, or counts as ended: it reported
    /// the app's exit, it reconnected without listing the job, or the stop wait is over. Its exit is
    /// never the job's outcome; it no longer holds the run's `max_jobs` slot.
    LeftOutSiteEnded {
        /// The job.
        job_id: JobId,
        /// The site.
        site: String,
        /// How it is known.
        how: LeftOutEnd,
    },
    /// An admin request was refused; recorded so audits see it.
    RequestRefused {
        /// The job it was about, if any.
        job_id: Option<JobId>,
        /// What was asked (`submit`, `abort`, `delete`, `clone`, `download`, `logs`).
        operation: String,
        /// The refusal.
        rejection: Rejection,
    },
}

impl EventKind {
    /// The job the event is about, if any.
    pub fn job_id(&self) -> Option<JobId> {
        use EventKind::*;
        match self {
            ServerStarted { .. }
            | RecoveryFinished
            | SiteConnected { .. }
            | SiteDisconnected { .. } => None,
            RequestRefused { job_id, .. } => *job_id,
            JobSubmitted { job_id, .. }
            | ScheduleTryStarted { job_id, .. }
            | ScheduleTryExtended { job_id, .. }
            | JobDispatchExtended { job_id, .. }
            | RunClientsAdded { job_id, .. }
            | ServerAppLost { job_id }
            | ResourceAnswered { job_id, .. }
            | ScheduleTryCancelled { job_id, .. }
            | ScheduleAttempted { job_id, .. }
            | JobDispatched { job_id, .. }
            | DeployFinished { job_id, .. }
            | StartFinished { job_id, .. }
            | RunStarted { job_id, .. }
            | ServerAppExited { job_id, .. }
            | SiteOutcomeReported { job_id, .. }
            | SiteReportLapsed { job_id, .. }
            | RunStopRequested { job_id, .. }
            | RunStopped { job_id }
            | JobFinished { job_id, .. }
            | JobDeleted { job_id }
            | JobDownloaded { job_id }
            | LogsRead { job_id, .. }
            | WorkspaceArchiveStarted { job_id }
            | WorkspaceArchiveAttemptFailed { job_id, .. }
            | WorkspaceArchived { job_id, .. }
            | WorkspaceArchiveFailed { job_id, .. }
            | RunReattached { job_id }
            | RunRestored { job_id }
            | LeftOutSiteEnded { job_id, .. } => Some(*job_id),
        }
    }

    /// The variant's name in snake case, as serde writes its `type` tag.
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            ServerStarted { .. } => "server_started",
            RecoveryFinished => "recovery_finished",
            SiteConnected { .. } => "site_connected",
            SiteDisconnected { .. } => "site_disconnected",
            JobSubmitted { .. } => "job_submitted",
            ScheduleTryStarted { .. } => "schedule_try_started",
            ScheduleTryExtended { .. } => "schedule_try_extended",
            JobDispatchExtended { .. } => "job_dispatch_extended",
            RunClientsAdded { .. } => "run_clients_added",
            ServerAppLost { .. } => "server_app_lost",
            ResourceAnswered { .. } => "resource_answered",
            ScheduleTryCancelled { .. } => "schedule_try_cancelled",
            ScheduleAttempted { .. } => "schedule_attempted",
            JobDispatched { .. } => "job_dispatched",
            DeployFinished { .. } => "deploy_finished",
            StartFinished { .. } => "start_finished",
            RunStarted { .. } => "run_started",
            ServerAppExited { .. } => "server_app_exited",
            SiteOutcomeReported { .. } => "site_outcome_reported",
            SiteReportLapsed { .. } => "site_report_lapsed",
            RunStopRequested { .. } => "run_stop_requested",
            RunStopped { .. } => "run_stopped",
            JobFinished { .. } => "job_finished",
            JobDeleted { .. } => "job_deleted",
            JobDownloaded { .. } => "job_downloaded",
            LogsRead { .. } => "logs_read",
            WorkspaceArchiveStarted { .. } => "workspace_archive_started",
            WorkspaceArchiveAttemptFailed { .. } => "workspace_archive_attempt_failed",
            WorkspaceArchived { .. } => "workspace_archived",
            WorkspaceArchiveFailed { .. } => "workspace_archive_failed",
            RunReattached { .. } => "run_reattached",
            RunRestored { .. } => "run_restored",
            LeftOutSiteEnded { .. } => "left_out_site_ended",
            RequestRefused { .. } => "request_refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BlobHash;
    use proptest::prelude::*;

    proptest! {
        /// Hashes order as their bytes, whichever half differs.
        #[test]
        fn hashes_order_as_their_bytes(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
            same_high in any::<bool>(),
        ) {
            let mut b = b;
            if same_high {
                b[..16].copy_from_slice(&a[..16]);
            }
            prop_assert_eq!(BlobHash(a).cmp(&BlobHash(b)), a.cmp(&b));
        }

        /// The text form reads back, in either case, through a borrowed and an owned string.
        #[test]
        fn hashes_read_back_from_their_text(bytes in any::<[u8; 32]>()) {
            let hash = BlobHash(bytes);
            let json = serde_json::to_string(&hash).expect("encodes");
            prop_assert_eq!(serde_json::from_str::<BlobHash>(&json).expect("decodes"), hash);
            let upper = serde_json::Value::String(hash.to_hex().to_uppercase());
            prop_assert_eq!(serde_json::from_value::<BlobHash>(upper).expect("decodes"), hash);
            let packed = rmp_serde::to_vec(&hash).expect("encodes");
            prop_assert_eq!(rmp_serde::from_slice::<BlobHash>(&packed).expect("decodes"), hash);
        }
    }

    /// A stored hash and an optional one, as the state's fields hold them.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Stored {
        #[serde(with = "super::stored_hash")]
        hash: BlobHash,
        #[serde(with = "super::stored_hash::option")]
        maybe: Option<BlobHash>,
    }

    /// The same fields with the hashes as text: what a format-1 snapshot holds.
    #[derive(serde::Serialize)]
    struct AsText {
        hash: BlobHash,
        maybe: Option<BlobHash>,
    }

    proptest! {
        /// A stored hash is 32 raw bytes in MessagePack and hex text in JSON, and reads
        /// back from either form in either encoding.
        #[test]
        fn stored_hashes_are_raw_bytes_in_messagepack_and_read_back_from_both_forms(
            bytes in any::<[u8; 32]>(),
            other in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let stored = Stored { hash: BlobHash(bytes), maybe: other.map(BlobHash) };
            let packed = rmp_serde::to_vec(&stored).expect("encodes");
            let mut expected = vec![0x92, 0xc4, 32];
            expected.extend_from_slice(&bytes);
            match other {
                Some(other) => {
                    expected.extend_from_slice(&[0xc4, 32]);
                    expected.extend_from_slice(&other);
                }
                None => expected.push(0xc0),
            }
            prop_assert_eq!(&packed, &expected);
            prop_assert_eq!(&rmp_serde::from_slice::<Stored>(&packed).expect("decodes"), &stored);
            let json = serde_json::to_string(&stored).expect("encodes");
            prop_assert!(json.contains(&BlobHash(bytes).to_hex()));
            prop_assert_eq!(&serde_json::from_str::<Stored>(&json).expect("decodes"), &stored);
            let text = AsText { hash: stored.hash, maybe: stored.maybe };
            let named = rmp_serde::to_vec_named(&text).expect("encodes");
            prop_assert_eq!(&rmp_serde::from_slice::<Stored>(&named).expect("decodes"), &stored);
        }
    }

    #[test]
    fn a_stored_hash_of_the_wrong_length_is_named() {
        let mut packed = vec![0x92, 0xc4, 31];
        packed.extend_from_slice(&[7; 31]);
        packed.push(0xc0);
        let err = rmp_serde::from_slice::<Stored>(&packed).expect_err("31 bytes");
        assert!(err.to_string().contains("invalid length 31"), "{err}");
        let packed = [0x92, 0x07, 0xc0];
        assert!(
            rmp_serde::from_slice::<Stored>(&packed).is_err(),
            "a number"
        );
    }

    #[test]
    fn a_bad_hash_text_is_named() {
        let err = serde_json::from_str::<BlobHash>("\"abc\"").expect_err("too short");
        assert!(
            err.to_string().contains("`abc` is not a BLAKE3 hash"),
            "{err}"
        );
        assert!(serde_json::from_str::<BlobHash>("12").is_err());
    }
}
