//! The read side's one retry schedule: waits that double from a first one up to a longest one,
//! optionally for a bounded number of attempts (the `exponential-backoff` crate, without jitter).
//!
//! It only says how long to wait; the caller sleeps, so a runner can wait in a `select!` beside its
//! control channel and stop at once.

use std::time::Duration;

/// The waits between the attempts of one operation that keeps failing.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    waits: exponential_backoff::IntoIter,
    max: Duration,
}

impl Backoff {
    /// Waits `first`, then twice as long each time up to `max`, for as long as the operation fails.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self::attempts(first, max, u32::MAX)
    }

    /// A rebuild's: from 100 ms up to 5 s, giving up after `attempts` failed attempts.
    pub(crate) fn rebuilding(attempts: u32) -> Self {
        Self::attempts(Duration::from_millis(100), Duration::from_secs(5), attempts)
    }

    /// The same, giving up after `attempts` failed attempts (`attempts - 1` waits).
    pub(crate) fn attempts(first: Duration, max: Duration, attempts: u32) -> Self {
        // The crate wants the first wait within the longest.
        let mut schedule = exponential_backoff::Backoff::new(attempts, first.min(max), max);
        schedule.set_jitter(0.0);
        Self { waits: schedule.into_iter(), max }
    }

    /// How long to wait after a failed attempt before the next; `None` once no attempt is left.
    pub(crate) fn next_wait(&mut self) -> Option<Duration> {
        self.waits.next().flatten()
    }

    /// The next wait of a schedule that does not give up (the longest, should it ever run out).
    pub(crate) fn wait(&mut self) -> Duration {
        self.next_wait().unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_longest() {
        let mut backoff = Backoff::new(50 * MS, 300 * MS);
        let waits: Vec<_> = std::iter::from_fn(|| backoff.next_wait()).take(6).collect();
        assert_eq!(waits, [50 * MS, 100 * MS, 200 * MS, 300 * MS, 300 * MS, 300 * MS]);
    }

    #[test]
    fn a_bounded_schedule_waits_between_its_attempts_only() {
        let mut backoff = Backoff::attempts(100 * MS, Duration::from_secs(5), 3);
        assert_eq!([backoff.next_wait(), backoff.next_wait(), backoff.next_wait()], [Some(100 * MS), Some(200 * MS), None]);
    }
}
