//! Tiers: which tier qualifying points reach, the window they are counted in, when a tier is reviewed,
//! and where a customer stands. Pure calendar arithmetic in the program's time zone.

use std::sync::Arc;

use tally_proto::v1::{EarnedByRule, TierDefinition, TierWindow};
use time::{Date, Month, OffsetDateTime, UtcOffset};

use super::ids::FieldError;
use super::rules::{Period, period_key};
use super::state::WalletState;
use crate::limits::{REASON_BYTES_MAX, TIER_GRACE_DAYS_MAX, TIERS_MAX};

const DAY_MS: i64 = 86_400_000;
/// Largest earn multiplier, in percent.
const MULTIPLIER_PERCENT_MAX: u32 = 1_000;

/// A program's tiers, lowest first, and how they are measured. No levels: the program has no tiers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tiers {
    pub levels: Arc<[TierDefinition]>,
    pub window: TierWindow,
    pub grace_days: u32,
}

/// Checks a tier definition before it is recorded; the error names the field.
pub fn validate(levels: &[TierDefinition], window: TierWindow, grace_days: u32) -> Result<(), FieldError> {
    if levels.len() > TIERS_MAX {
        return Err(FieldError::new("tiers", format!("must be at most {TIERS_MAX}")));
    }
    if !levels.is_empty() && window == TierWindow::Unspecified {
        return Err(FieldError::new("window", "must be ROLLING_12_MONTHS or CALENDAR_YEAR"));
    }
    if grace_days > TIER_GRACE_DAYS_MAX {
        return Err(FieldError::new("grace_days", format!("must be at most {TIER_GRACE_DAYS_MAX}")));
    }
    // A rolling window is reviewed monthly: the grace must end before the next review.
    if window == TierWindow::Rolling12Months && grace_days > 27 {
        return Err(FieldError::new("grace_days", "must be at most 27 with a rolling window (reviewed every month)"));
    }
    for (i, tier) in levels.iter().enumerate() {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if tier.tier_id.is_empty() || tier.tier_id.len() > 64 || !tier.tier_id.chars().all(allowed) {
            return Err(FieldError::new(format!("tiers[{i}].tier_id"), "must be 1 to 64 bytes of A-Z a-z 0-9 - _ . :"));
        }
        if levels[..i].iter().any(|t| t.tier_id == tier.tier_id) {
            return Err(FieldError::new(format!("tiers[{i}].tier_id"), "is used by an earlier tier"));
        }
        if tier.name.len() > REASON_BYTES_MAX || tier.name.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("tiers[{i}].name"),
                format!("must be at most {REASON_BYTES_MAX} bytes, no control characters"),
            ));
        }
        if tier.min_qualifying_points < 0 {
            return Err(FieldError::new(format!("tiers[{i}].min_qualifying_points"), "must not be negative"));
        }
        if i > 0 && tier.min_qualifying_points <= levels[i - 1].min_qualifying_points {
            return Err(FieldError::new(format!("tiers[{i}].min_qualifying_points"), "must be above the tier before"));
        }
        if tier.earn_multiplier_percent != 0 && !(100..=MULTIPLIER_PERCENT_MAX).contains(&tier.earn_multiplier_percent) {
            return Err(FieldError::new(
                format!("tiers[{i}].earn_multiplier_percent"),
                format!("must be 0 (none) or within 100..={MULTIPLIER_PERCENT_MAX}"),
            ));
        }
    }
    Ok(())
}

impl Tiers {
    /// The highest tier `points` reach, with its level (from 1).
    pub fn reached(&self, points: i64) -> Option<(usize, &TierDefinition)> {
        self.levels.iter().enumerate().rev().find(|(_, t)| points >= t.min_qualifying_points).map(|(i, t)| (i + 1, t))
    }

    /// The extra points tier `tier_id`'s multiplier adds to `points` the rules gave, as an award of its
    /// own (rule id `tier:<id>`); `None` if the tier has no multiplier (or is unknown).
    pub fn multiplier_award(&self, tier_id: &str, points: i64) -> Option<EarnedByRule> {
        let (_, tier) = self.find(tier_id)?;
        if tier.earn_multiplier_percent <= 100 || points <= 0 {
            return None;
        }
        let extra = i128::from(points) * i128::from(tier.earn_multiplier_percent - 100) / 100;
        Some(EarnedByRule {
            rule_id: format!("tier:{}", tier.tier_id),
            points: i64::try_from(extra).unwrap_or(i64::MAX),
            reason: format!("{} x{}.{:02}", tier.name, tier.earn_multiplier_percent / 100, tier.earn_multiplier_percent % 100),
            ..EarnedByRule::default()
        })
    }

    /// The tier `tier_id`, with its level.
    pub fn find(&self, tier_id: &str) -> Option<(usize, &TierDefinition)> {
        self.levels.iter().enumerate().find(|(_, t)| t.tier_id == tier_id).map(|(i, t)| (i + 1, t))
    }

    /// The first and last month of the window that contains `at_ms`.
    pub fn window_months(&self, at_ms: i64, utc_offset_minutes: i32) -> (i64, i64) {
        let month = period_key(Period::Month, at_ms, utc_offset_minutes);
        match self.window {
            TierWindow::CalendarYear => (month - month.rem_euclid(12), month),
            TierWindow::Rolling12Months | TierWindow::Unspecified => (month - 11, month),
        }
    }

