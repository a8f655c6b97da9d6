//! `WalletService` as a cluster serves it: each call goes to the node that owns its wallet (ADR 0009).
//! A call this node owns is served here; another is forwarded to its owner — the request, the caller's
//! key and the metadata the engine records ([`FORWARDED_METADATA`]), the remaining deadline — and the
//! owner's answer returned as it is. Every answer names the node that decided it in `x-tally-node`.
//! Forwarded calls take a place at this node's gate like local ones, so a draining node waits for them.
//! Without a cluster, every call is served here.

use std::sync::Arc;

use tally_cluster::membership::{GOSSIP_INTERVAL, View};
use tally_cluster::placement::Placement;
use tally_cluster::{Route, Router};
use tally_engine::actors::{Owns, WalletKey, WalletRegistry};
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::wallet_service_server::WalletService;
use tally_proto::v1::*;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use crate::access;
use crate::admission::deadline;
use crate::limits::{MESSAGE_BYTES_MAX, REPLY_BYTES_MAX};
use crate::service::{Gate, WalletApi};

/// On every answer: the node that decided the call.
pub const NODE_HEADER: &str = "x-tally-node";
/// On a forwarded call: the node that forwarded it (a node serves such a call only if it owns the wallet).
pub const FORWARDED_HEADER: &str = "x-tally-forwarded-by";
/// On an UNAVAILABLE answer: the node does not own the wallet by its view; try again on the owner.
pub const NOT_OWNER_HEADER: &str = "x-tally-not-owner";

/// The wallet service of this node: its own wallets, and the way to the others'.
#[derive(Debug, Clone)]
pub struct RoutedWallets {
    local: WalletApi,
    cluster: Option<Arc<Router>>,
    gate: Arc<Gate>,
}

impl RoutedWallets {
    pub fn new(local: WalletApi, cluster: Option<Arc<Router>>, gate: Arc<Gate>) -> Self {
        Self { local, cluster, gate }
    }
}

/// The caller's metadata a forwarded call carries: its key, and what the owner records in its events.
/// Nothing else — transport headers (`content-length`, `grpc-encoding`, …) are the new call's own.
pub const FORWARDED_METADATA: &[&str] = &["authorization", "x-request-id", "x-correlation-id", "traceparent", "tracestate", "x-staff-id"];

/// Where a call for `tenant`'s wallet `wallet_id` goes; a call another node forwarded is served only by
/// the wallet's owner (this node's view), so no node activates a wallet it does not own.
fn route(router: &Router, tenant: &str, wallet_id: &str, forwarded: bool) -> Result<Route, Status> {
    match router.route(tenant, wallet_id) {
        Route::Local => Ok(Route::Local),
        Route::Remote(_) | Route::Unplaced if forwarded => Err(not_owner(router)),
        Route::Remote(peer) => Ok(Route::Remote(peer)),
        Route::Unplaced => Err(Status::unavailable("no node of the cluster is ready to serve wallets yet; retry shortly")),
    }
}

fn not_owner(router: &Router) -> Status {
    let mut status =
        Status::unavailable(format!("node {} does not own this wallet; retry with the same idempotency key", router.node_id()));
    status.metadata_mut().insert(NOT_OWNER_HEADER, MetadataValue::from_static("1"));
    status
}

/// A W3C `traceparent` for a call this node decided not to sample: new ids, the sampled flag off.
fn unsampled_traceparent() -> MetadataValue<tonic::metadata::Ascii> {
    let (trace_id, span_id) = (rand::random::<u128>().max(1), rand::random::<u64>().max(1));
    MetadataValue::try_from(format!("00-{trace_id:032x}-{span_id:016x}-00")).expect("hex digits and dashes are a header value")
}

fn is_not_owner(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.metadata().contains_key(NOT_OWNER_HEADER)
}

/// The call as it goes to the owner: the caller's key and recorded metadata, marked as forwarded, with
/// what is left of the caller's deadline.
fn hop<T: Clone>(metadata: &MetadataMap, message: &T, deadline: Option<Instant>, node_id: &str) -> Result<Request<T>, Status> {
    let mut request = Request::new(message.clone());
    for name in FORWARDED_METADATA {
        for value in metadata.get_all(*name) {
            request.metadata_mut().append(*name, value.clone());
        }
    }
    // Traces exported: the owner's span is a child of this node's.
    if let Some((traceparent, tracestate)) = crate::telemetry::current_trace_context() {
        for (name, value) in [("traceparent", traceparent), ("tracestate", tracestate)] {
            match MetadataValue::try_from(value.as_str()) {
                Ok(value) if !value.is_empty() => {
                    request.metadata_mut().insert(name, value);
                }
                _ => {
                    request.metadata_mut().remove(name);
                }
            }
        }
    } else if crate::telemetry::tracing_on() && !metadata.contains_key("traceparent") {
        // Not sampled here, and the caller said nothing: tell the owner so, or it decides afresh and
        // traces the second half of a call whose first half nobody traced.
        request.metadata_mut().insert("traceparent", unsampled_traceparent());
    }
    let node = MetadataValue::try_from(node_id).map_err(|_| Status::internal("node id is not a header value"))?;
    request.metadata_mut().insert(FORWARDED_HEADER, node);
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Status::deadline_exceeded("the deadline passed before the call reached its wallet's node; nothing was applied"));
        }
        request.set_timeout(left);
    }
    Ok(request)
}

