//! Property test: random command sequences, with restarts, against a reference model that
//! has its own table of allowed status moves (written here, not taken from the code under
//! test). After every step: no illegal move, terminal statuses absorbing, the live state
//! equals a replay of the MessagePack round-tripped events, a snapshot (serialized state)
//! plus the tail equals the full replay, at most `max_jobs` jobs count against the limit,
//! and the restart decision is the same every time it is made on the same history.

mod lifecycle_support;

use fedrun::lifecycle::SubmitSignature;
use std::collections::BTreeMap;

use fedrun::job::JobId;
use fedrun::lifecycle::state::StartStep;
use fedrun::lifecycle::{
    AdminRequest, BlobHash, Command, Event, EventKind, Origin, State, Timer, Timestamp,
};
use fedrun::settings::Settings;
use fedrun::site::protocol::{ExitOutcome, SiteReport};
use lifecycle_support::*;
use proptest::prelude::*;

const SITES: [&str; 3] = ["site-1", "site-2", "site-3"];
const OUTCOMES: [ExitOutcome; 8] = [
    ExitOutcome::Code(0),
    ExitOutcome::Code(1),
    ExitOutcome::Code(101),
    ExitOutcome::Code(103),
    ExitOutcome::Code(104),
    ExitOutcome::Code(9),
    ExitOutcome::Signal(9),
    ExitOutcome::Code(2),
];

/// The reference model's table: (from, to) status strings that SPEC section 2 allows.
/// `""` is "no job yet".
const ALLOWED: &[(&str, &str)] = &[
    ("", "SUBMITTED"),
    ("SUBMITTED", "DISPATCHED"),
    ("SUBMITTED", "FINISHED:CAN_NOT_SCHEDULE"),
    ("SUBMITTED", "FINISHED:ABORTED"),
    ("DISPATCHED", "RUNNING"),
    ("DISPATCHED", "FINISHED:FAILED_TO_RUN"),
    ("DISPATCHED", "FINISHED:ABORTED"),
    ("DISPATCHED", "FINISHED:ABANDONED"),
    ("RUNNING", "FINISHED:COMPLETED"),
    ("RUNNING", "FINISHED:EXECUTION_EXCEPTION"),
    ("RUNNING", "FINISHED:ABNORMAL"),
    ("RUNNING", "FINISHED:ABORTED"),
    ("RUNNING", "FINISHED:ABANDONED"),
    ("RUNNING", "RUNNING"),
];

#[derive(Clone, Debug)]
enum Op {
    Submit {
        sites: u8,
        min_clients: u32,
    },
    Connect(usize),
    Disconnect(usize),
    Abort(usize),
    Delete(usize),
    Clone(usize),
    Download(usize),
    AnswerResources {
        site: usize,
        ok: bool,
    },
    ServerDeploy {
        job: usize,
        ok: bool,
    },
    SiteDeploy {
        job: usize,
        site: usize,
        ok: bool,
    },
    ServerStart {
        job: usize,
        ok: bool,
    },
    SiteStart {
        job: usize,
        site: usize,
        ok: bool,
    },
    ServerExit {
        job: usize,
        outcome: usize,
    },
    SiteExit {
        job: usize,
        site: usize,
        outcome: usize,
        report: u8,
    },
    ArchiveDone {
        job: usize,
        ok: bool,
    },
    Advance {
        ms: i64,
    },
    Restart,
    Reattach(usize),
    RepeatLastRequest,
    /// Moves some job one step along its happy path (or fails that step).
    Progress {
        job: usize,
        ok: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..8, 1u32..3).prop_map(|(sites, min_clients)| Op::Submit { sites, min_clients }),
        3 => (0usize..3).prop_map(Op::Connect),
        1 => (0usize..3).prop_map(Op::Disconnect),
        1 => any::<usize>().prop_map(Op::Abort),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => any::<usize>().prop_map(Op::Clone),
        1 => any::<usize>().prop_map(Op::Download),
        4 => (0usize..3, prop::bool::weighted(0.8)).prop_map(|(site, ok)| Op::AnswerResources { site, ok }),
        3 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(job, ok)| Op::ServerDeploy { job, ok }),
        4 => (any::<usize>(), 0usize..3, prop::bool::weighted(0.85)).prop_map(|(job, site, ok)| Op::SiteDeploy { job, site, ok }),
        3 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(job, ok)| Op::ServerStart { job, ok }),
        4 => (any::<usize>(), 0usize..3, prop::bool::weighted(0.85)).prop_map(|(job, site, ok)| Op::SiteStart { job, site, ok }),
        3 => (any::<usize>(), 0usize..8).prop_map(|(job, outcome)| Op::ServerExit { job, outcome }),
        4 => (any::<usize>(), 0usize..3, 0usize..8, 0u8..3).prop_map(|(job, site, outcome, report)| Op::SiteExit { job, site, outcome, report }),
        2 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(job, ok)| Op::ArchiveDone { job, ok }),
        4 => prop_oneof![Just(1_000i64), Just(11_000), Just(31_000), Just(65_000), Just(16 * 60_000)].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
        2 => any::<usize>().prop_map(Op::Reattach),
        1 => Just(Op::RepeatLastRequest),
        12 => (any::<usize>(), prop::bool::weighted(0.93)).prop_map(|(job, ok)| Op::Progress { job, ok }),
    ]
}

