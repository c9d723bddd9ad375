//! X.509 certificates: parsing PEM chains, reading the NVFlare identity fields, and
//! checking that a chain leads to the project root CA at a given time.
//!
//! The checks are done by hand on the decoded structures rather than by a general path
//! builder: a fedrun chain is short (leaf, optional intermediates, root), and every
//! rule that applies is written out in [`verify_chain`] where a reader can audit it.

use std::path::Path;
use std::time::SystemTime;

use const_oid::db::rfc4519::{
    COMMON_NAME, COUNTRY_NAME, ORGANIZATIONAL_UNIT_NAME, ORGANIZATION_NAME,
};
use const_oid::db::rfc5280::{
    ID_CE_AUTHORITY_KEY_IDENTIFIER, ID_CE_BASIC_CONSTRAINTS, ID_CE_EXT_KEY_USAGE, ID_CE_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME, ID_CE_SUBJECT_KEY_IDENTIFIER, ID_KP_CLIENT_AUTH,
};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::name::Name;
use x509_cert::Certificate;

use super::SignerIdentity;

/// The PKCS #9 `unstructuredName` attribute (1.2.840.113549.1.9.2). NVFlare stores a
/// participant's role in it, encoded as a UTF8String.
pub const UNSTRUCTURED_NAME: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.2");

/// sha256WithRSAEncryption, the algorithm NVFlare and fedrun sign certificates with.
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// sha384WithRSAEncryption, accepted for chains made by other tools.
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
/// sha512WithRSAEncryption, accepted for chains made by other tools.
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// The common name NVFlare uses as a placeholder in admin certificate templates; NVFlare
/// refuses it as a signer, and so does fedrun.
pub const PLACEHOLDER_ADMIN_CN: &str = "nvflare-admin";

/// The smallest RSA key accepted for signing certificates (the Web PKI minimum).
pub const MIN_ISSUER_KEY_BITS: usize = 2048;

/// The longest chain (leaf plus intermediates) accepted; the root CA is not counted.
pub const MAX_CHAIN_LEN: usize = 8;

/// A decoded certificate with the exact bytes its issuer signed.
#[derive(Clone, Debug)]
pub struct ParsedCert {
    der: Vec<u8>,
    tbs_der: Vec<u8>,
    cert: Certificate,
}

/// Why certificate bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM text or the DER inside it is malformed.
    #[error("malformed certificate PEM/DER: {0}")]
    Malformed(der::Error),
    /// The input holds no certificate at all.
    #[error("no certificate found")]
    Empty,
    /// A file could not be read.
    #[error("cannot read {path}: {cause}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The root CA file holds a certificate that is not a CA.
    #[error("certificate {subject} is not a CA (basicConstraints cA is not true)")]
    RootNotCa {
        /// The certificate's subject.
        subject: String,
    },
    /// A certificate file could not be read, or is too large to be one.
    #[error(transparent)]
    File(#[from] super::files::ReadFileError),
}

