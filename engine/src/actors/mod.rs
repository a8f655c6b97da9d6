//! Wallet actors and their supervisor. See `docs/runtime-semantics.md` for the lifecycle.
//!
//! A wallet actor is activated on first use, recovers its state from the store, then handles one
//! message at a time: decide → append (durable) → apply → reply. The [`WalletRegistry`] is the way in:
//! it finds or activates the actor for a (tenant, wallet), passivates idle and least recently used
//! wallets to bound memory, and restarts crashed ones with backoff.
//!
//! Architecture Invariant: a reply is sent only after the store acknowledged the events (durable).
//! Architecture Invariant: at most one live actor per wallet per registry; across registries (nodes),
//! the store's expected-version check keeps a single writer.

mod flows;
mod identifiers;
mod keys;
mod programs;
mod registry;
mod stock;
mod timers;
mod wallet;
mod wallet_roll;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

pub use flows::{
    CANCEL_CRASH_POINTS, CRASH_POINTS, CrashPoint, FlowError, Flows, OpenFlow, REFERRAL_CRASH_POINTS, Redemption, TRANSFER_CRASH_POINTS,
    Transfer,
};
pub use identifiers::{Holder, IdentifierBook};
pub use keys::{KeyBook, KeysError, Unauthenticated};
pub use programs::{ProgramBook, ProgramError, ProgramOutcome};
pub use registry::{RegistryConfig, RegistryStats, WalletRegistry};
pub use stock::{StockAnswer, StockError, StockFigures};
pub use timers::{Owns, WalletTimers};

use crate::codec::CodecError;
use crate::domain::{Event, ProgramSettings, Rejection, TenantId, WalletId, WalletState, WalletStatus};
use crate::store::{StoreError, StreamId};

pub use crate::store::EventMetadata as CommandMeta;

/// Which wallet: the tenant (program) and the wallet within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletKey {
    pub tenant: TenantId,
    pub wallet: WalletId,
}

impl WalletKey {
    pub fn new(tenant: TenantId, wallet: WalletId) -> Self {
        Self { tenant, wallet }
    }
}

/// Where wallets get their program's settings: [`ProgramBook`] (the program aggregates in the log) in the
/// product, [`StaticPrograms`] in tests.
#[async_trait::async_trait]
pub trait Programs: Send + Sync + Debug + 'static {
    /// The tenant's settings, or `None` if no such program exists.
    async fn settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError>;
    /// The tenant's settings as the log has them now, for a caller that found what it needs missing from
    /// [`Self::settings`] (defined on another node a moment ago). Programs known up front: the same.
    async fn fresh_settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        self.settings(tenant).await
    }
    /// Counts `wallet` as one more of `tenant`'s before its first event, or refuses it
    /// ([`WalletError::TooManyWallets`]) when the tenant has opened as many as it may.
    async fn admit_wallet(&self, tenant: &TenantId, wallet: &WalletId, meta: &CommandMeta) -> Result<(), WalletError>;
}

/// Programs known up front, optionally with a default for any tenant (development, tests).
#[derive(Debug, Default)]
pub struct StaticPrograms {
    tenants: HashMap<TenantId, Arc<ProgramSettings>>,
    any_tenant: Option<Arc<ProgramSettings>>,
}

impl StaticPrograms {
    /// Every tenant exists, with these settings.
    pub fn open(settings: ProgramSettings) -> Self {
        Self { tenants: HashMap::new(), any_tenant: Some(Arc::new(settings)) }
    }

    /// Only the listed tenants exist.
    pub fn with_tenants(tenants: impl IntoIterator<Item = (TenantId, ProgramSettings)>) -> Self {
        Self { tenants: tenants.into_iter().map(|(t, s)| (t, Arc::new(s))).collect(), any_tenant: None }
    }
}

#[async_trait::async_trait]
impl Programs for StaticPrograms {
    async fn settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        Ok(self.tenants.get(tenant).or(self.any_tenant.as_ref()).cloned())
    }

    /// Programs known up front bound no tenant's wallets.
    async fn admit_wallet(&self, _tenant: &TenantId, _wallet: &WalletId, _meta: &CommandMeta) -> Result<(), WalletError> {
        Ok(())
    }
}

/// Snapshots as wallet actors see them: the engine owns only this port; `tally-snapshots` implements it
/// (stores, format, policy). Snapshots are derived data: `latest` returns `None` rather than anything
/// doubtful, and the wallet then replays its whole stream.
#[async_trait::async_trait]
pub trait Snapshots: Send + Sync + Debug + 'static {
    /// The latest usable snapshot of `stream`, or `None` (none stored, or unusable: the implementation
    /// reports why).
    async fn latest(&self, stream: &StreamId) -> Option<WalletState>;
    /// Whether to take a snapshot now, `since` events after the last one; `passivating` when the wallet
    /// is about to leave memory.
    fn due(&self, since: u64, passivating: bool) -> bool;
    /// Stores a snapshot of `state` in the background: never delays the caller.
    fn save(&self, stream: &StreamId, state: &WalletState);
}

