//! The log read ahead of whoever applies it: a task of its own reads and decodes the next events while
//! the last batch is applied, so a batch costs the slower of the two, not their sum. The runner follows
//! the log with one ([`Replay::follow`]) and a rebuild replays it to its end with another
//! ([`Replay::spawn`]).
//!
//! A follower holds at most one batch ahead and is handed everything read so far, up to a batch, when it
//! asks: an event waits for one apply at most, not for a batch queued behind the one being applied. A
//! rebuild's replay holds up to two whole batches ahead. A read in flight is never abandoned when the
//! consumer wakes up for something else (`next` is cancel safe), which matters for a database-backed
//! log under steady writes.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use opentelemetry::trace::SpanContext;
use parking_lot::Mutex;
use tally_engine::store::{EventStore, Follower, RecordedEvent};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::ProjectionError;
use crate::backoff::Backoff;
use crate::movement::{Movement, decode_events};
use crate::quarantine::QuarantinedEvent;

/// Attempts at a replay's read before it gives up: a replay can be long, and one network blip should
/// not throw it away.
const READ_ATTEMPTS_MAX: u32 = 8;

/// A batch of the log, decoded.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The position before its first event: the checkpoint it applies after.
    pub from: u64,
    /// The position of its last event: the checkpoint once it is applied.
    pub through: u64,
    /// When its first event (of any stream) was recorded.
    pub first_recorded_ms: i64,
    pub movements: Arc<[Movement]>,
    /// Its poison events (undecodable, or with out-of-range figures): quarantined when it is applied.
    pub poisoned: Arc<[QuarantinedEvent]>,
    /// The sampled calls that recorded its events, when traces are exported (see [`crate::traces`]).
    pub calls: Vec<SpanContext>,
}

/// The log after a position, read and decoded ahead of whoever consumes it.
pub struct Replay {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("batches_ahead", &self.shared.state.lock().batches.len()).finish_non_exhaustive()
    }
}

impl Replay {
    /// Reads the log after `after` in batches of `batch_size` events, until a read finds nothing more;
    /// a failed read is retried a few times.
    pub fn spawn(store: Arc<dyn EventStore>, after: u64, batch_size: usize) -> Self {
        Self::start(Source::ToEnd { store, next: after + 1 }, batch_size, 2, false)
    }

    /// Follows the log after `after` as it grows, until the store shuts down or a read fails; with
    /// `trace_calls`, each batch names the sampled calls that recorded it.
    pub fn follow(store: Arc<dyn EventStore>, after: u64, batch_size: usize, trace_calls: bool) -> Self {
        Self::start(Source::Follow(Follower::new(store, after)), batch_size, 1, trace_calls)
    }

    fn start(source: Source, batch_size: usize, batches_ahead: usize, trace_calls: bool) -> Self {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(read_ahead(source, Arc::clone(&shared), batch_size.max(1), batches_ahead, trace_calls));
        Self { shared, task }
    }

