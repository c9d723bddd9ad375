//! Given/when/then over the pure core: drive `decide` with commands on a manual clock,
//! apply what it decides, and look at the events, effects and state.
#![allow(dead_code)]

use fedrun::lifecycle::SubmitSignature;

use fedrun::job::meta::{AppTargets, JobMeta};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    decide, AdminRequest, BlobHash, BootId, Command, Decision, Effect, Event, EventKind, IdSource,
    Identity, Job, Origin, Rejection, Role, RunStatus, State, Timer, Timestamp,
};
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};

/// Job ids 00000000-0000-4000-8000-00000000000N, counting up.
#[derive(Default)]
pub struct CountingIds(pub u64);

impl IdSource for CountingIds {
    fn new_job_id(&mut self) -> JobId {
        self.0 += 1;
        JobId(uuid::Uuid::from_u128(
            0x0000_0000_0000_4000_8000_0000_0000_0000 | self.0 as u128,
        ))
    }
}

/// The world of one test: state, settings, a manual clock, and every event so far.
pub struct World {
    pub state: State,
    pub settings: Settings,
    pub now: Timestamp,
    pub ids: CountingIds,
    pub log: Vec<Event>,
    requests: u64,
}

/// 2000-01-01T00:00:00Z, the simulator's time 0.
pub const T0: i64 = 946_684_800_000;

pub fn admin(name: &str, org: &str, role: Role) -> Identity {
    Identity {
        name: name.to_string(),
        org: org.to_string(),
        role,
    }
}

pub fn boss() -> Identity {
    admin("boss", "acme", Role::ProjectAdmin)
}

/// A meta with one app for the server and one per listed site.
pub fn meta(sites: &[&str], min_clients: u32) -> JobMeta {
    let mut targets = vec!["server".to_string()];
    targets.extend(sites.iter().map(|s| s.to_string()));
    JobMeta {
        name: "job".to_string(),
        deploy_map: vec![AppTargets {
            app: "app".to_string(),
            targets,
        }],
        min_clients,
        mandatory_clients: Vec::new(),
        resource_spec: Default::default(),
    }
}

/// A meta in the `@ALL` form.
pub fn meta_all(min_clients: u32) -> JobMeta {
    JobMeta {
        name: "all".to_string(),
        deploy_map: vec![AppTargets {
            app: "app".to_string(),
            targets: vec!["@ALL".to_string()],
        }],
        min_clients,
        mandatory_clients: Vec::new(),
        resource_spec: Default::default(),
    }
}

pub fn package() -> BlobHash {
    BlobHash([7; 32])
}

impl Default for World {
    fn default() -> Self {
        World::new(Settings::default())
    }
}

impl World {
    pub fn new(settings: Settings) -> Self {
        World {
            state: State::new(),
            settings,
            now: Timestamp::from_millis(T0),
            ids: CountingIds::default(),
            log: Vec::new(),
            requests: 0,
        }
    }

    /// Moves the clock forward.
    pub fn advance_ms(&mut self, ms: i64) {
        self.now = Timestamp::from_millis(self.now.as_millis() + ms);
    }

    /// Given these past events (as a history would hold them): builds their envelopes at
    /// `now` and replays them with the same check start-up uses.
    pub fn given(&mut self, kinds: Vec<(fedrun::lifecycle::Actor, EventKind)>) {
        for (actor, kind) in kinds {
            let event = Event {
                seq: self.state.last_seq + 1,
                at: self.now,
                actor,
                request_id: None,
                boot_id: self.state.boot_id,
                kind,
            };
            if let Err(err) = self.state.apply_checked(&event) {
                panic!("the given history is legal: {err}");
            }
            self.log.push(event);
        }
    }

    /// Decides and applies one command; returns the decision. Checks the envelope rules on
    /// the way: sequence numbers continue, times never go back.
    pub fn when(&mut self, command: Command) -> Decision {
        let decision = decide(
            &self.state,
            &self.settings,
            command,
            self.now,
            &mut self.ids,
        )
        .expect("the command is recordable");
        for event in &decision.events {
            assert_eq!(event.seq, self.state.last_seq + 1, "sequence continues");
            assert!(event.at >= self.state.last_at, "time never goes back");
            self.state.apply(event);
            self.log.push(event.clone());
        }
        decision
    }

