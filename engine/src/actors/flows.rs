//! The process manager: drives flows across aggregates (`crate::domain::flows`) to their end.
//!
//! A flow is started by its caller (`Flows::redeem_reward`), who then drives it step by step: each step a
//! command to the aggregate it changes (a reward's stock through [`StockBook`], a wallet through the
//! registry), keyed by the flow and the step and answered the same every time; its start and its end are
//! recorded on the flow's stream with the version they expect. A caller that goes away, a crash, a store
//! outage leaves the flow open in the log; a reader task follows the log, keeps the open flows (only
//! those) and, once one has made no progress for `FLOW_RESUME_AFTER_MS`, drives it again from the start,
//! retrying with a growing pause until it ends. Open flows are listed (`list`), so none is ever lost
//! silently.
//!
//! One driver per flow on a node (a lock per flow); drivers on two nodes are safe too — every step
//! answers them the same, and the end recorded first is the end — only wasteful.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tally_proto::v1::{FlowEnded, FlowRefusal, RewardRedemptionFlow};
use tokio::task::JoinHandle;

use super::stock::{StockAnswer, StockBook, StockError, StockFigures};
use super::{CommandMeta, Owns, Programs, WalletError, WalletKey, WalletRegistry};
use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::flows::{self, CancelRefusal, DebitAnswer, FlowChange, FlowEvent, FlowState, OUT_OF_STOCK, apply_flow};
use crate::domain::rewards::{StockOp, StockRejection};
use crate::domain::{Change, Command, Rejection, TenantId, WalletId};
use crate::limits::{FLOW_DEBIT_WITHIN_MS, FLOW_RESUME_AFTER_MS, FLOW_STUCK_AFTER_MS};
use crate::store::{EventStore, ExpectedVersion, Follower, StoreError, StreamId};

/// Events read per batch while following the log.
const READ_BATCH_EVENTS: usize = 4_096;
/// How often the open flows are looked at.
const SCAN_INTERVAL_MS: u64 = 1_000;
/// Longest pause between two tries of a flow that cannot go on.
const RETRY_PAUSE_MAX_MS: i64 = 60_000;
/// Flows driven on at once by the resumer.
const RESUMING_MAX: usize = 64;
/// How long a reservation waits for units that redemptions in progress hold, and between looks.
const RESERVE_WAIT_MS: u64 = 2_000;
const RESERVE_RETRY_MS: u64 = 10;

/// The points between two steps of a redemption, in order: after the flow's start is recorded, after
/// the stock is reserved, after the wallet's debit, after the stock is taken or released, after the end
/// is recorded.
pub const CRASH_POINTS: [&str; 5] = ["started", "reserved", "debited", "stock_settled", "ended"];
/// The same for a cancellation: after its request is recorded, after the wallet gave the points back,
/// after the stock was returned, after its end is recorded.
pub const CANCEL_CRASH_POINTS: [&str; 4] = ["cancel_requested", "refunded", "stock_returned", "cancelled"];

/// Called at each point between two steps with the point's name; `true` stops the flow there as if the
/// process had died (tests). The product's hook (`tally serve` with `TALLY_TEST_CRASH_AT`) aborts the
/// process instead.
pub type CrashPoint = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Refused before the flow started (an unknown reward): nothing was recorded.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The redemption id was used for another wallet or reward.
    #[error("redemption id {redemption_id:?} was already used for another redemption")]
    RedemptionIdReused { redemption_id: String },
    /// The flow is recorded and open, and a step could not be done for a reason that may pass; it is
    /// driven on in the background. A retry with the same id learns its outcome.
    #[error(
        "the redemption is recorded but could not finish yet ({reason}); it is retried in the background: retry with the same redemption id to learn its outcome"
    )]
    Unfinished { reason: String },
    /// Nothing was recorded: the redemption did not start (a retry starts it).
    #[error("the redemption could not start ({reason}); nothing was recorded, retry with the same redemption id")]
    NotStarted { reason: String },
    /// The flow cannot go on by itself: an operator must settle it.
    #[error("the redemption cannot go on by itself: {reason}")]
    NeedsOperator { reason: String },
    /// The redemption cannot be cancelled.
    #[error(transparent)]
    Cancel(#[from] CancelRefusal),
    /// A test's crash point stopped the flow.
    #[error("stopped at crash point {point}")]
    Interrupted { point: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the flow cannot be read: {0}")]
    Codec(#[from] CodecError),
}

/// How far a driver takes a flow: a redemption's caller to the redemption's end (a cancellation asked for
/// since is its own caller's, and the resumer's); everyone else to nothing left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Redeemed,
    Settled,
}

/// How a redemption ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Redemption {
    pub ended: FlowEnded,
    /// The global position of the flow's last event.
    pub position: u64,
    /// The redemption (or its cancellation) had ended before this call.
    pub replayed: bool,
    pub reward_id: String,
}

