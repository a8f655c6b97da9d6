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
//!
//! The points transfer: debit the source (or record its refusal), credit the target (or record its
//! refusal), and if the target refused, give the points back to the source. The same: start and end
//! recorded, every step answered the same every time by the wallet it changes.
//!
//! The referral reward: credit the referrer of a referral the referee's order converted (or learn it is
//! closed). One step, one flow per referee (`referral/<referee>`: an id no client's can be).

use tally_proto::v1::flow_started::Flow;
use tally_proto::v1::{
    FlowEnded, FlowOutcome, FlowRefusal, FlowStarted, FlowStepRecorded, PointsTransferFlow, ReferralRewardFlow, RewardRedemptionFlow,
};

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
    /// A points transfer.
    pub transfer: Option<PointsTransferFlow>,
    /// A referral's reward to its referrer.
    pub referral: Option<ReferralRewardFlow>,
    pub started_at_ms: i64,
    /// When its last event was recorded.
    pub progress_at_ms: i64,
    pub ended: Option<FlowEnded>,
    pub ended_at_ms: i64,
    /// A cancellation asked for after a completed redemption, and when.
    pub cancel: Option<FlowStepRecorded>,
    pub cancel_requested_at_ms: i64,
    /// How the cancellation ended: CANCELLED, or COMPLETED with the wallet's refusal.
    pub cancelled: Option<FlowEnded>,
}

impl FlowState {
    /// Something is left to do: started and not ended, or a cancellation asked for and not ended.
    pub fn is_open(&self) -> bool {
        self.wallet_id().is_some() && (self.ended.is_none() || (self.cancel.is_some() && self.cancelled.is_none()))
    }

    /// The wallet whose node drives the flow: the redeeming one, a transfer's source, a referral's
    /// referee. `None`: the stream does not start with what the flow is to do.
    pub fn wallet_id(&self) -> Option<&str> {
        match (&self.redemption, &self.transfer, &self.referral) {
            (Some(r), _, _) => Some(&r.wallet_id),
            (None, Some(t), _) => Some(&t.from_wallet_id),
            (None, None, Some(r)) => Some(&r.referee_wallet_id),
            (None, None, None) => None,
        }
    }

    /// What the flow is to do.
    pub fn flow(&self) -> Option<Flow> {
        match (&self.redemption, &self.transfer, &self.referral) {
            (Some(r), _, _) => Some(Flow::RewardRedemption(r.clone())),
            (None, Some(t), _) => Some(Flow::PointsTransfer(t.clone())),
            (None, None, Some(r)) => Some(Flow::ReferralReward(r.clone())),
            (None, None, None) => None,
        }
    }
}

/// The step a cancellation's request is recorded as.
pub const STEP_CANCEL_REQUESTED: &str = "cancel_requested";

/// Why a redemption cannot be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefusal {
    /// No such redemption of this wallet.
    #[error("no redemption {0:?} of this wallet")]
    NotFound(String),
    /// Still being redeemed.
    #[error("the redemption has not ended yet")]
    InProgress,
    /// It was refused: nothing to give back.
    #[error("the redemption was refused ({0}): nothing was taken")]
    NotCompleted(String),
    /// Its reward allowed no cancellation when it was redeemed.
    #[error("the reward's redemptions cannot be cancelled")]
    NotCancellable,
    /// Its window closed.
    #[error("the cancellation window closed at {closed_at_ms} (ms since the Unix epoch)")]
    WindowClosed { closed_at_ms: i64 },
}

/// A cancellation of the redemption `state` holds for `wallet_id` at `now_ms`: the request to record, or
/// `None` when one was recorded already (it is driven on, or answered). Pure.
pub fn decide_cancel(state: &FlowState, wallet_id: &str, reason: &str, now_ms: i64) -> Result<Option<FlowChange>, CancelRefusal> {
    let redemption = state.redemption.as_ref().filter(|r| r.wallet_id == wallet_id);
    let Some(redemption) = redemption else { return Err(CancelRefusal::NotFound(String::new())) };
    let Some(ended) = &state.ended else { return Err(CancelRefusal::InProgress) };
    if state.cancel.is_some() {
        return Ok(None);
    }
    if ended.outcome != FlowOutcome::Completed as i32 {
        return Err(CancelRefusal::NotCompleted(ended.refusal.as_ref().map(|r| r.code.clone()).unwrap_or_default()));
    }
    if redemption.cancel_window_days == 0 {
        return Err(CancelRefusal::NotCancellable);
    }
    let closed_at_ms = state.ended_at_ms.saturating_add(i64::from(redemption.cancel_window_days) * 86_400_000);
    if now_ms >= closed_at_ms {
        return Err(CancelRefusal::WindowClosed { closed_at_ms });
    }
    Ok(Some(FlowChange::StepRecorded(FlowStepRecorded {
        step: STEP_CANCEL_REQUESTED.to_owned(),
        ok: true,
        reason: reason.to_owned(),
        ..FlowStepRecorded::default()
    })))
}

/// How a cancellation ends from the wallet's answer: CANCELLED with the points given back and the balance
/// after, or — refused — the redemption stands (COMPLETED, with the refusal).
pub fn cancellation_ending(answer: &DebitAnswer) -> FlowEnded {
    match answer {
        DebitAnswer::Paid { points, balance } => {
            FlowEnded { outcome: FlowOutcome::Cancelled as i32, refusal: None, points: *points, balance: *balance }
        }
        DebitAnswer::Refused(refusal) => {
            FlowEnded { outcome: FlowOutcome::Completed as i32, refusal: Some(refusal.clone()), points: 0, balance: 0 }
        }
    }
}

/// The wallet's answer to a redemption's debit (or to its cancellation: points given back): the same every
/// time it is asked.
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

