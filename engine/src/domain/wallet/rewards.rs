//! Catalogue rewards: the wallet's part of a redemption (`RedeemReward`), the debit step of the flow in
//! `crate::domain::flows`. The wallet decides whether its customer may have the reward — it is active,
//! within its window, their tier reaches it, they are under its per-customer limit — and what it costs
//! (the definition in force now), and spends the points like any redemption.

use tally_proto::v1::{PointsRedeemed, RewardRedemptionCancelled, RewardRedemptionRefused};

use super::checks::checked_balance;
use super::ledger;
use super::lots::{credit, credit_parts, parts_of};
use crate::domain::Context;
use crate::domain::event::Change;
use crate::domain::rejection::Rejection;
use crate::domain::state::{CatalogueRedemption, WalletState};

/// Gives a catalogue redemption's points back (its cancellation's step in the wallet): each part into a
/// lot of the kind it came from — dated points at their own date, points on inactivity with the wallet's
/// inactivity, points that never expire (purchased) never — so a cancellation neither lengthens nor
/// shortens their life (points past their time expire with it). One event per part, numbered as they
/// will be recorded.
pub(super) fn cancel(
    state: &WalletState,
    ctx: &Context<'_>,
    redemption_id: &str,
    reason: &str,
) -> Result<(Vec<Change>, Change), Rejection> {
    let unknown = || Rejection::UnknownRedemption { redemption_id: redemption_id.to_owned() };
    let redemption = state.catalogue_redemptions.get(redemption_id).filter(|r| !r.cancelled).ok_or_else(unknown)?;
    checked_balance(state.balance.checked_add(redemption.points), "points", redemption.points)?;
    let mut changes = credit_parts(state, ctx, &redemption.parts, |points, lot, _| {
        Change::RewardCancelled(RewardRedemptionCancelled {
            redemption_id: redemption_id.to_owned(),
            reward_id: redemption.reward_id.clone(),
            points,
            reason: reason.to_owned(),
            lot: Some(lot),
        })
    });
    let last = changes.pop().ok_or_else(unknown)?;
    Ok((changes, last))
}

/// Remembers a catalogue redemption before its debit is applied: its points by the kind of lot they came
/// from (what the debit's lots hold now, before it).
pub(super) fn remember(state: &mut WalletState, e: &PointsRedeemed, at_ms: i64) {
    let parts = parts_of(state, &e.lots, e.points);
    *state.rewards_redeemed.entry(e.reward_ref.clone()).or_default() += 1;
    let redemption =
        CatalogueRedemption { reward_id: e.reward_ref.clone(), points: e.points, parts, redeemed_at_ms: at_ms, cancelled: false };
    state.catalogue_redemptions.insert(e.redemption_id.clone(), redemption);
}

pub(super) fn apply_cancelled(state: &mut WalletState, e: &RewardRedemptionCancelled) {
    state.lifetime_redeemed -= e.points;
    credit(state, e.points, e.lot.as_ref());
    // A cancellation of several parts is one: counted back with its first.
    if let Some(redemption) = state.catalogue_redemptions.get_mut(&e.redemption_id)
        && !redemption.cancelled
    {
        redemption.cancelled = true;
        if let Some(count) = state.rewards_redeemed.get_mut(&e.reward_id) {
            *count = (*count - 1).max(0);
        }
    }
}

/// The debit, or the refusal recorded in its place: either way the wallet's answer to the redemption for
/// good (a retry under the debit's key gets it back from the receipt), so two drivers of one redemption
/// can never hear different answers.
pub(super) fn redeem_or_refuse(state: &WalletState, ctx: &Context<'_>, redemption_id: &str, reward_id: &str) -> Change {
    redeem(state, ctx, redemption_id, reward_id).unwrap_or_else(|rejection| {
        Change::RewardRefused(RewardRedemptionRefused {
            redemption_id: redemption_id.to_owned(),
            reward_id: reward_id.to_owned(),
            code: crate::domain::flows::refusal_code(&rejection).to_owned(),
            message: rejection.to_string(),
        })
    })
}

fn redeem(state: &WalletState, ctx: &Context<'_>, redemption_id: &str, reward_id: &str) -> Result<Change, Rejection> {
    let reward = ctx.program.rewards.get(reward_id).ok_or_else(|| Rejection::UnknownReward { reward_id: reward_id.to_owned() })?;
    let unavailable = |why: &str| Err(Rejection::RewardNotAvailable { reward_id: reward_id.to_owned(), why: why.to_owned() });
    if !reward.active {
        return Err(Rejection::RewardInactive { reward_id: reward_id.to_owned() });
    }
    if reward.available_from_ms != 0 && ctx.now_ms < reward.available_from_ms {
        return unavailable("its availability window has not opened yet");
    }
    if reward.available_until_ms != 0 && ctx.now_ms >= reward.available_until_ms {
        return unavailable("its availability window has closed");
    }
    if !reward.min_tier_id.is_empty() {
        let needed = ctx.program.tiers.find(&reward.min_tier_id).map(|(level, _)| level);
        let has = state.tier.as_ref().and_then(|t| ctx.program.tiers.find(&t.tier_id)).map(|(level, _)| level);
        // A tier no longer defined is reached by nobody: the reward waits for the program to be fixed.
        if needed.is_none() || has < needed {
            return Err(Rejection::TierTooLow { reward_id: reward_id.to_owned(), min_tier_id: reward.min_tier_id.clone() });
        }
    }
    let redeemed = state.rewards_redeemed.get(reward_id).copied().unwrap_or(0);
    if reward.per_customer_max > 0 && redeemed >= reward.per_customer_max {
        return Err(Rejection::RewardLimitReached { reward_id: reward_id.to_owned(), max: reward.per_customer_max });
    }
    match ledger::redeem(state, ctx, reward.points, reward_id)? {
        Change::Redeemed(mut redeemed) => {
            redeemed.redemption_id = redemption_id.to_owned();
            Ok(Change::Redeemed(redeemed))
        }
        other => Ok(other),
    }
}
