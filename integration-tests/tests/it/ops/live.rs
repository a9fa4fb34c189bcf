//! `docs/metrics.md`, the dashboard and the alert rules against a live `/metrics`: the poller
//! binary (a model of each mode, plus one whose duplicate keys a gate refuses) and two sink
//! binaries (a webhook that throttles once and refuses one record; a Redis audience set with a
//! blank identifier), end to end through PostgreSQL, Kafka and Redis.
//!
//! Checked: every `sluice_*` family the three processes export is documented under its service
//! with its type; every documented metric exported `always`, `per mode` or `per kind` of a kind
//! in this run is exported, and so are the event-only ones this run triggers; every metric the
//! dashboard and the rules name is exported here or documented as event-only.
//! And what the sync-health metrics say is true of the run (freshness, lag, latency, dead
//! letters, audience size).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_integration_tests::receiver::{self, Behaviour, Reply};
use sluice_integration_tests::suppression::{redis_url, require_redis};
use sluice_integration_tests::{binary, eventually, postgres_url, require_kafka, require_postgres, telemetry, toml_text, unique};

use super::{alert_rules, dashboard_exprs, histograms, metrics_doc, promql_metrics, Exported, Scrape, Service};

const WAIT: Duration = Duration::from_secs(90);

/// Event-only metrics this run triggers, so they must be exported too.
const TRIGGERED: [&str; 13] = [
    "sluice_poller_errors_total",              // the `dupes` model's gate refusal is fatal
    "sluice_poller_gate_refusals_total",       // duplicate keys
    "sluice_poller_duplicate_keys_total",      // duplicate keys
    "sluice_poller_reconcile_deletes_total",   // a hard delete
    "sluice_poller_wakeups_total",             // POST /run/customers
    "sluice_sink_dead_letters_total",          // the 422 at the webhook, the blank member at Redis
    "sluice_sink_records_coalesced_total",     // two changes of row 2 in one batch
    "sluice_sink_retries_total",               // the 429
    "sluice_sink_throttled_seconds_total",     // its Retry-After
    "sluice_destination_throttled_total",      // its signal
    "sluice_destination_records_refused_total", // the blank member
    "sluice_destination_identifiers_missing_total", // the blank member
    "sluice_destination_commands_total",       // Redis pipelines
];

/// Kinds of the destinations in this run (for `per kind` rows).
const KINDS: [&str; 2] = ["webhook", "redis"];

/// The child processes; killed when dropped, so a failing test leaves nothing running.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(url: &str) -> Option<String> {
    let response = reqwest::get(url).await.ok()?;
    response.text().await.ok()
}

async fn scrape(port: u16) -> Scrape {
    Scrape::parse(&get(&format!("http://127.0.0.1:{port}/metrics")).await.unwrap_or_default())
}

/// The columns of the models that follow only emails.
const EMAILS: [&str; 2] = ["id", "email"];

/// Cursor detection with inserts told apart and deletes found by reconciliation every second.
const CURSOR_RECONCILED: &str = r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at", reconcile_interval_ms = 1000 }"#;

