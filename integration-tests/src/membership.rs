//! Suppression that holds (issue 10): a `customers` model synced to three destinations — a Meta
//! prospecting audience, a Redis set of prospects the website reads, Braze marketing email —
//! each sync with a consent rule and `suppressed_by = ["recent_buyers"]`, a suppression list
//! over a `purchases` model. The real poller, Kafka, PostgreSQL, Redis and the sinks; Meta and
//! Braze are their contract servers.
//!
//! The Meta sink runs in this process, or as the `sluice-sink` binary so a test can SIGKILL it
//! ([`Run::kill_meta`], [`Run::start_meta`]); the poller and the other sinks run in this
//! process. The steps a test takes are methods, so a scenario is a list of them (see
//! `tests/it/suppression.rs`): a purchase ([`Run::purchase`]), an attribute change
//! ([`Run::rename`]), consent changes ([`Run::set_consent`]), the purchase row deleted
//! ([`Run::delete_purchase`]), a customer's latest change sent again through every
//! destination's side topic, as `sluice backfill` does ([`Run::backfill`]); waits until each
//! sink finished a change ([`Run::processed`]); and what each destination holds.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_kafka::side::{Original, SideProducer, SideRecord};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::contract::{braze::BrazeState, meta::MetaState};
use crate::suppression::{delete_topics, redis_url, require_redis, sha256_hex};
use crate::{kafka_bootstrap, postgres_url, read_topic, require_kafka, require_postgres, telemetry, toml_text, unique};

/// Destination names, as in the config.
pub const META: &str = "meta-prospects";
pub const REDIS: &str = "site-prospects";
pub const BRAZE: &str = "braze-marketing";
pub const DESTINATIONS: [&str; 3] = [META, REDIS, BRAZE];

const META_TOKEN: &str = "EAAB-stage-token";
const META_AUDIENCE: &str = "23851234567891";
const BRAZE_KEY: &str = "braze-stage-key";

/// How a run is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run the Meta sink as the `sluice-sink` binary (so it can be SIGKILLed), not in-process.
    pub meta_as_process: bool,
    /// TOML lines added to the `purchases` model (e.g. an expiry).
    pub purchases_extra: String,
}

/// How the Meta sink runs.
enum MetaSink {
    /// Stopped with the run's token.
    InProcess(JoinHandle<Result<(), sluice_sink::SinkError>>),
    Process(KillOnDrop),
    Stopped,
}

