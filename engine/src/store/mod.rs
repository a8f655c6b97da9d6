//! The event log: the one source of truth. One narrow [`EventStore`] trait, its backends, and the
//! conformance suite every backend must pass.
//!
//! Architecture Invariant: the store knows envelopes and opaque payload bytes, never wallet semantics.
//! Architecture Invariant: an append resolves only once its events are durable (fsync'd, committed).
//! Architecture Invariant: a version conflict is [`StoreError::VersionConflict`] in every backend.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use crate::limits::{APPEND_BYTES_MAX, APPEND_EVENTS_MAX, COMMAND_DIGEST_BYTES, EVENT_PAYLOAD_BYTES_MAX, STREAM_ID_BYTES_MAX};

pub mod chain;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
pub mod keys;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod pg_tls;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use embedded::{EmbeddedOptions, EmbeddedStore, OpenReport, TornTail};
pub use keys::PersonalKey;
#[cfg(feature = "kurrentdb")]
pub use kurrentdb::KurrentStore;
pub use memory::{FaultPlan, InMemoryStore};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;

/// Identifies one stream, e.g. `"acme/wallet/c-42"`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    pub fn new(id: &str) -> Result<Self, StoreError> {
        if id.is_empty() || id.len() > STREAM_ID_BYTES_MAX {
            return Err(StoreError::InvalidStreamId { id: id.chars().take(64).collect() });
        }
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What the appender believes the stream's version is. Versions count events: an empty stream is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version (no concurrency check).
    Any,
    /// The stream must be at exactly this version (0: the stream must not exist yet).
    Exact(u64),
}

/// Trace and causality metadata that travels with an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMetadata {
    pub causation_id: String,
    pub correlation_id: String,
    /// W3C `traceparent` of the call that caused the event.
    pub traceparent: String,
    pub tracestate: String,
    /// The API key that made the change (its id), empty when the engine acted by itself.
    pub principal: String,
    /// That key's roles, comma-separated.
    pub principal_roles: String,
    /// The staff member who made the change (named by the call), if any.
    pub staff_id: String,
}

/// A command digest as the envelope carries it (`tally.v1.EventEnvelope.command_digest`).
pub type CommandDigest = [u8; COMMAND_DIGEST_BYTES];

/// What a stored digest field holds: empty (an event written before digests) or exactly one digest.
pub(crate) fn command_digest(bytes: &[u8]) -> Result<Option<CommandDigest>, String> {
    match bytes.len() {
        0 => Ok(None),
        COMMAND_DIGEST_BYTES => Ok(Some(bytes.try_into().expect("length checked"))),
        other => Err(format!("command digest of {other} bytes (expected {COMMAND_DIGEST_BYTES}, or none)")),
    }
}

/// An event to append: everything but the positions the store assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Fully qualified protobuf name of the payload, e.g. `"tally.v1.PointsEarned"`.
    pub event_type: String,
    pub schema_version: u32,
    /// The engine's clock when the command was decided, in milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
    pub idempotency_key: String,
    /// The 64-bit FNV-1a fingerprint of the command's payload that events written before
    /// `command_digest` carry; 0 beside a digest.
    pub command_fingerprint: u64,
    /// BLAKE3 of the command's payload, 128 bits; `None` on events written before it.
    pub command_digest: Option<CommandDigest>,
    pub metadata: EventMetadata,
    pub payload: Vec<u8>,
}

