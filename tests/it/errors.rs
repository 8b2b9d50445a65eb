//! Bad input and dead upstreams get OpenAI-shaped errors with the right status.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("x-candor-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
    assert!(v["error"]["type"].is_string());
    (status, v)
}

#[tokio::test]
async fn bad_requests_are_refused_clearly() {
    let mock = spawn_mock(Script::words(1)).await;
    let mut gw = TestGateway::start(&[&mock], "max_body_bytes = 2048\n").await;
    let url = format!("{}/v1/chat/completions", gw.url);

    let (s, v) = error_of(gw.http.post(&url).body("{not json").send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "invalid_request");

    let (s, v) = error_of(
        gw.post("/v1/chat/completions", json!({"messages": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "model");

    let (s, v) = error_of(
        gw.post("/v1/chat/completions", json!({"model": "nope"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Served models: m")
    );

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let (s, v) = error_of(gw.post("/v1/chat/completions", big).send().await.unwrap()).await;
    assert_eq!(s, 413);
    assert_eq!(v["error"]["code"], "request_too_large");

    // Chunked upload with no Content-Length: the limit still holds.
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 500]))),
    );
    let resp = gw
        .http
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 413);

    let (s, _) = error_of(gw.get("/v1/nothing").await).await;
    assert_eq!(s, 404);
    assert!(mock.seen().is_empty(), "nothing bad may reach the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn all_providers_down_is_502_with_every_attempt() {
    let a = spawn_mock(Script::Status {
        code: 500,
        body: "boom".into(),
    })
    .await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let b = Mock {
        url: dead_url,
        state: a.state.clone(),
    };
    let mut gw = TestGateway::start(&[&a, &b], TestGateway::IN_ORDER).await;
    let (s, v) = error_of(gw.chat(true).await).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"]["code"], "all_attempts_failed");
    let attempts = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["provider"], "p0");
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[1]["kind"], "connect");
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].status, 502);
    assert_eq!(rows[0].attempts.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn every_attempt_timing_out_is_504() {
    let hung = spawn_mock(Script::Hang).await;
    let mut gw = TestGateway::start(
        &[&hung],
        "[timeouts]\nttft = \"200ms\"\nidle = \"200ms\"\ntotal = \"400ms\"\n",
    )
    .await;
    let (s, v) = error_of(gw.chat(true).await).await;
    assert_eq!(s, 504);
    assert_eq!(v["error"]["code"], "upstream_timeout");
    let (s, _) = error_of(gw.chat(false).await).await;
    assert_eq!(s, 504);
    gw.stop().await;
}

#[tokio::test]
async fn upstream_garbage_is_an_upstream_failure_not_a_crash() {
    let mock = spawn_mock(Script::Status {
        code: 200,
        body: "\u{0}\u{1}not json at all".into(),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    // Non-streamed garbage with a 2xx is passed through as the provider sent it.
    let resp = gw.chat(false).await;
    assert_eq!(resp.status(), 200);
    // Streamed request answered with a non-SSE body: passed through too, and metered.
    let resp = gw.chat(true).await;
    assert_eq!(resp.status(), 200);
    let rows = gw.rows(2).await;
    assert!(rows.iter().all(|r| r.completion_tokens.is_none()));
    gw.stop().await;
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_shed_with_a_503_and_none_hangs() {
    // Two slow streams take both slots; the third request is answered at once.
    let mock = spawn_mock(Script::Tokens {
        tokens: (0..20).map(|i| format!("w{i} ")).collect(),
        first_delay: Duration::from_millis(5),
        gap: Duration::from_millis(40),
    })
    .await;
    let gw = TestGateway::start(&[&mock], "max_in_flight = 2\n").await;
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let a = gw
        .post("/v1/chat/completions", stream.clone())
        .send()
        .await
        .unwrap();
    let b = gw
        .post("/v1/chat/completions", stream.clone())
        .send()
        .await
        .unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));

    let started = tokio::time::Instant::now();
    let shed = gw
        .post("/v1/chat/completions", stream.clone())
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued"
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    let (s, v) = error_of(shed).await;
    assert_eq!(s, 503);
    assert_eq!(v["error"]["code"], "gateway_overloaded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_in_flight")
    );

    // The admitted streams are served whole; their slots come back when they end.
    for r in [a, b] {
        let text = r.text().await.unwrap();
        assert!(text.contains("w19 ") && text.contains("[DONE]"), "{text}");
    }
    let again = gw
        .post("/v1/chat/completions", stream)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    drop(again);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("candor_requests_shed_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("candor_requests_in_flight_limit 2\n"),
        "{metrics}"
    );
}
