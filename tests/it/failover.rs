//! Failover before the first byte reaches the client, never after.

use crate::support::*;

/// `p0` answers every request with `code` and `body`, `p1` answers normally: four requests
/// (round robin starts two on `p0`) all get 200 from `p1`, and the two that started on `p0`
/// show its `outcome` first. Returns the gateway.
async fn fails_over_from(code: u16, body: &str, outcome: &str) -> TestGateway {
    let bad = spawn_mock(Script::Status {
        code,
        body: body.into(),
    })
    .await;
    let good = spawn_mock(Script::words(3)).await;
    let gw = TestGateway::start(&[&bad, &good], TestGateway::IN_ORDER).await;
    for stream in [true, false, true, false] {
        let resp = gw.chat(stream).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-candor-provider"], "p1");
        resp.bytes().await.unwrap();
    }
    let rows = gw.rows(4).await;
    let failed_over: Vec<_> = rows.iter().filter(|r| r.attempts.len() == 2).collect();
    assert_eq!(failed_over.len(), 2);
    for r in failed_over {
        assert_eq!(r.attempts[0].provider, "p0");
        assert_eq!(r.attempts[0].outcome, outcome);
        assert_eq!(r.attempts[0].status, Some(code));
        assert_eq!(r.attempts[1].outcome, "ok");
        assert_eq!(r.provider.as_deref(), Some("p1"));
    }
    gw
}

#[tokio::test]
async fn a_failing_provider_is_skipped_before_commit() {
    let mut gw =
        fails_over_from(503, r#"{"error":{"message":"overloaded"}}"#, "server_error").await;
    gw.stop().await;
}

#[tokio::test]
async fn a_provider_that_never_answers_fails_over_on_the_ttft_timeout() {
    let hung = spawn_mock(Script::Hang).await;
    let good = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(
        &[&hung, &good],
        &format!("{}[timeouts]\nttft = \"300ms\"\n", TestGateway::IN_ORDER),
    )
    .await;
    for _ in 0..2 {
        let resp = gw.chat(true).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-candor-provider"], "p1");
        resp.bytes().await.unwrap();
    }
    let rows = gw.rows(2).await;
    let r = rows.iter().find(|r| r.attempts.len() == 2).unwrap();
    assert_eq!(r.attempts[0].outcome, "timeout_ttft");
    // The client waited through the failed attempt: its TTFT includes it.
    assert!(r.ttft_ms.unwrap() >= 300.0, "client TTFT {:?}", r.ttft_ms);
    assert!(r.attempts[1].ttft_ms.unwrap() < 300.0);
    gw.stop().await;
}

#[tokio::test]
async fn no_failover_after_the_first_byte() {
    let breaking = spawn_mock(Script::ResetAfter {
        tokens: (0..5).map(|i| format!("t{i}")).collect(),
        after: 2,
    })
    .await;
    let other = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(&[&breaking, &other], TestGateway::IN_ORDER).await;
    let resp = gw.chat(true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-candor-provider"], "p0");
    let body = String::from_utf8_lossy(&resp.bytes().await.unwrap()).to_string();
    assert!(body.contains("t0") && body.contains("t1"));
    assert!(
        body.contains("\"error\""),
        "client must be told the stream broke: {body}"
    );
    assert!(!body.contains("[DONE]"));
    assert!(
        other.seen().is_empty(),
        "a committed stream must not be retried"
    );
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].attempts.len(), 1);
    assert_eq!(rows[0].attempts[0].outcome, "reset");
    assert_eq!(rows[0].error_type.as_deref(), Some("reset"));
    gw.stop().await;
}

#[tokio::test]
async fn client_errors_from_upstream_pass_through_without_failover() {
    let picky = spawn_mock(Script::Status {
        code: 400,
        body:
            r#"{"error":{"message":"messages must not be empty","type":"invalid_request_error"}}"#
                .into(),
    })
    .await;
    let other = spawn_mock(Script::words(2)).await;
    let mut gw = TestGateway::start(&[&picky, &other], TestGateway::IN_ORDER).await;
    let resp = gw.chat(false).await;
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "messages must not be empty");
    assert!(other.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_error_event_mid_stream_reaches_the_client_once() {
    let failing = spawn_mock(Script::ErrorAfter {
        tokens: (0..5).map(|i| format!("t{i}")).collect(),
        after: 2,
    })
    .await;
    let mut gw = TestGateway::start(&[&failing], "").await;
    let resp = gw.chat(true).await;
    let body = String::from_utf8_lossy(&resp.bytes().await.unwrap()).to_string();
    assert!(
        body.contains("t1") && body.contains("engine died"),
        "{body}"
    );
    assert_eq!(
        body.matches("\"error\"").count(),
        1,
        "one error event, the upstream's: {body}"
    );
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].error_type.as_deref(), Some("stream_error"));
    assert_eq!(rows[0].attempts[0].outcome, "stream_error");
    assert_eq!(rows[0].completion_tokens, Some(2));
    gw.stop().await;
}

/// llama.cpp's refusal of a prompt longer than its context window.
const TOO_LONG: &str = r#"{"error":{"code":400,"message":"request (1536 tokens) exceeds the available context size (512 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":1536,"n_ctx":512}}"#;

#[tokio::test]
async fn a_prompt_too_long_for_one_providers_context_goes_to_another() {
    let mut gw = fails_over_from(400, TOO_LONG, "context_exceeded").await;
    // Not a health failure: the small provider is still healthy.
    let health: serde_json::Value = gw.admin("/api/health").await.json().await.unwrap();
    assert_eq!(health["providers"][0]["state"], "healthy");
    gw.stop().await;
}

#[tokio::test]
async fn a_prompt_too_long_for_every_provider_is_the_clients_400() {
    let a = spawn_mock(Script::Status {
        code: 400,
        body: TOO_LONG.into(),
    })
    .await;
    let b = spawn_mock(Script::Status {
        code: 400,
        body: TOO_LONG.into(),
    })
    .await;
    let mut gw = TestGateway::start(&[&a, &b], "").await;
    let resp = gw.chat(false).await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the available context size"),
        "{body}"
    );
    let rows = gw.rows(1).await;
    assert_eq!(rows[0].attempts.len(), 2);
    assert_eq!(rows[0].status, 400);
    gw.stop().await;
}
