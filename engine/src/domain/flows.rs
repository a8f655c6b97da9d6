//! Flows across aggregates, as aggregates of their own: a flow is a stream, `<tenant>/flow/<flow_id>`,
//! that records what the flow is to do (`FlowStarted`, all of it), each outcome that decides what follows
//! (`FlowStepRecorded`), and its end (`FlowEnded`). Pure: `apply_flow` folds it, `next_step` says what is
//! left to do. `crate::actors::flows` drives the steps; every step is a command keyed by the flow and the
//! step, idempotent in the aggregate it changes, so a flow resumed after a crash at any point redoes at
//! most the step it was in, and that step changes nothing the second time.
//!
//! The reward redemption: reserve one of the reward's stock (limited rewards), debit the wallet, then take
//! the stock — or, when the wallet refuses, release it. Only the debit's outcome is recorded before the
//! flow goes on: a reservation is idempotent while it is open, and it stays open until the debit's outcome
//! is recorded, so reserving again after a crash finds it; taking and releasing are idempotent for good.

use tally_proto::v1::flow_started::Flow;
use tally_proto::v1::{FlowEnded, FlowOutcome, FlowRefusal, FlowStarted, FlowStepRecorded, RewardRedemptionFlow};

use super::Rejection;

crate::domain::event::event_table! {
    /// What happened to a flow.
    FlowChange {
        Started(FlowStarted),
        StepRecorded(FlowStepRecorded),
        Ended(FlowEnded),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FlowEvent {
    pub recorded_at_ms: i64,
    pub change: FlowChange,
}

/// The step names `FlowStepRecorded` and the flows' listing use.
pub const STEP_RESERVE_STOCK: &str = "reserve_stock";
pub const STEP_DEBIT_WALLET: &str = "debit_wallet";
pub const STEP_TAKE_STOCK: &str = "take_stock";
pub const STEP_RELEASE_STOCK: &str = "release_stock";

/// Refusal code of a reward out of stock.
pub const OUT_OF_STOCK: &str = "OUT_OF_STOCK";

/// A flow, folded from its stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowState {
    /// Events applied: the stream's version.
    pub version: u64,
    pub redemption: Option<RewardRedemptionFlow>,
    pub started_at_ms: i64,
    /// When its last event was recorded.
    pub progress_at_ms: i64,
    /// The debit's outcome, once recorded.
    pub debit: Option<FlowStepRecorded>,
    pub ended: Option<FlowEnded>,
}

/// What a redemption does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedemptionStep {
    /// Reserve one of the reward's stock (if `reserve_first`), then debit the wallet.
    Debit { reserve_first: bool },
    /// The wallet paid: take the reserved stock (if `take_stock`), then end completed.
    Complete { take_stock: bool },
    /// The wallet refused: release the reserved stock (if `release_stock`), then end refused.
    Refuse { release_stock: bool },
}

impl RedemptionStep {
    /// The step's name, for listings: the first thing it does.
    pub fn name(&self) -> &'static str {
        match self {
            RedemptionStep::Debit { reserve_first: true } => STEP_RESERVE_STOCK,
            RedemptionStep::Debit { reserve_first: false } => STEP_DEBIT_WALLET,
            RedemptionStep::Complete { take_stock: true } => STEP_TAKE_STOCK,
            RedemptionStep::Refuse { release_stock: true } => STEP_RELEASE_STOCK,
            RedemptionStep::Complete { .. } | RedemptionStep::Refuse { .. } => "end",
        }
    }
}

/// What is left to do of a redemption; `None` once it ended (or if the stream holds no redemption).
pub fn next_step(state: &FlowState) -> Option<RedemptionStep> {
    let redemption = state.redemption.as_ref()?;
    if state.ended.is_some() {
        return None;
    }
    let limited = redemption.limited_stock;
    Some(match &state.debit {
        None => RedemptionStep::Debit { reserve_first: limited },
        Some(debit) if debit.ok => RedemptionStep::Complete { take_stock: limited },
        Some(_) => RedemptionStep::Refuse { release_stock: limited },
    })
}

/// How the redemption ends once its last step is done: completed with the debit's figures, or refused
/// with the wallet's reason.
pub fn ending(state: &FlowState) -> Option<FlowEnded> {
    let debit = state.debit.as_ref()?;
    Some(if debit.ok {
        FlowEnded { outcome: FlowOutcome::Completed as i32, refusal: None, points: debit.points, balance: debit.balance }
    } else {
        FlowEnded { outcome: FlowOutcome::Refused as i32, refusal: debit.refusal.clone(), points: 0, balance: 0 }
    })
}

