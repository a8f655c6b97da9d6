//! The event log in EventStoreDB / KurrentDB (feature `kurrentdb`), through the official client.
//!
//! Each tally stream is a KurrentDB stream of the same name behind a prefix (`tally-`; another for each
//! further deployment sharing the server, none a prefix of another's), so the log is
//! browsable and subscribable with KurrentDB's own tools, and appends use KurrentDB's expected-revision
//! check. Tally's global log is `$all` filtered to those streams. `$all` is gap-free by construction
//! (one writer, the leader, commits in log order), but its positions are byte offsets, not the dense
//! 1, 2, 3… positions tally's followers and checkpoints count in; so an index task follows `$all` with a
//! catch-up subscription from the start and numbers the events in order (`positions[n - 1]` is the
//! `$all` position of tally event n). Every node numbers the same events the same way.
//!
//! An append resolves once its events are committed and numbered by this node's index, so the outcome
//! carries their global positions and a read right after it sees them. The index lives in memory (16
//! bytes per event) and is rebuilt from `$all` at start: a node waits until it has caught up before it
//! serves.
//!
//! The envelope fields tally keeps beside a payload (schema version, recorded time, idempotency key,
//! fingerprint and command digest, trace context) travel as the event's custom metadata: a
//! `tally.v1.EventEnvelope` without payload, so a field added to the envelope travels with it. The
//! payload is the event's data; its type the event's type.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, Position, ReadAllOptions, ReadStreamOptions, StreamPosition,
    StreamState, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter,
};
use parking_lot::RwLock;
use prost::Message;
use tally_proto::v1::EventEnvelope;
use tokio::sync::watch;

use super::embedded::record::{from_envelope, into_envelope};
use super::{AppendOutcome, EventData, EventStore, ExpectedVersion, PersonalKey, RecordedEvent, StoreError, StreamId, check_append};

/// What every tally stream's name starts with in KurrentDB, unless a deployment sets its own.
pub const STREAM_PREFIX: &str = "tally-";
/// How long a node waits for its index to number an event it knows was committed.
const INDEX_WAIT: Duration = Duration::from_secs(30);
/// Longest pause before the index subscribes again after losing the server.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);
/// After this long without a message, the index asks the server whether it missed anything (a stream
/// the server ended without an error would otherwise stall it unseen).
const SUBSCRIPTION_QUIET: Duration = Duration::from_secs(30);

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable { reason: format!("kurrentdb: {error}") }
}

/// Damage found at `$all` position `at` (reported at its commit position).
fn corrupt(at: Position, reason: String) -> StoreError {
    StoreError::Corrupt { file: "kurrentdb $all".into(), offset: at.commit, reason }
}

/// The client, made anew when it has given up: after a failed connect the `kurrentdb` client stops
/// for good and answers `ConnectionClosed` to everything (losing a cluster's leader can do that).
struct Connection {
    settings: ClientSettings,
    client: RwLock<Client>,
}

impl Connection {
    fn get(&self) -> Client {
        self.client.read().clone()
    }

    /// Makes a new client if `error` says this one is closed; the caller's call still fails (its outcome
    /// may be unknown), the next one uses the new client.
    fn recover(&self, error: &kurrentdb::Error) {
        if matches!(error, kurrentdb::Error::ConnectionClosed) {
            match Client::new(self.settings.clone()) {
                Ok(client) => {
                    tracing::warn!("kurrentdb client closed; connecting anew");
                    *self.client.write() = client;
                }
                Err(error) => tracing::warn!(%error, "kurrentdb client closed and cannot be made anew"),
            }
        }
    }

    /// `error` as a store error, after [`Connection::recover`].
    fn failed(&self, error: kurrentdb::Error) -> StoreError {
        self.recover(&error);
        unavailable(error)
    }
}

#[derive(Debug)]
struct Index {
    /// `$all` position of every tally event, in log order.
    positions: RwLock<Vec<Position>>,
    /// How many are numbered.
    head: watch::Sender<u64>,
}

impl Index {
    /// The global position of the event at `$all` position `at`, once the index has reached it (within
    /// `INDEX_WAIT`: the event was committed, so only a lost server keeps the index from it that long).
    async fn number(&self, at: Position) -> Result<u64, StoreError> {
        tokio::time::timeout(INDEX_WAIT, self.number_eventually(at))
            .await
            .map_err(|_| unavailable("the index did not reach a committed event in time"))?
    }

