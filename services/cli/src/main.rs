//! `sluice`: the operator's command line.
//!
//! - `sluice check --config FILE [--service all|poller|sink:NAME]`: the one validation every
//!   service runs at load (`sluice_destinations::validate`), for every service (default) or for
//!   one service's view: its secrets only, its destination only (exit 2 with file:line and the
//!   fix). A config `check` accepts starts every service.
//! - `sluice demo-receiver --listen ADDR`: a webhook receiver that prints every record it gets,
//!   one line each; used by the quickstart and docker-compose to show changes arriving.
//! - `sluice plan MODEL --config FILE`: dry run of the next run of a model in any mode —
//!   counts of inserts, updates and deletes (cursor: soft deletes and, with reconciliation, hard
//!   deletes) with sample keys, and whether a data-quality gate would refuse it. Emits nothing
//!   and does not disturb a running poller (exit 3 when the run would be refused).
//! - `sluice snapshot MODEL --config FILE`: take (or resume) the first snapshot of a `diff`
//!   model in the foreground, in primary-key chunks, with a progress bar; Ctrl-C stops between
//!   chunks and the next start (CLI or service) resumes.
//! - `sluice warehouse exec --config FILE (--sql SQL | --file FILE) [--create]`: run SQL
//!   against the configured warehouse (a DuckDB file has no server to `psql` into); the
//!   quickstart loads and changes its demo warehouse with it.
//! - `sluice schema export MODEL --config FILE [--out PATH]`: write the model's row schema (its
//!   data contract) to `schemas/models/MODEL.avsc`; point `schema_contract` at it. With
//!   `--writer DIR`: write the model's full key and value writer schemas instead (the exact
//!   text published on the schema topic, for consumers in other languages; docs/consumers.md).
//! - `sluice backfill --destination NAME [--model MODEL | --replace] [--rate N] [--json] --config FILE`:
//!   send the current state of every row of the destination's change topics through its side
//!   topic, at most N records/s, while the live sync runs; the sink's order guard keeps every key
//!   moving forwards (exit 0 done, 1 error, 2 config, 130 interrupted; docs/operations.md).
//! - `sluice dlq list|show|redrive|purge --destination NAME [--error-class C] [--since T]
//!   [--until T] [--key JSON] [--json] --config FILE`: the dead letters of one destination;
//!   redrive re-sends them through its side topic, never moving a key backwards, never twice;
//!   purge is recorded in a ledger (exit 0 done, 1 error, 2 config, 3 `show` found nothing;
//!   docs/operations.md).
//! - `sluice replay --destination NAME --to earliest|latest|TIME|TOPIC:PARTITION:OFFSET
//!   [--model MODEL] [--execute [--force [--wait-secs N]]] [--json] --config FILE`: move one
//!   destination's consumer group so its sink re-applies (or skips) changes; shows the plan and
//!   changes nothing without `--execute` (exit 0 done, 1 error, 2 config, 4 live members refused;
//!   docs/operations.md).
//! - `sluice resync MODEL [--execute] [--json] --config FILE`: a fresh snapshot of one model on
//!   its change topic (`r` for every row, `d` and a tombstone for keys the warehouse no longer
//!   has) through the poller's transactional path; shows the plan without `--execute` (exit 0
//!   done, 1 error, 2 config, 4 refused; docs/operations.md).
//! - `sluice inspect --model MODEL --key JSON [--show-values] [--json] --config FILE`: one key's
//!   history on its change topic, where each destination's group stands relative to it, and its
//!   dead letters (exit 0 shown, 1 error, 2 config or bad key, 3 no record of the key;
//!   docs/operations.md).

