//! Every limit of the gRPC edge in one place, each with its unit in the name.

/// Largest request message, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest response message of `WalletService`, in bytes: more than any reply the server can make (a
/// command records at most `APPEND_EVENTS_MAX` events of at most `EVENT_PAYLOAD_BYTES_MAX` each, and a
/// page stops at `PAGE_BYTES_MAX`), so an applied command is never answered with an encoding error.
pub const REPLY_BYTES_MAX: usize = 20 * 1024 * 1024;
const _: () = assert!(
    REPLY_BYTES_MAX > tally_engine::limits::APPEND_EVENTS_MAX * (tally_engine::limits::EVENT_PAYLOAD_BYTES_MAX + 4 * 1024) + 64 * 1024
);
/// A `ListTransactions` page stops once its transactions pass this many bytes (at least one is sent).
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// Requests handled at once across all connections; beyond it calls get RESOURCE_EXHAUSTED at once
/// instead of queueing without bound.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 16 * 1024;
/// `AdminService` calls handled at once (each may read and append a program's log); beyond it
/// RESOURCE_EXHAUSTED.
pub const ADMIN_REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// `ReportingService` and `ProjectionsService` calls handled at once (each is a read-model query);
/// beyond it RESOURCE_EXHAUSTED.
pub const REPORTING_REQUESTS_IN_FLIGHT_MAX: usize = 256;
/// `AuditService` calls handled at once (each replays a stream from the log, a 100,000-event wallet in
/// about 75 ms of a core); beyond it RESOURCE_EXHAUSTED, so audits never crowd out the read side.
pub const AUDIT_REQUESTS_IN_FLIGHT_MAX: usize = 8;
/// An instant this close to now (or later) is refused by `AuditService`: events decided before it may
/// still be on their way to the log, so the answer could change. Longer than a call may take
/// (`REQUEST_TIMEOUT_MS`) with room to spare: an append slower than this is an outage of the log, which
/// health reports. In milliseconds.
pub const AUDIT_SETTLE_MS: i64 = 12_000;
const _: () = assert!(AUDIT_SETTLE_MS > REQUEST_TIMEOUT_MS as i64);
/// `AuditService.ExportLedger` streams running at once per node (each reads the whole log); beyond it
/// RESOURCE_EXHAUSTED.
pub const AUDIT_EXPORTS_IN_FLIGHT_MAX: usize = 2;
/// Concurrent streams one HTTP/2 connection may open.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// Longest a request may take, in milliseconds: then it is answered DEADLINE_EXCEEDED (sooner if the
/// client's `grpc-timeout` says so), and a command still queued for its wallet is skipped.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default and largest page of `ListTransactions`.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
pub const PAGE_SIZE_MAX: u32 = 500;
/// Default and largest page of `AuditService.WalletChanges` (a page also stops at `PAGE_BYTES_MAX`).
pub const AUDIT_PAGE_SIZE_DEFAULT: u32 = 100;
pub const AUDIT_PAGE_SIZE_MAX: u32 = 500;
/// Longest a graceful shutdown waits for in-flight calls, in milliseconds.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
/// After the last call finished, how long shutdown waits for responses to reach clients, in milliseconds.
pub const RESPONSE_FLUSH_MS: u64 = 1_000;
/// Default and largest page of `ListWallets` (a page must fit in one message).
pub const WALLET_PAGE_SIZE_DEFAULT: u32 = 100;
pub const WALLET_PAGE_SIZE_MAX: u32 = 200;
/// Longest date range of one `ProgramStats` call, in days (the answer must fit in one message).
pub const STATS_DAYS_MAX: i64 = 366;
/// Largest `AdminService` request or reply (a rules document is up to 60 KiB), in bytes.
pub const ADMIN_MESSAGE_BYTES_MAX: usize = 512 * 1024;
/// Longest `x-request-id` / `x-correlation-id` a call may carry (stored in every event it records), in bytes.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Longest W3C `tracestate` kept (the W3C limit), in bytes; a longer one is dropped, like a malformed one.
pub const TRACESTATE_BYTES_MAX: usize = 512;
/// A `ListRuleVersions` page stops before this many bytes of versions (at least one is sent), well
/// inside `ADMIN_MESSAGE_BYTES_MAX`.
pub const RULE_VERSIONS_PAGE_BYTES_MAX: usize = 448 * 1024;
const _: () = assert!(RULE_VERSIONS_PAGE_BYTES_MAX + 64 * 1024 <= ADMIN_MESSAGE_BYTES_MAX);

/// Requests per second a tenant's API key may make by default, and how many it may make at once after
/// a quiet spell (the burst): a till sends a few calls per sale, a storefront's backend shares one key
/// across its traffic, so both fit well inside it. `--rate-per-key`.
pub const KEY_REQUESTS_PER_S_DEFAULT: u32 = 1_000;
pub const KEY_REQUESTS_BURST_DEFAULT: u32 = 2_000;
/// Requests per second all of one tenant's keys together may make by default, and their burst: a fleet
/// of 10,000 tills at a busy hour sends a few hundred a second. `--rate-per-tenant`.
pub const TENANT_REQUESTS_PER_S_DEFAULT: u32 = 5_000;
pub const TENANT_REQUESTS_BURST_DEFAULT: u32 = 10_000;
/// How often the rate limiters forget keys and tenants whose buckets are full again (idle), in
/// milliseconds: between two sweeps they hold at most the keys that called since the last one.
pub const RATE_LIMITER_SWEEP_MS: u64 = 60_000;
