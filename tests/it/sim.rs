//! The simulator over real HTTP: OpenAI shapes, canary answers, vLLM metrics, and faults
//! that behave as the failure modes do.

use std::time::Duration;

use candor::app;
use futures_util::StreamExt;
use serde_json::{Value, json};

async fn sim() -> (app::Background, String) {
    crate::support::start_sim("sim", Duration::from_millis(5)).await
}

#[tokio::test]
async fn answers_like_an_openai_server_with_usage() {
    let (bg, url) = sim().await;
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "sim", "messages": [{"role": "user", "content": "What is 17 + 25?"}], "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "42");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 1);

    let schema = json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}}});
    let v: Value = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "sim", "messages": [{"role": "user", "content": "Describe a city"}], "response_format": schema}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(content.get("city").is_some() && content.get("population").is_some());

    let body = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "sim", "stream": true, "stream_options": {"include_usage": true}, "min_tokens": 5, "max_tokens": 50, "messages": [{"role": "user", "content": "tell me a story"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]");
    let usage: Value =
        serde_json::from_str(events[events.len() - 2].trim_start_matches("data: ")).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        events.len(),
        5 + 1 + 1 + 1,
        "5 tokens, finish, usage, [DONE]"
    );

    let metrics = metrics_of(&http, &url).await;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total{engine=\"0\",model_name=\"sim\"} ",
        "vllm:request_success_total{engine=\"0\",model_name=\"sim\",finished_reason=\"stop\"} 3",
        "vllm:iteration_tokens_total_count",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_count",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    bg.stop().await;
}

#[tokio::test]
async fn deadlock_stops_tokens_while_health_stays_200() {
    let (bg, url) = sim().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/sim/faults"))
        .json(&json!({"kind": "deadlock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": "sim", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the connection is accepted and headers come back"
    );
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_millis(800), body.next()).await;
    assert!(first.is_err(), "no token may come while deadlocked");
    assert_eq!(
        http.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = metrics_of(&http, &url).await;
    assert!(
        m.contains("vllm:num_requests_waiting{engine=\"0\",model_name=\"sim\"} 1"),
        "{m}"
    );
    // Clearing the fault lets the queued request finish.
    http.delete(format!("{url}/sim/faults"))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(3), body.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))));
    while body.next().await.is_some() {}
    bg.stop().await;
}

#[tokio::test]
async fn quality_and_error_faults_show_over_http() {
    let (bg, url) = sim().await;
    let http = reqwest::Client::new();
    let ask =
        |content: &str| json!({"model": "sim", "messages": [{"role": "user", "content": content}]});
    let post = |body: Value| {
        http.post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let long = format!(
        "Repeat the first word of this text: alpha {}",
        "filler ".repeat(200)
    );
    let v: Value = post(ask(&long)).await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "alpha");
    let full = v["usage"]["prompt_tokens"].as_u64().unwrap();

    http.post(format!("{url}/sim/faults"))
        .json(&json!({"kind": "prompt_truncation", "keep_tokens": 64}))
        .send()
        .await
        .unwrap();
    let v: Value = post(ask(&long)).await.unwrap().json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 64, "was {full}");
    assert_ne!(v["choices"][0]["message"]["content"], "alpha");
    http.delete(format!("{url}/sim/faults"))
        .send()
        .await
        .unwrap();

    http.post(format!("{url}/sim/faults"))
        .json(&json!({"kind": "errors", "rate": 1.0, "status": 429}))
        .send()
        .await
        .unwrap();
    let r = post(ask("hi")).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    http.delete(format!("{url}/sim/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(post(ask("hi")).await.unwrap().status(), 200);
    bg.stop().await;
}

/// The simulator's `/metrics` text.
async fn metrics_of(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
