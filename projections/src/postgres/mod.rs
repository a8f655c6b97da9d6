//! The reporting read model in PostgreSQL: `wallets`, `ledger_entries`, `program_daily_stats`,
//! `wallet_active_days` and `tenant_liability`, read by the `ReportingService` and by any BI tool.
//!
//! Each generation lives in its own schema `tally_read_g<N>`, created by the versioned migrations in
//! `migrations/generation` (refinery). Views in schema `tally_read` point at the live generation; a
//! promotion replaces them in one transaction, so readers switch atomically and never see a half-built
//! model. A batch is one transaction: the checkpoint row is locked first and must still hold the
//! position the batch starts from (so two runners on two nodes cannot both apply it), then the ledger
//! rows go in by binary COPY and the aggregates by `unnest` upserts, then the checkpoint moves.
//!
//! A rebuild's replay into a new generation, which only this process writes until it is promoted, is a
//! bulk load: the generation's secondary indexes are put off until the promotion, the wallets' rows are
//! kept in memory and written once by COPY in the promotion's transaction (with the liability), and
//! active days known to be new go in by COPY. Nobody reads a generation before it is promoted, and the
//! promotion is atomic, so readers never see the difference.
//!
//! Sums across wallets (daily figures, liability) are NUMERIC, so no number of wallets can overflow
//! them; a query reading one back that exceeds `i64` answers [`ProjectionError::OutOfRange`]. A batch
//! the database refuses for its data is applied again movement by movement, and the movements refused
//! are quarantined (`quarantined_events`), see [`crate::quarantine`].
//!
//! - `queries`: what the `ReportingService` reads (wallet pages, daily figures, liability).
//! - `batch`: one batch and its checkpoint in one transaction.
//! - `generations`: the schema per generation, creating, promoting and dropping one, and the locks
//!   that keep nodes from stepping on each other.
//! - `bulk`: a rebuild's replay as a bulk load (`Replaying`, COPY, deferred indexes).
//! - `wallets`: the `wallets` row, written once for the upsert, the COPY and the reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use time::{Date, OffsetDateTime};
use tokio_postgres::error::SqlState;

use self::batch::Mode;
use crate::movement::Movement;
use crate::quarantine::{QuarantineSummary, QuarantinedEvent, RECENT_QUARANTINED_MAX};
use crate::{Generation, ProjectionError, ReadModel};

mod batch;
mod bulk;
mod generations;
mod queries;
mod wallets;

pub use bulk::REPLAY_WALLETS_DEFAULT_MAX;
pub use queries::{ProgramStats, WalletCursor, WalletOrder, WalletPage, WalletRow};

/// The projection's name, in status output and metrics.
pub const NAME: &str = "reporting";
const POOL_SIZE_MAX: usize = 4;

/// The advisory lock a runner of this read model holds: (class, key), distinct from the generation locks.
const LEASE_LOCK_CLASS: i32 = 0x7461_6c6d;
const LEASE_LOCK_KEY: i32 = 1;
/// Longest wait for the lease's session to connect: a runner standing by is not held up by a server that
/// does not answer.
const LEASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A session and whether it holds the lease.
#[derive(Debug, Default)]
struct Lease {
    session: Option<tokio_postgres::Client>,
    held: bool,
}

#[derive(Debug, Clone)]
pub struct PostgresReadModel {
    pool: Pool,
    config: tally_engine::store::pg_tls::PgConnection,
    /// Generations this process is rebuilding (it alone writes them until they are promoted) and what
    /// it holds of them in memory.
    rebuilding: Arc<Mutex<HashMap<u64, bulk::Owned>>>,
    /// Per generation this process rebuilds, the session holding its rebuild lock.
    owners: Arc<Mutex<HashMap<u64, tokio_postgres::Client>>>,
    /// The session asking for (and, once granted, holding) the lease to run this read model.
    lease: Arc<tokio::sync::Mutex<Lease>>,
    replay_wallets_max: usize,
}

impl PostgresReadModel {
    /// Connects (`postgres://...` URL or `host=... user=...` string), applies pending migrations, and
    /// creates the first generation if there is none.
    pub async fn connect(url: &str) -> Result<Self, ProjectionError> {
        let connection = tally_engine::store::pg_tls::pg_connection(url).map_err(ProjectionError::Invalid)?;
        let manager = Manager::from_config(
            connection.config.clone(),
            connection.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager).max_size(POOL_SIZE_MAX).build().map_err(|e| ProjectionError::Invalid(e.to_string()))?;
        let model = Self {
            pool,
            config: connection,
            rebuilding: Arc::default(),
            owners: Arc::default(),
            lease: Arc::default(),
            replay_wallets_max: REPLAY_WALLETS_DEFAULT_MAX,
        };
        model.set_up().await?;
        Ok(model)
    }

    /// Sets how many wallets a rebuild's replay keeps in memory before it writes them out.
    pub fn with_replay_wallets_max(mut self, wallets: usize) -> Self {
        self.replay_wallets_max = wallets;
        self
    }

    /// A connection of its own, outside the pool, for schema changes (migrations set `search_path`).
    async fn admin(&self) -> Result<tokio_postgres::Client, ProjectionError> {
        let (client, connection) = self.config.config.connect(self.config.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "read-model admin connection closed");
            }
        });
        Ok(client)
    }
}

