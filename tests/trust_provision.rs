//! Provisioning: the root CA and startup kits carry SPEC section 6's subject fields, chain
//! to the root, sign jobs that verify, and a second run keeps the CA unless forced.
//! These are the only trust tests that generate keys; the project is kept small.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fedrun::trust::certs::{parse_pem_chain, verify_chain, RootCa};
use fedrun::trust::provision::{provision, Project, ProvisionError, ProvisionOptions};
use fedrun::trust::{sign_job_folder, verify_job_folder, Signer};

const PROJECT: &str = r#"
name = "test_project"
valid_days = 30
[server]
host = "server.example.org"
org = "example"
[[site]]
name = "site-1"
org = "hospital-a"
[[admin]]
name = "lead@example.org"
org = "example"
role = "lead"
"#;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600) // 2027-01-01
}

fn options(force: bool) -> ProvisionOptions {
    ProvisionOptions { force, now: now() }
}

fn kit_cert(out: &Path, who: &str, file: &str) -> fedrun::trust::certs::ParsedCert {
    let pem = fs::read(out.join(who).join("startup").join(file)).unwrap();
    parse_pem_chain(&pem).unwrap().remove(0)
}

#[test]
fn provisioned_kits_chain_to_the_root_and_sign_jobs() {
    let out = tempfile::tempdir().unwrap();
    let project: Project = PROJECT.parse().unwrap();
    let report = provision(&project, out.path(), options(false)).unwrap();
    assert!(report.new_ca);
    assert_eq!(report.kits_written.len(), 3);

    let root = RootCa::load(&out.path().join("ca/rootCA.pem")).unwrap();
    assert_eq!(root.cert().identity().name, "test_project");
    let ca_pem = fs::read(out.path().join("ca/rootCA.pem")).unwrap();
    for who in ["server.example.org", "site-1", "lead@example.org"] {
        let kit_root = fs::read(out.path().join(who).join("startup/rootCA.pem")).unwrap();
        assert_eq!(kit_root, ca_pem, "{who}'s kit carries the project root CA");
    }

    // The admin: CN, O and the role in unstructuredName, encoded as UTF8String.
    let admin = kit_cert(out.path(), "lead@example.org", "client.crt");
    let id = verify_chain(std::slice::from_ref(&admin), &root, now()).unwrap();
    assert_eq!(
        (id.name.as_str(), id.org.as_str()),
        ("lead@example.org", "example")
    );
    assert_eq!(id.role.as_deref(), Some("lead"));
    let role_attr = admin
        .certificate()
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == fedrun::trust::certs::UNSTRUCTURED_NAME)
        .unwrap();
    assert_eq!(der::Tagged::tag(&role_attr.value), der::Tag::Utf8String);

    // The site: CN and O, no role; usable to sign (clientAuth).
    let site = kit_cert(out.path(), "site-1", "client.crt");
    let id = verify_chain(std::slice::from_ref(&site), &root, now()).unwrap();
    assert_eq!(
        (id.name.as_str(), id.org.as_str(), id.role),
        ("site-1", "hospital-a", None)
    );

    // The server certificate is for serverAuth only, so it cannot sign jobs.
    let server = kit_cert(out.path(), "server.example.org", "server.crt");
    assert!(verify_chain(std::slice::from_ref(&server), &root, now()).is_err());

    // Validity follows valid_days.
    assert!(verify_chain(
        std::slice::from_ref(&admin),
        &root,
        now() + Duration::from_secs(31 * 86_400)
    )
    .is_err());

    // Private keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca/rootCA.key", "lead@example.org/startup/client.key"] {
        let mode = fs::metadata(out.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} mode {mode:o}");
    }

    // The admin kit signs a job that verifies with the kit's root CA.
    let job = out.path().join("job");
    fs::create_dir_all(job.join("app")).unwrap();
    fs::write(job.join("meta.json"), b"{}").unwrap();
    fs::write(job.join("app/run.toml"), b"command = \"true\"").unwrap();
    let kit = out.path().join("lead@example.org/startup");
    let signer = Signer::load(&kit.join("client.crt"), &kit.join("client.key")).unwrap();
    sign_job_folder(&job, &signer).unwrap();
    let site_root = RootCa::load(&out.path().join("site-1/startup/rootCA.pem")).unwrap();
    let id = verify_job_folder(&job, &site_root, now()).unwrap();
    assert_eq!(id.role.as_deref(), Some("lead"));
}

#[test]
fn second_run_keeps_the_ca_and_kits_unless_forced() {
    let out = tempfile::tempdir().unwrap();
    let project: Project = PROJECT.parse().unwrap();
    provision(&project, out.path(), options(false)).unwrap();
    let ca_before = fs::read(out.path().join("ca/rootCA.pem")).unwrap();
    let site_before = fs::read(out.path().join("site-1/startup/client.crt")).unwrap();

    let again = provision(&project, out.path(), options(false)).unwrap();
    assert!(!again.new_ca);
    assert!(again.kits_written.is_empty());
    assert_eq!(again.kits_kept.len(), 3);
    assert_eq!(
        fs::read(out.path().join("ca/rootCA.pem")).unwrap(),
        ca_before
    );
    assert_eq!(
        fs::read(out.path().join("site-1/startup/client.crt")).unwrap(),
        site_before
    );

    let forced = provision(&project, out.path(), options(true)).unwrap();
    assert!(forced.new_ca);
    assert_eq!(forced.kits_written.len(), 3);
    let ca_after = fs::read(out.path().join("ca/rootCA.pem")).unwrap();
    assert_ne!(ca_after, ca_before);
    // The new kits chain to the new root, not the old one.
    let new_root = RootCa::from_pem(&ca_after).unwrap();
    let old_root = RootCa::from_pem(&ca_before).unwrap();
    let site = kit_cert(out.path(), "site-1", "client.crt");
    assert!(verify_chain(std::slice::from_ref(&site), &new_root, now()).is_ok());
    assert!(verify_chain(std::slice::from_ref(&site), &old_root, now()).is_err());
}

#[test]
fn half_a_ca_is_refused() {
    let out = tempfile::tempdir().unwrap();
    fs::create_dir_all(out.path().join("ca")).unwrap();
    fs::write(out.path().join("ca/rootCA.pem"), b"not a cert").unwrap();
    let project: Project = PROJECT.parse().unwrap();
    let err = provision(&project, out.path(), options(false)).unwrap_err();
    assert!(matches!(err, ProvisionError::BrokenCa { .. }), "{err}");
}

#[test]
fn invalid_project_files_are_refused_with_the_reason() {
    let cases = [
        (
            PROJECT.replace("role = \"lead\"", "role = \"boss\""),
            "role",
        ),
        (
            PROJECT.replace("name = \"site-1\"", "name = \"lead@example.org\""),
            "used twice",
        ),
        (
            PROJECT.replace("name = \"site-1\"", "name = \"../x\""),
            "slashes",
        ),
        (
            PROJECT.replace("name = \"site-1\"", "name = \"ca\""),
            "reserved",
        ),
        (
            PROJECT.replace("org = \"hospital-a\"", "org = \"\""),
            "empty org",
        ),
        (
            PROJECT.replace("valid_days = 30", "valid_days = 0"),
            "valid_days",
        ),
        (format!("{PROJECT}\ncolour = \"blue\""), "unknown field"),
        (
            PROJECT.replace("[server]\nhost = \"server.example.org\"\n", "[server]\n"),
            "host",
        ),
    ];
    for (text, expected) in cases {
        let err = text.parse::<Project>().unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}
