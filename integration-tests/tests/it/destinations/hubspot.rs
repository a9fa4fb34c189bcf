//! HubSpot against its contract server.

use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::hubspot::{HubSpot, HubSpotConfig};
use sluice_destinations::{Action, Destination, Kind, OnDelete};
use sluice_integration_tests::contract;

use super::{indices, metrics, record, retry_after, with_previous};

use std::collections::BTreeSet;

use sluice_integration_tests::contract::hubspot::HubSpotState;

use crate::sync_modes::fixture::{sync, Case, Checked, TOKEN};

fn hubspot(base_url: &str, token: &str, multi_status: bool, zone: &str) -> HubSpot {
    hubspot_with(base_url, token, multi_status, zone, OnDelete::Skip)
}

fn hubspot_with(base_url: &str, token: &str, multi_status: bool, zone: &str, on_delete: OnDelete) -> HubSpot {
    HubSpot::new(&HubSpotConfig {
        base_url: base_url.into(),
        access_token: Secret::literal(token),
        object_type: "contacts".into(),
        id_property: "email".into(),
        id_field: None,
        max_inputs_per_request: 100,
        portal_time_zone: zone.into(),
        ten_secondly_backoff_ms: 10_000,
        multi_status,
        on_delete,
        timeout_ms: 5_000,
    },
        metrics::<HubSpot>(),
    )
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
    assert_eq!(error.throttle, Some("ten_secondly"));
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

#[tokio::test]
async fn hubspot_update_never_creates_and_create_never_updates() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    let known = server.seed(serde_json::json!({"email": "known@example.com", "plan": "free"}));
    let destination = hubspot_with(&url, "pat-1", true, "UTC", OnDelete::Delete);
    let update = [
        record(1, Action::Update, serde_json::json!({"email": "Known@Example.com", "plan": "pro"})),
        record(2, Action::Update, serde_json::json!({"email": "stranger@example.com", "plan": "pro"})),
    ];
    assert!(destination.send(&update).await.unwrap().is_empty(), "a record HubSpot does not hold is left alone, not refused");
    assert_eq!(server.contact("known@example.com").unwrap()["plan"], "pro");
    assert!(server.contact("stranger@example.com").is_none(), "update never creates");
    let sent = server.requests();
    assert_eq!(server.paths(), ["batch/read", "batch/update"]);
    assert_eq!(sent[0].body, serde_json::json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "known@example.com"}, {"id": "stranger@example.com"}]}));
    assert_eq!(sent[1].body["inputs"], serde_json::json!([{"id": known, "properties": {"email": "known@example.com", "plan": "pro"}, "objectWriteTraceId": "sluice.changes.customers/0/1"}]));

    let create = [
        record(3, Action::Create, serde_json::json!({"email": "known@example.com", "plan": "enterprise"})),
        record(4, Action::Create, serde_json::json!({"email": "new@example.com", "plan": "free"})),
    ];
    assert!(destination.send(&create).await.unwrap().is_empty());
    assert_eq!(server.contact("known@example.com").unwrap()["plan"], "pro", "create never changes an existing record");
    assert_eq!(server.contact("new@example.com").unwrap()["plan"], "free");
    assert_eq!(&server.paths()[2..], ["batch/read", "batch/create"]);
    assert_eq!(server.requests()[3].body["inputs"].as_array().unwrap().len(), 1, "only the record not found is created");
}

