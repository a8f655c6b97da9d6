//! Spans of traced calls inside the engine. A call is traced when the gateway's server span is live
//! (the sampler kept it); the engine opens its own spans only below a live span of Tally's, so an
//! unsampled call builds none, and nothing here starts a trace of its own by accident — spans of
//! libraries (ractor's `Actor` span around every message, at INFO) are not calls. The timers' runs are
//! roots, kept only if the sampler keeps them.

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span if it is one of Tally's own (a traced call's), else none.
pub fn call_span() -> Span {
    let span = Span::current();
    if span.metadata().is_some_and(|meta| meta.target().starts_with("tally_")) { span } else { Span::none() }
}

/// A span for work inside a call, made only when `parent` is live.
pub fn child_of(parent: &Span, make: impl FnOnce() -> Span) -> Span {
    if parent.is_none() { Span::none() } else { make() }
}

/// `span` if the exporter's sampler keeps it (its OpenTelemetry span is started now, so the sampler
/// decides before any work is done under it), else none. Without an exporter, none.
pub fn sampled(span: Span) -> Span {
    if span.is_none() || !span.context().span().span_context().is_sampled() { Span::none() } else { span }
}

/// The W3C `traceparent` and `tracestate` of `span` if it is sampled: what the events recorded under it
/// carry, so the log leads to the trace.
pub fn trace_context(span: &Span) -> Option<(String, String)> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if !ids.is_valid() || !ids.is_sampled() {
        return None;
    }
    let traceparent = format!("00-{}-{}-{:02x}", ids.trace_id(), ids.span_id(), ids.trace_flags().to_u8());
    Some((traceparent, ids.trace_state().header()))
}
