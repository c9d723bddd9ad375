//! The `require_signed_jobs` policy: whether an unsigned job may be deployed.

use std::path::Path;
use std::time::SystemTime;

use super::certs::RootCa;
use super::verify::{looks_signed, verify_job_folder, VerifyError};
use super::SignerIdentity;

/// Whether jobs must be signed, from the `require_signed_jobs` setting (server and site
/// config) and whether a project root CA is configured: unset means "on exactly when a
/// root CA is configured".
pub fn require_signed_jobs(setting: Option<bool>, root_ca_configured: bool) -> bool {
    setting.unwrap_or(root_ca_configured)
}

/// What a server or site knows to judge a job's signature.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// The project root CA, if one is configured.
    pub root_ca: Option<RootCa>,
    /// The `require_signed_jobs` setting as written in the config (`None` when unset).
    pub require_signed_jobs: Option<bool>,
}

impl TrustPolicy {
    /// The effective policy: see [`require_signed_jobs`].
    pub fn requires_signature(&self) -> bool {
        require_signed_jobs(self.require_signed_jobs, self.root_ca.is_some())
    }
}

/// The accepted trust state of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobTrust {
    /// The job is signed and verified; the engine checks this signer's role.
    Signed(SignerIdentity),
    /// The job is unsigned (or signed but no root CA is configured to check it) and the
    /// policy allows that; the engine checks the submitter's role instead.
    Unsigned,
}

/// Why a job is not accepted for deployment.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The job is unsigned while the policy requires signed jobs.
    #[error(
        "job {path} is not signed, and this server/site requires signed jobs (require_signed_jobs)"
    )]
    UnsignedJobRejected {
        /// The job folder.
        path: std::path::PathBuf,
    },
    /// The policy requires signatures but no root CA is configured to check them.
    #[error("require_signed_jobs is on but no project root CA is configured to verify job {path}")]
    NoRootCa {
        /// The job folder.
        path: std::path::PathBuf,
    },
    /// The job is signed and its signature does not verify.
    #[error("job signature rejected: {0}")]
    BadSignature(VerifyError),
}

// By hand, not `#[from]`: the message already holds the cause, so it is not also the
// `source()` (an error chain would print it twice).
impl From<VerifyError> for PolicyError {
    fn from(error: VerifyError) -> Self {
        PolicyError::BadSignature(error)
    }
}

/// Decides whether the job folder at `path` may be deployed at time `at`.
///
/// A signed job is always verified when a root CA is configured, whatever the policy:
/// a signature that fails is a sign of tampering, not a reason to fall back to
/// "unsigned". An unsigned job passes only when the policy is off.
pub fn check_job(
    path: &Path,
    policy: &TrustPolicy,
    at: SystemTime,
) -> Result<JobTrust, PolicyError> {
    let required = policy.requires_signature();
    let signed = looks_signed(path);
    match (&policy.root_ca, signed) {
        (Some(root), true) => match verify_job_folder(path, root, at) {
            Ok(signer) => Ok(JobTrust::Signed(signer)),
            Err(reason) => {
                tracing::warn!(job = %path.display(), %reason, "job signature rejected");
                Err(reason.into())
            }
        },
        (None, _) if required => Err(PolicyError::NoRootCa {
            path: path.to_path_buf(),
        }),
        (_, false) if required => Err(PolicyError::UnsignedJobRejected {
            path: path.to_path_buf(),
        }),
        _ => {
            tracing::info!(job = %path.display(), signed, "job accepted without signature check (require_signed_jobs is off)");
            Ok(JobTrust::Unsigned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::require_signed_jobs;

    #[test]
    fn unset_policy_follows_root_ca_presence() {
        assert!(require_signed_jobs(None, true));
        assert!(!require_signed_jobs(None, false));
        assert!(!require_signed_jobs(Some(false), true));
        assert!(require_signed_jobs(Some(true), false));
    }
}
