//! Given/when/then for the rules of SPEC sections 4, 6, 8 and 9 that the core enforces:
//! idempotency keys per identity, a stop that outlives a restart, exits fedrun's stop
//! caused, the signer of a job and of its clones, and reports a site cannot make grow the
//! history.

mod lifecycle_support;

use fedrun::lifecycle::SubmitSignature;
use std::time::Duration;

use fedrun::lifecycle::{
    AdminRequest, Answer, BlobHash, Command, Effect, EventKind, Origin, Rejection, Role, RunPhase,
    RunStatus, Timer,
};
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

fn with_key(
    w: &mut World,
    who: fedrun::lifecycle::Identity,
    key: &str,
    request: AdminRequest,
) -> fedrun::lifecycle::Decision {
    w.when(Command::Admin {
        origin: Origin {
            identity: who,
            request_id: Some(key.to_string()),
        },
        request,
    })
}

fn submit_request(package: u8) -> AdminRequest {
    AdminRequest::SubmitJob {
        meta: meta(&["site-1"], 1),
        package: BlobHash([package; 32]),
        signature: SubmitSignature::NoSigner,
    }
}

// ---- SPEC section 9: idempotency keys ----

#[test]
fn the_same_key_from_two_admins_is_two_requests() {
    let mut w = World::default();
    let a = with_key(&mut w, boss(), "k", submit_request(1));
    let b = with_key(
        &mut w,
        admin("lee", "acme", Role::Lead),
        "k",
        submit_request(1),
    );
    let (
        Some(Ok(Answer::Submitted { job_id: first })),
        Some(Ok(Answer::Submitted { job_id: second })),
    ) = (a.reply, b.reply)
    else {
        panic!("both submits are accepted");
    };
    assert_ne!(first, second, "two jobs");
}

#[test]
fn the_same_key_for_another_request_is_refused_and_a_repeat_gets_the_first_answer() {
    let mut w = World::default();
    let first = with_key(&mut w, boss(), "k", submit_request(1));
    let Some(Ok(Answer::Submitted { job_id })) = first.reply else {
        panic!("accepted")
    };
    // A repeat: the first answer, nothing recorded.
    let repeat = with_key(&mut w, boss(), "k", submit_request(1));
    assert_eq!(repeat.reply, Some(Ok(Answer::Submitted { job_id })));
    assert!(repeat.events.is_empty());
    // The same key with another package, or another operation: refused and recorded.
    for request in [submit_request(2), AdminRequest::AbortJob { job_id }] {
        let d = with_key(&mut w, boss(), "k", request);
        assert!(
            matches!(d.reply, Some(Err(Rejection::IdempotencyKeyReused { .. }))),
            "{:?}",
            d.reply
        );
        assert_eq!(kinds(&d), ["request_refused"]);
    }
    assert_eq!(
        w.status(job_id),
        RunStatus::Submitted,
        "the abort did not happen"
    );
    // The first answer is still the one a repeat gets.
    let again = with_key(&mut w, boss(), "k", submit_request(1));
    assert_eq!(again.reply, Some(Ok(Answer::Submitted { job_id })));
}

#[test]
fn a_delete_under_a_key_is_remembered_as_a_delete() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    let d = with_key(&mut w, boss(), "del", AdminRequest::DeleteJob { job_id });
    assert_eq!(d.reply, Some(Ok(Answer::Accepted { job_id })));
    let repeat = with_key(&mut w, boss(), "del", AdminRequest::DeleteJob { job_id });
    assert_eq!(repeat.reply, Some(Ok(Answer::Accepted { job_id })));
    assert!(repeat.events.is_empty());
    let other = with_key(&mut w, boss(), "del", AdminRequest::AbortJob { job_id });
    assert!(matches!(
        other.reply,
        Some(Err(Rejection::IdempotencyKeyReused { .. }))
    ));
}

#[test]
fn keys_are_forgotten_after_twenty_four_hours_of_event_time() {
    let mut w = World::default();
    let first = with_key(&mut w, boss(), "k", submit_request(1));
    let Some(Ok(Answer::Submitted { job_id: a })) = first.reply else {
        panic!("accepted")
    };
    w.advance_ms(24 * 3600 * 1000 - 1);
    let repeat = with_key(&mut w, boss(), "k", submit_request(1));
    assert_eq!(repeat.reply, Some(Ok(Answer::Submitted { job_id: a })));
    w.advance_ms(1);
    let later = with_key(&mut w, boss(), "k", submit_request(2));
    let Some(Ok(Answer::Submitted { job_id: b })) = later.reply else {
        panic!("a new request after 24 h: {:?}", later.reply)
    };
    assert_ne!(a, b);
    // Only the new request is kept: the state does not grow with old keys.
    assert_eq!(w.state.requests.by_key.len(), 1);
    assert_eq!(w.state.requests.by_time.len(), 1);
    // Replay keeps and forgets the same keys.
    let mut replayed = fedrun::lifecycle::State::new();
    for event in &w.log {
        replayed.apply_checked(event).expect("replays");
    }
    assert_eq!(replayed.requests, w.state.requests);
}

