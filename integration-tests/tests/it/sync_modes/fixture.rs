//! The pipeline every sync-mode test drives: one PostgreSQL table in `diff` mode, the real
//! poller, Kafka, and one in-process sink per (destination, mode) pair, each against its own
//! vendor (a contract server, a webhook receiver, or a key prefix of the real Redis).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_integration_tests::contract::{braze::BrazeState, hubspot::HubSpotState, meta::MetaState, salesforce::SalesforceState};
use sluice_integration_tests::receiver::{self, Received};
use sluice_integration_tests::suppression::{redis_url, require_redis};
use sluice_integration_tests::{contract, eventually, kafka_bootstrap, postgres_url, read_topic, require_kafka, require_postgres, telemetry, unique, ReadRecord};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) const WAIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "sync-modes-token";
const META_AUDIENCE: &str = "23851234567890";

/// A warehouse row: id, email, phone, name.
pub(super) type Row = (i64, &'static str, Option<&'static str>, &'static str);

/// The rows of the first snapshot. Bob's phone is "n/a" (it normalises to nothing); row 5 has
/// no usable identifier at all (a blank email, a phone of "n/a").
pub(super) const SNAPSHOT: [Row; 5] = [
    (1, "ada@example.com", Some("+44 20 7946 0001"), "Ada"),
    (2, "bob@example.com", Some("n/a"), "Bob"),
    (3, "cy@example.com", Some("+1 650 555 0003"), "Cy"),
    (4, "dee@example.com", None, "Dee"),
    (5, "   ", Some("n/a"), "Nobody"),
];

/// The row inserted after the snapshot.
pub(super) const EVE: Row = (6, "eve@example.com", Some("+1 650 555 0006"), "Eve");

/// Where one destination's records land.
pub(super) enum Vendor {
    Webhook(Arc<Received>),
    /// Hash mode: hashes under this key prefix.
    RedisHash(String),
    /// Set mode: this set.
    RedisSet(String),
    HubSpot(Arc<HubSpotState>),
    Salesforce(Arc<SalesforceState>),
    Braze(Arc<BrazeState>),
    Meta(Arc<MetaState>),
}

/// One configured destination with its one sync.
pub(super) struct Destination {
    pub name: String,
    pub vendor: Vendor,
    /// The `[destinations.<kind>]` table.
    table: String,
    /// The sync's `mode`, `fields` and `consent` lines.
    sync: String,
}

/// The running pipeline.
pub(super) struct Scenario {
    pub prefix: String,
    pub table: String,
    pub db: tokio_postgres::Client,
    pub redis: redis::aio::MultiplexedConnection,
    pub destinations: Vec<Destination>,
    stop: CancellationToken,
    poller: JoinHandle<anyhow::Result<()>>,
    sinks: Vec<(String, JoinHandle<Result<(), sluice_sink::SinkError>>)>,
    /// Per destination, a consumer of its sink's group, to read what the sink committed.
    groups: Vec<(String, BaseConsumer)>,
}

/// The fields a sync maps, per vendor (`firstname` etc. are the vendors' own names).
const PLAIN_FIELDS: &str = r#"fields = { email = "email", name = "name", plan = "plan" }"#;
const SET_FIELDS: &str = r#"fields = { email = { column = "email", transforms = ["normalize_email"] } }"#;
const HUBSPOT_FIELDS: &str = r#"fields = { email = "email", firstname = "name", plan = "plan" }"#;
const SALESFORCE_FIELDS: &str = r#"fields = { Warehouse_Id__c = { column = "id", type = "string" }, LastName = "name", Email = "email", Plan__c = "plan" }"#;
const BRAZE_FIELDS: &str = r#"fields = { email = "email", first_name = "name", plan = "plan" }"#;
/// The issue's case: the phone normalised and hashed by the sync, so "n/a" would have been
/// the hash of "" before it became missing.
const META_FIELDS: &str = r#"fields = { email = "email", phone = { column = "phone", transforms = ["normalize_phone", "sha256"] } }"#;

/// A sync's lines: its mode, fields and (unless a suppression list) the consent rule.
fn sync(mode: &str, fields: &str, consent: bool) -> String {
    let consent = if consent { "consent = { column = \"opt_in\" }" } else { "" };
    format!("mode = \"{mode}\"\n{fields}\n{consent}")
}

impl Scenario {
    /// Create and fill the table, start the vendors (seeded as each test says), write the config
    /// and start the poller and every sink.
    pub(super) async fn start() -> Scenario {
        telemetry();
        require_kafka();
        let db = require_postgres().await;
        let redis = require_redis().await;
        let table = unique("it_modes");
        let prefix = unique("modes");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, phone text, name text NOT NULL, plan text NOT NULL, opt_in boolean NOT NULL)"
        ))
        .await
        .expect("create the table");
        for row in &SNAPSHOT {
            insert(&db, &table, row).await;
        }
        let destinations = destinations(&prefix).await;
        std::env::set_var("SLUICE_MODES_WAREHOUSE_URL", postgres_url());
        std::env::set_var("SLUICE_MODES_REDIS_URL", redis_url());
        std::env::set_var("SLUICE_MODES_TOKEN", TOKEN);
        let text = config_text(&prefix, &table, &destinations);
        let config = Arc::new(Config::parse("sync-modes.toml", &text).unwrap_or_else(|e| panic!("the sync-modes config is valid: {e}\n{text}")));
        let stop = CancellationToken::new();
        let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), stop.clone()));
        let sinks = destinations
            .iter()
            .map(|d| {
                let (config, stop, name) = (Arc::clone(&config), stop.clone(), d.name.clone());
                (d.name.clone(), tokio::spawn(async move { sluice_sink::run(config, &name, Health::new(), stop).await }))
            })
            .collect();
        let groups = destinations.iter().map(|d| (d.name.clone(), group_reader(&naming::sink_group(&prefix, &d.name)))).collect();
        Scenario { prefix, table, db, redis, destinations, stop, poller, sinks, groups }
    }

    /// Wait until every sink has finished (applied, skipped or dead-lettered, and committed)
    /// every change event: once the `append` webhook, which receives every change as an event,
    /// holds `changes` of them, the change topic must hold exactly `records` (tombstones
    /// included: nothing invented), and every sink's group must have committed past them.
    pub(super) async fn wait_until_all_finished(&self, changes: usize, records: usize) {
        let Some(Vendor::Webhook(append)) = self.destinations.iter().find(|d| d.name == "webhook-append").map(|d| &d.vendor) else {
            panic!("the append webhook is configured")
        };
        eventually(&format!("{changes} changes at the append webhook"), WAIT, || append.records().len() >= changes).await;
        let topic = naming::change_topic(&self.prefix, "customers");
        let log = read_topic(&topic);
        assert_eq!(log.len(), records, "the change topic: {log:?}");
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for record in &log {
            let end = ends.entry(record.partition).or_default();
            *end = (*end).max(record.offset + 1);
        }
        for (name, consumer) in &self.groups {
            eventually(&format!("{name} finished every change"), WAIT, || committed_past(consumer, &topic, &ends)).await;
        }
    }

    /// The dead letters of a destination.
    pub(super) fn dead_letters(&self, name: &str) -> Vec<ReadRecord> {
        read_topic(&naming::dead_letter_topic(&self.prefix, name))
    }

    /// Stop everything (each service must stop cleanly) and drop the table and Redis keys.
    pub(super) async fn finish(mut self) {
        self.stop.cancel();
        self.poller.await.expect("poller task").expect("poller stops cleanly");
        for (name, sink) in self.sinks.drain(..) {
            sink.await.expect("sink task").unwrap_or_else(|e| panic!("sink {name} stops cleanly: {e}"));
        }
        self.db.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table)).await.ok();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut self.redis).await.unwrap_or_default();
        if !keys.is_empty() {
            let deleted: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query_async(&mut self.redis).await;
            if let Err(error) = deleted {
                eprintln!("deleting the run's Redis keys failed: {error}");
            }
        }
    }
}

