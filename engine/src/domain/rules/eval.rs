//! Evaluating rules against an order: which conditions hold, what each action gives, what caps take
//! off, in integers with `i128` intermediates.

use std::sync::Arc;

use super::{Action, Condition, Customer, Order, OrderLine, Period, Rounding, Rule, When, in_sorted};
use crate::limits::POINTS_PER_COMMAND_MAX;

/// What one rule gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    pub rule_id: Arc<str>,
    pub points: i64,
    /// Stamps per card.
    pub stamps: Vec<(Arc<str>, i64)>,
    /// The action's reason, or the rule's name.
    pub reason: Arc<str>,
    /// Points the rule's caps took off.
    pub capped_points: i64,
    /// The period of the rule's per-customer cap, if it has one: the wallet keeps count of it.
    pub cap_period: Option<Period>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// One entry per rule that matched, in rule order (multipliers after the rules they multiply).
    pub awards: Vec<Award>,
    pub total_points: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("the rules would award {points} points for one order, beyond the limit of {POINTS_PER_COMMAND_MAX}")]
    AwardTooLarge { points: i128 },
}

fn quantity_of(order: &Order, matches: impl Fn(&OrderLine) -> bool) -> i64 {
    order.lines.iter().filter(|l| matches(l)).map(|l| l.quantity).fold(0i64, i64::saturating_add)
}

fn holds(condition: &Condition, order: &Order, customer: &Customer<'_>, when: &When) -> bool {
    match condition {
        Condition::All(all) => all.iter().all(|c| holds(c, order, customer, when)),
        Condition::Any(any) => any.iter().any(|c| holds(c, order, customer, when)),
        Condition::Not(inner) => !holds(inner, order, customer, when),
        Condition::OrderTotal(cmp, value) => cmp.holds(order.total_minor, *value),
        Condition::Currency(op, set) => op.holds(Some(&order.currency), set),
        Condition::Channel(op, set) => op.holds(Some(&order.channel), set),
        Condition::Store(op, set) => op.holds(Some(&order.store), set),
        Condition::CustomerTier(op, set) => op.holds(customer.tier, set),
        Condition::Sku { values, min_quantity } => quantity_of(order, |l| in_sorted(values, &l.sku)) >= *min_quantity,
        Condition::Category { values, min_quantity } => quantity_of(order, |l| in_sorted(values, &l.category)) >= *min_quantity,
        Condition::DayOfWeek(mask) => mask & (1 << when.weekday) != 0,
        Condition::TimeWindow { from, to } => {
            if from < to {
                (*from..*to).contains(&when.minute)
            } else {
                when.minute >= *from || when.minute < *to
            }
        }
        Condition::DateRange { from_day, to_day } => (*from_day..=*to_day).contains(&when.day),
        Condition::NthOrder(n) => customer.previous_orders.saturating_add(1) == *n,
    }
}

/// Whether a line counts for a rule's `matching_lines` basis: it matches one of the rule's SKU or
/// category conditions (outside any `not`), or the rule has none.
fn line_counts(condition: Option<&Condition>, line: &OrderLine) -> bool {
    fn visit(c: &Condition, line: &OrderLine, seen: &mut bool) -> bool {
        match c {
            // `seen` only matters when nothing hit, and then `any` has visited every child.
            Condition::All(cs) | Condition::Any(cs) => cs.iter().any(|c| visit(c, line, seen)),
            Condition::Sku { values, .. } => {
                *seen = true;
                in_sorted(values, &line.sku)
            }
            Condition::Category { values, .. } => {
                *seen = true;
                in_sorted(values, &line.category)
            }
            _ => false,
        }
    }
    let mut seen = false;
    let hit = condition.is_some_and(|c| visit(c, line, &mut seen));
    hit || !seen
}

fn per_unit(amount: i64, points: i64, unit: i64, rounding: Rounding) -> i128 {
    let (amount, unit) = (i128::from(amount.max(0)), i128::from(unit.max(1)));
    let units = match rounding {
        Rounding::Down => amount / unit,
        Rounding::Up => (amount + unit - 1) / unit,
        Rounding::Nearest => (2 * amount + unit) / (2 * unit),
    };
    units * i128::from(points)
}

