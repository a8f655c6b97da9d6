//! The ledger family: enrolment, plain earns, redemptions, staff adjustments, reversals and closing.

use std::collections::hash_map::Entry;

use tally_proto::v1::wallet_enrolled_v2::Customer;
use tally_proto::v1::{
    CapPeriod, CustomerErased, EarnReversed, HoldEnd, LotPoints, PointsAdjusted, PointsEarned, PointsRedeemed, ReturnPolicy,
    SealedPersonalData, WalletClosed, WalletEnrolledV2,
};

use super::checks::checked_balance;
use super::holds::release;
use super::lots::{DAY_MS, active, credit, debit, earned_expiry, inactivity_deadline, open_lot, remember_lot, take_lots, take_pending};
use super::orders::count_usage;
use super::tier::count_qualifying;
use crate::domain::Context;
use crate::domain::command::Money;
use crate::domain::event::Change;
use crate::domain::rejection::Rejection;
use crate::domain::rules::{self, Period};
use crate::domain::state::{Hold, Pending, SourceLedger, WalletState, WalletStatus};

/// Enrols the customer: their reference is recorded only sealed (`sealed`, made by the wallet's actor);
/// one left unsealed is refused rather than recorded in clear.
pub(super) fn enroll(customer_ref: &str, sealed: Option<&SealedPersonalData>, ctx: &Context<'_>) -> Result<Change, Rejection> {
    let customer = match sealed {
        Some(sealed) => Some(Customer::Sealed(sealed.clone())),
        None if customer_ref.is_empty() => None,
        None => return Err(Rejection::PersonalDataNotSealed),
    };
    Ok(Change::Enrolled(WalletEnrolledV2 {
        tenant_id: ctx.tenant.as_str().to_owned(),
        wallet_id: ctx.wallet.as_str().to_owned(),
        customer,
    }))
}

/// Erases the customer's personal data: recorded once (a second request is refused, so the log says
/// when it happened and on whose word), naming a reference the log itself still holds in clear.
pub(super) fn erase(state: &WalletState, reason: &str) -> Result<Change, Rejection> {
    if state.customer_erased {
        return Err(Rejection::CustomerAlreadyErased);
    }
    Ok(Change::CustomerErased(CustomerErased { reason: reason.to_owned(), log_holds_clear_data: !state.customer_ref.is_empty() }))
}

pub(super) fn earn(
    state: &WalletState,
    ctx: &Context<'_>,
    points: i64,
    reason: &str,
    source_ref: &str,
    order_amount: Option<&Money>,
) -> Result<Change, Rejection> {
    checked_balance(state.balance.checked_add(points), "points", points)?;
    checked_balance(state.lifetime_earned.checked_add(points), "points", points)?;
    Ok(Change::Earned(PointsEarned {
        points,
        reason: reason.to_owned(),
        source_ref: source_ref.to_owned(),
        order_amount: order_amount.cloned(),
        order: None,
        lot: Some(open_lot(state, points, earned_expiry(ctx), true, ctx)),
        pending: None,
        qualifying_month: rules::period_key(Period::Month, ctx.now_ms, ctx.program.utc_offset_minutes),
        inactivity_expires_at_ms: inactivity_deadline(ctx),
        refundable_until_ms: refund_deadline(ctx, ctx.now_ms),
        referral_converts_at_ms: 0,
    }))
}

pub(super) fn redeem(state: &WalletState, ctx: &Context<'_>, points: i64, reward_ref: &str) -> Result<Change, Rejection> {
    let available = state.available_at(ctx.now_ms);
    if points > available {
        return Err(Rejection::InsufficientPoints { available: available.max(0), requested: points });
    }
    checked_balance(state.lifetime_redeemed.checked_add(points), "points", points)?;
    let (lots, _) = take_lots(state, points, &[]);
    let inactivity_expires_at_ms = inactivity_deadline(ctx);
    Ok(Change::Redeemed(PointsRedeemed {
        points,
        reward_ref: reward_ref.to_owned(),
        lots,
        inactivity_expires_at_ms,
        redemption_id: String::new(),
    }))
}

