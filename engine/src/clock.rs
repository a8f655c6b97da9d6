//! The engine's clock, injected so the domain never reads time itself and tests can control it.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to (tests and simulation).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The engine's clock in production: the wall clock read once at start (checked against the log by the
/// caller), then moved by the monotonic clock. A step of the system clock (a wrong NTP server, a manual
/// change, a VM restored from an image) can neither expire points early nor move event times backwards:
/// it is reported by [`SteadyClock::check`] and not followed. Gentle corrections (the wall clock within
/// `tolerance_ms` of this one) are followed, never backwards.
#[derive(Debug)]
pub struct SteadyClock {
    wall: std::sync::Arc<dyn Clock>,
    tolerance_ms: i64,
    /// The wall time this clock was last set to, and the monotonic instant it was set at.
    anchor: parking_lot::Mutex<(i64, std::time::Instant)>,
    /// The latest time handed out: never less after.
    last_ms: AtomicI64,
}

impl SteadyClock {
    /// Starts at `start_ms` (the wall time the caller checked) and moves with the monotonic clock.
    pub fn new(wall: std::sync::Arc<dyn Clock>, start_ms: i64, tolerance_ms: i64) -> Self {
        Self {
            wall,
            tolerance_ms,
            anchor: parking_lot::Mutex::new((start_ms, std::time::Instant::now())),
            last_ms: AtomicI64::new(start_ms),
        }
    }

    /// Compares with the wall clock: within the tolerance this clock follows it; beyond, it keeps its own
    /// time and returns by how much the wall clock is off it (positive: ahead), for the operator.
    pub fn check(&self) -> Option<i64> {
        let (wall, ours) = (self.wall.now_ms(), self.now_ms());
        let off = wall - ours;
        if off.abs() > self.tolerance_ms {
            return Some(off);
        }
        *self.anchor.lock() = (wall, std::time::Instant::now());
        None
    }
}

impl Clock for SteadyClock {
    fn now_ms(&self) -> i64 {
        let (at, since) = *self.anchor.lock();
        let elapsed = i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now = at.saturating_add(elapsed);
        self.last_ms.fetch_max(now, Ordering::SeqCst).max(now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Clock, ManualClock, SteadyClock};

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn a_step_of_the_wall_clock_is_reported_not_followed() {
        let wall = Arc::new(ManualClock::new(1_000 * DAY_MS));
        let clock = SteadyClock::new(wall.clone(), 1_000 * DAY_MS, 5_000);
        assert_eq!(clock.check(), None);
        wall.advance_ms(100 * DAY_MS);
        let off = clock.check().expect("a step of 100 days");
        assert!(off > 99 * DAY_MS, "{off}");
        assert!(clock.now_ms() < 1_000 * DAY_MS + DAY_MS, "the engine's time did not jump");
        wall.advance_ms(-200 * DAY_MS);
        assert!(clock.check().is_some_and(|off| off < -99 * DAY_MS));
        assert!(clock.now_ms() >= 1_000 * DAY_MS, "nor go back");
    }

    #[test]
    fn gentle_corrections_are_followed_and_time_never_goes_back() {
        let wall = Arc::new(ManualClock::new(1_000 * DAY_MS));
        let clock = SteadyClock::new(wall.clone(), 1_000 * DAY_MS, 5_000);
        wall.advance_ms(3_000);
        assert_eq!(clock.check(), None);
        assert!(clock.now_ms() >= 1_000 * DAY_MS + 3_000, "followed forward");
        let before = clock.now_ms();
        wall.advance_ms(-4_000);
        assert_eq!(clock.check(), None, "within the tolerance");
        assert!(clock.now_ms() >= before, "a correction backwards holds time still instead");
    }
}
