//! Meta Custom Audiences against its contract server.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::meta::{AudienceMode, Meta, MetaConfig, TokenPlacement};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::contract;

use super::{indices, metrics, record, retry_after, with_previous};

use std::collections::BTreeSet;

use sluice_destinations::identifiers::{sha256_hex, EMPTY_SHA256};
use sluice_integration_tests::contract::meta::MetaState;

use crate::sync_modes::fixture::{sync, Case, Checked, TOKEN};

const JANE: &str = "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d"; // jane@example.com
const NEW: &str = "f0030501023327437b06e5c6f87df7871b8e704ae608d1d0b7b24fdd2a06c716"; // new@example.com
const OLD: &str = "7eaa9a1d93cc8e36287f79472892b6aa024d9cebefe3669644de33a5354a29b8"; // old@example.com
const BOB: &str = "5ff860bf1190596c7188ab851db691f0f3169c453936e9e1eba2f9a47f7a0018"; // bob@example.com
const BAD: &str = "3ac772d4a33b2d83c03a803f9e9083b872ebe35dec87ab71dcdfbf1c318c660a"; // bad@example.com
const PHONE: &str = "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"; // 16505551234

fn meta(base_url: &str, token: &str, audience: &str, mode: AudienceMode) -> Meta {
    meta_with(base_url, token, audience, mode, TokenPlacement::Query)
}

