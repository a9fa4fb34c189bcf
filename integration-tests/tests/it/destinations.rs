//! Destination connectors against their vendors' contract servers (and Redis against the real
//! server from `ops/services.sh up`). Per destination: the success path, the throttle signal,
//! the partial-failure shape and the auth failure, each asserting what the server holds and the
//! `ErrorClass` the connector returned.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::config::{
    AudienceMode, BrazeConfig, BrazeIdentifier, BrazeMode, HubSpotConfig, MetaConfig, RedisConfig, RedisMode, SalesforceConfig, Secret,
    TokenPlacement, UnsupportedDelete, WebhookConfig,
};
use sluice_core::ErrorClass;
use sluice_destinations::{Action, DeliveryError, Destination, OutboundRecord, RecordFailure};
use sluice_integration_tests::contract;
use sluice_integration_tests::unique;

// ---- fixtures -----------------------------------------------------------------------------

fn record(n: u32, action: Action, fields: serde_json::Value) -> OutboundRecord {
    OutboundRecord {
        id: format!("sluice.changes.customers/0/{n}"),
        model: "customers".into(),
        action,
        op: if action == Action::Delete { "d".into() } else { "u".into() },
        key: serde_json::json!({ "id": n }).as_object().unwrap().clone(),
        fields: fields.as_object().unwrap().clone(),
        previous: None,
        ts_ms: 1_700_000_000_000,
    }
}

fn with_previous(mut record: OutboundRecord, previous: serde_json::Value) -> OutboundRecord {
    record.previous = Some(previous.as_object().unwrap().clone());
    record
}

fn indices(failures: &[RecordFailure]) -> Vec<usize> {
    failures.iter().map(|f| f.index).collect()
}

fn retry_after(error: &DeliveryError) -> Option<Duration> {
    match error.class {
        ErrorClass::Retryable { retry_after } => retry_after,
        ref other => panic!("expected retryable, got {other:?}: {}", error.message),
    }
}

// ---- webhook ------------------------------------------------------------------------------

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(url: &str, secret: &str) -> sluice_destinations::webhook::Webhook {
    sluice_destinations::webhook::Webhook::new(&WebhookConfig {
        url: url.into(),
        headers: BTreeMap::new(),
        timeout_ms: 5_000,
        signing_secret: Some(Secret::literal(secret)),
    })
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
    assert_eq!(retry_after(&hook.send(&batch).await.unwrap_err()), Some(Duration::from_secs(7)));
    assert_eq!(retry_after(&hook.send(&batch).await.unwrap_err()), None);
    let refused = hook.send(&batch).await.unwrap_err();
    assert_eq!((refused.class, refused.status), (ErrorClass::Permanent, Some(422)));
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

// ---- redis (real server) ------------------------------------------------------------------

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or a failure saying how to start it.
async fn require_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("redis url");
    match tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_tokio_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {} ({error}). Start it with `ops/redis.sh start` (or `ops/services.sh up`), \
             or point SLUICE_TEST_REDIS_URL at a server.",
            redis_url()
        ),
        Err(_) => panic!("Redis at {} did not answer within 5 s. Start it with `ops/services.sh up`.", redis_url()),
    }
}

fn redis_destination(url: &str, mode: RedisMode, prefix: &str) -> sluice_destinations::redis::Redis {
    sluice_destinations::redis::Redis::new(&RedisConfig {
        url: Secret::literal(url),
        mode,
        key_template: format!("{prefix}:{{model}}:{{key}}"),
        set_key: format!("{prefix}:suppressed"),
        member_field: "email".into(),
        ttl_secs: Some(600),
        timeout_ms: 3_000,
    })
    .unwrap()
}

async fn cleanup(connection: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(connection).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(connection).await.unwrap();
    }
}

