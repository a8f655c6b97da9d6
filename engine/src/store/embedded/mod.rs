//! The embedded durable log, Tally's default store: segment files of checksummed records, group commit
//! (many appends share one fsync) and an in-memory index rebuilt from the log at every start.
//!
//! Layout of a data directory: `LOCK` (held while open), `log/<first position, 20 digits>.seg`.
//!
//! Architecture Invariant: no append is acknowledged, and no event is visible to readers, before the
//! fsync that covers it has returned.
//! Architecture Invariant: on start, a torn tail (the last, unacknowledged write) is truncated and
//! reported; any other damage stops start-up with the file and offset.
//! Architecture Invariant: the index is derived from the log alone.

pub(in crate::store) mod record;
mod writer;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tally_proto::v1::EventEnvelope;
use tokio::sync::{mpsc, watch};

use self::record::Frame;
use self::writer::Writer;
use super::keys::KeysDir;
use super::{
    Append, AppendOutcome, EventData, EventStore, ExpectedVersion, PersonalKey, RecordedEvent, StoreError, StreamId, WriterQueue, chain,
};
use crate::FastMap;
use crate::limits::{APPEND_QUEUE_DEPTH_MAX, SEGMENT_BYTES_MAX};

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Size at which a new segment is started, in bytes.
    pub segment_bytes_max: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self { segment_bytes_max: SEGMENT_BYTES_MAX }
    }
}

/// What `open` found, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub events: u64,
    pub streams: usize,
    /// An incomplete last write that was cut off. Never an acknowledged append.
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_dropped: u64,
}

/// Where a record lives: segment number, offset and framed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    segment: u32,
    offset: u32,
    len: u32,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Global position - 1 → the record holding that event.
    locs: Vec<Loc>,
    /// Stream → global positions of its events, in version order.
    streams: FastMap<StreamId, Vec<u64>>,
    /// The hash chains' heads as the scan leaves them; handed to the writer at open.
    heads: chain::Heads,
}

impl Index {
    fn stream_version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, |p| p.len() as u64)
    }
}

#[derive(Debug)]
pub(super) struct Segment {
    path: PathBuf,
    file: File,
}

#[derive(Debug)]
pub(super) struct Shared {
    index: RwLock<Index>,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Why the writer refuses appends since a failed write or fsync.
    broken: Mutex<Option<String>>,
}

#[derive(Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    sender: WriterQueue,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    head_rx: watch::Receiver<u64>,
    report: OpenReport,
    /// Personal data keys, in `keys/` beside `log/` (under the same lock).
    keys: Arc<KeysDir>,
    _lock: File,
}

/// The log's segment files with the position each starts at, in order.
fn segment_names(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(log_dir).map_err(|e| StoreError::io(log_dir, e))? {
        let path = entry.map_err(|e| StoreError::io(log_dir, e))?.path();
        let Some(stem) = path.extension().filter(|x| *x == "seg").and(path.file_stem()).and_then(|s| s.to_str()) else {
            continue;
        };
        let first = stem.parse::<u64>().map_err(|_| StoreError::Corrupt {
            file: path.clone(),
            offset: 0,
            reason: "segment name is not a position".into(),
        })?;
        names.push((first, path));
    }
    names.sort();
    Ok(names)
}

fn segment_path(log_dir: &Path, first_position: u64) -> PathBuf {
    log_dir.join(format!("{first_position:020}.seg"))
}

impl EmbeddedStore {
    /// Opens (or creates) the log in `dir`, verifying every record and rebuilding the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir).map_err(|e| StoreError::io(&log_dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| StoreError::io(&lock_path, e))?;
        lock.try_lock().map_err(|_| StoreError::Unavailable {
            reason: format!("{} is locked: another tally process is using this data directory", lock_path.display()),
        })?;

        let keys = Arc::new(KeysDir::open(dir.join("keys"))?);
        let names = segment_names(&log_dir)?;

