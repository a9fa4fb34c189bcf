//! The pipeline every sync-mode test drives: one PostgreSQL table in `diff` mode, the real
//! poller, Kafka, and one in-process sink per (destination, mode) pair, each against its own
//! vendor (a contract server, a webhook receiver, or a key prefix of the real Redis). The cases
//! are each kind's own (`sync_mode_cases` in `destinations/<kind>.rs`, collected by
//! `destinations::sync_mode_cases`): this fixture names no kind but the webhook that watches
//! for every change to arrive.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_integration_tests::receiver::{self, Received};
use sluice_integration_tests::suppression::{redis_url, require_redis};
use sluice_integration_tests::{eventually, kafka_bootstrap, postgres_url, read_topic, require_kafka, require_postgres, telemetry, toml_text, unique, ReadRecord};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) const WAIT: Duration = Duration::from_secs(120);
/// The vendors' token: kind tables reference it as `{ env = "SLUICE_MODES_TOKEN" }`.
pub(crate) const TOKEN: &str = "sync-modes-token";
/// The destination that watches every change arrive (an `append` webhook).
const WATCH: &str = "watch-append";

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

/// A future a vendor check returns.
pub(crate) type Check<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where one case's records land, and what they must be at the end.
pub(crate) trait Vendor: Send + Sync {
    /// Assert the vendor ends as its kind's doc page says for the case `name`, after the
    /// snapshot and the changes of the test (`redis`: a connection to the real Redis).
    fn check<'a>(&'a self, name: &'a str, redis: &'a mut redis::aio::MultiplexedConnection) -> Check<'a>;
}

/// A vendor whose end state is the shared state of a contract server (or webhook receiver),
/// checked by its kind's function: every kind but Redis, which reads the real server.
pub(crate) struct Checked<T>(pub Arc<T>, pub fn(&str, &T));

impl<T: Send + Sync> Vendor for Checked<T> {
    fn check<'a>(&'a self, name: &'a str, _: &'a mut redis::aio::MultiplexedConnection) -> Check<'a> {
        let (state, check) = (&self.0, self.1);
        Box::pin(async move { check(name, state) })
    }
}

/// One (destination, mode) case: a configured destination with its one sync.
pub(crate) struct Case {
    pub name: String,
    pub vendor: Box<dyn Vendor>,
    /// The `[destinations.<kind>]` table.
    pub table: String,
    /// The sync's `mode`, `fields` and `consent` lines ([`sync`]).
    pub sync: String,
    /// Whether the identifier is the email, so row 5 (a blank email) is dead-lettered.
    pub keyed_by_email: bool,
}

/// The running pipeline.
pub(super) struct Scenario {
    pub prefix: String,
    pub table: String,
    pub db: tokio_postgres::Client,
    pub redis: redis::aio::MultiplexedConnection,
    pub cases: Vec<Case>,
    /// The `append` webhook that receives every change as an event.
    watch: Arc<Received>,
    stop: CancellationToken,
    poller: JoinHandle<anyhow::Result<()>>,
    sinks: Vec<(String, JoinHandle<Result<(), sluice_sink::SinkError>>)>,
    /// Per destination, a consumer of its sink's group, to read what the sink committed.
    groups: Vec<(String, BaseConsumer)>,
}

/// A sync's lines: its mode, fields and (unless a suppression list) the consent rule.
pub(crate) fn sync(mode: &str, fields: &str, consent: bool) -> String {
    let consent = if consent { "consent = { column = \"opt_in\" }" } else { "" };
    format!("mode = \"{mode}\"\n{fields}\n{consent}")
}

impl Scenario {
    /// Create and fill the table, write the config of `cases` (their vendors started and seeded
    /// as each kind's checks expect, keys under `prefix`) and the watching webhook, and start the
    /// poller and every sink.
    pub(super) async fn start(prefix: String, cases: Vec<Case>) -> Scenario {
        telemetry();
        require_kafka();
        let db = require_postgres().await;
        let redis = require_redis().await;
        let table = unique("it_modes");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, phone text, name text NOT NULL, plan text NOT NULL, opt_in boolean NOT NULL)"
        ))
        .await
        .expect("create the table");
        for row in &SNAPSHOT {
            insert(&db, &table, row).await;
        }
        let (watch_url, watch) = receiver::start().await;
        let mut destinations: Vec<(&str, &str, &str)> = cases.iter().map(|c| (c.name.as_str(), c.table.as_str(), c.sync.as_str())).collect();
        let watch_table = format!("[destinations.webhook]\nurl = \"{watch_url}\"");
        let watch_sync = sync("append", r#"fields = { email = "email", name = "name", plan = "plan" }"#, true);
        destinations.push((WATCH, &watch_table, &watch_sync));
        std::env::set_var("SLUICE_MODES_WAREHOUSE_URL", postgres_url());
        std::env::set_var("SLUICE_MODES_REDIS_URL", redis_url());
        std::env::set_var("SLUICE_MODES_TOKEN", TOKEN);
        let text = config_text(&prefix, &table, &destinations);
        let config = Arc::new(Config::parse("sync-modes.toml", &text).unwrap_or_else(|e| panic!("the sync-modes config is valid: {e}\n{text}")));
        let stop = CancellationToken::new();
        let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), stop.clone()));
        let sinks = destinations
            .iter()
            .map(|&(name, _, _)| {
                let (config, stop, name) = (Arc::clone(&config), stop.clone(), name.to_string());
                (name.clone(), tokio::spawn(async move { sluice_sink::run(config, &name, Health::new(), stop).await }))
            })
            .collect();
        let groups = destinations.iter().map(|&(name, _, _)| (name.to_string(), group_reader(&naming::sink_group(&prefix, name)))).collect();
        Scenario { prefix, table, db, redis, cases, watch, stop, poller, sinks, groups }
    }

    /// Wait until every sink has finished (applied, skipped or dead-lettered, and committed)
    /// every change event: once the watching `append` webhook, which receives every change as
    /// an event, holds `changes` of them, the change topic must hold exactly `records` (tombstones
    /// included: nothing invented), and every sink's group must have committed past them.
    pub(super) async fn wait_until_all_finished(&self, changes: usize, records: usize) {
        eventually(&format!("{changes} changes at the watching webhook"), WAIT, || self.watch.records().len() >= changes).await;
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

/// The configuration: the model in `diff` mode (deletes seen, `before` images), every
/// destination with one sync of the model.
fn config_text(prefix: &str, table: &str, destinations: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        "{}\n{}",
        toml_text::services_on(&kafka_bootstrap(), prefix, "partitions = 2", "SLUICE_MODES_WAREHOUSE_URL"),
        toml_text::Model::table("customers", table, &["id", "email", "phone", "name", "plan", "opt_in"], r#"{ mode = "diff" }"#).poll_interval_ms(200)
    );
    for (name, kind_table, _) in destinations {
        let settings = "batch_linger_ms = 20\nmax_concurrency = 2\nretry = { initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 5 }";
        text.push_str(&format!("\n{}", toml_text::destination(name, settings, kind_table)));
    }
    for (name, _, sync) in destinations {
        text.push_str(&format!("\n{}", toml_text::sync("customers", name, sync)));
    }
    text
}
