//! Programs as aggregates: one tenant's program at a time is loaded from its stream, caught up with
//! whatever other nodes appended, decided against, and appended with the version it expects. Commands on
//! one program are serialised per tenant; the store's version check keeps nodes honest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::wallet_roll::WalletRolls;
use super::{CommandMeta, Programs, WalletError};
use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::program::{
    ProgramCommand, ProgramCommandBody, ProgramDecision, ProgramRejection, ProgramState, apply_program, decide_program,
};
use crate::domain::rules::{Customer, Order, Period, Rule};
use crate::domain::{OrderQuote, ProgramSettings, Rejection, TenantId, WalletId, quote_order};
use crate::store::{EventMetadata, EventStore, ExpectedVersion, StoreError};

/// Events read per call while catching a program up.
const READ_BATCH_EVENTS: usize = 1_000;
/// Attempts at a command when another node appends to the program concurrently.
const CONFLICT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Rejected(#[from] ProgramRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An order the program's rules cannot quote (a rules version that no longer reads, an award out of range).
    #[error(transparent)]
    Order(#[from] Rejection),
}

/// What a program command did.
#[derive(Debug, Clone)]
pub struct ProgramOutcome {
    pub state: ProgramState,
    /// `Some(rules version the command left)` if the same command had already been applied: its first
    /// outcome, whatever happened since.
    pub replayed: Option<u32>,
}

/// The programs of every tenant, from their streams in the log. Serves [`Programs`] to wallets from a
/// cache of settings that its own commands update at once and that is refreshed from the log when older
/// than `refresh` (what another node sharing the log published is seen within that time).
#[derive(Debug)]
pub struct ProgramBook {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    programs: parking_lot::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<ProgramState>>>>,
    settings: parking_lot::RwLock<HashMap<TenantId, (Arc<ProgramSettings>, Instant)>>,
    refresh: Duration,
    /// The platform's tenants as stream `$tenants` has them, and how many it may have.
    tenants: tokio::sync::Mutex<TenantRoll>,
    tenants_max: usize,
    /// Each tenant's wallets as streams `<tenant>/wallets` count them, and how many it may open.
    wallets: WalletRolls,
}

/// Tenants registered on `$tenants`, and the stream's version they were read to.
#[derive(Debug, Default)]
struct TenantRoll {
    names: std::collections::HashSet<TenantId>,
    version: u64,
}

impl ProgramBook {
    pub fn new(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>, refresh: Duration) -> Self {
        Self {
            programs: parking_lot::Mutex::new(HashMap::new()),
            settings: parking_lot::RwLock::new(HashMap::new()),
            refresh,
            tenants: tokio::sync::Mutex::default(),
            tenants_max: crate::limits::TENANTS_DEFAULT_MAX,
            wallets: WalletRolls::new(Arc::clone(&store), Arc::clone(&clock), crate::limits::WALLETS_PER_TENANT_DEFAULT_MAX),
            store,
            clock,
        }
    }

    /// At most `max` tenants on the platform (those registered on `$tenants`).
    pub fn with_tenants_max(mut self, max: usize) -> Self {
        self.tenants_max = max;
        self
    }

    /// At most `max` wallets opened per tenant (those counted on `<tenant>/wallets`).
    pub fn with_wallets_max(mut self, max: u64) -> Self {
        self.wallets = WalletRolls::new(Arc::clone(&self.store), Arc::clone(&self.clock), max);
        self
    }

    /// Registers `tenant` on `$tenants` unless it is there, refusing a tenant beyond the bound; with the
    /// expected version, so nodes sharing the log never register more than the bound between them.
    async fn register(&self, tenant: &TenantId, meta: &EventMetadata) -> Result<(), ProgramError> {
        let stream = codec::tenants_stream();
        let mut roll = self.tenants.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            loop {
                let events = self.store.read_stream(&stream, roll.version + 1, READ_BATCH_EVENTS).await?;
                if events.is_empty() {
                    break;
                }
                for recorded in events {
                    roll.names.insert(codec::decode_tenant(recorded)?);
                    roll.version += 1;
                }
            }
            if roll.names.contains(tenant) {
                return Ok(());
            }
            if roll.names.len() >= self.tenants_max {
                return Err(ProgramRejection::TooManyTenants { max: self.tenants_max }.into());
            }
            let event = codec::encode_tenant(tenant, self.clock.now_ms(), meta);
            match self.store.append(&stream, ExpectedVersion::Exact(roll.version), vec![event]).await {
                Ok(_) => {
                    roll.names.insert(tenant.clone());
                    roll.version += 1;
                    return Ok(());
                }
                Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The cached settings of `tenant` if younger than the refresh interval.
    fn fresh(&self, tenant: &TenantId) -> Option<Arc<ProgramSettings>> {
        let cache = self.settings.read();
        cache.get(tenant).filter(|(_, fetched)| fetched.elapsed() < self.refresh).map(|(settings, _)| Arc::clone(settings))
    }

    /// Caches what wallets need of `state`, if the program exists.
    fn publish(&self, tenant: &TenantId, state: &ProgramState) -> Option<Arc<ProgramSettings>> {
        if !state.created {
            return None;
        }
        let settings = Arc::new(state.settings());
        self.settings.write().insert(tenant.clone(), (Arc::clone(&settings), Instant::now()));
        Some(settings)
    }

    fn slot(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<ProgramState>> {
        Arc::clone(self.programs.lock().entry(tenant.clone()).or_default())
    }

    async fn catch_up(&self, tenant: &TenantId, state: &mut ProgramState) -> Result<(), ProgramError> {
        let stream = codec::program_stream(tenant);
        loop {
            let events = self.store.read_stream(&stream, state.version + 1, READ_BATCH_EVENTS).await?;
            if events.is_empty() {
                return Ok(());
            }
            for recorded in events {
                apply_program(state, &codec::decode_program(recorded)?);
            }
        }
    }

    /// The program as the log has it now.
    pub async fn get(&self, tenant: &TenantId) -> Result<ProgramState, ProgramError> {
        let slot = self.slot(tenant);
        let mut state = slot.lock().await;
        self.catch_up(tenant, &mut state).await?;
        if !state.created {
            // Asking about a program that does not exist leaves nothing behind.
            self.programs.lock().remove(tenant);
        }
        self.publish(tenant, &state);
        Ok(state.clone())
    }

    /// Decides and appends a program command; replies once its events are durable.
    pub async fn execute(&self, tenant: &TenantId, command: &ProgramCommand, meta: &EventMetadata) -> Result<ProgramOutcome, ProgramError> {
        let slot = self.slot(tenant);
        let mut state = slot.lock().await;
        let stream = codec::program_stream(tenant);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up(tenant, &mut state).await?;
            // A new program is a new tenant of the platform: counted (and bounded) first. A crash between
            // the two appends leaves the tenant counted, and creating its program again goes on from there.
            if !state.created && matches!(command.body, ProgramCommandBody::Create { .. }) {
                self.register(tenant, meta).await?;
            }
            let events = match decide_program(&state, tenant, command, self.clock.now_ms())? {
                ProgramDecision::AlreadyApplied { rules_version } => {
                    return Ok(ProgramOutcome { state: state.clone(), replayed: Some(rules_version) });
                }
                ProgramDecision::Append(events) => events,
            };
            let data = events.iter().map(|e| codec::encode_program(e, meta)).collect();
            match self.store.append(&stream, ExpectedVersion::Exact(state.version), data).await {
                Ok(_) => {
                    events.iter().for_each(|e| apply_program(&mut state, e));
                    self.publish(tenant, &state);
                    return Ok(ProgramOutcome { state: state.clone(), replayed: None });
                }
                Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// What `order` earns a customer of `tenant` in `tier` (none: no tier) after `previous_orders` orders,
    /// with no capped points used yet, placed when it says or now: what `EarnForOrder` would record.
    pub async fn quote_order(
        &self,
        tenant: &TenantId,
        order: &Order,
        tier: Option<&str>,
        previous_orders: u64,
    ) -> Result<OrderQuote, ProgramError> {
        let settings = self.cached_settings(tenant).await?.ok_or(ProgramRejection::NotCreated)?;
        let nothing_used = |_: &Rule, _: Period| 0;
        let customer = Customer { tier, previous_orders, rule_points_in_period: &nothing_used };
        let placed_at_ms = order.placed_at_ms.unwrap_or_else(|| self.clock.now_ms());
        Ok(quote_order(&settings, order, &customer, placed_at_ms)?)
    }

    /// What wallets of `tenant` decide with (`None`: no such program), from the cache while it is fresh.
    async fn cached_settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, ProgramError> {
        if let Some(settings) = self.fresh(tenant) {
            return Ok(Some(settings));
        }
        let slot = self.slot(tenant);
        let mut state = slot.lock().await;
        // Whoever held the lock before us may have refreshed it: one read of the log per refresh.
        if let Some(settings) = self.fresh(tenant) {
            return Ok(Some(settings));
        }
        self.catch_up(tenant, &mut state).await?;
        if !state.created {
            self.programs.lock().remove(tenant);
        }
        Ok(self.publish(tenant, &state))
    }
}

#[async_trait::async_trait]
impl Programs for ProgramBook {
    async fn settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        self.cached_settings(tenant).await.map_err(|error| match error {
            ProgramError::Store(store) => WalletError::Store(store),
            ProgramError::Codec(codec) => WalletError::Codec(codec),
            // Catching up decides nothing, so nothing is rejected; were it, the wallet cannot go on.
            ProgramError::Rejected(_) | ProgramError::Order(_) => WalletError::UnknownTenant(tenant.clone()),
        })
    }

    async fn fresh_settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        // Catching the program up publishes its settings to the cache.
        if let Err(error) = self.get(tenant).await {
            tracing::warn!(%tenant, %error, "cannot read the program afresh; answering from the cache");
        }
        self.settings(tenant).await
    }

    async fn admit_wallet(&self, tenant: &TenantId, wallet: &WalletId, meta: &CommandMeta) -> Result<(), WalletError> {
        self.wallets.admit(tenant, wallet, meta).await
    }
}
