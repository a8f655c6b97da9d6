//! `decide` and `apply`: the functional core of a wallet.

use tally_proto::v1::{
    CapPeriod, EarnReversed, EarnedByRule, HoldCaptured, HoldEnd, HoldReleased, LotOpened, LotPoints, OrderEarning, PendingPoints,
    PointsAdjusted, PointsEarned, PointsExpired, PointsExpiringSoon, PointsHeld, PointsMatured, PointsPurchased, PointsRedeemed,
    ReturnPolicy, StampAward, StampCardCompleted, StampCardDefined, StampsAdded, TierChanged, TierMove, TierReviewed, WalletClosed,
    WalletEnrolled,
};

use std::collections::hash_map::Entry;

use super::Context;
use super::command::{Command, CommandBody, Money};
use super::event::{Change, Event};
use super::ids::FieldError;
use super::rejection::Rejection;
use super::rules::{self, Customer, Order, Period, Rule};
use super::state::{Hold, Lot, Pending, Receipt, RuleUsage, SourceLedger, TierState, WalletState, WalletStatus};
use crate::limits::{
    BALANCE_ABS_MAX, HOLD_ID_BYTES_MAX, HOLD_TIMEOUT_MAX_MS, MONEY_MINOR_ABS_MAX, ORDER_BACKDATE_MAX_MS, ORDER_CLOCK_SKEW_MAX_MS,
    POINTS_PER_COMMAND_MAX, QUALIFYING_MONTHS_MAX, REASON_BYTES_MAX, RECEIPT_RETENTION_MS, REF_BYTES_MAX, RETENTION_SWEEP_INTERVAL_MS,
    RULE_USAGE_PERIODS_MAX, STAMPS_PER_CARD_MAX,
};

/// What `decide` concluded for a command that was not rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// New events to append, then apply.
    Append(Vec<Event>),
    /// The same command (same key, same body) was already accepted: here is its outcome; append nothing.
    AlreadyApplied(Receipt),
}

/// Decides `command` against `state`. Pure: the same inputs always give the same answer.
pub fn decide(state: &WalletState, command: &Command, ctx: &Context<'_>) -> Result<Decision, Rejection> {
    check_ref("idempotency_key", &command.idempotency_key, true)?;
    if let CommandBody::EarnForOrder { order } = &command.body
        && order.order_id != command.idempotency_key
    {
        return Err(FieldError::new("idempotency_key", "must be the order id: an order earns once").into());
    }
    if let CommandBody::AuthorizeRedemption { hold_id, .. } = &command.body
        && *hold_id != command.idempotency_key
    {
        return Err(FieldError::new("idempotency_key", "must be the hold id: a hold is authorized once").into());
    }
    if let CommandBody::PurchaseCredits { purchase_id, .. } = &command.body
        && *purchase_id != command.idempotency_key
    {
        return Err(FieldError::new("idempotency_key", "must be the purchase id: a purchase credits once").into());
    }
    let fingerprint = command.fingerprint();
    if let Some(receipt) = state.receipts.get(&command.idempotency_key) {
        if receipt.command_fingerprint == fingerprint {
            return Ok(Decision::AlreadyApplied(*receipt));
        }
        return Err(Rejection::IdempotencyKeyReused { key: command.idempotency_key.clone() });
    }
    validate(&command.body)?;
    let event = |change| Event {
        idempotency_key: command.idempotency_key.clone(),
        command_fingerprint: fingerprint,
        recorded_at_ms: ctx.now_ms,
        change,
    };
    if let CommandBody::CaptureRedemption { hold_id, .. } = &command.body
        && state.holds.get(hold_id).is_some_and(|hold| hold.expires_at_ms <= ctx.now_ms)
    {
        return Err(Rejection::HoldExpired { hold_id: hold_id.clone() });
    }
    // What time brought since the last event comes first, so the command sees the wallet as it is now.
    let (due, caught_up) = catch_up(state, ctx, &event);
    let current = caught_up.as_ref().unwrap_or(state);
    let changes = match (current.status, &command.body) {
        (_, CommandBody::RunDue) if due.is_empty() => return Err(Rejection::NothingDue { next_due_ms: state.next_due_ms() }),
        (_, CommandBody::RunDue) => Vec::new(),
        (WalletStatus::Active, CommandBody::Close { reason }) => close(current, reason),
        (_, body) => {
            let change = decide_change(current, body, ctx)?;
            with_follow_ups(current, change, ctx, &event)?
        }
    };
    // Points a hold gives back to a lot whose time has passed expire with the command that gave them back.
    let returns_points =
        changes.iter().any(|c| matches!(c, Change::Released(_) | Change::Captured(HoldCaptured { released_points: 1.., .. })));
    let after = if returns_points {
        let mut after = current.clone();
        changes.iter().for_each(|c| apply(&mut after, &event(c.clone())));
        catch_up(&after, ctx, &event).0
    } else {
        Vec::new()
    };
    Ok(Decision::Append(due.into_iter().chain(changes).chain(after).map(event).collect()))
}

/// What happened by itself up to `now_ms`, one transition at a time, each seeing the ones before: holds
/// past their timeout are released (by timeout, then hold id), pending points past their time mature
/// (by time, then credit), then lots past their expiry expire (by expiry, then lot) — points given back
/// or matured included. The changes, and the state after them if there were any.
fn catch_up(state: &WalletState, ctx: &Context<'_>, event: &dyn Fn(Change) -> Event) -> (Vec<Change>, Option<WalletState>) {
    let now_ms = ctx.now_ms;
    if state.status != WalletStatus::Active || state.next_due_ms().is_none_or(|due| due > now_ms) {
        return (Vec::new(), None);
    }
    let mut current = state.clone();
    let mut changes = Vec::new();
    while let Some(change) = next_transition(&current, ctx) {
        apply(&mut current, &event(change.clone()));
        changes.push(change);
    }
    (changes, Some(current))
}

