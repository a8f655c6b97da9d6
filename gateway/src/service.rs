//! `WalletService`: the gRPC face of the wallet actors. Validates at the edge, routes each call to the
//! wallet's actor through the registry, and turns outcomes into wire messages.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};
use tally_engine::actors::{
    CommandMeta, CommandOutcome, Flows, IdentifierBook, KeyBook, ProgramBook, Programs, StoredWalletEvent, WalletKey, WalletRegistry,
    WalletSummary,
};
use tally_engine::clock::Clock;
use tally_engine::codec;
use tally_engine::domain::{Command, CommandBody, Rejection, TenantId, WalletId, WalletStatus};
use tally_engine::store::EventStore;
use tally_proto::v1::wallet_service_server::WalletService;
use tally_proto::v1::{
    AdjustRequest, AttachIdentifierRequest, AuthorizeRedemptionRequest, CancelRedemptionRequest, CancelRedemptionResponse,
    CaptureRedemptionRequest, CloseRequest, DetachIdentifierRequest, EarnForOrderRequest, EarnRequest, EnrollRequest, EraseCustomerRequest,
    FindWalletRequest, GetWalletRequest, ListTransactionsRequest, ListTransactionsResponse, PurchaseCreditsRequest, RedeemRequest,
    RedeemRewardRequest, RedeemRewardResponse, RefundOrderRequest, ReverseRequest, TransferPointsRequest, TransferPointsResponse,
    VoidRedemptionRequest, Wallet, WalletMutation,
};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::access;
use crate::admission::deadline;
use crate::identifiers::Found;
use crate::limits::{PAGE_BYTES_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, REQUEST_ID_BYTES_MAX, REQUESTS_IN_FLIGHT_MAX, TRACESTATE_BYTES_MAX};
use crate::transactions::transaction;
use crate::{orders, status};
use tally_engine::limits::HOLD_TIMEOUT_DEFAULT_MS;

/// What the services need from the engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub registry: WalletRegistry,
    pub store: Arc<dyn EventStore>,
    /// The event-sourced programs: what wallets decide with (`Programs`) and what `AdminService` changes.
    pub programs: Arc<ProgramBook>,
    /// The log's API keys: what `KeysService` changes.
    pub keys: Arc<KeyBook>,
    /// The engine's clock (what audits take "now" from).
    pub clock: Arc<dyn Clock>,
    /// Flows across aggregates (reward redemptions).
    pub flows: Flows,
    /// The tenants' identifier lookup keys, and who holds an identifier (customer lookup).
    pub identifiers: Arc<IdentifierBook>,
}

/// Admission to a service: bounds the calls in flight and lets shutdown wait for them.
#[derive(Debug)]
pub struct Gate {
    in_flight: Semaphore,
    limit: usize,
    closed: AtomicBool,
}

impl Default for Gate {
    /// The wallet service's gate.
    fn default() -> Self {
        Self::new(REQUESTS_IN_FLIGHT_MAX)
    }
}

impl Gate {
    /// A gate admitting at most `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self { in_flight: Semaphore::new(limit), limit, closed: AtomicBool::new(false) }
    }

    pub(crate) fn admit(&self) -> Result<SemaphorePermit<'_>, Status> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Status::unavailable("the server is shutting down; retry on another node or later"));
        }
        let limit = self.limit;
        self.in_flight.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "more than {limit} requests in flight; nothing was applied, retry with the same idempotency key after a backoff"
            ))
        })
    }

    /// Refuses new calls from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Resolves once no call is in flight.
    pub async fn drained(&self) {
        let all = u32::try_from(self.limit).expect("limit fits u32");
        if let Ok(permits) = self.in_flight.acquire_many(all).await {
            drop(permits);
        }
    }
}

#[derive(Debug, Clone)]
pub struct WalletApi {
    engine: Engine,
    gate: Arc<Gate>,
}

impl WalletApi {
    pub fn new(engine: Engine, gate: Arc<Gate>) -> Self {
        Self { engine, gate }
    }

    fn admit(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.gate.admit()
    }

