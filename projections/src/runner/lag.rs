//! Projection lag over a sliding window: an event's recorded time to its commit in the read model, for
//! the events of the last one to two minutes.

use hdrhistogram::Histogram;

/// How long each of the two lag histograms covers.
const LAG_WINDOW_MS: i64 = 60_000;

/// Lag samples of the current minute and of the one before: quantiles cover the last one to two minutes.
pub(super) struct LagWindow {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    current_since_ms: i64,
}

impl LagWindow {
    pub(super) fn new(now_ms: i64) -> Self {
        let empty = Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid histogram bounds");
        Self { current: empty.clone(), previous: empty, current_since_ms: now_ms }
    }

    pub(super) fn record(&mut self, now_ms: i64, lag_ms: u64) {
        let elapsed = now_ms - self.current_since_ms;
        if elapsed >= LAG_WINDOW_MS {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            // A quiet stretch of more than a window leaves nothing older behind.
            if elapsed >= 2 * LAG_WINDOW_MS {
                self.previous.reset();
            }
            // Windows stay aligned, so the two cover at most the last two minutes.
            self.current_since_ms += elapsed - elapsed % LAG_WINDOW_MS;
        }
        // Beyond the histogram's hour it counts as an hour, not as nothing.
        self.current.saturating_record(lag_ms.max(1));
    }

    /// `(p50, p99)` in ms, if there are samples.
    pub(super) fn quantiles(&self) -> (Option<u64>, Option<u64>) {
        let mut both = self.current.clone();
        let _ = both.add(&self.previous);
        if both.is_empty() { (None, None) } else { (Some(both.value_at_quantile(0.5)), Some(both.value_at_quantile(0.99))) }
    }
}

#[cfg(test)]
mod tests {
    use super::{LAG_WINDOW_MS, LagWindow};

    #[test]
    fn lag_quantiles_cover_the_last_one_to_two_minutes() {
        let mut lag = LagWindow::new(0);
        assert_eq!(lag.quantiles(), (None, None));
        // A start-up spike, then steady small lags.
        lag.record(1_000, 5_000);
        for at in (2_000..LAG_WINDOW_MS).step_by(10) {
            lag.record(at, 20);
        }
        assert!(lag.quantiles().1.is_some_and(|p99| p99 >= 20));
        lag.record(LAG_WINDOW_MS + 1, 20);
        assert!(lag.quantiles().1.is_some_and(|p99| p99 < 5_000), "still within two minutes, but 1 sample in 5,800");
        lag.record(2 * LAG_WINDOW_MS + 2, 30);
        let (p50, p99) = lag.quantiles();
        assert_eq!((p50, p99.map(|p| p < 40)), (Some(20), Some(true)), "the spike's minute is gone");
        // A long quiet stretch forgets everything before it.
        lag.record(10 * LAG_WINDOW_MS, 7);
        assert_eq!(lag.quantiles(), (Some(7), Some(7)));
    }
}
