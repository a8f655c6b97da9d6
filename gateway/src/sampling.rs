//! The sampler's decision before a call's span exists (issue 18, the cost of tracing at 1 %).
//!
//! Building a span a sampler then drops costs as much as several percent of a call: the registry's slot,
//! the OpenTelemetry layer's builder and its attributes, the context, the close. So the server asks the
//! sampler first, with the caller's context and a trace id chosen here, and builds a span only for a call
//! that will be kept; that span then starts with the same trace id (`PresetIds`), so the SDK's own
//! sampler, which runs again as the span starts, decides the same.
//!
//! The sampler is the standard one the variables name (`OTEL_TRACES_SAMPLER` / `_ARG`, parsed as the SDK
//! parses them) and the provider is given this very sampler, so the two can never disagree.

use std::cell::Cell;
use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::trace::{SpanKind, TraceContextExt, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample};

/// The process's sampler, once traces are exported.
static SAMPLER: OnceLock<Sampler> = OnceLock::new();

thread_local! {
    /// The trace id the next root span started on this thread takes (see [`PresetIds`]).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The sampler `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name, as the SDK reads them (an unknown
/// or unsupported name, or a ratio that does not parse, falls back as the SDK's does); installed for the
/// pre-decisions of [`decide`].
pub(crate) fn install_from_env() -> Sampler {
    let ratio = || std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().and_then(|r| r.parse::<f64>().ok()).unwrap_or(1.0);
    let sampler = match std::env::var("OTEL_TRACES_SAMPLER").as_deref() {
        Ok("always_on") => Sampler::AlwaysOn,
        Ok("always_off") => Sampler::AlwaysOff,
        Ok("traceidratio") => Sampler::TraceIdRatioBased(ratio()),
        Ok("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Ok("parentbased_traceidratio") => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()))),
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    };
    let _ = SAMPLER.set(sampler.clone());
    sampler
}

/// Whether a server span named `name`, under `parent` (the caller's context, perhaps empty), is kept; for
/// a new trace, the trace id it was decided for is set aside for the span built next on this thread
/// (the caller [`forget`]s it once that span started, or when none is built).
/// Always true when no sampler was installed (the span then decides as it starts).
pub(crate) fn decide(parent: &Context, name: &str) -> bool {
    SAMPLER.get().is_none_or(|sampler| decide_with(sampler, parent, name))
}

fn decide_with(sampler: &Sampler, parent: &Context, name: &str) -> bool {
    let remote = parent.span().span_context().clone();
    let trace_id = if remote.is_valid() { remote.trace_id() } else { RandomIdGenerator::default().new_trace_id() };
    let kept = sampler.should_sample(Some(parent), trace_id, name, &SpanKind::Server, &[], &[]).decision != SamplingDecision::Drop;
    NEXT_TRACE_ID.set((!remote.is_valid()).then_some(trace_id));
    kept
}

/// Clears a trace id [`decide`] set aside and no span took.
pub(crate) fn forget() {
    NEXT_TRACE_ID.set(None);
}

/// Ids as the SDK makes them, but a new trace takes the id [`decide`] set aside on this thread, if any.
#[derive(Debug, Default)]
pub(crate) struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision made before a span exists is the SDK's own as the span then starts: for new traces
    /// under a ratio (the span takes the trace id decided for) and under remote parents, sampled or not.
    #[test]
    fn the_decision_before_the_span_is_the_sdks_as_it_starts() {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState, Tracer, TracerProvider};
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(sampler.clone())
            .with_id_generator(PresetIds::default())
            .build();
        let tracer = provider.tracer("test");
        let remote = |sampled: bool| {
            let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
            let span = SpanContext::new(TraceId::from(7u128), opentelemetry::trace::SpanId::from(9u64), flags, true, TraceState::default());
            Context::new().with_remote_span_context(span)
        };
        let (mut kept, mut dropped) = (0, 0);
        for parent in (0..200).map(|_| Context::new()).chain([remote(true), remote(false)]) {
            let decided = decide_with(&sampler, &parent, "rpc");
            let started = tracer.start_with_context("rpc", &parent);
            assert_eq!(decided, opentelemetry::trace::Span::span_context(&started).is_sampled(), "{parent:?}");
            if decided {
                kept += 1
            } else {
                dropped += 1
            }
            forget();
        }
        assert!(kept > 50 && dropped > 50, "both ways: {kept} kept, {dropped} dropped");
    }

    #[test]
    fn a_preset_trace_id_is_taken_once_by_the_next_new_trace() {
        let ids = PresetIds::default();
        let chosen = TraceId::from(42u128);
        NEXT_TRACE_ID.set(Some(chosen));
        assert_eq!(ids.new_trace_id(), chosen);
        assert_ne!(ids.new_trace_id(), chosen, "taken once");
    }
}