struct Harness {
    world: World,
    jobs: Vec<JobId>,
    model: BTreeMap<JobId, String>,
    replayed: State,
    deleted: std::collections::BTreeSet<JobId>,
    /// Reservations the sites hold: (job, site, token).
    reserved: std::collections::BTreeSet<(JobId, String, String)>,
    boots: u128,
    last_request: Option<Command>,
}

impl Harness {
    fn job(&self, index: usize) -> Option<JobId> {
        (!self.jobs.is_empty()).then(|| self.jobs[index % self.jobs.len()])
    }

    /// A job for which the input matters now, when there is one (three times in four);
    /// otherwise any job, so stale and misplaced inputs are exercised too.
    fn job_where(
        &self,
        index: usize,
        relevant: impl Fn(&fedrun::lifecycle::Job) -> bool,
    ) -> Option<JobId> {
        let candidates: Vec<JobId> = self
            .jobs
            .iter()
            .copied()
            .filter(|j| relevant(&self.world.state.jobs[j]))
            .collect();
        if candidates.is_empty() || index % 4 == 3 {
            return self.job(index);
        }
        Some(candidates[(index / 4) % candidates.len()])
    }

    /// A site of the job's run when `index` says so, else the given one.
    fn site_of(&self, job_id: JobId, index: usize) -> String {
        let sites = &self.world.state.jobs[&job_id].run.sites;
        if sites.is_empty() {
            SITES[index % 3].to_string()
        } else {
            sites[index % sites.len()].clone()
        }
    }