/// An event as stored: with its stream version and global position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream_id: StreamId,
    /// 1-based, dense within the stream.
    pub stream_version: u64,
    /// 1-based, dense in the global log.
    pub global_position: u64,
    pub data: EventData,
    /// Its links in the hash chains, as stored beside it (`chain`); `None` for an event written before
    /// the chains, or by a backend that keeps none.
    pub links: Option<chain::Links>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended first: re-read and decide again.
    #[error("version conflict on stream {stream}: expected version {expected}, actual {actual}")]
    VersionConflict { stream: StreamId, expected: u64, actual: u64 },
    #[error("invalid stream id {id:?}: must be 1 to {STREAM_ID_BYTES_MAX} bytes")]
    InvalidStreamId { id: String },
    #[error("empty append: at least one event is required")]
    EmptyAppend,
    #[error("append of {events} events exceeds the limit of {APPEND_EVENTS_MAX}")]
    TooManyEvents { events: usize },
    #[error("event payload of {bytes} bytes exceeds the limit of {EVENT_PAYLOAD_BYTES_MAX}")]
    EventTooLarge { bytes: usize },
    #[error("append of {bytes} bytes exceeds the limit of {APPEND_BYTES_MAX}")]
    AppendTooLarge { bytes: usize },
    /// Stored bytes failed their checksum or could not be decoded. Never skipped.
    #[error("corrupt log at {file}:{offset}: {reason}")]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The store cannot take appends now (closed, failed, or an injected fault). The outcome of an
    /// append that failed this way is unknown: it may or may not be in the log.
    #[error("store unavailable: {reason}")]
    Unavailable { reason: String },
    /// The backend cannot do this at all (reopening will not help).
    #[error("{what}")]
    Unsupported { what: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// What one group commit did, for the metrics an SRE reads: `tally_store_commit_seconds` (the write and
/// its fsync, or the transaction), `tally_store_batch_appends` (appends committed together),
/// `tally_store_appended_events_total` and, where the store knows them, `tally_store_appended_bytes_total`.
pub(crate) fn record_commit(store: &'static str, took: std::time::Duration, appends: usize, events: u64, bytes: Option<usize>) {
    metrics::histogram!("tally_store_commit_seconds", "store" => store).record(took.as_secs_f64());
    metrics::histogram!("tally_store_batch_appends", "store" => store).record(appends as f64);
    metrics::counter!("tally_store_appended_events_total", "store" => store).increment(events);
    if let Some(bytes) = bytes {
        metrics::counter!("tally_store_appended_bytes_total", "store" => store).increment(bytes as u64);
    }
}

/// The event log. Every backend passes [`conformance`]'s suite.
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug + 'static {
    /// Appends `events` atomically to `stream` if it is at `expected`; resolves once they are durable.
    async fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Result<AppendOutcome, StoreError>;

    /// Reads up to `limit` events of `stream` from `from_version` (inclusive, 1-based), in order.
    async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `limit` events of the global log from `from_position` (inclusive, 1-based), in order.
    /// Only durable events are returned, and never with a gap: a reader that resumes after the last
    /// position it saw misses nothing.
    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version (0 if it has no events).
    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError>;

    /// The position of the last durable event (0 for an empty log); changes whenever it advances.
    fn head(&self) -> watch::Receiver<u64>;

    /// Why this store can no longer append until it is reopened (a failed write or fsync leaves the
    /// tail unknown), or `None` while it can. The server stops serving when it says so.
    fn broken(&self) -> Option<String> {
        None
    }

    /// Appends each of `appends` as [`EventStore::append`] would — atomically, with its own version
    /// check — in the order given, and lets the store commit them together (one fsync or transaction
    /// for many): positions follow that order as long as nothing else appends meanwhile. One outcome
    /// per append, in order. For bulk work such as `tally store copy`; the default appends one at a time.
    async fn append_in_order(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, StoreError>> {
        let mut outcomes = Vec::with_capacity(appends.len());
        for append in appends {
            outcomes.push(self.append(&append.stream, append.expected, append.events).await);
        }
        outcomes
    }

    /// The keys that seal these streams' personal data (`crate::personal`), in order; `None` where a
    /// stream has none (never made, or erased). Kept beside the log, never in it.
    async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<PersonalKey>>, StoreError>;

    /// Keeps `key` as `subject`'s unless it has one already; resolves, once durable, to the key it has.
    async fn keep_personal_key(&self, subject: &StreamId, key: &PersonalKey) -> Result<PersonalKey, StoreError>;

    /// Destroys `subject`'s key for good; resolves once that is durable, true if it had one.
    async fn erase_personal_key(&self, subject: &StreamId) -> Result<bool, StoreError>;
}

/// One append of a batch given to [`EventStore::append_in_order`].
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<EventData>,
}

