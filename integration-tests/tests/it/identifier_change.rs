//! A customer's email changes in a cursor model (the quickstart's shape: `updated_at` cursor),
//! end to end through the real poller, Kafka and three sinks in this process: HubSpot (contract
//! server) ends with one contact under the new email and none under the old, the Meta audience
//! (contract server) lost the old hash and gained the new, the Redis set (real Redis) moved the
//! member; nothing is dead-lettered. Also when the poller restarts between the insert and the
//! change, so the previous image comes from the state rebuilt from the change topic.
//!
//! What makes it work: the cursor update carries the row's last emitted image as `before`
//! (`sluice-poller`'s cursor mode), the sink maps it to `previous`, and each destination moves
//! the identifier (HubSpot upserts by the old email with the new one as property, Meta removes
//! the old hash and adds the new, Redis `SREM`s the old member and `SADD`s the new).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::Config;
use sluice_core::{naming, Op, Value};
use sluice_integration_tests::contract::{hubspot, meta};
use sluice_integration_tests::suppression::{redis_url, require_redis, sha256_hex};
use sluice_integration_tests::{decode_events, postgres_url, read_topic, require_kafka, require_postgres, telemetry, toml_text, unique};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);
const HUBSPOT_TOKEN: &str = "pat-identifier-change";
const META_TOKEN: &str = "EAAB-identifier-change";
const AUDIENCE: &str = "23851234567890";
/// Destination names, as in the config.
const DESTINATIONS: [&str; 3] = ["crm", "ads", "site"];

const OLD: &str = "jane.old@example.com";
/// As the warehouse holds it; every destination normalises it to [`NEW`].
const NEW_WRITTEN: &str = " Jane.New@Example.COM";
const NEW: &str = "jane.new@example.com";
const BYSTANDER: &str = "bob@example.com";

fn config_text(prefix: &str, table: &str, hubspot_url: &str, meta_url: &str, set_key: &str) -> String {
    format!(
        r#"{services}
{model}
[[destinations]]
name = "crm"
batch_linger_ms = 20
[destinations.hubspot]
base_url = "{hubspot_url}"
access_token = {{ env = "SLUICE_IDCHANGE_HUBSPOT_TOKEN" }}

[[destinations]]
name = "ads"
batch_linger_ms = 20
{meta}
[[destinations]]
name = "site"
batch_linger_ms = 20
{redis}
{syncs}"#,
        services = toml_text::services(prefix, "SLUICE_IDCHANGE_WAREHOUSE_URL"),
        model = toml_text::Model::table("customers", table, &["id", "email", "full_name", "plan", "updated_at", "created_at"], toml_text::CURSOR).poll_interval_ms(200),
        meta = toml_text::meta_audience(meta_url, "SLUICE_IDCHANGE_META_TOKEN", AUDIENCE, ""),
        redis = toml_text::redis_set("SLUICE_IDCHANGE_REDIS_URL", set_key, ""),
        syncs = toml_text::syncs(
            "customers",
            &[
                ("crm", "upsert", r#"{ email = "email", firstname = "full_name", plan = "plan" }"#),
                ("ads", "audience", toml_text::EMAIL),
                ("site", "upsert", toml_text::NORMALIZED_EMAIL),
            ]
        ),
    )
}

/// The running pipeline: the table, the two contract servers, Redis, the poller and the sinks.
struct Pipeline {
    config: Arc<Config>,
    table: String,
    prefix: String,
    set_key: String,
    db: tokio_postgres::Client,
    redis: redis::aio::MultiplexedConnection,
    hubspot: Arc<hubspot::HubSpotState>,
    meta: Arc<meta::MetaState>,
    poller: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    sinks: Vec<(CancellationToken, JoinHandle<Result<(), sluice_sink::SinkError>>)>,
}

impl Pipeline {
    async fn start() -> Pipeline {
        telemetry();
        require_kafka();
        let db = require_postgres().await;
        let redis = require_redis().await;
        let table = unique("it_idchange");
        let prefix = unique("idchange");
        let set_key = format!("{prefix}:customers");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, email text NOT NULL, full_name text, plan text, \
             updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await
        .unwrap();
        let (hubspot_url, hubspot) = hubspot::start(HUBSPOT_TOKEN).await;
        let (meta_url, meta) = meta::start(META_TOKEN, AUDIENCE).await;
        std::env::set_var("SLUICE_IDCHANGE_WAREHOUSE_URL", postgres_url());
        std::env::set_var("SLUICE_IDCHANGE_HUBSPOT_TOKEN", HUBSPOT_TOKEN);
        std::env::set_var("SLUICE_IDCHANGE_META_TOKEN", META_TOKEN);
        std::env::set_var("SLUICE_IDCHANGE_REDIS_URL", redis_url());
        let text = config_text(&prefix, &table, &hubspot_url, &meta_url, &set_key);
        let config = Arc::new(Config::parse("identifier-change.toml", &text).expect("valid config"));
        let sinks = DESTINATIONS
            .iter()
            .map(|&name| {
                let (config, stop) = (Arc::clone(&config), CancellationToken::new());
                let task = tokio::spawn({
                    let stop = stop.clone();
                    async move { sluice_sink::run(config, name, Health::new(), stop).await }
                });
                (stop, task)
            })
            .collect();
        let mut pipeline = Pipeline { config, table, prefix, set_key, db, redis, hubspot, meta, poller: None, sinks };
        pipeline.start_poller();
        pipeline
    }

    fn start_poller(&mut self) {
        self.poller = Some(sluice_integration_tests::start_poller(&self.config));
    }

    async fn stop_poller(&mut self) {
        let (stop, poller) = self.poller.take().expect("the poller runs");
        stop.cancel();
        poller.await.unwrap().expect("the poller stops cleanly");
    }

    async fn exec(&self, sql: &str) {
        self.db.batch_execute(&sql.replace("{table}", &self.table)).await.unwrap();
    }

    async fn redis_members(&mut self) -> Vec<String> {
        let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(&self.set_key).query_async(&mut self.redis).await.expect("SMEMBERS");
        members.sort();
        members
    }

    /// Whether all three destinations hold exactly `emails` (normalised).
    async fn holds(&mut self, emails: &[&str]) -> bool {
        let contacts: Vec<String> = {
            let mut contacts: Vec<String> = self.hubspot.contacts.lock().unwrap().keys().cloned().collect();
            contacts.sort();
            contacts
        };
        let mut wanted: Vec<String> = emails.iter().map(|e| e.to_string()).collect();
        wanted.sort();
        let meta = self.meta.member_count() == emails.len() && emails.iter().all(|e| self.meta.has_member("EMAIL", &sha256_hex(e)));
        contacts == wanted && meta && self.redis_members().await == wanted
    }

    async fn wait_until_holding(&mut self, what: &str, emails: &[&str]) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.holds(emails).await {
            assert!(tokio::time::Instant::now() < deadline, "timed out after {WAIT:?} waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop everything; return the dead letters per destination; drop the table and the set.
    async fn finish(mut self) -> Vec<(&'static str, usize)> {
        if self.poller.is_some() {
            self.stop_poller().await;
        }
        for (stop, sink) in self.sinks.drain(..) {
            stop.cancel();
            sink.await.unwrap().expect("the sink stops cleanly");
        }
        let dead = DESTINATIONS.iter().map(|&d| (d, read_topic(&naming::dead_letter_topic(&self.prefix, d)).len())).collect();
        self.db.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table)).await.ok();
        let deleted: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.set_key).query_async(&mut self.redis).await;
        if let Err(error) = deleted {
            eprintln!("deleting the set {} failed: {error}", self.set_key);
        }
        dead
    }
}

