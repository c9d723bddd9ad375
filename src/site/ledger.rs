//! A site's resource ledger: what it declares, what is reserved for schedule tries, and
//! what running jobs hold.
//!
//! Pure bookkeeping: time comes in as a `now` argument, so lapses are tested by passing a
//! later instant, never by waiting. The time type is a parameter ([`LedgerTime`]): a local
//! site uses `std::time::Instant` (the default), a simulated site its virtual clock (a
//! `Duration` since the start of the simulation, or a core `Timestamp`), so both keep
//! their books with the same code. Every resource key is a plain pool: a site can hold a
//! job when, for every key the job asks for, the amount is at most what is free (declared
//! minus reserved minus in use). A key the site does not declare has nothing free.
//!
//! A reservation lapses `reservation_timeout` after it was made unless its job starts.
//! A lapsed reservation holds nothing, but is remembered so that a late start can try to
//! take the same amounts again (and is refused when they are no longer free, so a site is
//! never oversubscribed).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::job::JobId;
use crate::lifecycle::Timestamp;

/// A point in time the ledger can compare and move forward: a wall-clock `Instant`, or a
/// virtual time.
pub trait LedgerTime: Copy + Ord + Debug {
    /// This time plus `duration`.
    fn plus(self, duration: Duration) -> Self;
}

impl LedgerTime for Instant {
    fn plus(self, duration: Duration) -> Self {
        self + duration
    }
}

/// A virtual clock: the time since the start of a simulation.
impl LedgerTime for Duration {
    fn plus(self, duration: Duration) -> Self {
        self.saturating_add(duration)
    }
}

impl LedgerTime for Timestamp {
    fn plus(self, duration: Duration) -> Self {
        Timestamp::plus(self, duration)
    }
}

/// Amounts closer than this count as equal, so `0.1 + 0.2` of a pool of `0.3` fits.
const EPSILON: f64 = 1e-9;

/// Where a job's resources stand at this site.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Holding<T = Instant> {
    /// Reserved for a schedule try; held until `expires_at` unless the job starts.
    Reserved {
        /// When the reservation lapses.
        expires_at: T,
    },
    /// The job's app is running and holds the resources until it exits.
    InUse,
}

/// One job's reservation.
#[derive(Clone, Debug, PartialEq)]
pub struct Reservation<T = Instant> {
    /// The token handed to the engine.
    pub token: String,
    /// The amounts, by resource name.
    pub resources: BTreeMap<String, f64>,
    /// Reserved or in use.
    pub holding: Holding<T>,
}

impl<T: LedgerTime> Reservation<T> {
    fn holds_at(&self, now: T) -> bool {
        match self.holding {
            Holding::Reserved { expires_at } => now < expires_at,
            Holding::InUse => true,
        }
    }
}

/// Why a reservation was refused; the message is what the scheduler records.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReserveError {
    /// Some resources are not free; one entry per short key.
    #[error("not enough free resources: {}", .shortages.join("; "))]
    Short {
        /// `num_of_gpus: asked 2, free 1 of 2`, one per key that is short.
        shortages: Vec<String>,
    },
    /// An amount is negative or not a number.
    #[error("invalid amount {amount} for resource {name:?}")]
    InvalidAmount {
        /// The resource.
        name: String,
        /// The amount asked.
        amount: f64,
    },
    /// The job already runs here.
    #[error("job {job_id} is already running at this site")]
    AlreadyRunning {
        /// The job.
        job_id: JobId,
    },
}

/// The ledger of one site, on the clock `T`.
#[derive(Clone, Debug)]
pub struct Ledger<T = Instant> {
    site: String,
    declared: BTreeMap<String, f64>,
    by_job: BTreeMap<JobId, Reservation<T>>,
    next_token: u64,
    /// Distinguishes this ledger's tokens from those of an earlier run of the same site.
    incarnation: String,
}

