//! A reference model of SPEC section 8's outcome rules, written apart from the core (it
//! never calls `lifecycle::decide` or `State::apply`, nor their helpers), that predicts the
//! final status of a job that went `RUNNING` from the facts the simulator fed the engine:
//! the app exits it delivered, the admin aborts the engine accepted, and the site reports
//! that lapsed (the one timeout that adds a failure).
//!
//! Facts come in the order the engine took them. A lie is not a fact (the simulator feeds
//! it, but no app ended), so the model never sees one: the engine must not be swayed by it.

use crate::lifecycle::{ExitOutcome, RunStatus};

/// One thing the engine was told about a job, in the order it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// A site's app ended (its report was delivered).
    SiteExit {
        /// The site.
        site: String,
        /// How.
        outcome: ExitOutcome,
        /// The site says the app ended because fedrun asked it to stop: not a failure
        /// (SPEC section 8).
        stop_requested: bool,
    },
    /// The server app ended.
    ServerExit(ExitOutcome),
    /// A disconnected site's report lapsed (`site_reconnect_grace` ran out).
    Lapse {
        /// The site.
        site: String,
    },
    /// An admin abort was accepted.
    Abort,
}

/// The failure the model holds: an outcome code or signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    Code(i32),
    Signal,
}

impl Bad {
    fn of(outcome: ExitOutcome) -> Option<Bad> {
        match outcome {
            ExitOutcome::Code(0) => None,
            ExitOutcome::Code(c) => Some(Bad::Code(c)),
            ExitOutcome::Signal(_) => Some(Bad::Signal),
        }
    }
}

/// Predicts the final status of a job whose run had the sites `job_clients`, from the
/// facts taken before its status was decided.
pub fn predict(job_clients: &[String], facts: &[Fact]) -> RunStatus {
    let mut failure: Option<Bad> = None;
    let mut stopping = false;
    let mut heard: Vec<&str> = Vec::new();
    // SPEC 8: 104 and a signal are sticky; 9 never replaces an earlier failure; any other
    // failure replaces the one before.
    let merge = |held: Option<Bad>, new: Bad| -> Option<Bad> {
        match held {
            Some(Bad::Signal) | Some(Bad::Code(104)) => held,
            Some(_) if new == Bad::Code(9) => held,
            _ => Some(new),
        }
    };
    for fact in facts {
        match fact {
            Fact::Abort => return RunStatus::Aborted,
            Fact::SiteExit {
                site,
                outcome,
                stop_requested,
            } => {
                // Only the sites that took part count, each once.
                if !job_clients.iter().any(|s| s == site) || heard.contains(&site.as_str()) {
                    continue;
                }
                heard.push(site);
                // An exit fedrun's own stop caused is not a failure (SPEC 8); the site says
                // so. An exit the site says was the app's own still counts while the run is
                // stopping: the app failed before the stop reached it.
                if *stop_requested {
                    continue;
                }
                if let Some(bad) = Bad::of(*outcome) {
                    failure = merge(failure, bad);
                    // A site's 1 (or any code outside the stopping list) is recorded only.
                    if matches!(bad, Bad::Signal | Bad::Code(101..=104) | Bad::Code(9)) {
                        stopping = true;
                    }
                }
            }
            Fact::ServerExit(outcome) => {
                if stopping {
                    continue;
                }
                if let Some(bad) = Bad::of(*outcome) {
                    failure = merge(failure, bad);
                    stopping = true;
                }
            }
            Fact::Lapse { site } => {
                if stopping || heard.contains(&site.as_str()) {
                    continue;
                }
                heard.push(site);
                failure = merge(failure, Bad::Code(104));
                stopping = true;
            }
        }
    }
    match failure {
        None => RunStatus::Completed,
        Some(Bad::Signal) | Some(Bad::Code(104)) => RunStatus::Abnormal,
        Some(Bad::Code(9)) => RunStatus::Aborted,
        Some(_) => RunStatus::ExecutionException,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, code: i32) -> Fact {
        Fact::SiteExit {
            site: name.into(),
            outcome: ExitOutcome::Code(code),
            stop_requested: false,
        }
    }

    #[test]
    fn spec_section_8_failure_order() {
        let clients = vec!["a".to_string(), "b".to_string()];
        let ok = ExitOutcome::Code(0);
        assert_eq!(
            predict(
                &clients,
                &[site("a", 0), site("b", 0), Fact::ServerExit(ok)]
            ),
            RunStatus::Completed
        );
        // 1 is recorded without stopping; a later 101 replaces it.
        assert_eq!(
            predict(
                &clients,
                &[site("a", 1), site("b", 0), Fact::ServerExit(ok)]
            ),
            RunStatus::ExecutionException
        );
        // 9 first stops the run; b's exit that fedrun's stop caused is not a failure...
        let stopped_b = Fact::SiteExit {
            site: "b".into(),
            outcome: ExitOutcome::Code(101),
            stop_requested: true,
        };
        assert_eq!(
            predict(&clients, &[site("a", 9), stopped_b]),
            RunStatus::Aborted
        );
        // ...but a 101 the site says was the app's own is a later failure, and replaces
        // the 9 (9 is not sticky).
        assert_eq!(
            predict(&clients, &[site("a", 9), site("b", 101)]),
            RunStatus::ExecutionException
        );
        // 1 then 9: 9 never replaces an earlier failure.
        assert_eq!(
            predict(&clients, &[site("a", 1), site("b", 9)]),
            RunStatus::ExecutionException
        );
        // A lapse counts as 104, which is sticky.
        assert_eq!(
            predict(
                &clients,
                &[Fact::Lapse { site: "a".into() }, site("b", 101)]
            ),
            RunStatus::Abnormal
        );
        // A site outside the run and a second report do not count.
        assert_eq!(
            predict(&clients, &[site("x", 101), site("a", 0), site("a", 101)]),
            RunStatus::Completed
        );
        assert_eq!(
            predict(&clients, &[site("a", 1), Fact::Abort]),
            RunStatus::Aborted
        );
    }

    #[test]
    fn an_exit_fedrun_asked_for_is_not_a_failure() {
        let clients = vec!["a".to_string(), "b".to_string()];
        let stopped = Fact::SiteExit {
            site: "a".into(),
            outcome: ExitOutcome::Signal(15),
            stop_requested: true,
        };
        assert_eq!(
            predict(&clients, &[stopped, site("b", 0)]),
            RunStatus::Completed
        );
        // The same signal without fedrun's stop is a failure, and a sticky one.
        let killed = Fact::SiteExit {
            site: "a".into(),
            outcome: ExitOutcome::Signal(15),
            stop_requested: false,
        };
        assert_eq!(
            predict(&clients, &[killed, site("b", 0)]),
            RunStatus::Abnormal
        );
    }

    #[test]
    fn an_own_failure_after_the_stop_was_asked_still_counts() {
        // Found by the simulator's property test: the server app failed with 1 (the run is
        // stopping), then a site's app ended with its own 104 before the stop reached it.
        // 104 is sticky and replaces the earlier failure (SPEC 8).
        let clients = vec!["a".to_string(), "b".to_string()];
        let facts = [
            site("a", 0),
            Fact::ServerExit(ExitOutcome::Code(1)),
            site("b", 104),
        ];
        assert_eq!(predict(&clients, &facts), RunStatus::Abnormal);
    }
}
