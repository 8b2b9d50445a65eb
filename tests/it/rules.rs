//! `candor rules` exports Prometheus alerting rules that `promtool check rules` accepts and
//! that `promtool test rules` shows firing on a fast burn and a completions drop, and staying
//! quiet within the objective.

use std::process::Command;

fn candor(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn promtool(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "promtool (Debian package prometheus) must be installed: `scripts/test` installs it",
        );
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const BURN_SUMMARY: &str = "Candor is burning its error budget 14.4x too fast (1h and 5m windows)";
const BURN_DESCRIPTION: &str = "Requests served within the targets fell below the objective; see /api/incidents and candor triage.";
const DROP_SUMMARY: &str = "Successful completions per minute fell below 50 % of the hour before";
const DROP_DESCRIPTION: &str = "Clients stopped sending or requests fail before completing; see /api/incidents and candor triage.";

#[test]
fn exported_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), candor(&["rules"])).unwrap();
    promtool(dir.path(), &["check", "rules", "rules.yml"]);
    let tests = format!(
        r#"rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  # 30 % of requests miss the targets: a 30x burn of a 1 % budget pages.
  - interval: 1m
    input_series:
      - series: candor_sli_requests_total
        values: '0+100x120'
      - series: candor_sli_requests_within_targets_total
        values: '0+70x120'
    alert_rule_test:
      - eval_time: 90m
        alertname: CandorErrorBudgetBurnPageFast
        exp_alerts:
          - exp_labels:
              severity: page
            exp_annotations:
              summary: "{BURN_SUMMARY}"
              description: "{BURN_DESCRIPTION}"
  # 0.5 % missing: within the objective, no page.
  - interval: 1m
    input_series:
      - series: candor_sli_requests_total
        values: '0+1000x120'
      - series: candor_sli_requests_within_targets_total
        values: '0+995x120'
    alert_rule_test:
      - eval_time: 90m
        alertname: CandorErrorBudgetBurnPageFast
        exp_alerts: []
      - eval_time: 90m
        alertname: CandorErrorBudgetBurnPageSlow
        exp_alerts: []
  # Completions fall from 100 to 10 a minute.
  - interval: 1m
    input_series:
      - series: 'candor_requests_total{{outcome="ok",provider="a",gen_ai_request_model="m"}}'
        values: '0+100x60 6000+10x30'
    alert_rule_test:
      - eval_time: 55m
        alertname: CandorCompletionsDrop
        exp_alerts: []
      - eval_time: 70m
        alertname: CandorCompletionsDrop
        exp_alerts:
          - exp_labels:
              severity: page
            exp_annotations:
              summary: "{DROP_SUMMARY}"
              description: "{DROP_DESCRIPTION}"
  # An open incident tickets.
  - interval: 1m
    input_series:
      - series: 'candor_open_incidents{{mode="batch_queue_deadlock",provider="sim-c"}}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: CandorIncidentOpen
        exp_alerts:
          - exp_labels:
              severity: ticket
              mode: batch_queue_deadlock
              provider: sim-c
            exp_annotations:
              summary: Candor has an open incident
              description: "A detector named a failure mode; see /api/incidents for its evidence."
"#
    );
    std::fs::write(dir.path().join("tests.yml"), tests).unwrap();
    promtool(dir.path(), &["test", "rules", "tests.yml"]);
}

#[test]
fn a_compressed_time_base_exports_compressed_windows_that_promtool_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("candor.toml");
    std::fs::write(
        &config,
        "[slo]\nobjective = 0.995\ntime_scale = 60\n[[providers]]\nid = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = [\"m\"]\n",
    )
    .unwrap();
    let rules = candor(&["rules", "--config", config.to_str().unwrap()]);
    assert!(rules.contains("rate1m"), "1 h / 60 = 1 m:\n{rules}");
    assert!(rules.contains("(14.4 * 0.005)"), "{rules}");
    std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
    promtool(dir.path(), &["check", "rules", "rules.yml"]);
}
