//! Time-driven wallet transitions: a due-time index derived from the log, not a scan of all wallets.
//!
//! A reader task follows the log and folds, per wallet, what can come due by itself: open POS holds
//! (until their timeout), pending points (until they mature), lots of points with an expiry (their
//! unheld points) and tier reviews. Every event a wallet
//! records moves that wallet's next due time in the index. The timer loop sleeps until the earliest one
//! and sends the wallet `RunDue`, which records whatever is due then (holds released, lots expired); a
//! repeat — a restart, another node, a stale index — finds nothing due and says when the next thing is.
//! The index is rebuilt from the log at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tally_proto::v1::{LotOpened, LotPoints};
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
/// How long a wallet whose transitions failed (store unavailable, wallet quarantined) waits before
/// another try; the other wallets do not wait for it.
const RETRY_MS: i64 = 5_000;

/// What the reader tells the timer loop: when `key` next has something due (`None`: nothing).
struct Due {
    key: WalletKey,
    at_ms: Option<i64>,
}

/// The running timers; dropping this stops them.
#[derive(Debug)]
pub struct WalletTimers {
    reader: JoinHandle<()>,
    timer: JoinHandle<()>,
}

impl WalletTimers {
    /// Follows `store` from its beginning and runs wallets' due transitions through `registry` when their
    /// time comes.
    pub fn spawn(store: Arc<dyn EventStore>, registry: WalletRegistry, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel(READ_BATCH_EVENTS);
        let reader = tokio::spawn(read(store, tx));
        let timer = tokio::spawn(run(rx, registry, clock));
        Self { reader, timer }
    }

    /// Stops both tasks. A transition in flight is abandoned; whoever runs next redoes it.
    pub fn stop(&self) {
        self.reader.abort();
        self.timer.abort();
    }
}

impl Drop for WalletTimers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What of one wallet can come due by itself.
#[derive(Default)]
struct Schedule {
    /// Open holds' timeouts.
    holds: HashMap<String, i64>,
    /// Lots with an expiry.
    lots: BTreeMap<u64, LotTimes>,
    /// Pending credits by the version that made them: `(points, available at)`.
    pending: BTreeMap<u64, (i64, i64)>,
    /// When the customer's tier is reviewed next.
    review: Option<i64>,
    /// Under an inactivity policy: when lots `on_inactivity` expire.
    inactivity: Option<i64>,
}

/// What the timers know of a lot.
struct LotTimes {
    unheld: i64,
    held: i64,
    expires_at_ms: i64,
    /// 0: no notice due.
    notify_at_ms: i64,
    /// No date of its own: expires at the wallet's inactivity deadline.
    on_inactivity: bool,
}

impl Schedule {
    fn due(&self) -> Option<i64> {
        let holds = self.holds.values().copied();
        let expiries = self
            .lots
            .values()
            .filter(|lot| lot.unheld > 0)
            .filter_map(|lot| if lot.on_inactivity { self.inactivity } else { Some(lot.expires_at_ms) });
        let notices = self.lots.values().filter(|lot| lot.notify_at_ms != 0 && lot.unheld + lot.held > 0).map(|lot| lot.notify_at_ms);
        let lots = expiries.chain(notices);
        let pending = self.pending.values().map(|(_, at)| *at);
        holds.chain(lots).chain(pending).chain(self.review).min()
    }

    fn is_empty(&self) -> bool {
        self.holds.is_empty() && self.lots.is_empty() && self.pending.is_empty() && self.review.is_none() && self.inactivity.is_none()
    }

    fn active(&mut self, inactivity_expires_at_ms: i64) {
        self.inactivity = (inactivity_expires_at_ms != 0).then_some(inactivity_expires_at_ms);
    }

    fn take_pending(&mut self, taken: &[LotPoints]) {
        for t in taken {
            if let Some(pending) = self.pending.get_mut(&t.lot) {
                pending.0 -= t.points;
                if pending.0 <= 0 {
                    self.pending.remove(&t.lot);
                }
            }
        }
    }