#[tokio::test]
async fn redis_hash_mode_writes_fields_clears_nulls_and_deletes() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_hash");
    let destination = redis_destination(&redis_url(), RedisMode::Hash, &prefix);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "a@x.com", "ltv": 37.5, "tier": "gold"})),
        record(2, Action::Upsert, serde_json::json!({"email": "b@x.com", "ltv": 1})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let one: BTreeMap<String, String> = redis::cmd("HGETALL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert_eq!(one, BTreeMap::from([("email".into(), "a@x.com".into()), ("ltv".into(), "37.5".into()), ("tier".into(), "gold".into())]));
    let ttl: i64 = redis::cmd("TTL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");

    let batch = [record(1, Action::Upsert, serde_json::json!({"tier": null, "ltv": 40})), record(2, Action::Delete, serde_json::json!({}))];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let one: BTreeMap<String, String> = redis::cmd("HGETALL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert_eq!(one, BTreeMap::from([("email".into(), "a@x.com".into()), ("ltv".into(), "40".into())]));
    let exists: i64 = redis::cmd("EXISTS").arg(format!("{prefix}:customers:2")).query_async(&mut connection).await.unwrap();
    assert_eq!(exists, 0, "the delete removed the hash");
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_set_mode_adds_moves_and_removes_members_with_a_ttl() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_set");
    let destination = redis_destination(&redis_url(), RedisMode::Set, &prefix);
    let set = format!("{prefix}:suppressed");
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"})), record(2, Action::Upsert, serde_json::json!({"email": "b@x.com"}))];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let batch = [
        with_previous(record(1, Action::Upsert, serde_json::json!({"email": "a2@x.com"})), serde_json::json!({"email": "a@x.com"})),
        with_previous(record(2, Action::Delete, serde_json::json!({})), serde_json::json!({"email": "b@x.com"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query_async(&mut connection).await.unwrap();
    members.sort();
    assert_eq!(members, ["a2@x.com"], "old identifier moved, deleted member removed");
    let ttl: i64 = redis::cmd("TTL").arg(&set).query_async(&mut connection).await.unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_wrongtype_refuses_only_that_record() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_wrongtype");
    let destination = redis_destination(&redis_url(), RedisMode::Hash, &prefix);
    let _: () = redis::cmd("SET").arg(format!("{prefix}:customers:2")).arg("a string").query_async(&mut connection).await.unwrap();
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"})),
        record(2, Action::Upsert, serde_json::json!({"email": "b@x.com"})),
        record(3, Action::Upsert, serde_json::json!({"email": "c@x.com"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1]);
    assert_eq!(failures[0].class, ErrorClass::Permanent);
    assert!(failures[0].message.contains("WRONGTYPE"), "{}", failures[0].message);
    for n in [1, 3] {
        let email: Option<String> = redis::cmd("HGET").arg(format!("{prefix}:customers:{n}")).arg("email").query_async(&mut connection).await.unwrap();
        assert!(email.is_some(), "record {n} applied despite its neighbour's failure");
    }
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_unreachable_is_retryable_and_bad_credentials_are_fatal() {
    require_redis().await;
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"}))];
    let down = redis_destination("redis://127.0.0.1:1", RedisMode::Hash, "unused");
    assert_eq!(retry_after(&down.send(&batch).await.unwrap_err()), None);
    let address = redis_url().trim_start_matches("redis://").to_string();
    let wrong = redis_destination(&format!("redis://{}:wrong@{address}", unique("nouser")), RedisMode::Hash, "unused");
    let error = wrong.send(&batch).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Fatal, "{}", error.message);
    assert!(!error.message.contains("wrong"), "the password never appears: {}", error.message);
}

// ---- HubSpot ------------------------------------------------------------------------------

fn hubspot(base_url: &str, token: &str, multi_status: bool, zone: &str) -> sluice_destinations::hubspot::HubSpot {
    sluice_destinations::hubspot::HubSpot::new(&HubSpotConfig {
        base_url: base_url.into(),
        access_token: Secret::literal(token),
        object_type: "contacts".into(),
        id_property: "email".into(),
        id_field: None,
        max_inputs_per_request: 100,
        portal_time_zone: zone.into(),
        ten_secondly_backoff_ms: 10_000,
        multi_status,
        on_delete: UnsupportedDelete::Skip,
        timeout_ms: 5_000,
    })
    .unwrap()
}

#[tokio::test]
async fn hubspot_upserts_by_email_and_renames_on_identifier_change() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    let destination = hubspot(&url, "pat-1", true, "UTC");
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": " Jane@Example.com", "firstname": "Jane", "ltv": 37.5})),
        record(2, Action::Upsert, serde_json::json!({"email": "old@example.com", "firstname": "Bob"})),
        record(3, Action::Delete, serde_json::json!({})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let jane = server.contact("jane@example.com").expect("jane created under her lowercased email");
    assert_eq!((jane["firstname"].as_str(), jane["ltv"].as_str()), (Some("Jane"), Some("37.5")));
    let sent = &server.requests()[0].body["inputs"];
    assert_eq!(sent.as_array().unwrap().len(), 2, "the delete is skipped, not sent");
    assert_eq!(sent[0]["idProperty"], "email");
    assert_eq!(sent[0]["objectWriteTraceId"], "sluice.changes.customers/0/1");

    let renamed = with_previous(record(2, Action::Upsert, serde_json::json!({"email": "new@example.com", "firstname": "Bob"})), serde_json::json!({"email": "old@example.com"}));
    assert!(destination.send(&[renamed]).await.unwrap().is_empty());
    assert!(server.contact("old@example.com").is_none(), "no record left under the old email");
    assert_eq!(server.contact("new@example.com").unwrap()["firstname"], "Bob");
}

#[tokio::test]
async fn hubspot_ten_secondly_limit_is_retried_after_the_window() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    *server.ten_secondly_max.lock().unwrap() = 1;
    let destination = hubspot(&url, "pat-1", true, "UTC");
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@example.com"}))];
    destination.send(&batch).await.unwrap();
    let error = destination.send(&batch).await.unwrap_err();
    assert_eq!(error.status, Some(429));
    assert_eq!(retry_after(&error), Some(Duration::from_secs(10)), "X-HubSpot-RateLimit-Interval-Milliseconds");
    assert!(error.excerpt.contains("TEN_SECONDLY_ROLLING"));
}

#[tokio::test]
async fn hubspot_daily_limit_pauses_until_midnight_in_the_portal_zone() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    *server.daily_max.lock().unwrap() = 0;
    let destination = hubspot(&url, "pat-1", true, "America/New_York");
    let before = chrono::Utc::now();
    let error = destination.send(&[record(1, Action::Upsert, serde_json::json!({"email": "a@example.com"}))]).await.unwrap_err();
    let wait = retry_after(&error).expect("a daily limit names its reset");
    let expected = sluice_destinations::hubspot::until_next_midnight(before, "America/New_York".parse().unwrap());
    assert!(expected.saturating_sub(wait) <= Duration::from_secs(5) && wait <= expected, "wait {wait:?}, expected about {expected:?}");
    assert_ne!(error.class, ErrorClass::Permanent, "a spent daily allowance is never dead-lettered");
}

#[tokio::test]
async fn hubspot_multi_status_refuses_only_the_invalid_inputs() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    let destination = hubspot(&url, "pat-1", true, "UTC");
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "a@example.com"})),
        record(2, Action::Upsert, serde_json::json!({"email": "not-an-email"})),
        record(3, Action::Upsert, serde_json::json!({"email": "c@example.com"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1]);
    assert_eq!((failures[0].class.clone(), failures[0].status), (ErrorClass::Permanent, Some(207)));
    assert!(failures[0].excerpt.contains("INVALID_EMAIL"));
    assert!(server.contact("a@example.com").is_some() && server.contact("c@example.com").is_some());

    // Without trace ids, HubSpot refuses the whole batch: the sink then isolates the record.
    let whole = hubspot(&url, "pat-1", false, "UTC");
    let error = whole.send(&batch).await.unwrap_err();
    assert_eq!((error.class, error.status), (ErrorClass::Permanent, Some(400)));
}

#[tokio::test]
async fn hubspot_bad_token_is_fatal_and_outages_retry() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@example.com"}))];
    let error = hubspot(&url, "expired", true, "UTC").send(&batch).await.unwrap_err();
    assert_eq!((error.class, error.status), (ErrorClass::Fatal, Some(401)));
    server.faults.push(contract::hubspot::Fault::Status(502));
    server.faults.push(contract::hubspot::Fault::Status(423));
    let destination = hubspot(&url, "pat-1", true, "UTC");
    assert_eq!(retry_after(&destination.send(&batch).await.unwrap_err()), None);
    assert_eq!(retry_after(&destination.send(&batch).await.unwrap_err()), Some(Duration::from_secs(2)));
    assert!(server.contact("a@example.com").is_none());
}

