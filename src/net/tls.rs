//! Mutual TLS for every fedrun connection (SPEC section 11): rustls with the `ring`
//! provider, TLS 1.3 only, both ends authenticated against the project root CA of their
//! kit. Who a peer is comes from its certificate alone ([`peer_from_cert`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::kit::{Kit, KitKind};
use crate::lifecycle::{Identity, Role};
use crate::trust::certs::ParsedCert;
use crate::trust::files::{read_bounded, PEM_FILE_MAX_BYTES};

/// ALPN of the site protocol.
pub const ALPN_SITE: &[u8] = b"fedrun-site/1";
/// ALPN of the admin API.
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be made, or a peer certificate is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A kit file could not be read.
    #[error(transparent)]
    Read(#[from] crate::trust::files::ReadFileError),
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, ...).
    #[error("TLS configuration of the kit {kit}: {reason}")]
    Config {
        /// The kit folder.
        kit: std::path::PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The kit is not of the kind this configuration needs.
    #[error("the kit {kit} is a {kind} kit; {needed}")]
    WrongKit {
        /// The kit folder.
        kit: std::path::PathBuf,
        /// The kit's kind.
        kind: &'static str,
        /// What was needed.
        needed: &'static str,
    },
    /// The server host of the kit is neither a DNS name nor an IP address.
    #[error("server host {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    /// A peer certificate that cannot be read, or whose identity is not usable.
    #[error("peer certificate: {0}")]
    Peer(String),
}

/// Who is at the other end of a connection, from its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A site: certificate CN and O, no role.
    Site {
        /// The site name (CN).
        name: String,
        /// The site's org (O).
        org: String,
    },
    /// An admin: CN, O and the role in `unstructuredName`.
    Admin(Identity),
}

/// The crypto provider of every fedrun TLS configuration.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path, PEM_FILE_MAX_BYTES, "PEM file")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS #1, PKCS #8 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path, PEM_FILE_MAX_BYTES, "PEM file")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(path, e))
}

fn root_store(kit: &Kit) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&kit.root_ca)? {
        roots
            .add(cert)
            .map_err(|e| pem_error(&kit.root_ca, format!("not a usable root CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn config_error(kit: &Kit) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Config {
        kit: kit.dir.clone(),
        reason: e.to_string(),
    }
}

/// The server's TLS configuration: TLS 1.3, a client certificate required and verified
/// against the kit's root CA, ALPN site protocol and HTTP.
pub fn server_config(kit: &Kit) -> Result<Arc<ServerConfig>, TlsError> {
    if kit.kind != KitKind::Server {
        return Err(TlsError::WrongKit {
            kit: kit.dir.clone(),
            kind: kit.kind.as_str(),
            needed: "the server needs the server's kit",
        });
    }
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(root_store(kit)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config {
            kit: kit.dir.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(kit))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&kit.cert)?, load_key(&kit.key)?)
        .map_err(config_error(kit))?;
    config.alpn_protocols = vec![ALPN_SITE.to_vec(), ALPN_HTTP.to_vec()];
    Ok(Arc::new(config))
}

/// A site's or admin's TLS configuration: TLS 1.3, the server verified against the kit's
/// root CA, the kit's certificate presented, and `alpn` offered.
pub fn client_config(kit: &Kit, alpn: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    if kit.kind == KitKind::Server {
        return Err(TlsError::WrongKit {
            kit: kit.dir.clone(),
            kind: kit.kind.as_str(),
            needed: "a client needs a site's or an admin's kit",
        });
    }
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(root_store(kit)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config {
            kit: kit.dir.clone(),
            reason: e.to_string(),
        })?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error(kit))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(load_certs(&kit.cert)?, load_key(&kit.key)?)
        .map_err(config_error(kit))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The name the server's certificate is checked against: the kit's server host, a DNS
/// name or an IP address.
pub fn server_name(kit: &Kit) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(kit.server_host.clone())
        .map_err(|_| TlsError::ServerName(kit.server_host.clone()))
}

