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
//!
//! The cases and their checks are each kind's own: `sync_mode_cases` in
//! `destinations/<kind>.rs` (collected by `destinations::sync_mode_cases`, generated from the
//! list of kinds there); the pipeline they run in is [`fixture`].

pub(crate) mod fixture;

use std::sync::Arc;

use fixture::{insert, Scenario, EVE};

/// Changes in the snapshot: rows 1-5 (`r`).
const SNAPSHOT_CHANGES: usize = 5;
/// ... and after the changes: Ada updated, Eve inserted, Dee deleted, Bob's consent revoked.
const ALL_CHANGES: usize = SNAPSHOT_CHANGES + 4;
/// Records on the change topic by then: every change, and Dee's tombstone.
const ALL_RECORDS: usize = ALL_CHANGES + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_supported_mode_ends_each_vendor_as_its_doc_page_says() {
    let prefix = sluice_integration_tests::unique("modes");
    let cases = crate::destinations::sync_mode_cases(&prefix).await;
    let s = Scenario::start(prefix, cases).await;
    // The snapshot lands everywhere before anything changes, so each key's changes arrive in
    // batches of their own (a batch holding two changes of a key sends only the latest).
    s.wait_until_all_finished(SNAPSHOT_CHANGES, SNAPSHOT_CHANGES).await;

    s.db.execute(&format!("UPDATE {} SET name = 'Ada L', plan = 'pro' WHERE id = 1", s.table), &[]).await.unwrap();
    insert(&s.db, &s.table, &EVE).await;
    s.db.execute(&format!("DELETE FROM {} WHERE id = 4", s.table), &[]).await.unwrap();
    s.db.execute(&format!("UPDATE {} SET opt_in = false WHERE id = 2", s.table), &[]).await.unwrap();
    s.wait_until_all_finished(ALL_CHANGES, ALL_RECORDS).await;

    let mut redis = s.redis.clone();
    for case in &s.cases {
        case.vendor.check(&case.name, &mut redis).await;
        check_dead_letters(&case.name, case.keyed_by_email, &s);
    }
    s.finish().await;
}

/// Only the row without a usable identifier (row 5: a blank email, a phone of "n/a") is
/// dead-lettered, and only where the identifier is that email; nothing else anywhere.
fn check_dead_letters(name: &str, keyed_by_email: bool, s: &Scenario) {
    let letters = s.dead_letters(name);
    assert_eq!(letters.len(), usize::from(keyed_by_email), "{name}: dead letters {letters:?}");
    for letter in letters {
        assert_eq!(letter.header("sluice.error.class"), Some("permanent"), "{name}");
        let message = letter.header("sluice.error.message").unwrap_or_default();
        assert!(message.contains("no usable"), "{name}: refused for want of an identifier: {message}");
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
