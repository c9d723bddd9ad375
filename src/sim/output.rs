//! What `fedrun sim` prints: one JSON object with `--json`, or a table and the notable
//! events for a person. Both are pure functions of the [`SimResult`], so the same scenario
//! and seed print the same bytes. Both are written as they are made, the events read one
//! by one from the stored history: a day of 10,000 jobs is 220 MB of JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use serde::Serialize;

use crate::job::JobId;
use crate::lifecycle::schedule_history::ScheduleHistory;
use crate::lifecycle::{Event, EventKind, RunStatus, ScheduleOutcome};
use crate::settings::format_duration;
use crate::sim::driver::{offset, SimError, SimResult};

#[derive(Serialize)]
struct JobJson<'a> {
    name: &'a str,
    job_id: Option<String>,
    status: Option<&'static str>,
    schedule_count: u32,
    schedule_history: Lines<'a>,
    job_deploy_detail: Vec<String>,
    job_clients: Vec<String>,
}

/// A job's schedule lines, written one by one.
struct Lines<'a>(Option<&'a ScheduleHistory>);

impl Serialize for Lines<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.into_iter().flat_map(ScheduleHistory::lines))
    }
}

/// The `--json` output, `{"ended", "jobs", "events"}` on one line, events in the shape of
/// `fedrun history --json`, as one string.
pub fn to_json(result: &SimResult) -> io::Result<String> {
    let mut out = Vec::new();
    write_json(result, &mut out)?;
    String::from_utf8(out).map_err(io::Error::other)
}

/// Writes the `--json` output to `out` (see [`to_json`]).
pub fn write_json(result: &SimResult, out: &mut impl io::Write) -> io::Result<()> {
    out.write_all(b"{\"ended\":")?;
    serde_json::to_writer(&mut *out, result.ended.as_str())?;
    out.write_all(b",\"jobs\":[")?;
    for (i, job) in result.jobs.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let line = match &job.job {
            Some(j) => JobJson {
                name: &job.name,
                job_id: Some(j.id.to_string()),
                status: Some(j.status.as_str()),
                schedule_count: j.schedule_count,
                schedule_history: Lines(Some(&j.schedule_history)),
                job_deploy_detail: j.run.deploy_detail(),
                job_clients: j.run.job_clients.iter().cloned().collect(),
            },
            None => JobJson {
                name: &job.name,
                job_id: job.job_id.map(|id| id.to_string()),
                status: None,
                schedule_count: 0,
                schedule_history: Lines(None),
                job_deploy_detail: Vec::new(),
                job_clients: Vec::new(),
            },
        };
        serde_json::to_writer(&mut *out, &line)?;
    }
    out.write_all(b"],\"events\":[")?;
    for (i, event) in result.events().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let event = event.map_err(io::Error::other)?;
        out.write_all(crate::history::events::event_json_line(&event)?.as_bytes())?;
    }
    out.write_all(b"]}")
}

/// A virtual time as `+1m30s`.
pub fn plus(at: Duration) -> String {
    format!("+{}", format_duration(at))
}

fn short(id: &JobId) -> String {
    id.to_string().chars().take(8).collect()
}

/// The human-readable output: the final table, then the notable events.
pub fn to_text(result: &SimResult) -> Result<String, SimError> {
    let mut out = String::new();
    write_text(result, &mut |line| {
        out.push_str(line);
        out.push('\n');
        Ok(())
    })
    .map_err(|e| match e {
        TextError::Events(e) => e,
        TextError::Write(e) => SimError::Replay(e.to_string()),
    })?;
    Ok(out)
}

