//! Regression cases the fault campaign found: each is a scenario file and a seed under
//! `tests/scenarios/regressions/`.
//!
//! Cases whose defect is in the core and still open are run strictly and must still fail
//! with exactly their violation, and, run with only that defect tolerated, must pass: so
//! each case shows its defect and nothing else. When a fix lands, the strict run passes,
//! this test fails: the case then moves to `FIXED_CORE_DEFECTS`, a strict must-pass test,
//! and the defect leaves `KnownBug` and the campaign's tolerated list.

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

/// Cases whose core defect is fixed: each runs strictly, with every invariant, and must
/// pass. (scenario, seed, the rule it checks.)
const FIXED_CORE_DEFECTS: &[(&str, u64, &str)] = &[
    (
        "duplicate_start_answer",
        0,
        "SPEC 11: a repeated answer of a recorded participant changes nothing",
    ),
    (
        "lie_never_ran",
        0,
        "SPEC 8: an exit from a site never asked to start is not the job's outcome",
    ),
    (
        "stopping_away_site",
        0,
        "SPEC 8: a stop is over only when an away site's reconnect grace ran out",
    ),
    (
        "abandon_away_site",
        0,
        "SPEC 4 and 8: an abandoned run stays stopping while an away site may run it",
    ),
    (
        "reattach_ended_run",
        1640,
        "SPEC 4: a server app re-attached to an ended run is stopped",
    ),
];

#[test]
fn fixed_core_defects_pass_strictly() {
    for (name, seed, rule) in FIXED_CORE_DEFECTS {
        let checked = fedrun::sim::scenario::load(&path(name)).expect("valid scenario");
        if let Err(e) = fedrun::sim::driver::run(&checked, *seed) {
            panic!("{name} seed {seed} ({rule}): {e}");
        }
    }
}

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

/// Seed 607 of the campaign's `everything`: site s2's grace runs out while the server is
/// up, the server crashes, s2 comes back while it is down. Its apps belong to jobs the
/// server counts as ended, and it can stop them only once it runs again: the invariants
/// give them `abort_grace` from the restart, not from the return (a false alarm before).
#[test]
fn a_site_back_while_the_server_is_down_gets_its_abort_grace_from_the_restart() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/campaign/everything.toml");
    let checked = fedrun::sim::scenario::load(&path).expect("valid scenario");
    let tolerant = RunOptions {
        tolerate: KnownBug::ALL.to_vec(),
    };
    fedrun::sim::driver::run_with(&checked, 607, &tolerant).expect("seed 607 passes");
}

/// Defects found by a campaign of ten times CI's seeds (25,000 per scenario), not yet
/// diagnosed: each seed must still break exactly this invariant with every known defect
/// tolerated. When one passes, it was fixed: find which change fixed it, and make the case
/// a must-pass test. (campaign scenario, seed, what breaks.)
const OPEN_CAMPAIGN_FINDINGS: &[(&str, u64, &str)] = &[
    ("network", 7904, "over max_jobs = 2"),
    ("network", 14224, "over max_jobs = 2"),
    ("everything", 15413, "after the job ended (abort_grace 10s)"),
];

#[test]
fn seeds_found_by_the_large_campaign_still_show_their_violation() {
    let tolerant = RunOptions {
        tolerate: KnownBug::ALL.to_vec(),
    };
    for (scenario, seed, needle) in OPEN_CAMPAIGN_FINDINGS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/scenarios/campaign/{scenario}.toml"));
        let checked = fedrun::sim::scenario::load(&path).expect("valid scenario");
        match fedrun::sim::driver::run_with(&checked, *seed, &tolerant) {
            Err(SimError::Invariant { what, .. }) => {
                assert!(what.contains(needle), "{scenario} seed {seed}: {what}")
            }
            Err(other) => panic!("{scenario} seed {seed} failed otherwise: {other}"),
            Ok(_) => panic!("{scenario} seed {seed} passes now: make it a must-pass case"),
        }
    }
}