    /// The same, however long numbering the log up to it takes (at start-up).
    async fn number_eventually(&self, at: Position) -> Result<u64, StoreError> {
        let mut head = self.head.subscribe();
        let wait = async {
            loop {
                {
                    let positions = self.positions.read();
                    if positions.last().is_some_and(|last| at_or_before(at, *last)) {
                        return positions
                            .binary_search_by(|p| order(*p, at))
                            .map(|i| i as u64 + 1)
                            .map_err(|_| corrupt(at, "no tally event at this position".to_owned()));
                    }
                }
                if head.changed().await.is_err() {
                    return Err(unavailable("the index has stopped"));
                }
            }
        };
        wait.await
    }
}

fn order(a: Position, b: Position) -> std::cmp::Ordering {
    (a.commit, a.prepare).cmp(&(b.commit, b.prepare))
}

fn at_or_before(a: Position, b: Position) -> bool {
    order(a, b) != std::cmp::Ordering::Greater
}

pub struct KurrentStore {
    client: Arc<Connection>,
    prefix: Arc<str>,
    index: Arc<Index>,
    head_rx: watch::Receiver<u64>,
    indexer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KurrentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentStore").field("numbered", &*self.head_rx.borrow()).finish_non_exhaustive()
    }
}

impl Drop for KurrentStore {
    fn drop(&mut self) {
        self.indexer.abort();
    }
}

impl KurrentStore {
    /// Connects (`esdb://…` or `kurrentdb://…`, with the client's connection-string options) and
    /// numbers the log from its start before returning.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_prefix(url, STREAM_PREFIX).await
    }

    /// The same for the log whose streams are named `<prefix><tally stream>`.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        if prefix.is_empty() || prefix.starts_with('$') {
            return Err(StoreError::Unavailable { reason: format!("invalid KurrentDB stream prefix {prefix:?}") });
        }
        let prefix: Arc<str> = prefix.into();
        let settings: ClientSettings =
            url.parse().map_err(|e| StoreError::Unavailable { reason: format!("invalid KurrentDB URL: {e}") })?;
        let client = Client::new(settings.clone()).map_err(|e| StoreError::Unavailable { reason: format!("KurrentDB client: {e}") })?;
        let client = Arc::new(Connection { settings, client: RwLock::new(client) });
        // The last tally event now: the index must reach it before the store serves.
        let last = last_position(&client, &prefix).await?;
        let (head, head_rx) = watch::channel(0);
        let index = Arc::new(Index { positions: RwLock::new(Vec::new()), head });
        let indexer = tokio::spawn(follow_all(Arc::clone(&client), Arc::clone(&prefix), Arc::clone(&index)));
        if let Some(last) = last {
            index.number_eventually(last).await?;
            tracing::info!(events = *index.head.borrow(), "kurrentdb log numbered");
        }
        Ok(Self { client, prefix, index, head_rx, indexer })
    }

    /// Reads events of one KurrentDB stream from `revision` and numbers them.
    async fn read_numbered(&self, stream: &StreamId, revision: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // From the leader: an append's read-back must see what was just written.
        let options =
            ReadStreamOptions::default().forwards().position(StreamPosition::Position(revision)).max_count(limit).requires_leader(true);
        let mut read = match self.client.get().read_stream(self.name(stream), &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(error) => return Err(self.client.failed(error)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    let event = resolved.get_original_event();
                    if event.position.commit == u64::MAX {
                        // Servers before 22.6 leave stream reads without their `$all` position.
                        return Err(unavailable(
                            "the server does not report $all positions on stream reads (KurrentDB 22.6 or later needed)",
                        ));
                    }
                    let position = self.index.number(event.position).await?;
                    events.push(recorded(event, &self.prefix, position)?);
                }
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(events),
                Err(error) => return Err(self.client.failed(error)),
            }
        }
    }
}

impl KurrentStore {
    fn name(&self, stream: &StreamId) -> String {
        format!("{}{}", self.prefix, stream.as_str())
    }
}

fn tally_filter(prefix: &str) -> SubscriptionFilter {
    SubscriptionFilter::on_stream_name().add_prefix(prefix)
}