    /// Points earned within the window that contains `at_ms`.
    pub fn qualifying_points(&self, state: &WalletState, at_ms: i64, utc_offset_minutes: i32) -> i64 {
        let (first, last) = self.window_months(at_ms, utc_offset_minutes);
        state.qualifying_in(first, last)
    }

    /// What a review at `at_ms` measures: the window then, and for calendar years also the year that
    /// just ended (a tier reached in one year holds through the next).
    pub fn review_points(&self, state: &WalletState, at_ms: i64, utc_offset_minutes: i32) -> i64 {
        let now = self.qualifying_points(state, at_ms, utc_offset_minutes);
        if self.window != TierWindow::CalendarYear {
            return now;
        }
        let month = period_key(Period::Month, at_ms, utc_offset_minutes);
        let this_year = month - month.rem_euclid(12);
        now.max(state.qualifying_in(this_year - 12, this_year - 1))
    }

    /// When a tier held at `at_ms` is reviewed next: the start of the next window period (month or year)
    /// in the program's time zone, plus the grace period.
    pub fn next_review_ms(&self, at_ms: i64, utc_offset_minutes: i32) -> i64 {
        let month = period_key(Period::Month, at_ms, utc_offset_minutes);
        let next = match self.window {
            TierWindow::CalendarYear => month - month.rem_euclid(12) + 12,
            TierWindow::Rolling12Months | TierWindow::Unspecified => month + 1,
        };
        month_start_ms(next, utc_offset_minutes).saturating_add(i64::from(self.grace_days) * DAY_MS)
    }
}

/// The instant month `key` (months since January 1970) starts in a program `utc_offset_minutes` east of UTC.
fn month_start_ms(key: i64, utc_offset_minutes: i32) -> i64 {
    let year = i32::try_from(key.div_euclid(12) + 1970).unwrap_or(i32::MAX);
    let month = Month::try_from(u8::try_from(key.rem_euclid(12) + 1).unwrap_or(1)).unwrap_or(Month::January);
    let offset = UtcOffset::from_whole_seconds(utc_offset_minutes * 60).unwrap_or(UtcOffset::UTC);
    let Ok(date) = Date::from_calendar_date(year, month, 1) else { return i64::MAX };
    let start: OffsetDateTime = date.midnight().assume_offset(offset);
    i64::try_from(start.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Where a customer stands, for `GetWallet`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TierView {
    pub tier_id: String,
    pub name: String,
    /// 0: no tier.
    pub level: u32,
    pub qualifying_points: i64,
    /// `(id, name, min points)` of the next tier up.
    pub next: Option<(String, String, i64)>,
    pub progress_percent: u32,
    /// 0: none.
    pub next_review_at_ms: i64,
}

/// Where the wallet stands in `tiers` at `now_ms`; `None` if the program has no tiers.
pub fn view(state: &WalletState, tiers: &Tiers, now_ms: i64, utc_offset_minutes: i32) -> Option<TierView> {
    if tiers.levels.is_empty() {
        return None;
    }
    let points = tiers.qualifying_points(state, now_ms, utc_offset_minutes);
    let current = state.tier.as_ref().and_then(|t| tiers.find(&t.tier_id));
    let level = current.map_or(0, |(level, _)| level);
    let floor = current.map_or(0, |(_, t)| t.min_qualifying_points);
    let next = tiers.levels.get(level).map(|t| (t.tier_id.clone(), t.name.clone(), t.min_qualifying_points));
    let progress_percent = match &next {
        None => 100,
        Some((_, _, min)) if *min > floor => {
            let pct = i128::from(points - floor) * 100 / i128::from(min - floor);
            u32::try_from(pct.clamp(0, 100)).unwrap_or(0)
        }
        Some(_) => 0,
    };
    Some(TierView {
        tier_id: current.map(|(_, t)| t.tier_id.clone()).unwrap_or_default(),
        name: current.map(|(_, t)| t.name.clone()).unwrap_or_default(),
        level: u32::try_from(level).unwrap_or(u32::MAX),
        qualifying_points: points,
        next,
        progress_percent,
        next_review_at_ms: state.tier.as_ref().map_or(0, |t| t.next_review_at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_fall_at_the_next_period_start_plus_grace_in_the_programs_zone() {
        let tiers = |window, grace_days| Tiers { levels: Arc::new([]), window, grace_days };
        // 2026-03-04T15:00Z.
        let at = 1_772_636_400_000;
        assert_eq!(tiers(TierWindow::Rolling12Months, 0).next_review_ms(at, 0), 1_775_001_600_000, "2026-04-01T00:00Z");
        assert_eq!(tiers(TierWindow::CalendarYear, 0).next_review_ms(at, 0), 1_798_761_600_000, "2027-01-01T00:00Z");
        assert_eq!(tiers(TierWindow::CalendarYear, 30).next_review_ms(at, 60), 1_798_761_600_000 - 3_600_000 + 30 * DAY_MS);
    }
}
