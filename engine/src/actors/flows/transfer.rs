//! A points transfer between two wallets of a tenant: its start (`Flows::transfer_points`) and its steps —
//! the source's debit, the target's credit, and the source's refund when the target refused — each a
//! wallet command keyed by the transfer and the step ([`crate::domain::transfer_key`]), answered the
//! same every time by the wallet it changes, so a transfer resumed at any point redoes its steps to no
//! effect and ends as it would have.

use tally_proto::v1::{FlowEnded, FlowRefusal, PointsTransferFlow, TransferPart};

use super::{FlowError, Flows, Inner, Until};
use crate::actors::{CommandMeta, WalletError, WalletKey};
use crate::codec;
use crate::domain::flows::{self, DebitAnswer, FlowState};
use crate::domain::{Change, Command, FieldError, Rejection, TenantId, WalletId};
use crate::limits::{POINTS_PER_COMMAND_MAX, REASON_BYTES_MAX};
use crate::store::StoreError;

/// The points between two steps of a transfer, in order: after its start is recorded, after the
/// source's answer, after the target's, after a refused transfer came back, after its end is recorded.
pub const TRANSFER_CRASH_POINTS: [&str; 5] = ["transfer_started", "sent", "received", "returned", "transfer_ended"];

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub ended: FlowEnded,
    /// The global position of the flow's last event.
    pub position: u64,
    /// The transfer had ended before this call.
    pub replayed: bool,
}

impl Flows {
    /// Moves `points` from wallet `from` to wallet `to` of `tenant`: starts the transfer `transfer_id` (or
    /// finds it) and drives it to its end. Refused before anything is recorded: bad input, a program that
    /// does not allow the transfer, a wallet that does not exist.
    #[allow(clippy::too_many_arguments)]
    pub async fn transfer_points(
        &self,
        tenant: &TenantId,
        from: &WalletId,
        to: &WalletId,
        points: i64,
        transfer_id: &str,
        reason: &str,
        meta: CommandMeta,
    ) -> Result<Transfer, FlowError> {
        check_transfer(from, to, points, transfer_id, reason)?;
        let stream = codec::flow_stream(tenant, transfer_id)?;
        let lock = self.inner.lock_for(&stream);
        let _driving = lock.lock().await;
        let mut state = self.inner.load(&stream).await?;
        if state.version == 0 {
            self.inner.transfer_allowed(tenant, points).await?;
            // A wallet that does not exist could exist later, so its refusal would not be its answer for
            // good: nothing is started.
            for (wallet, field) in [(from, "wallet_id"), (to, "to_wallet_id")] {
                match self.inner.store.stream_version(&codec::wallet_stream(tenant, wallet)).await {
                    Ok(0) => return Err(FlowError::WalletNotFound { field, wallet_id: wallet.to_string() }),
                    Ok(_) => {}
                    Err(error) => return Err(FlowError::NotStarted { reason: error.to_string() }),
                }
            }
            let started = flows::transfer_started(PointsTransferFlow {
                transfer_id: transfer_id.to_owned(),
                from_wallet_id: from.to_string(),
                to_wallet_id: to.to_string(),
                points,
                reason: reason.to_owned(),
            });
            match self.inner.record(&stream, &mut state, started, &meta).await {
                Ok(_) => self.inner.crash_point("transfer_started")?,
                Err(FlowError::Store(StoreError::VersionConflict { .. })) => state = self.inner.load(&stream).await?,
                Err(error) => return Err(error),
            }
        }
        match &state.transfer {
            Some(t) if t.from_wallet_id == from.as_str() && t.to_wallet_id == to.as_str() && t.points == points && t.reason == reason => {}
            _ => return Err(FlowError::FlowIdReused { flow_id: transfer_id.to_owned() }),
        }
        let replayed = state.ended.is_some();
        let (state, position) = self.inner.drive(tenant, &stream, state, &meta, Until::Settled).await?;
        let Some(ended) = state.ended else { unreachable!("a flow driven to its end has ended") };
        Ok(Transfer { ended, position, replayed })
    }
}

/// A transfer's input, as its caller gave it.
fn check_transfer(from: &WalletId, to: &WalletId, points: i64, transfer_id: &str, reason: &str) -> Result<(), Rejection> {
    crate::domain::program::check_id("transfer_id", transfer_id)?;
    if from == to {
        return Err(FieldError::new("to_wallet_id", "must be another wallet than the source").into());
    }
    if points <= 0 {
        return Err(Rejection::NonPositivePoints { field: "points", points });
    }
    if points > POINTS_PER_COMMAND_MAX {
        return Err(Rejection::PointsOutOfRange { field: "points", points });
    }
    if reason.len() > REASON_BYTES_MAX || reason.chars().any(char::is_control) {
        return Err(FieldError::new("reason", format!("must be at most {REASON_BYTES_MAX} bytes without control characters")).into());
    }
    Ok(())
}

impl Inner {
    /// Whether the program lets a transfer of `points` start (the source's wallet decides again, with its
    /// daily cap, when it is debited): the settings this node has, or when they say no, those the log
    /// has now (a policy set on another node a moment ago).
    async fn transfer_allowed(&self, tenant: &TenantId, points: i64) -> Result<(), FlowError> {
        let not_started = |e: WalletError| FlowError::NotStarted { reason: e.to_string() };
        let refusal = |settings: Option<std::sync::Arc<crate::domain::ProgramSettings>>| {
            let policy = settings.map(|s| s.transfers.clone()).unwrap_or_default();
            if !policy.allowed {
                Some(Rejection::TransfersNotAllowed)
            } else if policy.max_points_per_transfer > 0 && points > policy.max_points_per_transfer {
                Some(Rejection::TransferCapExceeded { max: policy.max_points_per_transfer, requested: points })
            } else {
                None
            }
        };
        if refusal(self.programs.settings(tenant).await.map_err(not_started)?).is_none() {
            return Ok(());
        }
        refusal(self.programs.fresh_settings(tenant).await.map_err(not_started)?).map_or(Ok(()), |r| Err(r.into()))
    }

