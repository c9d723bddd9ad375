//! The default scheduler of SPEC section 7: order, back-off, limits, site selection and
//! resource requests. Expected values follow from the SPEC's rules and the default
//! settings (`min_schedule_interval` 10 s, `max_schedule_interval` 10 m, `max_jobs` 4,
//! `max_schedule_count` 10).

mod lifecycle_support;

use std::collections::BTreeMap;

use fedrun::job::flat_map::FlatMap;
use fedrun::job::meta::JobMeta;
use fedrun::lifecycle::{Effect, EventKind, RunPhase, RunStatus, ScheduleOutcome, Timer};
use fedrun::schedule::resources_for;
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;

fn last_outcome(w: &World, job_id: fedrun::job::JobId) -> ScheduleOutcome {
    w.log
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::ScheduleAttempted { job_id: j, outcome } if *j == job_id => {
                Some(outcome.clone())
            }
            _ => None,
        })
        .expect("a try was recorded")
}

#[test]
fn oldest_submit_time_goes_first_and_ties_go_in_history_order() {
    let mut w = World::default();
    // Three jobs at the same instant, while no site is connected (each tried once, none due).
    let a = w.submit(meta(&["site-1"], 1));
    let b = w.submit(meta(&["site-1"], 1));
    w.advance_ms(1);
    let c = w.submit(meta(&["site-1"], 1));
    w.advance_ms(20_000);
    // Everyone is due; the site joins: the pass tries a first (submit_time tie with b,
    // earlier in history), and one try is in flight at a time.
    let d = w.connect("site-1");
    let tried: Vec<_> = d
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ScheduleTryStarted { job_id, .. } => Some(*job_id),
            _ => None,
        })
        .collect();
    assert_eq!(tried, [a]);
    let d = w.reserve_all(&d.effects).pop().expect("answered");
    // a is dispatched; a new pass starts and tries b next, then c after b.
    assert!(matches!(
        last_outcome(&w, a),
        ScheduleOutcome::Dispatched { .. }
    ));
    assert_eq!(w.state.schedule_try.as_ref().map(|t| t.job_id), Some(b));
    let d = w.reserve_all(&d.effects).pop().expect("answered");
    assert_eq!(w.state.schedule_try.as_ref().map(|t| t.job_id), Some(c));
    w.reserve_all(&d.effects);
    assert_eq!(w.status(c), RunStatus::Dispatched);
}

#[test]
fn back_off_is_10s_20s_40s_and_capped_at_10m() {
    let mut w = World::default();
    let job_id = w.submit(meta(&["site-1"], 1));
    let mut times = vec![w.job(job_id).last_schedule_time.expect("tried").as_millis()];
    for _ in 0..8 {
        let (timer, _) = w.run_to_next_deadline().expect("a back-off is due");
        assert_eq!(timer, Timer::ScheduleDue);
        times.push(w.job(job_id).last_schedule_time.expect("tried").as_millis());
    }
    let gaps: Vec<i64> = times.windows(2).map(|p| (p[1] - p[0]) / 1000).collect();
    // 2^(count-1) * 10 s: 10, 20, 40, 80, 160, 320, then min(640, 600) = 600, 600.
    assert_eq!(gaps, [10, 20, 40, 80, 160, 320, 600, 600]);
}

#[test]
fn the_attempt_limit_ends_the_job_can_not_schedule_with_the_reason() {
    let settings = Settings {
        max_schedule_count: 3,
        ..Default::default()
    };
    let mut w = World::new(settings);
    let job_id = w.submit(meta(&["site-1", "site-2"], 2));
    w.run_to_next_deadline();
    let (_, d) = w.run_to_next_deadline().expect("third try");
    let (status, reason) = finished(&d).expect("ended at the limit");
    assert_eq!(status, RunStatus::CanNotSchedule);
    assert_eq!(
        reason,
        "schedule_count (3) reached max_schedule_count (3); last try: connected sites (0) < min_clients (2)"
    );
    let job = w.job(job_id);
    assert_eq!(job.schedule_history.len(), 3);
    assert!(job
        .schedule_history
        .lines()
        .next()
        .expect("a first line")
        .ends_with("try 1: no resources: connected sites (0) < min_clients (2)"));
    assert_eq!(
        fedrun::lifecycle::next_deadline(&w.state, &w.settings),
        None
    );
}

#[test]
fn min_clients_counts_connected_listed_sites_with_numbers_in_the_reason() {
    let mut w = World::default();
    for s in ["site-1", "site-2", "site-3", "site-9"] {
        w.connect(s);
    }
    let job_id = w.submit(meta(&["site-1", "site-2", "site-3", "site-4"], 4));
    assert_eq!(
        last_outcome(&w, job_id),
        ScheduleOutcome::NoResources {
            reason: "connected sites (3) < min_clients (4)".into()
        }
    );
}

