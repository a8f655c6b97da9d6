//! Every limit of the engine in one place, each with its unit in the name.
//!
//! Inputs beyond a limit are rejected with an error that names it; nothing here is a silent cap.

/// Longest tenant (program) id, in bytes.
pub const TENANT_ID_BYTES_MAX: usize = 64;
/// Longest wallet id, in bytes.
pub const WALLET_ID_BYTES_MAX: usize = 64;
/// Longest idempotency key, source, reward, staff or customer reference, in bytes.
pub const REF_BYTES_MAX: usize = 128;
/// Longest free-text reason, in bytes.
pub const REASON_BYTES_MAX: usize = 256;
/// Most points a single command may move (one trillion): far above any real order, far below `i64`.
pub const POINTS_PER_COMMAND_MAX: i64 = 1_000_000_000_000;
/// Largest absolute balance or lifetime total a wallet may reach; arithmetic beyond it is rejected.
pub const BALANCE_ABS_MAX: i64 = 1_000_000_000_000_000;
/// Largest money amount on an order, in minor units.
pub const MONEY_MINOR_ABS_MAX: i64 = 1_000_000_000_000_000;

/// Longest stream id, in bytes.
pub const STREAM_ID_BYTES_MAX: usize = 256;
/// Largest encoded payload of one event, in bytes.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Most events in one atomic append.
pub const APPEND_EVENTS_MAX: usize = 256;
/// Largest encoded append (all its events with their envelopes), in bytes.
pub const APPEND_BYTES_MAX: usize = 1024 * 1024;
/// Length of a command digest, in bytes: BLAKE3 of the command's payload truncated to 128 bits (a
/// collision costs about 2^64 work, a second preimage 2^128). A persisted format, not a tunable.
pub const COMMAND_DIGEST_BYTES: usize = 16;

/// Size at which the embedded log starts a new segment file, in bytes. A segment may exceed it by at
/// most one group-commit batch.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most appends that share one fsync in the embedded log.
pub const GROUP_COMMIT_APPENDS_MAX: usize = 4096;
/// Most bytes written under one fsync in the embedded log.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Appends queued for the embedded log's writer before appenders wait (back-pressure).
pub const APPEND_QUEUE_DEPTH_MAX: usize = 16 * 1024;

/// Events read from a stream per store call while a wallet recovers.
pub const RECOVERY_READ_BATCH_EVENTS: usize = 4096;

/// Default bound on wallets resident in memory; least recently used ones are passivated beyond it.
pub const ACTIVE_WALLETS_DEFAULT_MAX: usize = 100_000;
/// Default idle time after which a wallet actor is passivated, in milliseconds.
pub const WALLET_IDLE_DEFAULT_MS: u64 = 5 * 60 * 1000;
/// Crashes of one wallet within `WALLET_CRASH_WINDOW_MS` after which its commands are refused.
pub const WALLET_CRASHES_MAX: u32 = 3;
/// Window over which wallet crashes are counted, in milliseconds.
pub const WALLET_CRASH_WINDOW_MS: u64 = 60_000;
/// First restart delay after a wallet crash, in milliseconds; doubles with each further crash.
pub const WALLET_RESTART_BACKOFF_MS: u64 = 10;
/// Longest restart delay after repeated crashes, in milliseconds.
pub const WALLET_RESTART_BACKOFF_MAX_MS: u64 = 5_000;
/// Times a caller sends a command whose wallet actor died (crashed) before answering, before it gives
/// up. Passivation never counts: an actor stops only when no caller holds a ticket to it.
pub const COMMAND_DELIVERY_ATTEMPTS_MAX: u32 = 3;
/// Calls queued for one wallet's actor (sent and not yet taken up) beyond which further calls are
/// refused at once (`WalletError::Busy`) rather than queued: mailboxes are otherwise unbounded, and a
/// queue this deep already waits longer than a caller's deadline on a slow log.
pub const WALLET_QUEUE_MESSAGES_MAX: u64 = 1_024;
/// Times a wallet re-decides a command after an optimistic-concurrency conflict on append.
pub const CONFLICT_RETRIES_MAX: u32 = 2;

