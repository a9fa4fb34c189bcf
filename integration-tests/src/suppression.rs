//! The scenario users care most about (issue 5): a purchase row committed in the warehouse takes
//! the buyer out of a Meta prospecting audience, adds them to the Redis suppression set a
//! website reads, and unsubscribes them in Braze.
//!
//! Shared by the correctness test (`tests/it/suppression.rs`) and the latency benchmark
//! (`src/bin/bench_suppression.rs`), so both run exactly the same pipeline: the real poller and
//! three real sinks in this process (`sluice_poller::run`, `sluice_sink::run`: what the
//! binaries' `main` call), the real Kafka, PostgreSQL and Redis, and the Meta and Braze contract
//! servers. In-process rather than as processes so that every timestamp (the warehouse commit,
//! each destination's receipt) is read from one monotonic clock.
//!
//! The configuration is what a user would write (see [`Scenario::config_text`]): one `purchases`
//! model in cursor mode and three `upsert` syncs of it, each destination in its documented
//! suppression form: Meta `mode = "suppression"` (a row's presence removes the person), Redis
//! `mode = "set"` (SADD the normalised email), Braze `mode = "suppression"` (unsubscribe).
//!
//! Acknowledgement times: Meta and Braze, when the contract server applied the row (its receipt
//! `Instant`); Redis, when the member first shows in `SMEMBERS`, polled every 2 ms on a connection
//! of its own (an upper bound, within one poll of the `SADD`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sha2::Digest;
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::contract::{braze::BrazeState, meta::MetaState};
use crate::{kafka_bootstrap, postgres_url, read_topic, require_kafka, require_postgres, telemetry, toml_text, unique};

/// Destination names, as in the config.
pub const META: &str = "meta-prospects";
pub const REDIS: &str = "site-suppression";
pub const BRAZE: &str = "braze-marketing";
/// In the order reports list them.
pub const DESTINATIONS: [&str; 3] = [META, REDIS, BRAZE];

const META_TOKEN: &str = "EAAB-suppression-token";
const META_AUDIENCE: &str = "23851234567890";
const BRAZE_KEY: &str = "braze-rest-key";
const BRAZE_GROUP: &str = "sg-marketing";

/// Redis address (`SLUICE_TEST_REDIS_URL`, default the server of `ops/redis.sh`).
pub fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to Redis, or a failure saying how to start it.
pub async fn require_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("redis url");
    match tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_tokio_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {} ({error}). Start it with `ops/redis.sh start` (or `ops/services.sh up`), \
             or point SLUICE_TEST_REDIS_URL at a server.",
            redis_url()
        ),
        Err(_) => panic!("Redis at {} did not answer within 5 s. Start it with `ops/services.sh up`.", redis_url()),
    }
}

/// Lowercase hex SHA-256, as Meta expects identifiers.
pub fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Knobs of the scenario; everything else is fixed by the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The model's `poll_interval_ms`.
    pub poll_interval_ms: u64,
    /// `batch_linger_ms` of each destination.
    pub linger_ms: u64,
    /// Buyers known to Meta and Braze before the run (purchase ids `0..=buyers`; 0 is the
    /// warm-up purchase).
    pub buyers: usize,
}

/// A purchase committed in the warehouse.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub id: i64,
    /// The email as the warehouse holds it (untrimmed, mixed case: normalising is the
    /// destinations' job).
    pub email: String,
    /// What every destination must end up with: trimmed and lowercased.
    pub normalised: String,
    /// When `INSERT` (autocommit) returned: the commit, as the client saw it.
    pub committed: Instant,
    /// The same moment on the wall clock (ms), to compare with the event's `ts_ms`.
    pub committed_wall_ms: i64,
}

/// When each destination acknowledged a purchase.
#[derive(Debug, Clone, Copy)]
pub struct Acks {
    pub meta: Instant,
    pub redis: Instant,
    pub braze: Instant,
}

impl Acks {
    /// In [`DESTINATIONS`] order.
    pub fn each(&self) -> [Instant; 3] {
        [self.meta, self.redis, self.braze]
    }

    /// The last destination's acknowledgement.
    pub fn last(&self) -> Instant {
        self.meta.max(self.redis).max(self.braze)
    }
}

