//! The invariant checker, on a thread of its own a few steps behind the driver, or beside
//! it on its thread for short runs.
//!
//! After each step the driver hands the checker, in order, everything the checks need: the
//! records the step made durable, what the world did meanwhile (stops that reached sites,
//! lies told, archives written, apps started), and the live state and the physical world
//! after the step. Behind the driver, it hands over every few steps and goes on while the
//! checker replays, compares and checks on its thread. Either way the checker takes
//! exactly the sequence of calls it took when it ran on the driver's thread, so it finds
//! the same violation first; the violation carries the point of the run it belongs to
//! ([`Mark`]), so the error the run ends with (its time, its trail of records and notes)
//! is the same whichever step the driver had reached when it heard of it. The driver waits
//! for the checker where the answer is needed at once: at a server start (the acknowledged
//! records must have survived), before a power loss drops unsynced records (a violation's
//! trail is read from the records that existed when it was found), when the run stops on
//! an error of its own, and at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::engine::node::ReplyToken;
use crate::job::JobId;
use crate::lifecycle::{BlobHash, Event, EventKind, State};
use crate::sim::invariants::{Checker, Limits, World};
use crate::sim::model::Fact;

/// Where in the run a check was asked for: a violation found there is reported as at
/// this virtual time, with the records and notes that existed then.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// Virtual time.
    pub at: Duration,
    /// How many records were stored.
    pub stored: u64,
    /// How many notes the driver had made.
    pub notes: usize,
}

/// The first violation the checker found, and where.
#[derive(Clone, Debug)]
pub struct Found {
    /// What was broken.
    pub what: String,
    /// Where.
    pub mark: Mark,
}

/// The facts a batch fed to the engine, for the reference model: each is placed at the
/// sequence number of the event that records it (see [`place_facts`]).
pub struct Fed {
    /// In input order: the job, the fact, and the admin request's reply token (a fact
    /// counts only if the node accepted the request).
    pub facts: Vec<(JobId, Fact, Option<ReplyToken>)>,
    /// The requests the node accepted.
    pub accepted: BTreeSet<ReplyToken>,
    /// The sequence number of the batch's first event.
    pub first_new: u64,
}

/// What the checker holds at the end of a run.
pub struct Behind {
    /// The checker.
    pub checker: Checker,
    /// The facts fed, by job, with the sequence number they came at.
    pub facts: BTreeMap<JobId, Vec<(u64, Fact)>>,
}

// A step's messages are short-lived and moved once; boxing the large ones would only
// add allocations.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// The server (re)starts on `records`: answer with the acknowledged length.
    Start {
        records: Vec<(u64, Vec<u8>)>,
        mark: Mark,
        reply: Sender<Result<u64, Found>>,
    },
    /// A start replayed everything (see [`Checker::after_start`]).
    AfterStart,
    /// Records made durable (by a step, or found at a start), with the facts the step
    /// fed.
    Records {
        records: Vec<(u64, Vec<u8>)>,
        now: Duration,
        fed: Option<Fed>,
        mark: Mark,
    },
    /// A site's app of a job is about to be stopped or its deployment deleted.
    StopArrives {
        site: String,
        job_id: JobId,
        delete: bool,
    },
    /// A site told a lie with this report id.
    LieTold(String),
    /// An archive was written to the simulated blob store.
    Archived(JobId, BlobHash),
    /// A site started an app of a job (it ran the job).
    Ran(String, JobId),
    /// The checks after a step, on the live state (`None` while the server is down) and
    /// the world then.
    AfterStep {
        live: Option<State>,
        world: World,
        limits: Limits,
        mark: Mark,
    },
    /// Answer with the first violation found so far, if any.
    Sync(Sender<Option<Found>>),
}

/// How many steps' messages go to the checker together: waking a thread for every step
/// cost the fault campaign's short runs a third more processor time than the checks.
const STEPS_PER_HANDOVER: usize = 8;

/// How many handovers may wait for the checker before the driver waits for it. The
/// checker is faster on average but not at every step, so a short queue stalls the
/// driver at the checker's slow stretches: with 4, a 10,000-job day's driver waited
/// 0.44-0.52 s in all, with 16 0.10-0.16 s, with 64 0.03 s (timed by hand around the
/// send). Each waiting step holds a copy of the live state, whose shared structure the
/// engine's next changes then copy; the day's peak memory did not move.
const HANDOVERS_AHEAD: usize = 64;

/// The driver's side of the checker: on a thread of its own ([`Checks::behind`]),
/// or on the driver's thread for short runs ([`Checks::beside`]), where a thread's
/// handovers would cost more than they save. Both take the same messages in the same
/// order through [`Checking::handle`]; only the transport differs.
pub struct Checks {
    /// The messages of the steps since the last handover.
    pending: Vec<Msg>,
    /// How many steps they cover.
    pending_steps: usize,
    to: To,
}

