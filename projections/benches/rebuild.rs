//! Rebuild throughput: replaying a whole embedded log into a fresh generation of each read model, as
//! `tally projections rebuild` does (read, decode, apply in batches with their checkpoints).
//!
//! `cargo bench -p tally-projections --bench rebuild`; `TALLY_BENCH_EVENTS` sets the log size
//! (default 200,000). The PostgreSQL part uses `TALLY_TEST_PG_URL` like the tests.

// The allocator the `tally` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_engine::store::{EmbeddedStore, EventStore};
use tally_projections::movement::decode_batch;
use tally_projections::replay::Replay;
use tally_projections::{PostgresReadModel, ReadModel, SledReadModel};
use tally_tests::TestDatabase;

/// Events per batch, as `RunnerOptions::rebuild_batch_size` (override with `TALLY_BENCH_BATCH`).
fn batch_events() -> usize {
    std::env::var("TALLY_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tally_projections::RunnerOptions::default().rebuild_batch_size)
}
const WRITERS: usize = 64;

/// Fills an embedded log with about `events` events from 64 concurrent writers (group commit).
async fn fill(store: &Arc<dyn EventStore>, events: u64) {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut workload = common::Workload::named(w as u64, 150, &format!("t{w}"));
                while *store.head().borrow() < events {
                    workload.run(&*store, 50).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Replays the whole log into a new generation as a rebuild does (the next batch read and decoded while
/// one is applied) and promotes it (PostgreSQL builds the indexes it put off then); returns the time
/// that took. The next round's promotion drops it.
async fn replay(store: &Arc<dyn EventStore>, model: &dyn ReadModel) -> Duration {
    let generation = model.create_generation().await.unwrap();
    let started = Instant::now();
    let mut checkpoint = 0;
    let mut replay = Replay::spawn(Arc::clone(store), 0, batch_events());
    while let Some(batch) = replay.next().await {
        let batch = batch.unwrap();
        model.apply(generation, checkpoint, batch.through, batch.movements).await.unwrap();
        checkpoint = batch.through;
    }
    model.promote(generation).await.unwrap();
    started.elapsed()
}

/// The part every rebuild shares: reading and decoding the log.
async fn read_only(store: &Arc<dyn EventStore>) -> Duration {
    let started = Instant::now();
    let mut checkpoint = 0;
    loop {
        let events = store.read_all(checkpoint + 1, batch_events()).await.unwrap();
        let Some(through) = events.last().map(|e| e.global_position) else { break };
        std::hint::black_box(decode_batch(events).unwrap());
        checkpoint = through;
    }
    started.elapsed()
}

/// The ledger export of tenant `acme` over the whole log (half the log's wallets); answers its rows.
async fn export(store: &Arc<dyn EventStore>) -> (Duration, u64) {
    let started = Instant::now();
    let mut export = tally_projections::export::LedgerExport::new(store.as_ref(), "acme", i64::MIN, i64::MAX);
    let mut rows = 0;
    while let Some(batch) = export.next_rows().await.unwrap() {
        rows += batch.len() as u64;
        std::hint::black_box(batch);
    }
    std::hint::black_box(export.reconciliation());
    (started.elapsed(), rows)
}

fn rebuild(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let events: u64 = std::env::var("TALLY_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::open(dir.path().join("log")).unwrap());
    runtime.block_on(fill(&store, events));
    let events = *store.head().borrow();
    let sled = SledReadModel::open(dir.path().join("read-models")).unwrap();
    let db = runtime.block_on(TestDatabase::create());
    let postgres = runtime.block_on(PostgresReadModel::connect(&db.url)).unwrap();

    let rows = runtime.block_on(export(&store)).1;
    let mut export_group = c.benchmark_group("ledger_export");
    export_group.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(rows));
    export_group.bench_function(format!("tenant_of_{events}_events/{rows}_rows"), |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| runtime.block_on(export(&store)).0).sum())
    });
    export_group.finish();
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).throughput(Throughput::Elements(events));
    group.bench_function(format!("read_and_decode_only/{events}_events"), |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| runtime.block_on(read_only(&store))).sum())
    });
    group.bench_function(format!("sled/{events}_events"), |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| runtime.block_on(replay(&store, &sled))).sum())
    });
    group.bench_function(format!("postgres/{events}_events"), |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| runtime.block_on(replay(&store, &postgres))).sum())
    });
    group.finish();
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
