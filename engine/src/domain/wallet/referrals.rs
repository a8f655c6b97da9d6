//! Referrals (issue 20 item 4, ADR 0016): a customer who enrols with another customer's referral code is
//! recorded as referred by that wallet, with the enrolment, in the same append — never by the wallet
//! itself. The referee's first order the program's referral policy counts converts the referral, once:
//! the referee's bonus with the order, in the same append — or, under a pending period, when the order's
//! period ends, unless refunds took the order below the policy's smallest by then (the referral lapses
//! and waits for the next order); the referrer's reward (`RewardReferral`) is the step of a flow that
//! follows (`crate::actors::Flows`).

use tally_proto::v1::{PointsEarned, ReferralConverted, ReferralLapsed, ReferralRecorded, ReferralRewarded};

use super::checks::{check_credit, checked_balance};
use super::lots::{active, credit, earned_expiry, open_lot, restarted_clock};
use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;
use crate::domain::rules::Order;
use crate::domain::state::WalletState;

pub(super) fn referred(ctx: &Context<'_>, referrer_wallet_id: &str) -> Result<Change, Rejection> {
    if referrer_wallet_id == ctx.wallet.as_str() {
        return Err(FieldError::new("referral_code", "is this wallet's own: a customer cannot refer themselves").into());
    }
    Ok(Change::ReferralRecorded(ReferralRecorded { referrer_wallet_id: referrer_wallet_id.to_owned() }))
}

/// At most this many orders wait out their pending period to convert one wallet's referral at once (one
/// more that counts meanwhile does not wait: if all of them lapse, the next order after them may convert
/// it).
const REFERRAL_DUE_MAX: usize = 4;

/// Whether an order of `amount_minor` in `currency` counts for the wallet's referral now: the wallet was
/// referred and not converted yet, the policy is on, and the order reaches its smallest total in its
/// currency.
fn counts(state: &WalletState, amount_minor: i64, currency: &str, ctx: &Context<'_>) -> bool {
    let policy = &ctx.program.referrals;
    let window_ms = i64::from(policy.convert_within_days) * super::lots::DAY_MS;
    policy.enabled
        && !state.referred_by.is_empty()
        && !state.referral_converted
        && (window_ms == 0 || ctx.now_ms <= state.enrolled_at_ms.saturating_add(window_ms))
        && amount_minor >= policy.min_order_minor
        && (policy.currency.is_empty() || policy.currency == currency)
}

/// When `order`, counting for the referral under a pending period, converts it (the period's end): a
/// refund meanwhile can take the order back, and its referral with it. 0: it does not wait (no pending
/// period, it does not count, or enough orders wait already).
pub(super) fn waits(state: &WalletState, order: &Order, available_at_ms: i64, ctx: &Context<'_>) -> i64 {
    let wait = ctx.program.pending_days > 0 && state.referral_due.len() < REFERRAL_DUE_MAX;
    if wait && counts(state, order.total_minor, &order.currency, ctx) { available_at_ms } else { 0 }
}

/// The order `change` earns for converts the wallet's referral at once: it counts, and the program has
/// no pending period. An earn that is not an order's never does.
pub(super) fn converts(state: &WalletState, change: &Change, ctx: &Context<'_>) -> bool {
    let Change::Earned(PointsEarned { order: Some(_), order_amount: Some(amount), .. }) = change else { return false };
    ctx.program.pending_days == 0 && counts(state, amount.amount_minor, &amount.currency, ctx)
}

/// An order (in `currency`) that waited out its pending period: it converts the referral if what is
/// left of it after refunds still counts (by the policy now), or lapses.
pub(super) fn on_maturity(state: &WalletState, order_id: &str, currency: &str, ctx: &Context<'_>) -> Change {
    let policy = &ctx.program.referrals;
    let left = state.sources.get(order_id).and_then(|s| s.order_minor.map(|total| total - s.refunded_minor));
    let reason = match left {
        _ if !policy.enabled => "the referral policy is off",
        _ if !policy.currency.is_empty() && policy.currency != currency => "the order is not in the policy's currency",
        None => "the order is no longer known",
        Some(left) if left < policy.min_order_minor => "refunded below the smallest order that counts",
        Some(_) => return converted(state, order_id, true, ctx),
    };
    Change::ReferralLapsed(ReferralLapsed { order_id: order_id.to_owned(), reason: reason.to_owned() })
}

