//! The wallet registry and its supervisor actor.
//!
//! Lookups of live wallets go straight to a sharded map (no hop through an actor). Everything that
//! changes the set of live wallets — activation, passivation, crash handling — happens inside the
//! supervisor actor, one message at a time, so two concurrent first calls never create two actors.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

use super::wallet::{Deps, Handle, Mailbox, Refused, Ticket, WalletActor, WalletArgs, WalletMsg, touch};
use super::{CommandMeta, CommandOutcome, NoSnapshots, Owns, Programs, Snapshots, WalletError, WalletKey, WalletSummary};
use crate::FastMap;
use crate::clock::Clock;
use crate::codec;
use crate::domain::{Command, CommandBody, Context, Rejection, WalletState, decide};
use crate::limits::{
    ACTIVE_WALLETS_DEFAULT_MAX, COMMAND_DELIVERY_ATTEMPTS_MAX, WALLET_CRASH_WINDOW_MS, WALLET_CRASHES_MAX, WALLET_IDLE_DEFAULT_MS,
    WALLET_QUEUE_MESSAGES_MAX, WALLET_RESTART_BACKOFF_MAX_MS, WALLET_RESTART_BACKOFF_MS,
};
use crate::store::EventStore;

const SHARDS: usize = 64;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Most wallets resident at once; beyond it the least recently used are passivated.
    pub active_wallets_max: usize,
    /// Idle time after which a wallet is passivated, in milliseconds.
    pub idle_ms: u64,
    /// How often idle wallets are looked for, in milliseconds.
    pub sweep_interval_ms: u64,
    /// Calls queued for one wallet beyond which more are refused (`WalletError::Busy`).
    pub wallet_queue_max: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            active_wallets_max: ACTIVE_WALLETS_DEFAULT_MAX,
            idle_ms: WALLET_IDLE_DEFAULT_MS,
            sweep_interval_ms: 1_000,
            wallet_queue_max: WALLET_QUEUE_MESSAGES_MAX,
        }
    }
}

/// Counters for tests, metrics and `tally` status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub active: usize,
    pub activations: u64,
    pub passivations: u64,
    pub crashes: u64,
    /// Calls answered without an actor: reads and commands for wallets whose stream is empty.
    pub answered_without_actor: u64,
    /// Wallets put in quarantine (their crashes reached `WALLET_CRASHES_MAX` within the window).
    pub quarantines: u64,
    /// Calls refused because their wallet was in quarantine.
    pub quarantine_refusals: u64,
    /// Messages waiting in live wallets' mailboxes, all together and in the fullest one.
    pub queued: u64,
    pub queued_deepest: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    handle: Handle,
    last_used: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Shared {
    shards: Box<[RwLock<FastMap<WalletKey, Entry>>]>,
    hasher: foldhash::fast::RandomState,
    started: Instant,
    shutting_down: AtomicBool,
    activations: AtomicU64,
    passivations: AtomicU64,
    crashes: AtomicU64,
    answered_without_actor: AtomicU64,
    quarantines: AtomicU64,
    quarantine_refusals: AtomicU64,
    wallet_queue_max: u64,
}

impl Shared {
    fn shard(&self, key: &WalletKey) -> &RwLock<FastMap<WalletKey, Entry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lookup(&self, key: &WalletKey) -> Option<Entry> {
        self.shard(key).read().get(key).cloned()
    }

