//! End to end through wallet actors with durable appends on the embedded log (target ≥ 100k
//! commands/s, 10k wallets, many callers), `EarnForOrder` (a 5-line order through five rules) beside
//! plain `Earn`, and activation of a wallet with 1,000 events (target ≤ 2 ms).

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::clock::SystemClock;
use tally_engine::domain::program::RuleVersion;
use tally_engine::domain::rules::{Order, OrderLine, parse_rules};
use tally_engine::domain::{Command, CommandBody, ProgramSettings, TenantId, WalletId};
use tally_engine::store::{EmbeddedStore, EventStore};

const WALLETS: usize = 10_000;

fn key(i: usize) -> WalletKey {
    WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse(&format!("c-{i}")).unwrap())
}

/// A program in the shape of seed 000: base rate, a category bonus, a first-order bonus, a capped daily
/// bonus and a weekend multiplier.
fn program() -> ProgramSettings {
    let json = r#"[
      {"id":"base","actions":[{"type":"points_per_currency_unit","points":1,"unit_minor":100}]},
      {"id":"coffee","conditions":{"type":"category","value":["coffee"],"min_quantity":2},"actions":[{"type":"points","amount":20}]},
      {"id":"welcome","conditions":{"type":"first_order"},"actions":[{"type":"points","amount":500}]},
      {"id":"daily","conditions":{"type":"order_total","operator":">=","value":1000},"actions":[{"type":"points","amount":50}],
       "caps":{"per_customer":{"points":100,"period":"day"}}},
      {"id":"weekend","conditions":{"type":"day_of_week","value":[6,7]},"actions":[{"type":"multiplier","percent":200}]}
    ]"#;
    let rules = parse_rules(json).unwrap();
    let version =
        RuleVersion { version: 1, effective_from_ms: 0, published_by: "bench".into(), rules_json: json.into(), rules: Ok(rules.into()) };
    ProgramSettings { rule_versions: Arc::new([version]), ..ProgramSettings::default() }
}

fn order(id: String) -> Command {
    let line =
        |sku: &str, category: &str, amount_minor| OrderLine { sku: sku.into(), category: category.into(), quantity: 1, amount_minor };
    let lines = vec![
        line("latte", "coffee", 450),
        line("latte", "coffee", 450),
        line("bagel", "food", 350),
        line("mug", "home", 1_200),
        line("beans", "coffee", 1_100),
    ];
    let order = Order {
        order_id: id.clone(),
        total_minor: lines.iter().map(|l| l.amount_minor).sum(),
        currency: "EUR".into(),
        channel: "pos".into(),
        store: "s-1".into(),
        lines,
        placed_at_ms: None,
    };
    Command::new(id, CommandBody::EarnForOrder { order })
}

async fn start_registry(store: Arc<dyn EventStore>) -> WalletRegistry {
    let programs = Arc::new(StaticPrograms::open(program()));
    WalletRegistry::start(RegistryConfig::default(), store, programs, Arc::new(SystemClock)).await.unwrap()
}

fn earn(key: String) -> Command {
    Command::new(key.clone(), CommandBody::Earn { points: 10, reason: "order".into(), source_ref: key, order_amount: None })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let registry = runtime.block_on(async {
        let registry = start_registry(Arc::clone(&store)).await;
        let enrolls: Vec<_> = (0..WALLETS)
            .map(|i| {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let enroll = Command::new("enroll", CommandBody::enroll("crm"));
                    registry.execute(&key(i), enroll, CommandMeta::default()).await.unwrap();
                })
            })
            .collect();
        for e in enrolls {
            e.await.unwrap();
        }
        registry
    });

    let mut group = c.benchmark_group("actors");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(10)).sample_size(20);
    let mut round = 0u64;
    type Case = (&'static str, usize, fn(String) -> Command);
    let cases: [Case; 3] = [("earn", 64, earn), ("earn", 1024, earn), ("earn_for_order", 64, order)];
    for (name, callers, command) in cases {
        group.bench_function(format!("{name}, 10k wallets, {callers} callers, durable"), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let round = round;
                runtime.block_on(async {
                    let per_caller = iters.div_ceil(callers as u64);
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..callers)
                        .map(|caller| {
                            let registry = registry.clone();
                            tokio::spawn(async move {
                                for n in 0..per_caller {
                                    let wallet = (caller * 7919 + n as usize * 104_729) % WALLETS;
                                    let command = command(format!("r{round}-c{caller}-{n}"));
                                    registry.execute(&key(wallet), command, CommandMeta::default()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    started.elapsed().mul_f64(iters as f64 / (per_caller * callers as u64) as f64)
                })
            })
        });
    }
    group.finish();

    // Activation: wallets with 1,000 events each, activated by a fresh registry.
    let history_wallets = 100;
    runtime.block_on(async {
        let fills: Vec<_> = (0..history_wallets)
            .map(|w| {
                let registry = registry.clone();
                tokio::spawn(async move {
                    let k = WalletKey::new(TenantId::parse("history").unwrap(), WalletId::parse(&format!("h-{w}")).unwrap());
                    let enroll = Command::new("enroll", CommandBody::enroll("crm"));
                    registry.execute(&k, enroll, CommandMeta::default()).await.unwrap();
                    for n in 0..999 {
                        registry.execute(&k, earn(format!("o-{n}")), CommandMeta::default()).await.unwrap();
                    }
                })
            })
            .collect();
        for fill in fills {
            fill.await.unwrap();
        }
    });
    let mut group = c.benchmark_group("activation");
    group.sample_size(20);
    group.bench_function("activate wallet with 1000 events (embedded log)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                let mut fresh = start_registry(Arc::clone(&store)).await;
                for i in 0..iters as usize {
                    let w = i % history_wallets;
                    if w == 0 && i > 0 {
                        fresh.shutdown().await;
                        fresh = start_registry(Arc::clone(&store)).await;
                    }
                    let k = WalletKey::new(TenantId::parse("history").unwrap(), WalletId::parse(&format!("h-{w}")).unwrap());
                    let started = Instant::now();
                    let summary = fresh.summary(&k).await.unwrap();
                    total += started.elapsed();
                    assert_eq!(summary.version, 1000);
                }
                fresh.shutdown().await;
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
