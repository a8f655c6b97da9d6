//! Orders: `EarnForOrder` runs the rules in force when the order was placed and records each rule's
//! award; `RefundOrder` takes back the order's points in proportion to the money refunded.

use tally_proto::v1::{CapPeriod, EarnedByRule, OrderEarning, PendingPoints, PointsEarned, StampAward};

use super::checks::{check_credit, checked_balance};
use super::ledger::{refund_deadline, refundable_source, take_back};
use super::lots::{DAY_MS, earned_expiry, inactivity_deadline, open_lot};
use crate::domain::command::Money;
use crate::domain::event::Change;
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;
use crate::domain::rules::{self, Customer, Order, Period, Rule};
use crate::domain::state::{RuleUsage, SourceLedger, WalletState};
use crate::domain::{Context, ProgramSettings};
use crate::limits::{ORDER_BACKDATE_MAX_MS, ORDER_CLOCK_SKEW_MAX_MS, RULE_USAGE_PERIODS_MAX};

/// Runs the rules in force when the order was placed and records what each gave.
/// What an order earns: the rules version in force when it was placed, each rule's award (the tier's
/// multiplier as an award of its own, rule id `tier:<id>`) and their sum. `EarnForOrder` records it;
/// `SimulateOrder` shows it for a customer that does not exist.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OrderQuote {
    /// 0: no rules were in force.
    pub rules_version: u32,
    pub awards: Vec<EarnedByRule>,
    pub points: i64,
}

/// Runs the rules in force at `placed_at_ms` for `customer`, then the customer's tier multiplier.
pub fn quote_order(program: &ProgramSettings, order: &Order, customer: &Customer<'_>, placed_at_ms: i64) -> Result<OrderQuote, Rejection> {
    let Some(version) = program.rules_at(placed_at_ms) else { return Ok(OrderQuote::default()) };
    let rules = version.rules.as_ref().map_err(|e| Rejection::RulesUnreadable { version: version.version, reason: e.to_string() })?;
    let offset = program.utc_offset_minutes;
    let breakdown =
        rules::evaluate(rules, order, customer, placed_at_ms, offset).map_err(|rules::EvalError::AwardTooLarge { points }| {
            Rejection::PointsOutOfRange { field: "order", points: i64::try_from(points).unwrap_or(i64::MAX) }
        })?;
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
    if let Some(award) = customer.tier.and_then(|tier| program.tiers.multiplier_award(tier, points)) {
        points = points.checked_add(award.points).ok_or(Rejection::PointsOutOfRange { field: "order", points: award.points })?;
        awards.push(award);
    }
    Ok(OrderQuote { rules_version: version.version, awards, points: check_credit("order", points)? })
}

pub(super) fn earn_for_order(state: &WalletState, order: &Order, ctx: &Context<'_>) -> Result<Change, Rejection> {
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
    let used = |rule: &Rule, period: Period| {
        state.rule_points(&rule.id, cap_period(period) as i32, rules::period_key(period, placed_at_ms, offset))
    };
    let tier = state.tier.as_ref().map(|t| t.tier_id.as_str());
    let customer = Customer { tier, previous_orders: state.orders_placed, rule_points_in_period: &used };
    let OrderQuote { rules_version, awards, points } = quote_order(ctx.program, order, &customer, placed_at_ms)?;
    checked_balance(state.balance.checked_add(points), "order", points)?;
    checked_balance(state.lifetime_earned.checked_add(points), "order", points)?;
    // The return window runs from when the order reached the engine: a backdated `placed_at` chooses the
    // rules and cap periods, never a shorter wait or an earlier end to refunds.
    let available_at_ms = ctx.now_ms.saturating_add(i64::from(ctx.program.pending_days) * DAY_MS);
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
        refundable_until_ms: refund_deadline(ctx, ctx.now_ms).max(available_at_ms),
        // Under a pending period, the referral the order counts for converts once it ends (a refund
        // meanwhile can undo the order: the referral's bonuses are not given for an order taken back).
        referral_converts_at_ms: super::referrals::waits(state, order, available_at_ms, ctx),
    }))
}

pub(super) fn refund(
    state: &WalletState,
    ctx: &Context<'_>,
    order_id: &str,
    amount_minor: Option<i64>,
    reason: &str,
) -> Result<(Vec<Change>, Change), Rejection> {
    let ledger = refundable_source(state, order_id, ctx)?;
    let order_minor = ledger.order_minor.ok_or_else(|| Rejection::NotAnOrder { source_ref: order_id.to_owned() })?;
    let refundable = order_minor - ledger.refunded_minor;
    let amount = amount_minor.unwrap_or(refundable);
    if amount <= 0 || amount > refundable {
        return Err(Rejection::RefundExceedsOrder { order_id: order_id.to_owned(), refundable_minor: refundable, requested_minor: amount });
    }
    let requested = proportional_reversal(ledger, amount, order_minor);
    take_back(state, ctx, order_id, requested, reason, amount)
}

/// Points a refund of `amount` more of an order takes back: the order's earnings in proportion to
/// everything refunded so far (rounded down, all of them once the whole amount is refunded), less what
/// was already taken back from it.
pub(super) fn proportional_reversal(ledger: &SourceLedger, amount: i64, order_minor: i64) -> i64 {
    let refunded = i128::from(ledger.refunded_minor) + i128::from(amount);
    let due = if refunded >= i128::from(order_minor) {
        i128::from(ledger.earned)
    } else {
        i128::from(ledger.earned) * refunded / i128::from(order_minor)
    };
    let due = i64::try_from(due).unwrap_or(ledger.earned);
    (due - ledger.reversed).clamp(0, ledger.reversible().max(0))
}

pub(super) fn cap_period(period: Period) -> CapPeriod {
    match period {
        Period::Day => CapPeriod::Day,
        Period::Week => CapPeriod::Week,
        Period::Month => CapPeriod::Month,
        Period::Year => CapPeriod::Year,
        Period::Lifetime => CapPeriod::Lifetime,
    }
}

/// Adds an award to its rule's count for the award's cap period, keeping the most recent periods.
pub(super) fn count_usage(usage: &mut RuleUsage, award: &EarnedByRule) {
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
