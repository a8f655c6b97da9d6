//! The sled snapshot store, beside the embedded log. Keys are `stream id | 0x00 | version (big endian)`
//! so one stream's snapshots sort together by version; values are `saved_at_ms (i64 LE) | snapshot`.
//!
//! Writes are not flushed one by one: a snapshot lost in a crash is simply rebuilt from the log.

use std::path::Path;

use async_trait::async_trait;
use tally_engine::store::StreamId;

use crate::{SnapshotStats, SnapshotStore, SnapshotStoreError, StoredSnapshot};

#[derive(Debug, Clone)]
pub struct SledSnapshotStore {
    tree: sled::Tree,
    db: sled::Db,
}

fn prefix(stream: &StreamId) -> Vec<u8> {
    let mut key = stream.as_str().as_bytes().to_vec();
    key.push(0);
    key
}

fn key(stream: &StreamId, version: u64) -> Vec<u8> {
    let mut key = prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<StoredSnapshot, SnapshotStoreError> {
    let malformed = || SnapshotStoreError::Malformed(format!("entry {:?}", String::from_utf8_lossy(key)));
    let version = key.len().checked_sub(8).map(|at| &key[at..]).ok_or_else(malformed)?;
    let version = u64::from_be_bytes(version.try_into().map_err(|_| malformed())?);
    let saved_at = value.get(..8).ok_or_else(malformed)?;
    let saved_at_ms = i64::from_le_bytes(saved_at.try_into().map_err(|_| malformed())?);
    Ok(StoredSnapshot { version, bytes: value[8..].to_vec(), saved_at_ms })
}

impl SledSnapshotStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SnapshotStoreError> {
        let db = sled::open(dir)?;
        let tree = db.open_tree("wallet-snapshots")?;
        Ok(Self { tree, db })
    }

    /// Writes buffered changes to disk (at shutdown).
    pub async fn flush(&self) -> Result<(), SnapshotStoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for SledSnapshotStore {
    async fn save(&self, stream: &StreamId, snapshot: StoredSnapshot) -> Result<(), SnapshotStoreError> {
        let mut value = Vec::with_capacity(8 + snapshot.bytes.len());
        value.extend_from_slice(&snapshot.saved_at_ms.to_le_bytes());
        value.extend_from_slice(&snapshot.bytes);
        self.tree.insert(key(stream, snapshot.version), value)?;
        Ok(())
    }

    async fn latest(&self, stream: &StreamId) -> Result<Option<StoredSnapshot>, SnapshotStoreError> {
        match self.tree.scan_prefix(prefix(stream)).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some(decode_entry(&key, &value)?))
            }
            None => Ok(None),
        }
    }

    async fn keep_last(&self, stream: &StreamId, keep: usize) -> Result<u64, SnapshotStoreError> {
        let keys: Vec<sled::IVec> = self.tree.scan_prefix(prefix(stream)).keys().collect::<Result<_, _>>()?;
        let excess = keys.len().saturating_sub(keep);
        for key in &keys[..excess] {
            self.tree.remove(key)?;
        }
        Ok(excess as u64)
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), SnapshotStoreError> {
        for key in self.tree.scan_prefix(prefix(stream)).keys() {
            self.tree.remove(key?)?;
        }
        Ok(())
    }

    async fn stats(&self) -> Result<SnapshotStats, SnapshotStoreError> {
        let mut stats = SnapshotStats::default();
        let mut last_stream: Option<Vec<u8>> = None;
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            let snapshot = decode_entry(&key, &value)?;
            let stream = key[..key.len() - 9].to_vec();
            if last_stream.as_ref() != Some(&stream) {
                stats.streams += 1;
                last_stream = Some(stream);
            }
            stats.snapshots += 1;
            stats.bytes += snapshot.bytes.len() as u64;
            stats.oldest_saved_at_ms = Some(stats.oldest_saved_at_ms.map_or(snapshot.saved_at_ms, |t| t.min(snapshot.saved_at_ms)));
        }
        Ok(stats)
    }

    async fn purge(&self) -> Result<u64, SnapshotStoreError> {
        let count = self.tree.len() as u64;
        self.tree.clear()?;
        self.db.flush_async().await?;
        Ok(count)
    }
}
