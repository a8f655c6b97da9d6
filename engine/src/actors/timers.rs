//! Time-driven wallet transitions: a due-time index derived from the log, not a scan of all wallets.
//!
//! A reader task follows the log and keeps, for every open POS hold, when it expires (`PointsHeld` adds
//! it, `HoldCaptured` / `HoldReleased` remove it). The timer loop sleeps until the earliest due time and
//! then sends the wallet an `ExpireHold` command with a key derived from the hold id, so a repeat — a
//! restart, or another node doing the same — changes nothing. The index is rebuilt from the log at start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CommandMeta, WalletError, WalletKey, WalletRegistry};
use crate::clock::Clock;
use crate::codec;
use crate::domain::{Change, Command, CommandBody, Rejection};
use crate::store::{EventStore, Follower, RecordedEvent};

/// Events read per batch while following the log.
const READ_BATCH_EVENTS: usize = 4_096;
/// Longest sleep between looks at the index.
const IDLE_MS: i64 = 1_000;
/// How long a hold whose expiry failed (store unavailable, wallet quarantined) waits before another try;
/// the other holds do not wait for it.
const RETRY_MS: i64 = 5_000;

/// What the reader tells the timer loop.
enum Due {
    Open { key: WalletKey, hold_id: String, at_ms: i64 },
    Closed { key: WalletKey, hold_id: String },
}

/// The running timers; dropping this stops them.
#[derive(Debug)]
pub struct HoldTimers {
    reader: JoinHandle<()>,
    timer: JoinHandle<()>,
}

impl HoldTimers {
    /// Follows `store` from its beginning and expires holds through `registry` when their time comes.
    pub fn spawn(store: Arc<dyn EventStore>, registry: WalletRegistry, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel(READ_BATCH_EVENTS);
        let reader = tokio::spawn(read(store, tx));
        let timer = tokio::spawn(run(rx, registry, clock));
        Self { reader, timer }
    }

    /// Stops both tasks. An expiry in flight is abandoned; it is idempotent, so whoever runs next redoes it.
    pub fn stop(&self) {
        self.reader.abort();
        self.timer.abort();
    }
}

impl Drop for HoldTimers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hold_event(recorded: RecordedEvent) -> Option<Due> {
    let kind = recorded.data.event_type.as_str();
    if !matches!(kind, "tally.v1.PointsHeld" | "tally.v1.HoldCaptured" | "tally.v1.HoldReleased") {
        return None;
    }
    let (tenant, wallet) = codec::wallet_of(recorded.stream_id.as_str())?;
    let key = WalletKey::new(tenant, wallet);
    let stream = recorded.stream_id.clone();
    match codec::decode(recorded) {
        Ok(event) => match event.change {
            Change::Held(e) => Some(Due::Open { key, hold_id: e.hold_id, at_ms: e.expires_at_ms }),
            Change::Captured(e) => Some(Due::Closed { key, hold_id: e.hold_id }),
            Change::Released(e) => Some(Due::Closed { key, hold_id: e.hold_id }),
            _ => None,
        },
        Err(error) => {
            // The wallet itself refuses to load such a history, so nothing can be expired there anyway.
            tracing::error!(%stream, %error, "hold timers cannot read an event; its hold will not expire");
            None
        }
    }
}

async fn read(store: Arc<dyn EventStore>, tx: mpsc::Sender<Due>) {
    let mut follower = Follower::new(store, 0);
    loop {
        match follower.next_batch(READ_BATCH_EVENTS).await {
            Ok(Some(events)) => {
                for due in events.into_iter().filter_map(hold_event) {
                    if tx.send(due).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, at = follower.next_position(), "hold timers cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(IDLE_MS as u64)).await;
            }
        }
    }
}

/// Open holds by due time, and the due time of each.
#[derive(Default)]
struct Index {
    by_time: BTreeSet<(i64, WalletKey, String)>,
    by_hold: HashMap<(WalletKey, String), i64>,
}

impl Index {
    fn apply(&mut self, due: Due) {
        match due {
            Due::Open { key, hold_id, at_ms } => {
                self.by_time.insert((at_ms, key.clone(), hold_id.clone()));
                self.by_hold.insert((key, hold_id), at_ms);
            }
            Due::Closed { key, hold_id } => self.remove(key, hold_id),
        }
    }

    fn remove(&mut self, key: WalletKey, hold_id: String) {
        if let Some(at_ms) = self.by_hold.remove(&(key.clone(), hold_id.clone())) {
            self.by_time.remove(&(at_ms, key, hold_id));
        }
    }

    /// Moves a hold's due time to `at_ms`.
    fn postpone(&mut self, key: WalletKey, hold_id: String, at_ms: i64) {
        self.remove(key.clone(), hold_id.clone());
        self.apply(Due::Open { key, hold_id, at_ms });
    }

    fn next_due(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _, _)| *at)
    }
}

async fn run(mut rx: mpsc::Receiver<Due>, registry: WalletRegistry, clock: Arc<dyn Clock>) {
    let mut index = Index::default();
    loop {
        let wait_ms = index.next_due().map_or(IDLE_MS, |at| (at - clock.now_ms()).clamp(0, IDLE_MS));
        tokio::select! {
            due = rx.recv() => match due {
                Some(due) => index.apply(due),
                None => return,
            },
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => expire_due(&mut index, &registry, clock.now_ms()).await,
        }
    }
}

/// Expires every hold due by `now_ms`; one that fails for a reason that may pass is tried again later.
async fn expire_due(index: &mut Index, registry: &WalletRegistry, now_ms: i64) {
    let due: Vec<(i64, WalletKey, String)> = index.by_time.iter().take_while(|(at, _, _)| *at <= now_ms).cloned().collect();
    for (_, key, hold_id) in due {
        let command = Command::new(format!("{hold_id}/expire"), CommandBody::ExpireHold { hold_id: hold_id.clone() });
        match registry.execute(&key, command, CommandMeta::default()).await {
            Ok(_) | Err(WalletError::Rejected(Rejection::NoOpenHold { .. } | Rejection::WalletClosed)) => index.remove(key, hold_id),
            // The wallet's clock disagrees by a hair: look again when it agrees.
            Err(WalletError::Rejected(Rejection::HoldNotDue { expires_at_ms, .. })) => index.postpone(key, hold_id, expires_at_ms + 1),
            Err(error) => {
                tracing::warn!(tenant = %key.tenant, wallet = %key.wallet, %hold_id, %error, "cannot expire a hold yet; retrying");
                index.postpone(key, hold_id, now_ms + RETRY_MS);
            }
        }
    }
}
