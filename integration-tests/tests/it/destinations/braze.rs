//! Braze against its contract server.

use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::braze::{Braze, BrazeConfig, BrazeIdentifier, BrazeMode};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::contract;

use super::{indices, metrics, record, retry_after, with_previous};

use std::collections::BTreeMap;

use sluice_integration_tests::contract::braze::BrazeState;

use crate::sync_modes::fixture::{sync, Case, Checked, TOKEN};

fn braze(base_url: &str, key: &str, mode: BrazeMode) -> Braze {
    Braze::new(&BrazeConfig {
        base_url: base_url.into(),
        api_key: Secret::literal(key),
        identifier: BrazeIdentifier::ExternalId,
        identifier_field: None,
        mode,
        max_objects_per_request: 75,
        unsubscribe_email: true,
        subscription_group_ids: vec!["sg-marketing".into()],
        timeout_ms: 5_000,
    },
        metrics::<Braze>(),
    )
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
    assert_eq!(error.throttle, Some("http_429"));
    server.faults.push(contract::braze::Fault::Status(503));
    let unavailable = destination.send(&batch).await.unwrap_err();
    assert_eq!((retry_after(&unavailable), unavailable.throttle), (None, None), "a 503 is a failure, not a throttle");
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

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

/// Braze users are keyed by email; `update` holds Ada and Cy, suppression lists hold
/// everyone subscribed (and Fay, who never buys).
pub(crate) async fn sync_mode_cases(_prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for (mode, braze_mode) in [("upsert", "attributes"), ("update", "attributes"), ("mirror", "attributes"), ("upsert", "suppression"), ("update", "suppression")] {
        let (url, server) = contract::braze::start(TOKEN).await;
        let seeded: &[&str] = match (mode, braze_mode) {
            ("update", "attributes") => &["ada@example.com", "cy@example.com"],
            (_, "suppression") => &["ada@example.com", "bob@example.com", "cy@example.com", "dee@example.com", "eve@example.com", "fay@example.com"],
            _ => &[],
        };
        for email in seeded {
            let user = serde_json::json!({"email": email, "first_name": "Seeded", "email_subscribe": "subscribed"});
            server.users.lock().unwrap().insert(email.to_string(), user.as_object().unwrap().clone());
        }
        let suppression = braze_mode == "suppression";
        out.push(Case {
            name: if suppression { format!("braze-suppression-{mode}") } else { format!("braze-{mode}") },
            vendor: Box::new(Checked(server, check_braze)),
            table: format!("[destinations.braze]\nbase_url = \"{url}\"\napi_key = {{ env = \"SLUICE_MODES_TOKEN\" }}\nidentifier = \"email\"\nmode = \"{braze_mode}\""),
            sync: sync(mode, r#"fields = { email = "email", first_name = "name", plan = "plan" }"#, !suppression),
            keyed_by_email: true,
        });
    }
    out
}

/// Braze: attributes (a delete or revoked consent unsubscribes, never deletes a user);
/// `update` never creates a user; a suppression list unsubscribes every row present and
/// nobody else.
fn check_braze(name: &str, server: &BrazeState) {
    let users: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = server.users.lock().unwrap().clone().into_iter().collect();
    let emails: Vec<&str> = users.keys().map(String::as_str).collect();
    let subscription = |email: &str| users[email].get("email_subscribe").and_then(|v| v.as_str()).unwrap_or("subscribed").to_string();
    let unsubscribed: Vec<&str> = emails.iter().copied().filter(|e| subscription(e) == "unsubscribed").collect();
    let all = ["ada@example.com", "bob@example.com", "cy@example.com", "dee@example.com", "eve@example.com"];
    let (expected_users, expected_unsubscribed): (Vec<&str>, Vec<&str>) = match name {
        "braze-upsert" => (all.to_vec(), vec!["bob@example.com"]),
        "braze-update" => (vec!["ada@example.com", "cy@example.com"], vec![]),
        "braze-mirror" => (all.to_vec(), vec!["bob@example.com", "dee@example.com"]),
        "braze-suppression-upsert" | "braze-suppression-update" => ([&all[..], &["fay@example.com"]].concat(), all.to_vec()),
        other => panic!("no expectation for {other}"),
    };
    assert_eq!((emails, unsubscribed), (expected_users, expected_unsubscribed), "{name}: users, and who is unsubscribed");
    if !name.contains("suppression") {
        assert_eq!(users["ada@example.com"]["plan"], "pro", "{name}: Ada updated");
    }
    if name == "braze-update" {
        let objects: Vec<serde_json::Value> = server.requests().iter().flat_map(|r| r.body["attributes"].as_array().cloned().unwrap_or_default()).collect();
        assert!(objects.iter().all(|o| o["_update_existing_only"] == true), "{name}: update never creates a user: {objects:?}");
    }
}
