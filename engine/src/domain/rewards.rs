//! The rewards catalogue: what a reward's definition may say (`check_definition`, for the program's
//! `DefineReward`), and a limited reward's **stock** as an aggregate of its own, on stream
//! `<tenant>/reward/<reward_id>`. Pure: `decide_stock` and `apply_stock`.
//!
//! Stock moves in three steps that a redemption flow drives (`crate::domain::flows`): a redemption
//! **reserves** one (refused when none is on hand), then either **takes** it (the points were debited) or
//! **releases** it (they were not). Each step names its redemption, and each is idempotent on it:
//! reserving a redemption that holds a reservation or that was settled (taken or released) within
//! `RECEIPT_RETENTION_MS`, or taking or releasing one that holds none, changes nothing. So a driver of a
//! redemption that is behind the log (another node drove it on meanwhile) can neither book a second unit
//! nor take one twice. The state keeps the open reservations and the recently settled ids (forgotten by
//! event time, as wallets forget receipts; a flow reserves only within `FLOW_DEBIT_WITHIN_MS` of its
//! start, well inside that). Concurrency is the log's version check on the stream, never a lock.
//!
//! `on_hand + Σ reserved + taken == Σ restocked`, always.

use std::collections::BTreeMap;

use tally_proto::v1::{RewardDefined, RewardRestocked, RewardStockReleased, RewardStockReserved, RewardStockReturned, RewardStockTaken};

use super::fingerprint::{CommandFingerprint, Layout};
use super::ids::FieldError;
use super::program::check_id;
use super::tiers::Tiers;
use crate::limits::{
    POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX, RECEIPT_RETENTION_MS, REDEMPTION_CANCEL_WINDOW_DAYS_MAX, REF_BYTES_MAX, RESTOCK_QUANTITY_MAX,
    RETENTION_SWEEP_INTERVAL_MS, REWARD_PER_CUSTOMER_MAX, STOCK_ON_HAND_MAX,
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
    if reward.cancel_window_days > REDEMPTION_CANCEL_WINDOW_DAYS_MAX {
        let reason = format!("must be at most {REDEMPTION_CANCEL_WINDOW_DAYS_MAX} (0: redemptions cannot be cancelled)");
        return Err(FieldError::new("reward.cancel_window_days", reason));
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
        Returned(RewardStockReturned),
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
    /// Redemptions whose reservation was taken or released, with when: a late reserve of one is void.
    settled: BTreeMap<String, i64>,
    /// Cancelled redemptions whose stock was returned, with when: a second return of one is void.
    returned: BTreeMap<String, i64>,
    /// Restocks by idempotency key, with their fingerprints and when (a retry adds nothing).
    restocks: BTreeMap<String, (CommandFingerprint, i64)>,
    /// The recorded time settled ids and restocks past `RECEIPT_RETENTION_MS` were last forgotten at.
    swept_at_ms: i64,
}

impl StockState {
    /// Set aside by redemptions in progress.
    pub fn reserved_total(&self) -> i64 {
        self.reserved.values().fold(0, |total, quantity| total.saturating_add(*quantity))
    }
}

/// What is asked of a reward's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOp {
    Reserve {
        redemption_id: String,
        wallet_id: String,
    },
    Take {
        redemption_id: String,
    },
    Release {
        redemption_id: String,
        reason: String,
    },
    /// A cancelled redemption's stock back on hand.
    Return {
        redemption_id: String,
    },
    Restock {
        idempotency_key: String,
        quantity: i64,
        restocked_by: String,
        reason: String,
    },
}

impl StockOp {
    fn layout(&self) -> Layout {
        match self {
            StockOp::Reserve { redemption_id, wallet_id } => Layout::new(111).str(redemption_id).str(wallet_id),
            StockOp::Take { redemption_id } => Layout::new(112).str(redemption_id),
            StockOp::Release { redemption_id, reason } => Layout::new(113).str(redemption_id).str(reason),
            StockOp::Return { redemption_id } => Layout::new(114).str(redemption_id),
            StockOp::Restock { quantity, restocked_by, reason, .. } => Layout::new(110).i64(*quantity).str(restocked_by).str(reason),
        }
    }

