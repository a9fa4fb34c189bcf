//! `sluice plan <model>`: a dry run of the next run of a model in any mode — what it would emit,
//! with samples — that emits nothing, writes nothing, takes no lock and does not fence the
//! running poller (it only reads the warehouse and, `read_committed`, the state and change
//! topics). A `warehouse_diff` model is compared with its kept snapshot by a read-only query.
//!
//! For a cursor model: the rows after the committed position (with a look-back window: the
//! window, less the rows already emitted in it) as snapshot reads, inserts, updates and soft
//! deletes, by the same rules as the poll loop ([`crate::cursor::CursorRules`]), read page by
//! page and kept only as counts and samples; plus, when `reconcile_interval_ms` is set, the hard
//! deletes a reconciliation would find now ([`crate::reconcile::find_deletes`]).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use sluice_avro::{decoder_for, KeyDecoder, ModelCodec, PollerState};
use sluice_core::config::{Config, Detection, ModelConfig};
use sluice_core::{naming, Op};
use sluice_warehouse::AnyWarehouse;
use sluice_warehouse::{cursor_indexes, cursor_of, Warehouse};

use crate::cursor::{CursorRules, OpCounts};
use crate::diff::{compute, previous_records};
use crate::emit::changed_columns;
use crate::gates::{check_volume, RunCounts};
use crate::lookback::{micros, parse, window_start};
use crate::keys::{key_hash, key_json, key_tuple_json};
use crate::model_loop::load_state;
use crate::reconcile::find_deletes;
use crate::tracked::{KeyMap, Stored, Tracked};

/// What the next run would do.
#[derive(Debug, Clone)]
pub struct PlanReport {
    pub model: String,
    pub counts: RunCounts,
    /// Whether the inserts would be snapshot reads (`r`) rather than creates (`c`).
    pub first_snapshot: bool,
    pub insert_samples: Vec<serde_json::Value>,
    /// Key and changed columns of sample updates.
    pub update_samples: Vec<(serde_json::Value, Vec<String>)>,
    pub delete_samples: Vec<serde_json::Value>,
    /// The gate that would refuse the run, with its message; `None` = the run would go ahead.
    pub refused: Option<String>,
    /// For a cursor model: how its deletes split (`None` for `diff`).
    pub cursor: Option<CursorDeletes>,
}

/// The deletes of a cursor model's next run, by origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorDeletes {
    /// Rows marked by `deleted_column` after the position.
    pub soft: u64,
    /// Keys a reconciliation would delete now; `None` when `reconcile_interval_ms` is not set
    /// (or the first snapshot is not complete, when no reconciliation runs).
    pub hard: Option<u64>,
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        match self.cursor {
            None => writeln!(f, "model {}: {} rows read, {} rows emitted so far", self.model, c.rows, c.tracked)?,
            Some(_) => {
                writeln!(f, "model {}: {} rows read after the committed position, {} events emitted so far", self.model, c.rows, c.tracked)?
            }
        }
        let insert_label = if self.first_snapshot { "snapshot reads (r)" } else { "inserts (c)" };
        writeln!(f, "  {insert_label}: {}", c.inserts)?;
        for key in &self.insert_samples {
            writeln!(f, "    {key}")?;
        }
        writeln!(f, "  updates (u): {}", c.updates)?;
        for (key, changed) in &self.update_samples {
            if changed.is_empty() {
                writeln!(f, "    {key}")?; // cursor and warehouse_diff plans do not compare images
            } else {
                writeln!(f, "    {key} changed: {}", changed.join(", "))?;
            }
        }
        match self.cursor {
            Some(CursorDeletes { soft, hard: Some(hard) }) => {
                writeln!(f, "  deletes (d): {} ({soft} soft-deleted, {hard} found by reconciliation)", c.deletes)?
            }
            Some(CursorDeletes { soft, hard: None }) => {
                writeln!(f, "  deletes (d): {} ({soft} soft-deleted; no reconciliation of hard deletes)", c.deletes)?
            }
            None => writeln!(f, "  deletes (d): {}", c.deletes)?,
        }
        for key in &self.delete_samples {
            writeln!(f, "    {key}")?;
        }
        match &self.refused {
            Some(reason) => write!(f, "the run would be REFUSED: {reason}"),
            None => write!(f, "the run would emit {} events; nothing was emitted by this plan", c.inserts + c.updates + c.deletes),
        }
    }
}

/// Compute the next run of `model` (a `diff` or `cursor` model) without emitting anything.
pub async fn plan(config: &Config, model: &str, samples: usize) -> anyhow::Result<PlanReport> {
    let model_config = config.model(model).with_context(|| format!("no model named {model:?} in the config"))?;
    let warehouse = AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?;
    let codec = ModelCodec::new(model, warehouse.describe(model_config).await?)?;
    let state = load_state(config, model).await?;
    match &model_config.detection {
        Detection::Cursor { lookback_ms, reconcile_interval_ms, .. } => {
            plan_cursor(config, &warehouse, model_config, &codec, state, *lookback_ms, reconcile_interval_ms.is_some(), samples).await
        }
        Detection::Diff {} => plan_diff(config, &warehouse, model_config, &codec, state, samples).await,
        Detection::WarehouseDiff {} => plan_warehouse_diff(&warehouse, model_config, &codec, state, samples).await,
    }
}