/// The end of a redemption refused before anything was taken (its stock ran out).
pub fn refused(code: &str, message: String) -> FlowEnded {
    FlowEnded { outcome: FlowOutcome::Refused as i32, refusal: Some(FlowRefusal { code: code.to_owned(), message }), points: 0, balance: 0 }
}

/// The start of a reward redemption.
pub fn redemption_started(redemption: RewardRedemptionFlow) -> FlowChange {
    FlowChange::Started(FlowStarted { flow: Some(Flow::RewardRedemption(redemption)) })
}

/// Folds one event into the flow. Holds no business rule.
pub fn apply_flow(state: &mut FlowState, event: &FlowEvent) {
    match &event.change {
        FlowChange::Started(e) => {
            if let Some(Flow::RewardRedemption(r)) = &e.flow {
                state.redemption = Some(r.clone());
            }
            state.started_at_ms = event.recorded_at_ms;
        }
        FlowChange::StepRecorded(e) if e.step == STEP_DEBIT_WALLET => state.debit = Some(e.clone()),
        FlowChange::StepRecorded(_) => {}
        FlowChange::Ended(e) => state.ended = Some(e.clone()),
    }
    state.progress_at_ms = event.recorded_at_ms;
    state.version += 1;
}

/// The code a wallet's refusal of a debit is recorded (and answered) with.
pub fn refusal_code(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::WalletNotFound => "WALLET_NOT_FOUND",
        Rejection::WalletClosed => "WALLET_CLOSED",
        Rejection::InsufficientPoints { .. } => "INSUFFICIENT_POINTS",
        Rejection::UnknownReward { .. } => "UNKNOWN_REWARD",
        Rejection::RewardInactive { .. } => "REWARD_INACTIVE",
        Rejection::RewardNotAvailable { .. } => "REWARD_NOT_AVAILABLE",
        Rejection::RewardLimitReached { .. } => "REWARD_LIMIT_REACHED",
        Rejection::TierTooLow { .. } => "TIER_TOO_LOW",
        Rejection::PointsOutOfRange { .. } => "POINTS_OUT_OF_RANGE",
        _ => "REFUSED",
    }
}

/// The recorded refusal of a wallet's rejection.
pub fn refusal(rejection: &Rejection) -> FlowRefusal {
    FlowRefusal { code: refusal_code(rejection).to_owned(), message: rejection.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(change: FlowChange) -> FlowEvent {
        FlowEvent { recorded_at_ms: 7, change }
    }

    fn started(limited_stock: bool) -> FlowState {
        let mut state = FlowState::default();
        let redemption = RewardRedemptionFlow { redemption_id: "r".into(), wallet_id: "w".into(), reward_id: "mug".into(), limited_stock };
        apply_flow(&mut state, &event(redemption_started(redemption)));
        state
    }

    #[test]
    fn a_redemption_reserves_debits_then_takes_or_releases() {
        let mut state = started(true);
        assert_eq!(next_step(&state), Some(RedemptionStep::Debit { reserve_first: true }));
        let paid = FlowStepRecorded { step: STEP_DEBIT_WALLET.into(), ok: true, points: 50, balance: 10, ..Default::default() };
        apply_flow(&mut state, &event(FlowChange::StepRecorded(paid)));
        assert_eq!(next_step(&state), Some(RedemptionStep::Complete { take_stock: true }));
        let end = ending(&state).expect("an ending");
        assert_eq!((end.outcome, end.points, end.balance), (FlowOutcome::Completed as i32, 50, 10));
        apply_flow(&mut state, &event(FlowChange::Ended(end)));
        assert_eq!(next_step(&state), None);

        let mut state = started(false);
        assert_eq!(next_step(&state), Some(RedemptionStep::Debit { reserve_first: false }));
        let refusal = refusal(&Rejection::InsufficientPoints { available: 1, requested: 50 });
        let refused = FlowStepRecorded { step: STEP_DEBIT_WALLET.into(), ok: false, refusal: Some(refusal), ..Default::default() };
        apply_flow(&mut state, &event(FlowChange::StepRecorded(refused)));
        assert_eq!(next_step(&state), Some(RedemptionStep::Refuse { release_stock: false }));
        let end = ending(&state).expect("an ending");
        assert_eq!(end.refusal.map(|r| r.code), Some("INSUFFICIENT_POINTS".to_owned()));
    }
}
