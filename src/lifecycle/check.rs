//! A self-checking driver of `decide` and `apply` for fuzzing: bytes in, commands out, and
//! every invariant of the core checked after each step. The fuzz target `decide_apply`
//! and a normal test replaying its corpus both call [`check_decide_apply`].
//!
//! Unlike the rest of the core, this module panics on purpose: a panic is how it reports
//! a broken invariant to the fuzzer.

use crate::lifecycle::command::SubmitSignature;
use std::collections::BTreeMap;

use crate::job::meta::{AppTargets, JobMeta};
use crate::job::JobId;
use crate::lifecycle::actor::{Identity, Role};
use crate::lifecycle::command::{AdminRequest, Command, Origin, Timer};
use crate::lifecycle::decide::{decide_and_apply, IdSource};
use crate::lifecycle::event::{BlobHash, BootId, Event, EventKind, MAX_EVENT_BYTES};
use crate::lifecycle::participant::{ExitOutcome, SiteReport};
use crate::lifecycle::state::State;
use crate::lifecycle::status::RunStatus;
use crate::lifecycle::time::Timestamp;
use crate::settings::Settings;

/// Reads small numbers and strings from the fuzzer's bytes; zeros once they run out.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> &'s T {
        &items[usize::from(self.byte()) % items.len()]
    }

    fn text(&mut self) -> String {
        let len = usize::from(self.byte() % 12);
        let raw: Vec<u8> = (0..len).map(|_| self.byte()).collect();
        String::from_utf8_lossy(&raw).into_owned()
    }
}

struct CountingIds(u128);

impl IdSource for CountingIds {
    fn new_job_id(&mut self) -> JobId {
        self.0 += 1;
        JobId(uuid::Uuid::from_u128(self.0))
    }
}

const SITES: [&str; 4] = ["site-1", "site-2", "site-3", "server"];
const ROLES: [Role; 4] = [Role::ProjectAdmin, Role::OrgAdmin, Role::Lead, Role::Member];

