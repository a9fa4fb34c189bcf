//! `sluice plan <model>`: a dry run of the next run of a model in any mode — what it would emit,
//! with samples — that emits nothing, writes nothing, takes no lock and does not fence the
//! running poller (it only reads the warehouse and, `read_committed`, the state and change
//! topics). A `warehouse_diff` model is compared with its kept snapshot by a read-only query.
//!
//! For a cursor model: the rows after the committed position (with a look-back window: the
//! window, less the rows already emitted in it) as snapshot reads, inserts, updates and soft
//! deletes, by the same rules as the poll loop ([`crate::cursor::CursorRules`]), read page by
//! page and kept only as counts and samples; plus, when `reconcile_interval_ms` is set, the hard
//! deletes a reconciliation would find now ([`crate::cursor::find_deletes`]). A stored position
//! the poller could not use is reported with the same error the poller stops with.

use std::collections::HashSet;

use anyhow::Context as _;
use sluice_avro::{decoder_for, KeyDecoder, ModelCodec, PollerState};
use sluice_core::config::{Config, Detection, ModelConfig};
use sluice_core::{naming, Op};
use sluice_warehouse::{cursor_indexes, cursor_of, AnyWarehouse, SnapshotStore as _, Warehouse};

use crate::cursor::{find_deletes, micros, window_start, CursorRules, OpCounts};
use crate::diff::compute;
use crate::emit::changed_columns;
use crate::error::ModelError;
use crate::gates::{check_keys, check_volume, RunCounts};
use crate::keys::{key_hash, key_json, key_tuple_json};
use crate::position::{CursorPosition, Position};
use crate::state::load_state;
use crate::tracked::{previous_records, KeyMap, Stored, Tracked};

/// What the next run would do.
#[derive(Debug, Clone)]
pub struct PlanReport {
    /// The model planned.
    pub model: String,
    /// What the run would read and emit.
    pub counts: RunCounts,
    /// Whether the inserts would be snapshot reads (`r`) rather than creates (`c`).
    pub first_snapshot: bool,
    /// Keys of sample inserts (or snapshot reads).
    pub insert_samples: Vec<serde_json::Value>,
    /// Key and changed columns of sample updates.
    pub update_samples: Vec<(serde_json::Value, Vec<String>)>,
    /// Keys of sample deletes.
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

impl PlanReport {
    /// A report of `counts` with no samples yet, nothing refused.
    fn new(model: &str, counts: RunCounts, first_snapshot: bool) -> PlanReport {
        PlanReport {
            model: model.to_string(),
            counts,
            first_snapshot,
            insert_samples: Vec::new(),
            update_samples: Vec::new(),
            delete_samples: Vec::new(),
            refused: None,
            cursor: None,
        }
    }

    /// A run that a key gate would refuse before counting anything.
    fn refused(model: &str, first_snapshot: bool, reason: String) -> PlanReport {
        PlanReport { refused: Some(reason), ..PlanReport::new(model, RunCounts::default(), first_snapshot) }
    }
}

/// Compute the next run of `model` (in any mode) without emitting anything.
pub async fn plan(config: &Config, model: &str, samples: usize) -> anyhow::Result<PlanReport> {
    let model_config = config.model(model).with_context(|| format!("no model named {model:?} in the config"))?;
    let warehouse = AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?;
    let codec = ModelCodec::new(model, warehouse.describe(model_config).await?)?;
    let state = load_state(config, model).await?;
    let planner = Planner { config, warehouse: &warehouse, model: model_config, codec, state, samples };
    // The same reading of the stored position as the poller's: an unusable one is an error here too.
    let position = Position::parse(model, &model_config.detection, planner.snapshot_done(), planner.stored_position())?;
    match (&model_config.detection, position) {
        (Detection::Cursor { lookback_ms, reconcile_interval_ms, .. }, Position::Cursor(start)) => {
            planner.cursor(start, *lookback_ms, reconcile_interval_ms.is_some()).await
        }
        (Detection::Diff {}, _) => planner.diff().await,
        (Detection::WarehouseDiff {}, _) => planner.warehouse_diff().await,
        (Detection::Cursor { .. }, other) => unreachable!("a cursor model's position reads as Position::Cursor, not {other:?}"),
    }
}

/// What a plan reads from: the model, its warehouse and codec, and its committed state (none
/// when nothing was committed yet).
struct Planner<'a> {
    config: &'a Config,
    warehouse: &'a AnyWarehouse,
    model: &'a ModelConfig,
    codec: ModelCodec,
    state: Option<PollerState>,
    /// Most samples per kind of change.
    samples: usize,
}

