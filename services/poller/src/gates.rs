//! Data-quality gates: checks a run of the snapshot modes (`diff`, `warehouse_diff`, the first
//! snapshot in key chunks) and a cursor model's reconciliation must pass before they emit
//! anything. No I/O: the callers count, these functions judge (and log a refusal or an operator's
//! bypass).
//!
//! A refused run emits nothing, the model stops with a [`GateError`] naming the model, what was
//! found (with up to five sample keys — keys only, never other column values) and the fix; the
//! refusal is counted in `sluice_poller_gate_refusals_total{model,gate}` (duplicate keys also in
//! `sluice_poller_duplicate_keys_total{model}`, by how many) and logged once.
//! Why stop rather than skip: a broken upstream job (a truncated table, a fan-out join) would
//! otherwise turn into mass deletes or updates in every destination.

use sluice_avro::ModelCodec;
use sluice_core::config::Gates;
use sluice_warehouse::KeyCheck;

use crate::keys::key_tuple_json;

/// Most sample keys an error carries.
pub const MAX_SAMPLES: usize = 5;

/// Why a run was refused. Every variant is fatal for the model until an operator acts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    #[error("model {model}: {count} row(s) have NULL in a primary-key column ({columns}); nothing was emitted. Sample keys: {samples}. Fix: make the key columns NOT NULL in the model (filter or coalesce them)")]
    NullKey { model: String, count: u64, columns: String, samples: String },
    #[error("model {model}: {count} duplicate primary key(s); nothing was emitted. Sample keys: {samples}. Fix: make the model's primary_key unique (deduplicate the query or add key columns)")]
    DuplicateKey { model: String, count: u64, samples: String },
    #[error("model {model}: the run read {rows} rows, fewer than min_rows = {min}; nothing was emitted. Fix: check the upstream job that builds the model, or lower gates.min_rows")]
    TooFewRows { model: String, rows: u64, min: u64 },
    #[error("model {model}: the run read {rows} rows, more than max_rows = {max}; nothing was emitted. Fix: check the model's query for a fan-out, or raise gates.max_rows")]
    TooManyRows { model: String, rows: u64, max: u64 },
    #[error("model {model}: {changes} changes ({inserts} inserts, {updates} updates, {deletes} deletes) would touch {pct:.1}% of {tracked} tracked rows, above max_change_pct = {max_pct}; the model is halted and nothing was emitted. Fix: inspect with `sluice plan {model}`, then let this run through with `sluice-poller --confirm-large-change {model}` (one run), or raise gates.max_change_pct")]
    ChangeVolume { model: String, changes: u64, inserts: u64, updates: u64, deletes: u64, tracked: u64, pct: f64, max_pct: f64 },
}

impl GateError {
    /// The refusal without its sample keys (which may be personal values): the gate and its
    /// counts, for a run record.
    pub fn summary(&self) -> String {
        match self {
            GateError::NullKey { count, columns, .. } => format!("gate null_key: {count} row(s) with NULL in {columns}"),
            GateError::DuplicateKey { count, .. } => format!("gate duplicate_key: {count} duplicate primary key(s)"),
            GateError::TooFewRows { rows, min, .. } => format!("gate min_rows: {rows} rows, fewer than {min}"),
            GateError::TooManyRows { rows, max, .. } => format!("gate max_rows: {rows} rows, more than {max}"),
            GateError::ChangeVolume { changes, tracked, pct, max_pct, .. } => {
                format!("gate max_change_pct: {changes} changes, {pct:.1}% of {tracked} tracked rows, above {max_pct}")
            }
        }
    }
}

impl GateError {
    /// Short name of the gate, the `gate` label of the refusal metric.
    pub fn gate(&self) -> &'static str {
        match self {
            GateError::NullKey { .. } => "null_key",
            GateError::DuplicateKey { .. } => "duplicate_key",
            GateError::TooFewRows { .. } => "min_rows",
            GateError::TooManyRows { .. } => "max_rows",
            GateError::ChangeVolume { .. } => "max_change_pct",
        }
    }

    /// Count and log the refusal (one event = one log line + one counter).
    pub fn record(&self, model: &str) {
        metrics::counter!("sluice_poller_gate_refusals_total", "model" => model.to_string(), "gate" => self.gate()).increment(1);
        if let GateError::DuplicateKey { count, .. } = self {
            // The duplicate-key rate: how many keys, not only that a run was refused.
            metrics::counter!("sluice_poller_duplicate_keys_total", "model" => model.to_string()).increment(*count);
        }
        tracing::error!(model = %model, gate = self.gate(), error = %self, "run refused by a data-quality gate");
    }
}

/// What a run found, as the gates see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCounts {
    pub rows: u64,
    pub tracked: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

/// Sample key tuples (in key order, as the warehouse's key checks return them) as JSON objects,
/// personal values masked (a model keyed by email; `sluice_core::privacy`).
pub fn key_samples(codec: &ModelCodec, keys: &[sluice_core::Row]) -> String {
    let samples = keys.iter().map(|key| key_tuple_json(codec.row_schema(), key).to_string()).collect::<Vec<_>>().join(", ");
    sluice_core::privacy::mask_personal(&samples)
}

/// The key gates over a warehouse's [`KeyCheck`]: NULL keys first, then duplicates.
pub fn check_keys(model: &str, codec: &ModelCodec, check: &KeyCheck) -> Result<(), GateError> {
    if check.null_keys > 0 {
        let columns = codec.row_schema().key_columns().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(GateError::NullKey { model: model.to_string(), count: check.null_keys, columns, samples: key_samples(codec, &check.null_samples) });
    }
    if check.duplicate_keys > 0 {
        return Err(GateError::DuplicateKey { model: model.to_string(), count: check.duplicate_keys, samples: key_samples(codec, &check.duplicate_samples) });
    }
    Ok(())
}