fn next_command(bytes: &mut Bytes<'_>, state: &State, jobs: &[JobId]) -> (Command, i64) {
    let job = |bytes: &mut Bytes<'_>| -> JobId {
        if jobs.is_empty() || bytes.byte() == 255 {
            JobId(uuid::Uuid::from_u128(u128::from(bytes.byte())))
        } else {
            jobs[usize::from(bytes.byte()) % jobs.len()]
        }
    };
    let site = |bytes: &mut Bytes<'_>| -> String {
        if bytes.byte() == 255 {
            bytes.text()
        } else {
            bytes.pick(&SITES).to_string()
        }
    };
    let outcome = |bytes: &mut Bytes<'_>| -> ExitOutcome {
        let code = i32::from(*bytes.pick(&[0u8, 1, 9, 101, 102, 103, 104, 2, 137]));
        if bytes.byte().is_multiple_of(5) {
            ExitOutcome::Signal(code)
        } else {
            ExitOutcome::Code(code)
        }
    };
    let result = |bytes: &mut Bytes<'_>| -> Result<(), String> {
        if bytes.byte().is_multiple_of(4) {
            Err(bytes.text())
        } else {
            Ok(())
        }
    };
    let advance_ms = i64::from(bytes.byte()) * 997;
    let command = match bytes.byte() % 16 {
        0 | 1 => {
            let listed: Vec<String> = SITES[..3]
                .iter()
                .filter(|_| bytes.byte().is_multiple_of(2))
                .map(|s| s.to_string())
                .collect();
            let all = bytes.byte().is_multiple_of(5);
            let mut targets = vec!["server".to_string()];
            targets.extend(listed.iter().cloned());
            let meta = JobMeta {
                name: bytes.text(),
                deploy_map: vec![AppTargets {
                    app: "app".into(),
                    targets: if all { vec!["@ALL".into()] } else { targets },
                }],
                min_clients: u32::from(bytes.byte() % 3),
                mandatory_clients: if bytes.byte().is_multiple_of(4) {
                    vec![site(bytes)]
                } else {
                    Vec::new()
                },
                resource_spec: Default::default(),
            };
            Command::Admin {
                origin: origin(bytes),
                request: AdminRequest::SubmitJob {
                    meta,
                    package: BlobHash([bytes.byte(); 32]),
                    signature: if bytes.byte().is_multiple_of(7) {
                        SubmitSignature::Refused(bytes.text())
                    } else {
                        SubmitSignature::NoSigner
                    },
                },
            }
        }
        2 => Command::Admin {
            origin: origin(bytes),
            request: match bytes.byte() % 5 {
                0 => AdminRequest::AbortJob { job_id: job(bytes) },
                1 => AdminRequest::DeleteJob { job_id: job(bytes) },
                2 => AdminRequest::CloneJob { job_id: job(bytes) },
                3 => AdminRequest::ReadLogs {
                    job_id: job(bytes),
                    site: if bytes.byte().is_multiple_of(2) {
                        None
                    } else {
                        Some(site(bytes))
                    },
                },
                _ => AdminRequest::DownloadJob { job_id: job(bytes) },
            },
        },
        3 => Command::Site {
            site: site(bytes),
            report: SiteReport::Connected {
                resources: BTreeMap::from([("num_of_gpus".to_string(), f64::from(bytes.byte()))]),
                running: vec![job(bytes)],
            },
        },
        4 => Command::Site {
            site: site(bytes),
            report: SiteReport::Disconnected,
        },
        5 => {
            let (try_id, job_id) = match &state.schedule_try {
                Some(t) if bytes.byte() != 255 => (t.try_id, t.job_id),
                _ => (u64::from(bytes.byte()), job(bytes)),
            };
            let site = match &state.schedule_try {
                Some(t) if !t.asked.is_empty() && bytes.byte() != 255 => t.asked
                    [usize::from(bytes.byte()) % t.asked.len()]
                .site
                .clone(),
                _ => site(bytes),
            };
            Command::Site {
                site,
                report: SiteReport::ResourceAnswer {
                    try_id,
                    job_id,
                    answer: result(bytes).map(|()| bytes.text()),
                },
            }
        }
        kind @ 6..=8 => {
            // Mostly a site of the job's own run, so deploys, starts and exits land.
            let job_id = job(bytes);
            let run_sites = state
                .job(&job_id)
                .map(|j| j.run.sites.clone())
                .unwrap_or_default();
            let site = if run_sites.is_empty() || bytes.byte() == 255 {
                site(bytes)
            } else {
                run_sites[usize::from(bytes.byte()) % run_sites.len()].clone()
            };
            let report = match kind {
                6 => SiteReport::DeployAnswer {
                    job_id,
                    result: result(bytes),
                },
                7 => SiteReport::StartAnswer {
                    job_id,
                    result: result(bytes),
                },
                _ => SiteReport::AppExited {
                    job_id,
                    report_id: bytes.text(),
                    outcome: outcome(bytes),
                    stop_requested: bytes.byte().is_multiple_of(2),
                },
            };
            Command::Site { site, report }
        }
        9 => Command::ServerDeployFinished {
            job_id: job(bytes),
            result: result(bytes),
        },
        10 => Command::ServerAppStarted {
            job_id: job(bytes),
            result: result(bytes),
        },
        11 => Command::ServerAppExited {
            job_id: job(bytes),
            outcome: outcome(bytes),
        },
        12 => Command::ArchiveFinished {
            job_id: job(bytes),
            result: result(bytes).map(|()| BlobHash([bytes.byte(); 32])),
        },
        13 => Command::StartServer {
            boot_id: BootId(uuid::Uuid::from_u128(u128::from(bytes.byte()) + 1)),
        },
        14 => Command::RunReattached { job_id: job(bytes) },
        _ => Command::TimerFired(match bytes.byte() % 9 {
            0 => Timer::ScheduleDue,
            1 => Timer::ResourceCheckTimedOut {
                try_id: state.schedule_try.as_ref().map_or(0, |t| t.try_id),
            },
            2 => Timer::DeployTimedOut { job_id: job(bytes) },
            3 => Timer::StartTimedOut { job_id: job(bytes) },
            4 => Timer::OutcomeWaitOver { job_id: job(bytes) },
            5 => Timer::SiteReconnectGraceOver {
                job_id: job(bytes),
                site: site(bytes),
            },
            6 => Timer::StopWaitOver { job_id: job(bytes) },
            7 => Timer::ArchiveRetryDue { job_id: job(bytes) },
            _ => Timer::ReattachGraceOver,
        }),
    };
    (command, advance_ms)
}