#[async_trait]
impl ReadModel for PostgresReadModel {
    /// A session-level advisory lock, on a session of its own whose server side probes the client every
    /// second after 5 s of silence and gives up after ~8 s (`tcp_keepalives_*`, `tcp_user_timeout`):
    /// released by PostgreSQL as soon as the holder's session ends — its process exits or is killed — or
    /// within ~8 s of its host going silent (power loss, a network cut). Session locks mean nothing behind
    /// a transaction-pooling PgBouncer: point `--reporting-db` at PostgreSQL itself.
    async fn lease(&self) -> Result<bool, ProjectionError> {
        let mut lease = self.lease.lock().await;
        if lease.session.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *lease = Lease::default();
            let mut config = self.config.config.clone();
            config
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(5))
                .keepalives_interval(Duration::from_secs(1))
                .keepalives_retries(3)
                .connect_timeout(LEASE_CONNECT_TIMEOUT)
                .options("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=8000");
            let (client, connection) = config.connect(self.config.tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "read-model lease session ended; another node may take the lease");
                }
            });
            lease.session = Some(client);
        }
        if !lease.held {
            let session = lease.session.as_ref().expect("connected above");
            lease.held = session.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LEASE_LOCK_CLASS, &LEASE_LOCK_KEY]).await?.get(0);
        }
        Ok(lease.held)
    }

    /// Ends the lease's session: PostgreSQL releases the lock with it.
    async fn end_lease(&self) {
        *self.lease.lock().await = Lease::default();
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn live(&self) -> Result<Generation, ProjectionError> {
        self.live_generation().await
    }

    async fn followed_log(&self) -> Result<Option<String>, ProjectionError> {
        let client = self.pool.get().await?;
        let row = client.query_opt("SELECT log_id FROM tally_read_log", &[]).await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn follow_log(&self, log_id: &str) -> Result<(), ProjectionError> {
        let client = self.pool.get().await?;
        let sql = "INSERT INTO tally_read_log (log_id) VALUES ($1) ON CONFLICT (one) DO UPDATE SET log_id = $1, bound_at = now()";
        client.execute(sql, &[&log_id]).await?;
        Ok(())
    }

    async fn apply(&self, generation: u64, from: u64, through: u64, movements: Arc<[Movement]>) -> Result<(), ProjectionError> {
        self.apply_batch(generation, from, through, &movements, Mode::Whole).await.map(drop).map_err(|e| no_such(e, generation))
    }

    async fn apply_isolated(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: Arc<[Movement]>,
        poisoned: Arc<[QuarantinedEvent]>,
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
        self.apply_batch(generation, from, through, &movements, Mode::Isolated(&poisoned)).await.map_err(|e| no_such(e, generation))
    }

    async fn quarantine(&self, generation: u64) -> Result<QuarantineSummary, ProjectionError> {
        let schema = schema(generation);
        let client = self.pool.get().await?;
        let count: i64 = client.query_one(&format!("SELECT count(*) FROM {schema}.quarantined_events"), &[]).await?.get(0);
        let recent = client
            .query(
                &format!("SELECT position, stream, event_type, reason FROM {schema}.quarantined_events ORDER BY position DESC LIMIT $1"),
                &[&int(RECENT_QUARANTINED_MAX as u64, "limit")?],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(QuarantinedEvent {
                    position: unsigned(row.get(0), "quarantined_events.position")?,
                    stream: row.get(1),
                    event_type: row.get(2),
                    reason: row.get(3),
                })
            })
            .collect::<Result<_, ProjectionError>>()?;
        Ok(QuarantineSummary { count: unsigned(count, "quarantined_events")?, recent })
    }

    async fn create_generation(&self) -> Result<u64, ProjectionError> {
        self.create_owned_generation().await
    }

    async fn promote(&self, generation: u64) -> Result<(), ProjectionError> {
        self.promote_owned(generation).await
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError> {
        self.let_go(generation);
        let mut admin = self.admin().await?;
        generations::drop_abandoned(&mut admin, generation_id(generation)?).await
    }
}

fn schema(generation: u64) -> String {
    format!("tally_read_g{generation}")
}

/// A generation's id as the `tally_read_generations` table keeps it.
fn generation_id(generation: u64) -> Result<i32, ProjectionError> {
    i32::try_from(generation).map_err(|_| ProjectionError::NoSuchGeneration { model: NAME, generation })
}

fn int(value: u64, what: &str) -> Result<i64, ProjectionError> {
    i64::try_from(value).map_err(|_| ProjectionError::Invalid(format!("{what} {value} exceeds the range of BIGINT")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, ProjectionError> {
    u64::try_from(value).map_err(|_| ProjectionError::Corrupt { key: what.to_owned(), reason: format!("negative value {value}") })
}

fn timestamp(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The calendar date of a day number (days since 1970-01-01).
pub fn date_of_day(day: i64) -> Date {
    OffsetDateTime::UNIX_EPOCH.date() + time::Duration::days(day)
}

/// A generation dropped under a batch.
fn no_such(error: ProjectionError, generation: u64) -> ProjectionError {
    match error {
        ProjectionError::Postgres(e) if missing_generation(&e) => ProjectionError::NoSuchGeneration { model: NAME, generation },
        other => other,
    }
}

/// An undefined schema or table means the generation was dropped under us.
fn missing_generation(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::INVALID_SCHEMA_NAME || *code == SqlState::UNDEFINED_TABLE)
}
