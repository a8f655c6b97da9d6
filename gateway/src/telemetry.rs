//! What an SRE sees of the calls — traces and metrics. When an OTLP endpoint is set, each call's span
//! (OpenTelemetry's RPC conventions) continues the caller's W3C trace and is exported; the engine's spans
//! (the wallet actor, the store append) are its descendants, and the events a call records carry its
//! context. Metrics: per RPC and status code a request count, and per RPC a latency
//! histogram (`tally_rpc_requests_total{service,method,code}`, `tally_rpc_duration_seconds{service,method}`),
//! measured outermost, so calls the edge refuses (keys, rates, deadlines) count as their callers saw them.
//! Only the RPCs this server has (those of [`crate::access::POLICY`], health and reflection) are named;
//! any other path is counted under `service="unknown"`, so a caller cannot grow the label set.
//! The wallet registry's figures are published beside them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Instrument, Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use tally_engine::actors::WalletRegistry;

use crate::limits::TRACESTATE_BYTES_MAX;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::{Service, http};

/// Traces, counts and times every call.
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
        let (rpc, service, method) = rpc_of(request.uri().path());
        let span = server_span(request.headers(), rpc, service, method);
        let call = span.in_scope(|| self.inner.call(request));
        let mut outcome = Outcome { span: span.clone(), service, method, started: Instant::now(), recorded: false };
        Box::pin(
            async move {
                match call.await {
                    // An answer that is not OK at once comes as headers only, its status among them.
                    Ok(response) if response.headers().contains_key("grpc-status") => {
                        outcome.record(status_of(response.headers()));
                        Ok(response)
                    }
                    // The others carry their status in trailers, after the body: read there, so a stream
                    // that fails midway counts with its failure, and its time includes the streaming.
                    // An empty body is never polled: nothing would read its end.
                    Ok(response) if http_body::Body::is_end_stream(response.body()) => {
                        outcome.record(status_of(response.headers()));
                        Ok(response)
                    }
                    Ok(response) => {
                        let (parts, inner) = response.into_parts();
                        Ok(http::Response::from_parts(parts, Body::new(Watched { inner, outcome })))
                    }
                    Err(error) => {
                        outcome.record(Code::Internal);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// A call's outcome, recorded once: when its answer is ready, or as CANCELLED when the call is dropped
/// before (the caller reset the stream or went away), so calls given up on are counted too.
struct Outcome {
    span: Span,
    service: &'static str,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        record_outcome(&self.span, code);
        let (service, method) = (self.service, self.method);
        metrics::histogram!("tally_rpc_duration_seconds", "service" => service, "method" => method)
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!("tally_rpc_requests_total", "service" => service, "method" => method, "code" => code_name(code)).increment(1);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// A response body whose trailers carry its call's status: the outcome is recorded as they pass, as the
/// error's code if the body fails, as UNKNOWN if it ends without them, and as CANCELLED if it is dropped
/// before (the caller went away mid-stream).
struct Watched {
    inner: Body,
    outcome: Outcome,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    // Trailers without a status break the protocol: the caller sees UNKNOWN.
                    self.outcome.record(if trailers.contains_key("grpc-status") { status_of(trailers) } else { Code::Unknown });
                }
            }
            Poll::Ready(Some(Err(status))) => self.outcome.record(status.code()),
            Poll::Ready(None) => self.outcome.record(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Served besides the RPCs of the access policy (which names every RPC of Tally's services).
const STANDARD_RPCS: &[&str] = &[
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The RPC (`service/method`), service and method a path names, if this server has them; else
/// `unknown` thrice.
fn rpc_of(path: &str) -> (&'static str, &'static str, &'static str) {
    let rpc = path.strip_prefix('/').unwrap_or(path);
    let known = crate::access::POLICY.iter().map(|(name, _)| *name).chain(STANDARD_RPCS.iter().copied()).find(|name| *name == rpc);
    known
        .and_then(|name| name.split_once('/').map(|(service, method)| (name, service, method)))
        .unwrap_or(("unknown", "unknown", "unknown"))
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

/// Publishes the wallet registry's figures every second: `tally_wallets_active`, the counters
/// `tally_wallet_activations_total`, `tally_wallet_passivations_total`, `tally_wallet_crashes_total`,
/// `tally_wallet_quarantines_total` (wallets put in quarantine) and `tally_wallet_quarantine_refusals_total`
/// (calls refused for it), and the messages waiting in mailboxes (`tally_wallet_mailbox_messages`, all
/// live wallets; `tally_wallet_mailbox_deepest_messages`, the fullest one);
/// and makes the snapshot counters (`tally_snapshots_{loaded,saved}_total`,
/// `tally_snapshots_rejected_total{reason}`, `tally_snapshot_store_errors_total{op}`) visible from zero.
pub fn spawn_registry_metrics(registry: WalletRegistry) -> tokio::task::JoinHandle<()> {
    // Snapshot outcomes are counted where they happen; every series is shown from the start, at zero.
    metrics::counter!("tally_snapshots_loaded_total").increment(0);
    metrics::counter!("tally_snapshots_saved_total").increment(0);
    for reason in ["wrong_version", "unreadable", "ahead_of_log"] {
        metrics::counter!("tally_snapshots_rejected_total", "reason" => reason).increment(0);
    }
    for op in ["read", "write"] {
        metrics::counter!("tally_snapshot_store_errors_total", "op" => op).increment(0);
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let stats = registry.stats();
            metrics::gauge!("tally_wallets_active").set(stats.active as f64);
            metrics::counter!("tally_wallet_activations_total").absolute(stats.activations);
            metrics::counter!("tally_wallet_passivations_total").absolute(stats.passivations);
            metrics::counter!("tally_wallet_crashes_total").absolute(stats.crashes);
            metrics::counter!("tally_wallet_quarantines_total").absolute(stats.quarantines);
            metrics::counter!("tally_wallet_quarantine_refusals_total").absolute(stats.quarantine_refusals);
            metrics::gauge!("tally_wallet_mailbox_messages").set(stats.queued as f64);
            metrics::gauge!("tally_wallet_mailbox_deepest_messages").set(stats.queued_deepest as f64);
        }
    })
}

/// Whether spans are exported: set once at start, read on every call (nothing is built when off).
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Logging to stderr and, with an OTLP endpoint, trace export; [`Telemetry::shutdown`] sends what is
/// still buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Where traces go, if anywhere: `endpoint` (a `tally serve` setting), else the standard variables
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; `OTEL_SDK_DISABLED=true` turns
/// export off whatever is set.
fn otlp_endpoint(endpoint: Option<&str>) -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned);
    endpoint.or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

impl Telemetry {
    /// Installs the process's subscriber: log lines filtered by `RUST_LOG` (default `info`) and, when an
    /// OTLP endpoint is known (see [`otlp_endpoint`]), spans exported over gRPC in batches — sampled by
    /// `OTEL_TRACES_SAMPLER`/`_ARG`, named by `OTEL_SERVICE_NAME` (default `tally`) and
    /// `OTEL_RESOURCE_ATTRIBUTES`, an incoming W3C `traceparent` continued. Must run inside the runtime.
    pub fn install(endpoint: Option<&str>, format: LogFormat) -> Result<Self, String> {
        let Some(endpoint) = otlp_endpoint(endpoint) else { return Ok(Self::logs_only(format)) };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| format!("cannot export traces to {endpoint}: {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("tally");
        }
        // The sampler the variables name, given to the SDK and kept for the server's decision before a
        // span exists (`sampling`); new traces take the trace id that decision was made for.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .with_sampler(crate::sampling::install_from_env())
            .with_id_generator(crate::sampling::PresetIds::default())
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        // Spans of Tally's crates only, no log events (they would become span events on every call).
        // INFO, as Tally's spans are: a DEBUG target would raise the process's maximum level, and every
        // library's debug log record (sled's, h2's, through the `log` bridge) would then be built and
        // filtered on every call — a third of the cost of tracing at 1 %, measured.
        let targets = Targets::new()
            .with_target("tally_gateway", Level::INFO)
            .with_target("tally_cluster", Level::INFO)
            .with_target("tally_engine", Level::INFO)
            .with_target("tally_projections", Level::INFO);
        // The hint keeps the maximum at INFO: a filter without one counts as "anything may pass".
        let spans_only =
            tracing_subscriber::filter::filter_fn(|meta: &tracing::Metadata<'_>| meta.is_span()).with_max_level_hint(LevelFilter::INFO);
        let spans = targets.and(spans_only);
        // What each span costs is kept small: no code locations, thread ids or busy/idle timings as
        // attributes, no OpenTelemetry context switched on every enter (nothing else here reads it).
        let traces = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tally"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_target(false)
            .with_filter(spans);
        tracing_subscriber::registry().with(log_lines(format)).with(traces).init();
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %crate::redact::redact(&endpoint), "exporting traces over OTLP/gRPC");
        Ok(Self { provider: Some(provider) })
    }

    /// Log lines only (the CLI's commands, and a server without an OTLP endpoint).
    pub fn logs_only(format: LogFormat) -> Self {
        tracing_subscriber::registry().with(log_lines(format)).init();
        Self::default()
    }

    /// Sends the spans still buffered (at most a few seconds).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "traces still buffered could not all be sent");
        }
    }
}

/// Log lines on stderr in `format`, filtered by `RUST_LOG` (default `info`).
fn log_lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The server span is for traces only: formatting its fields for the log layer on every call, sampled
    // or not, cost more than the span itself. The hint keeps the log layer's own maximum level.
    let hint = Filter::<S>::max_level_hint(&filter).unwrap_or(LevelFilter::TRACE);
    let not_server_span =
        tracing_subscriber::filter::filter_fn(|meta: &tracing::Metadata<'_>| meta.target() != SERVER_SPAN_TARGET).with_max_level_hint(hint);
    let filter = filter.and(not_server_span);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => lines.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter(filter).boxed(),
        LogFormat::Json => lines.with_ansi(false).event_format(JsonLines).with_filter(filter).boxed(),
    }
}

/// The target of the server span, which log lines leave out.
const SERVER_SPAN_TARGET: &str = "tally_gateway::calls";

/// Reads a W3C trace context from a call's headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    /// An oversized `tracestate` is dropped, as W3C Trace Context allows: it would be stored in every
    /// event the call records and copied into every span.
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key).and_then(|v| v.to_str().ok())?;
        (key != "tracestate" || value.len() <= TRACESTATE_BYTES_MAX).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of a call this server serves (OpenTelemetry's RPC conventions), continuing the caller's
/// trace if its headers carry one; `Span::none()` when traces are not exported or the sampler leaves
/// the call out.
fn server_span(headers: &http::HeaderMap, rpc: &'static str, service: &'static str, method: &'static str) -> Span {
    if !tracing_on() {
        return Span::none();
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Headers(headers)));
    // The sampler decides first, once per call: a call it leaves out builds no span at all.
    if !crate::sampling::decide(&parent, rpc) {
        crate::sampling::forget();
        return Span::none();
    }
    // A root (whatever span is current): its start may take only the trace id the decision was made for.
    let span = tracing::info_span!(
        target: SERVER_SPAN_TARGET,
        parent: None,
        "rpc",
        otel.name = rpc,
        otel.kind = "server",
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    // The span starts here, with the trace id the decision was made for, so the SDK's sampler keeps it
    // too (the engine's spans open only inside a live parent).
    let span = tally_engine::traces::sampled(span);
    crate::sampling::forget();
    span.record("rpc.system", "grpc").record("rpc.service", service).record("rpc.method", method);
    span
}

/// Records a call's outcome on its span: server faults (as OpenTelemetry's gRPC conventions list them)
/// are errors; a caller's mistakes are not the server's.
fn record_outcome(span: &Span, code: Code) {
    if span.is_none() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i32);
    if matches!(code, Code::Unknown | Code::DeadlineExceeded | Code::Unimplemented | Code::Internal | Code::Unavailable | Code::DataLoss) {
        span.record("otel.status_code", "error");
    }
}

/// The W3C `traceparent` (and `tracestate`) of the current span, when traces are exported: what a
/// command records in its events and a forwarded call carries, so both join this call's trace.
pub fn current_trace_context() -> Option<(String, String)> {
    if !tracing_on() {
        return None;
    }
    // Unsampled: the caller's own context is recorded, as without export.
    let (traceparent, tracestate) = tally_engine::traces::trace_context(&Span::current())?;
    Some((traceparent, if tracestate.len() <= TRACESTATE_BYTES_MAX { tracestate } else { String::new() }))
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people: one readable line per event.
    #[default]
    Text,
    /// For log pipelines: one JSON object per line, with the trace and span ids of the span it was
    /// written in when traces are exported, so logs and traces join.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}; use text or json")),
        }
    }
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `target`, the event's fields
/// (`message` among them), `span` (the innermost span's name) and, inside an exported trace,
/// `trace_id` and `span_id`.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: format::Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        event.record(&mut JsonFields(&mut line));
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), span.name().into());
        }
        // From the span current for the whole process, not for this layer: with RUST_LOG=warn the log
        // layer sees no span, and warnings are the lines that most need their trace.
        if tracing_on() {
            let context = Span::current().context();
            let span = context.span();
            let ids = span.span_context();
            if ids.is_valid() {
                line.insert("trace_id".into(), ids.trace_id().to_string().into());
                line.insert("span_id".into(), ids.span_id().to_string().into());
            }
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::FutureExt;

    use super::*;

    /// A service whose calls never answer.
    struct Never;

    impl Service<http::Request<()>> for Never {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Pending<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::pending()
        }
    }

    /// A streamed answer: a message, then trailers with `status` (none: the body just ends).
    struct Streamed(Option<&'static str>);

    struct Frames(std::collections::VecDeque<http_body::Frame<bytes::Bytes>>);

    impl http_body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    impl Service<http::Request<()>> for Streamed {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut frames = std::collections::VecDeque::from([http_body::Frame::data(bytes::Bytes::from_static(b"row"))]);
            if let Some(status) = self.0 {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static(status));
                frames.push_back(http_body::Frame::trailers(trailers));
            }
            std::future::ready(Ok(http::Response::new(Body::new(Frames(frames)))))
        }
    }

    /// Issue 18: a streamed call counts with the status its trailers carry — a stream that fails midway
    /// with its failure — and one its caller drops mid-stream as CANCELLED.
    #[test]
    fn a_streamed_call_counts_with_the_status_of_its_trailers() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for (status, drain) in [(Some("0"), true), (Some("14"), true), (None, true), (Some("0"), false)] {
                let mut service = tower_layer::Layer::layer(&RpcMetricsLayer, Streamed(status));
                let request = http::Request::builder().uri("/tally.v1.AuditService/ExportLedger").body(()).unwrap();
                let response = service.call(request).now_or_never().expect("answered at once").unwrap();
                let mut body = response.into_body();
                let mut next =
                    || std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).now_or_never().expect("ready");
                assert!(next().is_some_and(|frame| frame.is_ok_and(|f| f.is_data())), "the row");
                if drain {
                    while next().is_some() {}
                }
            }
        });
        let text = handle.render();
        for (code, count) in [("OK", 1), ("UNAVAILABLE", 1), ("UNKNOWN", 1), ("CANCELLED", 1)] {
            let line =
                format!("tally_rpc_requests_total{{service=\"tally.v1.AuditService\",method=\"ExportLedger\",code=\"{code}\"}} {count}");
            assert!(text.lines().any(|l| l == line), "{code}: {text}");
        }
    }

    #[test]
    fn a_call_dropped_before_its_answer_counts_as_cancelled() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut service = tower_layer::Layer::layer(&RpcMetricsLayer, Never);
            let request = http::Request::builder().uri("/tally.v1.WalletService/Earn").body(()).unwrap();
            let mut call = service.call(request);
            assert!((&mut call).now_or_never().is_none(), "still waiting for its answer");
            drop(call);
        });
        let text = handle.render();
        let line = "tally_rpc_requests_total{service=\"tally.v1.WalletService\",method=\"Earn\",code=\"CANCELLED\"} 1";
        assert!(text.lines().any(|l| l == line), "{text}");
        assert!(text.contains("tally_rpc_duration_seconds_count{service=\"tally.v1.WalletService\",method=\"Earn\"} 1"), "{text}");
    }
}
