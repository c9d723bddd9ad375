//! Given/when/then tests for every transition and rejection of SPEC section 2, the restart and
//! idempotency cases, and the peer defects listed at the end of SPEC section 2.

mod lifecycle_support;

use fedrun::lifecycle::SubmitSignature;
use fedrun::lifecycle::{
    AdminRequest, Answer, Archive, BlobHash, Command, Effect, EventKind, Rejection, Role, RunPhase,
    RunStatus, State, Timer,
};
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

#[test]
fn submit_records_the_job_as_submitted_with_its_submitter() {
    let mut w = World::default();
    let d = w.submit_as(admin("lee", "acme", Role::Lead), meta(&["site-1"], 1));
    let Some(Ok(Answer::Submitted { job_id })) = d.reply else {
        panic!("submit accepted: {:?}", d.reply)
    };
    // No site is connected: the scheduler tries at once and records no resources.
    assert_eq!(kinds(&d), ["job_submitted", "schedule_attempted"]);
    let job = w.job(job_id);
    assert_eq!(job.status, RunStatus::Submitted);
    assert_eq!(job.submitter.name, "lee");
    assert_eq!(job.submit_time, w.now);
    assert_eq!(job.schedule_count, 1);
}

#[test]
fn happy_path_goes_submitted_dispatched_running_completed_then_archives() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    let job = w.job(job_id);
    assert_eq!(*job.run.job_clients, ["site-1", "site-2"]);
    assert_eq!(
        job.run.deploy_detail(),
        ["server: OK", "site-1: OK", "site-2: OK"]
    );
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(
        w.status(job_id),
        RunStatus::Running,
        "barrier waits for the sites"
    );
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(0));
    assert_eq!(finished(&d).map(|f| f.0), Some(RunStatus::Completed));
    assert_eq!(
        kinds(&d),
        [
            "site_outcome_reported",
            "job_finished",
            "run_stopped",
            "workspace_archive_started"
        ]
    );
    assert!(d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    let d = w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([9; 32])),
    });
    assert_eq!(kinds(&d), ["workspace_archived"]);
    assert_eq!(
        w.job(job_id).archive,
        Archive::Archived {
            hash: BlobHash([9; 32])
        }
    );
}

#[test]
fn abort_of_a_submitted_job_ends_it_aborted_at_once() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    let d = w.abort(job_id);
    assert_eq!(d.reply, Some(Ok(Answer::Accepted { job_id })));
    assert_eq!(
        finished(&d),
        Some((RunStatus::Aborted, "aborted by boss".to_string()))
    );
    assert_eq!(w.job(job_id).archive, Archive::NoWorkspace);
}

#[test]
fn abort_during_deploy_wins_over_the_deploy_that_finishes_later() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    let d = w.abort(job_id);
    assert_eq!(finished(&d).map(|f| f.0), Some(RunStatus::Aborted));
    assert!(d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::DeleteSiteDeployment { site, .. } if site == "site-1")));
    assert!(d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelReservation { site, .. } if site == "site-1")));
    // The site's deploy answer arrives after the abort: nothing moves, it is told to clean up.
    let d = w.site(
        "site-1",
        SiteReport::DeployAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert_eq!(
        d.effects,
        [Effect::DeleteSiteDeployment {
            site: "site-1".into(),
            job_id
        }]
    );
    assert_eq!(w.status(job_id), RunStatus::Aborted);
}

#[test]
fn abort_while_the_server_app_deploys_waits_for_its_answer_before_archiving() {
    let mut w = World::default();
    let job_id = w.dispatched(&["site-1"], 1);
    let d = w.abort(job_id);
    assert_eq!(finished(&d).map(|f| f.0), Some(RunStatus::Aborted));
    assert!(!d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    let d = w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    assert_eq!(
        kinds(&d),
        [
            "deploy_finished",
            "run_stopped",
            "workspace_archive_started"
        ]
    );
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::DeploySiteApp { .. })));
    assert_eq!(w.status(job_id), RunStatus::Aborted);
}