/// The first transition due by `ctx.now_ms`, in the order [`catch_up`] records them.
fn next_transition(state: &WalletState, ctx: &Context<'_>) -> Option<Change> {
    let now_ms = ctx.now_ms;
    let hold = state.holds().filter(|(_, hold)| hold.expires_at_ms <= now_ms).min_by_key(|(id, hold)| (hold.expires_at_ms, *id));
    if let Some((id, hold)) = hold {
        return Some(release(id, hold, HoldEnd::Expired));
    }
    let pending = state.pending().filter(|(_, p)| p.available_at_ms <= now_ms).min_by_key(|(id, p)| (p.available_at_ms, *id));
    if let Some((id, pending)) = pending {
        return Some(Change::Matured(PointsMatured {
            pending: id,
            source_ref: pending.source_ref.clone(),
            points: pending.points,
            available_at_ms: pending.available_at_ms,
            lot: Some(open_lot(state, pending.points, pending.expires_at_ms, true, ctx)),
        }));
    }
    let lot = state.expired_lots(now_ms).filter(|(_, lot)| lot.points > 0).min_by_key(|(id, lot)| lot.spending_order(*id));
    if let Some((id, lot)) = lot {
        let expired_at_ms = state.lot_expiry(lot).unwrap_or(now_ms);
        return Some(Change::Expired(PointsExpired { lot: id, points: lot.points, expired_at_ms }));
    }
    let notice = state
        .lots()
        .filter(|(_, lot)| lot.notify_at_ms.is_some_and(|at| at <= now_ms) && lot.points + lot.held > 0)
        .min_by_key(|(id, lot)| (lot.notify_at_ms, *id));
    if let Some((id, lot)) = notice {
        return Some(Change::ExpiringSoon(PointsExpiringSoon {
            lot: id,
            points: lot.points + lot.held,
            expires_at_ms: lot.expires_at_ms.unwrap_or(0),
        }));
    }
    state.tier.as_ref().filter(|t| t.next_review_at_ms != 0 && t.next_review_at_ms <= now_ms).map(|t| tier_review(state, t, ctx))
}