/// No snapshots: every activation replays the whole stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSnapshots;

#[async_trait::async_trait]
impl Snapshots for NoSnapshots {
    async fn latest(&self, _stream: &StreamId) -> Option<WalletState> {
        None
    }

    fn due(&self, _since: u64, _passivating: bool) -> bool {
        false
    }

    fn save(&self, _stream: &StreamId, _state: &WalletState) {}
}

/// A wallet event with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWalletEvent {
    pub version: u64,
    pub position: u64,
    pub event: Event,
}

/// The result of an accepted command (or of its retry, with `replayed` set).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    pub events: Vec<StoredWalletEvent>,
    /// Balance right after the command.
    pub balance: i64,
    /// The wallet's version after the command.
    pub version: u64,
    /// Global position of the command's last event.
    pub position: u64,
    /// True when this is the recorded outcome of an earlier identical command: nothing was appended.
    pub replayed: bool,
    /// The wallet as it is now (for a replayed command: now, not right after the first one).
    pub wallet: WalletSummary,
}

/// A wallet's current figures, as answered by its actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSummary {
    pub status: WalletStatus,
    /// The customer's reference (opened from its sealed form by the wallet's actor); empty once erased.
    pub customer_ref: String,
    /// The customer's personal data was erased.
    pub customer_erased: bool,
    pub balance: i64,
    pub lifetime_earned: i64,
    pub lifetime_redeemed: i64,
    pub lifetime_reversed: i64,
    pub lifetime_adjusted: i64,
    pub enrolled_at_ms: i64,
    pub last_activity_ms: i64,
    pub version: u64,
    /// Points held by open POS holds (until released, expired ones too).
    pub held_points: i64,
    /// What can be spent now (never below zero).
    pub available_points: i64,
    pub lifetime_purchased: i64,
    pub lifetime_expired: i64,
    /// Points not spendable yet (included in `balance`).
    pub pending_points: i64,
    /// `(when, points)` of the soonest expiries, at most five.
    pub upcoming_expiries: Vec<(i64, i64)>,
    /// `(card id, stamps on the current card, stamps required (0: no longer defined), cards completed)`.
    pub stamp_cards: Vec<(String, i64, i64, i64)>,
    /// Where the customer stands in the program's tiers; `None` if it has none.
    pub tier: Option<crate::domain::tiers::TierView>,
    /// `(lookup, kind)` of the identifiers the wallet can be found by, in lookup order.
    pub identifiers: Vec<(String, i32)>,
    /// The wallet whose referral code the customer enrolled with (empty: none).
    pub referred_by: String,
    /// The referral was converted by the customer's first qualifying order.
    pub referral_converted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The command was refused by the domain; nothing changed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("unknown tenant {0}")]
    UnknownTenant(TenantId),
    /// The store failed; for an append the outcome is unknown, so retry with the same idempotency key.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// A stored event could not be decoded: the wallet cannot be recovered until this is fixed.
    #[error("wallet history cannot be read: {0}")]
    Codec(#[from] CodecError),
    /// The customer's sealed personal data does not open under the wallet's key (altered, or a key that
    /// is not this wallet's): reported, never shown as empty.
    #[error("the customer's personal data cannot be read: {0}")]
    PersonalData(String),
    /// The wallet's actor stopped or crashed before answering, `attempts` times in a row.
    #[error("wallet actor failed {attempts} times while handling this command")]
    Crashed { attempts: u32 },
    /// The wallet crashed repeatedly and is refused for a while.
    #[error("wallet is quarantined after repeated crashes; retry in {retry_after_ms} ms")]
    Quarantined { retry_after_ms: u64 },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The caller's deadline passed (or the caller went away) before the wallet decided the command:
    /// nothing was applied.
    #[error("the deadline passed before the wallet decided the command; nothing was applied")]
    DeadlineExceeded,
    /// The wallet has `queued_max` calls queued already; this one was refused without being queued.
    #[error("wallet has {queued_max} calls queued; nothing was applied, retry with the same idempotency key after a backoff")]
    Busy { queued_max: u64 },
    /// The tenant has opened as many wallets as it may (`tally serve --wallets-max`); nothing was applied.
    #[error("the tenant has opened {max} wallets, as many as it may; nothing was applied")]
    TooManyWallets { max: u64 },
}
