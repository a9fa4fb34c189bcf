//! The dashboard and the rules read only documented metrics, and the doc's "used by" column says
//! exactly who reads each one (so a renamed metric or a dropped panel shows up here). The doc
//! lists exactly the metrics the code records (read from the source, so metrics only an event
//! exports are covered too); whether each is really exported is [`super::live`]'s check.

use std::collections::{BTreeMap, BTreeSet};

use super::{alert_rules, dashboard_exprs, histograms, metrics_doc, promql_metrics, read, repo};

#[test]
fn the_doc_says_exactly_which_alerts_and_the_dashboard_read_each_metric() {
    let doc = metrics_doc();
    let histograms = histograms(&doc);
    let mut readers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for expr in dashboard_exprs() {
        for name in promql_metrics(&expr, &histograms) {
            readers.entry(name).or_default().insert("dashboard".into());
        }
    }
    let alerts = alert_rules();
    for (alert, rule) in &alerts {
        let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert}: no expr"));
        let names = promql_metrics(expr, &histograms);
        assert!(!names.is_empty(), "{alert} reads no sluice metric: {expr}");
        for name in names {
            readers.entry(name).or_default().insert(alert.clone());
        }
    }
    for (name, by) in &readers {
        let documented = doc.get(name).unwrap_or_else(|| panic!("{name} is read by {by:?} but not listed in docs/metrics.md"));
        assert_eq!(&documented.used_by, by, "docs/metrics.md, {name}: \"used by\" should be exactly who reads it");
    }
    for (name, documented) in &doc {
        for user in &documented.used_by {
            assert!(user == "dashboard" || alerts.contains_key(user), "docs/metrics.md, {name}: {user:?} is neither an alert nor `dashboard`");
        }
        assert!(readers.contains_key(name), "docs/metrics.md, {name}: no alert and no dashboard panel reads it");
    }
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource_and_covers_the_six_questions() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("ops/grafana/sluice.json")).unwrap();
    assert_eq!(dashboard["uid"], "sluice", "a stable uid, so links to it survive re-provisioning");
    let provisioning = read("ops/compose/grafana-datasource.yml");
    assert!(provisioning.contains("uid: prometheus"), "the datasource the panels name is provisioned");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"], "prometheus", "panel {title:?}: datasource");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        assert!(!targets.is_empty(), "panel {title:?} has no query");
    }
    for topic in ["freshness", "lag", "reject", "dead letter", "latency", "volatility", "concurrency", "throttl"] {
        assert!(titles.iter().any(|t| t.to_lowercase().contains(topic)), "no panel about {topic}: {titles:?}");
    }
}

/// Every metric the code records (`counter!`, `gauge!`, `histogram!` in `services/` and
/// `crates/`), with the first place that names it. A name given by a constant is looked up among
/// the code's `const NAME: &str = "..."`; any other argument fails the test, so no metric escapes
/// the comparison with the doc.
fn metrics_in_code() -> BTreeMap<String, String> {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in ["services", "crates"] {
        rust_files(&repo().join(dir), &mut files);
    }
    let sources: Vec<(String, String)> =
        files.iter().map(|f| (f.strip_prefix(repo()).unwrap().display().to_string(), std::fs::read_to_string(f).unwrap())).collect();
    // `const NAME: &str = "value";` anywhere in the code.
    let mut constants = BTreeMap::new();
    for (_, text) in &sources {
        for line in text.lines() {
            let Some((_, rest)) = line.split_once("const ") else { continue };
            if let Some((name, value)) = rest.split_once(": &str = \"") {
                constants.insert(name.trim().to_string(), value.split('"').next().unwrap().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (file, text) in &sources {
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let line = text[..at].lines().count().max(1);
                let argument = text[at + macro_name.len()..].trim_start();
                let name = if let Some(quoted) = argument.strip_prefix('"') {
                    quoted.split('"').next().unwrap().to_string()
                } else {
                    let path: String = argument.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    let constant = path.rsplit("::").next().unwrap();
                    constants.get(constant).cloned().unwrap_or_else(|| panic!("{file}:{line}: a metric named by {path:?}, which is no `&str` constant of the code"))
                };
                out.entry(name).or_insert_with(|| format!("{file}:{line}"));
            }
        }
    }
    out
}

#[test]
fn every_documented_metric_is_recorded_by_the_code_and_every_recorded_metric_is_documented() {
    let doc = metrics_doc();
    let code = metrics_in_code();
    for (name, at) in &code {
        assert!(name.starts_with("sluice_"), "{at}: metric {name} does not start with sluice_");
        assert!(doc.contains_key(name), "{at}: {name} is recorded but not listed in docs/metrics.md");
    }
    for name in doc.keys() {
        assert!(code.contains_key(name), "docs/metrics.md lists {name}, which no code in services/ or crates/ records");
    }
    // The alerts and the dashboard read documented metrics only (the test above), so they too
    // read nothing the code does not record.
}
