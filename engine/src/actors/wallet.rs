//! The wallet actor: thin shell around the pure domain. Handler shape: load → decide → append → apply →
//! reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use tally_proto::v1::OrderClaimed;
use tokio::time::Instant;
use tracing::Instrument;

use super::identifiers::{self, ClaimStep};
use super::{CommandMeta, CommandOutcome, Programs, Snapshots, StoredWalletEvent, WalletError, WalletKey, WalletSummary};
use crate::clock::Clock;
use crate::codec;
use crate::domain::{
    Change, Command, CommandBody, Context, Decision, Event, ProgramSettings, Receipt, Rejection, WalletState, WalletStatus, apply, decide,
    tiers,
};
use crate::limits::{CONFLICT_RETRIES_MAX, RECOVERY_READ_BATCH_EVENTS};
use crate::personal;
use crate::store::{AppendOutcome, EventStore, ExpectedVersion, PersonalKey, StoreError, StreamId};
use crate::traces::{call_span, child_of};
use tally_proto::v1::PersonalData;

/// What every wallet actor of a registry shares.
#[derive(Debug)]
pub(super) struct Deps {
    pub(super) store: Arc<dyn EventStore>,
    pub(super) programs: Arc<dyn Programs>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) snapshots: Arc<dyn Snapshots>,
    /// Raised by [`super::WalletRegistry::refresh_all`]: a wallet whose state was last checked against
    /// the log under a lower value catches up before its next command or read.
    pub(super) refresh: AtomicU64,
}

#[derive(Debug)]
pub(super) enum WalletMsg {
    Execute {
        command: Arc<(Command, CommandMeta)>,
        /// When the caller stops waiting: a command still queued then is skipped, never decided.
        deadline: Option<Instant>,
        reply: RpcReplyPort<Result<CommandOutcome, WalletError>>,
        /// The caller's span (its call's trace): the command's span is its child.
        caller: tracing::Span,
        /// When it was sent, for the time it waited in the mailbox.
        sent: Instant,
    },
    Summary {
        /// Answer only with every event of the wallet's stream up to this log position applied (0: what
        /// the actor holds).
        at_least: u64,
        reply: RpcReplyPort<Result<WalletSummary, WalletError>>,
        caller: tracing::Span,
        sent: Instant,
    },
    /// A [`Ticket`] was given up without a message: the place it held in the queue is free.
    Release,
    /// Stop once no caller holds a ticket; sent by the supervisor, which has already unlisted us.
    Passivate,
}

/// The count of messages callers have been admitted to send a wallet actor and it has not yet taken up,
/// with a bit set once the actor has stopped admitting (it is passivating and nothing was queued).
///
/// Every caller reserves a place before it sends (a [`Ticket`]) and the actor gives the place back as it
/// takes the message up, so a passivating actor knows whether anyone is still coming: it stops only
/// when the count is zero, and closes the count in the same atomic step, so a caller either gets a
/// place (and its message is handled) or learns the actor is gone before sending anything.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    state: AtomicU64,
    /// A stream version the log is known to hold (another node appended it: a transfer's credit): an
    /// actor whose state is older catches up before its next call.
    behind: AtomicU64,
}

const MAILBOX_CLOSED: u64 = 1 << 63;

/// Why a place in a wallet's queue was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The actor has stopped admitting (passivated): go through the supervisor for a fresh one.
    Closed,
    /// `WALLET_QUEUE_MESSAGES_MAX` messages are queued already.
    Full,
}

