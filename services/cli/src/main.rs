//! `sluice`: the operator's command line.
//!
//! - `sluice check --config FILE`: validate a config file (exit 2 with file:line and the fix).
//! - `sluice demo-receiver --listen ADDR`: a webhook receiver that prints every record it gets,
//!   one line each; used by the quickstart and docker-compose to show changes arriving.
//! - `sluice plan MODEL --config FILE`: dry run of the next run of a `diff` or `cursor` model —
//!   counts of inserts, updates and deletes (cursor: soft deletes and, with reconciliation, hard
//!   deletes) with sample keys, and whether a data-quality gate would refuse it. Emits nothing
//!   and does not disturb a running poller (exit 3 when the run would be refused).
//! - `sluice schema export MODEL --config FILE [--out PATH]`: write the model's row schema (its
//!   data contract) to `schemas/models/MODEL.avsc`; point `schema_contract` at it.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Operate sluice: validate configs, run the demo receiver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file without connecting to anything.
    Check {
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Show what the next run of a `diff` or `cursor` model would emit, with samples; emit nothing.
    Plan {
        /// The model's name in the config.
        model: String,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
        /// How many sample keys to print per kind of change.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// Schema contracts of models.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Print records POSTed to /hook (the webhook destination's JSON batches).
    DemoReceiver {
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Write the model's current row schema (Avro) as its contract.
    Export {
        /// The model's name in the config.
        model: String,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
        /// Where to write it; default `schemas/models/<model>.avsc`.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Check { config } => match sluice_core::config::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} models, {} destinations, {} syncs)",
                    config.display(),
                    c.models.len(),
                    c.destinations.len(),
                    c.syncs.len()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Plan { model, config, samples } => {
            let config = match sluice_core::config::Config::load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            match sluice_poller::plan::plan(&config, &model, samples).await {
                Ok(report) => {
                    println!("{report}");
                    if report.refused.is_some() {
                        std::process::ExitCode::from(3)
                    } else {
                        std::process::ExitCode::SUCCESS
                    }
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Schema { command: SchemaCommand::Export { model, config, out } } => {
            let config = match sluice_core::config::Config::load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("schemas/models/{model}.avsc")));
            match sluice_poller::contract::export_model(&config, &model, &out).await {
                Ok(()) => {
                    println!("wrote {} (set schema_contract = \"{}\" on model {model})", out.display(), out.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::DemoReceiver { listen } => match demo_receiver(listen).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: demo receiver: {error}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

async fn demo_receiver(listen: SocketAddr) -> std::io::Result<()> {
    async fn hook(Json(body): Json<serde_json::Value>) -> &'static str {
        for record in body["records"].as_array().into_iter().flatten() {
            println!(
                "received {:<6} {:<2} {} key={} fields={}",
                record["action"].as_str().unwrap_or("?"),
                record["op"].as_str().unwrap_or("?"),
                record["model"].as_str().unwrap_or("?"),
                record["key"],
                record["fields"]
            );
        }
        "ok"
    }
    let app = Router::new().route("/hook", post(hook)).route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("demo receiver listening on http://{}/hook", listener.local_addr()?);
    axum::serve(listener, app).await
}
