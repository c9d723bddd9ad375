//! The sans-IO node: nothing of a batch leaves before the batch is durable, a failed
//! append releases nothing and stops the node for good, the run folder goes only after
//! `WorkspaceArchived` is durable, and the server's app is a participant like a site's.

use std::time::Duration;

mod engine_support;

use engine_support::{admin, submit};
use fedrun::engine::clock::SIM_EPOCH;
use fedrun::engine::ids::SeededIds;
use fedrun::engine::node::{Input, Node, NodeError, Output, Participant, ReplyToken, Request};
use fedrun::engine::owner::{EngineLimits, Ids};
use fedrun::history::{History, MemoryStorage};
use fedrun::job::JobId;
use fedrun::lifecycle::{
    AdminRequest, Answer, BlobHash, Event, ExitOutcome, RunStatus, SiteReport, State, Timestamp,
};
use fedrun::settings::Settings;

fn new_node() -> (Node, History<Event>) {
    let history = History::<Event>::in_memory(MemoryStorage::new()).expect("history");
    let node = Node::start(
        State::new(),
        None,
        Settings::default(),
        Ids::Seeded(SeededIds::new(7)),
        EngineLimits::default(),
        SIM_EPOCH,
    );
    (node, history)
}

/// Appends every batch the node hands out and returns what it then releases.
fn settle(node: &mut Node, history: &mut History<Event>) -> Vec<Output> {
    let mut outputs = Vec::new();
    loop {
        while let Some(output) = node.poll_output() {
            outputs.push(output);
        }
        let Some(append) = node.poll_append() else {
            break;
        };
        history.append_batch(&append.events).expect("append");
        node.append_done(append.id, Ok(()));
    }
    outputs
}

fn at(secs: u64) -> Timestamp {
    SIM_EPOCH.plus(Duration::from_secs(secs))
}

fn archive_finished(job_id: JobId, result: Result<BlobHash, String>) -> Input {
    Input::ArchiveFinished { job_id, result }
}

fn site(report: SiteReport) -> Input {
    Input::Report {
        from: Participant::Site("site-1".into()),
        report,
    }
}

fn local(report: SiteReport) -> Input {
    Input::Report {
        from: Participant::Local,
        report,
    }
}

fn connected() -> SiteReport {
    SiteReport::Connected {
        resources: Default::default(),
        running: vec![],
    }
}

fn submitted(outputs: &[Output], token: u64) -> JobId {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Reply {
                token: t,
                answer: Ok(Ok(Answer::Submitted { job_id })),
            } if t.0 == token => Some(*job_id),
            _ => None,
        })
        .expect("the submit is answered")
}

fn sent<'a>(outputs: &'a [Output], to: &Participant) -> Vec<&'a Request> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to: t, request } if t == to => Some(request),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_of_a_batch_leaves_before_its_append_is_done() {
    let (mut node, mut history) = new_node();
    settle(&mut node, &mut history);
    node.handle(at(1), site(connected()));
    node.handle(at(1), submit(1));
    // Deciding is not releasing: the batch is out, and its outputs wait for it.
    let append = node.poll_append().expect("a batch to append");
    assert!(!append.events.is_empty());
    assert_eq!(
        node.poll_output(),
        None,
        "no output before the append is done"
    );
    assert!(node.poll_append().is_none(), "one batch out at a time");
    // Inputs arriving meanwhile wait for the next batch.
    node.handle(at(1), submit(2));
    assert_eq!(node.poll_output(), None);
    history.append_batch(&append.events).expect("append");
    node.append_done(append.id, Ok(()));
    let mut released = Vec::new();
    while let Some(output) = node.poll_output() {
        released.push(output);
    }
    submitted(&released, 1);
    assert!(
        sent(&released, &Participant::Site("site-1".into()))
            .iter()
            .any(|r| matches!(r, Request::CheckResources { .. })),
        "the schedule try asks the site after the batch is durable: {released:?}"
    );
    assert!(
        !released
            .iter()
            .any(|o| matches!(o, Output::Reply { token, .. } if token.0 == 2)),
        "the second submit is in the next batch"
    );
    let next = settle(&mut node, &mut history);
    submitted(&next, 2);
}

#[test]
fn a_failed_append_releases_nothing_and_stops_the_node_for_good() {
    let (mut node, mut history) = new_node();
    settle(&mut node, &mut history);
    node.handle(at(1), site(connected()));
    node.handle(at(1), submit(1));
    let append = node.poll_append().expect("a batch");
    node.handle(at(2), submit(2));
    node.append_done(append.id, Err("disk full (test)".into()));
    let mut released = Vec::new();
    while let Some(output) = node.poll_output() {
        released.push(output);
    }
    // Only the requesters learn that the node stopped; no request, no acceptance leaves.
    assert_eq!(released.len(), 2, "{released:?}");
    for output in &released {
        assert!(
            matches!(
                output,
                Output::Reply {
                    answer: Err(NodeError::Stopped { cause }),
                    ..
                } if cause.contains("disk full")
            ),
            "{output:?}"
        );
    }
    assert!(node.stopped().is_some_and(|c| c.contains("disk full")));
    // For good: later inputs are answered "stopped", nothing is appended, no timer runs.
    node.handle(at(3), submit(3));
    node.handle(at(3), site(connected()));
    node.handle_timeout(at(1000));
    assert!(node.poll_append().is_none());
    assert_eq!(node.poll_timeout(), None);
    assert!(matches!(
        node.poll_output(),
        Some(Output::Reply {
            token: ReplyToken(3),
            answer: Err(NodeError::Stopped { .. })
        })
    ));
    assert_eq!(node.poll_output(), None);
}