impl Planner<'_> {
    fn name(&self) -> &str {
        self.model.name.get_ref().as_str()
    }

    fn snapshot_done(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.snapshot_done)
    }

    fn stored_position(&self) -> Option<&str> {
        self.state.as_ref().and_then(|s| s.position.as_deref())
    }

    /// Keys of the records at `locs` among `previous` (the sample keys of deletes).
    fn stored_keys<'l>(&self, previous: &KeyMap<Stored>, locs: impl Iterator<Item = &'l u64>) -> anyhow::Result<Vec<serde_json::Value>> {
        let key_decoder = KeyDecoder::new(&self.codec.schemas()[0].json)?;
        Ok(locs
            .filter_map(|loc| previous.get(loc))
            .filter_map(|stored| key_decoder.decode(&stored.key).ok())
            .map(|fields| serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, v.to_json())).collect()))
            .collect())
    }

    /// `warehouse_diff`: the key gates and the comparison with the kept snapshot, both inside
    /// the warehouse and read-only (a running poller's pending snapshot is untouched). Update
    /// samples carry no changed columns: the comparison is by row hash, the images stay in the
    /// warehouse.
    async fn warehouse_diff(&self) -> anyhow::Result<PlanReport> {
        let (model, codec) = (self.name(), &self.codec);
        let schema = codec.row_schema();
        let first_snapshot = !self.snapshot_done();
        let check = self.warehouse.check_keys(self.model, schema).await?;
        if let Err(refused) = check_keys(model, codec, &check) {
            return Ok(PlanReport::refused(model, first_snapshot, refused.to_string()));
        }
        let plan = self.warehouse.plan_snapshot(self.model, schema, self.samples).await?;
        let counts = RunCounts { rows: plan.rows, tracked: plan.tracked, inserts: plan.inserts, updates: plan.updates, deletes: plan.deletes };
        let mut report = PlanReport::new(model, counts, first_snapshot);
        report.refused = check_volume(model, &self.model.gates, counts, first_snapshot, false).err().map(|e| e.to_string());
        let json = |keys: &[sluice_core::Row]| keys.iter().map(|k| key_tuple_json(schema, k)).collect::<Vec<_>>();
        report.insert_samples = json(&plan.insert_samples);
        report.update_samples = json(&plan.update_samples).into_iter().map(|k| (k, Vec::new())).collect();
        report.delete_samples = json(&plan.delete_samples);
        Ok(report)
    }

    /// `diff`: the comparison with the change topic, as the next run would compute it.
    async fn diff(&self) -> anyhow::Result<PlanReport> {
        let (model, codec, samples) = (self.name(), &self.codec, self.samples);
        let topic = naming::change_topic(&self.config.kafka.topic_prefix, model);
        let mut tracked = Tracked::load(&self.config.kafka, &topic).await?;
        let first_snapshot = !self.snapshot_done();
        let plan = match compute(self.warehouse, self.model, codec, &mut tracked).await {
            Ok(plan) => plan,
            Err(ModelError::Gate(refused)) => return Ok(PlanReport::refused(model, first_snapshot, refused.to_string())),
            Err(other) => return Err(other.into()),
        };
        let mut report = PlanReport::new(model, plan.counts(), first_snapshot);
        report.refused = check_volume(model, &self.model.gates, report.counts, first_snapshot, false).err().map(|e| e.to_string());
        let schema = codec.row_schema();
        report.insert_samples = plan.inserts.iter().take(samples).map(|row| key_json(schema, row)).collect();
        let wanted: Vec<u64> =
            plan.updates.iter().take(samples).map(|(_, loc)| *loc).chain(plan.deletes.iter().take(samples).copied()).collect();
        let previous = previous_records(&self.config.kafka, &topic, wanted).await?;
        let decoder = decoder_for(codec);
        let before_of =
            |loc: &u64| previous.get(loc).and_then(|s| s.payload.as_deref()).and_then(|p| decoder.decode(p).ok()).and_then(|d| d.event.after);
        report.update_samples = plan
            .updates
            .iter()
            .take(samples)
            .map(|(row, loc)| (key_json(schema, row), before_of(loc).map(|b| changed_columns(schema, &b, row)).unwrap_or_default()))
            .collect();
        report.delete_samples = self.stored_keys(&previous, plan.deletes.iter().take(samples))?;
        Ok(report)
    }

    /// The next poll of a cursor model from `start` (and the reconciliation, when configured),
    /// counted.
    async fn cursor(&self, start: CursorPosition, lookback_ms: Option<u64>, reconciled: bool) -> anyhow::Result<PlanReport> {
        let (model, codec, samples) = (self.name(), &self.codec, self.samples);
        let schema = codec.row_schema();
        let indexes = cursor_indexes(self.model, schema).expect("cursor mode has a cursor");
        let rules = CursorRules::new(self.model, codec);
        let snapshot_done = self.snapshot_done();
        let recent: HashSet<(u64, i64)> = start.recent.into_iter().collect();
        // With a window the poll re-reads it from its start; without, it reads after the cursor.
        let since = lookback_ms.and_then(|ms| window_start(start.cursor.as_deref(), ms));
        let mut after = if lookback_ms.is_some() { None } else { start.cursor.clone() };
        let mut run_start = start.cursor.as_ref().map(|c| c[0].clone());
        let batch = self.model.batch_rows.max(1);
        let (mut rows, mut ops) = (0u64, OpCounts::default());
        let (mut insert_samples, mut update_samples, mut delete_samples) = (Vec::new(), Vec::new(), Vec::new());
        let mut key = Vec::with_capacity(64);
        loop {
            let page = match &since {
                Some(since) => self.warehouse.fetch_since(self.model, schema, since, after.as_deref(), batch).await?,
                None => self.warehouse.fetch_after(self.model, schema, after.as_deref(), batch).await?,
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
        let (hard, refused) = if reconciled && snapshot_done {
            let room = samples.saturating_sub(delete_samples.len());
            let (deletes, verdict, keys) = self.reconciliation(room).await?;
            delete_samples.extend(keys);
            (Some(deletes), verdict)
        } else {
            (None, None)
        };
        let counts = RunCounts {
            rows,
            tracked: self.state.as_ref().map_or(0, |s| s.events_total as u64),
            inserts: ops.reads + ops.creates,
            updates: ops.updates,
            deletes: ops.deletes + hard.unwrap_or(0),
        };
        Ok(PlanReport {
            insert_samples,
            update_samples,
            delete_samples,
            refused,
            cursor: Some(CursorDeletes { soft: ops.deletes, hard }),
            ..PlanReport::new(model, counts, !snapshot_done)
        })
    }

    /// The hard deletes a reconciliation would find now: their number, the gate verdict on them
    /// and up to `room` sample keys.
    async fn reconciliation(&self, room: usize) -> anyhow::Result<(u64, Option<String>, Vec<serde_json::Value>)> {
        let found = find_deletes(self.config, self.warehouse, self.model, &self.codec).await?;
        let refused = check_volume(self.name(), &self.model.gates, found.counts(), false, false).err().map(|e| e.to_string());
        let topic = naming::change_topic(&self.config.kafka.topic_prefix, self.name());
        let previous = previous_records(&self.config.kafka, &topic, found.deletes.iter().take(room).copied().collect()).await?;
        let samples = self.stored_keys(&previous, found.deletes.iter().take(room))?;
        Ok((found.deletes.len() as u64, refused, samples))
    }
}
