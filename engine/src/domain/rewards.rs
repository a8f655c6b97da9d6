//! The rewards catalogue: what a reward's definition may say (`check_definition`, for the program's
//! `DefineReward`), and a limited reward's **stock** as an aggregate of its own, on stream
//! `<tenant>/reward/<reward_id>`. Pure: `decide_stock` and `apply_stock`.
//!
//! Stock moves in three steps that a redemption flow drives (`crate::domain::flows`): a redemption
//! **reserves** one (refused when none is on hand), then either **takes** it (the points were debited) or
//! **releases** it (they were not). Each step names its redemption, and each is idempotent on it: reserving
//! a redemption that holds a reservation, or taking or releasing one that holds none, changes nothing. The
//! state keeps only the reservations open now, so it stays the size of the redemptions in progress.
//! Concurrency is the log's version check on the stream, never a lock.
//!
//! `on_hand + Σ reserved + taken == Σ restocked`, always.

use std::collections::BTreeMap;

use tally_proto::v1::{RewardDefined, RewardRestocked, RewardStockReleased, RewardStockReserved, RewardStockTaken};

use super::fingerprint::{CommandFingerprint, Layout};
use super::ids::FieldError;
use super::program::check_id;
use super::tiers::Tiers;
use crate::limits::{
    POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, REF_BYTES_MAX, RESTOCK_QUANTITY_MAX, REWARD_PER_CUSTOMER_MAX, STOCK_ON_HAND_MAX,
};

