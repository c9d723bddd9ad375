//! SPEC section 2: exits and site reports that arrive while the job is still `DISPATCHED`
//! are recorded, and once start completes the job goes `RUNNING` and straight on to the
//! status those facts decide, whatever order the facts arrive in. An exit that arrives
//! after the job is terminal changes nothing.

mod lifecycle_support;

use fedrun::job::JobId;
use fedrun::lifecycle::{Command, Decision, Effect, EventKind, RunPhase, RunStatus};
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

const SITES: [&str; 2] = ["site-1", "site-2"];

/// A job on both sites, deployed everywhere: the server app's start is awaited.
fn deployed(w: &mut World) -> JobId {
    let job_id = w.dispatched(&SITES, 2);
    w.when(Command::ServerDeployFinished {
        job_id,
        result: Ok(()),
    });
    for site in SITES {
        w.site(
            site,
            SiteReport::DeployAnswer {
                job_id,
                result: Ok(()),
            },
        );
    }
    assert!(
        w.job(job_id).run.server_step_in_flight(),
        "the server app's start is awaited"
    );
    job_id
}

/// One fact about the run after its deploy.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fact {
    /// The server app's start answer (OK).
    ServerStarted,
    /// The server app's exit.
    ServerExited(ExitOutcome),
    /// A site's start answer (OK).
    SiteStarted(usize),
    /// A site's exit report.
    SiteExited(usize, ExitOutcome),
}

fn deliver(w: &mut World, job_id: JobId, fact: Fact) -> Decision {
    match fact {
        Fact::ServerStarted => w.when(Command::ServerAppStarted {
            job_id,
            result: Ok(()),
        }),
        Fact::ServerExited(outcome) => w.server_exit(job_id, outcome),
        Fact::SiteStarted(i) => w.site(
            SITES[i],
            SiteReport::StartAnswer {
                job_id,
                result: Ok(()),
            },
        ),
        Fact::SiteExited(i, outcome) => w.site_exit(SITES[i], job_id, &format!("r{i}"), outcome),
    }
}

/// Every order of the facts that causality allows: a site is told to start only after
/// the server app started, so its start answer and its exit both come after that; the
/// server app's exit may come at any point (its start answer may be overtaken).
fn causal_orders(facts: &[Fact]) -> Vec<Vec<Fact>> {
    fn permute(rest: &mut Vec<Fact>, done: &mut Vec<Fact>, out: &mut Vec<Vec<Fact>>) {
        if rest.is_empty() {
            out.push(done.clone());
            return;
        }
        for i in 0..rest.len() {
            let fact = rest[i];
            let needs_server = matches!(fact, Fact::SiteStarted(_) | Fact::SiteExited(..));
            if needs_server && !done.contains(&Fact::ServerStarted) {
                continue;
            }
            rest.remove(i);
            done.push(fact);
            permute(rest, done, out);
            done.pop();
            rest.insert(i, fact);
        }
    }
    let mut out = Vec::new();
    permute(&mut facts.to_vec(), &mut Vec::new(), &mut out);
    out
}

/// Plays the facts in this order on a fresh deployed job; returns the job's final status
/// and reason, and checks that the job went `RUNNING` (once) on the way.
fn play(order: &[Fact]) -> (RunStatus, String) {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    let mut went_running = 0;
    for fact in order {
        let d = deliver(&mut w, job_id, *fact);
        went_running += d
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::RunStarted { .. }))
            .count();
    }
    assert_eq!(
        went_running, 1,
        "order {order:?}: the job goes RUNNING once"
    );
    let job = w.job(job_id);
    assert!(
        job.status.is_terminal(),
        "order {order:?}: every fact is in, yet the job is {}",
        job.status
    );
    assert_eq!(job.run.phase, RunPhase::Stopped, "order {order:?}");
    assert_eq!(*job.run.job_clients, SITES.to_vec(), "order {order:?}");
    (
        job.status,
        job.finish_reason
            .as_deref()
            .expect("a terminal job has a reason")
            .to_string(),
    )
}

#[test]
fn a_server_exit_before_its_start_answer_is_recorded_and_decides_once_running() {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    let d = w.server_exit(job_id, ExitOutcome::Code(1));
    assert_eq!(kinds(&d), vec!["server_app_exited"]);
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    // Start completes: the sites are started, and the job goes RUNNING.
    let d = w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    assert!(d.effects.contains(&Effect::StartSiteApp {
        site: "site-1".into(),
        job_id
    }));
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    let d = w.site(
        "site-2",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    // Straight on: RUNNING, and at once the failed server app stops the run.
    assert_eq!(
        kinds(&d),
        vec!["start_finished", "run_started", "run_stop_requested"]
    );
    assert_eq!(w.status(job_id), RunStatus::Running);
    assert!(!d.effects.contains(&Effect::StopServerApp { job_id }));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(104));
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::ExecutionException,
            "the server app ended with code 1".into()
        ))
    );
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
}

#[test]
fn a_server_exit_after_its_start_answer_decides_the_same() {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    let d = w.server_exit(job_id, ExitOutcome::Code(1));
    assert_eq!(kinds(&d), vec!["server_app_exited"]);
    for site in SITES {
        w.site(
            site,
            SiteReport::StartAnswer {
                job_id,
                result: Ok(()),
            },
        );
    }
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Signal(15));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(104));
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::ExecutionException,
            "the server app ended with code 1".into()
        ))
    );
}

