//! Seeded faults for `fedrun sim` (SPEC section 10, "Changed"): the scenario's `[faults]`
//! table and the random decisions it drives.
//!
//! Every decision comes from one [`Rng`] seeded by `--seed`, drawn in the order the driver
//! asks, so a scenario and a seed replay a run exactly, faults included. Faults happen only
//! inside the fault window (`[faults] until`); after it the network is clean, the disk has
//! room, nothing crashes, and a server that stopped is restarted (as a supervisor would),
//! so every job must then reach a terminal status and settle.
//!
//! The fault model, and why each fault has the shape it has:
//! - A lost message (`drop`) is lost with its connection: fedrun's transport is a reliable
//!   stream per site, so a message never vanishes from a live connection. The site is
//!   disconnected at that instant and reconnects after a while, reporting what it runs and
//!   resending every exit report not yet acknowledged.
//! - `duplicate` delivers a site report twice, as a site does when the acknowledgement of
//!   its first copy was lost; `delay` holds a message back for up to `delay_max`; with
//!   `reorder` a delayed message may overtake the ones sent after it on its link
//!   (otherwise a link stays first-in first-out).
//! - Sites disconnect for a while (`disconnect`), restart their agent (`site_restart`:
//!   the apps keep running, answers not yet sent are lost, kept exit reports are resent),
//!   and lie (`lie`): they report the exit of an app they never ran, repeat the id of an
//!   earlier report with another outcome, or send a report id far over every size limit.
//! - The server crashes (`crash`) at IO points: in the middle of an append, between an
//!   append and its effects, during a workspace archive, and between spawning an app
//!   process and recording that it started. It restarts after up to `restart_max`.
//! - The storage fails a write (`write_fail`: nothing written), fails its fsync
//!   (`fsync_fail`: written but not durable), fills up (`disk_full`: every write fails
//!   until the fault window ends), and at a crash loses everything it had not synced with
//!   probability `power_loss`. A server whose append failed stops, and is restarted when
//!   the fault window ends.
//! - The wall clock steps forward or backward by up to `clock_step_max` (`clock_step`).
//!   The server reads it only when it starts (SPEC section 3), so a step shows at the next
//!   start.
//! - A workspace archive try fails (`archive_fail`); the server retries it.

use std::time::Duration;

use serde::Deserialize;

/// The `[faults]` table of a scenario. Rates are probabilities from 0 to 1: per message
/// for the network faults, per IO point for `crash`, per append for the storage faults, and
/// per fault tick (one every `tick_every` on average) for the site, disk and clock faults.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsSpec {
    /// End of the fault window (virtual time): no fault starts after it.
    #[serde(default = "default_until", deserialize_with = "duration")]
    pub until: Duration,
    /// A message (either way) is lost with its connection.
    #[serde(default)]
    pub drop: f64,
    /// A site report is delivered twice.
    #[serde(default)]
    pub duplicate: f64,
    /// A message is held back by up to `delay_max`.
    #[serde(default)]
    pub delay: f64,
    /// The longest delay.
    #[serde(default = "default_delay_max", deserialize_with = "duration")]
    pub delay_max: Duration,
    /// A delayed message may overtake later ones on its link.
    #[serde(default)]
    pub reorder: f64,
    /// Per tick: a site disconnects for up to `reconnect_max`.
    #[serde(default)]
    pub disconnect: f64,
    /// The longest time a disconnected site stays away (it also bounds the reconnect after
    /// a lost message).
    #[serde(default = "default_reconnect_max", deserialize_with = "duration")]
    pub reconnect_max: Duration,
    /// Per tick: a site's agent restarts.
    #[serde(default)]
    pub site_restart: f64,
    /// Per tick: a site lies.
    #[serde(default)]
    pub lie: f64,
    /// Which lies sites tell (default all): `"never_ran"`, `"repeated_id"`,
    /// `"oversized_id"`.
    #[serde(default = "default_lies")]
    pub lies: Vec<Lie>,
    /// Per IO point: the server crashes there.
    #[serde(default)]
    pub crash: f64,
    /// The longest time a crashed server stays down.
    #[serde(default = "default_restart_max", deserialize_with = "duration")]
    pub restart_max: Duration,
    /// At a crash: everything not synced is lost.
    #[serde(default)]
    pub power_loss: f64,
    /// Per append: the write fails before anything is written.
    #[serde(default)]
    pub write_fail: f64,
    /// Per append: the records are written but the fsync fails.
    #[serde(default)]
    pub fsync_fail: f64,
    /// Per tick: the disk fills up until the fault window ends.
    #[serde(default)]
    pub disk_full: f64,
    /// Per tick: the wall clock steps.
    #[serde(default)]
    pub clock_step: f64,
    /// The largest clock step, either way.
    #[serde(default = "default_clock_step_max", deserialize_with = "duration")]
    pub clock_step_max: Duration,
    /// Per try: a workspace archive fails.
    #[serde(default)]
    pub archive_fail: f64,
    /// The mean time between fault ticks.
    #[serde(default = "default_tick_every", deserialize_with = "duration")]
    pub tick_every: Duration,
}

