//! Projection workers: follow the global event log from a checkpoint and build CQRS read models, storing
//! each checkpoint atomically with the writes it covers, so a crash anywhere leaves a read model exactly
//! at a checkpoint and a replayed batch is never counted twice.
//!
//! - [`movement`]: wallet events decoded once into flat movements.
//! - [`quarantine`]: which failures are the data's own, and the events set aside for them (a poison
//!   event is quarantined, never retried forever).
//! - [`model`]: what the read models mean, as pure folds; the stores and the tests share them.
//! - [`runner`]: the follow loop, retries, lag figures, and blue/green rebuilds.
//! - [`replay`]: the log read and decoded ahead of whoever applies it (following, or a rebuild's replay).
//! - [`sled_model`]: wallet summaries and movement history, local and fast.
//! - [`postgres`]: the reporting tables any BI tool can read.
//!
//! Architecture Invariant: a read model is derived data; every one can be dropped and rebuilt from the log.
//! Architecture Invariant: a read model's checkpoint moves in the same atomic write as the rows it covers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tally_engine::store::StoreError;

mod backoff;
pub mod customers;
pub mod export;
pub mod model;
pub mod movement;
pub mod postgres;
pub mod quarantine;
pub mod replay;
pub mod runner;
pub mod sled_model;
pub mod traces;

pub use movement::{Movement, MovementKind};
pub use postgres::PostgresReadModel;
pub use quarantine::{QuarantineSummary, QuarantinedEvent};
pub use runner::{Projection, ProjectionStatus, RebuildPhase, RebuildProgress, RunState, RunnerOptions};
pub use sled_model::SledReadModel;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A wallet event the projection cannot understand (decoding a batch strictly); the runner
    /// quarantines such events instead.
    #[error("poison event at position {position} (stream {stream}, type {event_type}): {reason}")]
    Poison { position: u64, stream: String, event_type: String, reason: String },
    /// Someone else (another node's runner) moved this generation's checkpoint.
    #[error("checkpoint of generation {generation} moved: expected {expected}, found {actual}")]
    CheckpointMoved { generation: u64, expected: u64, actual: u64 },
    /// Stored read-model bytes that do not decode. The read model must be rebuilt.
    #[error("corrupt read model entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A rebuilt generation is behind the live one (another node moved it on): catch up, then retry.
    #[error("generation {generation} is at {checkpoint}, behind the live generation at {live}")]
    Behind { generation: u64, checkpoint: u64, live: u64 },
    #[error("no generation {generation} of read model {model}")]
    NoSuchGeneration { model: &'static str, generation: u64 },
    #[error("a rebuild of {model} is already running")]
    RebuildRunning { model: &'static str },
    /// The runner is retrying a failed batch and cannot take a rebuilt generation now.
    #[error("projection {model} is retrying a failed batch; try again once it runs")]
    Busy { model: &'static str },
    #[error("projection {model} has stopped")]
    Stopped { model: &'static str },
    /// Another node holds the read model's lease and runs it; this one stands by.
    #[error(
        "read model {model} is run by another node (this one stands by); ask the node that runs it (`tally projections status` shows `running` there)"
    )]
    Standby { model: &'static str },
    #[error("event log: {0}")]
    Store(#[from] StoreError),
    #[error("postgres: {}", postgres_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("read model schema migration failed: {0}")]
    Migration(String),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A figure a query reads back exceeds the range of its answer (a sum beyond `i64`).
    #[error("{0} is beyond the range of a 64-bit integer")]
    OutOfRange(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// A batch of a generation being rebuilt was cut short (its task aborted) and took what the rebuild
    /// held in memory with it: that generation cannot be completed; rebuild again.
    #[error("the rebuild of generation {generation} lost a batch in flight; start the rebuild again")]
    ReplayLost { generation: u64 },
}

/// tokio-postgres shows a server error as just "db error"; say what the server said.
fn postgres_detail(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl ProjectionError {
    /// Errors that retrying cannot fix: the projection stops and says why.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Poison { .. } | Self::Corrupt { .. } | Self::Migration(_) | Self::Invalid(_) | Self::ReplayLost { .. })
    }
}

/// The live generation of a read model and the position it has applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub id: u64,
    pub checkpoint: u64,
}

/// A read model a [`Projection`] drives. It keeps generations of its data: one live (read by queries)
/// and, during a rebuild, one being built, which [`ReadModel::promote`] swaps in atomically.
#[async_trait]
pub trait ReadModel: Send + Sync + fmt::Debug + 'static {
    fn name(&self) -> &'static str;

    /// The live generation and its checkpoint.
    async fn live(&self) -> Result<Generation, ProjectionError>;

    /// Whether this process may follow the log into the read model now. A read model several nodes share
    /// has one runner at a time, the holder of its lease; the others stand by and take over once the
    /// holder's lease ends (its process or session gone). A model only this process writes always may.
    async fn lease(&self) -> Result<bool, ProjectionError>;

    /// Gives the lease up, if held: a runner that stops hands over at once rather than when its process
    /// ends.
    async fn end_lease(&self);

    /// The log this read model follows (`tally_engine::store::log_identity`), if it recorded one.
    async fn followed_log(&self) -> Result<Option<String>, ProjectionError>;

    /// Records that this read model follows the log `log_id` from now on.
    async fn follow_log(&self, log_id: &str) -> Result<(), ProjectionError>;

    /// Applies `movements` (the wallet events among log positions `from + 1 ..= through`) to
    /// `generation` and moves its checkpoint from `from` to `through`, all in one atomic write.
    /// Fails with [`ProjectionError::CheckpointMoved`], changing nothing, if the checkpoint is not `from`.
    async fn apply(&self, generation: u64, from: u64, through: u64, movements: Arc<[Movement]>) -> Result<(), ProjectionError>;

    /// Like [`ReadModel::apply`], but each movement on its own: those that fail with a data error
    /// ([`ProjectionError::is_data_error`]) leave no rows and are quarantined together with `poisoned`
    /// (events known bad while decoding), in the same atomic write as the rows of the others and the
    /// checkpoint. Returns the events quarantined, in log order.
    async fn apply_isolated(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: Arc<[Movement]>,
        poisoned: Arc<[QuarantinedEvent]>,
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError>;

    /// How many events `generation` holds in quarantine, and the latest of them.
    async fn quarantine(&self, generation: u64) -> Result<QuarantineSummary, ProjectionError>;

    /// Creates a new, empty generation (dropping what interrupted rebuilds left) and returns its id.
    async fn create_generation(&self) -> Result<u64, ProjectionError>;

    /// Atomically makes `generation` the one queries read, then drops the previous one.
    async fn promote(&self, generation: u64) -> Result<(), ProjectionError>;

    /// Drops a generation that is not live (an abandoned rebuild).
    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError>;

    /// Makes everything applied so far durable (at shutdown). Stores that commit each batch durably
    /// need nothing here.
    async fn flush(&self) -> Result<(), ProjectionError> {
        Ok(())
    }
}