/// Names `node_id` as the node that decided, unless the owner already did.
fn stamp<T>(answer: Result<Response<T>, Status>, node_id: &str) -> Result<Response<T>, Status> {
    let Ok(node) = MetadataValue::try_from(node_id) else { return answer };
    match answer {
        Ok(mut response) => {
            if !response.metadata().contains_key(NODE_HEADER) {
                response.metadata_mut().insert(NODE_HEADER, node);
            }
            Ok(response)
        }
        Err(mut status) => {
            if !status.metadata().contains_key(NODE_HEADER) {
                status.metadata_mut().insert(NODE_HEADER, node);
            }
            Err(status)
        }
    }
}

/// An answer the owner's wallet service did not give (it stamps every answer it gives): the connection
/// failed or broke, so whether the call was applied is unknown — UNAVAILABLE, which clients retry with
/// the same idempotency key, never UNKNOWN. Refusals by the owner's edge (keys, rates, deadline) pass as
/// they are.
fn unreachable(status: Status, node_id: &str) -> Status {
    use tonic::Code::{Cancelled, Internal, Unavailable, Unknown};
    if status.metadata().contains_key(NODE_HEADER) || !matches!(status.code(), Unknown | Unavailable | Cancelled | Internal) {
        return status;
    }
    Status::unavailable(format!(
        "the wallet's node {node_id} could not be reached or went away during the call ({}); it may or may not have \
         been applied: retry with the same idempotency key",
        status.message()
    ))
}

/// The client span of a forward (inside a traced call only): the owner's server span is its child.
fn forward_span(peer: &str) -> Span {
    if Span::current().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        "cluster.forward",
        otel.kind = "client",
        rpc.system = "grpc",
        tally.peer = peer,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

fn record_forward_span(span: &Span, code: tonic::Code) {
    if !span.is_none() {
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "error");
        }
    }
}

fn record_forward(started: Instant, span: &Span, answer: &Result<impl Sized, Status>) {
    record_forward_span(span, answer.as_ref().err().map_or(tonic::Code::Ok, Status::code));
    let outcome = match answer {
        Ok(_) => "ok",
        Err(status) if is_not_owner(status) => "not_owner",
        Err(_) => "error",
    };
    metrics::counter!("tally_cluster_forwarded_total", "outcome" => outcome).increment(1);
    metrics::histogram!("tally_cluster_forward_seconds").record(started.elapsed().as_secs_f64());
}

/// Each RPC: served here, or forwarded to its owner and, if the owner had just lost it, once more to the
/// owner after the view changed.
macro_rules! routed {
    (served_here { $($here:tt)* } $($method:ident($request:ty) -> $response:ty;)*) => {
        #[tonic::async_trait]
        impl WalletService for RoutedWallets {
            $(
                async fn $method(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                    let Some(router) = &self.cluster else { return self.local.$method(request).await };
                    let answer: Result<Response<$response>, Status> = async {
                        let deadline = deadline(&request);
                        // The tenant as the caller's key allows it: refused here exactly as the local call would.
                        let tenant = access::acting_tenant(request.extensions(), &request.get_ref().tenant_id)?;
                        let wallet_id = request.get_ref().wallet_id.clone();
                        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
                        let placement = router.placement();
                        let mut route = route(router, tenant.as_str(), &wallet_id, forwarded)?;
                        // A forwarded call holds a place at this node's gate too: bounded, and waited for
                        // when the node drains (the local path takes its own place in `WalletApi`).
                        let _permit = match route {
                            Route::Remote(_) => Some(self.gate.admit()?),
                            _ => None,
                        };
                        let (metadata, extensions, message) = request.into_parts();
                        for attempt in 0..2 {
                            let Route::Remote(peer) = route else { break };
                            let started = Instant::now();
                            let span = forward_span(&peer.node_id);
                            let call = span.in_scope(|| hop(&metadata, &message, deadline, router.node_id())).inspect_err(|status| record_forward_span(&span, status.code()))?;
                            let answer = WalletServiceClient::new(peer.channel)
                            .max_decoding_message_size(REPLY_BYTES_MAX)
                            .max_encoding_message_size(MESSAGE_BYTES_MAX)
                            .$method(call)
                            .instrument(span.clone())
                            .await;
                            record_forward(started, &span, &answer);
                            match answer.map_err(|status| unreachable(status, &peer.node_id)) {
                                Err(status) if is_not_owner(&status) && attempt == 0 => {
                                    router.changed_since(&placement, GOSSIP_INTERVAL * 2).await;
                                    route = self::route(router, tenant.as_str(), &wallet_id, forwarded)?;
                                }
                                answer => return answer,
                            }
                        }
                        match route {
                            Route::Local => self.local.$method(Request::from_parts(metadata, extensions, message)).await,
                            _ => Err(Status::unavailable("the wallet's node changed while the call was on its way; retry with the same idempotency key")),
                        }
                    }.await;
                    stamp(answer, router.node_id())
                }
            )*
            $($here)*
        }
    };
}

