//! The access keys of the log (`$keys`), in memory: authentication is a lookup and a hash, never a store
//! read, so a caller without a key costs the server nothing that grows.
//!
//! Every node follows the stream (`spawn_refresher`, every `KEYS_REFRESH_MS`), so a key created or revoked
//! on one node works, or stops working, on all of them within that bound; a node's own key commands are
//! applied at once. A key event that cannot be read stops all authentication on this node (fail closed:
//! skipping it could let a revoked key in) until the log is repaired; so do keys not refreshed for
//! `KEYS_STALE_AFTER_REFRESHES` intervals (a node cut off from the log cannot learn of revocations).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::codec::{self, CodecError};
use crate::domain::access::{AuthFailure, KeyChange, KeyCommand, KeyEventError, KeyRejection, KeyRing, Principal, apply_key, decide_keys};
use crate::limits::KEYS_STALE_AFTER_REFRESHES;
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

#[derive(Debug)]
struct Ring {
    ring: Arc<KeyRing>,
    /// Why the keys cannot be trusted, if a stored key event could not be read.
    damaged: Option<String>,
    /// When the keys were last known to be the log's.
    refreshed: Instant,
    /// How old they may be before nobody is let in (set by `spawn_refresher`; none without one).
    stale_after: Option<Duration>,
}

impl Default for Ring {
    fn default() -> Self {
        Self { ring: Arc::default(), damaged: None, refreshed: Instant::now(), stale_after: None }
    }
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

    /// `ring` caught up with the log, or `None` if the log has nothing new (no copy of the keys made).
    async fn newer(&self, ring: &KeyRing) -> Result<Option<KeyRing>, KeysError> {
        let first = self.store.read_stream(&codec::keys_stream(), ring.version + 1, READ_BATCH_EVENTS).await?;
        if first.is_empty() {
            return Ok(None);
        }
        let mut next = ring.clone();
        for recorded in first {
            let (change, at_ms) = codec::decode_key(recorded)?;
            apply_key(&mut next, &change, at_ms)?;
        }
        self.caught_up(next).await.map(Some)
    }

    /// Reads what other nodes appended since. On damage, nobody is let in until a refresh succeeds.
    pub async fn refresh(&self) -> Result<(), KeysError> {
        let _writer = self.writer.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(), KeysError> {
        let started = Instant::now();
        let current = self.ring();
        match self.newer(&current).await {
            Ok(ring) => {
                let mut slot = self.ring.write();
                if let Some(ring) = ring {
                    slot.ring = Arc::new(ring);
                }
                slot.damaged = None;
                slot.refreshed = started;
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
    /// From then on, keys not refreshed for `KEYS_STALE_AFTER_REFRESHES` × `every` let nobody in.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let book = Arc::clone(self);
        let stale_after = every * KEYS_STALE_AFTER_REFRESHES;
        {
            let mut slot = self.ring.write();
            slot.stale_after = Some(stale_after);
            slot.refreshed = Instant::now();
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // A read that hangs must not keep the keys' age from showing.
                match tokio::time::timeout(stale_after, book.refresh()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::error!(%error, "cannot refresh the log's keys"),
                    Err(_) => tracing::error!(?stale_after, "refreshing the log's keys timed out"),
                }
            }
        })
    }

    /// Who `token` is, now.
    pub fn authenticate(&self, token: &str) -> Result<Principal, Unauthenticated> {
        self.with_fresh_ring(|ring, now_ms| ring.authenticate(token, now_ms))
    }

    /// Who presents the client certificate `der` (its DER encoding), now.
    pub fn authenticate_certificate(&self, der: &[u8]) -> Result<Principal, Unauthenticated> {
        let hash = crate::domain::access::certificate_sha256(der);
        self.with_fresh_ring(|ring, now_ms| ring.authenticate_certificate(&hash, now_ms))
    }

    /// `check` on the keys, if they can be trusted (read, and not stale).
    fn with_fresh_ring(&self, check: impl FnOnce(&KeyRing, i64) -> Result<Principal, AuthFailure>) -> Result<Principal, Unauthenticated> {
        let slot = self.ring.read();
        if let Some(reason) = &slot.damaged {
            return Err(Unauthenticated::KeysUnavailable(reason.clone()));
        }
        if let Some(stale_after) = slot.stale_after.filter(|limit| slot.refreshed.elapsed() > *limit) {
            return Err(Unauthenticated::KeysUnavailable(format!(
                "the keys were last read from the log {:?} ago (more than {stale_after:?}): revocations may be missing",
                slot.refreshed.elapsed()
            )));
        }
        Ok(check(&slot.ring, self.clock.now_ms())?)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::access::{AuthFailure, Role, Scope, secret_sha256, token};
    use crate::store::{AppendOutcome, InMemoryStore, RecordedEvent, StreamId};

    /// The in-memory log, whose reads can be cut off.
    #[derive(Debug, Default)]
    struct CutOff {
        log: InMemoryStore,
        cut: AtomicBool,
    }

    #[async_trait::async_trait]
    impl EventStore for CutOff {
        async fn append(
            &self,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<crate::store::EventData>,
        ) -> Result<AppendOutcome, StoreError> {
            self.log.append(stream, expected, events).await
        }

        async fn read_stream(&self, stream: &StreamId, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            if self.cut.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable { reason: "cut off".into() });
            }
            self.log.read_stream(stream, from_version, limit).await
        }

        async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
            self.log.read_all(from_position, limit).await
        }

