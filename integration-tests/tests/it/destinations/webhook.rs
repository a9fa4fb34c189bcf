//! The webhook against a Standard Webhooks receiver.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::webhook::{Webhook, WebhookConfig};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::contract;

use super::{metrics, record, retry_after};

use sluice_integration_tests::receiver::{self, Received};

use crate::sync_modes::fixture::{sync, Case, Checked};

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(url: &str, secret: &str) -> Webhook {
    Webhook::new(&WebhookConfig {
        url: url.into(),
        headers: BTreeMap::new(),
        timeout_ms: 5_000,
        signing_secret: Some(Secret::literal(secret)),
    },
        metrics::<Webhook>(),
    )
    .unwrap()
}

#[tokio::test]
async fn webhook_signs_batches_with_an_id_stable_across_retries() {
    let (url, server) = contract::webhook::start(WEBHOOK_SECRET).await;
    let hook = webhook(&url, WEBHOOK_SECRET);
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"})), record(2, Action::Upsert, serde_json::json!({"email": "b@x.com"}))];
    server.faults.push(contract::webhook::Fault::Status { status: 503, retry_after_secs: Some(1) });
    let error = hook.send(&batch).await.unwrap_err();
    assert_eq!(retry_after(&error), Some(Duration::from_secs(1)));
    assert!(hook.send(&batch).await.unwrap().is_empty());
    let deliveries = server.deliveries();
    assert_eq!(deliveries.len(), 1, "the signature verified");
    assert_eq!(deliveries[0].body["records"][1]["fields"]["email"], "b@x.com");
    let ids = server.seen_ids();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "webhook-id is the same on the retry");
    hook.send(&batch[..1]).await.unwrap();
    assert_ne!(server.seen_ids()[2], ids[0], "another batch, another id");
}

#[tokio::test]
async fn webhook_throttle_gone_and_refusal_are_classified() {
    let (url, server) = contract::webhook::start(WEBHOOK_SECRET).await;
    let hook = webhook(&url, WEBHOOK_SECRET);
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"}))];
    server.faults.push(contract::webhook::Fault::Status { status: 429, retry_after_secs: Some(7) });
    server.faults.push(contract::webhook::Fault::Status { status: 504, retry_after_secs: None });
    server.faults.push(contract::webhook::Fault::Status { status: 422, retry_after_secs: None });
    server.faults.push(contract::webhook::Fault::Status { status: 410, retry_after_secs: None });
    let throttled = hook.send(&batch).await.unwrap_err();
    assert_eq!((retry_after(&throttled), throttled.throttle), (Some(Duration::from_secs(7)), Some("http_429")));
    let gateway = hook.send(&batch).await.unwrap_err();
    assert_eq!((retry_after(&gateway), gateway.throttle), (None, Some("http_504")), "Standard Webhooks: 504 is throttling");
    let refused = hook.send(&batch).await.unwrap_err();
    assert_eq!((refused.class, refused.status, refused.throttle), (ErrorClass::Permanent, Some(422), None));
    let gone = hook.send(&batch).await.unwrap_err();
    assert_eq!((gone.class, gone.status), (ErrorClass::Fatal, Some(410)), "410 disables the endpoint");
    assert!(server.deliveries().is_empty());
}

#[tokio::test]
async fn webhook_signed_with_the_wrong_secret_is_fatal() {
    let (url, server) = contract::webhook::start(WEBHOOK_SECRET).await;
    let hook = webhook(&url, "whsec_c2x1aWNlLXRlc3Qtc2VjcmV0LTI0Ynl0ZXM=");
    let error = hook.send(&[record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"}))]).await.unwrap_err();
    assert_eq!((error.class, error.status), (ErrorClass::Fatal, Some(401)));
    assert!(server.deliveries().is_empty());
}

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

/// The webhook in every mode.
pub(crate) async fn sync_mode_cases(_prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for mode in ["upsert", "update", "create", "mirror", "append", "audience"] {
        let (url, received) = receiver::start().await;
        out.push(Case {
            name: format!("webhook-{mode}"),
            vendor: Box::new(Checked(received, check_webhook)),
            table: format!("[destinations.webhook]\nurl = \"{url}\""),
            sync: sync(mode, r#"fields = { email = "email", name = "name", plan = "plan" }"#, true),
            keyed_by_email: false,
        });
    }
    out
}

/// (action, op) per row id, in arrival order.
fn webhook_actions(received: &Received) -> BTreeMap<i64, Vec<(String, String)>> {
    let mut out: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for record in received.records() {
        let id = record["key"]["id"].as_i64().expect("key.id");
        out.entry(id).or_default().push((record["action"].as_str().unwrap().into(), record["op"].as_str().unwrap().into()));
    }
    out
}

/// The webhook sends every mode's actions as they are: what each mode makes of an insert, an
/// update, a delete (Dee, op `d`) and a revoked consent (Bob, op `u`).
fn check_webhook(name: &str, received: &Received) {
    let mode = name.trim_start_matches("webhook-");
    let (write, ada, bob, dee) = match mode {
        "upsert" => ("upsert", "upsert", "delete", None),
        "update" => ("update", "update", "delete", None),
        "create" => ("create", "create", "", None),
        "mirror" | "audience" => ("upsert", "upsert", "delete", Some("delete")),
        "append" => ("event", "event", "event", Some("event")),
        other => panic!("no expectation for {other}"),
    };
    let pair = |action: &str, op: &str| (action.to_string(), op.to_string());
    let mut expected = BTreeMap::new();
    for id in 1..=5 {
        expected.insert(id, vec![pair(write, "r")]);
    }
    expected.get_mut(&1).unwrap().push(pair(ada, "u"));
    if !bob.is_empty() {
        expected.get_mut(&2).unwrap().push(pair(bob, "u"));
    }
    if let Some(dee) = dee {
        expected.get_mut(&4).unwrap().push(pair(dee, "d"));
    }
    expected.insert(6, vec![pair(write, "c")]);
    assert_eq!(webhook_actions(received), expected, "{name}: every change once, as the mode says, in key order");
}
