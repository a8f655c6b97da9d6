//! Reward redemptions end to end on the embedded log with real fsyncs (issue 20's target: one hot reward,
//! 64 callers, ≥ 5k completed redemptions/s): each redemption is a flow of its own — its start, a stock
//! reservation, the wallet's debit, the debit's outcome, the stock taken, its end — and the hot reward's
//! stream is where they all meet, so its reservations and takes go in batches. Beside them, transfers
//! between two wallets (ADR 0014): start, the source's debit, the target's credit, end.

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_engine::actors::{CommandMeta, Flows, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::clock::SystemClock;
use tally_engine::domain::rewards::StockOp;
use tally_engine::domain::{Command, CommandBody, ProgramSettings, RewardDefined, TenantId, WalletId};
use tally_engine::store::{EmbeddedStore, EventStore};
use tally_proto::v1::FlowOutcome;

const WALLETS: usize = 2_000;

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn wallet(i: usize) -> WalletId {
    WalletId::parse(&format!("c-{i}")).unwrap()
}

fn program() -> ProgramSettings {
    let mug =
        RewardDefined { reward_id: "mug".into(), name: "Mug".into(), points: 1, limited_stock: true, active: true, ..Default::default() };
    let transfers = tally_engine::domain::TransferPolicySet { allowed: true, ..Default::default() };
    ProgramSettings { rewards: Arc::new([("mug".to_owned(), mug)].into_iter().collect()), transfers, ..ProgramSettings::default() }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let flows = runtime.block_on(async {
        let programs = Arc::new(StaticPrograms::open(program()));
        let registry =
            WalletRegistry::start(RegistryConfig::default(), Arc::clone(&store), programs.clone(), Arc::new(SystemClock)).await.unwrap();
        let opens: Vec<_> = (0..WALLETS)
            .map(|i| {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let key = WalletKey::new(tenant(), wallet(i));
                    registry.execute(&key, Command::new("enroll", CommandBody::enroll("")), CommandMeta::default()).await.unwrap();
                    let earn = CommandBody::Earn { points: 1_000_000, reason: "bench".into(), source_ref: "o".into(), order_amount: None };
                    registry.execute(&key, Command::new("o", earn), CommandMeta::default()).await.unwrap();
                })
            })
            .collect();
        for open in opens {
            open.await.unwrap();
        }
        let flows = Flows::start(Arc::clone(&store), Arc::new(SystemClock), registry, programs);
        let op = StockOp::Restock {
            idempotency_key: "all".into(),
            quantity: 1_000_000_000,
            restocked_by: "bench".into(),
            reason: String::new(),
        };
        flows.restock(&tenant(), "mug", op, CommandMeta::default()).await.unwrap();
        flows
    });

    let mut group = c.benchmark_group("flows");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(10)).sample_size(10);
    let mut round = 0u64;
    let callers = 64usize;
    group.bench_function(format!("redeem_reward, one hot reward, {callers} callers, {WALLETS} wallets, durable"), |b| {
        b.iter_custom(|iters| {
            round += 1;
            runtime.block_on(each_caller(&flows, callers, iters, move |flows, w, id| async move {
                let redemption = flows.redeem_reward(&tenant(), &wallet(w), "mug", &format!("r{round}-{id}"), CommandMeta::default()).await;
                assert_eq!(redemption.unwrap().ended.outcome, FlowOutcome::Completed as i32);
            }))
        })
    });
    group.bench_function(format!("transfer_points, {callers} callers, {WALLETS} wallets, durable"), |b| {
        b.iter_custom(|iters| {
            round += 1;
            runtime.block_on(each_caller(&flows, callers, iters, move |flows, w, id| async move {
                let (from, to) = (wallet(w), wallet((w + 1) % WALLETS));
                let transfer = flows.transfer_points(&tenant(), &from, &to, 1, &format!("t{round}-{id}"), "", CommandMeta::default()).await;
                assert_eq!(transfer.unwrap().ended.outcome, FlowOutcome::Completed as i32);
            }))
        })
    });
    group.finish();
}

/// `callers` tasks sharing `iters` flows, each flow `one(flows, a wallet, an id)` (the wallets spread);
/// the time `iters` of them took.
async fn each_caller<F, Fut>(flows: &Flows, callers: usize, iters: u64, one: F) -> Duration
where
    F: Fn(Flows, usize, String) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let per_caller = iters.div_ceil(callers as u64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (flows, one) = (flows.clone(), one.clone());
            tokio::spawn(async move {
                for n in 0..per_caller {
                    let w = (caller * 7919 + n as usize * 104_729) % WALLETS;
                    one(flows.clone(), w, format!("c{caller}-{n}")).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed().mul_f64(iters as f64 / (per_caller * callers as u64) as f64)
}

criterion_group!(benches, bench);
criterion_main!(benches);
