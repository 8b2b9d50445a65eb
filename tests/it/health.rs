//! `/health` judges performance against the targets; `/metrics` is valid Prometheus text.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

async fn health(gw: &TestGateway) -> (u16, Value) {
    let resp = gw.get("/health").await;
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn drive(gw: &TestGateway, n: usize) {
    for i in 0..n {
        let resp = gw.chat(i % 2 == 0).await;
        resp.bytes().await.unwrap();
    }
}

#[tokio::test]
async fn health_reports_measurements_and_stays_200_within_bounds() {
    let mock = spawn_mock(Script::words(5)).await;
    let mut gw = TestGateway::start(&[&mock], "[health]\nmin_requests = 5\n").await;
    let (s, v) = health(&gw).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["overall"]["note"].is_string(),
        "no traffic yet must be said"
    );
    drive(&gw, 10).await;
    let (s, v) = health(&gw).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["verdict"], "within_bounds");
    let one = &v["overall"]["1m"];
    assert_eq!(one["requests"], 10);
    assert_eq!(one["within_targets_share"], 1.0);
    assert!(one["e2e_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(one["ttft_ms"]["p99"].as_f64().is_some());
    let p = &v["providers"][0];
    assert_eq!(p["id"], "p0");
    assert_eq!(p["1m"]["requests"], 10);
    assert!(p["1m"]["decode_tokens_per_s_p50"].as_f64().unwrap() > 0.0);
    assert_eq!(p["in_flight"], 0);
    assert_eq!(v["targets"]["ttft_ms"], 2000.0);
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let live = gw.get("/livez").await;
    assert_eq!(live.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn slow_first_tokens_breach_the_bound_and_answer_503() {
    let mock = spawn_mock(Script::Tokens {
        tokens: vec!["a".into(), "b".into()],
        first_delay: Duration::from_millis(120),
        gap: Duration::from_millis(1),
    })
    .await;
    let mut gw = TestGateway::start(
        &[&mock],
        "[targets]\nttft = \"50ms\"\n[health]\nmin_requests = 3\n",
    )
    .await;
    for _ in 0..4 {
        gw.chat(true).await.bytes().await.unwrap();
    }
    let (s, v) = health(&gw).await;
    assert_eq!(s, 503, "{v}");
    assert_ne!(v["verdict"], "within_bounds");
    let breached = v["overall"]["breached"].as_array().unwrap();
    assert!(
        breached
            .iter()
            .any(|b| b["bound"] == "ttft_p95_ms" && b["limit"] == 50.0)
    );
    gw.stop().await;
}

#[tokio::test]
async fn dead_provider_makes_readyz_fail() {
    let bad = spawn_mock(Script::Status {
        code: 500,
        body: "x".into(),
    })
    .await;
    let mut gw = TestGateway::start(&[&bad], "[health]\nmin_requests = 3\n").await;
    drive(&gw, 4).await;
    let (s, v) = health(&gw).await;
    assert_eq!(s, 503);
    assert_eq!(v["verdict"], "failing");
    assert_eq!(v["providers"][0]["verdict"], "failing");
    let ready = gw.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    gw.stop().await;
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_traffic() {
    let mock = spawn_mock(Script::words(4)).await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    drive(&gw, 4).await;
    let text = gw.get("/metrics").await.text().await.unwrap();
    for name in [
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_count",
        "gen_ai_client_operation_time_per_output_chunk_seconds_count",
        "candor_decode_tokens_per_second_count",
        "candor_in_flight_requests{provider=\"p0\"} 0",
        "candor_request_log_dropped_total 0",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(text.contains(
        "candor_requests_total{provider=\"p0\",gen_ai_request_model=\"m\",outcome=\"ok\"} 4"
    ));
    assert!(text.contains("gen_ai_token_type=\"output\"} 16"), "{text}");
    // 2 streamed requests × 4 tokens → 3 gaps each.
    assert!(text.contains("gen_ai_client_operation_time_per_output_chunk_seconds_count{provider=\"p0\",gen_ai_request_model=\"m\",gen_ai_operation_name=\"chat\"} 6"), "{text}");

    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool (Debian package prometheus) must be installed: `scripts/test` installs it",
        );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    gw.stop().await;
}

#[tokio::test]
async fn admin_api_needs_the_token_and_serves_the_log() {
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(&[&mock], "admin_token_env = \"TEST_ADMIN_TOKEN\"\n").await;
    drive(&gw, 2).await;
    gw.rows(2).await;
    for path in [
        "/api/requests",
        "/api/health",
        "/api/providers",
        "/api/series",
        "/api/incidents",
    ] {
        let r = gw
            .http
            .get(format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = gw
            .http
            .get(format!("{}{path}", gw.url))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let rows: Vec<Value> = gw
        .admin("/api/requests?status=ok&provider=p0&since=5m")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let id = rows[0]["request_id"].as_str().unwrap();
    let one: Value = gw
        .admin(&format!("/api/requests/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["request_id"], id);
    assert_eq!(one["attempts"][0]["provider"], "p0");
    let bad = gw.admin("/api/requests?status=7xx").await;
    assert_eq!(bad.status(), 400);
    // The dashboard's history: what the two requests did, per provider and overall.
    let series: Value = gw.admin("/api/series?span=5m").await.json().await.unwrap();
    assert_eq!(series["slot_s"], 5.0);
    let sum = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum(&series["overall"]["completed"]), 2);
    assert_eq!(series["providers"][0]["id"], "p0");
    assert_eq!(sum(&series["providers"][0]["requests"]), 2);
    let cost: f64 = series["overall"]["cost_usd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_f64().unwrap())
        .sum();
    assert!(cost > 0.0, "{series}");
    assert_eq!(
        series["t_unix_ms"].as_array().unwrap().len(),
        series["overall"]["requests"].as_array().unwrap().len()
    );
    let bad = gw.admin("/api/series?span=2d").await;
    assert_eq!(bad.status(), 400);
    gw.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_without_the_token() {
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(&[&mock], "admin_token_env = \"TEST_ADMIN_TOKEN\"\n").await;
    let page = gw.get("/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/dashboard.js") && html.contains("/assets/uPlot.iife.min.js"));
    // Every asset the page names is served; nothing comes from another origin.
    for asset in [
        "dashboard.js",
        "dashboard.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ] {
        let r = gw.get(&format!("/assets/{asset}")).await;
        assert_eq!(r.status(), 200, "{asset}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("https://cdn"), "{asset}");
        assert!(!body.contains(ADMIN_TOKEN), "{asset}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    let missing = gw.get("/assets/nope.js").await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope.js")
    );
    gw.stop().await;
}