/// Row-count and change-volume gates (the key gates are checked while scanning).
/// `first_snapshot` exempts the change-volume guard (everything is new then); `confirmed`
/// lets one over-limit run through after an operator looked at it.
pub fn check_volume(model: &str, gates: &Gates, counts: RunCounts, first_snapshot: bool, confirmed: bool) -> Result<(), GateError> {
    if let Some(min) = gates.min_rows {
        if counts.rows < min {
            return Err(GateError::TooFewRows { model: model.to_string(), rows: counts.rows, min });
        }
    }
    if let Some(max) = gates.max_rows {
        if counts.rows > max {
            return Err(GateError::TooManyRows { model: model.to_string(), rows: counts.rows, max });
        }
    }
    if let Some(max_pct) = gates.max_change_pct {
        let changes = counts.inserts + counts.updates + counts.deletes;
        let pct = if counts.tracked == 0 { 100.0 } else { changes as f64 * 100.0 / counts.tracked as f64 };
        if !first_snapshot && counts.tracked > 0 && pct > max_pct && !confirmed {
            return Err(GateError::ChangeVolume {
                model: model.to_string(),
                changes,
                inserts: counts.inserts,
                updates: counts.updates,
                deletes: counts.deletes,
                tracked: counts.tracked,
                pct,
                max_pct,
            });
        }
    }
    Ok(())
}

/// An operator's confirmation (`--confirm-large-change`): lets one run of a model through the
/// change-volume guard after a refusal. Spent by the first run that passes the gates, whether
/// or not it needed the confirmation, and logged then.
#[derive(Debug, Clone, Copy, Default)]
pub struct Confirmation {
    given: bool,
}

impl Confirmation {
    /// `given`: the operator confirmed this model (`--confirm-large-change <model>`).
    pub fn new(given: bool) -> Confirmation {
        Confirmation { given }
    }

    /// [`check_volume`] with this confirmation. When the run passes, the confirmation is spent
    /// and, if it was given, the bypass is logged for `what` ("run", "reconciliation").
    pub fn check_volume(&mut self, model: &str, gates: &Gates, counts: RunCounts, first_snapshot: bool, what: &str) -> Result<(), GateError> {
        check_volume(model, gates, counts, first_snapshot, self.given)?;
        if std::mem::take(&mut self.given) {
            tracing::warn!(model = %model, "change-volume guard bypassed for this {what} by operator confirmation");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(max_change_pct: Option<f64>, min_rows: Option<u64>, max_rows: Option<u64>) -> Gates {
        Gates { max_change_pct, min_rows, max_rows }
    }

    #[test]
    fn change_volume_guard_refuses_then_confirmation_passes() {
        let counts = RunCounts { rows: 100, tracked: 100, inserts: 0, updates: 10, deletes: 30 };
        let error = check_volume("m", &gates(Some(25.0), None, None), counts, false, false).unwrap_err();
        assert_eq!(error.gate(), "max_change_pct");
        assert!(
            error.to_string().contains("40 changes (0 inserts, 10 updates, 30 deletes) would touch 40.0% of 100 tracked rows"),
            "{error}"
        );
        assert!(check_volume("m", &gates(Some(25.0), None, None), counts, false, true).is_ok());
        assert!(check_volume("m", &gates(Some(25.0), None, None), counts, true, false).is_ok(), "first snapshot is exempt");
        assert!(check_volume("m", &gates(Some(50.0), None, None), counts, false, false).is_ok());
    }

    #[test]
    fn a_confirmation_lets_one_run_through() {
        let counts = RunCounts { rows: 100, tracked: 100, inserts: 0, updates: 0, deletes: 90 };
        let gates = gates(Some(25.0), None, None);
        let mut confirmation = Confirmation::new(true);
        assert!(confirmation.check_volume("m", &gates, counts, false, "run").is_ok());
        assert_eq!(confirmation.check_volume("m", &gates, counts, false, "run").unwrap_err().gate(), "max_change_pct", "spent");
        let mut refused = Confirmation::new(false);
        assert!(refused.check_volume("m", &gates, counts, false, "run").is_err());
        assert!(refused.check_volume("m", &gates, RunCounts { deletes: 1, ..counts }, false, "run").is_ok());
    }

    #[test]
    fn a_confirmation_is_not_spent_by_a_refused_run() {
        let counts = RunCounts { rows: 5, tracked: 100, deletes: 95, ..RunCounts::default() };
        let mut confirmation = Confirmation::new(true);
        let low = confirmation.check_volume("m", &gates(Some(25.0), Some(10), None), counts, false, "run").unwrap_err();
        assert_eq!(low.gate(), "min_rows", "confirmation does not lift the row bounds");
        assert!(confirmation.check_volume("m", &gates(Some(25.0), None, None), counts, false, "run").is_ok(), "still given");
    }

    #[test]
    fn row_bounds() {
        let counts = RunCounts { rows: 10, ..RunCounts::default() };
        let low = check_volume("m", &gates(None, Some(11), None), counts, false, false).unwrap_err();
        assert!(low.to_string().starts_with("model m: the run read 10 rows, fewer than min_rows = 11"), "{low}");
        let high = check_volume("m", &gates(None, None, Some(9)), counts, false, false).unwrap_err();
        assert!(high.to_string().starts_with("model m: the run read 10 rows, more than max_rows = 9"), "{high}");
        assert!(check_volume("m", &gates(None, Some(10), Some(10)), counts, false, false).is_ok());
    }
}