impl<T: LedgerTime> Ledger<T> {
    /// A ledger for `site` with the resources it declares. `incarnation` goes into every
    /// token so a token of an earlier run of the site never matches one of this run.
    pub fn new(site: &str, declared: BTreeMap<String, f64>, incarnation: &str) -> Self {
        Ledger {
            site: site.to_string(),
            declared,
            by_job: BTreeMap::new(),
            next_token: 1,
            incarnation: incarnation.to_string(),
        }
    }

    /// The declared resources.
    pub fn declared(&self) -> &BTreeMap<String, f64> {
        &self.declared
    }

    /// The reservation of `job_id`, if any (held, lapsed or in use).
    pub fn reservation(&self, job_id: JobId) -> Option<&Reservation<T>> {
        self.by_job.get(&job_id)
    }

    /// What is free of each declared resource at `now`.
    pub fn free(&self, now: T) -> BTreeMap<String, f64> {
        self.free_except(now, None)
    }

    fn free_except(&self, now: T, except: Option<JobId>) -> BTreeMap<String, f64> {
        let mut free = self.declared.clone();
        for (job_id, reservation) in &self.by_job {
            if Some(*job_id) == except || !reservation.holds_at(now) {
                continue;
            }
            for (name, amount) in &reservation.resources {
                *free.entry(name.clone()).or_insert(0.0) -= amount;
            }
        }
        free
    }

    /// Reserves `resources` for `job_id` until `now + timeout`, replacing any earlier
    /// reservation of the same job, and returns the token.
    pub fn reserve(
        &mut self,
        job_id: JobId,
        resources: &BTreeMap<String, f64>,
        now: T,
        timeout: Duration,
    ) -> Result<String, ReserveError> {
        if matches!(
            self.by_job.get(&job_id).map(|r| r.holding),
            Some(Holding::InUse)
        ) {
            return Err(ReserveError::AlreadyRunning { job_id });
        }
        self.check_fits(resources, now, Some(job_id))?;
        let token = format!("{}-{}-{}", self.site, self.incarnation, self.next_token);
        self.next_token += 1;
        self.by_job.insert(
            job_id,
            Reservation {
                token: token.clone(),
                resources: resources.clone(),
                holding: Holding::Reserved {
                    expires_at: now.plus(timeout),
                },
            },
        );
        Ok(token)
    }

    fn check_fits(
        &self,
        resources: &BTreeMap<String, f64>,
        now: T,
        except: Option<JobId>,
    ) -> Result<(), ReserveError> {
        for (name, amount) in resources {
            if !amount.is_finite() || *amount < 0.0 {
                return Err(ReserveError::InvalidAmount {
                    name: name.clone(),
                    amount: *amount,
                });
            }
        }
        let free = self.free_except(now, except);
        let shortages: Vec<String> = resources
            .iter()
            .filter_map(|(name, amount)| {
                let available = free.get(name).copied().unwrap_or(0.0);
                (*amount > available + EPSILON).then(|| {
                    let declared = self.declared.get(name).copied().unwrap_or(0.0);
                    format!("{name}: asked {amount}, free {available} of {declared}")
                })
            })
            .collect();
        if shortages.is_empty() {
            Ok(())
        } else {
            Err(ReserveError::Short { shortages })
        }
    }

    /// Gives back the reservation `token` of `job_id`. Returns false when there is no such
    /// reservation (already cancelled, replaced, or the job started).
    pub fn cancel(&mut self, job_id: JobId, token: &str) -> bool {
        match self.by_job.get(&job_id) {
            Some(r) if r.token == token && matches!(r.holding, Holding::Reserved { .. }) => {
                self.by_job.remove(&job_id);
                true
            }
            _ => false,
        }
    }

