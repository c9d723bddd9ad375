//! Trust: provisioning of a project's certificates, and NVFlare-compatible signing and
//! verification of job folders.
//!
//! A signed job folder has, in every directory, `.__nvfl_sig.json` (entry name -> base64
//! RSA-PSS signature) and `.__nvfl_submitter.crt` (the signer's PEM chain). Files are
//! signed over their bytes, immediate subdirectories over their UTF-8 name. Signatures
//! use SHA-256, MGF1-SHA-256 and the maximum salt length, as NVFlare's signer does.
//!
//! Entry points: [`verify::verify_job_folder`] (what the server and sites call before
//! deploying, through [`policy::check_job`]), [`submit::check_package_zip`] (the same
//! check on a stored package, at submit and at deploy), [`sign::sign_job_folder`], and
//! [`provision::provision`].

pub mod certs;
pub mod files;
pub mod policy;
pub mod provision;
pub mod sigfile;
pub mod sign;
pub mod submit;
pub mod verify;

use serde::Serialize;

pub use certs::RootCa;
pub use policy::{check_job, require_signed_jobs, JobTrust, PolicyError, TrustPolicy};
pub use sign::{sign_job_folder, SignError, Signer};
pub use submit::{
    check_package_blob, check_package_zip, verify_job_zip, SubmitRefusal, ZipVerifyError,
};
pub use verify::{verify_job_folder, VerifyError};

/// The signature file name NVFlare uses in every directory of a signed job.
pub const SIG_FILE: &str = ".__nvfl_sig.json";
/// The certificate file name NVFlare uses in every directory of a signed job.
pub const SUBMITTER_CERT_FILE: &str = ".__nvfl_submitter.crt";

/// Who signed a job, as read from the leaf certificate's subject.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SignerIdentity {
    /// The subject's common name (CN), e.g. `admin@nvidia.com`.
    pub name: String,
    /// The subject's organization (O).
    pub org: String,
    /// The role from the subject's `unstructuredName`, if the certificate has one.
    pub role: Option<String>,
}

impl SignerIdentity {
    /// Whether this identity's role may submit jobs: `project_admin` and `lead` may
    /// (SPEC section 9); `org_admin`, `member`, no role or any other role may not. Server
    /// and sites check this for a signed job's signer before deploying it.
    pub fn may_submit(&self) -> bool {
        matches!(self.role.as_deref(), Some("project_admin" | "lead"))
    }
}

impl std::fmt::Display for SignerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (org {}, role {})",
            self.name,
            self.org,
            self.role.as_deref().unwrap_or("none")
        )
    }
}

/// The maximum PSS salt length for a key of `modulus_bits` with SHA-256: the encoded
/// message length minus the hash length minus 2 (222 bytes for a 2048-bit key). This is
/// what Python's `padding.PSS.MAX_LENGTH` means, and NVFlare signs and verifies with it.
pub fn max_pss_salt_len(modulus_bits: usize) -> usize {
    let em_len = modulus_bits.saturating_sub(1).div_ceil(8);
    em_len.saturating_sub(32 + 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_project_admins_and_leads_may_submit() {
        let with_role = |role: Option<&str>| super::SignerIdentity {
            name: "n".into(),
            org: "o".into(),
            role: role.map(str::to_owned),
        };
        assert!(with_role(Some("project_admin")).may_submit());
        assert!(with_role(Some("lead")).may_submit());
        for role in [Some("org_admin"), Some("member"), Some("Lead"), None] {
            assert!(!with_role(role).may_submit(), "{role:?}");
        }
    }

    #[test]
    fn max_salt_for_common_key_sizes() {
        assert_eq!(super::max_pss_salt_len(2048), 222);
        assert_eq!(super::max_pss_salt_len(3072), 350);
        assert_eq!(super::max_pss_salt_len(4096), 478);
    }
}
