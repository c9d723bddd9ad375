//! A small event type and state used by the history tests before and besides the real
//! lifecycle core: a job moves through increasing step numbers, never backwards.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fedrun::history::{Fold, Sequenced};
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
