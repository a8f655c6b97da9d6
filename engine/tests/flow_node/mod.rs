//! What the flow tests share: a node — a wallet registry and its `Flows` on a shared log, with a crash
//! point — and the calls they make of it.
// Each test crate uses its own part of this.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tally_engine::actors::{
    CommandMeta, FlowError, Flows, Redemption, RegistryConfig, StaticPrograms, Transfer, WalletKey, WalletRegistry, WalletSummary,
};
use tally_engine::clock::{Clock, ManualClock};
use tally_engine::domain::rewards::StockOp;
use tally_engine::domain::{Command, CommandBody, ProgramSettings, TenantId, WalletId};
use tally_engine::store::EventStore;

pub fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

pub fn wallet(id: &str) -> WalletId {
    WalletId::parse(id).unwrap()
}

/// A node: a registry and its flows, on a shared log, stopping any flow that reaches its crash point.
pub struct Node {
    pub registry: WalletRegistry,
    pub flows: Flows,
}

/// A node of `program` on `store`, stopping any flow at `crash_at`.
pub async fn start(
    store: &Arc<dyn EventStore>,
    clock: &Arc<ManualClock>,
    crash_at: Option<&'static str>,
    program: ProgramSettings,
) -> Node {
    let programs = Arc::new(StaticPrograms::open(program));
    let clock: Arc<dyn Clock> = clock.clone();
    let registry = WalletRegistry::start(RegistryConfig::default(), Arc::clone(store), programs.clone(), Arc::clone(&clock)).await.unwrap();
    let crash = Arc::new(move |point: &str| Some(point) == crash_at);
    let flows = Flows::start_with(Arc::clone(store), clock, registry.clone(), programs, Arc::new(|_: &WalletKey| true), crash);
    Node { registry, flows }
}

impl Node {
    pub async fn stop(self) {
        self.flows.stop();
        self.registry.shutdown().await;
    }

    pub async fn run(&self, id: &str, key: &str, body: CommandBody) {
        self.registry.execute(&WalletKey::new(tenant(), wallet(id)), Command::new(key, body), CommandMeta::default()).await.unwrap();
    }

    /// Enrols `id` and credits it `points` (none: 0).
    pub async fn open_wallet(&self, id: &str, points: i64) {
        self.run(id, "enroll", CommandBody::enroll("")).await;
        if points > 0 {
            self.run(id, "o-1", CommandBody::Earn { points, reason: "order".into(), source_ref: "o-1".into(), order_amount: None }).await;
        }
    }

    pub async fn close(&self, id: &str) {
        self.run(id, "close", CommandBody::Close { reason: "left".into() }).await;
    }

    pub async fn restock(&self, reward_id: &str, quantity: i64) {
        let op = StockOp::Restock {
            idempotency_key: format!("restock-{quantity}"),
            quantity,
            restocked_by: "ops".into(),
            reason: String::new(),
        };
        self.flows.restock(&tenant(), reward_id, op, CommandMeta::default()).await.unwrap();
    }

    pub async fn summary(&self, id: &str) -> WalletSummary {
        self.registry.summary(&WalletKey::new(tenant(), wallet(id))).await.unwrap()
    }

    pub async fn balance(&self, id: &str) -> i64 {
        self.summary(id).await.balance
    }

    pub async fn redeem(&self, wallet_id: &str, reward_id: &str, redemption_id: &str) -> Result<Redemption, FlowError> {
        self.flows.redeem_reward(&tenant(), &wallet(wallet_id), reward_id, redemption_id, CommandMeta::default()).await
    }

    pub async fn cancel(&self, wallet_id: &str, redemption_id: &str) -> Result<Redemption, FlowError> {
        self.flows.cancel_redemption(&tenant(), &wallet(wallet_id), redemption_id, "returned", CommandMeta::default()).await
    }

    pub async fn transfer(&self, from: &str, to: &str, points: i64, id: &str) -> Result<Transfer, FlowError> {
        self.flows.transfer_points(&tenant(), &wallet(from), &wallet(to), points, id, "for a friend", CommandMeta::default()).await
    }

    /// Waits until the resumer has ended every open flow.
    pub async fn settled(&self, store: &Arc<dyn EventStore>) {
        for _ in 0..200 {
            let head = *store.head().borrow();
            if self.flows.read_to() >= head && self.flows.list(None, false).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("flows still open: {:?}", self.flows.list(None, false));
    }
}