/// An open flow, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenFlow {
    pub tenant: TenantId,
    pub flow_id: String,
    pub redemption: RewardRedemptionFlow,
    pub started_at_ms: i64,
    pub progress_at_ms: i64,
    /// What is left: `redeeming` (a redemption's steps are redone from the start).
    pub step: &'static str,
    /// What kept it from going on, the last time this node tried.
    pub last_error: Option<String>,
    pub attempts: u32,
    /// No progress for `FLOW_STUCK_AFTER_MS`.
    pub stuck: bool,
}

/// An open flow as the reader keeps it.
#[derive(Debug, Clone)]
struct Watched {
    state: FlowState,
    last_error: Option<String>,
    attempts: u32,
    next_try_ms: i64,
    /// It needs an operator: not retried by itself.
    parked: bool,
}

/// The flows of this node; cloning shares them.
#[derive(Clone)]
pub struct Flows {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows").field("open", &self.inner.open.lock().len()).finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    registry: WalletRegistry,
    programs: Arc<dyn Programs>,
    stock: StockBook,
    /// One driver per flow on this node.
    driving: parking_lot::Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<()>>>>,
    /// Open flows, from the log.
    open: parking_lot::Mutex<BTreeMap<StreamId, Watched>>,
    crash: CrashPoint,
    owns: Owns,
    /// The log position the reader has folded the open flows to.
    read_to: std::sync::atomic::AtomicU64,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Flows {
    /// Flows on `store`, driving wallets through `registry`, with the reader and resumer running.
    pub fn start(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, registry: WalletRegistry, programs: Arc<dyn Programs>) -> Self {
        Self::start_with(store, clock, registry, programs, Arc::new(|_: &WalletKey| true), Arc::new(|_: &str| false))
    }

    /// As [`Self::start`], resuming only the flows of wallets `owns` says are this node's, with a crash
    /// point hook.
    pub fn start_with(
        store: Arc<dyn EventStore>,
        clock: Arc<dyn Clock>,
        registry: WalletRegistry,
        programs: Arc<dyn Programs>,
        owns: Owns,
        crash: CrashPoint,
    ) -> Self {
        let inner = Arc::new(Inner {
            stock: StockBook::new(Arc::clone(&store), Arc::clone(&clock)),
            store,
            clock,
            registry,
            programs,
            driving: parking_lot::Mutex::default(),
            open: parking_lot::Mutex::default(),
            crash,
            owns,
            read_to: std::sync::atomic::AtomicU64::new(0),
            tasks: parking_lot::Mutex::default(),
        });
        let weak = Arc::downgrade(&inner);
        let reader = tokio::spawn(read(Arc::clone(&inner.store), weak.clone()));
        let resumer = tokio::spawn(resume(weak));
        inner.tasks.lock().extend([reader, resumer]);
        Self { inner }
    }

    /// Stops the reader and the resumer; flows being driven by callers go on.
    pub fn stop(&self) {
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
    }

    /// The log position up to which the open flows are known (`list`).
    pub fn read_to(&self) -> u64 {
        self.inner.read_to.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Redeems one of reward `reward_id` for `wallet`: starts the flow `redemption_id` (or finds it) and
    /// drives it to its end.
    pub async fn redeem_reward(
        &self,
        tenant: &TenantId,
        wallet: &WalletId,
        reward_id: &str,
        redemption_id: &str,
        meta: CommandMeta,
    ) -> Result<Redemption, FlowError> {
        let stream = codec::flow_stream(tenant, redemption_id)?;
        let wanted = |reward: &tally_proto::v1::RewardDefined| RewardRedemptionFlow {
            redemption_id: redemption_id.to_owned(),
            wallet_id: wallet.to_string(),
            reward_id: reward_id.to_owned(),
            limited_stock: reward.limited_stock,
            cancel_window_days: reward.cancel_window_days,
        };
        let lock = self.inner.lock_for(&stream);
        let _driving = lock.lock().await;
        let mut state = self.inner.load(&stream).await?;
        if state.version == 0 {
            let not_started = |e: WalletError| FlowError::NotStarted { reason: e.to_string() };
            let settings = self.inner.programs.settings(tenant).await.map_err(not_started)?;
            let reward = settings.as_ref().and_then(|s| s.rewards.get(reward_id).cloned());
            let reward = reward.ok_or_else(|| Rejection::UnknownReward { reward_id: reward_id.to_owned() })?;
            // A wallet that does not exist could exist later, so its refusal would not be the wallet's
            // answer for good: nothing is started for it. (Its stream is empty until it is enrolled.)
            let enrolled = self.inner.store.stream_version(&codec::wallet_stream(tenant, wallet)).await;
            match enrolled {
                Ok(0) => return Err(Rejection::WalletNotFound.into()),
                Ok(_) => {}
                Err(error) => return Err(FlowError::NotStarted { reason: error.to_string() }),
            }
            let started = flows::redemption_started(wanted(&reward));
            match self.inner.record(&stream, &mut state, started, &meta).await {
                Ok(_) => self.inner.crash_point("started")?,
                // Started by another call meanwhile (another node): it is what the log says.
                Err(FlowError::Store(StoreError::VersionConflict { .. })) => state = self.inner.load(&stream).await?,
                Err(error) => return Err(error),
            }
        }
        match &state.redemption {
            Some(r) if r.wallet_id == wallet.as_str() && r.reward_id == reward_id => {}
            _ => return Err(FlowError::RedemptionIdReused { redemption_id: redemption_id.to_owned() }),
        }
        let replayed = state.ended.is_some();
        let (state, position) = self.inner.drive(tenant, &stream, state, &meta, Until::Redeemed).await?;
        let reward_id = state.redemption.map(|r| r.reward_id).unwrap_or_default();
        let Some(ended) = state.ended else { unreachable!("a flow driven to its end has ended") };
        Ok(Redemption { ended, position, replayed, reward_id })
    }

    /// Cancels the completed redemption `redemption_id` of `wallet`: records the request (or finds it)
    /// and drives the cancellation to its end — the points back in the wallet, the stock back on hand.
    /// The answer is the cancellation's end: CANCELLED, or COMPLETED with the wallet's refusal.
    pub async fn cancel_redemption(
        &self,
        tenant: &TenantId,
        wallet: &WalletId,
        redemption_id: &str,
        reason: &str,
        meta: CommandMeta,
    ) -> Result<Redemption, FlowError> {
        if reason.len() > crate::limits::REASON_BYTES_MAX || reason.chars().any(char::is_control) {
            let message = format!("must be at most {} bytes without control characters", crate::limits::REASON_BYTES_MAX);
            return Err(Rejection::InvalidField(crate::domain::FieldError::new("reason", message)).into());
        }
        let stream = codec::flow_stream(tenant, redemption_id)?;
        let lock = self.inner.lock_for(&stream);
        let _driving = lock.lock().await;
        let mut state = self.inner.load(&stream).await?;
        let replayed = loop {
            match flows::decide_cancel(&state, wallet.as_str(), reason, self.inner.clock.now_ms()) {
                Err(CancelRefusal::NotFound(_)) => return Err(CancelRefusal::NotFound(redemption_id.to_owned()).into()),
                Err(refusal) => return Err(refusal.into()),
                Ok(None) => break state.cancelled.is_some(),
                Ok(Some(request)) => match self.inner.record(&stream, &mut state, request, &meta).await {
                    Ok(_) => {
                        self.inner.crash_point("cancel_requested")?;
                        break false;
                    }
                    Err(FlowError::Store(StoreError::VersionConflict { .. })) => state = self.inner.load(&stream).await?,
                    Err(error) => return Err(error),
                },
            }
        };
        let (state, position) = self.inner.drive(tenant, &stream, state, &meta, Until::Settled).await?;
        let reward_id = state.redemption.map(|r| r.reward_id).unwrap_or_default();
        let Some(cancelled) = state.cancelled else { unreachable!("a cancellation driven to its end has ended") };
        Ok(Redemption { ended: cancelled, position, replayed, reward_id })
    }

    /// Open flows of `tenant` (all tenants: `None`), oldest first; `stuck_only`: those without progress
    /// for `FLOW_STUCK_AFTER_MS`.
    pub fn list(&self, tenant: Option<&TenantId>, stuck_only: bool) -> Vec<OpenFlow> {
        let now_ms = self.inner.clock.now_ms();
        let open = self.inner.open.lock();
        let mut flows: Vec<OpenFlow> = open
            .iter()
            .filter_map(|(stream, watched)| {
                let (flow_tenant, flow_id) = codec::flow_of(stream.as_str())?;
                let redemption = watched.state.redemption.clone()?;
                let stuck = now_ms.saturating_sub(watched.state.progress_at_ms) >= FLOW_STUCK_AFTER_MS;
                let wanted = tenant.is_none_or(|t| *t == flow_tenant) && (stuck || !stuck_only);
                wanted.then(|| OpenFlow {
                    flow_id: flow_id.to_owned(),
                    tenant: flow_tenant,
                    redemption,
                    started_at_ms: watched.state.started_at_ms,
                    progress_at_ms: watched.state.progress_at_ms,
                    step: if watched.state.ended.is_none() { "redeeming" } else { "cancelling" },
                    last_error: watched.last_error.clone(),
                    attempts: watched.attempts,
                    stuck,
                })
            })
            .collect();
        flows.sort_by_key(|f| (f.started_at_ms, f.flow_id.clone()));
        flows
    }

    /// Adds stock to reward `reward_id` (which must be limited in the program's catalogue).
    pub async fn restock(&self, tenant: &TenantId, reward_id: &str, op: StockOp, meta: CommandMeta) -> Result<StockAnswer, StockError> {
        self.inner.stock.run(&codec::reward_stream(tenant, reward_id)?, op, meta).await
    }

    /// Reward `reward_id`'s stock now.
    pub async fn stock(&self, tenant: &TenantId, reward_id: &str) -> Result<StockFigures, StockError> {
        self.inner.stock.figures(&codec::reward_stream(tenant, reward_id)?).await
    }
}

impl Inner {
    fn lock_for(&self, stream: &StreamId) -> Arc<tokio::sync::Mutex<()>> {
        let mut driving = self.driving.lock();
        // Locks nobody holds or waits for are dropped as new ones are made: the map stays the size of
        // the flows being driven.
        driving.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(driving.entry(stream.clone()).or_default())
    }

    async fn load(&self, stream: &StreamId) -> Result<FlowState, FlowError> {
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
    async fn record(&self, stream: &StreamId, state: &mut FlowState, change: FlowChange, meta: &CommandMeta) -> Result<u64, FlowError> {
        let event = FlowEvent { recorded_at_ms: self.clock.now_ms().max(state.progress_at_ms), change };
        let data = codec::encode_flow(&event, state.version + 1, meta);
        let outcome = self.store.append(stream, ExpectedVersion::Exact(state.version), vec![data]).await?;
        apply_flow(state, &event);
        Ok(outcome.last_position)
    }

    fn crash_point(&self, point: &str) -> Result<(), FlowError> {
        if (self.crash)(point) { Err(FlowError::Interrupted { point: point.to_owned() }) } else { Ok(()) }
    }

    /// Drives a redemption, and a cancellation asked for after it, to their ends: the flow then, and the
    /// position of its last event. Every step answers the same however often it is done, so a driver
    /// resuming either does all its steps from the start; when another driver recorded an end first (a
    /// version conflict), that end is the answer.
    async fn drive(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        mut state: FlowState,
        meta: &CommandMeta,
        until: Until,
    ) -> Result<(FlowState, u64), FlowError> {
        loop {
            let Some(redemption) = state.redemption.clone() else {
                let reason = "a flow stream without its start".to_owned();
                return Err(CodecError::Undecodable { position: 0, event_type: "tally.v1.FlowStarted".into(), reason }.into());
            };
            let (end, crash_point) = if state.ended.is_none() {
                (self.redeem(tenant, &redemption, &state, meta).await?, "ended")
            } else if until == Until::Settled && state.cancel.is_some() && state.cancelled.is_none() {
                (self.cancel(tenant, &redemption, &state, meta).await?, "cancelled")
            } else {
                let position = self.store.read_stream(stream, state.version, 1).await?.first().map_or(0, |e| e.global_position);
                return Ok((state, position));
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
        if self.clock.now_ms().saturating_sub(state.cancel_requested_at_ms) > FLOW_DEBIT_WITHIN_MS {
            return Err(FlowError::NeedsOperator {
                reason: "the cancellation did not end within the time the wallet and the stock remember its steps; \
                         an operator must settle it"
                    .into(),
            });
        }
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
            self.stock.run(&reward_stream, op, meta.clone()).await.map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
            self.crash_point("stock_returned")?;
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
        if self.clock.now_ms().saturating_sub(state.started_at_ms) > FLOW_DEBIT_WITHIN_MS {
            return Err(FlowError::NeedsOperator {
                reason: "the redemption did not end within the time the wallet and the stock remember its steps; \
                         an operator must settle it"
                    .into(),
            });
        }
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
            self.stock.run(&reward_stream, op, meta.clone()).await.map_err(|e| FlowError::Unfinished { reason: e.to_string() })?;
            self.crash_point("stock_settled")?;
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

/// Follows the log, keeping the open flows.
async fn read(store: Arc<dyn EventStore>, inner: std::sync::Weak<Inner>) {
    let mut follower = Follower::new(store, 0);
    loop {
        let batch = follower.next_batch(READ_BATCH_EVENTS).await;
        let Some(inner) = inner.upgrade() else { return };
        match batch {
            Ok(Some(events)) => {
                let reopened = fold(&mut inner.open.lock(), events);
                // A cancellation asked for after its redemption ended reopens a flow the reader let go
                // of: its state comes from the log (later events it holds are skipped when they come).
                for stream in reopened {
                    // Until it reads: a cancellation the reader lost track of would wait for its caller.
                    let state = loop {
                        match inner.load(&stream).await {
                            Ok(state) => break state,
                            Err(error) => {
                                tracing::warn!(%stream, %error, "a reopened flow cannot be read yet; retrying");
                                tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
                            }
                        }
                    };
                    if state.is_open() {
                        inner.open.lock().insert(stream, Watched { state, last_error: None, attempts: 0, next_try_ms: 0, parked: false });
                    }
                }
                metrics::gauge!("tally_flows_open").set(inner.open.lock().len() as f64);
                inner.read_to.store(follower.next_position() - 1, std::sync::atomic::Ordering::Release);
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, at = follower.next_position(), "flows cannot read the log; retrying");
                drop(inner);
                tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
            }
        }
    }
}

/// Folds a batch of the log into the open flows: the flows it leaves open stay, the others go; the
/// streams of flows it reopens (not kept, and not starting here) are returned, to be read whole.
fn fold(open: &mut BTreeMap<StreamId, Watched>, events: Vec<crate::store::RecordedEvent>) -> Vec<StreamId> {
    let mut reopened = Vec::new();
    for recorded in events {
        if codec::flow_of(recorded.stream_id.as_str()).is_none() {
            continue;
        }
        let (stream, version) = (recorded.stream_id.clone(), recorded.stream_version);
        if !open.contains_key(&stream) && version > 1 {
            if !reopened.contains(&stream) {
                reopened.push(stream);
            }
            continue;
        }
        let event = match codec::decode_flow(recorded) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(%stream, %error, "a flow's event cannot be read; the flow waits for a repair");
                continue;
            }
        };
        let watched = open.entry(stream.clone()).or_insert_with(|| Watched {
            state: FlowState::default(),
            last_error: None,
            attempts: 0,
            next_try_ms: 0,
            parked: false,
        });
        // Already in a state read whole from the log.
        if version <= watched.state.version {
            continue;
        }
        apply_flow(&mut watched.state, &event);
        if watched.state.redemption.is_none() {
            tracing::error!(%stream, "a flow stream does not start with what it is to do; it is left alone");
            open.remove(&stream);
        } else if !watched.state.is_open() {
            open.remove(&stream);
        }
    }
    reopened
}

/// Drives on the open flows that made no progress for `FLOW_RESUME_AFTER_MS`.
async fn resume(inner: std::sync::Weak<Inner>) {
    let running = Arc::new(tokio::sync::Semaphore::new(RESUMING_MAX));
    loop {
        tokio::time::sleep(Duration::from_millis(SCAN_INTERVAL_MS)).await;
        let Some(inner) = inner.upgrade() else { return };
        let now_ms = inner.clock.now_ms();
        let due: Vec<(StreamId, FlowState)> = {
            let open = inner.open.lock();
            metrics::gauge!("tally_flows_stuck")
                .set(open.values().filter(|w| now_ms.saturating_sub(w.state.progress_at_ms) >= FLOW_STUCK_AFTER_MS).count() as f64);
            open.iter()
                .filter(|(_, w)| {
                    !w.parked && now_ms.saturating_sub(w.state.progress_at_ms) >= FLOW_RESUME_AFTER_MS && w.next_try_ms <= now_ms
                })
                .map(|(stream, w)| (stream.clone(), w.state.clone()))
                .collect()
        };
        for (stream, state) in due {
            let Some((tenant, _)) = codec::flow_of(stream.as_str()) else { continue };
            let owned = state
                .redemption
                .as_ref()
                .and_then(|r| WalletId::parse(&r.wallet_id).ok())
                .is_some_and(|wallet| (inner.owns)(&WalletKey::new(tenant.clone(), wallet)));
            let Ok(permit) = Arc::clone(&running).try_acquire_owned() else { break };
            if !owned {
                continue;
            }
            let lock = inner.lock_for(&stream);
            let Ok(guard) = lock.try_lock_owned() else { continue };
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                let _permit = permit;
                let _guard = guard;
                // The log, not the reader's copy, says where the flow is.
                let result = match inner.load(&stream).await {
                    Ok(state) => inner.drive(&tenant, &stream, state, &CommandMeta::default(), Until::Settled).await.map(drop),
                    Err(error) => Err(error),
                };
                if let Err(error) = result {
                    metrics::counter!("tally_flows_retries_total").increment(1);
                    tracing::warn!(%stream, %error, "a flow cannot go on yet; retrying");
                    if let Some(watched) = inner.open.lock().get_mut(&stream) {
                        watched.parked = matches!(error, FlowError::NeedsOperator { .. });
                        watched.attempts += 1;
                        let pause = (1_000_i64 << watched.attempts.min(6)).min(RETRY_PAUSE_MAX_MS);
                        watched.next_try_ms = inner.clock.now_ms() + pause;
                        watched.last_error = Some(error.to_string());
                    }
                }
            });
        }
    }
}
