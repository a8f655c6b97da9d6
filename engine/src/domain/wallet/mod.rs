//! The wallet aggregate's behaviour: `decide` turns a command into events, `apply` folds an event into
//! the state. Both only dispatch; each command family has a room of its own:
//!
//! | room | decides | applies |
//! |---|---|---|
//! | [`ledger`] | `Enroll`, `Earn`, `Redeem`, `Adjust`, `Reverse`, `Close` | enrolled, earned, redeemed, adjusted, reversed, closed |
//! | [`orders`] | `EarnForOrder`, `RefundOrder` | (orders earn and reverse through the ledger's events) |
//! | [`holds`] | `AuthorizeRedemption`, `CaptureRedemption`, `VoidRedemption` | held, captured, released |
//! | [`credits`] | `PurchaseCredits` | purchased |
//! | [`rewards`] | `RedeemReward` (a catalogue reward's debit), `CancelRewardRedemption` | (redeemed, through the ledger), reward refused, redemption cancelled |
//! | [`transfers`] | `TransferOut` (the source's debit), `TransferIn` (the target's credit), `ReturnTransfer` (a refused transfer back) | transferred out, in, refused, returned |
//! | [`identifiers`] | `AttachIdentifier`, `DetachIdentifier`, and those a closure or an erasure ends | identifier attached, detached |
//! | [`referrals`] | the referral an `Enroll` carries (never the wallet itself), its conversion by the first order that counts (at once, or when its pending period ends), `RewardReferral` (the referrer's reward) | referral recorded, converted, lapsed, rewarded |
//! | [`stamps`] | `AddStamps`, and the cards a change fills | stamped, card completed |
//! | [`tier`] | the tier an earn reaches, a due review | tier changed, tier reviewed |
//! | [`due`] | `RunDue`, and what time brought before any command | matured, expired, expiring soon |
//!
//! Shared by the rooms: [`checks`] (input validation), [`lots`] (where points sit, debt), [`receipts`]
//! (idempotency and what a wallet forgets).

mod checks;
mod credits;
mod due;
mod holds;
mod identifiers;
mod ledger;
mod lots;
mod orders;
mod receipts;
mod referrals;
mod rewards;
mod stamps;
mod tier;
mod transfers;

pub use due::DueView;
pub use orders::{OrderQuote, quote_order};

use super::Context;
use super::command::{Command, CommandBody};
use super::event::{Change, Event};
use super::rejection::Rejection;
use super::state::{Receipt, WalletState, WalletStatus};
use crate::limits::{APPEND_EVENTS_MAX, DUE_EVENTS_PER_APPEND_MAX};

/// What `decide` concluded for a command that was not rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// New events to append, then apply.
    Append(Vec<Event>),
    /// The same command (same key, same body) was already accepted: here is its outcome; append nothing.
    AlreadyApplied(Receipt),
    /// Time brought more transitions than one append records beside a command: append these (the
    /// engine's, under a [`super::due_key`]), apply them, then decide the command again.
    CatchUp(Vec<Event>),
}

/// Decides `command` against `state`. Pure: the same inputs always give the same answer.
pub fn decide(state: &WalletState, command: &Command, ctx: &Context<'_>) -> Result<Decision, Rejection> {
    checks::check_key(command)?;
    // An enrolment retried after its customer was erased has no key left to seal with.
    if let CommandBody::Enroll { customer_ref, sealed: None, .. } = &command.body
        && !customer_ref.is_empty()
        && state.customer_erased
    {
        return Err(Rejection::CustomerAlreadyErased);
    }
    if let Some(receipt) = state.receipts.get(&command.idempotency_key) {
        if command.matches(&receipt.command_fingerprint) {
            return Ok(Decision::AlreadyApplied(*receipt));
        }
        return Err(Rejection::IdempotencyKeyReused { key: command.idempotency_key.clone() });
    }
    checks::validate(&command.body)?;
    let fingerprint = command.fingerprint();
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
    let (due, caught_up) = due::catch_up(state, ctx, &event, DUE_EVENTS_PER_APPEND_MAX + 1);
    if due.len() > DUE_EVENTS_PER_APPEND_MAX {
        return Ok(due::in_chunks(due, command, ctx, &event));
    }
    let current = caught_up.as_ref().unwrap_or(state);
    let changes = match (current.status, &command.body) {
        (_, CommandBody::RunDue) if due.is_empty() => return Err(Rejection::NothingDue { next_due_ms: state.next_due_ms() }),
        (_, CommandBody::RunDue) => Vec::new(),
        (WalletStatus::Active, CommandBody::Close { reason }) => ledger::close(current, reason),
        (_, body) => {
            let (mut changes, change) = decide_change(current, body, ctx)?;
            changes.extend(stamps::with_follow_ups(current, change, ctx, &event)?);
            changes
        }
    };
    let after = due::expire_returned(current, &changes, ctx, &event);
    let events: Vec<Event> = due.into_iter().chain(changes).chain(after).map(event).collect();
    // Bounded by construction (due in chunks, holds per wallet); this keeps a store's limit from ever
    // reaching a caller as a malformed request.
    if events.len() > APPEND_EVENTS_MAX {
        return Err(Rejection::CommandTooLarge { events: events.len(), max: APPEND_EVENTS_MAX });
    }
    Ok(Decision::Append(events))
}