/// A review of the customer's tier, as of when it was due: kept, or moved to what the points reach.
fn tier_review(state: &WalletState, held: &TierState, ctx: &Context<'_>) -> Change {
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

/// A change and what follows from it in the same command: stamp cards it filled, then a tier it reached.
fn with_follow_ups(
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
    let mut changes = vec![change];
    if !filled.is_empty() {
        let mut after = state.clone();
        apply(&mut after, &event(changes[0].clone()));
        for card in filled {
            let completed = card_completed(&after, card, ctx)?;
            apply(&mut after, &event(completed.clone()));
            changes.push(completed);
        }
    }
    changes.extend(upgrade);
    Ok(changes)
}

/// `(card id, stamps)` a change gives.
fn stamps_added(change: &Change) -> Vec<(&str, i64)> {
    match change {
        Change::Stamped(e) => vec![(e.card_id.as_str(), e.count)],
        Change::Earned(PointsEarned { order: Some(order), .. }) => {
            order.awards.iter().flat_map(|a| &a.stamps).map(|s| (s.card.as_str(), s.count)).collect()
        }
        _ => Vec::new(),
    }
}

/// A full card (or several): the reward as the card is defined now, and a new card with what is left.
fn card_completed(state: &WalletState, card: &StampCardDefined, ctx: &Context<'_>) -> Result<Change, Rejection> {
    let stamps = state.stamp_cards.get(&card.card_id).map_or(0, |c| c.stamps);
    let cards = stamps / card.stamps_required;
    let points = cards.checked_mul(card.reward_points).ok_or(Rejection::PointsOutOfRange { field: "stamps", points: i64::MAX })?;
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

/// An earn that lifts the customer's qualifying points to a higher tier moves them up at once.
fn tier_upgrade(state: &WalletState, change: &Change, ctx: &Context<'_>) -> Option<Change> {
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

/// A hold ends unspent: all its points go back to their lots.
fn release(hold_id: &str, hold: &Hold, reason: HoldEnd) -> Change {
    Change::Released(HoldReleased { hold_id: hold_id.to_owned(), points: hold.points, reason: reason as i32, lots: lot_points(&hold.lots) })
}

fn lot_points(lots: &[(u64, i64)]) -> Vec<LotPoints> {
    lots.iter().map(|(lot, points)| LotPoints { lot: *lot, points: *points }).collect()
}

/// Takes `points` from the unheld points of the lots: `first` ones first (a source's own lots), then
/// soonest expiry first. Returns the lots and what they could not cover.
fn take_lots(state: &WalletState, points: i64, first: &[u64]) -> (Vec<LotPoints>, i64) {
    let mut lots: Vec<(u64, &Lot)> = state.lots().filter(|(_, lot)| lot.points > 0).collect();
    lots.sort_unstable_by_key(|(id, lot)| (!first.contains(id), lot.spending_order(*id)));
    let mut left = points;
    let mut taken = Vec::new();
    for (id, lot) in lots {
        if left <= 0 {
            break;
        }
        let take = lot.points.min(left);
        taken.push(LotPoints { lot: id, points: take });
        left -= take;
    }
    (taken, left)
}

/// The lot a credit of `points` opens: what is left after paying back the debt, joining an open lot
/// that expires with it if there is one. Earned points without a date expire with the wallet's
/// inactivity under such a policy; purchased ones never.
fn open_lot(state: &WalletState, points: i64, expires_at_ms: Option<i64>, earned: bool, ctx: &Context<'_>) -> LotOpened {
    let into_lot = points - points.min(state.debt.max(0));
    let on_inactivity = earned && expires_at_ms.is_none() && super::expiry::on_inactivity(&ctx.program.expiry);
    let open = state.lots().find(|(_, lot)| lot.expires_at_ms == expires_at_ms && lot.on_inactivity == on_inactivity);
    let lot = open.map_or(state.version + 1, |(id, _)| id);
    // A lot credited already inside its notice period gets no notice.
    let notice_ms = i64::from(ctx.program.expiry.notice_days) * DAY_MS;
    let notify_at_ms = match (open, expires_at_ms) {
        (Some((_, open)), _) => open.notify_at_ms.unwrap_or(0),
        (None, Some(at)) if notice_ms > 0 && at - notice_ms > ctx.now_ms => at - notice_ms,
        _ => 0,
    };
    LotOpened { points: into_lot.max(0), expires_at_ms: expires_at_ms.unwrap_or(0), lot, notify_at_ms, on_inactivity }
}

/// What a customer's activity records under an inactivity policy: the wallet's new deadline (0: none).
fn inactivity_deadline(ctx: &Context<'_>) -> i64 {
    super::expiry::inactivity_deadline(&ctx.program.expiry, ctx.now_ms, ctx.program.utc_offset_minutes).unwrap_or(0)
}

const DAY_MS: i64 = 86_400_000;

/// When points earned now expire under the program's policy.
fn earned_expiry(ctx: &Context<'_>) -> Option<i64> {
    super::expiry::expires_at(&ctx.program.expiry, ctx.now_ms, ctx.program.utc_offset_minutes)
}

/// Closing releases the open holds (in hold id order), then forfeits a positive balance and every lot.
fn close(state: &WalletState, reason: &str) -> Vec<Change> {
    let mut holds: Vec<(&str, &Hold)> = state.holds().collect();
    holds.sort_unstable_by_key(|(id, _)| *id);
    let released = holds.into_iter().map(|(id, hold)| release(id, hold, HoldEnd::WalletClosed));
    let lots = state.lots().map(|(id, lot)| LotPoints { lot: id, points: lot.points + lot.held }).filter(|l| l.points > 0).collect();
    let pending = state.pending().map(|(id, p)| LotPoints { lot: id, points: p.points }).collect();
    let closed = Change::Closed(WalletClosed { reason: reason.to_owned(), forfeited_points: state.balance.max(0), lots, pending });
    released.chain(std::iter::once(closed)).collect()
}

/// The open hold `hold_id`.
fn open_hold<'s>(state: &'s WalletState, hold_id: &str) -> Result<&'s Hold, Rejection> {
    state.holds.get(hold_id).ok_or_else(|| Rejection::NoOpenHold { hold_id: hold_id.to_owned() })
}

fn decide_change(state: &WalletState, body: &CommandBody, ctx: &Context<'_>) -> Result<Change, Rejection> {
    let available = state.available_at(ctx.now_ms);
    match (state.status, body) {
        (WalletStatus::NotEnrolled, CommandBody::Enroll { customer_ref }) => Ok(Change::Enrolled(WalletEnrolled {
            tenant_id: ctx.tenant.as_str().to_owned(),
            wallet_id: ctx.wallet.as_str().to_owned(),
            customer_ref: customer_ref.clone(),
        })),
        (WalletStatus::NotEnrolled, _) => Err(Rejection::WalletNotFound),
        (WalletStatus::Closed, _) => Err(Rejection::WalletClosed),
        (WalletStatus::Active, CommandBody::Enroll { .. }) => Err(Rejection::AlreadyEnrolled),
        (WalletStatus::Active, CommandBody::Earn { points, reason, source_ref, order_amount }) => {
            checked_balance(state.balance.checked_add(*points), "points", *points)?;
            checked_balance(state.lifetime_earned.checked_add(*points), "points", *points)?;
            Ok(Change::Earned(PointsEarned {
                points: *points,
                reason: reason.clone(),
                source_ref: source_ref.clone(),
                order_amount: order_amount.clone(),
                order: None,
                lot: Some(open_lot(state, *points, earned_expiry(ctx), true, ctx)),
                pending: None,
                qualifying_month: rules::period_key(Period::Month, ctx.now_ms, ctx.program.utc_offset_minutes),
                inactivity_expires_at_ms: inactivity_deadline(ctx),
                refundable_until_ms: refund_deadline(ctx, ctx.now_ms),
            }))
        }
        (WalletStatus::Active, CommandBody::Redeem { points, reward_ref }) => {
            if *points > available {
                return Err(Rejection::InsufficientPoints { available: available.max(0), requested: *points });
            }
            checked_balance(state.lifetime_redeemed.checked_add(*points), "points", *points)?;
            let (lots, _) = take_lots(state, *points, &[]);
            let inactivity_expires_at_ms = inactivity_deadline(ctx);
            Ok(Change::Redeemed(PointsRedeemed { points: *points, reward_ref: reward_ref.clone(), lots, inactivity_expires_at_ms }))
        }
        (WalletStatus::Active, CommandBody::Adjust { points, reason, staff_ref }) => {
            let after = checked_balance(state.balance.checked_add(*points), "points", *points)?;
            checked_balance(state.lifetime_adjusted.checked_add(*points), "points", *points)?;
            // A manual correction never creates a debt nor takes held points: debts only come from
            // refunds, by policy.
            if *points < 0 && (after < 0 || available + *points < 0) {
                return Err(Rejection::InsufficientPoints { available: available.max(0), requested: -*points });
            }
            let (lot, lots, inactivity_expires_at_ms) = if *points > 0 {
                // Staff credits are not the customer's activity, but a credit to a wallet that has
                // lapsed restarts its clock: the points must not be past their time already.
                let lapsed = state.inactivity_expires_at_ms.is_none_or(|at| at <= ctx.now_ms);
                let deadline = if lapsed { inactivity_deadline(ctx) } else { 0 };
                (Some(open_lot(state, *points, earned_expiry(ctx), true, ctx)), Vec::new(), deadline)
            } else {
                (None, take_lots(state, -*points, &[]).0, 0)
            };
            Ok(Change::Adjusted(PointsAdjusted {
                points: *points,
                reason: reason.clone(),
                staff_ref: staff_ref.clone(),
                lot,
                lots,
                inactivity_expires_at_ms,
            }))
        }
        (WalletStatus::Active, CommandBody::Reverse { source_ref, points, reason }) => {
            let ledger = refundable_source(state, source_ref, ctx)?;
            let reversible = ledger.reversible();
            let requested = points.unwrap_or(reversible);
            if requested > reversible || requested <= 0 {
                return Err(Rejection::ReversalExceedsEarned { source_ref: source_ref.clone(), reversible, requested });
            }
            reversal(state, ctx, source_ref, requested, reason, 0)
        }
        // `decide` closes through `close` and runs due transitions itself; these answers are theirs.
        (WalletStatus::Active, CommandBody::Close { reason }) => {
            let mut changes = close(state, reason);
            Ok(changes.pop().unwrap_or_else(|| Change::Closed(WalletClosed { reason: reason.clone(), ..WalletClosed::default() })))
        }
        (WalletStatus::Active, CommandBody::RunDue) => Err(Rejection::NothingDue { next_due_ms: state.next_due_ms() }),
        (WalletStatus::Active, CommandBody::AuthorizeRedemption { hold_id, points, reward_ref, timeout_ms }) => {
            if *points > available {
                return Err(Rejection::InsufficientPoints { available: available.max(0), requested: *points });
            }
            Ok(Change::Held(PointsHeld {
                hold_id: hold_id.clone(),
                points: *points,
                reward_ref: reward_ref.clone(),
                expires_at_ms: ctx.now_ms.saturating_add(*timeout_ms),
                lots: take_lots(state, *points, &[]).0,
            }))
        }
        (WalletStatus::Active, CommandBody::CaptureRedemption { hold_id, points }) => {
            let hold = open_hold(state, hold_id)?;
            if hold.expires_at_ms <= ctx.now_ms {
                return Err(Rejection::HoldExpired { hold_id: hold_id.clone() });
            }
            let captured = points.unwrap_or(hold.points);
            if captured > hold.points {
                return Err(Rejection::CaptureExceedsHold { hold_id: hold_id.clone(), held: hold.points, requested: captured });
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
                hold_id: hold_id.clone(),
                points: captured,
                released_points: hold.points - captured,
                reward_ref: hold.reward_ref.clone(),
                lots: spent,
                released_lots: released,
                inactivity_expires_at_ms: inactivity_deadline(ctx),
            }))
        }
        (WalletStatus::Active, CommandBody::VoidRedemption { hold_id }) => {
            Ok(release(hold_id, open_hold(state, hold_id)?, HoldEnd::Voided))
        }
        (WalletStatus::Active, CommandBody::PurchaseCredits { purchase_id, package_id }) => {
            let package =
                ctx.program.packages.get(package_id).ok_or_else(|| Rejection::UnknownPackage { package_id: package_id.clone() })?;
            if !package.active {
                return Err(Rejection::PackageInactive { package_id: package_id.clone() });
            }
            checked_balance(state.balance.checked_add(package.points), "points", package.points)?;
            checked_balance(state.lifetime_purchased.checked_add(package.points), "points", package.points)?;
            Ok(Change::Purchased(PointsPurchased {
                purchase_id: purchase_id.clone(),
                package_id: package_id.clone(),
                points: package.points,
                price: package.price.clone(),
                // Prepaid value: it does not expire.
                lot: Some(open_lot(state, package.points, None, false, ctx)),
                inactivity_expires_at_ms: inactivity_deadline(ctx),
            }))
        }
        (WalletStatus::Active, CommandBody::EarnForOrder { order }) => earn_for_order(state, order, ctx),
        (WalletStatus::Active, CommandBody::AddStamps { card_id, count, reason }) => {
            let card = ctx.program.stamp_cards.get(card_id).ok_or_else(|| Rejection::UnknownStampCard { card_id: card_id.clone() })?;
            if !card.active {
                return Err(Rejection::StampCardInactive { card_id: card_id.clone() });
            }
            Ok(Change::Stamped(StampsAdded {
                card_id: card_id.clone(),
                count: *count,
                reason: reason.clone(),
                inactivity_expires_at_ms: inactivity_deadline(ctx),
            }))
        }
        (WalletStatus::Active, CommandBody::RefundOrder { order_id, amount_minor, reason }) => {
            let ledger = refundable_source(state, order_id, ctx)?;
            let order_minor = ledger.order_minor.ok_or_else(|| Rejection::NotAnOrder { source_ref: order_id.clone() })?;
            let refundable = order_minor - ledger.refunded_minor;
            let amount = amount_minor.unwrap_or(refundable);
            if amount <= 0 || amount > refundable {
                return Err(Rejection::RefundExceedsOrder {
                    order_id: order_id.clone(),
                    refundable_minor: refundable,
                    requested_minor: amount,
                });
            }
            let requested = proportional_reversal(ledger, amount, order_minor);
            reversal(state, ctx, order_id, requested, reason, amount)
        }
    }
}