fn default_until() -> Duration {
    Duration::from_secs(600)
}
fn default_lies() -> Vec<Lie> {
    vec![Lie::NeverRan, Lie::RepeatedId, Lie::OversizedId]
}
fn default_delay_max() -> Duration {
    Duration::from_secs(2)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_restart_max() -> Duration {
    Duration::from_secs(20)
}
fn default_clock_step_max() -> Duration {
    Duration::from_secs(3600)
}
fn default_tick_every() -> Duration {
    Duration::from_secs(10)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::settings::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl FaultsSpec {
    /// Checks that every rate is a probability and the tick interval is not zero.
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("delay", self.delay),
            ("reorder", self.reorder),
            ("disconnect", self.disconnect),
            ("site_restart", self.site_restart),
            ("lie", self.lie),
            ("crash", self.crash),
            ("power_loss", self.power_loss),
            ("write_fail", self.write_fail),
            ("fsync_fail", self.fsync_fail),
            ("disk_full", self.disk_full),
            ("clock_step", self.clock_step),
            ("archive_fail", self.archive_fail),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!(
                    "[faults] {name} must be a probability from 0 to 1, not {rate}"
                ));
            }
        }
        if self.lie > 0.0 && self.lies.is_empty() {
            return Err("[faults] lies must name at least one lie when lie > 0".to_string());
        }
        if self.tick_every.is_zero() {
            return Err("[faults] tick_every must be longer than 0s".to_string());
        }
        Ok(())
    }

    /// Whether a run with these faults may crash the server or lose its storage, or has
    /// sites that lie: the reference model is then only checked for the jobs no such fault
    /// touched.
    pub fn harms_server(&self) -> bool {
        self.crash > 0.0
            || self.write_fail > 0.0
            || self.fsync_fail > 0.0
            || self.disk_full > 0.0
            || self.clock_step > 0.0
    }
}

/// A small, portable pseudo-random generator (SplitMix64): the same seed gives the same
/// numbers on every platform and every version of fedrun's dependencies.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`. A rate of 0 draws nothing, so a run without faults
    /// consumes no randomness.
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits give a uniform float in [0, 1).
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// A duration from 0 to `max`, in whole milliseconds.
    pub fn up_to(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis() as u64 + 1))
    }
}

/// A point where the server can crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// In the middle of an append: part of the batch is written, none of it synced.
    DuringAppend,
    /// After a batch is durable, before any of its effects or acknowledgements leave.
    AfterAppend,
    /// While the workspace archive is being written.
    DuringArchive,
    /// After an app process was spawned, before its start was recorded.
    AfterSpawn,
}

/// How a storage write goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Nothing is written; the write reports an error.
    Fail,
    /// Everything is written, nothing is synced; the fsync reports an error.
    FsyncFail,
    /// The process dies after writing the first `written` records, none synced.
    Crash {
        /// How many records of the batch reached the file before the crash.
        written: usize,
    },
}

/// What happens to one message on its way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The message is lost with its connection: the site disconnects now.
    LostWithConnection {
        /// When the site reconnects, from now.
        reconnect_after: Duration,
    },
    /// The message arrives after each of these delays (two for a duplicate).
    Arrives(Vec<Duration>),
}

/// Which way a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the server to a site.
    ToSite,
    /// A report from a site to the server.
    ToServer,
}

/// A lie a site tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lie {
    /// The exit of an app of a job it never ran.
    NeverRan,
    /// An earlier report's id again, with another outcome.
    RepeatedId,
    /// A report id far larger than any limit.
    OversizedId,
}

/// A fault that a tick starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TickFault {
    /// Site number `site` disconnects and comes back after `for_`.
    Disconnect {
        /// Index of the site in the scenario.
        site: usize,
        /// How long it stays away.
        for_: Duration,
    },
    /// Site number `site` restarts its agent.
    SiteRestart {
        /// Index of the site.
        site: usize,
    },
    /// Site number `site` tells a lie.
    Lie {
        /// Index of the site.
        site: usize,
        /// Which lie.
        lie: Lie,
        /// A random number for the lie's details (which job, which outcome).
        pick: u64,
    },
    /// The disk fills up until the fault window ends.
    DiskFull,
    /// The wall clock steps by this many milliseconds (negative: backward).
    ClockStep(i64),
}

