//! Snapshot costs: encode + decode of a typical wallet, and activation of a wallet with 100,000 events
//! with a snapshot (target ≤ 1 ms) and without one (full replay), on the embedded log.
//!
//! The big wallet lived five years (an event every 26 minutes: three earns, each from its own source,
//! then a redemption), under a program with a 90-day refund window: its state holds the last 30 days'
//! receipts and the last 90 days' sources, as the engine's retention keeps them.

#![allow(clippy::print_stderr)]

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tally_engine::actors::{NoSnapshots, RegistryConfig, Snapshots, StaticPrograms, WalletKey, WalletRegistry};
use tally_engine::clock::ManualClock;
use tally_engine::codec;
use tally_engine::domain::{
    Command, CommandBody, Context, Decision, Event, ProgramSettings, TenantId, WalletId, WalletState, apply, decide,
};
use tally_engine::store::{EmbeddedStore, EventMetadata, EventStore, ExpectedVersion};
use tally_snapshots::{SledSnapshotStore, SnapshotPolicy, SnapshotStore, Snapshotter, StoredSnapshot, format};

/// Five years.
const LIFETIME_MS: i64 = 5 * 365 * 86_400_000;

fn program() -> ProgramSettings {
    ProgramSettings { refund_window_days: 90, ..ProgramSettings::default() }
}

/// `events` events over `lifetime_ms`, under `program`.
fn history(events: usize, lifetime_ms: i64, program: &ProgramSettings) -> (Vec<Event>, WalletState) {
    let tenant = TenantId::parse("acme").unwrap();
    let wallet = WalletId::parse("big").unwrap();
    let every_ms = lifetime_ms / events as i64;
    let mut state = WalletState::default();
    let mut log = Vec::with_capacity(events);
    let mut n = 0;
    while log.len() < events {
        let body = match n {
            0 => CommandBody::enroll(""),
            n if n % 4 == 3 => CommandBody::Redeem { points: 5, reward_ref: "coffee".into() },
            n => CommandBody::Earn { points: 10, reason: "order".into(), source_ref: format!("order-{n}"), order_amount: None },
        };
        let ctx = Context { tenant: &tenant, wallet: &wallet, now_ms: 1_767_225_600_000 + n as i64 * every_ms, program };
        if let Ok(Decision::Append(new)) = decide(&state, &Command::new(format!("k-{n}"), body), &ctx) {
            new.iter().for_each(|e| apply(&mut state, e));
            log.extend(new);
        }
        n += 1;
    }
    (log, state)
}

fn bench(c: &mut Criterion) {
    // A regular customer: 200 events in the last year, under the default (one-year) refund window.
    let (_, typical) = history(200, 365 * 86_400_000, &ProgramSettings::default());
    let bytes = format::encode(&typical);
    eprintln!(
        "typical wallet (200 events in a year: {} receipts, {} sources): snapshot of {} bytes",
        typical.receipt_count(),
        typical.source_count(),
        bytes.len()
    );
    let mut group = c.benchmark_group("snapshot_format");
    group.bench_function("encode typical wallet (200 events)", |b| b.iter(|| format::encode(std::hint::black_box(&typical))));
    group.bench_function("decode typical wallet (200 events)", |b| b.iter(|| format::decode(std::hint::black_box(&bytes)).unwrap()));
    group.finish();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path().join("log")).unwrap());
    let snapshots = Arc::new(SledSnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("big").unwrap());
    let stream = codec::wallet_stream(&key.tenant, &key.wallet);
    let (log, state) = history(100_000, LIFETIME_MS, &program());
    runtime.block_on(async {
        for (i, chunk) in log.chunks(256).enumerate() {
            let data = chunk.iter().map(|e| codec::encode(e, &EventMetadata::default())).collect();
            store.append(&stream, ExpectedVersion::Exact(i as u64 * 256), data).await.unwrap();
        }
        let snapshot = StoredSnapshot { version: state.version, bytes: format::encode(&state), saved_at_ms: 0 };
        eprintln!(
            "wallet of 100,000 events over five years: {} receipts, {} sources, snapshot of {} bytes",
            state.receipt_count(),
            state.source_count(),
            snapshot.bytes.len()
        );
        snapshots.save(&stream, snapshot).await.unwrap();
    });

    let activate = |port: Arc<dyn Snapshots>, iters: u64| {
        runtime.block_on(async {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let programs = Arc::new(StaticPrograms::open(program()));
                let clock = Arc::new(ManualClock::new(0));
                let registry =
                    WalletRegistry::start_with_snapshots(RegistryConfig::default(), Arc::clone(&store), programs, clock, Arc::clone(&port))
                        .await
                        .unwrap();
                let started = Instant::now();
                let summary = registry.summary(&key).await.unwrap();
                total += started.elapsed();
                assert_eq!(summary.version, 100_000);
                registry.shutdown().await;
            }
            total
        })
    };
    let mut group = c.benchmark_group("activation_100k_events");
    group.sample_size(10);
    let policy = SnapshotPolicy { every_events: u64::MAX, on_passivation: false, keep_last: 2 };
    let with: Arc<dyn Snapshots> = Arc::new(Snapshotter::new(snapshots.clone(), policy));
    group.bench_function("with snapshot (sled)", |b| b.iter_custom(|iters| activate(Arc::clone(&with), iters)));
    group.bench_function("without snapshot (full replay)", |b| b.iter_custom(|iters| activate(Arc::new(NoSnapshots), iters)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
