//! Configuration reload without a restart: streams in flight across a reload finish, a new
//! provider takes traffic, a removed one gets none, a rotated key is sent at once, an
//! unchanged provider keeps its health, and an invalid file changes nothing. Through the
//! admin API in process, and through SIGHUP on the real binary.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A file with the gateway's fixed part and one `[[providers]]` block per (id, mock,
/// extra lines).
fn file(dir: &std::path::Path, providers: &[(&str, &Mock, &str)]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[routing]\npolicy = \"round_robin\"\n[request_log]\npath = \"{}\"\nflush_interval = \"20ms\"\n",
        dir.join("log.db").display()
    );
    for (id, mock, extra) in providers {
        text.push_str(&format!(
            "[[providers]]\nid = \"{id}\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n{extra}\n",
            mock.url
        ));
    }
    text
}

fn slow_tokens(n: usize) -> Script {
    Script::Tokens {
        tokens: (0..n).map(|i| format!("s{i} ")).collect(),
        first_delay: Duration::from_millis(5),
        gap: Duration::from_millis(40),
    }
}

async fn reload(gw: &TestGateway) -> (u16, Value) {
    let r = gw
        .http
        .post(format!("{}/api/config/reload", gw.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn health(gw: &TestGateway) -> Value {
    gw.get("/api/health").await.json().await.unwrap()
}

fn provider<'a>(h: &'a Value, id: &str) -> Option<&'a Value> {
    h["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
}

fn seen(m: &Mock) -> usize {
    m.state.seen.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_rekeys_providers_while_streams_finish() {
    let (a, b, c) = (
        spawn_mock(slow_tokens(25)).await,
        spawn_mock(slow_tokens(25)).await,
        spawn_mock(Script::words(3)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("b.key");
    std::fs::write(&key, "key-one\n").unwrap();
    let b_key = format!("api_key_file = \"{}\"", key.display());
    let text = file(dir.path(), &[("a", &a, ""), ("b", &b, &b_key)]);
    let gw = TestGateway::from_file(&text, dir).await;

    // Four streams, two on each provider (round robin), each about a second long.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let resp = gw.chat(true).await;
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(async move { resp.text().await.unwrap() }));
    }
    let before = health(&gw).await;
    assert_eq!(seen(&a), 2);

    // Remove `a`, rotate `b`'s key (same server: its health carries on), add `c`.
    std::fs::write(&key, "key-two\n").unwrap();
    let text = file(gw.dir.path(), &[("b", &b, &b_key), ("c", &c, "")]);
    std::fs::write(gw.dir.path().join("candor.toml"), text).unwrap();
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(outcome["added"], serde_json::json!(["c"]));
    assert_eq!(outcome["removed"], serde_json::json!(["a"]));
    assert_eq!(outcome["updated"], serde_json::json!(["b"]));
    assert_eq!(outcome["restart_required"], serde_json::json!([]));

    // Every stream in flight, the removed provider's included, finished whole.
    for s in streams {
        let body = s.await.unwrap();
        assert!(body.contains("s24 "), "a stream was cut: {body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }

    // New traffic goes to `b` and `c` only, with `b`'s new key.
    for _ in 0..6 {
        let resp = gw.chat(false).await;
        assert_eq!(resp.status(), 200);
        assert_ne!(resp.headers()["x-candor-provider"], "a");
        resp.bytes().await.unwrap();
    }
    assert_eq!(seen(&a), 2, "the removed provider got new requests");
    assert_eq!(seen(&c), 3, "the new provider takes its turn");
    let last_b = b.state.seen.lock().unwrap().last().unwrap().headers.clone();
    assert_eq!(last_b["authorization"], "Bearer key-two");

    let after = health(&gw).await;
    assert!(
        provider(&after, "a").is_none(),
        "a removed provider leaves /health"
    );
    assert!(provider(&after, "c").is_some());
    // `b` kept its windows: what it served before the reload is still counted.
    let requests = |h: &Value| {
        provider(h, "b").unwrap()["1m"]["requests"]
            .as_u64()
            .unwrap()
    };
    assert!(
        requests(&after) >= requests(&before) + 2,
        "b's windows were reset: {} then {}",
        requests(&before),
        requests(&after)
    );
    assert_eq!(after["config_reload"]["result"], "applied");
    let models: Value = gw.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("candor_config_reloads_total{result=\"applied\"} 1\n"));
}

#[tokio::test]
async fn an_invalid_file_is_refused_with_every_problem_and_changes_nothing() {
    let (a, b) = (
        spawn_mock(Script::words(2)).await,
        spawn_mock(Script::words(2)).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = file(dir.path(), &[("a", &a, ""), ("b", &b, "")]);
    let gw = TestGateway::from_file(&text, dir).await;

    let mut broken = file(gw.dir.path(), &[("a", &a, "weight = 3")]);
    broken.push_str("[[providers]]\nid = \"c\"\nbase_url = \"ftp://nowhere\"\nmodels = [\"m\"]\n");
    std::fs::write(gw.dir.path().join("candor.toml"), broken).unwrap();
    let (status, outcome) = reload(&gw).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["result"], "refused");
    let problems = outcome["problems"].to_string();
    for want in ["weight", "providers[1].base_url"] {
        assert!(problems.contains(want), "{want} missing from {problems}");
    }

    // The running configuration still serves: both providers, nothing added.
    for _ in 0..4 {
        let resp = gw.chat(false).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    assert_eq!((seen(&a), seen(&b)), (2, 2));
    let h = health(&gw).await;
    assert_eq!(h["providers"].as_array().unwrap().len(), 2);
    assert_eq!(h["config_reload"]["result"], "refused");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("candor_config_reloads_total{result=\"refused\"} 1\n"));
    assert!(metrics.contains("candor_config_reloads_total{result=\"applied\"} 0\n"));
}

#[tokio::test]
async fn a_gateway_started_without_a_file_says_there_is_nothing_to_reload() {
    let a = spawn_mock(Script::words(2)).await;
    let gw = TestGateway::start(&[&a], "").await;
    let (status, body) = reload(&gw).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_of_candor_serve() {
    let (a, b) = (
        spawn_mock(Script::words(2)).await,
        spawn_mock(Script::words(2)).await,
    );
    let one = format!(
        "[server]\nlisten = \"{{listen}}\"\n[request_log]\npath = \"{{dir}}/log.db\"\n\
         [[providers]]\nid = \"a\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        a.url
    );
    let mut served = Served::start(&one).await;
    let cfg = served.dir.path().join("candor.toml");
    let two = format!(
        "{}[[providers]]\nid = \"b\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        std::fs::read_to_string(&cfg).unwrap(),
        b.url
    );
    std::fs::write(&cfg, two).unwrap();
    served.hangup();
    let h: Value = eventually("the reload after SIGHUP", || async {
        let h: Value = served.get("/health").await.ok()?.json().await.ok()?;
        (h["config_reload"]["result"] == "applied").then_some(h)
    })
    .await;
    assert_eq!(h["config_reload"]["added"], serde_json::json!(["b"]));
    assert_eq!(h["providers"].as_array().unwrap().len(), 2);
    let logs = served.stop();
    assert!(logs.contains("configuration reloaded"), "{logs}");
}
