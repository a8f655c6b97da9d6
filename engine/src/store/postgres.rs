//! The PostgreSQL event store: one log shared by every node.
//!
//! Gap-safe global order (ADR 0004): every append transaction first locks the single row of
//! `tally_log_head` and holds it until commit, so positions are assigned and become visible strictly in
//! order; a follower reading "after N" can never miss an event that commits late. The cost, one commit
//! at a time per log, is paid back by group commit: this store's writer task puts every append waiting in
//! its queue into one transaction, with each expected version still checked exactly (a conflict refuses
//! that append alone). Followers are woken by LISTEN/NOTIFY, with polling as the fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Row};
use tracing::Instrument;

use super::chain::{self, Hash, Heads};
use super::embedded::record::into_envelope;
use super::{
    Append, AppendOutcome, AppendRequest, EventData, EventMetadata, EventStore, ExpectedVersion, PersonalKey, RecordedEvent, StoreError,
    StreamId, WriterQueue, command_digest,
};
use crate::limits::{APPEND_QUEUE_DEPTH_MAX, GROUP_COMMIT_APPENDS_MAX};
use tally_proto::v1::EventEnvelope;

mod embedded {
    refinery::embed_migrations!("migrations");
}

const CHANNEL: &str = "tally_events";
/// Connections in the pool (readers, the writer, the poller).
const POOL_SIZE_MAX: usize = 16;
/// How often the head is polled in case a notification was missed, in milliseconds.
const HEAD_POLL_MS: u64 = 500;
const COLUMNS: &str = "stream_id, stream_version, global_position, event_type, schema_version, recorded_at_ms, idempotency_key, \
                       command_fingerprint, causation_id, correlation_id, traceparent, tracestate, payload, command_digest, \
                       principal, principal_roles, staff_id, stream_hash, log_hash";

/// The error with its causes (a pool's "error performing TLS handshake" says why only in its source).
fn pg(error: impl std::error::Error) -> StoreError {
    let mut reason = format!("postgres: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !reason.ends_with(&cause_text) {
            reason.push_str(": ");
            reason.push_str(&cause_text);
        }
        source = cause.source();
    }
    StoreError::Unavailable { reason }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    sender: WriterQueue,
    head_rx: watch::Receiver<u64>,
}

impl PostgresStore {
    /// Connects (`postgres://…` URL or `host=… user=…` string), applies pending migrations, and starts the
    /// writer and the head watcher. Fails with a clear error if the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let connection = super::pg_tls::pg_connection(url).map_err(|reason| StoreError::Unavailable { reason })?;
        let manager = Manager::from_config(
            connection.config.clone(),
            connection.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager).max_size(POOL_SIZE_MAX).build().map_err(pg)?;
        let mut client = pool.get().await.map_err(pg)?;
        embedded::migrations::runner().set_migration_table_name("tally_event_log_migrations").run_async(&mut **client).await.map_err(pg)?;
        let head: i64 = client.query_one("SELECT position FROM tally_log_head", &[]).await.map_err(pg)?.get(0);
        // Events written before the chains (or by an older node since) are linked once, here, rather
        // than inside the first append's transaction.
        let tx = client.transaction().await.map_err(pg)?;
        log_head(&tx).await?;
        tx.commit().await.map_err(pg)?;
        drop(client);
        let (head_tx, head_rx) = watch::channel(to_u64(head));
        let head_tx = Arc::new(head_tx);
        let (sender, receiver) = mpsc::channel(APPEND_QUEUE_DEPTH_MAX);
        tokio::spawn(write_loop(pool.clone(), receiver, Arc::clone(&head_tx)));
        tokio::spawn(listen_loop(connection, Arc::downgrade(&head_tx)));
        tokio::spawn(poll_loop(pool.clone(), Arc::downgrade(&head_tx)));
        Ok(Self { pool, sender: Mutex::new(Some(sender)), head_rx })
    }

    /// Stops taking appends; appends already queued are still committed.
    pub fn close(&self) {
        drop(self.sender.lock().take());
    }

    async fn query(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        let statement = client.prepare_cached(sql).await.map_err(pg)?;
        let rows = client.query(&statement, params).await.map_err(pg)?;
        rows.iter().map(recorded).collect()
    }
}