impl Mailbox {
    fn reserve(&self, queued_max: u64) -> Result<(), Refused> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & MAILBOX_CLOSED != 0 {
                return Err(Refused::Closed);
            }
            if state >= queued_max {
                return Err(Refused::Full);
            }
            match self.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(observed) => state = observed,
            }
        }
    }

    /// Messages admitted and not yet taken up.
    pub(super) fn queued(&self) -> u64 {
        self.state.load(Ordering::Relaxed) & !MAILBOX_CLOSED
    }

    /// The actor took up a message sent under a ticket.
    fn take(&self) {
        let before = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before & !MAILBOX_CLOSED > 0, "a message taken up without a ticket");
    }

    /// The wallet's stream holds version `version`: an actor that has not seen it catches up before its
    /// next call.
    pub(super) fn mark_behind(&self, version: u64) {
        self.behind.fetch_max(version, Ordering::AcqRel);
    }

    /// Closes admission if nothing is queued or promised.
    fn try_close(&self) -> bool {
        self.state.compare_exchange(0, MAILBOX_CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// A wallet actor and its queue count, as the registry lists it.
#[derive(Debug, Clone)]
pub(super) struct Handle {
    pub(super) actor: ActorRef<WalletMsg>,
    pub(super) mailbox: Arc<Mailbox>,
}

impl Handle {
    /// A place in this actor's queue, or why not.
    pub(super) fn reserve(&self, queued_max: u64) -> Result<Ticket, Refused> {
        self.mailbox.reserve(queued_max)?;
        Ok(Ticket { handle: Some(self.clone()) })
    }
}

/// A reserved place in a wallet actor's queue: sending through it is the only way messages that carry
/// a reply reach a wallet. Dropped unused (a caller cancelled), it gives the place back.
#[derive(Debug)]
pub(super) struct Ticket {
    handle: Option<Handle>,
}

impl Ticket {
    pub(super) fn actor(&self) -> &ActorRef<WalletMsg> {
        &self.handle.as_ref().expect("a ticket is used once").actor
    }

    /// Sends under the reservation; fails only if the actor has died (crashed or shut down).
    pub(super) fn send(mut self, message: WalletMsg) -> Result<(), MessagingErr<WalletMsg>> {
        let handle = self.handle.take().expect("a ticket is used once");
        handle.actor.send_message(message)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // The actor gives the place back when it takes this up; if it is gone, nothing waits on it.
            let _ = handle.actor.send_message(WalletMsg::Release);
        }
    }
}

#[derive(Debug)]
pub(super) struct WalletActor;

#[derive(Debug)]
pub(super) struct WalletArgs {
    pub(super) key: WalletKey,
    pub(super) deps: Arc<Deps>,
    pub(super) mailbox: Arc<Mailbox>,
}

/// The actor's state: the aggregate plus what it needs to stay in step with the store.
#[derive(Debug)]
pub(super) struct Wallet {
    key: WalletKey,
    stream: StreamId,
    deps: Arc<Deps>,
    /// `None` until recovered from the store (recovery runs on the first message, not at spawn, so
    /// activations never wait on each other).
    state: Option<WalletState>,
    /// An append failed with an unknown outcome: catch up from the store before deciding again.
    stale: bool,
    /// The registry's refresh count when the state was last brought up to the log.
    refreshed: u64,
    /// Stream version of the last snapshot loaded or saved.
    snapshot_version: u64,
    /// A log position up to which every event of the wallet's stream is applied: its own last append's,
    /// or one a read was asked to reach (see `summary`).
    seen_position: u64,
    mailbox: Arc<Mailbox>,
    /// Unlisted by the supervisor: stop as soon as no caller holds a ticket.
    passivating: bool,
    /// The key of the customer's personal data, once read (or made); dropped when it is erased.
    /// The key of the customer's personal data once read (`Some(None)`: the store has none), or made;
    /// forgotten when the wallet catches up with the log, `Some(None)` once erased here.
    personal_key: Option<Option<PersonalKey>>,
}

impl Actor for WalletActor {
    type Msg = WalletMsg;
    type State = Wallet;
    type Arguments = WalletArgs;

    async fn pre_start(&self, _myself: ActorRef<WalletMsg>, args: WalletArgs) -> Result<Wallet, ActorProcessingErr> {
        let stream = codec::wallet_stream(&args.key.tenant, &args.key.wallet);
        Ok(Wallet {
            key: args.key,
            stream,
            deps: args.deps,
            state: None,
            stale: false,
            refreshed: 0,
            snapshot_version: 0,
            seen_position: 0,
            mailbox: args.mailbox,
            passivating: false,
            personal_key: None,
        })
    }

    async fn handle(&self, myself: ActorRef<WalletMsg>, message: WalletMsg, wallet: &mut Wallet) -> Result<(), ActorProcessingErr> {
        match message {
            WalletMsg::Execute { command, deadline, reply, caller, sent } => {
                wallet.mailbox.take();
                let (command, meta) = &*command;
                let queued = queued(sent);
                let span = child_of(&caller, || {
                    tracing::info_span!(
                        parent: &caller,
                        "wallet.command",
                        tenant = %wallet.key.tenant,
                        wallet = %wallet.key.wallet,
                        kind = command.kind(),
                        queued_us = queued.as_micros() as u64,
                    )
                });
                // A caller that stopped waiting (its reply port closed: cancelled, or its server deadline
                // passed) gets no decision: the command is skipped before `decide`, so it is not applied.
                let abandoned = || reply.is_closed() || deadline.is_some_and(|d| Instant::now() >= d);
                let result = wallet.execute(command, meta, &abandoned).instrument(span).await;
                let _ = reply.send(result);
                wallet.snapshot_if_due(false);
            }
            WalletMsg::Summary { at_least, reply, caller, sent } => {
                wallet.mailbox.take();
                let queued = queued(sent);
                if !reply.is_closed() {
                    let span =
                        child_of(&caller, || tracing::info_span!(parent: &caller, "wallet.summary", queued_us = queued.as_micros() as u64));
                    let _ = reply.send(wallet.summary(at_least).instrument(span).await);
                }
            }
            WalletMsg::Release => wallet.mailbox.take(),
            WalletMsg::Passivate => wallet.passivating = true,
        }
        // Messages sent under tickets may still be on their way (a caller looked us up just before the
        // supervisor unlisted us, or was handed us by an activation): stop only once none is, so no
        // caller's message is ever dropped by a passivation.
        if wallet.passivating && wallet.mailbox.try_close() {
            wallet.snapshot_if_due(true);
            myself.stop(Some("passivated".into()));
        }
        Ok(())
    }
}

/// How long a message waited in the mailbox (`tally_wallet_queue_seconds`).
fn queued(sent: Instant) -> std::time::Duration {
    let queued = sent.elapsed();
    metrics::histogram!("tally_wallet_queue_seconds").record(queued.as_secs_f64());
    queued
}

impl Wallet {
    async fn current(&mut self) -> Result<&mut WalletState, WalletError> {
        // Read before catching up: a refresh asked for meanwhile is honoured at the next call.
        let refresh = self.deps.refresh.load(Ordering::Acquire);
        let seen = self.state.as_ref().map_or(0, |state| state.version);
        if refresh != self.refreshed || self.mailbox.behind.load(Ordering::Acquire) > seen {
            self.stale = true;
        }
        if self.stale {
            // Another node may have erased the customer meanwhile: the key is read again when needed.
            self.personal_key = None;
        }
        if self.state.is_none() {
            let started = std::time::Instant::now();
            let mut state = self.start_state().await?;
            self.catch_up(&mut state).await?;
            tracing::debug!(stream = %self.stream, version = state.version, elapsed_us = started.elapsed().as_micros() as u64, "wallet recovered");
            self.state = Some(state);
        } else if self.stale {
            let mut state = self.state.take().expect("checked above");
            let result = self.catch_up(&mut state).await;
            self.state = Some(state);
            result?;
        }
        self.stale = false;
        self.refreshed = refresh;
        Ok(self.state.as_mut().expect("recovered above"))
    }

    /// The latest snapshot if it is consistent with the log, else an empty state (full replay).
    async fn start_state(&mut self) -> Result<WalletState, WalletError> {
        let Some(snapshot) = self.deps.snapshots.latest(&self.stream).await else { return Ok(WalletState::default()) };
        let logged = self.deps.store.stream_version(&self.stream).await?;
        if snapshot.version > logged {
            tracing::warn!(stream = %self.stream, snapshot = snapshot.version, log = logged, "snapshot is ahead of the log; replaying instead");
            metrics::counter!("tally_snapshots_rejected_total", "reason" => "ahead_of_log").increment(1);
            return Ok(WalletState::default());
        }
        self.snapshot_version = snapshot.version;
        Ok(snapshot)
    }

    /// Hands a snapshot to the store when the policy says so. Runs after the reply was sent.
    fn snapshot_if_due(&mut self, passivating: bool) {
        let Some(state) = self.state.as_ref().filter(|_| !self.stale) else { return };
        let since = state.version - self.snapshot_version.min(state.version);
        if since > 0 && self.deps.snapshots.due(since, passivating) {
            self.deps.snapshots.save(&self.stream, state);
            self.snapshot_version = state.version;
        }
    }

    /// Applies every stored event after `state.version`.
    async fn catch_up(&self, state: &mut WalletState) -> Result<(), WalletError> {
        loop {
            let events = self.deps.store.read_stream(&self.stream, state.version + 1, RECOVERY_READ_BATCH_EVENTS).await?;
            let complete = events.len() < RECOVERY_READ_BATCH_EVENTS;
            for recorded in events {
                assert_eq!(recorded.stream_version, state.version + 1, "store returned a stream out of order");
                apply(state, &codec::decode(recorded)?);
            }
            if complete {
                return Ok(());
            }
        }
    }

    /// Decides and records `command`, unless `abandoned` says its caller stopped waiting before it was
    /// decided: checked before every `decide`, so a skipped command has appended nothing of its own.
    async fn execute(
        &mut self,
        command: &Command,
        meta: &CommandMeta,
        abandoned: &(dyn Fn() -> bool + Sync),
    ) -> Result<CommandOutcome, WalletError> {
        let program =
            self.deps.programs.settings(&self.key.tenant).await?.ok_or_else(|| WalletError::UnknownTenant(self.key.tenant.clone()))?;
        let mut sealed = self.seal_retry(command).await?;
        let (mut attempt, mut admitted) = (0, false);
        loop {
            let command = sealed.as_ref().unwrap_or(command);
            self.current().await?;
            let state = self.state.as_ref().expect("current() recovered it");
            // Event times never go backwards within a stream, whatever a clock says (invariant 10).
            let now_ms = self.deps.clock.now_ms().max(state.last_activity_ms);
            if abandoned() {
                tracing::debug!(stream = %self.stream, kind = command.kind(), "caller gone or deadline passed; command skipped, not decided");
                // An attach whose append lost a race claimed its identifier already: let it go.
                if attempt > 0 {
                    self.settle_identifier(command, now_ms, meta).await?;
                }
                return Err(WalletError::DeadlineExceeded);
            }
            let ctx = Context { tenant: &self.key.tenant, wallet: &self.key.wallet, now_ms, program: &program };
            let events = match decide(state, command, &ctx) {
                // Everything else about the enrolment holds: the wallet is admitted (counted against its
                // tenant's bound), then its key made and the reference sealed, and it is decided again.
                Err(Rejection::PersonalDataNotSealed) if attempt < CONFLICT_RETRIES_MAX => {
                    if !admitted {
                        if !self.admit(meta, attempt).await? {
                            attempt += 1;
                            continue;
                        }
                        admitted = true;
                    }
                    (sealed, attempt) = self.seal_enrolment(command, attempt).await?;
                    continue;
                }
                Err(rejection) if identifiers::named_by(command).is_some() => {
                    self.settle_identifier(command, now_ms, meta).await?;
                    return Err(rejection.into());
                }
                decided => decided?,
            };
            let events = match events {
                Decision::Append(events) => events,
                Decision::AlreadyApplied(receipt) => return self.answer_again(command, receipt, &program, meta).await,
                Decision::CatchUp(events) => {
                    // Each chunk records at least one transition, so this ends; then the command.
                    if self.record_due(events, meta, attempt < CONFLICT_RETRIES_MAX).await? {
                        attempt += 1;
                    }
                    continue;
                }
            };
            if state.version == 0 && !admitted && matches!(command.body, CommandBody::Enroll { .. }) {
                if !self.admit(meta, attempt).await? {
                    attempt += 1;
                    continue;
                }
                admitted = true;
            }
            match self.record(command, events, (now_ms, meta), &program, attempt < CONFLICT_RETRIES_MAX).await? {
                Some(outcome) => return Ok(outcome),
                // Another writer got there first (a second node, or a stale actor): catch up, decide again.
                None => attempt += 1,
            }
        }
    }

    /// Records `events` of `command` — what must hold first, then the append — and applies them: the
    /// outcome, or `None` when another writer got there first and `retry` says to decide again.
    async fn record(
        &mut self,
        command: &Command,
        events: Vec<Event>,
        (now_ms, meta): (i64, &CommandMeta),
        program: &ProgramSettings,
        retry: bool,
    ) -> Result<Option<CommandOutcome>, WalletError> {
        self.before_append(command, &events, now_ms, meta).await?;
        let state = self.state.as_ref().expect("current() recovered it");
        let expected = ExpectedVersion::Exact(state.version);
        let data = events.iter().map(|event| codec::encode(event, recorded_meta(event, meta).as_ref())).collect();
        // No span of its own: the group commit's `store.commit` (a child of this command's span) says
        // how the append went, one span per commit rather than one more per command.
        match self.deps.store.append(&self.stream, expected, data).await {
            Ok(outcome) => {
                let detached = detached(events.iter().map(|e| &e.change));
                let outcome = self.applied(events, outcome, now_ms, program);
                self.release_detached(&detached, command, now_ms, meta).await;
                self.with_customer(outcome).await.map(Some)
            }
            Err(StoreError::VersionConflict { .. }) if retry => {
                self.stale = true;
                Ok(None)
            }
            Err(error) => {
                self.stale = true;
                Err(error.into())
            }
        }
    }

    /// Records a chunk of what time brought ahead of a command: `true` when another writer got there first
    /// and `retry` says to decide again (an attempt spent).
    async fn record_due(&mut self, events: Vec<Event>, meta: &CommandMeta, retry: bool) -> Result<bool, WalletError> {
        match self.record_catch_up(events, meta).await {
            Ok(()) => Ok(false),
            Err(StoreError::VersionConflict { .. }) if retry => {
                self.stale = true;
                Ok(true)
            }
            Err(error) => {
                self.stale = true;
                Err(error.into())
            }
        }
    }

    /// Admits this wallet as a new one of its tenant (counted and bounded before its first event): `true`
    /// once admitted; `false` when the tenant is full but the wallet's stream holds events this actor has
    /// not seen — another node enrolled it — so it catches up and answers that enrolment rather than
    /// refuse it (while attempts last).
    async fn admit(&mut self, meta: &CommandMeta, attempt: u32) -> Result<bool, WalletError> {
        match self.deps.programs.admit_wallet(&self.key.tenant, &self.key.wallet, meta).await {
            Err(WalletError::TooManyWallets { .. })
                if attempt < CONFLICT_RETRIES_MAX && self.deps.store.stream_version(&self.stream).await? > 0 =>
            {
                self.stale = true;
                Ok(false)
            }
            admitted => admitted.map(|()| true),
        }
    }

    /// What must hold before `events` of `command` are appended: an order claimed for this wallet; an
    /// identifier claimed for it; an erased customer's key gone — before the event is recorded, so a
    /// crash between the two leaves the data unreadable and the erasure to be recorded by a retry, never
    /// an erasure on record with its key alive.
    async fn before_append(&mut self, command: &Command, events: &[Event], now_ms: i64, meta: &CommandMeta) -> Result<(), WalletError> {
        if let CommandBody::EarnForOrder { order } = &command.body {
            self.claim_order(&order.order_id, command, now_ms, meta).await?;
        }
        let step = ClaimStep { store: &*self.deps.store, wallet: &self.key, command, now_ms, meta };
        for event in events {
            if let Change::IdentifierAttached(e) = &event.change {
                step.claim(e.kind, &e.lookup).await?;
            }
        }
        if events.iter().any(|e| matches!(e.change, Change::CustomerErased(_))) {
            self.erase_key().await?;
        }
        Ok(())
    }

    /// After a refused command about an identifier the wallet does not carry: a claim of this wallet's on
    /// it that no attach followed (a crash between the two, an attach refused after its claim) is
    /// released, so the identifier is free for the wallet that asks next.
    async fn settle_identifier(&self, command: &Command, now_ms: i64, meta: &CommandMeta) -> Result<(), WalletError> {
        let Some(lookup) = identifiers::named_by(command) else { return Ok(()) };
        if self.carries(lookup) || !crate::domain::identifiers::is_lookup(lookup) {
            return Ok(());
        }
        ClaimStep { store: &*self.deps.store, wallet: &self.key, command, now_ms, meta }.release(lookup).await
    }

    fn carries(&self, lookup: &str) -> bool {
        self.state.as_ref().is_some_and(|state| state.identifiers().any(|(l, _)| l == lookup))
    }

    /// The claims of identifiers that recorded events detached, released once the detach is durable —
    /// so the wallet never shows an identifier it does not hold. Best effort: the detach is on record
    /// whatever happens here, and a claim left behind (the wallet does not show it) is ignored by
    /// `FindWallet` and let go at the wallet's next word on it, or at this command's retry.
    async fn release_detached(&self, lookups: &[String], command: &Command, now_ms: i64, meta: &CommandMeta) {
        let step = ClaimStep { store: &*self.deps.store, wallet: &self.key, command, now_ms, meta };
        for lookup in lookups.iter().filter(|lookup| !self.carries(lookup)) {
            if let Err(error) = step.release(lookup).await {
                tracing::warn!(stream = %self.stream, %error, "a detached identifier's claim could not be released yet");
                metrics::counter!("tally_identifier_releases_failed_total").increment(1);
            }
        }
    }

    /// The recorded outcome of `command` decided before, answered again; a retried erasure finishes what
    /// the first may not have (its key is erased first).
    async fn answer_again(
        &mut self,
        command: &Command,
        receipt: Receipt,
        program: &ProgramSettings,
        meta: &CommandMeta,
    ) -> Result<CommandOutcome, WalletError> {
        if matches!(command.body, CommandBody::EraseCustomer { .. }) {
            self.erase_key().await?;
        }
        let outcome = self.replay(receipt, program).await?;
        // What the first attempt detached may not have been released (a crash after the append).
        let detached = detached(outcome.events.iter().map(|e| &e.event.change));
        self.release_detached(&detached, command, self.deps.clock.now_ms(), meta).await;
        self.with_customer(outcome).await
    }

    /// An enrolment sealed under a key made for it (`seal_new`); if another node enrolled the wallet
    /// meanwhile, sealed as a retry of that enrolment (with its key), counted as one more attempt.
    async fn seal_enrolment(&mut self, command: &Command, attempt: u32) -> Result<(Option<Command>, u32), WalletError> {
        match self.seal_new(command).await? {
            Some(sealed) => Ok((Some(sealed), attempt)),
            None => Ok((self.seal_retry(command).await?, attempt + 1)),
        }
    }

    /// Applies `events`, appended as `outcome` says, to the state; what the caller is told.
    fn applied(&mut self, events: Vec<Event>, outcome: AppendOutcome, now_ms: i64, program: &ProgramSettings) -> CommandOutcome {
        let state = self.state.as_mut().expect("current() recovered it");
        for event in &events {
            apply(state, event);
        }
        debug_assert_eq!(state.version, outcome.last_version);
        self.seen_position = self.seen_position.max(outcome.last_position);
        let events = (0..)
            .zip(events)
            .map(|(i, event)| StoredWalletEvent { version: outcome.first_version + i, position: outcome.first_position + i, event })
            .collect();
        CommandOutcome {
            events,
            balance: state.balance,
            version: state.version,
            position: outcome.last_position,
            replayed: false,
            wallet: WalletSummary::of(state, now_ms, program),
        }
    }

    /// Claims `order_id` for this wallet on the order's own stream, appended only where it does not exist
    /// yet, so an order earns in one wallet of the tenant. A claim this wallet made before (a retry after
    /// a lost reply, a crash between the claim and the earn) is this wallet's to use.
    async fn claim_order(&self, order_id: &str, command: &Command, now_ms: i64, meta: &CommandMeta) -> Result<(), WalletError> {
        let stream = codec::order_stream(&self.key.tenant, order_id)?;
        let claim = OrderClaimed {
            tenant_id: self.key.tenant.as_str().to_owned(),
            order_id: order_id.to_owned(),
            wallet_id: self.key.wallet.as_str().to_owned(),
        };
        let data = vec![codec::encode_claim(&claim, command, now_ms, meta)];
        match self
            .deps
            .store
            .append(&stream, ExpectedVersion::Exact(0), data)
            .instrument(child_of(&call_span(), || tracing::info_span!("store.claim")))
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::VersionConflict { .. }) => {
                let first = self.deps.store.read_stream(&stream, 1, 1).await?.into_iter().next();
                let holder = first.map(codec::decode_claim).transpose()?.map(|claim| claim.wallet_id).unwrap_or_default();
                if holder == claim.wallet_id {
                    Ok(())
                } else {
                    Err(Rejection::OrderEarnedElsewhere { order_id: order_id.to_owned(), wallet_id: holder }.into())
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Appends and applies a chunk of what time brought, ahead of a command.
    async fn record_catch_up(&mut self, events: Vec<Event>, meta: &CommandMeta) -> Result<(), StoreError> {
        let state = self.state.as_mut().expect("current() recovered it");
        let data = events.iter().map(|event| codec::encode(event, recorded_meta(event, meta).as_ref())).collect();
        let expected = ExpectedVersion::Exact(state.version);
        self.deps
            .store
            .append(&self.stream, expected, data)
            .instrument(child_of(&call_span(), || tracing::info_span!("store.append.catch_up")))
            .await?;
        events.iter().for_each(|event| apply(state, event));
        Ok(())
    }

    /// The recorded outcome of an earlier identical command, read back from the log.
    async fn replay(&self, receipt: Receipt, program: &ProgramSettings) -> Result<CommandOutcome, WalletError> {
        let count = usize::try_from(receipt.last_version - receipt.first_version + 1).unwrap_or(usize::MAX);
        let recorded = self.deps.store.read_stream(&self.stream, receipt.first_version, count).await?;
        let mut events = Vec::with_capacity(recorded.len());
        for r in recorded {
            let (version, position) = (r.stream_version, r.global_position);
            events.push(StoredWalletEvent { version, position, event: codec::decode(r)? });
        }
        let position = events.last().map_or(0, |e| e.position);
        let wallet =
            WalletSummary::of(self.state.as_ref().expect("a receipt comes from a recovered state"), self.deps.clock.now_ms(), program);
        Ok(CommandOutcome { events, balance: receipt.balance_after, version: receipt.last_version, position, replayed: true, wallet })
    }

    async fn summary(&mut self, at_least: u64) -> Result<WalletSummary, WalletError> {
        let program = self.deps.programs.settings(&self.key.tenant).await?.unwrap_or_default();
        let now_ms = self.deps.clock.now_ms();
        // A position this actor may not have seen (another node wrote it): the stream's tail is read
        // first. Asked after that position was acknowledged, the read holds every event at or before it.
        if at_least > self.seen_position {
            self.stale = true;
        }
        self.current().await?;
        self.seen_position = self.seen_position.max(at_least);
        let state = self.state.as_mut().expect("current() recovered it");
        if state.status == WalletStatus::NotEnrolled {
            return Err(Rejection::WalletNotFound.into());
        }
        let mut summary = WalletSummary::of(state, now_ms, &program);
        (summary.customer_ref, summary.customer_erased) = self.customer().await?;
        Ok(summary)
    }

    /// A retried enrolment of a wallet enrolled already, sealed under the wallet's own key so its bytes
    /// equal the recorded ones (and its receipt answers it). With no key (erased, or a wallet enrolled
    /// before sealing) it stays unsealed and decides to the refusal or receipt that wallet gets.
    async fn seal_retry(&mut self, command: &Command) -> Result<Option<Command>, WalletError> {
        if !unsealed_enrolment(command) || self.current().await?.status == WalletStatus::NotEnrolled {
            return Ok(None);
        }
        Ok(self.key().await?.map(|key| self.seal(command, &key)))
    }

    /// A new wallet's enrolment, sealed under a key made for it (durably) — once `decide` found nothing
    /// else wrong with it, so a refused enrolment leaves no key. `None` when the log holds events this
    /// actor has not seen (another node enrolled it): it catches up rather than make a second key.
    async fn seal_new(&mut self, command: &Command) -> Result<Option<Command>, WalletError> {
        let seen = self.state.as_ref().map_or(0, |state| state.version);
        if self.deps.store.stream_version(&self.stream).await? != seen {
            self.stale = true;
            return Ok(None);
        }
        let key = self.deps.store.keep_personal_key(&self.stream, &PersonalKey::generate()?).await?;
        let sealed = self.seal(command, &key);
        self.personal_key = Some(Some(key));
        Ok(Some(sealed))
    }

    fn seal(&self, command: &Command, key: &PersonalKey) -> Command {
        let CommandBody::Enroll { customer_ref, referrer_wallet_id, .. } = &command.body else {
            unreachable!("only enrolments are sealed")
        };
        let data = PersonalData { customer_ref: customer_ref.clone(), ..Default::default() };
        let sealed = personal::seal(key, self.stream.as_str(), &data);
        let body = CommandBody::Enroll {
            customer_ref: customer_ref.clone(),
            sealed: Some(sealed),
            referrer_wallet_id: referrer_wallet_id.clone(),
        };
        Command::new(command.idempotency_key.clone(), body)
    }

    /// The wallet's personal data key, read once; `None` if it has none.
    async fn key(&mut self) -> Result<Option<PersonalKey>, WalletError> {
        if let Some(known) = &self.personal_key {
            return Ok(known.clone());
        }
        let key = self.deps.store.personal_keys(std::slice::from_ref(&self.stream)).await?.pop().flatten();
        if key.is_none() && self.state.as_ref().is_some_and(personal::needs_key) {
            // Sealed data whose key is gone, with no erasure recorded: an erasure whose call failed and
            // was not retried yet, or keys lost (a log restored without them). Shown as erased either way.
            tracing::warn!(stream = %self.stream, "the customer's data is sealed but its key is missing; no erasure is recorded");
            metrics::counter!("tally_personal_keys_missing_total").increment(1);
        }
        self.personal_key = Some(key.clone());
        Ok(key)
    }

    /// Destroys the wallet's personal data key, durably.
    async fn erase_key(&mut self) -> Result<(), WalletError> {
        self.personal_key = Some(None);
        let erased = self.deps.store.erase_personal_key(&self.stream).await?;
        tracing::info!(stream = %self.stream, had_key = erased, "customer's personal data key erased");
        Ok(())
    }

    /// `outcome` with the customer as the wallet may show it now.
    async fn with_customer(&mut self, mut outcome: CommandOutcome) -> Result<CommandOutcome, WalletError> {
        (outcome.wallet.customer_ref, outcome.wallet.customer_erased) = self.customer().await?;
        Ok(outcome)
    }

    /// The customer's reference as it may be shown now, and whether it was erased
    /// (`personal::shown_customer`).
    async fn customer(&mut self) -> Result<(String, bool), WalletError> {
        let key = if personal::needs_key(self.state.as_ref().expect("a recovered state")) { self.key().await? } else { None };
        let state = self.state.as_ref().expect("a recovered state");
        personal::shown_customer(state, self.stream.as_str(), key.as_ref()).map_err(|e| WalletError::PersonalData(e.to_string()))
    }
}

/// The lookups of the identifiers `changes` detach.
fn detached<'a>(changes: impl Iterator<Item = &'a Change>) -> Vec<String> {
    changes
        .filter_map(|change| match change {
            Change::IdentifierDetached(e) => Some(e.lookup.clone()),
            _ => None,
        })
        .collect()
}

/// An enrolment with a customer reference not sealed yet.
fn unsealed_enrolment(command: &Command) -> bool {
    matches!(&command.body, CommandBody::Enroll { customer_ref, sealed: None, .. } if !customer_ref.is_empty())
}

/// What an event records of the command it came with: all of it, but for a change time brought (an
/// expiry recorded ahead of a command) no key or staff member — the engine made it, not the caller —
/// while the trace and correlation still say which call recorded it.
fn recorded_meta<'a>(event: &Event, meta: &'a CommandMeta) -> std::borrow::Cow<'a, CommandMeta> {
    if event.change.by_time() && !(meta.principal.is_empty() && meta.principal_roles.is_empty() && meta.staff_id.is_empty()) {
        std::borrow::Cow::Owned(CommandMeta {
            principal: String::new(),
            principal_roles: String::new(),
            staff_id: String::new(),
            ..meta.clone()
        })
    } else {
        std::borrow::Cow::Borrowed(meta)
    }
}