/// The conversion by order `order_id`, decided on the wallet with the order's earn (and what it filled)
/// applied, or as time brings it: the referee's bonus opens a lot of its own (none if it would take the
/// balance out of range: a conversion is never refused), and the referrer's reward is named for the flow.
pub(super) fn converted(after: &WalletState, order_id: &str, on_maturity: bool, ctx: &Context<'_>) -> Change {
    let policy = &ctx.program.referrals;
    let fits = |points: i64| {
        check_credit("referral", points).is_ok()
            && checked_balance(after.balance.checked_add(points), "referral", points).is_ok()
            && checked_balance(after.lifetime_earned.checked_add(points), "referral", points).is_ok()
    };
    let points = if fits(policy.referee_points) { policy.referee_points } else { 0 };
    Change::ReferralConverted(ReferralConverted {
        referrer_wallet_id: after.referred_by.clone(),
        order_id: order_id.to_owned(),
        referee_points: points,
        referrer_points: policy.referrer_points,
        lot: (points > 0).then(|| open_lot(after, points, earned_expiry(ctx), true, ctx)),
        on_maturity,
    })
}

/// The referrer's reward for the referral of `referee_wallet_id`, credited as earned points — or, if it
/// would take the balance out of the ledger's range, refused and recorded so (the wallet's answer for
/// good).
pub(super) fn reward(
    state: &WalletState,
    ctx: &Context<'_>,
    referee_wallet_id: &str,
    order_id: &str,
    points: i64,
) -> Result<Change, Rejection> {
    if referee_wallet_id == ctx.wallet.as_str() {
        return Err(FieldError::new("referee_wallet_id", "is this wallet: a customer cannot refer themselves").into());
    }
    let base = ReferralRewarded { referee_wallet_id: referee_wallet_id.to_owned(), order_id: order_id.to_owned(), ..Default::default() };
    let in_range = checked_balance(state.balance.checked_add(points), "points", points)
        .and_then(|_| checked_balance(state.lifetime_earned.checked_add(points), "points", points));
    if in_range.is_err() {
        return Ok(Change::ReferralRewarded(ReferralRewarded { refused: POINTS_OUT_OF_RANGE.to_owned(), ..base }));
    }
    let cap = ctx.program.referrals.max_rewards_per_referrer;
    if cap > 0 && state.referrals_rewarded >= cap {
        return Ok(Change::ReferralRewarded(ReferralRewarded { refused: REFERRAL_CAP_REACHED.to_owned(), ..base }));
    }
    Ok(Change::ReferralRewarded(ReferralRewarded {
        points,
        lot: Some(open_lot(state, points, earned_expiry(ctx), true, ctx)),
        inactivity_expires_at_ms: restarted_clock(state, ctx),
        ..base
    }))
}

/// The codes a refused reward is recorded with: it would take the balance out of range; the referrer had
/// as many rewards as the program allows.
pub const POINTS_OUT_OF_RANGE: &str = "POINTS_OUT_OF_RANGE";
pub const REFERRAL_CAP_REACHED: &str = "REFERRAL_CAP_REACHED";

pub(super) fn apply_converted(state: &mut WalletState, e: &ReferralConverted) {
    state.referral_converted = true;
    state.referral_due.clear();
    state.lifetime_earned += e.referee_points;
    credit(state, e.referee_points, e.lot.as_ref());
}

pub(super) fn apply_lapsed(state: &mut WalletState, e: &ReferralLapsed) {
    state.referral_due.remove(&e.order_id);
}

pub(super) fn apply_rewarded(state: &mut WalletState, e: &ReferralRewarded) {
    if e.refused.is_empty() {
        state.referrals_rewarded += 1;
    }
    if e.inactivity_expires_at_ms != 0 {
        active(state, e.inactivity_expires_at_ms);
    }
    state.lifetime_earned += e.points;
    credit(state, e.points, e.lot.as_ref());
}