/// Drives one job through a whole run: the server app through the local participant,
/// the site app through site-1. Returns the job and the outputs of the archive request.
fn run_to_archive(node: &mut Node, history: &mut History<Event>) -> JobId {
    settle(node, history);
    node.handle(at(1), site(connected()));
    node.handle(at(1), submit(1));
    let out = settle(node, history);
    let job_id = submitted(&out, 1);
    let try_id = sent(&out, &Participant::Site("site-1".into()))
        .iter()
        .find_map(|r| match r {
            Request::CheckResources { try_id, .. } => Some(*try_id),
            _ => None,
        })
        .expect("a resource check");
    node.handle(
        at(2),
        site(SiteReport::ResourceAnswer {
            try_id,
            job_id,
            answer: Ok("token".into()),
        }),
    );
    let out = settle(node, history);
    // The server app's deploy goes to the local participant, with the package's hash
    // and the submit's time for the signature check.
    assert!(
        sent(&out, &Participant::Local).iter().any(|r| matches!(
            r,
            Request::Deploy { job_id: j, package, verify_at, .. }
                if *j == job_id && *package == BlobHash([7; 32]) && *verify_at == at(1)
        )),
        "{out:?}"
    );
    // Every participant does what it is asked, until the run is under way.
    let mut pending = out;
    let mut local_started = false;
    for _ in 0..10 {
        if node.state().jobs[&job_id].status == RunStatus::Running {
            break;
        }
        for output in std::mem::take(&mut pending) {
            let Output::Send { to, request } = output else {
                continue;
            };
            let report = match request {
                Request::Deploy { job_id, .. } => SiteReport::DeployAnswer {
                    job_id,
                    result: Ok(()),
                },
                Request::Start { job_id } => {
                    local_started |= to == Participant::Local;
                    SiteReport::StartAnswer {
                        job_id,
                        result: Ok(()),
                    }
                }
                _ => continue,
            };
            node.handle(at(3), Input::Report { from: to, report });
        }
        pending = settle(node, history);
    }
    assert_eq!(node.state().jobs[&job_id].status, RunStatus::Running);
    assert!(
        local_started,
        "the server app is started by the local participant"
    );
    node.handle(
        at(5),
        site(SiteReport::AppExited {
            job_id,
            report_id: "site-1/exit".into(),
            outcome: ExitOutcome::Code(0),
            stop_requested: false,
        }),
    );
    node.handle(
        at(5),
        local(SiteReport::AppExited {
            job_id,
            report_id: "server/exit".into(),
            outcome: ExitOutcome::Code(0),
            stop_requested: false,
        }),
    );
    let out = settle(node, history);
    assert!(
        sent(&out, &Participant::Site("site-1".into())).contains(&&Request::Acknowledge {
            report_id: "site-1/exit".into()
        }),
        "the exit report is acknowledged once durable: {out:?}"
    );
    assert_eq!(node.state().jobs[&job_id].status, RunStatus::Completed);
    assert!(
        out.contains(&Output::Archive { job_id }),
        "the workspace is archived: {out:?}"
    );
    assert!(!out.contains(&Output::RemoveRunFolder { job_id }));
    job_id
}

#[test]
fn the_run_folder_is_removed_only_after_workspace_archived_is_durable() {
    let (mut node, mut history) = new_node();
    let job_id = run_to_archive(&mut node, &mut history);
    node.handle(at(6), archive_finished(job_id, Ok(BlobHash([9; 32]))));
    let append = node.poll_append().expect("WorkspaceArchived to append");
    assert_eq!(
        node.poll_output(),
        None,
        "no removal before the archive is durable"
    );
    history.append_batch(&append.events).expect("append");
    node.append_done(append.id, Ok(()));
    let out: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    assert_eq!(out, vec![Output::RemoveRunFolder { job_id }]);
}

#[test]
fn a_failed_archive_never_removes_the_run_folder() {
    let (mut node, mut history) = new_node();
    let job_id = run_to_archive(&mut node, &mut history);
    node.handle(
        at(6),
        archive_finished(job_id, Err("the run folder is missing".into())),
    );
    let out = settle(&mut node, &mut history);
    assert!(
        !out.contains(&Output::RemoveRunFolder { job_id }),
        "{out:?}"
    );
}

#[test]
fn a_blob_freed_and_submitted_again_in_one_batch_is_not_freed() {
    let (mut node, mut history) = new_node();
    let job_id = run_to_archive(&mut node, &mut history);
    node.handle(at(6), archive_finished(job_id, Ok(BlobHash([9; 32]))));
    settle(&mut node, &mut history);
    // Deleting the only job that holds package [7; 32] frees it, unless a submit of the
    // same bytes is decided in the same batch: then the free was decided on a state the
    // batch no longer ends in, and the new job would be left without its package.
    node.handle(at(7), admin(2, AdminRequest::DeleteJob { job_id }));
    node.handle(at(7), submit(3));
    let out = settle(&mut node, &mut history);
    let again = submitted(&out, 3);
    assert_eq!(node.state().jobs[&again].package, BlobHash([7; 32]));
    assert!(
        !out.contains(&Output::FreeBlob {
            hash: BlobHash([7; 32])
        }),
        "the package of the new job is not freed: {out:?}"
    );
    assert!(
        out.contains(&Output::FreeBlob {
            hash: BlobHash([9; 32])
        }),
        "the deleted job's archive is freed: {out:?}"
    );
}