/// The source a refund or reversal takes points back from, if its refund window is still open.
fn refundable_source<'s>(state: &'s WalletState, source_ref: &str, ctx: &Context<'_>) -> Result<&'s SourceLedger, Rejection> {
    let ledger = state.sources.get(source_ref).ok_or_else(|| Rejection::UnknownSource { source_ref: source_ref.to_owned() })?;
    if !ledger.refundable_at(ctx.now_ms) {
        return Err(Rejection::RefundWindowClosed { source_ref: source_ref.to_owned(), closed_at_ms: ledger.refundable_until_ms });
    }
    Ok(ledger)
}

/// Until when points earned from something that happened at `at_ms` can be taken back.
fn refund_deadline(ctx: &Context<'_>, at_ms: i64) -> i64 {
    at_ms.saturating_add(i64::from(ctx.program.refund_window_days) * DAY_MS)
}

/// Points a refund of `amount` more of an order takes back: the order's earnings in proportion to
/// everything refunded so far (rounded down, all of them once the whole amount is refunded), less what
/// was already taken back from it.
fn proportional_reversal(ledger: &SourceLedger, amount: i64, order_minor: i64) -> i64 {
    let refunded = i128::from(ledger.refunded_minor) + i128::from(amount);
    let due = if refunded >= i128::from(order_minor) {
        i128::from(ledger.earned)
    } else {
        i128::from(ledger.earned) * refunded / i128::from(order_minor)
    };
    let due = i64::try_from(due).unwrap_or(ledger.earned);
    (due - ledger.reversed).clamp(0, ledger.reversible().max(0))
}