/// Keys sent over three days, some of them after long silences (a server away for most of
/// a day or more): after each request the kept keys are exactly those a list of (time, key) kept
/// beside the world says were sent within the last 24 hours, and a repeat of each is
/// answered from the first request exactly then. Replay forgets the same keys.
#[test]
fn the_kept_keys_are_those_sent_within_the_window_however_many_run_out_at_once() {
    let mut w = World::default();
    let day = 24 * 3600 * 1000;
    // (milliseconds after the start, key): three keys, a gap of 12 h, two more, a gap
    // that ends the first three's window only (most of the kept keys run out), one more,
    // one that ends the window of one of three (the fewest run out), then a gap of over a
    // day (all of them run out).
    let plan: [(i64, &str); 9] = [
        (0, "a"),
        (1, "b"),
        (2, "c"),
        (day / 2, "d"),
        (day / 2 + 1, "e"),
        (day + 10, "f"),
        (day + day / 2, "h"),
        (3 * day, "g"),
        (3 * day + 1, "a"),
    ];
    let start = w.now.as_millis();
    let mut sent: Vec<(i64, &str)> = Vec::new();
    for (n, (at, key)) in plan.into_iter().enumerate() {
        w.now = fedrun::lifecycle::Timestamp::from_millis(start + at);
        let d = with_key(&mut w, boss(), key, submit_request(n as u8));
        assert!(
            matches!(d.reply, Some(Ok(Answer::Submitted { .. }))),
            "{key} at {at}: {:?}",
            d.reply
        );
        sent.retain(|(then, _)| at < then + day);
        sent.push((at, key));
        let mut want: Vec<&str> = sent.iter().map(|(_, k)| *k).collect();
        want.sort_unstable();
        let kept: Vec<&str> = w.state.requests.by_key.keys().map(|k| &*k.key).collect();
        assert_eq!(kept, want, "after {key} at {at}");
        assert_eq!(w.state.requests.by_time.len(), want.len());
        // A repeat of every key still kept is answered from its first request.
        for k in &want {
            let key = fedrun::lifecycle::state::RequestKey {
                identity: boss().into(),
                key: (*k).into(),
            };
            assert!(w.state.requests.get(&key, w.now).is_some(), "{k} is kept");
        }
    }
    let mut replayed = fedrun::lifecycle::State::new();
    for event in &w.log {
        replayed.apply_checked(event).expect("replays");
    }
    assert_eq!(replayed.requests, w.state.requests);
}

#[test]
fn keys_kept_in_a_snapshot_expire_after_it_is_loaded() {
    let mut w = World::default();
    let first = with_key(&mut w, boss(), "k", submit_request(1));
    let Some(Ok(Answer::Submitted { job_id: a })) = first.reply else {
        panic!("accepted")
    };
    // A snapshot taken while the key is kept, in the encoding start-up reads.
    let bytes = fedrun::history::snapshot::encode_state(&w.state).expect("encodes");
    let covered = w.log.len();
    let mut loaded: fedrun::lifecycle::State =
        fedrun::history::snapshot::decode_state(&bytes).expect("decodes");
    assert_eq!(loaded, w.state, "a loaded state equals the live one");
    let key = fedrun::lifecycle::state::RequestKey {
        identity: boss().into(),
        key: "k".into(),
    };
    let recorded = w.state.requests.by_key[&key].at;
    let window_end = recorded.plus(fedrun::lifecycle::state::REQUEST_KEY_KEPT_FOR);
    assert!(loaded
        .requests
        .get(&key, window_end.plus(Duration::from_millis(1)))
        .is_none());
    assert!(loaded
        .requests
        .get(
            &key,
            fedrun::lifecycle::Timestamp::from_millis(window_end.as_millis() - 1)
        )
        .is_some());
    // After the window the key names a new request, on the live state and on the one
    // loaded from the snapshot with the tail replayed; the old key is gone from both.
    w.now = window_end;
    let later = with_key(&mut w, boss(), "k", submit_request(2));
    let Some(Ok(Answer::Submitted { job_id: b })) = later.reply else {
        panic!("a new request after 24 h: {:?}", later.reply)
    };
    assert_ne!(a, b);
    for event in &w.log[covered..] {
        loaded.apply_checked(event).expect("the tail replays");
    }
    assert_eq!(loaded, w.state);
    assert_eq!(loaded.requests.by_key.len(), 1);
    assert_eq!(loaded.requests.by_key[&key].at, window_end);
    assert_eq!(loaded.requests.by_time.len(), 1);
}

