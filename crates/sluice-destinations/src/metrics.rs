//! Every destination's metrics, under one set of names.
//!
//! Names follow `sluice_destination_<name>_<unit>`; every series carries `destination` (the
//! configured name, so two destinations of one kind are told apart) and `kind`. Other labels are
//! bounded enums, never values from records or vendor text:
//!
//! | metric | type | labels | counts |
//! |---|---|---|---|
//! | `sluice_destination_records_refused_total` | counter | `reason` = `no_identifier`, `on_delete_reject`, `vendor`, `vendor_retryable` | records not applied: refused before sending, or by the vendor inside a request that went through |
//! | `sluice_destination_identifiers_missing_total` | counter | `field` (the mapped field's configured name) | identifier values that normalised to nothing (a blank email, a phone of "n/a"): treated as missing, never sent; counted by the sink's transforms and by each kind's own normalisation |
//! | `sluice_destination_records_unchanged_total` | counter | `reason` = `not_found`, `exists`, `already_deleted` | records confirmed without changing anything, after asking the vendor: an `update` of a record it does not hold, a `create` of one it holds, a delete of one already gone |
//! | `sluice_destination_throttled_total` | counter | `signal`: the vendor's throttle signal, from a fixed set per kind (each kind's module doc lists its own) | throttle answers |
//! | `sluice_destination_deletes_skipped_total` | counter | `reason` = `on_delete_skip`, `suppression_mode`, `nothing_to_unsubscribe` | deletes confirmed without a request |
//! | `sluice_destination_vendor_rows_received_total` | counter | `operation` = `add`, `remove` | rows the vendor reports received (Meta `num_received`) |
//! | `sluice_destination_vendor_rows_invalid_total` | counter | `operation` | rows the vendor reports invalid (Meta `num_invalid_entries`) |
//! | `sluice_destination_vendor_rows_untraceable_total` | counter | `operation` | invalid rows that name no record we sent, so none could be dead-lettered (also logged) |
//! | `sluice_destination_commands_total` | counter | | commands sent (Redis pipelines) |
//! | `sluice_destination_identifier_changes_kept_total` | counter | | identifier changes the vendor cannot follow: the old record stays (Salesforce) |
//! | `sluice_destination_rate_limit_remaining` | gauge | | the vendor's remaining allowance (Braze `X-RateLimit-Remaining`) |
//! | `sluice_destination_api_usage_ratio` | gauge | | share of the vendor's allocation used (Salesforce `Sforce-Limit-Info`) |
//! | `sluice_destination_audience_size` | gauge | | members of the audience after the last request, where the vendor says (Redis set mode: `SCARD`) |
//!
//! Requests, retries, latency and dead letters are the sink's (`sluice_sink_*`): a retried
//! request is counted there, never as refused here.

use crate::plan::{RefusalReason, SkipReason, Unchanged};

/// The metrics of one configured destination.
#[derive(Debug, Clone)]
pub struct Metrics {
    destination: String,
    kind: &'static str,
}

impl Metrics {
    /// The metrics of the destination named `destination` in the config, of kind `kind`.
    pub fn new(destination: impl Into<String>, kind: &'static str) -> Metrics {
        Metrics { destination: destination.into(), kind }
    }

    /// Records not applied, by why.
    pub fn records_refused(&self, reason: RefusalReason, count: usize) {
        if count > 0 {
            metrics::counter!("sluice_destination_records_refused_total", "destination" => self.destination.clone(), "kind" => self.kind, "reason" => reason.label())
                .increment(count as u64);
        }
    }

    /// A throttle answer, by the vendor's signal.
    pub fn throttled(&self, signal: &'static str) {
        metrics::counter!("sluice_destination_throttled_total", "destination" => self.destination.clone(), "kind" => self.kind, "signal" => signal).increment(1);
    }

    /// A delete confirmed without a request, by why.
    pub fn delete_skipped(&self, reason: SkipReason) {
        metrics::counter!("sluice_destination_deletes_skipped_total", "destination" => self.destination.clone(), "kind" => self.kind, "reason" => reason.label())
            .increment(1);
    }

    /// An identifier value that normalised to nothing, in mapped field `field` (a configured
    /// name, so a bounded label; never the value).
    pub fn identifier_missing(&self, field: &str) {
        metrics::counter!("sluice_destination_identifiers_missing_total", "destination" => self.destination.clone(), "kind" => self.kind, "field" => field.to_string())
            .increment(1);
    }

    /// Records confirmed without a change at the vendor, by why.
    pub fn records_unchanged(&self, reason: Unchanged, count: usize) {
        if count > 0 {
            metrics::counter!("sluice_destination_records_unchanged_total", "destination" => self.destination.clone(), "kind" => self.kind, "reason" => reason.label())
                .increment(count as u64);
        }
    }

    /// Rows the vendor reports it received and found invalid, for one operation.
    pub fn vendor_rows(&self, operation: &'static str, received: u64, invalid: u64) {
        metrics::counter!("sluice_destination_vendor_rows_received_total", "destination" => self.destination.clone(), "kind" => self.kind, "operation" => operation)
            .increment(received);
        metrics::counter!("sluice_destination_vendor_rows_invalid_total", "destination" => self.destination.clone(), "kind" => self.kind, "operation" => operation)
            .increment(invalid);
    }

    /// Invalid rows the vendor reported without naming them: counted and logged (as a count),
    /// since no record can be dead-lettered for them.
    pub fn vendor_rows_untraceable(&self, operation: &'static str, rows: u64) {
        if rows == 0 {
            return;
        }
        metrics::counter!("sluice_destination_vendor_rows_untraceable_total", "destination" => self.destination.clone(), "kind" => self.kind, "operation" => operation)
            .increment(rows);
        tracing::warn!(destination = %self.destination, kind = self.kind, operation, invalid_entries = rows, "vendor counted rows invalid that cannot be traced to records");
    }

    /// Commands sent in one round trip.
    pub fn commands(&self, count: usize) {
        metrics::counter!("sluice_destination_commands_total", "destination" => self.destination.clone(), "kind" => self.kind).increment(count as u64);
    }

    /// An identifier change the vendor cannot follow: the record under the old value stays.
    pub fn identifier_change_kept(&self) {
        metrics::counter!("sluice_destination_identifier_changes_kept_total", "destination" => self.destination.clone(), "kind" => self.kind).increment(1);
    }

    /// The vendor's remaining allowance, as it reported it.
    pub fn rate_limit_remaining(&self, remaining: f64) {
        metrics::gauge!("sluice_destination_rate_limit_remaining", "destination" => self.destination.clone(), "kind" => self.kind).set(remaining);
    }

    /// The audience's size after a request, as the vendor reported it.
    pub fn audience_size(&self, members: f64) {
        metrics::gauge!("sluice_destination_audience_size", "destination" => self.destination.clone(), "kind" => self.kind).set(members);
    }

    /// The share of the vendor's allocation used, as it reported it.
    pub fn api_usage_ratio(&self, ratio: f64) {
        metrics::gauge!("sluice_destination_api_usage_ratio", "destination" => self.destination.clone(), "kind" => self.kind).set(ratio);
    }
}