fn origin(bytes: &mut Bytes<'_>) -> Origin {
    let role = *bytes.pick(&ROLES);
    let request_id = match bytes.byte() % 4 {
        0 => None,
        // Few distinct keys, so repeats happen.
        _ => Some(format!("k{}", bytes.byte() % 8)),
    };
    Origin {
        identity: Identity {
            name: format!("admin-{}", bytes.byte() % 3),
            org: format!("org-{}", bytes.byte() % 2),
            role,
        },
        request_id,
    }
}

/// Drives `decide` and `apply` with commands read from `data`, firing due timers in
/// between, and panics if an invariant breaks: an event `decide` made is illegal for
/// replay, an event does not survive its MessagePack encoding or exceeds the size limit,
/// a terminal status changes, replay differs from the live state, more than `max_jobs`
/// jobs count against the limit, a due deadline is still pending after it fired, or a
/// site's reservation is left held for a job that is neither being tried nor dispatched.
pub fn check_decide_apply(data: &[u8]) {
    let mut bytes = Bytes { data, at: 0 };
    let settings = Settings {
        max_jobs: 1 + u32::from(bytes.byte() % 3),
        max_schedule_count: 1 + u32::from(bytes.byte() % 4),
        resume_runs: bytes.byte().is_multiple_of(2),
        ..Settings::default()
    };
    let mut driver = Driver {
        settings,
        state: State::new(),
        replayed: State::new(),
        ids: CountingIds(0),
        jobs: Vec::new(),
        now: Timestamp::from_millis(946_684_800_000),
        reserved: std::collections::BTreeSet::new(),
    };
    let mut steps = 0;
    while !bytes.done() && steps < 400 {
        steps += 1;
        let (command, advance_ms) = next_command(&mut bytes, &driver.state, &driver.jobs);
        driver.now = driver
            .now
            .plus(std::time::Duration::from_millis(advance_ms.unsigned_abs()));
        // Timers that are due fire before the next input, as the engine does it.
        for _ in 0..64 {
            match crate::lifecycle::next_deadline(&driver.state, &driver.settings) {
                Some((at, timer)) if at <= driver.now => {
                    driver.run(Command::TimerFired(timer.clone()));
                    // A due deadline that fires must move on, or the engine would spin.
                    let again = crate::lifecycle::deadlines(&driver.state, &driver.settings);
                    assert!(
                        !again.contains(&(at, timer.clone())),
                        "deadline {timer:?} at {at} is still pending after it fired"
                    );
                }
                _ => break,
            }
        }
        driver.run(command);
    }
    assert_eq!(
        driver.replayed, driver.state,
        "replay equals the live state"
    );
}

struct Driver {
    settings: Settings,
    state: State,
    replayed: State,
    ids: CountingIds,
    jobs: Vec<JobId>,
    now: Timestamp,
    /// Reservations sites hold: granted by a recorded answer, ended by a cancel effect,
    /// by the run starting at that site, or by the restart that drops the try.
    reserved: std::collections::BTreeSet<(JobId, String, String)>,
}