/// The fault decisions of one run.
#[derive(Clone, Debug)]
pub struct Faults {
    spec: Option<FaultsSpec>,
    rng: Rng,
    /// What happened, for the campaign's statistics and the reference model.
    pub counts: FaultCounts,
}

/// How many faults of each kind a run had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages lost with their connection.
    pub lost: u32,
    /// Reports delivered twice.
    pub duplicated: u32,
    /// Messages delayed.
    pub delayed: u32,
    /// Site disconnects and agent restarts.
    pub site_faults: u32,
    /// Lies told.
    pub lies: u32,
    /// Server crashes.
    pub crashes: u32,
    /// Storage writes or fsyncs failed (disk full included).
    pub storage_failures: u32,
    /// Crashes that lost unsynced writes.
    pub power_losses: u32,
    /// Clock steps.
    pub clock_steps: u32,
    /// Archive tries failed.
    pub archive_failures: u32,
}

impl Faults {
    /// The faults of `spec` (none when `None`), drawn from `seed`.
    pub fn new(spec: Option<&FaultsSpec>, seed: u64) -> Faults {
        Faults {
            spec: spec.cloned(),
            rng: Rng::new(seed),
            counts: FaultCounts::default(),
        }
    }

    /// The table, when the scenario has one.
    pub fn spec(&self) -> Option<&FaultsSpec> {
        self.spec.as_ref()
    }

    /// Whether faults may happen at virtual time `now`.
    pub fn active(&self, now: Duration) -> bool {
        self.spec.as_ref().is_some_and(|s| now < s.until)
    }

    /// The end of the fault window (`None` without a `[faults]` table).
    pub fn until(&self) -> Option<Duration> {
        self.spec.as_ref().map(|s| s.until)
    }

    fn live(&self, now: Duration) -> Option<FaultsSpec> {
        if self.active(now) {
            self.spec.clone()
        } else {
            None
        }
    }

    /// What happens to a message sent at `now`.
    pub fn deliver(&mut self, now: Duration, direction: Direction) -> Delivery {
        let Some(spec) = self.live(now) else {
            return Delivery::Arrives(vec![Duration::ZERO]);
        };
        if self.rng.chance(spec.drop) {
            self.counts.lost += 1;
            return Delivery::LostWithConnection {
                reconnect_after: self.rng.up_to(spec.reconnect_max),
            };
        }
        let mut delays = vec![self.delay(&spec)];
        if direction == Direction::ToServer && self.rng.chance(spec.duplicate) {
            self.counts.duplicated += 1;
            delays.push(self.delay(&spec));
        }
        Delivery::Arrives(delays)
    }

    fn delay(&mut self, spec: &FaultsSpec) -> Duration {
        if self.rng.chance(spec.delay) {
            self.counts.delayed += 1;
            self.rng.up_to(spec.delay_max)
        } else {
            Duration::ZERO
        }
    }

    /// A fair coin, for details of a fault (did the blob reach the disk before the crash).
    pub fn coin(&mut self) -> bool {
        self.rng.below(2) == 0
    }

    /// Whether a delayed message may overtake those sent before it on its link.
    pub fn may_overtake(&mut self, now: Duration) -> bool {
        match self.live(now) {
            Some(spec) => self.rng.chance(spec.reorder),
            None => false,
        }
    }

    /// Whether the server crashes at this IO point.
    pub fn crash_at(&mut self, _point: CrashPoint, now: Duration) -> bool {
        let crash = match self.live(now) {
            Some(spec) => self.rng.chance(spec.crash),
            None => false,
        };
        if crash {
            self.counts.crashes += 1;
        }
        crash
    }

    /// How long a crashed server stays down.
    pub fn restart_after(&mut self) -> Duration {
        match &self.spec {
            Some(spec) => {
                let max = spec.restart_max;
                self.rng.up_to(max)
            }
            None => Duration::ZERO,
        }
    }

    /// Whether this crash loses what was not synced.
    pub fn power_loss(&mut self) -> bool {
        let lost = match &self.spec {
            Some(spec) => {
                let p = spec.power_loss;
                self.rng.chance(p)
            }
            None => false,
        };
        if lost {
            self.counts.power_losses += 1;
        }
        lost
    }

    /// How the append of `records` records at `now` goes wrong, if it does.
    pub fn write_fault(&mut self, now: Duration, records: usize) -> Option<WriteFault> {
        let spec = self.live(now)?;
        let fault = if self.rng.chance(spec.crash) {
            self.counts.crashes += 1;
            Some(WriteFault::Crash {
                written: self.rng.below(records as u64 + 1) as usize,
            })
        } else if self.rng.chance(spec.write_fail) {
            Some(WriteFault::Fail)
        } else if self.rng.chance(spec.fsync_fail) {
            Some(WriteFault::FsyncFail)
        } else {
            None
        };
        if matches!(fault, Some(WriteFault::Fail | WriteFault::FsyncFail)) {
            self.counts.storage_failures += 1;
        }
        fault
    }

