//! The engine owner: a batch of inputs is appended with one write, effects come back only
//! after it, a failed append stops the engine for good, a limit refuses before the core,
//! and a restart on the same history rebuilds the same state.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod engine_support;

use engine_support::{submit, TestStorage};
use fedrun::engine::clock::SIM_EPOCH;
use fedrun::engine::ids::SeededIds;
use fedrun::engine::node::{Input, NodeError, Output, Participant, ReplyToken, Request};
use fedrun::engine::owner::{Engine, EngineLimits, EngineRefusal, Ids, StepError};
use fedrun::history::{History, MemoryStorage};
use fedrun::lifecycle::{Answer, Event, RunStatus};
use fedrun::settings::Settings;
use fedrun::site::protocol::SiteReport;

struct Rig {
    memory: MemoryStorage,
    writes: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            memory: MemoryStorage::new(),
            writes: Arc::new(AtomicUsize::new(0)),
            fail: Arc::new(AtomicBool::new(false)),
        }
    }

    fn start(&self, limits: EngineLimits) -> Engine {
        let storage = TestStorage {
            inner: self.memory.clone(),
            writes: self.writes.clone(),
            fail: self.fail.clone(),
            ..TestStorage::default()
        };
        let history = History::<Event>::from_storage(Box::new(storage), Path::new("test"))
            .expect("history opens");
        let (engine, _) = Engine::start(
            history,
            Settings::default(),
            Ids::Seeded(SeededIds::new(1)),
            limits,
            SIM_EPOCH,
        )
        .expect("engine starts");
        engine
    }
}

fn connect(site: &str) -> Input {
    Input::Report {
        from: Participant::Site(site.into()),
        report: SiteReport::Connected {
            resources: Default::default(),
            running: vec![],
        },
    }
}

#[test]
fn a_batch_is_one_write_and_its_effects_follow_it() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits::default());
    let before = rig.writes.load(Ordering::SeqCst);
    let batch = vec![connect("site-1"), submit(1), submit(2), submit(3)];
    let released = engine
        .step(batch, SIM_EPOCH.plus(Duration::from_secs(1)))
        .expect("step");
    assert_eq!(
        rig.writes.load(Ordering::SeqCst),
        before + 1,
        "four inputs, one append"
    );
    let replies: Vec<&Output> = released
        .iter()
        .filter(|o| matches!(o, Output::Reply { .. }))
        .collect();
    assert_eq!(replies.len(), 3);
    for reply in replies {
        assert!(
            matches!(
                reply,
                Output::Reply {
                    answer: Ok(Ok(Answer::Submitted { .. })),
                    ..
                }
            ),
            "{reply:?}"
        );
    }
    // The scheduler's first try asks site-1 for resources: an output of the same batch.
    assert!(released.iter().any(|o| matches!(
        o,
        Output::Send { to: Participant::Site(site), request: Request::CheckResources { .. } }
            if site == "site-1"
    )));
    // Every event of the batch is durable: a history reopened on the same records holds it.
    let reopened = History::<Event>::in_memory(rig.memory.clone()).expect("reopens");
    assert_eq!(reopened.head().seq, engine.state().last_seq);
}

#[test]
fn a_failed_append_stops_the_engine_for_good() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits::default());
    let seq_before = engine.state().last_seq;
    rig.fail.store(true, Ordering::SeqCst);
    let err = engine
        .step(vec![submit(1)], SIM_EPOCH)
        .expect_err("the write fails");
    assert!(matches!(err, StepError::Append { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    // Even once the disk is back, the engine refuses: it cannot know what reached disk.
    rig.fail.store(false, Ordering::SeqCst);
    let err = engine
        .step(vec![submit(2)], SIM_EPOCH)
        .expect_err("stopped");
    assert!(matches!(err, StepError::Stopped { .. }), "{err}");
    let reopened = History::<Event>::in_memory(rig.memory.clone()).expect("reopens");
    assert_eq!(
        reopened.head().seq,
        seq_before,
        "nothing of the failed batch is stored"
    );
}

#[test]
fn the_queued_jobs_limit_refuses_before_the_core() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits {
        queued_jobs_max: 2,
        ..EngineLimits::default()
    });
    // No site is connected, so every job stays SUBMITTED.
    let released = engine
        .step(vec![submit(1), submit(2), submit(3)], SIM_EPOCH)
        .expect("step");
    let seq_before = engine.state().last_seq;
    assert!(released.contains(&Output::Reply {
        token: ReplyToken(3),
        answer: Err(NodeError::Refused(EngineRefusal::TooManyQueuedJobs {
            queued: 2
        })),
    }));
    // A refusal writes nothing: a second one leaves the history as it was.
    engine.step(vec![submit(4)], SIM_EPOCH).expect("step");
    assert_eq!(
        engine.state().last_seq,
        seq_before,
        "a refusal writes nothing"
    );
    assert_eq!(engine.state().queue.len(), 2);
}

#[test]
fn a_restart_rebuilds_the_same_state_and_opens_a_new_boot() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits::default());
    engine
        .step(vec![submit(1), submit(2)], SIM_EPOCH)
        .expect("step");
    let jobs_before = engine.state().jobs.clone();
    let boot_before = engine.boot_id();
    drop(engine);
    let engine = rig.start(EngineLimits::default());
    assert_eq!(engine.state().jobs, jobs_before);
    assert_ne!(
        engine.boot_id(),
        boot_before,
        "each start has its own boot id"
    );
    assert!(engine
        .state()
        .jobs
        .values()
        .all(|j| j.status == RunStatus::Submitted));
}

