//! A simulated site: answers the engine's [`SiteRequest`]s by the scenario's rules, keeps its
//! resources in the production [`Ledger`] on the virtual clock, and runs pretend app
//! processes that end at a virtual time.
//!
//! It speaks exactly the messages of [`crate::site::protocol`], like the local and remote
//! sites, so the engine cannot tell it apart from a real one. It owns no clock: the driver
//! passes the virtual `now` in and schedules the app ends this returns.

use std::collections::BTreeMap;
use std::time::Duration;

use rustc_hash::FxHashSet;

use crate::job::JobId;
use crate::sim::scenario::{Answer, AppEnd, Behaviour, SiteSpec};
use crate::site::ledger::{Holding, Ledger, ReserveError};
use crate::site::protocol::{ExitOutcome, SiteReport, SiteRequest};

/// The signal a simulated app dies of when fedrun stops it (SIGTERM, honoured at once).
pub const STOP_SIGNAL: i32 = 15;
/// The signal of an app whose scenario says `exit_code = "killed"` (SIGKILL).
pub const KILL_SIGNAL: i32 = 9;

/// What a site does in answer to a request, for the driver to carry out.
#[derive(Clone, Debug)]
pub enum SiteOutput {
    /// Send this report to the engine now.
    Report(SiteReport),
    /// The app of this job ends at this virtual time unless something ends it first; the
    /// driver calls [`SimSite::app_due`] then with the same generation.
    AppEndsAt {
        /// Virtual time since the start of the run.
        at: Duration,
        /// The job.
        job_id: JobId,
        /// Which start of the app this is, so a stale end is ignored.
        generation: u64,
    },
}

/// The incarnation in the simulated sites' reservation tokens. A simulated site never
/// restarts (only the server does), so one incarnation serves the whole run.
const INCARNATION: &str = "sim";

#[derive(Clone, Debug)]
struct App {
    generation: u64,
    end: AppEnd,
}

/// One simulated site.
#[derive(Clone, Debug)]
pub struct SimSite {
    spec: SiteSpec,
    reservation_timeout: Duration,
    /// Whether the site is connected to the server now.
    pub online: bool,
    /// Reservations and resources in use, kept by the same code as a local site's, so the
    /// simulator checks the real bookkeeping rather than a copy of it.
    ledger: Ledger<Duration>,
    /// Membership only, never walked (a hash set: a day's site holds thousands).
    deployed: FxHashSet<JobId>,
    apps: BTreeMap<JobId, App>,
    /// App exit reports not yet acknowledged, oldest first; a site keeps them and resends
    /// them when it reconnects, when the server comes back, and (under faults) now and then.
    unacked: Vec<SiteReport>,
    /// Every job whose app this site ever started, for the invariant that no report is
    /// accepted for a job a site never ran.
    ever_ran: FxHashSet<JobId>,
    /// Every exit report this site made (job, number, outcome), for lies that repeat an
    /// id: a day of 10,000 jobs makes a hundred thousand, so the id is kept as its number
    /// ([`SimSite::report_id_of`]).
    made: Vec<(JobId, u64, ExitOutcome)>,
    next_report: u64,
    next_generation: u64,
}

impl SimSite {
    /// A site following `spec`, offline until the driver connects it.
    pub fn new(spec: SiteSpec, reservation_timeout: Duration) -> Self {
        let ledger = Ledger::new(&spec.name, spec.resources.clone(), INCARNATION);
        SimSite {
            spec,
            reservation_timeout,
            online: false,
            ledger,
            deployed: FxHashSet::default(),
            apps: BTreeMap::new(),
            unacked: Vec::new(),
            ever_ran: FxHashSet::default(),
            made: Vec::new(),
            next_report: 0,
            next_generation: 0,
        }
    }

    /// The site's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The scenario's description of the site.
    pub fn spec(&self) -> &SiteSpec {
        &self.spec
    }

    /// The report a site sends when it connects: its declared resources and the jobs whose
    /// apps it is running.
    pub fn connected_report(&self) -> SiteReport {
        SiteReport::Connected {
            resources: self.spec.resources.clone(),
            running: self.apps.keys().copied().collect(),
        }
    }

    /// Whether the app of `job_id` is running here.
    pub fn is_running(&self, job_id: JobId) -> bool {
        self.apps.contains_key(&job_id)
    }

