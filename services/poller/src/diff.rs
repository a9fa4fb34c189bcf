//! `diff` mode: each run reads the whole model and compares it, by primary key and xxh3 row
//! hash, with the last emitted state (see [`crate::tracked`]): new keys are inserts (`r` during
//! the first snapshot, `c` after), changed hashes updates (`u`, with the `before` image read back
//! from the change topic and the list of changed columns), vanished keys deletes (`d` with the
//! `before` image, then a tombstone so compaction can drop the key).
//!
//! Exactly once: a run's events and the model's state record are committed in Kafka
//! transactions of at most `batch_rows` events ([`crate::changes::emit`]), and the state the
//! next run compares with is the committed change topic itself. A crash between two
//! transactions of a run leaves a committed prefix; the next run (after fencing and catching up)
//! finds those rows already emitted and emits only the rest. Nothing is emitted twice, nothing
//! is skipped.
//!
//! Before anything is emitted, the data-quality gates judge the run: NULL or duplicate keys,
//! row-count bounds, the change-volume guard (`--confirm-large-change` lets one run through).
//!
//! A model with `expire` counts a row expired at the start of the run as absent: it is never
//! inserted, and a key whose row expired is deleted by the run like any vanished key.
//!
//! The first snapshot is not a diff: it is read in primary-key chunks, resumable (the
//! `snapshot` mode; the model loop runs it before this mode's first run). Not guaranteed: a row
//! that changes and changes back between two runs is not seen (a snapshot diff observes states,
//! not transactions). A run buffers the changed rows in memory until the gates passed.

use std::sync::Arc;
use std::time::Instant;

use sluice_avro::ModelCodec;
use sluice_core::config::ModelConfig;
use sluice_warehouse::Warehouse;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::changes::{emit, DiffPlan, Unchanged};
use crate::changes::scan_keys;
use crate::clock::now_ms;
use crate::context::{ModelContext, ModelOptions};
use crate::error::ModelError;
use crate::expiry::{is_expired, Expiry};
use crate::gates::{Confirmation, GateError, MAX_SAMPLES};
use crate::keys::{key_json, row_hash};
use crate::tracked::{KeyMap, Tracked};

fn samples(keys: &[serde_json::Value]) -> String {
    keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

/// Scan the model and compare it with `tracked`. Fails with a [`GateError`] (and leaves
/// `tracked` unchanged) when a key is NULL or duplicated. Rows expired now (`expire`) are
/// absent.
pub async fn compute<W: Warehouse>(
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    tracked: &mut Tracked,
) -> Result<DiffPlan, ModelError> {
    compare(warehouse, model, codec, tracked, Unchanged::Skip).await
}

/// [`compute`], keeping or skipping the unchanged rows as `unchanged` says.
pub async fn compare<W: Warehouse>(
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    tracked: &mut Tracked,
    unchanged: Unchanged,
) -> Result<DiffPlan, ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = Arc::clone(codec.row_schema());
    let tracked_before = tracked.len() as u64;
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut same = Vec::new();
    let mut new_keys: KeyMap<()> = KeyMap::default();
    let (mut null_keys, mut null_samples) = (0u64, Vec::new());
    let (mut duplicates, mut duplicate_samples) = (0u64, Vec::new());
    let mut hash_buf = Vec::with_capacity(256);
    let (expiry, now) = (Expiry::of(model, &schema)?, now_ms());
    let mut expired = 0u64;
    let tracked = tracked.keys_mut();
    tracked.clear_marks();
    let scanned = scan_keys(warehouse, model, codec, |row, hash| {
        let Some(hash) = hash else {
            null_keys += 1;
            if null_samples.len() < MAX_SAMPLES {
                null_samples.push(key_json(&schema, &row));
            }
            return;
        };
        if is_expired(expiry.as_ref(), &row, now) {
            expired += 1; // absent: not seen, so a live key is deleted
            return;
        }
        let duplicate = match tracked.see(hash) {
            Some((_, true)) => true,
            Some((entry, false)) => {
                if entry.row_hash != row_hash(&row, &mut hash_buf) {
                    updates.push((row.clone(), entry.loc()));
                } else if unchanged == Unchanged::Keep {
                    same.push(row.clone());
                }
                false
            }
            None => {
                let duplicate = new_keys.insert(hash, ()).is_some();
                if !duplicate {
                    inserts.push(row.clone());
                }
                duplicate
            }
        };
        if duplicate {
            duplicates += 1;
            if duplicate_samples.len() < MAX_SAMPLES {
                duplicate_samples.push(key_json(&schema, &row));
            }
        }
    })
    .await;
    let rows = match scanned {
        Ok(rows) => rows - expired,
        Err(error) => {
            tracked.clear_marks();
            return Err(error.into());
        }
    };
    let deletes = tracked.take_unseen();
    if null_keys > 0 {
        let columns = schema.key_columns().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(GateError::NullKey { model: name.to_string(), count: null_keys, columns, samples: samples(&null_samples) }.into());
    }
    if duplicates > 0 {
        return Err(GateError::DuplicateKey { model: name.to_string(), count: duplicates, samples: samples(&duplicate_samples) }.into());
    }
    Ok(DiffPlan { rows, tracked: tracked_before, inserts, updates, unchanged: same, deletes })
}

/// Run the model in `diff` mode (its first snapshot done) until shutdown or a fatal error.
pub async fn poll<W: Warehouse>(ctx: &mut ModelContext<'_, W>, options: &ModelOptions, shutdown: &CancellationToken) -> Result<(), ModelError> {
    let name = ctx.name();
    let started = Instant::now();
    // An Option because the state moves into a blocking task and back on every catch-up; an
    // error ends this incarnation anyway (the caller rebuilds everything from Kafka).
    let mut slot = Some(Tracked::load(&ctx.config.kafka, &ctx.change_topic(), false).await?);
    tracing::info!(model = %name, tracked_rows = slot.as_ref().map_or(0, Tracked::len), elapsed_ms = started.elapsed().as_millis() as u64, "diff state rebuilt from the change topic");
    let mut confirmation = Confirmation::new(options.confirm_large_change);
    loop {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.diff_run", model = %name, run_id = %run_id);
        async {
            let mut tracked = slot.take().expect("state is back after each run").caught_up().await?;
            let run_started = Instant::now();
            let plan = compute(ctx.warehouse, ctx.model, &ctx.codec, &mut tracked).await;
            let tracked_rows = tracked.len();
            slot = Some(tracked);
            let plan = plan?;
            let counts = plan.counts();
            let first_snapshot = !ctx.state().snapshot_done;
            confirmation.check_volume(name, &ctx.model.gates, counts, first_snapshot, "run")?;
            crate::telemetry::run_changes(name, counts, first_snapshot);
            let events = emit(ctx, plan, &run_id).await?;
            metrics::gauge!("sluice_poller_diff_tracked_rows", "model" => name.to_string()).set(tracked_rows as f64);
            crate::telemetry::run_committed(name, "diff", "diff run committed", &run_id, counts, events, run_started);
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
        ctx.run_succeeded();
        if !options.schedule.wait(shutdown).await {
            return Ok(());
        }
    }
}