    /// A transfer's steps, from the start: the source's debit, then the target's credit, then — the target
    /// refused — the points back to the source; how it ends.
    pub(super) async fn transfer(
        &self,
        tenant: &TenantId,
        transfer: &PointsTransferFlow,
        state: &FlowState,
        meta: &CommandMeta,
    ) -> Result<FlowEnded, FlowError> {
        self.remembered_since(state.started_at_ms, "transfer")?;
        let (sent, parts) = self.send(tenant, transfer, meta).await?;
        self.crash_point("sent")?;
        if let DebitAnswer::Refused(_) = sent {
            return Ok(flows::transfer_ending(&sent, None));
        }
        let refused = self.receive(tenant, transfer, parts.clone(), meta).await?;
        self.crash_point("received")?;
        if let Some(refusal) = &refused {
            self.give_back(tenant, transfer, parts, &refusal.code, meta).await?;
            self.crash_point("returned")?;
        }
        Ok(flows::transfer_ending(&sent, refused.as_ref()))
    }

    /// The source's answer, which it gives once for good: sent (its `PointsTransferredOut`, with the
    /// points by kind) or refused (its `PointsTransferRefused`, or a wallet closed for good).
    async fn send(
        &self,
        tenant: &TenantId,
        transfer: &PointsTransferFlow,
        meta: &CommandMeta,
    ) -> Result<(DebitAnswer, Vec<TransferPart>), FlowError> {
        let command = Command::transfer_out(&transfer.transfer_id, &transfer.to_wallet_id, transfer.points, &transfer.reason);
        let outcome = match self.registry.execute(&key(tenant, &transfer.from_wallet_id)?, command, meta.clone()).await {
            Ok(outcome) => outcome,
            Err(WalletError::Rejected(rejection @ Rejection::WalletClosed)) => {
                return Ok((DebitAnswer::Refused(flows::refusal(&rejection)), Vec::new()));
            }
            Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
        };
        for stored in &outcome.events {
            match &stored.event.change {
                Change::TransferredOut(e) if e.transfer_id == transfer.transfer_id => {
                    return Ok((DebitAnswer::Paid { points: e.points, balance: outcome.balance }, e.parts.clone()));
                }
                Change::TransferRefused(e) if e.transfer_id == transfer.transfer_id => {
                    return Ok((DebitAnswer::Refused(FlowRefusal { code: e.code.clone(), message: e.message.clone() }), Vec::new()));
                }
                _ => {}
            }
        }
        Err(FlowError::Unfinished { reason: "the source's answer names neither a debit nor a refusal of this transfer".into() })
    }

    /// The target's answer, given once for good: `None` when it took the points in, or its refusal (its
    /// `PointsTransferRefused`, or a wallet closed for good). Anything else leaves the transfer open.
    async fn receive(
        &self,
        tenant: &TenantId,
        transfer: &PointsTransferFlow,
        parts: Vec<TransferPart>,
        meta: &CommandMeta,
    ) -> Result<Option<FlowRefusal>, FlowError> {
        let command = Command::transfer_in(&transfer.transfer_id, &transfer.from_wallet_id, parts, &transfer.reason);
        let outcome = match self.registry.execute(&key(tenant, &transfer.to_wallet_id)?, command, meta.clone()).await {
            Ok(outcome) => outcome,
            Err(WalletError::Rejected(rejection @ Rejection::WalletClosed)) => return Ok(Some(flows::refusal(&rejection))),
            Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
        };
        for stored in &outcome.events {
            match &stored.event.change {
                Change::TransferredIn(e) if e.transfer_id == transfer.transfer_id => return Ok(None),
                Change::TransferRefused(e) if e.transfer_id == transfer.transfer_id => {
                    return Ok(Some(FlowRefusal { code: e.code.clone(), message: e.message.clone() }));
                }
                _ => {}
            }
        }
        Err(FlowError::Unfinished { reason: "the target's answer names neither a credit nor a refusal of this transfer".into() })
    }

    /// The points of a transfer the target refused (with `code`) back to the source (closed since: and
    /// forfeited there).
    async fn give_back(
        &self,
        tenant: &TenantId,
        transfer: &PointsTransferFlow,
        parts: Vec<TransferPart>,
        code: &str,
        meta: &CommandMeta,
    ) -> Result<(), FlowError> {
        let command = Command::return_transfer(&transfer.transfer_id, parts, code);
        match self.registry.execute(&key(tenant, &transfer.from_wallet_id)?, command, meta.clone()).await {
            Ok(outcome)
                if outcome
                    .events
                    .iter()
                    .any(|s| matches!(&s.event.change, Change::TransferReturned(e) if e.transfer_id == transfer.transfer_id)) =>
            {
                Ok(())
            }
            Ok(_) => Err(FlowError::Unfinished { reason: "the source's answer names no return of this transfer".into() }),
            Err(error) => Err(FlowError::Unfinished { reason: error.to_string() }),
        }
    }
}

fn key(tenant: &TenantId, wallet: &str) -> Result<WalletKey, FlowError> {
    let wallet = WalletId::parse(wallet).map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
    Ok(WalletKey::new(tenant.clone(), wallet))
}
