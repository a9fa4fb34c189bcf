//! The poll loop of one model: read a page after the committed position, produce it and the new
//! position in one transaction, repeat; sleep when caught up.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::{Config, Detection, ModelConfig};
use sluice_core::{naming, Value};
use sluice_kafka::compacted::read_to_end;
use sluice_kafka::producer::TransactionalProducer;
use sluice_kafka::KafkaError;
use sluice_warehouse::{cursor_indexes, cursor_of, SnapshotStore, Warehouse, WarehouseError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cursor::{complete_snapshot, CursorRules, OpCounts};
use crate::emit::{commit, count_events, ChangeWriter};
use crate::reconcile::Reconciler;

/// Why a model stopped.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Codec(#[from] sluice_avro::CodecError),
    #[error("stored poller state is unreadable: {0}")]
    State(String),
    /// A data-quality gate refused the run: nothing was emitted; an operator must act.
    #[error(transparent)]
    Gate(#[from] crate::gates::GateError),
    /// The model drifted from its checked-in schema: nothing is read until it is fixed.
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractError),
}

impl ModelError {
    /// Whether the loop should back off and try the same page again.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ModelError::Warehouse(WarehouseError::Unavailable(_))
                | ModelError::Kafka(KafkaError::Retryable { .. } | KafkaError::Connection { .. })
                | ModelError::State(_)
        )
    }
}

/// The position as stored: the cursor tuple as tagged JSON values.
fn decode_position(position: &Option<String>) -> Result<Option<Vec<Value>>, ModelError> {
    position.as_deref().map(|p| serde_json::from_str(p).map_err(|e| ModelError::State(format!("position {p:?}: {e}")))).transpose()
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Last committed state of `model`, read back from the state topic.
pub(crate) async fn load_state(config: &Config, model: &str) -> Result<Option<PollerState>, ModelError> {
    let kafka = config.kafka.clone();
    let topic = naming::poller_state_topic(&config.kafka.topic_prefix);
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90))).await.expect("reader does not panic")?;
    let mut last = None;
    for record in records {
        if record.key.as_deref() == Some(model.as_bytes()) {
            last = match record.payload {
                Some(payload) => Some(sluice_avro::decode_state(&payload).map_err(|e| ModelError::State(e.to_string()))?),
                None => None,
            };
        }
    }
    Ok(last)
}

/// Poll one model until shutdown or a fatal error.
pub(crate) async fn run_model<W: Warehouse + SnapshotStore>(
    config: &Config,
    warehouse: &W,
    name: &str,
    options: crate::diff::ModelOptions,
    shutdown: CancellationToken,
) -> Result<(), ModelError> {
    let model = config.model(name).expect("model names come from the config");
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match poll_model(config, warehouse, model, options.clone(), &shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() && !shutdown.is_cancelled() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                metrics::counter!("sluice_poller_errors_total", "model" => name.to_string(), "class" => "retryable").increment(1);
                tracing::warn!(model = %name, error = %error, delay_ms = delay.as_millis() as u64, "poll failed, retrying from the committed position");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(error) => {
                if let ModelError::Gate(refused) = &error {
                    refused.record(name);
                }
                metrics::counter!("sluice_poller_errors_total", "model" => name.to_string(), "class" => "fatal").increment(1);
                return Err(error);
            }
        }
    }
}

/// One incarnation of the loop: fence, recover state, then poll. Any error returns; the caller
/// decides whether to start over (which re-reads the committed state, so nothing is repeated
/// or skipped).
async fn poll_model<W: Warehouse + SnapshotStore>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    options: crate::diff::ModelOptions,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let (codec, producer, state) = open_model(config, warehouse, model).await?;
    tracing::info!(model = %name, mode = model.detection.mode(), position = state.position.as_deref().unwrap_or("start"), snapshot_done = state.snapshot_done, "model state recovered");
    match &model.detection {
        Detection::Cursor { lookback_ms, reconcile_interval_ms, .. } => {
            let mut reconciler = Reconciler::new(*reconcile_interval_ms, options.confirm_large_change);
            match lookback_ms {
                Some(lookback_ms) => {
                    crate::lookback::poll_cursor_lookback(
                        config,
                        warehouse,
                        model,
                        &codec,
                        &producer,
                        state,
                        *lookback_ms,
                        &mut reconciler,
                        &options.schedule,
                        shutdown,
                    )
                    .await
                }
                None => poll_cursor(config, warehouse, model, &codec, &producer, state, &mut reconciler, &options.schedule, shutdown).await,
            }
        }
        Detection::Diff {} => crate::diff::poll_diff(config, warehouse, model, &codec, &producer, state, options, shutdown).await,
        Detection::WarehouseDiff {} => {
            crate::warehouse_diff::poll_warehouse_diff(config, warehouse, model, &codec, &producer, state, options, shutdown).await
        }
    }
}

