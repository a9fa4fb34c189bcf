//! What `diff` mode and a cursor model's reconciliation share: scanning the model's keys
//! against the tracked state of the change topic, and emitting a [`DiffPlan`] with `before`
//! images read back from that topic.
//!
//! Guarantees of [`emit`]:
//! - changes are committed in Kafka transactions of at most `batch_rows` changes, each with the
//!   model's next state record (position unchanged: `diff` keeps none, a reconciliation keeps
//!   the cursor's), so a crash between two leaves a committed prefix that the next run, after
//!   catching up, does not emit again;
//! - an update carries the key's last emitted image as `before` (and the changed columns), a
//!   delete carries it as `before` and is followed by a tombstone with exactly the key bytes the
//!   key was written with; an image written with another schema is left out rather than
//!   decoded wrongly;
//! - a delete whose previous event vanished (compacted away by a newer event since the state
//!   was caught up) stops the run with a retryable error instead of guessing: the retry catches
//!   up first;
//! - a plan with no change commits nothing once the first snapshot is done.

use sluice_avro::{decoder_for, fingerprint_bytes, EventDecoder, KeyDecoder, ModelCodec};
use sluice_core::config::ModelConfig;
use sluice_core::{Op, Row};
use sluice_kafka::producer::OutRecord;
use sluice_warehouse::{Warehouse, WarehouseError};

use crate::context::ModelContext;
use crate::emit::{count_events, ChangeWriter};
use crate::error::ModelError;
use crate::gates::RunCounts;
use crate::keys::key_hash;
use crate::tracked::{previous_records, KeyMap, Stored};

/// What the next run would emit, before the previous images are read back.
pub struct DiffPlan {
    /// Rows the model returned.
    pub rows: u64,
    /// Rows in the last emitted state.
    pub tracked: u64,
    /// New rows.
    pub inserts: Vec<Row>,
    /// New row image and location of the key's previous event.
    pub updates: Vec<(Row, u64)>,
    /// Rows equal to their last emitted image: empty unless asked for ([`Unchanged::Keep`], a
    /// resync).
    pub unchanged: Vec<Row>,
    /// Locations of the previous events of vanished keys.
    pub deletes: Vec<u64>,
}

/// What a comparison does with rows whose hash matches the tracked state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// Leave them out of the plan (a `diff` run: no change, no event).
    Skip,
    /// Keep them in [`DiffPlan::unchanged`] (a resync re-emits every current row).
    Keep,
}

impl DiffPlan {
    /// The plan as the gates see it.
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            rows: self.rows,
            tracked: self.tracked,
            inserts: self.inserts.len() as u64,
            updates: self.updates.len() as u64,
            deletes: self.deletes.len() as u64,
        }
    }
}

/// Read every row of the model ([`Warehouse::scan`]) and give it to `each` with the hash of its
/// encoded key ([`key_hash`], the identity the tracked state knows it by), or `None` when a key
/// column is NULL (such a key cannot be encoded, so it was never emitted). Returns the number
/// of rows read.
pub async fn scan_keys<W, F>(warehouse: &W, model: &ModelConfig, codec: &ModelCodec, mut each: F) -> Result<u64, WarehouseError>
where
    W: Warehouse,
    F: FnMut(Row, Option<u64>) + Send,
{
    let name = model.name.get_ref().as_str();
    let schema = codec.row_schema();
    let mut key = Vec::with_capacity(64);
    warehouse
        .scan(model, schema, |row| {
            if schema.primary_key.iter().any(|&k| row[k].is_null()) {
                each(row, None);
                return Ok(());
            }
            key.clear();
            codec
                .encode_key(&row, &mut key)
                .map_err(|e| WarehouseError::Model { model: name.to_string(), message: format!("cannot encode a key: {e}") })?;
            each(row, Some(key_hash(&key)));
            Ok(())
        })
        .await
}

/// The `after` image of a stored event, when it was written with the current schema (an image
/// in an older schema would be positionally wrong: then `before` is left out).
pub fn image_of(decoder: &EventDecoder, codec: &ModelCodec, stored: Option<&Stored>) -> Option<Row> {
    let payload = stored?.payload.as_deref()?;
    // Events written before standard fingerprints carry the legacy one of the same schema.
    if !codec.is_own_value_fingerprint(&fingerprint_bytes(payload).ok()?) {
        return None;
    }
    decoder.decode(payload).ok()?.event.after
}

/// The keys of the records at `locs` among `previous`, as JSON (a plan's sample deletes); a
/// key that does not decode with the model's key schema is left out.
pub fn stored_keys<'l>(
    codec: &ModelCodec,
    previous: &KeyMap<Stored>,
    locs: impl Iterator<Item = &'l u64>,
) -> Result<Vec<serde_json::Value>, sluice_avro::CodecError> {
    let key_decoder = KeyDecoder::new(&codec.schemas()[0].json)?;
    Ok(locs
        .filter_map(|loc| previous.get(loc))
        .filter_map(|stored| key_decoder.decode(&stored.key).ok())
        .map(|fields| serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, v.to_json())).collect()))
        .collect())
}