        async fn stream_version(&self, stream: &StreamId) -> Result<u64, StoreError> {
            if self.cut.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable { reason: "cut off".into() });
            }
            self.log.stream_version(stream).await
        }

        fn head(&self) -> tokio::sync::watch::Receiver<u64> {
            self.log.head()
        }

        async fn personal_keys(&self, subjects: &[StreamId]) -> Result<Vec<Option<crate::store::PersonalKey>>, StoreError> {
            self.log.personal_keys(subjects).await
        }

        async fn keep_personal_key(
            &self,
            subject: &StreamId,
            key: &crate::store::PersonalKey,
        ) -> Result<crate::store::PersonalKey, StoreError> {
            self.log.keep_personal_key(subject, key).await
        }

        async fn erase_personal_key(&self, subject: &StreamId) -> Result<bool, StoreError> {
            self.log.erase_personal_key(subject).await
        }
    }

    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[tokio::test]
    async fn keys_not_refreshed_for_a_while_let_nobody_in_until_they_are() {
        let store = Arc::new(CutOff::default());
        let book = KeyBook::open(store.clone(), Arc::new(SystemClock)).await.unwrap();
        let create = KeyCommand::Create {
            key_id: "0123456789abcdef".into(),
            secret_sha256: secret_sha256(SECRET),
            scope: Scope::Platform,
            roles: [Role::Platform].into_iter().collect(),
            label: String::new(),
            expires_at_ms: None,
            created_by: "test".into(),
            client_cert_sha256: None,
        };
        book.execute(&create, &EventMetadata::default()).await.unwrap();
        let every = Duration::from_millis(20);
        let refresher = book.spawn_refresher(every);
        let key = token("0123456789abcdef", SECRET);
        assert!(book.authenticate(&key).is_ok());
        store.cut.store(true, Ordering::SeqCst);
        tokio::time::sleep(every * (KEYS_STALE_AFTER_REFRESHES + 3)).await;
        assert!(matches!(book.authenticate(&key), Err(Unauthenticated::KeysUnavailable(_))), "a node cut off from the log lets nobody in");
        store.cut.store(false, Ordering::SeqCst);
        tokio::time::sleep(every * 3).await;
        assert!(book.authenticate(&key).is_ok(), "and lets keys in again once it reads the log");
        assert_eq!(book.authenticate("tally_x"), Err(Unauthenticated::Refused(AuthFailure::Malformed)));
        refresher.abort();
    }
}
