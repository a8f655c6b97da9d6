//! Every snapshot store runs the same suite.

use std::sync::Arc;

use tally_snapshots::{InMemorySnapshotStore, SledSnapshotStore, SnapshotStore, conformance};

#[tokio::test]
async fn in_memory_store_conforms() {
    conformance::run_all(|| async { Arc::new(InMemorySnapshotStore::default()) as Arc<dyn SnapshotStore> }).await;
}

#[tokio::test]
async fn sled_store_conforms() {
    let root = tempfile::tempdir().unwrap();
    let next = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let dir = root.path().join(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string());
        async move { Arc::new(SledSnapshotStore::open(dir).unwrap()) as Arc<dyn SnapshotStore> }
    })
    .await;
}

#[tokio::test]
async fn sled_snapshots_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stream = tally_engine::store::StreamId::new("t/wallet/a").unwrap();
    {
        let store = SledSnapshotStore::open(dir.path()).unwrap();
        let snapshot = tally_snapshots::StoredSnapshot { version: 7, bytes: vec![1, 2, 3], saved_at_ms: 9 };
        store.save(&stream, snapshot).await.unwrap();
        store.flush().await.unwrap();
    }
    let store = SledSnapshotStore::open(dir.path()).unwrap();
    assert_eq!(store.latest(&stream).await.unwrap().unwrap().bytes, vec![1, 2, 3]);
}

#[tokio::test]
async fn postgres_store_conforms() {
    let databases = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| async {
        let database = tally_tests::TestDatabase::create().await;
        let store = tally_snapshots::PostgresSnapshotStore::connect(&database.url).await.unwrap();
        databases.lock().unwrap().push(database);
        Arc::new(store) as Arc<dyn SnapshotStore>
    })
    .await;
}

#[tokio::test]
async fn postgres_migrations_apply_once() {
    let database = tally_tests::TestDatabase::create().await;
    let stream = tally_engine::store::StreamId::new("t/wallet/a").unwrap();
    let first = tally_snapshots::PostgresSnapshotStore::connect(&database.url).await.unwrap();
    first.save(&stream, tally_snapshots::StoredSnapshot { version: 3, bytes: vec![9], saved_at_ms: 1 }).await.unwrap();
    // Connecting again (another node, a restart) finds the schema in place and the data intact.
    let second = tally_snapshots::PostgresSnapshotStore::connect(&database.url).await.unwrap();
    assert_eq!(second.latest(&stream).await.unwrap().unwrap().bytes, vec![9]);
}