        let acknowledged = Acknowledged::read(dir);
        // The note names the segment being written; a log whose segments stop before it lost some.
        if let Some(note) = acknowledged
            && note.bytes > 0
            && names.last().is_none_or(|(first, _)| *first < note.first_position)
        {
            return Err(StoreError::Corrupt {
                file: segment_path(&log_dir, note.first_position),
                offset: 0,
                reason: "the segment the log acknowledged appends in is missing: acknowledged events are gone".into(),
            });
        }
        let mut index = Index::default();
        let mut segments = Vec::new();
        let mut report = OpenReport::default();
        let last = names.len().checked_sub(1);
        for (i, (first, path)) in names.iter().enumerate() {
            if *first != index.locs.len() as u64 + 1 {
                return Err(StoreError::Corrupt {
                    file: path.clone(),
                    offset: 0,
                    reason: format!("segment starts at position {first}, expected {}", index.locs.len() + 1),
                });
            }
            let segment_no = u32::try_from(i).map_err(|_| StoreError::Unavailable { reason: "too many segments".into() })?;
            // The writer noted how far it acknowledged: a tail cut below that is damage, not a torn write.
            let tail = (Some(i) == last).then(|| acknowledged.filter(|a| a.first_position == *first).map_or(0, |a| a.bytes));
            let torn = scan_segment(path, segment_no, tail, &mut index)?;
            if let Some(torn) = torn {
                tracing::warn!(file = %torn.file.display(), offset = torn.offset, bytes = torn.bytes_dropped, "truncated a torn tail left by a crash");
                report.torn_tail = Some(torn);
            }
            let file = File::options().read(true).append(true).open(path).map_err(|e| StoreError::io(path, e))?;
            segments.push(Arc::new(Segment { path: path.clone(), file }));
        }
        if segments.is_empty() {
            let path = segment_path(&log_dir, 1);
            segments.push(Arc::new(writer::create_segment(&log_dir, &path)?));
        }
        report.segments = segments.len();
        report.events = index.locs.len() as u64;
        report.streams = index.streams.len();

        let head = index.locs.len() as u64;
        let heads = std::mem::take(&mut index.heads);
        let (head_tx, head_rx) = watch::channel(head);
        let active = Arc::clone(segments.last().expect("at least one segment"));
        let active_len = active.file.metadata().map_err(|e| StoreError::io(&active.path, e))?.len();
        let shared = Arc::new(Shared { index: RwLock::new(index), segments: RwLock::new(segments), broken: Mutex::new(None) });
        let (sender, receiver) = mpsc::channel(APPEND_QUEUE_DEPTH_MAX);
        let active_first = names.last().map_or(1, |(first, _)| *first);
        let note_path = dir.join(Acknowledged::FILE);
        let note = File::options().create(true).truncate(false).write(true).open(&note_path).map_err(|e| StoreError::io(&note_path, e))?;
        let writer = Writer::new(Arc::clone(&shared), log_dir, active, active_len, head + 1, head_tx, options, active_first, note, heads);
        let handle = std::thread::Builder::new()
            .name("tally-log-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::io(dir, e))?;
        tracing::info!(dir = %dir.display(), events = report.events, streams = report.streams, segments = report.segments, "embedded log opened");
        Ok(Self { shared, sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(handle)), head_rx, report, keys, _lock: lock })
    }

    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// Stops taking appends, lets the writer finish what it has (each batch is fsync'd before it is
    /// acknowledged), and waits for it. Appends after this fail with `Unavailable`.
    pub async fn close(&self) {
        drop(self.sender.lock().take());
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            // The writer exits once the queue is drained; joining blocks, so do it off the runtime.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Reads the records at `locs` (each once, in order), keeping the events `keep` accepts.
    fn load(&self, locs: &[Loc], keep: impl Fn(&EventEnvelope) -> bool) -> Result<Vec<RecordedEvent>, StoreError> {
        let segments = self.shared.segments.read().clone();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            // Coalesce records that sit back to back in one segment into a single read.
            let first = locs[i];
            let mut end = first.offset + first.len;
            let mut j = i + 1;
            while j < locs.len() && locs[j].segment == first.segment && locs[j].offset == end {
                end += locs[j].len;
                j += 1;
            }
            let segment = &segments[first.segment as usize];
            buf.resize((end - first.offset) as usize, 0);
            segment.file.read_exact_at(&mut buf, u64::from(first.offset)).map_err(|e| StoreError::io(&segment.path, e))?;
            let mut at = 0;
            while at < buf.len() {
                let offset = u64::from(first.offset) + at as u64;
                let corrupt = |reason: String| StoreError::Corrupt { file: segment.path.clone(), offset, reason };
                let Frame::Valid { body, len } = record::parse(&buf[at..]) else {
                    return Err(corrupt("record failed its checksum on read".into()));
                };
                for envelope in record::decode(body).map_err(corrupt)?.events {
                    if keep(&envelope) {
                        out.push(record::from_envelope(envelope).map_err(corrupt)?);
                    }
                }
                at += len;
            }
            i = j;
        }
        Ok(out)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        drop(self.sender.lock().take());
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// How far the writer acknowledged appends: bytes of the segment that starts at `first_position`. Written
/// after each fsync without one of its own: after a crash it may be behind what was acknowledged, never
/// ahead of what is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Acknowledged {
    pub(super) first_position: u64,
    pub(super) bytes: u64,
}