/// Describe the model, check its contract, fence older instances and read the committed state:
/// what every incarnation of a model's loop (and `sluice snapshot`) starts from.
pub(crate) async fn open_model<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
) -> Result<(ModelCodec, TransactionalProducer, PollerState), ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = warehouse.describe(model).await?;
    crate::contract::check(model, &schema)?;
    let codec = ModelCodec::new(name, schema)?;
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
    Ok((codec, producer, state))
}

/// Cursor mode: pages strictly after the committed cursor tuple; hard deletes by periodic
/// reconciliation when configured (between polls, so it never races the cursor).
#[allow(clippy::too_many_arguments)]
async fn poll_cursor<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    mut state: PollerState,
    reconciler: &mut crate::reconcile::Reconciler,
    schedule: &crate::triggers::Schedule,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let mut position = decode_position(&state.position)?;
    let cursor = cursor_indexes(model, codec.row_schema()).expect("cursor mode has a cursor");
    let rules = CursorRules::new(model, codec);
    let mut schemas_published = false;

    loop {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.run", model = %name, run_id = %run_id);
        let caught_up = async {
            let rows = warehouse.fetch_after(model, codec.row_schema(), position.as_deref(), model.batch_rows).await?;
            if rows.is_empty() {
                complete_snapshot(config, codec, producer, &mut schemas_published, &mut state).await?;
                return Ok::<bool, ModelError>(true);
            }
            let page_full = rows.len() == model.batch_rows;
            let run_start_cursor = position.as_ref().map(|p| p[0].clone());
            let mut writer = ChangeWriter::new(config, name, codec, &run_id);
            let mut records = Vec::with_capacity(rows.len() + 3);
            let mut counts = OpCounts::default();
            let mut last_position = None;
            for row in rows {
                let row_position = cursor_of(&cursor, &row);
                if let Some(op) = rules.op(state.snapshot_done, run_start_cursor.as_ref(), &row) {
                    writer.set_position(Some(serde_json::to_string(&row_position).expect("values serialise")));
                    records.extend(crate::cursor::change(&mut writer, op, row, None)?);
                    counts.add(op);
                }
                last_position = Some(row_position);
            }
            let new_position = last_position.expect("rows is not empty");
            let new_state = PollerState {
                model: name.to_string(),
                run_id: run_id.clone(),
                position: Some(serde_json::to_string(&new_position).expect("values serialise")),
                // A short page means the scan reached the end: the snapshot is complete.
                snapshot_done: state.snapshot_done || !page_full,
                events_total: state.events_total + counts.total() as i64,
                committed_at_ms: now_ms(),
            };
            commit(config, codec, producer, &mut schemas_published, records, &new_state).await?;
            position = Some(new_position);
            if !state.snapshot_done && new_state.snapshot_done {
                tracing::info!(model = %name, events_total = new_state.events_total, "initial snapshot complete");
            }
            state = new_state;
            count_events(name, &counts.by_op());
            tracing::info!(
                model = %name,
                events = counts.total(),
                snapshot = counts.reads,
                inserts = counts.creates,
                updates = counts.updates,
                deletes = counts.deletes,
                "transaction committed"
            );
            Ok(!page_full)
        }
        .instrument(span)
        .await?;
        if caught_up {
            reconciler.run_if_due(config, warehouse, model, codec, producer, &mut state, &mut schemas_published).await?;
            if !schedule.wait(shutdown).await {
                return Ok(());
            }
        } else if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}
