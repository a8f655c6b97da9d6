//! Poison and quarantine: which failures of a batch are the data's own (deterministic, so retrying can
//! never fix them) and what is kept of an event set aside for that reason.
//!
//! A batch that fails with a data error is applied again one event at a time (PostgreSQL: each in a
//! savepoint of the batch's transaction); the events that fail on their own are quarantined — recorded
//! in the read model in the same atomic write as the checkpoint that moves past them, with no rows of
//! theirs — and the rest of the batch is applied. Events that do not decode, or hold amounts or times
//! outside the read models' range, are quarantined without being tried. See ADR 0005.
//!
//! Architecture Invariant: one tenant's data cannot stop another's work; a poisoned event is
//! quarantined, never retried forever.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;

use crate::movement::Movement;
use crate::{ProjectionError, ReadModel};

/// How many of the latest quarantined events a status shows.
pub const RECENT_QUARANTINED_MAX: usize = 5;

/// An event set aside by a read model: it has no rows there, and the figures of its wallet differ from
/// the log by exactly the quarantined events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedEvent {
    pub position: u64,
    pub stream: String,
    pub event_type: String,
    /// Why it cannot be applied, in the decoder's or the database's words.
    pub reason: String,
}

impl QuarantinedEvent {
    /// A movement whose rows the read model refused.
    pub fn of(movement: &Movement, reason: String) -> Self {
        Self {
            position: movement.position,
            stream: format!("{}/wallet/{}", movement.tenant, movement.wallet),
            event_type: movement.event_type.to_owned(),
            reason,
        }
    }
}

/// What a read model's live generation holds in quarantine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineSummary {
    pub count: u64,
    /// The latest [`RECENT_QUARANTINED_MAX`], newest first.
    pub recent: Vec<QuarantinedEvent>,
}

impl QuarantineSummary {
    /// Adds newly quarantined events (in log order) to the summary.
    pub fn add(&mut self, events: &[QuarantinedEvent]) {
        self.count += events.len() as u64;
        for event in events {
            self.recent.insert(0, event.clone());
        }
        self.recent.truncate(RECENT_QUARANTINED_MAX);
    }
}

impl ProjectionError {
    /// A failure caused by what the batch holds, the same on every attempt: PostgreSQL's data
    /// exceptions (class 22: a NUL byte, an out-of-range number), integrity violations (class 23) and
    /// program limits (class 54, e.g. an index row too large). Such a batch is applied event by event,
    /// and the events that fail on their own are quarantined.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Poison { .. } => true,
            Self::Postgres(error) => error.code().is_some_and(is_data_state),
            _ => false,
        }
    }
}

fn is_data_state(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
}

/// Applies a batch, quarantining what cannot be applied: `poisoned` (known bad while decoding), and the
/// movements that fail with a data error on their own. Returns the events quarantined, in log order.
/// Good data takes the plain path (`ReadModel::apply`), unchanged.
pub async fn apply_quarantining(
    model: &dyn ReadModel,
    generation: u64,
    from: u64,
    through: u64,
    movements: &Arc<[Movement]>,
    poisoned: &Arc<[QuarantinedEvent]>,
) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
    if poisoned.is_empty() {
        match model.apply(generation, from, through, Arc::clone(movements)).await {
            Err(error) if error.is_data_error() => {
                tracing::warn!(projection = model.name(), %error, from, through, "batch holds data the read model refuses; applying it event by event");
            }
            result => return result.map(|()| Vec::new()),
        }
    }
    let quarantined = model.apply_isolated(generation, from, through, Arc::clone(movements), Arc::clone(poisoned)).await?;
    for event in &quarantined {
        tracing::error!(
            projection = model.name(),
            position = event.position,
            stream = %event.stream,
            event_type = %event.event_type,
            reason = %event.reason,
            "event quarantined: the read model skips it"
        );
    }
    Ok(quarantined)
}
