//! POS holds: points set aside at the till (`AuthorizeRedemption`), then spent (`CaptureRedemption`) or
//! given back (`VoidRedemption`, a timeout, closing the wallet).

use tally_proto::v1::{HoldCaptured, HoldEnd, HoldReleased, LotPoints, PointsHeld};

use super::checks::checked_balance;
use super::lots::{active, inactivity_deadline, lot_points, take_lots, unhold};
use crate::domain::Context;
use crate::domain::command::{capture_key, void_key};
use crate::domain::event::Change;
use crate::domain::rejection::Rejection;
use crate::domain::state::{Hold, WalletState};
use crate::limits::HOLDS_PER_WALLET_MAX;

pub(super) fn authorize(
    state: &WalletState,
    ctx: &Context<'_>,
    hold_id: &str,
    points: i64,
    reward_ref: &str,
    timeout_ms: i64,
) -> Result<Change, Rejection> {
    if state.holds.len() >= HOLDS_PER_WALLET_MAX {
        return Err(Rejection::TooManyOpenHolds { open: state.holds.len(), max: HOLDS_PER_WALLET_MAX });
    }
    let available = state.available_at(ctx.now_ms);
    if points > available {
        return Err(Rejection::InsufficientPoints { available: available.max(0), requested: points });
    }
    Ok(Change::Held(PointsHeld {
        hold_id: hold_id.to_owned(),
        points,
        reward_ref: reward_ref.to_owned(),
        expires_at_ms: ctx.now_ms.saturating_add(timeout_ms),
        lots: take_lots(state, points, &[]).0,
    }))
}

pub(super) fn capture(state: &WalletState, ctx: &Context<'_>, hold_id: &str, points: Option<i64>) -> Result<Change, Rejection> {
    let hold = open_hold(state, hold_id)?;
    if hold.expires_at_ms <= ctx.now_ms {
        return Err(Rejection::HoldExpired { hold_id: hold_id.to_owned() });
    }
    let captured = points.unwrap_or(hold.points);
    if captured > hold.points {
        return Err(Rejection::CaptureExceedsHold { hold_id: hold_id.to_owned(), held: hold.points, requested: captured });
    }
    checked_balance(state.balance.checked_sub(captured), "points", captured)?;
    checked_balance(state.lifetime_redeemed.checked_add(captured), "points", captured)?;
    let (mut spent, mut released, mut left) = (Vec::new(), Vec::new(), captured);
    for (lot, points) in &hold.lots {
        let take = (*points).min(left);
        left -= take;
        if take > 0 {
            spent.push(LotPoints { lot: *lot, points: take });
        }
        if points - take > 0 {
            released.push(LotPoints { lot: *lot, points: points - take });
        }
    }
    Ok(Change::Captured(HoldCaptured {
        hold_id: hold_id.to_owned(),
        points: captured,
        released_points: hold.points - captured,
        reward_ref: hold.reward_ref.clone(),
        lots: spent,
        released_lots: released,
        inactivity_expires_at_ms: inactivity_deadline(ctx),
    }))
}

pub(super) fn void(state: &WalletState, hold_id: &str) -> Result<Change, Rejection> {
    Ok(release(hold_id, open_hold(state, hold_id)?, HoldEnd::Voided))
}

/// A hold ends unspent: all its points go back to their lots.
pub(super) fn release(hold_id: &str, hold: &Hold, reason: HoldEnd) -> Change {
    Change::Released(HoldReleased { hold_id: hold_id.to_owned(), points: hold.points, reason: reason as i32, lots: lot_points(&hold.lots) })
}

/// The open hold `hold_id`.
pub(super) fn open_hold<'s>(state: &'s WalletState, hold_id: &str) -> Result<&'s Hold, Rejection> {
    state.holds.get(hold_id).ok_or_else(|| Rejection::NoOpenHold { hold_id: hold_id.to_owned() })
}

pub(super) fn apply_held(state: &mut WalletState, e: &PointsHeld) {
    // A hold id used again once its authorization's receipt is forgotten: the old hold's capture
    // and void receipts must not answer for the new one. Exactly those two keys: the engine made them.
    state.receipts.remove(&capture_key(&e.hold_id));
    state.receipts.remove(&void_key(&e.hold_id));
    state.held_points += e.points;
    for taken in &e.lots {
        let lot = state.lots.entry(taken.lot).or_default();
        lot.points -= taken.points;
        lot.held += taken.points;
    }
    let lots = e.lots.iter().map(|l| (l.lot, l.points)).collect();
    state
        .holds
        .insert(e.hold_id.clone(), Hold { points: e.points, reward_ref: e.reward_ref.clone(), expires_at_ms: e.expires_at_ms, lots });
}

pub(super) fn apply_captured(state: &mut WalletState, e: &HoldCaptured) {
    active(state, e.inactivity_expires_at_ms);
    state.lifetime_redeemed += e.points;
    state.held_points -= e.points + e.released_points;
    state.holds.remove(&e.hold_id);
    unhold(state, &e.lots, false);
    unhold(state, &e.released_lots, true);
}

pub(super) fn apply_released(state: &mut WalletState, e: &HoldReleased) {
    state.held_points -= e.points;
    state.holds.remove(&e.hold_id);
    unhold(state, &e.lots, true);
}
