//! The Kubernetes base (`ops/k8s/base`) against the code: every container runs a service binary
//! with flags it has, listens where its probes, ports and Services look (the binary's default
//! port), probes paths the ops endpoints serve, gets exactly its own secrets (the config's
//! references for its scope, proven by `sluice check --service`), mounts the generated config
//! where `SLUICE_CONFIG` points, runs as the image's non-root user on a read-only root, and a
//! sink's grace period outlasts its drain. One sink Deployment per destination of the config;
//! every Secret they read is listed in `docs/kubernetes.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize as _;

use super::deploy::{self, help, port_of};
use super::{read, repo, s};

const BASE: &str = "ops/k8s/base";

/// Every document of the resources listed in the kustomization.
fn resources() -> Vec<serde_yaml::Value> {
    let kustomization: serde_yaml::Value = serde_yaml::from_str(&read(&format!("{BASE}/kustomization.yaml"))).unwrap();
    let mut out = Vec::new();
    for file in kustomization["resources"].as_sequence().expect("resources") {
        let text = read(&format!("{BASE}/{}", file.as_str().unwrap()));
        for document in serde_yaml::Deserializer::from_str(&text) {
            out.push(serde_yaml::Value::deserialize(document).unwrap());
        }
    }
    out
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The generated ConfigMap's name and the config file in it.
fn generated_config() -> (String, String) {
    let kustomization: serde_yaml::Value = serde_yaml::from_str(&read(&format!("{BASE}/kustomization.yaml"))).unwrap();
    let generator = &kustomization["configMapGenerator"][0];
    let file = s(&generator["files"][0]);
    (s(&generator["name"]), file)
}

#[tokio::test]
async fn manifests_agree_with_the_services_and_the_config() {
    let docs = resources();
    let (config_map, config_file) = generated_config();
    let config_path = repo().join(BASE).join(&config_file);
    let config = read(&format!("{BASE}/{config_file}"));
    let overrides = deploy::config_overrides();
    let drain = sluice_sink::DRAIN_TIMEOUT.as_secs();
    let mut sink_destinations = BTreeSet::new();
    let mut pod_labels = Vec::new();
    let mut secret_refs = BTreeSet::new();

    for deployment in of_kind(&docs, "Deployment") {
        let name = s(&deployment["metadata"]["name"]);
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = pod["containers"].as_sequence().unwrap();
        assert_eq!(containers.len(), 1, "{name}: one container");
        let container = &containers[0];
        let command = s(&container["command"][0]);
        let help = help(&command);
        let env: BTreeMap<String, serde_yaml::Value> =
            container["env"].as_sequence().unwrap().iter().map(|e| (s(&e["name"]), e.clone())).collect();
        let value = |var: &str| env.get(var).map(|e| s(&e["value"]));
        let args: Vec<String> = container["args"].as_sequence().map(|a| a.iter().map(s).collect()).unwrap_or_default();
        for arg in args.iter().filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap();
            assert!(help.flags.contains(flag), "{name}: {command} has no flag {flag}");
        }
        for var in env.keys() {
            assert!(
                help.envs.contains(var) || overrides.contains(var) || deploy::is_runtime_env(var) || var.starts_with("SLUICE_") && env[var]["valueFrom"]["secretKeyRef"].is_mapping(),
                "{name}: {command} reads no variable {var}"
            );
        }

        // Ports: the ops endpoint on the binary's default port, probed on its real paths.
        let ports: BTreeMap<String, u16> = container["ports"].as_sequence().unwrap().iter().map(|p| (s(&p["name"]), s(&p["containerPort"]).parse().unwrap())).collect();
        let default_ops = port_of(&help.defaults["--ops-listen"]);
        assert_eq!(ports.get("ops"), Some(&default_ops), "{name}: the ops port is {command}'s default");
        assert_eq!(value("SLUICE_OPS_LISTEN").map(|a| port_of(&a)), Some(default_ops), "{name}: SLUICE_OPS_LISTEN listens on the ops port");
        assert!(value("SLUICE_OPS_LISTEN").unwrap().starts_with("0.0.0.0:"), "{name}: reachable from the kubelet");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(s(&get["path"]), path, "{name}: {probe}");
            assert_eq!(s(&get["port"]), "ops", "{name}: {probe} on the ops port");
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if let Some(path) = container[probe]["httpGet"]["path"].as_str() {
                assert!(deploy::ops_path_exists(path).await, "{name}: {probe} path {path} is not served by sluice_telemetry::ops");
            }
        }

        // The config: the generated ConfigMap, mounted where SLUICE_CONFIG points.
        let config_at = value("SLUICE_CONFIG").unwrap_or_else(|| panic!("{name}: SLUICE_CONFIG"));
        let (dir, file) = config_at.rsplit_once('/').unwrap();
        assert_eq!(file, config_file, "{name}: SLUICE_CONFIG names the generated file");
        let mount = container["volumeMounts"].as_sequence().unwrap().iter().find(|m| s(&m["mountPath"]) == dir).unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
        let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(s(&volume["configMap"]["name"]), config_map, "{name}: {dir} is the generated ConfigMap");

        // Secrets: exactly this service's, each from a Secret.
        let scope = match command.as_str() {
            "sluice-poller" => "poller".to_string(),
            "sluice-sink" => {
                let destination = value("SLUICE_DESTINATION").unwrap_or_else(|| panic!("{name}: SLUICE_DESTINATION"));
                sink_destinations.insert(destination.clone());
                assert!(drain < s(&pod["terminationGracePeriodSeconds"]).parse::<u64>().unwrap(), "{name}: grace period longer than the sink's {drain} s drain");
                format!("sink:{destination}")
            }
            other => panic!("{name}: unknown command {other}"),
        };
        let mut check_env: BTreeMap<String, String> = BTreeMap::new();
        for (var, e) in &env {
            let secret = &e["valueFrom"]["secretKeyRef"];
            let val = if secret.is_mapping() { deploy::placeholder(var) } else { s(&e["value"]) };
            check_env.insert(var.clone(), val);
        }
        deploy::assert_service_env(&name, &config_path, &config, &scope, &check_env);
        for (var, e) in &env {
            let own = deploy::secret_envs(&config)[&scope].contains(var);
            let secret = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(own, secret.is_mapping(), "{name}: {var} comes from a Secret exactly when it is a secret");
            if own {
                secret_refs.insert((s(&secret["name"]), s(&secret["key"]), var.clone()));
            }
        }

        // Non-root (the image's user), read-only root, resources.
        assert_eq!(s(&pod["securityContext"]["runAsUser"]), "10001", "{name}: the image's user");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        assert!(container["resources"]["requests"]["memory"].is_string() && container["resources"]["limits"]["memory"].is_string(), "{name}: resources");
        if command == "sluice-poller" {
            assert_eq!(s(&deployment["spec"]["replicas"]), "1", "{name}: one poller per model set");
            assert_eq!(s(&deployment["spec"]["strategy"]["type"]), "Recreate", "{name}: never two pollers at once");
            let trigger = port_of(&help.defaults["--trigger-listen"]);
            assert_eq!(ports.get("trigger"), Some(&trigger), "{name}: the trigger port is the default");
            assert_eq!(value("SLUICE_TRIGGER_LISTEN").map(|a| port_of(&a)), Some(trigger));
        }
        pod_labels.push((name, deployment["spec"]["template"]["metadata"]["labels"].clone(), ports));
    }

    // The Secrets are created beside the base: docs/kubernetes.md names each one, its key and the
    // variable it fills, on one line.
    let guide = read("docs/kubernetes.md");
    for (secret, key, var) in &secret_refs {
        assert!(
            guide.lines().any(|l| l.contains(&format!("`{secret}`")) && l.contains(&format!("`{key}`")) && l.contains(&format!("`{var}`"))),
            "docs/kubernetes.md does not list Secret {secret}, key {key} ({var})"
        );
    }
    assert_eq!(
        sink_destinations.into_iter().collect::<Vec<_>>(),
        { let mut d = deploy::destinations(&config); d.sort(); d },
        "one sink Deployment per destination of {config_file}"
    );
    // Every Deployment has a Service on its ports and a PodDisruptionBudget selecting its pods.
    let selects = |selector: &serde_yaml::Value, labels: &serde_yaml::Value| {
        selector.as_mapping().is_some_and(|m| m.iter().all(|(k, v)| labels[k.as_str().unwrap()] == *v))
    };
    for (name, labels, ports) in &pod_labels {
        let service = of_kind(&docs, "Service").into_iter().find(|svc| selects(&svc["spec"]["selector"], labels)).unwrap_or_else(|| panic!("{name}: no Service"));
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            assert!(ports.contains_key(&s(&port["targetPort"])), "{name}: Service targets a port the container names");
        }
        let annotated = s(&service["metadata"]["annotations"]["prometheus.io/port"]).parse::<u16>().unwrap();
        assert_eq!(Some(&annotated), ports.get("ops"), "{name}: scraped on the ops port");
        assert!(
            of_kind(&docs, "PodDisruptionBudget").iter().any(|pdb| selects(&pdb["spec"]["selector"]["matchLabels"], labels)),
            "{name}: no PodDisruptionBudget"
        );
    }
}