// ---- Braze --------------------------------------------------------------------------------

fn braze(base_url: &str, key: &str, mode: BrazeMode) -> sluice_destinations::braze::Braze {
    sluice_destinations::braze::Braze::new(&BrazeConfig {
        base_url: base_url.into(),
        api_key: Secret::literal(key),
        identifier: BrazeIdentifier::ExternalId,
        identifier_field: None,
        mode,
        max_objects_per_request: 75,
        unsubscribe_email: true,
        subscription_group_ids: vec!["sg-marketing".into()],
        timeout_ms: 5_000,
    })
    .unwrap()
}

#[tokio::test]
async fn braze_writes_attributes_and_unsubscribes_on_delete() {
    let (url, server) = contract::braze::start("key-1").await;
    let destination = braze(&url, "key-1", BrazeMode::Attributes);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"external_id": "u1", "email": "a@example.com", "plan": "pro"})),
        record(2, Action::Upsert, serde_json::json!({"external_id": "u2", "plan": "free"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert_eq!(server.user("u1").unwrap()["plan"], "pro");
    let leaving = with_previous(record(2, Action::Delete, serde_json::json!({})), serde_json::json!({"external_id": "u2"}));
    assert!(destination.send(&[leaving]).await.unwrap().is_empty());
    let u2 = server.user("u2").unwrap();
    assert_eq!(u2["email_subscribe"], "unsubscribed");
    assert_eq!(u2["subscription_groups"], serde_json::json!([{"subscription_group_id": "sg-marketing", "subscription_state": "unsubscribed"}]));
    assert_eq!(u2["plan"], "free", "a delete never wipes attributes");
    assert!(server.requests().iter().all(|r| r.body.get("events").is_none() && r.body.get("purchases").is_none()));
}

#[tokio::test]
async fn braze_suppression_mode_unsubscribes_a_buyer() {
    let (url, server) = contract::braze::start("key-1").await;
    braze(&url, "key-1", BrazeMode::Attributes).send(&[record(1, Action::Upsert, serde_json::json!({"external_id": "u1"}))]).await.unwrap();
    let destination = braze(&url, "key-1", BrazeMode::Suppression);
    assert!(destination.send(&[record(1, Action::Upsert, serde_json::json!({"external_id": "u1"}))]).await.unwrap().is_empty());
    assert_eq!(server.user("u1").unwrap()["email_subscribe"], "unsubscribed");
}

#[tokio::test]
async fn braze_rate_limit_waits_for_the_reset() {
    let (url, server) = contract::braze::start("key-1").await;
    server.faults.push(contract::braze::Fault::RateLimited { reset_in_secs: 3 });
    let destination = braze(&url, "key-1", BrazeMode::Attributes);
    let batch = [record(1, Action::Upsert, serde_json::json!({"external_id": "u1"}))];
    let error = destination.send(&batch).await.unwrap_err();
    let wait = retry_after(&error).expect("X-RateLimit-Reset");
    assert!((Duration::from_secs(2)..=Duration::from_secs(3)).contains(&wait), "{wait:?}");
    server.faults.push(contract::braze::Fault::Status(503));
    assert_eq!(retry_after(&destination.send(&batch).await.unwrap_err()), None);
    assert!(server.user("u1").is_none());
}

#[tokio::test]
async fn braze_object_errors_refuse_only_those_records() {
    let (url, server) = contract::braze::start("key-1").await;
    let destination = braze(&url, "key-1", BrazeMode::Attributes);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"external_id": "u1", "email": "a@example.com"})),
        record(2, Action::Upsert, serde_json::json!({"external_id": "u2", "email": "bob-at-example"})),
        record(3, Action::Upsert, serde_json::json!({"plan": "no identifier"})),
        record(4, Action::Upsert, serde_json::json!({"external_id": "u4"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1, 2], "the server's error for object 1 and the missing identifier");
    assert!(failures.iter().all(|f| f.class == ErrorClass::Permanent));
    assert_eq!(failures[0].status, Some(201));
    assert!(server.user("u1").is_some() && server.user("u4").is_some() && server.user("u2").is_none());
}

