//! OpenTelemetry traces in a real backend: Arize Phoenix (`phoenix serve`, from PyPI) receives
//! Candor's OTLP/HTTP export; the official OpenAI Python SDK sends traffic through Candor
//! (a failing and a healthy provider, in order, so requests fail over); the spans are read
//! back through Phoenix's REST API and checked: GenAI attributes, Candor's own, parent and
//! child links, the caller's trace continued, and the `traceparent` each provider received.
//!
//! Needs `phoenix` and `python3` with the `openai` package on PATH (`scripts/test` installs
//! both in its Python environment). Its own test binary: Phoenix takes a core for the half
//! minute it needs to start, which the timing-sensitive tests must not share.
#![expect(
    clippy::disallowed_methods,
    reason = "the test runs Phoenix as a child process"
)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "it/support.rs"]
#[allow(
    dead_code,
    reason = "this binary uses the mock upstreams and the SDK runner"
)]
mod support;

use support::*;

const PROJECT: &str = "candor-traces";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

/// A Phoenix server on loopback, killed when dropped.
struct Phoenix {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_phoenix() -> Phoenix {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("phoenix")
        .arg("serve")
        .env("PHOENIX_WORKING_DIR", dir.path())
        .env("PHOENIX_HOST", "127.0.0.1")
        .env("PHOENIX_PORT", port.to_string())
        .env("PHOENIX_GRPC_PORT", free_port().to_string())
        .env("PHOENIX_TELEMETRY_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `phoenix` ({e}): `scripts/test` installs Arize Phoenix on PATH")
        });
    let phoenix = Phoenix {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let http = reqwest::Client::new();
    for _ in 0..240 {
        if let Ok(r) = http.get(format!("{}/healthz", phoenix.url)).send().await
            && r.status().is_success()
        {
            return phoenix;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("Phoenix did not start within 120 s");
}

/// Every span Phoenix holds for the project, once there are `n`.
async fn spans(phoenix: &Phoenix, n: usize) -> Vec<Value> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/projects/{PROJECT}/spans?limit=1000", phoenix.url);
    let mut last = Vec::new();
    for _ in 0..120 {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            let body: Value = r.json().await.unwrap();
            last = body["data"].as_array().cloned().unwrap_or_default();
            if last.len() >= n {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "Phoenix holds {} spans, expected {n}: {last:#?}",
        last.len()
    );
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn span_id(span: &Value) -> &str {
    span["context"]["span_id"].as_str().unwrap()
}

fn trace_id(span: &Value) -> &str {
    span["context"]["trace_id"].as_str().unwrap()
}

/// The spans of one request: its server span and its attempts in start order.
fn request<'a>(spans: &'a [Value], server: &'a Value) -> (&'a Value, Vec<&'a Value>) {
    let mut attempts: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_id"].as_str() == Some(span_id(server)))
        .collect();
    attempts.sort_by_key(|s| s["start_time"].as_str().unwrap_or_default().to_owned());
    (server, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_phoenix_with_genai_attributes_links_and_the_callers_trace() {
    let phoenix = start_phoenix().await;
    let bad = spawn_mock(Script::Status {
        code: 503,
        body: r#"{"error":{"message":"overloaded"}}"#.into(),
    })
    .await;
    let good = spawn_mock(Script::words(3)).await;
    let extra = format!(
        "{}[tracing]\nendpoint = \"{}/v1/traces\"\nproject = \"{PROJECT}\"\nflush_interval = \"200ms\"\n",
        TestGateway::IN_ORDER,
        phoenix.url
    );
    let mut gw = TestGateway::start(&[&bad, &good], &extra).await;

    let out = sdk_script(
        "openai_traced.py",
        vec![
            format!("{}/v1", gw.url),
            "m".into(),
            format!("00-{TRACE}-{CALLER_SPAN}-01"),
            format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00"),
        ],
    )
    .await;
    assert_eq!(out["plain"]["id"], "chatcmpl-mock");
    assert_eq!(out["stream"], "w0 w1 w2 ");

    // Requests 1 and 3 failed over (a server span and two attempts each), request 2 went
    // straight to p1 (two spans), request 4's caller did not sample: eight spans.
    let metrics = eventually("eight spans exported", || async {
        let m = gw.get("/metrics").await.text().await.ok()?;
        m.contains("candor_trace_spans_exported_total 8\n")
            .then_some(m)
    })
    .await;
    assert!(metrics.contains("candor_trace_spans_dropped_total{reason=\"queue_full\"} 0\n"));
    // Stopping flushes the exporter: after it, its own count is all Candor ever sent, so
    // Phoenix holding that many means nothing more is on its way.
    let gateway = std::sync::Arc::clone(&gw.running.as_ref().unwrap().gateway);
    gw.stop().await;
    let status = gateway.tracer.status().unwrap();
    assert_eq!((status.exported(), status.dropped()), (8, (0, 0)));
    let all = spans(&phoenix, 8).await;
    assert_eq!(all.len(), 8, "{all:#?}");
    assert!(all.iter().all(|s| trace_id(s) != UNSAMPLED_TRACE));

    let servers: Vec<&Value> = all.iter().filter(|s| s["span_kind"] == "CHAIN").collect();
    assert_eq!(servers.len(), 3);
    let continued: Vec<&&Value> = servers.iter().filter(|s| trace_id(s) == TRACE).collect();
    assert_eq!(
        continued.len(),
        2,
        "both requests continue the caller's trace"
    );
    for s in &continued {
        assert_eq!(
            s["parent_id"], CALLER_SPAN,
            "the caller's span is the parent"
        );
    }

    // Request 1: the sampling parameters, the answer, and the failover as two attempts.
    let first = continued
        .iter()
        .find(|s| attr(s, "candor.stream") == false)
        .unwrap();
    assert_eq!(first["name"], "chat m");
    assert_eq!(first["status_code"], "UNSET");
    for (key, want) in [
        ("gen_ai.operation.name", serde_json::json!("chat")),
        ("gen_ai.request.model", serde_json::json!("m")),
        ("gen_ai.provider.name", serde_json::json!("p1")),
        ("gen_ai.request.temperature", serde_json::json!(0.3)),
        ("gen_ai.request.top_p", serde_json::json!(0.9)),
        ("gen_ai.request.max_tokens", serde_json::json!(16)),
        ("gen_ai.request.seed", serde_json::json!(7)),
        ("gen_ai.response.id", serde_json::json!("chatcmpl-mock")),
        (
            "gen_ai.response.finish_reasons",
            serde_json::json!(["stop"]),
        ),
        ("candor.provider.id", serde_json::json!("p1")),
        ("candor.attempts", serde_json::json!(2)),
        ("candor.within_targets", serde_json::json!(true)),
    ] {
        assert_eq!(attr(first, key), &want, "{key} in {first:#}");
    }
    assert!(attr(first, "gen_ai.usage.output_tokens").as_i64().unwrap() > 0);
    assert!(attr(first, "candor.route.reason").is_string());
    let (_, attempts) = request(&all, first);
    assert_eq!(attempts.len(), 2);
    // The trace as Phoenix returns it (`cargo test --test traces -- --nocapture` shows it).
    println!(
        "{}",
        serde_json::to_string_pretty(&[first, attempts[0], attempts[1]]).unwrap()
    );
    let (failed, answered) = (attempts[0], attempts[1]);
    assert_eq!(trace_id(failed), TRACE);
    assert_eq!(failed["span_kind"], "LLM");
    assert_eq!(failed["status_code"], "ERROR");
    assert_eq!(attr(failed, "error.type"), "server_error");
    assert_eq!(attr(failed, "candor.provider.id"), "p0");
    assert_eq!(attr(failed, "candor.attempt.kind"), "first");
    assert_eq!(attr(failed, "http.response.status_code"), 503);
    assert_eq!(attr(failed, "server.address"), "127.0.0.1");
    assert!(attr(failed, "server.port").as_u64().unwrap() > 0);
    assert_eq!(answered["status_code"], "UNSET");
    assert_eq!(attr(answered, "candor.provider.id"), "p1");
    assert_eq!(attr(answered, "candor.attempt.kind"), "retry");
    assert_eq!(attr(answered, "gen_ai.response.id"), "chatcmpl-mock");
    assert_eq!(attr(answered, "gen_ai.usage.output_tokens"), 3);

    // Request 2, streamed: one attempt, with the stream's measurements.
    let second = continued
        .iter()
        .find(|s| attr(s, "candor.stream") == true)
        .unwrap();
    let (_, attempts) = request(&all, second);
    assert_eq!(attempts.len(), 1);
    assert!(attr(second, "candor.ttft_ms").as_f64().is_some());
    assert!(
        attr(attempts[0], "candor.decode_tokens_per_s")
            .as_f64()
            .is_some()
    );

    // Request 3 started its own trace: the root of it, the id the request log holds too.
    let root = servers.iter().find(|s| trace_id(s) != TRACE).unwrap();
    assert!(root["parent_id"].is_null(), "{root:#}");
    assert_eq!(
        attr(root, "candor.request.id"),
        out["root_request_id"].as_str().unwrap()
    );
    let rows = gw.rows(4).await;
    let row = rows
        .iter()
        .find(|r| Some(r.request_id.as_str()) == out["root_request_id"].as_str())
        .unwrap();
    assert_eq!(row.trace_id.as_deref(), Some(trace_id(root)));
    assert_eq!(request(&all, root).1.len(), 2);

    // Each provider received the trace with the attempt's own span as its parent.
    let client_spans: BTreeMap<&str, &Value> = all
        .iter()
        .filter(|s| s["span_kind"] == "LLM")
        .map(|s| (span_id(s), s))
        .collect();
    let mut received = 0;
    for mock in [&bad, &good] {
        for seen in mock.state.seen.lock().unwrap().iter() {
            let tp = seen.headers["traceparent"].to_str().unwrap().to_owned();
            let parts: Vec<&str> = tp.split('-').collect();
            if parts[1] == UNSAMPLED_TRACE {
                assert_eq!(parts[3], "00", "an unsampled trace stays unsampled");
                continue;
            }
            let span = client_spans
                .get(parts[2])
                .unwrap_or_else(|| panic!("{tp}: no attempt span {}", parts[2]));
            assert_eq!(trace_id(span), parts[1]);
            assert_eq!(parts[3], "01");
            received += 1;
        }
    }
    assert_eq!(received, 5, "five attempts went out in sampled traces");
}
