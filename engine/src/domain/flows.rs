//! Flows across aggregates, as aggregates of their own: a flow is a stream, `<tenant>/flow/<flow_id>`,
//! that records what the flow is to do (`FlowStarted`, all of it), an outcome that decides what follows
//! when a step's answer could not be had again (`FlowStepRecorded`), and its end (`FlowEnded`). Pure:
//! `apply_flow` folds it. `crate::actors::flows` drives the steps; every step is a command keyed by the
//! flow and the step, answered the same every time in the aggregate it changes, so a flow resumed after a
//! crash at any point redoes its steps to no effect.
//!
//! The reward redemption: reserve one of the reward's stock (limited rewards), debit the wallet, then take
//! the stock — or, when the wallet refuses, release it. Only its start and its end are recorded: every
//! step in between answers the same however often it is done (the wallet records its refusal as well as
//! its debit; the stock remembers the redemptions it settled), so a redemption resumed after a crash
//! redoes them all from the start to no effect, and ends as it would have.

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
    pub ended: Option<FlowEnded>,
}

impl FlowState {
    /// Started and not ended: something is left to do.
    pub fn is_open(&self) -> bool {
        self.redemption.is_some() && self.ended.is_none()
    }
}

/// The wallet's answer to a redemption's debit: the same every time it is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebitAnswer {
    Paid { points: i64, balance: i64 },
    Refused(FlowRefusal),
}

/// How a redemption ends, once the stock was settled after the wallet's answer.
pub fn ending(answer: &DebitAnswer) -> FlowEnded {
    match answer {
        DebitAnswer::Paid { points, balance } => {
            FlowEnded { outcome: FlowOutcome::Completed as i32, refusal: None, points: *points, balance: *balance }
        }
        DebitAnswer::Refused(refusal) => {
            FlowEnded { outcome: FlowOutcome::Refused as i32, refusal: Some(refusal.clone()), points: 0, balance: 0 }
        }
    }
}

/// The end of a redemption refused before anything was taken (its stock ran out).
pub fn refused(code: &str, message: String) -> FlowEnded {
    ending(&DebitAnswer::Refused(FlowRefusal { code: code.to_owned(), message }))
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
        // No step of a redemption is recorded (its steps answer the same every time); kept for flows whose
        // steps do not.
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
    fn a_redemption_is_open_from_its_start_to_its_end() {
        let mut state = started(true);
        assert!(state.is_open());
        let end = ending(&DebitAnswer::Paid { points: 50, balance: 10 });
        assert_eq!((end.outcome, end.points, end.balance), (FlowOutcome::Completed as i32, 50, 10));
        apply_flow(&mut state, &event(FlowChange::Ended(end)));
        assert!(!state.is_open());
        let refused = ending(&DebitAnswer::Refused(refusal(&Rejection::InsufficientPoints { available: 1, requested: 50 })));
        assert_eq!(refused.refusal.map(|r| r.code), Some("INSUFFICIENT_POINTS".to_owned()));
        assert!(!FlowState::default().is_open(), "nothing started");
    }
}
