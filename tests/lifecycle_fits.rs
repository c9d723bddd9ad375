//! Every event fits (SPEC section 3): no command can make an event over the history's
//! 64 KiB value limit, so no event can stop the engine. Requests that are the same for many
//! sites are stored once, long site lists are split, reasons are capped, submits are
//! bounded, and a command whose events would not fit is refused before anything is
//! written. `@ALL` on 10,000 sites runs to completion.

mod lifecycle_support;

use fedrun::lifecycle::SubmitSignature;
use std::collections::BTreeMap;
use std::time::Duration;

use fedrun::engine::clock::SIM_EPOCH;
use fedrun::engine::ids::SeededIds;
use fedrun::engine::node::{Input, Output, Participant, ReplyToken, Request};
use fedrun::engine::owner::{Engine, EngineLimits, Ids};
use fedrun::history::{History, MemoryStorage, Storage, MAX_VALUE_BYTES};
use fedrun::job::flat_map::FlatMap;
use fedrun::job::meta::{AppTargets, JobMeta, MetaError, RESOURCE_KEYS_MAX};
use fedrun::lifecycle::event::{encoded_len, MAX_EVENT_BYTES};
use fedrun::lifecycle::{
    Actor, AdminRequest, Answer, BlobHash, Command, Effect, Event, EventKind, Origin, Rejection,
    RunPhase, RunStatus, Timestamp,
};
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;
use proptest::prelude::*;

/// A site name of exactly `len` bytes, unique by `n`.
fn long_name(n: usize, len: usize) -> String {
    let head = format!("site-{n:05}-");
    format!("{head}{}", "x".repeat(len.saturating_sub(head.len())))
}

/// A meta for the listed sites with `keys` resources in `@default` and one own key per
/// site (so every site's merged request differs from every other's).
fn meta_with_resources(sites: &[String], keys: usize, key_len: usize) -> JobMeta {
    let mut spec = BTreeMap::new();
    let default: BTreeMap<String, f64> = (0..keys)
        .map(|k| {
            (
                format!("{k:04}{}", "r".repeat(key_len.saturating_sub(4))),
                1.0,
            )
        })
        .collect();
    spec.insert("@default".to_string(), default);
    let mut targets = vec!["server".to_string()];
    targets.extend(sites.iter().cloned());
    JobMeta {
        name: "big".into(),
        deploy_map: vec![AppTargets {
            app: "app".into(),
            targets,
        }],
        min_clients: 1,
        mandatory_clients: Vec::new(),
        resource_spec: spec
            .into_iter()
            .map(|(site, amounts)| (site, FlatMap::from(amounts)))
            .collect(),
    }
}

fn assert_all_fit(events: &[Event]) {
    for event in events {
        let bytes = encoded_len(event);
        assert!(
            bytes <= MAX_EVENT_BYTES,
            "event {} ({}) encodes to {bytes} bytes, over {MAX_EVENT_BYTES}",
            event.seq,
            event.kind.name()
        );
    }
}

/// Drives a world's job through reserve, deploy and start with every answer OK, using
/// the given error/token texts, and returns the job id.
fn drive_to_running(w: &mut World, sites: &[String], job: JobMeta, token_len: usize) -> JobId {
    for site in sites {
        w.connect(site);
    }
    let job_id = w.submit(job);
    let effects = w.last_try_effects(job_id);
    for effect in effects {
        if let Effect::CheckResources {
            site,
            try_id,
            job_id,
            ..
        } = effect
        {
            w.site(
                &site,
                SiteReport::ResourceAnswer {
                    try_id,
                    job_id,
                    answer: Ok("t".repeat(token_len)),
                },
            );
        }
    }
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    for site in sites {
        w.site(
            site,
            SiteReport::DeployAnswer {
                job_id,
                result: Ok(()),
            },
        );
    }
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    for site in sites {
        w.site(
            site,
            SiteReport::StartAnswer {
                job_id,
                result: Ok(()),
            },
        );
    }
    job_id
}

use fedrun::job::JobId;

