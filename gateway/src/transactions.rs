//! One wallet event as the wire's `Transaction`: `transaction` sends each kind to its family's room (ledger, holds,
//! what time brought, stamp cards, the catalogue, transfers), one arm per kind there; a new kind is a line in `transaction` and an arm in its room.

use tally_engine::actors::StoredWalletEvent;
use tally_engine::domain::{Change, Event, identifiers};
use tally_proto::v1::{LotOpened, LotPoints, StampAward, TierMove, Transaction, TransactionKind};

use crate::orders;
use crate::service::timestamp;

pub(crate) fn transaction(stored: &StoredWalletEvent) -> Transaction {
    let Event { idempotency_key, recorded_at_ms, change, .. } = &stored.event;
    let base = Transaction {
        version: stored.version,
        position: stored.position,
        recorded_at: timestamp(*recorded_at_ms),
        points: change.points_delta(),
        idempotency_key: idempotency_key.clone(),
        ..Transaction::default()
    };
    match change {
        // The customer's reference is personal data: on the Wallet (while not erased), never in a history.
        Change::Enrolled(_) => Transaction { kind: kind(TransactionKind::Enrolled), ..base },
        Change::CustomerErased(e) => Transaction { kind: kind(TransactionKind::CustomerErased), reason: e.reason.clone(), ..base },
        Change::Earned(_) | Change::Redeemed(_) | Change::Adjusted(_) | Change::Reversed(_) | Change::Closed(_) | Change::Purchased(_) => {
            ledger(change, base)
        }
        Change::Held(_) | Change::Captured(_) | Change::Released(_) => holds(change, base),
        Change::Expired(_) | Change::Matured(_) | Change::ExpiringSoon(_) | Change::TierChanged(_) | Change::TierReviewed(_) => {
            by_time(change, base)
        }
        Change::Stamped(_) | Change::CardCompleted(_) => cards(change, base),
        Change::RewardCancelled(_) | Change::RewardRefused(_) => catalogue(change, base),
        Change::TransferredOut(_) | Change::TransferredIn(_) | Change::TransferReturned(_) | Change::TransferRefused(_) => {
            transfers(change, base)
        }
        // The kind only: the identifier's value is kept nowhere.
        Change::IdentifierAttached(e) => {
            Transaction { kind: kind(TransactionKind::IdentifierAttached), reference: identifiers::kind_name(e.kind).to_owned(), ..base }
        }
        Change::ReferralRecorded(_) | Change::ReferralConverted(_) | Change::ReferralRewarded(_) | Change::ReferralLapsed(_) => {
            referrals(change, base)
        }
        Change::IdentifierDetached(e) => Transaction {
            kind: kind(TransactionKind::IdentifierDetached),
            reference: identifiers::kind_name(e.kind).to_owned(),
            reason: e.reason.clone(),
            ..base
        },
    }
}

/// A referral: recorded at enrolment, converted by the referee's order (its bonus), the referrer's reward.
fn referrals(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::ReferralRecorded(e) => {
            Transaction { kind: kind(TransactionKind::ReferralRecorded), counterpart_wallet_id: e.referrer_wallet_id.clone(), ..base }
        }
        Change::ReferralConverted(e) => Transaction {
            kind: kind(TransactionKind::ReferralConverted),
            counterpart_wallet_id: e.referrer_wallet_id.clone(),
            reference: e.order_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            ..base
        },
        Change::ReferralRewarded(e) => Transaction {
            kind: kind(TransactionKind::ReferralRewarded),
            reason: e.refused.clone(),
            counterpart_wallet_id: e.referee_wallet_id.clone(),
            reference: e.order_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            ..base
        },
        Change::ReferralLapsed(e) => {
            Transaction { kind: kind(TransactionKind::ReferralLapsed), reference: e.order_id.clone(), reason: e.reason.clone(), ..base }
        }
        _ => unreachable!("called for referrals only"),
    }
}

fn kind(kind: TransactionKind) -> i32 {
    kind as i32
}

/// When the lot a change opened expires.
fn expires(lot: Option<&LotOpened>) -> Option<prost_types::Timestamp> {
    lot.and_then(|lot| timestamp(lot.expires_at_ms))
}

/// Credits and debits: earned, redeemed, adjusted, reversed, closed, purchased.
fn ledger(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::Earned(e) => {
            let pending = e.pending.as_ref();
            let order = e.order.as_ref();
            Transaction {
                kind: kind(TransactionKind::Earned),
                reason: e.reason.clone(),
                reference: e.source_ref.clone(),
                order_amount: e.order_amount.clone(),
                expires_at: expires(e.lot.as_ref()).or_else(|| pending.and_then(|p| timestamp(p.expires_at_ms))),
                available_at: pending.and_then(|p| timestamp(p.available_at_ms)),
                rules_version: order.map_or(0, |o| o.rules_version),
                awards: order.map(|o| o.awards.iter().map(orders::award).collect()).unwrap_or_default(),
                stamps: order.iter().flat_map(|o| &o.awards).flat_map(|a| a.stamps.clone()).collect(),
                ..base
            }
        }
        Change::Redeemed(e) => {
            Transaction { kind: kind(TransactionKind::Redeemed), reference: e.reward_ref.clone(), lots: e.lots.clone(), ..base }
        }
        Change::Adjusted(e) => Transaction {
            kind: kind(TransactionKind::Adjusted),
            reason: e.reason.clone(),
            reference: e.staff_ref.clone(),
            expires_at: expires(e.lot.as_ref()),
            lots: e.lots.clone(),
            ..base
        },
        Change::Reversed(e) => Transaction {
            kind: kind(TransactionKind::Reversed),
            reason: e.reason.clone(),
            reference: e.source_ref.clone(),
            shortfall_points: e.shortfall_points,
            refund_amount_minor: e.refund_amount_minor,
            lots: e.lots.clone(),
            ..base
        },
        Change::Closed(e) => Transaction { kind: kind(TransactionKind::Closed), reason: e.reason.clone(), lots: e.lots.clone(), ..base },
        Change::Purchased(e) => Transaction {
            kind: kind(TransactionKind::Purchased),
            reason: e.package_id.clone(),
            reference: e.purchase_id.clone(),
            order_amount: e.price.clone(),
            expires_at: expires(e.lot.as_ref()),
            ..base
        },
        _ => base,
    }
}

