//! The shipped alert rules are valid (`promtool check rules`) and behave as their unit tests say
//! (`promtool test rules`), and every alert has a runbook section in the README.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool not found: run scripts/setup (installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_pass_promtool_check() {
    // GIVEN the shipped rules WHEN promtool checks them THEN they are valid
    let text = promtool(&["check", "rules", "cdc-indexer.rules.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn rules_pass_their_unit_tests() {
    // GIVEN the rule unit tests WHEN promtool runs them THEN every case passes
    let text = promtool(&["test", "rules", "cdc-indexer.rules.test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_is_tested_and_has_a_runbook() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("alerts/cdc-indexer.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(root.join("alerts/cdc-indexer.rules.test.yml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "{a} has no promtool test");
        let anchor = a.to_lowercase();
        assert!(
            rules.contains(&format!("README.md#{anchor}\"")),
            "{a} lacks its runbook_url"
        );
        assert!(
            readme.contains(&format!("#### {a}\n")),
            "README runbook lacks a section for {a}"
        );
    }
}

#[test]
fn compose_prometheus_config_is_valid_and_loads_the_rules() {
    // GIVEN the Prometheus config docker-compose.yml mounts, laid out as in the container
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("deploy/prometheus.yml"), dir.path().join("prometheus.yml")).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::copy(
        root.join("alerts/cdc-indexer.rules.yml"),
        dir.path().join("rules/cdc-indexer.rules.yml"),
    )
    .unwrap();
    // WHEN promtool checks it THEN it is valid and finds the shipped rules
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("promtool not found: run scripts/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS") && text.contains("rules found"), "{text}");
}
