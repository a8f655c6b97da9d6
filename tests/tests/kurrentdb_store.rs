//! The EventStoreDB / KurrentDB event store against a real server (`cargo test -p tally-tests --features
//! kurrentdb`): the shared conformance suite, each case on a log of its own (a fresh stream prefix), and
//! two stores — two nodes — appending to one stream.
//!
//! The server comes from `TALLY_TEST_KURRENTDB_URL` (e.g. `kurrentdb://127.0.0.1:2113?tls=false`, a
//! server started with `--insecure`); without it these tests fail and say so, never pass silently.
#![cfg(feature = "kurrentdb")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tally_engine::store::conformance::{self, event, stream};
use tally_engine::store::{EventStore, ExpectedVersion, KurrentStore, StoreError};

fn server() -> String {
    std::env::var("TALLY_TEST_KURRENTDB_URL").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_KURRENTDB_URL is not set: the KurrentDB conformance suite needs a server, e.g. \
             `docker run -p 2113:2113 docker.kurrent.io/kurrent-latest/kurrentdb --insecure` and \
             TALLY_TEST_KURRENTDB_URL=kurrentdb://127.0.0.1:2113?tls=false"
        )
    })
}

/// A prefix no earlier run used, and none a prefix of another's: a fresh, empty log on a shared server.
fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("tallytest{}x{}-", uuid::Uuid::new_v4().simple(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kurrentdb_store_conforms() {
    let url = server();
    conformance::run_without_chains(|| async {
        Arc::new(KurrentStore::connect_with_prefix(&url, &fresh_prefix()).await.unwrap()) as Arc<dyn EventStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_stream_never_both_win() {
    let url = server();
    let prefix = fresh_prefix();
    let (a, b) =
        (KurrentStore::connect_with_prefix(&url, &prefix).await.unwrap(), KurrentStore::connect_with_prefix(&url, &prefix).await.unwrap());
    let s = stream("t/wallet/shared");
    a.append(&s, ExpectedVersion::Exact(0), vec![event("a-1")]).await.unwrap();
    let lost = b.append(&s, ExpectedVersion::Exact(0), vec![event("b-1")]).await.unwrap_err();
    assert!(matches!(lost, StoreError::VersionConflict { expected: 0, actual: 1, .. }), "{lost}");
    let won = b.append(&s, ExpectedVersion::Exact(1), vec![event("b-2")]).await.unwrap();
    assert_eq!((won.first_version, won.first_position), (2, 2));
    // Both nodes number the log alike.
    let (from_a, from_b) = (a.read_all(1, 10).await.unwrap(), b.read_all(1, 10).await.unwrap());
    assert_eq!(from_a.len(), 2);
    assert_eq!(from_a, from_b);
    // A node started later numbers it the same way before it serves.
    let c = KurrentStore::connect_with_prefix(&url, &prefix).await.unwrap();
    assert_eq!(*c.head().borrow(), 2);
    assert_eq!(c.read_all(1, 10).await.unwrap(), from_a);
}