/// Checks a reward's definition against the program's tiers.
pub fn check_definition(reward: &RewardDefined, tiers: &Tiers) -> Result<(), FieldError> {
    check_id("reward.reward_id", &reward.reward_id)?;
    check_text("reward.name", &reward.name, REASON_BYTES_MAX)?;
    if !(1..=POINTS_PER_COMMAND_MAX).contains(&reward.points) {
        return Err(FieldError::new("reward.points", format!("must be within 1..={POINTS_PER_COMMAND_MAX}")));
    }
    if !(0..=REWARD_PER_CUSTOMER_MAX).contains(&reward.per_customer_max) {
        return Err(FieldError::new("reward.per_customer_max", format!("must be within 0..={REWARD_PER_CUSTOMER_MAX} (0: no limit)")));
    }
    if reward.available_from_ms < 0 {
        return Err(FieldError::new("reward.available_from", "must be 0 (no start) or an instant after 1970"));
    }
    if reward.available_until_ms != 0 && reward.available_until_ms <= reward.available_from_ms {
        return Err(FieldError::new("reward.available_until", "must be 0 (no end) or after available_from"));
    }
    if !reward.min_tier_id.is_empty() && tiers.find(&reward.min_tier_id).is_none() {
        return Err(FieldError::new("reward.min_tier_id", "must be empty or one of the program's tiers"));
    }
    Ok(())
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(field, format!("must be at most {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

crate::domain::event::event_table! {
    /// What happened to a limited reward's stock.
    StockChange {
        Restocked(RewardRestocked),
        Reserved(RewardStockReserved),
        Released(RewardStockReleased),
        Taken(RewardStockTaken),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StockEvent {
    /// A restock's idempotency key; a redemption step's engine key (`tally:reward:<redemption>:<step>`).
    pub idempotency_key: String,
    pub command_fingerprint: CommandFingerprint,
    pub recorded_at_ms: i64,
    pub change: StockChange,
}

/// A reward's stock, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StockState {
    /// Events applied: the stream's version.
    pub version: u64,
    /// Redeemable now.
    pub on_hand: i64,
    /// Redeemed for good.
    pub taken: i64,
    /// Open reservations: quantity by redemption id.
    pub reserved: BTreeMap<String, i64>,
    /// Restocks by idempotency key, with their fingerprints (a retry adds nothing).
    restocks: BTreeMap<String, CommandFingerprint>,
}

impl StockState {
    /// Set aside by redemptions in progress.
    pub fn reserved_total(&self) -> i64 {
        self.reserved.values().sum()
    }
}

/// What is asked of a reward's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOp {
    Reserve { redemption_id: String, wallet_id: String },
    Take { redemption_id: String },
    Release { redemption_id: String, reason: String },
    Restock { idempotency_key: String, quantity: i64, restocked_by: String, reason: String },
}

impl StockOp {
    fn layout(&self) -> Layout {
        match self {
            StockOp::Reserve { redemption_id, wallet_id } => Layout::new(111).str(redemption_id).str(wallet_id),
            StockOp::Take { redemption_id } => Layout::new(112).str(redemption_id),
            StockOp::Release { redemption_id, reason } => Layout::new(113).str(redemption_id).str(reason),
            StockOp::Restock { quantity, restocked_by, reason, .. } => Layout::new(110).i64(*quantity).str(restocked_by).str(reason),
        }
    }

    fn key(&self) -> String {
        use crate::domain::ENGINE_KEY_PREFIX as P;
        match self {
            StockOp::Reserve { redemption_id, .. } => format!("{P}reward:{redemption_id}:reserve"),
            StockOp::Take { redemption_id } => format!("{P}reward:{redemption_id}:take"),
            StockOp::Release { redemption_id, .. } => format!("{P}reward:{redemption_id}:release"),
            StockOp::Restock { idempotency_key, .. } => idempotency_key.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockRejection {
    #[error("invalid {0}")]
    InvalidField(#[from] FieldError),
    /// Nothing on hand to reserve.
    #[error("the reward is out of stock")]
    OutOfStock,
    /// A restock would take the stock on hand past its bound.
    #[error("a reward holds at most {max} on hand")]
    TooMuchStock { max: i64 },
    #[error("idempotency key {key:?} was already used for a different restock")]
    IdempotencyKeyReused { key: String },
}

/// What an op does to the stock: an event to append, or nothing (`Ok(None)`: done already — a
/// reservation held, a step taken before, a restock retried).
pub fn decide_stock(state: &StockState, op: &StockOp, now_ms: i64) -> Result<Option<StockEvent>, StockRejection> {
    let change = match op {
        StockOp::Reserve { redemption_id, wallet_id } => {
            if state.reserved.contains_key(redemption_id) {
                return Ok(None);
            }
            if state.on_hand < 1 {
                return Err(StockRejection::OutOfStock);
            }
            StockChange::Reserved(RewardStockReserved { redemption_id: redemption_id.clone(), wallet_id: wallet_id.clone(), quantity: 1 })
        }
        StockOp::Take { redemption_id } if state.reserved.contains_key(redemption_id) => {
            StockChange::Taken(RewardStockTaken { redemption_id: redemption_id.clone() })
        }
        StockOp::Release { redemption_id, reason } if state.reserved.contains_key(redemption_id) => {
            StockChange::Released(RewardStockReleased { redemption_id: redemption_id.clone(), reason: reason.clone() })
        }
        StockOp::Take { .. } | StockOp::Release { .. } => return Ok(None),
        StockOp::Restock { idempotency_key, quantity, restocked_by, reason } => {
            if let Some(seen) = state.restocks.get(idempotency_key) {
                return if op.layout().matches(seen) {
                    Ok(None)
                } else {
                    Err(StockRejection::IdempotencyKeyReused { key: idempotency_key.clone() })
                };
            }
            if idempotency_key.is_empty() || idempotency_key.len() > REF_BYTES_MAX {
                return Err(FieldError::new("idempotency_key", format!("must be 1 to {REF_BYTES_MAX} bytes")).into());
            }
            if !(1..=RESTOCK_QUANTITY_MAX).contains(quantity) {
                return Err(FieldError::new("quantity", format!("must be within 1..={RESTOCK_QUANTITY_MAX}")).into());
            }
            check_text("reason", reason, REASON_BYTES_MAX)?;
            check_text("restocked_by", restocked_by, REF_BYTES_MAX)?;
            if state.on_hand.saturating_add(*quantity) > STOCK_ON_HAND_MAX {
                return Err(StockRejection::TooMuchStock { max: STOCK_ON_HAND_MAX });
            }
            StockChange::Restocked(RewardRestocked { quantity: *quantity, restocked_by: restocked_by.clone(), reason: reason.clone() })
        }
    };
    Ok(Some(StockEvent { idempotency_key: op.key(), command_fingerprint: op.layout().fingerprint(), recorded_at_ms: now_ms, change }))
}

/// Folds one event into the stock. Holds no business rule: it records what was decided.
pub fn apply_stock(state: &mut StockState, event: &StockEvent) {
    match &event.change {
        StockChange::Restocked(e) => {
            state.on_hand = state.on_hand.saturating_add(e.quantity);
            state.restocks.insert(event.idempotency_key.clone(), event.command_fingerprint);
        }
        StockChange::Reserved(e) => {
            state.on_hand = state.on_hand.saturating_sub(e.quantity);
            *state.reserved.entry(e.redemption_id.clone()).or_default() += e.quantity;
        }
        StockChange::Released(e) => {
            let quantity = state.reserved.remove(&e.redemption_id).unwrap_or(0);
            state.on_hand = state.on_hand.saturating_add(quantity);
        }
        StockChange::Taken(e) => {
            let quantity = state.reserved.remove(&e.redemption_id).unwrap_or(0);
            state.taken = state.taken.saturating_add(quantity);
        }
    }
    state.version += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut StockState, op: StockOp) -> Result<bool, StockRejection> {
        let event = decide_stock(state, &op, 1)?;
        let changed = event.is_some();
        if let Some(event) = event {
            apply_stock(state, &event);
        }
        Ok(changed)
    }

    fn restock(key: &str, quantity: i64) -> StockOp {
        StockOp::Restock { idempotency_key: key.into(), quantity, restocked_by: "ops".into(), reason: String::new() }
    }

    fn reserve(id: &str) -> StockOp {
        StockOp::Reserve { redemption_id: id.into(), wallet_id: "w".into() }
    }

    #[test]
    fn every_step_is_idempotent_on_its_redemption_and_stock_is_conserved() {
        let mut stock = StockState::default();
        assert_eq!(run(&mut stock, reserve("r1")), Err(StockRejection::OutOfStock));
        assert_eq!(run(&mut stock, restock("k1", 2)), Ok(true));
        assert_eq!(run(&mut stock, restock("k1", 2)), Ok(false), "a retried restock adds nothing");
        assert!(matches!(run(&mut stock, restock("k1", 3)), Err(StockRejection::IdempotencyKeyReused { .. })));
        assert_eq!(run(&mut stock, reserve("r1")), Ok(true));
        assert_eq!(run(&mut stock, reserve("r1")), Ok(false), "a held reservation is not made twice");
        assert_eq!(run(&mut stock, reserve("r2")), Ok(true));
        assert_eq!(run(&mut stock, reserve("r3")), Err(StockRejection::OutOfStock));
        assert_eq!(run(&mut stock, StockOp::Take { redemption_id: "r1".into() }), Ok(true));
        assert_eq!(run(&mut stock, StockOp::Take { redemption_id: "r1".into() }), Ok(false));
        assert_eq!(run(&mut stock, StockOp::Release { redemption_id: "r1".into(), reason: String::new() }), Ok(false), "taken stays taken");
        assert_eq!(run(&mut stock, StockOp::Release { redemption_id: "r2".into(), reason: String::new() }), Ok(true));
        assert_eq!((stock.on_hand, stock.reserved_total(), stock.taken), (1, 0, 1));
        assert_eq!(stock.on_hand + stock.reserved_total() + stock.taken, 2);
    }

    #[test]
    fn a_restock_is_bounded() {
        let mut stock = StockState::default();
        assert!(matches!(run(&mut stock, restock("k", 0)), Err(StockRejection::InvalidField(_))));
        assert!(matches!(run(&mut stock, restock("k", RESTOCK_QUANTITY_MAX + 1)), Err(StockRejection::InvalidField(_))));
        assert!(matches!(run(&mut stock, restock("", 1)), Err(StockRejection::InvalidField(_))));
        stock.on_hand = STOCK_ON_HAND_MAX;
        assert_eq!(run(&mut stock, restock("k", 1)), Err(StockRejection::TooMuchStock { max: STOCK_ON_HAND_MAX }));
    }
}
