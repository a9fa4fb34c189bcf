//! What every mode of one model works with: its config, the warehouse, its codec and its
//! [`Committer`], opened once per incarnation of the model's loop by [`ModelContext::open`].
//!
//! Guarantee: opening checks the model's schema contract (and that its `expire` column is a
//! timestamp of the model) before anything is read, then fences
//! older instances of the model (its transactional producer) *before* reading the committed
//! state back, so that state is final: no older instance can commit after it. A context is the
//! only holder of the model's producer; dropping it ends the incarnation.

use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::naming;
use sluice_kafka::producer::TransactionalProducer;
use sluice_warehouse::Warehouse;

use std::sync::Arc;

use crate::audit::{ModelRun, RunEnd};
use crate::committer::Committer;
use crate::error::ModelError;
use crate::expiry::Expiry;
use crate::position::{Position, PositionError};
use crate::state::load_state;
use crate::triggers::Schedule;

/// One model's resources for one incarnation of its loop (or one `sluice snapshot`).
pub struct ModelContext<'a, W> {
    pub config: &'a Config,
    pub warehouse: &'a W,
    pub model: &'a ModelConfig,
    /// Encoder of the model's keys and events, for the schema described at open.
    pub codec: ModelCodec,
    /// The model's producer, published-schemas flag and last committed state.
    pub committer: Committer,
    /// When the model's rows expire (`expire`), resolved against its schema.
    pub expiry: Option<Expiry>,
}

/// Per-model options of a poll loop.
#[derive(Clone, Default)]
pub struct ModelOptions {
    /// Let the next run through the change-volume guard once (`--confirm-large-change`).
    pub confirm_large_change: bool,
    /// When runs start (interval or cron, plus wake-ups).
    pub schedule: Schedule,
    /// Where the model's run records go (`None`: nowhere, e.g. in tools).
    pub run: Option<Arc<ModelRun>>,
}

impl<'a, W: Warehouse> ModelContext<'a, W> {
    /// Describe the model, check its contract, fence older instances and read the committed
    /// state: what every incarnation of a model's loop (and `sluice snapshot`) starts from.
    pub async fn open(config: &'a Config, warehouse: &'a W, model: &'a ModelConfig) -> Result<ModelContext<'a, W>, ModelError> {
        let name = model.name.get_ref().as_str();
        let (codec, expiry) = describe(config, warehouse, model).await?;
        // Fence first: once this returns, no older instance can commit, so the state read next is final.
        let producer = TransactionalProducer::new(&config.kafka, &naming::poller_transactional_id(&config.kafka.topic_prefix, name)).await?;
        let state = load_state(config, name).await?.unwrap_or(PollerState {
            model: name.to_string(),
            run_id: String::new(),
            position: None,
            snapshot_done: false,
            events_total: 0,
            committed_at_ms: 0,
        });
        let committer = Committer::new(config, producer, &codec, state);
        Ok(ModelContext { config, warehouse, model, codec, committer, expiry })
    }
}

/// Describe the model and check its schema contract and `expire` column: its codec (keeping
/// the key bytes its topic was written with) and expiry rule. Reads only; fences nothing.
pub async fn describe<W: Warehouse>(config: &Config, warehouse: &W, model: &ModelConfig) -> Result<(ModelCodec, Option<Expiry>), ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = warehouse.describe(model).await?;
    crate::contract::check(model, &schema)?;
    let expiry = Expiry::of(model, &schema)?;
    let mut codec = ModelCodec::new(name, schema)?;
    if codec.key_fingerprints_differ() && crate::state::keys_written_with_legacy_fingerprint(config, &codec).await? {
        // A row's key bytes must never change (see `with_legacy_key_fingerprint`).
        codec = codec.with_legacy_key_fingerprint();
        tracing::info!(model = %name, "keys keep their legacy schema fingerprint: this model's topic was written before standard fingerprints");
    }
    Ok((codec, expiry))
}

impl<'a, W> ModelContext<'a, W> {
    /// The model's name.
    pub fn name(&self) -> &'a str {
        self.model.name.get_ref().as_str()
    }

    /// The last committed state record.
    pub fn state(&self) -> &PollerState {
        self.committer.state()
    }

    /// What the committed position means for this model ([`Position::parse`]).
    pub fn position(&self) -> Result<Position, PositionError> {
        let state = self.state();
        Position::parse(self.name(), &self.model.detection, state.snapshot_done, state.position.as_deref())
    }

    /// A run finished without error: the freshness clock moves, the run's record is queued.
    pub fn run_succeeded(&self) {
        crate::telemetry::run_succeeded(self.name());
        if let Some(run) = self.committer.run() {
            run.ended(RunEnd::Ok, None);
        }
    }

    /// The model's change topic.
    pub fn change_topic(&self) -> String {
        naming::change_topic(&self.config.kafka.topic_prefix, self.name())
    }
}