#[test]
fn a_start_answer_after_the_job_is_terminal_changes_nothing() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1"], 1);
    w.abort(job_id);
    let d = w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert!(d.events.is_empty());
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id
    }));
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    assert_eq!(w.job(job_id).run.started_at, None, "never RUNNING");
}

#[test]
fn a_fast_server_app_exit_while_dispatched_is_recorded_and_decides_after_start() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1"], 1);
    let d = w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(kinds(&d), ["server_app_exited"]);
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    assert_eq!(
        w.status(job_id),
        RunStatus::Dispatched,
        "DISPATCHED never jumps to an outcome"
    );
    let d = w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert_eq!(
        kinds(&d),
        [
            "start_finished",
            "run_started",
            "job_finished",
            "run_stopped",
            "workspace_archive_started"
        ]
    );
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

#[test]
fn a_failing_server_app_while_dispatched_ends_execution_exception_after_start() {
    let mut w = World::default();
    let job_id = w.starting(&["site-1"], 1);
    w.server_exit(job_id, ExitOutcome::Code(1));
    let d = w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    // RUNNING first, then the stop of the site because the server app failed.
    assert_eq!(
        kinds(&d),
        ["start_finished", "run_started", "run_stop_requested"]
    );
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id
    }));
    // The site's exit after fedrun's stop is not a failure; the server's code 1 decides.
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::ExecutionException,
            "the server app ended with code 1".to_string()
        ))
    );
}

#[test]
fn delete_of_a_submitted_job_aborts_then_deletes_and_frees_the_package() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    let d = w.delete(job_id);
    assert_eq!(kinds(&d), ["job_finished", "job_deleted"]);
    assert_eq!(
        finished(&d),
        Some((RunStatus::Aborted, "deleted by boss".to_string()))
    );
    assert!(d.effects.contains(&Effect::FreeBlob { hash: package() }));
    assert!(w.state.live_job(&job_id).is_none());
    // The history keeps the job; a second delete does not find it.
    let d = w.delete(job_id);
    assert_eq!(d.reply, Some(Err(Rejection::UnknownJob { job_id })));
}

#[test]
fn delete_keeps_a_package_blob_that_a_clone_still_uses() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    w.admin_as(boss(), AdminRequest::CloneJob { job_id });
    let d = w.delete(job_id);
    assert!(!d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::FreeBlob { .. })));
}

#[test]
fn delete_is_refused_for_dispatched_and_running_jobs() {
    let mut w = World::default();
    let dispatched = w.dispatched(&["site-1"], 1);
    let d = w.delete(dispatched);
    assert_eq!(
        d.reply,
        Some(Err(Rejection::JobIsRunning {
            job_id: dispatched,
            status: RunStatus::Dispatched
        }))
    );
    assert_eq!(kinds(&d), ["request_refused"]);
    let mut w = World::default();
    let running = w.running(&["site-1"], 1);
    let d = w.delete(running);
    assert_eq!(
        d.reply,
        Some(Err(Rejection::JobIsRunning {
            job_id: running,
            status: RunStatus::Running
        }))
    );
    assert_eq!(w.status(running), RunStatus::Running);
}

#[test]
fn delete_of_a_finished_job_waits_for_its_archive() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.abort(job_id);
    let d = w.delete(job_id);
    assert_eq!(d.reply, Some(Err(Rejection::ArchivePending { job_id })));
    w.server_exit(job_id, ExitOutcome::Signal(15));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([3; 32])),
    });
    let d = w.delete(job_id);
    assert_eq!(kinds(&d), ["job_deleted"]);
    assert!(d.effects.contains(&Effect::FreeBlob {
        hash: BlobHash([3; 32])
    }));
}

