//! In-memory snapshot store: the test double for our own boundary.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use tally_engine::store::StreamId;

use crate::{SnapshotStats, SnapshotStore, SnapshotStoreError, StoredSnapshot};

#[derive(Debug, Default)]
pub struct InMemorySnapshotStore {
    streams: Mutex<HashMap<StreamId, BTreeMap<u64, StoredSnapshot>>>,
}

impl InMemorySnapshotStore {
    /// Snapshot count, for assertions outside async code.
    pub fn stats_blocking(&self) -> SnapshotStats {
        let streams = self.streams.lock();
        SnapshotStats {
            snapshots: streams.values().map(|s| s.len() as u64).sum(),
            streams: streams.values().filter(|s| !s.is_empty()).count() as u64,
            bytes: streams.values().flat_map(BTreeMap::values).map(|s| s.bytes.len() as u64).sum(),
            oldest_saved_at_ms: streams.values().flat_map(BTreeMap::values).map(|s| s.saved_at_ms).min(),
        }
    }

    /// Replaces the bytes of the latest snapshot of `stream` (to test corruption handling).
    pub fn tamper(&self, stream: &StreamId, change: impl FnOnce(&mut Vec<u8>)) {
        if let Some((_, snapshot)) = self.streams.lock().get_mut(stream).and_then(|s| s.iter_mut().next_back()) {
            change(&mut snapshot.bytes);
        }
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn save(&self, stream: &StreamId, snapshot: StoredSnapshot) -> Result<(), SnapshotStoreError> {
        self.streams.lock().entry(stream.clone()).or_default().insert(snapshot.version, snapshot);
        Ok(())
    }

    async fn latest(&self, stream: &StreamId) -> Result<Option<StoredSnapshot>, SnapshotStoreError> {
        Ok(self.streams.lock().get(stream).and_then(|s| s.values().next_back().cloned()))
    }

    async fn keep_last(&self, stream: &StreamId, keep: usize) -> Result<u64, SnapshotStoreError> {
        let mut streams = self.streams.lock();
        let Some(snapshots) = streams.get_mut(stream) else { return Ok(0) };
        let excess = snapshots.len().saturating_sub(keep);
        let doomed: Vec<u64> = snapshots.keys().take(excess).copied().collect();
        for version in &doomed {
            snapshots.remove(version);
        }
        Ok(doomed.len() as u64)
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), SnapshotStoreError> {
        self.streams.lock().remove(stream);
        Ok(())
    }

    async fn stats(&self) -> Result<SnapshotStats, SnapshotStoreError> {
        Ok(self.stats_blocking())
    }

    async fn purge(&self) -> Result<u64, SnapshotStoreError> {
        let mut streams = self.streams.lock();
        let count = streams.values().map(|s| s.len() as u64).sum();
        streams.clear();
        Ok(count)
    }
}
