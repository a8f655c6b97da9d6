//! The conformance suite every `SnapshotStore` backend must pass.

use std::future::Future;
use std::sync::Arc;

use tally_engine::store::StreamId;

use crate::{SnapshotStore, StoredSnapshot};

fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("valid stream id")
}

fn snapshot(version: u64, saved_at_ms: i64) -> StoredSnapshot {
    StoredSnapshot { version, bytes: format!("state@{version}").into_bytes(), saved_at_ms }
}

pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SnapshotStore>>,
{
    latest_is_the_highest_version(make().await).await;
    keep_last_and_delete(make().await).await;
    streams_do_not_leak_into_each_other(make().await).await;
    stats_and_purge(make().await).await;
}

pub async fn latest_is_the_highest_version(store: Arc<dyn SnapshotStore>) {
    let s = stream("t/wallet/a");
    assert_eq!(store.latest(&s).await.unwrap(), None);
    for version in [5, 300, 20, 256] {
        store.save(&s, snapshot(version, 1)).await.unwrap();
    }
    assert_eq!(store.latest(&s).await.unwrap(), Some(snapshot(300, 1)), "by version, not by insertion or byte order");
    store.save(&s, snapshot(300, 2)).await.unwrap();
    assert_eq!(store.latest(&s).await.unwrap().unwrap().saved_at_ms, 2, "same version replaces");
}

pub async fn keep_last_and_delete(store: Arc<dyn SnapshotStore>) {
    let s = stream("t/wallet/k");
    for version in 1..=5 {
        store.save(&s, snapshot(version * 10, 1)).await.unwrap();
    }
    assert_eq!(store.keep_last(&s, 2).await.unwrap(), 3);
    assert_eq!(store.latest(&s).await.unwrap().unwrap().version, 50);
    assert_eq!(store.stats().await.unwrap().snapshots, 2);
    store.delete(&s).await.unwrap();
    assert_eq!(store.latest(&s).await.unwrap(), None);
    assert_eq!(store.keep_last(&stream("t/wallet/none"), 2).await.unwrap(), 0);
}

pub async fn streams_do_not_leak_into_each_other(store: Arc<dyn SnapshotStore>) {
    // "t/wallet/a" is a prefix of "t/wallet/ab": keys must keep them apart.
    store.save(&stream("t/wallet/ab"), snapshot(9, 1)).await.unwrap();
    store.save(&stream("t/wallet/a"), snapshot(1, 1)).await.unwrap();
    assert_eq!(store.latest(&stream("t/wallet/a")).await.unwrap().unwrap().version, 1);
    store.delete(&stream("t/wallet/a")).await.unwrap();
    assert_eq!(store.latest(&stream("t/wallet/ab")).await.unwrap().unwrap().version, 9);
}

pub async fn stats_and_purge(store: Arc<dyn SnapshotStore>) {
    store.save(&stream("t/wallet/x"), snapshot(1, 500)).await.unwrap();
    store.save(&stream("t/wallet/x"), snapshot(2, 700)).await.unwrap();
    store.save(&stream("t/wallet/y"), snapshot(1, 300)).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.snapshots, stats.streams, stats.oldest_saved_at_ms), (3, 2, Some(300)));
    assert_eq!(stats.bytes, ["state@1", "state@2", "state@1"].iter().map(|s| s.len() as u64).sum::<u64>());
    assert_eq!(store.purge().await.unwrap(), 3);
    assert_eq!(store.stats().await.unwrap().snapshots, 0);
    assert_eq!(store.latest(&stream("t/wallet/x")).await.unwrap(), None);
}
