//! Audits: a wallet as it was at any instant or log position, folded from its own stream with the
//! domain's `apply` — the same fold recovery uses, so an auditor sees exactly what the engine saw then.
//! Reads only: nothing is decided, caught up or written (what time would have brought after the last
//! event is not invented; a summary of the state at the instant shows it, as `WalletSummary::of` does).
//! The first increment of issue 19; the RPC and the CLI build on it.

use crate::codec::{self, CodecError};
use crate::domain::{WalletState, apply};
use crate::limits::RECOVERY_READ_BATCH_EVENTS;
use crate::store::{EventStore, StoreError, StreamId};

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Every event recorded at or before this instant (milliseconds since the epoch). A wallet's events
    /// are recorded in non-decreasing time (ADR 0008), so these are a prefix of its stream.
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
}

/// Replays `stream` (a wallet's) up to `as_of`.
pub async fn wallet_as_of(store: &dyn EventStore, stream: &StreamId, as_of: AsOf) -> Result<WalletAsOf, AuditError> {
    let mut replay = WalletAsOf { state: WalletState::default(), stopped_at: None };
    loop {
        let events = store.read_stream(stream, replay.state.version + 1, RECOVERY_READ_BATCH_EVENTS).await?;
        let read = events.len();
        for recorded in events {
            if !as_of.includes(recorded.global_position, recorded.data.recorded_at_ms) {
                return Ok(replay);
            }
            let stopped_at = StoppedAt {
                stream_version: recorded.stream_version,
                global_position: recorded.global_position,
                recorded_at_ms: recorded.data.recorded_at_ms,
                event_type: recorded.data.event_type.clone(),
            };
            apply(&mut replay.state, &codec::decode(recorded)?);
            replay.stopped_at = Some(stopped_at);
        }
        if read < RECOVERY_READ_BATCH_EVENTS {
            return Ok(replay);
        }
    }
}
