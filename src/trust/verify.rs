//! Verification of a signed job folder (SPEC section 6), at an injected time.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rsa::pss::{Signature, VerifyingKey};
use rsa::signature::DigestVerifier;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};

use super::certs::{parse_pem_chain, verify_chain, CertError, ChainError, RootCa};
use super::sigfile::{GarbledSignature, SigFileError, SignatureFile, SIG_FILE_MAX_BYTES};
use super::{max_pss_salt_len, SignerIdentity, SIG_FILE, SUBMITTER_CERT_FILE};

/// The largest `.__nvfl_submitter.crt` accepted (bytes).
pub const CERT_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// Why a job folder does not verify. Every variant names the file or directory and the
/// check that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The path given is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Reading the folder failed.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A symbolic link was found; signed jobs may not contain any.
    #[error("{path} is a symbolic link; signed jobs may not contain symbolic links")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// An entry that is neither a regular file nor a directory.
    #[error("{path} is not a regular file or directory")]
    SpecialFile {
        /// The entry.
        path: PathBuf,
    },
    /// A name that is not UTF-8 cannot have a signature entry.
    #[error("{path}: name is not valid UTF-8")]
    NonUtf8Name {
        /// The entry.
        path: PathBuf,
    },
    /// A directory lacks its signature file.
    #[error("{dir} has no {SIG_FILE}: the directory is not signed")]
    MissingSignatureFile {
        /// The directory.
        dir: PathBuf,
    },
    /// A directory lacks its signer certificate.
    #[error("{dir} has no {SUBMITTER_CERT_FILE}: the directory is not signed")]
    MissingCertificate {
        /// The directory.
        dir: PathBuf,
    },
    /// A signature file is malformed.
    #[error("{path}: {cause}")]
    BadSignatureFile {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        cause: SigFileError,
    },
    /// A certificate file is malformed.
    #[error("{path}: {cause}")]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        cause: CertError,
    },
    /// A certificate file is larger than [`CERT_FILE_MAX_BYTES`].
    #[error("{path} is {size} bytes, over the limit of {CERT_FILE_MAX_BYTES}")]
    CertificateTooLarge {
        /// The certificate file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The signer's certificate chain is not accepted.
    #[error("{path}: {source}")]
    Chain {
        /// The certificate file.
        path: PathBuf,
        /// Which chain check failed.
        #[source]
        source: ChainError,
    },
    /// A directory is signed with another certificate than the job's top directory.
    #[error("{path} holds a different signer certificate than the job's top directory ({first} vs {this})")]
    SignerChanged {
        /// The certificate file.
        path: PathBuf,
        /// The signer of the top directory.
        first: Box<SignerIdentity>,
        /// The signer of this directory.
        this: Box<SignerIdentity>,
    },
    /// A file or subdirectory has no signature entry.
    #[error("{path} has no entry in {sig_file}: it was added or renamed after signing")]
    MissingEntry {
        /// The unsigned file or directory.
        path: PathBuf,
        /// The signature file that lacks it.
        sig_file: PathBuf,
    },
    /// A signature entry is not valid base64.
    #[error("{path}: the entry in {sig_file} is garbled: {cause}")]
    GarbledSignature {
        /// The file or directory the entry is for.
        path: PathBuf,
        /// The signature file.
        sig_file: PathBuf,
        /// What the decoder said.
        cause: GarbledSignature,
    },
    /// A signature does not verify: the file was changed, or the directory renamed.
    #[error("{path}: signature does not verify (the {what} was changed after signing, or signed by another key)")]
    SignatureMismatch {
        /// The file or directory.
        path: PathBuf,
        /// `file content` or `directory name`.
        what: &'static str,
    },
}

