//! W3C trace context (`traceparent`, `tracestate`) in and out of string key/value headers.
//!
//! Kafka plumbing turns these pairs into record headers; keeping this free of rdkafka lets any
//! transport reuse it.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
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