#[test]
fn the_same_idempotency_key_twice_gives_the_first_answer_and_writes_nothing() {
    let mut w = World::default();
    let origin = fedrun::lifecycle::Origin {
        identity: boss(),
        request_id: Some("k-1".into()),
    };
    let submit = AdminRequest::SubmitJob {
        meta: meta(&["site-1"], 1),
        package: package(),
        signature: SubmitSignature::NoSigner,
    };
    let first = w.when(Command::Admin {
        origin: origin.clone(),
        request: submit.clone(),
    });
    let second = w.when(Command::Admin {
        origin: origin.clone(),
        request: submit,
    });
    assert!(second.events.is_empty());
    assert_eq!(second.reply, first.reply);
    assert_eq!(w.state.jobs.len(), 1, "not a second job");
    // A refusal is remembered too.
    let Some(Ok(Answer::Submitted { job_id })) = first.reply else {
        panic!()
    };
    w.abort(job_id);
    let again = fedrun::lifecycle::Origin {
        identity: boss(),
        request_id: Some("k-2".into()),
    };
    let r1 = w.when(Command::Admin {
        origin: again.clone(),
        request: AdminRequest::AbortJob { job_id },
    });
    let r2 = w.when(Command::Admin {
        origin: again,
        request: AdminRequest::AbortJob { job_id },
    });
    assert_eq!(kinds(&r1), ["request_refused"]);
    assert!(r2.events.is_empty());
    assert_eq!(r2.reply, r1.reply);
}

#[test]
fn a_bad_idempotency_key_is_refused_without_recording() {
    let mut w = World::default();
    let origin = fedrun::lifecycle::Origin {
        identity: boss(),
        request_id: Some(String::new()),
    };
    let r = w.try_decide(Command::Admin {
        origin,
        request: AdminRequest::AbortJob {
            job_id: fedrun::job::JobId(uuid::Uuid::nil()),
        },
    });
    assert!(matches!(r, Err(Rejection::BadRequestId { .. })));
}

#[test]
fn abort_of_a_finished_job_is_refused_as_already_finished() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    w.abort(job_id);
    let d = w.abort(job_id);
    assert_eq!(
        d.reply,
        Some(Err(Rejection::JobAlreadyFinished {
            job_id,
            status: RunStatus::Aborted
        }))
    );
    assert!(
        matches!(&d.events[0].kind, EventKind::RequestRefused { operation, .. } if operation == "abort")
    );
}

#[test]
fn unknown_jobs_are_refused_and_recorded() {
    let mut w = World::default();
    let job_id = fedrun::job::JobId(uuid::Uuid::from_u128(42));
    for request in [
        AdminRequest::AbortJob { job_id },
        AdminRequest::DeleteJob { job_id },
        AdminRequest::CloneJob { job_id },
        AdminRequest::DownloadJob { job_id },
        AdminRequest::ReadLogs { job_id, site: None },
    ] {
        let d = w.admin_as(boss(), request);
        assert_eq!(d.reply, Some(Err(Rejection::UnknownJob { job_id })));
        assert_eq!(kinds(&d), ["request_refused"]);
    }
}

#[test]
fn roles_follow_spec_section_9_and_refusals_are_recorded() {
    let mut w = World::default();
    let lee = admin("lee", "acme", Role::Lead);
    let other_lead = admin("kim", "acme", Role::Lead);
    let org_admin = admin("ola", "acme", Role::OrgAdmin);
    let foreign_org_admin = admin("fay", "globex", Role::OrgAdmin);
    let member = admin("max", "acme", Role::Member);
    for who in [org_admin.clone(), member.clone()] {
        let d = w.submit_as(who, meta(&["site-1"], 1));
        assert!(
            matches!(d.reply, Some(Err(Rejection::NotAllowed { .. }))),
            "{:?}",
            d.reply
        );
        assert_eq!(kinds(&d), ["request_refused"]);
    }
    let job_id = match w.submit_as(lee.clone(), meta(&["site-1"], 1)).reply {
        Some(Ok(Answer::Submitted { job_id })) => job_id,
        other => panic!("{other:?}"),
    };
    for who in [other_lead, foreign_org_admin, member] {
        let d = w.admin_as(who, AdminRequest::AbortJob { job_id });
        assert!(
            matches!(d.reply, Some(Err(Rejection::NotAllowed { .. }))),
            "{:?}",
            d.reply
        );
    }
    assert_eq!(w.status(job_id), RunStatus::Submitted);
    let d = w.admin_as(org_admin, AdminRequest::CloneJob { job_id });
    assert!(matches!(d.reply, Some(Ok(Answer::Submitted { .. }))));
    let d = w.admin_as(lee, AdminRequest::AbortJob { job_id });
    assert_eq!(d.reply, Some(Ok(Answer::Accepted { job_id })));
}