#[test]
fn when_every_fact_precedes_the_start_answers_the_job_goes_running_and_finishes_at_once() {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    // Each site reports its exit before its start answer.
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    let d = w.site(
        "site-2",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert_eq!(
        kinds(&d),
        vec![
            "start_finished",
            "run_started",
            "job_finished",
            "run_stopped",
            "workspace_archive_started"
        ]
    );
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::Completed,
            "the server app and every site ended normally".into()
        ))
    );
}

#[test]
fn a_site_report_before_its_start_answer_decides_once_running() {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(101));
    assert_eq!(kinds(&d), vec!["site_outcome_reported"]);
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    w.site(
        "site-1",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    let d = w.site(
        "site-2",
        SiteReport::StartAnswer {
            job_id,
            result: Ok(()),
        },
    );
    assert_eq!(
        kinds(&d),
        vec!["start_finished", "run_started", "run_stop_requested"]
    );
    assert!(d.effects.contains(&Effect::StopServerApp { job_id }));
    assert!(d.effects.contains(&Effect::StopSiteApp {
        site: "site-2".into(),
        job_id
    }));
    w.server_exit(job_id, ExitOutcome::Signal(15));
    let d = w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(104));
    assert_eq!(
        finished(&d),
        Some((
            RunStatus::ExecutionException,
            "site site-1 reported code 101".into()
        ))
    );
}

#[test]
fn every_causal_order_of_the_facts_ends_the_same() {
    let cases = [
        (
            [
                ExitOutcome::Code(0),
                ExitOutcome::Code(0),
                ExitOutcome::Code(0),
            ],
            RunStatus::Completed,
            "the server app and every site ended normally",
        ),
        (
            [
                ExitOutcome::Code(0),
                ExitOutcome::Code(1),
                ExitOutcome::Code(0),
            ],
            RunStatus::ExecutionException,
            "site site-1 reported code 1",
        ),
        (
            [
                ExitOutcome::Code(104),
                ExitOutcome::Code(0),
                ExitOutcome::Code(0),
            ],
            RunStatus::Abnormal,
            "the server app ended with code 104",
        ),
    ];
    for ([server, site1, site2], status, reason) in cases {
        let facts = [
            Fact::ServerStarted,
            Fact::ServerExited(server),
            Fact::SiteStarted(0),
            Fact::SiteStarted(1),
            Fact::SiteExited(0, site1),
            Fact::SiteExited(1, site2),
        ];
        let orders = causal_orders(&facts);
        // 5! orders of the rest with ServerStarted first, plus the server exit ahead of it.
        assert_eq!(orders.len(), 120 + 24);
        for order in orders {
            assert_eq!(
                play(&order),
                (status, reason.to_string()),
                "order {order:?}"
            );
        }
    }
}

#[test]
fn an_exit_after_the_job_is_terminal_changes_nothing() {
    // A finished job whose server app exit is already recorded: a repeated exit (even a
    // failing one) is not recorded again.
    let mut w = World::default();
    let job_id = w.running(&SITES, 2);
    w.server_exit(job_id, ExitOutcome::Code(0));
    w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(0));
    w.site_exit("site-2", job_id, "r2", ExitOutcome::Code(0));
    assert_eq!(w.status(job_id), RunStatus::Completed);
    let before = w.job(job_id).clone();
    let d = w.server_exit(job_id, ExitOutcome::Code(104));
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert!(d.effects.is_empty());
    assert_eq!(*w.job(job_id), before);
    // A resent site report changes nothing either.
    let d = w.site_exit("site-1", job_id, "r1", ExitOutcome::Code(1));
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert_eq!(*w.job(job_id), before);

    // A job that failed to run on a start timeout: the server app's late exit is not
    // recorded and the status stays.
    let mut w = World::default();
    let job_id = deployed(&mut w);
    while w.status(job_id) == RunStatus::Dispatched {
        w.run_to_next_deadline().expect("the start timeout");
    }
    assert_eq!(w.status(job_id), RunStatus::FailedToRun);
    let before = w.job(job_id).clone();
    let d = w.server_exit(job_id, ExitOutcome::Code(1));
    assert!(d.events.is_empty(), "{:?}", kinds(&d));
    assert_eq!(*w.job(job_id), before);
}

#[test]
fn an_exit_while_an_aborted_jobs_start_is_awaited_settles_the_run() {
    let mut w = World::default();
    let job_id = deployed(&mut w);
    w.abort(job_id);
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    let reason = w.job(job_id).finish_reason.clone();
    // The app ran and ended before its start answer came back.
    let d = w.server_exit(job_id, ExitOutcome::Code(1));
    assert_eq!(kinds(&d), vec!["server_app_exited"]);
    let d = w.when(Command::ServerAppStarted {
        job_id,
        result: Ok(()),
    });
    // Nothing is left to stop: the run is settled, and the status and reason stay.
    assert!(!d.effects.contains(&Effect::StopServerApp { job_id }));
    assert_eq!(w.job(job_id).run.phase, RunPhase::Stopped);
    assert_eq!(w.status(job_id), RunStatus::Aborted);
    assert_eq!(w.job(job_id).finish_reason, reason);
}