/// The change a command makes, by family, and what must be recorded before it (the holds a refund ends).
fn decide_change(state: &WalletState, body: &CommandBody, ctx: &Context<'_>) -> Result<(Vec<Change>, Change), Rejection> {
    use CommandBody as C;
    let alone = |change: Result<Change, Rejection>| change.map(|change| (Vec::new(), change));
    match (state.status, body) {
        (WalletStatus::NotEnrolled, C::Enroll { customer_ref, sealed, referrer_wallet_id }) => {
            let enrolled = ledger::enroll(customer_ref, sealed.as_ref(), ctx);
            match referrer_wallet_id.as_str() {
                "" => alone(enrolled),
                referrer => Ok((vec![enrolled?], referrals::referred(ctx, referrer)?)),
            }
        }
        (WalletStatus::NotEnrolled, _) => Err(Rejection::WalletNotFound),
        // A closed wallet's customer may still ask to be forgotten.
        // Identifiers are the customer's too: they go with the key.
        (WalletStatus::Active | WalletStatus::Closed, C::EraseCustomer { reason }) => {
            ledger::erase(state, reason).map(|erased| (identifiers::detach_all(state, "customer erased"), erased))
        }
        // What a closed wallet sent out and its target refused comes back to it, and is forfeited.
        (WalletStatus::Closed, C::ReturnTransfer { transfer_id, parts, code }) => {
            transfers::give_back(state, ctx, transfer_id, parts, code)
        }
        (WalletStatus::Closed, _) => Err(Rejection::WalletClosed),
        (WalletStatus::Active, body) => match body {
            C::Enroll { .. } => Err(Rejection::AlreadyEnrolled),
            C::EraseCustomer { .. } => unreachable!("decided above for every enrolled wallet"),
            C::Earn { points, reason, source_ref, order_amount } => {
                alone(ledger::earn(state, ctx, *points, reason, source_ref, order_amount.as_ref()))
            }
            C::Redeem { points, reward_ref } => alone(ledger::redeem(state, ctx, *points, reward_ref)),
            C::Adjust { points, reason, staff_ref } => alone(ledger::adjust(state, ctx, *points, reason, staff_ref)),
            C::Reverse { source_ref, points, reason } => ledger::reverse(state, ctx, source_ref, *points, reason),
            // `decide` closes through `ledger::close` and runs due transitions itself; these answers are theirs.
            C::Close { reason } => {
                let mut changes = ledger::close(state, reason);
                let closed = changes
                    .pop()
                    .unwrap_or_else(|| Change::Closed(tally_proto::v1::WalletClosed { reason: reason.clone(), ..Default::default() }));
                Ok((Vec::new(), closed))
            }
            C::RunDue => Err(Rejection::NothingDue { next_due_ms: state.next_due_ms() }),
            C::AuthorizeRedemption { hold_id, points, reward_ref, timeout_ms } => {
                alone(holds::authorize(state, ctx, hold_id, *points, reward_ref, *timeout_ms))
            }
            C::CaptureRedemption { hold_id, points } => alone(holds::capture(state, ctx, hold_id, *points)),
            C::VoidRedemption { hold_id } => alone(holds::void(state, hold_id)),
            C::PurchaseCredits { purchase_id, package_id } => alone(credits::purchase(state, ctx, purchase_id, package_id)),
            C::RedeemReward { redemption_id, reward_id } => alone(Ok(rewards::redeem_or_refuse(state, ctx, redemption_id, reward_id))),
            C::CancelRewardRedemption { redemption_id, reason } => rewards::cancel(state, ctx, redemption_id, reason),
            C::TransferOut { to_wallet_id, .. } if to_wallet_id == ctx.wallet.as_str() => {
                Err(crate::domain::FieldError::new("to_wallet_id", "must be another wallet than the source").into())
            }
            C::TransferOut { transfer_id, to_wallet_id, points, reason } => {
                alone(Ok(transfers::send_or_refuse(state, ctx, transfer_id, to_wallet_id, *points, reason)))
            }
            C::TransferIn { transfer_id, from_wallet_id, parts, reason } => {
                transfers::receive_or_refuse(state, ctx, transfer_id, from_wallet_id, parts, reason)
            }
            C::ReturnTransfer { transfer_id, parts, code } => transfers::give_back(state, ctx, transfer_id, parts, code),
            C::EarnForOrder { order } => alone(orders::earn_for_order(state, order, ctx)),
            C::AddStamps { card_id, count, reason } => alone(stamps::add(ctx, card_id, *count, reason)),
            C::RefundOrder { order_id, amount_minor, reason } => orders::refund(state, ctx, order_id, *amount_minor, reason),
            C::AttachIdentifier { kind, lookup } => alone(identifiers::attach(state, *kind, lookup)),
            C::DetachIdentifier { lookup, reason, .. } => alone(identifiers::detach(state, lookup, reason)),
            C::RewardReferral { referee_wallet_id, order_id, points } => {
                alone(referrals::reward(state, ctx, referee_wallet_id, order_id, *points))
            }
        },
    }
}

