//! The official OpenAI Python SDK against a real gateway (in front of a simulated provider):
//! what the SDK returns, and what the request log recorded for the same requests.

use std::net::SocketAddr;
use std::time::Duration;

use candor::app;
use candor::sim::Profile;
use candor::sim::engine::EngineConfig;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_sdk_sees_a_proper_openai_server() {
    let profile = Profile {
        model: "sim-model".into(),
        engine: EngineConfig {
            decode_step: Duration::from_millis(4),
            ..EngineConfig::default()
        },
        ..Profile::default()
    };
    let (sim, _) = app::start_sim(profile, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[server.client_keys]]\nid = \"sdk-tests\"\nkey_env = \"TEST_CLIENT_KEY\"\n[request_log]\npath = \"{}\"\nflush_interval = \"10ms\"\n[[providers]]\nid = \"sim\"\nbase_url = \"http://{}/v1\"\nmodels = [\"m\"]\nmodel_map = {{ m = \"sim-model\" }}\n",
        dir.path().join("log.db").display(),
        sim.addr
    );
    let mut gw = TestGateway::with_config(&config, dir).await;
    let url = format!("{}/v1", gw.url);
    let v = sdk_script("openai_client.py", vec![url, CLIENT_KEY.into(), "m".into()]).await;

    assert_eq!(v["chat"]["content"], "42");
    assert_eq!(v["chat"]["finish"], "stop");
    assert_eq!(v["chat"]["completion_tokens"], 1);
    assert_eq!(v["headers"]["provider"], "sim");
    assert_eq!(v["headers"]["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        v["stream"]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        120
    );
    assert!(
        v.get("unexpected_usage_chunk").is_none(),
        "usage the client did not ask for leaked"
    );
    assert_eq!(v["stream_usage"], 1);
    assert_eq!(v["completion"], "7");
    assert_eq!(v["json"]["answer"], 10);
    assert_eq!(v["bad_model"]["type"], "NotFoundError");
    assert!(
        v["bad_model"]["message"]
            .as_str()
            .unwrap()
            .contains("Served models: m")
    );
    assert_eq!(v["bad_key"]["type"], "AuthenticationError");
    assert!(
        v["bad_key"]["message"]
            .as_str()
            .unwrap()
            .ends_with("Incorrect API key provided.")
    );
    assert_eq!(v["models"], serde_json::json!(["m"]));
    assert_eq!(v["closed_after"], 3);

    // The request log saw the same requests: 8 proxied (bad model included; bad key and
    // the model list are answered before the log).
    let rows = gw.rows(8).await;
    assert_eq!(rows.len(), 8);
    assert!(
        rows.iter()
            .all(|r| r.client_key_id.as_deref() == Some("sdk-tests"))
    );
    let chat = rows
        .iter()
        .find(|r| r.request_id == v["headers"]["request_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(chat.served_model.as_deref(), Some("sim-model"));
    let streamed = rows
        .iter()
        .find(|r| r.stream && r.completion_tokens == Some(120))
        .expect("the 120-token stream is logged with usage Candor asked for");
    assert!(!streamed.tokens_counted);
    assert!(streamed.ttft_ms.unwrap() > 0.0);
    let rate = streamed.decode_tps.unwrap();
    // The gateway's decode rate must agree with what the client measured on the same
    // 120-token stream, and a 4 ms step cannot decode faster than 250 tok/s. (On a busy
    // machine tokens arrive in bursts; a long stream keeps that from dominating the span.)
    let client = v["stream"]["client_decode_tps"].as_f64().unwrap();
    assert!(rate > 50.0 && rate < 275.0, "decode rate {rate}");
    assert!(
        (rate / client - 1.0).abs() < 0.25,
        "gateway {rate:.0} vs client {client:.0} tok/s"
    );
    let cancelled = rows
        .iter()
        .find(|r| r.status == 499)
        .expect("the closed stream is logged");
    assert_eq!(cancelled.attempts[0].outcome, "client_cancelled");
    let missing = rows.iter().find(|r| r.status == 404).unwrap();
    assert_eq!(missing.requested_model, "no-such-model");
    gw.stop().await;
    sim.stop().await;
}