routed! {
    served_here {
        /// The identifier's holder is read here (the log is shared), its wallet from the wallet's owner
        /// (a routed GetWallet as of the claim, which the caller's key may make: FindWallet's roles are
        /// among GetWallet's), and answered only if it shows the identifier.
        async fn find_wallet(&self, request: Request<FindWalletRequest>) -> Result<Response<Wallet>, Status> {
            let Some(router) = &self.cluster else { return self.local.find_wallet(request).await };
            let answer = async {
                let _permit = self.gate.admit()?;
                let (metadata, extensions, r) = request.into_parts();
                let found = self.local.identifier_holder(&extensions, &r).await?;
                let get = GetWalletRequest { tenant_id: r.tenant_id, wallet_id: found.wallet_id.clone(), min_position: found.position };
                // The owner's answer as it came (the node that decided it named), if it shows the identifier.
                match self.get_wallet(Request::from_parts(metadata, extensions, get)).await {
                    Ok(response) => crate::identifiers::shown(&found, Ok(response.get_ref().clone())).map(|_| response),
                    Err(status) => crate::identifiers::shown(&found, Err(status)).map(Response::new),
                }
            }
            .await;
            stamp(answer, router.node_id())
        }
    }
    enroll(EnrollRequest) -> WalletMutation;
    earn(EarnRequest) -> WalletMutation;
    redeem(RedeemRequest) -> WalletMutation;
    adjust(AdjustRequest) -> WalletMutation;
    reverse(ReverseRequest) -> WalletMutation;
    add_stamps(AddStampsRequest) -> WalletMutation;
    earn_for_order(EarnForOrderRequest) -> WalletMutation;
    refund_order(RefundOrderRequest) -> WalletMutation;
    authorize_redemption(AuthorizeRedemptionRequest) -> WalletMutation;
    capture_redemption(CaptureRedemptionRequest) -> WalletMutation;
    void_redemption(VoidRedemptionRequest) -> WalletMutation;
    purchase_credits(PurchaseCreditsRequest) -> WalletMutation;
    redeem_reward(RedeemRewardRequest) -> RedeemRewardResponse;
    cancel_redemption(CancelRedemptionRequest) -> CancelRedemptionResponse;
    transfer_points(TransferPointsRequest) -> TransferPointsResponse;
    close(CloseRequest) -> WalletMutation;
    erase_customer(EraseCustomerRequest) -> WalletMutation;
    get_wallet(GetWalletRequest) -> Wallet;
    list_transactions(ListTransactionsRequest) -> ListTransactionsResponse;
    attach_identifier(AttachIdentifierRequest) -> WalletMutation;
    detach_identifier(DetachIdentifierRequest) -> WalletMutation;
}

/// Follows the cluster's view: on every change, gives up the live wallets this node no longer owns
/// (passivated, each offered a snapshot, so a shard that comes back is recovered from the log, never
/// served from a state another node has moved past), and reports members, shards owned and shards moved.
///
/// Every other live wallet catches up from the log before its next call (one read, nothing stopped):
/// views that differed — a partition, gossip lost one way, a node restarted while cut off — may have let
/// another node serve any of them meanwhile. A peer's own view changing counts too (its `views` count
/// rises), as when only that node lost sight of the others and served their wallets.
pub fn spawn_hand_off(mut view: watch::Receiver<View>, router: Arc<Router>, registry: WalletRegistry) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut before = Arc::clone(&view.borrow_and_update().placement);
        report(&view.borrow(), router.node_id(), None);
        while view.changed().await.is_ok() {
            let now = view.borrow_and_update().clone();
            report(&now, router.node_id(), Some(&before));
            registry.refresh_all();
            // Lost shards, and gained ones too: a wallet still live here from before a shard left (or
            // started by a call that raced the change) would serve a state the other owner moved past.
            let (me, was, is) = (router.node_id().to_owned(), Arc::clone(&before), Arc::clone(&now.placement));
            let moved: Owns = Arc::new(move |key: &WalletKey| {
                let (tenant, wallet) = (key.tenant.as_str(), key.wallet.as_str());
                is.owner_of(tenant, wallet) != Some(me.as_str()) || was.owner_of(tenant, wallet) != Some(me.as_str())
            });
            let passivated = registry.passivate_where(moved).await;
            tracing::info!(passivated, "wallets of shards that moved given up; the others re-read from the log at their next call");
            before = now.placement;
        }
    })
}

fn report(view: &View, node_id: &str, before: Option<&Placement>) {
    metrics::gauge!("tally_cluster_members").set(view.members.len() as f64);
    let placement = &view.placement;
    let owned = placement.members().iter().position(|m| m == node_id).map_or(0, |i| placement.shards_per_member()[i]);
    metrics::gauge!("tally_cluster_shards_owned").set(f64::from(owned));
    if let Some(before) = before {
        metrics::counter!("tally_cluster_shards_moved_total").increment(u64::from(before.moved(placement)));
    }
}