enum To {
    Thread {
        steps: Option<SyncSender<Vec<Msg>>>,
        found: Receiver<Found>,
        thread: Option<JoinHandle<Checking>>,
    },
    Here(Option<Box<Checking>>),
}

impl Checks {
    /// The checker on a thread of its own, behind the driver.
    pub fn behind(checker: Checker) -> Checks {
        let (steps, received) = mpsc::sync_channel::<Vec<Msg>>(HANDOVERS_AHEAD);
        let (tell, found) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sim-checker".into())
            .spawn(move || {
                let mut checking = Checking::new(checker);
                for msg in received.into_iter().flatten() {
                    checking.handle(msg, &mut |found| {
                        let _ = tell.send(found.clone());
                    });
                }
                checking
            })
            .expect("a thread for the simulator's checker");
        Checks {
            pending: Vec::new(),
            pending_steps: 0,
            to: To::Thread {
                steps: Some(steps),
                found,
                thread: Some(thread),
            },
        }
    }

    /// The checker on the driver's thread, each step checked as it is handed over.
    pub fn beside(checker: Checker) -> Checks {
        Checks {
            pending: Vec::new(),
            pending_steps: 0,
            to: To::Here(Some(Box::new(Checking::new(checker)))),
        }
    }

    /// Hands the pending messages over.
    fn flush(&mut self) {
        self.pending_steps = 0;
        if self.pending.is_empty() {
            return;
        }
        // The next handover holds about as many messages: room made once, not grown
        // message by message (each growth copies them all).
        let room = self.pending.len();
        let step = std::mem::replace(&mut self.pending, Vec::with_capacity(room));
        match &mut self.to {
            To::Thread { steps, .. } => {
                let sent = steps.as_ref().is_some_and(|s| s.send(step).is_ok());
                if !sent {
                    // The thread is gone: its panic is the run's.
                    self.join();
                }
            }
            To::Here(checking) => {
                let checking = checking
                    .as_mut()
                    .expect("the checker is here until the end");
                for msg in step {
                    checking.handle(msg, &mut |_| {});
                }
            }
        }
    }

