//! The dashboard in a real browser: starts two simulated providers, the gateway in front of
//! them (admin token on, canaries every 2 s) and client traffic, then runs
//! `tests/browser/dashboard.mjs` — Debian's `chromium` driven by `playwright-core` — which
//! logs in, watches the live cards, injects a batch-queue deadlock into one simulator,
//! expects its card to turn and the incident to appear, and uses the request explorer.
//! Needs `node`, `npm ci --prefix tests/browser` and `/usr/bin/chromium` (`scripts/test`
//! installs them). Screenshots land in `$CARGO_TARGET_TMPDIR/dashboard/`.
//!
//! Its own test binary, so the browser never shares the 2-core machine with the timing-
//! sensitive tests of the rest of the suite.
#![expect(
    clippy::disallowed_methods,
    reason = "the test runs client traffic on its own tasks and reads CHROMIUM"
)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use candor::app;
use candor::config::Config;

#[path = "it/support.rs"]
#[allow(dead_code, reason = "this binary uses only the simulator helper")]
mod support;

const ADMIN_TOKEN: &str = "dashboard-test-admin-token-7f3a";
/// The deadlock detector's bound (tests/incidents.rs) plus two dashboard polls.
const BOUND_S: u64 = 20;

fn config(dir: &Path, sims: &[&str]) -> Config {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_token_env = "DASHBOARD_ADMIN_TOKEN"
[request_log]
path = "{}"
flush_interval = "100ms"
[timeouts]
ttft = "5s"
idle = "5s"
total = "60s"
[health]
min_requests = 10
[routing]
base_ejection = "5s"
max_ejection = "10s"
[canaries]
interval = "2s"
"#,
        dir.join("log.db").display()
    );
    for (i, url) in sims.iter().enumerate() {
        text.push_str(&format!(
            "[[providers]]\nid = \"gpu-{}\"\nbase_url = \"{url}/v1\"\nmetrics_url = \"{url}/metrics\"\nmodels = [\"m\"]\nprice = {{ input_per_million = 0.5, output_per_million = 1.5 }}\n",
            ["a", "b"][i]
        ));
    }
    Config::parse(&text, |name| {
        (name == "DASHBOARD_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_owned())
    })
    .unwrap()
}

/// Streams chat requests from `workers` clients until `stop`.
fn traffic(url: String, workers: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (url, stop) = (url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = serde_json::json!({
                        "model": "m", "stream": true, "max_tokens": 24 + (i % 16),
                        "messages": [{"role": "user", "content": format!("client {w} question {i}: tell me about gateways")}],
                    });
                    let sent = http
                        .post(format!("{url}/v1/chat/completions"))
                        .timeout(Duration::from_secs(10))
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(r) = sent {
                        let _ = r.bytes().await;
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_health_a_fault_and_the_request_log_in_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (`scripts/test` does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's chromium (`scripts/test` does)"
    );
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);

    let step = Duration::from_millis(12);
    let (sim_a, url_a) = support::start_sim("m", step).await;
    let (sim_b, url_b) = support::start_sim("m", step).await;
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(config(dir.path(), &[&url_a, &url_b]))
        .await
        .unwrap();
    let gateway = format!("http://{}", running.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = traffic(gateway.clone(), 6, Arc::clone(&stop));

    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg("dashboard.mjs")
            .current_dir(&browser_dir)
            .env("CANDOR_URL", &gateway)
            .env("CANDOR_TOKEN", ADMIN_TOKEN)
            .env("CANDOR_FAULT_URL", format!("{url_b}/sim/faults"))
            .env("CANDOR_FAULTY", "gpu-b")
            .env("CANDOR_HEALTHY", "gpu-a")
            .env("CANDOR_BOUND_S", BOUND_S.to_string())
            .env("CANDOR_ARTIFACTS", &artifacts)
            .env("CHROMIUM", &chromium)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test took over 4 minutes")
    .expect("node could not be started");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    running.stop().await.unwrap();
    sim_a.stop().await;
    sim_b.stop().await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("screenshots: {}", artifacts.display());
    assert!(out.status.success(), "the browser test failed:\n{stdout}");
    assert!(stdout.contains("RESULTS "), "{stdout}");
}