impl ParsedCert {
    /// Decodes one DER certificate, keeping its signed part byte-exact.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = Certificate::from_der(der).map_err(CertError::Malformed)?;
        let mut reader = SliceReader::new(der).map_err(CertError::Malformed)?;
        let _outer = der::Header::decode(&mut reader).map_err(CertError::Malformed)?;
        let tbs_der = reader.tlv_bytes().map_err(CertError::Malformed)?.to_vec();
        Ok(Self {
            der: der.to_vec(),
            tbs_der,
            cert,
        })
    }

    /// The certificate's DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The decoded certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The subject as an RFC 4514 string, for messages.
    pub fn subject_string(&self) -> String {
        name_to_string(&self.cert.tbs_certificate.subject)
    }

    /// The RSA public key of the subject, if the key is RSA.
    pub fn rsa_public_key(&self) -> Option<RsaPublicKey> {
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .ok()?;
        RsaPublicKey::from_public_key_der(&spki).ok()
    }

    /// The identity NVFlare reads from a subject: CN, O and the role in
    /// `unstructuredName`. A missing CN or O gives an empty string, a missing role `None`.
    pub fn identity(&self) -> SignerIdentity {
        let subject = &self.cert.tbs_certificate.subject;
        SignerIdentity {
            name: first_attribute(subject, COMMON_NAME).unwrap_or_default(),
            org: first_attribute(subject, ORGANIZATION_NAME).unwrap_or_default(),
            role: first_attribute(subject, UNSTRUCTURED_NAME),
        }
    }

    fn extension<T: for<'a> Decode<'a>>(
        &self,
        oid: ObjectIdentifier,
    ) -> Result<Option<T>, ChainError> {
        let Some(extensions) = &self.cert.tbs_certificate.extensions else {
            return Ok(None);
        };
        match extensions.iter().find(|e| e.extn_id == oid) {
            None => Ok(None),
            Some(ext) => T::from_der(ext.extn_value.as_bytes())
                .map(Some)
                .map_err(|source| ChainError::BadExtension {
                    subject: self.subject_string(),
                    oid: oid.to_string(),
                    reason: source.to_string(),
                }),
        }
    }

    fn is_ca(&self) -> Result<bool, ChainError> {
        Ok(self
            .extension::<BasicConstraints>(ID_CE_BASIC_CONSTRAINTS)?
            .is_some_and(|bc| bc.ca))
    }

    fn check_time(&self, at: SystemTime) -> Result<(), ChainError> {
        let validity = &self.cert.tbs_certificate.validity;
        let not_before = validity.not_before.to_system_time();
        let not_after = validity.not_after.to_system_time();
        if at < not_before {
            return Err(ChainError::NotYetValid {
                subject: self.subject_string(),
                not_before: format_time(not_before),
                at: format_time(at),
            });
        }
        if at > not_after {
            return Err(ChainError::Expired {
                subject: self.subject_string(),
                not_after: format_time(not_after),
                at: format_time(at),
            });
        }
        Ok(())
    }

    fn check_critical_extensions(&self) -> Result<(), ChainError> {
        const KNOWN: [ObjectIdentifier; 6] = [
            ID_CE_BASIC_CONSTRAINTS,
            ID_CE_KEY_USAGE,
            ID_CE_EXT_KEY_USAGE,
            ID_CE_SUBJECT_ALT_NAME,
            ID_CE_SUBJECT_KEY_IDENTIFIER,
            ID_CE_AUTHORITY_KEY_IDENTIFIER,
        ];
        for ext in self.cert.tbs_certificate.extensions.iter().flatten() {
            if ext.critical && !KNOWN.contains(&ext.extn_id) {
                return Err(ChainError::UnknownCriticalExtension {
                    subject: self.subject_string(),
                    oid: ext.extn_id.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The rules a certificate that signs other certificates must meet, as the Web PKI
    /// profile NVFlare's verifier applies to CAs: version 3, basicConstraints present,
    /// critical and cA true, and a key usage that includes keyCertSign.
    fn check_ca_rules(&self) -> Result<(), ChainError> {
        let not_usable = |reason: &str| ChainError::NotAUsableCa {
            subject: self.subject_string(),
            reason: reason.to_owned(),
        };
        if self.cert.tbs_certificate.version != x509_cert::Version::V3 {
            return Err(not_usable("it is not an X.509 version 3 certificate"));
        }
        let basic_constraints = self
            .cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == ID_CE_BASIC_CONSTRAINTS);
        match basic_constraints {
            None => return Err(not_usable("it has no basicConstraints")),
            Some(ext) if !ext.critical => {
                return Err(not_usable("its basicConstraints is not critical"))
            }
            Some(_) if !self.is_ca()? => return Err(not_usable("basicConstraints cA is false")),
            Some(_) => {}
        }
        match self.extension::<KeyUsage>(ID_CE_KEY_USAGE)? {
            Some(ku) if ku.key_cert_sign() => Ok(()),
            Some(_) => Err(not_usable("its key usage lacks keyCertSign")),
            None => Err(not_usable("it has no key usage")),
        }
    }

    /// Checks this CA's pathLenConstraint against the number of intermediates below it.
    fn check_path_len(&self, intermediates_below: usize) -> Result<(), ChainError> {
        let limit = self
            .extension::<BasicConstraints>(ID_CE_BASIC_CONSTRAINTS)?
            .and_then(|bc| bc.path_len_constraint);
        match limit {
            Some(limit) if intermediates_below > usize::from(limit) => {
                Err(ChainError::PathLenExceeded {
                    subject: self.subject_string(),
                    limit,
                    found: intermediates_below,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks that `self` was signed by `issuer`'s key.
    fn check_signed_by(&self, issuer: &ParsedCert) -> Result<(), ChainError> {
        use rsa::signature::Verifier;
        let subject = self.subject_string();
        let key = issuer
            .rsa_public_key()
            .ok_or_else(|| ChainError::IssuerKeyNotRsa {
                issuer: issuer.subject_string(),
            })?;
        let bits = key.n().bits();
        if bits < MIN_ISSUER_KEY_BITS {
            return Err(ChainError::IssuerKeyTooSmall {
                issuer: issuer.subject_string(),
                bits,
            });
        }
        let signature = rsa::pkcs1v15::Signature::try_from(self.cert.signature.raw_bytes())
            .map_err(|_| ChainError::BadSignature {
                subject: subject.clone(),
                issuer: issuer.subject_string(),
            })?;
        let algorithm = self.cert.signature_algorithm.oid;
        let result = if algorithm == SHA256_WITH_RSA {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key).verify(&self.tbs_der, &signature)
        } else if algorithm == SHA384_WITH_RSA {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(key).verify(&self.tbs_der, &signature)
        } else if algorithm == SHA512_WITH_RSA {
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(key).verify(&self.tbs_der, &signature)
        } else {
            return Err(ChainError::UnsupportedSignatureAlgorithm {
                subject,
                oid: algorithm.to_string(),
            });
        };
        result.map_err(|_| ChainError::BadSignature {
            subject,
            issuer: issuer.subject_string(),
        })
    }
}

/// Reads every certificate of a PEM file, in order.
pub fn parse_pem_chain(pem: &[u8]) -> Result<Vec<ParsedCert>, CertError> {
    let certs = Certificate::load_pem_chain(pem).map_err(CertError::Malformed)?;
    if certs.is_empty() {
        return Err(CertError::Empty);
    }
    certs
        .iter()
        .map(|c| ParsedCert::from_der(&c.to_der().map_err(CertError::Malformed)?))
        .collect()
}

/// The project root CA that every accepted chain must lead to.
#[derive(Clone, Debug)]
pub struct RootCa {
    cert: ParsedCert,
}

impl RootCa {
    /// Reads the root CA from PEM text (the first certificate is taken); it must be a CA.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let cert = parse_pem_chain(pem)?
            .into_iter()
            .next()
            .ok_or(CertError::Empty)?;
        let is_ca = cert.is_ca().map_err(|_| CertError::RootNotCa {
            subject: cert.subject_string(),
        })?;
        if !is_ca {
            return Err(CertError::RootNotCa {
                subject: cert.subject_string(),
            });
        }
        Ok(Self { cert })
    }

    /// Reads the root CA from a PEM file such as a startup kit's `rootCA.pem`.
    pub fn load(path: &Path) -> Result<Self, CertError> {
        let pem =
            super::files::read_bounded(path, super::files::PEM_FILE_MAX_BYTES, "certificate")?;
        Self::from_pem(&pem)
    }

    /// The root certificate.
    pub fn cert(&self) -> &ParsedCert {
        &self.cert
    }

    fn subject(&self) -> &Name {
        &self.cert.cert.tbs_certificate.subject
    }
}

/// Why a certificate chain is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A certificate's validity ended before the verification time.
    #[error("certificate {subject} expired at {not_after} (checked at {at})")]
    Expired {
        /// The certificate's subject.
        subject: String,
        /// The end of its validity.
        not_after: String,
        /// The verification time.
        at: String,
    },
    /// A certificate's validity starts after the verification time.
    #[error("certificate {subject} is not valid before {not_before} (checked at {at})")]
    NotYetValid {
        /// The certificate's subject.
        subject: String,
        /// The start of its validity.
        not_before: String,
        /// The verification time.
        at: String,
    },
    /// The chain ends without reaching the project root CA.
    #[error("certificate {subject} is issued by {issuer}, which is not the project root CA {root} nor a certificate in the chain")]
    UntrustedIssuer {
        /// The last certificate of the chain.
        subject: String,
        /// Its issuer.
        issuer: String,
        /// The project root CA's subject.
        root: String,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("signature of certificate {subject} does not verify with the key of {issuer}")]
    BadSignature {
        /// The certificate's subject.
        subject: String,
        /// The issuer whose key was used.
        issuer: String,
    },
    /// A certificate is signed with an algorithm fedrun does not accept.
    #[error("certificate {subject} is signed with unsupported algorithm {oid}")]
    UnsupportedSignatureAlgorithm {
        /// The certificate's subject.
        subject: String,
        /// The algorithm's OID.
        oid: String,
    },
    /// An issuing certificate's key is not RSA.
    #[error("issuer {issuer} does not have an RSA key")]
    IssuerKeyNotRsa {
        /// The issuer's subject.
        issuer: String,
    },
    /// The signing (leaf) certificate's key is not RSA, so it cannot make RSA-PSS signatures.
    #[error("signing certificate {subject} does not have an RSA key")]
    LeafKeyNotRsa {
        /// The leaf's subject.
        subject: String,
    },
    /// The root or an intermediate does not meet the rules for a CA.
    #[error("certificate {subject} cannot act as a CA: {reason}")]
    NotAUsableCa {
        /// The certificate's subject.
        subject: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// A CA has more intermediates below it than its pathLenConstraint allows.
    #[error(
        "CA {subject} allows {limit} intermediate certificates below it, the chain has {found}"
    )]
    PathLenExceeded {
        /// The CA's subject.
        subject: String,
        /// Its pathLenConstraint.
        limit: u8,
        /// Intermediates below it in the chain.
        found: usize,
    },
    /// An issuer's RSA key is too small to be trusted for certificate signatures.
    #[error("issuer {issuer} has a {bits}-bit RSA key; at least {MIN_ISSUER_KEY_BITS} bits are required")]
    IssuerKeyTooSmall {
        /// The issuer's subject.
        issuer: String,
        /// Its key size.
        bits: usize,
    },
    /// The signing certificate is a CA certificate.
    #[error("signing certificate {subject} is a CA certificate, not a participant's")]
    LeafIsCa {
        /// The leaf's subject.
        subject: String,
    },
    /// The leaf's key usage does not allow digital signatures.
    #[error("signing certificate {subject} has a key usage without digitalSignature")]
    LeafLacksDigitalSignature {
        /// The leaf's subject.
        subject: String,
    },
    /// The leaf's extended key usage does not allow client authentication.
    #[error("signing certificate {subject} has an extended key usage without clientAuth")]
    LeafLacksClientAuth {
        /// The leaf's subject.
        subject: String,
    },
    /// A certificate carries a critical extension fedrun does not understand.
    #[error("certificate {subject} has unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// The certificate's subject.
        subject: String,
        /// The extension's OID.
        oid: String,
    },
    /// An extension fedrun reads is malformed.
    #[error("certificate {subject} has a malformed extension {oid}: {reason}")]
    BadExtension {
        /// The certificate's subject.
        subject: String,
        /// The extension's OID.
        oid: String,
        /// What the decoder said.
        reason: String,
    },
    /// The signing certificate is an X.509 version 1 or 2 certificate.
    #[error("signing certificate {subject} is not an X.509 version 3 certificate")]
    LeafNotVersion3 {
        /// The leaf's subject.
        subject: String,
    },
    /// The signing certificate has no common name, so it names no one.
    #[error("signing certificate {subject} has no common name (CN)")]
    LeafWithoutCommonName {
        /// The leaf's subject.
        subject: String,
    },
    /// The signing certificate carries NVFlare's placeholder admin name instead of a
    /// real identity.
    #[error("signing certificate {subject} has the placeholder common name {PLACEHOLDER_ADMIN_CN:?}, not a real identity")]
    LeafWithPlaceholderName {
        /// The leaf's subject.
        subject: String,
    },
    /// The chain is longer than [`MAX_CHAIN_LEN`].
    #[error("certificate chain has {len} certificates, more than the limit of {MAX_CHAIN_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The chain is empty.
    #[error("certificate chain is empty")]
    Empty,
}

/// Checks a chain (leaf first, then intermediates; the root itself may be appended) against
/// the project root CA at time `at`, and returns the leaf's identity.
///
/// Rules: every certificate on the path, the root included, is valid at `at`; each one is
/// signed by the next, the last by the root; the root and intermediates are version 3 CAs
/// with a critical basicConstraints and keyCertSign, and RSA keys of at least 2048 bits;
/// the leaf is not a CA,
/// allows digitalSignature if it has a key usage, allows clientAuth if it has an extended
/// key usage, has a non-empty common name other than NVFlare's placeholder, and has an RSA
/// key. Intermediates may be in any order; each is used at most once, and every
/// pathLenConstraint is respected. Certificates not on the path are ignored.
pub fn verify_chain(
    chain: &[ParsedCert],
    root: &RootCa,
    at: SystemTime,
) -> Result<SignerIdentity, ChainError> {
    let leaf = chain.first().ok_or(ChainError::Empty)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(ChainError::TooLong { len: chain.len() });
    }
    check_leaf(leaf)?;
    root.cert.check_time(at)?;
    root.cert.check_ca_rules()?;
    root.cert.check_critical_extensions()?;
    let intermediates = &chain[1..];
    let mut used = vec![false; intermediates.len()];
    let mut current = leaf;
    // How many intermediates lie between `current` and the leaf (0 for the leaf itself,
    // which is not an intermediate); bounds every pathLenConstraint on the way up.
    let mut depth = 0usize;
    loop {
        current.check_critical_extensions()?;
        current.check_time(at)?;
        if depth > 0 {
            current.check_ca_rules()?;
            current.check_path_len(depth - 1)?;
        }
        let issuer_name = &current.cert.tbs_certificate.issuer;
        if issuer_name == root.subject() {
            current.check_signed_by(&root.cert)?;
            root.cert.check_path_len(depth)?;
            return Ok(leaf.identity());
        }
        // Intermediates may come in any order, as NVFlare's path builder accepts: take
        // the unused one with the issuer's name whose key verifies the signature.
        let mut first_error = None;
        let mut next = None;
        for (index, candidate) in intermediates.iter().enumerate() {
            if used[index] || &candidate.cert.tbs_certificate.subject != issuer_name {
                continue;
            }
            match current.check_signed_by(candidate) {
                Ok(()) => {
                    next = Some(index);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (next, first_error) {
            (Some(index), _) => {
                used[index] = true;
                current = &intermediates[index];
                depth += 1;
            }
            (None, Some(error)) => return Err(error),
            (None, None) => {
                return Err(ChainError::UntrustedIssuer {
                    subject: current.subject_string(),
                    issuer: name_to_string(issuer_name),
                    root: name_to_string(root.subject()),
                })
            }
        }
    }
}

fn check_leaf(leaf: &ParsedCert) -> Result<(), ChainError> {
    let subject = leaf.subject_string();
    let identity = leaf.identity();
    if leaf.cert.tbs_certificate.version != x509_cert::Version::V3 {
        return Err(ChainError::LeafNotVersion3 { subject });
    }
    if identity.name.is_empty() {
        return Err(ChainError::LeafWithoutCommonName { subject });
    }
    if identity.name == PLACEHOLDER_ADMIN_CN {
        return Err(ChainError::LeafWithPlaceholderName { subject });
    }
    if leaf.is_ca()? {
        return Err(ChainError::LeafIsCa { subject });
    }
    if let Some(ku) = leaf.extension::<KeyUsage>(ID_CE_KEY_USAGE)? {
        if !ku.digital_signature() {
            return Err(ChainError::LeafLacksDigitalSignature { subject });
        }
    }
    if let Some(eku) = leaf.extension::<ExtendedKeyUsage>(ID_CE_EXT_KEY_USAGE)? {
        if !eku.0.contains(&ID_KP_CLIENT_AUTH) {
            return Err(ChainError::LeafLacksClientAuth { subject });
        }
    }
    if leaf.rsa_public_key().is_none() {
        return Err(ChainError::LeafKeyNotRsa { subject });
    }
    Ok(())
}

/// The value of the first attribute `oid` in `name`, for the string types X.509 uses.
fn first_attribute(name: &Name, oid: ObjectIdentifier) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid)
        .and_then(|atv| match atv.value.tag() {
            Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                std::str::from_utf8(atv.value.value())
                    .ok()
                    .map(str::to_owned)
            }
            _ => None,
        })
}

/// Writes a distinguished name in certificate order with short labels, e.g.
/// `CN=admin@nvidia.com, O=nvidia, unstructuredName=project_admin`, for messages.
pub fn name_to_string(name: &Name) -> String {
    let mut parts = Vec::new();
    for atv in name.0.iter().flat_map(|rdn| rdn.0.iter()) {
        let label = match atv.oid {
            COMMON_NAME => "CN".to_owned(),
            ORGANIZATION_NAME => "O".to_owned(),
            ORGANIZATIONAL_UNIT_NAME => "OU".to_owned(),
            COUNTRY_NAME => "C".to_owned(),
            UNSTRUCTURED_NAME => "unstructuredName".to_owned(),
            other => other.to_string(),
        };
        let value = match std::str::from_utf8(atv.value.value()) {
            Ok(text) if atv.value.tag() != Tag::OctetString => text.to_owned(),
            _ => atv
                .value
                .value()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        };
        parts.push(format!("{label}={value}"));
    }
    parts.join(", ")
}

/// Formats a time as RFC 3339 UTC for messages.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
