//! Every backend runs the same conformance suite.

use std::sync::Arc;

use tally_engine::store::{EmbeddedStore, EventStore, InMemoryStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_conforms() {
    conformance::run_all(|| async { Arc::new(InMemoryStore::default()) as Arc<dyn EventStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let root = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let dir = root.path().join(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string());
        async move { Arc::new(EmbeddedStore::open(dir).unwrap()) as Arc<dyn EventStore> }
    })
    .await;
}
