//! `docker-compose.yml` against the config and the code (there is no Docker engine here, so the
//! file is parsed and cross-checked): one sink service per destination of
//! `ops/compose/sluice.toml`, each service with exactly its own secrets (proven by `sluice check
//! --service` in that environment) and variables the binaries read, listening on its binary's
//! default ops port where its healthcheck and Prometheus look; the poller's trigger published;
//! Prometheus loading the alert rules; Grafana provisioning the dashboard without anonymous
//! admin; a Redis service behind the Redis destination; the image's working directory owned by
//! its user.

use std::collections::{BTreeMap, BTreeSet};

use super::deploy::{self, help, port_of};
use super::{read, repo, s};

fn compose() -> serde_yaml::Value {
    let mut compose: serde_yaml::Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    compose.apply_merge().expect("merge keys (<<: *sluice-image)");
    compose
}

/// A compose value with `${VAR:-default}` interpolated to its default (what `docker compose up`
/// uses when the variable is not set).
fn interpolated(value: &str) -> String {
    match (value.find("${"), value.find(":-"), value.rfind('}')) {
        (Some(start), Some(dash), Some(end)) if start < dash && dash < end => format!("{}{}{}", &value[..start], &value[dash + 2..end], &value[end + 1..]),
        _ => value.to_string(),
    }
}

/// Host path → container path of a service's bind mounts.
fn mounts(service: &serde_yaml::Value) -> BTreeMap<String, String> {
    service["volumes"]
        .as_sequence()
        .map(|v| v.iter().filter_map(|m| s(m).split(':').collect::<Vec<_>>().get(..2).map(|p| (p[0].trim_start_matches("./").to_string(), p[1].to_string()))).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn compose_runs_one_sink_per_destination_each_with_its_own_secrets() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let config_text = read("ops/compose/sluice.toml");
    let config_path = repo().join("ops/compose/sluice.toml");
    let overrides = deploy::config_overrides();
    let prometheus = read("ops/compose/prometheus.yml");
    let mut sinks = BTreeMap::new();

    for (name, service) in services {
        let name = s(name);
        let command: Vec<String> = service["command"].as_sequence().map(|c| c.iter().map(s).collect()).unwrap_or_default();
        let Some(binary) = command.first().filter(|c| c.starts_with("sluice-")).cloned() else { continue };
        let help = help(&binary);
        let env: BTreeMap<String, String> = service["environment"].as_mapping().unwrap().iter().map(|(k, v)| (s(k), interpolated(&s(v)))).collect();
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            assert!(help.flags.contains(flag), "{name}: {binary} has no flag {flag}");
        }
        for var in env.keys() {
            assert!(
                help.envs.contains(var) || overrides.contains(var) || deploy::is_runtime_env(var) || var.starts_with("SLUICE_") && deploy::secret_envs(&config_text).values().flatten().any(|v| v == var),
                "{name}: {binary} reads no variable {var}"
            );
        }
        let flag = |flag: &str| command.iter().position(|a| a == flag).map(|i| command[i + 1].clone());
        assert_eq!(mounts(service).get("ops/compose/sluice.toml"), flag("--config").as_ref(), "{name}: --config names the mounted ops/compose/sluice.toml");
        let scope = match binary.as_str() {
            "sluice-poller" => "poller".to_string(),
            "sluice-sink" => {
                let destination = flag("--destination").unwrap_or_else(|| panic!("{name}: --destination"));
                sinks.insert(destination.clone(), name.clone());
                format!("sink:{destination}")
            }
            other => panic!("{name}: unknown binary {other}"),
        };
        deploy::assert_service_env(&name, &config_path, &config_text, &scope, &env);

        // The ops endpoint on the binary's default port: healthcheck and Prometheus look there.
        let ops = port_of(&help.defaults["--ops-listen"]);
        assert_eq!(env.get("SLUICE_OPS_LISTEN").map(|a| port_of(a)), Some(ops), "{name}: ops on {binary}'s default port {ops}");
        let healthcheck = service["healthcheck"]["test"].as_sequence().unwrap().iter().map(s).collect::<Vec<_>>().join(" ");
        assert!(healthcheck.contains(&format!("localhost:{ops}/readyz")), "{name}: healthcheck {healthcheck:?} asks /readyz on {ops}");
        assert!(deploy::ops_path_exists("/readyz").await);
        let scraped = prometheus.contains(&format!("\"{name}:{ops}\"")) || prometheus.contains(&format!("\"{name}\"")) && prometheus.contains(&format!("port: {ops}"));
        assert!(scraped, "{name}: Prometheus scrapes it on {ops}");
        if binary == "sluice-poller" {
            let trigger = port_of(&help.defaults["--trigger-listen"]);
            assert_eq!(env.get("SLUICE_TRIGGER_LISTEN").map(|a| port_of(a)), Some(trigger), "{name}: trigger on its default port");
            let published: Vec<String> = service["ports"].as_sequence().map(|p| p.iter().map(s).collect()).unwrap_or_default();
            assert!(published.iter().any(|p| p.ends_with(&format!(":{trigger}"))), "{name}: POST /run/<model> reachable from the host: {published:?}");
        }
    }
    let destinations: BTreeSet<String> = deploy::destinations(&config_text).into_iter().collect();
    assert_eq!(sinks.keys().cloned().collect::<BTreeSet<_>>(), destinations, "one sink service per destination of ops/compose/sluice.toml");
    // A Redis destination has a Redis service, at the host its URL names.
    let config: toml::Value = toml::from_str(&config_text).unwrap();
    for destination in config["destinations"].as_array().unwrap().iter().filter(|d| d.get("redis").is_some()) {
        let var = destination["redis"]["url"]["env"].as_str().unwrap();
        let sink = &services[sinks[destination["name"].as_str().unwrap()].as_str()];
        let url = s(&sink["environment"][var]);
        let host = url.trim_start_matches("redis://").split([':', '/']).next().unwrap();
        assert!(services.contains_key(host), "{url}: no compose service {host}");
    }
}