    fn key(&self) -> String {
        use crate::domain::ENGINE_KEY_PREFIX as P;
        match self {
            StockOp::Reserve { redemption_id, .. } => format!("{P}reward:{redemption_id}:reserve"),
            StockOp::Take { redemption_id } => format!("{P}reward:{redemption_id}:take"),
            StockOp::Release { redemption_id, .. } => format!("{P}reward:{redemption_id}:release"),
            StockOp::Return { redemption_id } => format!("{P}reward:{redemption_id}:return"),
            StockOp::Restock { idempotency_key, .. } => idempotency_key.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockRejection {
    #[error("invalid {0}")]
    InvalidField(#[from] FieldError),
    /// Nothing on hand to reserve; `reserved` are set aside by redemptions in progress, which may still
    /// give theirs back.
    #[error("the reward is out of stock")]
    OutOfStock { reserved: i64 },
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
            if state.reserved.contains_key(redemption_id) || state.settled.contains_key(redemption_id) {
                return Ok(None);
            }
            if state.on_hand < 1 {
                return Err(StockRejection::OutOfStock { reserved: state.reserved_total() });
            }
            StockChange::Reserved(RewardStockReserved { redemption_id: redemption_id.clone(), wallet_id: wallet_id.clone(), quantity: 1 })
        }
        StockOp::Take { redemption_id } if let Some(quantity) = state.reserved.get(redemption_id) => {
            StockChange::Taken(RewardStockTaken { redemption_id: redemption_id.clone(), quantity: *quantity })
        }
        StockOp::Release { redemption_id, reason } if let Some(quantity) = state.reserved.get(redemption_id) => {
            StockChange::Released(RewardStockReleased { redemption_id: redemption_id.clone(), reason: reason.clone(), quantity: *quantity })
        }
        StockOp::Take { .. } | StockOp::Release { .. } => return Ok(None),
        // The flow returns only what a completed redemption took, once; a repeat within the window is
        // void.
        StockOp::Return { redemption_id } if state.returned.contains_key(redemption_id) => return Ok(None),
        StockOp::Return { redemption_id } => {
            StockChange::Returned(RewardStockReturned { redemption_id: redemption_id.clone(), quantity: 1 })
        }
        StockOp::Restock { idempotency_key, quantity, restocked_by, reason } => {
            if let Some((seen, _)) = state.restocks.get(idempotency_key) {
                return if op.layout().matches(seen) {
                    Ok(None)
                } else {
                    Err(StockRejection::IdempotencyKeyReused { key: idempotency_key.clone() })
                };
            }
            if idempotency_key.is_empty() || idempotency_key.len() > REF_BYTES_MAX {
                return Err(FieldError::new("idempotency_key", format!("must be 1 to {REF_BYTES_MAX} bytes")).into());
            }
            if idempotency_key.starts_with(crate::domain::ENGINE_KEY_PREFIX) {
                let reason = format!("must not start with {:?}: such keys are the engine's", crate::domain::ENGINE_KEY_PREFIX);
                return Err(FieldError::new("idempotency_key", reason).into());
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

/// Folds one event into the stock. Holds no business rule: it records what was decided. Amounts a
/// hostile log could make negative or huge are clamped, never trusted to overflow.
pub fn apply_stock(state: &mut StockState, event: &StockEvent) {
    let at_ms = event.recorded_at_ms;
    match &event.change {
        StockChange::Restocked(e) => {
            state.on_hand = state.on_hand.saturating_add(e.quantity.max(0));
            state.restocks.insert(event.idempotency_key.clone(), (event.command_fingerprint, at_ms));
        }
        StockChange::Reserved(e) => {
            let quantity = e.quantity.max(0);
            state.on_hand = state.on_hand.saturating_sub(quantity);
            let held = state.reserved.entry(e.redemption_id.clone()).or_default();
            *held = held.saturating_add(quantity);
        }
        StockChange::Released(e) => {
            let quantity = state.reserved.remove(&e.redemption_id).unwrap_or(0);
            state.on_hand = state.on_hand.saturating_add(quantity);
            state.settled.insert(e.redemption_id.clone(), at_ms);
        }
        StockChange::Taken(e) => {
            let quantity = state.reserved.remove(&e.redemption_id).unwrap_or(0);
            state.taken = state.taken.saturating_add(quantity);
            state.settled.insert(e.redemption_id.clone(), at_ms);
        }
        StockChange::Returned(e) => {
            let quantity = e.quantity.max(0);
            state.taken = state.taken.saturating_sub(quantity);
            state.on_hand = state.on_hand.saturating_add(quantity);
            state.returned.insert(e.redemption_id.clone(), at_ms);
        }
    }
    state.version += 1;
}

/// Forgets the settled redemptions and restocks `RECEIPT_RETENTION_MS` older than `at_ms` (a recorded
/// time), at most once per `RETENTION_SWEEP_INTERVAL_MS` of it; after each event applied.
pub fn forget_past(state: &mut StockState, at_ms: i64) {
    if at_ms.saturating_sub(state.swept_at_ms) >= RETENTION_SWEEP_INTERVAL_MS {
        let horizon = at_ms.saturating_sub(RECEIPT_RETENTION_MS);
        state.settled.retain(|_, settled_at| *settled_at > horizon);
        state.returned.retain(|_, returned_at| *returned_at > horizon);
        state.restocks.retain(|_, (_, restocked_at)| *restocked_at > horizon);
        state.swept_at_ms = at_ms;
    }
}

/// Undoes `apply_stock` of `event`, the last event applied, decided by `decide_stock` against the state
/// before it (a batch whose append failed is taken back this way, without copying the state for each).
pub fn revert_stock(state: &mut StockState, event: &StockEvent) {
    match &event.change {
        StockChange::Restocked(e) => {
            state.on_hand = state.on_hand.saturating_sub(e.quantity.max(0));
            state.restocks.remove(&event.idempotency_key);
        }
        StockChange::Reserved(e) => {
            state.on_hand = state.on_hand.saturating_add(e.quantity.max(0));
            state.reserved.remove(&e.redemption_id);
        }
        StockChange::Released(e) => {
            state.on_hand = state.on_hand.saturating_sub(e.quantity);
            state.reserved.insert(e.redemption_id.clone(), e.quantity);
            state.settled.remove(&e.redemption_id);
        }
        StockChange::Taken(e) => {
            state.taken = state.taken.saturating_sub(e.quantity);
            state.reserved.insert(e.redemption_id.clone(), e.quantity);
            state.settled.remove(&e.redemption_id);
        }
        StockChange::Returned(e) => {
            state.taken = state.taken.saturating_add(e.quantity);
            state.on_hand = state.on_hand.saturating_sub(e.quantity);
            state.returned.remove(&e.redemption_id);
        }
    }
    state.version -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut StockState, op: StockOp) -> Result<bool, StockRejection> {
        let event = decide_stock(state, &op, 1)?;
        let changed = event.is_some();
        if let Some(event) = event {
            let before = state.clone();
            apply_stock(state, &event);
            let mut reverted = state.clone();
            revert_stock(&mut reverted, &event);
            assert_eq!(reverted, before, "{op:?} reverts to the state before it");
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
        assert_eq!(run(&mut stock, reserve("r1")), Err(StockRejection::OutOfStock { reserved: 0 }));
        assert_eq!(run(&mut stock, restock("k1", 2)), Ok(true));
        assert_eq!(run(&mut stock, restock("k1", 2)), Ok(false), "a retried restock adds nothing");
        assert!(matches!(run(&mut stock, restock("k1", 3)), Err(StockRejection::IdempotencyKeyReused { .. })));
        assert_eq!(run(&mut stock, reserve("r1")), Ok(true));
        assert_eq!(run(&mut stock, reserve("r1")), Ok(false), "a held reservation is not made twice");
        assert_eq!(run(&mut stock, reserve("r2")), Ok(true));
        assert_eq!(run(&mut stock, reserve("r3")), Err(StockRejection::OutOfStock { reserved: 2 }));
        assert_eq!(run(&mut stock, StockOp::Take { redemption_id: "r1".into() }), Ok(true));
        assert_eq!(run(&mut stock, StockOp::Take { redemption_id: "r1".into() }), Ok(false));
        assert_eq!(run(&mut stock, StockOp::Release { redemption_id: "r1".into(), reason: String::new() }), Ok(false), "taken stays taken");
        assert_eq!(run(&mut stock, StockOp::Release { redemption_id: "r2".into(), reason: String::new() }), Ok(true));
        assert_eq!((stock.on_hand, stock.reserved_total(), stock.taken), (1, 0, 1));
        assert_eq!(stock.on_hand + stock.reserved_total() + stock.taken, 2);
        // A driver behind the log reserving a settled redemption again books nothing.
        assert_eq!(run(&mut stock, reserve("r1")), Ok(false), "taken: not booked again");
        assert_eq!(run(&mut stock, reserve("r2")), Ok(false), "released: not booked again");
        assert_eq!((stock.on_hand, stock.reserved_total(), stock.taken), (1, 0, 1));
        // A cancelled redemption's unit comes back once.
        assert_eq!(run(&mut stock, StockOp::Return { redemption_id: "r1".into() }), Ok(true));
        assert_eq!(run(&mut stock, StockOp::Return { redemption_id: "r1".into() }), Ok(false));
        assert_eq!((stock.on_hand, stock.reserved_total(), stock.taken), (2, 0, 0));
    }

    #[test]
    fn settled_redemptions_and_restocks_are_forgotten_by_event_time() {
        let mut stock = StockState::default();
        let at = |ms: i64, op: StockOp, stock: &mut StockState| {
            let event = decide_stock(stock, &op, ms).unwrap().expect("a change");
            apply_stock(stock, &event);
            forget_past(stock, ms);
        };
        at(1, restock("k", 5), &mut stock);
        at(2, reserve("r1"), &mut stock);
        at(3, StockOp::Take { redemption_id: "r1".into() }, &mut stock);
        at(4 + RECEIPT_RETENTION_MS + RETENTION_SWEEP_INTERVAL_MS, reserve("r2"), &mut stock);
        assert!(stock.settled.is_empty() && stock.restocks.is_empty(), "forgotten after the retention");
    }

    #[test]
    fn a_restock_key_may_not_be_the_engines() {
        let op = StockOp::Restock { idempotency_key: "tally:x".into(), quantity: 1, restocked_by: "ops".into(), reason: String::new() };
        assert!(matches!(decide_stock(&StockState::default(), &op, 1), Err(StockRejection::InvalidField(_))));
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
