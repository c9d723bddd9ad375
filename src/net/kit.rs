//! A startup kit on disk (SPEC section 11): `fedrun.toml` (who this participant is and
//! where the server is) and `startup/` (the project root CA, the participant's certificate
//! and its key).
//!
//! ```toml
//! name = "site-1"
//! role = "site"            # "server", "site", or an admin role (project_admin, ...)
//! org = "hospital-a"
//! [server]
//! host = "server.example.org"
//! port = 8443
//! # the server's kit only: the project's participants, rewritten by each provision
//! sites = ["site-1", "site-2"]
//! [[server.admins]]
//! name = "admin@example.org"
//! org = "example"
//! role = "project_admin"
//! ```
//!
//! Keys other than these are kept by provisioning and ignored here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::lifecycle::Role;
use crate::trust::files::{read_bounded, PROJECT_FILE_MAX_BYTES};

/// The kit's settings file.
pub const KIT_FILE: &str = "fedrun.toml";
/// The folder of the kit's certificates and key.
pub const STARTUP_DIR: &str = "startup";
/// The port a server listens on when the project file does not say.
pub const DEFAULT_PORT: u16 = 8443;

/// What kind of participant a kit is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KitKind {
    /// The server.
    Server,
    /// A site.
    Site,
    /// An admin with this role.
    Admin {
        /// The role of the admin's certificate.
        role: Role,
    },
}

impl KitKind {
    /// The `role` text of `fedrun.toml`.
    pub fn as_str(&self) -> &'static str {
        match self {
            KitKind::Server => "server",
            KitKind::Site => "site",
            KitKind::Admin { role } => role.as_str(),
        }
    }

    /// Reads the `role` text of `fedrun.toml`.
    pub fn parse(text: &str) -> Option<KitKind> {
        match text {
            "server" => Some(KitKind::Server),
            "site" => Some(KitKind::Site),
            role => role.parse().ok().map(|role| KitKind::Admin { role }),
        }
    }
}

/// An admin the server's kit lists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KitAdmin {
    /// The admin's name (certificate CN).
    pub name: String,
    /// The admin's org (certificate O).
    pub org: String,
    /// The admin's role.
    pub role: Role,
}

/// A loaded startup kit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kit {
    /// The kit folder.
    pub dir: PathBuf,
    /// The participant's name (its certificate's CN).
    pub name: String,
    /// The participant's org.
    pub org: String,
    /// Server, site or admin.
    pub kind: KitKind,
    /// The name the server is dialled at and that its certificate holds.
    pub server_host: String,
    /// The server's port.
    pub server_port: u16,
    /// The project root CA (PEM).
    pub root_ca: PathBuf,
    /// The participant's certificate (PEM).
    pub cert: PathBuf,
    /// The participant's private key (PEM).
    pub key: PathBuf,
    /// The server's kit only: the project's site names.
    pub sites: BTreeSet<String>,
    /// The server's kit only: the project's admins.
    pub admins: Vec<KitAdmin>,
}

