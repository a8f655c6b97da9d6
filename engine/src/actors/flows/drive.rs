//! Driving a flow: its steps, each a command to the aggregate it changes, answered the same every time,
//! and its records on its own stream with the version they expect.

use std::sync::Arc;
use std::time::Duration;

use tally_proto::v1::flow_started::Flow;
use tally_proto::v1::{FlowEnded, FlowRefusal, RewardRedemptionFlow};

use super::{FlowError, Inner, RESERVE_RETRY_MS, RESERVE_WAIT_MS, Until};
use crate::actors::stock::StockError;
use crate::actors::{CommandMeta, WalletError, WalletKey};
use crate::codec::{self, CodecError};
use crate::domain::flows::{self, DebitAnswer, FlowChange, FlowEvent, FlowState, OUT_OF_STOCK, apply_flow};
use crate::domain::rewards::{StockOp, StockRejection};
use crate::domain::{Change, Command, Rejection, TenantId, WalletId};
use crate::limits::FLOW_DEBIT_WITHIN_MS;
use crate::store::{ExpectedVersion, StoreError, StreamId};

impl Inner {
    /// Whether the steps of a flow (or of its cancellation) that began at `since_ms` may still be done:
    /// within `FLOW_DEBIT_WITHIN_MS`, while the wallet and the stock remember them; after it, only an
    /// operator can tell what was done.
    pub(super) fn remembered_since(&self, since_ms: i64, what: &str) -> Result<(), FlowError> {
        if self.clock.now_ms().saturating_sub(since_ms) <= FLOW_DEBIT_WITHIN_MS {
            return Ok(());
        }
        let reason =
            format!("the {what} did not end within the time the wallet and the stock remember its steps; an operator must settle it");
        Err(FlowError::NeedsOperator { reason })
    }

    /// A stock step that answers the same every time, then the crash point after it: a failure leaves the
    /// flow to be driven on.
    async fn settle(&self, stream: &StreamId, op: StockOp, meta: &CommandMeta, crash_point: &str) -> Result<(), FlowError> {
        self.stock.run(stream, op, meta.clone()).await.map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
        self.crash_point(crash_point)
    }

    pub(super) fn lock_for(&self, stream: &StreamId) -> Arc<tokio::sync::Mutex<()>> {
        let mut driving = self.driving.lock();
        // Locks nobody holds or waits for are dropped as new ones are made: the map stays the size of
        // the flows being driven.
        driving.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(driving.entry(stream.clone()).or_default())
    }

    pub(super) async fn load(&self, stream: &StreamId) -> Result<FlowState, FlowError> {
        let mut state = FlowState::default();
        loop {
            let events = self.store.read_stream(stream, state.version + 1, 64).await?;
            if events.is_empty() {
                return Ok(state);
            }
            for recorded in events {
                apply_flow(&mut state, &codec::decode_flow(recorded)?);
            }
        }
    }

    /// Appends `change` to the flow with the version it expects, and applies it; the event's position.
    pub(super) async fn record(
        &self,
        stream: &StreamId,
        state: &mut FlowState,
        change: FlowChange,
        meta: &CommandMeta,
    ) -> Result<u64, FlowError> {
        let event = FlowEvent { recorded_at_ms: self.clock.now_ms().max(state.progress_at_ms), change };
        let data = codec::encode_flow(&event, state.version + 1, meta);
        let outcome = self.store.append(stream, ExpectedVersion::Exact(state.version), vec![data]).await?;
        apply_flow(state, &event);
        Ok(outcome.last_position)
    }

    pub(super) fn crash_point(&self, point: &str) -> Result<(), FlowError> {
        if (self.crash)(point) { Err(FlowError::Interrupted { point: point.to_owned() }) } else { Ok(()) }
    }