#[test]
fn the_same_request_for_many_sites_is_stored_once() {
    // 1,500 resource keys for 4 sites: four copies no longer fit in one event. The meta
    // parser refuses so many keys, so the core is handed the meta directly, as a replayed
    // or hostile caller could.
    let sites: Vec<String> = (1..=4).map(|n| format!("site-{n}")).collect();
    let mut w = World::default();
    for site in &sites {
        w.connect(site);
    }
    let d = w.submit_as(boss(), meta_with_resources(&sites, 1500, 12));
    assert!(
        matches!(d.reply, Some(Ok(Answer::Submitted { .. }))),
        "{:?}",
        d.reply
    );
    assert_all_fit(&d.events);
    let started = d
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::ScheduleTryStarted { requests, .. } => Some(requests.clone()),
            _ => None,
        })
        .expect("a try started");
    assert_eq!(started.len(), 1, "one request, stored once");
    assert_eq!(started[0].sites, sites);
    // The state still knows what each site was asked.
    let t = w.state.schedule_try.as_ref().expect("try in flight");
    assert_eq!(t.asked.len(), 4);
    assert!(t.asked.iter().all(|r| r.resources.len() == 1500));
}

#[test]
fn a_meta_with_too_many_resource_keys_is_refused_by_name() {
    let keys: Vec<String> = (0..=RESOURCE_KEYS_MAX)
        .map(|k| format!("\"key{k}\": 1"))
        .collect();
    let json = format!(
        r#"{{"deploy_map": {{"app": ["server", "site-1"]}}, "resource_spec": {{"@default": {{{}}}}}}}"#,
        keys.join(", ")
    );
    let err = JobMeta::parse(json.as_bytes(), "job").expect_err("too many keys");
    assert!(
        matches!(err, MetaError::TooManyResourceKeys { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("@default"), "{err}");
    let long_site = "s".repeat(200);
    let json = format!(r#"{{"deploy_map": {{"app": ["server", "{long_site}"]}}}}"#);
    let err = JobMeta::parse(json.as_bytes(), "job").expect_err("long site name");
    assert!(
        matches!(err, MetaError::NameTooLong { what: "site", .. }),
        "{err}"
    );
}

#[test]
fn all_sites_on_two_thousand_long_named_sites_splits_its_lists() {
    let sites: Vec<String> = (0..2000).map(|n| long_name(n, 120)).collect();
    let mut w = World::default();
    let job_id = drive_to_running(&mut w, &sites, meta_all(1), 256);
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert_all_fit(&w.log);
    let names: Vec<&str> = w.log.iter().map(|e| e.kind.name()).collect();
    for continued in [
        "schedule_try_extended",
        "job_dispatch_extended",
        "run_clients_added",
    ] {
        assert!(names.contains(&continued), "{continued} splits a long list");
    }
    let job = w.job(job_id);
    assert_eq!(*job.run.sites, sites, "the split lists add up");
    assert_eq!(*job.run.job_clients, sites);
    assert_eq!(job.run.reservations.len(), 0, "consumed by the start");
    let line = job.schedule_history.lines().last().expect("a try line");
    assert!(line.ends_with("... and 1984 more"), "{line}");
    // The outcome wait ends with 2,000 sites silent: the reason names some, counts the rest.
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.advance_ms(16 * 60 * 1000);
    w.fire_due_timers();
    let reason = w.job(job_id).finish_reason.clone().expect("finished");
    assert!(reason.len() <= 2048, "{} bytes", reason.len());
    assert!(reason.contains(" more"), "{reason}");
    assert_all_fit(&w.log);
    // Replay from the stored events gives the same state.
    let mut replayed = fedrun::lifecycle::State::new();
    for event in &w.log {
        replayed.apply_checked(event).expect("replays");
    }
    assert_eq!(replayed, w.state);
}

#[test]
fn long_failure_texts_from_sites_are_capped() {
    let sites: Vec<String> = (0..300).map(|n| long_name(n, 120)).collect();
    let mut w = World::default();
    for site in &sites {
        w.connect(site);
    }
    let job_id = w.submit(meta_all(300));
    let effects = w.last_try_effects(job_id);
    w.reserve_all(&effects);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    for site in &sites {
        w.site(
            site,
            SiteReport::DeployAnswer {
                job_id,
                result: Err("e".repeat(100_000)),
            },
        );
    }
    let (status, reason) = (w.status(job_id), w.job(job_id).finish_reason.clone());
    assert_eq!(status, RunStatus::FailedToRun);
    let reason = reason.expect("a reason");
    assert!(reason.len() <= 2048, "{} bytes", reason.len());
    assert!(reason.contains("more"), "{reason}");
    assert_all_fit(&w.log);
}

#[test]
fn a_command_whose_event_would_not_fit_is_refused_before_anything_is_written() {
    // A meta far over any limit, handed to the core directly.
    let sites: Vec<String> = vec!["site-1".into()];
    let mut w = World::default();
    let before = w.state.last_seq;
    let d = w.submit_as(boss(), meta_with_resources(&sites, 8000, 20));
    assert!(
        matches!(d.reply, Some(Err(Rejection::TooLarge { .. }))),
        "{:?}",
        d.reply
    );
    assert_eq!(
        kinds(&d),
        ["request_refused"],
        "only the refusal is recorded"
    );
    assert_eq!(w.state.last_seq, before + 1);
    assert!(w.state.jobs.is_empty());
    assert_all_fit(&d.events);
}

/// Answers every output of the node as a healthy federation would; returns the inputs.
fn answer(outputs: &[Output]) -> Vec<Input> {
    let mut out = Vec::new();
    for output in outputs {
        match output {
            Output::Send { to, request } => {
                let report = match request {
                    Request::CheckResources { try_id, job_id, .. } => {
                        let Participant::Site(site) = to else {
                            continue;
                        };
                        SiteReport::ResourceAnswer {
                            try_id: *try_id,
                            job_id: *job_id,
                            answer: Ok(format!("token-{site}")),
                        }
                    }
                    Request::Deploy { job_id, .. } => SiteReport::DeployAnswer {
                        job_id: *job_id,
                        result: Ok(()),
                    },
                    Request::Start { job_id } => SiteReport::StartAnswer {
                        job_id: *job_id,
                        result: Ok(()),
                    },
                    _ => continue,
                };
                out.push(Input::Report {
                    from: to.clone(),
                    report,
                });
            }
            Output::Archive { job_id } => out.push(Input::ArchiveFinished {
                job_id: *job_id,
                result: Ok(BlobHash([9; 32])),
            }),
            _ => {}
        }
    }
    out
}

#[test]
fn all_sites_on_ten_thousand_sites_runs_to_completion_on_the_engine() {
    // `@ALL` on 10,000 connected sites through the engine and its history: the job
    // completes, every record it stores is within the value limit and the engine never
    // stops. Each site answer is one decision; the state is persistent (a decision copies
    // pointers, not the run's per-site maps) and a settle does not list the run's sites on
    // each report. What still grows with n per report is one cheap pass over the exits
    // (`stop_reason`), so this takes seconds, not the hours a copy per answer took.
    const SITES: usize = 10_000;
    let memory = MemoryStorage::new();
    let history = History::<Event>::in_memory(memory.clone()).expect("history opens");
    let (mut engine, _) = Engine::start(
        history,
        Settings::default(),
        Ids::Seeded(SeededIds::new(7)),
        EngineLimits::default(),
        SIM_EPOCH,
    )
    .expect("engine starts");
    let mut now = SIM_EPOCH;
    let tick = |now: &mut Timestamp| {
        *now = now.plus(Duration::from_millis(10));
        *now
    };
    let sites: Vec<String> = (0..SITES).map(|n| format!("site-{n:05}")).collect();
    let connects: Vec<Input> = sites
        .iter()
        .map(|site| Input::Report {
            from: Participant::Site(site.clone()),
            report: SiteReport::Connected {
                resources: BTreeMap::new(),
                running: Vec::new(),
            },
        })
        .collect();
    engine.step(connects, tick(&mut now)).expect("connects");
    let submit = Input::Admin {
        token: ReplyToken(1),
        origin: Origin {
            identity: boss(),
            request_id: Some("all-10k".into()),
        },
        request: AdminRequest::SubmitJob {
            meta: meta_all(SITES as u32),
            package: package(),
            signature: SubmitSignature::NoSigner,
        },
    };
    let mut released = engine.step(vec![submit], tick(&mut now)).expect("submit");
    let job_id = *engine.state().jobs.keys().next().expect("the job exists");
    let mut exits_sent = false;
    for _ in 0..20 {
        let mut commands = answer(&released);
        let job = engine.state().job(&job_id).expect("job");
        if job.status == RunStatus::Running && !exits_sent {
            exits_sent = true;
            commands.push(Input::Report {
                from: Participant::Local,
                report: SiteReport::AppExited {
                    job_id,
                    report_id: format!("server/{job_id}"),
                    outcome: ExitOutcome::Code(0),
                    stop_requested: false,
                },
            });
            commands.extend(sites.iter().map(|site| Input::Report {
                from: Participant::Site(site.clone()),
                report: SiteReport::AppExited {
                    job_id,
                    report_id: format!("{site}:exit"),
                    outcome: ExitOutcome::Code(0),
                    stop_requested: false,
                },
            }));
        }
        if commands.is_empty() {
            break;
        }
        released = engine
            .step(commands, tick(&mut now))
            .expect("the engine never stops");
    }
    let job = engine.state().job(&job_id).expect("job");
    assert_eq!(job.status, RunStatus::Completed, "{:?}", job.finish_reason);
    assert_eq!(job.run.job_clients.len(), SITES);
    assert!(engine.is_settled(), "run stopped and workspace archived");
    // Every stored record is within the history's value limit (the bytes themselves).
    let last = memory.last().expect("readable").expect("not empty").0;
    for seq in 1..=last {
        let bytes = memory.read(seq).expect("readable").expect("present");
        assert!(
            bytes.len() <= MAX_VALUE_BYTES,
            "record {seq} is {} bytes",
            bytes.len()
        );
    }
}

/// Given/when/then on the core for `@ALL` on 10,000 connected sites: the per-site answers
/// are given as the events decide records for them (replayed with the start-up check, in
/// place), and every step that makes a list of all sites is decided: the try, the
/// dispatch, the start, and the final status with its silent sites.
#[test]
fn all_sites_on_ten_thousand_sites_runs_to_completion() {
    const SITES: usize = 10_000;
    let sites: Vec<String> = (0..SITES).map(|n| format!("site-{n:05}")).collect();
    let mut w = World::default();
    w.given(
        sites
            .iter()
            .map(|site| {
                (
                    Actor::Site { name: site.clone() },
                    EventKind::SiteConnected {
                        site: site.clone(),
                        resources: BTreeMap::new(),
                        running: Vec::new(),
                    },
                )
            })
            .collect(),
    );
    let job_id = w.submit(meta_all(1));
    let try_id = w.state.schedule_try.as_ref().expect("a try").try_id;
    assert_eq!(
        w.state.schedule_try.as_ref().map(|t| t.asked.len()),
        Some(SITES)
    );
    let site_actor = |site: &String| Actor::Site { name: site.clone() };
    w.given(
        sites[..SITES - 1]
            .iter()
            .map(|site| {
                (
                    site_actor(site),
                    EventKind::ResourceAnswered {
                        job_id,
                        try_id,
                        site: site.clone(),
                        answer: fedrun::lifecycle::ResourceAnswer::Reserved(format!("t-{site}")),
                    },
                )
            })
            .collect(),
    );
    let last = sites[SITES - 1].clone();
    w.site(
        &last,
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok(format!("t-{last}")),
        },
    );
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    assert_eq!(w.job(job_id).run.sites.len(), SITES);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    w.given(
        sites[..SITES - 1]
            .iter()
            .map(|site| {
                (
                    site_actor(site),
                    EventKind::DeployFinished {
                        job_id,
                        participant: site.clone(),
                        result: fedrun::lifecycle::StepResult::Ok,
                    },
                )
            })
            .collect(),
    );
    w.site(
        &last,
        SiteReport::DeployAnswer {
            job_id,
            result: Ok(()),
        },
    );
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    w.given(
        sites[..SITES - 1]
            .iter()
            .map(|site| {
                (
                    site_actor(site),
                    EventKind::StartFinished {
                        job_id,
                        participant: site.clone(),
                        result: fedrun::lifecycle::StepResult::Ok,
                    },
                )
            })
            .collect(),
    );
    w.site(
        &last,
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert_eq!(w.job(job_id).run.job_clients.len(), SITES);
    w.given(
        sites[..SITES / 2]
            .iter()
            .map(|site| {
                (
                    site_actor(site),
                    EventKind::SiteOutcomeReported {
                        job_id,
                        site: site.clone(),
                        report_id: format!("{site}:exit"),
                        outcome: ExitOutcome::Code(0),
                        stop_requested: Some(false),
                    },
                )
            })
            .collect(),
    );
    w.server_exit(job_id, ExitOutcome::Code(0));
    // Half the sites never report: the outcome wait ends and names some of them.
    w.advance_ms(16 * 60 * 1000);
    let decisions = w.fire_due_timers();
    assert_eq!(w.status(job_id), RunStatus::Completed);
    let reason = w.job(job_id).finish_reason.clone().expect("a reason");
    assert!(reason.len() <= 2048 && reason.ends_with("more"), "{reason}");
    let archive = |decisions: &[fedrun::lifecycle::Decision]| {
        decisions
            .iter()
            .flat_map(|d| d.effects.iter())
            .any(|e| *e == Effect::ArchiveWorkspace { job_id })
    };
    // The silent sites were told to stop and may still run the app: the stop is over
    // (and the workspace archived) only after abort_grace + client_outcome_wait (SPEC 8).
    assert!(
        !archive(&decisions),
        "no archive while an app may still run"
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    w.advance_ms(16 * 60 * 1000);
    let decisions = w.fire_due_timers();
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert!(
        archive(&decisions),
        "the run stopped and its workspace is archived"
    );
    w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([4; 32])),
    });
    assert!(w.state.all_settled());
    assert_all_fit(&w.log);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Hostile sizes everywhere a caller can put bytes: many sites with long names, many
    /// long resource keys, long tokens, long error texts. Every event decide makes encodes
    /// to at most 64 KiB.
    #[test]
    fn every_event_decide_makes_fits(
        site_count in 1usize..400,
        name_len in 8usize..=256,
        keys in 0usize..=64,
        key_len in 4usize..=128,
        token_len in 1usize..=256,
        error_len in 0usize..20_000,
        all_sites in any::<bool>(),
        fail_deploys in any::<bool>(),
    ) {
        let sites: Vec<String> = (0..site_count).map(|n| long_name(n, name_len)).collect();
        let mut w = World::default();
        for site in &sites {
            w.connect(site);
        }
        let mut job = if all_sites { meta_all(1) } else { meta_with_resources(&sites, keys, key_len) };
        if all_sites {
            job.resource_spec = meta_with_resources(&sites, keys, key_len).resource_spec;
        }
        let d = w.submit_as(boss(), job);
        let Some(Ok(Answer::Submitted { job_id })) = d.reply else {
            // A meta too large to record is refused, and the refusal fits.
            assert_all_fit(&w.log);
            return Ok(());
        };
        for effect in w.last_try_effects(job_id) {
            if let Effect::CheckResources { site, try_id, job_id, .. } = effect {
                w.site(&site, SiteReport::ResourceAnswer {
                    try_id,
                    job_id,
                    answer: Ok("t".repeat(token_len)),
                });
            }
        }
        w.when(Command::ServerDeployFinished { job_id, result: Ok(()) });
        for site in &sites {
            let result = if fail_deploys { Err("e".repeat(error_len)) } else { Ok(()) };
            w.site(site, SiteReport::DeployAnswer { job_id, result });
        }
        w.when(Command::ServerAppStarted { job_id, result: Ok(()) });
        w.advance_ms(120_000);
        w.fire_due_timers();
        w.server_exit(job_id, ExitOutcome::Code(1));
        w.advance_ms(3_600_000);
        w.fire_due_timers();
        assert_all_fit(&w.log);
    }
}