/// Most lines in one order.
pub const ORDER_LINES_MAX: usize = 200;
/// Largest quantity on one order line.
pub const ORDER_LINE_QUANTITY_MAX: i64 = 1_000_000;
/// How far in the past an order may have been placed when it earns (a POS that was offline), in
/// milliseconds.
pub const ORDER_BACKDATE_MAX_MS: i64 = 7 * 86_400_000;
/// How far ahead of the engine's clock an order's placement time may be (clock skew), in milliseconds.
pub const ORDER_CLOCK_SKEW_MAX_MS: i64 = 5 * 60_000;
/// Periods a wallet remembers per capped rule (the cap's current period and the ones a backdated order
/// can still fall in): a day cap needs today plus the seven days an order may be backdated.
pub const RULE_USAGE_PERIODS_MAX: usize = 8;

/// Most rules versions a program may publish within `RULES_VERSIONS_WINDOW_MS` (a rolling day): far
/// more than any release process needs, few enough that a runaway script cannot bloat the program's
/// stream, which every node reads and every wallet's settings carry.
pub const RULES_VERSIONS_PER_WINDOW_MAX: usize = 100;
/// The window `RULES_VERSIONS_PER_WINDOW_MAX` counts over, in milliseconds of recorded time.
pub const RULES_VERSIONS_WINDOW_MS: i64 = 86_400_000;

/// How old a node's cached program settings may get before wallets re-read them from the log, in
/// milliseconds: what another node sharing the log publishes takes effect here within this time.
pub const PROGRAM_SETTINGS_REFRESH_MS: u64 = 1_000;

/// Longest POS hold (authorization) id, in bytes: it is the authorization's idempotency key, and the
/// capture's and void's keys extend it.
pub const HOLD_ID_BYTES_MAX: usize = 100;
/// How long a POS hold waits for its capture unless the request says, in milliseconds.
pub const HOLD_TIMEOUT_DEFAULT_MS: i64 = 15 * 60_000;
/// Longest a POS hold may wait for its capture, in milliseconds.
pub const HOLD_TIMEOUT_MAX_MS: i64 = 7 * 86_400_000;
/// Most open holds a wallet may have at once: closing releases them all in one append.
pub const HOLDS_PER_WALLET_MAX: usize = 100;
/// Most transitions time brought (holds released, points matured or expired, notices, a review) that
/// one append records; more are recorded a chunk at a time before the command is decided.
pub const DUE_EVENTS_PER_APPEND_MAX: usize = 128;

/// How long a wallet remembers an accepted command's idempotency key, from when it was decided, in
/// milliseconds: a retry within it gets the first outcome; after it the key is forgotten (as payment
/// APIs do), which bounds a long-lived wallet's state. It outlasts the other windows a retry can fall in
/// (a backdated order, a POS hold): an order re-sent with its placement time is refused as too old once
/// its receipt is gone; one re-sent without it is refused while its source is kept (the refund window),
/// and is a new order after both.
pub const RECEIPT_RETENTION_MS: i64 = 30 * 86_400_000;
/// How often (in recorded time) a wallet forgets receipts and sources past their time, in milliseconds;
/// they may outlive their time by up to this much.
pub const RETENTION_SWEEP_INTERVAL_MS: i64 = 86_400_000;
const _: () = assert!(RECEIPT_RETENTION_MS > ORDER_BACKDATE_MAX_MS + ORDER_CLOCK_SKEW_MAX_MS + RETENTION_SWEEP_INTERVAL_MS);
const _: () = assert!(RECEIPT_RETENTION_MS > HOLD_TIMEOUT_MAX_MS);

/// Most tiers a program defines.
pub const TIERS_MAX: usize = 16;
/// Longest grace period before a tier downgrade, in days.
pub const TIER_GRACE_DAYS_MAX: u32 = 365;
/// Months of qualifying points a wallet keeps: two calendar years covers every tier window.
pub const QUALIFYING_MONTHS_MAX: usize = 24;
/// Most stamps a card needs, and most stamps given at once.
pub const STAMPS_PER_CARD_MAX: i64 = 1_000;
// One append carries the due transitions and a command's own events: a few, or a closure's released holds,
// detached identifiers and the closure itself.
const _: () = assert!(DUE_EVENTS_PER_APPEND_MAX + HOLDS_PER_WALLET_MAX + 16 < APPEND_EVENTS_MAX);
const _: () = assert!(
    DUE_EVENTS_PER_APPEND_MAX + HOLDS_PER_WALLET_MAX + crate::domain::identifiers::IDENTIFIERS_PER_WALLET_MAX + 1 < APPEND_EVENTS_MAX
);