fn recorded(row: &Row) -> Result<RecordedEvent, StoreError> {
    let global_position = to_u64(row.get(2));
    // The column's CHECK keeps other lengths out; a row that has one anyway is not guessed at.
    let corrupt = |reason| StoreError::Corrupt { file: "tally_events".into(), offset: global_position, reason };
    let bytes = |i: usize| row.get::<_, Option<&[u8]>>(i).unwrap_or_default();
    let command_digest = command_digest(bytes(13)).map_err(corrupt)?;
    let links = chain::stored_links(bytes(17), bytes(18)).map_err(corrupt)?;
    Ok(RecordedEvent {
        stream_id: StreamId::new(row.get(0))?,
        stream_version: to_u64(row.get(1)),
        global_position,
        data: EventData {
            event_type: row.get(3),
            schema_version: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
            recorded_at_ms: row.get(5),
            idempotency_key: row.get(6),
            command_fingerprint: u64::from_ne_bytes(row.get::<_, i64>(7).to_ne_bytes()),
            command_digest,
            metadata: EventMetadata {
                causation_id: row.get(8),
                correlation_id: row.get(9),
                traceparent: row.get(10),
                tracestate: row.get(11),
                principal: row.get(14),
                principal_roles: row.get(15),
                staff_id: row.get(16),
            },
            payload: row.get(12),
        },
        links,
    })
}

/// Takes the head row's lock; answers the last position and the log chain's link there, caught up with
/// any event appended without links (before the chains, or by an older node): their links are computed
/// and written into their rows, so after this every event of the log carries its links.
async fn log_head(tx: &deadpool_postgres::Transaction<'_>) -> Result<(u64, Option<Hash>), StoreError> {
    let lock_head = tx.prepare_cached("SELECT position, log_hash, log_hash_position FROM tally_log_head FOR UPDATE").await.map_err(pg)?;
    let row = tx.query_one(&lock_head, &[]).await.map_err(pg)?;
    let (position, linked_to) = (to_u64(row.get(0)), to_u64(row.get(2)));
    let stored: Option<Vec<u8>> = row.get(1);
    let mut heads = Heads { log: stored.map(|h| to_hash(&h)).transpose()?, ..Heads::default() };
    if linked_to >= position {
        return Ok((position, heads.log));
    }
    let started = std::time::Instant::now();
    let page = format!(
        "SELECT {COLUMNS} FROM tally_events WHERE global_position > $1 AND global_position <= $2 ORDER BY global_position LIMIT 10000"
    );
    let page = tx.prepare_cached(&page).await.map_err(pg)?;
    let fill = tx
        .prepare_cached(
            "UPDATE tally_events e SET stream_hash = u.s, log_hash = u.l FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS u(p, s, l)
             WHERE e.global_position = u.p",
        )
        .await
        .map_err(pg)?;
    let mut at = linked_to;
    while at < position {
        let (mut positions, mut stream_links, mut log_links) = (Vec::new(), Vec::new(), Vec::new());
        let rows = tx.query(&page, &[&to_i64(at), &to_i64(position)]).await.map_err(pg)?;
        if rows.is_empty() {
            return Err(StoreError::Corrupt { file: "tally_events".into(), offset: at + 1, reason: "missing from the log".into() });
        }
        for row in &rows {
            let event = recorded(row)?;
            if event.global_position != at + 1 {
                return Err(StoreError::Corrupt { file: "tally_events".into(), offset: at + 1, reason: "missing from the log".into() });
            }
            // A stream first met past its start: its link so far, from its own events.
            if event.links.is_none() && event.stream_version > 1 && !heads.streams.contains_key(&event.stream_id) {
                let link = stream_link_at(tx, &event.stream_id, event.stream_version - 1).await?;
                heads.streams.insert(event.stream_id.clone(), link);
            }
            let links = heads.follow_recorded(&event);
            if event.links.is_none() {
                positions.push(to_i64(event.global_position));
                stream_links.push(links.stream.to_vec());
                log_links.push(links.log.to_vec());
            }
            at = event.global_position;
        }
        tx.execute(&fill, &[&positions, &stream_links, &log_links]).await.map_err(pg)?;
    }
    let save = tx.prepare_cached("UPDATE tally_log_head SET log_hash = $1, log_hash_position = $2").await.map_err(pg)?;
    tx.execute(&save, &[&heads.log.map(Vec::from), &to_i64(position)]).await.map_err(pg)?;
    tracing::info!(
        events = position - linked_to,
        took_ms = started.elapsed().as_millis() as u64,
        "linked events written without hash links"
    );
    Ok((position, heads.log))
}

