//! The log writer: one thread that owns the tail of the log and implements group commit.
//!
//! It takes every append waiting in its queue, checks each expected version (in queue order, so of two
//! appends at the same version exactly one wins), writes them all, calls fsync once, and only then
//! publishes them to readers and acknowledges them. While it waits on fsync, the next batch queues up.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Acknowledged, EmbeddedOptions, Loc, Segment, Shared, record, segment_path};
use crate::FastMap;
use crate::limits::{GROUP_COMMIT_APPENDS_MAX, GROUP_COMMIT_BYTES_MAX};
use crate::store::{AppendOutcome, AppendRequest, ExpectedVersion, StoreError, StreamId, chain};

/// An append written into the batch buffer, waiting for the fsync.
#[derive(Debug)]
struct Staged {
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    stream: StreamId,
    outcome: AppendOutcome,
    offset: usize,
    len: usize,
}

pub(super) fn create_segment(log_dir: &Path, path: &Path) -> Result<Segment, StoreError> {
    let file = File::options().read(true).append(true).create_new(true).open(path).map_err(|e| StoreError::io(path, e))?;
    // The new name must survive a crash too.
    File::open(log_dir).and_then(|dir| dir.sync_all()).map_err(|e| StoreError::io(log_dir, e))?;
    Ok(Segment { path: path.to_owned(), file })
}

#[derive(Debug)]
pub(super) struct Writer {
    shared: Arc<Shared>,
    log_dir: PathBuf,
    active: Arc<Segment>,
    active_len: u64,
    next_position: u64,
    head_tx: watch::Sender<u64>,
    options: EmbeddedOptions,
    /// Set after a failed write or fsync: the tail of the file is unknown, so nothing more is accepted
    /// until a restart re-verifies the log.
    failed: Option<String>,
    buf: Vec<u8>,
    /// The first position of the active segment (its name), and the note of how far it is acknowledged.
    active_first: u64,
    acknowledged: File,
    /// The hash chains' heads: each stream's last link and the log's (`store::chain`).
    heads: chain::Heads,
}

impl Writer {
    #[expect(clippy::too_many_arguments, reason = "the writer's whole state, handed over once by `open`")]
    pub(super) fn new(
        shared: Arc<Shared>,
        log_dir: PathBuf,
        active: Arc<Segment>,
        active_len: u64,
        next_position: u64,
        head_tx: watch::Sender<u64>,
        options: EmbeddedOptions,
        active_first: u64,
        acknowledged: File,
        heads: chain::Heads,
    ) -> Self {
        Self {
            shared,
            log_dir,
            active,
            active_len,
            next_position,
            head_tx,
            options,
            failed: None,
            buf: Vec::new(),
            active_first,
            acknowledged,
            heads,
        }
    }