    /// Validates the ids and that the tenant exists, before anything reaches an actor.
    async fn wallet_key(&self, extensions: &Extensions, tenant_id: &str, wallet_id: &str) -> Result<WalletKey, Status> {
        let tenant = access::acting_tenant(extensions, tenant_id)?;
        let wallet = WalletId::parse(wallet_id).map_err(|e| status::from_field_error(&e))?;
        self.known(&tenant).await?;
        Ok(WalletKey::new(tenant, wallet))
    }

    async fn known(&self, tenant: &TenantId) -> Result<(), Status> {
        match self.engine.programs.settings(tenant).await.map_err(|e| status::from_wallet_error(&e))? {
            Some(_) => Ok(()),
            None => Err(status::unknown_tenant(tenant.as_str())),
        }
    }

    /// Who claims the identifier a FindWallet names (the tenant as the caller's key allows it).
    pub(crate) async fn identifier_holder(&self, extensions: &Extensions, r: &FindWalletRequest) -> Result<Found, Status> {
        let tenant = access::acting_tenant(extensions, &r.tenant_id)?;
        self.known(&tenant).await?;
        crate::identifiers::holder(&self.engine.identifiers, &tenant, r).await
    }

    async fn mutate(
        &self,
        (metadata, extensions, deadline): (&MetadataMap, &Extensions, Option<Instant>),
        key: WalletKey,
        command: Command,
    ) -> Result<Response<WalletMutation>, Status> {
        let mut meta = command_meta(metadata, extensions)?;
        // An adjustment names its staff member in the request itself.
        if let CommandBody::Adjust { staff_ref, .. } = &command.body
            && meta.staff_id.is_empty()
        {
            meta.staff_id.clone_from(staff_ref);
        }
        access::staff_named(extensions, &meta.staff_id)?;
        let _permit = self.admit()?;
        let outcome =
            self.engine.registry.execute_before(&key, command, meta, deadline).await.map_err(|e| status::from_wallet_error(&e))?;
        // An order may convert a referral (and any command may record a conversion time brought, before
        // it): the reward's flow starts before the call is answered (and, should this node die first,
        // from the log) — within the call's deadline less a margin for the answer, or a few seconds.
        if Flows::calls_for(&outcome) {
            // As the command was made (it was accepted with it: this cannot fail now).
            let follow = command_meta(metadata, extensions).unwrap_or_default();
            let left = |d: Instant| d.saturating_duration_since(Instant::now()).saturating_sub(std::time::Duration::from_millis(200));
            let within = deadline.map_or(FOLLOW_WITHIN, |d| left(d).min(FOLLOW_WITHIN));
            self.engine.flows.follow(&key, &outcome, &follow, within).await;
        }
        Ok(Response::new(mutation(&key, outcome)))
    }
}

/// How long a call's answer waits for the flows it starts (a referral's reward) at most.
const FOLLOW_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Who made the call (its key), and trace and causality ids from the call's metadata, bounded: they are
/// stored in every event the call records. A request or correlation id that is too long or not printable ASCII is the caller's error; a
/// malformed `traceparent` (or an oversized `tracestate`) is dropped, as W3C Trace Context asks.
pub(crate) fn command_meta(metadata: &MetadataMap, extensions: &Extensions) -> Result<CommandMeta, Status> {
    let get = |name: &str| metadata.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}")).unwrap_or_default();
    let id = |name: &'static str| {
        let value = get(name);
        if value.len() > REQUEST_ID_BYTES_MAX || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(status::invalid(name, &format!("must be at most {REQUEST_ID_BYTES_MAX} printable ASCII characters")));
        }
        Ok(value.to_owned())
    };
    // Traces exported: the events name this call's own span, so they can be found from the trace.
    let (traceparent, tracestate) = crate::telemetry::current_trace_context().unwrap_or_else(|| {
        let traceparent = Some(get("traceparent")).filter(|t| is_traceparent(t)).unwrap_or_default();
        let tracestate = Some(get("tracestate")).filter(|t| !traceparent.is_empty() && t.len() <= TRACESTATE_BYTES_MAX && t.is_ascii());
        (traceparent.to_owned(), tracestate.unwrap_or_default().to_owned())
    });
    Ok(CommandMeta {
        causation_id: id("x-request-id")?,
        correlation_id: id("x-correlation-id")?,
        traceparent,
        tracestate,
        staff_id: id("x-staff-id")?,
        ..access::recorded_principal(extensions)
    })
}

