//! The rewards catalogue on the wire: `WalletService.RedeemReward` (a redemption flow, driven by the
//! engine's `Flows`) and the catalogue's side of `AdminService` (`RestockReward`, `ListRewards`,
//! `ListFlows`); `DefineReward` is a program command like the others (`admin.rs`).

use tally_engine::actors::{CommandMeta, FlowError, Flows, OpenFlow, ProgramBook, StockError, StockFigures};
use tally_engine::domain::flows::CancelRefusal;
use tally_engine::domain::rewards::{StockOp, StockRejection};
use tally_engine::domain::{Rejection, TenantId, WalletId};
use tally_proto::v1 as pb;
use tally_proto::v1::FlowOutcome;
use tally_proto::v1::flow_started::Flow;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::status;

/// Redeems `r.reward_id` for the wallet: the flow's outcome, or the status of its refusal.
pub(crate) async fn redeem(
    flows: &Flows,
    tenant: &TenantId,
    wallet: &WalletId,
    r: pb::RedeemRewardRequest,
    meta: CommandMeta,
) -> Result<pb::RedeemRewardResponse, Status> {
    tally_engine::domain::program::check_id("redemption_id", &r.redemption_id).map_err(|e| status::from_field_error(&e))?;
    tally_engine::domain::program::check_id("reward_id", &r.reward_id).map_err(|e| status::from_field_error(&e))?;
    let redemption = flows.redeem_reward(tenant, wallet, &r.reward_id, &r.redemption_id, meta).await.map_err(|e| from_flow_error(&e))?;
    let ended = redemption.ended;
    match FlowOutcome::try_from(ended.outcome) {
        Ok(FlowOutcome::Completed) => {}
        Ok(FlowOutcome::Refused) => {
            let refusal = ended.refusal.unwrap_or_default();
            return Err(status::from_refusal(&refusal.code, refusal.message));
        }
        _ => {
            tracing::error!(redemption = %r.redemption_id, outcome = ended.outcome, "a redemption ended with an outcome this build does not know");
            return Err(Status::data_loss(format!("redemption {:?} ended with an unknown outcome {}", r.redemption_id, ended.outcome)));
        }
    }
    Ok(pb::RedeemRewardResponse {
        redemption_id: r.redemption_id,
        reward_id: r.reward_id,
        points: ended.points,
        balance: ended.balance,
        replayed: redemption.replayed,
        position: redemption.position,
    })
}

/// Cancels the wallet's completed redemption `r.redemption_id`: the points and stock given back, or the
/// status of why not.
pub(crate) async fn cancel(
    flows: &Flows,
    tenant: &TenantId,
    wallet: &WalletId,
    r: pb::CancelRedemptionRequest,
    meta: CommandMeta,
) -> Result<pb::CancelRedemptionResponse, Status> {
    tally_engine::domain::program::check_id("redemption_id", &r.redemption_id).map_err(|e| status::from_field_error(&e))?;
    if r.reason.len() > tally_engine::limits::REASON_BYTES_MAX || r.reason.chars().any(char::is_control) {
        return Err(status::invalid(
            "reason",
            &format!("must be at most {} bytes without control characters", tally_engine::limits::REASON_BYTES_MAX),
        ));
    }
    let cancelled = flows.cancel_redemption(tenant, wallet, &r.redemption_id, &r.reason, meta).await.map_err(|e| from_flow_error(&e))?;
    let ended = cancelled.ended;
    if ended.outcome != FlowOutcome::Cancelled as i32 {
        let refusal = ended.refusal.unwrap_or_default();
        return Err(status::from_refusal(&refusal.code, refusal.message));
    }
    Ok(pb::CancelRedemptionResponse {
        redemption_id: r.redemption_id,
        reward_id: cancelled.reward_id,
        points: ended.points,
        balance: ended.balance,
        replayed: cancelled.replayed,
        position: cancelled.position,
    })
}

pub(crate) fn from_flow_error(error: &FlowError) -> Status {
    match error {
        FlowError::Cancel(refusal) => match refusal {
            CancelRefusal::NotFound(_) => Status::not_found(error.to_string()),
            CancelRefusal::InProgress => Status::unavailable(format!("{error}; retry with the same redemption id")),
            CancelRefusal::NotCompleted(_) => status::precondition("REDEMPTION_NOT_COMPLETED", "redemption_id", error.to_string()),
            CancelRefusal::NotCancellable => status::precondition("NOT_CANCELLABLE", "redemption_id", error.to_string()),
            CancelRefusal::WindowClosed { .. } => status::precondition("CANCEL_WINDOW_CLOSED", "redemption_id", error.to_string()),
        },
        FlowError::Rejected(rejection) => status::from_rejection(rejection),
        FlowError::FlowIdReused { .. } => Status::already_exists(error.to_string()),
        FlowError::WalletNotFound { field, .. } => Status::with_error_details(
            Code::NotFound,
            error.to_string(),
            ErrorDetails::with_bad_request_violation(*field, error.to_string()),
        ),
        FlowError::Unfinished { .. } | FlowError::NotStarted { .. } | FlowError::Interrupted { .. } => {
            Status::unavailable(error.to_string())
        }
        FlowError::NeedsOperator { .. } => status::precondition("NEEDS_OPERATOR", "redemption_id", error.to_string()),
        FlowError::Store(store) => status::from_store_error(store),
        FlowError::Codec(codec) => {
            tracing::error!(error = %codec, "a flow's events cannot be decoded");
            Status::data_loss(error.to_string())
        }
    }
}

