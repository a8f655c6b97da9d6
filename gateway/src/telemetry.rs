//! What an SRE sees of the calls: per RPC and status code a request count, and per RPC a latency
//! histogram (`tally_rpc_requests_total{service,method,code}`, `tally_rpc_duration_seconds{service,method}`),
//! measured outermost, so calls the edge refuses (keys, rates, deadlines) count as their callers saw them.
//! Only the RPCs this server has (those of [`crate::access::POLICY`], health and reflection) are named;
//! any other path is counted under `service="unknown"`, so a caller cannot grow the label set.
//! The wallet registry's figures are published beside them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tally_engine::actors::WalletRegistry;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::{Service, http};

/// Counts and times every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_of(request.uri().path());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            // A unary answer that is not OK comes as headers only, its status among them; the others
            // carry theirs in trailers, after this point: OK unless a stream fails midway.
            let code = match &response {
                Ok(response) => status_of(response.headers()),
                Err(_) => Code::Internal,
            };
            metrics::histogram!("tally_rpc_duration_seconds", "service" => service, "method" => method)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("tally_rpc_requests_total", "service" => service, "method" => method, "code" => code_name(code)).increment(1);
            response
        })
    }
}

/// Served besides the RPCs of the access policy (which names every RPC of Tally's services).
const STANDARD_RPCS: &[&str] = &[
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The service and method a path names, if this server has them; else `unknown` twice.
fn rpc_of(path: &str) -> (&'static str, &'static str) {
    let rpc = path.strip_prefix('/').unwrap_or(path);
    let known = crate::access::POLICY.iter().map(|(name, _)| *name).chain(STANDARD_RPCS.iter().copied()).find(|name| *name == rpc);
    known.and_then(|name| name.split_once('/')).unwrap_or(("unknown", "unknown"))
}

fn status_of(headers: &http::HeaderMap) -> Code {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map_or(Code::Ok, Code::from_i32)
}

/// A status code as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Publishes the wallet registry's figures every second: `tally_wallets_active`, and the counters
/// `tally_wallet_activations_total`, `tally_wallet_passivations_total`, `tally_wallet_crashes_total`.
pub fn spawn_registry_metrics(registry: WalletRegistry) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let stats = registry.stats();
            metrics::gauge!("tally_wallets_active").set(stats.active as f64);
            metrics::counter!("tally_wallet_activations_total").absolute(stats.activations);
            metrics::counter!("tally_wallet_passivations_total").absolute(stats.passivations);
            metrics::counter!("tally_wallet_crashes_total").absolute(stats.crashes);
        }
    })
}