/// The last version of every stream `batch` appends to, and its last link into `heads`.
async fn stream_heads(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[AppendRequest],
    heads: &mut Heads,
) -> Result<HashMap<String, u64>, StoreError> {
    let streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
    let current = tx
        // One index probe per stream (the unique (stream_id, stream_version) index, read backwards),
        // whatever plan the prepared statement settles on.
        .prepare_cached(
            "SELECT s.id, e.stream_version, e.stream_hash FROM unnest($1::text[]) AS s(id) LEFT JOIN LATERAL
             (SELECT stream_version, stream_hash FROM tally_events WHERE stream_id = s.id ORDER BY stream_version DESC LIMIT 1) e ON true",
        )
        .await
        .map_err(pg)?;
    let rows = tx.query(&current, &[&streams]).await.map_err(pg)?;
    let mut versions: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let (id, version) = (row.get::<_, String>(0), row.get::<_, Option<i64>>(1).map_or(0, to_u64));
        let stream = StreamId::new(&id)?;
        let link = match row.get::<_, Option<Vec<u8>>>(2) {
            Some(stored) => to_hash(&stored)?,
            None if version > 0 => stream_link_at(tx, &stream, version).await?,
            None => chain::GENESIS,
        };
        heads.streams.insert(stream, link);
        versions.insert(id, version);
    }
    Ok(versions)
}

/// The link of `stream`'s event at `version`: from its last stored link at or before it, then computed
/// from the events after that.
async fn stream_link_at(tx: &deadpool_postgres::Transaction<'_>, stream: &StreamId, version: u64) -> Result<Hash, StoreError> {
    let last_linked = tx
        .prepare_cached(
            "SELECT stream_version, stream_hash FROM tally_events WHERE stream_id = $1 AND stream_version <= $2 AND stream_hash IS NOT NULL
             ORDER BY stream_version DESC LIMIT 1",
        )
        .await
        .map_err(pg)?;
    let (from, mut link) = match tx.query_opt(&last_linked, &[&stream.as_str(), &to_i64(version)]).await.map_err(pg)? {
        Some(row) => (to_u64(row.get(0)), to_hash(row.get::<_, &[u8]>(1))?),
        None => (0, chain::GENESIS),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM tally_events WHERE stream_id = $1 AND stream_version > $2 AND stream_version <= $3 ORDER BY stream_version"
    );
    let read = tx.prepare_cached(&sql).await.map_err(pg)?;
    for row in tx.query(&read, &[&stream.as_str(), &to_i64(from), &to_i64(version)]).await.map_err(pg)? {
        link = chain::stream_link(&link, &chain::canonical(&recorded(&row)?));
    }
    Ok(link)
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        file: "tally_log_head".into(),
        offset: 0,
        reason: format!("a hash link of {} bytes (expected 32)", bytes.len()),
    })
}

/// Columns of one multi-row insert, filled in batch order.
#[derive(Debug, Default)]
struct Columns {
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    global_position: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    recorded_at_ms: Vec<i64>,
    idempotency_key: Vec<String>,
    command_fingerprint: Vec<i64>,
    causation_id: Vec<String>,
    correlation_id: Vec<String>,
    traceparent: Vec<String>,
    tracestate: Vec<String>,
    payload: Vec<Vec<u8>>,
    command_digest: Vec<Option<Vec<u8>>>,
    principal: Vec<String>,
    principal_roles: Vec<String>,
    staff_id: Vec<String>,
    stream_hash: Vec<Vec<u8>>,
    log_hash: Vec<Vec<u8>>,
}

impl Columns {
    /// Inserts every event staged, in one statement.
    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        let c = self;
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO tally_events ({COLUMNS}) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], \
                 $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bytea[], $14::bytea[], $15::text[], \
                 $16::text[], $17::text[], $18::bytea[], $19::bytea[])"
            ))
            .await
            .map_err(pg)?;
        tx.execute(
            &insert,
            &[
                &c.stream_id,
                &c.stream_version,
                &c.global_position,
                &c.event_type,
                &c.schema_version,
                &c.recorded_at_ms,
                &c.idempotency_key,
                &c.command_fingerprint,
                &c.causation_id,
                &c.correlation_id,
                &c.traceparent,
                &c.tracestate,
                &c.payload,
                &c.command_digest,
                &c.principal,
                &c.principal_roles,
                &c.staff_id,
                &c.stream_hash,
                &c.log_hash,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    /// Stages one linked envelope (every field of the event is in it).
    fn push(&mut self, e: EventEnvelope) {
        self.stream_id.push(e.stream_id);
        self.stream_version.push(to_i64(e.stream_version));
        self.global_position.push(to_i64(e.global_position));
        self.event_type.push(e.event_type);
        self.schema_version.push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
        self.recorded_at_ms.push(e.recorded_at.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000));
        self.idempotency_key.push(e.idempotency_key);
        self.command_fingerprint.push(i64::from_ne_bytes(e.command_fingerprint.to_ne_bytes()));
        self.causation_id.push(e.causation_id);
        self.correlation_id.push(e.correlation_id);
        self.traceparent.push(e.traceparent);
        self.tracestate.push(e.tracestate);
        self.principal.push(e.principal);
        self.principal_roles.push(e.principal_roles);
        self.staff_id.push(e.staff_id);
        self.payload.push(e.payload);
        self.command_digest.push((!e.command_digest.is_empty()).then_some(e.command_digest));
        self.stream_hash.push(e.stream_hash);
        self.log_hash.push(e.log_hash);
    }
}