/// Why the human-readable output stopped.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// An event did not read back from the stored history.
    #[error(transparent)]
    Events(#[from] SimError),
    /// A line could not be written.
    #[error("could not write the output: {0}")]
    Write(#[from] io::Error),
}

/// Writes the human-readable output, one line at a time (without its line break) to
/// `line`: text from the scenario and the run is in it as it is, for the caller to clean.
pub fn write_text(
    result: &SimResult,
    line: &mut dyn FnMut(&str) -> io::Result<()>,
) -> Result<(), TextError> {
    let names: BTreeMap<JobId, &str> = result
        .jobs
        .iter()
        .filter_map(|j| j.job_id.map(|id| (id, j.name.as_str())))
        .collect();
    let mut out = String::new();
    let mut emit = |out: &mut String| -> io::Result<()> {
        let result = line(out);
        out.clear();
        result
    };
    let _ = write!(
        out,
        "ended: {} at {} ({} events)",
        result.ended.as_str(),
        plus(result.ended_at),
        result.event_count()
    );
    emit(&mut out)?;
    emit(&mut out)?;
    let name_width = result
        .jobs
        .iter()
        .map(|j| j.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = write!(
        out,
        "{:name_width$}  {:8}  {:28}  {:>5}  {:9}  CLIENTS",
        "JOB", "ID", "STATUS", "TRIES", "FINISHED"
    );
    emit(&mut out)?;
    for job in &result.jobs {
        match &job.job {
            Some(j) => {
                let finished = j
                    .finished_at
                    .map(|t| plus(offset(t)))
                    .unwrap_or_else(|| "-".into());
                let deleted = if j.deleted { " (deleted)" } else { "" };
                let _ = write!(
                    out,
                    "{:name_width$}  {:8}  {:28}  {:>5}  {:9}  {}{}",
                    job.name,
                    short(&j.id),
                    j.status.as_str(),
                    j.schedule_count,
                    finished,
                    if j.run.job_clients.is_empty() {
                        "-".to_string()
                    } else {
                        Vec::from_iter(j.run.job_clients.iter().cloned()).join(",")
                    },
                    deleted
                );
            }
            None => {
                let _ = write!(out, "{:name_width$}  (never submitted)", job.name);
            }
        }
        emit(&mut out)?;
    }
    emit(&mut out)?;
    out.push_str("notable events:");
    emit(&mut out)?;
    let mut notes = result.notes.iter().peekable();
    for event in result.notable_events() {
        let event = event?;
        let at = offset(event.at);
        while let Some((note_at, note)) = notes.peek() {
            if *note_at > at {
                break;
            }
            let _ = write!(out, "  {:>9}  ({note})", plus(*note_at));
            emit(&mut out)?;
            notes.next();
        }
        if let Some(text) = describe(&event, &names) {
            let _ = write!(out, "  {:>9}  #{:<4} {text}", plus(at), event.seq);
            emit(&mut out)?;
        }
    }
    for (note_at, note) in notes {
        let _ = write!(out, "  {:>9}  ({note})", plus(*note_at));
        emit(&mut out)?;
    }
    Ok(())
}

/// Whether the text output describes `event` (one line among the notable events). The
/// end of a run notes these as it passes over the history, so the text decodes only them
/// (a tenth of a day's events). Asks [`describe`] itself, so the two cannot disagree.
pub fn is_notable(event: &Event) -> bool {
    describe(event, &BTreeMap::new()).is_some()
}

fn describe(event: &Event, names: &BTreeMap<JobId, &str>) -> Option<String> {
    let name = |id: &JobId| -> String {
        names
            .get(id)
            .map(|n| n.to_string())
            .unwrap_or_else(|| short(id))
    };
    Some(match &event.kind {
        EventKind::ServerStarted { boot_id } => {
            format!("server started (boot {})", &boot_id.to_string()[..8])
        }
        EventKind::RecoveryFinished => "restart decisions recorded".to_string(),
        EventKind::JobSubmitted {
            job_id,
            cloned_from,
            ..
        } => match cloned_from {
            Some(from) => format!("{} cloned from {}", name(job_id), name(from)),
            None => format!("{} submitted", name(job_id)),
        },
        EventKind::ScheduleAttempted {
            job_id,
            outcome: ScheduleOutcome::NoResources { reason },
        } => format!("{} not scheduled: {reason}", name(job_id)),
        EventKind::JobDispatched { job_id, sites, .. } => {
            format!(
                "{} dispatched to server, {}",
                name(job_id),
                sites.join(", ")
            )
        }
        EventKind::RunStarted {
            job_id,
            job_clients,
        } => format!("{} RUNNING with {}", name(job_id), job_clients.join(", ")),
        EventKind::JobFinished {
            job_id,
            status,
            reason,
        } => format!("{} {}: {reason}", name(job_id), status.as_str()),
        EventKind::RunRestored { job_id } => {
            format!(
                "{} {} restored after the restart",
                name(job_id),
                RunStatus::Running
            )
        }
        EventKind::JobDeleted { job_id } => format!("{} deleted", name(job_id)),
        EventKind::RequestRefused {
            job_id,
            operation,
            rejection,
        } => match job_id {
            Some(id) => format!("{operation} of {} refused: {rejection}", name(id)),
            None => format!("{operation} refused: {rejection}"),
        },
        EventKind::SiteReportLapsed { job_id, site } => format!(
            "{}: {site} stayed away past site_reconnect_grace; its report counts as 104",
            name(job_id)
        ),
        EventKind::LeftOutSiteEnded { job_id, site, how } => format!(
            "{}: {site}, left out of the run, {}",
            name(job_id),
            match how {
                crate::lifecycle::event::LeftOutEnd::Exited => "reported its app's exit",
                crate::lifecycle::event::LeftOutEnd::NotRunning => "no longer runs its app",
                crate::lifecycle::event::LeftOutEnd::StopWaitOver =>
                    "counts as ended: its stop wait is over",
            }
        ),
        EventKind::WorkspaceArchiveFailed { job_id, reason } => {
            format!("{} workspace archive failed: {reason}", name(job_id))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events the text reads back are exactly those of the whole history that
    /// `describe` describes, in order: with and without faults, with a restart, and
    /// with the server down at the end (the end folds the history again then).
    #[test]
    fn the_notable_events_are_those_of_the_whole_history_the_text_describes() {
        let resume = include_str!("../../tests/scenarios/crash_running_resume.toml");
        let down = format!(
            "[sim]\nuntil = \"35s\"\n{}",
            resume.replace("at = \"40s\"", "at = \"90s\"")
        );
        let faults = include_str!("../../tests/scenarios/campaign/everything.toml");
        let runs = [(resume, 0), (down.as_str(), 0), (faults, 1), (faults, 2)];
        let mut described = 0;
        for (text, seed) in runs {
            let checked = crate::sim::scenario::parse(text).expect("scenario");
            let result = crate::sim::driver::run(&checked, seed).expect("run");
            let all: Vec<Event> = result.events().map(|e| e.expect("reads")).collect();
            let want: Vec<&Event> = all
                .iter()
                .filter(|e| describe(e, &BTreeMap::new()).is_some())
                .collect();
            let got: Vec<Event> = result.notable_events().map(|e| e.expect("reads")).collect();
            assert!(want.len() < all.len(), "some events are not described");
            assert_eq!(got.len(), want.len(), "seed {seed}");
            assert!(got.iter().zip(&want).all(|(g, w)| g == *w), "seed {seed}");
            described += got.len();
        }
        assert!(described > 0);
    }
}