/// Who a verified peer certificate (DER) belongs to: an admin when it has a role in
/// `unstructuredName`, a site when it has none.
pub fn peer_from_cert(der: &[u8]) -> Result<Peer, TlsError> {
    let cert = ParsedCert::from_der(der).map_err(|e| TlsError::Peer(e.to_string()))?;
    let id = cert.identity();
    if id.name.is_empty() {
        return Err(TlsError::Peer(format!(
            "{} has no common name",
            cert.subject_string()
        )));
    }
    match id.role {
        None => Ok(Peer::Site {
            name: id.name,
            org: id.org,
        }),
        Some(role) => {
            let role: Role = role
                .parse()
                .map_err(|e| TlsError::Peer(format!("{}: {e}", cert.subject_string())))?;
            Ok(Peer::Admin(Identity {
                name: id.name,
                org: id.org,
                role,
            }))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::trust::provision::{provision, Project, ProvisionOptions};

    const PROJECT: &str = r#"
        name = "net-test"
        [server]
        host = "localhost"
        org = "ops"
        [[site]]
        name = "site-1"
        org = "hospital-a"
        [[admin]]
        name = "lead@a.org"
        org = "hospital-a"
        role = "lead"
    "#;

    /// Provisions `project` into `out` as of `now` and returns the folder.
    fn provision_at(project: &str, out: &Path, now: SystemTime) -> PathBuf {
        let project: Project = project.parse().expect("project");
        provision(&project, out, ProvisionOptions { force: false, now }).expect("provision");
        out.to_path_buf()
    }

    fn kit(out: &Path, name: &str) -> Kit {
        Kit::load(&out.join(name)).expect("kit")
    }

    /// Runs one handshake between the server kit and a client kit over an in-memory
    /// pipe; returns what each side saw (the server: the peer and the ALPN).
    async fn handshake(
        server: &Kit,
        client: &Kit,
        alpn: &[u8],
    ) -> (Result<(Peer, Vec<u8>), String>, Result<(), String>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(server_config(server).expect("server config"));
        let connector = TlsConnector::from(client_config(client, alpn).expect("client config"));
        let name = server_name(client).expect("server name");
        let server_side = async move {
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            let der = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("no peer certificate")?
                .to_vec();
            let alpn = conn.alpn_protocol().unwrap_or_default().to_vec();
            let peer = peer_from_cert(&der).map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok((peer, alpn))
        };
        let client_side = async move {
            let mut tls = connector
                .connect(name, client_io)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("handshake bounded")
    }

    #[tokio::test]
    async fn provisioned_site_and_admin_connect_and_are_told_apart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = provision_at(PROJECT, dir.path(), SystemTime::now());
        let server = kit(&out, "localhost");
        assert_eq!(server.sites.iter().collect::<Vec<_>>(), ["site-1"]);
        let (seen, client) = handshake(&server, &kit(&out, "site-1"), ALPN_SITE).await;
        client.expect("site handshake");
        let (peer, alpn) = seen.expect("server side");
        assert_eq!(
            peer,
            Peer::Site {
                name: "site-1".into(),
                org: "hospital-a".into()
            }
        );
        assert_eq!(alpn, ALPN_SITE);
        let (seen, client) = handshake(&server, &kit(&out, "lead@a.org"), ALPN_HTTP).await;
        client.expect("admin handshake");
        let (peer, alpn) = seen.expect("server side");
        assert_eq!(
            peer,
            Peer::Admin(Identity {
                name: "lead@a.org".into(),
                org: "hospital-a".into(),
                role: Role::Lead
            })
        );
        assert_eq!(alpn, ALPN_HTTP);
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_is_refused() {
        let ours = tempfile::tempdir().expect("temp dir");
        let theirs = tempfile::tempdir().expect("temp dir");
        let ours = provision_at(PROJECT, ours.path(), SystemTime::now());
        let theirs = provision_at(PROJECT, theirs.path(), SystemTime::now());
        // The foreign site trusts our server (our root CA) but presents its own CA's
        // certificate: the server is the one that refuses.
        let mut foreign = kit(&theirs, "site-1");
        foreign.root_ca = kit(&ours, "site-1").root_ca;
        let (seen, client) = handshake(&kit(&ours, "localhost"), &foreign, ALPN_SITE).await;
        let err = seen.expect_err("server refuses a foreign site");
        assert!(err.contains("invalid peer certificate"), "{err}");
        assert!(client.is_err(), "the site is told too");
        // A site of another CA that also trusts only its own CA refuses our server.
        let (seen, client) =
            handshake(&kit(&ours, "localhost"), &kit(&theirs, "site-1"), ALPN_SITE).await;
        assert!(seen.is_err() && client.is_err(), "{seen:?} {client:?}");
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = provision_at(PROJECT, dir.path(), SystemTime::now());
        // A second site, issued by the same CA 30 days ago for one day.
        let old = PROJECT.replace("name = \"net-test\"", "name = \"net-test\"\nvalid_days = 1")
            + "[[site]]\nname = \"old-site\"\norg = \"hospital-b\"\n";
        let past = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        provision_at(&old, &out, past);
        let (seen, client) =
            handshake(&kit(&out, "localhost"), &kit(&out, "old-site"), ALPN_SITE).await;
        let err = seen.expect_err("server refuses an expired site certificate");
        assert!(err.to_lowercase().contains("expired"), "{err}");
        assert!(client.is_err(), "the site is told too");
    }

    #[tokio::test]
    async fn an_ip_host_is_the_certificate_ip_and_kits_are_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let text = PROJECT.replace("host = \"localhost\"", "host = \"127.0.0.1\"\nport = 9443");
        let out = provision_at(&text, dir.path(), SystemTime::now());
        let server = kit(&out, "127.0.0.1");
        assert_eq!(server.server_port, 9443);
        let (seen, client) = handshake(&server, &kit(&out, "site-1"), ALPN_SITE).await;
        client.expect("the site accepts the server's IP address certificate");
        seen.expect("server side");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&out.join("site-1")), 0o700);
        assert_eq!(mode(&out.join("site-1/fedrun.toml")), 0o600);
        assert_eq!(mode(&out.join("site-1/startup/client.key")), 0o600);
        // An operator's own key survives the next provision; the lists follow the project.
        let file = out.join("127.0.0.1/fedrun.toml");
        let mut toml = std::fs::read_to_string(&file).expect("read");
        toml.push_str("\n[operator]\nnote = \"mine\"\n");
        std::fs::write(&file, toml).expect("write");
        let more = text + "[[site]]\nname = \"site-2\"\norg = \"o\"\n";
        provision_at(&more, &out, SystemTime::now());
        let toml = std::fs::read_to_string(&file).expect("read");
        assert!(toml.contains("note = \"mine\""), "{toml}");
        let server = kit(&out, "127.0.0.1");
        assert_eq!(
            server.sites.iter().collect::<Vec<_>>(),
            ["site-1", "site-2"]
        );
        assert_eq!(server.admins.len(), 1);
        assert_eq!(server.admins[0].role, Role::Lead);
    }

    #[test]
    fn kits_of_the_wrong_kind_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = provision_at(PROJECT, dir.path(), SystemTime::now());
        assert!(server_config(&kit(&out, "site-1")).is_err());
        assert!(client_config(&kit(&out, "localhost"), ALPN_SITE).is_err());
    }
}
