//! The engine's only source of `now`.
//!
//! The pure core never reads a clock; the engine reads one of these and hands the value in.
//! The server uses a [`ServerClock`]: the wall clock read once at start, then advanced by
//! the monotonic clock (SPEC section 3, Changed). The simulator uses a virtual clock that
//! moves only when the simulator moves it, so a scenario of hours runs in milliseconds and
//! repeats exactly.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Where a [`ServerClock`] reads the two clocks it needs; a test injects its own.
pub trait TimeSource: Send + Sync {
    /// The wall clock, UTC. May jump either way when an operator or NTP sets it.
    fn wall(&self) -> Timestamp;
    /// Time since a fixed, arbitrary origin; never goes backward and does not jump.
    fn monotonic(&self) -> Duration;
}

/// The operating system's clocks: [`WallClock`] and [`std::time::Instant`].
#[derive(Clone, Copy, Debug)]
pub struct SystemTimeSource {
    origin: Instant,
}

impl SystemTimeSource {
    /// The system's clocks, the monotonic one counted from now.
    pub fn new() -> Self {
        SystemTimeSource {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemTimeSource {
    fn default() -> Self {
        SystemTimeSource::new()
    }
}

impl TimeSource for SystemTimeSource {
    fn wall(&self) -> Timestamp {
        WallClock.now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A given wall clock beside the system's monotonic clock: how a server started on an
/// injected wall clock (a test's fixed or jumping one) builds its [`ServerClock`].
#[derive(Debug)]
pub struct WallSource<C: Clock> {
    wall: C,
    origin: Instant,
}

impl<C: Clock> WallSource<C> {
    /// Reads `wall` for the wall time; the monotonic clock is counted from now.
    pub fn new(wall: C) -> Self {
        WallSource {
            wall,
            origin: Instant::now(),
        }
    }
}

impl<C: Clock> TimeSource for WallSource<C> {
    fn wall(&self) -> Timestamp {
        self.wall.now()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// The server's clock (SPEC section 3, Changed): the wall clock is read once, at start,
/// and never taken earlier than `floor` (the last recorded event's `at`); from there the
/// time advances with the monotonic clock only. So a wall clock that jumps while the
/// server runs neither freezes time nor fires every deadline at once, and `now` never
/// goes backward; the jump shows at the next start.
#[derive(Debug)]
pub struct ServerClock<S: TimeSource = SystemTimeSource> {
    source: S,
    /// `now` at the moment of start.
    started_at: Timestamp,
    /// The monotonic reading at start.
    started_monotonic: Duration,
    /// The latest time handed out, so `now` never goes backward even if a source does.
    latest: AtomicI64,
}

impl ServerClock<SystemTimeSource> {
    /// Starts a clock on the system's clocks; `floor` is the last recorded event's `at`
    /// (`None` for an empty history).
    pub fn start(floor: Option<Timestamp>) -> Self {
        ServerClock::start_with(SystemTimeSource::new(), floor)
    }
}

impl<S: TimeSource> ServerClock<S> {
    /// Starts a clock on `source`: reads the wall clock once and takes the later of it and
    /// `floor`.
    pub fn start_with(source: S, floor: Option<Timestamp>) -> Self {
        let wall = source.wall();
        let started_at = match floor {
            Some(floor) if floor > wall => {
                tracing::warn!(
                    wall = %wall.to_iso8601(),
                    last_event = %floor.to_iso8601(),
                    "the wall clock is earlier than the last recorded event; time starts from that event"
                );
                floor
            }
            _ => wall,
        };
        let started_monotonic = source.monotonic();
        ServerClock {
            source,
            started_at,
            started_monotonic,
            latest: AtomicI64::new(started_at.as_millis()),
        }
    }

    /// The time the clock started at: the later of the wall clock and the floor.
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }
}

impl<S: TimeSource> Clock for ServerClock<S> {
    fn now(&self) -> Timestamp {
        let elapsed = self
            .source
            .monotonic()
            .saturating_sub(self.started_monotonic);
        let candidate = self.started_at.plus(elapsed).as_millis();
        let previous = self.latest.fetch_max(candidate, Ordering::SeqCst);
        Timestamp::from_millis(previous.max(candidate))
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

    /// Two clocks a test sets by hand.
    #[derive(Clone, Default)]
    struct FakeSource {
        wall_millis: Arc<AtomicI64>,
        monotonic_millis: Arc<AtomicI64>,
    }

    impl FakeSource {
        fn at(wall: Timestamp) -> Self {
            let source = FakeSource::default();
            source.set_wall(wall);
            source
        }
        fn set_wall(&self, wall: Timestamp) {
            self.wall_millis.store(wall.as_millis(), Ordering::SeqCst);
        }
        fn tick(&self, by: Duration) {
            let millis = i64::try_from(by.as_millis()).expect("a test duration");
            self.monotonic_millis.fetch_add(millis, Ordering::SeqCst);
        }
    }

    impl TimeSource for FakeSource {
        fn wall(&self) -> Timestamp {
            Timestamp::from_millis(self.wall_millis.load(Ordering::SeqCst))
        }
        fn monotonic(&self) -> Duration {
            let millis = self.monotonic_millis.load(Ordering::SeqCst);
            Duration::from_millis(u64::try_from(millis).unwrap_or(0))
        }
    }

    const START: Timestamp = Timestamp::from_millis(1_798_761_600_000); // 2027-01-01

    #[test]
    fn server_time_follows_the_monotonic_clock_whatever_the_wall_clock_does() {
        let source = FakeSource::at(START);
        let clock = ServerClock::start_with(source.clone(), None);
        assert_eq!(clock.now(), START);
        source.tick(Duration::from_secs(10));
        assert_eq!(clock.now(), START.plus(Duration::from_secs(10)));
        // The wall clock jumps back an hour: time neither freezes nor goes back.
        source.set_wall(Timestamp::from_millis(START.as_millis() - 3_600_000));
        source.tick(Duration::from_secs(5));
        assert_eq!(clock.now(), START.plus(Duration::from_secs(15)));
        // The wall clock jumps a day ahead: no deadline fires early.
        source.set_wall(START.plus(Duration::from_secs(86_400)));
        source.tick(Duration::from_secs(5));
        assert_eq!(clock.now(), START.plus(Duration::from_secs(20)));
        // The jump shows at the next start.
        let restarted = ServerClock::start_with(source.clone(), Some(clock.now()));
        assert_eq!(restarted.now(), START.plus(Duration::from_secs(86_400)));
    }

    #[test]
    fn server_time_never_starts_before_the_last_event() {
        let last_event = START.plus(Duration::from_secs(3600));
        let source = FakeSource::at(START);
        let clock = ServerClock::start_with(source.clone(), Some(last_event));
        assert_eq!(clock.started_at(), last_event);
        assert_eq!(clock.now(), last_event);
        source.tick(Duration::from_millis(1500));
        assert_eq!(clock.now(), last_event.plus(Duration::from_millis(1500)));
        // A floor earlier than the wall clock changes nothing.
        let clock = ServerClock::start_with(source, Some(START));
        assert_eq!(clock.started_at(), START);
    }

    #[test]
    fn server_time_never_goes_backward_even_if_the_monotonic_source_does() {
        let source = FakeSource::at(START);
        source.tick(Duration::from_secs(100));
        let clock = ServerClock::start_with(source.clone(), None);
        source.tick(Duration::from_secs(7));
        let seen = clock.now();
        source.monotonic_millis.store(0, Ordering::SeqCst);
        assert_eq!(clock.now(), seen);
    }

    #[test]
    fn the_system_server_clock_starts_at_the_wall_clock() {
        let before = WallClock.now();
        let clock = ServerClock::start(None);
        let first = clock.now();
        assert!(first >= before);
        assert!(clock.now() >= first);
    }

    #[test]
    fn wall_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z is 1,577,836,800 s after the epoch.
        assert!(WallClock.now().as_millis() > 1_577_836_800_000);
    }
}