/// What is left to check once the services stopped.
#[derive(Debug)]
pub struct Outcome {
    /// Dead letters per destination.
    pub dead_letters: Vec<(&'static str, usize)>,
    /// Per purchase id: the event's `ts_ms` (when the poller read the row), from the change topic.
    pub read_at_ms: HashMap<i64, i64>,
}

/// The running pipeline; see the module docs.
pub struct Scenario {
    pub settings: Settings,
    pub config: Arc<Config>,
    text: String,
    pub table: String,
    pub prefix: String,
    pub set_key: String,
    tag: String,
    db: tokio_postgres::Client,
    redis: redis::aio::MultiplexedConnection,
    pub meta: Arc<MetaState>,
    pub braze: Arc<BrazeState>,
    /// The purchase (id 0) that warmed the pipeline up before measurements.
    pub warm_up: Option<Purchase>,
    redis_seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
    poller: JoinHandle<anyhow::Result<()>>,
    sinks: Vec<(&'static str, JoinHandle<Result<(), sluice_sink::SinkError>>)>,
    watcher: JoinHandle<()>,
}

impl Scenario {
    /// Create the table and the config, seed the vendors with the buyers, start the poller and
    /// the three sinks, and wait until a warm-up purchase (id 0) reached all three destinations:
    /// consumer groups joined, connections open, schemas published. Measurements start after.
    pub async fn start(settings: Settings) -> Scenario {
        telemetry();
        require_kafka();
        let db = require_postgres().await;
        let redis = require_redis().await;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let table = format!("purchases_{tag}");
        let prefix = unique("suppression");
        let set_key = format!("{prefix}:suppression:buyers");
        db.batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(10,2) NOT NULL, \
             purchased_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL)"
        ))
        .await
        .expect("create the purchases table");

        let (meta_url, meta) = crate::contract::meta::start(META_TOKEN, META_AUDIENCE).await;
        let (braze_url, braze) = crate::contract::braze::start(BRAZE_KEY).await;
        // Before the run: every buyer is a prospect in the Meta audience and a subscribed Braze
        // user; a few prospects never buy and must stay.
        {
            let mut members = meta.members.lock().unwrap();
            let mut users = braze.users.lock().unwrap();
            for id in 0..=settings.buyers as i64 {
                let email = normalised_email(&tag, id);
                members.push([("EMAIL".to_string(), sha256_hex(&email))].into());
                let user = serde_json::json!({"email": email, "email_subscribe": "subscribed"});
                users.insert(email, user.as_object().unwrap().clone());
            }
            for n in 0..5 {
                members.push([("EMAIL".to_string(), sha256_hex(&prospect_email(&tag, n)))].into());
            }
        }

        std::env::set_var("SLUICE_SUPPRESSION_WAREHOUSE_URL", postgres_url());
        std::env::set_var("SLUICE_SUPPRESSION_REDIS_URL", redis_url());
        std::env::set_var("SLUICE_SUPPRESSION_META_TOKEN", META_TOKEN);
        std::env::set_var("SLUICE_SUPPRESSION_BRAZE_KEY", BRAZE_KEY);
        let text = config_text(&settings, &prefix, &table, &set_key, &meta_url, &braze_url);
        let config = Arc::new(Config::parse("suppression.toml", &text).expect("the suppression config is valid"));

