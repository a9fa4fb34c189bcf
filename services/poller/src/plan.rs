//! `sluice plan <model>`: a dry run of the next `diff` run — what it would emit, with samples —
//! that emits nothing, takes no lock and does not fence the running poller (it only reads the
//! warehouse and, `read_committed`, the change topic).

use std::time::Duration;

use anyhow::Context as _;
use sluice_avro::{decoder_for, KeyDecoder, ModelCodec};
use sluice_core::config::{Config, Detection};
use sluice_core::naming;
use sluice_warehouse::AnyWarehouse;
use sluice_warehouse::Warehouse;

use crate::diff::{compute, key_json, previous_records};
use crate::emit::changed_columns;
use crate::gates::{check_volume, RunCounts};
use crate::model_loop::load_state;
use crate::tracked::Tracked;

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
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        writeln!(f, "model {}: {} rows read, {} rows emitted so far", self.model, c.rows, c.tracked)?;
        let insert_label = if self.first_snapshot { "snapshot reads (r)" } else { "inserts (c)" };
        writeln!(f, "  {insert_label}: {}", c.inserts)?;
        for key in &self.insert_samples {
            writeln!(f, "    {key}")?;
        }
        writeln!(f, "  updates (u): {}", c.updates)?;
        for (key, changed) in &self.update_samples {
            writeln!(f, "    {key} changed: {}", changed.join(", "))?;
        }
        writeln!(f, "  deletes (d): {}", c.deletes)?;
        for key in &self.delete_samples {
            writeln!(f, "    {key}")?;
        }
        match &self.refused {
            Some(reason) => write!(f, "the run would be REFUSED: {reason}"),
            None => write!(f, "the run would emit {} events; nothing was emitted by this plan", c.inserts + c.updates + c.deletes),
        }
    }
}

/// Compute the next run of `model` (a `diff` model) without emitting anything.
pub async fn plan(config: &Config, model: &str, samples: usize) -> anyhow::Result<PlanReport> {
    let model_config = config.model(model).with_context(|| format!("no model named {model:?} in the config"))?;
    anyhow::ensure!(
        matches!(model_config.detection, Detection::Diff {}),
        "sluice plan supports diff models; {model:?} is in {} mode",
        model_config.detection.mode()
    );
    let warehouse = AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?;
    let codec = ModelCodec::new(model, warehouse.describe(model_config).await?)?;
    let state = load_state(config, model).await?;
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
    let plan = match compute(&warehouse, model_config, &codec, &mut tracked).await {
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
            })
        }
        Err(other) => return Err(other.into()),
    };
    let counts = plan.counts();
    let refused = check_volume(model, &model_config.gates, counts, first_snapshot, false).err().map(|e| e.to_string());
    let schema = codec.row_schema();
    let insert_samples = plan.inserts.iter().take(samples).map(|row| key_json(schema, row)).collect();
    let wanted: Vec<u64> = plan.updates.iter().take(samples).map(|(_, loc)| *loc).chain(plan.deletes.iter().take(samples).copied()).collect();
    let previous = previous_records(config, &topic, wanted).await?;
    let decoder = decoder_for(&codec);
    let before_of = |loc: &u64| previous.get(loc).and_then(|s| s.payload.as_deref()).and_then(|p| decoder.decode(p).ok()).and_then(|d| d.event.after);
    let update_samples = plan
        .updates
        .iter()
        .take(samples)
        .map(|(row, loc)| (key_json(schema, row), before_of(loc).map(|b| changed_columns(schema, &b, row)).unwrap_or_default()))
        .collect();
    let key_decoder = KeyDecoder::new(&codec.schemas()[0].json)?;
    let delete_samples = plan
        .deletes
        .iter()
        .take(samples)
        .filter_map(|loc| previous.get(loc))
        .filter_map(|stored| key_decoder.decode(&stored.key).ok())
        .map(|fields| serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, v.to_json())).collect()))
        .collect();
    Ok(PlanReport { model: model.to_string(), counts, first_snapshot, insert_samples, update_samples, delete_samples, refused })
}
