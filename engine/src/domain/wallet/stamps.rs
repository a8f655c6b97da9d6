//! Stamp cards: stamps from rules or by hand (`AddStamps`), and the rewards of full cards, which follow
//! in the same command as whatever filled them.

use tally_proto::v1::{PointsEarned, StampCardCompleted, StampCardDefined, StampsAdded};

use super::apply;
use super::checks::{check_credit, checked_balance};
use super::lots::{active, credit, earned_expiry, inactivity_deadline, open_lot};
use super::tier::tier_upgrade;
use crate::domain::Context;
use crate::domain::event::{Change, Event};
use crate::domain::rejection::Rejection;
use crate::domain::state::WalletState;

pub(super) fn add(ctx: &Context<'_>, card_id: &str, count: i64, reason: &str) -> Result<Change, Rejection> {
    let card = ctx.program.stamp_cards.get(card_id).ok_or_else(|| Rejection::UnknownStampCard { card_id: card_id.to_owned() })?;
    if !card.active {
        return Err(Rejection::StampCardInactive { card_id: card_id.to_owned() });
    }
    Ok(Change::Stamped(StampsAdded {
        card_id: card_id.to_owned(),
        count,
        reason: reason.to_owned(),
        inactivity_expires_at_ms: inactivity_deadline(ctx),
    }))
}

/// A change and what follows from it in the same command: stamp cards it filled, then the referral an
/// order converts, then a tier it reached.
pub(super) fn with_follow_ups(
    state: &WalletState,
    change: Change,
    ctx: &Context<'_>,
    event: &dyn Fn(Change) -> Event,
) -> Result<Vec<Change>, Rejection> {
    let added = stamps_added(&change);
    let filled: Vec<&StampCardDefined> = ctx
        .program
        .stamp_cards
        .values()
        .filter(|card| card.active && card.stamps_required > 0)
        .filter(|card| {
            let before = state.stamp_cards.get(&card.card_id).map_or(0, |c| c.stamps);
            let more: i64 = added.iter().filter(|(id, _)| *id == card.card_id).map(|(_, n)| n).sum();
            more > 0 && before + more >= card.stamps_required
        })
        .collect();
    let upgrade = tier_upgrade(state, &change, ctx);
    let converts = super::referrals::converts(state, &change, ctx);
    let mut changes = vec![change];
    // Each follow-up is decided on the wallet with what came before it applied (its lot numbered right).
    if !filled.is_empty() || converts {
        let mut after = state.clone();
        apply(&mut after, &event(changes[0].clone()));
        for card in filled {
            let completed = card_completed(&after, card, ctx)?;
            apply(&mut after, &event(completed.clone()));
            changes.push(completed);
        }
        if let (true, Change::Earned(earned)) = (converts, &changes[0]) {
            changes.push(super::referrals::converted(&after, &earned.source_ref, false, ctx));
        }
    }
    changes.extend(upgrade);
    Ok(changes)
}

/// `(card id, stamps)` a change gives.
pub(super) fn stamps_added(change: &Change) -> Vec<(&str, i64)> {
    match change {
        Change::Stamped(e) => vec![(e.card_id.as_str(), e.count)],
        Change::Earned(PointsEarned { order: Some(order), .. }) => {
            order.awards.iter().flat_map(|a| &a.stamps).map(|s| (s.card.as_str(), s.count)).collect()
        }
        _ => Vec::new(),
    }
}

/// A full card (or several): the reward as the card is defined now, and a new card with what is left.
pub(super) fn card_completed(state: &WalletState, card: &StampCardDefined, ctx: &Context<'_>) -> Result<Change, Rejection> {
    let stamps = state.stamp_cards.get(&card.card_id).map_or(0, |c| c.stamps);
    let cards = stamps / card.stamps_required;
    let points = cards.checked_mul(card.reward_points).ok_or(Rejection::PointsOutOfRange { field: "stamps", points: i64::MAX })?;
    let points = check_credit("stamps", points)?;
    checked_balance(state.balance.checked_add(points), "stamps", points)?;
    checked_balance(state.lifetime_earned.checked_add(points), "stamps", points)?;
    Ok(Change::CardCompleted(StampCardCompleted {
        card_id: card.card_id.clone(),
        cards,
        stamps_left: stamps % card.stamps_required,
        reward_ref: card.reward_ref.clone(),
        reward_points: points,
        lot: (points > 0).then(|| open_lot(state, points, earned_expiry(ctx), true, ctx)),
    }))
}

pub(super) fn apply_stamped(state: &mut WalletState, e: &StampsAdded) {
    active(state, e.inactivity_expires_at_ms);
    state.stamp_cards.entry(e.card_id.clone()).or_default().stamps += e.count;
}

pub(super) fn apply_card_completed(state: &mut WalletState, e: &StampCardCompleted) {
    let card = state.stamp_cards.entry(e.card_id.clone()).or_default();
    card.stamps = e.stamps_left;
    card.completed += e.cards;
    state.lifetime_earned += e.reward_points;
    credit(state, e.reward_points, e.lot.as_ref());
}
