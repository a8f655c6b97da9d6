//! Memory per active wallet: RSS before and after activating 100,000 wallets (each enrolled, with one
//! earn) over the embedded log. Prints the figures; not a criterion bench because it measures bytes.

#![allow(clippy::print_stdout)]

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::clock::SystemClock;
use tally_engine::domain::{Command, CommandBody, ProgramSettings, TenantId, WalletId};
use tally_engine::store::{EmbeddedStore, EventStore};

const WALLETS: usize = 100_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn key(i: usize) -> WalletKey {
    WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse(&format!("customer-{i:08}")).unwrap())
}

async fn drive(registry: &WalletRegistry, make: impl Fn(usize) -> Option<Command> + Send + Sync + 'static) {
    let make = Arc::new(make);
    let tasks: Vec<_> = (0..256)
        .map(|t| {
            let registry = registry.clone();
            let make = Arc::clone(&make);
            tokio::spawn(async move {
                for i in (t..WALLETS).step_by(256) {
                    match make(i) {
                        Some(command) => drop(registry.execute(&key(i), command, CommandMeta::default()).await.unwrap()),
                        None => drop(registry.summary(&key(i)).await.unwrap()),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let config = RegistryConfig { active_wallets_max: 2 * WALLETS, ..RegistryConfig::default() };
    if let Ok(dir) = std::env::var("TALLY_MEMORY_ACTIVATE_DIR") {
        // Second process: nothing allocated yet but the reopened log, so RSS growth is the wallets'.
        runtime.block_on(async {
            let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(&dir).unwrap());
            let registry = WalletRegistry::start(config, store, programs, Arc::new(SystemClock)).await.unwrap();
            let before = rss_kib();
            let started = Instant::now();
            drive(&registry, |_| None).await;
            let after = rss_kib();
            let active = registry.stats().active;
            println!("activated {active} wallets in {:.1?}", started.elapsed());
            println!(
                "RSS {before} KiB -> {after} KiB: {:.0} bytes per active wallet (actor, mailbox, registry entry, state with 2 receipts)",
                ((after - before) * 1024) as f64 / active as f64
            );
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = WalletRegistry::start(config, Arc::clone(&store), programs, Arc::new(SystemClock)).await.unwrap();
        let started = Instant::now();
        drive(&writer, |_| Some(Command::new("enroll", CommandBody::enroll("crm")))).await;
        drive(&writer, |i| {
            let k = format!("order-{i}");
            Some(Command::new(k.clone(), CommandBody::Earn { points: 100, reason: "order".into(), source_ref: k, order_amount: None }))
        })
        .await;
        println!("wrote {} commands through actors in {:.1?}", 2 * WALLETS, started.elapsed());
        writer.shutdown().await;
    });
    drop(runtime);
    let status =
        std::process::Command::new(std::env::current_exe().unwrap()).env("TALLY_MEMORY_ACTIVATE_DIR", dir.path()).status().unwrap();
    assert!(status.success());
}
