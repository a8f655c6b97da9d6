//! PostgreSQL event store: durable appends from many concurrent wallets (issue target ≥ 30k events/s)
//! and global-log reads for followers (target ≥ 300k events/s), against the local server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally_engine::store::conformance::{event, stream};
use tally_engine::store::{EventStore, ExpectedVersion, PostgresStore};
use tally_tests::TestDatabase;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (database, store) = runtime.block_on(async {
        let database = TestDatabase::create().await;
        let store = Arc::new(PostgresStore::connect(&database.url).await.unwrap());
        (database, store)
    });
    let mut group = c.benchmark_group("postgres_append");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(8)).sample_size(10);
    let mut round = 0;
    for writers in [16u64, 256] {
        group.bench_function(format!("{writers} wallets appending, 1 event each, committed"), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let round = round;
                runtime.block_on(async {
                    let per_writer = iters.div_ceil(writers);
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..writers)
                        .map(|w| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                let s = stream(&format!("bench/wallet/{round}-{w}"));
                                for n in 0..per_writer {
                                    store.append(&s, ExpectedVersion::Exact(n), vec![event(&n.to_string())]).await.unwrap();
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
    let mut group = c.benchmark_group("postgres_read_all");
    group.throughput(Throughput::Elements(1000)).sample_size(20);
    let head = *store.head().borrow();
    group.bench_function("read_all 1000 events", |b| {
        let mut from = 1;
        b.iter(|| {
            runtime.block_on(async {
                if from + 1000 > head {
                    from = 1;
                }
                from += store.read_all(from, 1000).await.unwrap().len() as u64;
            })
        })
    });
    group.finish();
    drop(store);
    drop(database);
}

criterion_group!(benches, bench);
criterion_main!(benches);
