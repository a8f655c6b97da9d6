//! The local read model in sled: each wallet's summary and its movement history, for fast reads and
//! history paging on the node itself.
//!
//! Each generation is one tree; its keys are
//! - `checkpoint` → the last log position applied (u64, big endian),
//! - `w/<tenant>/<wallet>` → [`WalletSummary`],
//! - `q/<position (u64, big endian)>` → a [`QuarantinedEvent`]: a poison event the generation skipped,
//!   written in the batch that moves the checkpoint past it,
//! - `m/<tenant>/<wallet>/<position (u64, big endian)>` → a chunk of up to [`CHUNK_ENTRIES_MAX`]
//!   [`HistoryEntry`]s of one batch, oldest first, keyed by the position of its newest entry (sled pays
//!   per insert, so a rebuild writing one chunk per wallet and batch is several times faster than one
//!   insert per event),
//!
//! and values are `format version (u8) | postcard`. A batch's rows and its checkpoint go in one sled
//! batch, which sled applies atomically, also across a crash. Writes are not flushed one by one: sled
//! flushes on its own every half second, and a crash that loses the last few batches loses their
//! checkpoint with them, so the projection simply applies them again. Ids never contain `/`.
//! The `meta` tree names the live generation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::WalletSummary;
use crate::movement::{Movement, MovementKind};
use crate::quarantine::{QuarantineSummary, QuarantinedEvent, RECENT_QUARANTINED_MAX};
use crate::{Generation, ProjectionError, ReadModel};

/// The projection's name, in status output and metrics.
pub const NAME: &str = "wallet_activity";
const FORMAT_VERSION: u8 = 1;
const TREE_PREFIX: &str = "wallet_activity.g";
const LIVE_KEY: &[u8] = b"live";
/// The log the model follows (its identity).
const LOG_KEY: &[u8] = b"log";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const QUARANTINE_PREFIX: &[u8] = b"q/";
/// Most history entries in one stored chunk, so paging never decodes much more than a page.
pub const CHUNK_ENTRIES_MAX: usize = 64;

/// One line of a wallet's history. Written with borrowed strings (`HistoryEntry<&str>`, no copies),
/// read back owned; the encoding is the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry<S = String> {
    pub position: u64,
    pub stream_version: u64,
    pub kind: MovementKind,
    pub points: i64,
    pub balance_after: i64,
    pub reason: S,
    pub reference: S,
    pub idempotency_key: S,
    pub recorded_at_ms: i64,
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// The read model had applied at least the log up to here when the page was read.
    pub as_of_position: u64,
}

#[derive(Debug)]
pub struct SledReadModel {
    db: sled::Db,
    meta: sled::Tree,
    live: RwLock<(u64, sled::Tree)>,
    building: Mutex<Option<(u64, sled::Tree)>>,
}

fn tree_name(generation: u64) -> String {
    format!("{TREE_PREFIX}{generation}")
}

fn wallet_key(tenant: &str, wallet: &str) -> Vec<u8> {
    format!("w/{tenant}/{wallet}").into_bytes()
}

fn history_prefix(tenant: &str, wallet: &str) -> Vec<u8> {
    format!("m/{tenant}/{wallet}/").into_bytes()
}

/// Wallet summaries are stored as version 3 since they keep `customer_erased` and `customer_sealed` (their
/// last fields); rows written before are the same encoding without them (version 1: neither; version 2:
/// no sealed data), read as not erased with nothing sealed.
const SUMMARY_FORMAT_VERSION: u8 = 3;

fn encode_summary(summary: &WalletSummary) -> Vec<u8> {
    postcard::to_extend(summary, vec![SUMMARY_FORMAT_VERSION]).expect("serializing to a Vec cannot fail")
}

fn decode_summary(key: &[u8], bytes: &[u8]) -> Result<WalletSummary, ProjectionError> {
    match bytes.split_first() {
        Some((&SUMMARY_FORMAT_VERSION, rest)) => postcard::from_bytes(rest)
            .map_err(|e| ProjectionError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: e.to_string() }),
        // postcard writes `false` and an empty byte string as one zero byte each, appended where the
        // older versions ended.
        Some((&FORMAT_VERSION, rest)) => decode(key, &[&[FORMAT_VERSION], rest, &[0, 0]].concat()),
        Some((&2, rest)) => decode(key, &[&[FORMAT_VERSION], rest, &[0]].concat()),
        _ => decode(key, bytes),
    }
}