    pub(super) fn run(mut self, mut queue: mpsc::Receiver<AppendRequest>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            let mut bytes = payload_bytes(&first);
            batch.push(first);
            while batch.len() < GROUP_COMMIT_APPENDS_MAX && bytes < GROUP_COMMIT_BYTES_MAX {
                let Ok(next) = queue.try_recv() else { break };
                bytes += payload_bytes(&next);
                batch.push(next);
            }
            self.commit(&mut batch);
        }
        tracing::debug!("log writer stopped: queue closed and drained");
    }

    fn commit(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Some(reason) = &self.failed {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(StoreError::Unavailable { reason: reason.clone() }));
            }
            return;
        }
        let span = super::super::commit_span("embedded", batch);
        let _entered = span.enter();
        self.buf.clear();
        let mut staged = Vec::with_capacity(batch.len());
        let mut batch_versions: FastMap<StreamId, u64> = FastMap::default();
        let mut position = self.next_position;
        {
            let index = self.shared.index.read();
            for request in batch.drain(..) {
                let actual = match batch_versions.get(&request.stream) {
                    Some(version) => *version,
                    None => index.stream_version(&request.stream),
                };
                if let ExpectedVersion::Exact(expected) = request.expected
                    && expected != actual
                {
                    let _ = request.reply.send(Err(StoreError::VersionConflict { stream: request.stream, expected, actual }));
                    continue;
                }
                let count = request.events.len() as u64;
                // Linked in position order: the chains follow the log as readers will see it.
                let offset = record::open_record(&mut self.buf);
                for (data, i) in request.events.into_iter().zip(0..) {
                    let envelope = record::into_envelope(&request.stream, actual + 1 + i, position + i, data);
                    record::push_linked(&mut self.buf, &envelope, |canonical| self.heads.link_canonical(&request.stream, canonical));
                }
                let len = record::seal(&mut self.buf, offset);
                let outcome = AppendOutcome {
                    first_version: actual + 1,
                    last_version: actual + count,
                    first_position: position,
                    last_position: position + count - 1,
                };
                batch_versions.insert(request.stream.clone(), actual + count);
                position += count;
                staged.push(Staged { reply: request.reply, stream: request.stream, outcome, offset, len });
            }
        }
        if staged.is_empty() {
            return;
        }
        let (started, bytes) = (std::time::Instant::now(), self.buf.len());
        if let Err(error) = self.write_and_sync() {
            let reason = format!("log write failed, restart to recover: {error}");
            tracing::error!(%error, "log write failed; refusing further appends");
            span.record("otel.status_code", "error");
            for s in staged {
                let _ = s.reply.send(Err(StoreError::Unavailable { reason: reason.clone() }));
            }
            *self.shared.broken.lock() = Some(reason.clone());
            self.failed = Some(reason);
            return;
        }
        let batch_start = self.active_len - self.buf.len() as u64;
        let segment = u32::try_from(self.shared.segments.read().len() - 1).expect("segment count checked at open");
        {
            let mut index = self.shared.index.write();
            for s in &staged {
                let loc = Loc {
                    segment,
                    offset: u32::try_from(batch_start + s.offset as u64).expect("segments stay below 4 GiB"),
                    len: u32::try_from(s.len).expect("records are bounded"),
                };
                let positions = s.outcome.first_position..=s.outcome.last_position;
                index.locs.extend(positions.clone().map(|_| loc));
                match index.streams.get_mut(&s.stream) {
                    Some(stream_positions) => stream_positions.extend(positions),
                    None => {
                        index.streams.insert(s.stream.clone(), positions.collect());
                    }
                }
            }
        }
        let took = started.elapsed();
        span.record("events", position - self.next_position).record("bytes", bytes).record("write_us", took.as_micros() as u64);
        super::super::record_commit("embedded", took, staged.len(), position - self.next_position, Some(bytes));
        self.next_position = position;
        self.head_tx.send_replace(position - 1);
        for s in staged {
            let _ = s.reply.send(Ok(s.outcome));
        }
    }

    fn write_and_sync(&mut self) -> Result<(), StoreError> {
        if self.active_len > 0 && self.active_len + self.buf.len() as u64 > self.options.segment_bytes_max {
            self.roll()?;
        }
        let path = &self.active.path;
        (&self.active.file).write_all(&self.buf).map_err(|e| StoreError::io(path, e))?;
        self.active_len += self.buf.len() as u64;
        self.active.file.sync_data().map_err(|e| StoreError::io(path, e))?;
        // How far appends are acknowledged, so an open can tell a torn write from damage to acknowledged
        // data. No fsync of its own: a stale note only makes the open as lenient as it was without one.
        let note = Acknowledged { first_position: self.active_first, bytes: self.active_len };
        self.acknowledged
            .write_all_at(&note.encode(), 0)
            .map_err(|e| StoreError::io(self.log_dir.with_file_name(Acknowledged::FILE), e))?;
        Ok(())
    }

    /// Seals the active segment and starts a new one named after the next position.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.active.file.sync_all().map_err(|e| StoreError::io(&self.active.path, e))?;
        let path = segment_path(&self.log_dir, self.next_position);
        let segment = Arc::new(create_segment(&self.log_dir, &path)?);
        self.shared.segments.write().push(Arc::clone(&segment));
        self.active = segment;
        self.active_len = 0;
        self.active_first = self.next_position;
        tracing::info!(file = %path.display(), "started a new log segment");
        Ok(())
    }
}

fn payload_bytes(request: &AppendRequest) -> usize {
    request.events.iter().map(|e| e.payload.len() + 64).sum()
}