/// The `$all` position of the last tally event, if any.
async fn last_position(client: &Connection, prefix: &str) -> Result<Option<Position>, StoreError> {
    let options =
        ReadAllOptions::default().backwards().position(StreamPosition::End).filter(tally_filter(prefix)).max_count(1).requires_leader(true);
    let mut read = client.get().read_all(&options).await.map_err(|e| client.failed(e))?;
    match read.next().await {
        Ok(Some(resolved)) => Ok(Some(resolved.get_original_event().position)),
        Ok(None) => Ok(None),
        Err(error) => Err(client.failed(error)),
    }
}

/// Numbers every tally event in `$all` order, for as long as the store lives; subscribes again from
/// the last numbered event when the connection drops.
async fn follow_all(client: Arc<Connection>, prefix: Arc<str>, index: Arc<Index>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let from = index.positions.read().last().copied().map_or(StreamPosition::Start, StreamPosition::Position);
        let options = SubscribeToAllOptions::default().position(from).filter(tally_filter(&prefix));
        let mut subscription = client.get().subscribe_to_all(&options).await;
        loop {
            let Ok(message) = tokio::time::timeout(SUBSCRIPTION_QUIET, subscription.next_subscription_event()).await else {
                match last_position(&client, &prefix).await {
                    Ok(Some(last)) if index.positions.read().last().is_none_or(|numbered| !at_or_before(last, *numbered)) => {
                        tracing::warn!("kurrentdb $all subscription went quiet with events unnumbered; subscribing again");
                        break;
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "kurrentdb unreachable while the $all subscription is quiet; subscribing again");
                        break;
                    }
                }
            };
            match message {
                Ok(SubscriptionEvent::EventAppeared(resolved)) => {
                    backoff = Duration::from_millis(100);
                    let at = resolved.get_original_event().position;
                    let numbered = {
                        let mut positions = index.positions.write();
                        // A resubscription may deliver the last numbered event again.
                        if positions.last().is_some_and(|last| at_or_before(at, *last)) {
                            None
                        } else {
                            positions.push(at);
                            Some(positions.len() as u64)
                        }
                    };
                    if let Some(head) = numbered {
                        index.head.send_replace(head);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "kurrentdb $all subscription lost; subscribing again");
                    client.recover(&error);
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// A KurrentDB event as tally's `RecordedEvent`, numbered `position` in the global log.
fn recorded(event: &kurrentdb::RecordedEvent, prefix: &str, position: u64) -> Result<RecordedEvent, StoreError> {
    let corrupt = |reason: String| corrupt(event.position, reason);
    let name = event.stream_id();
    let stream = name.strip_prefix(prefix).ok_or_else(|| corrupt(format!("stream {name:?} is not a tally stream")))?;
    let mut envelope = EventEnvelope::decode(&*event.custom_metadata).map_err(|e| corrupt(format!("envelope: {e}")))?;
    envelope.stream_id = stream.to_owned();
    envelope.stream_version = event.revision + 1;
    envelope.global_position = position;
    envelope.event_type.clone_from(&event.event_type);
    envelope.payload = event.data.to_vec();
    from_envelope(envelope).map_err(corrupt)
}

#[async_trait]
impl EventStore for KurrentStore {
    async fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Result<AppendOutcome, StoreError> {
        check_append(&events)?;
        let count = events.len() as u64;
        let state = match expected {
            ExpectedVersion::Any => StreamState::Any,
            ExpectedVersion::Exact(0) => StreamState::NoStream,
            ExpectedVersion::Exact(version) => StreamState::StreamRevision(version - 1),
        };
        let data: Vec<kurrentdb::EventData> = events
            .into_iter()
            .map(|event| {
                let event_type = event.event_type.clone();
                let mut envelope = into_envelope(stream, 0, 0, event);
                let payload = std::mem::take(&mut envelope.payload);
                envelope.stream_id.clear();
                envelope.event_type.clear();
                kurrentdb::EventData::binary(event_type, payload.into()).id(uuid::Uuid::new_v4()).metadata(envelope.encode_to_vec().into())
            })
            .collect();
        let options = AppendToStreamOptions::default().stream_state(state);
        let written = match self.client.get().append_to_stream(self.name(stream), &options, data).await {
            Ok(written) => written,
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => {
                let actual = match current {
                    CurrentRevision::Current(revision) => revision + 1,
                    CurrentRevision::NoStream => 0,
                };
                let expected = match expected {
                    ExpectedVersion::Exact(version) => version,
                    ExpectedVersion::Any => actual,
                };
                return Err(StoreError::VersionConflict { stream: stream.clone(), expected, actual });
            }
            Err(error) => {
                self.client.recover(&error);
                return Err(unavailable(format!("{error}; the outcome is unknown")));
            }
        };
        let last_version = written.next_expected_version + 1;
        let first_version = last_version + 1 - count;
        // Numbered by the index: the positions every follower will see them at.
        let numbered = self.read_numbered(stream, first_version - 1, count as usize).await?;
        let revisions: Vec<u64> = numbered.iter().map(|e| e.stream_version).collect();
        let (Some(first), Some(last)) = (numbered.first(), numbered.last()) else {
            return Err(unavailable("the appended events cannot be read back; the outcome is unknown"));
        };
        if revisions != (first_version..=last_version).collect::<Vec<_>>() {
            return Err(unavailable(format!("read back versions {revisions:?} of an append of {first_version}..={last_version}")));
        }
        Ok(AppendOutcome { first_version, last_version, first_position: first.global_position, last_position: last.global_position })
    }

    async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read_numbered(stream, from_version.max(1) - 1, limit).await
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let from_position = from_position.max(1);
        // Read from the event before (or the start): whether a read from a position includes it or not,
        // what comes back is checked against the index and the one before skipped.
        let (after, available) = {
            let positions = self.index.positions.read();
            let Some(numbered) = (positions.len() as u64).checked_sub(from_position - 1).filter(|n| *n > 0) else {
                return Ok(Vec::new());
            };
            let after = usize::try_from(from_position).ok().and_then(|n| n.checked_sub(2)).map(|i| positions[i]);
            (after, numbered)
        };
        // Only numbered events: the same ones, in the same order, every time.
        let limit = limit.min(usize::try_from(available).unwrap_or(usize::MAX));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = after.map_or(StreamPosition::Start, StreamPosition::Position);
        let options = ReadAllOptions::default().forwards().position(from).filter(tally_filter(&self.prefix)).max_count(limit + 1);
        let mut read = self.client.get().read_all(&options).await.map_err(|e| self.client.failed(e))?;
        let mut events = Vec::with_capacity(limit);
        while events.len() < limit {
            match read.next().await {
                Ok(Some(resolved)) => {
                    let event = resolved.get_original_event();
                    if after.is_some_and(|after| at_or_before(event.position, after)) {
                        continue;
                    }
                    let position = from_position + events.len() as u64;
                    let expected = self.index.positions.read().get(usize::try_from(position - 1).unwrap_or(usize::MAX)).copied();
                    if expected != Some(event.position) {
                        return Err(corrupt(
                            event.position,
                            format!("$all holds another event than tally event {position} ({expected:?})"),
                        ));
                    }
                    events.push(recorded(event, &self.prefix, position)?);
                }
                Ok(None) => break,
                Err(error) => return Err(self.client.failed(error)),
            }
        }
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let options = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(1).requires_leader(true);
        let mut read = match self.client.get().read_stream(self.name(stream), &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(0),
            Err(error) => return Err(self.client.failed(error)),
        };
        match read.next().await {
            Ok(Some(resolved)) => Ok(resolved.get_original_event().revision + 1),
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(0),
            Err(error) => Err(self.client.failed(error)),
        }
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    /// KurrentDB keeps no personal data keys (a key erased there would live on until a scavenge): none
    /// is ever found, and none can be kept, so a customer reference cannot be enrolled on this backend.
    async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<PersonalKey>>, StoreError> {
        Ok(vec![None; subjects.len()])
    }

    async fn keep_personal_key(&self, _subject: &StreamId, _key: &PersonalKey) -> Result<PersonalKey, StoreError> {
        Err(StoreError::Unsupported {
            what: "the KurrentDB log keeps no personal data keys: enroll without a customer_ref and attach no identifiers, or use the \
                   embedded or PostgreSQL log"
                .into(),
        })
    }

    async fn erase_personal_key(&self, _subject: &StreamId) -> Result<bool, StoreError> {
        Ok(false)
    }
}
