//! Helpers shared by the history tests.
//!
//! A small event type and state used by the history tests before and besides the real
//! lifecycle core: a job moves through increasing step numbers, never backwards.

#![allow(dead_code)]

use std::collections::BTreeMap;

use fedrun::history::{Fold, RecordEvent, Sequenced};
use serde::{Deserialize, Serialize};

/// A toy event: job `job` reached step `step`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub seq: u64,
    pub job: u32,
    pub step: u8,
    pub note: String,
}

impl Sequenced for Step {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// Version-2 records hold a step in the default layout (positional MessagePack).
impl RecordEvent for Step {}

/// The toy state: the current step of every job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steps {
    pub jobs: BTreeMap<u32, u8>,
    pub last_seq: u64,
}

impl Fold<Step> for Steps {
    type Error = String;
    fn apply_checked(&mut self, event: &Step) -> Result<(), String> {
        let current = self.jobs.get(&event.job).copied().unwrap_or(0);
        if event.step <= current {
            return Err(format!(
                "job {} cannot go from step {current} to step {}",
                event.job, event.step
            ));
        }
        self.jobs.insert(event.job, event.step);
        self.last_seq = event.seq;
        Ok(())
    }
}

/// `count` legal events starting at `first_seq`, each a new job at step 1.
pub fn steps(first_seq: u64, count: u64) -> Vec<Step> {
    (first_seq..first_seq + count)
        .map(|seq| Step {
            seq,
            job: seq as u32,
            step: 1,
            note: format!("event {seq}"),
        })
        .collect()
}

/// Real lifecycle events for the history tests.
pub mod lifecycle {
    use std::collections::BTreeMap;

    use fedrun::job::flat_map::FlatMap;
    use fedrun::job::meta::{AppTargets, JobMeta};
    use fedrun::job::JobId;
    use fedrun::lifecycle::{
        Actor, BlobHash, BootId, Event, EventKind, Identity, Role, RunStatus, ScheduleOutcome,
        Timestamp,
    };

    /// The boot id every sample event carries.
    pub fn boot() -> BootId {
        BootId(uuid::Uuid::from_u128(
            0x3f2a_9c1e_0b7d_4e8a_9c55_1d2e_3f4a_5b6c,
        ))
    }

    /// The job id number `n` of the samples.
    pub fn job(n: u128) -> JobId {
        JobId(uuid::Uuid::from_u128(
            0x1000_0000_0000_4000_8000_0000_0000_0000 + n,
        ))
    }

    /// Alice, a lead of org-a.
    pub fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            org: "org-a".into(),
            role: Role::Lead,
        }
    }

    /// An event at `seq`, one second apart from the start of 2025-11-28.
    pub fn event(seq: u64, actor: Actor, request_id: Option<&str>, kind: EventKind) -> Event {
        Event {
            seq,
            at: Timestamp::from_millis(1_764_288_000_000 + seq as i64 * 1000),
            actor,
            request_id: request_id.map(str::to_string),
            boot_id: boot(),
            kind,
        }
    }

    /// A `JobSubmitted` for job `n` by alice.
    pub fn submitted(seq: u64, n: u128) -> Event {
        let meta = JobMeta {
            name: format!("job-{n}"),
            deploy_map: vec![AppTargets {
                app: "app".into(),
                targets: vec!["server".into(), "site-1".into()],
            }],
            min_clients: 1,
            mandatory_clients: vec![],
            resource_spec: FlatMap::from([(
                "site-1".to_string(),
                FlatMap::from([("num_of_gpus".to_string(), 1.0)]),
            )]),
        };
        event(
            seq,
            Actor::admin(&alice()),
            Some(&format!("submit-{n}")),
            EventKind::JobSubmitted {
                job_id: job(n),
                meta,
                package: BlobHash::from(blake3::hash(format!("package {n}").as_bytes())),
                submitter: alice(),
                signer: None,
                submit_time: Timestamp::from_millis(1_764_288_000_000 + seq as i64 * 1000),
                cloned_from: None,
            },
        )
    }

    /// The committed version-1 fixture holds `sample_history(1)`: changing what this
    /// builds for one job breaks the fixture test, on purpose.
    ///
    /// A legal history of `jobs` submitted jobs, after a server start and a site
    /// connecting; every job after the first few is tried once and found no resources,
    /// and job 1 is aborted.
    pub fn sample_history(jobs: u128) -> Vec<Event> {
        let mut events = vec![
            event(
                1,
                Actor::System,
                None,
                EventKind::ServerStarted { boot_id: boot() },
            ),
            event(
                2,
                Actor::Site {
                    name: "site-1".into(),
                },
                None,
                EventKind::SiteConnected {
                    site: "site-1".into(),
                    resources: BTreeMap::from([("num_of_gpus".to_string(), 2.0)]),
                    running: vec![],
                },
            ),
        ];
        for n in 1..=jobs {
            let seq = events.len() as u64 + 1;
            events.push(submitted(seq, n));
        }
        for n in 2..=jobs {
            let seq = events.len() as u64 + 1;
            events.push(event(
                seq,
                Actor::Scheduler,
                None,
                EventKind::ScheduleAttempted {
                    job_id: job(n),
                    outcome: ScheduleOutcome::NoResources {
                        reason: "connected sites (1) < min_clients (2)".into(),
                    },
                },
            ));
        }
        let seq = events.len() as u64 + 1;
        events.push(event(
            seq,
            Actor::admin(&alice()),
            Some("abort-1"),
            EventKind::JobFinished {
                job_id: job(1),
                status: RunStatus::Aborted,
                reason: "aborted by alice (org-a, lead)".into(),
            },
        ));
        events
    }
}

/// Opens the raw sled database of data folder `dir`, for tests that edit records through
/// sled's own API. sled's background flusher is off, as in the history itself. Even so,
/// one of sled's I/O threads may still hold the folder lock for a moment after a history
/// is dropped: the lock is tried again until it is free, for at most 10 seconds.
pub fn raw_sled(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let opened = sled::Config::new()
            .path(dir.join("history"))
            .segment_size(fedrun::history::SLED_SEGMENT_SIZE)
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            other => return other.expect("the raw sled database opens"),
        }
    }
}
