//! What deployment files are checked against, read from the code itself: the services' flags,
//! environment variables and default ports (their `--help`, printed by clap from the same
//! definitions the binaries parse), the secret references of a config per service, the ops
//! endpoints' paths, and the one validation every service runs at start (`sluice check
//! --service`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use sluice_integration_tests::binary;

use super::read;

/// What a service binary accepts, from its `--help`.
#[derive(Debug)]
pub struct Help {
    /// Long flags (`--config`, ...).
    pub flags: BTreeSet<String>,
    /// Environment variables its flags read (`[env: X=]`).
    pub envs: BTreeSet<String>,
    /// Flag → its default (`[default: V]`).
    pub defaults: BTreeMap<String, String>,
}

/// The `--help` of a service binary (`sluice-poller`, `sluice-sink`).
pub fn help(name: &str) -> Help {
    let output = Command::new(binary(name)).arg("--help").output().unwrap_or_else(|e| panic!("{name} --help: {e}"));
    assert!(output.status.success(), "{name} --help failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut help = Help { flags: BTreeSet::new(), envs: BTreeSet::new(), defaults: BTreeMap::new() };
    // A flag's line starts with it; its `[env: ]` and `[default: ]` follow on the same line or,
    // in clap's long layout, on the next ones.
    let mut flag = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            flag = trimmed.split_whitespace().map(|w| w.trim_end_matches(',')).find(|w| w.starts_with("--")).map(String::from);
            help.flags.extend(flag.clone());
        }
        let Some(flag) = &flag else { continue };
        if let Some((_, rest)) = line.split_once("[env: ") {
            help.envs.insert(rest.split(['=', ']']).next().unwrap().to_string());
        }
        if let Some((_, rest)) = line.split_once("[default: ") {
            help.defaults.insert(flag.clone(), rest.split(']').next().unwrap().to_string());
        }
    }
    assert!(help.flags.contains("--config") && help.envs.contains("SLUICE_CONFIG"), "{name} --help: {text}");
    help
}

/// The port of `host:port`.
pub fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {address:?}"))
}

/// Environment variables the config loader reads besides secrets (env over file), each checked
/// to be named in the loader's code.
pub fn config_overrides() -> BTreeSet<String> {
    let loader = read("crates/sluice-core/src/config/mod.rs");
    let names = ["SLUICE_KAFKA_BOOTSTRAP_SERVERS", "SLUICE_KAFKA_TOPIC_PREFIX"];
    for name in names {
        assert!(loader.contains(name), "the config loader no longer reads {name}");
    }
    names.into_iter().map(String::from).collect()
}

/// Variables every service may also get: logging and OpenTelemetry's standard ones.
pub fn is_runtime_env(name: &str) -> bool {
    name == "RUST_LOG" || name.starts_with("OTEL_")
}

/// The `{ env = "X" }` references of a config, by the service that resolves them: `poller`
/// (Kafka's and the warehouse's) and `sink:<destination>` (Kafka's and that destination's).
pub fn secret_envs(config: &str) -> BTreeMap<String, BTreeSet<String>> {
    fn refs(value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                if let (1, Some(toml::Value::String(name))) = (table.len(), table.get("env")) {
                    out.insert(name.clone());
                }
                table.values().for_each(|v| refs(v, out));
            }
            toml::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let config: toml::Value = toml::from_str(config).expect("config is TOML");
    let (mut kafka, mut warehouse) = (BTreeSet::new(), BTreeSet::new());
    refs(&config["kafka"], &mut kafka);
    refs(&config["warehouse"], &mut warehouse);
    let mut out = BTreeMap::new();
    out.insert("poller".to_string(), kafka.union(&warehouse).cloned().collect());
    for destination in config["destinations"].as_array().expect("destinations") {
        let mut own = kafka.clone();
        refs(destination, &mut own);
        out.insert(format!("sink:{}", destination["name"].as_str().unwrap()), own);
    }
    out
}

/// The destination names of a config.
pub fn destinations(config: &str) -> Vec<String> {
    let config: toml::Value = toml::from_str(config).unwrap();
    config["destinations"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_string()).collect()
}

/// A plausible value for a secret variable, so the config's own validation (URL schemes, the
/// webhook secret's format) judges the wiring rather than the placeholder.
pub fn placeholder(name: &str) -> String {
    if name.contains("REDIS_URL") {
        "redis://redis:6379".into()
    } else if name.contains("WAREHOUSE_URL") {
        "postgres://sluice:sluice@warehouse:5432/sluice".into()
    } else if name.contains("SIGNING_SECRET") {
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()
    } else {
        "placeholder".into()
    }
}

/// `sluice check --config <config> --service <scope>` with exactly `env` (and PATH): the
/// validation the service runs at start, in the environment a deployment gives it.
pub fn check(config: &Path, scope: &str, env: &BTreeMap<String, String>) -> std::process::Output {
    Command::new(binary("sluice"))
        .args(["check", "--config", config.to_str().unwrap(), "--service", scope])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("run sluice check")
}

/// Assert that `env` is exactly what the service of `scope` needs: `sluice check` passes with
/// it, fails without any one of its secrets, and no other service's secret is in it.
pub fn assert_service_env(what: &str, config_path: &Path, config: &str, scope: &str, env: &BTreeMap<String, String>) {
    let all = secret_envs(config);
    let own = all.get(scope).unwrap_or_else(|| panic!("{what}: no service {scope} in {}", config_path.display()));
    let output = check(config_path, scope, env);
    assert!(output.status.success(), "{what}: `sluice check --service {scope}` fails with its environment: {}", String::from_utf8_lossy(&output.stderr));
    for secret in own {
        assert!(env.contains_key(secret), "{what}: {secret} ({scope}'s secret) is not set");
        let mut without = env.clone();
        without.remove(secret);
        assert!(!check(config_path, scope, &without).status.success(), "{what}: {secret} is set but `sluice check` does not need it");
    }
    let foreign: BTreeSet<&String> = all.values().flatten().filter(|s| !own.contains(*s)).collect();
    for name in env.keys() {
        assert!(!foreign.contains(name), "{what}: {name} is another service's secret; each service gets only its own");
    }
}

/// Paths the ops endpoints serve (probes must name one of them).
pub async fn ops_path_exists(path: &str) -> bool {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let health = sluice_telemetry::ops::Health::new();
    let addr = sluice_telemetry::ops::serve("127.0.0.1:0".parse().unwrap(), health, shutdown.clone()).await.unwrap();
    let status = reqwest::get(format!("http://{addr}{path}")).await.unwrap().status();
    shutdown.cancel();
    status != reqwest::StatusCode::NOT_FOUND
}