// ---- SPEC sections 4 and 8: a stop is over ----

/// A running job on two sites whose run fedrun is stopping (site-1 reported 101), then a
/// restart: the returned job id.
fn stopping_then_restart(w: &mut World) -> fedrun::job::JobId {
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    w.server_exit(job_id, ExitOutcome::Signal(15));
    w.advance_ms(1000);
    w.restart(2);
    job_id
}

#[test]
fn a_run_being_stopped_stays_stopping_after_a_restart_and_holds_its_slot() {
    let mut w = World::new(Settings {
        max_jobs: 1,
        ..Settings::default()
    });
    let job_id = stopping_then_restart(&mut w);
    // site-2 comes back and says it still runs the job; the grace ends.
    w.site(
        "site-2",
        SiteReport::Connected {
            resources: Default::default(),
            running: vec![job_id],
        },
    );
    let (_, d) = w.run_to_next_deadline().expect("reattach grace");
    assert!(w.state.recovery.is_none());
    assert_eq!(
        w.job(job_id).run.phase,
        RunPhase::Stopping,
        "still stopping"
    );
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    assert!(!archives(&d.effects));
    assert_eq!(w.state.active_job_count(), 1, "it holds its max_jobs slot");
    // A queued job waits for the slot.
    w.connect("site-3");
    let queued = w.submit(meta(&["site-3"], 1));
    assert_eq!(w.status(queued), RunStatus::Submitted);
    assert!(w.state.schedule_try.is_none());
    // site-2's app ends after the stop: the run is stopped, then archived, and the
    // queued job gets the slot.
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Signal(15));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert!(d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    assert!(w.state.schedule_try.is_some(), "the queued job is tried");
}