async fn write_loop(pool: Pool, mut queue: mpsc::Receiver<AppendRequest>, head: Arc<watch::Sender<u64>>) {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < GROUP_COMMIT_APPENDS_MAX {
            let Ok(next) = queue.try_recv() else { break };
            batch.push(next);
        }
        commit(&pool, &mut batch, &head).await;
    }
}

/// One transaction for every append in `batch`; each append's version check stays exact.
async fn commit(pool: &Pool, batch: &mut Vec<AppendRequest>, head: &watch::Sender<u64>) {
    let mut accepted: Vec<(oneshot::Sender<Result<AppendOutcome, StoreError>>, AppendOutcome)> = Vec::new();
    let started = std::time::Instant::now();
    let mut first = 0;
    let span = super::commit_span("postgres", batch);
    let result: Result<u64, StoreError> = async {
        let mut client = pool.get().await.map_err(pg)?;
        let tx = client.transaction().await.map_err(pg)?;
        // Taking this row lock first serialises appenders across every process sharing the log.
        // Statements are prepared once per pooled connection, not parsed again for every batch.
        let (last, log) = log_head(&tx).await?;
        let last = to_i64(last);
        let mut heads = Heads { log, ..Heads::default() };
        let mut versions = stream_heads(&tx, batch, &mut heads).await?;
        let mut position = to_u64(last);
        first = position;
        let mut columns = Columns::default();
        for request in batch.drain(..) {
            let actual = versions.get(request.stream.as_str()).copied().unwrap_or(0);
            if let ExpectedVersion::Exact(expected) = request.expected
                && expected != actual
            {
                let _ = request.reply.send(Err(StoreError::VersionConflict { stream: request.stream, expected, actual }));
                continue;
            }
            let count = request.events.len() as u64;
            let outcome = AppendOutcome {
                first_version: actual + 1,
                last_version: actual + count,
                first_position: position + 1,
                last_position: position + count,
            };
            for (i, event) in (0..).zip(request.events) {
                let mut envelope = into_envelope(&request.stream, actual + 1 + i, position + 1 + i, event);
                heads.link(&request.stream, &mut envelope);
                columns.push(envelope);
            }
            versions.insert(request.stream.as_str().to_owned(), actual + count);
            position += count;
            accepted.push((request.reply, outcome));
        }
        if accepted.is_empty() {
            return Ok(to_u64(last));
        }
        columns.insert(&tx).await?;
        let new_head = to_i64(position);
        let advance =
            tx.prepare_cached("UPDATE tally_log_head SET position = $1, log_hash = $2, log_hash_position = $1").await.map_err(pg)?;
        tx.execute(&advance, &[&new_head, &heads.log.map(Vec::from)]).await.map_err(pg)?;
        // Delivered to every listener when (and only if) the transaction commits.
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await.map_err(pg)?;
        tx.execute(&notify, &[&CHANNEL, &new_head.to_string()]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(position)
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(position) => {
            if !accepted.is_empty() {
                let took = started.elapsed();
                span.record("events", position - first).record("write_us", took.as_micros() as u64);
                super::record_commit("postgres", took, accepted.len(), position - first, None);
            }
            head.send_if_modified(|h| std::mem::replace(h, (*h).max(position)) < position);
            for (reply, outcome) in accepted {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::warn!(%error, appends = accepted.len() + batch.len(), "postgres append batch failed");
            span.record("otel.status_code", "error");
            // Whether the commit happened is unknown: callers retry with the same idempotency key.
            for (reply, _) in accepted {
                let _ = reply.send(Err(StoreError::Unavailable { reason: format!("{error}; the outcome is unknown") }));
            }
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(StoreError::Unavailable { reason: error.to_string() }));
            }
        }
    }
}

