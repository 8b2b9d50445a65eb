//! Each failure mode's scenario, in compressed time, opens an incident with the right name
//! and provider within its bound and resolves it after the fault is removed; clean traffic
//! and a 20-minute (compressed) replay of a real trace open none.
//!
//! Every scenario runs in virtual time (`start_paused`): the simulators, the gateway and the
//! load share one paused clock that jumps to the next timer whenever every task waits, so a
//! two-minute scenario takes seconds, a busy machine cannot slow a provider down, and a run
//! is the same every time.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use std::time::Duration;

use candor::incident::Incident;
use candor::observation::unix_ms_now;
use candor::request_log::{IncidentFilter, Store};
use candor::scenario::{self, Scenario};

/// What the gateway's incident log says about a run, with the fault timeline's origin.
struct Run {
    incidents: Vec<Incident>,
    origin_ms: i64,
}

impl Run {
    fn of(&self, mode: &str, subject: &str) -> Vec<&Incident> {
        self.incidents
            .iter()
            .filter(|i| i.mode == mode && i.subject == subject)
            .collect()
    }

    /// Checks that no other subject has an incident of `mode`.
    fn only_on(&self, mode: &str, subject: &str) {
        assert!(
            self.incidents
                .iter()
                .all(|i| i.mode != mode || i.subject == subject),
            "{mode} elsewhere than {subject}: {:#?}",
            self.incidents
        );
    }

    /// The one incident of `mode` on `subject`, checked to have opened within `bound` of
    /// `fault_at` and resolved after `fault_end`.
    fn named(
        &self,
        mode: &str,
        subject: &str,
        fault_at: u64,
        fault_end: u64,
        bound: u64,
    ) -> &Incident {
        let found = self.of(mode, subject);
        assert!(
            !found.is_empty(),
            "no {mode} incident on {subject}; incidents: {:#?}",
            self.incidents
        );
        let i = found[found.len() - 1];
        let fault_ms = self.origin_ms + i64::try_from(fault_at * 1000).unwrap();
        let took = i.opened_ms - fault_ms;
        assert!(
            took <= i64::try_from(bound * 1000).unwrap(),
            "{mode} named {took} ms after the fault; bound {bound} s"
        );
        assert!(i.onset_ms <= i.opened_ms, "onset precedes the alarm");
        assert!(
            i.onset_ms >= fault_ms - 2_000,
            "onset {} ms before the fault: {i:#?}",
            fault_ms - i.onset_ms
        );
        let resolved = i
            .resolved_ms
            .unwrap_or_else(|| panic!("{mode} on {subject} never resolved: {i:#?}"));
        assert!(resolved > self.origin_ms + i64::try_from(fault_end * 1000).unwrap());
        assert!(i.history.iter().any(|h| h.kind == "opened"));
        assert!(i.history.iter().any(|h| h.kind == "resolved"));
        assert!(
            i.evidence["facts"]
                .as_array()
                .is_some_and(|f| !f.is_empty()),
            "evidence: {}",
            i.evidence
        );
        i
    }
}

