//! Snapshots of wallet state, which bound recovery time: a wallet activates from its latest valid
//! snapshot plus the events after it instead of its whole history.
//!
//! - [`format`]: the encoding (postcard, leading format version, stream version, CRC-32C).
//! - [`SnapshotStore`]: where encoded snapshots live; [`SledSnapshotStore`] beside the embedded log,
//!   [`PostgresSnapshotStore`] for multi-node deployments, [`InMemorySnapshotStore`] for tests; one
//!   [`conformance`] suite for all.
//! - [`Snapshotter`]: the engine's `Snapshots` port: policy (every N events, on passivation, keep K),
//!   background writes, and refusal of anything doubtful.
//!
//! Architecture Invariant: snapshots are derived data. A snapshot that fails its checksum, has an unknown
//! format version or does not decode is ignored (warning + counter) and the wallet replays its stream.
//! Architecture Invariant: writing a snapshot never delays a command's reply.

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod format;
mod memory;
mod postgres;
mod sled_store;
mod snapshotter;

use async_trait::async_trait;
use tally_engine::store::StreamId;

pub use memory::InMemorySnapshotStore;
pub use postgres::PostgresSnapshotStore;
pub use sled_store::SledSnapshotStore;
pub use snapshotter::{SnapshotCounters, SnapshotPolicy, Snapshotter};

/// One stored snapshot: the stream version it covers and its encoded bytes (see [`format`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub version: u64,
    pub bytes: Vec<u8>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub saved_at_ms: i64,
}

/// What `tally snapshots stats` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub snapshots: u64,
    pub streams: u64,
    pub bytes: u64,
    /// Oldest snapshot's time, in milliseconds since the Unix epoch.
    pub oldest_saved_at_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    #[error("snapshot store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("postgres snapshot store error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres connection pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("snapshot schema migration failed: {0}")]
    Migration(String),
    #[error("snapshot store holds a malformed entry: {0}")]
    Malformed(String),
}

/// Where encoded snapshots live. Every backend passes [`conformance::run_all`].
#[async_trait]
pub trait SnapshotStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a snapshot of `stream` at `version` (replacing one at the same version).
    async fn save(&self, stream: &StreamId, snapshot: StoredSnapshot) -> Result<(), SnapshotStoreError>;
    /// The snapshot with the highest version, if any.
    async fn latest(&self, stream: &StreamId) -> Result<Option<StoredSnapshot>, SnapshotStoreError>;
    /// Deletes all but the `keep` newest snapshots of `stream`; returns how many were deleted.
    async fn keep_last(&self, stream: &StreamId, keep: usize) -> Result<u64, SnapshotStoreError>;
    /// Deletes every snapshot of `stream`.
    async fn delete(&self, stream: &StreamId) -> Result<(), SnapshotStoreError>;
    async fn stats(&self) -> Result<SnapshotStats, SnapshotStoreError>;
    /// Deletes every snapshot of every stream; returns how many. Wallets rebuild them lazily.
    async fn purge(&self) -> Result<u64, SnapshotStoreError>;
}
