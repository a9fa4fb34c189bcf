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
use sluice_avro::{decoder_for, ModelCodec, PollerState};
use sluice_core::config::{Config, Detection, ModelConfig};
use sluice_core::{naming, Op};
use sluice_warehouse::{cursor_indexes, cursor_of, AnyWarehouse, SnapshotStore as _, Warehouse};

use crate::changes::{image_of, stored_keys};
use crate::clock::now_ms;
use crate::cursor::{find_deletes, micros, window_start, CursorRules, Known, OpCounts, PollContext};
use crate::diff::compute;
use crate::emit::changed_columns;
use crate::error::ModelError;
use crate::expiry::Expiry;
use crate::gates::{check_keys, check_volume, RunCounts};
use crate::keys::{key_hash, key_json, key_tuple_json, row_hash};
use crate::position::{CursorPosition, Position};
use crate::state::load_state;
use crate::tracked::{previous_records, KeyMap, Keys, Stored, Tracked};

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
    /// Rows read after the position that are gone: marked by `deleted_column`, or expired.
    pub soft: u64,
    /// Keys a reconciliation would delete now; `None` when `reconcile_interval_ms` is not set
    /// (or the first snapshot is not complete, when no reconciliation runs).
    pub hard: Option<u64>,
    /// Keys the expiry sweep would delete now; `None` without `expire`.
    pub expired: Option<u64>,
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
                writeln!(f, "    {key}")?; // warehouse_diff plans (and cursor plans without before images) do not compare images
            } else {
                writeln!(f, "    {key} changed: {}", changed.join(", "))?;
            }
        }
        match self.cursor {
            Some(CursorDeletes { soft, hard, expired }) => {
                let expired = expired.map(|n| format!(", {n} expired by the sweep")).unwrap_or_default();
                match hard {
                    Some(hard) => writeln!(f, "  deletes (d): {} ({soft} soft-deleted{expired}, {hard} found by reconciliation)", c.deletes)?,
                    None => writeln!(f, "  deletes (d): {} ({soft} soft-deleted{expired}; no reconciliation of hard deletes)", c.deletes)?,
                }
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
        Ok(stored_keys(&self.codec, previous, locs)?)
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
        let mut tracked = Tracked::load(&self.config.kafka, &topic, false).await?;
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

    /// The next poll of a cursor model from `start` (and, when configured, the expiry sweep and
    /// the reconciliation), counted.
    async fn cursor(&self, start: CursorPosition, lookback_ms: Option<u64>, reconciled: bool) -> anyhow::Result<PlanReport> {
        let (model, codec) = (self.name(), &self.codec);
        let schema = codec.row_schema();
        let expiry = Expiry::of(self.model, schema)?;
        let rules = CursorRules::new(self.model, codec, expiry);
        let before_images = matches!(self.model.detection, Detection::Cursor { before_images: true, .. });
        // The state the poller keeps, as committed now.
        let mut tracked = match before_images {
            true => Some(Tracked::load(&self.config.kafka, &self.change_topic(), expiry.is_some()).await?),
            false => None,
        };
        let snapshot_done = self.snapshot_done();
        let now = now_ms();
        let mut tally = CursorTally::new(self.samples, schema);
        let poll = PollContext { snapshot_done, run_start: None, now_ms: now };
        self.read_cursor_pages(start, lookback_ms, &rules, &poll, tracked.as_ref().map(Tracked::keys), &mut tally).await?;
        let expired = match (&mut tracked, expiry) {
            (Some(tracked), Some(_)) => Some(tally.deletes_by_sweep(self, tracked.keys_mut().due(now)).await?),
            _ => None,
        };
        let (hard, refused) = if reconciled && snapshot_done {
            let (deletes, verdict, keys) = self.reconciliation(tally.room(), tracked.as_mut().map(Tracked::keys_mut)).await?;
            tally.delete_samples.extend(keys);
            (Some(deletes), verdict)
        } else {
            (None, None)
        };
        let update_samples = tally.update_samples(self).await?;
        let ops = tally.ops;
        let counts = RunCounts {
            rows: tally.rows,
            tracked: self.state.as_ref().map_or(0, |s| s.events_total as u64),
            inserts: ops.reads + ops.creates,
            updates: ops.updates,
            deletes: ops.deletes + hard.unwrap_or(0) + expired.unwrap_or(0),
        };
        Ok(PlanReport {
            insert_samples: tally.insert_samples,
            update_samples,
            delete_samples: tally.delete_samples,
            refused,
            cursor: Some(CursorDeletes { soft: ops.deletes, hard, expired }),
            ..PlanReport::new(model, counts, !snapshot_done)
        })
    }

    /// Read, page by page, what the next poll would read from `start` (with `lookback_ms`: the
    /// window, less the rows already emitted in it), and count each row into `tally` as the poll
    /// would emit it (`poll` gives the snapshot flag and clock; the run start moves page by page).
    async fn read_cursor_pages(
        &self,
        start: CursorPosition,
        lookback_ms: Option<u64>,
        rules: &CursorRules,
        poll: &PollContext,
        keys: Option<&Keys>,
        tally: &mut CursorTally,
    ) -> anyhow::Result<()> {
        let (codec, schema) = (&self.codec, self.codec.row_schema());
        let indexes = cursor_indexes(self.model, schema).expect("cursor mode has a cursor");
        let recent: HashSet<(u64, i64)> = start.recent.into_iter().collect();
        // With a window the poll re-reads it from its start; without, it reads after the cursor.
        let since = lookback_ms.and_then(|ms| window_start(start.cursor.as_deref(), ms));
        let mut after = if lookback_ms.is_some() { None } else { start.cursor.clone() };
        let mut run_start = start.cursor.as_ref().map(|c| c[0].clone());
        let batch = self.model.batch_rows.max(1);
        let mut key = Vec::with_capacity(64);
        loop {
            let page = match &since {
                Some(since) => self.warehouse.fetch_since(self.model, schema, since, after.as_deref(), batch).await?,
                None => self.warehouse.fetch_after(self.model, schema, after.as_deref(), batch).await?,
            };
            let full = page.len() == batch;
            let Some(last) = page.last() else { return Ok(()) };
            after = Some(cursor_of(&indexes, last));
            // The poll loops commit page by page: a page's ops are judged from the cursor the
            // previous page left.
            let poll = PollContext { run_start: run_start.clone(), ..poll.clone() };
            let mut page_end = run_start.clone();
            for row in page {
                let value = &row[indexes[0]];
                key.clear();
                codec.encode_key(&row, &mut key)?;
                let hash = key_hash(&key);
                if lookback_ms.is_some() {
                    let row_micros = micros(value).unwrap_or(i64::MIN);
                    if recent.contains(&(hash, row_micros)) {
                        continue; // emitted by an earlier poll of the window
                    }
                    // A late row (behind the cursor) does not move it.
                    if page_end.as_ref().and_then(micros).is_none_or(|end| row_micros >= end) {
                        page_end = Some(value.clone());
                    }
                } else {
                    page_end = Some(value.clone());
                }
                tally.add(rules, &poll, keys, hash, row);
            }
            run_start = page_end;
            if !full {
                return Ok(());
            }
        }
    }

    /// The hard deletes a reconciliation would find now against `keys` (the change topic's
    /// keys, loaded here when `None`): their number, the gate verdict on them and up to `room`
    /// sample keys.
    async fn reconciliation(&self, room: usize, keys: Option<&mut Keys>) -> anyhow::Result<(u64, Option<String>, Vec<serde_json::Value>)> {
        let found = match keys {
            Some(keys) => find_deletes(self.warehouse, self.model, &self.codec, keys).await?,
            None => {
                let mut tracked = Tracked::load(&self.config.kafka, &self.change_topic(), false).await?;
                find_deletes(self.warehouse, self.model, &self.codec, tracked.keys_mut()).await?
            }
        };
        let refused = check_volume(self.name(), &self.model.gates, found.counts(), false, false).err().map(|e| e.to_string());
        let previous = previous_records(&self.config.kafka, &self.change_topic(), found.deletes.iter().take(room).copied().collect()).await?;
        let samples = self.stored_keys(&previous, found.deletes.iter().take(room))?;
        Ok((found.deletes.len() as u64, refused, samples))
    }

    /// The model's change topic.
    fn change_topic(&self) -> String {
        naming::change_topic(&self.config.kafka.topic_prefix, self.name())
    }
}

/// What a cursor plan collects while it reads pages: counts by op and samples.
struct CursorTally {
    /// Rows read (less those a window already emitted).
    rows: u64,
    ops: OpCounts,
    insert_samples: Vec<serde_json::Value>,
    /// Key, new image and, with the tracked state, the location of the previous image.
    updates: Vec<(serde_json::Value, sluice_core::Row, Option<u64>)>,
    delete_samples: Vec<serde_json::Value>,
    /// Most samples per kind.
    samples: usize,
    schema: std::sync::Arc<sluice_core::RowSchema>,
    hash_buf: Vec<u8>,
}

impl CursorTally {
    fn new(samples: usize, schema: &std::sync::Arc<sluice_core::RowSchema>) -> CursorTally {
        CursorTally {
            rows: 0,
            ops: OpCounts::default(),
            insert_samples: Vec::new(),
            updates: Vec::new(),
            delete_samples: Vec::new(),
            samples,
            schema: std::sync::Arc::clone(schema),
            hash_buf: Vec::new(),
        }
    }

    /// Count `row` (key hash `hash`) as the poll would emit it, by `rules` and `keys` (the
    /// tracked state, when kept): the same decision as `cursor::page`.
    fn add(&mut self, rules: &CursorRules, poll: &PollContext, keys: Option<&Keys>, hash: u64, row: sluice_core::Row) {
        let schema = &self.schema;
        self.rows += 1;
        let entry = keys.map(|keys| keys.get(hash));
        let known = match entry {
            None => Known::Untracked,
            Some(Some(_)) => Known::Live,
            Some(None) => Known::Absent,
        };
        let Some(op) = rules.op(poll, &row, known) else { return };
        let entry = entry.flatten();
        if op == Op::Update && entry.is_some_and(|e| e.row_hash == row_hash(&row, &mut self.hash_buf)) {
            return; // no change
        }
        self.ops.add(op);
        match op {
            Op::Read | Op::Create if self.insert_samples.len() < self.samples => self.insert_samples.push(key_json(schema, &row)),
            Op::Update if self.updates.len() < self.samples => self.updates.push((key_json(schema, &row), row, entry.map(|e| e.loc()))),
            Op::Delete if self.delete_samples.len() < self.samples => self.delete_samples.push(key_json(schema, &row)),
            _ => {}
        }
    }

    /// Room left for delete samples.
    fn room(&self) -> usize {
        self.samples.saturating_sub(self.delete_samples.len())
    }

    /// Count the keys the expiry sweep would delete (`due`, their locations), with samples.
    async fn deletes_by_sweep(&mut self, planner: &Planner<'_>, due: Vec<u64>) -> anyhow::Result<u64> {
        let room = self.room();
        let previous = previous_records(&planner.config.kafka, &planner.change_topic(), due.iter().take(room).copied().collect()).await?;
        self.delete_samples.extend(planner.stored_keys(&previous, due.iter().take(room))?);
        Ok(due.len() as u64)
    }

    /// The update samples with their changed columns (previous images read back; none without
    /// the tracked state).
    async fn update_samples(&self, planner: &Planner<'_>) -> anyhow::Result<Vec<(serde_json::Value, Vec<String>)>> {
        let codec = &planner.codec;
        let locs: Vec<u64> = self.updates.iter().filter_map(|(_, _, loc)| *loc).collect();
        let previous = previous_records(&planner.config.kafka, &planner.change_topic(), locs).await?;
        let decoder = decoder_for(codec);
        Ok(self
            .updates
            .iter()
            .map(|(key, row, loc)| {
                let before = loc.and_then(|loc| image_of(&decoder, codec, previous.get(&loc)));
                (key.clone(), before.map(|b| changed_columns(codec.row_schema(), &b, row)).unwrap_or_default())
            })
            .collect())
    }
}