/// An append queued for a backend's single writer task (embedded log, PostgreSQL), which commits
/// whatever is queued together and answers each on `reply`.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<EventData>,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    /// The span the append was made in (none outside a traced call): the group commit links to it.
    pub(crate) caller: tracing::Span,
}

/// The span of one group commit (`store.commit`): a child of the first traced command it carries and
/// linked to every one, so each command's trace shows the commit that made it durable; none when no
/// append in the batch is traced. Its `events`, `bytes` and `write_us` are recorded by the writer, and
/// an error status when the commit failed.
pub(crate) fn commit_span(store: &'static str, batch: &[AppendRequest]) -> tracing::Span {
    let mut traced = batch.iter().map(|request| &request.caller).filter(|span| !span.is_none());
    let Some(first) = traced.next() else { return tracing::Span::none() };
    let empty = tracing::field::Empty;
    let span = tracing::info_span!(parent: first, "store.commit", store, appends = batch.len(), events = empty, bytes = empty, write_us = empty, otel.status_code = empty);
    span.follows_from(first);
    for caller in traced {
        span.follows_from(caller);
    }
    span
}

/// The writer's queue, as a backend holds it: `None` once the log is closed.
pub(crate) type WriterQueue = parking_lot::Mutex<Option<mpsc::Sender<AppendRequest>>>;

fn writer(queue: &WriterQueue) -> Result<mpsc::Sender<AppendRequest>, StoreError> {
    queue.lock().clone().ok_or_else(|| StoreError::Unavailable { reason: "the log is closed".into() })
}

async fn enqueue(
    sender: &mpsc::Sender<AppendRequest>,
    append: Append,
) -> Result<oneshot::Receiver<Result<AppendOutcome, StoreError>>, StoreError> {
    check_append(&append.events)?;
    let (reply, outcome) = oneshot::channel();
    let request = AppendRequest {
        stream: append.stream,
        expected: append.expected,
        events: append.events,
        reply,
        caller: crate::traces::call_span(),
    };
    sender.send(request).await.map_err(|_| StoreError::Unavailable { reason: "the log writer has stopped".into() })?;
    Ok(outcome)
}

async fn answer(outcome: oneshot::Receiver<Result<AppendOutcome, StoreError>>) -> Result<AppendOutcome, StoreError> {
    outcome.await.map_err(|_| StoreError::Unavailable { reason: "the log writer stopped before answering".into() })?
}

/// [`EventStore::append`] through a writer queue.
pub(crate) async fn queued_append(queue: &WriterQueue, append: Append) -> Result<AppendOutcome, StoreError> {
    answer(enqueue(&writer(queue)?, append).await?).await
}

/// [`EventStore::append_in_order`] through a writer queue: every append is queued, in order, before any
/// answer is awaited, so the writer commits them together.
pub(crate) async fn queued_in_order(queue: &WriterQueue, appends: Vec<Append>) -> Vec<Result<AppendOutcome, StoreError>> {
    let sender = match writer(queue) {
        Ok(sender) => sender,
        Err(error) => return appends.iter().map(|_| Err(StoreError::Unavailable { reason: error.to_string() })).collect(),
    };
    let mut queued = Vec::with_capacity(appends.len());
    for append in appends {
        queued.push(enqueue(&sender, append).await);
    }
    let mut outcomes = Vec::with_capacity(queued.len());
    for outcome in queued {
        outcomes.push(match outcome {
            Ok(outcome) => answer(outcome).await,
            Err(error) => Err(error),
        });
    }
    outcomes
}

/// What `event` counts for against `APPEND_BYTES_MAX`: everything it stores, its metadata included.
pub fn append_bytes(event: &EventData) -> usize {
    let m = &event.metadata;
    let metadata = m.causation_id.len()
        + m.correlation_id.len()
        + m.traceparent.len()
        + m.tracestate.len()
        + m.principal.len()
        + m.principal_roles.len()
        + m.staff_id.len();
    let digest = event.command_digest.map_or(0, |d| d.len());
    event.payload.len() + event.idempotency_key.len() + event.event_type.len() + metadata + digest + 64
}

