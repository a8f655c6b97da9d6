//! Referrals (issue 20 item 4, ADR 0016): a customer who enrols with another customer's referral code is
//! recorded as referred by that wallet, with the enrolment, in the same append — never by the wallet
//! itself. The referee's first order the program's referral policy counts converts the referral, once:
//! the referee's bonus with the order, in the same append; the referrer's reward (`RewardReferral`) is
//! the step of a flow that follows (`crate::actors::Flows`).

use tally_proto::v1::{PointsEarned, ReferralConverted, ReferralRecorded, ReferralRewarded};

use super::checks::{check_credit, checked_balance};
use super::lots::{active, credit, earned_expiry, open_lot, restarted_clock};
use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;
use crate::domain::state::WalletState;

pub(super) fn referred(ctx: &Context<'_>, referrer_wallet_id: &str) -> Result<Change, Rejection> {
    if referrer_wallet_id == ctx.wallet.as_str() {
        return Err(FieldError::new("referral_code", "is this wallet's own: a customer cannot refer themselves").into());
    }
    Ok(Change::ReferralRecorded(ReferralRecorded { referrer_wallet_id: referrer_wallet_id.to_owned() }))
}

/// The order `change` earns for converts the wallet's referral: the wallet was referred and not
/// converted yet, the policy is on, and the order reaches its smallest total in its currency. An earn
/// that is not an order's never does.
pub(super) fn converts(state: &WalletState, change: &Change, ctx: &Context<'_>) -> bool {
    let policy = &ctx.program.referrals;
    let Change::Earned(PointsEarned { order: Some(_), order_amount: Some(amount), .. }) = change else { return false };
    policy.enabled
        && !state.referred_by.is_empty()
        && !state.referral_converted
        && amount.amount_minor >= policy.min_order_minor
        && (policy.currency.is_empty() || policy.currency == amount.currency)
}

/// The conversion by order `order_id`, decided on the wallet with the order's earn (and what it filled)
/// applied: the referee's bonus opens a lot of its own, and the referrer's reward is named for the flow.
pub(super) fn converted(after: &WalletState, order_id: &str, ctx: &Context<'_>) -> Result<Change, Rejection> {
    let policy = &ctx.program.referrals;
    let points = check_credit("referral", policy.referee_points)?;
    checked_balance(after.balance.checked_add(points), "referral", points)?;
    checked_balance(after.lifetime_earned.checked_add(points), "referral", points)?;
    Ok(Change::ReferralConverted(ReferralConverted {
        referrer_wallet_id: after.referred_by.clone(),
        order_id: order_id.to_owned(),
        referee_points: points,
        referrer_points: policy.referrer_points,
        lot: (points > 0).then(|| open_lot(after, points, earned_expiry(ctx), true, ctx)),
    }))
}

/// The referrer's reward for the referral of `referee_wallet_id`, credited as earned points.
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
    checked_balance(state.balance.checked_add(points), "points", points)?;
    checked_balance(state.lifetime_earned.checked_add(points), "points", points)?;
    Ok(Change::ReferralRewarded(ReferralRewarded {
        referee_wallet_id: referee_wallet_id.to_owned(),
        points,
        lot: Some(open_lot(state, points, earned_expiry(ctx), true, ctx)),
        order_id: order_id.to_owned(),
        inactivity_expires_at_ms: restarted_clock(state, ctx),
    }))
}

pub(super) fn apply_converted(state: &mut WalletState, e: &ReferralConverted) {
    state.referral_converted = true;
    state.lifetime_earned += e.referee_points;
    credit(state, e.referee_points, e.lot.as_ref());
}

pub(super) fn apply_rewarded(state: &mut WalletState, e: &ReferralRewarded) {
    if e.inactivity_expires_at_ms != 0 {
        active(state, e.inactivity_expires_at_ms);
    }
    state.lifetime_earned += e.points;
    credit(state, e.points, e.lot.as_ref());
}
