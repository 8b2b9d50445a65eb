//! Scenario files parse, and a short scenario shows its fault in what the gateway measures.

use std::time::Duration;

use candor::scenario::{self, Scenario};

use crate::support::run_scenario;

#[test]
fn every_shipped_scenario_parses_and_fits_in_two_minutes() {
    // The demo loops for a day; the routing benchmark runs four minutes per policy; the
    // quality tour runs its five faults one after another.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let s = Scenario::load(&path).unwrap();
        if !["demo", "routing", "quality"].contains(&s.name.as_str()) {
            assert!(
                s.duration <= Duration::from_secs(120),
                "{} runs too long",
                s.name
            );
            assert!(
                s.name == "clean" || !s.fault_windows().is_empty(),
                "{} injects nothing",
                s.name
            );
        }
        names.push(s.name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cascading-timeouts",
            "clean",
            "deadlock",
            "demo",
            "hardware-slowdown",
            "kv-thrashing",
            "quality",
            "routing"
        ]
    );
    let demo = Scenario::parse(scenario::DEMO).unwrap();
    let kinds: Vec<String> = demo.fault_windows().into_iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            "slowdown",
            "kv_pressure",
            "deadlock",
            "temperature_drift",
            "dependency_slow"
        ]
    );
}

#[tokio::test]
async fn a_slowdown_shows_in_the_gateway_decode_rate() {
    let s = Scenario::parse(
        r#"
name = "short-slowdown"
duration = "24s"
[gateway.health]
min_requests = 5
[gateway.routing]
policy = "round_robin"
[load]
trace = "azure-conv"
speedup = 2.0
prompt_scale = 0.2
max_output_tokens = 48
[[providers]]
id = "steady"
[providers.profile]
engine = { decode_step = "8ms", decode_step_per_seq = "200us" }
[[providers]]
id = "slowed"
[providers.profile]
engine = { decode_step = "8ms", decode_step_per_seq = "200us" }
faults = [{ at = "8s", kind = "slowdown", factor = 0.5 }]
"#,
    )
    .unwrap();
    let (report, _) = run_scenario(&s, Duration::from_secs(1)).await;
    assert!(report.load.requests > 30, "{:?}", report.load);
    assert_eq!(
        report.load.errors.values().sum::<u64>(),
        0,
        "{:?}",
        report.load.errors
    );
    // Per-sample decode rate of the slowed provider, early vs late (1-minute windows
    // lag, so compare the first samples with the last).
    let rate = |id: &str, from: f64, to: f64| {
        let v: Vec<f64> = report
            .samples
            .iter()
            .filter(|x| x.t_s >= from && x.t_s <= to)
            .filter_map(|x| x.providers.iter().find(|p| p.id == id)?.decode_p50)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let before = rate("slowed", 3.0, 8.0);
    let after = rate("slowed", 21.0, 24.0);
    assert!(
        before > 0.0 && after < before * 0.85,
        "decode {before:.0} → {after:.0}"
    );
    let steady = rate("steady", 21.0, 24.0);
    assert!(
        after < steady * 0.85,
        "slowed {after:.0} vs steady {steady:.0}"
    );
    let text = report.table();
    assert!(
        text.contains("slowdown") && text.contains("slowed"),
        "{text}"
    );
}