/// A W3C `traceparent`: `version-trace_id-parent_id-flags`, 55 bytes of lowercase hex and dashes.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    value.len() == 55
        && parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

pub(crate) fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    (ms != 0).then(|| status::timestamp(ms))
}

pub(crate) fn wallet(key: &WalletKey, summary: &WalletSummary) -> Wallet {
    let status = match summary.status {
        WalletStatus::Active => tally_proto::v1::WalletStatus::Active,
        WalletStatus::Closed => tally_proto::v1::WalletStatus::Closed,
        WalletStatus::NotEnrolled => tally_proto::v1::WalletStatus::Unspecified,
    };
    Wallet {
        tenant_id: key.tenant.to_string(),
        wallet_id: key.wallet.to_string(),
        status: status as i32,
        customer_ref: summary.customer_ref.clone(),
        customer_erased: summary.customer_erased,
        balance: summary.balance,
        lifetime_earned: summary.lifetime_earned,
        lifetime_redeemed: summary.lifetime_redeemed,
        lifetime_reversed: summary.lifetime_reversed,
        lifetime_adjusted: summary.lifetime_adjusted,
        enrolled_at: timestamp(summary.enrolled_at_ms),
        last_activity_at: timestamp(summary.last_activity_ms),
        version: summary.version,
        held_points: summary.held_points,
        available_points: summary.available_points,
        lifetime_purchased: summary.lifetime_purchased,
        lifetime_expired: summary.lifetime_expired,
        pending_points: summary.pending_points,
        stamp_cards: summary
            .stamp_cards
            .iter()
            .map(|(card_id, stamps, stamps_required, completed)| tally_proto::v1::StampCardStatus {
                card_id: card_id.clone(),
                stamps: *stamps,
                stamps_required: *stamps_required,
                completed: *completed,
            })
            .collect(),
        tier: summary.tier.as_ref().map(|t| tally_proto::v1::TierStatus {
            tier_id: t.tier_id.clone(),
            name: t.name.clone(),
            level: t.level,
            qualifying_points: t.qualifying_points,
            next_tier_id: t.next.as_ref().map(|n| n.0.clone()).unwrap_or_default(),
            next_tier_name: t.next.as_ref().map(|n| n.1.clone()).unwrap_or_default(),
            next_tier_min_points: t.next.as_ref().map_or(0, |n| n.2),
            progress_percent: t.progress_percent,
            next_review_at: timestamp(t.next_review_at_ms),
        }),
        identifiers: summary
            .identifiers
            .iter()
            .map(|(lookup, kind)| tally_proto::v1::WalletIdentifier { kind: *kind, lookup: lookup.clone() })
            .collect(),
        referred_by: summary.referred_by.clone(),
        referral_converted: summary.referral_converted,
        upcoming_expiries: summary
            .upcoming_expiries
            .iter()
            .map(|(at, points)| tally_proto::v1::UpcomingExpiry { expires_at: timestamp(*at), points: *points })
            .collect(),
    }
}

fn mutation(key: &WalletKey, outcome: CommandOutcome) -> WalletMutation {
    WalletMutation {
        wallet: Some(wallet(key, &outcome.wallet)),
        version: outcome.version,
        position: outcome.position,
        replayed: outcome.replayed,
        transactions: outcome.events.iter().map(transaction).collect(),
        balance: outcome.balance,
    }
}

/// Page tokens are `v<version>`: the page holds the events below that version.
fn parse_page_token(token: &str) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix('v')
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 1)
        .map(Some)
        .ok_or_else(|| status::invalid("page_token", "not a token from a previous response"))
}

