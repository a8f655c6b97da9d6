//! Audits: a wallet as it was at any instant or log position, folded from its own stream with the
//! domain's `apply` — the same fold recovery uses, so an auditor sees exactly what the engine saw then.
//! Reads only: nothing is decided, caught up or written (what time would have brought after the last
//! event is not invented; a summary of the state at the instant shows it, as `WalletSummary::of` does).
//! A program's settings as of an instant are folded the same way from its own stream, so an auditor
//! sees which rules were in force. `AuditService` and `tally audit replay` are built on these.

pub mod checkpoint;
pub mod verify;

use crate::codec::{self, CodecError};
use crate::domain::program::{ProgramState, apply_program};
use crate::domain::{TenantId, WalletState, apply};
use crate::limits::RECOVERY_READ_BATCH_EVENTS;
use crate::personal;
use crate::store::{EventStore, RecordedEvent, StoreError, StreamId};

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every event recorded at or before this instant (milliseconds since the epoch): the stream up to
    /// its first event recorded later. A wallet's events are recorded in non-decreasing time (ADR 0008),
    /// so that is all of them; a program's may step back with a node's clock, and the replay keeps the
    /// order of the log (as `effective_from` of rules versions does).
    Instant(i64),
    /// Every event at or before this global log position.
    Position(u64),
}

impl AsOf {
    fn includes(self, position: u64, recorded_at_ms: i64) -> bool {
        match self {
            Self::Instant(at_ms) => recorded_at_ms <= at_ms,
            Self::Position(at) => position <= at,
        }
    }
}

/// The last event a replay applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedAt {
    pub stream_version: u64,
    pub global_position: u64,
    pub recorded_at_ms: i64,
    pub event_type: String,
}

/// A wallet as of an instant or position: its state, and the event it stopped at (`None`: the wallet
/// had no event yet, and its state is the empty one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletAsOf {
    pub state: WalletState,
    pub stopped_at: Option<StoppedAt>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event of the stream cannot be read: the replay stops and says which, never skips it.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The customer's sealed personal data does not open under the wallet's key.
    #[error("the customer's personal data cannot be read: {0}")]
    PersonalData(String),
}

/// A program as of an instant or position: its settings then, and the event it stopped at (`None`: not
/// created yet).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramAsOf {
    pub state: ProgramState,
    pub stopped_at: Option<StoppedAt>,
}

/// Replays `stream` (a wallet's) up to `as_of`.
pub async fn wallet_as_of(store: &dyn EventStore, stream: &StreamId, as_of: AsOf) -> Result<WalletAsOf, AuditError> {
    let mut state = WalletState::default();
    let stopped_at = fold_until(store, stream, as_of, |recorded| {
        apply(&mut state, &codec::decode(recorded)?);
        Ok(())
    })
    .await?;
    Ok(WalletAsOf { state, stopped_at })
}

/// The customer's reference an audit may show of a wallet replayed to `replay`, and whether it was
/// erased: what is erased now reads as erased in every past state too (an erasure destroys the key of
/// sealed data; a version 1 enrolment's reference, which the log holds in clear, is hidden once any
/// later event of the stream erased it). Sealed data that does not open under the wallet's key is an
/// error.
pub async fn customer_now(store: &dyn EventStore, stream: &StreamId, replay: &WalletAsOf) -> Result<(String, bool), AuditError> {
    let state = &replay.state;
    let key = if personal::needs_key(state) { store.personal_keys(std::slice::from_ref(stream)).await?.pop().flatten() } else { None };
    let shown = personal::shown_customer(state, stream.as_str(), key.as_ref()).map_err(|e| AuditError::PersonalData(e.to_string()))?;
    if shown.1 || state.customer_ref.is_empty() {
        return Ok(shown);
    }
    let mut next = replay.stopped_at.as_ref().map_or(1, |s| s.stream_version + 1);
    loop {
        let events = store.read_stream(stream, next, RECOVERY_READ_BATCH_EVENTS).await?;
        if events.iter().any(|e| e.data.event_type == ERASED) {
            return Ok((String::new(), true));
        }
        match events.last() {
            Some(last) if events.len() == RECOVERY_READ_BATCH_EVENTS => next = last.stream_version + 1,
            _ => return Ok(shown),
        }
    }
}

/// The persisted name of `CustomerErased`.
const ERASED: &str = "tally.v1.CustomerErased";

/// Replays `tenant`'s program up to `as_of`.
pub async fn program_as_of(store: &dyn EventStore, tenant: &TenantId, as_of: AsOf) -> Result<ProgramAsOf, AuditError> {
    let mut state = ProgramState::default();
    let stopped_at = fold_until(store, &codec::program_stream(tenant), as_of, |recorded| {
        apply_program(&mut state, &codec::decode_program(recorded)?);
        Ok(())
    })
    .await?;
    Ok(ProgramAsOf { state, stopped_at })
}

/// Hands `apply_one` every event of `stream` up to `as_of`, oldest first; answers the last one.
async fn fold_until(
    store: &dyn EventStore,
    stream: &StreamId,
    as_of: AsOf,
    mut apply_one: impl FnMut(RecordedEvent) -> Result<(), CodecError>,
) -> Result<Option<StoppedAt>, AuditError> {
    let (mut next, mut stopped_at) = (1, None);
    loop {
        let events = store.read_stream(stream, next, RECOVERY_READ_BATCH_EVENTS).await?;
        let read = events.len();
        for recorded in events {
            if recorded.stream_version != next {
                return Err(AuditError::Store(StoreError::Corrupt {
                    file: stream.as_str().into(),
                    offset: recorded.global_position,
                    reason: format!("stream version {} where {next} was expected", recorded.stream_version),
                }));
            }
            if !as_of.includes(recorded.global_position, recorded.data.recorded_at_ms) {
                return Ok(stopped_at);
            }
            let at = StoppedAt {
                stream_version: recorded.stream_version,
                global_position: recorded.global_position,
                recorded_at_ms: recorded.data.recorded_at_ms,
                event_type: recorded.data.event_type.clone(),
            };
            apply_one(recorded)?;
            next = at.stream_version + 1;
            stopped_at = Some(at);
        }
        if read < RECOVERY_READ_BATCH_EVENTS {
            return Ok(stopped_at);
        }
    }
}