mod backfill;
mod dlq;
mod failure;
mod inspect;
mod replay;
mod resync;
mod scope;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::routing::{get, post};
use sluice_core::config::{Config, ConfigError, Scope};
use axum::{Json, Router};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Operate sluice: validate configs, plan and snapshot models, replay destinations, run the demo receiver")]
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
        /// Check one service's view: `poller` or `sink:<destination>` (its secrets only);
        /// default `all`.
        #[arg(long, default_value = "all")]
        service: Scope,
    },
    /// Show what the next run of a model would emit, with samples; emit nothing.
    Plan {
        /// The model's name in the config.
        model: String,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
        /// How many sample keys to print per kind of change.
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// Take or resume the first snapshot of a `diff` model, with a progress bar.
    Snapshot {
        /// The model's name in the config.
        model: String,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Run SQL against the configured warehouse.
    Warehouse {
        #[command(subcommand)]
        command: WarehouseCommand,
    },
    /// Schema contracts of models.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Move one destination's consumer group so its sink re-applies (or skips) changes; shows
    /// the plan, and changes nothing without --execute. Exit codes: 0 done or plan shown, 1
    /// error, 2 bad config or arguments, 4 refused because the group has live members.
    Replay {
        /// The destination whose group moves (a `[[destinations]]` name); no other group moves.
        #[arg(long)]
        destination: String,
        /// `earliest`, `latest`, an RFC 3339 time (the first record at or after it, per
        /// partition) or `<topic>:<partition>:<offset>` (that partition only).
        #[arg(long)]
        to: replay::Target,
        /// Only the change topic of this model's sync.
        #[arg(long)]
        model: Option<String>,
        /// Move the group (it must have no live members); without it the plan is shown only.
        #[arg(long)]
        execute: bool,
        /// With --execute: do not refuse when the group has members; wait up to --wait-secs for
        /// them to leave (a killed sink stays a member until its session times out), then move.
        #[arg(long, requires = "execute")]
        force: bool,
        /// How long --force waits for the group to empty.
        #[arg(long, default_value_t = 60, requires = "force")]
        wait_secs: u64,
        /// The plan (and any error) as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Send the current state of every row to one destination through its side topic, at a
    /// bounded rate, while the live sync runs. Exit codes: 0 done, 1 error, 2 bad config or
    /// arguments, 130 interrupted.
    Backfill {
        /// The destination to bring up to date (a `[[destinations]]` name).
        #[arg(long)]
        destination: String,
        /// Only the change topic of this model's sync.
        #[arg(long)]
        model: Option<String>,
        /// Side records per second, at most (leave room for live traffic in the vendor's limit).
        #[arg(long, default_value_t = std::num::NonZeroU32::new(backfill::DEFAULT_RATE).expect("non-zero"))]
        rate: std::num::NonZeroU32,
        /// The summary (and any error) as JSON on stdout, for scripts; no progress bar.
        #[arg(long)]
        json: bool,
        /// Replace all of the destination's members with the current ones in one vendor
        /// operation (kinds that have one, e.g. a Meta audience), so members who left while it
        /// was broken are removed even when their deletes were compacted away.
        #[arg(long, conflicts_with = "model")]
        replace: bool,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// A fresh snapshot of one model on its change topic: `r` for every current row, `d` (and a
    /// tombstone) for keys the warehouse no longer has. Shows the plan without --execute. Exit
    /// codes: 0 done or plan shown, 1 error, 2 bad config or unknown model, 4 refused (first
    /// snapshot not complete, NULL or duplicate keys, contract drift).
    Resync {
        /// The model's name in the config.
        model: String,
        /// Emit the snapshot (fences the model's own running poller); without it the plan is
        /// shown only.
        #[arg(long)]
        execute: bool,
        /// The plan or summary (and any error) as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// One key's history on its change topic, where each destination stands relative to it, and
    /// its dead letters. Exit codes: 0 shown, 1 error, 2 bad config, unknown model or bad key, 3
    /// no record of the key.
    Inspect {
        /// The model's name in the config.
        #[arg(long)]
        model: String,
        /// The key: a JSON object of the model's key columns, e.g. '{"id":42}'.
        #[arg(long)]
        key: String,
        /// Print row values (personal data); masked otherwise.
        #[arg(long)]
        show_values: bool,
        /// The report (and any error) as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// The dead letters of one destination: list, show, redrive, purge. Exit codes: 0 done, 1
    /// error, 2 bad config or arguments, 3 `show` found nothing.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Print records POSTed to /hook (the webhook destination's JSON batches).
    DemoReceiver {
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand, Debug)]
enum WarehouseCommand {
    /// Run a SQL script (statements separated by `;`).
    Exec {
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
        /// The SQL to run.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        sql: Option<String>,
        /// A file of SQL to run.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Create the DuckDB file if it does not exist (the poller never does).
        #[arg(long)]
        create: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Write the model's current row schema (Avro) as its contract, or with `--writer` its key
    /// and value writer schemas.
    Export {
        /// The model's name in the config.
        model: String,
        #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
        config: PathBuf,
        /// Where to write it; default `schemas/models/<model>.avsc`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write `<model>.key.avsc` and `<model>.value.avsc` (exactly as published on the schema
        /// topic) to this directory instead of the contract, and print their fingerprints.
        #[arg(long, conflicts_with = "out")]
        writer: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Check { config, service } => match sluice_destinations::load(&config, &service) {
            Ok(c) => {
                println!(
                    "{}: ok for {service} ({} models, {} destinations, {} syncs)",
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
            let config = match load_for_warehouse(&config) {
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
        Command::Schema { command: SchemaCommand::Export { model, config, out, writer } } => {
            let config = match load_for_warehouse(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            if let Some(dir) = writer {
                return match sluice_poller::contract::export_writer_model(&config, &model, &dir).await {
                    Ok(written) => {
                        for (path, fingerprint) in written {
                            println!("wrote {} (fingerprint {fingerprint})", path.display());
                        }
                        std::process::ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        std::process::ExitCode::FAILURE
                    }
                };
            }
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
        Command::Snapshot { model, config } => {
            let config = match load_for_warehouse(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            snapshot(&config, &model).await
        }
        Command::Warehouse { command: WarehouseCommand::Exec { config, sql, file, create } } => {
            let config = match load_for_warehouse(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return std::process::ExitCode::from(2);
                }
            };
            let script = match (sql, file) {
                (Some(sql), _) => sql,
                (None, Some(file)) => match std::fs::read_to_string(&file) {
                    Ok(sql) => sql,
                    Err(error) => {
                        eprintln!("error: reading {}: {error}", file.display());
                        return std::process::ExitCode::from(2);
                    }
                },
                (None, None) => unreachable!("clap requires --sql or --file"),
            };
            let result = async {
                let warehouse = sluice_warehouse::AnyWarehouse::connect_for_script(&config.warehouse, create).await?;
                warehouse.execute_script(&script).await
            }
            .await;
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Replay { destination, to, model, execute, force, wait_secs, json, config } => {
            let request = replay::Request { destination, target: to, model, execute, force, wait: std::time::Duration::from_secs(wait_secs), json };
            replay::run(config, request).await
        }
        Command::Backfill { destination, model, rate, json, replace, config } => backfill::run(config, backfill::Request { destination, model, rate, json, replace }).await,
        Command::Resync { model, execute, json, config } => resync::run(config, resync::Request { model, execute, json }).await,
        Command::Inspect { model, key, show_values, json, config } => inspect::run(config, inspect::Request { model, key, show_values, json }).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::DemoReceiver { listen } => match demo_receiver(listen).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: demo receiver: {error}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// A config for the commands that read the warehouse (`plan`, `snapshot`, `schema export`,
/// `warehouse exec`): the file checked and the warehouse's secret resolved, with its line when
/// it does not. Not the poller's whole scope: `schema export` writes the contracts it checks.
fn load_for_warehouse(path: &std::path::Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    config.check_secrets(&Scope::Poller)?;
    Ok(config)
}

/// A progress bar over the first snapshot's rows (a plain line per chunk when stderr is not a
/// terminal, which indicatif handles by hiding the bar: we print the summary ourselves).
struct Bar(indicatif::ProgressBar);

impl sluice_poller::snapshot::Progress for Bar {
    fn started(&self, model: &str, emitted: u64, total: u64) {
        self.0.set_length(total.max(emitted));
        self.0.set_position(emitted);
        self.0.set_message(format!("{model}: snapshot"));
    }

    fn advanced(&self, _model: &str, emitted: u64, total: u64) {
        self.0.set_length(total.max(emitted));
        self.0.set_position(emitted);
    }

    fn finished(&self, model: &str, emitted: u64) {
        self.0.finish_with_message(format!("{model}: snapshot complete, {emitted} rows"));
    }
}

async fn snapshot(config: &sluice_core::config::Config, model: &str) -> std::process::ExitCode {
    use sluice_poller::snapshot::Outcome;
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})")
        .expect("valid template")
        .progress_chars("=> ");
    let bar = Bar(indicatif::ProgressBar::new(0).with_style(style));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after the chunk in flight (the next start resumes)");
            stop.cancel();
        }
    });
    match sluice_poller::snapshot::run_standalone(config, model, &bar, &shutdown).await {
        Ok(Outcome::Complete { emitted, already: true }) => {
            println!("model {model}: the first snapshot was already complete ({emitted} events emitted so far); nothing to do");
            std::process::ExitCode::SUCCESS
        }
        Ok(Outcome::Complete { emitted, .. }) => {
            println!("model {model}: first snapshot complete, {emitted} rows emitted; start sluice-poller to keep it in sync");
            std::process::ExitCode::SUCCESS
        }
        Ok(Outcome::Interrupted { emitted }) => {
            bar.0.abandon();
            println!("model {model}: interrupted after {emitted} rows; run the same command (or the poller) to resume");
            std::process::ExitCode::from(130)
        }
        Err(error) => {
            bar.0.abandon();
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
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
