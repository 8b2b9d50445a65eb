//! Alerts reach real local HTTP receivers — generic webhook, Slack-compatible, PagerDuty
//! Events v2 — with the incident's name, evidence and a dashboard link, and resolve; the
//! incident API, triage and `/metrics` agree; no secret leaks into any of them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{ADMIN_TOKEN, Script, TestGateway, eventually, spawn_mock};

type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A receiver on loopback recording every POST body by path.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let app =
        Router::new()
            .route(
                "/{sink}",
                post(
                    |State(got): State<Received>,
                     Path(sink): Path<String>,
                     body: axum::Json<Value>| async move {
                        got.lock().unwrap().push((sink, body.0));
                        "ok"
                    },
                ),
            )
            .with_state(Arc::clone(&got));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

fn bodies(got: &Received, sink: &str) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| s == sink)
        .map(|(_, b)| b.clone())
        .collect()
}

/// Sends requests until `done` holds or `limit` passes.
async fn drive(gw: &TestGateway, limit: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        let _ = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .json(
                &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await;
    }
}

#[tokio::test]
async fn an_error_burst_alerts_every_sink_with_evidence_and_resolves() {
    let (hooks, got) = receiver().await;
    let bad = spawn_mock(Script::Status {
        code: 503,
        body: r#"{"error":{"message":"overloaded"}}"#.into(),
    })
    .await;
    let good = spawn_mock(Script::words(4)).await;
    let extra = format!(
        r#"[server]
admin_token_env = "TEST_ADMIN_TOKEN"
[routing]
base_ejection = "1s"
max_ejection = "2s"
[alerts]
resolve_after = "1s"
dashboard_url = "http://dash.example:8080/"
[[alerts.sinks]]
kind = "webhook"
url = "{hooks}/webhook"
[[alerts.sinks]]
kind = "slack"
url = "{hooks}/slack"
[[alerts.sinks]]
kind = "pagerduty"
url = "{hooks}/pagerduty"
routing_key_env = "TEST_PROVIDER_KEY"
"#
    );
    // The support gateway writes its own [server] table: fold ours into it.
    let extra = extra.replacen("[server]\n", "", 1);
    let mut gw = TestGateway::start(&[&bad, &good], &extra).await;

    let fired = |sink: &str| {
        bodies(&got, sink).into_iter().any(|b| match sink {
            "pagerduty" => b["event_action"] == "trigger",
            "slack" => b["text"].as_str().is_some_and(|t| t.contains("FIRING")),
            _ => b["status"] == "firing",
        })
    };
    drive(&gw, Duration::from_secs(20), || {
        ["webhook", "slack", "pagerduty"].iter().all(|s| fired(s))
    })
    .await;

    let hook = bodies(&got, "webhook")
        .into_iter()
        .find(|b| b["status"] == "firing")
        .unwrap();
    let incident = &hook["incident"];
    assert_eq!(incident["subject"], "p0", "{hook:#}");
    assert!(
        ["error_burst", "connection_failures"].contains(&incident["mode"].as_str().unwrap()),
        "{hook:#}"
    );
    assert!(!incident["evidence"]["facts"].as_array().unwrap().is_empty());
    let link = hook["link"].as_str().unwrap();
    assert!(
        link.starts_with("http://dash.example:8080/#incident="),
        "{link}"
    );
    let slack = bodies(&got, "slack")[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        slack.contains("p0") && slack.contains("Open in Candor"),
        "{slack}"
    );
    let pd = bodies(&got, "pagerduty")
        .into_iter()
        .find(|b| b["event_action"] == "trigger")
        .unwrap();
    assert_eq!(pd["routing_key"], crate::support::PROVIDER_KEY);
    assert_eq!(pd["payload"]["source"], "candor");
    let dedup = pd["dedup_key"].as_str().unwrap().to_owned();

    // While open: /metrics counts it, /api/incidents and /api/triage name it.
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("candor_open_incidents{mode=\"error_burst\",provider=\"p0\"} 1")
            || metrics
                .contains("candor_open_incidents{mode=\"connection_failures\",provider=\"p0\"} 1"),
        "{metrics}"
    );
    let api = |path: &str| {
        gw.http
            .get(format!("{}{path}", gw.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let unauth = gw
        .http
        .get(format!("{}/api/incidents", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let triage: Value = api("/api/triage").await.unwrap().json().await.unwrap();
    assert!(triage["exit_code"].as_u64().unwrap() >= 1, "{triage:#}");
    assert!(
        triage["diagnosis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["subject"] == "p0"),
        "{triage:#}"
    );

    // `candor triage` walks the runbook against the running gateway and exits 2 (failing).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(["triage", "--url", &gw.url])
        .env("CANDOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Step 1") && text.contains("Step 4"), "{text}");
    assert!(text.contains("Diagnosis:") && text.contains("p0"), "{text}");

    // The provider recovers: the incident resolves and every sink hears of it.
    bad.set(Script::words(4));
    let resolved = |sink: &str| {
        bodies(&got, sink).into_iter().any(|b| match sink {
            "pagerduty" => b["event_action"] == "resolve" && b["dedup_key"] == dedup.as_str(),
            "slack" => b["text"].as_str().is_some_and(|t| t.contains("RESOLVED")),
            _ => b["status"] == "resolved",
        })
    };
    drive(&gw, Duration::from_secs(30), || {
        ["webhook", "slack", "pagerduty"]
            .iter()
            .all(|s| resolved(s))
    })
    .await;

    // The request log stores incidents from its own writer, in batches, so the sinks can
    // hear of the resolution a moment before the stored row says so.
    let (list, stored) = eventually("the stored incident to say resolved", || async {
        let list: Value = api("/api/incidents?history=true")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let stored = list
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == incident["id"])
            .expect("the incident is stored")
            .clone();
        (stored["state"] == "resolved").then_some((list, stored))
    })
    .await;
    assert_eq!(stored["state"], "resolved");
    let kinds: Vec<&str> = stored["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"opened"));
    assert_eq!(kinds.last(), Some(&"resolved"));
    let one: Value = api(&format!(
        "/api/incidents/{}",
        incident["id"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(one["id"], incident["id"]);

    // No secret in what the admin API, triage or the alert bodies (other than PagerDuty's
    // routing key, which is its address) carry.
    let everything = format!(
        "{list}{triage}{}{}",
        serde_json::to_string(&bodies(&got, "webhook")).unwrap(),
        serde_json::to_string(&bodies(&got, "slack")).unwrap(),
    );
    for secret in [
        crate::support::PROVIDER_KEY,
        crate::support::ADMIN_TOKEN,
        crate::support::CLIENT_KEY,
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    gw.stop().await;
}
