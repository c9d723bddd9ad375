//! Provisioning: from a small project file, a project root CA and, signed by it, a
//! certificate and key for the server, every site and every admin, written as one
//! startup kit folder per participant.
//!
//! Layout of the output folder (NVFlare's startup kit names):
//!
//! ```text
//! OUT/ca/rootCA.pem, OUT/ca/rootCA.key          the project root CA (key 0600)
//! OUT/<server host>/startup/{rootCA.pem, server.crt, server.key}
//! OUT/<site>/startup/{rootCA.pem, client.crt, client.key}
//! OUT/<admin>/startup/{rootCA.pem, client.crt, client.key}
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use const_oid::db::rfc4519::{COMMON_NAME, ORGANIZATION_NAME};
use const_oid::db::rfc5280::{ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, Ia5String, OctetString, SetOfVec};
use der::{EncodePem, Tag};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Deserialize;
use sha2::Sha256;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::certs::{parse_pem_chain, RootCa, UNSTRUCTURED_NAME};
use super::files::{read_bounded, PEM_FILE_MAX_BYTES, PROJECT_FILE_MAX_BYTES};

/// RSA key size of every key provisioning makes.
pub const KEY_BITS: usize = 2048;
/// Validity of certificates when the project file does not say (NVFlare's default).
pub const DEFAULT_VALID_DAYS: u32 = 360;
/// The roles an admin may hold (SPEC section 9).
pub const ROLES: [&str; 4] = ["project_admin", "org_admin", "lead", "member"];

/// A project file (TOML).
///
/// ```toml
/// name = "example_project"
/// valid_days = 360            # optional
/// [server]
/// host = "server.example.org"
/// org = "example"
/// port = 8443                 # optional
/// [[site]]
/// name = "site-1"
/// org = "hospital-a"
/// [[admin]]
/// name = "admin@example.org"
/// org = "example"
/// role = "project_admin"
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// The project name: the root CA's common name.
    pub name: String,
    /// Days every certificate is valid from provisioning time.
    #[serde(default)]
    pub valid_days: Option<u32>,
    /// The server.
    pub server: ServerEntry,
    /// The sites.
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteEntry>,
    /// The admins.
    #[serde(default, rename = "admin")]
    pub admins: Vec<AdminEntry>,
}

/// The server of a project.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// The host name sites and admins dial: the certificate's CN, and its subject alt
    /// name (a DNS name, or an IP address when `host` is an IP literal).
    pub host: String,
    /// The server's organization.
    pub org: String,
    /// The port the server listens on (default [`crate::net::kit::DEFAULT_PORT`]).
    #[serde(default)]
    pub port: Option<u16>,
}

/// A site of a project.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    /// The site name (CN).
    pub name: String,
    /// The site's organization (O).
    pub org: String,
}