    /// Whether the archive try at `now` fails.
    pub fn archive_fails(&mut self, now: Duration) -> bool {
        let fails = match self.live(now) {
            Some(spec) => self.rng.chance(spec.archive_fail),
            None => false,
        };
        if fails {
            self.counts.archive_failures += 1;
        }
        fails
    }

    /// When the next fault tick after `now` is due, while the window lasts. Ticks come at
    /// random intervals from 1 ms to twice `tick_every`.
    pub fn next_tick(&mut self, now: Duration) -> Option<Duration> {
        let spec = self.live(now)?;
        let any = spec.disconnect + spec.site_restart + spec.lie + spec.disk_full + spec.clock_step;
        if any <= 0.0 {
            return None;
        }
        let at = now + Duration::from_millis(1) + self.rng.up_to(spec.tick_every * 2);
        (at < spec.until).then_some(at)
    }

    /// The faults a tick at `now` starts, for a scenario with `sites` sites.
    pub fn tick(&mut self, now: Duration, sites: usize) -> Vec<TickFault> {
        let Some(spec) = self.live(now) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if sites > 0 {
            if self.rng.chance(spec.disconnect) {
                self.counts.site_faults += 1;
                out.push(TickFault::Disconnect {
                    site: self.rng.below(sites as u64) as usize,
                    for_: self.rng.up_to(spec.reconnect_max),
                });
            }
            if self.rng.chance(spec.site_restart) {
                self.counts.site_faults += 1;
                out.push(TickFault::SiteRestart {
                    site: self.rng.below(sites as u64) as usize,
                });
            }
            if self.rng.chance(spec.lie) {
                self.counts.lies += 1;
                let lie = spec.lies[self.rng.below(spec.lies.len() as u64) as usize];
                out.push(TickFault::Lie {
                    site: self.rng.below(sites as u64) as usize,
                    lie,
                    pick: self.rng.next_u64(),
                });
            }
        }
        if self.rng.chance(spec.disk_full) {
            self.counts.storage_failures += 1;
            out.push(TickFault::DiskFull);
        }
        if self.rng.chance(spec.clock_step) {
            self.counts.clock_steps += 1;
            let max = spec.clock_step_max.as_millis() as u64;
            let size = self.rng.below(max + 1) as i64;
            out.push(TickFault::ClockStep(if self.rng.below(2) == 0 {
                size
            } else {
                -size
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_stable_across_versions() {
        // SplitMix64's published sequence, offset by our seed mix: a change here would
        // silently change what every committed seed replays.
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let again: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
        let mut r = Rng::new(1);
        assert!(!r.chance(0.0));
        assert!((0..100).all(|_| r.chance(1.0)));
        assert!((0..100).all(|_| r.below(3) < 3));
        assert!((0..100).all(|_| r.up_to(Duration::from_secs(2)) <= Duration::from_secs(2)));
    }

    #[test]
    fn no_table_means_no_fault_and_no_randomness() {
        let mut f = Faults::new(None, 3);
        assert!(!f.active(Duration::ZERO));
        assert_eq!(
            f.deliver(Duration::ZERO, Direction::ToServer),
            Delivery::Arrives(vec![Duration::ZERO])
        );
        assert!(!f.crash_at(CrashPoint::AfterAppend, Duration::ZERO));
        assert_eq!(f.write_fault(Duration::ZERO, 3), None);
        assert_eq!(f.next_tick(Duration::ZERO), None);
    }

    #[test]
    fn faults_stop_at_the_end_of_the_window() {
        let spec: FaultsSpec =
            toml::from_str("until = \"10s\"\ndrop = 1.0\ncrash = 1.0").expect("a valid table");
        let mut f = Faults::new(Some(&spec), 1);
        assert!(matches!(
            f.deliver(Duration::from_secs(9), Direction::ToSite),
            Delivery::LostWithConnection { .. }
        ));
        assert_eq!(
            f.deliver(Duration::from_secs(10), Direction::ToSite),
            Delivery::Arrives(vec![Duration::ZERO])
        );
        assert!(!f.crash_at(CrashPoint::AfterSpawn, Duration::from_secs(10)));
    }

    #[test]
    fn unknown_keys_and_bad_rates_are_refused() {
        let unknown = toml::from_str::<FaultsSpec>("dorp = 0.1");
        assert!(unknown
            .expect_err("unknown key")
            .to_string()
            .contains("dorp"));
        let spec: FaultsSpec = toml::from_str("drop = 1.5").expect("parses");
        assert!(spec.check().expect_err("out of range").contains("drop"));
    }
}