        let stop = CancellationToken::new();
        let redis_seen = Arc::new(Mutex::new(HashMap::new()));
        let watcher = tokio::spawn(watch_set(require_redis().await, set_key.clone(), Arc::clone(&redis_seen), stop.clone()));
        let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), stop.clone()));
        let sinks = DESTINATIONS
            .iter()
            .map(|&name| {
                let (config, stop) = (Arc::clone(&config), stop.clone());
                (name, tokio::spawn(async move { sluice_sink::run(config, name, Health::new(), stop).await }))
            })
            .collect();
        let mut scenario =
            Scenario { settings, config, text, table, prefix, set_key, tag, db, redis, meta, braze, warm_up: None, redis_seen, stop, poller, sinks, watcher };
        let warm_up = scenario.purchase(0).await;
        if let Err(missing) = scenario.wait_for(std::slice::from_ref(&warm_up), Duration::from_secs(90)).await {
            panic!("the warm-up purchase {missing:?} did not reach every destination within 90 s");
        }
        scenario.warm_up = Some(warm_up);
        scenario
    }

    /// The configuration's TOML text (secrets are references to environment variables).
    pub fn config_text(&self) -> &str {
        &self.text
    }

    /// Commit purchase `id` (autocommit `INSERT`); returns when the commit returned.
    pub async fn purchase(&self, id: i64) -> Purchase {
        let email = written_email(&self.tag, id);
        let amount = format!("{}.{:02}", 10 + id % 90, id % 100);
        self.db
            .execute(
                &format!(
                    "INSERT INTO {} (id, email, amount, purchased_at, updated_at, created_at) \
                     VALUES ($1, $2, $3::text::numeric, clock_timestamp(), clock_timestamp(), clock_timestamp())",
                    self.table
                ),
                &[&id, &email, &amount],
            )
            .await
            .expect("insert a purchase");
        Purchase {
            id,
            email,
            normalised: normalised_email(&self.tag, id),
            committed: Instant::now(),
            committed_wall_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// When each destination acknowledged this buyer's suppression, if all three did.
    pub fn acks(&self, purchase: &Purchase) -> Option<Acks> {
        let hash = sha256_hex(&purchase.normalised);
        let meta = self
            .meta
            .applied
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.method == "DELETE" && a.row.get("EMAIL") == Some(&hash))
            .map(|a| a.at)?;
        let braze = self
            .braze
            .applied
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.id == purchase.normalised && a.attributes.get("email_subscribe").and_then(|v| v.as_str()) == Some("unsubscribed"))
            .map(|a| a.at)?;
        let redis = *self.redis_seen.lock().unwrap().get(&purchase.normalised)?;
        Some(Acks { meta, redis, braze })
    }

    /// Wait until every purchase is acknowledged by all three destinations; on timeout, the
    /// ids still missing.
    pub async fn wait_for(&self, purchases: &[Purchase], timeout: Duration) -> Result<Vec<Acks>, Vec<i64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let acks: Vec<Option<Acks>> = purchases.iter().map(|p| self.acks(p)).collect();
            if acks.iter().all(Option::is_some) {
                return Ok(acks.into_iter().map(Option::unwrap).collect());
            }
            if Instant::now() >= deadline {
                return Err(purchases.iter().zip(&acks).filter(|(_, a)| a.is_none()).map(|(p, _)| p.id).collect());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether Meta's audience still holds this normalised email.
    pub fn in_meta_audience(&self, normalised: &str) -> bool {
        self.meta.has_member("EMAIL", &sha256_hex(normalised))
    }

    /// The normalised emails of prospects that never buy (they must stay in the audience).
    pub fn prospects(&self) -> Vec<String> {
        (0..5).map(|n| prospect_email(&self.tag, n)).collect()
    }

    /// A Braze user's `email_subscribe`.
    pub fn braze_subscription(&self, normalised: &str) -> Option<String> {
        self.braze.user(normalised).and_then(|u| u.get("email_subscribe").and_then(|v| v.as_str()).map(str::to_string))
    }

    /// The Redis suppression set's members.
    pub async fn redis_members(&mut self) -> Vec<String> {
        redis::cmd("SMEMBERS").arg(&self.set_key).query_async(&mut self.redis).await.expect("SMEMBERS")
    }

    /// Stop the services (each must stop cleanly), collect dead letters and the poller's read
    /// times, then drop the table, the Redis set and the run's topics.
    pub async fn finish(mut self) -> Outcome {
        self.stop.cancel();
        self.poller.await.expect("poller task").expect("poller stops cleanly");
        for (name, sink) in self.sinks.drain(..) {
            sink.await.expect("sink task").unwrap_or_else(|e| panic!("sink {name} stops cleanly: {e}"));
        }
        self.watcher.await.expect("redis watcher");
        let dead_letters = DESTINATIONS.iter().map(|&d| (d, read_topic(&naming::dead_letter_topic(&self.prefix, d)).len())).collect();
        let changes = read_topic(&naming::change_topic(&self.prefix, "purchases"));
        let read_at_ms = crate::decode_events(&self.prefix, &changes)
            .iter()
            .filter_map(|e| match e.current("id") {
                Some(sluice_core::Value::Long(id)) => Some((*id, e.event.ts_ms)),
                _ => None,
            })
            .collect();
        self.db.batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table)).await.ok();
        let deleted: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.set_key).query_async(&mut self.redis).await;
        if let Err(error) = deleted {
            eprintln!("deleting the suppression set {} failed: {error}", self.set_key);
        }
        delete_topics(&self.prefix).await;
        Outcome { dead_letters, read_at_ms }
    }
}