pub(super) fn adjust(state: &WalletState, ctx: &Context<'_>, points: i64, reason: &str, staff_ref: &str) -> Result<Change, Rejection> {
    let available = state.available_at(ctx.now_ms);
    let after = checked_balance(state.balance.checked_add(points), "points", points)?;
    checked_balance(state.lifetime_adjusted.checked_add(points), "points", points)?;
    // A manual correction never creates a debt nor takes held points: debts only come from
    // refunds, by policy.
    if points < 0 && (after < 0 || available + points < 0) {
        return Err(Rejection::InsufficientPoints { available: available.max(0), requested: -points });
    }
    let (lot, lots, inactivity_expires_at_ms) = if points > 0 {
        // Staff credits are not the customer's activity, but a credit to a wallet that has
        // lapsed restarts its clock: the points must not be past their time already.
        let lapsed = state.inactivity_expires_at_ms.is_none_or(|at| at <= ctx.now_ms);
        let deadline = if lapsed { inactivity_deadline(ctx) } else { 0 };
        (Some(open_lot(state, points, earned_expiry(ctx), true, ctx)), Vec::new(), deadline)
    } else {
        (None, take_lots(state, -points, &[]).0, 0)
    };
    Ok(Change::Adjusted(PointsAdjusted {
        points,
        reason: reason.to_owned(),
        staff_ref: staff_ref.to_owned(),
        lot,
        lots,
        inactivity_expires_at_ms,
    }))
}

pub(super) fn reverse(
    state: &WalletState,
    ctx: &Context<'_>,
    source_ref: &str,
    points: Option<i64>,
    reason: &str,
) -> Result<(Vec<Change>, Change), Rejection> {
    let ledger = refundable_source(state, source_ref, ctx)?;
    let reversible = ledger.reversible();
    let requested = points.unwrap_or(reversible);
    if requested > reversible || requested <= 0 {
        return Err(Rejection::ReversalExceedsEarned { source_ref: source_ref.to_owned(), reversible, requested });
    }
    take_back(state, ctx, source_ref, requested, reason, 0)
}

/// A refund or reversal of `requested` points: the holds it must end first, then the reversal on the
/// wallet as those leave it.
pub(super) fn take_back(
    state: &WalletState,
    ctx: &Context<'_>,
    source_ref: &str,
    requested: i64,
    reason: &str,
    refund_amount_minor: i64,
) -> Result<(Vec<Change>, Change), Rejection> {
    let ended = holds_a_refund_ends(state, ctx, source_ref, requested);
    if ended.is_empty() {
        return Ok((ended, reversal(state, ctx, source_ref, requested, reason, refund_amount_minor)?));
    }
    let mut after = state.clone();
    for change in &ended {
        if let Change::Released(e) = change {
            super::holds::apply_released(&mut after, e);
        }
    }
    Ok((ended, reversal(&after, ctx, source_ref, requested, reason, refund_amount_minor)?))
}

/// The source a refund or reversal takes points back from, if its refund window is still open.
pub(super) fn refundable_source<'s>(state: &'s WalletState, source_ref: &str, ctx: &Context<'_>) -> Result<&'s SourceLedger, Rejection> {
    let ledger = state.sources.get(source_ref).ok_or_else(|| Rejection::UnknownSource { source_ref: source_ref.to_owned() })?;
    if !ledger.refundable_at(ctx.now_ms) {
        return Err(Rejection::RefundWindowClosed { source_ref: source_ref.to_owned(), closed_at_ms: ledger.refundable_until_ms });
    }
    Ok(ledger)
}

/// Until when points earned from something that happened at `at_ms` can be taken back.
pub(super) fn refund_deadline(ctx: &Context<'_>, at_ms: i64) -> i64 {
    at_ms.saturating_add(i64::from(ctx.program.refund_window_days) * DAY_MS)
}

