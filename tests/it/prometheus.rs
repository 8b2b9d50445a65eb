//! A real Prometheus (Debian's `prometheus`) scrapes Candor's `/metrics` on loopback with
//! Candor's exported alerting rules loaded; its HTTP API then shows Candor's series with the
//! values the traffic implies, and the rules group healthy.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A Prometheus API answer, checked for `"status": "success"`.
async fn api(request: reqwest::RequestBuilder) -> Value {
    let v: Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v
}

async fn query(http: &reqwest::Client, prom: &str, q: &str) -> Vec<Value> {
    let v = api(http
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)]))
    .await;
    v["data"]["result"].as_array().unwrap().clone()
}

fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_candor_and_loads_its_rules() {
    let mock = spawn_mock(Script::words(4)).await;
    let mut gw = TestGateway::start(&[&mock], "").await;
    for i in 0..10 {
        gw.chat(i % 2 == 0).await.bytes().await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = std::process::Command::new(env!("CARGO_BIN_EXE_candor"))
        .arg("rules")
        .output()
        .unwrap();
    assert!(rules.status.success());
    std::fs::write(dir.path().join("rules.yml"), &rules.stdout).unwrap();
    let target = gw.url.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: candor\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect(
            "prometheus (Debian package prometheus) must be installed: `scripts/test` installs it",
        );
    let prom = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Wait for a scrape that saw the traffic.
    let mut requests = Vec::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if http.get(format!("{prom}/-/ready")).send().await.is_err() {
            continue;
        }
        requests = query(&http, &prom, "sum(candor_requests_total)").await;
        if !requests.is_empty() {
            break;
        }
    }
    assert_eq!(requests.len(), 1, "Prometheus never scraped Candor");
    assert_eq!(value(&requests[0]), 10.0);
    let up = query(&http, &prom, "up{job=\"candor\"}").await;
    assert_eq!(value(&up[0]), 1.0);
    // Histograms arrive whole: the TTFT histogram counts the 5 streamed requests' attempts
    // and its median is a plausible time (the mock answers within milliseconds).
    let ttft = query(
        &http,
        &prom,
        "histogram_quantile(0.5, sum by (le) (gen_ai_client_operation_time_to_first_chunk_seconds_bucket))",
    )
    .await;
    let median = value(&ttft[0]);
    assert!(median > 0.0 && median < 1.0, "median TTFT {median}");
    let sli = query(&http, &prom, "candor_sli_requests_total").await;
    assert!(!sli.is_empty() && value(&sli[0]) >= 10.0, "{sli:?}");

    // Candor's alerting rules loaded and evaluate without error.
    let rules = api(http.get(format!("{prom}/api/v1/rules"))).await;
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "{rules}");
    let alerts: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(alerts.len() >= 2, "{rules}");
    assert!(
        alerts.iter().all(|r| r["health"] != "err"),
        "a rule fails to evaluate: {rules}"
    );
    prometheus.kill().await.unwrap();
    gw.stop().await;
}