#[tokio::test]
async fn braze_bad_key_is_fatal() {
    let (url, _server) = contract::braze::start("key-1").await;
    let error = braze(&url, "revoked", BrazeMode::Attributes).send(&[record(1, Action::Upsert, serde_json::json!({"external_id": "u1"}))]).await.unwrap_err();
    assert_eq!((error.class, error.status), (ErrorClass::Fatal, Some(401)));
}

// ---- Meta Custom Audiences ----------------------------------------------------------------

const JANE: &str = "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d"; // jane@example.com
const NEW: &str = "f0030501023327437b06e5c6f87df7871b8e704ae608d1d0b7b24fdd2a06c716"; // new@example.com
const OLD: &str = "7eaa9a1d93cc8e36287f79472892b6aa024d9cebefe3669644de33a5354a29b8"; // old@example.com
const BOB: &str = "5ff860bf1190596c7188ab851db691f0f3169c453936e9e1eba2f9a47f7a0018"; // bob@example.com
const BAD: &str = "3ac772d4a33b2d83c03a803f9e9083b872ebe35dec87ab71dcdfbf1c318c660a"; // bad@example.com
const PHONE: &str = "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"; // 16505551234

fn meta(base_url: &str, token: &str, audience: &str, mode: AudienceMode) -> sluice_destinations::meta::Meta {
    meta_with(base_url, token, audience, mode, TokenPlacement::Query)
}

