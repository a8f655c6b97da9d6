//! The span of a batch a read model applies (`projection.apply`), joined to the traces of the calls
//! that recorded its events: each event's envelope holds its call's W3C `traceparent`. The span is a
//! child of the first sampled call's span and linked to every one (at most [`LINKS_MAX`]); a batch with
//! no sampled event, or a runner not asked to (`RunnerOptions::trace_calls`: a process that exports no
//! traces), builds none.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tally_engine::store::RecordedEvent;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Links per batch: a batch of thousands of traced events names the first ones.
pub const LINKS_MAX: usize = 32;

/// The contexts of the sampled calls that recorded `events` (at most [`LINKS_MAX`]).
pub(crate) fn sampled_calls(events: &[RecordedEvent]) -> Vec<SpanContext> {
    events.iter().filter_map(|e| sampled(&e.data.metadata.traceparent)).take(LINKS_MAX).collect()
}

/// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) whose sampled flag is set.
fn sampled(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace), Some(span), Some(flags), None) = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let flags = u8::from_str_radix(flags, 16).ok().map(TraceFlags::new)?;
    let context = SpanContext::new(TraceId::from_hex(trace).ok()?, SpanId::from_hex(span).ok()?, flags, true, TraceState::default());
    (context.is_valid() && context.is_sampled()).then_some(context)
}

/// The span of applying a batch of `events` to `projection`, recorded by `calls`.
pub(crate) fn apply_span(projection: &'static str, events: u64, calls: &[SpanContext]) -> Span {
    let Some(first) = calls.first() else { return Span::none() };
    let span = tracing::info_span!("projection.apply", otel.kind = "consumer", projection, events);
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(first.clone()));
    for call in calls {
        span.add_link(call.clone());
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sampled_parents_are_kept() {
        let sampled_parent = sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("sampled");
        assert_eq!(sampled_parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sampled_parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sampled_parent.is_remote());
        for refused in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "",
        ] {
            assert!(sampled(refused).is_none(), "{refused:?}");
        }
    }
}
