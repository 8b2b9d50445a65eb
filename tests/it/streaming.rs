//! Streams pass through unchanged, chunk by chunk, metered token by token.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::support::*;

#[tokio::test]
async fn stream_reaches_client_byte_for_byte_while_usage_is_metered() {
    let tokens: Vec<String> = (0..8).map(|i| format!("tok{i} ")).collect();
    let mock = spawn_mock(Script::Tokens {
        tokens: tokens.clone(),
        first_delay: Duration::from_millis(20),
        gap: Duration::from_millis(10),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let resp = gw.chat(true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-candor-provider"], "p0");
    assert!(resp.headers().contains_key("x-candor-request-id"));
    let body = resp.bytes().await.unwrap();
    // What the upstream would have sent this client directly (it did not ask for usage).
    let direct = stream_events(&tokens, false).concat();
    assert_eq!(String::from_utf8_lossy(&body), direct);
    // ...while the upstream was asked for usage.
    let seen = mock.seen();
    assert_eq!(seen[0].body["stream_options"]["include_usage"], true);

    let rows = gw.rows(1).await;
    let r = &rows[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.provider.as_deref(), Some("p0"));
    assert_eq!(r.prompt_tokens, Some(11));
    assert_eq!(r.completion_tokens, Some(8));
    assert!(!r.tokens_counted);
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert_eq!(r.served_model.as_deref(), Some("upstream-model"));
    assert_eq!(r.system_fingerprint.as_deref(), Some("fp_mock"));
    assert_eq!(r.node.as_deref(), Some("node-7"));
    assert_eq!(r.quantization.as_deref(), Some("fp8"));
    let ttft = r.ttft_ms.unwrap();
    assert!(ttft >= 15.0, "ttft {ttft}");
    let rate = r.decode_tps.unwrap();
    // 7 tokens after the first over ~70 ms of 10 ms gaps (the finish chunk carries none).
    assert!(rate > 30.0 && rate < 110.0, "decode rate {rate}");
    assert!(r.max_gap_ms.unwrap() >= 9.0);
    assert_eq!(r.attempts.len(), 1);
    assert!(
        r.attempts[0].connect_ms.is_some(),
        "the first request opens a connection"
    );
    assert!(r.attempts[0].headers_ms.unwrap() <= ttft);
    // 11 in at $1/M + 8 out at $2/M.
    assert!((r.cost_usd.unwrap() - 27e-6).abs() < 1e-9);
    gw.stop().await;
}

#[tokio::test]
async fn client_that_asked_for_usage_gets_it_untouched() {
    let tokens: Vec<String> = vec!["a".into(), "b".into()];
    let mock = spawn_mock(Script::Tokens {
        tokens: tokens.clone(),
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(1),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let mut req = chat(true);
    req["stream_options"] = serde_json::json!({"include_usage": true});
    let body = gw
        .post("/v1/chat/completions", req)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&body),
        stream_events(&tokens, true).concat()
    );
    gw.stop().await;
}

#[tokio::test]
async fn first_chunk_reaches_client_long_before_upstream_finishes() {
    let mock = spawn_mock(Script::Tokens {
        tokens: (0..4).map(|i| format!("t{i}")).collect(),
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(400),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let sent = Instant::now();
    let resp = gw.chat(true).await;
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = sent.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("t0"));
    while body.next().await.is_some() {}
    let total = sent.elapsed();
    assert!(total >= Duration::from_millis(1600), "total {total:?}");
    assert!(
        first_at < Duration::from_millis(300),
        "first chunk after {first_at:?}: buffered"
    );
    gw.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_and_is_logged_once() {
    let mock = spawn_mock(Script::Tokens {
        tokens: (0..50).map(|i| format!("t{i}")).collect(),
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(50),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let resp = gw.chat(true).await;
    let mut body = resp.bytes_stream();
    let _ = body.next().await.unwrap().unwrap();
    let _ = body.next().await.unwrap().unwrap();
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(3);
    while mock.disconnects() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.disconnects(),
        1,
        "upstream never saw the connection close"
    );
    let rows = gw.rows(1).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.status, 499);
    assert_eq!(r.error_type.as_deref(), Some("client_cancelled"));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].outcome, "client_cancelled");
    assert!(r.completion_tokens.unwrap() >= 1);
    assert!(r.ttft_ms.is_some());
    gw.stop().await;
}

#[tokio::test]
async fn non_streaming_and_embeddings_pass_through() {
    let mock = spawn_mock(Script::words(3)).await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let v: serde_json::Value = gw.chat(false).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "w0 w1 w2 ");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let e = gw
        .post(
            "/v1/embeddings",
            serde_json::json!({"model": "m", "input": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), 200);
    let rows = gw.rows(2).await;
    let emb = rows.iter().find(|r| r.operation == "embeddings").unwrap();
    assert_eq!(emb.prompt_tokens, Some(3));
    let chat_row = rows.iter().find(|r| r.operation == "chat").unwrap();
    assert_eq!(chat_row.completion_tokens, Some(3));
    assert!(chat_row.ttft_ms.is_none());
    gw.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_a_stream_and_flushes_the_log() {
    let mock = spawn_mock(Script::Tokens {
        tokens: (0..5).map(|i| format!("t{i}")).collect(),
        first_delay: Duration::ZERO,
        gap: Duration::from_millis(100),
    })
    .await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    let resp = gw.chat(true).await;
    let running = gw.running.take().unwrap();
    let stopping = tokio::spawn(running.stop());
    let body = resp.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    stopping.await.unwrap().unwrap();
    let mut store = candor::request_log::Store::open_read_only(&gw.db()).unwrap();
    let rows = store.query(&Default::default(), 0).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 200);
}

#[tokio::test]
async fn a_stream_silent_for_the_idle_timeout_is_cut_but_steady_slow_tokens_are_not() {
    let words = |n| (0..n).map(|i| format!("w{i} ")).collect::<Vec<String>>();
    // Tokens 200 ms apart under a 300 ms idle timeout: 1.6 s in all, never idle that long.
    let steady = spawn_mock(Script::Tokens {
        tokens: words(8),
        first_delay: Duration::from_millis(5),
        gap: Duration::from_millis(200),
    })
    .await;
    let mut gw = TestGateway::start(&[&steady], "[timeouts]\nidle = \"300ms\"\n").await;
    let body = gw.chat(true).await.text().await.unwrap();
    assert!(body.contains("w7 ") && body.contains("[DONE]"), "{body}");
    assert!(!body.contains("timeout_idle"), "{body}");
    gw.stop().await;

    // The first token, then 2 s of silence: cut after the idle timeout with an error event.
    let stalled = spawn_mock(Script::Tokens {
        tokens: words(2),
        first_delay: Duration::from_millis(5),
        gap: Duration::from_secs(2),
    })
    .await;
    let mut gw = TestGateway::start(&[&stalled], "[timeouts]\nidle = \"300ms\"\n").await;
    let started = Instant::now();
    let body = gw.chat(true).await.text().await.unwrap();
    let took = started.elapsed();
    assert!(body.contains("w0 ") && !body.contains("w1 "), "{body}");
    assert!(body.contains("timeout_idle"), "{body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "cut after {took:?}"
    );
    gw.stop().await;
}
