//! Regression cases the fault campaign found: each is a scenario file and a seed under
//! `tests/scenarios/regressions/`.
//!
//! Cases whose defect is in the core (routed for a fix) are run strictly and must still
//! fail with exactly their violation, and, run with only that defect tolerated, must pass:
//! so each case shows its defect and nothing else. When a fix lands, the strict run passes,
//! this test fails: the case then becomes a strict must-pass test, and the defect
//! leaves `KnownBug` and the campaign's tolerated list.

use std::path::{Path, PathBuf};

use fedrun::sim::driver::{RunOptions, SimError};
use fedrun::sim::invariants::KnownBug;

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios/regressions")
        .join(format!("{name}.toml"))
}

/// (scenario, seed, the defect, words of the violation it breaks, other known defects the
/// run shows first and that are tolerated to reach this one).
type Case = (
    &'static str,
    u64,
    KnownBug,
    &'static str,
    &'static [KnownBug],
);

const OPEN_CORE_DEFECTS: &[Case] = &[
    (
        "reattach_ended_run",
        1641,
        KnownBug::ReattachedEndedRunNotStopped,
        "still runs",
        &[KnownBug::RepeatedAnswerStopsApp],
    ),
    (
        "duplicate_start_answer",
        0,
        KnownBug::RepeatedAnswerStopsApp,
        "a participant of its live run",
        &[],
    ),
    (
        "abandon_away_site",
        0,
        KnownBug::StopEndsEarly,
        "jobs have app processes alive, over max_jobs",
        &[],
    ),
    (
        "stopping_away_site",
        0,
        KnownBug::StopEndsEarly,
        "jobs have app processes alive, over max_jobs",
        &[],
    ),
    (
        "start_reply_lost",
        57,
        KnownBug::StartReplyLostOrphan,
        "jobs have app processes alive, over max_jobs",
        &[],
    ),
    (
        "start_reply_lost",
        113,
        KnownBug::StartReplyLostOrphan,
        "jobs have app processes alive, over max_jobs",
        &[],
    ),
];

#[test]
fn open_core_defects_still_show_exactly_their_violation() {
    for (name, seed, bug, words, others) in OPEN_CORE_DEFECTS {
        let checked = fedrun::sim::scenario::load(&path(name)).expect("valid scenario");
        let strict = RunOptions {
            tolerate: others.to_vec(),
        };
        match fedrun::sim::driver::run_with(&checked, *seed, &strict) {
            Err(SimError::Invariant { what, .. }) => assert!(
                what.contains(words),
                "{name} seed {seed}: broke another invariant than {bug:?}: {what}"
            ),
            Err(other) => panic!("{name} seed {seed}: failed otherwise: {other}"),
            Ok(_) => panic!(
                "{name} seed {seed} passes strictly: {bug:?} looks fixed; make the case a \
                 strict must-pass test and drop the tolerance from the campaign"
            ),
        }
        let mut tolerate = others.to_vec();
        tolerate.push(*bug);
        let tolerant = RunOptions { tolerate };
        let result = fedrun::sim::driver::run_with(&checked, *seed, &tolerant)
            .unwrap_or_else(|e| panic!("{name} seed {seed}: more than {bug:?} is wrong: {e}"));
        assert!(
            result.known_hits.contains_key(bug),
            "{name} seed {seed}: {bug:?} did not show"
        );
    }
}

/// A site's lie about a job it never ran is recorded by the core as that job's outcome
/// (a core defect, see the scenario's comment). The lie kind is left out of the campaign
/// until the fix lands, so it cannot be tolerated there; this case shows it strictly.
#[test]
fn a_lie_about_a_job_never_run_is_recorded() {
    let checked = fedrun::sim::scenario::load(&path("lie_never_ran")).expect("valid scenario");
    match fedrun::sim::driver::run(&checked, 0) {
        Err(SimError::Invariant { what, .. }) => {
            assert!(what.contains("a site's lie was recorded"), "{what}")
        }
        Err(other) => panic!("failed otherwise: {other}"),
        Ok(_) => panic!(
            "lie_never_ran passes: the core now ignores the lie; add \"never_ran\" back to \
             the campaign's lies and make this case a strict must-pass test"
        ),
    }
}