#[tonic::async_trait]
impl WalletService for WalletApi {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        // A referral code names its holder before anything is recorded: an unknown one enrols nobody.
        let referrer = match r.referral_code.as_str() {
            "" => None,
            code => Some(crate::identifiers::referrer(&self.engine.identifiers, &key, code).await?),
        };
        // Recorded with the enrolment, in its append: the referrer is part of what a retry must repeat.
        let body = CommandBody::Enroll { customer_ref: r.customer_ref, sealed: None, referrer_wallet_id: referrer.unwrap_or_default() };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn earn(&self, request: Request<EarnRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::Earn { points: r.points, reason: r.reason, source_ref: r.source_ref, order_amount: r.order_amount };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn redeem(&self, request: Request<RedeemRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::Redeem { points: r.points, reward_ref: r.reward_ref };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn adjust(&self, request: Request<AdjustRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::Adjust { points: r.points, reason: r.reason, staff_ref: r.staff_ref };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn reverse(&self, request: Request<ReverseRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::Reverse { source_ref: r.source_ref, points: r.points, reason: r.reason };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn add_stamps(&self, request: Request<tally_proto::v1::AddStampsRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::AddStamps { card_id: r.card_id, count: r.count, reason: r.reason };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn earn_for_order(&self, request: Request<EarnForOrderRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let order = orders::from_wire(r.order)?;
        access::may_place_at(&extensions, order.placed_at_ms)?;
        self.mutate((&metadata, &extensions, deadline), key, Command::new(order.order_id.clone(), CommandBody::EarnForOrder { order }))
            .await
    }

    async fn refund_order(&self, request: Request<RefundOrderRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::RefundOrder { order_id: r.order_id, amount_minor: r.amount_minor, reason: r.reason };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn authorize_redemption(&self, request: Request<AuthorizeRedemptionRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let timeout_ms = match r.timeout_seconds {
            0 => HOLD_TIMEOUT_DEFAULT_MS,
            seconds => i64::from(seconds) * 1_000,
        };
        let body = CommandBody::AuthorizeRedemption { hold_id: r.hold_id.clone(), points: r.points, reward_ref: r.reward_ref, timeout_ms };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.hold_id, body)).await
    }

    async fn capture_redemption(&self, request: Request<CaptureRedemptionRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let command = Command::capture_redemption(r.hold_id, r.points);
        self.mutate((&metadata, &extensions, deadline), key, command).await
    }

    async fn void_redemption(&self, request: Request<VoidRedemptionRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let command = Command::void_redemption(r.hold_id);
        self.mutate((&metadata, &extensions, deadline), key, command).await
    }

    async fn purchase_credits(&self, request: Request<PurchaseCreditsRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::PurchaseCredits { purchase_id: r.purchase_id.clone(), package_id: r.package_id };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.purchase_id, body)).await
    }

    async fn redeem_reward(&self, request: Request<RedeemRewardRequest>) -> Result<Response<RedeemRewardResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let meta = command_meta(&metadata, &extensions)?;
        // A staff key's flows name the staff member, as its other changes do.
        access::staff_named(&extensions, &meta.staff_id)?;
        let _permit = self.admit()?;
        Ok(Response::new(crate::rewards::redeem(&self.engine.flows, &key.tenant, &key.wallet, r, meta).await?))
    }

    async fn cancel_redemption(&self, request: Request<CancelRedemptionRequest>) -> Result<Response<CancelRedemptionResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let meta = command_meta(&metadata, &extensions)?;
        // A staff key's flows name the staff member, as its other changes do.
        access::staff_named(&extensions, &meta.staff_id)?;
        let _permit = self.admit()?;
        Ok(Response::new(crate::rewards::cancel(&self.engine.flows, &key.tenant, &key.wallet, r, meta).await?))
    }

    async fn transfer_points(&self, request: Request<TransferPointsRequest>) -> Result<Response<TransferPointsResponse>, Status> {
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let meta = command_meta(&metadata, &extensions)?;
        // A staff key's flows name the staff member, as its other changes do.
        access::staff_named(&extensions, &meta.staff_id)?;
        let _permit = self.admit()?;
        Ok(Response::new(crate::transfers::transfer(&self.engine.flows, &key.tenant, &key.wallet, r, meta).await?))
    }

