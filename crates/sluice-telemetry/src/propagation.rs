//! W3C trace context (`traceparent`, `tracestate`) in and out of string key/value headers.
//!
//! Kafka plumbing turns these pairs into record headers; keeping this free of rdkafka lets any
//! transport reuse it.
//!
//! One change is one trace: the poller's run span writes its context into every record it
//! produces ([`current_headers`]); the sink parents the span that consumes a record on that
//! context ([`context_from`]) and [`join`]s the span that delivers a batch to the traces of its
//! records — a child when they all belong to one trace, a root linked to each trace when they
//! belong to several (OpenTelemetry's rule for batches: a span has one parent).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt as _, TraceId};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Map<'a>(&'a mut HashMap<String, String>);

impl Injector for Map<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Pairs<'a>(&'a [(String, String)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The trace-context headers of the current `tracing` span.
pub fn current_headers() -> HashMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut headers = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Map(&mut headers)));
    headers
}

/// The remote context carried by headers (an empty context when there is none).
pub fn context_from(headers: &[(String, String)]) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Pairs(headers)))
}

/// Attach `span`, which is not entered yet, to the traces of the records it handles (`contexts`,
/// one per record, as [`context_from`] reads them; records without trace context are skipped).
/// All of one trace: `span` becomes a child of the first such record's context. Several traces:
/// `span` starts a trace of its own with a link to the first record of each. None: unchanged.
pub fn join(span: &tracing::Span, contexts: impl IntoIterator<Item = Context>) {
    let mut traces: Vec<(TraceId, Context)> = Vec::new();
    for cx in contexts {
        let trace_id = cx.span().span_context().trace_id();
        if cx.span().span_context().is_valid() && !traces.iter().any(|(id, _)| *id == trace_id) {
            traces.push((trace_id, cx));
        }
    }
    let parent = match traces.as_slice() {
        [] => return,
        [(_, only)] => only.clone(),
        several => {
            for (_, cx) in several {
                span.add_link(cx.span().span_context().clone());
            }
            // An empty parent makes the span a root, not a child of whatever span is current.
            Context::new()
        }
    };
    if let Err(error) = span.set_parent(parent) {
        tracing::trace!(?error, "trace context not attached");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::SpanId;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
    use tracing_subscriber::layer::SubscriberExt as _;

    const A: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const B: &str = "00-1bf7651916cd43dd8448eb211c80319d-c7ad6b7169203332-01";

    /// Keeps every ended span.
    #[derive(Clone, Debug, Default)]
    struct Recorder(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Recorder {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn cx(traceparent: &str) -> Context {
        opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Pairs(&[("traceparent".to_string(), traceparent.to_string())]))
    }

    fn id(traceparent: &str) -> (String, String) {
        let parts: Vec<&str> = traceparent.split('-').collect();
        (parts[1].to_string(), parts[2].to_string())
    }

    /// The span `batch`, joined to `contexts` inside a span `outer`, and `outer`, as exported.
    fn joined(contexts: Vec<Context>) -> (SpanData, SpanData) {
        use opentelemetry::trace::TracerProvider as _;
        let recorder = Recorder::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_span_processor(recorder.clone()).build();
        let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("outer");
            let _entered = outer.enter();
            let span = tracing::info_span!("batch");
            join(&span, contexts);
            span.in_scope(|| {});
        });
        let spans = recorder.0.lock().unwrap();
        let find = |name: &str| spans.iter().find(|s| s.name == name).cloned().unwrap_or_else(|| panic!("{name} exported: {spans:?}"));
        (find("batch"), find("outer"))
    }

    fn ids(span: &SpanData) -> (String, String) {
        (span.span_context.trace_id().to_string(), span.parent_span_id.to_string())
    }

    #[test]
    fn records_of_one_trace_make_the_span_its_child() {
        let (batch, _) = joined(vec![cx(A), Context::new(), cx(A)]);
        assert_eq!(ids(&batch), id(A), "trace and parent are the record's");
        assert!(batch.links.links.is_empty(), "a parent, no links");
    }

    #[test]
    fn records_of_several_traces_make_the_span_a_root_linked_to_each() {
        let (batch, outer) = joined(vec![cx(A), cx(B), cx(A)]);
        assert_eq!(batch.parent_span_id, SpanId::INVALID, "a root");
        assert_ne!(batch.span_context.trace_id(), outer.span_context.trace_id(), "not the current span's trace");
        let links: Vec<(String, String)> = batch.links.links.iter().map(|l| (l.span_context.trace_id().to_string(), l.span_context.span_id().to_string())).collect();
        assert_eq!(links, vec![id(A), id(B)], "one link per trace, to its first record");
    }

    #[test]
    fn records_without_trace_context_leave_the_span_where_it_is() {
        let (batch, outer) = joined(vec![Context::new()]);
        assert_eq!(batch.parent_span_id, outer.span_context.span_id(), "the current span's child");
    }
}
