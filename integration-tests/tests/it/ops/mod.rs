//! Operating sluice: the metrics reference, the alert rules, the dashboard, the Kubernetes
//! manifests and the compose stack, each checked against the code that they describe.
//!
//! - [`live`]: a poller and two sinks run end to end as processes; their live `/metrics` is
//!   compared with `docs/metrics.md`, and every metric the dashboard and the rules name with it.
//! - [`promtool`]: `promtool check rules` and `promtool test rules` on `ops/prometheus/`.
//! - [`dashboard`]: the dashboard's and the rules' references agree with the doc's "used by".
//! - [`k8s`] and [`compose`]: ports, probe paths, flags, environment variables and secrets of
//!   the manifests and of `docker-compose.yml`, against the binaries and the example configs.

mod compose;
mod dashboard;
mod deploy;
mod k8s;
mod live;
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("integration-tests is in the repo").to_path_buf()
}

/// A YAML scalar (string, number or boolean) as text, as a manifest's reader sees it.
pub fn s(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A file of the repository, as text.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Which process exports a documented metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Poller,
    Sink,
}

/// When a documented metric appears (the doc's "exported" column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    /// `always` or `per mode`: in every run that exercises the service (the live run has every
    /// mode).
    Always,
    /// `per kind: K, ...`: by destinations of these kinds.
    PerKind(Vec<String>),
    /// `on event: reason`.
    OnEvent(String),
}

/// One row of `docs/metrics.md`.
#[derive(Debug, Clone)]
pub struct DocMetric {
    pub service: Service,
    pub kind: String,
    pub exported: Exported,
    /// The "used by" cell: alert names and `dashboard`.
    pub used_by: BTreeSet<String>,
}

/// `docs/metrics.md`, by metric name. Panics on a malformed row, naming it.
pub fn metrics_doc() -> BTreeMap<String, DocMetric> {
    let text = read("docs/metrics.md");
    let mut service = None;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(heading) = line.strip_prefix("## ") {
            service = if heading.starts_with("Poller") {
                Some(Service::Poller)
            } else if heading.starts_with("Sink") || heading.starts_with("Destinations") {
                Some(Service::Sink)
            } else {
                None
            };
            continue;
        }
        if !line.starts_with("| `sluice_") {
            continue;
        }
        let at = format!("docs/metrics.md:{}", n + 1);
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "{at}: a metric row has 6 cells (metric, type, labels, meaning, exported, used by): {line}");
        let name = cells[0].trim_matches('`').to_string();
        let service = service.unwrap_or_else(|| panic!("{at}: metric {name} outside a service's section"));
        let exported = match cells[4] {
            "always" | "per mode" => Exported::Always,
            other => {
                if let Some(kinds) = other.strip_prefix("per kind: ") {
                    Exported::PerKind(kinds.split(',').map(|k| k.trim().to_string()).collect())
                } else if let Some(reason) = other.strip_prefix("on event: ") {
                    Exported::OnEvent(reason.to_string())
                } else {
                    panic!("{at}: exported must be `always`, `per mode`, `per kind: K` or `on event: reason`, not {other:?}")
                }
            }
        };
        if let Exported::OnEvent(reason) = &exported {
            assert!(reason.len() > 5, "{at}: {name} needs a reason why it is not always exported");
        }
        let used_by = cells[5].split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        let previous = out.insert(name.clone(), DocMetric { service, kind: cells[1].to_string(), exported, used_by });
        assert!(previous.is_none(), "{at}: {name} is listed twice");
    }
    assert!(out.len() > 40, "docs/metrics.md lists {} metrics; the table format changed?", out.len());
    out
}

/// One scrape of `/metrics`: metric families (`# TYPE` lines) and their samples.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    /// Family name → type.
    pub types: BTreeMap<String, String>,
    /// Sample lines: (series name, labels text without braces, value).
    pub samples: Vec<(String, String, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                scrape.types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = value.parse().unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
                scrape.samples.push((name.to_string(), labels.to_string(), value));
            }
        }
        scrape
    }

    /// Families of both scrapes (several sinks are one service).
    pub fn merge(scrapes: &[&Scrape]) -> Scrape {
        let mut out = Scrape::default();
        for s in scrapes {
            out.types.extend(s.types.clone());
            out.samples.extend(s.samples.iter().cloned());
        }
        out
    }

    /// The values of `name` whose labels contain every `label="value"` of `matching`.
    pub fn values(&self, name: &str, matching: &[&str]) -> Vec<f64> {
        self.samples.iter().filter(|(n, labels, _)| n == name && matching.iter().all(|m| labels.contains(m))).map(|(_, _, v)| *v).collect()
    }

    /// The one value of `name` with those labels (summed when several series match).
    pub fn value(&self, name: &str, matching: &[&str]) -> Option<f64> {
        let values = self.values(name, matching);
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// Metric names a PromQL expression reads: identifiers starting with `sluice_`, outside quoted
/// strings, with a histogram's `_bucket`/`_sum`/`_count` suffix taken off when the base name is
/// one of `histograms`. Recording-rule names (with `:`) are not metrics and are left out.
pub fn promql_metrics(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c == '"' || c == '\'' {
            // Skip a quoted string (label values, regexes).
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if !escaped && d == c {
                    break;
                }
                escaped = d == '\\' && !escaped;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[start..end];
            if word.starts_with("sluice_") && !word.contains(':') {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix).filter(|base| histograms.contains(*base)))
                    .unwrap_or(word);
                names.insert(base.to_string());
            }
        }
    }
    names
}

/// Every alert of `ops/prometheus/rules.yml`: name → (expr, labels, annotations).
pub fn alert_rules() -> BTreeMap<String, serde_yaml::Value> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("ops/prometheus/rules.yml")).expect("rules.yml is YAML");
    let mut out = BTreeMap::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(alert) = rule["alert"].as_str() {
                out.insert(alert.to_string(), rule.clone());
            }
        }
    }
    out
}

/// Every PromQL expression of the Grafana dashboard (panel targets and templating queries).
pub fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        ("query", serde_json::Value::String(query)) if query.contains("sluice_") => out.push(query.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read("ops/grafana/sluice.json")).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// Documented histograms (for suffix stripping).
pub fn histograms(doc: &BTreeMap<String, DocMetric>) -> BTreeSet<String> {
    doc.iter().filter(|(_, m)| m.kind == "histogram").map(|(n, _)| n.clone()).collect()
}

#[test]
fn promql_names_skip_strings_labels_and_histogram_suffixes() {
    let histograms = BTreeSet::from(["sluice_sink_end_to_end_seconds".to_string()]);
    let expr = r#"histogram_quantile(0.99, sum by (destination, le) (rate(sluice_sink_end_to_end_seconds_bucket{job="sluice_x"}[5m])))
        / on (model) sluice_poller_runs_total{outcome=~"a|b"} + sluice:recorded:rate5m"#;
    assert_eq!(
        promql_metrics(expr, &histograms).into_iter().collect::<Vec<_>>(),
        ["sluice_poller_runs_total", "sluice_sink_end_to_end_seconds"]
    );
}