/// How [`emit_as`] turns a plan into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emission {
    /// A run's changes: inserts `c` (`r` during the first snapshot), updates `u` with their
    /// `before` image and changed columns, deletes `d`.
    Changes,
    /// A fresh snapshot of the model (`sluice resync`): every current row (new, changed or
    /// unchanged) as `r` without `before`, then the deletes `d`.
    Snapshot,
}

/// Turn a plan into events and commit them with the state record, `batch_rows` changes per
/// transaction (see the module doc). Returns the number of events (tombstones not counted).
/// Public for the benchmarks, which time one run's phases separately.
pub async fn emit<W>(ctx: &mut ModelContext<'_, W>, plan: DiffPlan, run_id: &str) -> Result<u64, ModelError> {
    emit_as(ctx, plan, run_id, Emission::Changes).await
}

/// [`emit`] the plan as `emission` says.
pub async fn emit_as<W>(ctx: &mut ModelContext<'_, W>, plan: DiffPlan, run_id: &str, emission: Emission) -> Result<u64, ModelError> {
    let name = ctx.name();
    let topic = ctx.change_topic();
    let mut wanted: Vec<u64> = match emission {
        Emission::Changes => plan.updates.iter().map(|(_, loc)| *loc).collect(),
        Emission::Snapshot => Vec::new(),
    };
    wanted.extend_from_slice(&plan.deletes);
    let previous = previous_records(&ctx.config.kafka, &topic, wanted).await?;
    let codec = &ctx.codec;
    let decoder = decoder_for(codec);
    let mut writer = ChangeWriter::new(ctx.config, name, codec, run_id);
    let snapshot_done = ctx.committer.state().snapshot_done;
    let insert_op = if snapshot_done { Op::Create } else { Op::Read };
    let deletes = plan.deletes.len() as u64;

    // Each change is 1 record (2 for a delete and its tombstone), kept in one transaction.
    let mut changes: Vec<Vec<OutRecord>> = Vec::with_capacity(plan.inserts.len() + plan.updates.len() + plan.unchanged.len() + plan.deletes.len());
    let counts = match emission {
        Emission::Changes => {
            let counts = [(insert_op, plan.inserts.len() as u64), (Op::Update, plan.updates.len() as u64), (Op::Delete, deletes)];
            for row in plan.inserts {
                changes.push(writer.change(insert_op, None, Some(row), None)?);
            }
            for (row, loc) in plan.updates {
                let before = image_of(&decoder, codec, previous.get(&loc));
                changes.push(writer.change(Op::Update, before, Some(row), None)?);
            }
            counts
        }
        Emission::Snapshot => {
            let rows = plan.inserts.into_iter().chain(plan.updates.into_iter().map(|(row, _)| row)).chain(plan.unchanged);
            for row in rows {
                changes.push(writer.change(Op::Read, None, Some(row), None)?);
            }
            [(Op::Read, changes.len() as u64), (Op::Update, 0), (Op::Delete, deletes)]
        }
    };
    for loc in plan.deletes {
        let Some(stored) = previous.get(&loc) else {
            // Compacted away: a newer record for the key exists, so the state we compared with
            // is stale. Retry the run; catching up first resolves it.
            return Err(ModelError::State(format!("previous event at {loc:#x} of {topic} vanished during the run")));
        };
        let before = image_of(&decoder, codec, Some(stored));
        changes.push(writer.change(Op::Delete, before, None, Some(stored.key.clone()))?);
    }

    let total = changes.len() as u64;
    if changes.is_empty() && snapshot_done {
        return Ok(0);
    }
    commit_batches(ctx, changes, run_id).await?;
    count_events(name, &counts);
    Ok(total)
}

/// Commit `changes` in transactions of at most `batch_rows` changes, each with the model's next
/// state record (position unchanged; the first snapshot done once the last one commits).
async fn commit_batches<W>(ctx: &mut ModelContext<'_, W>, changes: Vec<Vec<OutRecord>>, run_id: &str) -> Result<(), ModelError> {
    let batch = ctx.model.batch_rows.max(1);
    let mut pending = changes.into_iter().peekable();
    loop {
        let mut records = Vec::with_capacity(batch + 3);
        let mut events = 0u64;
        while events < batch as u64 {
            let Some(change) = pending.next() else { break };
            records.extend(change);
            events += 1;
        }
        let last = pending.peek().is_none();
        let state = ctx.committer.state();
        // `diff` keeps no position; a cursor model's reconciliation keeps its cursor.
        let position = state.position.clone();
        // The first snapshot is done once its last transaction commits.
        let snapshot_done = state.snapshot_done || last;
        ctx.committer.commit_run(records, run_id, position, snapshot_done, events).await?;
        if last {
            return Ok(());
        }
    }
}
