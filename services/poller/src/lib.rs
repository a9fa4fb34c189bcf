//! `sluice-poller`: turns warehouse models into change topics.
//!
//! Guarantees (see also `sluice_kafka::producer`):
//! - **No change lost, none invented, across crashes.** Each page of rows becomes one Kafka
//!   transaction holding its events *and* the model's new position (a record on the
//!   `<prefix>.poller.state` topic). On start the poller first fences older instances (same
//!   transactional id per model), then reads its last committed position back from Kafka and
//!   continues strictly after it. Nothing is kept on local disk, so a restart on a new machine
//!   continues where the last committed transaction ended.
//! - **Per-key order.** Events are keyed by primary key; a model's events are produced in
//!   cursor order by a single producer.
//! - Writer schemas are published to `<prefix>.schemas` in the same transaction as the first
//!   events that use them, so a consumer can always decode what it reads.
//! - **Kafka refusing or away at start is waited out, not exited on**: `/readyz` names the
//!   listener, the cause and the fix (e.g. a rejected SCRAM password, an untrusted broker
//!   certificate) and the start is retried with backoff
//!   (`sluice_kafka::connection::retry_until_connected`); later failures of a model's Kafka
//!   work are retried by its loop, from its committed position.
//!
//! Cursor mode alone cannot see hard deletes (a periodic reconciliation finds them:
//! `reconcile`) or rows whose transaction commits after later cursor values were read (the
//! look-back window catches those: `lookback`); soft deletes are emitted as deletes (`cursor`).
//! `diff` mode sees inserts, updates and deletes of any query by comparing full snapshots (see
//! [`diff`]); data-quality [`gates`] refuse a run before it emits anything.

pub mod contract;
mod cursor;
pub mod diff;
mod emit;
mod lookback;
pub mod gates;
mod model_loop;
pub mod plan;
pub mod snapshot;
mod reconcile;
pub mod tracked;
pub mod triggers;
pub mod warehouse_diff;

use std::sync::Arc;

use anyhow::Context as _;
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::connection::retry_until_connected;
use sluice_telemetry::ops::Health;
use sluice_warehouse::AnyWarehouse;
use tokio_util::sync::CancellationToken;

pub use diff::ModelOptions;
pub use model_loop::ModelError;

/// Run the poller for every model in `config` (or only `only`) until `shutdown` is cancelled.
///
/// Returns an error when a model stops on a fatal error (bad model, fenced producer); other
/// models keep running until shutdown, and readiness turns false with the reason.
pub async fn run(config: Arc<Config>, only: Option<Vec<String>>, health: Arc<Health>, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, only, RunOptions::default(), health, shutdown).await
}

/// Options of [`run_with`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Let the next run of each of these models through the change-volume guard once (an
    /// operator's confirmation after a refusal).
    pub confirm_large_change: Vec<String>,
    /// Serve `POST /run/<model>` (run a model now) on this address.
    pub trigger_listen: Option<std::net::SocketAddr>,
}

/// Create (if missing) the change topics of `models` and the poller's schema and state topics.
pub async fn ensure_model_topics(config: &Config, models: &[String]) -> anyhow::Result<()> {
    ensure_topics(&config.kafka, &model_topics(config, models)).await.context("creating topics")
}

/// The topics [`ensure_model_topics`] creates.
fn model_topics(config: &Config, models: &[String]) -> Vec<(String, TopicRole)> {
    let prefix = &config.kafka.topic_prefix;
    let mut topics: Vec<(String, TopicRole)> = models.iter().map(|m| (naming::change_topic(prefix, m), TopicRole::Compacted)).collect();
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted));
    topics.push((naming::poller_state_topic(prefix), TopicRole::Compacted));
    topics
}

/// [`run`] with options.
pub async fn run_with(
    config: Arc<Config>,
    only: Option<Vec<String>>,
    options: RunOptions,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let models: Vec<String> = config
        .models
        .iter()
        .map(|m| m.name.get_ref().clone())
        .filter(|name| only.as_ref().is_none_or(|only| only.contains(name)))
        .collect();
    anyhow::ensure!(!models.is_empty(), "no model to poll (check --model and the config's [[models]])");
    // Kafka refusing us (credentials, certificates) or away is not a reason to exit: an
    // orchestrator would restart us into the same refusal. Not ready, with the reason, until it
    // works.
    let topics = model_topics(&config, &models);
    if retry_until_connected("create topics", &health, &shutdown, || ensure_topics(&config.kafka, &topics)).await.is_none() {
        return Ok(());
    }

    let wakers = Arc::new(triggers::Wakers::new(&models));
    let mut schedules = std::collections::HashMap::new();
    for model in &models {
        let model_config = config.model(model).expect("model names come from the config");
        schedules.insert(model.clone(), triggers::Schedule::for_model(model_config, wakers.get(model))?);
    }
    if let Some(addr) = options.trigger_listen {
        triggers::serve_http(addr, Arc::clone(&wakers), shutdown.clone()).await.with_context(|| format!("serving POST /run on {addr}"))?;
    }

    let warehouse = Arc::new(AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?);
    triggers::spawn_notify_listener(&config, &models, &warehouse, Arc::clone(&wakers), shutdown.clone());
    health.set_ready();
    tracing::info!(models = ?models, warehouse = warehouse.kind(), "poller started");

    let mut tasks = tokio::task::JoinSet::new();
    for model in models {
        let (config, warehouse, shutdown) = (Arc::clone(&config), Arc::clone(&warehouse), shutdown.clone());
        let options = ModelOptions {
            confirm_large_change: options.confirm_large_change.contains(&model),
            schedule: schedules.remove(&model).expect("one schedule per model"),
        };
        tasks.spawn(async move {
            let result = model_loop::run_model(&config, warehouse.as_ref(), &model, options, shutdown).await;
            (model, result)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (model, result) = joined.context("model task panicked")?;
        if let Err(error) = result {
            tracing::error!(%model, error = %error, "model stopped");
            health.set_not_ready(format!("model {model} stopped: {error}"));
            failed.push(format!("{model}: {error}"));
        }
    }
    if failed.is_empty() {
        tracing::info!("poller stopped");
        Ok(())
    } else {
        anyhow::bail!("models stopped on errors: {}", failed.join("; "))
    }
}
