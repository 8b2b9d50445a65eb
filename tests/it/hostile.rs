//! A hostile client against the real binary: requests built to crash, starve or stall the
//! gateway get a clear error and leave it serving everyone else.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::support::*;

/// One provider `p0` behind `[server]` settings `server`; no client keys (the default).
async fn serve(mock: &Mock, server: &str) -> Served {
    Served::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\n{server}\n[request_log]\npath = \"{{dir}}/log.db\"\n\
         [[providers]]\nid = \"p0\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        mock.url
    ))
    .await
}

/// Status and OpenAI-shaped error body of a response.
async fn refused(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
    (status, v)
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = serve(&mock, "").await;
    let http = reqwest::Client::new();
    let deep = |n: usize| format!("{}\"x\"{}", "[".repeat(n), "]".repeat(n));
    let bodies = [
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":{}}}]}}"#,
                deep(25_000)
            ),
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"m","prompt":{}}}"#, deep(25_000)),
        ),
        // Just past the bound, where a recursive walk was slow rather than fatal.
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"m","messages":[{{"content":{}}}]}}"#,
                deep(2_000)
            ),
        ),
        // Deep nesting in a field Candor does not read is bounded too.
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m","tools":{},"messages":[]}}"#, deep(25_000)),
        ),
    ];
    for (path, body) in &bodies {
        let started = Instant::now();
        let r = http
            .post(gw.at(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, v) = refused(r).await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("nested"),
            "{v}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    // A JSON array is not a request, even one whose elements line up with the fields.
    let r = http
        .post(gw.at("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"["m", false]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused(r).await.0, 400);
    // A known path asked with the wrong method gets the error shape too.
    let r = http
        .get(gw.at("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("allow"), "{:?}", r.headers());
    let (status, v) = refused(r).await;
    assert_eq!(status, 405);
    assert_eq!(v["error"]["code"], "method_not_allowed");

    assert!(
        mock.seen().is_empty(),
        "nothing refused may reach the upstream"
    );
    assert!(gw.alive(), "the gateway died: {}", gw.output());
    let ok = http
        .post(gw.at("/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.stop();
}