/// Insert one row (plan `free`, consenting).
pub(super) async fn insert(db: &tokio_postgres::Client, table: &str, &(id, email, phone, name): &Row) {
    db.execute(&format!("INSERT INTO {table} (id, email, phone, name, plan, opt_in) VALUES ($1, $2, $3, $4, 'free', true)"), &[&id, &email, &phone, &name])
        .await
        .expect("insert a row");
}

/// A consumer of `group` that never joins it: it only reads the group's committed offsets.
fn group_reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer")
}

/// Whether the group committed, on every partition of `topic` that has records, past the last
/// of them (`ends`: partition → last offset + 1).
fn committed_past(consumer: &BaseConsumer, topic: &str, ends: &HashMap<i32, i64>) -> bool {
    let mut list = TopicPartitionList::new();
    for &partition in ends.keys() {
        list.add_partition(topic, partition);
    }
    let Ok(committed) = consumer.committed_offsets(list, Duration::from_secs(5)) else { return false };
    ends.iter().all(|(&partition, &end)| {
        matches!(committed.find_partition(topic, partition).map(|p| p.offset()), Some(Offset::Offset(at)) if at >= end)
    })
}

/// Every (destination, mode) pair a kind honours, each with its vendor, seeded as the tests
/// expect: `update` vendors hold Ada and Cy before the run, `create` vendors hold Cy (under
/// other values), suppression lists hold everyone who will buy and one who never does.
async fn destinations(prefix: &str) -> Vec<Destination> {
    let mut out = Vec::new();
    for mode in ["upsert", "update", "create", "mirror", "append", "audience"] {
        let (url, received) = receiver::start().await;
        out.push(Destination {
            name: format!("webhook-{mode}"),
            vendor: Vendor::Webhook(received),
            table: format!("[destinations.webhook]\nurl = \"{url}\""),
            sync: sync(mode, PLAIN_FIELDS, true),
        });
    }
    out.extend(redis_destinations(prefix).await);
    for mode in ["upsert", "update", "create", "mirror"] {
        let (url, server) = contract::hubspot::start(TOKEN).await;
        match mode {
            "update" => ["ada@example.com", "cy@example.com"].iter().for_each(|email| drop(server.seed(serde_json::json!({"email": email, "firstname": "Seeded", "plan": "seed"})))),
            "create" => drop(server.seed(serde_json::json!({"email": "cy@example.com", "firstname": "Seeded", "plan": "seed"}))),
            _ => {}
        }
        out.push(Destination {
            name: format!("hubspot-{mode}"),
            vendor: Vendor::HubSpot(server),
            table: format!("[destinations.hubspot]\nbase_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}"),
            sync: sync(mode, HUBSPOT_FIELDS, true),
        });
    }
    for mode in ["upsert", "mirror"] {
        let (url, server) = contract::salesforce::start(TOKEN).await;
        out.push(Destination {
            name: format!("salesforce-{mode}"),
            vendor: Vendor::Salesforce(server),
            table: format!(
                "[destinations.salesforce]\ninstance_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}\nsobject = \"Contact\"\nexternal_id_field = \"Warehouse_Id__c\""
            ),
            sync: sync(mode, SALESFORCE_FIELDS, true),
        });
    }
    out.extend(braze_destinations().await);
    out.extend(meta_destinations().await);
    out
}