#[test]
fn a_signer_whose_role_may_not_submit_is_refused() {
    let mut w = World::default();
    let d = w.admin_as(
        boss(),
        AdminRequest::SubmitJob {
            meta: meta(&["site-1"], 1),
            package: package(),
            signature: SubmitSignature::Signer(admin("max", "acme", Role::Member)),
        },
    );
    assert!(matches!(
        d.reply,
        Some(Err(Rejection::SignerNotAllowed {
            role: Role::Member,
            ..
        }))
    ));
}

#[test]
fn clone_is_a_new_submitted_job_from_the_same_package() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    w.abort(job_id);
    let d = w.admin_as(
        admin("lee", "acme", Role::ProjectAdmin),
        AdminRequest::CloneJob { job_id },
    );
    let Some(Ok(Answer::Submitted { job_id: clone })) = d.reply else {
        panic!("{:?}", d.reply)
    };
    let job = w.job(clone);
    assert_eq!(job.cloned_from, Some(job_id));
    assert_eq!(job.package, package());
    // A clone keeps the original submitter (SPEC section 6); the cloner is the actor.
    assert_eq!(job.submitter.name, "boss");
    let submitted = d
        .events
        .iter()
        .find(|e| e.kind.name() == "job_submitted")
        .expect("the clone is recorded");
    assert_eq!(
        submitted.actor.to_string(),
        "admin lee (acme, project_admin)"
    );
    assert_eq!(job.status, RunStatus::Submitted);
}

#[test]
fn logs_are_read_by_the_roles_of_spec_section_9_and_every_read_is_recorded() {
    let mut w = World::default();
    let lee = admin("lee", "acme", Role::Lead);
    let job_id = {
        let d = w.submit_as(lee.clone(), meta(&["site-1"], 1));
        match d.reply {
            Some(Ok(fedrun::lifecycle::Answer::Submitted { job_id })) => job_id,
            other => panic!("submit was not accepted: {other:?}"),
        }
    };
    let read = |site: Option<&str>| AdminRequest::ReadLogs {
        job_id,
        site: site.map(str::to_string),
    };
    // Allowed: a project admin, the submitter, the org admin of the submitter's org.
    for who in [boss(), lee.clone(), admin("ola", "acme", Role::OrgAdmin)] {
        let d = w.admin_as(who.clone(), read(None));
        assert_eq!(
            d.reply,
            Some(Ok(fedrun::lifecycle::Answer::Accepted { job_id })),
            "{who:?}"
        );
        assert_eq!(kinds(&d), ["logs_read"], "{who:?}");
    }
    // Refused and recorded: another lead, a member, an org admin of another org.
    for who in [
        admin("kim", "acme", Role::Lead),
        admin("max", "acme", Role::Member),
        admin("fay", "globex", Role::OrgAdmin),
        admin("lee", "globex", Role::Lead),
    ] {
        let d = w.admin_as(who.clone(), read(None));
        assert!(
            matches!(d.reply, Some(Err(Rejection::NotAllowed { .. }))),
            "{who:?}: {:?}",
            d.reply
        );
        assert!(
            matches!(&d.events[..], [e] if matches!(&e.kind, EventKind::RequestRefused { operation, .. } if operation == "logs")),
            "{:?}",
            d.events
        );
    }
    // A site's output: only of a site the job was sent to.
    let d = w.admin_as(boss(), read(Some("site-1")));
    assert_eq!(
        d.reply,
        Some(Err(Rejection::NotAParticipant {
            job_id,
            site: "site-1".into()
        })),
        "not dispatched yet"
    );
    assert_eq!(kinds(&d), ["request_refused"]);
    let running = w.running(&["site-1"], 1);
    let d = w.admin_as(
        boss(),
        AdminRequest::ReadLogs {
            job_id: running,
            site: Some("site-1".into()),
        },
    );
    assert!(
        matches!(&d.events[..], [e] if e.kind == EventKind::LogsRead { job_id: running, site: Some("site-1".into()) }),
        "{:?}",
        d.events
    );
    let d = w.admin_as(
        boss(),
        AdminRequest::ReadLogs {
            job_id: running,
            site: Some("site-2".into()),
        },
    );
    assert!(matches!(
        d.reply,
        Some(Err(Rejection::NotAParticipant { .. }))
    ));
}