#[tokio::test]
async fn hubspot_deletes_look_up_record_ids_and_archive_them() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    let gone = server.seed(serde_json::json!({"email": "gone@example.com"}));
    server.seed(serde_json::json!({"email": "stays@example.com"}));
    let destination = hubspot_with(&url, "pat-1", true, "UTC", OnDelete::Delete);
    let batch = [
        record(1, Action::Delete, serde_json::json!({"email": "gone@example.com"})),
        record(2, Action::Delete, serde_json::json!({"email": "never-there@example.com"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty(), "a record HubSpot does not hold is already deleted");
    assert_eq!(server.emails(), ["stays@example.com"]);
    assert_eq!(*server.archived.lock().unwrap(), ["gone@example.com"]);
    assert_eq!(server.paths(), ["batch/read", "batch/archive"]);
    assert_eq!(server.requests()[1].body, serde_json::json!({"inputs": [{"id": gone}]}));
    // Again: nothing left to archive, so only the read goes out.
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert_eq!(server.paths(), ["batch/read", "batch/archive", "batch/read"]);
}

#[tokio::test]
async fn hubspot_a_throttled_read_is_retried_like_any_request() {
    let (url, server) = contract::hubspot::start("pat-1").await;
    server.seed(serde_json::json!({"email": "a@example.com"}));
    server.faults.push(contract::hubspot::Fault::TenSecondly);
    let destination = hubspot_with(&url, "pat-1", true, "UTC", OnDelete::Delete);
    let batch = [record(1, Action::Delete, serde_json::json!({"email": "a@example.com"}))];
    let error = destination.send(&batch).await.unwrap_err();
    assert_eq!((error.status, retry_after(&error)), (Some(429), Some(Duration::from_secs(10))));
    assert_eq!(server.paths(), ["batch/read"], "nothing archived after a refused read");
    assert!(destination.send(&batch).await.unwrap().is_empty());
    assert!(server.contact("a@example.com").is_none());
}

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

/// HubSpot in the four modes it honours: `update` holds Ada and Cy before the run, `create`
/// holds Cy (under other values).
pub(crate) async fn sync_mode_cases(_prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for mode in ["upsert", "update", "create", "mirror"] {
        let (url, server) = contract::hubspot::start(TOKEN).await;
        match mode {
            "update" => ["ada@example.com", "cy@example.com"].iter().for_each(|email| drop(server.seed(serde_json::json!({"email": email, "firstname": "Seeded", "plan": "seed"})))),
            "create" => drop(server.seed(serde_json::json!({"email": "cy@example.com", "firstname": "Seeded", "plan": "seed"}))),
            _ => {}
        }
        out.push(Case {
            name: format!("hubspot-{mode}"),
            vendor: Box::new(Checked(server, check_hubspot)),
            table: format!("[destinations.hubspot]\nbase_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}"),
            sync: sync(mode, r#"fields = { email = "email", firstname = "name", plan = "plan" }"#, true),
            keyed_by_email: true,
        });
    }
    out
}

/// HubSpot: `update` reads and updates only what exists (never `batch/create` or
/// `batch/upsert`), `create` reads and creates only what does not (never an update or an
/// upsert), `mirror` archives deleted rows by their looked-up ids, and revoked consent archives
/// (`on_delete` defaults to archive) except under `create`.
fn check_hubspot(name: &str, server: &HubSpotState) {
    let paths: BTreeSet<String> = server.paths().into_iter().collect();
    let archived: BTreeSet<String> = server.archived.lock().unwrap().iter().cloned().collect();
    let property = |email: &str, key: &str| server.contact(email).and_then(|c| c.get(key).and_then(|v| v.as_str()).map(str::to_string));
    let (emails, archive, allowed): (&[&str], &[&str], &[&str]) = match name {
        "hubspot-upsert" => (&["ada@example.com", "cy@example.com", "dee@example.com", "eve@example.com"], &["bob@example.com"], &["batch/upsert", "batch/read", "batch/archive"]),
        "hubspot-update" => (&["ada@example.com", "cy@example.com"], &[], &["batch/read", "batch/update"]),
        "hubspot-create" => (&["ada@example.com", "bob@example.com", "cy@example.com", "dee@example.com", "eve@example.com"], &[], &["batch/read", "batch/create"]),
        "hubspot-mirror" => (&["ada@example.com", "cy@example.com", "eve@example.com"], &["bob@example.com", "dee@example.com"], &["batch/upsert", "batch/read", "batch/archive"]),
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(server.emails(), emails, "{name}: the contacts");
    assert_eq!(archived, archive.iter().map(|e| e.to_string()).collect(), "{name}: archived");
    assert!(paths.iter().all(|p| allowed.contains(&p.as_str())), "{name}: only {allowed:?} went over the wire: {paths:?}");
    let (ada_name, ada_plan, cy_name) = match name {
        "hubspot-create" => ("Ada", "free", "Seeded"),
        _ => ("Ada L", "pro", "Cy"),
    };
    assert_eq!((property("ada@example.com", "firstname").as_deref(), property("ada@example.com", "plan").as_deref()), (Some(ada_name), Some(ada_plan)), "{name}: Ada");
    assert_eq!(property("cy@example.com", "firstname").as_deref(), Some(cy_name), "{name}: Cy");
}
