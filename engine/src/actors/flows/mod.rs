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
//!
//! `drive.rs` holds a flow's steps and its records; `reader.rs` the reader of open flows and the resumer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tally_proto::v1::flow_started::Flow;
use tally_proto::v1::{FlowEnded, RewardRedemptionFlow};
use tokio::task::JoinHandle;

use super::stock::{StockAnswer, StockBook, StockError, StockFigures};
use super::{CommandMeta, Owns, Programs, WalletError, WalletKey, WalletRegistry};
use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::flows::{self, CancelRefusal, FlowState};
use crate::domain::rewards::StockOp;
use crate::domain::{Rejection, TenantId, WalletId};
use crate::limits::FLOW_STUCK_AFTER_MS;
use crate::store::{EventStore, StoreError, StreamId};

mod drive;
mod reader;
mod referral;
mod transfer;

pub use referral::REFERRAL_CRASH_POINTS;
pub use transfer::{TRANSFER_CRASH_POINTS, Transfer};

use reader::{read, resume};

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
    /// The flow's id (a redemption's, a transfer's) was used for another flow.
    #[error("id {flow_id:?} was already used for another redemption or transfer")]
    FlowIdReused { flow_id: String },
    /// A wallet the flow names does not exist (`field` names it): nothing was recorded.
    #[error("{field}: no wallet {wallet_id:?} in this tenant")]
    WalletNotFound { field: &'static str, wallet_id: String },
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
    #[error("the flow cannot go on by itself: {reason}")]
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
    /// What it is to do: a reward redemption, a points transfer.
    pub flow: Flow,
    pub started_at_ms: i64,
    pub progress_at_ms: i64,
    /// What is left: `redeeming` (a redemption's steps are redone from the start), `cancelling`,
    /// `transferring`, `rewarding` (a referral's reward), `starting` (called for by the log, not started
    /// yet: the call that should have started it did not).
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

/// A flow the log calls for and does not show started yet.
#[derive(Debug, Clone)]
struct Unstarted {
    tenant: TenantId,
    referral: tally_proto::v1::ReferralRewardFlow,
    /// When the event that calls for it was recorded.
    called_at_ms: i64,
    /// When to try starting it next (this node).
    next_try_ms: i64,
    /// What kept it from starting, the last time this node tried, and how often it tried.
    last_error: Option<String>,
    attempts: u32,
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
    /// Flows the log calls for that it does not show started yet (a referral converted, its reward's
    /// flow to come): the flow's stream, its tenant, what it is to do, and when the call was recorded.
    unstarted: parking_lot::Mutex<BTreeMap<StreamId, Unstarted>>,
    /// The reader has reached the log's end once: what it does not show started was not.
    caught_up: std::sync::atomic::AtomicBool,
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
            unstarted: parking_lot::Mutex::default(),
            caught_up: std::sync::atomic::AtomicBool::new(false),
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
            let mut reward = settings.as_ref().and_then(|s| s.rewards.get(reward_id).cloned());
            if reward.is_none() {
                // Defined on another node a moment ago, perhaps: the program as the log has it now.
                let settings = self.inner.programs.fresh_settings(tenant).await.map_err(not_started)?;
                reward = settings.as_ref().and_then(|s| s.rewards.get(reward_id).cloned());
            }
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
            _ => return Err(FlowError::FlowIdReused { flow_id: redemption_id.to_owned() }),
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
                let flow = watched.state.flow()?;
                let stuck = now_ms.saturating_sub(watched.state.progress_at_ms) >= FLOW_STUCK_AFTER_MS;
                let wanted = tenant.is_none_or(|t| *t == flow_tenant) && (stuck || !stuck_only);
                wanted.then(|| OpenFlow {
                    flow_id: flow_id.to_owned(),
                    tenant: flow_tenant,
                    step: match (&flow, watched.state.ended.is_none()) {
                        (Flow::PointsTransfer(_), _) => "transferring",
                        (Flow::ReferralReward(_), _) => "rewarding",
                        (_, true) => "redeeming",
                        (_, false) => "cancelling",
                    },
                    flow,
                    started_at_ms: watched.state.started_at_ms,
                    progress_at_ms: watched.state.progress_at_ms,
                    last_error: watched.last_error.clone(),
                    attempts: watched.attempts,
                    stuck,
                })
            })
            .collect();
        drop(open);
        // Until the reader reaches the log's end, what it notes may have started later in the log.
        let caught_up = self.inner.caught_up.load(std::sync::atomic::Ordering::Acquire);
        flows.extend(self.inner.unstarted.lock().iter().filter(|_| caught_up).filter_map(|(stream, u)| {
            let (flow_tenant, flow_id) = codec::flow_of(stream.as_str())?;
            let stuck = now_ms.saturating_sub(u.called_at_ms) >= FLOW_STUCK_AFTER_MS;
            let wanted = tenant.is_none_or(|t| *t == flow_tenant) && (stuck || !stuck_only);
            wanted.then(|| OpenFlow {
                flow_id: flow_id.to_owned(),
                tenant: flow_tenant,
                step: "starting",
                flow: Flow::ReferralReward(u.referral.clone()),
                started_at_ms: u.called_at_ms,
                progress_at_ms: u.called_at_ms,
                last_error: u.last_error.clone(),
                attempts: u.attempts,
                stuck,
            })
        }));
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
