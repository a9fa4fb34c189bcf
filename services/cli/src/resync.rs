//! `sluice resync MODEL [--execute] [--json]`: a fresh snapshot of one model on its change
//! topic (`sluice_poller::resync` has the guarantees and the argument): an `r` event for every
//! current row, a `d` event and a tombstone for every key the topic holds that the warehouse no
//! longer has, committed through the poller's transactional path.
//!
//! Guarantees: without `--execute` nothing is written and no poller is fenced (the plan: rows in
//! the warehouse, keys on the topic, deletes to emit with samples). With `--execute` the model's
//! own poller is fenced: it starts the model over from the resync's committed state, or stops
//! it until restarted (docs/operations.md "Resync"); the pollers of other models are untouched.
//!
//! Exit codes (`crate::failure`): 0 done (or plan shown), 1 error (warehouse, Kafka, fenced by a
//! poller restarted meanwhile), 2 bad config or unknown model, 4 refused (the model's first
//! snapshot is not complete, a NULL or duplicate key, a schema-contract drift).

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use sluice_poller::resync::{self, ResyncError, ResyncReport};
use sluice_poller::ModelError;

use crate::failure::Failure;

/// How many keys to delete the plan names.
const SAMPLES: usize = 10;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub model: String,
    pub execute: bool,
    pub json: bool,
}

/// Run `sluice resync` and return its exit code.
pub(crate) async fn run(config: PathBuf, request: Request) -> ExitCode {
    let config = match crate::load_for_warehouse(&config) {
        Ok(config) => config,
        Err(error) => return Failure::Config(error.to_string()).exit(request.json),
    };
    let result = match request.execute {
        true => resync::execute(&config, &request.model, SAMPLES).await,
        false => resync::plan(&config, &request.model, SAMPLES).await,
    };
    match result {
        Ok(report) => {
            print(&report, request.json);
            ExitCode::SUCCESS
        }
        Err(error) => failure(error).exit(request.json),
    }
}

/// The exit code class of a resync error.
fn failure(error: ResyncError) -> Failure {
    let message = error.to_string();
    match error {
        ResyncError::UnknownModel { .. } => Failure::Config(message),
        ResyncError::FirstSnapshotPending { .. } => Failure::Refused(message),
        ResyncError::Model(ModelError::Gate(_) | ModelError::Contract(_)) => Failure::Refused(message),
        ResyncError::Model(_) => Failure::Error(message),
    }
}

/// Print the plan or what was committed.
fn print(report: &ResyncReport, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "model": report.model,
                "executed": report.run_id.is_some(),
                "rows": report.rows,
                "topic_keys": report.topic_keys,
                "deletes": report.deletes,
                "delete_samples": report.delete_samples,
                "run_id": report.run_id,
                "events": report.events,
            })
        );
        return;
    }
    println!("model {}: {} rows in the warehouse, {} keys on the change topic", report.model, report.rows, report.topic_keys);
    println!("  snapshot reads (r): {}", report.rows);
    println!("  deletes (d, each with a tombstone): {}", report.deletes);
    for key in &report.delete_samples {
        println!("    {key}");
    }
    match &report.run_id {
        Some(run_id) => println!("committed {} events (run {run_id}); a poller of this model that was running was fenced: check it resumed", report.events),
        None => println!("plan only, nothing emitted: run with --execute to emit them (fences the model's running poller)"),
    }
}