fn capped(rule: &Rule, customer: &Customer<'_>, points: i128) -> (i128, i128) {
    let mut allowed = points;
    if let Some(cap) = rule.caps.per_order {
        allowed = allowed.min(i128::from(cap));
    }
    if let Some((cap, period)) = rule.caps.per_customer {
        let left = i128::from(cap) - i128::from((customer.rule_points_in_period)(rule, period));
        allowed = allowed.min(left.max(0));
    }
    (allowed, points - allowed)
}

/// Applies `rules` to `order`, placed at `placed_at_ms` (`order.placed_at_ms` or, without one, now). The
/// program's clock for day, weekday and time-window conditions is UTC shifted by `utc_offset_minutes`.
pub fn evaluate(
    rules: &[Rule],
    order: &Order,
    customer: &Customer<'_>,
    placed_at_ms: i64,
    utc_offset_minutes: i32,
) -> Result<Breakdown, EvalError> {
    let when = When::of(placed_at_ms, utc_offset_minutes);
    let mut breakdown = Breakdown::default();
    let mut base: i128 = 0;
    let mut multipliers: Vec<(&Rule, i64, Arc<str>)> = Vec::new();
    breakdown.awards.reserve(rules.len());
    for rule in rules {
        if !rule.conditions.as_ref().is_none_or(|c| holds(c, order, customer, &when)) {
            continue;
        }
        let mut points: i128 = 0;
        let mut stamps = Vec::new();
        let mut reason = None;
        let mut matching_lines_amount = None;
        for action in &rule.actions {
            match action {
                Action::Points { amount, reason: r } => {
                    points += i128::from(*amount);
                    reason = reason.or(r.clone());
                }
                Action::PerCurrencyUnit { points: per, unit_minor, rounding, matching_lines_only, reason: r } => {
                    let amount = if *matching_lines_only {
                        *matching_lines_amount.get_or_insert_with(|| {
                            order
                                .lines
                                .iter()
                                .filter(|l| line_counts(rule.conditions.as_ref(), l))
                                .map(|l| l.amount_minor)
                                .fold(0i64, i64::saturating_add)
                        })
                    } else {
                        order.total_minor
                    };
                    points += per_unit(amount, *per, *unit_minor, *rounding);
                    reason = reason.or(r.clone());
                }
                Action::Multiplier { percent, reason: r } => {
                    multipliers.push((rule, *percent, r.clone().unwrap_or_else(|| rule.name.clone())));
                }
                Action::Stamps { card, count } => stamps.push((card.clone(), *count)),
            }
        }
        let earns = rule.actions.iter().any(|a| matches!(a, Action::Points { .. } | Action::PerCurrencyUnit { .. }));
        if !earns && stamps.is_empty() {
            continue;
        }
        let (allowed, cut) = capped(rule, customer, points);
        base += allowed;
        breakdown.awards.push(award(rule, allowed, cut, stamps, reason.unwrap_or_else(|| rule.name.clone()))?);
    }
    for (rule, percent, reason) in multipliers {
        let extra = base * i128::from(percent - 100) / 100;
        let (allowed, cut) = capped(rule, customer, extra);
        breakdown.awards.push(award(rule, allowed, cut, Vec::new(), reason)?);
    }
    let total: i128 = breakdown.awards.iter().map(|a| i128::from(a.points)).sum();
    breakdown.total_points =
        i64::try_from(total).ok().filter(|t| *t <= POINTS_PER_COMMAND_MAX).ok_or(EvalError::AwardTooLarge { points: total })?;
    Ok(breakdown)
}

fn award(rule: &Rule, points: i128, cut: i128, stamps: Vec<(Arc<str>, i64)>, reason: Arc<str>) -> Result<Award, EvalError> {
    let points = i64::try_from(points).ok().filter(|p| *p <= POINTS_PER_COMMAND_MAX).ok_or(EvalError::AwardTooLarge { points })?;
    // What the caps took off is information only: reported up to the limit, never an error.
    let capped_points = i64::try_from(cut.min(i128::from(POINTS_PER_COMMAND_MAX))).unwrap_or(POINTS_PER_COMMAND_MAX);
    Ok(Award { rule_id: rule.id.clone(), points, stamps, reason, capped_points, cap_period: rule.caps.per_customer.map(|(_, p)| p) })
}