    async fn close(&self, request: Request<CloseRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, CommandBody::Close { reason: r.reason })).await
    }

    async fn erase_customer(&self, request: Request<EraseCustomerRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = CommandBody::EraseCustomer { reason: r.reason };
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn attach_identifier(&self, request: Request<AttachIdentifierRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let body = crate::identifiers::attach(&self.engine.identifiers, &key.tenant, &r).await?;
        self.mutate((&metadata, &extensions, deadline), key, Command::new(r.idempotency_key, body)).await
    }

    async fn detach_identifier(&self, request: Request<DetachIdentifierRequest>) -> Result<Response<WalletMutation>, Status> {
        let deadline = deadline(&request);
        let (metadata, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let idempotency_key = r.idempotency_key.clone();
        let body = crate::identifiers::detach(&self.engine.identifiers, &key.tenant, r).await?;
        self.mutate((&metadata, &extensions, deadline), key, Command::new(idempotency_key, body)).await
    }

    async fn find_wallet(&self, request: Request<FindWalletRequest>) -> Result<Response<Wallet>, Status> {
        let _permit = self.admit()?;
        let (_, extensions, r) = request.into_parts();
        let found = self.identifier_holder(&extensions, &r).await?;
        let key = self.wallet_key(&extensions, &r.tenant_id, &found.wallet_id).await?;
        let summary = self.engine.registry.summary_at_least(&key, found.position).await.map_err(|e| status::from_wallet_error(&e));
        crate::identifiers::shown(&found, summary.map(|summary| wallet(&key, &summary))).map(Response::new)
    }

    async fn get_wallet(&self, request: Request<GetWalletRequest>) -> Result<Response<Wallet>, Status> {
        let _permit = self.admit()?;
        let (_, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let summary = self.engine.registry.summary_at_least(&key, r.min_position).await.map_err(|e| status::from_wallet_error(&e))?;
        Ok(Response::new(wallet(&key, &summary)))
    }

    async fn list_transactions(&self, request: Request<ListTransactionsRequest>) -> Result<Response<ListTransactionsResponse>, Status> {
        let _permit = self.admit()?;
        let (_, extensions, r) = request.into_parts();
        let key = self.wallet_key(&extensions, &r.tenant_id, &r.wallet_id).await?;
        let page_size = match r.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n.min(PAGE_SIZE_MAX),
        };
        let before = parse_page_token(&r.page_token)?;
        // The log is the source of truth for history: read the stream directly, newest first.
        let stream = codec::wallet_stream(&key.tenant, &key.wallet);
        let head = self.engine.store.stream_version(&stream).await.map_err(|e| status::from_store_error(&e))?;
        if head == 0 {
            return Err(status::from_rejection(&Rejection::WalletNotFound));
        }
        let end = before.map_or(head + 1, |b| b.min(head + 1)); // exclusive
        let start = end.saturating_sub(u64::from(page_size)).max(1);
        let recorded =
            self.engine.store.read_stream(&stream, start, (end - start) as usize).await.map_err(|e| status::from_store_error(&e))?;
        // A page is bounded by bytes as well as by count: transactions with many awards are large.
        let mut transactions = Vec::with_capacity(recorded.len());
        let (mut bytes, mut next) = (0, start);
        for r in recorded.into_iter().rev() {
            let (version, position) = (r.stream_version, r.global_position);
            let event = codec::decode(r).map_err(|e| Status::data_loss(e.to_string()))?;
            let transaction = transaction(&StoredWalletEvent { version, position, event });
            bytes += prost::Message::encoded_len(&transaction);
            if bytes > PAGE_BYTES_MAX && !transactions.is_empty() {
                next = version + 1;
                break;
            }
            transactions.push(transaction);
        }
        let next_page_token = if next > 1 { format!("v{next}") } else { String::new() };
        Ok(Response::new(ListTransactionsResponse { transactions, next_page_token }))
    }
}
