//! `meta.json` validation (SPEC section 5): every rule, accepted and refused forms.

mod common;

use fedrun::job::limits::Limits;
use fedrun::job::meta::{JobMeta, MetaError, META_JSON_BYTES_MAX};
use fedrun::job::package::{ingest, IngestError};
use fedrun::job::runfile::RunFileError;

fn parse(json: &str) -> Result<JobMeta, MetaError> {
    JobMeta::parse(json.as_bytes(), "folder")
}

#[test]
fn the_three_entry_forms_are_accepted_and_normalised() {
    let meta = parse(
        r#"{"name": "fl", "deploy_map": {
            "z_app": ["server"],
            "a_app": {"sites": ["site-2", "site-1"]},
            "m_app": {"targets": ["site-3"]}
        }, "min_clients": 3, "mandatory_clients": ["site-3"],
        "resource_spec": {"site-1": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 0.5}, "@default": {"num_of_gpus": 0}},
        "extra_nvflare_key": {"ignored": true}}"#,
    )
    .unwrap();
    assert_eq!(meta.name, "fl");
    let apps: Vec<_> = meta.deploy_map.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(apps, ["a_app", "m_app", "z_app"], "apps are sorted by name");
    assert_eq!(
        meta.deploy_map[0].targets,
        ["site-2", "site-1"],
        "targets keep their order"
    );
    assert_eq!(meta.listed_sites(), ["site-1", "site-2", "site-3"]);
    assert_eq!(meta.min_clients, 3);
    assert_eq!(meta.mandatory_clients, ["site-3"]);
    assert_eq!(meta.resource_spec["site-1"]["mem_per_gpu_in_GiB"], 0.5);
    assert_eq!(meta.app_for("server"), Some("z_app"));
}

#[test]
fn defaults_name_from_the_folder_and_min_clients_one() {
    let meta = parse(r#"{"deploy_map": {"app": ["server", "s1"]}}"#).unwrap();
    assert_eq!(meta.name, "folder");
    assert_eq!(meta.min_clients, 1);
    assert!(meta.mandatory_clients.is_empty() && meta.resource_spec.is_empty());
}

#[test]
fn all_sites_is_accepted_only_as_the_single_app() {
    let meta = parse(
        r#"{"deploy_map": {"app": ["@ALL"]}, "min_clients": 5, "mandatory_clients": ["anywhere"]}"#,
    )
    .unwrap();
    assert!(meta.is_all_sites());
    assert_eq!(meta.min_clients, 5, "no upper bound with @ALL");
    assert_eq!(
        meta.mandatory_clients,
        ["anywhere"],
        "any site names with @ALL"
    );
    for bad in [
        r#"{"deploy_map": {"app": ["@ALL", "server"]}}"#,
        r#"{"deploy_map": {"app": ["@ALL"], "other": ["server"]}}"#,
        r#"{"deploy_map": {"app": ["server"], "other": ["@ALL"]}}"#,
    ] {
        assert!(
            matches!(parse(bad), Err(MetaError::AllSitesForm { .. })),
            "{bad}"
        );
    }
}

/// Whether an error is the one a case expects.
type Expected = fn(&MetaError) -> bool;

#[test]
fn each_rule_has_its_own_error() {
    let cases: &[(&str, Expected)] = &[
        ("[1, 2]", |e| matches!(e, MetaError::NotObject)),
        ("{nope", |e| matches!(e, MetaError::NotJson { .. })),
        (r#"{"name": 3, "deploy_map": {"a": ["server"]}}"#, |e| {
            matches!(e, MetaError::BadName)
        }),
        (r#"{"name": "", "deploy_map": {"a": ["server"]}}"#, |e| {
            matches!(e, MetaError::BadName)
        }),
        (r#"{"name": "x"}"#, |e| {
            matches!(e, MetaError::DeployMapMissing)
        }),
        (r#"{"deploy_map": {}}"#, |e| {
            matches!(e, MetaError::DeployMapEmpty)
        }),
        (r#"{"deploy_map": ["server"]}"#, |e| {
            matches!(e, MetaError::DeployMapEmpty)
        }),
        (r#"{"deploy_map": {"../a": ["server"]}}"#, |e| {
            matches!(e, MetaError::BadAppName { .. })
        }),
        (r#"{"deploy_map": {"a/b": ["server"]}}"#, |e| {
            matches!(e, MetaError::BadAppName { .. })
        }),
        (r#"{"deploy_map": {"a": "server"}}"#, |e| {
            matches!(e, MetaError::BadEntryForm { .. })
        }),
        (r#"{"deploy_map": {"a": {"clients": ["server"]}}}"#, |e| {
            matches!(e, MetaError::BadEntryForm { .. })
        }),
        (
            r#"{"deploy_map": {"a": {"sites": ["server"], "targets": []}}}"#,
            |e| matches!(e, MetaError::BadEntryForm { .. }),
        ),
        (r#"{"deploy_map": {"a": ["server", 7]}}"#, |e| {
            matches!(e, MetaError::BadTarget { .. })
        }),
        (r#"{"deploy_map": {"a": ["server", ""]}}"#, |e| {
            matches!(e, MetaError::BadTarget { .. })
        }),
        (r#"{"deploy_map": {"a": ["server"], "b": []}}"#, |e| {
            matches!(e, MetaError::NoTargets { .. })
        }),
        (r#"{"deploy_map": {"a": ["s1"]}}"#, |e| {
            matches!(e, MetaError::ServerMissing)
        }),
        (
            r#"{"deploy_map": {"a": ["server"], "b": ["server", "s1"]}}"#,
            |e| matches!(e, MetaError::ServerListedTwice { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"], "b": ["s1"]}}"#,
            |e| matches!(e, MetaError::SiteListedTwice { site, first, second } if site == "s1" && first == "a" && second == "b"),
        ),
        (r#"{"deploy_map": {"a": ["server", "s1", "s1"]}}"#, |e| {
            matches!(e, MetaError::SiteListedTwice { .. })
        }),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "min_clients": 0}"#,
            |e| matches!(e, MetaError::BadMinClients { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "min_clients": -1}"#,
            |e| matches!(e, MetaError::BadMinClients { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "min_clients": 1.5}"#,
            |e| matches!(e, MetaError::BadMinClients { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "min_clients": "1"}"#,
            |e| matches!(e, MetaError::BadMinClients { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "min_clients": 2}"#,
            |e| {
                matches!(
                    e,
                    MetaError::MinClientsOverSites {
                        min_clients: 2,
                        sites: 1
                    }
                )
            },
        ),
        (r#"{"deploy_map": {"a": ["server"]}}"#, |e| {
            matches!(
                e,
                MetaError::MinClientsOverSites {
                    min_clients: 1,
                    sites: 0
                }
            )
        }),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "mandatory_clients": "s1"}"#,
            |e| matches!(e, MetaError::BadMandatoryClients),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "mandatory_clients": [1]}"#,
            |e| matches!(e, MetaError::BadMandatoryClients),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "mandatory_clients": ["s2"]}"#,
            |e| matches!(e, MetaError::MandatoryNotListed { site } if site == "s2"),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "mandatory_clients": ["server"]}"#,
            |e| matches!(e, MetaError::MandatoryNotListed { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "mandatory_clients": ["s1", "s1"]}"#,
            |e| matches!(e, MetaError::MandatoryRepeated { .. }),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "resource_spec": []}"#,
            |e| matches!(e, MetaError::BadResourceSpec),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "resource_spec": {"s1": 2}}"#,
            |e| matches!(e, MetaError::BadResourceSpec),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "resource_spec": {"s1": {"num_of_gpus": -1}}}"#,
            |e| matches!(e, MetaError::BadResourceAmount { site, resource, .. } if site == "s1" && resource == "num_of_gpus"),
        ),
        (
            r#"{"deploy_map": {"a": ["server", "s1"]}, "resource_spec": {"@default": {"num_of_gpus": "1"}}}"#,
            |e| matches!(e, MetaError::BadResourceAmount { .. }),
        ),
    ];
    for (json, expected) in cases {
        let err = parse(json).expect_err(json);
        assert!(expected(&err), "{json} gave: {err}");
        assert!(
            err.to_string().starts_with("meta.json"),
            "the message says where: {err}"
        );
    }
}

