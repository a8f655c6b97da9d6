//! The engine's `Snapshots` port over a `SnapshotStore`: when to snapshot, how many to keep, and never
//! trusting a snapshot that does not check out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tally_engine::actors::Snapshots;
use tally_engine::domain::WalletState;
use tally_engine::store::StreamId;
use tokio::sync::watch;

use crate::{SnapshotStore, StoredSnapshot, format};

/// When snapshots are taken and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once this many events were applied since the last one.
    pub every_events: u64,
    /// Also take one when a wallet that changed since its last snapshot is passivated.
    pub on_passivation: bool,
    /// Snapshots kept per wallet (older ones are deleted after each write).
    pub keep_last: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self { every_events: 500, on_passivation: true, keep_last: 2 }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct SnapshotCounters {
    pub loaded: AtomicU64,
    pub saved: AtomicU64,
    /// Snapshots ignored because they failed their checksum, had an unknown format or did not decode.
    pub rejected: AtomicU64,
    /// Reads or writes the store failed.
    pub store_errors: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct Snapshotter {
    store: Arc<dyn SnapshotStore>,
    policy: SnapshotPolicy,
    counters: Arc<SnapshotCounters>,
    /// Number of snapshot writes finished (saved or failed), for whoever needs to wait for them.
    written: Arc<watch::Sender<u64>>,
}

impl Snapshotter {
    pub fn new(store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self {
        Self { store, policy, counters: Arc::default(), written: Arc::new(watch::Sender::new(0)) }
    }

    pub fn counters(&self) -> &SnapshotCounters {
        &self.counters
    }

    /// Watches the number of background writes finished (tests, orderly shutdown).
    pub fn writes_finished(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl Snapshots for Snapshotter {
    async fn latest(&self, stream: &StreamId) -> Option<WalletState> {
        let stored = match self.store.latest(stream).await {
            Ok(stored) => stored?,
            Err(error) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tally_snapshot_store_errors_total", "op" => "read").increment(1);
                tracing::warn!(%stream, %error, "cannot read snapshot; replaying the stream");
                return None;
            }
        };
        match format::decode(&stored.bytes) {
            Ok(state) if state.version == stored.version => {
                self.counters.loaded.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tally_snapshots_loaded_total").increment(1);
                Some(state)
            }
            Ok(state) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tally_snapshots_rejected_total", "reason" => "wrong_version").increment(1);
                tracing::warn!(%stream, key = stored.version, state = state.version, "snapshot stored under the wrong version; replaying");
                None
            }
            Err(error) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tally_snapshots_rejected_total", "reason" => "unreadable").increment(1);
                tracing::warn!(%stream, version = stored.version, %error, "ignoring unusable snapshot; replaying the stream");
                None
            }
        }
    }

    fn due(&self, since: u64, passivating: bool) -> bool {
        since >= self.policy.every_events || (passivating && self.policy.on_passivation)
    }

    fn save(&self, stream: &StreamId, state: &WalletState) {
        let snapshot = StoredSnapshot { version: state.version, bytes: format::encode(state), saved_at_ms: now_ms() };
        let (store, counters, stream, keep) = (Arc::clone(&self.store), Arc::clone(&self.counters), stream.clone(), self.policy.keep_last);
        let written = Arc::clone(&self.written);
        tokio::spawn(async move {
            let result = async {
                store.save(&stream, snapshot).await?;
                store.keep_last(&stream, keep.max(1)).await
            }
            .await;
            match result {
                Ok(_) => {
                    metrics::counter!("tally_snapshots_saved_total").increment(1);
                    counters.saved.fetch_add(1, Ordering::Relaxed)
                }
                Err(error) => {
                    tracing::warn!(%stream, %error, "snapshot write failed; the wallet still recovers from the log");
                    metrics::counter!("tally_snapshot_store_errors_total", "op" => "write").increment(1);
                    counters.store_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
            written.send_modify(|n| *n += 1);
        });
    }
}
