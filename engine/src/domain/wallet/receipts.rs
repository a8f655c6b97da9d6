//! Receipts: how a retried command finds its first outcome, and what a wallet forgets as time passes.

use crate::domain::event::Event;
use crate::domain::state::{Receipt, WalletState};
use crate::limits::{RECEIPT_RETENTION_MS, RETENTION_SWEEP_INTERVAL_MS};

/// Records the command of `event` (already counted in `state.version`): its first event opens the
/// receipt, every later one moves its end.
pub(super) fn record(state: &mut WalletState, event: &Event) {
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
}

/// Forgets receipts older than `RECEIPT_RETENTION_MS` and sources past their refund window, at most
/// once per `RETENTION_SWEEP_INTERVAL_MS` of recorded time: a wallet's state stays the size of its recent
/// past however long it lives. Driven by event times only, so a replay forgets exactly the same.
pub(super) fn forget_past(state: &mut WalletState, now_ms: i64) {
    if now_ms < state.swept_at_ms.saturating_add(RETENTION_SWEEP_INTERVAL_MS) {
        return;
    }
    state.swept_at_ms = now_ms;
    let receipts_from = now_ms.saturating_sub(RECEIPT_RETENTION_MS);
    state.receipts.retain(|_, receipt| receipt.recorded_at_ms >= receipts_from);
    // An order waiting to convert the referral is looked at when its wait ends, refunds included.
    let waiting = &state.referral_due;
    state.sources.retain(|id, source| source.refundable_at(now_ms) || waiting.contains_key(id));
    let redemptions_from = now_ms.saturating_sub(crate::limits::CATALOGUE_REDEMPTION_MEMORY_MS);
    state.catalogue_redemptions.retain(|_, redemption| redemption.redeemed_at_ms >= redemptions_from);
}
