//! Input checks: what a command must look like before it is decided, and the ledger's range check.

use crate::domain::command::{
    Command, CommandBody, ENGINE_KEY_PREFIX, Money, TransferPart, TransferStep, capture_key, is_due_key, transfer_key, void_key,
};
use crate::domain::ids::FieldError;
use crate::domain::rejection::Rejection;
use crate::limits::{
    BALANCE_ABS_MAX, HOLD_ID_BYTES_MAX, HOLD_TIMEOUT_MAX_MS, MONEY_MINOR_ABS_MAX, POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX,
    STAMPS_PER_CARD_MAX,
};

/// The idempotency key, and for commands whose own id is the key, that the two agree.
pub(super) fn check_key(command: &Command) -> Result<(), Rejection> {
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
    // Client keys and the keys the engine makes never share a space, so no command can be answered
    // from (or forget) another's receipt.
    let engine_key = match &command.body {
        CommandBody::CaptureRedemption { hold_id, .. } => Some(capture_key(hold_id)),
        CommandBody::VoidRedemption { hold_id } => Some(void_key(hold_id)),
        CommandBody::RedeemReward { redemption_id, .. } => Some(crate::domain::reward_debit_key(redemption_id)),
        CommandBody::CancelRewardRedemption { redemption_id, .. } => Some(crate::domain::reward_cancel_key(redemption_id)),
        CommandBody::TransferOut { transfer_id, .. } => Some(transfer_key(transfer_id, TransferStep::Out)),
        CommandBody::TransferIn { transfer_id, .. } => Some(transfer_key(transfer_id, TransferStep::In)),
        CommandBody::ReturnTransfer { transfer_id, .. } => Some(transfer_key(transfer_id, TransferStep::Return)),
        CommandBody::RewardReferral { referee_wallet_id, .. } => Some(crate::domain::referral_reward_key(referee_wallet_id)),
        CommandBody::RunDue => None,
        _ if command.idempotency_key.starts_with(ENGINE_KEY_PREFIX) => {
            return Err(FieldError::new(
                "idempotency_key",
                format!("must not start with {ENGINE_KEY_PREFIX:?}: such keys are the engine's"),
            )
            .into());
        }
        _ => return Ok(()),
    };
    let key = &command.idempotency_key;
    match engine_key {
        Some(expected) if *key != expected => Err(FieldError::new("idempotency_key", format!("must be {expected:?}")).into()),
        None if !is_due_key(key) => Err(FieldError::new("idempotency_key", "must be an engine key for due transitions").into()),
        _ => Ok(()),
    }
}

/// A catalogue redemption's id, with its reward's id (`Ok`) or a cancellation's reason (`Err`).
fn check_redemption(redemption_id: &str, reward_or_reason: Result<&String, &String>) -> Result<(), Rejection> {
    crate::domain::program::check_id("redemption_id", redemption_id)?;
    match reward_or_reason {
        Ok(reward_id) => Ok(crate::domain::program::check_id("reward_id", reward_id)?),
        Err(reason) => check_reason(reason),
    }
}

pub(super) fn checked_balance(value: Option<i64>, field: &'static str, points: i64) -> Result<i64, Rejection> {
    match value {
        Some(v) if v.abs() <= BALANCE_ABS_MAX => Ok(v),
        _ => Err(Rejection::PointsOutOfRange { field, points }),
    }
}