/// Takes back `requested` points of `source_ref` under the program's return policy.
fn reversal(
    state: &WalletState,
    ctx: &Context<'_>,
    source_ref: &str,
    requested: i64,
    reason: &str,
    refund_amount_minor: i64,
) -> Result<Change, Rejection> {
    let policy = ctx.program.return_policy;
    // The order's own pending points go first: a refund inside the return window cancels them.
    let mut own_pending: Vec<(u64, i64)> =
        state.pending().filter(|(_, p)| p.source_ref == source_ref).map(|(id, p)| (id, p.points)).collect();
    own_pending.sort_unstable();
    let own_pending_points: i64 = own_pending.iter().map(|(_, points)| points).sum();
    let reversed = match policy {
        // Held points stay held: the cap is what is available, and the order's pending points.
        ReturnPolicy::CapAtZero => requested.min(state.available_at(ctx.now_ms).max(0) + own_pending_points),
        ReturnPolicy::AllowNegative | ReturnPolicy::Unspecified => requested,
    };
    checked_balance(state.balance.checked_sub(reversed), "points", requested)?;
    let mut left = reversed;
    let mut pending = Vec::new();
    for (id, points) in own_pending {
        let take = points.min(left);
        if take > 0 {
            pending.push(LotPoints { lot: id, points: take });
            left -= take;
        }
    }
    let own = state.sources.get(source_ref).map_or(&[][..], |ledger| ledger.lots.as_slice());
    let (lots, _) = take_lots(state, left, own);
    Ok(Change::Reversed(EarnReversed {
        source_ref: source_ref.to_owned(),
        requested_points: requested,
        reversed_points: reversed,
        shortfall_points: requested - reversed,
        reason: reason.to_owned(),
        policy: match policy {
            ReturnPolicy::CapAtZero => ReturnPolicy::CapAtZero,
            _ => ReturnPolicy::AllowNegative,
        } as i32,
        refund_amount_minor,
        lots,
        pending,
    }))
}

fn cap_period(period: Period) -> CapPeriod {
    match period {
        Period::Day => CapPeriod::Day,
        Period::Week => CapPeriod::Week,
        Period::Month => CapPeriod::Month,
        Period::Year => CapPeriod::Year,
        Period::Lifetime => CapPeriod::Lifetime,
    }
}

/// Runs the rules in force when the order was placed and records what each gave.
fn earn_for_order(state: &WalletState, order: &Order, ctx: &Context<'_>) -> Result<Change, Rejection> {
    // The receipt (the order id is the key) answers a retry; once it is forgotten, the order's source
    // still refuses a second earn while its refund window lasts.
    if state.sources.get(&order.order_id).is_some_and(|ledger| ledger.order_minor.is_some() && ledger.refundable_at(ctx.now_ms)) {
        return Err(Rejection::OrderAlreadyEarned { order_id: order.order_id.clone() });
    }
    let placed_at_ms = order.placed_at_ms.unwrap_or(ctx.now_ms);
    if placed_at_ms > ctx.now_ms.saturating_add(ORDER_CLOCK_SKEW_MAX_MS) {
        return Err(FieldError::new("order.placed_at", "is in the future").into());
    }
    if placed_at_ms < ctx.now_ms.saturating_sub(ORDER_BACKDATE_MAX_MS) {
        return Err(FieldError::new("order.placed_at", format!("is more than {} days ago", ORDER_BACKDATE_MAX_MS / 86_400_000)).into());
    }
    let offset = ctx.program.utc_offset_minutes;
    let (rules_version, breakdown) = match ctx.program.rules_at(placed_at_ms) {
        None => (0, rules::Breakdown::default()),
        Some(version) => {
            let rules =
                version.rules.as_ref().map_err(|e| Rejection::RulesUnreadable { version: version.version, reason: e.to_string() })?;
            let used = |rule: &Rule, period: Period| {
                state.rule_points(&rule.id, cap_period(period) as i32, rules::period_key(period, placed_at_ms, offset))
            };
            let tier = state.tier.as_ref().map(|t| t.tier_id.as_str());
            let customer = Customer { tier, previous_orders: state.orders_placed, rule_points_in_period: &used };
            let breakdown =
                rules::evaluate(rules, order, &customer, placed_at_ms, offset).map_err(|rules::EvalError::AwardTooLarge { points }| {
                    Rejection::PointsOutOfRange { field: "order", points: i64::try_from(points).unwrap_or(i64::MAX) }
                })?;
            (version.version, breakdown)
        }
    };
    let mut awards: Vec<EarnedByRule> = breakdown
        .awards
        .into_iter()
        .map(|a| EarnedByRule {
            rule_id: a.rule_id.to_string(),
            points: a.points,
            capped_points: a.capped_points,
            reason: a.reason.to_string(),
            stamps: a.stamps.into_iter().map(|(card, count)| StampAward { card: card.to_string(), count }).collect(),
            cap_period: a.cap_period.map_or(CapPeriod::Unspecified, cap_period) as i32,
            cap_period_key: a.cap_period.map_or(0, |p| rules::period_key(p, placed_at_ms, offset)),
        })
        .collect();
    let mut points = breakdown.total_points;
    // The tier's benefit: a multiplier on what the rules gave, as its own award.
    if let Some(award) = state.tier.as_ref().and_then(|t| ctx.program.tiers.multiplier_award(&t.tier_id, points)) {
        points = points.checked_add(award.points).ok_or(Rejection::PointsOutOfRange { field: "order", points: award.points })?;
        awards.push(award);
    }
    checked_balance(state.balance.checked_add(points), "order", points)?;
    checked_balance(state.lifetime_earned.checked_add(points), "order", points)?;
    // The return window runs from when the order was placed.
    let available_at_ms = placed_at_ms.saturating_add(i64::from(ctx.program.pending_days) * DAY_MS);
    let pending = points > 0 && available_at_ms > ctx.now_ms;
    let expires_at_ms = earned_expiry(ctx);
    Ok(Change::Earned(PointsEarned {
        points,
        reason: "order".to_owned(),
        source_ref: order.order_id.clone(),
        order_amount: Some(Money { amount_minor: order.total_minor, currency: order.currency.clone() }),
        order: Some(OrderEarning { rules_version, awards, placed_at_ms, channel: order.channel.clone(), store: order.store.clone() }),
        lot: (!pending).then(|| open_lot(state, points, expires_at_ms, true, ctx)),
        pending: pending.then(|| PendingPoints { points, available_at_ms, expires_at_ms: expires_at_ms.unwrap_or(0) }),
        // Orders qualify in the month they were placed.
        qualifying_month: rules::period_key(Period::Month, placed_at_ms, offset),
        inactivity_expires_at_ms: inactivity_deadline(ctx),
        // Pending points can always be cancelled by a refund until they mature.
        refundable_until_ms: refund_deadline(ctx, placed_at_ms).max(available_at_ms),
    }))
}

