//! Salesforce against its contract server.

use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::salesforce::{Salesforce, SalesforceConfig};
use sluice_destinations::{Action, Destination, Kind, OnDelete};
use sluice_integration_tests::contract;

use super::{indices, metrics, record, retry_after};


use sluice_integration_tests::contract::salesforce::SalesforceState;

use crate::sync_modes::fixture::{sync, Case, Checked, TOKEN};

fn salesforce(base_url: &str, token: &str) -> Salesforce {
    salesforce_with(base_url, token, OnDelete::Reject)
}

fn salesforce_with(base_url: &str, token: &str, on_delete: OnDelete) -> Salesforce {
    Salesforce::new(&SalesforceConfig {
        instance_url: base_url.into(),
        access_token: Secret::literal(token),
        api_version: "v62.0".into(),
        sobject: "Contact".into(),
        external_id_field: "Warehouse_Id__c".into(),
        max_records_per_request: 200,
        retryable_error_codes: vec!["UNABLE_TO_LOCK_ROW".into()],
        allocation_exhausted_wait_secs: 3600,
        on_delete,
        timeout_ms: 5_000,
    },
        metrics::<Salesforce>(),
    )
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
    assert_eq!(error.throttle, Some("request_limit_exceeded"), "a throttle: the sink retries it without spending the budget");
    *server.allocation.lock().unwrap() = (5_000, 5_000);
    let error = destination.send(&batch).await.unwrap_err();
    assert_eq!(retry_after(&error), Some(Duration::from_secs(3600)), "allocation spent: a long pause");
    assert_eq!(error.throttle, Some("request_limit_exceeded"));
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

#[tokio::test]
async fn salesforce_deletes_the_ids_a_query_finds_by_external_id() {
    let (url, server) = contract::salesforce::start("00D-token").await;
    let destination = salesforce_with(&url, "00D-token", OnDelete::Delete);
    let upserts: Vec<_> = ["W-1", "W-2", "O'Hara"]
        .iter()
        .enumerate()
        .map(|(i, w)| record(i as u32 + 1, Action::Upsert, serde_json::json!({"Warehouse_Id__c": w, "LastName": "Doe"})))
        .collect();
    assert!(destination.send(&upserts).await.unwrap().is_empty());
    server.undeletable.lock().unwrap().insert("W-2".into());
    let deletes = [
        record(1, Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-1"})),
        record(2, Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-2"})),
        record(3, Action::Delete, serde_json::json!({"Warehouse_Id__c": "O'Hara"})),
        record(4, Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-404"})),
    ];
    let failures = destination.send(&deletes).await.unwrap();
    assert_eq!(indices(&failures), [1], "only the record Salesforce refused to delete");
    assert_eq!(failures[0].class, ErrorClass::Permanent);
    assert!(failures[0].message.contains("DELETE_FAILED"), "{}", failures[0].message);
    assert_eq!(server.external_ids(), ["W-2"]);
    assert_eq!(server.deleted(), ["W-1", "O'Hara"]);
    let sent = server.requests();
    let query = &sent[1];
    assert_eq!((query.method.as_str(), query.path.as_str()), ("GET", "/query"));
    assert_eq!(
        query.query.as_deref(),
        Some("SELECT Id, Warehouse_Id__c FROM Contact WHERE Warehouse_Id__c IN ('W-1', 'W-2', 'O\\'Hara', 'W-404')"),
        "quoted as SOQL literals"
    );
    assert_eq!((sent[2].method.as_str(), sent[2].path.as_str()), ("DELETE", "/composite/sobjects"));
    assert!(sent[2].query.as_deref().unwrap().contains("allOrNone=false"));
    // Again: the deleted are not found any more, W-2 still refuses.
    let again = destination.send(&deletes).await.unwrap();
    assert_eq!(indices(&again), [1]);
    assert_eq!(server.requests().len(), 5, "a query, then a delete of the one id it found");
}

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

/// Salesforce in the two modes it honours.
pub(crate) async fn sync_mode_cases(_prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for mode in ["upsert", "mirror"] {
        let (url, server) = contract::salesforce::start(TOKEN).await;
        out.push(Case {
            name: format!("salesforce-{mode}"),
            vendor: Box::new(Checked(server, check_salesforce)),
            table: format!(
                "[destinations.salesforce]\ninstance_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}\nsobject = \"Contact\"\nexternal_id_field = \"Warehouse_Id__c\""
            ),
            sync: sync(mode, r#"fields = { Warehouse_Id__c = { column = "id", type = "string" }, LastName = "name", Email = "email", Plan__c = "plan" }"#, true),
            keyed_by_email: false,
        });
    }
    out
}

/// Salesforce: upserted by external ID; deleted rows (`mirror`) and revoked consent
/// (`on_delete` defaults to delete) are deleted by the Ids a query found.
fn check_salesforce(name: &str, server: &SalesforceState) {
    let (kept, deleted): (&[&str], &[&str]) = match name {
        "salesforce-upsert" => (&["1", "3", "4", "5", "6"], &["2"]),
        "salesforce-mirror" => (&["1", "3", "5", "6"], &["2", "4"]),
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(server.external_ids(), kept, "{name}: records");
    let mut gone = server.deleted();
    gone.sort();
    assert_eq!(gone, deleted, "{name}: deleted");
    let ada = server.record("1").expect("Ada");
    assert_eq!((ada["LastName"].as_str(), ada["Plan__c"].as_str()), (Some("Ada L"), Some("pro")), "{name}");
    for request in server.requests().iter().filter(|r| r.method == "GET") {
        assert!(request.query.as_deref().unwrap().starts_with("SELECT Id, Warehouse_Id__c FROM Contact WHERE Warehouse_Id__c IN ("), "{name}: {request:?}");
    }
}
