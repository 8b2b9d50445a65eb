//! Provider keys, client keys and the admin token appear in no log line, request-log row,
//! error body or API response — checked on the real binary with debug logging on.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn secrets_never_leak() {
    // p0 rejects the key and echoes it back, as some providers do; p1 serves.
    let echo = spawn_mock(Script::Status {
        code: 401,
        body: format!(r#"{{"error":{{"message":"Incorrect API key provided: {PROVIDER_KEY}"}}}}"#),
    })
    .await;
    let good = spawn_mock(Script::words(3)).await;
    let mut gw = Served::start(&format!(
        r#"[server]
listen = "{{listen}}"
admin_token_env = "TEST_ADMIN_TOKEN"
[[server.client_keys]]
id = "team-a"
key_env = "TEST_CLIENT_KEY"
[request_log]
path = "{{dir}}/log.db"
flush_interval = "10ms"
[[providers]]
id = "p0"
base_url = "{}"
api_key_env = "TEST_PROVIDER_KEY"
models = ["m"]
[[providers]]
id = "p1"
base_url = "{}"
api_key_env = "TEST_PROVIDER_KEY"
models = ["m"]
"#,
        echo.url, good.url
    ))
    .await;
    let base = gw.url.clone();
    let http = reqwest::Client::new();

    let mut seen_by_client = String::new();
    let collect = |r: reqwest::Response| async move {
        let mut s = format!("{:?}\n", r.headers());
        s.push_str(&r.text().await.unwrap_or_default());
        s
    };
    // Authorised traffic, streamed and not (each starts on p0, which fails, then p1).
    for stream in [true, false] {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": "m", "stream": stream, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        seen_by_client.push_str(&collect(r).await);
    }
    // A wrong key that shares a prefix with the real one, and no key.
    let near_miss = format!("{}x", &CLIENT_KEY[..CLIENT_KEY.len() - 1]);
    for key in [Some(near_miss.as_str()), None] {
        let mut req = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": []}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        seen_by_client.push_str(&collect(r).await);
    }
    // A request where every provider fails: p1 switched to rejecting too.
    good.set(Script::Status {
        code: 403,
        body: format!("forbidden for key {PROVIDER_KEY}"),
    });
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    seen_by_client.push_str(&collect(r).await);
    // Wait until the writer has stored the three proxied requests (the two 401s never reach it).
    for _ in 0..200 {
        let rows: Vec<serde_json::Value> = http
            .get(format!("{base}/api/requests"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rows.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for path in [
        "/api/requests",
        "/api/providers",
        "/api/health",
        "/health",
        "/metrics",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().as_u16() < 500 || path == "/health", "{path}");
        seen_by_client.push_str(&collect(r).await);
    }
    assert!(seen_by_client.contains("team-a"), "the key id is recorded");

    // The upstream did get the provider key — where it belongs.
    assert_eq!(
        good.seen()[0].headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );

    // Stop the gateway and read everything it wrote.
    let logs = gw.stop();
    let dir = &gw.dir;
    assert!(
        logs.contains("candor listening"),
        "logs were captured: {logs}"
    );
    let db = std::fs::read(dir.path().join("log.db")).unwrap();
    let wal = std::fs::read(dir.path().join("log.db-wal")).unwrap_or_default();
    let db_text = String::from_utf8_lossy(&db).to_string() + &String::from_utf8_lossy(&wal);
    assert!(db_text.contains("team-a"));

    for secret in [PROVIDER_KEY, CLIENT_KEY, ADMIN_TOKEN] {
        assert!(!logs.contains(secret), "secret in logs:\n{logs}");
        assert!(
            !seen_by_client.contains(secret),
            "secret in a response:\n{seen_by_client}"
        );
        assert!(!db_text.contains(secret), "secret in the request log");
    }
}