/// A POS hold's life: held, captured, released.
fn holds(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::Held(e) => Transaction {
            kind: kind(TransactionKind::Held),
            reference: e.hold_id.clone(),
            held_points: e.points,
            lots: e.lots.clone(),
            ..base
        },
        Change::Captured(e) => Transaction {
            kind: kind(TransactionKind::Captured),
            reference: e.hold_id.clone(),
            held_points: e.points + e.released_points,
            lots: e.lots.clone(),
            ..base
        },
        Change::Released(e) => Transaction {
            kind: kind(TransactionKind::Released),
            reference: e.hold_id.clone(),
            held_points: e.points,
            lots: e.lots.clone(),
            ..base
        },
        _ => base,
    }
}

/// What time brought: expiries, maturities, notices, tier moves.
fn by_time(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::Expired(e) => {
            Transaction { kind: kind(TransactionKind::Expired), lots: vec![LotPoints { lot: e.lot, points: e.points }], ..base }
        }
        Change::Matured(e) => Transaction {
            kind: kind(TransactionKind::Matured),
            reference: e.source_ref.clone(),
            expires_at: expires(e.lot.as_ref()),
            lots: e.lot.iter().map(|lot| LotPoints { lot: lot.lot, points: lot.points }).collect(),
            ..base
        },
        Change::ExpiringSoon(e) => {
            Transaction { kind: kind(TransactionKind::ExpiringSoon), lots: vec![LotPoints { lot: e.lot, points: e.points }], ..base }
        }
        Change::TierChanged(e) => Transaction {
            kind: kind(TransactionKind::TierChanged),
            reason: if e.r#move == TierMove::Down as i32 { "down" } else { "up" }.to_owned(),
            reference: e.to_tier.clone(),
            ..base
        },
        Change::TierReviewed(e) => {
            Transaction { kind: kind(TransactionKind::TierReviewed), reason: "kept".to_owned(), reference: e.tier.clone(), ..base }
        }
        _ => base,
    }
}

/// Stamp cards: stamps given, a card completed.
fn cards(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::Stamped(e) => Transaction {
            kind: kind(TransactionKind::Stamped),
            reason: e.reason.clone(),
            reference: e.card_id.clone(),
            stamps: vec![StampAward { card: e.card_id.clone(), count: e.count }],
            ..base
        },
        Change::CardCompleted(e) => Transaction {
            kind: kind(TransactionKind::CardCompleted),
            reason: e.reward_ref.clone(),
            reference: e.card_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            ..base
        },
        _ => base,
    }
}

/// A catalogue redemption's refusal or cancellation (its debit is a `REDEEMED`).
fn catalogue(change: &Change, base: Transaction) -> Transaction {
    match change {
        Change::RewardCancelled(e) => Transaction {
            kind: kind(TransactionKind::RedemptionCancelled),
            reason: e.reason.clone(),
            reference: e.reward_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            lots: e.lot.iter().filter(|l| l.points != 0).map(|l| LotPoints { lot: l.lot, points: l.points }).collect(),
            ..base
        },
        Change::RewardRefused(e) => Transaction {
            kind: kind(TransactionKind::RewardRefused),
            reason: format!("{}: {}", e.code, e.message),
            reference: e.reward_id.clone(),
            ..base
        },
        _ => base,
    }
}

/// A transfer's steps in this wallet: sent, received, returned, refused.
fn transfers(change: &Change, base: Transaction) -> Transaction {
    let opened =
        |lot: Option<&LotOpened>| lot.iter().filter(|l| l.points != 0).map(|l| LotPoints { lot: l.lot, points: l.points }).collect();
    match change {
        Change::TransferredOut(e) => Transaction {
            kind: kind(TransactionKind::TransferSent),
            reason: e.reason.clone(),
            reference: e.transfer_id.clone(),
            counterpart_wallet_id: e.to_wallet_id.clone(),
            lots: e.lots.clone(),
            ..base
        },
        Change::TransferredIn(e) => Transaction {
            kind: kind(TransactionKind::TransferReceived),
            reason: e.reason.clone(),
            reference: e.transfer_id.clone(),
            counterpart_wallet_id: e.from_wallet_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            lots: opened(e.lot.as_ref()),
            ..base
        },
        Change::TransferReturned(e) => Transaction {
            kind: kind(TransactionKind::TransferReturned),
            reason: e.code.clone(),
            reference: e.transfer_id.clone(),
            expires_at: expires(e.lot.as_ref()),
            lots: opened(e.lot.as_ref()),
            ..base
        },
        Change::TransferRefused(e) => Transaction {
            kind: kind(TransactionKind::TransferRefused),
            reason: format!("{}: {}", e.code, e.message),
            reference: e.transfer_id.clone(),
            ..base
        },
        _ => base,
    }
}