fn meta_with(base_url: &str, token: &str, audience: &str, mode: AudienceMode, token_placement: TokenPlacement) -> Meta {
    Meta::new(&MetaConfig {
        base_url: base_url.into(),
        api_version: "v21.0".into(),
        access_token: Secret::literal(token),
        token_placement,
        audience_id: audience.into(),
        identifiers: BTreeMap::from([("email".to_string(), "EMAIL".to_string()), ("phone".to_string(), "PHONE".to_string())]),
        mode,
        max_rows_per_request: 10_000,
        timeout_ms: 5_000,
    },
        metrics::<Meta>(),
    )
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
    let signals = [(80003, None, "business_use_case"), (17, Some(2446079), "user"), (613, Some(1487742), "ad_account"), (4, None, "app"), (32, None, "page")];
    for (code, subcode, signal) in signals {
        server.faults.push(contract::meta::Fault::Error { status: 400, code, subcode, regain_minutes: 2 });
        let error = destination.send(&batch).await.unwrap_err();
        assert_eq!(error.status, Some(400));
        assert_eq!(error.throttle, Some(signal), "code {code}: a throttle, whatever headers came with it");
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

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

const META_AUDIENCE: &str = "23851234567890";
/// The issue's case: the phone normalised and hashed by the sync, so "n/a" would have been
/// the hash of "" before it became missing.
const META_FIELDS: &str = r#"fields = { email = "email", phone = { column = "phone", transforms = ["normalize_phone", "sha256"] } }"#;

/// Meta audiences keyed by EMAIL and PHONE; the suppression list holds everyone who will buy
/// and Zed, a prospect who never does.
pub(crate) async fn sync_mode_cases(_prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for (mode, meta_mode) in [("audience", "audience"), ("mirror", "audience"), ("upsert", "suppression")] {
        let (url, server) = contract::meta::start(TOKEN, META_AUDIENCE).await;
        let suppression = meta_mode == "suppression";
        if suppression {
            let mut members = server.members.lock().unwrap();
            for email in ["ada@example.com", "bob@example.com", "cy@example.com", "dee@example.com", "eve@example.com", "zed@example.com"] {
                members.push([("EMAIL".to_string(), sluice_integration_tests::suppression::sha256_hex(email))].into());
            }
        }
        out.push(Case {
            name: if suppression { format!("meta-suppression-{mode}") } else { format!("meta-{mode}") },
            vendor: Box::new(Checked(server, check_meta)),
            table: format!(
                "[destinations.meta]\nbase_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}\naudience_id = \"{META_AUDIENCE}\"\nidentifiers = {{ email = \"EMAIL\", phone = \"PHONE\" }}\nmode = \"{meta_mode}\""
            ),
            sync: sync(mode, META_FIELDS, !suppression),
            keyed_by_email: true,
        });
    }
    out
}

/// Meta: the audience holds exactly who is in the model and consents; the suppression list
/// loses everyone present; no row ever carries the hash of the empty string (Bob's phone of
/// "n/a" is sent as missing, `""`).
fn check_meta(name: &str, server: &MetaState) {
    let members: BTreeSet<String> = server.members.lock().unwrap().iter().filter_map(|m| m.get("EMAIL").cloned()).collect();
    let expected: &[&str] = match name {
        "meta-audience" | "meta-mirror" => &["ada@example.com", "cy@example.com", "eve@example.com"],
        "meta-suppression-upsert" => &["zed@example.com"],
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(members, expected.iter().map(|e| sha256_hex(e)).collect(), "{name}: members");
    let requests = server.requests();
    for request in &requests {
        assert!(!request.body.to_string().contains(EMPTY_SHA256), "{name}: the hash of nothing never leaves: {request:?}");
    }
    if name == "meta-audience" {
        let rows: Vec<(String, serde_json::Value)> = requests
            .iter()
            .flat_map(|r| r.body["payload"]["data"].as_array().cloned().unwrap_or_default().into_iter().map(move |row| (r.method.clone(), row)))
            .collect();
        let bob = sha256_hex("bob@example.com");
        let ada = (sha256_hex("ada@example.com"), sha256_hex("442079460001"));
        assert!(rows.contains(&("POST".into(), serde_json::json!([bob, ""]))), "Bob added with his phone missing: {rows:?}");
        assert!(rows.contains(&("DELETE".into(), serde_json::json!([bob, ""]))), "Bob removed when his consent was revoked");
        assert!(rows.contains(&("POST".into(), serde_json::json!([ada.0, ada.1]))), "Ada's phone normalised and hashed once");
    }
}

/// `usersreplace`: members 1..10 are in the audience; 2, 5 and 8 left while nothing was synced.
/// One replace session of the current states leaves exactly the seven current members, in
/// batches of the row limit with `batch_seq`, `last_batch_flag` and `estimated_num_total` as
/// the contract says; a closed session cannot be reused.
#[tokio::test]
async fn meta_replace_leaves_exactly_the_current_members() {
    let (url, server) = contract::meta::start("EAAB-token", "23851234567890").await;
    let destination = Meta::new(
        &MetaConfig {
            base_url: url.clone(),
            api_version: "v21.0".into(),
            access_token: Secret::literal("EAAB-token"),
            token_placement: TokenPlacement::Query,
            audience_id: "23851234567890".into(),
            identifiers: BTreeMap::from([("email".to_string(), "EMAIL".to_string())]),
            mode: AudienceMode::Audience,
            max_rows_per_request: 4,
            timeout_ms: 5_000,
        },
        metrics::<Meta>(),
    )
    .unwrap();
    let email = |n: u32| serde_json::json!({ "email": format!("member{n}@example.com") });
    let all: Vec<_> = (1..=10).map(|n| record(n, Action::Upsert, email(n))).collect();
    assert!(destination.send(&all).await.unwrap().is_empty());
    assert_eq!(server.member_count(), 10);

    let left = [2, 5, 8];
    let current: Vec<_> = (1..=10).map(|n| record(n, if left.contains(&n) { Action::Delete } else { Action::Upsert }, email(n))).collect();
    assert!(sluice_destinations::kind::replace(&destination, &current, 4242).await.unwrap().is_empty());

    let expected: BTreeSet<String> = (1..=10).filter(|n| !left.contains(n)).map(|n| sha256_hex(&format!("member{n}@example.com"))).collect();
    let members: BTreeSet<String> = server.members.lock().unwrap().iter().map(|m| m["EMAIL"].clone()).collect();
    assert_eq!(members, expected, "the audience is exactly the current members");
    assert_eq!(server.member_count(), 7);
    let sessions: Vec<serde_json::Value> = server.requests().iter().filter(|r| r.path.ends_with("/usersreplace")).map(|r| r.body["session"].clone()).collect();
    assert_eq!(
        sessions,
        [
            serde_json::json!({"session_id": 4242, "batch_seq": 1, "last_batch_flag": false, "estimated_num_total": 7}),
            serde_json::json!({"session_id": 4242, "batch_seq": 2, "last_batch_flag": true, "estimated_num_total": 7}),
        ]
    );
    let reused = sluice_destinations::kind::replace(&destination, &current, 4242).await.unwrap_err();
    assert_eq!(reused.class, ErrorClass::Permanent, "a closed session is refused: {reused:?}");
    assert_eq!(server.member_count(), 7, "a refused session changes nothing");
}
