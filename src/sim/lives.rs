//! What the end of a run needs of the history's events: for each job, the facts the
//! reference model ([`crate::sim::model`]) weighs its end against, the server starts, and
//! which events the text output describes. Gathered by the checker as it folds each stored
//! record, so the end does not read the history again when what the checker folded is
//! what is stored.

use rustc_hash::FxHashMap;

use crate::job::JobId;
use crate::lifecycle::{Event, EventKind};

/// What the reference model needs of one job's events.
#[derive(Debug, Default)]
pub struct Life {
    /// The job's first dispatch.
    pub dispatched: Option<u64>,
    /// The job's end.
    pub finished: Option<u64>,
    /// Whether a run of the job started.
    pub ran: bool,
    /// Whether one of its events survived a crash unacknowledged: the model does not
    /// know what was fed in it (see [`Lives::mark_unknown`]).
    pub unknown: bool,
    /// The site reports that lapsed, with their events' numbers.
    pub lapses: Vec<(u64, String)>,
}

/// The [`Life`] of every job with an event, in one pass over the history.
#[derive(Debug, Default)]
pub struct Lives {
    /// By job.
    pub jobs: FxHashMap<JobId, Life>,
    /// The server starts, in history order.
    pub starts: Vec<u64>,
    /// The events [`crate::sim::output::is_notable`], in history order.
    pub notable: Vec<u64>,
}

impl Lives {
    /// Takes the next event of the history.
    pub fn see(&mut self, e: &Event) {
        if crate::sim::output::is_notable(e) {
            self.notable.push(e.seq);
        }
        if matches!(e.kind, EventKind::ServerStarted { .. }) {
            self.starts.push(e.seq);
        }
        let Some(id) = e.kind.job_id() else {
            return;
        };
        let life = self.jobs.entry(id).or_default();
        match &e.kind {
            EventKind::JobDispatched { .. } => {
                life.dispatched.get_or_insert(e.seq);
            }
            EventKind::JobFinished { .. } => {
                life.finished.get_or_insert(e.seq);
            }
            EventKind::RunStarted { .. } => life.ran = true,
            EventKind::SiteReportLapsed { site, .. } => {
                life.lapses.push((e.seq, site.clone()));
            }
            _ => {}
        }
    }

    /// The event of `job` seen as one that survived a crash without being acknowledged.
    pub fn mark_unknown(&mut self, job: JobId) {
        self.jobs.entry(job).or_default().unknown = true;
    }
}