async fn redis_destinations(prefix: &str) -> Vec<Destination> {
    let mut out = Vec::new();
    let mut redis = require_redis().await;
    for mode in ["upsert", "update", "create", "mirror"] {
        let keys = format!("{prefix}:hash-{mode}");
        let seeded: &[i64] = match mode {
            "update" => &[1],
            "create" => &[3],
            _ => &[],
        };
        for id in seeded {
            let _: () = redis::cmd("HSET").arg(format!("{keys}:customers:{id}")).arg("name").arg("Seeded").arg("plan").arg("seed").query_async(&mut redis).await.expect("HSET");
        }
        out.push(Destination {
            name: format!("redis-hash-{mode}"),
            vendor: Vendor::RedisHash(keys.clone()),
            table: format!("[destinations.redis]\nurl = {{ env = \"SLUICE_MODES_REDIS_URL\" }}\nkey_template = \"{keys}:{{model}}:{{key}}\""),
            sync: sync(mode, PLAIN_FIELDS, true),
        });
    }
    for mode in ["upsert", "audience", "mirror"] {
        let set = format!("{prefix}:set-{mode}");
        out.push(Destination {
            name: format!("redis-set-{mode}"),
            vendor: Vendor::RedisSet(set.clone()),
            table: format!("[destinations.redis]\nurl = {{ env = \"SLUICE_MODES_REDIS_URL\" }}\nmode = \"set\"\nset_key = \"{set}\"\nmember_field = \"email\""),
            sync: sync(mode, SET_FIELDS, true),
        });
    }
    out
}