#[test]
fn download_needs_a_finished_job_with_a_settled_archive() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    let d = w.admin_as(boss(), AdminRequest::DownloadJob { job_id });
    assert_eq!(
        d.reply,
        Some(Err(Rejection::JobNotFinished {
            job_id,
            status: RunStatus::Running
        }))
    );
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    let d = w.admin_as(boss(), AdminRequest::DownloadJob { job_id });
    assert_eq!(d.reply, Some(Err(Rejection::ArchivePending { job_id })));
    w.when(Command::ArchiveFinished {
        job_id,
        result: Err("disk full".into()),
    });
    w.advance_ms(61_000);
    w.fire_due_timers();
    w.when(Command::ArchiveFinished {
        job_id,
        result: Err("disk still full".into()),
    });
    assert_eq!(
        w.job(job_id).archive,
        Archive::Failed {
            reason: "disk still full".into()
        }
    );
    let d = w.admin_as(boss(), AdminRequest::DownloadJob { job_id });
    assert_eq!(kinds(&d), ["job_downloaded"]);
}

#[test]
fn a_failing_archive_is_retried_with_back_off_then_given_up() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    let start = w.now;
    let mut tries = 1;
    loop {
        let d = w.when(Command::ArchiveFinished {
            job_id,
            result: Err("zip failed".into()),
        });
        if kinds(&d) == ["workspace_archive_failed"] {
            break;
        }
        assert_eq!(kinds(&d), ["workspace_archive_attempt_failed"]);
        let (timer, d) = w.run_to_next_deadline().expect("a retry is due");
        assert_eq!(timer, Timer::ArchiveRetryDue { job_id });
        assert_eq!(d.effects, [Effect::ArchiveWorkspace { job_id }]);
        tries += 1;
        assert!(tries < 20);
    }
    // Retries at 1, 2, 4, 8, 16, 30, 30 s after each failure: the first failure at 0 s,
    // then failures at 1, 3, 7, 15, 31, 61 s; 61 s >= archive_retry_for (60 s) gives up.
    assert_eq!(tries, 7);
    assert_eq!(w.now.as_millis() - start.as_millis(), 61_000);
}

#[test]
fn a_good_archive_is_never_replaced() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([1; 32])),
    });
    let d = w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([2; 32])),
    });
    assert!(d.events.is_empty());
    assert_eq!(
        d.effects,
        [Effect::FreeBlob {
            hash: BlobHash([2; 32])
        }]
    );
    assert_eq!(
        w.job(job_id).archive,
        Archive::Archived {
            hash: BlobHash([1; 32])
        }
    );
}

#[test]
fn completion_of_one_job_never_touches_another() {
    let mut w = World::default();
    let a = w.running(&["site-1"], 1);
    let b = w.running(&["site-1"], 1);
    w.server_exit(a, ExitOutcome::Code(0));
    let d = w.site_exit("site-1", a, "ra", ExitOutcome::Code(0));
    assert!(d.events.iter().all(|e| e.kind.job_id() == Some(a)));
    assert_eq!(w.status(a), RunStatus::Completed);
    assert_eq!(w.status(b), RunStatus::Running);
}