fn meta_with(base_url: &str, token: &str, audience: &str, mode: AudienceMode, token_placement: TokenPlacement) -> sluice_destinations::meta::Meta {
    sluice_destinations::meta::Meta::new(&MetaConfig {
        base_url: base_url.into(),
        api_version: "v21.0".into(),
        access_token: Secret::literal(token),
        token_placement,
        audience_id: audience.into(),
        identifiers: BTreeMap::from([("email".to_string(), "EMAIL".to_string()), ("phone".to_string(), "PHONE".to_string())]),
        mode,
        max_rows_per_request: 10_000,
        timeout_ms: 5_000,
    })
    .unwrap()
}

#[tokio::test]
async fn meta_adds_removes_and_moves_hashed_members() {
    let (url, server) = contract::meta::start("EAAB-token", "23851234567890").await;
    let destination = meta(&url, "EAAB-token", "23851234567890", AudienceMode::Audience);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": " Jane@Example.com ", "phone": "+1 (650) 555-1234"})),
        record(2, Action::Upsert, serde_json::json!({"email": "old@example.com", "phone": null})),
        record(3, Action::Upsert, serde_json::json!({"email": "bob@example.com", "phone": null})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert!(server.has_member("EMAIL", JANE) && server.has_member("PHONE", PHONE) && server.has_member("EMAIL", OLD));
    let add = &server.requests()[0];
    assert_eq!(add.method, "POST");
    assert_eq!(add.body["payload"]["schema"], serde_json::json!(["EMAIL", "PHONE"]));
    assert_eq!(add.body["payload"]["data"][0], serde_json::json!([JANE, PHONE]));
    assert!(add.query.as_deref().unwrap().contains("access_token=EAAB-token"));
    assert_eq!(add.body["session"]["batch_seq"], 1);

    let batch = [
        with_previous(record(2, Action::Upsert, serde_json::json!({"email": "new@example.com", "phone": null})), serde_json::json!({"email": "old@example.com"})),
        with_previous(record(3, Action::Delete, serde_json::json!({})), serde_json::json!({"email": "bob@example.com"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert!(server.has_member("EMAIL", NEW), "new identifier added");
    assert!(!server.has_member("EMAIL", OLD), "old identifier removed");
    assert!(!server.has_member("EMAIL", BOB), "deleted row removed");
    assert_eq!(server.member_count(), 2);
    let methods: Vec<String> = server.requests()[1..].iter().map(|r| r.method.clone()).collect();
    assert_eq!(methods, ["DELETE", "POST"], "one remove and one add request for the batch");
}

#[tokio::test]
async fn meta_accepts_a_bearer_token_and_the_form_encoding() {
    let (url, server) = contract::meta::start("EAAB-token", "1").await;
    let destination = meta_with(&url, "EAAB-token", "1", AudienceMode::Audience, TokenPlacement::Bearer);
    assert!(destination.send(&[record(1, Action::Upsert, serde_json::json!({"email": "jane@example.com"}))]).await.unwrap().is_empty());
    assert!(server.has_member("EMAIL", JANE));
    assert_eq!(server.requests()[0].authorization.as_deref(), Some("Bearer EAAB-token"));
    assert!(server.requests()[0].query.is_none(), "the token is not in the URL");

    // The reference's own example: form fields, payload as url-encoded JSON.
    let payload = format!(r#"{{"schema":"EMAIL_SHA256","data":["{BOB}"]}}"#);
    let answer: serde_json::Value = post_form(&format!("{url}/v21.0/1/users?access_token=EAAB-token"), &payload).await;
    assert_eq!((answer["num_received"].as_u64(), answer["num_invalid_entries"].as_u64()), (Some(1), Some(0)));
    assert!(server.has_member("EMAIL_SHA256", BOB));
}

/// POST `payload=<json>&session=<json>` form-encoded, as the reference's curl example does.
async fn post_form(url: &str, payload: &str) -> serde_json::Value {
    let encode = |s: &str| s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>();
    let body = format!("payload={}&session={}", encode(payload), encode(r#"{"session_id":1,"batch_seq":1,"last_batch_flag":true}"#));
    let client = tokio::net::TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap()).await.unwrap();
    let path = &url[url.find("/v21.0").unwrap()..];
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = client;
    client.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    let json_start = response.find("\r\n\r\n").unwrap() + 4;
    serde_json::from_str(&response[json_start..]).unwrap_or_else(|e| panic!("{e}: {response}"))
}

#[tokio::test]
async fn meta_suppression_mode_removes_buyers() {
    let (url, server) = contract::meta::start("EAAB-token", "1").await;
    meta(&url, "EAAB-token", "1", AudienceMode::Audience).send(&[record(1, Action::Upsert, serde_json::json!({"email": "jane@example.com"}))]).await.unwrap();
    let suppress = meta(&url, "EAAB-token", "1", AudienceMode::Suppression);
    assert!(suppress.send(&[record(9, Action::Upsert, serde_json::json!({"email": "jane@example.com"}))]).await.unwrap().is_empty());
    assert_eq!(server.member_count(), 0);
}

#[tokio::test]
async fn meta_throttle_codes_in_400_bodies_are_retryable() {
    let (url, server) = contract::meta::start("EAAB-token", "1").await;
    let destination = meta(&url, "EAAB-token", "1", AudienceMode::Audience);
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "jane@example.com"}))];
    for (code, subcode) in [(80003, None), (17, Some(2446079)), (613, Some(1487742)), (4, None), (32, None)] {
        server.faults.push(contract::meta::Fault::Error { status: 400, code, subcode, regain_minutes: 2 });
        let error = destination.send(&batch).await.unwrap_err();
        assert_eq!(error.status, Some(400));
        assert_eq!(retry_after(&error), Some(Duration::from_secs(120)), "code {code}: estimated_time_to_regain_access");
    }
    assert_eq!(server.member_count(), 0);
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert!(server.has_member("EMAIL", JANE));
}

#[tokio::test]
async fn meta_invalid_entries_refuse_the_records_they_name() {
    let (url, server) = contract::meta::start("EAAB-token", "1").await;
    server.rejected_values.lock().unwrap().insert(BAD.into(), "Email domain not accepted".into());
    let destination = meta(&url, "EAAB-token", "1", AudienceMode::Audience);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "jane@example.com"})),
        record(2, Action::Upsert, serde_json::json!({"email": "bad@example.com"})),
        record(3, Action::Upsert, serde_json::json!({"email": "not an email"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1, 2], "Meta's sample names record 1; record 2 has no usable identifier");
    assert!(failures.iter().all(|f| f.class == ErrorClass::Permanent));
    assert!(failures[0].message.contains("Email domain not accepted"));
    assert!(server.has_member("EMAIL", JANE) && !server.has_member("EMAIL", BAD));
    assert_eq!(server.requests()[0].body["payload"]["data"].as_array().unwrap().len(), 2, "the unusable row is never sent");
}

#[tokio::test]
async fn meta_invalid_token_and_unknown_audience_are_fatal() {
    let (url, server) = contract::meta::start("EAAB-token", "1").await;
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "jane@example.com"}))];
    let error = meta(&url, "expired", "1", AudienceMode::Audience).send(&batch).await.unwrap_err();
    assert_eq!((error.class.clone(), error.status), (ErrorClass::Fatal, Some(400)), "code 190 comes with HTTP 400");
    assert!(error.message.contains("190"));
    let error = meta(&url, "EAAB-token", "999", AudienceMode::Audience).send(&batch).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Fatal, "{}", error.message);
    server.faults.push(contract::meta::Fault::Error { status: 400, code: 100, subcode: None, regain_minutes: 0 });
    let error = meta(&url, "EAAB-token", "1", AudienceMode::Audience).send(&batch).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent, "an invalid parameter refuses the request");
}

