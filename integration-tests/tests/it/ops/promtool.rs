//! The alert rules parse (`promtool check rules`) and behave (`promtool test rules`: every alert
//! fires on a synthetic failing series and stays silent on a healthy one), and each names its
//! runbook.

use std::collections::BTreeSet;

use super::{alert_rules, repo};

/// Run `promtool` with `args` in `ops/prometheus`; fail with its output.
fn promtool(args: &[&str]) {
    let output = match std::process::Command::new("promtool").args(args).current_dir(repo().join("ops/prometheus")).output() {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run promtool ({error}). It comes with Debian's `prometheus` package: `apt-get install prometheus` \
             (ops/deps.sh installs it; ops/test.sh runs ops/deps.sh)"
        ),
    };
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    promtool(&["check", "rules", "rules.yml"]);
}

#[test]
fn every_alert_fires_on_a_failing_series_and_stays_silent_on_a_healthy_one() {
    promtool(&["test", "rules", "rules.test.yml"]);
    // Every alert has a test group that expects it to fire (promtool checks the rest).
    let tests = std::fs::read_to_string(repo().join("ops/prometheus/rules.test.yml")).unwrap();
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).unwrap();
    let fired: Vec<String> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().cloned().unwrap_or_default())
        .filter(|case| case["exp_alerts"].as_sequence().is_some_and(|alerts| !alerts.is_empty()))
        .filter_map(|case| case["alertname"].as_str().map(String::from))
        .collect();
    for alert in alert_rules().keys() {
        assert!(fired.contains(alert), "no promtool test expects {alert} to fire");
    }
}

#[test]
fn every_alert_has_a_severity_and_a_runbook_that_exists() {
    let alerts = alert_rules();
    // The alerts.
    let expected = [
        "SluiceAudienceSwing",
        "SluiceConsumerLagGrowing",
        "SluiceDeadLetterGrowth",
        "SluiceDestinationHalted",
        "SluiceModelFreshnessSlaBreached",
        "SluiceModelRunFailing",
        "SluiceRejectRateSpike",
        "SluiceWritebackBehind",
    ];
    assert_eq!(alerts.keys().map(String::as_str).collect::<Vec<_>>(), expected, "the alerts of ops/prometheus/rules.yml");
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(runbook, format!("docs/runbooks/{name}.md"), "{name}: runbook_url");
        let text = std::fs::read_to_string(repo().join(runbook)).unwrap_or_else(|e| panic!("{name}: {runbook}: {e}"));
        for section in ["## What it means", "## How to confirm", "## What to do"] {
            assert!(text.contains(section), "{runbook} has no {section:?} section");
        }
    }
    // The runbooks' index lists exactly these alerts, each with its severity.
    let index = std::fs::read_to_string(repo().join("docs/runbooks/README.md")).unwrap();
    let listed: BTreeSet<(String, String)> = index
        .lines()
        .filter(|l| l.starts_with("| Sluice"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].to_string(), cells[1].to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = alerts.iter().map(|(name, rule)| (name.clone(), rule["labels"]["severity"].as_str().unwrap().to_string())).collect();
    assert_eq!(listed, expected, "docs/runbooks/README.md lists the alerts and their severities");
}
