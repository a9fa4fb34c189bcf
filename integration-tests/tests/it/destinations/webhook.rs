//! The webhook against a Standard Webhooks receiver.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::webhook::{Webhook, WebhookConfig};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::contract;

use super::{metrics, record, retry_after};

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