/// A child process that a failing test does not leave running.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// SIGKILL, and reap.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// A running pipeline; see the module docs.
pub struct Run {
    pub prefix: String,
    customers: String,
    purchases: String,
    tag: String,
    db: tokio_postgres::Client,
    redis: redis::aio::MultiplexedConnection,
    set_key: String,
    pub meta: Arc<MetaState>,
    pub braze: Arc<BrazeState>,
    config: Arc<Config>,
    config_path: PathBuf,
    stop: CancellationToken,
    poller: JoinHandle<anyhow::Result<()>>,
    meta_sink: MetaSink,
    sinks: Vec<(&'static str, JoinHandle<Result<(), sluice_sink::SinkError>>)>,
}

impl Run {
    /// Create the tables and the config, start the poller and the sinks. Nothing is in the
    /// tables yet.
    pub async fn start(options: Options) -> Run {
        telemetry();
        require_kafka();
        let db = require_postgres().await;
        let redis = require_redis().await;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let (customers, purchases) = (format!("stage_customers_{tag}"), format!("stage_purchases_{tag}"));
        let prefix = unique("stage");
        let set_key = format!("{prefix}:prospects");
        db.batch_execute(&format!(
            "CREATE TABLE {customers} (id bigint PRIMARY KEY, email text, first_name text NOT NULL, marketing_opt_in boolean, \
               updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL);
             CREATE TABLE {purchases} (id bigint PRIMARY KEY, email text, amount numeric(10,2) NOT NULL, \
               purchased_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);"
        ))
        .await
        .expect("create the tables");
        let (meta_url, meta) = crate::contract::meta::start(META_TOKEN, META_AUDIENCE).await;
        let (braze_url, braze) = crate::contract::braze::start(BRAZE_KEY).await;
        std::env::set_var("SLUICE_STAGE_WAREHOUSE_URL", postgres_url());
        std::env::set_var("SLUICE_STAGE_REDIS_URL", redis_url());
        std::env::set_var("SLUICE_STAGE_META_TOKEN", META_TOKEN);
        std::env::set_var("SLUICE_STAGE_BRAZE_KEY", BRAZE_KEY);
        let text = config_text(&prefix, &customers, &purchases, &options.purchases_extra, &set_key, &meta_url, &braze_url);
        let config = Arc::new(Config::parse("stage.toml", &text).expect("the stage config is valid"));
        let dir = std::env::temp_dir().join(unique("sluice-stage"));
        std::fs::create_dir_all(&dir).expect("config dir");
        let config_path = dir.join("sluice.toml");
        std::fs::write(&config_path, &text).expect("write the config");

        let stop = CancellationToken::new();
        let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), stop.clone()));
        let sinks = [REDIS, BRAZE].into_iter().map(|name| (name, spawn_sink(&config, name, stop.child_token()))).collect();
        let mut run = Run {
            prefix,
            customers,
            purchases,
            tag,
            db,
            redis,
            set_key,
            meta,
            braze,
            config,
            config_path,
            stop,
            poller,
            meta_sink: MetaSink::Stopped,
            sinks,
        };
        run.start_meta(options.meta_as_process);
        run
    }

    /// Start the Meta sink: the binary, or in this process.
    pub fn start_meta(&mut self, as_process: bool) {
        assert!(matches!(self.meta_sink, MetaSink::Stopped), "the Meta sink is already running");
        self.meta_sink = if as_process {
            let child = std::process::Command::new(crate::binary("sluice-sink"))
                .args(["--config", self.config_path.to_str().expect("utf-8 path"), "--destination", META, "--ops-listen", "127.0.0.1:0"])
                .env("RUST_LOG", "warn")
                .spawn()
                .expect("the sink binary starts");
            MetaSink::Process(KillOnDrop(child))
        } else {
            MetaSink::InProcess(spawn_sink(&self.config, META, self.stop.child_token()))
        };
    }

    /// SIGKILL the Meta sink's process: nothing is drained or committed.
    pub fn kill_meta(&mut self) {
        let MetaSink::Process(child) = std::mem::replace(&mut self.meta_sink, MetaSink::Stopped) else {
            panic!("the Meta sink is not a process");
        };
        child.kill();
    }

    /// The normalised email of customer `id`.
    pub fn email(&self, id: i64) -> String {
        format!("customer{id}.{}@example.com", self.tag)
    }

    /// Insert customer `id` (email in its normalised form).
    pub async fn add_customer(&self, id: i64, first_name: &str, opt_in: bool) {
        self.db
            .execute(
                &format!(
                    "INSERT INTO {} (id, email, first_name, marketing_opt_in, updated_at, created_at) VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp())",
                    self.customers
                ),
                &[&id, &self.email(id), &first_name, &opt_in],
            )
            .await
            .expect("insert a customer");
    }

    /// Change customer `id`'s first name (an attribute change).
    pub async fn rename(&self, id: i64, first_name: &str) {
        self.update_customer(id, "first_name = $2", &first_name).await;
    }

    /// Set customer `id`'s marketing consent.
    pub async fn set_consent(&self, id: i64, opt_in: bool) {
        self.update_customer(id, "marketing_opt_in = $2", &opt_in).await;
    }

    async fn update_customer(&self, id: i64, set: &str, value: &(dyn tokio_postgres::types::ToSql + Sync)) {
        let updated = self
            .db
            .execute(&format!("UPDATE {} SET {set}, updated_at = clock_timestamp() WHERE id = $1", self.customers), &[&id, value])
            .await
            .expect("update a customer");
        assert_eq!(updated, 1, "customer {id} exists");
    }

    /// Customer `id` buys (purchase row `purchase`), the email written as a shop's form would
    /// leave it: surrounding spaces, mixed case.
    pub async fn purchase(&self, purchase: i64, id: i64) {
        let written = format!("  {} ", self.email(id).replacen("customer", "Customer", 1).replace("@example.com", "@Example.COM"));
        self.db
            .execute(
                &format!(
                    "INSERT INTO {} (id, email, amount, purchased_at, updated_at) VALUES ($1, $2, 42.50, clock_timestamp(), clock_timestamp())",
                    self.purchases
                ),
                &[&purchase, &written],
            )
            .await
            .expect("insert a purchase");
    }

    /// Delete purchase row `purchase` (a refund, or the end of the suppression window): the
    /// poller's reconciliation emits it as a delete.
    pub async fn delete_purchase(&self, purchase: i64) {
        let deleted = self.db.execute(&format!("DELETE FROM {} WHERE id = $1", self.purchases), &[&purchase]).await.expect("delete a purchase");
        assert_eq!(deleted, 1, "purchase {purchase} exists");
    }

    /// Whether Meta's audience holds customer `id`.
    pub fn in_meta(&self, id: i64) -> bool {
        self.meta.has_member("EMAIL", &sha256_hex(&self.email(id)))
    }

    /// Whether the website's prospect set holds customer `id`.
    pub async fn in_redis(&self, id: i64) -> bool {
        let mut redis = self.redis.clone();
        let members: Vec<String> = redis::cmd("SMEMBERS").arg(&self.set_key).query_async(&mut redis).await.expect("SMEMBERS");
        members.contains(&self.email(id))
    }

    /// Customer `id`'s Braze user, if created.
    pub fn braze_user(&self, id: i64) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.braze.user(&self.email(id))
    }

    /// Customer `id`'s Braze `email_subscribe`.
    pub fn braze_subscription(&self, id: i64) -> Option<String> {
        self.braze_user(id).and_then(|u| u.get("email_subscribe").and_then(|v| v.as_str()).map(str::to_string))
    }

    /// Meta rows applied so far for customer `id`, in order: `POST` (add) or `DELETE` (remove).
    pub fn meta_operations(&self, id: i64) -> Vec<String> {
        let hash = sha256_hex(&self.email(id));
        self.meta.applied().into_iter().filter(|a| a.row.get("EMAIL") == Some(&hash)).map(|a| a.method).collect()
    }

    /// Braze objects applied so far to customer `id`, in order.
    pub fn braze_objects(&self, id: i64) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let email = self.email(id);
        self.braze.applied().into_iter().filter(|a| a.id == email).map(|a| a.attributes).collect()
    }

    /// Wait until every destination's sink finished (applied, and committed) the latest change
    /// of customer `id` whose first name is `first_name`.
    pub async fn processed(&self, id: i64, first_name: &str, timeout: Duration) {
        let topic = naming::change_topic(&self.prefix, "customers");
        let deadline = tokio::time::Instant::now() + timeout;
        let (partition, offset) = loop {
            if let Some(found) = self.change_of(&topic, id, first_name) {
                break found;
            }
            assert!(tokio::time::Instant::now() < deadline, "no change of customer {id} with first name {first_name:?} in {topic}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for destination in DESTINATIONS {
            let group = naming::sink_group(&self.prefix, destination);
            loop {
                let committed = {
                    let (group, topic) = (group.clone(), topic.clone());
                    tokio::task::spawn_blocking(move || committed_offset(&group, &topic, partition)).await.expect("committed offsets")
                };
                if committed.is_some_and(|c| c > offset) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{destination} did not finish {topic}/{partition}/{offset} within {timeout:?} (committed {committed:?})");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Send customer `id`'s latest change again, through every destination's side topic (what
    /// `sluice backfill` does), and wait until each sink finished and committed it there.
    pub async fn backfill(&self, id: i64, timeout: Duration) {
        let topic = naming::change_topic(&self.prefix, "customers");
        let records = read_topic(&topic);
        let events = crate::decode_events(&self.prefix, &records);
        let latest = records
            .iter()
            .filter(|r| r.payload.is_some())
            .zip(&events)
            .filter(|(_, e)| e.current("id") == Some(&sluice_core::Value::Long(id)))
            .map(|(r, _)| r)
            .last()
            .unwrap_or_else(|| panic!("no change of customer {id} in {topic}"));
        let original = Original { topic: topic.clone(), partition: latest.partition, offset: latest.offset, timestamp_ms: None };
        let mut record = SideRecord::new(original, latest.key.clone().expect("a keyed change"), latest.payload.clone(), "test-backfill");
        record.kept = latest.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for destination in DESTINATIONS {
            let side = naming::side_topic(&self.prefix, destination);
            SideProducer::new(&self.config.kafka, side.clone()).expect("side producer").send(&record).await.expect("side record sent");
            let group = naming::sink_group(&self.prefix, destination);
            loop {
                let committed = {
                    let (group, side) = (group.clone(), side.clone());
                    let partition = latest.partition;
                    tokio::task::spawn_blocking(move || committed_offset(&group, &side, partition)).await.expect("committed offsets")
                };
                let high = {
                    let (kafka, side) = (self.config.kafka.clone(), side.clone());
                    let partition = latest.partition;
                    tokio::task::spawn_blocking(move || sluice_kafka::groups::watermarks(&kafka, &side).expect("watermarks").into_iter().find(|w| w.0 == partition).map(|w| w.2))
                        .await
                        .expect("watermarks")
                };
                if committed.is_some() && committed == high {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{destination} did not finish its side record within {timeout:?} (committed {committed:?}, end {high:?})");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Where the latest change of customer `id` with that first name is in the change topic.
    fn change_of(&self, topic: &str, id: i64, first_name: &str) -> Option<(i32, i64)> {
        let records = read_topic(topic);
        let events = crate::decode_events(&self.prefix, &records);
        let with_payload = records.iter().filter(|r| r.payload.is_some());
        with_payload
            .zip(&events)
            .filter(|(_, e)| {
                e.current("id") == Some(&sluice_core::Value::Long(id)) && e.current("first_name") == Some(&sluice_core::Value::String(first_name.to_string()))
            })
            .map(|(r, _)| (r.partition, r.offset))
            .last()
    }

    /// Stop everything (each service must stop cleanly), then count each destination's dead
    /// letters and drop the tables, the Redis set and the topics.
    pub async fn finish(mut self) -> Vec<(&'static str, usize)> {
        self.stop.cancel();
        match std::mem::replace(&mut self.meta_sink, MetaSink::Stopped) {
            MetaSink::InProcess(handle) => handle.await.expect("sink task").expect("the Meta sink stops cleanly"),
            MetaSink::Process(child) => child.kill(),
            MetaSink::Stopped => {}
        }
        for (name, sink) in self.sinks.drain(..) {
            sink.await.expect("sink task").unwrap_or_else(|e| panic!("sink {name} stops cleanly: {e}"));
        }
        self.poller.await.expect("poller task").expect("the poller stops cleanly");
        let dead_letters = DESTINATIONS.iter().map(|&d| (d, read_topic(&naming::dead_letter_topic(&self.prefix, d)).len())).collect();
        self.db.batch_execute(&format!("DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}", self.customers, self.purchases)).await.ok();
        let deleted: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.set_key).query_async(&mut self.redis).await;
        if let Err(error) = deleted {
            eprintln!("deleting the prospect set {} failed: {error}", self.set_key);
        }
        delete_topics(&self.prefix).await;
        if let Some(dir) = self.config_path.parent() {
            std::fs::remove_dir_all(dir).ok();
        }
        dead_letters
    }
}

fn spawn_sink(config: &Arc<Config>, name: &'static str, stop: CancellationToken) -> JoinHandle<Result<(), sluice_sink::SinkError>> {
    let config = Arc::clone(config);
    tokio::spawn(async move { sluice_sink::run(config, name, Health::new(), stop).await })
}

/// The group's committed offset of one partition. Blocking.
fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).ok()?;
    match committed.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// Purchases are cursor-polled without a created column; reconciliation finds their hard deletes.
const PURCHASES_DETECTION: &str = r#"{ mode = "cursor", cursor_column = "updated_at", reconcile_interval_ms = 1000 }"#;

/// What makes a customer a member in every sync: consent, and not being a recent buyer (by
/// normalised email).
const MEMBERSHIP: &str = r#"consent = { column = "marketing_opt_in" }
suppressed_by = ["recent_buyers"]
identifier = { column = "email", transforms = ["normalize_email"] }"#;

/// The configuration a user would write for this job: one customers model, three syncs of it,
/// each honouring consent and the `recent_buyers` list.
fn config_text(prefix: &str, customers: &str, purchases: &str, purchases_extra: &str, set_key: &str, meta_url: &str, braze_url: &str) -> String {
    format!(
        r#"{services}
{customers}
# Hard deletes (a refund) are found by reconciliation.
{purchases}
# A buyer stays out of every prospecting sync below until their purchase row is gone.
[[suppression_lists]]
name = "recent_buyers"
model = "purchases"
identifier = {{ column = "email", transforms = ["normalize_email"] }}

[[destinations]]
name = "{META}"
batch_max_records = 10000
batch_linger_ms = 20
{meta}
[[destinations]]
name = "{REDIS}"
batch_linger_ms = 20
{redis}
[[destinations]]
name = "{BRAZE}"
batch_max_records = 75
batch_linger_ms = 20
[destinations.braze]
base_url = "{braze_url}"
api_key = {{ env = "SLUICE_STAGE_BRAZE_KEY" }}
identifier = "email"
mode = "attributes"
unsubscribe_email = true

[[syncs]]
model = "customers"
destination = "{META}"
mode = "audience"
fields = {{ email = "email" }}
{membership}

[[syncs]]
model = "customers"
destination = "{REDIS}"
mode = "audience"
fields = {{ email = {{ column = "email", transforms = ["normalize_email"] }} }}
{membership}

# Upsert: a member's attributes are written (and it is subscribed); a row that leaves is
# unsubscribed.
[[syncs]]
model = "customers"
destination = "{BRAZE}"
mode = "upsert"
fields = {{ email = "email", first_name = "first_name", email_subscribe = {{ value = "subscribed" }} }}
{membership}
"#,
        services = toml_text::services_on(
            &kafka_bootstrap(),
            prefix,
            // A SIGKILLed sink stays in its group until its session times out; a short one keeps restarts quick.
            r#"properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }"#,
            "SLUICE_STAGE_WAREHOUSE_URL"
        ),
        customers = toml_text::Model::table("customers", customers, &["id", "email", "first_name", "marketing_opt_in", "updated_at", "created_at"], toml_text::CURSOR)
            .poll_interval_ms(300),
        purchases = toml_text::Model::table("purchases", purchases, &["id", "email", "amount", "purchased_at", "updated_at"], PURCHASES_DETECTION)
            .poll_interval_ms(300)
            .extra(purchases_extra),
        meta = toml_text::meta_audience(meta_url, "SLUICE_STAGE_META_TOKEN", META_AUDIENCE, "mode = \"audience\""),
        redis = toml_text::redis_set("SLUICE_STAGE_REDIS_URL", set_key, ""),
        membership = MEMBERSHIP,
    )
}
