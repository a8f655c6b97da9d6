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

use super::{
    Append, AppendOutcome, AppendRequest, EventData, EventMetadata, EventStore, ExpectedVersion, RecordedEvent, StoreError, StreamId,
    WriterQueue, command_digest,
};
use crate::limits::{APPEND_QUEUE_DEPTH_MAX, GROUP_COMMIT_APPENDS_MAX};

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
                       principal, principal_roles, staff_id";

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
    let command_digest = command_digest(row.get::<_, Option<&[u8]>>(13).unwrap_or_default()).map_err(|reason| StoreError::Corrupt {
        file: "tally_events".into(),
        offset: global_position,
        reason,
    })?;
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
}

impl Columns {
    /// Inserts every event staged, in one statement.
    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        let c = self;
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO tally_events ({COLUMNS}) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], \
                 $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bytea[], $14::bytea[], $15::text[], \
                 $16::text[], $17::text[])"
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
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    fn push(&mut self, stream: &StreamId, version: u64, position: u64, event: EventData) {
        self.stream_id.push(stream.as_str().to_owned());
        self.stream_version.push(to_i64(version));
        self.global_position.push(to_i64(position));
        self.event_type.push(event.event_type);
        self.schema_version.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
        self.recorded_at_ms.push(event.recorded_at_ms);
        self.idempotency_key.push(event.idempotency_key);
        self.command_fingerprint.push(i64::from_ne_bytes(event.command_fingerprint.to_ne_bytes()));
        self.causation_id.push(event.metadata.causation_id);
        self.correlation_id.push(event.metadata.correlation_id);
        self.traceparent.push(event.metadata.traceparent);
        self.tracestate.push(event.metadata.tracestate);
        self.principal.push(event.metadata.principal);
        self.principal_roles.push(event.metadata.principal_roles);
        self.staff_id.push(event.metadata.staff_id);
        self.payload.push(event.payload);
        self.command_digest.push(event.command_digest.map(Vec::from));
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
        let lock_head = tx.prepare_cached("SELECT position FROM tally_log_head FOR UPDATE").await.map_err(pg)?;
        let last: i64 = tx.query_one(&lock_head, &[]).await.map_err(pg)?.get(0);
        let streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
        let current = tx
            // One index probe per stream (the unique (stream_id, stream_version) index, read backwards),
            // whatever plan the prepared statement settles on.
            .prepare_cached(
                "SELECT s.id, (SELECT e.stream_version FROM tally_events e WHERE e.stream_id = s.id ORDER BY e.stream_version DESC LIMIT 1)
                 FROM unnest($1::text[]) AS s(id)",
            )
            .await
            .map_err(pg)?;
        let rows = tx.query(&current, &[&streams]).await.map_err(pg)?;
        let mut versions: HashMap<String, u64> =
            rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<i64>>(1).map_or(0, to_u64))).collect();
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
                columns.push(&request.stream, actual + 1 + i, position + 1 + i, event);
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
        let advance = tx.prepare_cached("UPDATE tally_log_head SET position = $1").await.map_err(pg)?;
        tx.execute(&advance, &[&new_head]).await.map_err(pg)?;
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
}