/// `warehouse_diff`: the key gates and the comparison with the kept snapshot, both inside the
/// warehouse and read-only (a running poller's pending snapshot is untouched). Update samples
/// carry no changed columns: the comparison is by row hash, the images stay in the warehouse.
async fn plan_warehouse_diff(
    warehouse: &AnyWarehouse,
    model_config: &ModelConfig,
    codec: &ModelCodec,
    state: Option<PollerState>,
    samples: usize,
) -> anyhow::Result<PlanReport> {
    use sluice_warehouse::SnapshotStore as _;
    let model = model_config.name.get_ref().as_str();
    let schema = codec.row_schema();
    let first_snapshot = !state.as_ref().is_some_and(|s| s.snapshot_done);
    let mut report = PlanReport {
        model: model.to_string(),
        counts: RunCounts::default(),
        first_snapshot,
        insert_samples: Vec::new(),
        update_samples: Vec::new(),
        delete_samples: Vec::new(),
        refused: None,
        cursor: None,
    };
    let check = warehouse.check_keys(model_config, schema).await?;
    if let Err(refused) = crate::gates::check_keys(model, codec, &check) {
        report.refused = Some(refused.to_string());
        return Ok(report);
    }
    let plan = warehouse.plan_snapshot(model_config, schema, samples).await?;
    report.counts = RunCounts { rows: plan.rows, tracked: plan.tracked, inserts: plan.inserts, updates: plan.updates, deletes: plan.deletes };
    report.refused = check_volume(model, &model_config.gates, report.counts, first_snapshot, false).err().map(|e| e.to_string());
    let json = |keys: &[sluice_core::Row]| keys.iter().map(|k| key_tuple_json(schema, k)).collect::<Vec<_>>();
    report.insert_samples = json(&plan.insert_samples);
    report.update_samples = json(&plan.update_samples).into_iter().map(|k| (k, Vec::new())).collect();
    report.delete_samples = json(&plan.delete_samples);
    Ok(report)
}

/// Keys of the records at `locs` among `previous` (the sample keys of deletes).
fn stored_keys<'a>(
    codec: &ModelCodec,
    previous: &KeyMap<Stored>,
    locs: impl Iterator<Item = &'a u64>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let key_decoder = KeyDecoder::new(&codec.schemas()[0].json)?;
    Ok(locs
        .filter_map(|loc| previous.get(loc))
        .filter_map(|stored| key_decoder.decode(&stored.key).ok())
        .map(|fields| serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, v.to_json())).collect()))
        .collect())
}

async fn plan_diff(
    config: &Config,
    warehouse: &AnyWarehouse,
    model_config: &ModelConfig,
    codec: &ModelCodec,
    state: Option<PollerState>,
    samples: usize,
) -> anyhow::Result<PlanReport> {
    let model = model_config.name.get_ref().as_str();
    let topic = naming::change_topic(&config.kafka.topic_prefix, model);
    let (kafka, t) = (config.kafka.clone(), topic.clone());
    let tracked = tokio::task::spawn_blocking(move || -> anyhow::Result<Tracked> {
        let mut tracked = Tracked::new(&kafka, &t)?;
        tracked.catch_up(Duration::from_secs(300))?;
        Ok(tracked)
    })
    .await??;
    let mut tracked = tracked;
    let first_snapshot = !state.as_ref().is_some_and(|s| s.snapshot_done);
    let plan = match compute(warehouse, model_config, codec, &mut tracked).await {
        Ok(plan) => plan,
        Err(crate::ModelError::Gate(refused)) => {
            return Ok(PlanReport {
                model: model.to_string(),
                counts: RunCounts::default(),
                first_snapshot,
                insert_samples: Vec::new(),
                update_samples: Vec::new(),
                delete_samples: Vec::new(),
                refused: Some(refused.to_string()),
                cursor: None,
            })
        }
        Err(other) => return Err(other.into()),
    };
    let counts = plan.counts();
    let refused = check_volume(model, &model_config.gates, counts, first_snapshot, false).err().map(|e| e.to_string());
    let schema = codec.row_schema();
    let insert_samples = plan.inserts.iter().take(samples).map(|row| key_json(schema, row)).collect();
    let wanted: Vec<u64> =
        plan.updates.iter().take(samples).map(|(_, loc)| *loc).chain(plan.deletes.iter().take(samples).copied()).collect();
    let previous = previous_records(config, &topic, wanted).await?;
    let decoder = decoder_for(codec);
    let before_of =
        |loc: &u64| previous.get(loc).and_then(|s| s.payload.as_deref()).and_then(|p| decoder.decode(p).ok()).and_then(|d| d.event.after);
    let update_samples = plan
        .updates
        .iter()
        .take(samples)
        .map(|(row, loc)| (key_json(schema, row), before_of(loc).map(|b| changed_columns(schema, &b, row)).unwrap_or_default()))
        .collect();
    let delete_samples = stored_keys(codec, &previous, plan.deletes.iter().take(samples))?;
    Ok(PlanReport {
        model: model.to_string(),
        counts,
        first_snapshot,
        insert_samples,
        update_samples,
        delete_samples,
        refused,
        cursor: None,
    })
}

