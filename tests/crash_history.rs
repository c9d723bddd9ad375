//! Crash test: the test binary re-runs itself as a child that appends batches to a
//! history and prints each acknowledged sequence number; the parent kills it with
//! SIGKILL at a random moment, reopens the history, and checks that every acknowledged
//! event is there, intact, with a valid chain. A SIGKILL loses the process but not the
//! operating system's page cache, so this proves the process-crash promise only; power
//! loss is covered by the fsync seam test and by argument, not by this test.
mod history_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use fedrun::history::{Fold, History};
use history_support::{Step, Steps};
use rand::Rng;

const CHILD_ENV: &str = "FEDRUN_CRASH_CHILD_DIR";
const TEST_NAME: &str = "acknowledged_events_survive_sigkill";
const ROUNDS: usize = 50;

/// The event the child writes at `seq`: derived from `seq` alone, so the parent knows
/// exactly what every acknowledged record must hold.
fn event_at(seq: u64) -> Step {
    Step {
        seq,
        job: seq as u32,
        step: 1,
        note: format!("crash test event {seq} {}", "x".repeat((seq % 97) as usize)),
    }
}

/// The child: append batches of random size until killed, printing each acknowledged
/// head, and now and then take a snapshot (every batch also rewrites the anchor).
fn child(dir: &Path) -> ! {
    let mut history = History::<Step>::open(dir).expect("child opens the history");
    let mut state = history
        .recover(Steps::default())
        .expect("child recovers the state")
        .state;
    let mut rng = rand::thread_rng();
    let mut out = std::io::stdout().lock();
    let mut batches = 0u64;
    loop {
        let size = rng.gen_range(1..=16);
        let first = history.next_seq();
        let events: Vec<Step> = (first..first + size).map(event_at).collect();
        let head = history.append_batch(&events).expect("child appends");
        for event in &events {
            state
                .apply_checked(event)
                .expect("child's events are legal");
        }
        writeln!(out, "ACK {}", head.seq).expect("child writes to its pipe");
        out.flush().expect("child flushes its pipe");
        batches += 1;
        if batches.is_multiple_of(7) {
            history
                .take_snapshot(&state)
                .expect("child takes a snapshot");
        }
    }
}

#[test]
fn acknowledged_events_survive_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut acknowledged_max = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a random number of acknowledgements: the child is then somewhere
        // in its next batch (inserting, flushing, fsyncing, or snapshotting).
        let kill_after = rng.gen_range(1..=40);
        let mut seen = 0;
        while seen < kill_after {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("round {round}: child ended before {kill_after} acks"))
                .unwrap();
            if let Some(seq) = line.strip_prefix("ACK ") {
                acknowledged_max = acknowledged_max.max(seq.parse().unwrap());
                seen += 1;
            }
        }
        child.kill().unwrap();
        // Whatever the child acknowledged before it died is still in the pipe.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(seq) = line.strip_prefix("ACK ") {
                acknowledged_max = acknowledged_max.max(seq.parse().unwrap());
            }
        }
        child.wait().unwrap();

        let history = History::<Step>::open(dir.path())
            .unwrap_or_else(|err| panic!("round {round}: reopen failed: {err}"));
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(".anchor-")
            })
            .count();
        assert_eq!(
            leftovers, 0,
            "round {round}: interrupted anchor writes are cleaned up"
        );
        let head = history.head().seq;
        assert!(
            head >= acknowledged_max,
            "round {round}: acknowledged {acknowledged_max}, found only {head}"
        );
        let mut found = BTreeMap::new();
        for record in history.records_from(1) {
            let record = record.unwrap_or_else(|err| panic!("round {round}: {err}"));
            found.insert(record.seq, record.event);
        }
        for seq in 1..=acknowledged_max {
            assert_eq!(
                found.get(&seq),
                Some(&event_at(seq)),
                "round {round}: record {seq}"
            );
        }
        let recovered = history.recover(Steps::default()).unwrap();
        assert_eq!(recovered.state, history.replay(Steps::default()).unwrap());
        let report = history.verify(Steps::default());
        assert!(report.is_ok(), "round {round}: {report:?}");
    }
    assert!(acknowledged_max >= ROUNDS as u64);
}
