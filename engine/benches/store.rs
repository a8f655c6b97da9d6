//! Embedded log: durable append throughput with 1, 16 and 256 concurrent writers (target ≥ 200k
//! events/s at 256), and global-log reads.

// The allocator the `tally` binary uses, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_engine::store::{EmbeddedStore, EventData, EventMetadata, EventStore, ExpectedVersion, StreamId};

fn event(n: u64) -> EventData {
    EventData {
        event_type: "tally.v1.PointsEarned".into(),
        schema_version: 1,
        recorded_at_ms: 1_767_225_600_000,
        idempotency_key: format!("order-{n}"),
        // As new events carry it: 0 in the old field and a 16-byte digest.
        command_fingerprint: 0,
        command_digest: Some(std::array::from_fn(|i| (n >> (i % 8 * 8)) as u8)),
        metadata: EventMetadata::default(),
        payload: vec![0x2a; 48], // a typical PointsEarned is ~30-60 bytes
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());

    let mut group = c.benchmark_group("embedded_append");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(8));
    for writers in [1u64, 16, 256] {
        group.bench_function(format!("{writers} writers, 1 event per append, fsync'd"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let per_writer = iters.div_ceil(writers);
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|w| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let stream = StreamId::new(&format!("bench/wallet/{w}-{}", rand_suffix())).unwrap();
                                for n in 0..per_writer {
                                    store.append(&stream, ExpectedVersion::Exact(n), vec![event(n)]).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    started.elapsed().mul_f64(iters as f64 / (per_writer * writers) as f64)
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("embedded_read");
    group.throughput(Throughput::Elements(1000));
    let head = *store.head().borrow();
    group.bench_function("read_all 1000 events", |b| {
        let mut from = 1;
        b.iter(|| {
            runtime.block_on(async {
                if from + 1000 > head {
                    from = 1;
                }
                let events = store.read_all(from, 1000).await.unwrap();
                from += events.len() as u64;
            })
        })
    });
    group.finish();
}

/// Streams must be fresh for every criterion batch.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

criterion_group!(benches, bench);
criterion_main!(benches);