    fn active(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Messages queued in live wallets' mailboxes: the sum, and the deepest.
    fn queued(&self) -> (u64, u64) {
        let (mut sum, mut deepest) = (0, 0);
        for shard in &self.shards {
            for entry in shard.read().values() {
                let depth = entry.handle.mailbox.queued();
                sum += depth;
                deepest = deepest.max(depth);
            }
        }
        (sum, deepest)
    }
}

/// The way into wallets: finds or activates the actor for a wallet and calls it.
#[derive(Debug, Clone)]
pub struct WalletRegistry {
    shared: Arc<Shared>,
    deps: Arc<Deps>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl WalletRegistry {
    /// Starts the supervisor, without snapshots. `store` is the log every wallet reads and appends to.
    pub async fn start(
        config: RegistryConfig,
        store: Arc<dyn EventStore>,
        programs: Arc<dyn Programs>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ractor::SpawnErr> {
        Self::start_with_snapshots(config, store, programs, clock, Arc::new(NoSnapshots)).await
    }

    /// Starts the supervisor; wallets recover from `snapshots` plus the events after them.
    pub async fn start_with_snapshots(
        config: RegistryConfig,
        store: Arc<dyn EventStore>,
        programs: Arc<dyn Programs>,
        clock: Arc<dyn Clock>,
        snapshots: Arc<dyn Snapshots>,
    ) -> Result<Self, ractor::SpawnErr> {
        let shared = Arc::new(Shared {
            shards: (0..SHARDS).map(|_| RwLock::new(FastMap::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            activations: AtomicU64::new(0),
            passivations: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            answered_without_actor: AtomicU64::new(0),
            quarantines: AtomicU64::new(0),
            quarantine_refusals: AtomicU64::new(0),
            wallet_queue_max: config.wallet_queue_max,
        });
        let deps = Arc::new(Deps { store, programs, clock, snapshots, refresh: AtomicU64::new(0) });
        let args = SupervisorArgs { shared: Arc::downgrade(&shared), deps: Arc::clone(&deps), config };
        let (supervisor, _) = Actor::spawn(None, Supervisor, args).await?;
        Ok(Self { shared, deps, supervisor })
    }

    /// Runs `command` on the wallet; the reply comes after its events are durable.
    pub async fn execute(&self, key: &WalletKey, command: Command, meta: CommandMeta) -> Result<CommandOutcome, WalletError> {
        self.execute_before(key, command, meta, None).await
    }

    /// Runs `command` on the wallet unless `deadline` passes (or this call is dropped) before the wallet
    /// decides it: then it is skipped, provably not applied, and the answer is
    /// `WalletError::DeadlineExceeded`. A command decided before the deadline runs to the end.
    pub async fn execute_before(
        &self,
        key: &WalletKey,
        command: Command,
        meta: CommandMeta,
        deadline: Option<Instant>,
    ) -> Result<CommandOutcome, WalletError> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(WalletError::DeadlineExceeded);
        }
        if self.shared.lookup(key).is_none() && !matches!(command.body, CommandBody::Enroll { .. }) {
            self.refuse_without_actor(key, &command).await?;
        }
        // Shared rather than cloned: a re-delivery after a crash sends the same allocation.
        let command = Arc::new((command, meta));
        self.call(key, |reply| WalletMsg::Execute {
            command: Arc::clone(&command),
            deadline,
            reply,
            caller: crate::traces::call_span(),
            sent: Instant::now(),
        })
        .await
    }

    /// The wallet's current figures.
    pub async fn summary(&self, key: &WalletKey) -> Result<WalletSummary, WalletError> {
        self.summary_at_least(key, 0).await
    }

    /// The wallet's figures with every event of its stream up to log position `at_least` in them (a
    /// position an earlier answer gave, perhaps another node's): read your writes on any node.
    pub async fn summary_at_least(&self, key: &WalletKey, at_least: u64) -> Result<WalletSummary, WalletError> {
        if self.shared.lookup(key).is_none() && self.stream_is_empty(key).await? {
            return Err(Rejection::WalletNotFound.into());
        }
        self.call(key, |reply| WalletMsg::Summary { at_least, reply, caller: crate::traces::call_span(), sent: Instant::now() }).await
    }

    /// Whether the wallet's stream holds nothing, from the log's index: a wallet that does not exist is
    /// answered without activating an actor (ids that do not exist must not fill memory or push real
    /// wallets out of it). An Enroll racing this read lands after it, which is a valid order.
    async fn stream_is_empty(&self, key: &WalletKey) -> Result<bool, WalletError> {
        let stream = codec::wallet_stream(&key.tenant, &key.wallet);
        let empty = self.deps.store.stream_version(&stream).await? == 0;
        if empty {
            self.shared.answered_without_actor.fetch_add(1, Ordering::Relaxed);
        }
        Ok(empty)
    }

    /// For a wallet with no live actor and an empty stream, `command` is decided on the empty state
    /// here, exactly as an actor would decide it (input errors first, then `WalletNotFound`); only a
    /// command the empty wallet would accept goes on to an actor.
    async fn refuse_without_actor(&self, key: &WalletKey, command: &Command) -> Result<(), WalletError> {
        if !self.stream_is_empty(key).await? {
            return Ok(());
        }
        let program = self.deps.programs.settings(&key.tenant).await?.ok_or_else(|| WalletError::UnknownTenant(key.tenant.clone()))?;
        let ctx = Context { tenant: &key.tenant, wallet: &key.wallet, now_ms: self.deps.clock.now_ms(), program: &program };
        decide(&WalletState::default(), command, &ctx).map(|_| ()).map_err(Into::into)
    }

    /// Sends one message to the wallet's actor and waits for the answer. Every message goes under a
    /// ticket (a reserved place in the actor's queue), so a passivating actor handles it before it stops:
    /// passivation never drops a call. A caller that finds the listed actor already closed goes to the
    /// supervisor, which hands it a ticket for a fresh one; only an actor dying with the message in
    /// its queue (a crash, or shutdown) counts as a failed delivery.
    async fn call<T: Send + 'static>(
        &self,
        key: &WalletKey,
        message: impl Fn(RpcReplyPort<Result<T, WalletError>>) -> WalletMsg,
    ) -> Result<T, WalletError> {
        let mut stale = None;
        let mut failures = 0;
        loop {
            let ticket = match (stale.take(), self.shared.lookup(key)) {
                (None, Some(entry)) => match entry.handle.reserve(self.shared.wallet_queue_max) {
                    Ok(ticket) => {
                        touch(&entry.last_used, self.shared.now_ms());
                        ticket
                    }
                    Err(Refused::Full) => return Err(WalletError::Busy { queued_max: self.shared.wallet_queue_max }),
                    Err(Refused::Closed) => {
                        // Passivated between our lookup and our reservation: not a failure.
                        stale = Some(entry.handle.actor.get_id());
                        continue;
                    }
                },
                (stale, _) => self.activate(key, stale).await?,
            };
            let id = ticket.actor().get_id();
            let (tx, rx) = ractor::concurrency::oneshot();
            if ticket.send(message(tx.into())).is_ok()
                && let Ok(result) = rx.await
            {
                return result;
            }
            // The actor died (crashed, or is shutting down) with our message queued or in hand.
            failures += 1;
            stale = Some(id);
            if self.shared.shutting_down.load(Ordering::Acquire) {
                return Err(WalletError::ShuttingDown);
            }
            if failures >= COMMAND_DELIVERY_ATTEMPTS_MAX {
                return Err(WalletError::Crashed { attempts: failures });
            }
        }
    }

    async fn activate(&self, key: &WalletKey, stale: Option<ActorId>) -> Result<Ticket, WalletError> {
        match self.supervisor.call(|reply| SupervisorMsg::Activate { key: key.clone(), stale, reply }, None).await {
            Ok(CallResult::Success(result)) => result,
            _ => Err(WalletError::ShuttingDown),
        }
    }

    pub fn stats(&self) -> RegistryStats {
        let (queued, queued_deepest) = self.shared.queued();
        RegistryStats {
            active: self.shared.active(),
            activations: self.shared.activations.load(Ordering::Relaxed),
            passivations: self.shared.passivations.load(Ordering::Relaxed),
            crashes: self.shared.crashes.load(Ordering::Relaxed),
            answered_without_actor: self.shared.answered_without_actor.load(Ordering::Relaxed),
            quarantines: self.shared.quarantines.load(Ordering::Relaxed),
            quarantine_refusals: self.shared.quarantine_refusals.load(Ordering::Relaxed),
            queued,
            queued_deepest,
        }
    }

    /// Runs an idle/LRU sweep now instead of waiting for the timer (operators, tests).
    pub async fn sweep(&self) {
        let _ = self.supervisor.call(SupervisorMsg::SweepNow, None).await;
    }

    /// Makes every live wallet catch up from the log before its next command or read (one read of the
    /// stream's tail, nothing stopped): another writer may have appended to any of them — a cluster node
    /// calls it when its view changes, as nodes that could not see each other may both have served them.
    pub fn refresh_all(&self) {
        self.deps.refresh.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes `key`'s wallet, if it is live here and has not seen its stream's `version`, catch up from
    /// the log before its next command or read: another node appended to it (a transfer's credit,
    /// written where the transfer is driven). The node that wrote it has seen it: nothing to do there.
    pub fn refresh(&self, key: &WalletKey, version: u64) {
        if let Some(entry) = self.shared.lookup(key) {
            entry.handle.mailbox.mark_behind(version);
        }
    }

    /// Passivates every live wallet `leave` picks (each offered a snapshot, its queued calls answered
    /// first): a cluster node that lost a shard gives its wallets up, so that if the shard comes back the
    /// wallets are recovered from the log, not served from a state another node has since moved past.
    /// How many were passivated.
    pub async fn passivate_where(&self, leave: Owns) -> usize {
        match self.supervisor.call(|reply| SupervisorMsg::PassivateWhere(Picked(leave), reply), None).await {
            Ok(CallResult::Success(count)) => count,
            _ => 0,
        }
    }

    /// Stops every wallet (each finishes the message in hand) and the supervisor.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        let cell = self.supervisor.get_cell();
        cell.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(30))).await;
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await;
    }
}