    /// Waits for the checker to finish what it was handed; a panic on its thread is the
    /// run's.
    fn join(&mut self) -> Option<Checking> {
        match &mut self.to {
            To::Thread { steps, thread, .. } => {
                *steps = None;
                match thread.take()?.join() {
                    Ok(checking) => Some(checking),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            To::Here(checking) => checking.take().map(|checking| *checking),
        }
    }

    /// The server (re)starts on `records`: every acknowledged record must still be
    /// there. Waits for the checker; answers how many records were acknowledged.
    pub fn start(&mut self, records: Vec<(u64, Vec<u8>)>, mark: Mark) -> Result<u64, Found> {
        let (reply, answer) = mpsc::channel();
        self.pending.push(Msg::Start {
            records,
            mark,
            reply,
        });
        self.flush();
        answer
            .recv()
            .expect("the checker answers a start while the run goes on")
    }

    /// A start replayed everything.
    pub fn after_start(&mut self) {
        self.pending.push(Msg::AfterStart);
    }

    /// Records were made durable; `fed` is what the step fed the engine.
    pub fn records(
        &mut self,
        records: Vec<(u64, Vec<u8>)>,
        now: Duration,
        fed: Option<Fed>,
        mark: Mark,
    ) {
        self.pending.push(Msg::Records {
            records,
            now,
            fed,
            mark,
        });
    }

    /// See [`Checker::stop_arrives`].
    pub fn stop_arrives(&mut self, site: String, job_id: JobId, delete: bool) {
        self.pending.push(Msg::StopArrives {
            site,
            job_id,
            delete,
        });
    }

    /// See [`Checker::lie_told`].
    pub fn lie_told(&mut self, report_id: String) {
        self.pending.push(Msg::LieTold(report_id));
    }

    /// An archive was written.
    pub fn archived(&mut self, job_id: JobId, hash: BlobHash) {
        self.pending.push(Msg::Archived(job_id, hash));
    }

    /// `site` started an app of `job_id`.
    pub fn ran(&mut self, site: String, job_id: JobId) {
        self.pending.push(Msg::Ran(site, job_id));
    }

    /// The checks after a step. Answers a violation the checker found at this or an
    /// earlier step, if it has reported one by now (behind the driver, it may report it
    /// some steps later).
    pub fn after_step(
        &mut self,
        live: Option<State>,
        world: World,
        limits: Limits,
        mark: Mark,
    ) -> Option<Found> {
        self.pending.push(Msg::AfterStep {
            live,
            world,
            limits,
            mark,
        });
        self.pending_steps += 1;
        let handover = match &self.to {
            To::Thread { .. } => self.pending_steps == STEPS_PER_HANDOVER,
            To::Here(_) => true,
        };
        if handover {
            self.flush();
        }
        match &self.to {
            To::Thread { found, .. } => found.try_recv().ok(),
            To::Here(checking) => checking.as_ref().and_then(|c| c.found.clone()),
        }
    }

    /// Waits for the checker to catch up; answers the first violation it found.
    pub fn sync(&mut self) -> Option<Found> {
        let (reply, answer) = mpsc::channel();
        self.pending.push(Msg::Sync(reply));
        self.flush();
        answer
            .recv()
            .expect("the checker answers while the run goes on")
    }

    /// The run is over: waits for the checker to finish everything handed to it, and
    /// hands it back with its replayed state (which the end may take as the fold of the
    /// stored history, see [`crate::sim::invariants::Checker::take_replayed_if_stored`]).
    pub fn finish(&mut self) -> Result<Behind, Found> {
        self.flush();
        let checking = self.join().expect("the checker is finished once");
        match checking.found {
            Some(found) => Err(found),
            None => Ok(checking.behind),
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        // A run that ended early (an error of its own) lets the checker finish and go.
        if let To::Thread { steps, thread, .. } = &mut self.to {
            *steps = None;
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// The checker's own state.
struct Checking {
    behind: Behind,
    /// Archives written to the simulated blob store.
    archives: FxHashMap<JobId, BlobHash>,
    /// By site: the jobs it started an app of.
    ran: FxHashMap<String, FxHashSet<JobId>>,
    /// A violation found in the middle of a step, reported with the checks after it.
    violation: Option<String>,
    /// The first violation found.
    found: Option<Found>,
}

impl Checking {
    fn new(checker: Checker) -> Checking {
        Checking {
            behind: Behind {
                checker,
                facts: BTreeMap::new(),
            },
            archives: FxHashMap::default(),
            ran: FxHashMap::default(),
            violation: None,
            found: None,
        }
    }

    /// Takes the next message; after the first violation (told to `tell`) it only
    /// answers.
    fn handle(&mut self, msg: Msg, tell: &mut dyn FnMut(&Found)) {
        match msg {
            Msg::Start {
                records,
                mark,
                reply,
            } => {
                let checker = &mut self.behind.checker;
                let answer = match &self.found {
                    Some(found) => Err(found.clone()),
                    None => checker
                        .on_start(&records)
                        .map(|()| checker.acked_len())
                        .map_err(|what| Found { what, mark }),
                };
                if let Err(found) = &answer {
                    self.found.get_or_insert_with(|| found.clone());
                }
                let _ = reply.send(answer);
            }
            Msg::Sync(reply) => {
                let _ = reply.send(self.found.clone());
            }
            _ if self.found.is_some() => {}
            msg => {
                if let Err(found) = self.take(msg) {
                    tell(&found);
                    self.found = Some(found);
                }
            }
        }
    }

    fn take(&mut self, msg: Msg) -> Result<(), Found> {
        let checker = &mut self.behind.checker;
        match msg {
            Msg::AfterStart => checker.after_start(),
            Msg::Records {
                records,
                now,
                fed,
                mark,
            } => {
                let mut events = Vec::new();
                checker
                    .on_records(&records, true, now, fed.as_ref().map(|_| &mut events))
                    .map_err(|what| Found { what, mark })?;
                if let Some(fed) = fed {
                    place_facts(&mut self.behind.facts, fed, &events);
                }
            }
            Msg::StopArrives {
                site,
                job_id,
                delete,
            } => {
                if self.violation.is_none() {
                    if let Err(what) = checker.stop_arrives(&site, &job_id, delete) {
                        self.violation = Some(what);
                    }
                }
            }
            Msg::LieTold(report_id) => checker.lie_told(&report_id),
            Msg::Archived(job_id, hash) => {
                self.archives.insert(job_id, hash);
            }
            Msg::Ran(site, job_id) => {
                self.ran.entry(site).or_default().insert(job_id);
            }
            Msg::AfterStep {
                live,
                world,
                limits,
                mark,
            } => {
                if let Some(what) = self.violation.take() {
                    return Err(Found { what, mark });
                }
                let ran = &self.ran;
                let ran = |site: &str, job: &JobId| ran.get(site).is_some_and(|j| j.contains(job));
                checker
                    .after_step(live.as_ref(), &world, limits, &self.archives, &ran)
                    .map_err(|what| Found { what, mark })?;
            }
            Msg::Start { .. } | Msg::Sync(_) => unreachable!("answered by `handle`"),
        }
        Ok(())
    }
}

/// Places each fact a batch fed at the sequence number of the event that records it.
/// The node decides the whole batch before one append, so a fact came at the event
/// recording it; a fact the core did not record (a resent report, one after the job
/// ended) counts as after the batch.
fn place_facts(placed: &mut BTreeMap<JobId, Vec<(u64, Fact)>>, fed: Fed, events: &[Event]) {
    let after_batch = events.last().map_or(fed.first_new, |e| e.seq + 1);
    let mut claimed: BTreeSet<u64> = BTreeSet::new();
    for (job_id, fact, token) in fed.facts {
        if token.is_some_and(|t| !fed.accepted.contains(&t)) {
            continue;
        }
        let records = |kind: &EventKind| match (&fact, kind) {
            (
                Fact::SiteExit { site, .. },
                EventKind::SiteOutcomeReported {
                    job_id: j, site: s, ..
                },
            ) => *j == job_id && s == site,
            (Fact::ServerExit(_), EventKind::ServerAppExited { job_id: j, .. }) => *j == job_id,
            (Fact::Abort, EventKind::JobFinished { job_id: j, .. }) => *j == job_id,
            _ => false,
        };
        let at = events
            .iter()
            .find(|e| !claimed.contains(&e.seq) && records(&e.kind))
            .map(|e| e.seq);
        if let Some(at) = at {
            claimed.insert(at);
        }
        placed
            .entry(job_id)
            .or_default()
            .push((at.unwrap_or(after_batch), fact));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(step: u64) -> Mark {
        Mark {
            at: Duration::from_secs(step),
            stored: step,
            notes: step as usize,
        }
    }

    fn world(step: u64) -> World {
        World {
            now: Duration::from_secs(step),
            server_up_since: Some(Duration::ZERO),
            server_apps: Vec::new(),
            earlier_server_apps: Vec::new(),
            sites: Vec::new(),
        }
    }

    const LIMITS: Limits = Limits {
        max_jobs: 1,
        abort_grace: Duration::from_secs(1),
        site_reconnect_grace: Duration::from_secs(1),
    };

    /// A live state the replayed one (nothing stored) cannot equal.
    fn ahead() -> State {
        let mut state = State::new();
        state.last_seq = 7;
        state
    }

    /// The live state at each step; the run's first difference is at `first_bad`.
    fn lives(steps: u64, first_bad: u64) -> impl Iterator<Item = (u64, State)> {
        (1..=steps).map(move |step| {
            let live = if step == first_bad || step % 3 == 0 && step > first_bad {
                ahead()
            } else {
                State::new()
            };
            (step, live)
        })
    }

    #[test]
    fn the_first_violation_is_reported_where_it_was_found_however_far_the_driver_went() {
        for first_bad in [1, 2, 5, 40] {
            // The checker run step by step with the driver, as it was before its thread.
            let mut checker = Checker::new();
            let archives = FxHashMap::default();
            let inline = lives(60, first_bad).find_map(|(step, live)| {
                checker
                    .after_step(Some(&live), &world(step), LIMITS, &archives, &|_, _| false)
                    .err()
                    .map(|what| (what, step))
            });
            let (want_what, want_step) = inline.expect("the inline checker finds the difference");
            assert_eq!(want_step, first_bad);

            // The same steps behind the driver (which goes on until it hears of it) and
            // beside it.
            for mut thread in [
                Checks::behind(Checker::new()),
                Checks::beside(Checker::new()),
            ] {
                let mut heard = None;
                for (step, live) in lives(60, first_bad) {
                    let found = thread.after_step(Some(live), world(step), LIMITS, mark(step));
                    if found.is_some() {
                        heard = found;
                        break;
                    }
                }
                let synced = thread.sync().expect("the checker found the difference");
                let Err(ended) = thread.finish() else {
                    panic!("the run ends with the violation");
                };
                for found in heard.iter().chain([&synced, &ended]) {
                    assert_eq!(found.what, want_what);
                    assert_eq!(found.mark.at, Duration::from_secs(first_bad));
                    assert_eq!(found.mark.stored, first_bad);
                    assert_eq!(found.mark.notes, first_bad as usize);
                }
            }
        }
    }

    #[test]
    fn a_run_without_violations_hands_the_checker_back() {
        // A stop of a job the replayed state does not hold is no violation.
        for mut thread in [
            Checks::behind(Checker::new()),
            Checks::beside(Checker::new()),
        ] {
            for step in 1..=20 {
                thread.stop_arrives("site-1".into(), JobId(uuid::Uuid::nil()), false);
                thread.ran("site-1".into(), JobId(uuid::Uuid::nil()));
                assert!(thread
                    .after_step(Some(State::new()), world(step), LIMITS, mark(step))
                    .is_none());
            }
            assert!(thread.sync().is_none());
            let Ok(behind) = thread.finish() else {
                panic!("no violation was found");
            };
            assert!(behind.facts.is_empty());
            assert_eq!(behind.checker.acked_len(), 0);
        }
    }
}