#[test]
fn a_disconnected_site_ends_the_stop_after_its_reconnect_grace() {
    let mut w = World::default();
    let job_id = stopping_then_restart(&mut w);
    let (_, _) = w.run_to_next_deadline().expect("reattach grace");
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    // site-2 never comes back: counted from its recorded disconnect (at the restart).
    let started = w.state.sites.get("site-2").expect("known").since;
    let (timer, _) = w.run_to_next_deadline().expect("reconnect grace");
    assert!(
        matches!(timer, Timer::SiteReconnectGraceOver { .. }),
        "{timer:?}"
    );
    assert_eq!(
        w.now,
        started.plus(Settings::default().site_reconnect_grace)
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

#[test]
fn a_connected_site_that_never_answers_ends_the_stop_after_abort_grace_and_outcome_wait() {
    let mut w = World::new(Settings {
        site_reconnect_grace: Duration::from_secs(24 * 3600),
        ..Settings::default()
    });
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.abort(job_id);
    let asked = w.job(job_id).run.stop_requested_at.expect("stop asked");
    w.server_exit(job_id, ExitOutcome::Signal(15));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    w.advance_ms(1000);
    w.restart(2);
    w.connect("site-2");
    w.run_to_next_deadline().expect("reattach grace");
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    let (timer, _) = w.run_to_next_deadline().expect("stop wait");
    assert_eq!(timer, Timer::StopWaitOver { job_id });
    let settings = Settings::default();
    assert_eq!(
        w.now,
        asked.plus(settings.abort_grace + settings.client_outcome_wait)
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

#[test]
fn a_run_whose_exits_are_known_is_decided_from_them_not_abandoned() {
    let mut w = World::new(Settings {
        resume_runs: false,
        ..Settings::default()
    });
    let job_id = w.running(&["site-1"], 1);
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.restart(2);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.run_to_next_deadline().expect("reattach grace");
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

#[test]
fn a_server_app_that_did_not_reattach_is_recorded_as_lost() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.restart(2);
    let (_, d) = w.run_to_next_deadline().expect("reattach grace");
    let names = kinds(&d);
    assert!(names.contains(&"server_app_lost"), "{names:?}");
    assert_eq!(w.status(job_id), RunStatus::Abandoned);
    assert!(!w.job(job_id).run.server_outstanding());
}

// ---- SPEC section 8: an exit fedrun's stop caused is not a failure ----

#[test]
fn an_exit_the_site_says_fedrun_stopped_is_not_a_failure() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 1);
    // site-1 was told to stop (a late start elsewhere, an old request): its kill is not a
    // failure, and does not stop the run.
    let d = w.site_exit_flagged("site-1", job_id, "r1", ExitOutcome::Signal(9), true);
    assert!(
        !kinds(&d).contains(&"run_stop_requested"),
        "{:?}",
        kinds(&d)
    );
    w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(0));
    w.server_exit(job_id, ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
}

#[test]
fn an_exit_the_site_says_was_its_own_counts_even_while_stopping() {
    let mut w = World::default();
    let job_id = w.running(&["site-1", "site-2"], 1);
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopping);
    // site-2 crashed on its own (104, sticky) before its stop arrived.
    w.site_exit_flagged("site-2", job_id, "r2", ExitOutcome::Code(104), false);
    w.server_exit(job_id, ExitOutcome::Signal(15));
    assert_eq!(w.status(job_id), RunStatus::Abnormal);
}

// ---- SPEC section 6: the signer ----

#[test]
fn the_signer_is_recorded_and_a_clone_keeps_submitter_and_signer() {
    let mut w = World::default();
    let signer = admin("sam", "acme", Role::Lead);
    let lee = admin("lee", "acme", Role::Lead);
    let d = w.admin_as(
        lee.clone(),
        AdminRequest::SubmitJob {
            meta: meta(&["site-1"], 1),
            package: package(),
            signature: SubmitSignature::Signer(signer.clone()),
        },
    );
    let Some(Ok(Answer::Submitted { job_id })) = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert!(d.events.iter().any(|e| matches!(
        &e.kind,
        EventKind::JobSubmitted { signer: Some(s), .. } if *s == signer
    )));
    assert_eq!(w.job(job_id).signer.as_deref(), Some(&signer));
    let d = w.admin_as(boss(), AdminRequest::CloneJob { job_id });
    let Some(Ok(Answer::Submitted { job_id: clone })) = d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(*w.job(clone).submitter, lee);
    assert_eq!(w.job(clone).signer.as_deref(), Some(&signer));
    let submitted = d
        .events
        .iter()
        .find(|e| e.kind.name() == "job_submitted")
        .expect("recorded");
    assert_eq!(
        submitted.actor.identity(),
        Some(boss()),
        "the cloner is the actor"
    );
}

#[test]
fn a_signer_whose_role_may_not_submit_is_refused() {
    let mut w = World::default();
    let d = w.admin_as(
        boss(),
        AdminRequest::SubmitJob {
            meta: meta(&["site-1"], 1),
            package: package(),
            signature: SubmitSignature::Signer(admin("mo", "acme", Role::Member)),
        },
    );
    assert!(
        matches!(d.reply, Some(Err(Rejection::SignerNotAllowed { .. }))),
        "{:?}",
        d.reply
    );
    assert!(w.state.jobs.is_empty());
}

#[test]
fn a_package_refused_for_its_signature_is_recorded_and_stores_nothing() {
    let mut w = World::default();
    let d = w.admin_as(
        boss(),
        AdminRequest::SubmitJob {
            meta: meta(&["site-1"], 1),
            package: package(),
            signature: SubmitSignature::Refused("job package is not signed".into()),
        },
    );
    let Some(Err(Rejection::SignatureRefused { reason })) = &d.reply else {
        panic!("{:?}", d.reply)
    };
    assert_eq!(reason, "job package is not signed");
    let kinds: Vec<&str> = d.events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["request_refused"], "only the refusal is recorded");
    assert_eq!(d.events[0].actor.identity(), Some(boss()), "who asked");
    assert!(w.state.jobs.is_empty());
    // A role that may not submit at all is refused for that first, whatever its package.
    let d = w.admin_as(
        admin("mo", "acme", Role::Member),
        AdminRequest::SubmitJob {
            meta: meta(&["site-1"], 1),
            package: package(),
            signature: SubmitSignature::Refused("job package is not signed".into()),
        },
    );
    assert!(
        matches!(d.reply, Some(Err(Rejection::NotAllowed { .. }))),
        "{:?}",
        d.reply
    );
}

// ---- a site cannot grow the history without bound ----

