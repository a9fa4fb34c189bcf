//! `sluice resync <model>`: a fresh snapshot of one model on its change topic — an `r` event for
//! every current row, and a `d` event (then a tombstone) for every key the topic holds that the
//! warehouse no longer has — so the topic's compacted state equals the model again after it
//! drifted (a cursor model's hard deletes, which its polls cannot see; a topic restored from a
//! backup; a mapping of rows changed outside the poller).
//!
//! Guarantees:
//! - **The poller's path, nothing else.** The events are built by the poller's
//!   [`crate::emit::ChangeWriter`] and committed by the model's [`crate::Committer`] under the
//!   model's transactional id ([`ModelContext::open`]): each transaction of at most `batch_rows`
//!   changes carries the model's state record, position unchanged, exactly like a
//!   reconciliation. A delete carries the key's last image as `before` and its tombstone uses
//!   the key bytes the key was written with.
//! - **The compacted state ends equal to the model.** The keys to delete are the change topic's
//!   committed state (read `read_committed` to its end after fencing, so nothing commits after
//!   it) less the keys the scan found; rows expired now (`expire`) count as absent, as in a
//!   `diff` run. Rows changed while the resync runs are the poller's to emit afterwards: the
//!   position is unchanged, so its next poll reads them in their newest state, after the resync.
//! - **Other models are untouched**: their transactional ids, positions and topics are not used,
//!   so their pollers keep running.
//! - **The model's own poller is fenced, never raced.** Opening the model takes its
//!   transactional id: a running poller of this model cannot commit while the resync holds it.
//!   Its next transaction fails (its open transaction aborts, nothing half written); its loop
//!   then starts the model over from the committed state — the resync's, position unchanged,
//!   deletes applied — or, when the fence is reported as fatal, stops the model (readiness
//!   names it) until restarted, while its other models keep running. A poller that starts over
//!   *during* the resync fences the resync in turn: the resync stops with an error (exit 1)
//!   after a committed prefix, and running it again converges. Every commit of either carries
//!   the state read after its own fencing, so no event is lost or lands behind an older one.
//!   Stopping the model's poller first (or resyncing while the model is quiet) avoids the race.
//! - **The plan writes nothing** ([`plan`]): it reads the warehouse and the topics
//!   `read_committed` and does not fence.
//!
//! Not guaranteed: the change-volume guard does not apply (the operator asked for every row);
//! the NULL and duplicate key gates do. The rows are held in memory until they are emitted,
//! like a `diff` run's comparison. A model whose first snapshot is not complete is refused:
//! finish it first (`sluice snapshot`, or the poller). A `warehouse_diff` model's kept snapshot
//! is not rewritten: a delete the resync emitted may be emitted again by its next run (deletes
//! are idempotent at every destination).

use sluice_avro::ModelCodec;
use sluice_core::config::{Config, ModelConfig};
use sluice_core::naming;
use sluice_warehouse::AnyWarehouse;
use tracing::Instrument;

use crate::changes::{emit_as, stored_keys, DiffPlan, Emission};
use crate::context::{describe, ModelContext};
use crate::diff::{compare, Unchanged};
use crate::error::ModelError;
use crate::state::load_state;
use crate::tracked::{previous_records, Tracked};

/// What a resync found (and, executed, emitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncReport {
    /// The model.
    pub model: String,
    /// Current rows in the warehouse (rows expired now left out): one `r` event each.
    pub rows: u64,
    /// Live keys on the change topic before the resync.
    pub topic_keys: u64,
    /// Keys on the topic the warehouse no longer has: one `d` event and a tombstone each.
    pub deletes: u64,
    /// Up to the asked number of those keys, as JSON.
    pub delete_samples: Vec<serde_json::Value>,
    /// The run id of the emitted events (`None`: a plan, nothing emitted).
    pub run_id: Option<String>,
    /// Events committed (`r` and `d`, tombstones not counted); 0 for a plan.
    pub events: u64,
}

