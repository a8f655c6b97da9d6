//! The in-memory backend: for tests and simulation. Same semantics as the durable ones, plus optional
//! seeded fault injection on appends.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::embedded::record::into_envelope;
use super::{AppendOutcome, EventData, EventStore, ExpectedVersion, PersonalKey, RecordedEvent, StoreError, StreamId, chain, check_append};

/// Seeded append faults. Per-mille rates; the same seed gives the same faults for the same sequence of
/// appends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub seed: u64,
    /// Appends that fail before anything is written.
    pub fail_before_write_per_mille: u32,
    /// Appends that are written but whose acknowledgement is lost: the caller sees an error.
    pub fail_after_write_per_mille: u32,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<RecordedEvent>,
    /// Stream → global positions of its events, in version order.
    streams: HashMap<StreamId, Vec<u64>>,
    heads: chain::Heads,
    rng: u64,
    /// Personal data keys by stream (`EventStore::personal_keys`).
    keys: HashMap<StreamId, PersonalKey>,
}

#[derive(Debug)]
pub struct InMemoryStore {
    log: Mutex<Log>,
    faults: FaultPlan,
    head_tx: watch::Sender<u64>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::with_faults(FaultPlan::default())
    }
}

impl InMemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with_faults(faults: FaultPlan) -> Self {
        let log = Log { rng: faults.seed, ..Log::default() };
        Self { log: Mutex::new(log), faults, head_tx: watch::Sender::new(0) }
    }

    /// Every event, in global order (for assertions in tests).
    pub fn all_events(&self) -> Vec<RecordedEvent> {
        self.log.lock().events.clone()
    }
}

/// SplitMix64: tiny, deterministic, good enough to draw faults.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw(log: &mut Log, per_mille: u32) -> bool {
    per_mille > 0 && next_random(&mut log.rng) % 1000 < u64::from(per_mille)
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(&self, stream: &StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Result<AppendOutcome, StoreError> {
        check_append(&events)?;
        let mut log = self.log.lock();
        if draw(&mut log, self.faults.fail_before_write_per_mille) {
            return Err(StoreError::Unavailable { reason: "injected fault before write".into() });
        }
        let actual = log.streams.get(stream).map_or(0, |positions| positions.len() as u64);
        if let ExpectedVersion::Exact(expected) = expected
            && expected != actual
        {
            return Err(StoreError::VersionConflict { stream: stream.clone(), expected, actual });
        }
        let first_position = log.events.len() as u64 + 1;
        let count = events.len() as u64;
        for (i, data) in events.into_iter().enumerate() {
            let i = i as u64;
            let (stream_version, global_position) = (actual + i + 1, first_position + i);
            let mut envelope = into_envelope(stream, stream_version, global_position, data.clone());
            let links = Some(log.heads.link(stream, &mut envelope));
            log.events.push(RecordedEvent { stream_id: stream.clone(), stream_version, global_position, data, links });
        }
        log.streams.entry(stream.clone()).or_default().extend(first_position..first_position + count);
        let last_position = first_position + count - 1;
        self.head_tx.send_replace(last_position);
        if draw(&mut log, self.faults.fail_after_write_per_mille) {
            return Err(StoreError::Unavailable { reason: "injected fault after write".into() });
        }
        Ok(AppendOutcome { first_version: actual + 1, last_version: actual + count, first_position, last_position })
    }

    async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log.lock();
        let Some(positions) = log.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(from_version.max(1) - 1).unwrap_or(usize::MAX);
        Ok(positions.iter().skip(start).take(limit).map(|&p| log.events[usize::try_from(p - 1).unwrap_or(usize::MAX)].clone()).collect())
    }

    async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log.lock();
        let start = usize::try_from(from_position.max(1) - 1).unwrap_or(usize::MAX);
        Ok(log.events.iter().skip(start).take(limit).cloned().collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
        Ok(self.log.lock().streams.get(stream).map_or(0, |p| p.len() as u64))
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<PersonalKey>>, StoreError> {
        let log = self.log.lock();
        Ok(subjects.iter().map(|s| log.keys.get(s).cloned()).collect())
    }

    async fn keep_personal_key(&self, subject: &StreamId, key: &PersonalKey) -> Result<PersonalKey, StoreError> {
        Ok(self.log.lock().keys.entry(subject.clone()).or_insert_with(|| key.clone()).clone())
    }

    async fn erase_personal_key(&self, subject: &StreamId) -> Result<bool, StoreError> {
        Ok(self.log.lock().keys.remove(subject).is_some())
    }
}