#[derive(Debug)]
enum SupervisorMsg {
    Activate {
        key: WalletKey,
        stale: Option<ActorId>,
        reply: RpcReplyPort<Result<Ticket, WalletError>>,
    },
    /// A crashed wallet's restart delay is over.
    BackoffOver(WalletKey),
    Sweep,
    SweepNow(RpcReplyPort<()>),
    PassivateWhere(Picked, RpcReplyPort<usize>),
}

/// Which wallets a [`SupervisorMsg::PassivateWhere`] gives up.
struct Picked(Owns);

impl std::fmt::Debug for Picked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Picked(..)")
    }
}

#[derive(Debug)]
struct Supervisor;

#[derive(Debug)]
struct SupervisorArgs {
    shared: Weak<Shared>,
    deps: Arc<Deps>,
    config: RegistryConfig,
}

#[derive(Debug, Clone, Copy)]
struct Crashes {
    count: u32,
    window_start_ms: u64,
    last_ms: u64,
}

/// A caller waiting for a ticket to its wallet's (fresh) actor.
type Waiter = RpcReplyPort<Result<Ticket, WalletError>>;

#[derive(Debug)]
struct SupervisorState {
    shared: Weak<Shared>,
    deps: Arc<Deps>,
    config: RegistryConfig,
    by_id: HashMap<ActorId, WalletKey>,
    /// Wallets whose actor is stopping; activations wait here for its termination.
    stopping: HashMap<WalletKey, (ActorId, Vec<Waiter>)>,
    /// Wallets waiting out a restart delay after a crash.
    delayed: HashMap<WalletKey, Vec<Waiter>>,
    crashes: HashMap<WalletKey, Crashes>,
}