/// The start of a points transfer.
pub fn transfer_started(transfer: PointsTransferFlow) -> FlowChange {
    FlowChange::Started(FlowStarted { flow: Some(Flow::PointsTransfer(transfer)) })
}

/// How a transfer ends from the source's answer (`sent`) and, if it sent the points, the target's refusal
/// (`None`: it took them in): COMPLETED with the points and the source's balance after, REFUSED with the
/// source's refusal (nothing moved), or REFUSED with the target's refusal, its code after `TARGET_` —
/// the points went back to the source.
pub fn transfer_ending(sent: &DebitAnswer, refused_by_target: Option<&FlowRefusal>) -> FlowEnded {
    match (sent, refused_by_target) {
        (DebitAnswer::Paid { .. }, Some(refusal)) => {
            let refusal = FlowRefusal { code: format!("TARGET_{}", refusal.code), message: refusal.message.clone() };
            ending(&DebitAnswer::Refused(refusal))
        }
        (answer, _) => ending(answer),
    }
}

/// The id of the flow that rewards the referrer of wallet `referee_wallet_id`: one per referee, with a
/// `/` no client's redemption or transfer id can hold.
pub fn referral_flow_id(referee_wallet_id: &str) -> String {
    format!("referral/{referee_wallet_id}")
}

/// The start of a referral's reward.
pub fn referral_started(referral: ReferralRewardFlow) -> FlowChange {
    FlowChange::Started(FlowStarted { flow: Some(Flow::ReferralReward(referral)) })
}

/// How a referral's reward ends from the referrer's answer: COMPLETED with the points given (the
/// referrer's balance is not the referee's business: 0), or REFUSED with the referrer's refusal.
pub fn referral_ending(answer: &DebitAnswer) -> FlowEnded {
    match answer {
        DebitAnswer::Paid { points, .. } => ending(&DebitAnswer::Paid { points: *points, balance: 0 }),
        refused @ DebitAnswer::Refused(_) => ending(refused),
    }
}

/// The start of a reward redemption.
pub fn redemption_started(redemption: RewardRedemptionFlow) -> FlowChange {
    FlowChange::Started(FlowStarted { flow: Some(Flow::RewardRedemption(redemption)) })
}

/// Folds one event into the flow. Holds no business rule.
pub fn apply_flow(state: &mut FlowState, event: &FlowEvent) {
    match &event.change {
        FlowChange::Started(e) => {
            match &e.flow {
                Some(Flow::RewardRedemption(r)) => state.redemption = Some(r.clone()),
                Some(Flow::PointsTransfer(t)) => state.transfer = Some(t.clone()),
                Some(Flow::ReferralReward(r)) => state.referral = Some(r.clone()),
                None => {}
            }
            state.started_at_ms = event.recorded_at_ms;
        }
        // A cancellation's request is a caller's, not a step's answer: it is recorded. No other step of a
        // redemption is (each answers the same every time).
        FlowChange::StepRecorded(e) if e.step == STEP_CANCEL_REQUESTED => {
            state.cancel = Some(e.clone());
            state.cancel_requested_at_ms = event.recorded_at_ms;
        }
        FlowChange::StepRecorded(_) => {}
        FlowChange::Ended(e) if state.ended.is_none() => {
            state.ended = Some(e.clone());
            state.ended_at_ms = event.recorded_at_ms;
        }
        FlowChange::Ended(e) => state.cancelled = Some(e.clone()),
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
        Rejection::UnknownRedemption { .. } => "REDEMPTION_UNKNOWN",
        Rejection::TransfersNotAllowed => "TRANSFERS_NOT_ALLOWED",
        Rejection::TransferCapExceeded { .. } => "TRANSFER_CAP_EXCEEDED",
        Rejection::TransferDailyCapExceeded { .. } => "TRANSFER_DAILY_CAP_EXCEEDED",
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
        let redemption = RewardRedemptionFlow {
            redemption_id: "r".into(),
            wallet_id: "w".into(),
            reward_id: "mug".into(),
            limited_stock,
            cancel_window_days: 0,
        };
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

    #[test]
    fn a_completed_redemption_is_cancelled_within_its_window_once() {
        let mut state = started(true);
        assert_eq!(decide_cancel(&state, "w", "", 8), Err(CancelRefusal::InProgress));
        apply_flow(&mut state, &event(FlowChange::Ended(ending(&DebitAnswer::Paid { points: 50, balance: 10 }))));
        assert_eq!(decide_cancel(&state, "w", "", 8), Err(CancelRefusal::NotCancellable), "a window of 0 days");
        state.redemption.as_mut().unwrap().cancel_window_days = 1;
        assert_eq!(decide_cancel(&state, "x", "", 8), Err(CancelRefusal::NotFound(String::new())), "another wallet's");
        assert_eq!(decide_cancel(&state, "w", "", 7 + 86_400_000), Err(CancelRefusal::WindowClosed { closed_at_ms: 7 + 86_400_000 }));
        let request = decide_cancel(&state, "w", "returned", 8).unwrap().expect("a request");
        apply_flow(&mut state, &event(request));
        assert!(state.is_open(), "the cancellation is to be done");
        assert_eq!(decide_cancel(&state, "w", "again", 9), Ok(None), "asked for already");
        apply_flow(&mut state, &event(FlowChange::Ended(cancellation_ending(&DebitAnswer::Paid { points: 50, balance: 60 }))));
        assert!(!state.is_open());
        assert_eq!(state.cancelled.as_ref().map(|e| e.outcome), Some(FlowOutcome::Cancelled as i32));
        assert_eq!(state.ended.as_ref().map(|e| e.outcome), Some(FlowOutcome::Completed as i32), "the redemption's own end stays");
    }
}