    fn open(&mut self, lot: Option<&LotOpened>) {
        if let Some(lot) = lot.filter(|lot| lot.points > 0 && (lot.expires_at_ms != 0 || lot.on_inactivity)) {
            let times = LotTimes {
                unheld: 0,
                held: 0,
                expires_at_ms: lot.expires_at_ms,
                notify_at_ms: lot.notify_at_ms,
                on_inactivity: lot.on_inactivity,
            };
            self.lots.entry(lot.lot).or_insert(times).unheld += lot.points;
        }
    }

    /// Moves points of tracked lots: `unheld` and `held` are added to each lot's counts times the lot's
    /// points.
    fn shift(&mut self, lots: &[LotPoints], unheld: i64, held: i64) {
        for moved in lots {
            if let Some(lot) = self.lots.get_mut(&moved.lot) {
                lot.unheld += unheld * moved.points;
                lot.held += held * moved.points;
                if lot.unheld <= 0 && lot.held <= 0 {
                    self.lots.remove(&moved.lot);
                }
            }
        }
    }

    /// Folds the event at stream `version`; false once the wallet is closed.
    fn fold(&mut self, change: &Change, version: u64) -> bool {
        match change {
            Change::Enrolled(_) => {}
            Change::Earned(e) => {
                self.active(e.inactivity_expires_at_ms);
                self.open(e.lot.as_ref());
                if let Some(pending) = e.pending.as_ref().filter(|p| p.points > 0) {
                    self.pending.insert(version, (pending.points, pending.available_at_ms));
                }
            }
            Change::Matured(e) => {
                self.pending.remove(&e.pending);
                self.open(e.lot.as_ref());
            }
            Change::Adjusted(e) => {
                if e.inactivity_expires_at_ms != 0 {
                    self.active(e.inactivity_expires_at_ms);
                }
                self.open(e.lot.as_ref());
                self.shift(&e.lots, -1, 0);
            }
            Change::Purchased(e) => {
                self.active(e.inactivity_expires_at_ms);
                self.open(e.lot.as_ref());
            }
            Change::CardCompleted(e) => self.open(e.lot.as_ref()),
            Change::Stamped(e) => self.active(e.inactivity_expires_at_ms),
            Change::ExpiringSoon(e) => {
                if let Some(lot) = self.lots.get_mut(&e.lot) {
                    lot.notify_at_ms = 0;
                }
            }
            Change::Redeemed(e) => {
                self.active(e.inactivity_expires_at_ms);
                self.shift(&e.lots, -1, 0);
            }
            Change::Reversed(e) => {
                self.take_pending(&e.pending);
                self.shift(&e.lots, -1, 0);
            }
            Change::Expired(e) => self.shift(&[LotPoints { lot: e.lot, points: e.points }], -1, 0),
            Change::Held(e) => {
                self.holds.insert(e.hold_id.clone(), e.expires_at_ms);
                self.shift(&e.lots, -1, 1);
            }
            Change::Captured(e) => {
                self.active(e.inactivity_expires_at_ms);
                self.holds.remove(&e.hold_id);
                self.shift(&e.lots, 0, -1);
                self.shift(&e.released_lots, 1, -1);
            }
            Change::Released(e) => {
                self.holds.remove(&e.hold_id);
                self.shift(&e.lots, 1, -1);
            }
            Change::TierChanged(e) => self.review = (e.next_review_at_ms != 0).then_some(e.next_review_at_ms),
            Change::TierReviewed(e) => self.review = (e.next_review_at_ms != 0).then_some(e.next_review_at_ms),
            Change::Closed(_) => return false,
        }
        true
    }
}