/// Why a resync did not run.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// The model is not in the config.
    #[error("model {model:?} is not in the config (its models: {known})")]
    UnknownModel { model: String, known: String },
    /// The model's first snapshot is not complete: there is nothing to resync against yet.
    #[error("model {model}: its first snapshot is not complete; finish it first (`sluice snapshot {model}` or the poller), then resync")]
    FirstSnapshotPending { model: String },
    /// Reading the model or its topic, a gate, or committing failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What the resync of `model` would emit now (with up to `samples` keys to delete); writes
/// nothing and fences nothing.
pub async fn plan(config: &Config, model: &str, samples: usize) -> Result<ResyncReport, ResyncError> {
    let model_config = find(config, model)?;
    let warehouse = AnyWarehouse::connect(&config.warehouse).await.map_err(ModelError::from)?;
    let (codec, _) = describe(config, &warehouse, model_config).await?;
    if !load_state(config, model).await?.is_some_and(|state| state.snapshot_done) {
        return Err(ResyncError::FirstSnapshotPending { model: model.to_string() });
    }
    let plan = scan(config, &warehouse, model_config, &codec).await?;
    Ok(report(config, &codec, &plan, samples).await?)
}

/// Resync `model`: fence its poller, compare the model with its change topic and commit the
/// fresh snapshot (see the module doc). The report counts what was committed.
pub async fn execute(config: &Config, model: &str, samples: usize) -> Result<ResyncReport, ResyncError> {
    let model_config = find(config, model)?;
    let warehouse = AnyWarehouse::connect(&config.warehouse).await.map_err(ModelError::from)?;
    // Fences the model's poller before its committed state (and then its topic) is read.
    let mut ctx = ModelContext::open(config, &warehouse, model_config).await?;
    if !ctx.state().snapshot_done {
        return Err(ResyncError::FirstSnapshotPending { model: model.to_string() });
    }
    let plan = scan(config, &warehouse, model_config, &ctx.codec).await?;
    let mut report = report(config, &ctx.codec, &plan, samples).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("poller.resync", model = %model, run_id = %run_id);
    report.events = emit_as(&mut ctx, plan, &run_id, Emission::Snapshot).instrument(span).await?;
    tracing::info!(model = %model, rows = report.rows, deletes = report.deletes, events = report.events, "resync committed");
    report.run_id = Some(run_id);
    Ok(report)
}

/// The model's config, or an error naming the models that exist.
fn find<'c>(config: &'c Config, model: &str) -> Result<&'c ModelConfig, ResyncError> {
    config.model(model).ok_or_else(|| ResyncError::UnknownModel {
        model: model.to_string(),
        known: config.models.iter().map(|m| m.name.get_ref().as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// Every current row of the model and the topic's keys it no longer has, compared with the
/// change topic's committed state.
async fn scan(config: &Config, warehouse: &AnyWarehouse, model: &ModelConfig, codec: &ModelCodec) -> Result<DiffPlan, ModelError> {
    let topic = naming::change_topic(&config.kafka.topic_prefix, model.name.get_ref());
    let mut tracked = Tracked::load(&config.kafka, &topic, false).await?;
    compare(warehouse, model, codec, &mut tracked, Unchanged::Keep).await
}

/// The report of `plan` before anything is emitted, with up to `samples` delete keys.
async fn report(config: &Config, codec: &ModelCodec, plan: &DiffPlan, samples: usize) -> Result<ResyncReport, ModelError> {
    let topic = naming::change_topic(&config.kafka.topic_prefix, codec.model());
    let wanted: Vec<u64> = plan.deletes.iter().take(samples).copied().collect();
    let previous = previous_records(&config.kafka, &topic, wanted).await?;
    Ok(ResyncReport {
        model: codec.model().to_string(),
        rows: plan.rows,
        topic_keys: plan.tracked,
        deletes: plan.deletes.len() as u64,
        delete_samples: stored_keys(codec, &previous, plan.deletes.iter().take(samples))?,
        run_id: None,
        events: 0,
    })
}