/// The stream holding the log's identity (no tenant id can contain `$`).
pub const LOG_STREAM: &str = "$log";

/// This log's identity: made (a random id) by the first process that asks, kept in the log itself, so
/// every node sharing the log, and every copy of it, has the same. Read models and snapshot stores record
/// it and refuse to follow another log.
pub async fn log_identity(store: &dyn EventStore, now_ms: i64) -> Result<String, StoreError> {
    use prost::Message;
    let stream = StreamId::new(LOG_STREAM)?;
    if let Some(id) = existing_log_identity(store).await? {
        return Ok(id);
    }
    let log_id = uuid::Uuid::new_v4().to_string();
    let event = EventData {
        event_type: "tally.v1.LogCreated".into(),
        schema_version: 1,
        recorded_at_ms: now_ms,
        idempotency_key: "tally:log".into(),
        command_fingerprint: 0,
        command_digest: None,
        metadata: EventMetadata::default(),
        payload: tally_proto::v1::LogCreated { log_id: log_id.clone() }.encode_to_vec(),
    };
    match store.append(&stream, ExpectedVersion::Exact(0), vec![event]).await {
        Ok(_) => Ok(log_id),
        // Another process made it first: theirs is the log's.
        Err(StoreError::VersionConflict { .. }) => {
            existing_log_identity(store).await?.ok_or_else(|| StoreError::Unavailable { reason: "the log's identity vanished".into() })
        }
        Err(error) => Err(error),
    }
}

/// This log's identity if it has one yet (reads only).
pub async fn existing_log_identity(store: &dyn EventStore) -> Result<Option<String>, StoreError> {
    use prost::Message;
    let first = store.read_stream(&StreamId::new(LOG_STREAM)?, 1, 1).await?.into_iter().next();
    first
        .map(|e| {
            tally_proto::v1::LogCreated::decode(e.data.payload.as_slice()).map(|c| c.log_id).map_err(|error| StoreError::Corrupt {
                file: LOG_STREAM.into(),
                offset: e.global_position,
                reason: format!("the log's identity cannot be read: {error}"),
            })
        })
        .transpose()
}

/// Checks an append against the limits; every backend calls it first so they all refuse alike.
pub(crate) fn check_append(events: &[EventData]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(StoreError::TooManyEvents { events: events.len() });
    }
    let mut total = 0;
    for event in events {
        if event.payload.len() > EVENT_PAYLOAD_BYTES_MAX {
            return Err(StoreError::EventTooLarge { bytes: event.payload.len() });
        }
        total += append_bytes(event);
    }
    if total > APPEND_BYTES_MAX {
        return Err(StoreError::AppendTooLarge { bytes: total });
    }
    Ok(())
}

/// Follows the global log from a position: the building block of projections.
#[derive(Debug)]
pub struct Follower {
    store: Arc<dyn EventStore>,
    next_position: u64,
    head: watch::Receiver<u64>,
}

impl Follower {
    /// Starts after `after_position` (0 follows from the beginning).
    pub fn new(store: Arc<dyn EventStore>, after_position: u64) -> Self {
        let head = store.head();
        Self { store, next_position: after_position + 1, head }
    }

    /// Returns the next batch of at most `limit` events, waiting until there is at least one.
    /// Returns `Ok(None)` once the store has shut down and everything was delivered.
    pub async fn next_batch(&mut self, limit: usize) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        loop {
            if *self.head.borrow_and_update() >= self.next_position {
                let events = self.store.read_all(self.next_position, limit).await?;
                if let Some(last) = events.last() {
                    self.next_position = last.global_position + 1;
                    return Ok(Some(events));
                }
            }
            if self.head.changed().await.is_err() && *self.head.borrow() < self.next_position {
                return Ok(None);
            }
        }
    }

    /// The position the next batch starts at.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }
}
