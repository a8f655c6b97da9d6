//! Points transfers on the wire: `WalletService.TransferPoints`, a flow driven by the engine's `Flows`
//! (its policy is a program command, `AdminService.SetTransferPolicy`, in `admin.rs`).

use tally_engine::actors::{CommandMeta, FlowError, Flows};
use tally_engine::domain::{TenantId, WalletId};
use tally_proto::v1 as pb;
use tally_proto::v1::FlowOutcome;
use tonic::Status;

use crate::status;

/// Moves `r.points` from the wallet to `r.to_wallet_id`: the transfer's outcome, or the status of its refusal.
pub(crate) async fn transfer(
    flows: &Flows,
    tenant: &TenantId,
    wallet: &WalletId,
    r: pb::TransferPointsRequest,
    meta: CommandMeta,
) -> Result<pb::TransferPointsResponse, Status> {
    let to = WalletId::parse(&r.to_wallet_id).map_err(|e| status::invalid("to_wallet_id", &e.reason))?;
    let transfer = flows.transfer_points(tenant, wallet, &to, r.points, &r.transfer_id, &r.reason, meta).await.map_err(|e| match &e {
        FlowError::NeedsOperator { .. } => status::precondition("NEEDS_OPERATOR", "transfer_id", e.to_string()),
        _ => crate::rewards::from_flow_error(&e),
    })?;
    let ended = transfer.ended;
    match FlowOutcome::try_from(ended.outcome) {
        Ok(FlowOutcome::Completed) => {}
        Ok(FlowOutcome::Refused) => {
            let refusal = ended.refusal.unwrap_or_default();
            return Err(from_refusal(&refusal.code, refusal.message));
        }
        _ => {
            tracing::error!(transfer = %r.transfer_id, outcome = ended.outcome, "a transfer ended with an outcome this build does not know");
            return Err(Status::data_loss(format!("transfer {:?} ended with an unknown outcome {}", r.transfer_id, ended.outcome)));
        }
    }
    Ok(pb::TransferPointsResponse {
        transfer_id: r.transfer_id,
        to_wallet_id: r.to_wallet_id,
        points: ended.points,
        balance: ended.balance,
        replayed: transfer.replayed,
        position: transfer.position,
    })
}

/// The answer to a transfer a wallet refused: the recorded code, and the field it is about.
fn from_refusal(code: &str, message: String) -> Status {
    let field = match code {
        "INSUFFICIENT_POINTS" => "balance",
        "WALLET_CLOSED" => "wallet_id",
        "TRANSFERS_NOT_ALLOWED" => "tenant_id",
        target if target.starts_with("TARGET_") => "to_wallet_id",
        _ => "points",
    };
    status::precondition(code, field, message)
}
