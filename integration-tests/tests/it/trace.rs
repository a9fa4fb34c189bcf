//! One trace per change: the poller and a sink, as processes exporting spans over OTLP/HTTP to a
//! receiver of the test's own, carry one warehouse row to a webhook. The trace whose id the
//! change record's `traceparent` header names holds the poller's run, its produce, the sink's
//! consume of that record, the batch and the destination request — each the child of the span
//! before it, across both processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use sluice_core::naming;
use sluice_integration_tests::process::Service;
use sluice_integration_tests::receiver;
use sluice_integration_tests::{eventually, pipeline, read_topic, Spec};

const WAIT: Duration = Duration::from_secs(90);

/// A span as the receiver got it: ids in lowercase hex, as `traceparent` writes them.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

type Spans = Arc<Mutex<Vec<Exported>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /v1/traces` with an OTLP protobuf body: keep its spans.
async fn traces(State(spans): State<Spans>, body: Bytes) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/HTTP protobuf trace export");
    let mut out = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Exported {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
            });
        }
    }
    ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
}

/// A local OTLP/HTTP receiver: its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it got.
async fn otlp_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = Router::new().route("/v1/traces", post(traces)).with_state(Arc::clone(&spans));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_run_the_produce_the_consume_and_the_request_of_a_change_are_one_trace() {
    let (hook_url, received) = receiver::start().await;
    let (endpoint, spans) = otlp_receiver().await;
    let p = pipeline(
        &hook_url,
        Spec {
            bootstrap_servers: None,
            kafka_extra: "",
            columns_sql: "id bigint PRIMARY KEY, email text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL",
            columns: &["id", "email", "updated_at", "created_at"],
            model_extra: "",
            destination_extra: "batch_linger_ms = 20",
            webhook_extra: "",
            kind: None,
            sync: "mode = \"upsert\"\nfields = { email = \"email\" }",
            detection: None,
        },
    )
    .await;
    p.db.execute(&format!("INSERT INTO {} VALUES (1, 'one@example.com', clock_timestamp(), clock_timestamp())", p.table), &[]).await.unwrap();

    // Export every 100 ms, so the test need not stop the services to see their spans.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let poller = Service::start("sluice-poller", &p.text, &["--trigger-listen", "127.0.0.1:0"], &env);
    let sink = Service::sink(&p.text, "crm", &env);
    eventually("the row delivered", WAIT, || received.records().len() == 1).await;

    let changes = read_topic(&naming::change_topic(&p.prefix, "customers"));
    assert_eq!(changes.len(), 1, "one change");
    let traceparent = changes[0].header("traceparent").expect("the change carries its trace context");
    let trace_id = traceparent.split('-').nth(1).expect("W3C traceparent: version-trace-span-flags").to_string();
    let of_trace = || spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect::<Vec<_>>();
    let names = ["poller.run", "kafka.produce", "sink.consume", "sink.batch", "destination.request"];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !names.iter().all(|name| of_trace().iter().any(|s| s.name == *name)) {
        if tokio::time::Instant::now() >= deadline {
            // Say which span is missing, what else arrived and what the services logged.
            let all = spans.lock().unwrap().clone();
            let seen: Vec<(String, String)> = all.iter().map(|s| (s.service.clone(), s.name.clone())).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            panic!(
                "timed out after {WAIT:?} waiting for the five spans of trace {trace_id}: has {:?}; {} spans in all, of (service, name) {seen:?}\n--- poller log:\n{}\n--- sink log:\n{}",
                of_trace().iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                all.len(),
                poller.output(),
                sink.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((poller, sink));

    let trace = of_trace();
    let one = |name: &str, service: &str| {
        let found: Vec<&Exported> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} in trace {trace_id}: {trace:#?}");
        assert_eq!(found[0].service, service, "{name} comes from {service}");
        found[0].clone()
    };
    let run = one("poller.run", "sluice-poller");
    let produce = one("kafka.produce", "sluice-poller");
    let consume = one("sink.consume", "sluice-sink-crm");
    let batch = one("sink.batch", "sluice-sink-crm");
    let request = one("destination.request", "sluice-sink-crm");
    assert_eq!(traceparent.split('-').nth(2), Some(run.span_id.as_str()), "the record carries the run span's context");
    assert_eq!(produce.parent_span_id, run.span_id, "the produce is part of the run");
    assert_eq!(consume.parent_span_id, run.span_id, "the sink consumes the record in the run's trace");
    assert_eq!(batch.parent_span_id, run.span_id, "a batch of one trace's records is that trace's");
    assert_eq!(request.parent_span_id, batch.span_id, "the request is the batch's");
}