#[test]
fn prometheus_loads_the_rules_and_grafana_the_dashboard_without_anonymous_admin() {
    let compose = compose();
    let prometheus = &compose["services"]["prometheus"];
    let config: serde_yaml::Value = serde_yaml::from_str(&read("ops/compose/prometheus.yml")).unwrap();
    let rules_at = mounts(prometheus).get("ops/prometheus/rules.yml").cloned().expect("prometheus mounts ops/prometheus/rules.yml");
    let patterns: Vec<String> = config["rule_files"].as_sequence().expect("rule_files").iter().map(s).collect();
    let loaded = patterns.iter().any(|p| p == &rules_at || p.strip_suffix("*.yml").is_some_and(|dir| rules_at.starts_with(dir) && rules_at.ends_with(".yml")));
    assert!(loaded, "rule_files {patterns:?} do not load {rules_at}");

    let grafana = &compose["services"]["grafana"];
    let env: BTreeMap<String, String> = grafana["environment"].as_mapping().unwrap().iter().map(|(k, v)| (s(k), s(v))).collect();
    assert_ne!(env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str), Some("true"), "no anonymous access");
    assert!(!env.contains_key("GF_AUTH_ANONYMOUS_ORG_ROLE") && !env.contains_key("GF_AUTH_DISABLE_LOGIN_FORM"), "no anonymous admin");
    let password = env.get("GF_SECURITY_ADMIN_PASSWORD").expect("an admin password");
    assert!(password.starts_with("${SLUICE_GRAFANA_ADMIN_PASSWORD"), "the admin password comes from the environment: {password}");
    let mounts = mounts(grafana);
    let provider_at = mounts.get("ops/compose/grafana-dashboards.yml").expect("the dashboards provider is mounted");
    assert!(provider_at.starts_with("/etc/grafana/provisioning/dashboards/"), "{provider_at}");
    let provider: serde_yaml::Value = serde_yaml::from_str(&read("ops/compose/grafana-dashboards.yml")).unwrap();
    let path = s(&provider["providers"][0]["options"]["path"]);
    assert_eq!(mounts.get("ops/grafana"), Some(&path), "the provider loads the directory where ops/grafana (sluice.json) is mounted");
}

#[test]
fn the_image_working_directory_belongs_to_the_service_user() {
    let dockerfile = read("Dockerfile");
    let runtime = &dockerfile[dockerfile.find("AS runtime").expect("a runtime stage")..];
    let workdir = runtime.lines().find_map(|l| l.strip_prefix("WORKDIR ")).expect("WORKDIR").trim();
    assert!(runtime.contains("USER 10001:10001"), "runs as uid 10001");
    let chown = runtime.find(&format!("chown 10001:10001 {workdir}")).unwrap_or_else(|| panic!("{workdir} is not given to uid 10001"));
    assert!(chown < runtime.find(&format!("WORKDIR {workdir}")).unwrap(), "{workdir} is uid 10001's before it becomes the working directory");
    for port in ["9464", "9465", "9466"] {
        assert!(runtime.lines().any(|l| l.starts_with("EXPOSE") && l.contains(port)), "EXPOSE {port}");
    }
}