/// Runs `s` to its end and reads every incident (with history) from the request log.
async fn run(s: &Scenario) -> Run {
    let started = scenario::start(s, 0).await.unwrap();
    let origin_ms = unix_ms_now() - i64::try_from(started.started.elapsed().as_millis()).unwrap();
    scenario::run(
        s,
        &started,
        Duration::from_secs(1),
        tokio_util::sync::CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    // The writer stores incident events as they arrive; the health report is the live
    // truth for anything still in flight, so wait until both agree.
    let db = started.dir.path().join("candor.db");
    let filter = IncidentFilter {
        history: true,
        ..IncidentFilter::default()
    };
    let live = started
        .gateway
        .gateway
        .health
        .report()
        .await
        .unwrap()
        .incidents;
    let mut incidents = Vec::new();
    for _ in 0..100 {
        incidents = Store::open_read_only(&db)
            .unwrap()
            .incidents(&filter, unix_ms_now())
            .unwrap();
        if live.iter().all(|l| incidents.iter().any(|i| i.id == l.id)) {
            break;
        }
        tokio::task::yield_now().await;
    }
    started.stop().await.unwrap();
    Run {
        incidents,
        origin_ms,
    }
}

/// Gateway settings every incident scenario shares: targets, short ejections (so recovery
/// fits the run) and a short quiet spell before an incident resolves.
const GATEWAY: &str = r#"
[gateway.timeouts]
ttft = "5s"
idle = "5s"
total = "60s"
[gateway.targets]
ttft = "2s"
decode_tokens_per_s = 20.0
e2e = "20s"
[gateway.health]
min_requests = 10
[gateway.routing]
base_ejection = "5s"
max_ejection = "10s"
[gateway.alerts]
resolve_after = "10s"
# Canaries every 2 s (the temperature probe every time), real traffic judged over 20 s.
[gateway.canaries]
interval = "2s"
temperature_every = 1
traffic_window = "20s"
[load]
trace = "azure-conv"
speedup = 2.0
prompt_scale = 0.5
max_prompt_tokens = 2048
max_output_tokens = 128
"#;

fn provider(id: &str, step: &str, faults: &str) -> String {
    format!(
        "[[providers]]\nid = \"{id}\"\n[providers.profile]\nengine = {{ slots = 32, kv_capacity_tokens = 100000, prefill_tokens_per_s = 12000.0, decode_step = \"{step}\", decode_step_per_seq = \"300us\" }}\nfaults = [{faults}]\n"
    )
}

fn scenario(name: &str, duration: &str, extra: &str, providers: &[String]) -> Scenario {
    let text = format!(
        "name = \"{name}\"\nduration = \"{duration}\"\n{GATEWAY}\n{extra}\n{}",
        providers.concat()
    );
    Scenario::parse(&text).unwrap()
}

fn quiet(id: &str) -> String {
    provider(id, "10ms", "")
}

#[tokio::test(start_paused = true)]
async fn a_deadlock_is_named_within_15_s_and_resolves_after_recovery() {
    let s = scenario(
        "deadlock",
        "75s",
        "",
        &[
            quiet("sim-a"),
            quiet("sim-b"),
            provider(
                "sim-c",
                "10ms",
                r#"{ at = "15s", duration = "30s", kind = "deadlock" }"#,
            ),
        ],
    );
    let r = run(&s).await;
    let i = r.named("batch_queue_deadlock", "sim-c", 15, 45, 15);
    assert_eq!(i.severity, "critical");
    assert!(i.summary.contains("still answers 200"), "{}", i.summary);
    for other in ["sim-a", "sim-b"] {
        assert!(
            r.incidents
                .iter()
                .all(|i| i.provider.as_deref() != Some(other)),
            "{other} is healthy: {:#?}",
            r.incidents
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_0_6x_slowdown_is_hardware_degradation_within_60_s() {
    // The fault starts at 25 s: a provider is judged against its own baseline, which needs
    // some healthy traffic at its load first.
    let s = scenario(
        "slowdown",
        "105s",
        "",
        &[
            quiet("sim-a"),
            provider(
                "sim-b",
                "10ms",
                r#"{ at = "25s", duration = "40s", kind = "slowdown", factor = 0.6 }"#,
            ),
            quiet("sim-c"),
        ],
    );
    let r = run(&s).await;
    let i = r.named("hardware_degradation", "sim-b", 25, 65, 60);
    let facts = i.evidence["facts"].as_array().unwrap();
    let decode = facts
        .iter()
        .find(|f| f["signal"] == "decode_tokens_per_s")
        .expect("the decode rate is in the evidence");
    assert!(decode["baseline"].as_f64().unwrap() > decode["value"].as_f64().unwrap());
    r.only_on("hardware_degradation", "sim-b");
}

#[tokio::test(start_paused = true)]
async fn kv_pressure_is_kv_thrashing_within_60_s() {
    // The fault starts at 25 s, once the provider's ordinary tails are learned; 98 % of the
    // cache is lost (at 96 % this part of the trace barely queues: P99 TTFT 0.7 s, within
    // the targets, and the detector rightly stays unsure).
    let s = scenario(
        "kv",
        "130s",
        "",
        &[
            provider(
                "sim-a",
                "10ms",
                r#"{ at = "25s", duration = "35s", kind = "kv_pressure", factor = 0.02 }"#,
            ),
            quiet("sim-b"),
            quiet("sim-c"),
        ],
    );
    let r = run(&s).await;
    r.named("kv_cache_thrashing", "sim-a", 25, 60, 60);
    r.only_on("kv_cache_thrashing", "sim-a");
}

#[tokio::test(start_paused = true)]
async fn a_slow_vector_db_is_named_as_the_root_cause_of_cascading_timeouts() {
    let s = scenario(
        "cascade",
        "80s",
        r#"
[dependency]
median_latency = "15ms"
deadline = "4s"
faults = [{ at = "15s", duration = "30s", kind = "dependency_slow", factor = 100.0 }]
"#,
        &[quiet("sim-a"), quiet("sim-b")],
    );
    let r = run(&s).await;
    let i = r.named("cascading_timeouts", "gateway", 15, 45, 30);
    let root = &i.evidence["root_cause"];
    assert_eq!(root["component"], "vector-db", "{i:#?}");
    assert!(root["lead_s"].as_f64().unwrap() >= 0.0);
    assert!(i.summary.contains("vector-db"), "{}", i.summary);
    // The providers are healthy: no provider incident.
    assert!(
        r.incidents.iter().all(|i| i.provider.is_none()),
        "{:#?}",
        r.incidents
    );
}

#[tokio::test(start_paused = true)]
async fn each_quality_fault_is_named_by_its_signal_within_three_canary_intervals() {
    // Five providers each get one quality fault at 20 s for 20 s; two stay clean. The trace
    // runs at 1x: degraded providers get almost no traffic, so the clean ones take it all
    // (at 2x one clean provider took six times its load, and its decode rate fell with the
    // batch size against a baseline learned at a lighter load in the same bucket).
    let faults = [
        (
            "q-temp",
            r#"kind = "temperature_drift""#,
            "output_diversity",
        ),
        (
            "q-trunc",
            r#"kind = "prompt_truncation", keep_tokens = 64"#,
            "truncated_prompt",
        ),
        ("q-json", r#"kind = "broken_json""#, "invalid_json"),
        (
            "q-script",
            r#"kind = "foreign_script""#,
            "unexpected_script",
        ),
        ("q-rep", r#"kind = "repetition""#, "repetition"),
    ];
    let clean = ["q-clean-1", "q-clean-2"];
    let mut providers: Vec<String> = clean.iter().map(|id| quiet(id)).collect();
    for (id, fault, _) in faults {
        providers.push(provider(
            id,
            "10ms",
            &format!(r#"{{ at = "20s", duration = "20s", {fault} }}"#),
        ));
    }
    let text = format!(
        "name = \"quality\"\nduration = \"80s\"\n{}\n{}",
        GATEWAY.replace("speedup = 2.0", "speedup = 1.0"),
        providers.concat()
    );
    let s = Scenario::parse(&text).unwrap();
    let r = run(&s).await;
    for (id, _, signal) in faults {
        // Three canary intervals of 2 s.
        let i = r.named("silent_quality_degradation", id, 20, 40, 6);
        let facts = i.evidence["facts"].as_array().unwrap();
        assert!(
            facts.iter().any(|f| f["signal"] == signal),
            "{id}: expected {signal} in {:#}",
            i.evidence
        );
        assert!(i.summary.contains("degraded output"), "{}", i.summary);
    }
    assert!(
        r.incidents
            .iter()
            .all(|i| !clean.contains(&i.provider.as_deref().unwrap_or_default())),
        "the clean providers are clean: {:#?}",
        r.incidents
    );
    assert!(
        r.incidents
            .iter()
            .all(|i| i.mode == "silent_quality_degradation"),
        "quality faults are not other failures: {:#?}",
        r.incidents
    );
}

#[tokio::test(start_paused = true)]
async fn clean_traffic_opens_no_incident() {
    let s = scenario(
        "clean",
        "60s",
        "",
        &[
            quiet("sim-a"),
            provider("sim-b", "12ms", ""),
            provider("sim-c", "14ms", ""),
        ],
    );
    let r = run(&s).await;
    assert!(r.incidents.is_empty(), "{:#?}", r.incidents);
}

#[tokio::test(start_paused = true)]
async fn a_20_minute_replay_of_a_real_trace_opens_no_incident() {
    // Twenty minutes of the Azure conversation trace at 8x: 150 s.
    let text = r#"
name = "replay"
duration = "150s"
[gateway.targets]
ttft = "2s"
decode_tokens_per_s = 20.0
e2e = "20s"
[gateway.health]
min_requests = 10
[gateway.canaries]
interval = "5s"
[load]
trace = "azure-conv"
speedup = 8.0
prompt_scale = 0.25
max_prompt_tokens = 1024
max_output_tokens = 32
"#
    .to_owned()
        + &[
            provider("sim-a", "8ms", ""),
            provider("sim-b", "9ms", ""),
            provider("sim-c", "10ms", ""),
        ]
        .concat();
    let s = Scenario::parse(&text).unwrap();
    let r = run(&s).await;
    assert!(r.incidents.is_empty(), "{:#?}", r.incidents);
}

/// A provider with `slots` sequence slots.
fn sized(id: &str, step: &str, slots: u32, faults: &str) -> String {
    provider(id, step, faults).replace("slots = 32", &format!("slots = {slots}"))
}

/// `s` with its trace replayed `speedup` times faster and answers up to 256 tokens long.
fn loaded(mut s: Scenario, speedup: f64) -> Scenario {
    s.load.speedup = speedup;
    s.load.max_output_tokens = 256;
    s
}

/// Only `allowed` modes opened, and none on a provider outside `on`.
fn nothing_else(r: &Run, allowed: &[&str], on: &[&str]) {
    for i in &r.incidents {
        assert!(
            allowed.contains(&i.mode.as_str()),
            "unexpected {} on {}: {:#?}",
            i.mode,
            i.subject,
            r.incidents
        );
        if let Some(p) = &i.provider {
            assert!(on.contains(&p.as_str()), "{} on {p}: {i:#?}", i.mode);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_overload_is_one_capacity_incident_and_no_provider_fault() {
    // Three healthy 16-slot providers under three times the load they can carry: a third of
    // the requests time out. The truth is one condition of the model. The run starts
    // overloaded, so each provider learns its time per token in the first seconds under a
    // different queue; what keeps one later judged 40 % below it from being called slowed is
    // its decode step (its quickest token gaps), as quick as the batch it runs costs.
    let s = scenario(
        "overload",
        "80s",
        "",
        &[
            sized("sim-a", "10ms", 16, ""),
            sized("sim-b", "12ms", 16, ""),
            sized("sim-c", "14ms", 16, ""),
        ],
    );
    let s = loaded(s, 6.0);
    let r = run(&s).await;
    let over = r.of("capacity_exhausted", "llama-3.1-8b");
    assert_eq!(over.len(), 1, "{:#?}", r.incidents);
    assert!(
        over[0].summary.contains("over capacity"),
        "{}",
        over[0].summary
    );
    nothing_else(
        &r,
        &["capacity_exhausted", "slo_burn", "completions_drop"],
        &[],
    );
}

#[tokio::test(start_paused = true)]
async fn the_demos_slowdown_is_named_where_it_is_not_where_the_traffic_went() {
    // The shipped demo's first 95 s: mid-b slows to 0.6x from 30 s to 90 s; the router moves
    // its traffic onto fast-a, whose per-stream decode drops with the extra load. Only mid-b
    // is slow; slow-c is slower by design.
    let mut s = Scenario::parse(include_str!("../scenarios/demo.toml")).unwrap();
    s.duration = Duration::from_secs(95);
    let r = run(&s).await;
    let found = r.of("hardware_degradation", "mid-b");
    assert_eq!(found.len(), 1, "{:#?}", r.incidents);
    let opened_s = (found[0].opened_ms - r.origin_ms) / 1000;
    assert!((30..=60).contains(&opened_s), "named at {opened_s} s");
    nothing_else(&r, &["hardware_degradation"], &["mid-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_deadlock_during_a_burst_is_one_incident_on_the_hung_provider() {
    // Four 16-slot providers near their capacity; the first hangs from 25 s to 50 s and the
    // other three carry its share. They are loaded, not broken.
    let s = scenario(
        "burst-deadlock",
        "95s",
        "",
        &[
            sized(
                "sim-a",
                "10ms",
                16,
                r#"{ at = "25s", duration = "25s", kind = "deadlock" }"#,
            ),
            sized("sim-b", "12ms", 16, ""),
            sized("sim-c", "14ms", 16, ""),
            sized("sim-d", "11ms", 16, ""),
        ],
    );
    let s = loaded(s, 2.5);
    let r = run(&s).await;
    r.named("batch_queue_deadlock", "sim-a", 25, 50, 15);
    nothing_else(
        &r,
        &["batch_queue_deadlock", "capacity_exhausted", "slo_burn"],
        &["sim-a"],
    );
}

#[tokio::test(start_paused = true)]
async fn a_fifth_of_requests_three_seconds_late_is_tail_latency() {
    // Medians stay healthy; P95 TTFT goes from ~0.1 s to 3 s. The finding stands while the
    // late first tokens are in the detector's 30 s window and 20 s after, so the run lasts
    // long enough to see it resolve.
    let s = scenario(
        "flaky",
        "130s",
        "",
        &[
            quiet("sim-a"),
            provider(
                "sim-b",
                "10ms",
                r#"{ at = "25s", duration = "30s", kind = "latency_spike", rate = 0.2, delay = "3s" }"#,
            ),
            quiet("sim-c"),
        ],
    );
    let r = run(&s).await;
    r.named("tail_latency", "sim-b", 25, 55, 30);
    nothing_else(&r, &["tail_latency"], &["sim-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_slowdown_creeping_in_over_a_minute_is_named_once_it_passes_25_percent() {
    // 0.95x at 30 s, then 5 % more every 15 s down to 0.75x from 90 s: the baseline must not
    // learn the drift.
    let steps: Vec<String> = [0.95, 0.9, 0.85, 0.8]
        .iter()
        .enumerate()
        .map(|(k, f)| {
            format!(
                r#"{{ at = "{}s", duration = "15s", kind = "slowdown", factor = {f} }}"#,
                30 + 15 * k
            )
        })
        .chain([r#"{ at = "90s", duration = "50s", kind = "slowdown", factor = 0.75 }"#.into()])
        .collect();
    let s = scenario(
        "gradual",
        "155s",
        "",
        &[
            quiet("sim-a"),
            provider("sim-b", "10ms", &steps.join(", ")),
            quiet("sim-c"),
        ],
    );
    let r = run(&s).await;
    // Named during the 0.75x phase at the latest (onset dated once the drift got going).
    let found = r.of("hardware_degradation", "sim-b");
    assert_eq!(found.len(), 1, "{:#?}", r.incidents);
    let opened_s = (found[0].opened_ms - r.origin_ms) / 1000;
    assert!(opened_s <= 130, "named at {opened_s} s");
    nothing_else(&r, &["hardware_degradation"], &["sim-b"]);
}

#[tokio::test(start_paused = true)]
async fn a_vector_db_ramping_up_is_named_before_any_deadline_is_missed() {
    // 3x, then 10x, then 40x (15 ms → 600 ms) against a 20 s client deadline: never enough
    // to time a client out, and named all the same, with the root cause.
    let s = scenario(
        "dependency-ramp",
        "80s",
        r#"
[dependency]
median_latency = "15ms"
deadline = "20s"
faults = [
  { at = "20s", duration = "15s", kind = "dependency_slow", factor = 3.0 },
  { at = "35s", duration = "15s", kind = "dependency_slow", factor = 10.0 },
  { at = "50s", duration = "15s", kind = "dependency_slow", factor = 40.0 },
]
"#,
        &[quiet("sim-a"), quiet("sim-b")],
    );
    let r = run(&s).await;
    let i = r.named("cascading_timeouts", "gateway", 20, 65, 25);
    assert_eq!(i.evidence["root_cause"]["component"], "vector-db", "{i:#?}");
    assert!(
        r.incidents.iter().all(|i| i.provider.is_none()),
        "{:#?}",
        r.incidents
    );
}
