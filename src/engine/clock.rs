//! The engine's only source of `now`.
//!
//! The pure core never reads a clock; the engine reads one of these and hands the value in.
//! The server uses the wall clock; the simulator a virtual clock that moves only when the
//! simulator moves it, so a scenario of hours runs in milliseconds and repeats exactly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::time::Timestamp;

/// Where the engine reads the time.
pub trait Clock: Send + Sync {
    /// The current time, UTC.
    fn now(&self) -> Timestamp;
}

/// The operating system's UTC clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        // A clock before 1970 is a broken machine; treating it as the epoch keeps the
        // engine running, and the core never lets event times go backwards anyway.
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_millis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Virtual time 0 of a simulation: 2000-01-01T00:00:00Z (946,684,800 s after the epoch).
pub const SIM_EPOCH: Timestamp = Timestamp::from_millis(946_684_800_000);

/// A clock that stands still until it is moved. Clones share the same time.
#[derive(Clone, Debug)]
pub struct VirtualClock {
    millis: Arc<AtomicI64>,
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl VirtualClock {
    /// A clock at virtual time 0 ([`SIM_EPOCH`]).
    pub fn new() -> Self {
        VirtualClock {
            millis: Arc::new(AtomicI64::new(SIM_EPOCH.as_millis())),
        }
    }

    /// Moves the clock to `at`; a virtual clock never goes back, so an earlier `at` is
    /// ignored.
    pub fn advance_to(&self, at: Timestamp) {
        self.millis.fetch_max(at.as_millis(), Ordering::SeqCst);
    }

    /// The time since virtual time 0.
    pub fn elapsed(&self) -> Duration {
        self.now().since(SIM_EPOCH)
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_starts_in_2000_and_never_goes_back() {
        let clock = VirtualClock::new();
        assert_eq!(clock.now().to_iso8601(), "2000-01-01T00:00:00.000Z");
        clock.advance_to(SIM_EPOCH.plus(Duration::from_secs(90)));
        clock.advance_to(SIM_EPOCH.plus(Duration::from_secs(10)));
        assert_eq!(clock.elapsed(), Duration::from_secs(90));
        assert_eq!(clock.clone().now().to_iso8601(), "2000-01-01T00:01:30.000Z");
    }

    #[test]
    fn wall_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z is 1,577,836,800 s after the epoch.
        assert!(WallClock.now().as_millis() > 1_577_836_800_000);
    }
}
