//! `decide` and `apply`: the functional core of a wallet.

use tally_proto::v1::{EarnReversed, PointsAdjusted, PointsEarned, PointsRedeemed, ReturnPolicy, WalletClosed, WalletEnrolled};

use super::Context;
use super::command::{Command, CommandBody, Money};
use super::event::{Change, Event};
use super::ids::FieldError;
use super::rejection::Rejection;
use super::state::{Receipt, WalletState, WalletStatus};
use crate::limits::{BALANCE_ABS_MAX, MONEY_MINOR_ABS_MAX, POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX};

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
    let fingerprint = command.fingerprint();
    if let Some(receipt) = state.receipts.get(&command.idempotency_key) {
        if receipt.command_fingerprint == fingerprint {
            return Ok(Decision::AlreadyApplied(*receipt));
        }
        return Err(Rejection::IdempotencyKeyReused { key: command.idempotency_key.clone() });
    }
    let change = decide_change(state, &command.body, ctx)?;
    Ok(Decision::Append(vec![Event {
        idempotency_key: command.idempotency_key.clone(),
        command_fingerprint: fingerprint,
        recorded_at_ms: ctx.now_ms,
        change,
    }]))
}

fn decide_change(state: &WalletState, body: &CommandBody, ctx: &Context<'_>) -> Result<Change, Rejection> {
    validate(body)?;
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
            }))
        }
        (WalletStatus::Active, CommandBody::Redeem { points, reward_ref }) => {
            if *points > state.balance {
                return Err(Rejection::InsufficientPoints { available: state.balance.max(0), requested: *points });
            }
            Ok(Change::Redeemed(PointsRedeemed { points: *points, reward_ref: reward_ref.clone() }))
        }
        (WalletStatus::Active, CommandBody::Adjust { points, reason, staff_ref }) => {
            let after = checked_balance(state.balance.checked_add(*points), "points", *points)?;
            // A manual correction never creates a debt: debts only come from refunds, by policy.
            if after < 0 && *points < 0 {
                return Err(Rejection::InsufficientPoints { available: state.balance.max(0), requested: -*points });
            }
            Ok(Change::Adjusted(PointsAdjusted { points: *points, reason: reason.clone(), staff_ref: staff_ref.clone() }))
        }
        (WalletStatus::Active, CommandBody::Reverse { source_ref, points, reason }) => {
            let ledger = state.sources.get(source_ref).ok_or_else(|| Rejection::UnknownSource { source_ref: source_ref.clone() })?;
            let reversible = ledger.reversible();
            let requested = points.unwrap_or(reversible);
            if requested > reversible || requested <= 0 {
                return Err(Rejection::ReversalExceedsEarned { source_ref: source_ref.clone(), reversible, requested });
            }
            let policy = ctx.program.return_policy;
            let reversed = match policy {
                ReturnPolicy::CapAtZero => requested.min(state.balance.max(0)),
                ReturnPolicy::AllowNegative | ReturnPolicy::Unspecified => requested,
            };
            checked_balance(state.balance.checked_sub(reversed), "points", requested)?;
            Ok(Change::Reversed(EarnReversed {
                source_ref: source_ref.clone(),
                requested_points: requested,
                reversed_points: reversed,
                shortfall_points: requested - reversed,
                reason: reason.clone(),
                policy: match policy {
                    ReturnPolicy::CapAtZero => ReturnPolicy::CapAtZero,
                    _ => ReturnPolicy::AllowNegative,
                } as i32,
            }))
        }
        (WalletStatus::Active, CommandBody::Close { reason }) => {
            Ok(Change::Closed(WalletClosed { reason: reason.clone(), forfeited_points: state.balance.max(0) }))
        }
    }
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
            state.lifetime_earned += e.points;
            state.sources.entry(e.source_ref.clone()).or_default().earned += e.points;
        }
        Change::Redeemed(e) => state.lifetime_redeemed += e.points,
        Change::Adjusted(e) => state.lifetime_adjusted += e.points,
        Change::Reversed(e) => {
            state.lifetime_reversed += e.reversed_points;
            state.sources.entry(e.source_ref.clone()).or_default().reversed += e.requested_points;
        }
        Change::Closed(_) => state.status = WalletStatus::Closed,
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
        });
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