/// `wd` is the `warehouse_diff` model's name: unique per run, since its kept snapshot lives in
/// the warehouse (`sluice_state.<model>_snapshot`) and would outlive the test.
fn config_text(prefix: &str, table: &str, hook: &str, wd: &str) -> String {
    format!(
        r#"
{services}
{customers}
{customers_diff}
{warehouse_diff}
{dupes}
[[destinations]]
name = "crm"
batch_linger_ms = 300
retry = {{ initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 5 }}
[destinations.webhook]
url = "{hook}"

[[destinations]]
name = "site"
batch_linger_ms = 50
{redis}
{}
{}
{}"#,
        toml_text::sync_fields("customers", "crm", "upsert", toml_text::EMAIL),
        toml_text::sync_fields(wd, "crm", "upsert", toml_text::EMAIL),
        toml_text::sync_fields("customers_diff", "site", "audience", toml_text::EMAIL),
        services = toml_text::services(prefix, "SLUICE_IT_WAREHOUSE_URL"),
        customers = toml_text::Model::table("customers", table, &["id", "email", "name", "updated_at", "created_at"], CURSOR_RECONCILED).poll_interval_ms(300),
        customers_diff = toml_text::Model::table("customers_diff", table, &EMAILS, r#"{ mode = "diff" }"#).poll_interval_ms(500),
        warehouse_diff = toml_text::Model::table(wd, table, &EMAILS, r#"{ mode = "warehouse_diff" }"#).poll_interval_ms(500),
        dupes = toml_text::Model::query("dupes", &format!("SELECT id, email FROM {table} UNION ALL SELECT id, email FROM {table} WHERE id = 1"), &EMAILS, r#"{ mode = "diff" }"#),
        redis = toml_text::redis_set("SLUICE_IT_REDIS_URL", &format!("{prefix}:audience"), ""),
    )
}

/// The webhook: 429 with `Retry-After: 1` to the first request, then 422 to a request holding a
/// `reject…` email, 200 otherwise.
fn webhook_script() -> Behaviour {
    Behaviour::Script(Arc::new(|n, records| {
        if n == 0 {
            Reply::error(429, Some("1"))
        } else if records.iter().any(|r| r["fields"]["email"].as_str().is_some_and(|e| e.starts_with("reject"))) {
            Reply { body: "{\"error\":\"invalid email address\"}".into(), ..Reply::error(422, None) }
        } else {
            Reply::ok(records.len())
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_doc_dashboard_and_rules_match_a_live_poller_and_sinks() {
    telemetry();
    require_kafka();
    let db = require_postgres().await;
    let mut redis = require_redis().await;
    let (hook, received) = receiver::start().await;
    received.set_behaviour(webhook_script());
    let (table, prefix) = (unique("it_ops"), unique("it_ops"));
    db.batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, email text, name text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL)"))
        .await
        .unwrap();
    // Row 4 is refused by the webhook; row 5's email is blank, so Redis has no member for it.
    for id in 1..=10i64 {
        let email = match id {
            4 => "reject-me@invalid".to_string(),
            5 => "   ".to_string(),
            _ => format!("c{id}@example.com"),
        };
        db.execute(&format!("INSERT INTO {table} VALUES ($1, $2, 'a name', clock_timestamp(), clock_timestamp())"), &[&id, &email]).await.unwrap();
    }
    let dir = std::env::temp_dir().join(unique("sluice-it-ops"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    let wd = unique("it_ops_wd");
    std::fs::write(&config, config_text(&prefix, &table, &hook, &wd)).unwrap();
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).unwrap());
    let started = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;

    let (poller_ops, trigger) = (free_port(), free_port());
    let mut processes = Processes(vec![Command::new(binary("sluice-poller"))
        .args(["--config", config.to_str().unwrap(), "--ops-listen", &format!("127.0.0.1:{poller_ops}"), "--trigger-listen", &format!("127.0.0.1:{trigger}")])
        .env("SLUICE_IT_WAREHOUSE_URL", postgres_url())
        .env("RUST_LOG", "info")
        .stderr(log("poller.log"))
        .spawn()
        .expect("start sluice-poller")]);

    // Two changes of row 2 on the topic before the sinks start: one batch coalesces them. Only
    // `name` changes, which only the cursor model reads: the diff models' counts stay exact.
    // The poller's own count of committed events says when they are on the topic.
    let committed = |op: &'static str| async move { scrape(poller_ops).await.value("sluice_poller_events_total", &["model=\"customers\"", op]).unwrap_or(0.0) };
    let deadline = tokio::time::Instant::now() + WAIT;
    while committed("op=\"r\"").await < 10.0 {
        assert!(tokio::time::Instant::now() < deadline, "the first snapshot of customers committed (logs in {})", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.execute(&format!("UPDATE {table} SET name = 'another name', updated_at = clock_timestamp() WHERE id = 2"), &[]).await.unwrap();
    while committed("op=\"u\"").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the update of row 2 committed (logs in {})", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (crm_ops, site_ops) = (free_port(), free_port());
    for (destination, port) in [("crm", crm_ops), ("site", site_ops)] {
        processes.0.push(
            Command::new(binary("sluice-sink"))
                .args(["--config", config.to_str().unwrap(), "--destination", destination, "--ops-listen", &format!("127.0.0.1:{port}")])
                .env("SLUICE_IT_REDIS_URL", redis_url())
                .env("RUST_LOG", "info")
                .stderr(log(&format!("sink-{destination}.log")))
                .spawn()
                .expect("start sluice-sink"),
        );
    }
    let set_key = format!("{prefix}:audience");
    let members = |redis: &mut redis::aio::MultiplexedConnection| {
        let set_key = set_key.clone();
        let mut redis = redis.clone();
        async move { redis::cmd("SCARD").arg(&set_key).query_async::<i64>(&mut redis).await.unwrap() }
    };
    // Both models' rows at the webhook, but row 4.
    let ids = |model: &str| received.records().iter().filter(|r| r["model"] == model).filter_map(|r| r["key"]["id"].as_i64()).collect::<std::collections::BTreeSet<_>>();
    eventually("every row but the refused one at the webhook", WAIT, || ids("customers").len() == 9 && ids(&wd).len() == 9).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while members(&mut redis).await != 9 {
        assert!(tokio::time::Instant::now() < deadline, "9 members in the Redis set (logs in {})", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A hard delete (the cursor model's reconciliation finds it, the diff model removes the
    // member) and a run requested over HTTP.
    db.execute(&format!("DELETE FROM {table} WHERE id = 3"), &[]).await.unwrap();
    let run = reqwest::Client::new().post(format!("http://127.0.0.1:{trigger}/run/customers")).send().await.expect("trigger endpoint");
    assert_eq!(run.status(), 202, "POST /run/customers");
    while members(&mut redis).await != 8 {
        assert!(tokio::time::Instant::now() < deadline, "the deleted row's member removed (logs in {})", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything applied: wait until every sync-health series says so.
    let (poller, crm, site) = loop {
        let (poller, crm, site) = (scrape(poller_ops).await, scrape(crm_ops).await, scrape(site_ops).await);
        let settled = poller.value("sluice_poller_reconcile_deletes_total", &["model=\"customers\""]) == Some(1.0)
            && poller.value("sluice_poller_duplicate_keys_total", &["model=\"dupes\""]).is_some()
            && poller.value("sluice_poller_run_volatility_ratio", &[&format!("model=\"{wd}\"")]).is_some()
            && poller.value("sluice_poller_run_volatility_ratio", &["model=\"customers_diff\""]).is_some()
            && crm.value("sluice_sink_dead_letters_total", &[]) == Some(2.0)
            && [&crm, &site].iter().all(|s| s.value("sluice_sink_consumer_lag_records", &[]) == Some(0.0))
            && site.value("sluice_destination_audience_size", &[]) == Some(8.0);
        if settled {
            break (poller, crm, site);
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics did not settle (logs in {}); last scrapes: {:#?}", dir.display(), (poller, crm, site));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(processes);

    check_semantics(&poller, &crm, &site, started, &wd);
    let sinks = Scrape::merge(&[&crm, &site]);
    check_doc(&poller, &sinks);
    check_dashboard_and_rules(&poller, &sinks);
}

/// What the sync-health metrics say is true of the run.
fn check_semantics(poller: &Scrape, crm: &Scrape, site: &Scrape, started: f64, wd: &str) {
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    for model in ["customers", "customers_diff", wd] {
        let label = format!("model=\"{model}\"");
        let success = poller.value("sluice_poller_last_success_timestamp_seconds", &[&label]).unwrap_or_else(|| panic!("{model}: no freshness"));
        assert!(success >= started && success <= now, "{model}: last success {success} within the run ({started}..{now})");
        assert!(poller.value("sluice_poller_runs_total", &[&label, "outcome=\"success\""]).unwrap_or(0.0) >= 1.0, "{model}: successful runs");
        assert_eq!(poller.value("sluice_poller_model_stopped", &[&label]), Some(0.0), "{model} runs");
    }
    assert_eq!(poller.value("sluice_poller_schedule_interval_seconds", &["model=\"customers\""]), Some(0.3));
    assert_eq!(poller.value("sluice_poller_model_stopped", &["model=\"dupes\""]), Some(1.0), "the gate stopped the dupes model");
    assert_eq!(poller.value("sluice_poller_runs_total", &["model=\"dupes\"", "outcome=\"fatal_error\""]), Some(1.0));
    assert_eq!(poller.value("sluice_poller_duplicate_keys_total", &["model=\"dupes\""]), Some(1.0), "one key twice");
    assert_eq!(poller.value("sluice_poller_model_rows", &["model=\"customers_diff\""]), Some(9.0), "10 rows less the deleted one");
    // The reconciliation's delete is committed (and the gauge set) before it is counted.
    assert_eq!(poller.value("sluice_poller_tracked_rows", &["model=\"customers\""]), Some(9.0), "the cursor model's live keys: 10 less the deleted one");

    // The webhook: rows 1-10 of two models, less row 4 of each (dead-lettered), row 2 twice in
    // `customers` but coalesced into its latest change.
    assert_eq!(crm.value("sluice_sink_dead_letters_total", &["class=\"permanent\""]), Some(2.0), "row 4 of both models");
    assert_eq!(crm.value("sluice_sink_records_total", &["outcome=\"dead_lettered\""]), Some(2.0));
    assert!(crm.value("sluice_sink_records_coalesced_total", &[]).unwrap_or(0.0) >= 1.0, "row 2's two changes in one batch");
    let applied = crm.value("sluice_sink_records_applied_total", &["action=\"upsert\""]).unwrap();
    assert_eq!(crm.value("sluice_sink_end_to_end_seconds_count", &[]), Some(applied), "one latency per applied record");
    let latency_sum = crm.value("sluice_sink_end_to_end_seconds_sum", &[]).unwrap();
    assert!(latency_sum > 0.0 && latency_sum / applied < now - started, "latencies are within the run: mean {}", latency_sum / applied);
    for (destination, sink) in [("crm", crm), ("site", site)] {
        let fresh = sink.value("sluice_sink_last_applied_change_timestamp_seconds", &[]).unwrap_or_else(|| panic!("{destination}: no freshness"));
        assert!(fresh >= started && fresh <= now, "{destination}: newest applied change {fresh} observed within the run");
        assert_eq!(sink.value("sluice_sink_consumer_lag_seconds", &[]), Some(0.0), "{destination}: nothing in flight");
    }
    // Redis: 9 members added (row 5 has none: refused and dead-lettered), one removed.
    assert_eq!(site.value("sluice_sink_records_applied_total", &["action=\"upsert\""]), Some(9.0));
    assert_eq!(site.value("sluice_sink_records_applied_total", &["action=\"delete\""]), Some(1.0));
    assert_eq!(site.value("sluice_sink_dead_letters_total", &["class=\"permanent\""]), Some(1.0), "the blank member");
    assert_eq!(site.value("sluice_destination_records_refused_total", &["reason=\"no_identifier\""]), Some(1.0));
}

/// Every exported family documented under its service with its type; every documented metric
/// that must be exported is.
fn check_doc(poller: &Scrape, sinks: &Scrape) {
    let doc = metrics_doc();
    for (service, scrape) in [(Service::Poller, poller), (Service::Sink, sinks)] {
        for (name, kind) in scrape.types.iter().filter(|(name, _)| name.starts_with("sluice_")) {
            let documented = doc.get(name).unwrap_or_else(|| panic!("{name} ({service:?}) is exported but not in docs/metrics.md"));
            assert_eq!(documented.service, service, "{name} is documented under another service");
            assert_eq!(&documented.kind, kind, "{name}: docs/metrics.md says {}, /metrics says {kind}", documented.kind);
        }
        for (name, documented) in doc.iter().filter(|(_, m)| m.service == service) {
            let required = match &documented.exported {
                Exported::Always => true,
                Exported::PerKind(kinds) => kinds.iter().any(|k| KINDS.contains(&k.as_str())),
                Exported::OnEvent(_) => TRIGGERED.contains(&name.as_str()),
            };
            if required {
                assert!(scrape.types.contains_key(name), "{name} is documented as {:?} but {service:?} did not export it", documented.exported);
            }
        }
    }
}

/// Every metric the dashboard and the rules read is exported by this run or documented as
/// event-only.
fn check_dashboard_and_rules(poller: &Scrape, sinks: &Scrape) {
    let doc = metrics_doc();
    let histograms = histograms(&doc);
    let mut uses: Vec<(String, String)> = dashboard_exprs().into_iter().map(|e| ("the dashboard".to_string(), e)).collect();
    uses.extend(alert_rules().into_iter().map(|(name, rule)| (name, rule["expr"].as_str().unwrap().to_string())));
    for (user, expr) in uses {
        for name in promql_metrics(&expr, &histograms) {
            let exported = poller.types.contains_key(&name) || sinks.types.contains_key(&name);
            let event_only = doc.get(&name).is_some_and(|m| matches!(m.exported, Exported::OnEvent(_)));
            assert!(exported || event_only, "{user} reads {name}, which this run did not export and docs/metrics.md does not list as event-only: {expr}");
        }
    }
}