async fn email_change(restart_between: bool) {
    let mut p = Pipeline::start().await;
    p.exec(&format!("INSERT INTO {{table}} (id, email, full_name, plan) VALUES (1, '{OLD}', 'Jane', 'pro'), (2, '{BYSTANDER}', 'Bob', 'free')")).await;
    p.wait_until_holding("both customers at HubSpot, Meta and Redis", &[OLD, BYSTANDER]).await;
    let jane_id = p.hubspot.contact(OLD).expect("Jane's contact")["hs_object_id"].clone();
    if restart_between {
        // The previous image must now come from the state rebuilt from the change topic.
        p.stop_poller().await;
        p.start_poller();
    }

    p.exec(&format!("UPDATE {{table}} SET email = '{NEW_WRITTEN}', updated_at = clock_timestamp() WHERE id = 1")).await;
    p.wait_until_holding("Jane moved to her new email everywhere", &[NEW, BYSTANDER]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // a late duplicate would show by now
    assert!(p.holds(&[NEW, BYSTANDER]).await, "still exactly the two customers, Jane under her new email");

    // HubSpot: the same contact renamed (not a second one), its other properties kept.
    let jane = p.hubspot.contact(NEW).expect("Jane under her new email");
    assert_eq!(jane["hs_object_id"], jane_id, "the contact was renamed, not duplicated");
    assert_eq!((jane["firstname"].as_str(), jane["plan"].as_str()), (Some("Jane"), Some("pro")));
    assert!(p.hubspot.contact(OLD).is_none(), "no contact under the old email");
    // Meta: the old hash removed, the new added, over the wire.
    let removed: Vec<String> = p
        .meta
        .applied()
        .iter()
        .filter(|a| a.method == "DELETE")
        .filter_map(|a| a.row.get("EMAIL").cloned())
        .collect();
    assert_eq!(removed, vec![sha256_hex(OLD)], "exactly the old hash was removed");
    assert!(!p.meta.has_member("EMAIL", &sha256_hex(OLD)) && p.meta.has_member("EMAIL", &sha256_hex(NEW)));

    // The change event carried the previous image.
    let changes = read_topic(&naming::change_topic(&p.prefix, "customers"));
    let update = decode_events(&p.prefix, &changes).into_iter().find(|e| e.event.op == Op::Update).expect("the update event");
    assert_eq!(update.event.before.as_ref().map(|b| b[1].clone()), Some(Value::String(OLD.into())), "before holds the old email");
    assert_eq!(update.event.changed.as_deref(), Some(&["email".to_string(), "updated_at".to_string()][..]));

    sluice_integration_tests::assert_nothing_dead_lettered(p.finish().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_email_moves_the_customer_at_hubspot_meta_and_redis() {
    email_change(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_email_moves_the_customer_after_a_poller_restart_between_insert_and_change() {
    email_change(true).await;
}