impl Driver {
    fn run(&mut self, command: Command) {
        // The engine adopts the state `decide` folded its events into; here the events
        // are also folded one by one into the state before, and the two must agree.
        let mut adopted = self.state.clone();
        let decision = decide_and_apply(
            &mut adopted,
            &self.settings,
            command,
            self.now,
            &mut self.ids,
        );
        let Ok(decision) = decision else {
            assert!(adopted == self.state, "a refused command changed the state");
            return;
        };
        for event in &decision.events {
            let before = event
                .kind
                .job_id()
                .and_then(|id| self.state.jobs.get(&id))
                .map(|j| j.status);
            self.state.apply(event);
            if let Err(err) = verify_index(&self.state, &self.settings) {
                panic!("after event {} ({}): {err}", event.seq, event.kind.name());
            }
            check_event(event, before, &mut self.jobs);
            let encoded = rmp_serde::to_vec_named(event).expect("an event always encodes");
            assert!(
                encoded.len() <= MAX_EVENT_BYTES,
                "event {} is {} bytes",
                event.seq,
                encoded.len()
            );
            let decoded: Event = rmp_serde::from_slice(&encoded).expect("an event always decodes");
            assert_eq!(&decoded, event, "event {} survives its encoding", event.seq);
            if let Err(err) = self.replayed.apply_checked(&decoded) {
                panic!("replay refused what decide made: {err}");
            }
            self.track_reservations(event);
        }
        assert!(
            adopted == self.state,
            "the state decide adopted differs from its events folded one by one (last event {})",
            self.state.last_seq
        );
        for effect in &decision.effects {
            if let crate::lifecycle::Effect::CancelReservation {
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
            let job = self.state.job(job_id).expect("a reservation's job exists");
            let in_try = self
                .state
                .schedule_try
                .as_ref()
                .is_some_and(|t| &t.job_id == job_id);
            assert!(
                in_try || job.status == RunStatus::Dispatched,
                "reservation {token} at {site} leaked: job {job_id} is {}",
                job.status
            );
        }
        // A site that comes back with an app of a run already stopped makes that run
        // hold a slot again (SPEC 8), which may briefly exceed max_jobs: the slot it
        // lost was rightly given away. What the scheduler started, and runs being
        // stopped, never exceed it.
        let started = self
            .state
            .jobs
            .values()
            .filter(|j| {
                matches!(j.status, RunStatus::Dispatched | RunStatus::Running)
                    || j.run.phase == crate::lifecycle::RunPhase::Stopping
            })
            .count();
        assert!(started <= self.settings.max_jobs as usize, "max_jobs holds");
    }
}

impl Driver {
    fn track_reservations(&mut self, event: &Event) {
        match &event.kind {
            EventKind::ResourceAnswered {
                job_id,
                site,
                answer: crate::lifecycle::ResourceAnswer::Reserved(token),
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
                // The try in flight died with the old server; its reservations lapse at
                // the sites after `reservation_timeout`.
                let state = &self.state;
                self.reserved.retain(|(j, _, _)| {
                    state
                        .job(j)
                        .is_some_and(|job| job.status != RunStatus::Submitted)
                });
            }
            _ => {}
        }
    }
}

fn check_event(event: &Event, before: Option<RunStatus>, jobs: &mut Vec<JobId>) {
    match &event.kind {
        EventKind::JobSubmitted { job_id, .. } => {
            assert_eq!(before, None, "event {}: a job id is new", event.seq);
            jobs.push(*job_id);
        }
        EventKind::JobFinished { status, .. } => {
            let from = before.expect("a job that finishes exists");
            assert!(
                !from.is_terminal(),
                "event {}: terminal statuses are absorbing",
                event.seq
            );
            assert!(
                from.can_move_to(*status),
                "event {}: {from} -> {status}",
                event.seq
            );
        }
        EventKind::JobDispatched { .. } => assert_eq!(before, Some(RunStatus::Submitted)),
        EventKind::RunStarted { .. } => assert_eq!(before, Some(RunStatus::Dispatched)),
        EventKind::RunRestored { .. } => assert_eq!(before, Some(RunStatus::Running)),
        _ => {}
    }
}

/// Checks every derived fact the fold keeps ([`crate::lifecycle::state::LiveIndex`],
/// each run's stop candidates) against the same answer computed from scratch, by the
/// scans the state used before it had the index: next deadline and every deadline,
/// `max_jobs` count, settled, blob in use, next due pass, and each run's stop
/// candidates against its exits. The error names the first difference.
pub fn verify_index(state: &State, settings: &Settings) -> Result<(), String> {
    use crate::lifecycle::state::{Archive, Job, RunPhase};
    let scanned = crate::lifecycle::timers::deadlines_by_scan(state, settings);
    let indexed = crate::lifecycle::deadlines(state, settings);
    if indexed != scanned {
        return Err(format!(
            "deadlines {indexed:?} differ from a scan of every job {scanned:?}"
        ));
    }
    let next = crate::lifecycle::next_deadline(state, settings);
    if next.as_ref() != scanned.first() {
        return Err(format!(
            "next deadline {next:?} is not the scan's first {:?}",
            scanned.first()
        ));
    }
    let active = state
        .jobs
        .values()
        .filter(|j| {
            matches!(j.status, RunStatus::Dispatched | RunStatus::Running)
                || j.run.phase == RunPhase::Stopping
                || !j.run.left_out.is_empty()
        })
        .count();
    if state.active_job_count() != active {
        return Err(format!(
            "active job count {} but {active} jobs hold a max_jobs slot",
            state.active_job_count()
        ));
    }
    let archiving_by_scan = |j: &Job| {
        matches!(
            j.archive,
            Archive::Pending {
                in_flight: true,
                ..
            }
        )
    };
    for (what, indexed, by_scan) in [
        (
            "jobs with an archive try in flight",
            &state.index.archiving,
            &archiving_by_scan as &dyn Fn(&Job) -> bool,
        ),
        (
            "jobs that may have deadlines",
            &state.index.timed,
            &crate::lifecycle::state::job_may_have_timers,
        ),
    ] {
        let scanned: std::collections::BTreeSet<JobId> = state
            .jobs
            .values()
            .filter(|j| by_scan(j))
            .map(|j| j.id)
            .collect();
        if indexed
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            != scanned
        {
            return Err(format!(
                "{what} {indexed:?} by the index, {scanned:?} by a scan"
            ));
        }
    }
    let settled = state.recovery.is_none()
        && state.schedule_try.is_none()
        && state.jobs.values().all(|j| {
            j.status.is_terminal()
                && matches!(j.run.phase, RunPhase::NotStarted | RunPhase::Stopped)
                && j.archive.is_settled()
        });
    if state.all_settled() != settled {
        return Err(format!(
            "all_settled says {} but a scan says {settled}",
            state.all_settled()
        ));
    }
    // Which jobs not deleted refer to each blob, by a scan.
    let mut users: BTreeMap<BlobHash, std::collections::BTreeSet<JobId>> = BTreeMap::new();
    users.entry(BlobHash([7; 32])).or_default();
    for job in state.jobs.values() {
        let mut refer = |hash: &BlobHash| {
            let entry = users.entry(*hash).or_default();
            if !job.deleted {
                entry.insert(job.id);
            }
        };
        refer(&job.package);
        if let Archive::Archived { hash } = &job.archive {
            refer(hash);
        }
    }
    let mut excepts: Vec<JobId> = state.jobs.keys().copied().collect();
    excepts.push(JobId(uuid::Uuid::nil()));
    for (hash, by) in &users {
        for except in &excepts {
            let used = by.iter().any(|id| id != except);
            if state.blob_in_use(hash, except) != used {
                return Err(format!(
                    "blob {hash} in use apart from job {except}: index says {}, a scan {used}",
                    state.blob_in_use(hash, except)
                ));
            }
        }
    }
    let due = crate::schedule::next_due(state, settings);
    let due_scanned = crate::schedule::next_due_by_scan(state, settings);
    if due != due_scanned {
        return Err(format!(
            "next due pass {due:?} but a queue scan says {due_scanned:?}"
        ));
    }
    let mut by_status = [0usize; RunStatus::ALL.len()];
    for job in state.jobs.values().filter(|j| !j.deleted) {
        by_status[job.status.index()] += 1;
    }
    if state.index().by_status != by_status {
        return Err(format!(
            "jobs by status {:?} but a scan of every job counts {by_status:?}",
            state.index().by_status
        ));
    }
    let mut rebuilt = state.clone();
    rebuilt.rebuild_index();
    if rebuilt.index != state.index {
        return Err(format!(
            "the index kept by the fold {:?} differs from one rebuilt from the jobs {:?}",
            state.index, rebuilt.index
        ));
    }
    for job in state.jobs.values() {
        let live = crate::lifecycle::state::job_is_live(job);
        if state.jobs.in_live_map(&job.id) != live {
            return Err(format!(
                "job {} sits in the {} map but is {}",
                job.id,
                if live { "settled" } else { "live" },
                if live { "live" } else { "settled" }
            ));
        }
        // The stop rule reads the candidates in the order of the exits, so the same set
        // gives the same reason a scan of every exit gave.
        if job.run.stop_candidates != job.run.stop_candidates_from_exits() {
            return Err(format!(
                "job {}: stop candidates {:?} kept by the fold, {:?} from its exits",
                job.id,
                job.run.stop_candidates,
                job.run.stop_candidates_from_exits()
            ));
        }
    }
    Ok(())
}