// ---- Salesforce ---------------------------------------------------------------------------

fn salesforce(base_url: &str, token: &str) -> sluice_destinations::salesforce::Salesforce {
    sluice_destinations::salesforce::Salesforce::new(&SalesforceConfig {
        instance_url: base_url.into(),
        access_token: Secret::literal(token),
        api_version: "v62.0".into(),
        sobject: "Contact".into(),
        external_id_field: "Warehouse_Id__c".into(),
        max_records_per_request: 200,
        retryable_error_codes: vec!["UNABLE_TO_LOCK_ROW".into()],
        allocation_exhausted_wait_secs: 3600,
        on_delete: UnsupportedDelete::Reject,
        timeout_ms: 5_000,
    })
    .unwrap()
}

#[tokio::test]
async fn salesforce_upserts_by_external_id() {
    let (url, server) = contract::salesforce::start("00D-token").await;
    let destination = salesforce(&url, "00D-token");
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe", "Email": "jane@example.com"})),
        record(2, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-2", "LastName": "Roe"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert_eq!(server.record("W-1").unwrap()["Email"], "jane@example.com");
    let update = [record(1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "Email": null}))];
    assert!(destination.send(&update).await.unwrap().is_empty());
    assert_eq!(server.record("W-1").unwrap()["Email"], serde_json::Value::Null, "null clears the field");
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/composite/sobjects/Contact/Warehouse_Id__c");
    assert_eq!(sent.body["allOrNone"], false);
    assert_eq!(sent.body["records"][0]["attributes"]["type"], "Contact");
    let deleted = destination.send(&[record(2, Action::Delete, serde_json::json!({}))]).await.unwrap();
    assert_eq!(indices(&deleted), [0], "on_delete = reject dead-letters deletes");
}