#[test]
fn restart_in_each_non_terminal_status() {
    let mut w = World::default();
    let submitted = w.submit(meta(&["site-9"], 1));
    let dispatched = w.dispatched(&["site-1"], 1);
    let restored = w.running(&["site-2"], 1);
    let lost = w.running(&["site-3"], 1);
    w.advance_ms(1000);
    let d = w.restart(1);
    assert_eq!(kinds(&d), ["server_started"]);
    assert!(w.state.recovery.is_some());
    w.when(Command::RunReattached { job_id: restored });
    w.site(
        "site-3",
        SiteReport::Connected {
            resources: Default::default(),
            running: vec![lost],
        },
    );
    let (timer, d) = w.run_to_next_deadline().expect("reattach grace");
    assert_eq!(timer, Timer::ReattachGraceOver);
    assert_eq!(w.now.as_millis() - T0, 31_000, "30 s after the restart");
    assert_eq!(w.status(submitted), RunStatus::Submitted);
    assert_eq!(
        w.job(submitted).schedule_count,
        2,
        "queued with its counters: the try at submit is kept, and the pass after recovery \
         makes the second (its 10 s back-off is long over at 31 s)"
    );
    assert_eq!(w.status(dispatched), RunStatus::Abandoned);
    assert!(d.effects.contains(&Effect::DeleteSiteDeployment {
        site: "site-1".into(),
        job_id: dispatched
    }));
    assert_eq!(w.status(restored), RunStatus::Running);
    assert!(d
        .events
        .iter()
        .any(|e| e.kind == EventKind::RunRestored { job_id: restored }));
    assert_eq!(w.status(lost), RunStatus::Abandoned);
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-3".into(),
        job_id: lost
    }));
    assert!(w.state.recovery.is_none());
    // site-3 still runs the abandoned job's app: the run stays stopping, holds its
    // max_jobs slot, and its workspace is not archived yet (SPEC section 4).
    assert_eq!(w.job(lost).run.phase, RunPhase::Stopping);
    assert!(!d
        .effects
        .contains(&Effect::ArchiveWorkspace { job_id: lost }));
    let d = w.site_exit("site-3", lost, "r3", ExitOutcome::Signal(15));
    assert!(d
        .effects
        .contains(&Effect::ArchiveWorkspace { job_id: lost }));
    assert_eq!(w.job(lost).run.phase, RunPhase::Stopped);
    // A job abandoned at restart can be deleted once its archive settles (peer defect: a
    // job RUNNING forever after a restart could be neither aborted nor deleted).
    w.when(Command::ArchiveFinished {
        job_id: lost,
        result: Ok(BlobHash([5; 32])),
    });
    let d = w.delete(lost);
    assert_eq!(kinds(&d), ["job_deleted"]);
    // And the restored run can still be aborted.
    let d = w.abort(restored);
    assert_eq!(finished(&d).map(|f| f.0), Some(RunStatus::Aborted));
}

#[test]
fn a_restart_stops_the_app_of_a_settled_job_at_every_site_that_says_it_runs_it() {
    let mut w = World::default();
    let done = w.running(&["site-1", "site-2"], 2);
    w.server_exit(done, ExitOutcome::Code(0));
    w.site_exit("site-1", done, "r1", ExitOutcome::Code(0));
    w.site_exit("site-2", done, "r2", ExitOutcome::Code(0));
    w.when(Command::ArchiveFinished {
        job_id: done,
        result: Ok(BlobHash([5; 32])),
    });
    assert_eq!(w.status(done), RunStatus::Completed);
    assert!(w.job(done).archive.is_settled());
    // A run in flight makes the restart wait its reattach grace for the sites.
    let running = w.running(&["site-3"], 1);
    w.advance_ms(1000);
    w.restart(1);
    for site in ["site-1", "site-2"] {
        w.site(
            site,
            SiteReport::Connected {
                resources: Default::default(),
                running: vec![done],
            },
        );
    }
    let (timer, d) = w.run_to_next_deadline().expect("reattach grace");
    assert_eq!(timer, Timer::ReattachGraceOver);
    let stops: Vec<(&str, fedrun::job::JobId)> = d
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::StopSiteApp { site, job_id } => Some((site.as_str(), *job_id)),
            _ => None,
        })
        .collect();
    assert_eq!(
        stops,
        [("site-1", done), ("site-2", done), ("site-3", running)],
        "the settled job's app at both sites that listed it, the lost run's at its site"
    );
}

#[test]
fn restart_with_resume_runs_off_abandons_even_reattached_runs() {
    let mut w = World::new(fedrun::settings::Settings {
        resume_runs: false,
        ..Default::default()
    });
    let job_id = w.running(&["site-1"], 1);
    w.restart(1);
    w.when(Command::RunReattached { job_id });
    w.run_to_next_deadline();
    let job = w.job(job_id);
    assert_eq!(job.status, RunStatus::Abandoned);
    assert_eq!(
        job.finish_reason.as_deref(),
        Some("the server restarted and resume_runs is off")
    );
}