    /// `decide` without applying (for rejections outside the history).
    pub fn try_decide(&mut self, command: Command) -> Result<Decision, Rejection> {
        decide(
            &self.state,
            &self.settings,
            command,
            self.now,
            &mut self.ids,
        )
    }

    pub fn admin_as(&mut self, who: Identity, request: AdminRequest) -> Decision {
        self.requests += 1;
        let origin = Origin {
            identity: who,
            request_id: Some(format!("req-{}", self.requests)),
        };
        self.when(Command::Admin { origin, request })
    }

    pub fn submit_as(&mut self, who: Identity, meta: JobMeta) -> Decision {
        self.admin_as(
            who,
            AdminRequest::SubmitJob {
                meta,
                package: package(),
                signature: SubmitSignature::NoSigner,
            },
        )
    }

    /// Submits as a project admin and returns the new job's id.
    pub fn submit(&mut self, meta: JobMeta) -> JobId {
        let decision = self.submit_as(boss(), meta);
        match decision.reply {
            Some(Ok(fedrun::lifecycle::Answer::Submitted { job_id })) => job_id,
            other => panic!("submit was not accepted: {other:?}"),
        }
    }

    pub fn abort(&mut self, job_id: JobId) -> Decision {
        self.admin_as(boss(), AdminRequest::AbortJob { job_id })
    }

    pub fn delete(&mut self, job_id: JobId) -> Decision {
        self.admin_as(boss(), AdminRequest::DeleteJob { job_id })
    }

    pub fn site(&mut self, site: &str, report: SiteReport) -> Decision {
        self.when(Command::Site {
            site: site.to_string(),
            report,
        })
    }

    pub fn connect(&mut self, site: &str) -> Decision {
        self.connect_with(site, &[])
    }

    pub fn connect_with(&mut self, site: &str, resources: &[(&str, f64)]) -> Decision {
        self.site(
            site,
            SiteReport::Connected {
                resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                running: Vec::new(),
            },
        )
    }

    pub fn timer(&mut self, timer: Timer) -> Decision {
        self.when(Command::TimerFired(timer))
    }