/// Rewrites the stored history of a wallet whose customer was erased without the customer reference
/// that enrolment entries written before sealing held (new ones hold none): the read model keeps no
/// copy of erased personal data.
fn scrub_history(tree: &sled::Tree, prefix: &[u8], batch: &mut sled::Batch) -> Result<(), ProjectionError> {
    for item in tree.scan_prefix(prefix) {
        let (key, value) = item?;
        let mut chunk: Vec<HistoryEntry> = decode(&key, &value)?;
        let mut scrubbed = false;
        for entry in chunk.iter_mut().filter(|e| e.kind == MovementKind::Enroll && !e.reference.is_empty()) {
            entry.reference = String::new();
            scrubbed = true;
        }
        if scrubbed {
            batch.insert(key, encode(&chunk));
        }
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let bytes = vec![FORMAT_VERSION];
    postcard::to_extend(value, bytes).expect("serializing to a Vec cannot fail")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, ProjectionError> {
    let corrupt = |reason: String| ProjectionError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason };
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}; rebuild the read model"))),
        None => Err(corrupt("empty value".to_owned())),
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, ProjectionError> {
    tree.get(key)?
        .map(|value| {
            <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes).map_err(|_| ProjectionError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!("{} bytes, expected 8", value.len()),
            })
        })
        .transpose()
}

impl SledReadModel {
    /// Opens (or creates) the read model in `dir`, dropping generations an interrupted rebuild left.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ProjectionError> {
        let db = sled::open(dir)?;
        let meta = db.open_tree("meta")?;
        let live = match read_u64(&meta, LIVE_KEY)? {
            Some(generation) => generation,
            None => {
                meta.insert(LIVE_KEY, &1u64.to_be_bytes())?;
                1
            }
        };
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if let Some(generation) = name.strip_prefix(TREE_PREFIX).and_then(|g| g.parse::<u64>().ok())
                && generation != live
            {
                tracing::info!(generation, "dropping a read-model generation left by an interrupted rebuild");
                db.drop_tree(name.as_bytes())?;
            }
        }
        let tree = db.open_tree(tree_name(live))?;
        Ok(Self { db, meta, live: RwLock::new((live, tree)), building: Mutex::new(None) })
    }

    fn tree(&self, generation: u64) -> Result<sled::Tree, ProjectionError> {
        {
            let live = self.live.read();
            if live.0 == generation {
                return Ok(live.1.clone());
            }
        }
        match &*self.building.lock() {
            Some((id, tree)) if *id == generation => Ok(tree.clone()),
            _ => Err(ProjectionError::NoSuchGeneration { model: NAME, generation }),
        }
    }

    fn live_tree(&self) -> sled::Tree {
        self.live.read().1.clone()
    }

    /// A wallet's summary from the live generation, and the position it reflects at least.
    pub fn wallet(&self, tenant: &str, wallet: &str) -> Result<(Option<WalletSummary>, u64), ProjectionError> {
        let tree = self.live_tree();
        let as_of = read_u64(&tree, CHECKPOINT_KEY)?.unwrap_or(0);
        let key = wallet_key(tenant, wallet);
        let summary = tree.get(&key)?.map(|value| decode_summary(&key, &value)).transpose()?;
        Ok((summary, as_of))
    }

    /// Up to `limit` movements of a wallet, newest first, before `before_position` if given.
    pub fn history(&self, tenant: &str, wallet: &str, before_position: Option<u64>, limit: usize) -> Result<HistoryPage, ProjectionError> {
        let tree = self.live_tree();
        let as_of_position = read_u64(&tree, CHECKPOINT_KEY)?.unwrap_or(0);
        let prefix = history_prefix(tenant, wallet);
        let key_at = |position: u64| {
            let mut key = prefix.clone();
            key.extend_from_slice(&position.to_be_bytes());
            key
        };
        let before = before_position.unwrap_or(u64::MAX);
        let mut entries = Vec::with_capacity(limit.min(1024));
        let mut take = |key: &[u8], value: &[u8]| -> Result<bool, ProjectionError> {
            let chunk: Vec<HistoryEntry> = decode(key, value)?;
            for entry in chunk.into_iter().rev().filter(|e| e.position < before) {
                if entries.len() == limit {
                    return Ok(false);
                }
                entries.push(entry);
            }
            Ok(entries.len() < limit)
        };
        // The chunk holding `before` (keyed at or after it) may hold older entries too; every chunk keyed
        // before it holds only older ones.
        let mut more = true;
        if let Some(item) = tree.range(key_at(before)..key_at(u64::MAX)).next().filter(|_| before != u64::MAX) {
            let (key, value) = item?;
            more = take(&key, &value)?;
        }
        if more {
            let mut older = tree.range(prefix.clone()..key_at(before));
            while let Some(item) = older.next_back() {
                let (key, value) = item?;
                if !take(&key, &value)? {
                    break;
                }
            }
        }
        Ok(HistoryPage { entries, as_of_position })
    }
}