#[test]
fn recovery_on_the_same_history_yields_the_same_events() {
    let mut w = World::default();
    w.running(&["site-1"], 1);
    w.dispatched(&["site-2"], 1);
    w.restart(1);
    w.advance_ms(30_000);
    let state = w.state.clone();
    let one = w
        .try_decide(Command::TimerFired(Timer::ReattachGraceOver))
        .expect("decides");
    let mut replayed = State::new();
    for e in &w.log {
        replayed.apply_checked(e).expect("replays");
    }
    assert_eq!(replayed, state);
    let two = w
        .try_decide(Command::TimerFired(Timer::ReattachGraceOver))
        .expect("decides");
    assert_eq!(one, two);
    assert!(one.events.len() >= 4);
}

#[test]
fn terminal_statuses_are_absorbing_for_every_late_input() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.abort(job_id);
    let late: Vec<Command> = vec![
        Command::ServerDeployFinished {
            job_id,
            result: Ok(()),
        },
        Command::ServerAppStarted {
            job_id,
            result: Ok(()),
        },
        Command::ServerAppExited {
            job_id,
            outcome: ExitOutcome::Code(0),
        },
        Command::Site {
            site: "site-1".into(),
            report: SiteReport::DeployAnswer {
                job_id,
                result: Ok(()),
            },
        },
        Command::Site {
            site: "site-1".into(),
            report: SiteReport::StartAnswer {
                job_id,
                result: Ok(()),
            },
        },
        Command::Site {
            site: "site-1".into(),
            report: SiteReport::AppExited {
                job_id,
                report_id: "x".into(),
                outcome: ExitOutcome::Code(101),
                stop_requested: false,
            },
        },
        Command::TimerFired(Timer::OutcomeWaitOver { job_id }),
        Command::TimerFired(Timer::StartTimedOut { job_id }),
    ];
    for command in late {
        w.when(command);
        assert_eq!(w.status(job_id), RunStatus::Aborted);
    }
}

#[test]
fn replay_refuses_an_illegal_record_naming_its_sequence_number() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    w.abort(job_id);
    let mut replayed = State::new();
    for e in &w.log {
        replayed.apply_checked(e).expect("legal history replays");
    }
    let mut forged = w.log.last().expect("events").clone();
    forged.seq += 1;
    forged.kind = EventKind::RunStarted {
        job_id,
        job_clients: vec!["site-1".into()],
    };
    let before = replayed.clone();
    let err = replayed
        .apply_checked(&forged)
        .expect_err("RUNNING after ABORTED is illegal");
    assert!(
        err.to_string()
            .starts_with(&format!("event {}", forged.seq)),
        "{err}"
    );
    assert_eq!(replayed, before, "a refused record changes nothing");
    forged.seq += 5;
    let err = replayed.apply_checked(&forged).expect_err("gap");
    assert!(matches!(
        err,
        fedrun::lifecycle::ReplayError::OutOfOrder { .. }
    ));
}

#[test]
fn abort_of_a_running_job_ends_it_at_once_and_stops_its_processes_with_grace() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 2);
    let d = w.abort(job_id);
    assert_eq!(kinds(&d), ["job_finished", "run_stop_requested"]);
    assert_eq!(
        finished(&d),
        Some((RunStatus::Aborted, "aborted by boss".to_string()))
    );
    assert!(d.effects.contains(&Effect::StopServerApp { job_id }));
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id
    }));
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    // The processes end because of the stop: no failure, the status stays ABORTED, and the
    // run is stopped once all have ended; then the workspace is archived.
    w.server_exit(job_id, ExitOutcome::Signal(9));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(104));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Signal(15));
    assert_eq!(
        kinds(&d),
        [
            "site_outcome_reported",
            "run_stopped",
            "workspace_archive_started"
        ]
    );
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    assert_eq!(w.job(job_id).run.failure, None);
}
