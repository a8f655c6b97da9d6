//! Wallet actors through the registry: activation, recovery, idempotent retries, passivation, the LRU
//! bound, crash handling, and two registries (nodes) writing one wallet.

use std::sync::Arc;
use std::time::Duration;

use tally_engine::actors::{CommandMeta, Programs, RegistryConfig, StaticPrograms, WalletError, WalletKey, WalletRegistry};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::{Command, CommandBody, ProgramSettings, Rejection, TenantId, WalletId, WalletStatus};
use tally_engine::store::{EmbeddedStore, EventStore, FaultPlan, InMemoryStore, StoreError};

fn key(tenant: &str, wallet: &str) -> WalletKey {
    WalletKey::new(TenantId::parse(tenant).unwrap(), WalletId::parse(wallet).unwrap())
}
fn enroll() -> Command {
    Command::new("enroll", CommandBody::enroll("crm"))
}
fn earn(k: &str, points: i64) -> Command {
    Command::new(k, CommandBody::Earn { points, reason: "order".into(), source_ref: k.into(), order_amount: None })
}
fn redeem(k: &str, points: i64) -> Command {
    Command::new(k, CommandBody::Redeem { points, reward_ref: "coffee".into() })
}

async fn registry(store: Arc<dyn EventStore>, config: RegistryConfig) -> WalletRegistry {
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    WalletRegistry::start(config, store, programs, Arc::new(ManualClock::new(1_000))).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_durable_and_a_new_registry_recovers_the_wallet() {
    let dir = tempfile::tempdir().unwrap();
    let wallet = key("acme", "c-1");
    {
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let registry = registry(store.clone(), RegistryConfig::default()).await;
        registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
        let earned = registry.execute(&wallet, earn("order-1", 120), CommandMeta::default()).await.unwrap();
        assert_eq!((earned.balance, earned.version, earned.position, earned.replayed), (120, 2, 2, false));
        let redeemed = registry.execute(&wallet, redeem("r-1", 20), CommandMeta::default()).await.unwrap();
        assert_eq!(redeemed.balance, 100);
        let refused = registry.execute(&wallet, redeem("r-2", 101), CommandMeta::default()).await;
        assert!(matches!(refused, Err(WalletError::Rejected(Rejection::InsufficientPoints { available: 100, requested: 101 }))));
        registry.shutdown().await;
        store.close().await;
    }
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let registry = registry(store, RegistryConfig::default()).await;
    let summary = registry.summary(&wallet).await.unwrap();
    assert_eq!((summary.status, summary.balance, summary.lifetime_earned, summary.version), (WalletStatus::Active, 100, 120, 3));
    let missing = registry.summary(&key("acme", "nobody")).await;
    assert!(matches!(missing, Err(WalletError::Rejected(Rejection::WalletNotFound))), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_returns_the_first_outcome_and_appends_nothing() {
    let store = InMemoryStore::new();
    let registry = registry(store.clone(), RegistryConfig::default()).await;
    let wallet = key("acme", "c-1");
    registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    let first = registry.execute(&wallet, earn("order-1", 50), CommandMeta::default()).await.unwrap();
    registry.execute(&wallet, earn("order-2", 7), CommandMeta::default()).await.unwrap();
    let retry = registry.execute(&wallet, earn("order-1", 50), CommandMeta::default()).await.unwrap();
    assert!(retry.replayed);
    assert_eq!((retry.events.clone(), retry.balance, retry.version, retry.position), (first.events.clone(), 50, 2, 2));
    assert_eq!(store.all_events().len(), 3, "the retry appended nothing");
    let reused = registry.execute(&wallet, earn("order-1", 51), CommandMeta::default()).await;
    assert!(matches!(reused, Err(WalletError::Rejected(Rejection::IdempotencyKeyReused { .. }))), "{reused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_create_one_actor() {
    let registry = registry(InMemoryStore::new(), RegistryConfig::default()).await;
    let wallet = key("acme", "busy");
    registry.execute(&key("acme", "other"), enroll(), CommandMeta::default()).await.unwrap();
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let registry = registry.clone();
            let wallet = wallet.clone();
            tokio::spawn(async move {
                if i == 0 {
                    registry.execute(&wallet, enroll(), CommandMeta::default()).await.map(|_| ())
                } else {
                    registry.summary(&wallet).await.map(|_| ())
                }
            })
        })
        .collect();
    for call in calls {
        let _ = call.await.unwrap();
    }
    assert_eq!(registry.stats().activations, 2, "one actor for 'busy', one for 'other'");
    assert_eq!(registry.stats().active, 2);
}

#[tokio::test(start_paused = true)]
async fn idle_wallets_are_passivated_and_come_back_intact() {
    let config = RegistryConfig { idle_ms: 60_000, sweep_interval_ms: 24 * 3_600_000, ..RegistryConfig::default() };
    let registry = registry(InMemoryStore::new(), config).await;
    let wallet = key("acme", "c-1");
    registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    registry.execute(&wallet, earn("order-1", 42), CommandMeta::default()).await.unwrap();

    tokio::time::advance(Duration::from_secs(30)).await;
    registry.sweep().await;
    assert_eq!(registry.stats().active, 1, "not idle long enough");

    tokio::time::advance(Duration::from_secs(31)).await;
    registry.sweep().await;
    assert_eq!(registry.stats().active, 0, "idle for over a minute");

    let summary = registry.summary(&wallet).await.unwrap();
    assert_eq!((summary.balance, summary.version), (42, 2), "reactivation recovers from the log");
    let stats = registry.stats();
    assert_eq!((stats.activations, stats.passivations, stats.active), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_live_wallets_is_bounded() {
    let config = RegistryConfig { active_wallets_max: 10, ..RegistryConfig::default() };
    let registry = registry(InMemoryStore::new(), config).await;
    for i in 0..25 {
        let wallet = key("acme", &format!("c-{i}"));
        registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
        registry.execute(&wallet, earn("o", i + 1), CommandMeta::default()).await.unwrap();
        assert!(registry.stats().active <= 10, "active {} after wallet {i}", registry.stats().active);
    }
    for i in 0..25 {
        assert_eq!(registry.summary(&key("acme", &format!("c-{i}"))).await.unwrap().balance, i + 1);
    }
    assert!(registry.stats().passivations >= 15);
}

/// Programs whose lookup panics for one tenant: a stand-in for a bug that crashes a wallet.
#[derive(Debug)]
struct PoisonedPrograms;

#[async_trait::async_trait]
impl Programs for PoisonedPrograms {
    async fn settings(&self, tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        assert_ne!(tenant.as_str(), "poison", "simulated bug in a wallet handler");
        Ok(Some(Arc::new(ProgramSettings::default())))
    }

    async fn admit_wallet(&self, _tenant: &TenantId, _wallet: &WalletId, _meta: &CommandMeta) -> Result<(), WalletError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_keeps_crashing_its_wallet_gets_an_error_and_the_wallet_is_quarantined() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let registry = WalletRegistry::start(RegistryConfig::default(), InMemoryStore::new(), Arc::new(PoisonedPrograms), clock).await.unwrap();
    let poisoned = key("poison", "c-1");
    let result = registry.execute(&poisoned, enroll(), CommandMeta::default()).await;
    assert!(matches!(result, Err(WalletError::Crashed { attempts: 3 })), "{result:?}");
    let again = registry.execute(&poisoned, enroll(), CommandMeta::default()).await;
    assert!(matches!(again, Err(WalletError::Quarantined { .. })), "{again:?}");
    assert_eq!(registry.stats().crashes, 3, "restarted with backoff after each crash, then gave up");
    // Other wallets are unaffected; the supervisor survives its children's crashes.
    let healthy = key("fine", "c-1");
    assert_eq!(registry.execute(&healthy, enroll(), CommandMeta::default()).await.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_on_one_store_never_lose_a_write() {
    // Two nodes that both believe they own the wallet: the store's version check keeps one writer per
    // version, and the loser catches up and decides again.
    let store = InMemoryStore::new();
    let node_a = registry(store.clone(), RegistryConfig::default()).await;
    let node_b = registry(store.clone(), RegistryConfig::default()).await;
    let wallet = key("acme", "shared");
    node_a.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    node_b.summary(&wallet).await.unwrap(); // node B now holds version 1 in memory
    node_a.execute(&wallet, earn("o-1", 10), CommandMeta::default()).await.unwrap();
    let from_b = node_b.execute(&wallet, earn("o-2", 5), CommandMeta::default()).await.unwrap();
    assert_eq!((from_b.balance, from_b.version), (15, 3), "B caught up past A's write before deciding");
    let versions: Vec<u64> = store.all_events().iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_makes_every_live_wallet_read_what_another_node_wrote() {
    // A read is answered from memory until something says another writer may have been at work (a
    // cluster's view changed); then every live wallet catches up first, without being stopped.
    let store = InMemoryStore::new();
    let node_a = registry(store.clone(), RegistryConfig::default()).await;
    let node_b = registry(store.clone(), RegistryConfig::default()).await;
    let wallets = [key("acme", "w-1"), key("acme", "w-2")];
    for wallet in &wallets {
        node_a.execute(wallet, enroll(), CommandMeta::default()).await.unwrap();
        assert_eq!(node_b.summary(wallet).await.unwrap().balance, 0);
        node_a.execute(wallet, earn("o-1", 10), CommandMeta::default()).await.unwrap();
        assert_eq!(node_b.summary(wallet).await.unwrap().balance, 0, "served from memory");
    }
    node_b.refresh_all();
    for wallet in &wallets {
        assert_eq!(node_b.summary(wallet).await.unwrap().balance, 10, "caught up after the refresh");
    }
    assert_eq!(node_b.stats().passivations, 0, "nothing was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_outcome_is_unknown_is_settled_by_retrying_with_the_same_key() {
    let faults = FaultPlan { seed: 7, fail_before_write_per_mille: 0, fail_after_write_per_mille: 1000 };
    let store = Arc::new(InMemoryStore::with_faults(faults));
    let registry = registry(store.clone(), RegistryConfig::default()).await;
    let wallet = key("acme", "c-1");
    let lost_ack = registry.execute(&wallet, enroll(), CommandMeta::default()).await;
    assert!(matches!(lost_ack, Err(WalletError::Store(StoreError::Unavailable { .. }))), "{lost_ack:?}");
    // The event did land; the retry finds it and answers with the first outcome.
    let retry = registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(store.all_events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenants_are_refused() {
    let programs = Arc::new(StaticPrograms::with_tenants([(TenantId::parse("acme").unwrap(), ProgramSettings::default())]));
    let registry =
        WalletRegistry::start(RegistryConfig::default(), InMemoryStore::new(), programs, Arc::new(ManualClock::new(0))).await.unwrap();
    let result = registry.execute(&key("nope", "c-1"), enroll(), CommandMeta::default()).await;
    assert!(matches!(&result, Err(WalletError::UnknownTenant(t)) if t.as_str() == "nope"), "{result:?}");
    registry.execute(&key("acme", "c-1"), enroll(), CommandMeta::default()).await.unwrap();
}

/// Issue 15, item 9: an order id earns in one wallet of a tenant. Its claim is appended on the order's own
/// stream where none exists (the log's uniqueness); another wallet is told which wallet has it; the
/// same wallet's retry is answered as before; another tenant's order of that id is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_id_earns_in_one_wallet_of_a_tenant() {
    use tally_engine::domain::rules::{Order, OrderLine};
    let order = |id: &str| {
        let lines = vec![OrderLine { sku: "sku-1".into(), category: "food".into(), quantity: 1, amount_minor: 1_000 }];
        let order = Order {
            order_id: id.into(),
            total_minor: 1_000,
            currency: "EUR".into(),
            channel: "web".into(),
            store: String::new(),
            lines,
            placed_at_ms: None,
        };
        Command::new(id, CommandBody::EarnForOrder { order })
    };
    let store = InMemoryStore::new();
    let registry = registry(store.clone(), RegistryConfig::default()).await;
    let (a, b, elsewhere) = (key("acme", "a"), key("acme", "b"), key("other", "a"));
    for wallet in [&a, &b, &elsewhere] {
        registry.execute(wallet, enroll(), CommandMeta::default()).await.unwrap();
    }
    registry.execute(&a, order("receipt-1234"), CommandMeta::default()).await.unwrap();
    let refused = registry.execute(&b, order("receipt-1234"), CommandMeta::default()).await;
    assert!(
        matches!(&refused, Err(WalletError::Rejected(Rejection::OrderEarnedElsewhere { order_id, wallet_id }))
            if order_id == "receipt-1234" && wallet_id == "a"),
        "{refused:?}"
    );
    assert!(registry.execute(&a, order("receipt-1234"), CommandMeta::default()).await.unwrap().replayed);
    registry.execute(&elsewhere, order("receipt-1234"), CommandMeta::default()).await.unwrap();
    // The claim is in the log, on the order's stream.
    let claims = store.read_stream(&tally_engine::codec::order_stream(&a.tenant, "receipt-1234").unwrap(), 1, 10).await.unwrap();
    assert_eq!(claims.len(), 1);
}

/// Snapshots kept in memory, taken every 50 events and on passivation (the policy of issue 15's run).
#[derive(Debug, Default)]
struct MemorySnapshots(parking_lot::Mutex<std::collections::HashMap<String, tally_engine::domain::WalletState>>);

#[async_trait::async_trait]
impl tally_engine::actors::Snapshots for MemorySnapshots {
    async fn latest(&self, stream: &tally_engine::store::StreamId) -> Option<tally_engine::domain::WalletState> {
        self.0.lock().get(&stream.to_string()).cloned()
    }
    fn due(&self, since: u64, passivating: bool) -> bool {
        passivating || since >= 50
    }
    fn save(&self, stream: &tally_engine::store::StreamId, state: &tally_engine::domain::WalletState) {
        self.0.lock().insert(stream.to_string(), state.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_beyond_the_active_bound_costs_latency_never_errors() {
    // More wallets busy than may be resident: every activation passivates another wallet, often one a
    // caller has just looked up or been handed.
    const WALLETS: usize = 24;
    const CALLERS: usize = 16;
    const CALLS_PER_CALLER: usize = 400;
    let store = InMemoryStore::new();
    let config = RegistryConfig { active_wallets_max: 6, idle_ms: 1, sweep_interval_ms: 1, ..RegistryConfig::default() };
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let registry = WalletRegistry::start_with_snapshots(
        config,
        store.clone(),
        programs,
        Arc::new(ManualClock::new(1_000)),
        Arc::new(MemorySnapshots::default()),
    )
    .await
    .unwrap();
    for w in 0..WALLETS {
        registry.execute(&key("acme", &format!("w-{w}")), enroll(), CommandMeta::default()).await.unwrap();
    }
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..CALLS_PER_CALLER {
                    let wallet = key("acme", &format!("w-{}", (c * 7 + i * 5) % WALLETS));
                    let result = tokio::time::timeout(Duration::from_secs(20), async {
                        if i % 4 == 3 {
                            registry.summary(&wallet).await.map(|_| ())
                        } else {
                            registry.execute(&wallet, earn(&format!("c{c}-{i}"), 1), CommandMeta::default()).await.map(|_| ())
                        }
                    })
                    .await
                    .unwrap_or_else(|_| panic!("a call hung: caller {c} call {i} on {wallet:?}; {:?}", registry.stats()));
                    if let Err(error) = result {
                        failures.push(error.to_string());
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for caller in callers {
        failures.extend(caller.await.unwrap());
    }
    assert!(failures.is_empty(), "{} calls failed, e.g. {:?}; {:?}", failures.len(), &failures[..failures.len().min(3)], registry.stats());
    let mut total = 0;
    for w in 0..WALLETS {
        total += registry.summary(&key("acme", &format!("w-{w}"))).await.unwrap().balance;
    }
    assert_eq!(total, (CALLERS * CALLS_PER_CALLER * 3 / 4) as i64, "every earn applied once");
    assert!(registry.stats().passivations > 100, "the test churned: {:?}", registry.stats());
    assert_eq!(registry.stats().crashes, 0);
}

/// Programs whose lookup, once armed, waits for `release`: holds a wallet's actor inside a command so
/// that others queue behind it.
#[derive(Debug)]
struct GatedPrograms {
    armed: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl Default for GatedPrograms {
    fn default() -> Self {
        Self { armed: Default::default(), entered: Default::default(), gate: tokio::sync::Semaphore::new(0) }
    }
}

impl GatedPrograms {
    fn release(&self) {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.gate.add_permits(1_000);
    }
}

#[async_trait::async_trait]
impl Programs for GatedPrograms {
    async fn settings(&self, _tenant: &TenantId) -> Result<Option<Arc<ProgramSettings>>, WalletError> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(Some(Arc::new(ProgramSettings::default())))
    }

    async fn admit_wallet(&self, _tenant: &TenantId, _wallet: &WalletId, _meta: &CommandMeta) -> Result<(), WalletError> {
        Ok(())
    }
}

/// A registry whose wallet "c-1" is enrolled and then held busy inside an earn (`order-1`) until the
/// programs are released; returns the held call.
async fn held_wallet(
    config: RegistryConfig,
) -> (WalletRegistry, Arc<InMemoryStore>, Arc<GatedPrograms>, tokio::task::JoinHandle<Result<u64, WalletError>>) {
    let store = InMemoryStore::new();
    let programs = Arc::new(GatedPrograms::default());
    let registry = WalletRegistry::start(config, store.clone(), programs.clone(), Arc::new(ManualClock::new(1_000))).await.unwrap();
    registry.execute(&key("acme", "c-1"), enroll(), CommandMeta::default()).await.unwrap();
    programs.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let held = tokio::spawn({
        let registry = registry.clone();
        async move { registry.execute(&key("acme", "c-1"), earn("order-1", 1), CommandMeta::default()).await.map(|o| o.version) }
    });
    programs.entered.notified().await;
    (registry, store, programs, held)
}

#[tokio::test(start_paused = true)]
async fn a_queued_command_whose_caller_gave_up_is_skipped_not_applied() {
    let (registry, store, programs, held) = held_wallet(RegistryConfig::default()).await;
    let wallet = key("acme", "c-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let timed = tokio::spawn({
        let (registry, wallet) = (registry.clone(), wallet.clone());
        async move { registry.execute_before(&wallet, earn("order-2", 10), CommandMeta::default(), Some(deadline)).await }
    });
    let cancelled = tokio::spawn({
        let (registry, wallet) = (registry.clone(), wallet.clone());
        async move { registry.execute(&wallet, earn("order-3", 100), CommandMeta::default()).await }
    });
    let on_time = tokio::spawn({
        let (registry, wallet) = (registry.clone(), wallet.clone());
        let deadline = deadline + Duration::from_secs(60);
        async move { registry.execute_before(&wallet, earn("order-4", 1_000), CommandMeta::default(), Some(deadline)).await }
    });
    // One turn of the (single-threaded) runtime queues all three behind the held command.
    tokio::task::yield_now().await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    tokio::time::advance(Duration::from_secs(2)).await;
    programs.release();

    assert_eq!(held.await.unwrap().unwrap(), 2);
    let timed = timed.await.unwrap();
    assert!(matches!(timed, Err(WalletError::DeadlineExceeded)), "{timed:?}");
    assert_eq!(on_time.await.unwrap().unwrap().balance, 1_001, "order-1 and order-4 only");
    assert_eq!(store.all_events().len(), 3, "enroll, order-1, order-4: the skipped commands appended nothing");
    // A retry with the same key after the deadline is a fresh decision: applied once.
    let retry = registry.execute(&wallet, earn("order-2", 10), CommandMeta::default()).await.unwrap();
    assert_eq!((retry.replayed, retry.balance), (false, 1_011));
}

#[tokio::test(start_paused = true)]
async fn a_wallet_with_a_full_queue_refuses_more_calls_at_once() {
    let config = RegistryConfig { wallet_queue_max: 1, ..RegistryConfig::default() };
    let (registry, store, programs, held) = held_wallet(config).await;
    let wallet = key("acme", "c-1");
    let queued = tokio::spawn({
        let (registry, wallet) = (registry.clone(), wallet.clone());
        async move { registry.execute(&wallet, earn("order-2", 10), CommandMeta::default()).await }
    });
    tokio::task::yield_now().await;
    let refused = registry.execute(&wallet, earn("order-3", 100), CommandMeta::default()).await;
    assert!(matches!(refused, Err(WalletError::Busy { queued_max: 1 })), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("retry with the same idempotency key"));
    let read = registry.summary(&wallet).await;
    assert!(matches!(read, Err(WalletError::Busy { .. })), "reads queue in the same mailbox: {read:?}");
    programs.release();
    assert_eq!(held.await.unwrap().unwrap(), 2);
    assert_eq!(queued.await.unwrap().unwrap().balance, 11);
    assert_eq!(store.all_events().len(), 3, "the refused call was never queued");
    let retry = registry.execute(&wallet, earn("order-3", 100), CommandMeta::default()).await.unwrap();
    assert_eq!(retry.balance, 111);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_that_do_not_exist_are_answered_without_an_actor() {
    let config = RegistryConfig { active_wallets_max: 4, ..RegistryConfig::default() };
    let registry = registry(InMemoryStore::new(), config).await;
    let hot = key("acme", "hot");
    registry.execute(&hot, enroll(), CommandMeta::default()).await.unwrap();
    for i in 0..500 {
        let ghost = key("acme", &format!("ghost-{i}"));
        let read = registry.summary(&ghost).await;
        assert!(matches!(read, Err(WalletError::Rejected(Rejection::WalletNotFound))), "{read:?}");
        let earned = registry.execute(&ghost, earn("o-1", 5), CommandMeta::default()).await;
        assert!(matches!(earned, Err(WalletError::Rejected(Rejection::WalletNotFound))), "{earned:?}");
    }
    // Input errors come first, as an actor would answer them.
    let invalid = registry.execute(&key("acme", "ghost-0"), earn("o-1", 0), CommandMeta::default()).await;
    assert!(matches!(invalid, Err(WalletError::Rejected(Rejection::NonPositivePoints { .. }))), "{invalid:?}");
    let stats = registry.stats();
    assert_eq!((stats.activations, stats.active, stats.passivations), (1, 1, 0), "only the real wallet has an actor");
    assert_eq!(stats.answered_without_actor, 1_001);
    // A wallet that comes into existence is found from then on.
    registry.execute(&key("acme", "ghost-7"), enroll(), CommandMeta::default()).await.unwrap();
    assert_eq!(registry.execute(&key("acme", "ghost-7"), earn("o-1", 5), CommandMeta::default()).await.unwrap().balance, 5);
    assert_eq!(registry.summary(&hot).await.unwrap().balance, 0);
}

/// Issue 15, item 4: event times never go backwards within a stream, whatever the clock says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_never_go_backwards_within_a_wallet() {
    let store = InMemoryStore::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let registry = WalletRegistry::start(RegistryConfig::default(), store.clone(), programs, clock.clone()).await.unwrap();
    let wallet = key("acme", "c-1");
    registry.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    registry.execute(&wallet, earn("o-1", 5), CommandMeta::default()).await.unwrap();
    clock.advance_ms(-500_000);
    registry.execute(&wallet, earn("o-2", 5), CommandMeta::default()).await.unwrap();
    let stream = tally_engine::codec::wallet_stream(&wallet.tenant, &wallet.wallet);
    let times: Vec<i64> = store.read_stream(&stream, 1, 10).await.unwrap().iter().map(|e| e.data.recorded_at_ms).collect();
    assert_eq!(times, [1_000_000, 1_000_000, 1_000_000], "the stepped-back clock recorded nothing earlier");
}

/// Issue 19 item 4, the crash window of an erasure: the key is destroyed, the call fails before
/// `CustomerErased` is recorded. Every answer already shows the customer as erased; the retry (same key)
/// records the erasure; and a wallet another registry erased drops its cached key when it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_cut_off_after_its_key_went_shows_erased_and_its_retry_records_it() {
    let store = InMemoryStore::new();
    let (one, two) = (registry(store.clone(), RegistryConfig::default()).await, registry(store.clone(), RegistryConfig::default()).await);
    let wallet = key("acme", "c-1");
    let enrolled = one.execute(&wallet, enroll(), CommandMeta::default()).await.unwrap();
    assert_eq!((enrolled.wallet.customer_ref.as_str(), enrolled.wallet.customer_erased), ("crm", false));
    assert_eq!(two.summary(&wallet).await.unwrap().customer_ref, "crm", "the second registry has read the key");
    // The key is gone, the event not recorded (as after a crash between the two: a node restarted).
    let stream = tally_engine::codec::wallet_stream(&wallet.tenant, &wallet.wallet);
    assert!(store.erase_personal_key(&stream).await.unwrap());
    one.shutdown().await;
    let restarted = registry(store.clone(), RegistryConfig::default()).await;
    let shown = restarted.summary(&wallet).await.unwrap();
    assert_eq!((shown.customer_ref.as_str(), shown.customer_erased), ("", true), "no key: erased in every answer");
    // The other registry still holds the key it read; catching up with the log drops it.
    two.refresh_all();
    let there = two.summary(&wallet).await.unwrap();
    assert_eq!((there.customer_ref.as_str(), there.customer_erased), ("", true));
    let erase = Command::new("x-1", CommandBody::EraseCustomer { reason: "ticket 7".into() });
    let erased = restarted.execute(&wallet, erase, CommandMeta::default()).await.unwrap();
    assert_eq!((erased.replayed, erased.wallet.customer_erased, erased.events.len()), (false, true, 1), "the retry records it");
}