/// An admin of a project.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminEntry {
    /// The admin's name, usually an email address (CN).
    pub name: String,
    /// The admin's organization (O).
    pub org: String,
    /// The admin's role (`unstructuredName`): one of [`ROLES`].
    pub role: String,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The project file is not valid TOML of the expected shape.
    #[error("project file {path}: {cause}")]
    Parse {
        /// The project file.
        path: PathBuf,
        /// What the parser said.
        cause: Box<toml::de::Error>,
    },
    /// The project file is well-formed but its content is not acceptable.
    #[error("project file {path}: {reason}")]
    Invalid {
        /// The project file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The output folder holds only half of a root CA (certificate without key or the
    /// reverse), or a CA whose key does not match its certificate.
    #[error("existing root CA in {dir} is unusable: {reason} (use --force to replace it)")]
    BrokenCa {
        /// The CA folder.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A project, key or certificate file could not be read, or is too large to be one.
    #[error(transparent)]
    File(#[from] super::files::ReadFileError),
    /// Something in the output folder is a symbolic link where provisioning writes: keys
    /// are never written through a link, which could point anywhere.
    #[error("{path} is a symbolic link; provisioning does not write through symbolic links")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Something in the output folder is not a folder where provisioning needs one.
    #[error("{path} exists and is not a folder")]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// Generating a key or building a certificate failed.
    #[error("cannot create {what}: {reason}")]
    Crypto {
        /// The key or certificate.
        what: String,
        /// What the crypto code said.
        reason: String,
    },
}

/// What provisioning did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// True when a new root CA was made; false when the existing one was reused.
    pub new_ca: bool,
    /// Startup kits written, as folder paths.
    pub kits_written: Vec<PathBuf>,
    /// Startup kits that already existed and were kept.
    pub kits_kept: Vec<PathBuf>,
}

/// Options of [`provision`].
#[derive(Clone, Copy, Debug)]
pub struct ProvisionOptions {
    /// Replace an existing root CA and existing startup kits.
    pub force: bool,
    /// The start of every new certificate's validity.
    pub now: SystemTime,
}

impl Project {
    /// Reads and checks a project file.
    pub fn load(path: &Path) -> Result<Self, ProvisionError> {
        let bytes = read_bounded(path, PROJECT_FILE_MAX_BYTES, "project file")?;
        let text = String::from_utf8(bytes).map_err(|_| ProvisionError::Invalid {
            path: path.to_path_buf(),
            reason: "the file is not UTF-8 text".into(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks project file text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProvisionError> {
        let project: Project = toml::from_str(text).map_err(|source| ProvisionError::Parse {
            path: path.to_path_buf(),
            cause: Box::new(source),
        })?;
        project
            .validate()
            .map_err(|reason| ProvisionError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(project)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("the project name is empty".into());
        }
        if self.server.port == Some(0) {
            return Err("server port must be between 1 and 65535".into());
        }
        if self.valid_days == Some(0) {
            return Err("valid_days must be at least 1".into());
        }
        let mut seen = BTreeSet::new();
        let participants = std::iter::once(("server host", &self.server.host, &self.server.org))
            .chain(self.sites.iter().map(|s| ("site", &s.name, &s.org)))
            .chain(self.admins.iter().map(|a| ("admin", &a.name, &a.org)));
        for (kind, name, org) in participants {
            check_folder_name(name).map_err(|why| format!("{kind} name {name:?} {why}"))?;
            if org.trim().is_empty() {
                return Err(format!("{kind} {name:?} has an empty org"));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("participant name {name:?} is used twice"));
            }
        }
        for admin in &self.admins {
            if !ROLES.contains(&admin.role.as_str()) {
                return Err(format!(
                    "admin {:?} has role {:?}; roles are {}",
                    admin.name,
                    admin.role,
                    ROLES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Participant names become folder names, so they must be one plain path component.
fn check_folder_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.trim() != name {
        return Err("is empty or has surrounding spaces");
    }
    if name == "." || name == ".." || name == "ca" {
        return Err("is reserved");
    }
    if name.contains(['/', '\\', '\0']) || name.chars().any(char::is_control) {
        return Err("may not contain slashes or control characters");
    }
    Ok(())
}

/// Creates (or completes) the project's root CA and startup kits in `out`.
///
/// An existing root CA (`out/ca/rootCA.pem` and `rootCA.key`) is reused, and existing
/// startup kits are kept, unless `options.force`: so running twice changes nothing, and
/// running again after adding a site only makes that site's kit.
pub fn provision(
    project: &Project,
    out: &Path,
    options: ProvisionOptions,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    let ca_dir = private_dir(out, &["ca"])?;
    let (ca_key, ca_pem) = match load_existing_ca(&ca_dir)? {
        Some(existing) if !options.force => existing,
        _ => {
            report.new_ca = true;
            let created = create_ca(project, options.now)?;
            write_file(&ca_dir.join("rootCA.key"), created.0.as_bytes())?;
            write_file(&ca_dir.join("rootCA.pem"), created.1.as_bytes())?;
            created
        }
    };
    let ca_private =
        RsaPrivateKey::from_pkcs1_pem(&ca_key).map_err(|e| ProvisionError::BrokenCa {
            dir: ca_dir.clone(),
            reason: format!("rootCA.key: {e}"),
        })?;
    let root = RootCa::from_pem(ca_pem.as_bytes()).map_err(|e| ProvisionError::BrokenCa {
        dir: ca_dir.clone(),
        reason: format!("rootCA.pem: {e}"),
    })?;
    let issuer = root.cert().certificate().tbs_certificate.subject.clone();
    let ca_signer = SigningKey::<Sha256>::new(ca_private);
    let valid_for = valid_for(project);

    let mut kits = vec![Kit {
        name: project.server.host.clone(),
        subject: subject(&project.server.host, &project.server.org, None)?,
        cert_file: "server.crt",
        key_file: "server.key",
        usage: ID_KP_SERVER_AUTH,
        host_name: Some(project.server.host.clone()),
    }];
    for site in &project.sites {
        kits.push(Kit::client(
            &site.name,
            subject(&site.name, &site.org, None)?,
        ));
    }
    for admin in &project.admins {
        let name = subject(&admin.name, &admin.org, Some(&admin.role))?;
        kits.push(Kit::client(&admin.name, name));
    }
    for kit in kits {
        let existing = out.join(&kit.name).join("startup");
        if existing.join(kit.cert_file).exists() && !options.force && !report.new_ca {
            report.kits_kept.push(existing);
            continue;
        }
        let startup = private_dir(out, &[&kit.name, "startup"])?;
        let (key_pem, cert_pem) = issue(&kit, &issuer, &ca_signer, options.now, valid_for)?;
        write_file(&startup.join(kit.key_file), key_pem.as_bytes())?;
        write_file(&startup.join(kit.cert_file), cert_pem.as_bytes())?;
        write_file(&startup.join("rootCA.pem"), ca_pem.as_bytes())?;
        tracing::info!(kit = %startup.display(), "startup kit written");
        report.kits_written.push(startup);
    }
    write_kit_files(project, out)?;
    Ok(report)
}

/// Writes (or updates) every kit's `fedrun.toml` (SPEC section 11): the keys provisioning
/// owns are set, the server's lists of sites and admins rewritten, every other key kept.
fn write_kit_files(project: &Project, out: &Path) -> Result<(), ProvisionError> {
    use crate::net::kit::{merge_kit_file, KitAdmin, KitKind, DEFAULT_PORT, KIT_FILE};
    let host = &project.server.host;
    let port = project.server.port.unwrap_or(DEFAULT_PORT);
    let sites: Vec<String> = project.sites.iter().map(|s| s.name.clone()).collect();
    let admins: Vec<KitAdmin> = project
        .admins
        .iter()
        .filter_map(|a| {
            Some(KitAdmin {
                name: a.name.clone(),
                org: a.org.clone(),
                // `validate` accepted only the four roles.
                role: a.role.parse().ok()?,
            })
        })
        .collect();
    let mut entries = vec![(host.clone(), project.server.org.clone(), KitKind::Server)];
    entries.extend(
        project
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.org.clone(), KitKind::Site)),
    );
    entries.extend(admins.iter().map(|a| {
        (
            a.name.clone(),
            a.org.clone(),
            KitKind::Admin { role: a.role },
        )
    }));
    for (name, org, kind) in entries {
        let dir = private_dir(out, &[&name])?;
        let path = dir.join(KIT_FILE);
        let existing = match fs::symlink_metadata(&path) {
            Ok(_) => {
                let bytes = read_bounded(&path, PROJECT_FILE_MAX_BYTES, "kit file")?;
                let text = String::from_utf8(bytes).map_err(|_| ProvisionError::Invalid {
                    path: path.clone(),
                    reason: "the existing kit file is not UTF-8 text".into(),
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ProvisionError::Invalid {
                        path: path.clone(),
                        reason: format!("the existing kit file is not TOML: {e}"),
                    })?
            }
            Err(_) => toml::Table::new(),
        };
        let lists = (kind == KitKind::Server).then_some((sites.as_slice(), admins.as_slice()));
        let merged = merge_kit_file(existing, &name, &org, &kind, host, port, lists);
        let text = toml::to_string(&merged).map_err(|e| ProvisionError::Invalid {
            path: path.clone(),
            reason: format!("cannot write the kit file: {e}"),
        })?;
        write_file(&path, text.as_bytes())?;
    }
    Ok(())
}

struct Kit {
    name: String,
    subject: Name,
    cert_file: &'static str,
    key_file: &'static str,
    usage: ObjectIdentifier,
    /// The server's host: its subject alt name.
    host_name: Option<String>,
}

impl Kit {
    fn client(name: &str, subject: Name) -> Self {
        Self {
            name: name.to_owned(),
            subject,
            cert_file: "client.crt",
            key_file: "client.key",
            usage: ID_KP_CLIENT_AUTH,
            host_name: None,
        }
    }
}

fn valid_for(project: &Project) -> Duration {
    let days = project.valid_days.unwrap_or(DEFAULT_VALID_DAYS);
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

/// Returns the existing CA's (key PEM, certificate PEM), or `None` when there is none.
fn load_existing_ca(dir: &Path) -> Result<Option<(String, String)>, ProvisionError> {
    let key_path = dir.join("rootCA.key");
    let cert_path = dir.join("rootCA.pem");
    match (key_path.exists(), cert_path.exists()) {
        (false, false) => Ok(None),
        (true, true) => {
            let read = |path: &Path| {
                let bytes = read_bounded(path, PEM_FILE_MAX_BYTES, "PEM file")?;
                String::from_utf8(bytes).map_err(|_| ProvisionError::BrokenCa {
                    dir: dir.to_path_buf(),
                    reason: format!("{} is not PEM text", path.display()),
                })
            };
            let key = read(&key_path)?;
            let cert = read(&cert_path)?;
            let broken = |reason: String| ProvisionError::BrokenCa {
                dir: dir.to_path_buf(),
                reason,
            };
            let private = RsaPrivateKey::from_pkcs1_pem(&key)
                .map_err(|e| broken(format!("rootCA.key: {e}")))?;
            let chain =
                parse_pem_chain(cert.as_bytes()).map_err(|e| broken(format!("rootCA.pem: {e}")))?;
            // parse_pem_chain returns at least one certificate, so index 0 exists.
            if chain[0].rsa_public_key().as_ref() != Some(private.as_ref()) {
                return Err(broken("rootCA.key does not match rootCA.pem".into()));
            }
            tracing::info!(dir = %dir.display(), "reusing the existing root CA");
            Ok(Some((key, cert)))
        }
        (true, false) => Err(ProvisionError::BrokenCa {
            dir: dir.to_path_buf(),
            reason: "rootCA.key exists without rootCA.pem".into(),
        }),
        (false, true) => Err(ProvisionError::BrokenCa {
            dir: dir.to_path_buf(),
            reason: "rootCA.pem exists without rootCA.key".into(),
        }),
    }
}

fn create_ca(project: &Project, now: SystemTime) -> Result<(String, String), ProvisionError> {
    let what = || format!("root CA {}", project.name);
    let crypto = |reason: String| ProvisionError::Crypto {
        what: what(),
        reason,
    };
    let private = generate_key(&what())?;
    let spki = spki_of(&private, &what())?;
    let signer = SigningKey::<Sha256>::new(private.clone());
    let builder = CertificateBuilder::new(
        Profile::Root,
        random_serial(&what())?,
        validity(now, valid_for(project), &what())?,
        subject(&project.name, "", None)?,
        spki,
        &signer,
    )
    .map_err(|e| crypto(e.to_string()))?;
    sign_to_pem(builder, &private, &what())
}

fn issue(
    kit: &Kit,
    issuer: &Name,
    ca_signer: &SigningKey<Sha256>,
    now: SystemTime,
    valid_for: Duration,
) -> Result<(String, String), ProvisionError> {
    let what = || format!("certificate for {}", kit.name);
    let crypto = |reason: String| ProvisionError::Crypto {
        what: what(),
        reason,
    };
    let private = generate_key(&what())?;
    let mut builder = CertificateBuilder::new(
        Profile::Leaf {
            issuer: issuer.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: true,
        },
        random_serial(&what())?,
        validity(now, valid_for, &what())?,
        kit.subject.clone(),
        spki_of(&private, &what())?,
        ca_signer,
    )
    .map_err(|e| crypto(e.to_string()))?;
    builder
        .add_extension(&ExtendedKeyUsage(vec![kit.usage]))
        .map_err(|e| crypto(e.to_string()))?;
    if let Some(host) = &kit.host_name {
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let octets = match ip {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                GeneralName::IpAddress(
                    OctetString::new(octets).map_err(|e| crypto(format!("IP {host}: {e}")))?,
                )
            }
            Err(_) => GeneralName::DnsName(
                Ia5String::new(host).map_err(|e| crypto(format!("DNS name {host:?}: {e}")))?,
            ),
        };
        builder
            .add_extension(&SubjectAltName(vec![name]))
            .map_err(|e| crypto(e.to_string()))?;
    }
    sign_to_pem(builder, &private, &what())
}

/// A subject with CN, O (when not empty) and, for admins, the role in `unstructuredName`,
/// each a UTF8String in its own RDN, in that order, as NVFlare writes them.
fn subject(cn: &str, org: &str, role: Option<&str>) -> Result<Name, ProvisionError> {
    let mut rdns = Vec::new();
    let mut push = |oid: ObjectIdentifier, value: &str| -> Result<(), ProvisionError> {
        let fail = |e: der::Error| ProvisionError::Crypto {
            what: format!("subject of {cn}"),
            reason: e.to_string(),
        };
        let value = Any::new(Tag::Utf8String, value.as_bytes()).map_err(fail)?;
        let mut set = SetOfVec::new();
        set.insert(AttributeTypeAndValue { oid, value })
            .map_err(fail)?;
        rdns.push(RelativeDistinguishedName(set));
        Ok(())
    };
    push(COMMON_NAME, cn)?;
    if !org.is_empty() {
        push(ORGANIZATION_NAME, org)?;
    }
    if let Some(role) = role {
        push(UNSTRUCTURED_NAME, role)?;
    }
    Ok(RdnSequence(rdns))
}

fn generate_key(what: &str) -> Result<RsaPrivateKey, ProvisionError> {
    RsaPrivateKey::new(&mut rand::thread_rng(), KEY_BITS).map_err(|e| ProvisionError::Crypto {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn spki_of(key: &RsaPrivateKey, what: &str) -> Result<SubjectPublicKeyInfoOwned, ProvisionError> {
    let der = RsaPublicKey::from(key)
        .to_public_key_der()
        .map_err(|e| ProvisionError::Crypto {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    SubjectPublicKeyInfoOwned::try_from(der.as_bytes()).map_err(|e| ProvisionError::Crypto {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// A key as PKCS #1 PEM (`RSA PRIVATE KEY`), the form NVFlare writes.
/// Signs the certificate `builder` describes and returns the subject's key and the
/// certificate, both PEM: the last step of the root CA and of every leaf alike.
fn sign_to_pem(
    builder: CertificateBuilder<'_, SigningKey<Sha256>>,
    private: &RsaPrivateKey,
    what: &str,
) -> Result<(String, String), ProvisionError> {
    let crypto = |reason: String| ProvisionError::Crypto {
        what: what.to_owned(),
        reason,
    };
    let cert = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(|e| crypto(e.to_string()))?;
    let cert_pem = cert
        .to_pem(LineEnding::LF)
        .map_err(|e| crypto(e.to_string()))?;
    Ok((key_pem(private, what)?, cert_pem))
}

fn key_pem(key: &RsaPrivateKey, what: &str) -> Result<String, ProvisionError> {
    key.to_pkcs1_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| ProvisionError::Crypto {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

/// A random positive 16-byte serial number (RFC 5280 allows up to 20).
fn random_serial(what: &str) -> Result<SerialNumber, ProvisionError> {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // Keep 16 significant bytes so the encoding never shrinks.
    SerialNumber::new(&bytes).map_err(|e| ProvisionError::Crypto {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

fn validity(now: SystemTime, valid_for: Duration, what: &str) -> Result<Validity, ProvisionError> {
    let fail = |e: der::Error| ProvisionError::Crypto {
        what: what.to_owned(),
        reason: format!("validity: {e}"),
    };
    // Certificates carry whole seconds; drop the fraction so the times encode exactly.
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch);
    Ok(Validity {
        not_before: Time::try_from(start).map_err(fail)?,
        not_after: Time::try_from(start + valid_for).map_err(fail)?,
    })
}

/// Mode of every folder provisioning makes: kits hold private keys.
pub const KIT_FOLDER_MODE: u32 = 0o700;
/// Mode of every file provisioning writes.
pub const KIT_FILE_MODE: u32 = 0o600;

/// Makes (or checks) the folder `out/<parts...>` and returns its path. Each part is
/// created `0700` (existing ones are made `0700`), and a part that is a symbolic link or
/// not a folder is refused, so nothing is ever written through a link planted in the
/// output folder. `out` itself is the user's choice and is created if missing.
fn private_dir(out: &Path, parts: &[&str]) -> Result<PathBuf, ProvisionError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProvisionError::Io {
            path,
            cause: source,
        }
    };
    if fs::metadata(out).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(KIT_FOLDER_MODE)
            .create(out)
            .map_err(io(out))?;
    }
    let mut dir = out.to_path_buf();
    for part in parts {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ProvisionError::Symlink { path: dir })
            }
            Ok(meta) if !meta.is_dir() => return Err(ProvisionError::NotAFolder { path: dir }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not recursive: an existing path (a link planted since the check
                // included) makes this fail instead of being followed.
                fs::DirBuilder::new()
                    .mode(KIT_FOLDER_MODE)
                    .create(&dir)
                    .map_err(io(&dir))?;
            }
            Err(source) => {
                return Err(ProvisionError::Io {
                    path: dir,
                    cause: source,
                })
            }
        }
        // The umask may have taken bits from the mode, and an older kit may be open.
        fs::set_permissions(&dir, fs::Permissions::from_mode(KIT_FOLDER_MODE)).map_err(io(&dir))?;
    }
    Ok(dir)
}

/// Writes a file `0600` through a new temporary file in the same folder and a rename, so
/// a symbolic link planted at `path` is refused (and would be replaced, never followed,
/// by the rename), and a reader never sees half a key. Every kit file is private,
/// certificates included: a kit is handed to one participant.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| ProvisionError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    if fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(ProvisionError::Symlink {
            path: path.to_path_buf(),
        });
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    // `tempfile` creates with O_CREAT|O_EXCL and mode 0600: never an existing file or link.
    let mut temp = tempfile::Builder::new()
        .prefix(".fedrun-provision-")
        .permissions(fs::Permissions::from_mode(KIT_FILE_MODE))
        .tempfile_in(folder)
        .map_err(io)?;
    temp.write_all(bytes).map_err(io)?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(KIT_FILE_MODE))
        .map_err(io)?;
    temp.as_file().sync_all().map_err(io)?;
    temp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

impl FromStr for Project {
    type Err = ProvisionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text, Path::new("<project>"))
    }
}
