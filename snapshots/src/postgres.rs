//! The PostgreSQL snapshot store, for deployments whose log is shared by several nodes. The schema is
//! versioned with refinery (`migrations/`) and applied on connect; connections come from a pool.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tally_engine::store::StreamId;

use crate::{SnapshotStats, SnapshotStore, SnapshotStoreError, StoredSnapshot};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connections in the pool.
const POOL_SIZE_MAX: usize = 8;

#[derive(Debug, Clone)]
pub struct PostgresSnapshotStore {
    pool: Pool,
}

fn version_i64(version: u64) -> Result<i64, SnapshotStoreError> {
    i64::try_from(version).map_err(|_| SnapshotStoreError::Malformed(format!("version {version} exceeds i64")))
}

impl PostgresSnapshotStore {
    /// Connects (`postgres://...` URL or `host=... user=...` string) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, SnapshotStoreError> {
        let connection = tally_engine::store::pg_tls::pg_connection(url).map_err(SnapshotStoreError::Malformed)?;
        let manager = Manager::from_config(connection.config, connection.tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(POOL_SIZE_MAX).build().map_err(|e| SnapshotStoreError::Malformed(e.to_string()))?;
        let mut client = pool.get().await?;
        embedded::migrations::runner()
            .set_migration_table_name("tally_snapshot_migrations")
            .run_async(&mut **client)
            .await
            .map_err(|e| SnapshotStoreError::Migration(e.to_string()))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn save(&self, stream: &StreamId, snapshot: StoredSnapshot) -> Result<(), SnapshotStoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO wallet_snapshots (stream_id, version, saved_at_ms, bytes) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (stream_id, version) DO UPDATE SET saved_at_ms = EXCLUDED.saved_at_ms, bytes = EXCLUDED.bytes",
                &[&stream.as_str(), &version_i64(snapshot.version)?, &snapshot.saved_at_ms, &snapshot.bytes],
            )
            .await?;
        Ok(())
    }

    async fn latest(&self, stream: &StreamId) -> Result<Option<StoredSnapshot>, SnapshotStoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version, saved_at_ms, bytes FROM wallet_snapshots WHERE stream_id = $1 ORDER BY version DESC LIMIT 1",
                &[&stream.as_str()],
            )
            .await?;
        row.map(|row| {
            let version: i64 = row.get(0);
            let version = u64::try_from(version).map_err(|_| SnapshotStoreError::Malformed(format!("negative version {version}")))?;
            Ok(StoredSnapshot { version, saved_at_ms: row.get(1), bytes: row.get(2) })
        })
        .transpose()
    }

    async fn keep_last(&self, stream: &StreamId, keep: usize) -> Result<u64, SnapshotStoreError> {
        let client = self.pool.get().await?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let deleted = client
            .execute(
                "DELETE FROM wallet_snapshots WHERE stream_id = $1 AND version NOT IN
                   (SELECT version FROM wallet_snapshots WHERE stream_id = $1 ORDER BY version DESC LIMIT $2)",
                &[&stream.as_str(), &keep],
            )
            .await?;
        Ok(deleted)
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), SnapshotStoreError> {
        let client = self.pool.get().await?;
        client.execute("DELETE FROM wallet_snapshots WHERE stream_id = $1", &[&stream.as_str()]).await?;
        Ok(())
    }

    async fn stats(&self) -> Result<SnapshotStats, SnapshotStoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT stream_id), coalesce(sum(octet_length(bytes)), 0)::BIGINT, min(saved_at_ms)
                 FROM wallet_snapshots",
                &[],
            )
            .await?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(SnapshotStats { snapshots: count(0), streams: count(1), bytes: count(2), oldest_saved_at_ms: row.get(3) })
    }

    async fn purge(&self) -> Result<u64, SnapshotStoreError> {
        let client = self.pool.get().await?;
        Ok(client.execute("DELETE FROM wallet_snapshots", &[]).await?)
    }
}
