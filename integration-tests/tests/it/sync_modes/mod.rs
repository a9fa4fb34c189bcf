//! Every sync mode through the whole pipeline (issue 10): a PostgreSQL table, the real poller,
//! Kafka, and one sink per (destination, mode) pair every destination kind honours, each
//! against its vendor (contract servers for HubSpot, Salesforce, Braze and Meta, webhook
//! receivers, the real Redis). Inserts, updates, a delete and a consent revocation are driven
//! through the warehouse; each vendor must end exactly as its doc page's mode table says, with
//! the requests that prove it (`create` never updates, `update` never creates, `mirror`
//! archives and deletes, `append` sends every change as an event), no identifier invented (a
//! phone of "n/a" never reaches Meta as the hash of ""), and dead letters only for the one row
//! without a usable identifier. A mode a destination cannot honour stops its sink before
//! anything starts.

mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fixture::{insert, Scenario, Vendor, EVE};
use sluice_destinations::identifiers::{sha256_hex, EMPTY_SHA256};
use sluice_integration_tests::receiver::Received;

/// Changes in the snapshot: rows 1-5 (`r`).
const SNAPSHOT_CHANGES: usize = 5;
/// ... and after the changes: Ada updated, Eve inserted, Dee deleted, Bob's consent revoked.
const ALL_CHANGES: usize = SNAPSHOT_CHANGES + 4;
/// Records on the change topic by then: every change, and Dee's tombstone.
const ALL_RECORDS: usize = ALL_CHANGES + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_supported_mode_ends_each_vendor_as_its_doc_page_says() {
    let s = Scenario::start().await;
    // The snapshot lands everywhere before anything changes, so each key's changes arrive in
    // batches of their own (a batch holding two changes of a key sends only the latest).
    s.wait_until_all_finished(SNAPSHOT_CHANGES, SNAPSHOT_CHANGES).await;

    s.db.execute(&format!("UPDATE {} SET name = 'Ada L', plan = 'pro' WHERE id = 1", s.table), &[]).await.unwrap();
    insert(&s.db, &s.table, &EVE).await;
    s.db.execute(&format!("DELETE FROM {} WHERE id = 4", s.table), &[]).await.unwrap();
    s.db.execute(&format!("UPDATE {} SET opt_in = false WHERE id = 2", s.table), &[]).await.unwrap();
    s.wait_until_all_finished(ALL_CHANGES, ALL_RECORDS).await;

    for destination in &s.destinations {
        let name = destination.name.as_str();
        match &destination.vendor {
            Vendor::Webhook(received) => check_webhook(name, received),
            Vendor::RedisHash(prefix) => check_redis_hash(name, &hashes(&mut s.redis.clone(), prefix).await),
            Vendor::RedisSet(set) => check_redis_set(name, &members(&mut s.redis.clone(), set).await),
            Vendor::HubSpot(server) => check_hubspot(name, server),
            Vendor::Salesforce(server) => check_salesforce(name, server),
            Vendor::Braze(server) => check_braze(name, server),
            Vendor::Meta(server) => check_meta(name, server),
        }
        check_dead_letters(name, &s);
    }
    s.finish().await;
}

/// Only the row without a usable identifier (row 5: a blank email, a phone of "n/a") is
/// dead-lettered, and only where the identifier is that email; nothing else anywhere.
fn check_dead_letters(name: &str, s: &Scenario) {
    let letters = s.dead_letters(name);
    let keyed_by_email = ["redis-set", "hubspot", "braze", "meta"].iter().any(|kind| name.starts_with(kind));
    assert_eq!(letters.len(), usize::from(keyed_by_email), "{name}: dead letters {letters:?}");
    for letter in letters {
        assert_eq!(letter.header("sluice.error.class"), Some("permanent"), "{name}");
        let message = letter.header("sluice.error.message").unwrap_or_default();
        assert!(message.contains("no usable"), "{name}: refused for want of an identifier: {message}");
    }
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

async fn hashes(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> BTreeMap<i64, BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:customers:*")).query_async(redis).await.expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        let id: i64 = key.rsplit(':').next().unwrap().parse().expect("numeric key");
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(redis).await.expect("HGETALL");
        out.insert(id, fields);
    }
    out
}

