//! `sluice-sink --destination NAME`: one process per destination. Reads config and environment,
//! sets up telemetry and the ops endpoints, and delivers until SIGTERM (drains and commits) or a
//! fatal destination error (stays up, not ready, until stopped, so an orchestrator alerts rather
//! than restart-looping against a vendor that refuses our credentials).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sluice_telemetry::ops;

/// Deliver change topics to one destination.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Config file.
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
    /// The destination this process serves (a `[[destinations]]` name).
    #[arg(long, env = "SLUICE_DESTINATION")]
    destination: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SLUICE_OPS_LISTEN", default_value = "127.0.0.1:9465")]
    ops_listen: SocketAddr,
    /// JSON logs (for log shippers).
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    /// This replica's stable name in the destination's consumer group (Kafka static membership,
    /// `group.instance.id`): restarted under the same name, it gets its partitions back at once
    /// instead of after the session timeout. Unique per replica, stable across its restarts
    /// (a StatefulSet pod name, a systemd instance name). Unset: a dynamic member.
    #[arg(long, env = "SLUICE_INSTANCE_ID", value_parser = instance_id)]
    instance_id: Option<String>,
}

/// A `group.instance.id` Kafka accepts: 1 to 249 of `[A-Za-z0-9._-]`.
fn instance_id(value: &str) -> Result<String, String> {
    let valid = !value.is_empty() && value.len() <= 249 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(value.to_string())
    } else {
        Err("1 to 249 characters of A-Z, a-z, 0-9, '.', '_' and '-' (e.g. the pod name)".to_string())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _telemetry = sluice_telemetry::setup_telemetry(&format!("sluice-sink-{}", args.destination), args.log_json, sluice_telemetry::Spans::WhenExported);
    // The one validation, for this sink's scope: its destination's secrets and Kafka's only.
    let scope = sluice_core::config::Scope::Sink(args.destination.clone());
    let config = match sluice_destinations::load_for_service(&args.config, &scope) {
        Ok(config) => config,
        Err(status) => return status,
    };
    let Some((shutdown, health)) = ops::start(args.ops_listen).await else { return std::process::ExitCode::FAILURE };
    match sluice_sink::run_as(config, &args.destination, args.instance_id.as_deref(), health, shutdown.clone()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => {
            // Already logged and marked not ready by `run`; stay observable until stopped.
            shutdown.cancelled().await;
            std::process::ExitCode::FAILURE
        }
    }
}
