//! The poll loop of one model: read a page after the committed position, produce it and the new
//! position in one transaction, repeat; sleep when caught up.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use sluice_avro::{encode_state, ModelCodec, PollerState};
use sluice_core::config::{Config, Detection, ModelConfig};
use sluice_core::{naming, ChangeEvent, Op, Row, SourceInfo, Value};
use sluice_kafka::compacted::read_to_end;
use sluice_kafka::headers;
use sluice_kafka::producer::{OutRecord, TransactionalProducer};
use sluice_kafka::KafkaError;
use sluice_warehouse::{cursor_indexes, cursor_of, SnapshotStore, Warehouse, WarehouseError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
            ModelError::Warehouse(WarehouseError::Unavailable(_)) | ModelError::Kafka(KafkaError::Retryable { .. }) | ModelError::State(_)
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
        Detection::Cursor { created_column, lookback_ms: Some(lookback_ms), .. } => {
            let created = created_column.as_deref().and_then(|c| codec.row_schema().index_of(c));
            crate::lookback::poll_cursor_lookback(config, warehouse, model, &codec, &producer, state, created, *lookback_ms, &options.schedule, shutdown)
                .await
        }
        Detection::Cursor { created_column, .. } => {
            poll_cursor(config, warehouse, model, &codec, &producer, state, created_column.as_deref(), &options.schedule, shutdown).await
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

/// Cursor mode: pages strictly after the committed cursor tuple.
#[allow(clippy::too_many_arguments)]
async fn poll_cursor<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    mut state: PollerState,
    created_column: Option<&str>,
    schedule: &crate::triggers::Schedule,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let prefix = &config.kafka.topic_prefix;
    let mut position = decode_position(&state.position)?;
    let topic = naming::change_topic(prefix, name);
    let cursor = cursor_indexes(model, codec.row_schema()).expect("cursor mode has a cursor");
    let created = created_column.and_then(|c| codec.row_schema().index_of(c));
    let mut schemas_published = false;

    loop {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.run", model = %name, run_id = %run_id);
        let caught_up = async {
            let started = Instant::now();
            let rows = warehouse.fetch_after(model, codec.row_schema(), position.as_deref(), model.batch_rows).await?;
            if rows.is_empty() {
                return Ok::<bool, ModelError>(true);
            }
            let page_full = rows.len() == model.batch_rows;
            let run_start_cursor = position.as_ref().map(|p| p[0].clone());
            let mut records = Vec::with_capacity(rows.len() + 3);
            if !schemas_published {
                for schema in codec.schemas() {
                    records.push(OutRecord {
                        topic: naming::schema_topic(prefix),
                        key: Some(schema.fingerprint.into_bytes()),
                        payload: Some(schema.json.into_bytes()),
                        headers: headers::owned([]),
                    });
                }
            }
            let trace = sluice_telemetry::propagation::current_headers();
            let mut counts = [0u64; 3];
            let mut last_position = None;
            for row in rows {
                let op = if !state.snapshot_done { Op::Read } else { classify_op(created, run_start_cursor.as_ref(), &row) };
                counts[match op {
                    Op::Read => 0,
                    Op::Create => 1,
                    _ => 2,
                }] += 1;
                let row_position = cursor_of(&cursor, &row);
                let position_json = serde_json::to_string(&row_position).expect("values serialise");
                let mut key = Vec::with_capacity(32);
                codec.encode_key(&row, &mut key)?;
                let event = ChangeEvent {
                    op,
                    before: None,
                    after: Some(row),
                    source: SourceInfo {
                        model: name.to_string(),
                        warehouse: config.warehouse.name.clone(),
                        run_id: run_id.clone(),
                        position: Some(position_json),
                    },
                    ts_ms: now_ms(),
                    changed: None,
                };
                let mut value = Vec::with_capacity(256);
                codec.encode_event(&event, &mut value)?;
                let mut pairs: Vec<(&str, &str)> = trace.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                pairs.push((headers::SCHEMA_FINGERPRINT, codec.value_fingerprint()));
                pairs.push((headers::RUN_ID, &run_id));
                pairs.push((headers::OP, op.code()));
                records.push(OutRecord { topic: topic.clone(), key: Some(key), payload: Some(value), headers: headers::owned(pairs) });
                last_position = Some(row_position);
            }
            let events = counts.iter().sum::<u64>();
            let new_position = last_position.expect("rows is not empty");
            let new_state = PollerState {
                model: name.to_string(),
                run_id: run_id.clone(),
                position: Some(serde_json::to_string(&new_position).expect("values serialise")),
                // A short page means the scan reached the end: the snapshot is complete.
                snapshot_done: state.snapshot_done || !page_full,
                events_total: state.events_total + events as i64,
                committed_at_ms: now_ms(),
            };
            records.push(OutRecord {
                topic: naming::poller_state_topic(prefix),
                key: Some(name.as_bytes().to_vec()),
                payload: Some(encode_state(&new_state)?),
                headers: headers::owned([(headers::RUN_ID, run_id.as_str())]),
            });
            producer.send_transaction(records).await?;
            schemas_published = true;
            position = Some(new_position);
            if !state.snapshot_done && new_state.snapshot_done {
                tracing::info!(model = %name, events_total = new_state.events_total, "initial snapshot complete");
            }
            state = new_state;
            for (op, n) in [("r", counts[0]), ("c", counts[1]), ("u", counts[2])] {
                if n > 0 {
                    metrics::counter!("sluice_poller_events_total", "model" => name.to_string(), "op" => op).increment(n);
                }
            }
            metrics::histogram!("sluice_poller_transaction_seconds", "model" => name.to_string()).record(started.elapsed().as_secs_f64());
            metrics::gauge!("sluice_poller_last_commit_timestamp_seconds", "model" => name.to_string())
                .set(state.committed_at_ms as f64 / 1000.0);
            tracing::info!(model = %name, events, snapshot = counts[0], inserts = counts[1], updates = counts[2], "transaction committed");
            Ok(!page_full)
        }
        .instrument(span)
        .await?;
        if caught_up {
            if !schedule.wait(shutdown).await {
                return Ok(());
            }
        } else if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Insert or update, in cursor mode after the snapshot: a row whose creation value is newer than
/// the cursor the run started from was created since the last run; without a creation column
/// every change is an update.
pub(crate) fn classify_op(created: Option<usize>, run_start_cursor: Option<&Value>, row: &Row) -> Op {
    match (created, run_start_cursor) {
        (Some(created), Some(start)) if value_after(&row[created], start) => Op::Create,
        (Some(_), None) => Op::Create,
        _ => Op::Update,
    }
}

fn value_after(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::TimestampMicros(a), Value::TimestampMicros(b)) | (Value::Long(a), Value::Long(b)) => a > b,
        (Value::Int(a), Value::Int(b)) | (Value::Date(a), Value::Date(b)) => a > b,
        (Value::String(a), Value::String(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_after_run_start_is_an_insert() {
        let row = vec![Value::Long(1), Value::TimestampMicros(10), Value::TimestampMicros(10)];
        assert_eq!(classify_op(Some(2), Some(&Value::TimestampMicros(5)), &row), Op::Create);
        assert_eq!(classify_op(Some(2), Some(&Value::TimestampMicros(10)), &row), Op::Update);
        assert_eq!(classify_op(None, Some(&Value::TimestampMicros(5)), &row), Op::Update);
    }
}
