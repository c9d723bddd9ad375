//! A submit racing the free of the same bytes (SPEC section 3, Changed): whatever the
//! order in which a delete's blob free and a submit of the same package are carried out,
//! the accepted job's package is on disk afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod engine_support;

use engine_support::{identity, submit_ok, wait_for, BOUND};
use fedrun::engine::clock::WallClock;
use fedrun::engine::server::{Server, ServerConfig};
use fedrun::lifecycle::{AdminRequest, Answer, Origin, Role};

fn origin() -> Origin {
    Origin {
        identity: identity(Role::ProjectAdmin),
        request_id: None,
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-complete")
}

async fn ask(server: &Server, request: AdminRequest) {
    let answer = tokio::time::timeout(BOUND, server.request(origin(), request))
        .await
        .expect("answered in time");
    assert!(
        matches!(answer, Ok(Ok(Answer::Accepted { .. }))),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_racing_a_submit_of_the_same_bytes_never_loses_the_new_job_package() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No site is attached: a submitted job stays queued, so abort and delete are quick.
    let server =
        Server::start(ServerConfig::new(dir.path()), Arc::new(WallClock)).expect("server starts");
    let mut old = submit_ok(&server, &example()).await;
    ask(&server, AdminRequest::AbortJob { job_id: old }).await;
    let example = example();
    for round in 0..25 {
        wait_for(&server, "the abort settled", |s| {
            s.jobs[&old].status.is_terminal() && s.jobs[&old].archive.is_settled()
        })
        .await;
        // The delete frees the package the new submit stores again; the two run at once,
        // in whatever order the scheduler picks.
        let (_, new) = tokio::join!(
            ask(&server, AdminRequest::DeleteJob { job_id: old }),
            submit_ok(&server, &example)
        );
        // One more recorded request: every free decided before it has been carried out
        // once it is answered. It also readies the new job for the next round's delete.
        ask(&server, AdminRequest::AbortJob { job_id: new }).await;
        let state = server.state();
        let package = state.jobs[&new].package;
        assert!(
            server.blobs().contains(&package),
            "round {round}: the accepted job's package is gone from disk"
        );
        assert_eq!(
            server
                .blobs()
                .get(&package)
                .map(|b| fedrun::blobs::hash_of(&b))
                .ok(),
            Some(package),
            "round {round}: the package on disk is whole"
        );
        old = new;
    }
    server.shutdown().await;
}