    /// Fires every deadline that is due at `now`, until none is.
    pub fn fire_due_timers(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match fedrun::lifecycle::next_deadline(&self.state, &self.settings) {
                Some((at, timer)) if at <= self.now => out.push(self.timer(timer)),
                _ => return out,
            }
        }
        panic!("timers keep firing without progress");
    }

    /// Moves the clock to the next deadline and fires it.
    pub fn run_to_next_deadline(&mut self) -> Option<(Timer, Decision)> {
        let (at, timer) = fedrun::lifecycle::next_deadline(&self.state, &self.settings)?;
        if at > self.now {
            self.now = at;
        }
        let decision = self.timer(timer.clone());
        Some((timer, decision))
    }

    /// Answers every pending resource check with a reservation.
    pub fn reserve_all(&mut self, effects: &[Effect]) -> Vec<Decision> {
        let asks: Vec<(String, u64, JobId)> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::CheckResources {
                    site,
                    try_id,
                    job_id,
                    ..
                } => Some((site.clone(), *try_id, *job_id)),
                _ => None,
            })
            .collect();
        asks.into_iter()
            .map(|(site, try_id, job_id)| {
                self.site(
                    &site,
                    SiteReport::ResourceAnswer {
                        try_id,
                        job_id,
                        answer: Ok(format!("token-{site}-{try_id}")),
                    },
                )
            })
            .collect()
    }

    pub fn job(&self, job_id: JobId) -> &Job {
        self.state.jobs.get(&job_id).expect("job exists")
    }

    pub fn status(&self, job_id: JobId) -> RunStatus {
        self.job(job_id).status
    }

    /// Connects the sites, submits a job for them, and answers the resource check:
    /// the job ends `DISPATCHED`, waiting for the server deploy.
    pub fn dispatched(&mut self, sites: &[&str], min_clients: u32) -> JobId {
        for site in sites {
            if !self.state.sites.get(*site).is_some_and(|s| s.connected) {
                self.connect(site);
            }
        }
        let job_id = self.submit(meta(sites, min_clients));
        let effects = self.last_try_effects(job_id);
        self.reserve_all(&effects);
        assert_eq!(self.status(job_id), RunStatus::Dispatched);
        job_id
    }

    /// The resource checks asked for the job's try in flight.
    pub fn last_try_effects(&self, job_id: JobId) -> Vec<Effect> {
        let t = self
            .state
            .schedule_try
            .as_ref()
            .expect("a try is in flight");
        assert_eq!(t.job_id, job_id);
        t.asked
            .iter()
            .map(|r| Effect::CheckResources {
                site: r.site.clone(),
                try_id: t.try_id,
                job_id,
                resources: r.resources.clone(),
            })
            .collect()
    }

    /// Takes a dispatched job through deploy, all OK, and starts the server app: the job
    /// waits for the sites' start answers.
    pub fn starting(&mut self, sites: &[&str], min_clients: u32) -> JobId {
        let job_id = self.dispatched(sites, min_clients);
        self.when(Command::ServerDeployFinished {
            job_id,
            result: Ok(()),
        });
        for site in sites {
            self.site(
                site,
                SiteReport::DeployAnswer {
                    job_id,
                    result: Ok(()),
                },
            );
        }
        self.when(Command::ServerAppStarted {
            job_id,
            result: Ok(()),
        });
        job_id
    }

    /// Takes a dispatched job through deploy and start, all OK: the job ends `RUNNING`.
    pub fn running(&mut self, sites: &[&str], min_clients: u32) -> JobId {
        let job_id = self.starting(sites, min_clients);
        for site in sites {
            self.site(
                site,
                SiteReport::StartAnswer {
                    job_id,
                    result: Ok(()),
                },
            );
        }
        assert_eq!(self.status(job_id), RunStatus::Running);
        job_id
    }

    /// A site reports its app's exit. Like a real site, it says the exit followed a stop
    /// request when fedrun was stopping the run (the site was sent the stop).
    pub fn site_exit(
        &mut self,
        site: &str,
        job_id: JobId,
        report: &str,
        outcome: ExitOutcome,
    ) -> Decision {
        let stop_requested = self.state.job(&job_id).is_some_and(|j| j.run.stopping());
        self.site_exit_flagged(site, job_id, report, outcome, stop_requested)
    }

    /// A site reports its app's exit, saying whether it followed a stop request.
    pub fn site_exit_flagged(
        &mut self,
        site: &str,
        job_id: JobId,
        report: &str,
        outcome: ExitOutcome,
        stop_requested: bool,
    ) -> Decision {
        self.site(
            site,
            SiteReport::AppExited {
                job_id,
                report_id: report.to_string(),
                outcome,
                stop_requested,
            },
        )
    }

    /// Runs one job on every one of `sites` to `FINISHED:COMPLETED` (exit code 0 at the
    /// server and at each site, report ids `<site>-<n>`) with its workspace archived under
    /// an archive hash made from `n`. Returns the job's id.
    pub fn finished_on(&mut self, sites: &[&str], n: u64) -> JobId {
        let job_id = self.running(sites, sites.len() as u32);
        self.server_exit(job_id, ExitOutcome::Code(0));
        for site in sites {
            self.site_exit(site, job_id, &format!("{site}-{n}"), ExitOutcome::Code(0));
        }
        let mut archive = [0u8; 32];
        archive[..8].copy_from_slice(&n.to_le_bytes());
        archive[8] = 0xA5;
        self.when(Command::ArchiveFinished {
            job_id,
            result: Ok(BlobHash(archive)),
        });
        assert_eq!(self.status(job_id), RunStatus::Completed);
        job_id
    }

    pub fn server_exit(&mut self, job_id: JobId, outcome: ExitOutcome) -> Decision {
        self.when(Command::ServerAppExited { job_id, outcome })
    }

    pub fn restart(&mut self, n: u128) -> Decision {
        self.when(Command::StartServer {
            boot_id: BootId(uuid::Uuid::from_u128(n)),
        })
    }
}

/// The event type names of a decision, in order.
pub fn kinds(decision: &Decision) -> Vec<&'static str> {
    decision.events.iter().map(|e| e.kind.name()).collect()
}

/// Whether the effects start archiving a workspace.
pub fn archives(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::ArchiveWorkspace { .. }))
}

/// The terminal status a decision recorded, if any.
pub fn finished(decision: &Decision) -> Option<(RunStatus, String)> {
    decision.events.iter().find_map(|e| match &e.kind {
        EventKind::JobFinished { status, reason, .. } => Some((*status, reason.clone())),
        _ => None,
    })
}