/// The sequence number the stored snapshot covers, read from the records themselves.
fn stored_snapshot_seq(rig: &Rig) -> Option<u64> {
    History::<Event>::in_memory(rig.memory.clone())
        .expect("reopens")
        .recover(fedrun::lifecycle::State::new())
        .expect("recovers")
        .snapshot_seq
}

#[test]
fn a_snapshot_waits_for_at_least_as_many_events_as_the_state_holds_jobs() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits {
        snapshot_every_events: 1,
        ..EngineLimits::default()
    });
    let twenty: Vec<Input> = (1..=20).map(submit).collect();
    engine.step(twenty, SIM_EPOCH).expect("step");
    let first = stored_snapshot_seq(&rig).expect("a snapshot after twenty submits");
    assert_eq!(
        first,
        engine.state().last_seq,
        "taken at the end of the batch"
    );
    // It holds twenty jobs: the next one is not taken until twenty more events have been
    // recorded, whatever `snapshot_every_events` says (and however many jobs come).
    let mut n = 21;
    while engine.state().last_seq - first < 20 {
        assert_eq!(
            stored_snapshot_seq(&rig),
            Some(first),
            "after event {}",
            engine.state().last_seq
        );
        engine.step(vec![submit(n)], SIM_EPOCH).expect("step");
        n += 1;
    }
    assert!(
        stored_snapshot_seq(&rig) > Some(first),
        "a snapshot once the events since reached the job count"
    );
}

#[test]
fn snapshots_are_taken_and_start_up_uses_them() {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits {
        snapshot_every_events: 3,
        ..EngineLimits::default()
    });
    engine
        .step(vec![submit(1), submit(2), submit(3)], SIM_EPOCH)
        .expect("step");
    let state = engine.state().clone();
    drop(engine);
    let history = History::<Event>::in_memory(rig.memory.clone()).expect("reopens");
    let recovered = history
        .recover(fedrun::lifecycle::State::new())
        .expect("recovers");
    assert!(recovered.snapshot_seq.is_some(), "a snapshot was taken");
    assert_eq!(
        recovered.state, state,
        "snapshot + tail equals the live state"
    );
}

#[test]
fn a_snapshot_off_thread_is_installed_at_a_point_the_history_sets_and_lost_with_the_engine() {
    // A small state is encoded on the engine's thread and installed at the next step; a
    // large one (1,000 jobs) on a thread of its own, installed once the history has grown
    // by half as many events as it holds jobs. Either is lost with the engine.
    for jobs in [3, 1_000] {
        snapshot_off_thread_of(jobs);
    }
}

fn snapshot_off_thread_of(jobs: u64) {
    let rig = Rig::new();
    let mut engine = rig.start(EngineLimits {
        snapshot_every_events: jobs,
        ..EngineLimits::default()
    });
    engine.snapshot_off_thread();
    engine
        .step((1..=jobs).map(submit).collect(), SIM_EPOCH)
        .expect("step");
    let taken_at = engine.state().last_seq;
    let state_then = engine.state().clone();
    assert_eq!(
        stored_snapshot_seq(&rig),
        None,
        "still in flight when the step that called for it returns"
    );
    let mut next = jobs + 1;
    if jobs >= 1_000 {
        // On its own thread: steps go on without waiting for it until the history
        // reaches the install point, however quick the thread was.
        let due = taken_at + state_then.jobs.len() as u64 / 2;
        while engine.state().last_seq < due {
            engine.step(vec![submit(next)], SIM_EPOCH).expect("step");
            next += 1;
            assert_eq!(
                stored_snapshot_seq(&rig),
                None,
                "in flight until a step starts with the history at {due}"
            );
        }
    }
    let tail = engine.state().last_seq - taken_at;
    // The next step installs it, before anything else.
    engine.step(Vec::new(), SIM_EPOCH).expect("step");
    assert_eq!(stored_snapshot_seq(&rig), Some(taken_at), "installed");
    let history = History::<Event>::in_memory(rig.memory.clone()).expect("reopens");
    let at_snapshot = history
        .recover(fedrun::lifecycle::State::new())
        .expect("recovers");
    assert_eq!(
        at_snapshot.replayed, tail,
        "start-up replays only the events appended after the snapshot's record"
    );
    assert_eq!(
        &at_snapshot.state,
        engine.state(),
        "the snapshot plus the tail equals the live state"
    );
    if tail == 0 {
        assert_eq!(
            at_snapshot.state, state_then,
            "the snapshot holds the state after the record it covers"
        );
    }
    // As many events more call for the next one; the engine is dropped (a crash) before
    // a step installs it: the history keeps the first.
    let installed_at = engine.state().last_seq;
    engine
        .step((next..next + jobs).map(submit).collect(), SIM_EPOCH)
        .expect("step");
    assert!(
        engine.state().last_seq >= installed_at + jobs,
        "as many events more"
    );
    let live = engine.state().clone();
    drop(engine);
    let recovered = History::<Event>::in_memory(rig.memory.clone())
        .expect("reopens")
        .recover(fedrun::lifecycle::State::new())
        .expect("recovers");
    assert_eq!(
        recovered.snapshot_seq,
        Some(taken_at),
        "the one in flight is lost"
    );
    assert_eq!(
        recovered.state, live,
        "snapshot + tail equals the live state"
    );
}