/// Longest cancellation window a reward may give its redemptions, in days.
pub const REDEMPTION_CANCEL_WINDOW_DAYS_MAX: u32 = 90;
/// How long a wallet remembers a catalogue redemption (what it cost, where its points came from) for its
/// cancellation, from its debit: the redemption may end up to `FLOW_DEBIT_WITHIN_MS` after the debit, the
/// window runs from the end, and the cancellation's wallet step may come up to `FLOW_DEBIT_WITHIN_MS`
/// after its request; two days of the sweep's and clocks' slack.
pub const CATALOGUE_REDEMPTION_MEMORY_MS: i64 =
    REDEMPTION_CANCEL_WINDOW_DAYS_MAX as i64 * 86_400_000 + 2 * FLOW_DEBIT_WITHIN_MS + 2 * RETENTION_SWEEP_INTERVAL_MS;
/// Most stock one restock adds to a reward.
pub const RESTOCK_QUANTITY_MAX: i64 = 1_000_000_000;
/// Most stock a reward holds on hand.
pub const STOCK_ON_HAND_MAX: i64 = 1_000_000_000_000;
/// Highest per-customer limit a reward may set (0: none).
pub const REWARD_PER_CUSTOMER_MAX: i64 = 1_000_000;
/// How long a flow may go without progress before any node that follows the log drives it on (the
/// node that started it crashed, or lost its caller): longer than a call's deadline, so a flow being
/// driven by its caller is not driven twice at once in the ordinary case (twice is safe, only wasteful).
pub const FLOW_RESUME_AFTER_MS: i64 = 15_000;
/// A flow without progress for this long is listed as stuck (`tally flows list --stuck`).
pub const FLOW_STUCK_AFTER_MS: i64 = 60_000;
/// A redemption whose debit is not recorded within this long after it started is not debited any more
/// (it stays stuck for an operator): the wallet remembers the debit's key for `RECEIPT_RETENTION_MS`
/// after it, and a debit after its receipt was forgotten could be a second one.
pub const FLOW_DEBIT_WITHIN_MS: i64 = RECEIPT_RETENTION_MS - 2 * RETENTION_SWEEP_INTERVAL_MS;
/// The window of a program's daily transfer cap (`TransferPolicySet.max_points_per_day`): any 24 hours
/// of recorded time.
pub const TRANSFER_DAY_MS: i64 = 86_400_000;

/// Most tenants on the platform unless `tally serve --tenants-max` says otherwise.
pub const TENANTS_DEFAULT_MAX: usize = 10_000;

/// Most wallets one tenant may open unless `tally serve --wallets-max` says otherwise (closed ones count:
/// their history stays in the log).
pub const WALLETS_PER_TENANT_DEFAULT_MAX: u64 = 10_000_000;

/// Longest label, reason or author of an API key, in bytes.
pub const KEY_LABEL_BYTES_MAX: usize = 128;
/// Most keys not revoked nor expired per tenant (and for the platform).
pub const KEYS_ACTIVE_PER_SCOPE_MAX: usize = 1_000;
/// How often a node re-reads the log's keys: a key created or revoked on another node works, or stops
/// working, here within this bound.
pub const KEYS_REFRESH_MS: u64 = 1_000;
/// Refresh intervals after which keys not re-read from the log let nobody in (a node cut off from the
/// log cannot learn of revocations): 5 s with `KEYS_REFRESH_MS`.
pub const KEYS_STALE_AFTER_REFRESHES: u32 = 5;
/// Most keys per tenant (and for the platform), revoked ones included: the log keeps them all and every
/// node holds them in memory.
pub const KEYS_PER_SCOPE_MAX: usize = 10_000;
