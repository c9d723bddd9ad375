//! Verifying a stored job package at submit and at deploy (SPEC section 6, Changed).
//!
//! The server checks a package's signature before it queues the job, and again when it
//! deploys it, at the time of the job's `JobSubmitted`. The package is the canonical zip
//! from the blob store; it is unpacked into a private temporary folder and judged there by
//! [`check_job`], exactly as the sites judge what they deploy, so there is one set of
//! signature rules and one implementation of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::blobs::{BlobError, BlobHash, BlobStore};
use crate::job::limits::Limits;
use crate::job::package::{unpack, UnpackError};
use crate::lifecycle::time::Timestamp;

use super::certs::RootCa;
use super::policy::{check_job, JobTrust, PolicyError, TrustPolicy};
use super::verify::{verify_job_folder, VerifyError};
use super::{SignerIdentity, SIG_FILE};

/// Why a package is refused at submit (or at deploy). The first three are the refusals
/// SPEC section 6 names; the others mean the package could not be judged at all.
#[derive(Debug, thiserror::Error)]
pub enum SubmitRefusal {
    /// The package is unsigned and the policy requires signed jobs, or no root CA is
    /// configured to check a required signature.
    #[error(transparent)]
    Unsigned(PolicyError),
    /// The package is signed and its signature does not verify (files named by their path
    /// inside the package).
    #[error("{0}")]
    BadSignature(String),
    /// The package verifies, but its signer's role may not submit jobs.
    #[error("job is signed by {signer}, whose role may not submit jobs (only project_admin and lead may)")]
    SignerMayNotSubmit {
        /// Who signed it.
        signer: SignerIdentity,
    },
    /// The stored package could not be read from the blob store.
    #[error("cannot read the stored job package: {0}")]
    Blob(BlobError),
    /// The stored package could not be unpacked to check it.
    #[error("cannot unpack the job package to check its signature: {0}")]
    Unpack(UnpackError),
    /// No private temporary folder could be made to unpack it into.
    #[error("cannot create a temporary folder in {path} to check the job's signature: {cause}")]
    Scratch {
        /// Where the folder was to be made.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
}

impl From<PolicyError> for SubmitRefusal {
    fn from(error: PolicyError) -> Self {
        match error {
            PolicyError::BadSignature(_) => SubmitRefusal::BadSignature(error.to_string()),
            PolicyError::UnsignedJobRejected { .. } | PolicyError::NoRootCa { .. } => {
                SubmitRefusal::Unsigned(error)
            }
        }
    }
}

/// Checks a canonical package zip against `policy` at time `at` and returns its trust:
/// [`JobTrust::Signed`] with the signer (whose role may submit), or [`JobTrust::Unsigned`]
/// when the policy allows unsigned jobs (the caller then checks the submitter's role).
///
/// The zip is unpacked into a private temporary folder under `scratch` (the system's
/// temporary folder when `None`), which is removed before this returns. `limits` bound
/// the unpack as at ingest. The node calls this at submit, before the job is queued, with
/// `at` = now, and at deploy with `at` = the job's `JobSubmitted` time
/// ([`timestamp_to_system_time`]).
pub fn check_package_zip(
    zip: &[u8],
    policy: &TrustPolicy,
    at: SystemTime,
    limits: &Limits,
    scratch: Option<&Path>,
) -> Result<JobTrust, SubmitRefusal> {
    let (_temp, job) = unpack_to_scratch(zip, limits, scratch).map_err(|e| match e {
        ScratchError::Scratch { path, source } => SubmitRefusal::Scratch {
            path,
            cause: source,
        },
        ScratchError::Unpack(e) => SubmitRefusal::Unpack(e),
    })?;
    // Messages name files by their path inside the package, never the temporary folder
    // (which is gone by the time anyone reads them, and is the checker's business).
    let trust = check_job(&job, policy, at).map_err(|error| match error {
        PolicyError::UnsignedJobRejected { .. } => {
            SubmitRefusal::Unsigned(PolicyError::UnsignedJobRejected {
                path: PathBuf::from("package"),
            })
        }
        PolicyError::NoRootCa { .. } => SubmitRefusal::Unsigned(PolicyError::NoRootCa {
            path: PathBuf::from("package"),
        }),
        PolicyError::BadSignature(_) => {
            let prefix = format!("{}/", job.display());
            SubmitRefusal::BadSignature(error.to_string().replace(&prefix, ""))
        }
    })?;
    if let JobTrust::Signed(signer) = &trust {
        if !signer.may_submit() {
            return Err(SubmitRefusal::SignerMayNotSubmit {
                signer: signer.clone(),
            });
        }
    }
    Ok(trust)
}

/// [`check_package_zip`] for a package in the blob store, read (and its hash checked)
/// by `hash`.
pub fn check_package_blob(
    blobs: &BlobStore,
    hash: &BlobHash,
    policy: &TrustPolicy,
    at: SystemTime,
    limits: &Limits,
    scratch: Option<&Path>,
) -> Result<JobTrust, SubmitRefusal> {
    let zip = blobs.get(hash).map_err(SubmitRefusal::Blob)?;
    check_package_zip(&zip, policy, at, limits, scratch)
}

/// The wall-clock time of an event's `at`, for verifying certificates as of that moment.
/// Times before 1970 (which no event carries) are taken as 1970.
pub fn timestamp_to_system_time(at: Timestamp) -> SystemTime {
    let millis = u64::try_from(at.as_millis()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// Why a zip of a signed job did not verify ([`verify_job_zip`]).
#[derive(Debug, thiserror::Error)]
pub enum ZipVerifyError {
    /// The zip is malformed, hostile or over the limits.
    #[error("cannot unpack the job zip: {0}")]
    Unpack(UnpackError),
    /// No private temporary folder could be made to unpack it into.
    #[error("cannot create a temporary folder in {path} to unpack the job zip: {cause}")]
    Scratch {
        /// Where the folder was to be made.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The unpacked job does not verify. The message names files by their path inside
    /// the zip, not in the temporary folder (which is gone by the time anyone reads it).
    #[error("{message}")]
    Verify {
        /// The reason, with paths relative to the job.
        message: String,
        /// The verification failure as found (its paths are in the removed temporary
        /// folder); kept for callers that match on the kind. Boxed: it is large, and
        /// the error travels in every `Result` of this function.
        reason: Box<VerifyError>,
    },
}

/// Verifies a zip of a signed job folder (any zip tool's, not only the canonical form) at
/// time `at` against `root`, as [`verify_job_folder`] verifies the folder, and returns
/// who signed it. A zip of one folder (`job/meta.json`, `job/.__nvfl_sig.json`, ...) is
/// verified from that folder. `limits` bound the unpack; the temporary copy is made
/// under `scratch` (the system's temporary folder when `None`) and removed.
pub fn verify_job_zip(
    zip: &[u8],
    root: &RootCa,
    at: SystemTime,
    limits: &Limits,
    scratch: Option<&Path>,
) -> Result<SignerIdentity, ZipVerifyError> {
    let (_temp, unpacked) = unpack_to_scratch(zip, limits, scratch).map_err(|e| match e {
        ScratchError::Scratch { path, source } => ZipVerifyError::Scratch {
            path,
            cause: source,
        },
        ScratchError::Unpack(e) => ZipVerifyError::Unpack(e),
    })?;
    let job = job_root(&unpacked);
    verify_job_folder(&job, root, at).map_err(|reason| {
        let prefix = format!("{}/", job.display());
        let message = reason.to_string().replace(&prefix, "");
        ZipVerifyError::Verify {
            message,
            reason: Box::new(reason),
        }
    })
}

/// Why a zip could not be unpacked into a scratch folder.
enum ScratchError {
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    Unpack(UnpackError),
}

/// Unpacks `zip` into `job` inside a new private temporary folder under `scratch` (the
/// system's temporary folder when `None`). The folder lives as long as the returned
/// guard. `tempdir` makes it 0700, so no other user can swap files in it while they are
/// being checked.
fn unpack_to_scratch(
    zip: &[u8],
    limits: &Limits,
    scratch: Option<&Path>,
) -> Result<(tempfile::TempDir, PathBuf), ScratchError> {
    let scratch_dir = scratch
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let temp = tempfile::Builder::new()
        .prefix(".fedrun-verify-")
        .tempdir_in(&scratch_dir)
        .map_err(|source| ScratchError::Scratch {
            path: scratch_dir,
            source,
        })?;
    let job = temp.path().join("job");
    unpack(zip, None, &job, limits).map_err(ScratchError::Unpack)?;
    Ok((temp, job))
}

/// The folder of an unpacked zip that holds the job: the top, or its only folder when the
/// top holds nothing else and no signature file.
fn job_root(unpacked: &Path) -> PathBuf {
    if unpacked.join(SIG_FILE).exists() {
        return unpacked.to_path_buf();
    }
    let entries: Vec<_> = match std::fs::read_dir(unpacked) {
        Ok(entries) => entries.filter_map(Result::ok).collect(),
        Err(_) => return unpacked.to_path_buf(),
    };
    match entries.as_slice() {
        [only] if only.file_type().is_ok_and(|kind| kind.is_dir()) => only.path(),
        _ => unpacked.to_path_buf(),
    }
}