fn backoff_ms(crashes: u32) -> u64 {
    WALLET_RESTART_BACKOFF_MS.saturating_mul(1 << crashes.saturating_sub(1).min(20)).min(WALLET_RESTART_BACKOFF_MAX_MS)
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<SupervisorMsg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(args.config.sweep_interval_ms.max(1)), || SupervisorMsg::Sweep);
        Ok(SupervisorState {
            shared: args.shared,
            deps: args.deps,
            config: args.config,
            by_id: HashMap::new(),
            stopping: HashMap::new(),
            delayed: HashMap::new(),
            crashes: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(shared) = state.shared.upgrade() else {
            myself.stop(Some("registry dropped".into()));
            return Ok(());
        };
        match message {
            SupervisorMsg::Activate { key, stale, reply } => {
                if let (Some(stale), Some(entry)) = (stale, shared.lookup(&key))
                    && entry.handle.actor.get_id() == stale
                {
                    // The caller found this actor dead or stopping; unlist it and wait for its end.
                    shared.shard(&key).write().remove(&key);
                    state.stopping.entry(key.clone()).or_insert_with(|| (stale, Vec::new()));
                }
                state.activate(&myself, &shared, key, reply).await;
            }
            SupervisorMsg::BackoffOver(key) => {
                for waiter in state.delayed.remove(&key).unwrap_or_default() {
                    state.activate(&myself, &shared, key.clone(), waiter).await;
                }
            }
            SupervisorMsg::Sweep => state.sweep(&shared),
            SupervisorMsg::SweepNow(reply) => {
                state.sweep(&shared);
                let _ = reply.send(());
            }
            SupervisorMsg::PassivateWhere(Picked(leave), reply) => {
                let _ = reply.send(state.passivate_where(&shared, &leave));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(shared) = state.shared.upgrade() else {
            return Ok(());
        };
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error)),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(key) = state.by_id.remove(&id) else {
            return Ok(());
        };
        {
            let mut shard = shared.shard(&key).write();
            if shard.get(&key).is_some_and(|e| e.handle.actor.get_id() == id) {
                shard.remove(&key);
            }
        }
        if let Some(error) = failure {
            shared.crashes.fetch_add(1, Ordering::Relaxed);
            let now = shared.now_ms();
            let crashes = state.crashes.entry(key.clone()).or_insert(Crashes { count: 0, window_start_ms: now, last_ms: now });
            if now - crashes.window_start_ms > WALLET_CRASH_WINDOW_MS {
                *crashes = Crashes { count: 0, window_start_ms: now, last_ms: now };
            }
            crashes.count += 1;
            crashes.last_ms = now;
            if crashes.count == WALLET_CRASHES_MAX {
                shared.quarantines.fetch_add(1, Ordering::Relaxed);
            }
            tracing::error!(tenant = %key.tenant, wallet = %key.wallet, crashes = crashes.count, %error, "wallet actor crashed");
        } else {
            shared.passivations.fetch_add(1, Ordering::Relaxed);
        }
        let waiters = match state.stopping.remove(&key) {
            Some((stopping_id, waiters)) if stopping_id == id => waiters,
            Some(other) => {
                state.stopping.insert(key.clone(), other);
                Vec::new()
            }
            None => Vec::new(),
        };
        for waiter in waiters {
            state.activate(&myself, &shared, key.clone(), waiter).await;
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn activate(&mut self, myself: &ActorRef<SupervisorMsg>, shared: &Shared, key: WalletKey, reply: Waiter) {
        if shared.shutting_down.load(Ordering::Acquire) {
            let _ = reply.send(Err(WalletError::ShuttingDown));
            return;
        }
        if let Some(entry) = shared.lookup(&key) {
            touch(&entry.last_used, shared.now_ms());
            let _ = reply.send(ticket(shared, &entry));
            return;
        }
        if let Some((_, waiters)) = self.stopping.get_mut(&key) {
            waiters.push(reply);
            return;
        }
        if let Some(waiters) = self.delayed.get_mut(&key) {
            waiters.push(reply);
            return;
        }
        let now = shared.now_ms();
        if let Some(crashes) = self.crashes.get(&key).copied() {
            let since_window = now.saturating_sub(crashes.window_start_ms);
            if crashes.count >= WALLET_CRASHES_MAX && since_window <= WALLET_CRASH_WINDOW_MS {
                shared.quarantine_refusals.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(WalletError::Quarantined { retry_after_ms: WALLET_CRASH_WINDOW_MS - since_window }));
                return;
            }
            let ready_at = crashes.last_ms + backoff_ms(crashes.count);
            if since_window <= WALLET_CRASH_WINDOW_MS && now < ready_at {
                self.delayed.insert(key.clone(), vec![reply]);
                myself.send_after(Duration::from_millis(ready_at - now), move || SupervisorMsg::BackoffOver(key));
                return;
            }
        }
        let mailbox = Arc::new(Mailbox::default());
        let args = WalletArgs { key: key.clone(), deps: Arc::clone(&self.deps), mailbox: Arc::clone(&mailbox) };
        match Actor::spawn_linked(None, WalletActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                let entry = Entry { handle: Handle { actor, mailbox }, last_used: Arc::new(AtomicU64::new(now)) };
                self.by_id.insert(entry.handle.actor.get_id(), key.clone());
                shared.shard(&key).write().insert(key.clone(), entry.clone());
                shared.activations.fetch_add(1, Ordering::Relaxed);
                // The bound holds by the time anyone sees the new wallet (replying first let a caller
                // find one wallet too many live).
                // The caller's ticket is taken before anything can passivate the new wallet, so its
                // message is handled even if the wallet is evicted before the message is sent.
                let ticket = ticket(shared, &entry);
                if self.by_id.len() > self.config.active_wallets_max {
                    self.evict_least_recently_used(shared, Some(&key));
                }
                let _ = reply.send(ticket);
            }
            Err(error) => {
                tracing::error!(%error, "wallet actor failed to start");
                let _ = reply.send(Err(WalletError::Crashed { attempts: 1 }));
            }
        }
    }

    /// Passivates wallets idle for longer than the idle time, then enforces the bound on live wallets.
    fn sweep(&mut self, shared: &Shared) {
        let now = shared.now_ms();
        let idle: Vec<(WalletKey, Entry)> = shared
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|(_, e)| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= self.config.idle_ms)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (key, entry) in idle {
            self.passivate(shared, key, &entry);
        }
        if shared.active() > self.config.active_wallets_max {
            self.evict_least_recently_used(shared, None);
        }
        let window_over = |c: &Crashes| now.saturating_sub(c.window_start_ms) > WALLET_CRASH_WINDOW_MS;
        self.crashes.retain(|_, c| !window_over(c));
    }

    /// Passivates the least recently used wallets down to 90% of the bound, so eviction is amortised;
    /// never `keep`, the wallet just activated for a caller (its last use can tie with others').
    fn evict_least_recently_used(&mut self, shared: &Shared, keep: Option<&WalletKey>) {
        let target = self.config.active_wallets_max - self.config.active_wallets_max / 10;
        let mut all: Vec<(u64, WalletKey, Entry)> = shared
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|(k, _)| Some(*k) != keep)
                    .map(|(k, e)| (e.last_used.load(Ordering::Relaxed), k.clone(), e.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let excess = (all.len() + usize::from(keep.is_some())).saturating_sub(target).min(all.len());
        if excess == 0 {
            return;
        }
        all.select_nth_unstable_by_key(excess - 1, |(used, _, _)| *used);
        for (_, key, entry) in all.into_iter().take(excess) {
            self.passivate(shared, key, &entry);
        }
    }

    fn passivate_where(&mut self, shared: &Shared, leave: &Owns) -> usize {
        let picked: Vec<(WalletKey, Entry)> = shared
            .shards
            .iter()
            .flat_map(|shard| shard.read().iter().filter(|(k, _)| leave(k)).map(|(k, e)| (k.clone(), e.clone())).collect::<Vec<_>>())
            .collect();
        let count = picked.len();
        for (key, entry) in picked {
            self.passivate(shared, key, &entry);
        }
        count
    }

    fn passivate(&mut self, shared: &Shared, key: WalletKey, entry: &Entry) {
        let id = entry.handle.actor.get_id();
        {
            let mut shard = shared.shard(&key).write();
            if shard.get(&key).is_none_or(|e| e.handle.actor.get_id() != id) {
                return;
            }
            shard.remove(&key);
        }
        self.stopping.insert(key, (id, Vec::new()));
        // The actor stops once every ticket to it is used; later callers wait for a fresh actor.
        let _ = entry.handle.actor.cast(WalletMsg::Passivate);
    }
}

/// A ticket to a listed wallet for a caller the supervisor answers. A listed actor is never closed
/// (it closes only after `Passivate`, which follows its unlisting), so the only refusal is a full queue.
fn ticket(shared: &Shared, entry: &Entry) -> Result<Ticket, WalletError> {
    entry.handle.reserve(shared.wallet_queue_max).map_err(|refused| match refused {
        Refused::Full => WalletError::Busy { queued_max: shared.wallet_queue_max },
        Refused::Closed => unreachable!("a listed wallet actor is never closed"),
    })
}