    /// Keeps an app exit report that could not be delivered (a site keeps every report
    /// until it is acknowledged, so this only adds one it does not hold yet).
    pub fn keep(&mut self, report: SiteReport) {
        let id = report_id(&report);
        if id.is_some() && self.unacked.iter().any(|r| report_id(r) == id) {
            return;
        }
        self.unacked.push(report);
    }

    /// The reports not yet acknowledged, oldest first, to resend them. They stay kept
    /// until the server acknowledges them.
    pub fn take_outbox(&mut self) -> Vec<SiteReport> {
        self.unacked.clone()
    }

    /// Whether a report waits for its acknowledgement.
    pub fn has_unacked(&self) -> bool {
        !self.unacked.is_empty()
    }

    /// Whether the report with this id still waits for its acknowledgement.
    pub fn is_unacked(&self, id: &str) -> bool {
        self.unacked.iter().any(|r| report_id_is(r, id))
    }

    /// The jobs whose apps run here now.
    pub fn running(&self) -> Vec<JobId> {
        self.apps.keys().copied().collect()
    }

    /// Whether this site ever started an app of `job_id`.
    pub fn ever_ran(&self, job_id: &JobId) -> bool {
        self.ever_ran.contains(job_id)
    }

    /// The exit reports this site made, oldest first: (job, report id, outcome).
    pub fn reports_made(&self) -> impl Iterator<Item = (JobId, String, ExitOutcome)> + '_ {
        self.made
            .iter()
            .map(|&(job_id, n, outcome)| (job_id, self.report_id_of(n), outcome))
    }

    /// The id of this site's `n`th exit report.
    fn report_id_of(&self, n: u64) -> String {
        format!("{}/{n}", self.spec.name)
    }

    /// Answers one request at virtual time `now`; `behaviour` is this site's behaviour for
    /// the request's job.
    pub fn handle(
        &mut self,
        request: SiteRequest,
        now: Duration,
        behaviour: Behaviour,
    ) -> Vec<SiteOutput> {
        match request {
            SiteRequest::CheckResources {
                try_id,
                job_id,
                resources,
            } => {
                let answer = self
                    .ledger
                    .reserve(job_id, &resources, now, self.reservation_timeout)
                    .map_err(|e| e.to_string());
                vec![SiteOutput::Report(SiteReport::ResourceAnswer {
                    try_id,
                    job_id,
                    answer,
                })]
            }
            SiteRequest::CancelReservation { job_id, token } => {
                // A stale token (replaced, lapsed and started, already cancelled) holds
                // nothing to give back, so there is nothing to answer either way.
                self.ledger.cancel(job_id, &token);
                Vec::new()
            }
            SiteRequest::Deploy { job_id, .. } => match behaviour.deploy {
                Answer::Ok => {
                    self.deployed.insert(job_id);
                    vec![SiteOutput::Report(SiteReport::DeployAnswer {
                        job_id,
                        result: Ok(()),
                    })]
                }
                Answer::Error => vec![SiteOutput::Report(SiteReport::DeployAnswer {
                    job_id,
                    result: Err("deployment failed (simulated error)".to_string()),
                })],
                Answer::Timeout => Vec::new(),
            },
            SiteRequest::Start { job_id } => {
                if !self.deployed.contains(&job_id) {
                    return vec![SiteOutput::Report(SiteReport::StartAnswer {
                        job_id,
                        result: Err("the job is not deployed at this site".to_string()),
                    })];
                }
                match behaviour.start {
                    Answer::Ok => {
                        // The reservation turns into resources in use for the run. A start
                        // of an app that already runs restarts it (the simulated app has no
                        // process to refuse it), and its resources stay held as they are.
                        match self.ledger.start(job_id, now) {
                            Ok(()) | Err(ReserveError::AlreadyRunning { .. }) => {}
                            Err(e) => {
                                return vec![SiteOutput::Report(SiteReport::StartAnswer {
                                    job_id,
                                    result: Err(format!("cannot hold the job's resources: {e}")),
                                })];
                            }
                        }
                        self.next_generation += 1;
                        let generation = self.next_generation;
                        self.ever_ran.insert(job_id);
                        self.apps.insert(
                            job_id,
                            App {
                                generation,
                                end: behaviour.exit,
                            },
                        );
                        vec![
                            SiteOutput::Report(SiteReport::StartAnswer {
                                job_id,
                                result: Ok(()),
                            }),
                            SiteOutput::AppEndsAt {
                                at: now + behaviour.run_for,
                                job_id,
                                generation,
                            },
                        ]
                    }
                    Answer::Error => vec![SiteOutput::Report(SiteReport::StartAnswer {
                        job_id,
                        result: Err("start failed (simulated error)".to_string()),
                    })],
                    Answer::Timeout => Vec::new(),
                }
            }
            SiteRequest::Stop { job_id } => match self.apps.remove(&job_id) {
                Some(_) => vec![SiteOutput::Report(self.exited(
                    job_id,
                    ExitOutcome::Signal(STOP_SIGNAL),
                    true,
                ))],
                None => Vec::new(),
            },
            // The server has recorded the report: the site forgets it.
            SiteRequest::Acknowledge { report_id } => {
                self.unacked.retain(|r| !report_id_is(r, &report_id));
                Vec::new()
            }
            SiteRequest::Delete { job_id } => {
                self.deployed.remove(&job_id);
                // Only a reservation goes: a running app keeps its resources until it
                // exits, as it keeps running here.
                if matches!(
                    self.ledger.reservation(job_id).map(|r| r.holding),
                    Some(Holding::Reserved { .. })
                ) {
                    self.ledger.release(job_id);
                }
                Vec::new()
            }
        }
    }

    fn exited(&mut self, job_id: JobId, outcome: ExitOutcome, stop_requested: bool) -> SiteReport {
        self.ledger.release(job_id);
        self.next_report += 1;
        let report = SiteReport::AppExited {
            job_id,
            report_id: self.report_id_of(self.next_report),
            outcome,
            stop_requested,
        };
        self.made.push((job_id, self.next_report, outcome));
        self.unacked.push(report.clone());
        report
    }

    /// The app end scheduled by [`SiteOutput::AppEndsAt`] is due: returns its exit report,
    /// or nothing when that app was stopped or restarted since.
    pub fn app_due(&mut self, job_id: JobId, generation: u64) -> Option<SiteReport> {
        match self.apps.get(&job_id) {
            Some(app) if app.generation == generation => {
                let end = app.end;
                self.apps.remove(&job_id);
                let outcome = match end {
                    AppEnd::Code(c) => ExitOutcome::Code(c),
                    AppEnd::Killed => ExitOutcome::Signal(KILL_SIGNAL),
                };
                Some(self.exited(job_id, outcome, false))
            }
            _ => None,
        }
    }
}