#[test]
fn exit_reports_are_recorded_once_per_site_the_job_was_sent_to() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    w.connect("site-9");
    let before = w.state.last_seq;
    // A site the job was never sent to, an unknown job, oversized ids: nothing recorded.
    w.site_exit_flagged("site-9", job_id, "x1", ExitOutcome::Code(1), false);
    let unknown = fedrun::job::JobId(uuid::Uuid::from_u128(99));
    w.site_exit_flagged("site-1", unknown, "x2", ExitOutcome::Code(1), false);
    w.site_exit_flagged(
        "site-1",
        job_id,
        &"r".repeat(300),
        ExitOutcome::Code(1),
        false,
    );
    w.site_exit_flagged(&"s".repeat(300), job_id, "x3", ExitOutcome::Code(1), false);
    assert_eq!(w.state.last_seq, before, "nothing was recorded");
    // The real site: one exit recorded, then no more under new report ids.
    let d = w.site_exit_flagged("site-1", job_id, "r1", ExitOutcome::Code(1), false);
    assert!(kinds(&d).contains(&"site_outcome_reported"));
    let after = w.state.last_seq;
    for n in 0..50 {
        let d = w.site_exit_flagged(
            "site-1",
            job_id,
            &format!("again-{n}"),
            ExitOutcome::Code(1),
            false,
        );
        assert!(d.events.is_empty());
    }
    assert_eq!(w.state.last_seq, after);
    assert_eq!(w.job(job_id).run.report_ids.len(), 1);
}

#[test]
fn a_connect_records_only_jobs_the_site_was_sent() {
    let mut w = World::default();
    let job_id = w.running(&["site-1"], 1);
    let strangers: Vec<fedrun::job::JobId> = (100..1100)
        .map(|n| fedrun::job::JobId(uuid::Uuid::from_u128(n)))
        .collect();
    let mut running = strangers.clone();
    running.push(job_id);
    let d = w.site(
        "site-1",
        SiteReport::Connected {
            resources: Default::default(),
            running,
        },
    );
    let recorded = d.events.iter().find_map(|e| match &e.kind {
        EventKind::SiteConnected { running, .. } => Some(running.clone()),
        _ => None,
    });
    assert_eq!(recorded, Some(vec![job_id]));
    // The unknown jobs are still told to stop.
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-1".into(),
        job_id: strangers[0]
    }));
}

// ---- SPEC section 8: a workspace archive outlives a restart ----

/// A job finished on one site whose workspace archive was started: the job id.
fn archiving(w: &mut World) -> fedrun::job::JobId {
    let job_id = w.running(&["site-1"], 1);
    w.server_exit(job_id, ExitOutcome::Code(0));
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
    assert!(d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    job_id
}

/// Restarts, then runs deadline after deadline (at most ten) until an archive is started
/// or nothing is left to wait for: every effect decided on the way.
fn restart_and_settle(w: &mut World, n: u128) -> Vec<Effect> {
    let mut effects = w.restart(n).effects;
    for _ in 0..10 {
        if archives(&effects) {
            break;
        }
        let Some((_, d)) = w.run_to_next_deadline() else {
            break;
        };
        effects.extend(d.effects);
    }
    effects
}

#[test]
fn an_archive_in_flight_at_a_restart_is_started_again() {
    let mut w = World::default();
    let job_id = archiving(&mut w);
    let effects = restart_and_settle(&mut w, 2);
    assert!(
        effects.contains(&Effect::ArchiveWorkspace { job_id }),
        "the archive is tried again after the restart: {effects:?}"
    );
    // The second try succeeds: the archive settles and nothing is left to happen.
    w.when(Command::ArchiveFinished {
        job_id,
        result: Ok(BlobHash([9; 32])),
    });
    assert!(w.job(job_id).archive.is_settled());
    assert!(w.state.all_settled());
}

#[test]
fn an_archive_retry_in_flight_at_two_restarts_is_started_again() {
    let mut w = World::default();
    let job_id = archiving(&mut w);
    w.when(Command::ArchiveFinished {
        job_id,
        result: Err("disk full".into()),
    });
    // The retry is due and started; then the server restarts twice before it ends.
    let (timer, d) = w.run_to_next_deadline().expect("archive retry");
    assert_eq!(timer, Timer::ArchiveRetryDue { job_id });
    assert!(d.effects.contains(&Effect::ArchiveWorkspace { job_id }));
    w.advance_ms(10);
    w.restart(2);
    w.advance_ms(10);
    let effects = restart_and_settle(&mut w, 3);
    assert!(
        effects.contains(&Effect::ArchiveWorkspace { job_id }),
        "the retry is started again after the restarts: {effects:?}"
    );
}