#[test]
fn an_oversized_meta_json_is_refused_before_parsing() {
    let padding = " ".repeat(META_JSON_BYTES_MAX as usize);
    let json = format!(r#"{{"deploy_map": {{"a": ["server", "s1"]}}}}{padding}"#);
    assert!(matches!(parse(&json), Err(MetaError::TooLarge { .. })));
}

#[test]
fn the_package_rules_need_every_app_folder_and_run_file() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = r#"{"deploy_map": {"server_app": ["server"], "site_app": ["s1"]}}"#;

    let job = tmp.path().join("missing-app");
    common::write_job(&job, meta, &["server_app"]);
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::AppMissing { app } if app == "site_app"),
        "{err}"
    );

    let job = tmp.path().join("missing-run-file");
    common::write_job(&job, meta, &["server_app", "site_app"]);
    std::fs::remove_file(job.join("site_app/run.toml")).unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::RunFileMissing { app } if app == "site_app"),
        "{err}"
    );

    let job = tmp.path().join("bad-run-file");
    common::write_job(&job, meta, &["server_app", "site_app"]);
    std::fs::write(
        job.join("site_app/run.toml"),
        "command = \"sh\"\nretries = 3\n",
    )
    .unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::RunFile { app, cause: RunFileError::Syntax { .. } } if app == "site_app"),
        "{err}"
    );

    let job = tmp.path().join("missing-command");
    common::write_job(&job, meta, &["server_app", "site_app"]);
    std::fs::write(job.join("site_app/run.toml"), "command = \"./train.sh\"\n").unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, IngestError::CommandMissing { app, .. } if app == "site_app"),
        "{err}"
    );

    let job = tmp.path().join("no-meta");
    common::write_job(&job, meta, &["server_app", "site_app"]);
    std::fs::remove_file(job.join("meta.json")).unwrap();
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(matches!(err, IngestError::MetaMissing), "{err}");

    let job = tmp.path().join("bad-meta");
    common::write_job(&job, r#"{"deploy_map": {}}"#, &[]);
    let err = ingest(&job, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, IngestError::Meta(MetaError::DeployMapEmpty)),
        "{err}"
    );
}