/// Folds one recorded event into its wallet's schedule; the wallet's new due time if it may have moved.
fn fold(schedules: &mut HashMap<WalletKey, Schedule>, recorded: RecordedEvent) -> Option<Due> {
    if recorded.data.event_type == Change::Enrolled(Default::default()).event_type() {
        return None;
    }
    let (tenant, wallet) = codec::wallet_of(recorded.stream_id.as_str())?;
    let key = WalletKey::new(tenant, wallet);
    let stream = recorded.stream_id.clone();
    let version = recorded.stream_version;
    let event = match codec::decode(recorded) {
        Ok(event) => event,
        Err(error) => {
            // The wallet itself refuses to load such a history, so nothing can happen there anyway.
            tracing::error!(%stream, %error, "wallet timers cannot read an event; the wallet's transitions wait for a repair");
            return None;
        }
    };
    let schedule = schedules.entry(key.clone()).or_default();
    let before = schedule.due();
    let open = schedule.fold(&event.change, version);
    let at_ms = if open { schedule.due() } else { None };
    if !open || schedule.is_empty() {
        schedules.remove(&key);
    }
    (at_ms != before || !open).then_some(Due { key, at_ms })
}

async fn read(store: Arc<dyn EventStore>, tx: mpsc::Sender<Due>) {
    let mut follower = Follower::new(store, 0);
    let mut schedules = HashMap::new();
    loop {
        match follower.next_batch(READ_BATCH_EVENTS).await {
            Ok(Some(events)) => {
                for due in events.into_iter().filter_map(|event| fold(&mut schedules, event)) {
                    if tx.send(due).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, at = follower.next_position(), "wallet timers cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(IDLE_MS as u64)).await;
            }
        }
    }
}

/// Wallets by next due time.
#[derive(Default)]
struct Index {
    by_time: BTreeSet<(i64, WalletKey)>,
    by_wallet: HashMap<WalletKey, i64>,
}

impl Index {
    /// Sets when `key` is next due (`None`: never).
    fn set(&mut self, key: WalletKey, at_ms: Option<i64>) {
        if let Some(old) = self.by_wallet.remove(&key) {
            self.by_time.remove(&(old, key.clone()));
        }
        if let Some(at_ms) = at_ms {
            self.by_time.insert((at_ms, key.clone()));
            self.by_wallet.insert(key, at_ms);
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _)| *at)
    }
}

async fn run(mut rx: mpsc::Receiver<Due>, registry: WalletRegistry, clock: Arc<dyn Clock>) {
    let mut index = Index::default();
    loop {
        let wait_ms = index.next_due().map_or(IDLE_MS, |at| (at - clock.now_ms()).clamp(0, IDLE_MS));
        tokio::select! {
            due = rx.recv() => match due {
                Some(Due { key, at_ms }) => index.set(key, at_ms),
                None => return,
            },
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => run_due(&mut index, &registry, clock.now_ms()).await,
        }
    }
}

/// Runs the transitions of every wallet due by `now_ms`; one that fails for a reason that may pass is
/// tried again later.
async fn run_due(index: &mut Index, registry: &WalletRegistry, now_ms: i64) {
    let due: Vec<WalletKey> = index.by_time.iter().take_while(|(at, _)| *at <= now_ms).map(|(_, key)| key.clone()).collect();
    for key in due {
        // Any key works: a wallet with nothing due records nothing. This one tells the log who acted.
        let command = Command::new(format!("due/{now_ms}"), CommandBody::RunDue);
        match registry.execute(&key, command, CommandMeta::default()).await {
            // The events it recorded bring the wallet's next due time through the reader.
            Ok(_) | Err(WalletError::Rejected(Rejection::WalletClosed | Rejection::WalletNotFound)) => index.set(key, None),
            // The index was stale, or the wallet's clock is a hair behind: look again when it says.
            Err(WalletError::Rejected(Rejection::NothingDue { next_due_ms })) => index.set(key, next_due_ms.map(|at| at.max(now_ms + 1))),
            Err(error) => {
                tracing::warn!(tenant = %key.tenant, wallet = %key.wallet, %error, "cannot run a wallet's due transitions yet; retrying");
                index.set(key, Some(now_ms + RETRY_MS));
            }
        }
    }
}
