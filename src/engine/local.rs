//! The server's local participant: it runs the jobs' server apps, and speaks to the node
//! exactly as a site does (requests in, [`SiteReport`]s out), so the node does not know
//! where a process runs.
//!
//! Every request is carried out off the tokio workers (unpacking, verifying and forking
//! run on blocking threads), and every answer comes back as a report on `reports`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::blobs::BlobStore;
use crate::engine::node::Request;
use crate::job::JobId;
use crate::lifecycle::SiteReport;
use crate::site::process::{self, AppLaunch, AppProcess, Reattached};
use crate::site::protocol::ExitOutcome;
use crate::site::workspace;
use crate::trust::policy::TrustPolicy;

/// The report id of a server app's exit (unique per job: a job runs its server app once).
pub fn exit_report_id(job_id: JobId) -> String {
    format!("server/{job_id}")
}

/// The local participant's handle: requests go in with [`LocalParticipant::request`].
#[derive(Clone)]
pub struct LocalParticipant {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    blobs: BlobStore,
    trust: TrustPolicy,
    abort_grace: Duration,
    reports: mpsc::UnboundedSender<SiteReport>,
    deployed: Mutex<BTreeMap<JobId, String>>,
    apps: Mutex<BTreeMap<JobId, AppProcess>>,
    /// Stops asked while the app's start was still under way: carried out once it runs.
    stops: Mutex<std::collections::BTreeSet<JobId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only inserted into, removed from and read; a panic elsewhere while
    // holding the lock cannot leave them half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalParticipant {
    /// A participant running server apps under `root` (one run folder per job). Must be
    /// called inside a tokio runtime.
    pub fn new(
        root: PathBuf,
        blobs: BlobStore,
        trust: TrustPolicy,
        abort_grace: Duration,
        reports: mpsc::UnboundedSender<SiteReport>,
    ) -> LocalParticipant {
        LocalParticipant {
            inner: Arc::new(Inner {
                root,
                blobs,
                trust,
                abort_grace,
                reports,
                deployed: Mutex::new(BTreeMap::new()),
                apps: Mutex::new(BTreeMap::new()),
                stops: Mutex::new(std::collections::BTreeSet::new()),
            }),
        }
    }

    /// Re-attaches to the server apps of `jobs` recorded in the workspace, then reports
    /// `Connected` with those still running, and the exits of those that ended meanwhile.
    pub fn connect(&self, jobs: Vec<JobId>) {
        let mut running = Vec::new();
        let mut ended = Vec::new();
        for job_id in jobs {
            match process::reattach(&workspace::job_dir(&self.inner.root, job_id)) {
                Ok(Reattached::Running(app)) => {
                    running.push(job_id);
                    self.watch(job_id, app);
                }
                Ok(Reattached::Ended(end)) => ended.push((job_id, end)),
                Ok(Reattached::NotFound) => {}
                Err(e) => tracing::warn!(%job_id, error = %e, "server app not re-attached"),
            }
        }
        self.report(SiteReport::Connected {
            resources: BTreeMap::new(),
            running,
        });
        for (job_id, end) in ended {
            self.exited(job_id, end);
        }
    }

    fn report(&self, report: SiteReport) {
        // A closed channel means the server is gone; nobody is left to tell.
        let _ = self.inner.reports.send(report);
    }

    fn exited(&self, job_id: JobId, end: process::ProcessEnd) {
        self.report(SiteReport::AppExited {
            job_id,
            report_id: exit_report_id(job_id),
            outcome: end.outcome,
            stop_requested: end.stop_requested,
        });
    }

    fn watch(&self, job_id: JobId, app: AppProcess) {
        let ended = app.ended();
        if lock(&self.inner.stops).remove(&job_id) {
            app.stop(self.inner.abort_grace);
        }
        lock(&self.inner.apps).insert(job_id, app);
        let me = self.clone();
        tokio::spawn(async move {
            let end = process::wait_end(ended).await;
            lock(&me.inner.apps).remove(&job_id);
            // A watcher gone without an end lost the process: it counts as killed, and
            // as no stop of fedrun's.
            let end = end.unwrap_or(process::ProcessEnd {
                outcome: ExitOutcome::Signal(9),
                stop_requested: false,
            });
            me.exited(job_id, end);
        });
    }

    /// Carries out one request; its answer comes back as a report.
    pub fn request(&self, request: Request) {
        let me = self.clone();
        match request {
            Request::Deploy {
                job_id,
                app_name,
                package,
                verify_at,
            } => {
                tokio::task::spawn_blocking(move || {
                    let inner = &me.inner;
                    let result = inner
                        .blobs
                        .get(&package)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| {
                            workspace::deploy_app(
                                &inner.root,
                                job_id,
                                &app_name,
                                &bytes,
                                &crate::job::limits::Limits::default(),
                                &inner.trust,
                                crate::trust::submit::timestamp_to_system_time(verify_at),
                            )
                            .map_err(|e| e.to_string())
                        });
                    if result.is_ok() {
                        lock(&inner.deployed).insert(job_id, app_name);
                    }
                    me.report(SiteReport::DeployAnswer {
                        job_id,
                        result: result.map(|_| ()),
                    });
                });
            }
            Request::Start { job_id } => {
                let Some(app) = lock(&me.inner.deployed).get(&job_id).cloned() else {
                    me.report(SiteReport::StartAnswer {
                        job_id,
                        result: Err("nothing is deployed for this job at the server".into()),
                    });
                    return;
                };
                let launch = AppLaunch {
                    job_id,
                    site: crate::job::meta::SERVER.to_string(),
                    run_dir: workspace::job_dir(&me.inner.root, job_id),
                    app_dir: workspace::app_dir(&me.inner.root, job_id, &app),
                };
                // Forking and writing the process record are blocking; they stay off the
                // tokio workers. The start is reported before the watcher can report the
                // exit, so an app that ends at once never has its exit overtake its start.
                tokio::task::spawn_blocking(move || match process::start(&launch) {
                    Ok(app) => {
                        me.report(SiteReport::StartAnswer {
                            job_id,
                            result: Ok(()),
                        });
                        me.watch(job_id, app);
                    }
                    Err(e) => me.report(SiteReport::StartAnswer {
                        job_id,
                        result: Err(e.to_string()),
                    }),
                });
            }
            Request::Stop { job_id } => match lock(&me.inner.apps).get(&job_id) {
                Some(app) => app.stop(me.inner.abort_grace),
                None => {
                    lock(&me.inner.stops).insert(job_id);
                }
            },
            Request::Delete { job_id } => {
                lock(&me.inner.deployed).remove(&job_id);
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = workspace::remove_job(&me.inner.root, job_id) {
                        tracing::warn!(%job_id, error = %e, "server deployment not removed");
                    }
                });
            }
            Request::CheckResources { job_id, .. } | Request::CancelReservation { job_id, .. } => {
                tracing::warn!(%job_id, "the local participant holds no resources; request ignored");
            }
            Request::Acknowledge { .. } => {}
        }
    }
}