    /// Drives a redemption, and a cancellation asked for after it, or a transfer, to their ends: the flow then, and the
    /// position of its last event. Every step answers the same however often it is done, so a driver
    /// resuming either does all its steps from the start; when another driver recorded an end first (a
    /// version conflict), that end is the answer.
    pub(super) async fn drive(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        mut state: FlowState,
        meta: &CommandMeta,
        until: Until,
    ) -> Result<(FlowState, u64), FlowError> {
        loop {
            let (end, crash_point) = match state.flow() {
                None => {
                    let reason = "a flow stream without its start".to_owned();
                    return Err(CodecError::Undecodable { position: 0, event_type: "tally.v1.FlowStarted".into(), reason }.into());
                }
                Some(Flow::RewardRedemption(redemption)) if state.ended.is_none() => {
                    (self.redeem(tenant, &redemption, &state, meta).await?, "ended")
                }
                Some(Flow::PointsTransfer(transfer)) if state.ended.is_none() => {
                    (self.transfer(tenant, &transfer, &state, meta).await?, "transfer_ended")
                }
                Some(Flow::ReferralReward(referral)) if state.ended.is_none() => {
                    (self.referral(tenant, &referral, &state, meta).await?, "referral_ended")
                }
                Some(Flow::RewardRedemption(redemption))
                    if until == Until::Settled && state.cancel.is_some() && state.cancelled.is_none() =>
                {
                    (self.cancel(tenant, &redemption, &state, meta).await?, "cancelled")
                }
                _ => {
                    let position = self.store.read_stream(stream, state.version, 1).await?.first().map_or(0, |e| e.global_position);
                    return Ok((state, position));
                }
            };
            match self.record(stream, &mut state, FlowChange::Ended(end), meta).await {
                Ok(position) => {
                    self.crash_point(crash_point)?;
                    if !state.is_open() || until == Until::Redeemed {
                        return Ok((state, position));
                    }
                }
                Err(FlowError::Store(StoreError::VersionConflict { .. })) => {
                    metrics::counter!("tally_flows_conflicts_total").increment(1);
                    state = self.load(stream).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A cancellation's steps, from the start: the wallet gives the points back, then (a limited reward)
    /// the stock goes back on hand; how it ends.
    async fn cancel(
        &self,
        tenant: &TenantId,
        redemption: &RewardRedemptionFlow,
        state: &FlowState,
        meta: &CommandMeta,
    ) -> Result<FlowEnded, FlowError> {
        self.remembered_since(state.cancel_requested_at_ms, "cancellation")?;
        let wallet = WalletId::parse(&redemption.wallet_id).map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
        let reason = state.cancel.as_ref().map(|c| c.reason.clone()).unwrap_or_default();
        let command = Command::cancel_reward_redemption(&redemption.redemption_id, reason);
        let answer = match self.registry.execute(&WalletKey::new(tenant.clone(), wallet), command, meta.clone()).await {
            // The points come back in one part per kind of lot they came from.
            Ok(outcome) => {
                let given: Vec<i64> = outcome
                    .events
                    .iter()
                    .filter_map(|stored| match &stored.event.change {
                        Change::RewardCancelled(c) if c.redemption_id == redemption.redemption_id => Some(c.points),
                        _ => None,
                    })
                    .collect();
                (!given.is_empty()).then(|| DebitAnswer::Paid { points: given.iter().sum(), balance: outcome.balance })
            }
            // For good: a closed wallet stays closed.
            Err(WalletError::Rejected(rejection @ Rejection::WalletClosed)) => Some(DebitAnswer::Refused(flows::refusal(&rejection))),
            // The wallet no longer knows the redemption (or knows it cancelled, its receipt gone): the
            // points may or may not have come back, which only an operator can tell.
            Err(WalletError::Rejected(Rejection::UnknownRedemption { .. })) => {
                return Err(FlowError::NeedsOperator {
                    reason: "the wallet no longer remembers the redemption; an operator must settle its cancellation".into(),
                });
            }
            Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
        };
        let answer = answer.ok_or_else(|| FlowError::Unfinished { reason: "the wallet's answer names no cancellation".into() })?;
        self.crash_point("refunded")?;
        if redemption.limited_stock && matches!(answer, DebitAnswer::Paid { .. }) {
            let reward_stream = codec::reward_stream(tenant, &redemption.reward_id)?;
            let op = StockOp::Return { redemption_id: redemption.redemption_id.clone() };
            self.settle(&reward_stream, op, meta, "stock_returned").await?;
        }
        Ok(flows::cancellation_ending(&answer))
    }

    /// The redemption's steps, from the start: reserve (a limited reward), debit, then take or release;
    /// how it ends.
    async fn redeem(
        &self,
        tenant: &TenantId,
        redemption: &RewardRedemptionFlow,
        state: &FlowState,
        meta: &CommandMeta,
    ) -> Result<FlowEnded, FlowError> {
        self.remembered_since(state.started_at_ms, "redemption")?;
        let reward_stream = codec::reward_stream(tenant, &redemption.reward_id)?;
        if redemption.limited_stock
            && let Some(out) = self.reserve(&reward_stream, redemption, meta).await?
        {
            return Ok(out);
        }
        let answer = self.debit(tenant, redemption, meta).await?;
        self.crash_point("debited")?;
        if redemption.limited_stock {
            let redemption_id = redemption.redemption_id.clone();
            let op = match &answer {
                DebitAnswer::Paid { .. } => StockOp::Take { redemption_id },
                DebitAnswer::Refused(refusal) => StockOp::Release { redemption_id, reason: refusal.code.clone() },
            };
            self.settle(&reward_stream, op, meta, "stock_settled").await?;
        }
        Ok(flows::ending(&answer))
    }

    /// Reserves one of the reward's stock; `Some(end)` when there is none to reserve. While the last units
    /// are reserved by redemptions in progress (which may give theirs back), waits up to
    /// `RESERVE_WAIT_MS` for them before saying so, and then says the flow could not go on yet rather than
    /// refuse it for good.
    async fn reserve(
        &self,
        stream: &StreamId,
        redemption: &RewardRedemptionFlow,
        meta: &CommandMeta,
    ) -> Result<Option<FlowEnded>, FlowError> {
        let reserve = StockOp::Reserve { redemption_id: redemption.redemption_id.clone(), wallet_id: redemption.wallet_id.clone() };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(RESERVE_WAIT_MS);
        loop {
            match self.stock.run(stream, reserve.clone(), meta.clone()).await {
                Ok(_) => {
                    self.crash_point("reserved")?;
                    return Ok(None);
                }
                Err(StockError::Rejected(StockRejection::OutOfStock { reserved: 0 })) => {
                    return Ok(Some(flows::refused(OUT_OF_STOCK, format!("reward {:?} is out of stock", redemption.reward_id))));
                }
                Err(StockError::Rejected(StockRejection::OutOfStock { reserved })) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(reserved, "the last units are reserved by redemptions in progress; waiting");
                    tokio::time::sleep(Duration::from_millis(RESERVE_RETRY_MS)).await;
                }
                Err(StockError::Rejected(StockRejection::OutOfStock { reserved })) => {
                    return Err(FlowError::Unfinished {
                        reason: format!("the reward's last {reserved} units are reserved by redemptions in progress"),
                    });
                }
                Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
            }
        }
    }

    /// The wallet's debit and its answer, which the wallet gives once for good: paid (its `PointsRedeemed`)
    /// or refused (its `RewardRedemptionRefused`, or a wallet that is closed for good). Anything else (the
    /// store, a crashed or busy wallet) leaves the flow where it is.
    async fn debit(&self, tenant: &TenantId, redemption: &RewardRedemptionFlow, meta: &CommandMeta) -> Result<DebitAnswer, FlowError> {
        let wallet = WalletId::parse(&redemption.wallet_id).map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
        let key = WalletKey::new(tenant.clone(), wallet);
        let command = Command::redeem_reward(&redemption.redemption_id, &redemption.reward_id);
        let outcome = match self.registry.execute(&key, command, meta.clone()).await {
            Ok(outcome) => outcome,
            Err(WalletError::Rejected(rejection @ Rejection::WalletClosed)) => return Ok(DebitAnswer::Refused(flows::refusal(&rejection))),
            Err(error) => return Err(FlowError::Unfinished { reason: error.to_string() }),
        };
        for stored in &outcome.events {
            match &stored.event.change {
                Change::Redeemed(r) if r.redemption_id == redemption.redemption_id => {
                    return Ok(DebitAnswer::Paid { points: r.points, balance: outcome.balance });
                }
                Change::RewardRefused(r) if r.redemption_id == redemption.redemption_id => {
                    return Ok(DebitAnswer::Refused(FlowRefusal { code: r.code.clone(), message: r.message.clone() }));
                }
                _ => {}
            }
        }
        Err(FlowError::Unfinished { reason: "the wallet's answer names neither a debit nor a refusal of this redemption".into() })
    }
}
