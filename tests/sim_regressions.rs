//! Regression cases the fault campaign found: each is a scenario file and a seed under
//! `tests/scenarios/regressions/`.
//!
//! Every case runs strictly, with every invariant, and must pass. No core defect the
//! campaign found is open (`fedrun::sim::invariants::KnownBug` is empty); a new finding is
//! committed here as a case, and while its fix is under way it may be tolerated by the
//! campaign through a scoped `KnownBug` variant.

use std::path::{Path, PathBuf};

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios/regressions")
        .join(format!("{name}.toml"))
}

/// Cases whose core defect is fixed: each runs strictly, with every invariant, and must
/// pass. (scenario, seed, the rule it checks.)
const FIXED_CORE_DEFECTS: &[(&str, u64, &str)] = &[
    (
        "barrier_timeout_away_site",
        0,
        "SPEC 8: a barrier timeout holds the slot while an away site may still run the app",
    ),
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
    (
        "start_reply_lost",
        57,
        "SPEC 8: a site left out after a lost start answer holds the run's max_jobs slot \
         until its app is known to have ended",
    ),
    (
        "start_reply_lost",
        113,
        "SPEC 8: a site left out after a lost start answer holds the run's max_jobs slot \
         until its app is known to have ended",
    ),
    (
        "start_reply_lost",
        60,
        "SPEC 8: a left-out site that reconnects listing the job is told to stop its app",
    ),
    (
        "start_reply_lost",
        7,
        "SPEC 8: a left-out site's app counts against max_jobs while its site is away",
    ),
    (
        "answer_in_recovery",
        857,
        "SPEC 4: a DISPATCHED job is live until the restart decision abandons it",
    ),
    (
        "answer_in_recovery",
        929,
        "SPEC 4: a DISPATCHED job is live until the restart decision abandons it",
    ),
    (
        "answer_in_recovery",
        1323,
        "SPEC 4: a DISPATCHED job is live until the restart decision abandons it",
    ),
    (
        "answer_in_recovery",
        1500,
        "SPEC 4: a DISPATCHED job is live until the restart decision abandons it",
    ),
    (
        "reattach_ended_run",
        15413,
        "SPEC 4: a server app re-attached to an ended run whose start the crash lost is \
         stopped",
    ),
    (
        "stop_ends_early",
        7904,
        "SPEC 8: an app a site brings back past its grace does not count against max_jobs \
         (its slot was free), but its run holds the slot again",
    ),
    (
        "stop_ends_early",
        14224,
        "SPEC 8: a left-out site's app holds the run's slot",
    ),
    (
        "stop_ends_early",
        259,
        "SPEC 8: a site back past its grace with an app of a stopped run holds the slot \
         again until that app is known to have ended",
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

/// Seed 607 of the campaign's `everything`: site s2's grace runs out while the server is
/// up, the server crashes, s2 comes back while it is down. Its apps belong to jobs the
/// server counts as ended, and it can stop them only once it runs again: the invariants
/// give them `abort_grace` from the restart, not from the return (a false alarm before).
#[test]
fn a_site_back_while_the_server_is_down_gets_its_abort_grace_from_the_restart() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/campaign/everything.toml");
    let checked = fedrun::sim::scenario::load(&path).expect("valid scenario");
    fedrun::sim::driver::run(&checked, 607).expect("seed 607 passes");
}

/// Seed 1836 of the campaign's `everything`: site s2's grace runs out while the server is
/// up (its reports lapse and a new job takes the freed slot), then the server crashes
/// before s2 is back. SPEC 8 counted s2's apps as ended when its grace ran out; the crash
/// does not make them count against `max_jobs` again (a false alarm before, hidden by the
/// tolerance of the defect the stop_ends_early case fixed).
#[test]
fn a_grace_that_ran_out_before_a_crash_stays_run_out() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/campaign/everything.toml");
    let checked = fedrun::sim::scenario::load(&path).expect("valid scenario");
    fedrun::sim::driver::run(&checked, 1836).expect("seed 1836 passes");
}