#[test]
fn offline_listed_sites_are_left_out_and_mandatory_ones_block() {
    let mut w = World::default();
    w.connect("site-1");
    w.connect("site-2");
    let job_id = w.submit(meta(&["site-1", "site-2", "site-3"], 2));
    let t = w.state.schedule_try.as_ref().expect("try in flight");
    assert_eq!(t.job_id, job_id);
    let asked: Vec<&str> = t.asked.iter().map(|r| r.site.as_str()).collect();
    assert_eq!(
        asked,
        ["site-1", "site-2"],
        "site-3 is offline and left out"
    );
    let mut m = meta(&["site-1", "site-3"], 1);
    m.mandatory_clients = vec!["site-3".into()];
    let mut w = World::default();
    w.connect("site-1");
    let job_id = w.submit(m);
    assert_eq!(
        last_outcome(&w, job_id),
        ScheduleOutcome::NoResources {
            reason: "mandatory sites not connected: site-3".into()
        }
    );
}

#[test]
fn all_sites_means_every_connected_site() {
    let mut w = World::default();
    for s in ["site-a", "site-b", "site-c"] {
        w.connect(s);
    }
    w.submit(meta_all(2));
    let d = w.state.schedule_try.clone().expect("try");
    let asked: Vec<String> = d.asked.iter().map(|r| r.site.clone()).collect();
    assert_eq!(asked, ["site-a", "site-b", "site-c"]);
}

#[test]
fn too_few_sites_with_resources_cancels_the_reservations_and_names_each_answer() {
    let mut w = World::default();
    w.connect("site-1");
    w.connect("site-2");
    let job_id = w.submit(meta(&["site-1", "site-2"], 2));
    let try_id = w.state.schedule_try.as_ref().expect("try").try_id;
    w.site(
        "site-1",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok("tok-1".into()),
        },
    );
    let d = w.site(
        "site-2",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Err("not enough num_of_gpus (asked 2, free 1)".into()),
        },
    );
    assert_eq!(
        d.effects,
        [Effect::CancelReservation {
            site: "site-1".into(),
            job_id,
            token: "tok-1".into()
        }]
    );
    assert_eq!(
        last_outcome(&w, job_id),
        ScheduleOutcome::NoResources {
            reason: "sites with resources (1) < min_clients (2); site-1: reserved; site-2: not enough num_of_gpus (asked 2, free 1)".into()
        }
    );
    assert_eq!(w.job(job_id).schedule_count, 1);
}

#[test]
fn sites_without_resources_are_left_out_when_enough_remain() {
    let mut w = World::default();
    w.connect("site-1");
    w.connect("site-2");
    let job_id = w.submit(meta(&["site-1", "site-2"], 1));
    let try_id = w.state.schedule_try.as_ref().expect("try").try_id;
    w.site(
        "site-1",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Err("busy".into()),
        },
    );
    w.site(
        "site-2",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok("t2".into()),
        },
    );
    assert_eq!(w.status(job_id), RunStatus::Dispatched);
    assert_eq!(*w.job(job_id).run.sites, ["site-2"]);
}

#[test]
fn a_silent_site_times_out_after_resource_check_timeout() {
    let mut w = World::default();
    w.connect("site-1");
    let job_id = w.submit(meta(&["site-1"], 1));
    let start = w.now;
    let (timer, _) = w.run_to_next_deadline().expect("timeout");
    assert!(matches!(timer, Timer::ResourceCheckTimedOut { .. }));
    assert_eq!(w.now.as_millis() - start.as_millis(), 15_000);
    assert_eq!(
        last_outcome(&w, job_id),
        ScheduleOutcome::NoResources {
            reason: "sites with resources (0) < min_clients (1); site-1: no reply".into()
        }
    );
}

#[test]
fn an_abort_during_the_try_cancels_its_reservations_and_nothing_else_happens() {
    let mut w = World::default();
    w.connect("site-1");
    w.connect("site-2");
    let job_id = w.submit(meta(&["site-1", "site-2"], 2));
    let try_id = w.state.schedule_try.as_ref().expect("try").try_id;
    w.site(
        "site-1",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok("t1".into()),
        },
    );
    let d = w.abort(job_id);
    assert_eq!(kinds(&d), ["schedule_try_cancelled", "job_finished"]);
    assert!(d.effects.contains(&Effect::CancelReservation {
        site: "site-1".into(),
        job_id,
        token: "t1".into()
    }));
    assert_eq!(
        w.job(job_id).schedule_count,
        0,
        "a cancelled try is not counted"
    );
    // The late answer of site-2 is given back, and nothing is recorded.
    let d = w.site(
        "site-2",
        SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok("t2".into()),
        },
    );
    assert!(d.events.is_empty());
    assert_eq!(
        d.effects,
        [Effect::CancelReservation {
            site: "site-2".into(),
            job_id,
            token: "t2".into()
        }]
    );
}