/// One wallet's part of a batch: its summary, its history key prefix, and its new entries.
type WalletBatch<'a> = (WalletSummary, Vec<u8>, Vec<HistoryEntry<&'a str>>);

fn quarantine_key(position: u64) -> Vec<u8> {
    let mut key = QUARANTINE_PREFIX.to_vec();
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn quarantine_of(tree: &sled::Tree) -> Result<QuarantineSummary, ProjectionError> {
    let mut summary = QuarantineSummary::default();
    for item in tree.scan_prefix(QUARANTINE_PREFIX).rev() {
        let (key, value) = item?;
        summary.count += 1;
        if summary.recent.len() < RECENT_QUARANTINED_MAX {
            summary.recent.push(decode(&key, &value)?);
        }
    }
    Ok(summary)
}

/// Applies a batch and records `poisoned` as quarantined, in one sled batch with the checkpoint. Nothing
/// sled stores can fail on the data itself, so only poison events are quarantined here.
fn apply_batch(
    tree: &sled::Tree,
    from: u64,
    through: u64,
    movements: &[Movement],
    poisoned: &[QuarantinedEvent],
) -> Result<(), ProjectionError> {
    let current = read_u64(tree, CHECKPOINT_KEY)?.unwrap_or(0);
    if current != from {
        return Err(ProjectionError::CheckpointMoved { generation: 0, expected: from, actual: current });
    }
    // Per wallet: its summary and this batch's history entries, in log order.
    let mut wallets: HashMap<Vec<u8>, WalletBatch<'_>> = HashMap::new();
    for movement in movements {
        let key = wallet_key(&movement.tenant, &movement.wallet);
        let (summary, _, history) = match wallets.get_mut(&key) {
            Some(wallet) => wallet,
            None => {
                let stored = tree.get(&key)?.map(|value| decode_summary(&key, &value)).transpose()?.unwrap_or_default();
                wallets.entry(key).or_insert((stored, history_prefix(&movement.tenant, &movement.wallet), Vec::new()))
            }
        };
        summary.apply(movement);
        history.push(HistoryEntry {
            position: movement.position,
            stream_version: movement.stream_version,
            kind: movement.kind,
            points: movement.points,
            balance_after: summary.balance,
            reason: movement.reason.as_str(),
            reference: movement.reference.as_str(),
            idempotency_key: movement.idempotency_key.as_str(),
            recorded_at_ms: movement.recorded_at_ms,
        });
    }
    let mut batch = sled::Batch::default();
    for movement in movements.iter().filter(|m| m.kind == MovementKind::Erase) {
        scrub_history(tree, &history_prefix(&movement.tenant, &movement.wallet), &mut batch)?;
    }
    for (key, (summary, prefix, history)) in wallets {
        for chunk in history.chunks(CHUNK_ENTRIES_MAX) {
            let mut chunk_key = prefix.clone();
            chunk_key.extend_from_slice(&chunk[chunk.len() - 1].position.to_be_bytes());
            batch.insert(chunk_key, encode(&chunk));
        }
        batch.insert(key, encode_summary(&summary));
    }
    for event in poisoned {
        batch.insert(quarantine_key(event.position), encode(event));
    }
    batch.insert(CHECKPOINT_KEY, &through.to_be_bytes());
    tree.apply_batch(batch)?;
    Ok(())
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, ProjectionError> + Send + 'static) -> Result<T, ProjectionError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ProjectionError::Invalid(format!("read-model task failed: {e}")))?
}

#[async_trait]
impl ReadModel for SledReadModel {
    /// This node's own files: no other process writes them.
    async fn lease(&self) -> Result<bool, ProjectionError> {
        Ok(true)
    }

    async fn end_lease(&self) {}

    fn name(&self) -> &'static str {
        NAME
    }

    async fn followed_log(&self) -> Result<Option<String>, ProjectionError> {
        Ok(self.meta.get(LOG_KEY)?.map(|id| String::from_utf8_lossy(&id).into_owned()))
    }

    async fn follow_log(&self, log_id: &str) -> Result<(), ProjectionError> {
        self.meta.insert(LOG_KEY, log_id.as_bytes())?;
        self.meta.flush_async().await?;
        Ok(())
    }

    async fn live(&self) -> Result<Generation, ProjectionError> {
        let (id, tree) = self.live.read().clone();
        Ok(Generation { id, checkpoint: read_u64(&tree, CHECKPOINT_KEY)?.unwrap_or(0) })
    }

    async fn apply(&self, generation: u64, from: u64, through: u64, movements: Arc<[Movement]>) -> Result<(), ProjectionError> {
        self.apply_isolated(generation, from, through, movements, Arc::new([])).await.map(drop)
    }

    async fn apply_isolated(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: Arc<[Movement]>,
        poisoned: Arc<[QuarantinedEvent]>,
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
        let tree = self.tree(generation)?;
        blocking(move || {
            apply_batch(&tree, from, through, &movements, &poisoned).map_err(|error| match error {
                ProjectionError::CheckpointMoved { expected, actual, .. } => {
                    ProjectionError::CheckpointMoved { generation, expected, actual }
                }
                other => other,
            })?;
            Ok(poisoned.to_vec())
        })
        .await
    }

    async fn quarantine(&self, generation: u64) -> Result<QuarantineSummary, ProjectionError> {
        let tree = self.tree(generation)?;
        blocking(move || quarantine_of(&tree)).await
    }

    async fn create_generation(&self) -> Result<u64, ProjectionError> {
        let mut building = self.building.lock();
        let live = self.live.read().0;
        let next = building.as_ref().map_or(live, |(id, _)| (*id).max(live)) + 1;
        if let Some((old, _)) = building.take() {
            self.db.drop_tree(tree_name(old).as_bytes())?;
        }
        self.db.drop_tree(tree_name(next).as_bytes())?;
        let tree = self.db.open_tree(tree_name(next))?;
        *building = Some((next, tree));
        Ok(next)
    }

    async fn promote(&self, generation: u64) -> Result<(), ProjectionError> {
        let tree = self.tree(generation)?;
        if self.live.read().0 == generation {
            return Ok(());
        }
        // The new tree reaches disk before the pointer to it does.
        tree.flush_async().await?;
        self.meta.insert(LIVE_KEY, &generation.to_be_bytes())?;
        self.meta.flush_async().await?;
        self.building.lock().take();
        let old = std::mem::replace(&mut *self.live.write(), (generation, tree)).0;
        // Housekeeping: a tree left behind is dropped at the next start.
        if let Err(error) = self.db.drop_tree(tree_name(old).as_bytes()) {
            tracing::warn!(%error, generation = old, "cannot drop the previous read-model generation; the next start will");
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), ProjectionError> {
        self.db.flush_async().await?;
        Ok(())
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError> {
        let mut building = self.building.lock();
        if building.as_ref().is_some_and(|(id, _)| *id == generation) {
            building.take();
            self.db.drop_tree(tree_name(generation).as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary stored before `customer_erased` (format 1) reads as not erased; an erasure scrubs the
    /// customer reference that enrolment entries written before sealing held.
    #[test]
    fn summaries_from_before_erasure_read_and_erasure_scrubs_old_enrolment_entries() {
        let summary = WalletSummary { customer_ref: "cust-1".into(), balance: 42, events: 3, ..WalletSummary::default() };
        let current = encode_summary(&summary);
        assert_eq!((current[0], &current[current.len() - 2..]), (SUMMARY_FORMAT_VERSION, &[0, 0][..]));
        let first = [&[FORMAT_VERSION], &current[1..current.len() - 2]].concat();
        assert_eq!(decode_summary(b"w/t/w", &first).unwrap(), summary);
        let second = [&[2], &current[1..current.len() - 1]].concat();
        assert_eq!(decode_summary(b"w/t/w", &second).unwrap(), summary);
        assert_eq!(decode_summary(b"w/t/w", &current).unwrap(), summary);
        assert!(decode_summary(b"w/t/w", &[9, 0]).is_err(), "an unknown version is reported");

        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("t").unwrap();
        let entry = |position, kind, reference: &str| HistoryEntry {
            position,
            stream_version: position,
            kind,
            points: 0,
            balance_after: 0,
            reason: String::new(),
            reference: reference.to_owned(),
            idempotency_key: "k".to_owned(),
            recorded_at_ms: 0,
        };
        let prefix = history_prefix("t", "w");
        let chunk = vec![entry(1, MovementKind::Enroll, "cust-1"), entry(2, MovementKind::Earn, "order-1")];
        tree.insert([prefix.as_slice(), &2u64.to_be_bytes()].concat(), encode(&chunk)).unwrap();
        let mut batch = sled::Batch::default();
        scrub_history(&tree, &prefix, &mut batch).unwrap();
        tree.apply_batch(batch).unwrap();
        let (key, value) = tree.scan_prefix(&prefix).next().unwrap().unwrap();
        let scrubbed: Vec<HistoryEntry> = decode(&key, &value).unwrap();
        assert_eq!(scrubbed, vec![entry(1, MovementKind::Enroll, ""), entry(2, MovementKind::Earn, "order-1")]);
    }
}