async fn members(redis: &mut redis::aio::MultiplexedConnection, set: &str) -> BTreeSet<String> {
    redis::cmd("SMEMBERS").arg(set).query_async(redis).await.expect("SMEMBERS")
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn customer(email: &str, name: &str, plan: &str) -> BTreeMap<String, String> {
    fields(&[("email", email), ("name", name), ("plan", plan)])
}

/// Hashes: `upsert` writes and keeps deleted rows; `update` writes only the hash that existed;
/// `create` only the ones that did not (the seeded one and Ada's first version stay); `mirror`
/// deletes. Revoked consent deletes except under `create`.
fn check_redis_hash(name: &str, hashes: &BTreeMap<i64, BTreeMap<String, String>>) {
    let ada = customer("ada@example.com", "Ada L", "pro");
    let cy = customer("cy@example.com", "Cy", "free");
    let dee = customer("dee@example.com", "Dee", "free");
    let nobody = customer("   ", "Nobody", "free");
    let eve = customer("eve@example.com", "Eve", "free");
    let expected: BTreeMap<i64, BTreeMap<String, String>> = match name {
        "redis-hash-upsert" => [(1, ada), (3, cy), (4, dee), (5, nobody), (6, eve)].into(),
        "redis-hash-update" => [(1, ada)].into(),
        "redis-hash-create" => [
            (1, customer("ada@example.com", "Ada", "free")),
            (2, customer("bob@example.com", "Bob", "free")),
            (3, fields(&[("name", "Seeded"), ("plan", "seed")])),
            (4, dee),
            (5, nobody),
            (6, eve),
        ]
        .into(),
        "redis-hash-mirror" => [(1, ada), (3, cy), (5, nobody), (6, eve)].into(),
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(hashes, &expected, "{name}");
}

/// Sets: members added; `audience` and `mirror` remove whoever leaves (Dee deleted, Bob's
/// consent revoked), `upsert` only on revoked consent. The blank email is never a member.
fn check_redis_set(name: &str, members: &BTreeSet<String>) {
    let expected: &[&str] = match name {
        "redis-set-upsert" => &["ada@example.com", "cy@example.com", "dee@example.com", "eve@example.com"],
        "redis-set-audience" | "redis-set-mirror" => &["ada@example.com", "cy@example.com", "eve@example.com"],
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(members, &expected.iter().map(|m| m.to_string()).collect(), "{name}");
}

/// HubSpot: `update` reads and updates only what exists (never `batch/create` or
/// `batch/upsert`), `create` reads and creates only what does not (never an update or an
/// upsert), `mirror` archives deleted rows by their looked-up ids, and revoked consent archives
/// (`on_delete` defaults to archive) except under `create`.
fn check_hubspot(name: &str, server: &sluice_integration_tests::contract::hubspot::HubSpotState) {
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

/// Salesforce: upserted by external ID; deleted rows (`mirror`) and revoked consent
/// (`on_delete` defaults to delete) are deleted by the Ids a query found.
fn check_salesforce(name: &str, server: &sluice_integration_tests::contract::salesforce::SalesforceState) {
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

/// Braze: attributes (a delete or revoked consent unsubscribes, never deletes a user);
/// `update` never creates a user; a suppression list unsubscribes every row present and
/// nobody else.
fn check_braze(name: &str, server: &sluice_integration_tests::contract::braze::BrazeState) {
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

/// Meta: the audience holds exactly who is in the model and consents; the suppression list
/// loses everyone present; no row ever carries the hash of the empty string (Bob's phone of
/// "n/a" is sent as missing, `""`).
fn check_meta(name: &str, server: &sluice_integration_tests::contract::meta::MetaState) {
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

/// A sync in a mode its destination cannot honour (upsert into a Meta audience, which would
/// never remove anyone) stops the sink at start with the sync's line, the mode, the kind, the
/// reason and the fix, before a topic is created or a request sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mode_the_destination_cannot_honour_stops_the_sink_at_start() {
    std::env::set_var("SLUICE_MODES_REFUSED_TOKEN", "token");
    let prefix = sluice_integration_tests::unique("refused");
    let text = format!(
        r#"[kafka]
bootstrap_servers = "{}"
topic_prefix = "{prefix}"

[warehouse]
kind = "duckdb"
path = "unused.duckdb"

[[models]]
name = "customers"
table = "customers"
primary_key = ["id"]
columns = ["id", "email"]
detection = {{ mode = "diff" }}

[[destinations]]
name = "prospects"
[destinations.meta]
base_url = "http://127.0.0.1:1"
access_token = {{ env = "SLUICE_MODES_REFUSED_TOKEN" }}
audience_id = "1"
identifiers = {{ email = "EMAIL" }}

[[syncs]]
model = "customers"
destination = "prospects"
mode = "upsert"
fields = {{ email = "email" }}
"#,
        sluice_integration_tests::kafka_bootstrap()
    );
    let config = Arc::new(sluice_core::config::Config::parse("refused.toml", &text).expect("the file itself parses; only the pair is wrong"));
    let health = sluice_telemetry::ops::Health::new();
    let error = sluice_sink::run(config, "prospects", Arc::clone(&health), tokio_util::sync::CancellationToken::new()).await.expect_err("refused at start");
    let message = error.to_string();
    assert!(
        message.contains("refused.toml:27: sync of model \"customers\" to destination \"prospects\": mode \"upsert\" is not supported by the meta destination: an audience must remove the people who leave it"),
        "{message}"
    );
    assert!(message.contains("fix: use mode = \"audience\" or \"mirror\""), "{message}");
    assert!(health.not_ready_reason().is_some(), "the sink reports itself not ready");
    sluice_integration_tests::require_kafka();
    let topics = sluice_integration_tests::topic_names(&prefix);
    assert!(topics.is_empty(), "nothing was created: {topics:?}");
}
