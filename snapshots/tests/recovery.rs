//! Wallet actors recovering through snapshots: snapshot + tail, and full replay whenever a snapshot is
//! damaged, from the future, or ahead of the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tally_engine::actors::{CommandMeta, RegistryConfig, StaticPrograms, WalletKey, WalletRegistry, WalletSummary};
use tally_engine::clock::ManualClock;
use tally_engine::codec::wallet_stream;
use tally_engine::domain::WalletState;
use tally_engine::domain::{Command, CommandBody, ProgramSettings, TenantId, WalletId};
use tally_engine::store::InMemoryStore;
use tally_snapshots::format::{self, FORMAT_VERSION};
use tally_snapshots::{InMemorySnapshotStore, SnapshotPolicy, SnapshotStore, Snapshotter, StoredSnapshot};

struct World {
    registry: WalletRegistry,
    snapshots: Arc<InMemorySnapshotStore>,
    snapshotter: Snapshotter,
    key: WalletKey,
}

async fn world() -> World {
    let snapshots = Arc::new(InMemorySnapshotStore::default());
    let snapshotter = Snapshotter::new(snapshots.clone(), SnapshotPolicy { every_events: 10, on_passivation: true, keep_last: 2 });
    // Idle time 0 and no timer: every wallet leaves memory exactly when the test calls sweep().
    let config = RegistryConfig { idle_ms: 0, sweep_interval_ms: 3_600_000, ..RegistryConfig::default() };
    let programs = Arc::new(StaticPrograms::open(ProgramSettings::default()));
    let registry = WalletRegistry::start_with_snapshots(
        config,
        InMemoryStore::new(),
        programs,
        Arc::new(ManualClock::new(1_000)),
        Arc::new(snapshotter.clone()),
    )
    .await
    .unwrap();
    let key = WalletKey::new(TenantId::parse("acme").unwrap(), WalletId::parse("c-1").unwrap());
    World { registry, snapshots, snapshotter, key }
}

impl World {
    async fn earn_many(&self, from: usize, count: usize) -> WalletSummary {
        for n in from..from + count {
            let body = CommandBody::Earn { points: 10, reason: "order".into(), source_ref: format!("o-{n}"), order_amount: None };
            self.registry.execute(&self.key, Command::new(format!("o-{n}"), body), CommandMeta::default()).await.unwrap();
        }
        self.registry.summary(&self.key).await.unwrap()
    }

    /// Passivates the wallet and waits until every snapshot write it caused has finished.
    async fn passivate(&self, writes: u64) {
        self.registry.sweep().await;
        let mut finished = self.snapshotter.writes_finished();
        finished.wait_for(|n| *n >= writes).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_recovers_from_its_snapshot_and_the_tail() {
    let w = world().await;
    w.registry.execute(&w.key, Command::new("enroll", CommandBody::enroll("crm")), CommandMeta::default()).await.unwrap();
    let before = w.earn_many(0, 24).await; // versions 2..=25: snapshots at 10 and 20, then 25 on passivation
    w.passivate(3).await;
    assert_eq!(w.snapshotter.counters().saved.load(Ordering::Relaxed), 3);
    assert_eq!(w.snapshots.stats_blocking().snapshots, 2, "keeps the last two");

    let after = w.registry.summary(&w.key).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(w.snapshotter.counters().loaded.load(Ordering::Relaxed), 1, "activation used the snapshot");
    // New events after the snapshot are replayed on top of it next time.
    let more = w.earn_many(100, 3).await;
    w.passivate(4).await;
    assert_eq!(w.registry.summary(&w.key).await.unwrap(), more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_the_log_is_not_trusted() {
    let w = world().await;
    w.registry.execute(&w.key, Command::new("enroll", CommandBody::enroll("crm")), CommandMeta::default()).await.unwrap();
    let before = w.earn_many(0, 2).await;
    w.passivate(1).await;
    // A snapshot claiming 1,000 events, e.g. left over from a log that was since replaced.
    let mut bogus = WalletState::default();
    (bogus.version, bogus.balance) = (1_000, 999_999);
    let stored = StoredSnapshot { version: 1_000, bytes: format::encode(&bogus), saved_at_ms: 0 };
    w.snapshots.save(&wallet_stream(&w.key.tenant, &w.key.wallet), stored).await.unwrap();
    assert_eq!(w.registry.summary(&w.key).await.unwrap(), before);
}

async fn damaged(change: impl FnOnce(&mut Vec<u8>)) {
    let w = world().await;
    w.registry.execute(&w.key, Command::new("enroll", CommandBody::enroll("crm")), CommandMeta::default()).await.unwrap();
    let before = w.earn_many(0, 4).await;
    w.passivate(1).await;
    w.snapshots.tamper(&wallet_stream(&w.key.tenant, &w.key.wallet), change);
    let after = w.registry.summary(&w.key).await.unwrap();
    assert_eq!(after, before, "recovered by full replay");
    let counters = w.snapshotter.counters();
    assert_eq!((counters.loaded.load(Ordering::Relaxed), counters.rejected.load(Ordering::Relaxed)), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_means_full_replay() {
    damaged(|bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_means_full_replay() {
    damaged(|bytes| bytes.truncate(bytes.len() - 7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_a_future_format_means_full_replay() {
    damaged(|bytes| bytes[..2].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_format_4_means_full_replay() {
    // What a node upgraded past format 4 (receipts with a 64-bit fingerprint) finds in its store: the
    // format in the header is enough to refuse it, whatever the body.
    damaged(|bytes| bytes[..2].copy_from_slice(&4u16.to_le_bytes())).await;
}