/// Why a kit cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A file of the kit is missing.
    #[error("the kit {dir} is incomplete: {missing} is missing")]
    Missing {
        /// The kit folder.
        dir: PathBuf,
        /// The missing file, relative to the kit folder.
        missing: String,
    },
    /// `fedrun.toml` could not be read.
    #[error(transparent)]
    Read(#[from] crate::trust::files::ReadFileError),
    /// `fedrun.toml` is not what a kit holds.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Kit {
    /// Loads the kit in `dir`, checking that every file it needs is there.
    pub fn load(dir: &Path) -> Result<Kit, KitError> {
        let file = dir.join(KIT_FILE);
        if !dir.is_dir() {
            return Err(KitError::Missing {
                dir: dir.to_path_buf(),
                missing: "the kit folder itself".into(),
            });
        }
        if !file.is_file() {
            return Err(KitError::Missing {
                dir: dir.to_path_buf(),
                missing: KIT_FILE.into(),
            });
        }
        let bytes = read_bounded(&file, PROJECT_FILE_MAX_BYTES, "kit file")?;
        let invalid = |reason: String| KitError::Invalid {
            path: file.clone(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(crate::settings::toml_report(&text, &e)))?;
        let text_of = |table: &toml::Table, key: &str| -> Result<String, KitError> {
            match table.get(key) {
                Some(toml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(invalid(format!("`{key}` must be a non-empty string"))),
                None => Err(invalid(format!("`{key}` is missing"))),
            }
        };
        let name = text_of(&table, "name")?;
        let org = match table.get("org") {
            Some(toml::Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let role = text_of(&table, "role")?;
        let kind = KitKind::parse(&role).ok_or_else(|| {
            invalid(format!(
                "role {role:?} is none of server, site, project_admin, org_admin, lead, member"
            ))
        })?;
        let server = match table.get("server") {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(invalid("the [server] table is missing".into())),
        };
        let server_host = text_of(server, "host")?;
        let server_port = match server.get("port") {
            None => DEFAULT_PORT,
            Some(toml::Value::Integer(p)) => u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(format!("server port {p} is not a port (1-65535)")))?,
            Some(_) => return Err(invalid("server port must be an integer".into())),
        };
        let mut sites = BTreeSet::new();
        let mut admins = Vec::new();
        if kind == KitKind::Server {
            match server.get("sites") {
                None => {}
                Some(toml::Value::Array(list)) => {
                    for value in list {
                        match value {
                            toml::Value::String(s) => {
                                sites.insert(s.clone());
                            }
                            _ => return Err(invalid("server.sites must list strings".into())),
                        }
                    }
                }
                Some(_) => return Err(invalid("server.sites must be a list".into())),
            }
            match server.get("admins") {
                None => {}
                Some(toml::Value::Array(list)) => {
                    for value in list {
                        let toml::Value::Table(t) = value else {
                            return Err(invalid("server.admins must be tables".into()));
                        };
                        let role = text_of(t, "role")?;
                        let role =
                            role.parse()
                                .map_err(|e: crate::lifecycle::actor::UnknownRole| {
                                    invalid(e.to_string())
                                })?;
                        admins.push(KitAdmin {
                            name: text_of(t, "name")?,
                            org: text_of(t, "org")?,
                            role,
                        });
                    }
                }
                Some(_) => return Err(invalid("server.admins must be a list".into())),
            }
        }
        let (cert_file, key_file) = match kind {
            KitKind::Server => ("server.crt", "server.key"),
            _ => ("client.crt", "client.key"),
        };
        let startup = dir.join(STARTUP_DIR);
        let kit = Kit {
            dir: dir.to_path_buf(),
            name,
            org,
            kind,
            server_host,
            server_port,
            root_ca: startup.join("rootCA.pem"),
            cert: startup.join(cert_file),
            key: startup.join(key_file),
            sites,
            admins,
        };
        for path in [&kit.root_ca, &kit.cert, &kit.key] {
            if !path.is_file() {
                let missing = path.strip_prefix(dir).unwrap_or(path);
                return Err(KitError::Missing {
                    dir: dir.to_path_buf(),
                    missing: missing.display().to_string(),
                });
            }
        }
        Ok(kit)
    }

    /// `host:port` of the server, as the kit says.
    pub fn server_address(&self) -> String {
        if self.server_host.contains(':') {
            format!("[{}]:{}", self.server_host, self.server_port)
        } else {
            format!("{}:{}", self.server_host, self.server_port)
        }
    }
}

/// The `fedrun.toml` keys provisioning owns, set in `existing` (the current file's table,
/// or an empty one), every other key kept as it was.
pub fn merge_kit_file(
    mut existing: toml::Table,
    name: &str,
    org: &str,
    kind: &KitKind,
    host: &str,
    port: u16,
    participants: Option<(&[String], &[KitAdmin])>,
) -> toml::Table {
    use toml::Value;
    existing.insert("name".into(), Value::String(name.into()));
    existing.insert("org".into(), Value::String(org.into()));
    existing.insert("role".into(), Value::String(kind.as_str().into()));
    let mut server = match existing.remove("server") {
        Some(Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    server.insert("host".into(), Value::String(host.into()));
    server.insert("port".into(), Value::Integer(i64::from(port)));
    if let Some((sites, admins)) = participants {
        server.insert(
            "sites".into(),
            Value::Array(sites.iter().map(|s| Value::String(s.clone())).collect()),
        );
        let admins = admins
            .iter()
            .map(|a| {
                let mut t = toml::Table::new();
                t.insert("name".into(), Value::String(a.name.clone()));
                t.insert("org".into(), Value::String(a.org.clone()));
                t.insert("role".into(), Value::String(a.role.as_str().into()));
                Value::Table(t)
            })
            .collect();
        server.insert("admins".into(), Value::Array(admins));
    }
    existing.insert("server".into(), Value::Table(server));
    existing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips_through_its_text() {
        for kind in [
            KitKind::Server,
            KitKind::Site,
            KitKind::Admin {
                role: Role::OrgAdmin,
            },
        ] {
            assert_eq!(KitKind::parse(kind.as_str()), Some(kind.clone()));
        }
        assert_eq!(KitKind::parse("root"), None);
    }

    #[test]
    fn merge_keeps_foreign_keys_and_replaces_the_lists() {
        let existing: toml::Table = r#"
            name = "old"
            extra = 7
            [server]
            host = "old-host"
            sites = ["gone"]
            note = "kept"
        "#
        .parse()
        .expect("toml");
        let merged = merge_kit_file(
            existing,
            "srv",
            "org",
            &KitKind::Server,
            "srv.example",
            9000,
            Some((&["a".to_string()], &[])),
        );
        assert_eq!(merged["name"].as_str(), Some("srv"));
        assert_eq!(merged["extra"].as_integer(), Some(7));
        let server = merged["server"].as_table().expect("server table");
        assert_eq!(server["note"].as_str(), Some("kept"));
        assert_eq!(server["host"].as_str(), Some("srv.example"));
        assert_eq!(server["port"].as_integer(), Some(9000));
        let sites: Vec<_> = server["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(sites, ["a"]);
    }

    #[test]
    fn incomplete_kits_name_what_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Kit::load(dir.path()).expect_err("no fedrun.toml");
        assert!(err.to_string().contains(KIT_FILE), "{err}");
        std::fs::write(
            dir.path().join(KIT_FILE),
            "name = \"site-1\"\nrole = \"site\"\n[server]\nhost = \"localhost\"\n",
        )
        .expect("write");
        let err = Kit::load(dir.path()).expect_err("no startup files");
        assert!(err.to_string().contains("rootCA.pem"), "{err}");
        std::fs::write(
            dir.path().join(KIT_FILE),
            "name = \"site-1\"\nrole = \"chief\"\n[server]\nhost = \"localhost\"\n",
        )
        .expect("write");
        let err = Kit::load(dir.path()).expect_err("bad role");
        assert!(err.to_string().contains("chief"), "{err}");
    }
}
