//! Canaries over real HTTP: every provider is probed through the gateway's own request path,
//! the results reach `/health`, canary traffic never counts as user traffic, a broken
//! provider's canaries open a silent-quality incident that resolves once it recovers, and
//! real responses carry output descriptors in the request log.

use std::time::Duration;

use candor::app;
use serde_json::{Value, json};

use crate::support::*;

async fn sim() -> (app::Background, String) {
    start_sim("m", Duration::from_millis(2)).await
}

async fn gateway(sim_url: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[request_log]\npath = \"{}\"\nflush_interval = \"20ms\"\n\
         [canaries]\ninterval = \"1s\"\ntemperature_every = 1\n[alerts]\nresolve_after = \"2s\"\n\
         [[providers]]\nid = \"sim\"\nbase_url = \"{sim_url}/v1\"\nmodels = [\"m\"]\n",
        dir.path().join("log.db").display()
    );
    TestGateway::with_config(&text, dir).await
}

/// Polls `path` until `ok` holds (at most 20 s).
async fn until(gw: &TestGateway, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = gw.get(path).await.json().await.unwrap();
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never satisfied the condition; last: {last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_check_content_and_never_count_as_user_traffic() {
    let (bg, url) = sim().await;
    let mut gw = gateway(&url).await;
    let health = until(&gw, "/health", |v| {
        v["providers"][0]["canaries"]
            .as_array()
            .is_some_and(|c| c.len() == 5)
    })
    .await;
    for c in health["providers"][0]["canaries"].as_array().unwrap() {
        assert_eq!(c["pass"], true, "{c:#}");
        assert!(c["latency_ms"].as_f64().unwrap() > 0.0, "{c:#}");
        assert!(c["ttft_ms"].as_f64().is_some(), "{c:#}");
    }
    // No client request was made: the SLA figures and the business metric are empty.
    assert_eq!(health["overall"]["1m"]["requests"], 0, "{health:#}");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics
            .lines()
            .any(|l| (l.starts_with("candor_sli_requests_total")
                || l.starts_with("candor_requests_total"))
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "candor_canary_passing{provider=\"sim\",model=\"m\",probe=\"json_schema\"} 1"
        ),
        "{metrics}"
    );
    // …but they are in the request log, tagged, with their descriptors.
    let rows = gw.rows(5).await;
    assert!(rows.iter().all(|r| r.source == "synthetic"), "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r.client_key_id.as_deref() == Some("candor-canary"))
    );
    assert!(rows.iter().any(|r| r.quality.is_some()));

    // Broken JSON: the JSON probe fails, an incident names it.
    let http = reqwest::Client::new();
    http.post(format!("{url}/sim/faults"))
        .json(&json!({"kind": "broken_json"}))
        .send()
        .await
        .unwrap();
    let incidents = until(&gw, "/api/incidents", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["mode"] == "silent_quality_degradation" && i["state"] == "open")
        })
    })
    .await;
    let i = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["mode"] == "silent_quality_degradation")
        .unwrap();
    assert_eq!(i["provider"], "sim");
    let facts = i["evidence"]["facts"].as_array().unwrap();
    assert!(facts.iter().any(|f| f["signal"] == "invalid_json"), "{i:#}");
    // The router treats it as degraded: as little traffic as it can.
    let health = until(&gw, "/health", |v| v["providers"][0]["state"] == "degraded").await;
    assert!(
        health["providers"][0]["weight"].as_f64().unwrap() <= 0.05,
        "{health:#}"
    );
    assert!(
        health["providers"][0]["canaries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["probe"] == "json_schema" && c["pass"] == false),
        "{health:#}"
    );
    let triage: Value = gw.get("/api/triage").await.json().await.unwrap();
    assert!(
        triage["steps"][0]["conclusion"]
            .as_str()
            .unwrap()
            .contains("FM 1"),
        "{triage:#}"
    );

    // Fixed: the incident resolves.
    http.delete(format!("{url}/sim/faults"))
        .send()
        .await
        .unwrap();
    until(&gw, "/api/incidents", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().all(|i| i["state"] == "resolved"))
    })
    .await;
    gw.stop().await;
    bg.stop().await;
}

#[tokio::test]
async fn real_responses_carry_output_descriptors() {
    let (bg, url) = sim().await;
    let mut gw = gateway(&url).await;
    let body = json!({
        "model": "m",
        "stream": true,
        "max_tokens": 64,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "Return JSON with the sum of 2 + 3"}],
    });
    let resp = gw.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let row = gw.rows(1).await.remove(0);
    assert_eq!(row.source, "client");
    let q = row.quality.expect("descriptors");
    assert_eq!(q.json_valid, Some(true), "{q:?}");
    assert!(q.output_chars > 0);
    assert_eq!(q.foreign_script, 0.0);
    assert!(q.prompt_tokens_estimate.is_some() && q.prompt_tokens_reported.is_some());
    gw.stop().await;
    bg.stop().await;
}