/// Verifies a signed job folder at time `at` against the project root CA and returns who
/// signed it.
///
/// The rules (SPEC section 6): no symbolic links or special files anywhere; every
/// directory holds `.__nvfl_sig.json` and `.__nvfl_submitter.crt`; the certificate chain
/// passes [`verify_chain`] (it leads to `root`, every certificate on it is valid at `at`,
/// the CA and leaf rules hold); every file (over its
/// bytes) and every immediate subdirectory (over its UTF-8 name) has an entry whose
/// RSA-PSS signature verifies; entries for names that do not exist are ignored. All
/// directories must carry the same signer certificate. Directories and entries are
/// checked in sorted order, so the reported failure is the same on every file system.
pub fn verify_job_folder(
    path: &Path,
    root: &RootCa,
    at: SystemTime,
) -> Result<SignerIdentity, VerifyError> {
    let meta = fs::symlink_metadata(path).map_err(|source| VerifyError::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(VerifyError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(VerifyError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let mut signer: Option<Signer> = None;
    // An explicit stack rather than recursion: a hostile folder may be nested deeply.
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let listing = list_directory(&dir)?;
        let dir_signer = check_directory_signer(&dir, &listing, root, at, &mut signer)?;
        let sig_path = dir.join(SIG_FILE);
        let signatures = read_signature_file(&sig_path)?;
        let verifying_key = &dir_signer.verifying_key;
        let mut subdirs = Vec::new();
        for entry in &listing.entries {
            if entry.name == SIG_FILE || entry.name == SUBMITTER_CERT_FILE {
                continue;
            }
            let entry_path = dir.join(&entry.name);
            let signature = match signatures.signature(&entry.name) {
                None => {
                    return Err(VerifyError::MissingEntry {
                        path: entry_path,
                        sig_file: sig_path,
                    })
                }
                Some(Err(source)) => {
                    return Err(VerifyError::GarbledSignature {
                        path: entry_path,
                        sig_file: sig_path,
                        cause: source,
                    })
                }
                Some(Ok(bytes)) => bytes,
            };
            let (digest, what) = if entry.is_dir {
                subdirs.push(entry_path.clone());
                (
                    Sha256::new_with_prefix(entry.name.as_bytes()),
                    "directory name",
                )
            } else {
                (hash_file(&entry_path)?, "file content")
            };
            let verified = Signature::try_from(signature.as_slice())
                .ok()
                .is_some_and(|sig| verifying_key.verify_digest(digest, &sig).is_ok());
            if !verified {
                return Err(VerifyError::SignatureMismatch {
                    path: entry_path,
                    what,
                });
            }
        }
        // Reverse so that popping from the stack visits subdirectories in sorted order.
        pending.extend(subdirs.into_iter().rev());
    }
    let signer = signer.ok_or_else(|| VerifyError::MissingSignatureFile {
        dir: path.to_path_buf(),
    })?;
    tracing::debug!(job = %path.display(), signer = %signer.identity, "job folder verified");
    Ok(signer.identity)
}

/// True when `path` looks signed: its top directory holds either signature file. The
/// policy uses this to tell an unsigned job from a badly signed one.
pub fn looks_signed(path: &Path) -> bool {
    [SIG_FILE, SUBMITTER_CERT_FILE]
        .iter()
        .any(|name| fs::symlink_metadata(path.join(name)).is_ok())
}

/// The signer certificate shared by all directories, verified once.
#[derive(Clone)]
struct Signer {
    leaf_der: Vec<u8>,
    chain_pem: Vec<u8>,
    identity: SignerIdentity,
    verifying_key: VerifyingKey<Sha256>,
}

struct Entry {
    name: String,
    is_dir: bool,
}

struct Listing {
    entries: Vec<Entry>,
}

fn list_directory(dir: &Path) -> Result<Listing, VerifyError> {
    let io = |source| VerifyError::Io {
        path: dir.to_path_buf(),
        cause: source,
    };
    let mut entries = Vec::new();
    for item in fs::read_dir(dir).map_err(io)? {
        let item = item.map_err(io)?;
        let path = item.path();
        let file_type = item.file_type().map_err(|source| VerifyError::Io {
            path: path.clone(),
            cause: source,
        })?;
        if file_type.is_symlink() {
            return Err(VerifyError::Symlink { path });
        }
        if !file_type.is_file() && !file_type.is_dir() {
            return Err(VerifyError::SpecialFile { path });
        }
        let Ok(name) = item.file_name().into_string() else {
            return Err(VerifyError::NonUtf8Name { path });
        };
        entries.push(Entry {
            name,
            is_dir: file_type.is_dir(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing { entries })
}

/// Checks that the directory has both signature files, verifies its certificate chain
/// (once per distinct chain), and that it is the same signer as the top directory.
fn check_directory_signer(
    dir: &Path,
    listing: &Listing,
    root: &RootCa,
    at: SystemTime,
    first: &mut Option<Signer>,
) -> Result<Signer, VerifyError> {
    let present = |name: &str| {
        listing
            .entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.is_dir)
    };
    let sig_path = dir.join(SIG_FILE);
    match present(SIG_FILE) {
        None => {
            return Err(VerifyError::MissingSignatureFile {
                dir: dir.to_path_buf(),
            })
        }
        Some(true) => return Err(VerifyError::SpecialFile { path: sig_path }),
        Some(false) => {}
    }
    let cert_path = dir.join(SUBMITTER_CERT_FILE);
    match present(SUBMITTER_CERT_FILE) {
        None => {
            return Err(VerifyError::MissingCertificate {
                dir: dir.to_path_buf(),
            })
        }
        Some(true) => return Err(VerifyError::SpecialFile { path: cert_path }),
        Some(false) => {}
    }
    let pem = read_bounded(&cert_path, CERT_FILE_MAX_BYTES).map_err(|e| match e {
        BoundedReadError::Io(source) => VerifyError::Io {
            path: cert_path.clone(),
            cause: source,
        },
        BoundedReadError::TooLarge(size) => VerifyError::CertificateTooLarge {
            path: cert_path.clone(),
            size,
        },
    })?;
    if let Some(known) = first.as_ref() {
        if known.chain_pem == pem {
            return Ok(known.clone());
        }
    }
    let chain = parse_pem_chain(&pem).map_err(|source| VerifyError::BadCertificate {
        path: cert_path.clone(),
        cause: source,
    })?;
    let identity = verify_chain(&chain, root, at).map_err(|source| VerifyError::Chain {
        path: cert_path.clone(),
        source,
    })?;
    let leaf = &chain[0]; // verify_chain rejects an empty chain, so a leaf exists.
    let public_key: RsaPublicKey = leaf.rsa_public_key().ok_or_else(|| VerifyError::Chain {
        path: cert_path.clone(),
        source: ChainError::LeafKeyNotRsa {
            subject: leaf.subject_string(),
        },
    })?;
    let salt_len = max_pss_salt_len(public_key.n().bits());
    let signer = Signer {
        leaf_der: leaf.der().to_vec(),
        chain_pem: pem,
        identity,
        verifying_key: VerifyingKey::new_with_salt_len(public_key, salt_len),
    };
    match first {
        None => {
            *first = Some(signer.clone());
            Ok(signer)
        }
        Some(known) if known.leaf_der == signer.leaf_der => Ok(signer),
        Some(known) => Err(VerifyError::SignerChanged {
            path: cert_path,
            first: Box::new(known.identity.clone()),
            this: Box::new(signer.identity),
        }),
    }
}

fn read_signature_file(path: &Path) -> Result<SignatureFile, VerifyError> {
    let bytes = read_bounded(path, SIG_FILE_MAX_BYTES).map_err(|e| match e {
        BoundedReadError::Io(source) => VerifyError::Io {
            path: path.to_path_buf(),
            cause: source,
        },
        BoundedReadError::TooLarge(size) => VerifyError::BadSignatureFile {
            path: path.to_path_buf(),
            cause: SigFileError::TooLarge { size },
        },
    })?;
    SignatureFile::parse(&bytes).map_err(|source| VerifyError::BadSignatureFile {
        path: path.to_path_buf(),
        cause: source,
    })
}

enum BoundedReadError {
    Io(std::io::Error),
    TooLarge(u64),
}

/// Reads a whole file, refusing more than `limit` bytes without reading them.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    let file = open_no_follow(path).map_err(BoundedReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(BoundedReadError::Io)?;
    if bytes.len() as u64 > limit {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(limit + 1);
        return Err(BoundedReadError::TooLarge(size));
    }
    Ok(bytes)
}

/// Opens a file for reading, refusing a symlink put in place after the folder was listed.
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// SHA-256 of a file's bytes, streamed so large files are not held in memory.
pub(crate) fn hash_file(path: &Path) -> Result<Sha256, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let mut file = open_no_follow(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher)
}
