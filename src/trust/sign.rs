//! Signing a job folder the way NVFlare's `sign_folders` does.

use std::fs;
use std::path::{Path, PathBuf};

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::pss::SigningKey;
use rsa::signature::{RandomizedDigestSigner, SignatureEncoding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use super::certs::{parse_pem_chain, CertError};
use super::sigfile::{encode_signature, to_python_json};
use super::verify::{hash_file, VerifyError};
use super::{max_pss_salt_len, SignerIdentity, SIG_FILE, SUBMITTER_CERT_FILE};

/// A signing certificate chain with its private key.
pub struct Signer {
    chain_pem: Vec<u8>,
    identity: SignerIdentity,
    key: SigningKey<Sha256>,
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key or certificate file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A certificate or key file could not be read, or is too large to be one.
    #[error(transparent)]
    File(#[from] super::files::ReadFileError),
    /// The certificate file is malformed.
    #[error("{path}: {cause}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        cause: CertError,
    },
    /// The key file is neither a PKCS #1 nor a PKCS #8 RSA private key in PEM.
    #[error("{path} is not an RSA private key in PEM (PKCS #1 or PKCS #8)")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate.
    #[error("the private key does not match the public key of certificate {subject}")]
    KeyDoesNotMatch {
        /// The certificate's subject.
        subject: String,
    },
    /// The folder holds something that cannot be signed (symlink, special file,
    /// non-UTF-8 name), or could not be read or written.
    #[error(transparent)]
    Folder(#[from] VerifyError),
    /// Writing a signature file failed.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The RSA signing operation failed.
    #[error("signing {path} failed: {reason}")]
    Crypto {
        /// The entry being signed.
        path: PathBuf,
        /// What the RSA code said.
        reason: String,
    },
}

impl Signer {
    /// Builds a signer from PEM bytes: the certificate chain (leaf first) and the leaf's
    /// RSA private key (PKCS #1 `RSA PRIVATE KEY`, as NVFlare writes it, or PKCS #8).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, SignError> {
        Self::from_pem_named(chain_pem, key_pem, Path::new("<cert>"), Path::new("<key>"))
    }

    /// Reads a signer from a certificate file and a key file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, SignError> {
        use super::files::{read_bounded, PEM_FILE_MAX_BYTES};
        let chain = read_bounded(cert_path, PEM_FILE_MAX_BYTES, "certificate chain")?;
        let key = read_bounded(key_path, PEM_FILE_MAX_BYTES, "private key")?;
        Self::from_pem_named(&chain, &key, cert_path, key_path)
    }

    fn from_pem_named(
        chain_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, SignError> {
        let chain = parse_pem_chain(chain_pem).map_err(|source| SignError::BadCertificate {
            path: cert_path.to_path_buf(),
            cause: source,
        })?;
        let leaf = &chain[0]; // parse_pem_chain returns at least one certificate.
        let bad_key = || SignError::BadKey {
            path: key_path.to_path_buf(),
        };
        let key_text = std::str::from_utf8(key_pem).map_err(|_| bad_key())?;
        let private = RsaPrivateKey::from_pkcs1_pem(key_text)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(key_text))
            .map_err(|_| bad_key())?;
        if leaf.rsa_public_key().as_ref() != Some(private.as_ref()) {
            return Err(SignError::KeyDoesNotMatch {
                subject: leaf.subject_string(),
            });
        }
        let salt_len = max_pss_salt_len(private.n().bits());
        Ok(Self {
            chain_pem: chain_pem.to_vec(),
            identity: leaf.identity(),
            key: SigningKey::new_with_salt_len(private, salt_len),
        })
    }

    /// The identity in the signing certificate.
    pub fn identity(&self) -> &SignerIdentity {
        &self.identity
    }

    fn sign(&self, digest: Sha256, path: &Path) -> Result<String, SignError> {
        let signature = self
            .key
            .try_sign_digest_with_rng(&mut rand::thread_rng(), digest)
            .map_err(|e| SignError::Crypto {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(encode_signature(&signature.to_bytes()))
    }
}

/// What signing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignReport {
    /// Directories that received signature files.
    pub directories: usize,
    /// Files signed (the signature files themselves excluded).
    pub files: usize,
    /// Bytes of file content signed.
    pub bytes: u64,
}

/// Signs every directory of `folder`: writes `.__nvfl_sig.json` (an entry per file over
/// its bytes and per immediate subdirectory over its UTF-8 name, files first, each group
/// in sorted order, in Python's `json.dump` format) and `.__nvfl_submitter.crt` (the
/// signer's chain, byte for byte). Existing signature files are replaced. Symlinks,
/// special files and non-UTF-8 names are refused before anything is written.
pub fn sign_job_folder(folder: &Path, signer: &Signer) -> Result<SignReport, SignError> {
    let tree = collect_tree(folder)?;
    let mut report = SignReport {
        directories: 0,
        files: 0,
        bytes: 0,
    };
    for dir in &tree {
        let mut entries = Vec::with_capacity(dir.files.len() + dir.subdirs.len());
        for name in &dir.files {
            let path = dir.path.join(name);
            let digest = hash_file(&path)?;
            report.bytes += fs::metadata(&path)
                .map_err(|source| SignError::Read {
                    path: path.clone(),
                    cause: source,
                })?
                .len();
            entries.push((name.clone(), signer.sign(digest, &path)?));
            report.files += 1;
        }
        for name in &dir.subdirs {
            let path = dir.path.join(name);
            let digest = Sha256::new_with_prefix(name.as_bytes());
            entries.push((name.clone(), signer.sign(digest, &path)?));
        }
        write_file(
            &dir.path.join(SIG_FILE),
            to_python_json(&entries).as_bytes(),
        )?;
        write_file(&dir.path.join(SUBMITTER_CERT_FILE), &signer.chain_pem)?;
        report.directories += 1;
    }
    tracing::info!(folder = %folder.display(), signer = %signer.identity, files = report.files, "job folder signed");
    Ok(report)
}

struct DirToSign {
    path: PathBuf,
    files: Vec<String>,
    subdirs: Vec<String>,
}

/// Lists the whole tree first, so a symlink found deep inside stops signing before any
/// signature file is written.
fn collect_tree(folder: &Path) -> Result<Vec<DirToSign>, VerifyError> {
    let meta = fs::symlink_metadata(folder).map_err(|source| VerifyError::Io {
        path: folder.to_path_buf(),
        cause: source,
    })?;
    if !meta.is_dir() {
        return Err(VerifyError::NotADirectory {
            path: folder.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(path) = pending.pop() {
        let io = |source| VerifyError::Io {
            path: path.clone(),
            cause: source,
        };
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        for item in fs::read_dir(&path).map_err(io)? {
            let item = item.map_err(io)?;
            let item_path = item.path();
            let file_type = item.file_type().map_err(io)?;
            if file_type.is_symlink() {
                return Err(VerifyError::Symlink { path: item_path });
            }
            let Ok(name) = item.file_name().into_string() else {
                return Err(VerifyError::NonUtf8Name { path: item_path });
            };
            if file_type.is_dir() {
                subdirs.push(name);
            } else if file_type.is_file() {
                if name != SIG_FILE && name != SUBMITTER_CERT_FILE {
                    files.push(name);
                }
            } else {
                return Err(VerifyError::SpecialFile { path: item_path });
            }
        }
        files.sort();
        subdirs.sort();
        pending.extend(subdirs.iter().rev().map(|name| path.join(name)));
        out.push(DirToSign {
            path,
            files,
            subdirs,
        });
    }
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    fs::write(path, bytes).map_err(|source| SignError::Write {
        path: path.to_path_buf(),
        cause: source,
    })
}
