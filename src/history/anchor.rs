//! The anchor: the head of the history as known outside sled, rewritten by every batch.
//!
//! sled silently truncates its log at the first log entry that fails its own checksum.
//! The anchor turns that into reported data loss: it records, for the last batch written,
//! the head before the batch (`acked`: acknowledged, so it must never be lost) and the
//! head after it (`head`), plus the id of the machine's boot that wrote it.
//!
//! The file `D/anchor` is 4 KiB, written in full when created (so its blocks are
//! allocated and an overwrite changes no file metadata) and then overwritten in place:
//! two 512-byte slots, used in turn, each with its own BLAKE3 checksum. A write torn by a
//! power loss damages at most the slot being written; the other still holds the previous
//! anchor. A reader takes the valid slot with the higher generation.
//!
//! Ordering (see [`crate::history::sled_store`]): a batch's records are handed to the
//! kernel (sled's flush) *before* its anchor slot is written, and the two fdatasyncs then
//! run at the same time; the batch is acknowledged only when both have returned.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::ChainHash;
use super::storage::Head;

/// The size of the anchor file.
pub const FILE_BYTES: usize = 4096;
/// The size of one slot (one disk sector, so a torn write damages one slot only).
const SLOT_BYTES: usize = 512;
const MAGIC: &[u8; 8] = b"FRANCHOR";
const VERSION: u32 = 1;
/// Bytes covered by a slot's checksum.
const BODY_BYTES: usize = 116;

/// The id of the running machine's boot (Linux: `/proc/sys/kernel/random/boot_id`);
/// all zeros when it cannot be read. A process kill keeps the page cache, a machine stop
/// does not: the boot id tells the two apart.
pub type BootId = [u8; 16];

/// The boot id of the running machine, or all zeros when unknown.
pub fn current_boot_id() -> BootId {
    static BOOT: std::sync::OnceLock<BootId> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|text| uuid::Uuid::parse_str(text.trim()).ok())
            .map(|id| *id.as_bytes())
            .unwrap_or([0; 16])
    })
}

/// What the anchor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// Every record up to here was acknowledged: losing any of them is data loss.
    pub acked: Head,
    /// The head after the last batch written. The batch `acked.seq + 1 ..= head.seq` is
    /// acknowledged only if its append returned; after a machine stop it may be missing
    /// without loss (see [`crate::history::History::open`]).
    pub head: Head,
    /// The boot of the machine that wrote this anchor.
    pub boot: BootId,
}

impl Anchor {
    /// An anchor saying that every record up to `head` is durable and acknowledged.
    pub fn settled(head: Head) -> Anchor {
        Anchor {
            acked: head,
            head,
            boot: current_boot_id(),
        }
    }
}

fn encode_slot(anchor: &Anchor, generation: u64) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0..8].copy_from_slice(MAGIC);
    slot[8..12].copy_from_slice(&VERSION.to_le_bytes());
    slot[12..20].copy_from_slice(&generation.to_le_bytes());
    slot[20..28].copy_from_slice(&anchor.acked.seq.to_le_bytes());
    slot[28..60].copy_from_slice(&anchor.acked.hash.0);
    slot[60..68].copy_from_slice(&anchor.head.seq.to_le_bytes());
    slot[68..100].copy_from_slice(&anchor.head.hash.0);
    slot[100..116].copy_from_slice(&anchor.boot);
    let sum = blake3::hash(&slot[..BODY_BYTES]);
    slot[BODY_BYTES..BODY_BYTES + 32].copy_from_slice(sum.as_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, Anchor)> {
    if slot.len() < BODY_BYTES + 32 || &slot[0..8] != MAGIC {
        return None;
    }
    if blake3::hash(&slot[..BODY_BYTES]).as_bytes() != &slot[BODY_BYTES..BODY_BYTES + 32] {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().unwrap_or([0; 8]));
    let hash_at = |at: usize| ChainHash(slot[at..at + 32].try_into().unwrap_or([0; 32]));
    if u32::from_le_bytes(slot[8..12].try_into().unwrap_or([0; 4])) != VERSION {
        return None;
    }
    let boot: BootId = slot[100..116].try_into().unwrap_or([0; 16]);
    Some((
        u64_at(12),
        Anchor {
            acked: Head {
                seq: u64_at(20),
                hash: hash_at(28),
            },
            head: Head {
                seq: u64_at(60),
                hash: hash_at(68),
            },
            boot,
        },
    ))
}

/// Decodes an anchor file's bytes: the valid slot with the higher generation, and that
/// generation. `None` when no slot is valid (a damaged or foreign file).
pub fn decode(bytes: &[u8]) -> Option<(u64, Anchor)> {
    bytes
        .chunks(SLOT_BYTES)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|(generation, _)| *generation)
}

/// Why an anchor file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot be read")]
    Io(#[source] io::Error),
    /// Neither slot holds a valid anchor.
    #[error("is damaged: neither of its two slots holds a valid anchor")]
    Damaged,
}

/// Reads the anchor at `path`; `Ok(None)` when there is no file.
pub fn read(path: &Path) -> Result<Option<Anchor>, ReadError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes)
            .map(|(_, anchor)| Some(anchor))
            .ok_or(ReadError::Damaged),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(ReadError::Io(err)),
    }
}

/// The anchor file, open for overwriting in place.
#[derive(Debug)]
pub struct AnchorFile {
    file: File,
    generation: u64,
}

impl AnchorFile {
    /// Creates the anchor file at `path` (mode 0600) holding `anchor` in both slots,
    /// durably (the file and its folder are fsynced).
    pub fn create(path: &Path, anchor: &Anchor) -> io::Result<AnchorFile> {
        let file = super::private::create_file(path)?;
        let mut bytes = vec![0u8; FILE_BYTES];
        bytes[..SLOT_BYTES].copy_from_slice(&encode_slot(anchor, 0));
        bytes[SLOT_BYTES..2 * SLOT_BYTES].copy_from_slice(&encode_slot(anchor, 1));
        file.set_len(0)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_all()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::blobs::sync_dir(dir)?;
        Ok(AnchorFile {
            file,
            generation: 1,
        })
    }

    /// Opens an existing anchor file for overwriting; `Ok(None)` when it is missing or
    /// damaged (the caller decides whether that is data loss).
    pub fn open(path: &Path) -> io::Result<Option<AnchorFile>> {
        let file = match super::private::file_options()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut bytes = vec![0u8; FILE_BYTES];
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        if len != FILE_BYTES {
            return Ok(None);
        }
        file.read_exact_at(&mut bytes, 0)?;
        Ok(decode(&bytes).map(|(generation, _)| AnchorFile { file, generation }))
    }

    /// Overwrites the older slot with `anchor`. Not durable until [`AnchorFile::sync`].
    pub fn write(&mut self, anchor: &Anchor) -> io::Result<()> {
        let generation = self.generation + 1;
        let offset = (generation % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&encode_slot(anchor, generation), offset)?;
        self.generation = generation;
        Ok(())
    }

    /// Makes the last write durable (fdatasync: the file's size and blocks never change).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}