#[test]
fn deleting_a_job_during_its_try_never_breaks_the_scheduler() {
    let mut w = World::default();
    w.connect("site-1");
    let first = w.submit(meta(&["site-1"], 1));
    let second = w.submit(meta(&["site-1"], 1));
    let d = w.delete(first);
    assert_eq!(
        kinds(&d)[..3],
        ["schedule_try_cancelled", "job_finished", "job_deleted"]
    );
    // The pass moves on to the next job in the same decision.
    assert_eq!(
        w.state.schedule_try.as_ref().map(|t| t.job_id),
        Some(second)
    );
}

#[test]
fn max_jobs_counts_dispatched_running_and_stopping_runs() {
    let settings = Settings {
        max_jobs: 2,
        ..Default::default()
    };
    let mut w = World::new(settings);
    let running = w.running(&["site-1"], 1);
    let _dispatched = w.dispatched(&["site-1"], 1);
    let queued = w.submit(meta(&["site-1"], 1));
    assert_eq!(
        w.job(queued).schedule_count,
        0,
        "at the limit: no try, no counters"
    );
    // The running job is aborted: terminal, but its run is still stopping and counts.
    w.abort(running);
    assert_eq!(w.job(running).run.phase, RunPhase::Stopping);
    assert_eq!(w.job(queued).schedule_count, 0);
    w.server_exit(running, ExitOutcome::Signal(15));
    let d = w.site_exit("site-1", running, "r", ExitOutcome::Signal(15));
    assert!(kinds(&d).contains(&"run_stopped"));
    assert_eq!(
        w.state.schedule_try.as_ref().map(|t| t.job_id),
        Some(queued)
    );
}

#[test]
fn resources_merge_over_default_and_drop_unmanaged_and_unused_gpu_keys() {
    let mut m: JobMeta = meta(&["site-1", "site-2"], 1);
    m.resource_spec = FlatMap::from([
        (
            "@default".to_string(),
            FlatMap::from([
                ("num_of_gpus".to_string(), 1.0),
                ("gpu_mem".to_string(), 8.0),
                ("num_of_cpus".to_string(), 4.0),
                ("memory".to_string(), 16.0),
                ("disk".to_string(), 10.0),
            ]),
        ),
        (
            "site-2".to_string(),
            FlatMap::from([("num_of_gpus".to_string(), 0.0)]),
        ),
    ]);
    let site1 = resources_for(&m, "site-1");
    assert_eq!(
        site1,
        BTreeMap::from([
            ("disk".to_string(), 10.0),
            ("gpu_mem".to_string(), 8.0),
            ("num_of_gpus".to_string(), 1.0)
        ])
    );
    let site2 = resources_for(&m, "site-2");
    assert_eq!(site2, BTreeMap::from([("disk".to_string(), 10.0)]));
}

/// The jobs a decision tried, in the order it tried them.
fn tried(d: &fedrun::lifecycle::Decision) -> Vec<fedrun::job::JobId> {
    d.events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ScheduleAttempted { job_id, .. } => Some(*job_id),
            _ => None,
        })
        .collect()
}

#[test]
fn one_pass_tries_every_due_job_once_in_queue_order_and_skips_those_not_due() {
    let mut w = World::default();
    // Two groups, 5 s apart, for a site that never connects: each job is tried once at
    // submit, and is due again 10 s later.
    let first: Vec<_> = (0..12).map(|_| w.submit(meta(&["site-1"], 1))).collect();
    w.advance_ms(5_000);
    let second: Vec<_> = (0..12).map(|_| w.submit(meta(&["site-1"], 1))).collect();
    // At 10 s only the first group is due: one pass tries all of it, in order, and passes
    // over the second group without trying it.
    w.advance_ms(5_000);
    assert_eq!(tried(&w.timer(Timer::ScheduleDue)), first);
    // At 15 s the second group; the first is not due again before 30 s (20 s back-off).
    w.advance_ms(5_000);
    assert_eq!(tried(&w.timer(Timer::ScheduleDue)), second);
    // At 35 s both are due: queue order, the first group ahead.
    w.advance_ms(20_000);
    let both: Vec<_> = first.iter().chain(&second).copied().collect();
    assert_eq!(tried(&w.timer(Timer::ScheduleDue)), both);
    // Right after, nothing is due: a pass tries nothing.
    assert!(tried(&w.timer(Timer::ScheduleDue)).is_empty());
    for job_id in both {
        assert_eq!(w.job(job_id).schedule_count, 3);
    }
}