/// How many upcoming expiries a summary lists.
const UPCOMING_EXPIRIES: usize = 5;

impl WalletSummary {
    /// The wallet's figures as of `now_ms` (holds past their timeout and lots past their expiry no longer
    /// count as available, even before their events are recorded).
    pub fn of(state: &WalletState, now_ms: i64, program: &ProgramSettings) -> Self {
        Self {
            status: state.status,
            customer_ref: state.customer_ref.clone(),
            customer_erased: state.customer_erased,
            balance: state.balance,
            lifetime_earned: state.lifetime_earned,
            lifetime_redeemed: state.lifetime_redeemed,
            lifetime_reversed: state.lifetime_reversed,
            lifetime_adjusted: state.lifetime_adjusted,
            enrolled_at_ms: state.enrolled_at_ms,
            last_activity_ms: state.last_activity_ms,
            version: state.version,
            held_points: state.held_points,
            available_points: state.available_at(now_ms).max(0),
            lifetime_purchased: state.lifetime_purchased,
            lifetime_expired: state.lifetime_expired,
            pending_points: state.pending_points,
            upcoming_expiries: state.upcoming_expiries(now_ms, UPCOMING_EXPIRIES),
            tier: tiers::view(state, &program.tiers, now_ms, program.utc_offset_minutes),
            stamp_cards: state
                .stamp_cards()
                .map(|(id, card)| {
                    let required = program.stamp_cards.get(id).map_or(0, |def| def.stamps_required);
                    (id.to_owned(), card.stamps, required, card.completed)
                })
                .collect(),
            identifiers: state.identifiers().map(|(lookup, kind)| (lookup.to_owned(), kind)).collect(),
            referred_by: state.referred_by.clone(),
            referral_converted: state.referral_converted,
        }
    }
}

/// Marks a registry entry as used now (for idle passivation and LRU).
pub(super) fn touch(last_used: &AtomicU64, now_ms: u64) {
    last_used.store(now_ms, Ordering::Relaxed);
}
