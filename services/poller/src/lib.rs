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
//!   order by a single producer.
//! - Writer schemas are published to `<prefix>.schemas` in the same transaction as the first
//!   events that use them, so a consumer can always decode what it reads.
//! - A stored position that cannot be used stops the model with an error that says how to
//!   reset it ([`position`]); it is never guessed at.
//! - **Kafka refusing or away at start is waited out, not exited on**: `/readyz` names the
//!   listener, the cause and the fix (e.g. a rejected SCRAM password, an untrusted broker
//!   certificate) and the start is retried with backoff
//!   (`sluice_kafka::connection::retry_until_connected`); later failures of a model's Kafka
//!   work are retried by its loop, from its committed position. Every broker going away
//!   mid-run turns `/readyz` to 503 with the reason until one answers again
//!   (`sluice_kafka::connection::follow_brokers`), without a restart.
//!
//! Modes (a model picks one with `detection`):
//! - **`cursor`** (`cursor`): rows whose cursor moved past the position, updates and deletes
//!   with the key's previous image (the change topic's state, kept current by every commit);
//!   soft deletes with `deleted_column`; rows that commit late with a look-back window
//!   (`lookback_ms`); hard deletes with a periodic reconciliation (`reconcile_interval_ms`);
//!   expired rows with a sweep (`expire`). Its first snapshot is the same scan from the start.
//! - **`diff`** ([`diff`]): compares full reads of any query with the change topic: inserts,
//!   updates (with `before` and changed columns) and deletes. Its first snapshot is read in
//!   primary-key chunks, resumable ([`snapshot`], also `sluice snapshot`).
//! - **`warehouse_diff`** ([`warehouse_diff`]): the same changes, computed inside the
//!   warehouse against a kept snapshot; its first snapshot is its first run.
//!
//! Data-quality [`gates`] and schema contracts ([`contract`]) refuse a run before it emits
//! anything; [`plan`] shows what the next run of a model in any mode would emit.
//!
//! Layers — a module imports only from layers below its own, and modes never import each other:
//!
//! | layer | module | owns |
//! |---|---|---|
//! | primitives | `error` | [`ModelError`] (and the contract refusal), retryable or fatal |
//! | | `keys` | row hash, key hash, keys as JSON |
//! | | `clock` | `now_ms` |
//! | | [`expiry`] | when a row of a model with `expire` stops being live, and its header |
//! | | [`position`] | what a stored position means: parsed in one place, written by its forms |
//! | | [`gates`] | the data-quality checks (pure), their error, the operator's confirmation |
//! | | [`audit`] | run records on `<prefix>.runs`, fire-and-forget |
//! | | `telemetry` | sync-health events: freshness, run outcomes, schedule, volatility (uses `gates`' counts) |
//! | I/O | `emit` | change records of every mode (`ChangeWriter`), event counters |
//! | | `committer` | [`Committer`]: the producer, the published-schemas flag, the committed state, the tracked keys kept current |
//! | | `state` | the model's topics, reading its committed state back |
//! | | [`contract`] | schema contract check and export |
//! | | [`tracked`] | the change topic's committed state (24 bytes a key), images read back |
//! | | `changes` | the key scan and the emission of a change plan, shared by `diff`, reconciliation, the expiry sweep and `resync` |
//! | | `context` | [`ModelContext`]: a model's config, warehouse, codec and committer; [`ModelOptions`]; describing a model without fencing |
//! | | [`triggers`] | when a model runs: interval, cron, `POST /run/<model>`, NOTIFY |
//! | modes | `cursor` | cursor mode: rules, a page's changes and their previous images, plain loop, look-back window, reconciliation, expiry sweep |
//! | | [`diff`] | `diff` mode's runs |
//! | | [`warehouse_diff`] | `warehouse_diff` mode's runs and recovery |
//! | | [`snapshot`] | the first snapshot in key chunks (service and `sluice snapshot`) |
//! | top | `model_loop` | one model's loop: open, dispatch on the position, retry with backoff |
//! | | [`plan`] | `sluice plan` |
//! | | [`resync`] | `sluice resync`: a fresh snapshot of one model through the committer |
//! | | `writeback` | the warehouse writeback: outcomes topics into the sync-log table |