impl Acknowledged {
    /// Beside the `log/` directory (which holds only segments).
    pub(super) const FILE: &'static str = "log.acknowledged";

    fn read(dir: &Path) -> Option<Self> {
        let bytes = fs::read(dir.join(Self::FILE)).ok()?;
        let word = |i: usize| bytes.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        Some(Self { first_position: word(0)?, bytes: word(8)? })
    }

    pub(super) fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.first_position.to_le_bytes());
        out[8..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }
}

/// Verifies one segment and adds its records to the index. For the last segment, `tail` is how many of
/// its bytes were acknowledged: damage after that is a torn write and is cut off (returned); damage before
/// it is corruption of acknowledged data and stops the open.
fn scan_segment(path: &Path, segment: u32, tail: Option<u64>, index: &mut Index) -> Result<Option<TornTail>, StoreError> {
    let bytes = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    let mut offset = 0usize;
    while offset < bytes.len() {
        let corrupt = |reason: String| StoreError::Corrupt { file: path.to_owned(), offset: offset as u64, reason };
        match record::parse(&bytes[offset..]) {
            Frame::Valid { body, len } => {
                let record = record::decode(body).map_err(corrupt)?;
                if record.events.is_empty() {
                    return Err(corrupt("record holds no events".into()));
                }
                let loc = Loc {
                    segment,
                    offset: u32::try_from(offset).map_err(|_| corrupt("segment exceeds 4 GiB".into()))?,
                    len: u32::try_from(len).map_err(|_| corrupt("record exceeds 4 GiB".into()))?,
                };
                for envelope in &record.events {
                    let stream = StreamId::new(&envelope.stream_id).map_err(|e| corrupt(e.to_string()))?;
                    let position = index.locs.len() as u64 + 1;
                    let version = index.stream_version(&stream) + 1;
                    if envelope.global_position != position || envelope.stream_version != version {
                        return Err(corrupt(format!(
                            "event at position {} version {} of {stream}, expected position {position} version {version}",
                            envelope.global_position, envelope.stream_version
                        )));
                    }
                    let stored = chain::stored_links(&envelope.stream_hash, &envelope.log_hash).map_err(corrupt)?;
                    index.heads.follow(&stream, stored, || chain::canonical_envelope(envelope));
                    index.locs.push(loc);
                    index.streams.entry(stream).or_default().push(position);
                }
                offset += len;
            }
            Frame::Incomplete | Frame::Invalid(_)
                if tail.is_some_and(|acknowledged| acknowledged > offset as u64) && !record::any_valid_frame(&bytes[offset + 1..]) =>
            {
                return Err(corrupt(format!(
                    "a record the log acknowledged (up to byte {}) is damaged: not a torn write, so it is not cut off",
                    tail.unwrap_or_default()
                )));
            }
            Frame::Incomplete | Frame::Invalid(_) if tail.is_some() && !record::any_valid_frame(&bytes[offset + 1..]) => {
                // Only the last write can be torn, and it was never acknowledged: cut it off.
                let file = File::options().write(true).open(path).map_err(|e| StoreError::io(path, e))?;
                file.set_len(offset as u64).and_then(|()| file.sync_all()).map_err(|e| StoreError::io(path, e))?;
                return Ok(Some(TornTail { file: path.to_owned(), offset: offset as u64, bytes_dropped: (bytes.len() - offset) as u64 }));
            }
            Frame::Incomplete => {
                return Err(corrupt("truncated record before the end of the log".into()));
            }
            Frame::Invalid(reason) => return Err(corrupt(reason.into())),
        }
    }
    // The note is written after the fsync it reports, so it is never ahead of what was durable: a file
    // shorter than it lost acknowledged events (cut off at a record's end, it would read as whole).
    if let Some(acknowledged) = tail.filter(|acknowledged| *acknowledged > bytes.len() as u64) {
        return Err(StoreError::Corrupt {
            file: path.to_owned(),
            offset: bytes.len() as u64,
            reason: format!(
                "the segment ends at byte {} but {acknowledged} bytes of it were acknowledged: acknowledged events are missing",
                bytes.len()
            ),
        });
    }
    Ok(None)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    fn broken(&self) -> Option<String> {
        self.shared.broken.lock().clone()
    }

    async fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Result<AppendOutcome, StoreError> {
        super::queued_append(&self.sender, Append { stream: stream.clone(), expected, events }).await
    }

    async fn append_in_order(&self, appends: Vec<Append>) -> Vec<Result<AppendOutcome, StoreError>> {
        super::queued_in_order(&self.sender, appends).await
    }

    async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let from_version = from_version.max(1);
        let locs: Vec<Loc> = {
            let index = self.shared.index.read();
            let Some(positions) = index.streams.get(stream) else {
                return Ok(Vec::new());
            };
            let start = usize::try_from(from_version - 1).unwrap_or(usize::MAX).min(positions.len());
            let mut locs: Vec<Loc> = positions[start..].iter().take(limit).map(|&p| index.locs[(p - 1) as usize]).collect();
            locs.dedup();
            locs
        };
        let to_version = from_version.saturating_add(limit as u64);
        self.load(&locs, |e| e.stream_id == stream.as_str() && e.stream_version >= from_version && e.stream_version < to_version)
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let from_position = from_position.max(1);
        let locs: Vec<Loc> = {
            let index = self.shared.index.read();
            let start = usize::try_from(from_position - 1).unwrap_or(usize::MAX).min(index.locs.len());
            let mut locs: Vec<Loc> = index.locs[start..].iter().take(limit).copied().collect();
            locs.dedup();
            locs
        };
        let to_position = from_position.saturating_add(limit as u64);
        self.load(&locs, |e| e.global_position >= from_position && e.global_position < to_position)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.shared.index.read().stream_version(stream))
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<PersonalKey>>, StoreError> {
        let (keys, subjects) = (Arc::clone(&self.keys), subjects.to_vec());
        blocking(move || subjects.iter().map(|s| keys.get(s)).collect()).await
    }

    async fn keep_personal_key(&self, subject: &StreamId, key: &PersonalKey) -> Result<PersonalKey, StoreError> {
        let (keys, subject, key) = (Arc::clone(&self.keys), subject.clone(), key.clone());
        blocking(move || keys.keep(&subject, &key)).await
    }

    async fn erase_personal_key(&self, subject: &StreamId) -> Result<bool, StoreError> {
        let (keys, subject) = (Arc::clone(&self.keys), subject.clone());
        blocking(move || keys.erase(&subject)).await
    }
}

/// Runs file work (reads, fsyncs) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Unavailable { reason: format!("key file work failed: {e}") })?
}
