//! `sluice-poller`: reads config and environment, sets up telemetry and the ops endpoints, and
//! runs the poller until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sluice_telemetry::ops;

/// Emit row-level changes of warehouse models to Kafka.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Config file.
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
    /// Poll only these models (repeatable); default: all models in the config.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SLUICE_OPS_LISTEN", default_value = "127.0.0.1:9464")]
    ops_listen: SocketAddr,
    /// Let the next run of this model pass the change-volume guard (`gates.max_change_pct`)
    /// once, after an operator inspected it with `sluice plan` (repeatable).
    #[arg(long = "confirm-large-change")]
    confirm_large_change: Vec<String>,
    /// Address of `POST /run/<model>` (start a run now, e.g. from a "dbt job finished" hook).
    #[arg(long, env = "SLUICE_TRIGGER_LISTEN", default_value = "127.0.0.1:9466")]
    trigger_listen: SocketAddr,
    /// JSON logs (for log shippers).
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _telemetry = sluice_telemetry::setup_telemetry("sluice-poller", args.log_json, sluice_telemetry::Spans::Always);
    // The one validation, for the poller's scope: Kafka's and the warehouse's secrets only.
    let config = match sluice_destinations::load_for_service(&args.config, &sluice_core::config::Scope::Poller) {
        Ok(config) => config,
        Err(status) => return status,
    };
    let Some((shutdown, health)) = ops::start(args.ops_listen).await else { return std::process::ExitCode::FAILURE };
    let only = (!args.models.is_empty()).then_some(args.models);
    match sluice_poller::run_with(
        config,
        only,
        sluice_poller::RunOptions { confirm_large_change: args.confirm_large_change, trigger_listen: Some(args.trigger_listen) },
        health,
        shutdown,
    ).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "poller failed");
            std::process::ExitCode::FAILURE
        }
    }
}