#[tokio::test]
async fn salesforce_request_limit_is_throttling_not_auth() {
    let (url, server) = contract::salesforce::start("00D-token").await;
    let destination = salesforce(&url, "00D-token");
    let batch = [record(1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe"}))];
    server.faults.push(contract::salesforce::Fault::ConcurrentLimit);
    let error = destination.send(&batch).await.unwrap_err();
    assert_eq!((error.status, retry_after(&error)), (Some(403), None), "concurrency: backoff decides");
    *server.allocation.lock().unwrap() = (5_000, 5_000);
    let error = destination.send(&batch).await.unwrap_err();
    assert_eq!(retry_after(&error), Some(Duration::from_secs(3600)), "allocation spent: a long pause");
    assert!(error.excerpt.contains("REQUEST_LIMIT_EXCEEDED"));
    assert!(server.record("W-1").is_none());
}

#[tokio::test]
async fn salesforce_per_record_results_refuse_or_retry_only_those_records() {
    let (url, server) = contract::salesforce::start("00D-token").await;
    server.locked.lock().unwrap().insert("W-3".into());
    let destination = salesforce(&url, "00D-token");
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe"})),
        record(2, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-2", "Email": "no-lastname@example.com"})),
        record(3, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-3", "LastName": "Locked"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1, 2]);
    assert_eq!(failures[0].class, ErrorClass::Permanent);
    assert!(failures[0].message.contains("REQUIRED_FIELD_MISSING"));
    assert_eq!(failures[1].class, ErrorClass::Retryable { retry_after: None }, "UNABLE_TO_LOCK_ROW is retried");
    assert!(server.record("W-1").is_some() && server.record("W-2").is_none() && server.record("W-3").is_none());
}

#[tokio::test]
async fn salesforce_invalid_session_is_fatal() {
    let (url, _server) = contract::salesforce::start("00D-token").await;
    let error = salesforce(&url, "expired").send(&[record(1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe"}))]).await.unwrap_err();
    assert_eq!((error.class, error.status), (ErrorClass::Fatal, Some(401)));
    assert!(error.excerpt.contains("INVALID_SESSION_ID"));
}