fn report_id(report: &SiteReport) -> Option<&str> {
    match report {
        SiteReport::AppExited { report_id, .. } => Some(report_id),
        _ => None,
    }
}

fn report_id_is(report: &SiteReport, id: &str) -> bool {
    report_id(report) == Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(resources: &[(&str, f64)]) -> SimSite {
        let spec = SiteSpec {
            name: "s1".into(),
            resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            behaviour: Default::default(),
            online_at: None,
            jobs: BTreeMap::new(),
        };
        SimSite::new(spec, Duration::from_secs(30))
    }

    fn ok() -> Behaviour {
        Behaviour {
            deploy: Answer::Ok,
            start: Answer::Ok,
            exit: AppEnd::Code(0),
            run_for: Duration::from_secs(5),
        }
    }

    fn job(n: u128) -> JobId {
        JobId(uuid::Uuid::from_u128(n))
    }

    fn check(s: &mut SimSite, j: JobId, gpus: f64, now: u64) -> Result<String, String> {
        let out = s.handle(
            SiteRequest::CheckResources {
                try_id: 1,
                job_id: j,
                resources: [("num_of_gpus".to_string(), gpus)].into(),
            },
            Duration::from_secs(now),
            ok(),
        );
        match &out[..] {
            [SiteOutput::Report(SiteReport::ResourceAnswer { answer, .. })] => answer.clone(),
            other => panic!("expected one resource answer, got {other:?}"),
        }
    }

    #[test]
    fn reservations_hold_then_lapse_after_the_timeout() {
        let mut s = site(&[("num_of_gpus", 2.0)]);
        assert!(check(&mut s, job(1), 2.0, 0).is_ok());
        // Both GPUs are reserved, so a second job cannot have one...
        let err = check(&mut s, job(2), 1.0, 29).expect_err("no GPU is free at 29 s");
        assert!(err.contains("asked 1, free 0 of 2"), "{err}");
        // ...until the first reservation lapses at 0 s + reservation_timeout (30 s).
        assert!(check(&mut s, job(2), 1.0, 30).is_ok());
    }

    #[test]
    fn a_started_app_ends_with_its_code_and_frees_resources() {
        let mut s = site(&[("num_of_gpus", 1.0)]);
        let token = check(&mut s, job(1), 1.0, 0).expect("free GPU");
        s.handle(
            SiteRequest::Deploy {
                job_id: job(1),
                app_name: "app".into(),
                package: Default::default(),
                hash: crate::lifecycle::BlobHash([0; 32]),
                verify_at: None,
            },
            Duration::ZERO,
            ok(),
        );
        let out = s.handle(SiteRequest::Start { job_id: job(1) }, Duration::ZERO, ok());
        assert!(out.iter().any(
            |o| matches!(o, SiteOutput::AppEndsAt { at, generation: 1, .. }
            if *at == Duration::from_secs(5))
        ));
        // Running past the reservation timeout keeps the GPU in use.
        assert!(check(&mut s, job(2), 1.0, 31).is_err());
        s.handle(
            SiteRequest::CancelReservation {
                job_id: job(1),
                token,
            },
            Duration::from_secs(31),
            ok(),
        );
        assert!(
            s.app_due(job(1), 0).is_none(),
            "a stale generation is ignored"
        );
        match s.app_due(job(1), 1) {
            Some(SiteReport::AppExited { outcome, .. }) => {
                assert_eq!(outcome, ExitOutcome::Code(0))
            }
            other => panic!("expected an exit report, got {other:?}"),
        }
        assert!(check(&mut s, job(2), 1.0, 31).is_ok());
    }

    /// The ledger's rule, now the simulated site's too: a start after the reservation
    /// lapsed takes the amounts again only when they are still free, so a site is never
    /// oversubscribed.
    #[test]
    fn a_late_start_is_refused_when_its_lapsed_resources_were_taken() {
        let mut s = site(&[("num_of_gpus", 1.0)]);
        check(&mut s, job(1), 1.0, 0).expect("free GPU");
        check(&mut s, job(2), 1.0, 30).expect("job 1's reservation lapsed at 30 s");
        s.handle(
            SiteRequest::Deploy {
                job_id: job(1),
                app_name: "app".into(),
                package: Default::default(),
                hash: crate::lifecycle::BlobHash([0; 32]),
                verify_at: None,
            },
            Duration::from_secs(31),
            ok(),
        );
        let out = s.handle(
            SiteRequest::Start { job_id: job(1) },
            Duration::from_secs(31),
            ok(),
        );
        match &out[..] {
            [SiteOutput::Report(SiteReport::StartAnswer {
                result: Err(err), ..
            })] => assert!(err.contains("num_of_gpus: asked 1, free 0 of 1"), "{err}"),
            other => panic!("expected a refused start, got {other:?}"),
        }
        assert!(!s.is_running(job(1)));
    }

    #[test]
    fn stop_ends_the_app_at_once_and_cancels_its_scheduled_end() {
        let mut s = site(&[]);
        s.handle(
            SiteRequest::Deploy {
                job_id: job(1),
                app_name: "app".into(),
                package: Default::default(),
                hash: crate::lifecycle::BlobHash([0; 32]),
                verify_at: None,
            },
            Duration::ZERO,
            ok(),
        );
        s.handle(SiteRequest::Start { job_id: job(1) }, Duration::ZERO, ok());
        let out = s.handle(SiteRequest::Stop { job_id: job(1) }, Duration::ZERO, ok());
        assert!(matches!(
            &out[..],
            [SiteOutput::Report(SiteReport::AppExited {
                outcome: ExitOutcome::Signal(STOP_SIGNAL),
                ..
            })]
        ));
        assert!(s.app_due(job(1), 1).is_none());
    }

    #[test]
    fn timeouts_answer_nothing_and_start_needs_a_deploy() {
        let mut s = site(&[]);
        let silent = Behaviour {
            deploy: Answer::Timeout,
            ..ok()
        };
        let deploy = SiteRequest::Deploy {
            job_id: job(1),
            app_name: "app".into(),
            package: Default::default(),
            hash: crate::lifecycle::BlobHash([0; 32]),
            verify_at: None,
        };
        assert!(s.handle(deploy, Duration::ZERO, silent).is_empty());
        let out = s.handle(SiteRequest::Start { job_id: job(1) }, Duration::ZERO, ok());
        assert!(matches!(
            &out[..],
            [SiteOutput::Report(SiteReport::StartAnswer {
                result: Err(_),
                ..
            })]
        ));
    }
}