/// Folds one event into the state. Holds no business rule: every amount comes from the event.
pub fn apply(state: &mut WalletState, event: &Event) {
    let at_ms = event.recorded_at_ms;
    match &event.change {
        Change::Enrolled(e) => ledger::apply_enrolled(state, e, at_ms),
        Change::Earned(e) => ledger::apply_earned(state, e, at_ms),
        Change::Redeemed(e) => {
            // A catalogue redemption is remembered before its debit, while its lots still hold the points.
            if !e.redemption_id.is_empty() {
                rewards::remember(state, e, at_ms);
            }
            ledger::apply_redeemed(state, e);
        }
        Change::Adjusted(e) => ledger::apply_adjusted(state, e),
        Change::Reversed(e) => ledger::apply_reversed(state, e),
        Change::Closed(e) => ledger::apply_closed(state, e),
        Change::Held(e) => holds::apply_held(state, e),
        Change::Captured(e) => holds::apply_captured(state, e),
        Change::Released(e) => holds::apply_released(state, e),
        Change::Purchased(e) => credits::apply_purchased(state, e),
        Change::ExpiringSoon(e) => due::apply_expiring_soon(state, e),
        Change::Matured(e) => due::apply_matured(state, e),
        Change::Expired(e) => due::apply_expired(state, e),
        Change::Stamped(e) => stamps::apply_stamped(state, e),
        Change::CardCompleted(e) => stamps::apply_card_completed(state, e),
        Change::TierChanged(e) => tier::apply_tier_changed(state, e),
        Change::TierReviewed(e) => tier::apply_tier_reviewed(state, e),
        Change::CustomerErased(_) => ledger::apply_customer_erased(state),
        // Only its receipt: the redemption's answer.
        Change::RewardRefused(_) => {}
        Change::RewardCancelled(e) => rewards::apply_cancelled(state, e),
        Change::TransferredOut(e) => transfers::apply_out(state, e, at_ms),
        Change::TransferredIn(e) => transfers::apply_in(state, e),
        Change::TransferReturned(e) => transfers::apply_returned(state, e),
        // Only its receipt: the transfer's answer.
        Change::TransferRefused(_) => {}
        Change::IdentifierAttached(e) => identifiers::apply_attached(state, e),
        Change::IdentifierDetached(e) => identifiers::apply_detached(state, e),
        Change::ReferralRecorded(e) => state.referred_by.clone_from(&e.referrer_wallet_id),
        Change::ReferralConverted(e) => referrals::apply_converted(state, e),
        Change::ReferralRewarded(e) => referrals::apply_rewarded(state, e),
        Change::ReferralLapsed(e) => referrals::apply_lapsed(state, e),
    }
    state.balance += event.change.points_delta();
    state.last_activity_ms = event.recorded_at_ms;
    state.version += 1;
    receipts::record(state, event);
    receipts::forget_past(state, event.recorded_at_ms);
}