pub(super) fn validate(body: &CommandBody) -> Result<(), Rejection> {
    match body {
        CommandBody::Enroll { customer_ref, referrer_wallet_id, .. } => check_enrolment(customer_ref, referrer_wallet_id),
        CommandBody::EraseCustomer { reason } if reason.is_empty() => {
            Err(FieldError::new("reason", "must not be empty: say why (a ticket, the request)").into())
        }
        CommandBody::EraseCustomer { reason } => check_reason(reason),
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
            crate::domain::program::check_id("card_id", card_id)?;
            if !(1..=STAMPS_PER_CARD_MAX).contains(count) {
                return Err(FieldError::new("count", format!("must be within 1..={STAMPS_PER_CARD_MAX}")).into());
            }
            check_reason(reason)
        }
        CommandBody::RedeemReward { redemption_id, reward_id } => check_redemption(redemption_id, Ok(reward_id)),
        CommandBody::CancelRewardRedemption { redemption_id, reason } => check_redemption(redemption_id, Err(reason)),
        CommandBody::TransferOut { .. } | CommandBody::TransferIn { .. } | CommandBody::ReturnTransfer { .. } => check_transfer(body),
        CommandBody::AttachIdentifier { kind, lookup } => check_identifier(*kind, lookup),
        CommandBody::RewardReferral { referee_wallet_id, order_id, points } => check_reward_referral(referee_wallet_id, order_id, *points),
        CommandBody::DetachIdentifier { kind, lookup, reason } => check_identifier(*kind, lookup).and_then(|()| check_reason(reason)),
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

/// A referral's reward: the referee, its order, the points.
fn check_reward_referral(referee_wallet_id: &str, order_id: &str, points: i64) -> Result<(), Rejection> {
    crate::domain::WalletId::parse(referee_wallet_id).map_err(|e| FieldError::new("referee_wallet_id", e.reason))?;
    check_ref("order_id", order_id, true)?;
    check_positive("points", points)
}

/// A transfer's steps: its id, the other wallet, the points (by part) and the text.
fn check_transfer(body: &CommandBody) -> Result<(), Rejection> {
    let wallet = |field: &'static str, id: &str| crate::domain::WalletId::parse(id).map(drop).map_err(|e| FieldError::new(field, e.reason));
    match body {
        CommandBody::TransferOut { transfer_id, to_wallet_id, points, reason } => {
            crate::domain::program::check_id("transfer_id", transfer_id)?;
            wallet("to_wallet_id", to_wallet_id)?;
            check_positive("points", *points)?;
            check_reason(reason)
        }
        CommandBody::TransferIn { transfer_id, from_wallet_id, parts, reason } => {
            crate::domain::program::check_id("transfer_id", transfer_id)?;
            wallet("from_wallet_id", from_wallet_id)?;
            check_parts(parts)?;
            check_reason(reason)
        }
        CommandBody::ReturnTransfer { transfer_id, parts, code } => {
            crate::domain::program::check_id("transfer_id", transfer_id)?;
            check_parts(parts)?;
            check_ref("code", code, true)
        }
        _ => Ok(()),
    }
}

/// A transfer's parts: at least one, each of positive points, at most one per kind of lot a debit can
/// take from, within one command's points.
fn check_parts(parts: &[TransferPart]) -> Result<(), Rejection> {
    if parts.is_empty() || parts.len() > super::lots::PARTS_MAX + 2 {
        return Err(FieldError::new("parts", format!("must be 1 to {}", super::lots::PARTS_MAX + 2)).into());
    }
    let mut total: i64 = 0;
    for part in parts {
        check_positive("parts.points", part.points)?;
        if part.expires_at_ms < 0 || (part.expires_at_ms != 0 && part.on_inactivity) {
            return Err(FieldError::new("parts.expires_at_ms", "must be 0 or an instant, and 0 for points on inactivity").into());
        }
        total = total.saturating_add(part.points);
    }
    check_positive("points", total)
}

pub(super) fn check_positive(field: &'static str, points: i64) -> Result<(), Rejection> {
    if points <= 0 {
        return Err(Rejection::NonPositivePoints { field, points });
    }
    if points > POINTS_PER_COMMAND_MAX {
        return Err(Rejection::PointsOutOfRange { field, points });
    }
    Ok(())
}

pub(super) fn check_ref(field: &'static str, value: &str, required: bool) -> Result<(), Rejection> {
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

pub(super) fn check_hold_id(hold_id: &str) -> Result<(), Rejection> {
    if hold_id.len() > HOLD_ID_BYTES_MAX {
        return Err(FieldError::new("hold_id", format!("must be at most {HOLD_ID_BYTES_MAX} bytes")).into());
    }
    check_ref("hold_id", hold_id, true)
}

/// An enrolment's customer reference, and the referrer's wallet id if it names one.
fn check_enrolment(customer_ref: &str, referrer_wallet_id: &str) -> Result<(), Rejection> {
    if !referrer_wallet_id.is_empty() {
        crate::domain::WalletId::parse(referrer_wallet_id).map_err(|e| FieldError::new("referrer_wallet_id", e.reason))?;
    }
    check_ref("customer_ref", customer_ref, false)
}

/// An identifier's kind is one, and its lookup one the engine made (a value never reaches a wallet).
fn check_identifier(kind: crate::domain::identifiers::IdentifierKind, lookup: &str) -> Result<(), Rejection> {
    if kind == crate::domain::identifiers::IdentifierKind::Unspecified {
        return Err(FieldError::new("kind", "must be CARD, PHONE, EMAIL, CRM_ID or REFERRAL_CODE").into());
    }
    if !crate::domain::identifiers::is_lookup(lookup) {
        return Err(FieldError::new("lookup", "must be 64 lower-case hex digits: an identifier's keyed hash").into());
    }
    Ok(())
}

/// Free text (a reason) fits its limit and holds no control character (NUL, CR, LF, ESC, …): it is shown
/// to staff and customers and stored in every read model, where such bytes corrupt or are refused.
pub(super) fn check_reason(reason: &str) -> Result<(), Rejection> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(FieldError::new("reason", format!("must be at most {REASON_BYTES_MAX} bytes")).into());
    }
    if reason.chars().any(char::is_control) {
        return Err(FieldError::new("reason", "must not contain control characters").into());
    }
    Ok(())
}

/// What one command credits stays within the per-command cap, however it is made up (an order's rules
/// and tier multiplier, a stamp card's reward times the cards filled).
pub(super) fn check_credit(field: &'static str, points: i64) -> Result<i64, Rejection> {
    if !(0..=POINTS_PER_COMMAND_MAX).contains(&points) {
        return Err(Rejection::PointsOutOfRange { field, points });
    }
    Ok(points)
}

pub(super) fn check_money(money: &Money) -> Result<(), Rejection> {
    if money.currency.len() != 3 || !money.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(FieldError::new("order_amount.currency", "must be an ISO 4217 code such as EUR").into());
    }
    if money.amount_minor < 0 || money.amount_minor > MONEY_MINOR_ABS_MAX {
        return Err(FieldError::new("order_amount.amount_minor", format!("must be within 0..={MONEY_MINOR_ABS_MAX}")).into());
    }
    Ok(())
}