/// Folds one event into the state. Holds no business rule: every amount comes from the event.
pub fn apply(state: &mut WalletState, event: &Event) {
    match &event.change {
        Change::Enrolled(e) => {
            state.status = WalletStatus::Active;
            state.customer_ref.clone_from(&e.customer_ref);
            state.enrolled_at_ms = event.recorded_at_ms;
        }
        Change::Earned(e) => {
            active(state, e.inactivity_expires_at_ms);
            state.lifetime_earned += e.points;
            credit(state, e.points, e.lot.as_ref());
            if let Some(pending) = e.pending.as_ref().filter(|p| p.points > 0) {
                state.pending_points += pending.points;
                let expires_at_ms = (pending.expires_at_ms != 0).then_some(pending.expires_at_ms);
                let available_at_ms = pending.available_at_ms;
                let source_ref = e.source_ref.clone();
                state.pending.insert(state.version + 1, Pending { points: pending.points, source_ref, available_at_ms, expires_at_ms });
            }
            count_qualifying(state, e.qualifying_month, e.points);
            for stamp in e.order.iter().flat_map(|o| &o.awards).flat_map(|a| &a.stamps) {
                state.stamp_cards.entry(stamp.card.clone()).or_default().stamps += stamp.count;
            }
            let source = match state.sources.entry(e.source_ref.clone()) {
                Entry::Occupied(known) => {
                    let source = known.into_mut();
                    let (kept, now) = (source.refundable_until_ms, e.refundable_until_ms);
                    if !source.refundable_at(event.recorded_at_ms) {
                        // Past its window (only not swept yet): what it earned before stays closed.
                        *source = SourceLedger { refundable_until_ms: now, ..SourceLedger::default() };
                    } else {
                        // 0 is "for good" (an event from before refund windows).
                        source.refundable_until_ms = if kept == 0 || now == 0 { 0 } else { kept.max(now) };
                    }
                    source
                }
                Entry::Vacant(new) => new.insert(SourceLedger { refundable_until_ms: e.refundable_until_ms, ..SourceLedger::default() }),
            };
            source.earned += e.points;
            source.qualifying_month = Some(e.qualifying_month);
            remember_lot(source, e.lot.as_ref());
            if let Some(order) = &e.order {
                state.orders_placed += 1;
                source.order_minor = Some(e.order_amount.as_ref().map_or(0, |m| m.amount_minor));
                for award in order.awards.iter().filter(|a| a.cap_period != CapPeriod::Unspecified as i32 && a.points != 0) {
                    count_usage(state.rule_usage.entry(award.rule_id.clone()).or_default(), award);
                }
            }
        }
        Change::Redeemed(e) => {
            active(state, e.inactivity_expires_at_ms);
            state.lifetime_redeemed += e.points;
            debit(state, e.points, &e.lots);
        }
        Change::Adjusted(e) => {
            if e.inactivity_expires_at_ms != 0 {
                active(state, e.inactivity_expires_at_ms);
            }
            state.lifetime_adjusted += e.points;
            if e.points > 0 {
                credit(state, e.points, e.lot.as_ref());
            } else {
                debit(state, -e.points, &e.lots);
            }
        }
        Change::Reversed(e) => {
            state.lifetime_reversed += e.reversed_points;
            let from_pending = take_pending(state, &e.pending);
            debit(state, e.reversed_points - from_pending, &e.lots);
            // Refunds are refused after the window: the source is there (an event of an older build
            // that outlived it changes only the balance and lots).
            if let Some(source) = state.sources.get_mut(&e.source_ref) {
                source.reversed += e.requested_points;
                source.refunded_minor += e.refund_amount_minor;
                if let Some(month) = source.qualifying_month {
                    count_qualifying(state, month, -e.requested_points);
                }
            }
        }
        Change::Closed(e) => {
            state.status = WalletStatus::Closed;
            let from_pending = take_pending(state, &e.pending);
            debit(state, e.forfeited_points - from_pending, &e.lots);
        }
        Change::Held(e) => {
            // A hold id used again once its authorization's receipt is forgotten: the old hold's capture
            // and void receipts (keys that extend the hold id) must not answer for the new one.
            let previous = format!("{}/", e.hold_id);
            state.receipts.retain(|key, _| !key.starts_with(&previous));
            state.held_points += e.points;
            for taken in &e.lots {
                let lot = state.lots.entry(taken.lot).or_default();
                lot.points -= taken.points;
                lot.held += taken.points;
            }
            let lots = e.lots.iter().map(|l| (l.lot, l.points)).collect();
            state.holds.insert(
                e.hold_id.clone(),
                Hold { points: e.points, reward_ref: e.reward_ref.clone(), expires_at_ms: e.expires_at_ms, lots },
            );
        }
        Change::Captured(e) => {
            active(state, e.inactivity_expires_at_ms);
            state.lifetime_redeemed += e.points;
            state.held_points -= e.points + e.released_points;
            state.holds.remove(&e.hold_id);
            unhold(state, &e.lots, false);
            unhold(state, &e.released_lots, true);
        }
        Change::Released(e) => {
            state.held_points -= e.points;
            state.holds.remove(&e.hold_id);
            unhold(state, &e.lots, true);
        }
        Change::Purchased(e) => {
            active(state, e.inactivity_expires_at_ms);
            state.lifetime_purchased += e.points;
            credit(state, e.points, e.lot.as_ref());
        }
        Change::ExpiringSoon(e) => {
            if let Some(lot) = state.lots.get_mut(&e.lot) {
                lot.notify_at_ms = None;
            }
        }
        Change::Stamped(e) => {
            active(state, e.inactivity_expires_at_ms);
            state.stamp_cards.entry(e.card_id.clone()).or_default().stamps += e.count;
        }
        Change::CardCompleted(e) => {
            let card = state.stamp_cards.entry(e.card_id.clone()).or_default();
            card.stamps = e.stamps_left;
            card.completed += e.cards;
            state.lifetime_earned += e.reward_points;
            credit(state, e.reward_points, e.lot.as_ref());
        }
        Change::TierChanged(e) => {
            state.tier = (!e.to_tier.is_empty()).then(|| TierState { tier_id: e.to_tier.clone(), next_review_at_ms: e.next_review_at_ms });
        }
        Change::TierReviewed(e) => {
            if let Some(tier) = state.tier.as_mut() {
                tier.next_review_at_ms = e.next_review_at_ms;
            }
        }
        Change::Matured(e) => {
            take_pending(state, &[LotPoints { lot: e.pending, points: e.points }]);
            credit(state, e.points, e.lot.as_ref());
            // A source forgotten after its refund window needs no lots.
            if let Some(source) = state.sources.get_mut(&e.source_ref) {
                remember_lot(source, e.lot.as_ref());
            }
        }
        Change::Expired(e) => {
            state.lifetime_expired += e.points;
            debit(state, e.points, std::slice::from_ref(&LotPoints { lot: e.lot, points: e.points }));
        }
    }
    state.balance += event.change.points_delta();
    state.last_activity_ms = event.recorded_at_ms;
    state.version += 1;
    let version = state.version;
    let balance = state.balance;
    state
        .receipts
        .entry(event.idempotency_key.clone())
        .and_modify(|receipt| {
            receipt.last_version = version;
            receipt.balance_after = balance;
        })
        .or_insert(Receipt {
            command_fingerprint: event.command_fingerprint,
            first_version: version,
            last_version: version,
            balance_after: balance,
            recorded_at_ms: event.recorded_at_ms,
        });
    forget_past(state, event.recorded_at_ms);
}

