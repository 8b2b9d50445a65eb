//! Routing end to end: deadlines forwarded and enforced, hedging, ejection with evidence,
//! and a deadlocked simulated provider taken out of rotation while scrapes feed `/health`.

use std::time::Duration;

use candor::scenario::Scenario;
use serde_json::Value;

use crate::support::{Script, TestGateway, chat, run_scenario, spawn_mock};

#[tokio::test]
async fn the_deadline_is_forwarded_recorded_and_enforced() {
    let mock = spawn_mock(Script::Tokens {
        tokens: vec!["a ".into(), "b".into()],
        first_delay: Duration::from_millis(300),
        gap: Duration::from_millis(2),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let resp = gw
        .post("/v1/chat/completions", chat(true))
        .header("x-candor-timeout-ms", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let route = resp.headers()["x-candor-route"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(route.starts_with("candor: p0"), "{route}");
    let _ = resp.bytes().await.unwrap();
    let forwarded: u64 = mock.seen()[0].headers["x-envoy-expected-rq-timeout-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(forwarded <= 5000 && forwarded > 4000, "{forwarded}");
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].deadline_ms, Some(5000));
    assert_eq!(rows[0].route_candidates.len(), 1);
    assert_eq!(rows[0].route_candidates[0].decision, "chosen");
    assert_eq!(rows[0].route_reason.as_deref(), Some(route.as_str()));

    // Once the provider is known to take ~300 ms to its first token, a 100 ms budget
    // cannot be met: 504 at once, nothing sent upstream.
    for _ in 0..5 {
        let _ = gw.chat(true).await.bytes().await.unwrap();
    }
    // Wait for the health model to publish what it measured (it does so every tick).
    let gateway = &gw.running.as_ref().unwrap().gateway;
    for _ in 0..100 {
        if gateway.snapshot.load().providers[0]
            .ttft_p50
            .is_some_and(|t| t > 0.25)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = mock.seen().len();
    let resp = gw
        .post("/v1/chat/completions", chat(true))
        .header("x-candor-timeout-ms", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("remaining deadline"),
        "{v}"
    );
    assert_eq!(mock.seen().len(), sent);

    // gRPC's form is understood too, and forwarded in Envoy's.
    let resp = gw
        .post("/v1/chat/completions", chat(true))
        .header("grpc-timeout", "3S")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    let seen = mock.seen();
    let forwarded: u64 = seen.last().unwrap().headers["x-envoy-expected-rq-timeout-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(forwarded <= 3000 && forwarded > 2000, "{forwarded}");

    let resp = gw
        .post("/v1/chat/completions", chat(true))
        .header("x-candor-timeout-ms", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    gw.stop().await;
}

#[tokio::test]
async fn a_hedge_answers_when_the_first_choice_is_slow_and_the_loser_is_cancelled() {
    let slow = spawn_mock(Script::Tokens {
        tokens: vec!["late".into()],
        first_delay: Duration::from_secs(3),
        gap: Duration::from_millis(2),
    })
    .await;
    let fast = spawn_mock(Script::words(3)).await;
    let extra = format!(
        "{}[[routing.hedge]]\nmodel = \"m\"\ndelay = \"100ms\"\nbudget = 0.5\n",
        TestGateway::IN_ORDER
    );
    let mut gw = TestGateway::start(&[&slow, &fast], &extra).await;
    let started = tokio::time::Instant::now();
    let resp = gw.chat(true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-candor-provider"], "p1");
    let body = resp.text().await.unwrap();
    assert!(body.contains("w2") && body.contains("[DONE]"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let rows = gw.rows(1).await;
    let attempts = &rows[0].attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let lost = attempts.iter().find(|a| a.provider == "p0").unwrap();
    assert_eq!(lost.outcome, "hedge_cancelled");
    let won = attempts.iter().find(|a| a.provider == "p1").unwrap();
    assert!(won.hedge && won.outcome == "ok");
    assert_eq!(rows[0].provider.as_deref(), Some("p1"));
    // The slow upstream saw its request abandoned.
    for _ in 0..250 {
        if slow.disconnects() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.disconnects(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn consecutive_failures_eject_a_provider_with_evidence() {
    let bad = spawn_mock(Script::Status {
        code: 503,
        body: r#"{"error":{"message":"overloaded"}}"#.into(),
    })
    .await;
    let good = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(&[&bad, &good], "").await;
    for _ in 0..20 {
        let resp = gw.chat(false).await;
        assert_eq!(resp.status(), 200, "failover hides the bad provider");
    }
    let providers: Value = gw.get("/api/providers").await.json().await.unwrap();
    let p0 = &providers[0]["routing"];
    assert_eq!(p0["state"], "ejected", "{p0}");
    assert_eq!(p0["evidence"][0]["signal"], "consecutive_failures");
    assert!(p0["ejected_until_unix_ms"].as_i64().unwrap() > p0["since_unix_ms"].as_i64().unwrap());
    assert_eq!(providers[1]["routing"]["state"], "healthy");
    let sent_to_bad = bad.seen().len();
    for _ in 0..5 {
        assert_eq!(gw.chat(false).await.status(), 200);
    }
    assert_eq!(bad.seen().len(), sent_to_bad, "no traffic while ejected");
    let rows = gw.rows(25).await;
    let skipped = &rows[0].route_candidates[0];
    assert_eq!(
        (skipped.provider.as_str(), skipped.decision.as_str()),
        ("p0", "skipped")
    );
    assert!(
        skipped.reason.contains("upstream failures in a row"),
        "{skipped:?}"
    );
    let health: Value = gw.get("/health").await.json().await.unwrap();
    assert_eq!(health["providers"][0]["state"], "ejected");
    assert_eq!(
        health["providers"][0]["backend"]["status"],
        "not_configured"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_deadlocked_provider_is_taken_out_and_scrapes_reach_health() {
    let s = Scenario::parse(
        r#"
name = "deadlock-routing"
duration = "14s"
[gateway.targets]
ttft = "2s"
decode_tokens_per_s = 10.0
[gateway.timeouts]
ttft = "5s"
[gateway.routing]
stall_after = "1s"
[gateway.scrape]
interval = "500ms"
[load]
trace = "azure-conv"
speedup = 2.0
prompt_scale = 0.2
max_output_tokens = 32
[[providers]]
id = "steady"
[providers.profile]
engine = { decode_step = "8ms", decode_step_per_seq = "200us" }
[[providers]]
id = "stuck"
[providers.profile]
engine = { decode_step = "8ms", decode_step_per_seq = "200us" }
faults = [{ at = "4s", kind = "deadlock" }]
"#,
    )
    .unwrap();
    let (report, health) = run_scenario(&s, Duration::from_millis(500)).await;
    let state_of = |id: &str, t: f64| {
        report
            .samples
            .iter()
            .filter(|x| x.t_s >= t)
            .filter_map(|x| x.providers.iter().find(|p| p.id == id))
            .map(|p| p.state)
            .collect::<Vec<_>>()
    };
    let late = state_of("stuck", 9.0);
    assert!(
        !late.is_empty() && late.iter().all(|s| *s == "ejected" || *s == "recovering"),
        "{late:?}"
    );
    // The steady provider takes the whole load (and the burst of requests failing over from
    // the stuck one): it may look slower than its lighter-load self for a moment, but it is
    // never taken out, and it ends healthy.
    let steady = state_of("steady", 0.0);
    assert!(
        steady.iter().all(|s| *s == "healthy" || *s == "degraded")
            && steady.last() == Some(&"healthy"),
        "{steady:?}"
    );
    assert_eq!(
        report.load.errors.values().sum::<u64>(),
        0,
        "{:?}",
        report.load.errors
    );
    // Requests caught waiting on the stuck provider are abandoned when it is ejected and
    // fail over, instead of waiting out the 5 s TTFT timeout.
    let p99 = report.load.ttft_ms.p99.unwrap();
    assert!(p99 < 4000.0, "TTFT P99 {p99:.0} ms");
    let steady = &health.providers[0];
    assert_eq!(steady.backend.status, "ok");
    let b = steady.backend.metrics.as_ref().unwrap();
    assert_eq!(b.reading.engine, Some("vllm"));
    assert!(b.reading.kv_usage.is_some() && b.reading.queue.is_some());
}