    fn command(&mut self, op: &Op) -> Vec<Command> {
        let admin = |request: AdminRequest, n: usize| Command::Admin {
            origin: Origin {
                identity: boss(),
                request_id: Some(format!("req-{n}")),
            },
            request,
        };
        let n = self.world.log.len();
        let site = |i: usize| SITES[i].to_string();
        let mut out = Vec::new();
        match op.clone() {
            Op::Submit { sites, min_clients } => {
                let chosen: Vec<&str> = SITES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| sites & (1 << i) != 0)
                    .map(|(_, s)| *s)
                    .collect();
                let min_clients = min_clients.min(chosen.len() as u32).max(1);
                out.push(admin(
                    AdminRequest::SubmitJob {
                        meta: meta(&chosen, min_clients),
                        package: BlobHash([1; 32]),
                        signature: SubmitSignature::NoSigner,
                    },
                    n,
                ));
            }
            Op::Connect(i) => out.push(Command::Site {
                site: site(i),
                report: SiteReport::Connected {
                    resources: BTreeMap::new(),
                    running: self
                        .jobs
                        .iter()
                        .copied()
                        .filter(|j| self.world.state.jobs[j].run.job_clients.contains(&site(i)))
                        .collect(),
                },
            }),
            Op::Disconnect(i) => out.push(Command::Site {
                site: site(i),
                report: SiteReport::Disconnected,
            }),
            Op::Abort(j) => out.extend(
                self.job(j)
                    .map(|job_id| admin(AdminRequest::AbortJob { job_id }, n)),
            ),
            Op::Delete(j) => out.extend(
                self.job(j)
                    .map(|job_id| admin(AdminRequest::DeleteJob { job_id }, n)),
            ),
            Op::Clone(j) => out.extend(
                self.job(j)
                    .map(|job_id| admin(AdminRequest::CloneJob { job_id }, n)),
            ),
            Op::Download(j) => out.extend(
                self.job(j)
                    .map(|job_id| admin(AdminRequest::DownloadJob { job_id }, n)),
            ),
            Op::AnswerResources { site: i, ok } => {
                if let Some(t) = &self.world.state.schedule_try {
                    let asked = t.asked[i % t.asked.len().max(1)..]
                        .first()
                        .map(|r| r.site.clone())
                        .unwrap_or_else(|| site(i));
                    out.push(Command::Site {
                        site: asked,
                        report: SiteReport::ResourceAnswer {
                            try_id: t.try_id,
                            job_id: t.job_id,
                            answer: if ok {
                                Ok(format!("tok-{n}"))
                            } else {
                                Err("busy".into())
                            },
                        },
                    });
                }
            }
            Op::ServerDeploy { job, ok } => out.extend(
                self.job_where(job, |j| {
                    matches!(j.run.step, Some((StartStep::DeployingServer, _)))
                })
                .map(|job_id| Command::ServerDeployFinished {
                    job_id,
                    result: if ok { Ok(()) } else { Err("bad".into()) },
                }),
            ),
            Op::SiteDeploy { job, site: i, ok } => {
                if let Some(job_id) = self.job_where(job, |j| {
                    matches!(j.run.step, Some((StartStep::DeployingSites, _)))
                }) {
                    out.push(Command::Site {
                        site: self.site_of(job_id, i),
                        report: SiteReport::DeployAnswer {
                            job_id,
                            result: if ok { Ok(()) } else { Err("bad".into()) },
                        },
                    });
                }
            }
            Op::ServerStart { job, ok } => out.extend(
                self.job_where(job, |j| {
                    matches!(j.run.step, Some((StartStep::StartingServer, _)))
                })
                .map(|job_id| Command::ServerAppStarted {
                    job_id,
                    result: if ok { Ok(()) } else { Err("bad".into()) },
                }),
            ),
            Op::SiteStart { job, site: i, ok } => {
                if let Some(job_id) = self.job_where(job, |j| {
                    matches!(j.run.step, Some((StartStep::StartingSites, _)))
                }) {
                    out.push(Command::Site {
                        site: self.site_of(job_id, i),
                        report: SiteReport::StartAnswer {
                            job_id,
                            result: if ok { Ok(()) } else { Err("bad".into()) },
                        },
                    });
                }
            }
            Op::ServerExit { job, outcome } => out.extend(
                self.job_where(job, |j| j.run.server_outstanding())
                    .map(|job_id| Command::ServerAppExited {
                        job_id,
                        outcome: OUTCOMES[outcome],
                    }),
            ),
            Op::SiteExit {
                job,
                site: i,
                outcome,
                report,
            } => {
                if let Some(job_id) = self.job_where(job, |j| j.run.any_site_outstanding()) {
                    let site = self.site_of(job_id, i);
                    out.push(Command::Site {
                        report: SiteReport::AppExited {
                            job_id,
                            report_id: format!("{site}-{report}"),
                            outcome: OUTCOMES[outcome],
                            stop_requested: self
                                .world
                                .state
                                .job(&job_id)
                                .is_some_and(|j| j.run.stopping()),
                        },
                        site,
                    });
                }
            }
            Op::ArchiveDone { job, ok } => out.extend(
                self.job_where(job, |j| {
                    matches!(
                        j.archive,
                        fedrun::lifecycle::Archive::Pending {
                            in_flight: true,
                            ..
                        }
                    )
                })
                .map(|job_id| Command::ArchiveFinished {
                    job_id,
                    result: if ok {
                        Ok(BlobHash([n as u8; 32]))
                    } else {
                        Err("zip failed".into())
                    },
                }),
            ),
            Op::Advance { ms } => {
                self.world.advance_ms(ms);
                let mut guard = 0;
                while let Some((at, timer)) =
                    fedrun::lifecycle::next_deadline(&self.world.state, &self.world.settings)
                {
                    if at > self.world.now || guard > 200 {
                        break;
                    }
                    guard += 1;
                    self.step(Command::TimerFired(timer));
                }
            }
            Op::Restart => {
                self.boots += 1;
                out.push(Command::StartServer {
                    boot_id: fedrun::lifecycle::BootId(uuid::Uuid::from_u128(self.boots)),
                });
            }
            Op::Reattach(j) => {
                out.extend(self.job(j).map(|job_id| Command::RunReattached { job_id }))
            }
            Op::RepeatLastRequest => out.extend(self.last_request.clone()),
            Op::Progress { job, ok } => out.extend(self.progress(job, ok, n)),
        }
        out
    }

    /// The next happy-path input for some job: resource answer, deploy, start, exit.
    fn progress(&self, index: usize, ok: bool, n: usize) -> Option<Command> {
        let state = &self.world.state;
        let result = || {
            if ok {
                Ok(())
            } else {
                Err("failed".to_string())
            }
        };
        if let Some(t) = &state.schedule_try {
            if index.is_multiple_of(3) {
                let site = t
                    .asked
                    .iter()
                    .find(|r| !t.answers.contains_key(&r.site))?
                    .site
                    .clone();
                return Some(Command::Site {
                    site,
                    report: SiteReport::ResourceAnswer {
                        try_id: t.try_id,
                        job_id: t.job_id,
                        answer: if ok {
                            Ok(format!("tok-{n}"))
                        } else {
                            Err("busy".into())
                        },
                    },
                });
            }
        }
        let job_id = self.job_where(index, |j| {
            j.status == fedrun::lifecycle::RunStatus::Dispatched
                || j.status == fedrun::lifecycle::RunStatus::Running
        })?;
        let job = &state.jobs[&job_id];
        let run = &job.run;
        match run.step.map(|(s, _)| s) {
            Some(StartStep::DeployingServer) => Some(Command::ServerDeployFinished {
                job_id,
                result: result(),
            }),
            Some(StartStep::DeployingSites) => {
                let site = run
                    .sites
                    .iter()
                    .find(|s| !run.deploy.contains_key(s.as_str()))?
                    .clone();
                Some(Command::Site {
                    site,
                    report: SiteReport::DeployAnswer {
                        job_id,
                        result: result(),
                    },
                })
            }
            Some(StartStep::StartingServer) => Some(Command::ServerAppStarted {
                job_id,
                result: result(),
            }),
            Some(StartStep::StartingSites) => {
                let site = run
                    .sites
                    .iter()
                    .find(|s| {
                        run.deploy.get(s.as_str()).is_some_and(|r| r.is_ok())
                            && !run.start.contains_key(s.as_str())
                    })?
                    .clone();
                Some(Command::Site {
                    site,
                    report: SiteReport::StartAnswer {
                        job_id,
                        result: result(),
                    },
                })
            }
            None => {
                let outcome = if ok {
                    ExitOutcome::Code(0)
                } else {
                    OUTCOMES[index % OUTCOMES.len()]
                };
                match run.outstanding_sites().next() {
                    Some(site) if index.is_multiple_of(2) || !run.server_outstanding() => {
                        Some(Command::Site {
                            site: site.to_string(),
                            report: SiteReport::AppExited {
                                job_id,
                                report_id: format!("{site}-p{n}"),
                                outcome,
                                stop_requested: run.stopping(),
                            },
                        })
                    }
                    _ => Some(Command::ServerAppExited { job_id, outcome }),
                }
            }
        }
    }

    /// Decides, applies, and checks one command.
    fn step(&mut self, command: Command) {
        if matches!(command, Command::Admin { .. }) {
            self.last_request = Some(command.clone());
        }
        let recovering_now = matches!(command, Command::TimerFired(Timer::ReattachGraceOver));
        if recovering_now {
            // The restart decision is the same every time it is made on the same history.
            let again = fedrun::lifecycle::decide(
                &self.replayed,
                &self.world.settings,
                command.clone(),
                self.world.now,
                &mut CountingIds(self.world.ids.0),
            )
            .expect("decides");
            let first = self.world.try_decide(command.clone()).expect("decides");
            assert_eq!(first, again, "recovery is deterministic");
        }
        let decision = self.world.when(command);
        for event in &decision.events {
            self.check_model(event);
            // Replay from the record bytes, as start-up does.
            let bytes = rmp_serde::to_vec_named(event).expect("encodes");
            assert!(bytes.len() <= fedrun::lifecycle::event::MAX_EVENT_BYTES);
            let decoded: Event = rmp_serde::from_slice(&bytes).expect("decodes");
            assert_eq!(&decoded, event);
            self.replayed
                .apply_checked(&decoded)
                .expect("replay accepts what decide made");
            // Every index the fold keeps answers what a scan of every job answers.
            if let Err(err) =
                fedrun::lifecycle::check::verify_index(&self.replayed, &self.world.settings)
            {
                panic!("after event {} ({}): {err}", event.seq, event.kind.name());
            }
            self.track_reservation(event);
        }
        // No reservation is left held for a job that is neither being tried nor dispatched.
        for effect in &decision.effects {
            if let fedrun::lifecycle::Effect::CancelReservation {
                site,
                job_id,
                token,
            } = effect
            {
                self.reserved
                    .remove(&(*job_id, site.clone(), token.clone()));
            }
        }
        for (job_id, site, token) in &self.reserved {
            let status = self.model.get(job_id).map(String::as_str);
            let in_try = self
                .world
                .state
                .schedule_try
                .as_ref()
                .is_some_and(|t| &t.job_id == job_id);
            assert!(
                in_try || status == Some("DISPATCHED"),
                "reservation {token} at {site} leaked: job {job_id} is {status:?}"
            );
        }
        assert_eq!(self.replayed, self.world.state, "replay equals live state");
        // A site that comes back with an app of a stopped run makes that run hold a slot
        // again (SPEC 8), which may exceed max_jobs for a while: the slot was rightly
        // given away. What the scheduler started, and runs being stopped, never exceed it.
        let started = self
            .world
            .state
            .jobs
            .values()
            .filter(|j| {
                matches!(
                    j.status,
                    fedrun::lifecycle::RunStatus::Dispatched
                        | fedrun::lifecycle::RunStatus::Running
                ) || j.run.phase == fedrun::lifecycle::RunPhase::Stopping
            })
            .count();
        assert!(started <= self.world.settings.max_jobs as usize);
        for (job_id, status) in &self.model {
            let job = &self.world.state.jobs[job_id];
            assert_eq!(&job.status.to_string(), status);
            // The attempt limit is the only way to CAN_NOT_SCHEDULE, and counters never pass it.
            assert!(job.schedule_count <= self.world.settings.max_schedule_count);
            if status == "FINISHED:CAN_NOT_SCHEDULE" {
                assert_eq!(job.schedule_count, self.world.settings.max_schedule_count);
            }
            // Only a terminal job is deleted, and a deleted job stays deleted.
            if job.deleted {
                assert!(status.starts_with("FINISHED:"));
            }
            assert!(
                !self.deleted.contains(job_id) || job.deleted,
                "a deleted job stays deleted"
            );
        }
        self.deleted.extend(
            self.world
                .state
                .jobs
                .values()
                .filter(|j| j.deleted)
                .map(|j| j.id),
        );
        // At most one schedule try is in flight, and it is for a queued job.
        if let Some(t) = &self.world.state.schedule_try {
            assert_eq!(
                self.model.get(&t.job_id).map(String::as_str),
                Some("SUBMITTED")
            );
        }
    }

    fn track_reservation(&mut self, event: &Event) {
        match &event.kind {
            EventKind::ResourceAnswered {
                job_id,
                site,
                answer: fedrun::lifecycle::ResourceAnswer::Reserved(token),
                ..
            } => {
                self.reserved.insert((*job_id, site.clone(), token.clone()));
            }
            EventKind::RunStarted {
                job_id,
                job_clients,
            } => {
                self.reserved
                    .retain(|(j, site, _)| j != job_id || !job_clients.contains(site));
            }
            EventKind::ServerStarted { .. } => {
                // The try in flight died with the old server; the sites let it lapse.
                let model = &self.model;
                self.reserved
                    .retain(|(j, _, _)| model.get(j).map(String::as_str) != Some("SUBMITTED"));
            }
            _ => {}
        }
    }

    fn check_model(&mut self, event: &Event) {
        let moved_to: Option<(JobId, String)> = match &event.kind {
            EventKind::JobSubmitted { job_id, .. } => {
                self.jobs.push(*job_id);
                Some((*job_id, "SUBMITTED".into()))
            }
            EventKind::JobDispatched { job_id, .. } => Some((*job_id, "DISPATCHED".into())),
            EventKind::RunStarted { job_id, .. } | EventKind::RunRestored { job_id } => {
                Some((*job_id, "RUNNING".into()))
            }
            EventKind::JobFinished { job_id, status, .. } => Some((*job_id, status.to_string())),
            _ => None,
        };
        if let Some((job_id, to)) = moved_to {
            let from = self.model.get(&job_id).cloned().unwrap_or_default();
            assert!(
                ALLOWED.contains(&(from.as_str(), to.as_str())),
                "illegal move {from:?} -> {to:?} at event {}",
                event.seq
            );
            if to == "FINISHED:ABANDONED" || matches!(event.kind, EventKind::RunRestored { .. }) {
                assert_eq!(
                    event.actor,
                    fedrun::lifecycle::Actor::Recovery,
                    "only recovery abandons or restores"
                );
            }
            self.model.insert(job_id, to);
        }
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES raises it for a longer local run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..120), max_jobs in 1u32..4, snapshot_at in 0usize..120) {
        let settings = Settings { max_jobs, max_schedule_count: 4, ..Settings::default() };
        let mut h = Harness {
            world: World::new(settings),
            jobs: Vec::new(),
            model: BTreeMap::new(),
            replayed: State::new(),
            deleted: Default::default(),
            reserved: Default::default(),
            boots: 0,
            last_request: None,
        };
        // Every site starts connected, so runs get far; later ops take them away.
        for site in SITES {
            h.step(Command::Site { site: site.to_string(), report: SiteReport::Connected { resources: BTreeMap::new(), running: Vec::new() } });
        }
        let mut snapshot: Option<(Vec<u8>, usize)> = None;
        let mut encoder = fedrun::history::snapshot::StateEncoder::default();
        for (i, op) in ops.iter().enumerate() {
            for command in h.command(op) {
                h.step(command);
            }
            // The encoder that copies the bytes of jobs unchanged since its last encoding
            // writes, after every step, what a fresh encoding of the whole state writes.
            let reused = encoder.encode(&h.world.state).expect("state encodes");
            let fresh = fedrun::history::snapshot::encode_state(&h.world.state).expect("state encodes");
            prop_assert!(reused == fresh, "the encoder's bytes differ from a fresh encoding after op {}", i);
            if i == snapshot_at {
                let bytes = rmp_serde::to_vec_named(&h.world.state).expect("state encodes");
                snapshot = Some((bytes, h.world.log.len()));
            }
        }
        // Full replay from nothing equals the live state.
        let mut full = State::new();
        for e in &h.world.log {
            full.apply_checked(e).expect("full replay");
        }
        prop_assert_eq!(&full, &h.world.state);
        // A history's replay from nothing, which builds the index once at its end
        // instead of keeping it in step with every record, gives the same state and the
        // same index as the live one, and an index true of its jobs.
        if !h.world.log.is_empty() {
            let mut history = fedrun::history::events::EventHistory::in_memory(
                fedrun::history::MemoryStorage::new(),
            )
            .expect("an empty history opens");
            history.append_batch(&h.world.log).expect("the log appends");
            let replayed = history.replay(State::new()).expect("the history replays");
            prop_assert_eq!(&replayed, &h.world.state);
            prop_assert_eq!(replayed.index(), h.world.state.index());
            prop_assert_eq!(fedrun::lifecycle::check::verify_index(&replayed, &h.world.settings), Ok(()));
        }
        // The state read from its snapshot bytes on two threads (as start-up reads a
        // large one; here from the first job on) is the live state, index included.
        let bytes = fedrun::history::snapshot::encode_state(&h.world.state).expect("state encodes");
        let parallel = fedrun::history::snapshot::decode_state_parallel(&bytes, 0).expect("state decodes");
        prop_assert_eq!(&parallel, &h.world.state);
        prop_assert_eq!(parallel.index(), h.world.state.index());
        prop_assert_eq!(fedrun::lifecycle::check::verify_index(&parallel, &h.world.settings), Ok(()));
        // Snapshot plus tail equals full replay.
        if let Some((bytes, covered)) = snapshot {
            let mut from_snapshot: State = rmp_serde::from_slice(&bytes).expect("state decodes");
            // Loading rebuilds the index the snapshot does not store.
            prop_assert_eq!(
                fedrun::lifecycle::check::verify_index(&from_snapshot, &h.world.settings),
                Ok(())
            );
            for e in &h.world.log[covered..] {
                from_snapshot.apply_checked(e).expect("tail replays");
            }
            prop_assert_eq!(&from_snapshot, &full);
        }
        prop_assert!(h.world.now >= Timestamp::from_millis(T0));
    }
}