    /// The next batch, waiting for at least one event; `None` at the end (or once the error the reader
    /// stopped on was answered). Cancel safe.
    pub async fn next(&mut self) -> Option<Result<DecodedBatch, ProjectionError>> {
        loop {
            let ready = self.shared.ready.notified();
            {
                let mut state = self.shared.state.lock();
                if let Some(batch) = state.batches.pop_front() {
                    drop(state);
                    self.shared.taken.notify_one();
                    return Some(Ok(batch.seal()));
                }
                if let Some(end) = state.end.take() {
                    // Answered once; the reader has stopped for good.
                    state.end = Some(End::Finished);
                    return match end {
                        End::Finished => None,
                        End::Failed(error) => Some(Err(error)),
                        // A panic while decoding is the consumer's, as when it decoded for itself.
                        End::Panicked(panic) => std::panic::resume_unwind(panic),
                    };
                }
            }
            ready.await;
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a reader reads.
enum Source {
    /// Waits at the head for more; a failed read ends it (the runner retries from its checkpoint).
    Follow(Follower),
    /// Ends at the first read that finds nothing; failed reads are retried.
    ToEnd { store: Arc<dyn EventStore>, next: u64 },
}

impl Source {
    /// At most `limit` events; `None` at the end.
    async fn read(&mut self, limit: usize) -> Result<Option<Vec<RecordedEvent>>, ProjectionError> {
        match self {
            Self::Follow(follower) => Ok(follower.next_batch(limit).await?),
            Self::ToEnd { store, next } => {
                let mut backoff = Backoff::rebuilding(READ_ATTEMPTS_MAX);
                let mut attempts = 0;
                let events = loop {
                    match store.read_all(*next, limit).await {
                        Ok(events) => break events,
                        Err(error) => {
                            let error = ProjectionError::from(error);
                            attempts += 1;
                            let wait = if error.is_fatal() { None } else { backoff.next_wait() };
                            let Some(wait) = wait else { return Err(error) };
                            tracing::warn!(%error, checkpoint = *next - 1, attempts, "replay read failed; retrying");
                            tokio::time::sleep(wait).await;
                        }
                    }
                };
                let Some(last) = events.last() else { return Ok(None) };
                *next = last.global_position + 1;
                Ok(Some(events))
            }
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// A batch (or the end) arrived.
    ready: Notify,
    /// The consumer took a batch.
    taken: Notify,
}

#[derive(Default)]
struct State {
    batches: VecDeque<Pending>,
    /// Set once the reader stopped, saying why.
    end: Option<End>,
}

enum End {
    Finished,
    Failed(ProjectionError),
    Panicked(Box<dyn Any + Send>),
}

/// A batch read ahead, decoded, not yet taken.
struct Pending {
    from: u64,
    through: u64,
    first_recorded_ms: i64,
    events: usize,
    movements: Movements,
    poisoned: Vec<QuarantinedEvent>,
    calls: Vec<SpanContext>,
}

enum Movements {
    /// A read of a whole batch, made shareable by the reader (off the consumer's path).
    Sealed(Arc<[Movement]>),
    /// Reads smaller than a batch, which later reads may join.
    Open(Vec<Movement>),
}

impl Pending {
    fn seal(self) -> DecodedBatch {
        let movements = match self.movements {
            Movements::Sealed(movements) => movements,
            Movements::Open(movements) => movements.into(),
        };
        DecodedBatch {
            from: self.from,
            through: self.through,
            first_recorded_ms: self.first_recorded_ms,
            movements,
            poisoned: self.poisoned.into(),
            calls: self.calls,
        }
    }
}

impl State {
    /// How many events the reader may read now: what fills the open batch, else a whole batch if fewer
    /// than `batches_ahead` are waiting, else none.
    fn room(&self, batch_size: usize, batches_ahead: usize) -> usize {
        match self.batches.back() {
            Some(back) if back.events < batch_size => batch_size - back.events,
            _ if self.batches.len() < batches_ahead => batch_size,
            _ => 0,
        }
    }

    /// Adds a read: to the open batch while it has room, else as a batch of its own.
    fn push(&mut self, read: Pending, batch_size: usize) {
        if let Some(back) = self.batches.back_mut()
            && back.events + read.events <= batch_size
            && let Movements::Open(open) = &mut back.movements
            && let Movements::Open(more) = read.movements
        {
            open.extend(more);
            back.poisoned.extend(read.poisoned);
            let room = crate::traces::LINKS_MAX.saturating_sub(back.calls.len());
            back.calls.extend(read.calls.into_iter().take(room));
            back.through = read.through;
            back.events += read.events;
        } else {
            self.batches.push_back(read);
        }
    }
}

async fn read_ahead(mut source: Source, shared: Arc<Shared>, batch_size: usize, batches_ahead: usize, trace_calls: bool) {
    loop {
        let room = loop {
            let taken = shared.taken.notified();
            let room = shared.state.lock().room(batch_size, batches_ahead);
            if room > 0 {
                break room;
            }
            taken.await;
        };
        let end = match source.read(room).await {
            Ok(Some(events)) => match decode(events, batch_size, trace_calls).await {
                Ok(read) => {
                    shared.state.lock().push(read, batch_size);
                    shared.ready.notify_one();
                    continue;
                }
                Err(end) => end,
            },
            Ok(None) => End::Finished,
            Err(error) => End::Failed(error),
        };
        shared.state.lock().end = Some(end);
        shared.ready.notify_one();
        return;
    }
}

/// Decodes a read off the async workers (decoding is the CPU-heavy part), beside the apply.
async fn decode(events: Vec<RecordedEvent>, batch_size: usize, trace_calls: bool) -> Result<Pending, End> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else { unreachable!("a read holds events") };
    let (from, through, first_recorded_ms, count) =
        (first.global_position - 1, last.global_position, first.data.recorded_at_ms, events.len());
    let calls = if trace_calls { crate::traces::sampled_calls(&events) } else { Vec::new() };
    let decoded = match tokio::task::spawn_blocking(move || decode_events(events)).await {
        Ok(decoded) => decoded,
        Err(failed) if failed.is_panic() => return Err(End::Panicked(failed.into_panic())),
        Err(_) => return Err(End::Failed(ProjectionError::Stopped { model: "replay" })),
    };
    let (movements, poisoned) = (decoded.movements, decoded.poisoned);
    let movements = if count >= batch_size { Movements::Sealed(movements.into()) } else { Movements::Open(movements) };
    Ok(Pending { from, through, first_recorded_ms, events: count, movements, poisoned, calls })
}