/// Takes back `requested` points of `source_ref` under the program's return policy.
pub(super) fn reversal(
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

/// Closing releases the open holds (in hold id order), then forfeits a positive balance and every lot.
pub(super) fn close(state: &WalletState, reason: &str) -> Vec<Change> {
    let mut holds: Vec<(&str, &Hold)> = state.holds().collect();
    holds.sort_unstable_by_key(|(id, _)| *id);
    let released = holds.into_iter().map(|(id, hold)| release(id, hold, HoldEnd::WalletClosed));
    let lots = state.lots().map(|(id, lot)| LotPoints { lot: id, points: lot.points + lot.held }).filter(|l| l.points > 0).collect();
    let pending = state.pending().map(|(id, p)| LotPoints { lot: id, points: p.points }).collect();
    let closed = Change::Closed(WalletClosed { reason: reason.to_owned(), forfeited_points: state.balance.max(0), lots, pending });
    let detached = super::identifiers::detach_all(state, "wallet closed");
    released.chain(detached).chain(std::iter::once(closed)).collect()
}

/// The holds a refund of `requested` points of `source_ref` must end first: when what is available (and
/// the source's own pending points) cannot cover it, holds give their points back — those holding the
/// source's own points first, then by hold id — until it can, so a POS cannot capture points that were
/// refunded (refund, then capture, once kept both the refund and the reward).
pub(super) fn holds_a_refund_ends(state: &WalletState, ctx: &Context<'_>, source_ref: &str, requested: i64) -> Vec<Change> {
    let own_pending: i64 = state.pending().filter(|(_, p)| p.source_ref == source_ref).map(|(_, p)| p.points).sum();
    let mut short = requested - state.available_at(ctx.now_ms).max(0) - own_pending;
    if short <= 0 {
        return Vec::new();
    }
    let own_lots = state.sources.get(source_ref).map_or(&[][..], |ledger| ledger.lots.as_slice());
    let mut holds: Vec<(&str, &Hold)> = state.holds().filter(|(_, hold)| hold.expires_at_ms > ctx.now_ms).collect();
    holds.sort_unstable_by_key(|(id, hold)| (!hold.lots.iter().any(|(lot, _)| own_lots.contains(lot)), *id));
    let mut ended = Vec::new();
    for (id, hold) in holds {
        if short <= 0 {
            break;
        }
        short -= hold.points;
        ended.push(release(id, hold, HoldEnd::Refunded));
    }
    ended
}

pub(super) fn apply_enrolled(state: &mut WalletState, e: &WalletEnrolledV2, at_ms: i64) {
    state.status = WalletStatus::Active;
    match &e.customer {
        Some(Customer::Sealed(sealed)) => state.customer_sealed = prost::Message::encode_to_vec(sealed),
        Some(Customer::Clear(clear)) => state.customer_ref.clone_from(&clear.customer_ref),
        None => {}
    }
    state.enrolled_at_ms = at_ms;
}

pub(super) fn apply_customer_erased(state: &mut WalletState) {
    state.customer_ref = String::new();
    state.customer_sealed = Vec::new();
    state.customer_erased = true;
}

pub(super) fn apply_earned(state: &mut WalletState, e: &PointsEarned, at_ms: i64) {
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
    if e.referral_converts_at_ms != 0 {
        let currency = e.order_amount.as_ref().map(|m| m.currency.clone()).unwrap_or_default();
        state.referral_due.insert(e.source_ref.clone(), (e.referral_converts_at_ms, currency));
    }
    for stamp in e.order.iter().flat_map(|o| &o.awards).flat_map(|a| &a.stamps) {
        state.stamp_cards.entry(stamp.card.clone()).or_default().stamps += stamp.count;
    }
    let source = match state.sources.entry(e.source_ref.clone()) {
        Entry::Occupied(known) => {
            let source = known.into_mut();
            let (kept, now) = (source.refundable_until_ms, e.refundable_until_ms);
            if !source.refundable_at(at_ms) {
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

pub(super) fn apply_redeemed(state: &mut WalletState, e: &PointsRedeemed) {
    active(state, e.inactivity_expires_at_ms);
    state.lifetime_redeemed += e.points;
    debit(state, e.points, &e.lots);
}

pub(super) fn apply_adjusted(state: &mut WalletState, e: &PointsAdjusted) {
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

pub(super) fn apply_reversed(state: &mut WalletState, e: &EarnReversed) {
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

pub(super) fn apply_closed(state: &mut WalletState, e: &WalletClosed) {
    state.status = WalletStatus::Closed;
    let from_pending = take_pending(state, &e.pending);
    debit(state, e.forfeited_points - from_pending, &e.lots);
}
