//! Interoperability both ways: jobs signed by `fedrun sign` and by NVFlare's own signer
//! with the committed test certificates, and NVFlare 2.9.0's own verdict on each
//! (tests/fixtures/trust/crosscheck, made by its make.sh). fedrun must agree on every
//! job, with the same signer, including chains through intermediate CAs in any order,
//! non-ASCII names, and every certificate and CA rule NVFlare refuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fedrun::trust::{verify_job_folder, RootCa};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trust")
}

#[derive(serde::Deserialize)]
struct Case {
    /// The root CA file (in tests/fixtures/trust) NVFlare verified against.
    root: String,
    nvflare: Verdict,
}

#[derive(serde::Deserialize)]
struct Verdict {
    verified: bool,
    signers: Vec<(String, String, String)>,
}

#[test]
fn fedrun_agrees_with_nvflare_on_jobs_signed_by_either() {
    let text = std::fs::read_to_string(dir().join("crosscheck/expected.json")).unwrap();
    let expected: BTreeMap<String, Case> = serde_json::from_str(&text).unwrap();
    assert_eq!(expected.len(), 21);
    assert!(expected.keys().any(|k| k.starts_with("nvflare-")));
    let passing = expected.values().filter(|c| c.nvflare.verified).count();
    assert!(
        passing >= 5 && passing < expected.len(),
        "both verdicts are covered"
    );
    // NVFlare judged them on 2026-11-28; every test certificate has the same validity
    // state on 2027-01-01.
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600);
    for (name, case) in &expected {
        let want = &case.nvflare;
        let root = RootCa::load(&dir().join(&case.root)).unwrap();
        let job = dir().join("crosscheck/jobs").join(name).join("job");
        let got = verify_job_folder(&job, &root, at);
        assert_eq!(got.is_ok(), want.verified, "{name}: {got:?}");
        let signers: Vec<(String, String, String)> = got
            .into_iter()
            .map(|id| (id.name, id.org, id.role.unwrap_or_default()))
            .collect();
        assert_eq!(&signers, &want.signers, "{name}");
    }
}