pub mod audit;
mod changes;
mod clock;
mod committer;
pub mod contract;
mod context;
mod cursor;
pub mod diff;
mod emit;
mod error;
pub mod expiry;
pub mod gates;
mod keys;
mod model_loop;
pub mod plan;
pub mod position;
pub mod resync;
pub mod snapshot;
mod state;
mod telemetry;
pub mod tracked;
pub mod triggers;
pub mod warehouse_diff;
mod writeback;

use std::sync::Arc;

use anyhow::Context as _;
use sluice_core::config::Config;
use sluice_telemetry::ops::Health;
use sluice_warehouse::AnyWarehouse;
use tokio_util::sync::CancellationToken;

pub use committer::Committer;
pub use context::{ModelContext, ModelOptions};
pub use error::ModelError;
pub use state::ensure_model_topics;

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
    let topics = state::model_topics(&config, &models);
    if sluice_kafka::connection::retry_until_connected("create topics", &health, &shutdown, || sluice_kafka::admin::ensure_topics(&config.kafka, &topics))
        .await
        .is_none()
    {
        return Ok(());
    }
    let run_log = Arc::new(audit::RunLog::new(&config).context("creating the run-record producer")?);

    let wakers = Arc::new(triggers::Wakers::new(&models));
    let mut schedules = std::collections::HashMap::new();
    for model in &models {
        let model_config = config.model(model).expect("model names come from the config");
        let schedule = triggers::Schedule::for_model(model_config, wakers.get(model))?;
        telemetry::scheduled(model, schedule.expected_interval());
        schedules.insert(model.clone(), schedule);
    }
    if let Some(addr) = options.trigger_listen {
        triggers::serve_http(addr, Arc::clone(&wakers), shutdown.clone()).await.with_context(|| format!("serving POST /run on {addr}"))?;
    }

    let warehouse = Arc::new(AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?);
    triggers::spawn_notify_listener(&config, &models, &warehouse, Arc::clone(&wakers), shutdown.clone());
    let writeback = writeback::Writeback::new(&config, Arc::clone(&warehouse)).context("starting the warehouse writeback")?;
    let writeback = writeback.map(|w| tokio::spawn(w.run(shutdown.clone())));
    health.set_ready();
    tracing::info!(models = ?models, warehouse = warehouse.kind(), "poller started");
    // Every broker going away mid-run: not ready until one answers; the models' loops retry
    // their work from the committed position meanwhile.
    let brokers = tokio::spawn({
        let (kafka, health, shutdown) = (config.kafka.clone(), Arc::clone(&health), shutdown.clone());
        async move { sluice_kafka::connection::follow_brokers(&kafka, sluice_kafka::connection::ConnectionContext::default(), health, shutdown).await }
    });

    let mut tasks = tokio::task::JoinSet::new();
    for model in models {
        let (config, warehouse, shutdown) = (Arc::clone(&config), Arc::clone(&warehouse), shutdown.clone());
        let options = ModelOptions {
            confirm_large_change: options.confirm_large_change.contains(&model),
            schedule: schedules.remove(&model).expect("one schedule per model"),
            run: Some(Arc::new(audit::ModelRun::new(Arc::clone(&run_log), config.model(&model).expect("model names come from the config")))),
        };
        tasks.spawn(async move {
            let result = model_loop::run_model(&config, warehouse.as_ref(), &model, options, shutdown).await;
            (model, result)
        });
    }
    let failed = join_models(tasks, &health).await;
    brokers.abort();
    let failed = failed?;
    if let Some(writeback) = writeback {
        // On shutdown it stops by itself (a batch not written is read again next start).
        if !shutdown.is_cancelled() {
            writeback.abort();
        }
        if let Err(error) = writeback.await {
            if error.is_panic() {
                tracing::error!(%error, "the warehouse writeback panicked");
            }
        }
    }
    run_log.flush().await;
    if failed.is_empty() {
        tracing::info!("poller stopped");
        Ok(())
    } else {
        anyhow::bail!("models stopped on errors: {}", failed.join("; "))
    }
}

/// Wait for every model's task; the models that stopped on an error (`model: error`), each
/// logged and named in `/readyz`.
async fn join_models(mut tasks: tokio::task::JoinSet<(String, Result<(), ModelError>)>, health: &Health) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (model, result) = joined.context("model task panicked")?;
        if let Err(error) = result {
            tracing::error!(%model, error = %error, "model stopped");
            health.set_not_ready(format!("model {model} stopped: {error}"));
            failed.push(format!("{model}: {error}"));
        }
    }
    Ok(failed)
}