/// The email as a buyer typed it: surrounding spaces and mixed case, as warehouses hold them.
fn written_email(tag: &str, id: i64) -> String {
    format!("  Buyer{id}.{tag}@Example.COM ")
}

fn normalised_email(tag: &str, id: i64) -> String {
    format!("buyer{id}.{tag}@example.com")
}

fn prospect_email(tag: &str, n: usize) -> String {
    format!("prospect{n}.{tag}@example.com")
}

/// The configuration a user would write for this job.
fn config_text(settings: &Settings, prefix: &str, table: &str, set_key: &str, meta_url: &str, braze_url: &str) -> String {
    let Settings { poll_interval_ms, linger_ms, .. } = settings;
    format!(
        r#"{services}
{model}
# Buyers leave the prospecting audience: a row's presence removes the person.
[[destinations]]
name = "{META}"
batch_max_records = 10000
batch_linger_ms = {linger_ms}
{meta}
# The set the website reads for on-site suppression.
[[destinations]]
name = "{REDIS}"
batch_max_records = 1000
batch_linger_ms = {linger_ms}
{redis}
# Buyers stop receiving marketing email.
[[destinations]]
name = "{BRAZE}"
batch_max_records = 75
batch_linger_ms = {linger_ms}
rate_limit = {{ requests_per_second = 900 }}
[destinations.braze]
base_url = "{braze_url}"
api_key = {{ env = "SLUICE_SUPPRESSION_BRAZE_KEY" }}
identifier = "email"
mode = "suppression"
unsubscribe_email = true
subscription_group_ids = ["{BRAZE_GROUP}"]

{syncs}"#,
        services = toml_text::services(prefix, "SLUICE_SUPPRESSION_WAREHOUSE_URL"),
        model = toml_text::Model::table("purchases", table, &["id", "email", "amount", "purchased_at", "updated_at", "created_at"], toml_text::CURSOR)
            .poll_interval_ms(*poll_interval_ms),
        meta = toml_text::meta_audience(meta_url, "SLUICE_SUPPRESSION_META_TOKEN", META_AUDIENCE, "mode = \"suppression\""),
        redis = toml_text::redis_set("SLUICE_SUPPRESSION_REDIS_URL", set_key, "ttl_secs = 2592000"),
        syncs = toml_text::syncs("purchases", &[(META, "upsert", toml_text::EMAIL), (REDIS, "upsert", toml_text::NORMALIZED_EMAIL), (BRAZE, "upsert", toml_text::EMAIL)]),
    )
}

/// Record when each member first appears in the set, polling `SMEMBERS` every 2 ms.
async fn watch_set(mut redis: redis::aio::MultiplexedConnection, key: String, seen: Arc<Mutex<HashMap<String, Instant>>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let reply: redis::RedisResult<Vec<String>> = redis::cmd("SMEMBERS").arg(&key).query_async(&mut redis).await;
        match reply {
            Ok(members) => {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                for member in members {
                    seen.entry(member).or_insert(now);
                }
            }
            Err(error) => eprintln!("SMEMBERS of the suppression set failed: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Delete the run's topics (best effort: a leftover topic only costs disk).
pub async fn delete_topics(prefix: &str) {
    let bootstrap = kafka_bootstrap();
    let consumer: BaseConsumer = match ClientConfig::new().set("bootstrap.servers", &bootstrap).create() {
        Ok(c) => c,
        Err(_) => return,
    };
    let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(10)) else { return };
    let topics: Vec<String> =
        metadata.topics().iter().map(|t| t.name().to_string()).filter(|t| t.starts_with(&format!("{prefix}."))).collect();
    if topics.is_empty() {
        return;
    }
    let Ok(admin) = ClientConfig::new().set("bootstrap.servers", &bootstrap).create::<AdminClient<DefaultClientContext>>() else { return };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = admin.delete_topics(&names, &AdminOptions::new()).await {
        eprintln!("deleting the run's topics failed: {error}");
    }
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
