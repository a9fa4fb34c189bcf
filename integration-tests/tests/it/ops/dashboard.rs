//! The dashboard and the rules read only documented metrics, and the doc's "used by" column says
//! exactly who reads each one (so a renamed metric or a dropped panel shows up here). Whether
//! each metric is really exported is [`super::live`]'s check.

use std::collections::{BTreeMap, BTreeSet};

use super::{alert_rules, dashboard_exprs, histograms, metrics_doc, promql_metrics, read};

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