/// Braze users are keyed by email; `update` holds Ada and Cy, suppression lists hold
/// everyone subscribed (and Fay, who never buys).
async fn braze_destinations() -> Vec<Destination> {
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
        out.push(Destination {
            name: if suppression { format!("braze-suppression-{mode}") } else { format!("braze-{mode}") },
            vendor: Vendor::Braze(server),
            table: format!("[destinations.braze]\nbase_url = \"{url}\"\napi_key = {{ env = \"SLUICE_MODES_TOKEN\" }}\nidentifier = \"email\"\nmode = \"{braze_mode}\""),
            sync: sync(mode, BRAZE_FIELDS, !suppression),
        });
    }
    out
}

/// Meta audiences keyed by EMAIL and PHONE; the suppression list holds everyone who will buy
/// and Zed, a prospect who never does.
async fn meta_destinations() -> Vec<Destination> {
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
        out.push(Destination {
            name: if suppression { format!("meta-suppression-{mode}") } else { format!("meta-{mode}") },
            vendor: Vendor::Meta(server),
            table: format!(
                "[destinations.meta]\nbase_url = \"{url}\"\naccess_token = {{ env = \"SLUICE_MODES_TOKEN\" }}\naudience_id = \"{META_AUDIENCE}\"\nidentifiers = {{ email = \"EMAIL\", phone = \"PHONE\" }}\nmode = \"{meta_mode}\""
            ),
            sync: sync(mode, META_FIELDS, !suppression),
        });
    }
    out
}

/// The configuration: the model in `diff` mode (deletes seen, `before` images), every
/// destination with one sync of the model.
fn config_text(prefix: &str, table: &str, destinations: &[Destination]) -> String {
    let mut text = format!(
        r#"[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"
partitions = 2

[warehouse]
kind = "postgres"
url = {{ env = "SLUICE_MODES_WAREHOUSE_URL" }}

[[models]]
name = "customers"
table = "{table}"
primary_key = ["id"]
columns = ["id", "email", "phone", "name", "plan", "opt_in"]
detection = {{ mode = "diff" }}
poll_interval_ms = 200
"#,
        kafka = kafka_bootstrap()
    );
    for d in destinations {
        text.push_str(&format!(
            "\n[[destinations]]\nname = \"{}\"\nbatch_linger_ms = 20\nmax_concurrency = 2\nretry = {{ initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 5 }}\n{}\n",
            d.name, d.table
        ));
    }
    for d in destinations {
        text.push_str(&format!("\n[[syncs]]\nmodel = \"customers\"\ndestination = \"{}\"\n{}\n", d.name, d.sync));
    }
    text
}