    /// The job starts: its reservation becomes in use. A lapsed reservation is taken again
    /// if its amounts are still free, else the start is refused. A job with no
    /// reservation holds nothing.
    pub fn start(&mut self, job_id: JobId, now: T) -> Result<(), ReserveError> {
        let Some(reservation) = self.by_job.get(&job_id) else {
            return Ok(());
        };
        match reservation.holding {
            Holding::InUse => return Err(ReserveError::AlreadyRunning { job_id }),
            Holding::Reserved { expires_at } if now >= expires_at => {
                let resources = reservation.resources.clone();
                self.check_fits(&resources, now, Some(job_id))?;
            }
            Holding::Reserved { .. } => {}
        }
        if let Some(reservation) = self.by_job.get_mut(&job_id) {
            reservation.holding = Holding::InUse;
        }
        Ok(())
    }

    /// Marks `resources` as in use by a running job found after a restart of the site.
    pub fn restore_in_use(&mut self, job_id: JobId, resources: BTreeMap<String, f64>) {
        let token = format!("{}-{}-restored-{job_id}", self.site, self.incarnation);
        self.by_job.insert(
            job_id,
            Reservation {
                token,
                resources,
                holding: Holding::InUse,
            },
        );
    }

    /// Frees whatever the job holds or had reserved (its app exited, or it was deleted).
    pub fn release(&mut self, job_id: JobId) {
        self.by_job.remove(&job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u8) -> JobId {
        JobId(uuid::Uuid::from_bytes([n; 16]))
    }

    fn gpus(n: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("num_of_gpus".to_string(), n)])
    }

    fn ledger() -> Ledger {
        Ledger::new("site-1", gpus(2.0), "a")
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn reserves_until_the_pool_is_empty_and_names_the_shortage() {
        let now = Instant::now();
        let mut ledger = ledger();
        let t1 = ledger
            .reserve(job(1), &gpus(1.5), now, TIMEOUT)
            .expect("fits");
        let t2 = ledger
            .reserve(job(2), &gpus(0.5), now, TIMEOUT)
            .expect("fits");
        assert_ne!(t1, t2);
        let err = ledger
            .reserve(job(3), &gpus(1.0), now, TIMEOUT)
            .expect_err("pool empty");
        assert_eq!(
            err.to_string(),
            "not enough free resources: num_of_gpus: asked 1, free 0 of 2"
        );
        assert_eq!(ledger.free(now).get("num_of_gpus"), Some(&0.0));
    }

    #[test]
    fn undeclared_keys_have_nothing_free_and_bad_amounts_are_refused() {
        let now = Instant::now();
        let mut ledger = ledger();
        let asked = BTreeMap::from([("memory_slots".to_string(), 1.0)]);
        assert!(matches!(
            ledger.reserve(job(1), &asked, now, TIMEOUT),
            Err(ReserveError::Short { .. })
        ));
        assert!(matches!(
            ledger.reserve(job(1), &gpus(-1.0), now, TIMEOUT),
            Err(ReserveError::InvalidAmount { .. })
        ));
        assert!(matches!(
            ledger.reserve(job(1), &gpus(f64::NAN), now, TIMEOUT),
            Err(ReserveError::InvalidAmount { .. })
        ));
        // Nothing asked always fits.
        assert!(ledger
            .reserve(job(1), &BTreeMap::new(), now, TIMEOUT)
            .is_ok());
    }

    #[test]
    fn a_reservation_lapses_after_the_timeout_unless_the_job_starts() {
        let now = Instant::now();
        let mut ledger = ledger();
        ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("fits");
        let just_before = now + TIMEOUT - Duration::from_millis(1);
        assert!(ledger
            .reserve(job(2), &gpus(1.0), just_before, TIMEOUT)
            .is_err());
        let at_lapse = now + TIMEOUT;
        ledger
            .reserve(job(2), &gpus(2.0), at_lapse, TIMEOUT)
            .expect("the first reservation lapsed");
        // The late start of job 1 cannot take its lapsed amounts back: job 2 holds them.
        assert!(matches!(
            ledger.start(job(1), at_lapse),
            Err(ReserveError::Short { .. })
        ));
    }

    #[test]
    fn a_started_job_holds_past_the_timeout_until_released() {
        let now = Instant::now();
        let mut ledger = ledger();
        ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("fits");
        ledger.start(job(1), now).expect("reserved");
        let much_later = now + TIMEOUT * 10;
        assert!(ledger
            .reserve(job(2), &gpus(1.0), much_later, TIMEOUT)
            .is_err());
        assert!(matches!(
            ledger.start(job(1), much_later),
            Err(ReserveError::AlreadyRunning { .. })
        ));
        ledger.release(job(1));
        assert!(ledger
            .reserve(job(2), &gpus(2.0), much_later, TIMEOUT)
            .is_ok());
    }

    #[test]
    fn a_lapsed_reservation_is_taken_again_at_start_when_free() {
        let now = Instant::now();
        let mut ledger = ledger();
        ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("fits");
        let late = now + TIMEOUT * 2;
        ledger.start(job(1), late).expect("still free");
        assert_eq!(ledger.free(late).get("num_of_gpus"), Some(&0.0));
    }

    #[test]
    fn cancel_needs_the_matching_job_and_token() {
        let now = Instant::now();
        let mut ledger = ledger();
        let token = ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("fits");
        assert!(!ledger.cancel(job(2), &token));
        assert!(!ledger.cancel(job(1), "other"));
        assert!(ledger.cancel(job(1), &token));
        assert!(
            !ledger.cancel(job(1), &token),
            "a second cancel finds nothing"
        );
        assert_eq!(ledger.free(now).get("num_of_gpus"), Some(&2.0));
        // A running job's resources are not cancelled by a stale token.
        let token = ledger
            .reserve(job(1), &gpus(1.0), now, TIMEOUT)
            .expect("fits");
        ledger.start(job(1), now).expect("reserved");
        assert!(!ledger.cancel(job(1), &token));
    }

    /// The same rules on a virtual clock, as a simulated site keeps its books: no clock is
    /// read, and the lapse happens exactly at the virtual instant.
    #[test]
    fn a_virtual_clock_keeps_the_same_books() {
        let mut ledger: Ledger<Duration> = Ledger::new("site-1", gpus(2.0), "sim");
        let start = Duration::ZERO;
        let token = ledger
            .reserve(job(1), &gpus(2.0), start, TIMEOUT)
            .expect("fits");
        assert!(token.starts_with("site-1-sim-"));
        assert_eq!(
            ledger.reservation(job(1)).map(|r| r.holding),
            Some(Holding::Reserved {
                expires_at: TIMEOUT
            })
        );
        let just_before = TIMEOUT - Duration::from_millis(1);
        assert!(ledger
            .reserve(job(2), &gpus(1.0), just_before, TIMEOUT)
            .is_err());
        assert_eq!(ledger.free(TIMEOUT).get("num_of_gpus"), Some(&2.0));
        ledger.start(job(1), just_before).expect("still reserved");
        assert_eq!(
            ledger.free(TIMEOUT * 100).get("num_of_gpus"),
            Some(&0.0),
            "a running job holds whatever the virtual time"
        );

        let mut core: Ledger<Timestamp> = Ledger::new("site-1", gpus(1.0), "core");
        let t0 = Timestamp::from_millis(1_000);
        core.reserve(job(1), &gpus(1.0), t0, TIMEOUT).expect("fits");
        assert!(core.reserve(job(2), &gpus(1.0), t0, TIMEOUT).is_err());
        core.reserve(job(2), &gpus(1.0), t0.plus(TIMEOUT), TIMEOUT)
            .expect("lapsed at exactly t0 + timeout");
    }

    #[test]
    fn a_new_try_replaces_the_jobs_earlier_reservation() {
        let now = Instant::now();
        let mut ledger = ledger();
        ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("fits");
        // Its own earlier reservation does not count against the new one.
        ledger
            .reserve(job(1), &gpus(2.0), now, TIMEOUT)
            .expect("replaces");
        assert_eq!(ledger.free(now).get("num_of_gpus"), Some(&0.0));
    }
}
