//! The access keys of the log (`$keys`), in memory: authentication is a lookup and a hash, never a store
//! read, so a caller without a key costs the server nothing that grows.
//!
//! Every node follows the stream (`spawn_refresher`, every `KEYS_REFRESH_MS`), so a key created or revoked
//! on one node works, or stops working, on all of them within that bound; a node's own key commands are
//! applied at once. A key event that cannot be read stops all authentication on this node (fail closed:
//! skipping it could let a revoked key in) until the log is repaired.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::access::{AuthFailure, KeyChange, KeyCommand, KeyEventError, KeyRejection, KeyRing, Principal, apply_key, decide_keys};
use crate::store::{EventMetadata, EventStore, ExpectedVersion, StoreError};

/// Key events read per store call.
const READ_BATCH_EVENTS: usize = 1_000;
/// Attempts at a key command when another node appends keys concurrently.
const CONFLICT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Rejected(#[from] KeyRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the log's keys are damaged: {0}")]
    Damaged(#[from] KeyEventError),
}

/// Why a call is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(transparent)]
    Refused(#[from] AuthFailure),
    /// The keys cannot be read: nobody is let in until they can.
    #[error("keys unavailable: {0}")]
    KeysUnavailable(String),
}

#[derive(Debug, Default)]
struct Ring {
    ring: Arc<KeyRing>,
    /// Why the keys cannot be trusted, if a stored key event could not be read.
    damaged: Option<String>,
}

/// The log's keys, kept up to date.
#[derive(Debug)]
pub struct KeyBook {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    ring: parking_lot::RwLock<Ring>,
    /// Serialises this node's key commands and refreshes.
    writer: tokio::sync::Mutex<()>,
}

impl KeyBook {
    /// Reads every key in the log. A damaged key event is an error: a node does not start on keys it
    /// cannot trust.
    pub async fn open(store: Arc<dyn EventStore>, clock: Arc<dyn Clock>) -> Result<Arc<Self>, KeysError> {
        let book = Arc::new(Self { store, clock, ring: parking_lot::RwLock::default(), writer: tokio::sync::Mutex::new(()) });
        let ring = book.caught_up(KeyRing::default()).await?;
        book.ring.write().ring = Arc::new(ring);
        Ok(book)
    }

    /// `ring` with every key event after its version applied.
    async fn caught_up(&self, mut ring: KeyRing) -> Result<KeyRing, KeysError> {
        let stream = codec::keys_stream();
        loop {
            let events = self.store.read_stream(&stream, ring.version + 1, READ_BATCH_EVENTS).await?;
            if events.is_empty() {
                return Ok(ring);
            }
            for recorded in events {
                let (change, at_ms) = codec::decode_key(recorded)?;
                apply_key(&mut ring, &change, at_ms)?;
            }
        }
    }

    /// Reads what other nodes appended since. On damage, nobody is let in until a refresh succeeds.
    pub async fn refresh(&self) -> Result<(), KeysError> {
        let _writer = self.writer.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(), KeysError> {
        let current = KeyRing::clone(&self.ring.read().ring);
        match self.caught_up(current).await {
            Ok(ring) => {
                let mut slot = self.ring.write();
                slot.ring = Arc::new(ring);
                slot.damaged = None;
                Ok(())
            }
            Err(error @ (KeysError::Codec(_) | KeysError::Damaged(_))) => {
                self.ring.write().damaged = Some(error.to_string());
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Refreshes every `every` until the returned task is aborted.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let book = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = book.refresh().await {
                    tracing::error!(%error, "cannot refresh the log's keys");
                }
            }
        })
    }

    /// Who `token` is, now.
    pub fn authenticate(&self, token: &str) -> Result<Principal, Unauthenticated> {
        let slot = self.ring.read();
        if let Some(reason) = &slot.damaged {
            return Err(Unauthenticated::KeysUnavailable(reason.clone()));
        }
        Ok(slot.ring.authenticate(token, self.clock.now_ms())?)
    }

    /// Every key, as this node knows them now.
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().ring)
    }

    /// Appends `command` only if the log has no key event yet (the first start's platform key): `false`
    /// if it had, or another node appended first.
    pub async fn create_first(&self, command: &KeyCommand, meta: &EventMetadata) -> Result<bool, KeysError> {
        let _writer = self.writer.lock().await;
        self.refresh_locked().await?;
        let now_ms = self.clock.now_ms();
        let empty = KeyRing::default();
        if self.ring().version != 0 {
            return Ok(false);
        }
        let changes = decide_keys(&empty, command, now_ms)?;
        let data = changes.iter().map(|c| codec::encode_key(c, now_ms, meta)).collect();
        match self.store.append(&codec::keys_stream(), ExpectedVersion::Exact(0), data).await {
            Ok(_) => {}
            Err(StoreError::VersionConflict { .. }) => {
                self.refresh_locked().await?;
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        }
        let mut ring = empty;
        for change in &changes {
            apply_key(&mut ring, change, now_ms)?;
        }
        self.ring.write().ring = Arc::new(ring);
        Ok(true)
    }

    /// Decides and appends a key command; answers once its events are durable and applied here.
    pub async fn execute(&self, command: &KeyCommand, meta: &EventMetadata) -> Result<Vec<KeyChange>, KeysError> {
        let _writer = self.writer.lock().await;
        let stream = codec::keys_stream();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.refresh_locked().await?;
            let ring = self.ring();
            let now_ms = self.clock.now_ms();
            let changes = decide_keys(&ring, command, now_ms)?;
            if changes.is_empty() {
                return Ok(changes);
            }
            let data = changes.iter().map(|c| codec::encode_key(c, now_ms, meta)).collect();
            match self.store.append(&stream, ExpectedVersion::Exact(ring.version), data).await {
                Ok(_) => {
                    let mut next = KeyRing::clone(&ring);
                    for change in &changes {
                        apply_key(&mut next, change, now_ms)?;
                    }
                    self.ring.write().ring = Arc::new(next);
                    return Ok(changes);
                }
                Err(StoreError::VersionConflict { .. }) if attempt < CONFLICT_ATTEMPTS => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}