/// The next poll of a cursor model (and the reconciliation, when configured), counted.
#[allow(clippy::too_many_arguments)]
async fn plan_cursor(
    config: &Config,
    warehouse: &AnyWarehouse,
    model_config: &ModelConfig,
    codec: &ModelCodec,
    state: Option<PollerState>,
    lookback_ms: Option<u64>,
    reconciled: bool,
    samples: usize,
) -> anyhow::Result<PlanReport> {
    let model = model_config.name.get_ref().as_str();
    let schema = codec.row_schema();
    let indexes = cursor_indexes(model_config, schema).expect("cursor mode has a cursor");
    let rules = CursorRules::new(model_config, codec);
    let snapshot_done = state.as_ref().is_some_and(|s| s.snapshot_done);
    let position = parse(model, state.as_ref().and_then(|s| s.position.as_deref()))?;
    let recent: HashSet<(u64, i64)> = position.recent.into_iter().collect();
    // With a window the poll re-reads it from its start; without, it reads after the cursor.
    let since = lookback_ms.and_then(|ms| window_start(position.cursor.as_deref(), ms));
    let mut after = if lookback_ms.is_some() { None } else { position.cursor.clone() };
    let mut run_start = position.cursor.as_ref().map(|c| c[0].clone());
    let batch = model_config.batch_rows.max(1);
    let (mut rows, mut ops) = (0u64, OpCounts::default());
    let (mut insert_samples, mut update_samples, mut delete_samples) = (Vec::new(), Vec::new(), Vec::new());
    let mut key = Vec::with_capacity(64);
    loop {
        let page = match &since {
            Some(since) => warehouse.fetch_since(model_config, schema, since, after.as_deref(), batch).await?,
            None => warehouse.fetch_after(model_config, schema, after.as_deref(), batch).await?,
        };
        let full = page.len() == batch;
        let Some(last) = page.last() else { break };
        after = Some(cursor_of(&indexes, last));
        // The poll loops commit page by page: a page's ops are judged from the cursor the
        // previous page left.
        let mut page_end = run_start.clone();
        for row in page {
            let value = &row[indexes[0]];
            if lookback_ms.is_some() {
                let row_micros = micros(value).unwrap_or(i64::MIN);
                key.clear();
                codec.encode_key(&row, &mut key)?;
                if recent.contains(&(key_hash(&key), row_micros)) {
                    continue; // emitted by an earlier poll of the window
                }
                // A late row (behind the cursor) does not move it.
                if page_end.as_ref().and_then(micros).is_none_or(|end| row_micros >= end) {
                    page_end = Some(value.clone());
                }
            } else {
                page_end = Some(value.clone());
            }
            rows += 1;
            let Some(op) = rules.op(snapshot_done, run_start.as_ref(), &row) else { continue };
            ops.add(op);
            match op {
                Op::Read | Op::Create if insert_samples.len() < samples => insert_samples.push(key_json(schema, &row)),
                Op::Update if update_samples.len() < samples => update_samples.push((key_json(schema, &row), Vec::new())),
                Op::Delete if delete_samples.len() < samples => delete_samples.push(key_json(schema, &row)),
                _ => {}
            }
        }
        run_start = page_end;
        if !full {
            break;
        }
    }
    let (mut hard, mut refused) = (None, None);
    if reconciled && snapshot_done {
        let found = find_deletes(config, warehouse, model_config, codec).await?;
        refused = check_volume(model, &model_config.gates, found.counts(), false, false).err().map(|e| e.to_string());
        let room = samples.saturating_sub(delete_samples.len());
        let topic = naming::change_topic(&config.kafka.topic_prefix, model);
        let previous = previous_records(config, &topic, found.deletes.iter().take(room).copied().collect()).await?;
        delete_samples.extend(stored_keys(codec, &previous, found.deletes.iter().take(room))?);
        hard = Some(found.deletes.len() as u64);
    }
    let counts = RunCounts {
        rows,
        tracked: state.as_ref().map_or(0, |s| s.events_total as u64),
        inserts: ops.reads + ops.creates,
        updates: ops.updates,
        deletes: ops.deletes + hard.unwrap_or(0),
    };
    Ok(PlanReport {
        model: model.to_string(),
        counts,
        first_snapshot: !snapshot_done,
        insert_samples,
        update_samples,
        delete_samples,
        refused,
        cursor: Some(CursorDeletes { soft: ops.deletes, hard }),
    })
}
