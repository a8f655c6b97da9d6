//! Time-driven wallet transitions: a due-time index derived from the log, not a scan of all wallets.
//!
//! A reader task follows the log and folds each wallet's events into a [`DueView`]: the wallet as the
//! domain's own `apply` leaves it, less what no due time depends on, so the index holds exactly the time
//! `WalletState::next_due_ms` would give (open holds' timeouts, pending points maturing, lots expiring
//! and their notices, tier reviews). A wallet with nothing that can come due is not kept. Every event
//! a wallet records moves that wallet's next due time in the index. The timer loop sleeps until the earliest one
//! and sends the wallet `RunDue`, which records whatever is due then (holds released, lots expired); a
//! repeat — a restart, another node, a stale index — finds nothing due and says when the next thing is.
//! The index is rebuilt from the log at start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{CommandMeta, WalletError, WalletKey, WalletRegistry};
use crate::clock::Clock;
use crate::codec;
use crate::domain::{Command, DueView, Rejection};
use crate::store::{EventStore, Follower, RecordedEvent};
use crate::traces;

/// Events read per batch while following the log.
const READ_BATCH_EVENTS: usize = 4_096;
/// Longest sleep between looks at the index.
const IDLE_MS: i64 = 1_000;
/// How long a wallet whose transitions failed (store unavailable, wallet quarantined) waits before
/// another try; the other wallets do not wait for it.
const RETRY_MS: i64 = 5_000;

/// How soon a due wallet another node owns is looked at again: if its owner died, this node may own it
/// by then. Its owner's transitions reach this node's index through the log and move it on meanwhile.
const NOT_OWNED_RECHECK_MS: i64 = 1_000;

/// What the reader tells the timer loop: when `key` next has something due (`None`: nothing).
struct Due {
    key: WalletKey,
    at_ms: Option<i64>,
}

/// Whether this node runs a wallet's transitions.
pub type Owns = Arc<dyn Fn(&WalletKey) -> bool + Send + Sync>;

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
        Self::spawn_for(store, registry, clock, Arc::new(|_: &WalletKey| true))
    }

    /// As [`Self::spawn`], running only the wallets `owns` says are this node's (a cluster: the owner of
    /// each wallet's shard). The others stay in the index and are asked about again every
    /// `NOT_OWNED_RECHECK_MS`, so
    /// a wallet whose owner changed to this node (a node left or died) has its transitions run here.
    pub fn spawn_for(store: Arc<dyn EventStore>, registry: WalletRegistry, clock: Arc<dyn Clock>, owns: Owns) -> Self {
        let (tx, rx) = mpsc::channel(READ_BATCH_EVENTS);
        let reader = tokio::spawn(read(store, tx));
        let timer = tokio::spawn(run(rx, registry, clock, owns));
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

/// Folds one recorded event into its wallet's view; the wallet's new due time if it moved.
fn fold(views: &mut HashMap<WalletKey, DueView>, recorded: RecordedEvent) -> Option<Due> {
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
    let view = views.entry(key.clone()).or_default();
    let before = view.next_due_ms();
    view.apply(&event, version);
    let at_ms = view.next_due_ms();
    if view.is_idle() {
        views.remove(&key);
    }
    (at_ms != before).then_some(Due { key, at_ms })
}

async fn read(store: Arc<dyn EventStore>, tx: mpsc::Sender<Due>) {
    let mut follower = Follower::new(store, 0);
    let mut views = HashMap::new();
    loop {
        match follower.next_batch(READ_BATCH_EVENTS).await {
            Ok(Some(events)) => {
                for due in events.into_iter().filter_map(|event| fold(&mut views, event)) {
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

async fn run(mut rx: mpsc::Receiver<Due>, registry: WalletRegistry, clock: Arc<dyn Clock>, owns: Owns) {
    let mut index = Index::default();
    loop {
        let wait_ms = index.next_due().map_or(IDLE_MS, |at| (at - clock.now_ms()).clamp(0, IDLE_MS));
        tokio::select! {
            due = rx.recv() => match due {
                Some(Due { key, at_ms }) => index.set(key, at_ms),
                None => return,
            },
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => run_due(&mut index, &registry, clock.now_ms(), &owns).await,
        }
    }
}

/// Runs the transitions of every wallet due by `now_ms`; one that fails for a reason that may pass is
/// tried again later. Publishes `tally_timers_wallets_scheduled` (wallets with something due some day,
/// on a cluster node every node's: the index follows the whole log),
/// `tally_timers_due_wallets` (due now, not yet run: the backlog) and, per wallet run,
/// `tally_timers_lateness_seconds` (from its due time until its run starts).
async fn run_due(index: &mut Index, registry: &WalletRegistry, now_ms: i64, owns: &Owns) {
    metrics::gauge!("tally_timers_wallets_scheduled").set(index.by_wallet.len() as f64);
    let due: Vec<(i64, WalletKey)> = index.by_time.iter().take_while(|(at, _)| *at <= now_ms).cloned().collect();
    let started = tokio::time::Instant::now();
    let backlog = metrics::gauge!("tally_timers_due_wallets");
    backlog.set(due.len() as f64);
    for (at_ms, key) in due {
        backlog.decrement(1.0);
        if !owns(&key) {
            index.set(key, Some(now_ms + NOT_OWNED_RECHECK_MS));
            continue;
        }
        let late = Duration::from_millis(u64::try_from(now_ms - at_ms).unwrap_or(0)) + started.elapsed();
        metrics::histogram!("tally_timers_lateness_seconds").record(late.as_secs_f64());
        let span = traces::sampled(
            tracing::info_span!("timers.run_due", tenant = %key.tenant, wallet = %key.wallet, late_ms = late.as_millis() as u64),
        );
        // What it records leads to its trace, as a call's events do.
        let (traceparent, tracestate) = traces::trace_context(&span).unwrap_or_default();
        let meta = CommandMeta { traceparent, tracestate, ..CommandMeta::default() };
        // A wallet with nothing due records nothing; the key tells the log which clock acted.
        let command = Command::run_due(now_ms);
        match registry.execute(&key, command, meta).instrument(span).await {
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
