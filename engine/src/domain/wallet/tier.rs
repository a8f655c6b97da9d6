//! The customer's tier as the wallet keeps it: an earn that reaches a higher tier moves up at once, a
//! due review keeps it or moves it down, and qualifying points are counted per program-local month.
//! (The program's tier definitions are `crate::domain::tiers`.)

use tally_proto::v1::{TierChanged, TierMove, TierReviewed};

use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::state::{TierState, WalletState};
use crate::limits::QUALIFYING_MONTHS_MAX;

/// A review of the customer's tier, as of when it was due: kept, or moved to what the points reach.
pub(super) fn tier_review(state: &WalletState, held: &TierState, ctx: &Context<'_>) -> Change {
    let tiers = &ctx.program.tiers;
    let offset = ctx.program.utc_offset_minutes;
    let at = held.next_review_at_ms;
    let points = tiers.review_points(state, at, offset);
    let reached = tiers.reached(points);
    match reached {
        Some((_, tier)) if tier.tier_id == held.tier_id => Change::TierReviewed(TierReviewed {
            tier: held.tier_id.clone(),
            qualifying_points: points,
            next_review_at_ms: tiers.next_review_ms(at, offset),
        }),
        _ => {
            let from_level = tiers.find(&held.tier_id).map_or(usize::MAX, |(level, _)| level);
            let to_level = reached.map_or(0, |(level, _)| level);
            Change::TierChanged(TierChanged {
                from_tier: held.tier_id.clone(),
                to_tier: reached.map(|(_, t)| t.tier_id.clone()).unwrap_or_default(),
                r#move: if to_level > from_level { TierMove::Up } else { TierMove::Down } as i32,
                qualifying_points: points,
                next_review_at_ms: if reached.is_some() { tiers.next_review_ms(at, offset) } else { 0 },
            })
        }
    }
}

/// An earn that lifts the customer's qualifying points to a higher tier moves them up at once.
pub(super) fn tier_upgrade(state: &WalletState, change: &Change, ctx: &Context<'_>) -> Option<Change> {
    let Change::Earned(earned) = change else { return None };
    let tiers = &ctx.program.tiers;
    if tiers.levels.is_empty() || earned.points <= 0 {
        return None;
    }
    let offset = ctx.program.utc_offset_minutes;
    let (first, last) = tiers.window_months(ctx.now_ms, offset);
    let counted = if (first..=last).contains(&earned.qualifying_month) { earned.points } else { 0 };
    let points = state.qualifying_in(first, last) + counted;
    let (to_level, to) = tiers.reached(points)?;
    let current = state.tier.as_ref();
    let from_level = current.and_then(|t| tiers.find(&t.tier_id)).map_or(0, |(level, _)| level);
    (to_level > from_level).then(|| {
        Change::TierChanged(TierChanged {
            from_tier: current.map(|t| t.tier_id.clone()).unwrap_or_default(),
            to_tier: to.tier_id.clone(),
            r#move: TierMove::Up as i32,
            qualifying_points: points,
            next_review_at_ms: tiers.next_review_ms(ctx.now_ms, offset),
        })
    })
}

/// Adds `points` to the qualifying points of `month`, keeping the most recent months.
pub(super) fn count_qualifying(state: &mut WalletState, month: i64, points: i64) {
    match state.qualifying.binary_search_by_key(&month, |(m, _)| *m) {
        Ok(i) => state.qualifying[i].1 += points,
        // A refund of points from a month no longer kept changes nothing.
        Err(0) if state.qualifying.len() >= QUALIFYING_MONTHS_MAX => {}
        Err(i) => state.qualifying.insert(i, (month, points)),
    }
    if state.qualifying.len() > QUALIFYING_MONTHS_MAX {
        state.qualifying.remove(0);
    }
}

pub(super) fn apply_tier_changed(state: &mut WalletState, e: &TierChanged) {
    state.tier = (!e.to_tier.is_empty()).then(|| TierState { tier_id: e.to_tier.clone(), next_review_at_ms: e.next_review_at_ms });
}

pub(super) fn apply_tier_reviewed(state: &mut WalletState, e: &TierReviewed) {
    if let Some(tier) = state.tier.as_mut() {
        tier.next_review_at_ms = e.next_review_at_ms;
    }
}