/// Forgets receipts older than `RECEIPT_RETENTION_MS` and sources past their refund window, at most
/// once per `RETENTION_SWEEP_INTERVAL_MS` of recorded time: a wallet's state stays the size of its recent
/// past however long it lives. Driven by event times only, so a replay forgets exactly the same.
fn forget_past(state: &mut WalletState, now_ms: i64) {
    if now_ms < state.swept_at_ms.saturating_add(RETENTION_SWEEP_INTERVAL_MS) {
        return;
    }
    state.swept_at_ms = now_ms;
    let receipts_from = now_ms.saturating_sub(RECEIPT_RETENTION_MS);
    state.receipts.retain(|_, receipt| receipt.recorded_at_ms >= receipts_from);
    state.sources.retain(|_, source| source.refundable_at(now_ms));
}

/// Adds `points` to the qualifying points of `month`, keeping the most recent months.
fn count_qualifying(state: &mut WalletState, month: i64, points: i64) {
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

/// The customer did something: under an inactivity policy, the event carries the wallet's new deadline.
fn active(state: &mut WalletState, inactivity_expires_at_ms: i64) {
    state.inactivity_expires_at_ms = (inactivity_expires_at_ms != 0).then_some(inactivity_expires_at_ms);
}

/// A source's points went into `lot`: a reversal of the source takes from it first.
fn remember_lot(source: &mut SourceLedger, lot: Option<&LotOpened>) {
    if let Some(lot) = lot.filter(|lot| lot.points > 0)
        && !source.lots.contains(&lot.lot)
    {
        source.lots.push(lot.lot);
    }
}

/// Takes points out of pending credits; how many.
fn take_pending(state: &mut WalletState, taken: &[LotPoints]) -> i64 {
    let mut total = 0;
    for t in taken {
        total += t.points;
        state.pending_points -= t.points;
        if let Some(pending) = state.pending.get_mut(&t.lot) {
            pending.points -= t.points;
            if pending.points <= 0 {
                state.pending.remove(&t.lot);
            }
        }
    }
    total
}

/// A credit of `points`: what the lot did not take paid back the debt.
fn credit(state: &mut WalletState, points: i64, opened: Option<&LotOpened>) {
    let Some(opened) = opened else { return };
    state.debt -= points - opened.points;
    if opened.points > 0 {
        let expires_at_ms = (opened.expires_at_ms != 0).then_some(opened.expires_at_ms);
        let notify_at_ms = (opened.notify_at_ms != 0).then_some(opened.notify_at_ms);
        let new = Lot { points: 0, held: 0, expires_at_ms, notify_at_ms, on_inactivity: opened.on_inactivity };
        state.lots.entry(opened.lot).or_insert(new).points += opened.points;
    }
}

/// A debit of `points` taken from `lots`; what they did not cover is owed (for a closure, what they held
/// beyond the forfeit paid the debt).
fn debit(state: &mut WalletState, points: i64, lots: &[LotPoints]) {
    let mut covered = 0;
    for taken in lots {
        covered += taken.points;
        let lot = state.lots.entry(taken.lot).or_default();
        lot.points -= taken.points;
        drop_if_empty(state, taken.lot);
    }
    state.debt += points - covered;
}

/// Held points leave their lots: spent, or given back to them.
fn unhold(state: &mut WalletState, lots: &[LotPoints], give_back: bool) {
    for taken in lots {
        let lot = state.lots.entry(taken.lot).or_default();
        lot.held -= taken.points;
        if give_back {
            lot.points += taken.points;
        }
        drop_if_empty(state, taken.lot);
    }
}

fn drop_if_empty(state: &mut WalletState, id: u64) {
    if state.lots.get(&id).is_some_and(|lot| lot.points == 0 && lot.held == 0) {
        state.lots.remove(&id);
    }
}

/// Adds an award to its rule's count for the award's cap period, keeping the most recent periods.
fn count_usage(usage: &mut RuleUsage, award: &EarnedByRule) {
    if usage.period != award.cap_period {
        *usage = RuleUsage { period: award.cap_period, points: Vec::new() };
    }
    match usage.points.binary_search_by_key(&award.cap_period_key, |(key, _)| *key) {
        Ok(i) => usage.points[i].1 += award.points,
        Err(i) => usage.points.insert(i, (award.cap_period_key, award.points)),
    }
    if usage.points.len() > RULE_USAGE_PERIODS_MAX {
        usage.points.remove(0);
    }
}

fn checked_balance(value: Option<i64>, field: &'static str, points: i64) -> Result<i64, Rejection> {
    match value {
        Some(v) if v.abs() <= BALANCE_ABS_MAX => Ok(v),
        _ => Err(Rejection::PointsOutOfRange { field, points }),
    }
}

fn validate(body: &CommandBody) -> Result<(), Rejection> {
    match body {
        CommandBody::Enroll { customer_ref } => check_ref("customer_ref", customer_ref, false),
        CommandBody::Earn { points, reason, source_ref, order_amount } => {
            check_positive("points", *points)?;
            check_reason(reason)?;
            check_ref("source_ref", source_ref, true)?;
            order_amount.as_ref().map_or(Ok(()), check_money)
        }
        CommandBody::Redeem { points, reward_ref } => {
            check_positive("points", *points)?;
            check_ref("reward_ref", reward_ref, true)
        }
        CommandBody::Adjust { points, reason, staff_ref } => {
            if *points == 0 {
                return Err(Rejection::ZeroAdjustment);
            }
            if points.checked_abs().is_none_or(|p| p > POINTS_PER_COMMAND_MAX) {
                return Err(Rejection::PointsOutOfRange { field: "points", points: *points });
            }
            check_reason(reason)?;
            check_ref("staff_ref", staff_ref, true)
        }
        CommandBody::Reverse { source_ref, points, reason } => {
            if let Some(points) = points {
                check_positive("points", *points)?;
            }
            check_ref("source_ref", source_ref, true)?;
            check_reason(reason)
        }
        CommandBody::Close { reason } => check_reason(reason),
        CommandBody::EarnForOrder { order } => Ok(order.validate()?),
        CommandBody::AuthorizeRedemption { hold_id, points, reward_ref, timeout_ms } => {
            check_hold_id(hold_id)?;
            check_positive("points", *points)?;
            check_ref("reward_ref", reward_ref, false)?;
            if !(1_000..=HOLD_TIMEOUT_MAX_MS).contains(timeout_ms) {
                return Err(FieldError::new("timeout_seconds", format!("must be within 1..={}", HOLD_TIMEOUT_MAX_MS / 1_000)).into());
            }
            Ok(())
        }
        CommandBody::CaptureRedemption { hold_id, points } => {
            check_hold_id(hold_id)?;
            points.map_or(Ok(()), |points| check_positive("points", points))
        }
        CommandBody::VoidRedemption { hold_id } => check_hold_id(hold_id),
        CommandBody::RunDue => Ok(()),
        CommandBody::AddStamps { card_id, count, reason } => {
            super::program::check_id("card_id", card_id)?;
            if !(1..=STAMPS_PER_CARD_MAX).contains(count) {
                return Err(FieldError::new("count", format!("must be within 1..={STAMPS_PER_CARD_MAX}")).into());
            }
            check_reason(reason)
        }
        CommandBody::PurchaseCredits { purchase_id, package_id } => {
            check_ref("purchase_id", purchase_id, true)?;
            check_ref("package_id", package_id, true)
        }
        CommandBody::RefundOrder { order_id, amount_minor, reason } => {
            check_ref("order_id", order_id, true)?;
            if let Some(amount) = amount_minor
                && !(1..=MONEY_MINOR_ABS_MAX).contains(amount)
            {
                return Err(FieldError::new("amount_minor", format!("must be within 1..={MONEY_MINOR_ABS_MAX}")).into());
            }
            check_reason(reason)
        }
    }
}

fn check_positive(field: &'static str, points: i64) -> Result<(), Rejection> {
    if points <= 0 {
        return Err(Rejection::NonPositivePoints { field, points });
    }
    if points > POINTS_PER_COMMAND_MAX {
        return Err(Rejection::PointsOutOfRange { field, points });
    }
    Ok(())
}

fn check_ref(field: &'static str, value: &str, required: bool) -> Result<(), Rejection> {
    if required && value.is_empty() {
        return Err(FieldError::new(field, "must not be empty").into());
    }
    if value.len() > REF_BYTES_MAX {
        return Err(FieldError::new(field, format!("must be at most {REF_BYTES_MAX} bytes")).into());
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters").into());
    }
    Ok(())
}

fn check_hold_id(hold_id: &str) -> Result<(), Rejection> {
    if hold_id.len() > HOLD_ID_BYTES_MAX {
        return Err(FieldError::new("hold_id", format!("must be at most {HOLD_ID_BYTES_MAX} bytes")).into());
    }
    check_ref("hold_id", hold_id, true)
}

fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(FieldError::new("reason", format!("must be at most {REASON_BYTES_MAX} bytes")).into());
    }
    Ok(())
}

fn check_money(money: &Money) -> Result<(), Rejection> {
    if money.currency.len() != 3 || !money.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(FieldError::new("order_amount.currency", "must be an ISO 4217 code such as EUR").into());
    }
    if money.amount_minor < 0 || money.amount_minor > MONEY_MINOR_ABS_MAX {
        return Err(FieldError::new("order_amount.amount_minor", format!("must be within 0..={MONEY_MINOR_ABS_MAX}")).into());
    }
    Ok(())
}