fn from_stock_error(error: &StockError) -> Status {
    match error {
        StockError::Rejected(StockRejection::InvalidField(field)) => status::from_field_error(field),
        StockError::Rejected(StockRejection::IdempotencyKeyReused { .. }) => Status::already_exists(error.to_string()),
        StockError::Rejected(StockRejection::TooMuchStock { .. }) => status::invalid("quantity", &error.to_string()),
        StockError::Rejected(StockRejection::OutOfStock { .. }) => Status::failed_precondition(error.to_string()),
        StockError::Store(store) => status::from_store_error(store),
        StockError::Codec(codec) => {
            tracing::error!(error = %codec, "a reward's stock cannot be decoded");
            Status::data_loss(error.to_string())
        }
    }
}

fn stock(reward_id: &str, figures: StockFigures, replayed: bool) -> pb::RewardStock {
    pb::RewardStock {
        reward_id: reward_id.to_owned(),
        on_hand: figures.on_hand,
        reserved: figures.reserved,
        taken: figures.taken,
        replayed,
    }
}

/// Adds stock to a limited reward of the tenant's catalogue.
pub(crate) async fn restock(
    flows: &Flows,
    programs: &ProgramBook,
    tenant: &TenantId,
    r: pb::RestockRewardRequest,
    meta: CommandMeta,
) -> Result<pb::RewardStock, Status> {
    let state = programs.get(tenant).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let reward = state
        .rewards
        .get(&r.reward_id)
        .ok_or_else(|| status::from_rejection(&Rejection::UnknownReward { reward_id: r.reward_id.clone() }))?;
    if !reward.limited_stock {
        let message = format!("reward {:?} has unlimited stock", r.reward_id);
        return Err(status::precondition("STOCK_UNLIMITED", "reward_id", message));
    }
    let restocked_by = if meta.principal.is_empty() { "platform".to_owned() } else { meta.principal.clone() };
    let op = StockOp::Restock { idempotency_key: r.idempotency_key, quantity: r.quantity, restocked_by, reason: r.reason };
    let answer = flows.restock(tenant, &r.reward_id, op, meta).await.map_err(|e| from_stock_error(&e))?;
    Ok(stock(&r.reward_id, answer.figures, !answer.changed))
}

/// The tenant's catalogue, each limited reward with its stock.
pub(crate) async fn list(flows: &Flows, programs: &ProgramBook, tenant: &TenantId) -> Result<pb::ListRewardsResponse, Status> {
    let state = programs.get(tenant).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut rewards = Vec::with_capacity(state.rewards.len());
    for reward in state.rewards.values() {
        let stock = match reward.limited_stock {
            true => Some(stock(&reward.reward_id, flows.stock(tenant, &reward.reward_id).await.map_err(|e| from_stock_error(&e))?, false)),
            false => None,
        };
        rewards.push(pb::CatalogueReward { reward: Some(reward.clone()), stock });
    }
    Ok(pb::ListRewardsResponse { rewards })
}

/// The tenant's open flows as this node follows them.
pub(crate) fn list_flows(flows: &Flows, tenant: &TenantId, stuck_only: bool) -> pb::ListFlowsResponse {
    let view = |f: OpenFlow| {
        let base = pb::FlowView {
            flow_id: f.flow_id,
            started_at: Some(status::timestamp(f.started_at_ms)),
            last_progress_at: Some(status::timestamp(f.progress_at_ms)),
            step: f.step.to_owned(),
            last_error: f.last_error.unwrap_or_default(),
            attempts: f.attempts,
            ..pb::FlowView::default()
        };
        match f.flow {
            Flow::RewardRedemption(r) => {
                pb::FlowView { kind: "reward_redemption".into(), wallet_id: r.wallet_id, reward_id: r.reward_id, ..base }
            }
            Flow::PointsTransfer(t) => pb::FlowView {
                kind: "points_transfer".into(),
                wallet_id: t.from_wallet_id,
                to_wallet_id: t.to_wallet_id,
                points: t.points,
                ..base
            },
            Flow::ReferralReward(r) => pb::FlowView {
                kind: "referral_reward".into(),
                wallet_id: r.referee_wallet_id,
                to_wallet_id: r.referrer_wallet_id,
                points: r.points,
                ..base
            },
        }
    };
    pb::ListFlowsResponse { flows: flows.list(Some(tenant), stuck_only).into_iter().map(view).collect() }
}