/// Wakes followers on `NOTIFY tally_events` from any process; reconnects when the connection drops.
async fn listen_loop(connection: super::pg_tls::PgConnection, head: std::sync::Weak<watch::Sender<u64>>) {
    while head.strong_count() > 0 {
        match connection.config.connect(connection.tls.clone()).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {CHANNEL}");
                let mut listen = std::pin::pin!(client.batch_execute(&statement));
                let mut listening = false;
                loop {
                    tokio::select! {
                        result = &mut listen, if !listening => {
                            listening = true;
                            if let Err(error) = result {
                                tracing::warn!(%error, "LISTEN failed; relying on polling");
                                break;
                            }
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let Some(head) = head.upgrade() else { return };
                                if let Ok(position) = n.payload().parse::<u64>() {
                                    head.send_if_modified(|h| std::mem::replace(h, (*h).max(position)) < position);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot LISTEN for new events; relying on polling"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fallback: reads the head now and then, in case a notification was lost.
async fn poll_loop(pool: Pool, head: std::sync::Weak<watch::Sender<u64>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(HEAD_POLL_MS)).await;
        let Some(sender) = head.upgrade() else { return };
        if let Ok(client) = pool.get().await
            && let Ok(row) = client.query_one("SELECT position FROM tally_log_head", &[]).await
        {
            let position = to_u64(row.get(0));
            sender.send_if_modified(|h| std::mem::replace(h, (*h).max(position)) < position);
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Result<AppendOutcome, StoreError> {
        super::queued_append(&self.sender, Append { stream: stream.clone(), expected, events }).await
    }

    async fn append_in_order(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, StoreError>> {
        super::queued_in_order(&self.sender, appends).await
    }

    async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM tally_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3");
        self.query(&sql, &[&stream.as_str(), &to_i64(from_version), &to_i64(limit as u64)]).await
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM tally_events WHERE global_position >= $1 ORDER BY global_position LIMIT $2");
        self.query(&sql, &[&to_i64(from_position), &to_i64(limit as u64)]).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        let row = client
            .query_one("SELECT coalesce(max(stream_version), 0) FROM tally_events WHERE stream_id = $1", &[&stream.as_str()])
            .await
            .map_err(pg)?;
        Ok(to_u64(row.get(0)))
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<PersonalKey>>, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        let ids: Vec<&str> = subjects.iter().map(StreamId::as_str).collect();
        let rows = client.query("SELECT stream_id, key FROM tally_personal_keys WHERE stream_id = ANY($1)", &[&ids]).await.map_err(pg)?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let (id, bytes): (String, Vec<u8>) = (row.get(0), row.get(1));
            let key = PersonalKey::from_bytes(&bytes).ok_or_else(|| StoreError::Corrupt {
                file: "tally_personal_keys".into(),
                offset: 0,
                reason: format!("a key of {} bytes for {id}, not 32", bytes.len()),
            })?;
            found.insert(id, key);
        }
        Ok(ids.iter().map(|id| found.get(*id).cloned()).collect())
    }

    async fn keep_personal_key(&self, subject: &StreamId, key: &PersonalKey) -> Result<PersonalKey, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        // Inserted unless there is one (committed at once), then read back: the key that won.
        client
            .execute(
                "INSERT INTO tally_personal_keys (stream_id, key) VALUES ($1, $2) ON CONFLICT (stream_id) DO NOTHING",
                &[&subject.as_str(), &key.as_bytes().as_slice()],
            )
            .await
            .map_err(pg)?;
        let row = client.query_one("SELECT key FROM tally_personal_keys WHERE stream_id = $1", &[&subject.as_str()]).await.map_err(pg)?;
        let bytes: Vec<u8> = row.get(0);
        PersonalKey::from_bytes(&bytes).ok_or_else(|| StoreError::Corrupt {
            file: "tally_personal_keys".into(),
            offset: 0,
            reason: format!("a key of {} bytes for {subject}, not 32", bytes.len()),
        })
    }

    async fn erase_personal_key(&self, subject: &StreamId) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        let deleted = client.execute("DELETE FROM tally_personal_keys WHERE stream_id = $1", &[&subject.as_str()]).await.map_err(pg)?;
        Ok(deleted > 0)
    }
}
