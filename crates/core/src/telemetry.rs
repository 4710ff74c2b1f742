//! Trace context across transports, processes and the queue: the W3C
//! `traceparent` and `tracestate` of a span, read from a caller's headers,
//! stored with a job and continued by the worker that runs it (on any
//! instance), and written into the engine call so that an engine that
//! speaks OpenTelemetry joins the trace.
//!
//! The exporter that sends spans lives in the binary, which calls
//! [`enable`] once it is installed. Until then every function here returns
//! at once and nothing is stored with a job: tracing costs nothing when it
//! is off.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported (set once by the binary).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Says that an OpenTelemetry layer is installed and spans are exported:
/// from now on trace context is read, stored and passed on.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether trace context is read, stored and passed on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span `make` builds when tracing is on, else a disabled span: for
/// spans that only tracing wants (a job, an engine call, a statement), so
/// that they cost nothing when it is off.
pub fn traced(make: impl FnOnce() -> Span) -> Span {
    if enabled() { make() } else { Span::none() }
}

/// Sets an attribute on the current span (one no field was declared for,
/// such as the ids a handler learns); nothing when tracing is off.
pub fn set_attribute(key: &'static str, value: impl FnOnce() -> String) {
    if enabled() {
        Span::current().set_attribute(key, value());
    }
}

/// The trace and span ids (lower-case hex) of the current span, for log
/// lines; `None` when tracing is off or the span is in no trace.
pub fn current_ids() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let context = Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid()
        .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
}

/// Renames `span` once its name is known (a request's route is known only
/// after routing). Recording `otel.name` is not enough: it is ignored once
/// the span's OpenTelemetry context exists, which the first enter creates.
pub fn rename(span: &Span, name: String) {
    if enabled() {
        span.context().span().update_name(name);
    }
}

/// The propagation fields (`traceparent`, and `tracestate` when there is
/// one) of `span`, to send as headers or gRPC metadata; empty when tracing
/// is off or the span belongs to no trace.
pub fn propagation_fields(span: &Span) -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut fields = Fields::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut fields);
    let mut fields: Vec<_> = fields.0.into_iter().collect();
    fields.sort();
    fields
}

/// The trace context of `span` as stored with a job: a JSON object of its
/// propagation fields, or `None` when tracing is off or the span belongs to
/// no trace.
pub fn stored_context(span: &Span) -> Option<String> {
    let fields = propagation_fields(span);
    if fields.is_empty() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .map(|(name, value)| (name, serde_json::Value::String(value)))
        .collect();
    Some(serde_json::Value::Object(object).to_string())
}

/// Makes `span` a child of a context written by [`stored_context`]. A
/// missing or malformed one leaves `span` the root of a new trace.
/// Call it before `span` is first entered.
pub fn continue_stored(span: &Span, stored: Option<&str>) {
    let Some(stored) = stored.filter(|_| enabled()) else {
        return;
    };
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(stored)
    else {
        return;
    };
    continue_remote(span, |name| {
        object.get(name).and_then(|value| value.as_str())
    });
}

/// Makes `span` a child of the remote context whose propagation fields
/// `field` looks up by (lower-case) name, such as a caller's
/// `traceparent` header. Fields that are missing or malformed leave `span`
/// the root of a new trace. Call it before `span` is first entered.
pub fn continue_remote<'a>(span: &Span, field: impl Fn(&str) -> Option<&'a str>) {
    if !enabled() {
        return;
    }
    let context = TraceContextPropagator::new().extract(&Lookup(field, PhantomData));
    // An error means only that no OpenTelemetry layer saw the span (it was
    // filtered out): there is nothing to attach the parent to.
    let _ = span.set_parent(context);
}

/// The fields an injection writes.
#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

/// A lookup of propagation fields by name, into data that lives for `'a`.
struct Lookup<'a, F>(F, PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        // Only used by propagators that read every field (baggage); the
        // W3C trace context looks its two fields up by name.
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_tracing(test: impl FnOnce()) {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        enable();
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_remote_parent_is_continued_stored_and_continued_again() {
        with_tracing(|| {
            let request = tracing::info_span!("request");
            continue_remote(&request, |name| (name == "traceparent").then_some(PARENT));
            let stored = stored_context(&request).expect("the span is in a trace");
            assert!(
                stored.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{stored}"
            );
            assert!(
                !stored.contains("00f067aa0ba902b7"),
                "the request span is the parent now: {stored}"
            );

            let job = tracing::info_span!("job");
            continue_stored(&job, Some(&stored));
            let context = job.context();
            let span = context.span();
            let job_context = span.span_context();
            assert_eq!(
                job_context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            let fields = propagation_fields(&job);
            assert_eq!(fields.len(), 1, "no tracestate was sent: {fields:?}");
            assert_eq!(fields[0].0, "traceparent");
            assert!(
                fields[0]
                    .1
                    .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            );
        });
    }

    #[test]
    fn a_malformed_parent_starts_a_new_trace() {
        with_tracing(|| {
            let request = tracing::info_span!("request");
            continue_remote(&request, |name| {
                (name == "traceparent").then_some("00-zz-zz-01")
            });
            let stored = stored_context(&request).expect("a new trace");
            assert!(!stored.contains("zz"), "{stored}");
            let job = tracing::info_span!("job");
            continue_stored(&job, Some("not json"));
            assert!(stored_context(&job).is_some());
        });
    }
}
