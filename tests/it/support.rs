//! Test support: a scriptable OpenAI-compatible upstream on loopback, and a gateway started
//! on port 0 in front of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use candor::app::{self, Running};
use candor::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// What the mock upstream does with each request.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    /// Answer normally, streaming `tokens` one per chunk.
    Tokens {
        tokens: Vec<String>,
        first_delay: Duration,
        gap: Duration,
    },
    /// Answer with this status and body.
    Status { code: u16, body: String },
    /// Accept the request and never answer.
    Hang,
    /// Stream `after` tokens, then break the connection.
    ResetAfter { tokens: Vec<String>, after: usize },
    /// Stream `after` tokens, then send an OpenAI error event and end the stream.
    ErrorAfter { tokens: Vec<String>, after: usize },
    /// Send these bytes as an event stream, one write each, then end it.
    Raw(Vec<Bytes>),
}

impl Script {
    pub(crate) fn words(n: usize) -> Script {
        Script::Tokens {
            tokens: (0..n).map(|i| format!("w{i} ")).collect(),
            first_delay: Duration::from_millis(5),
            gap: Duration::from_millis(2),
        }
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

#[derive(Debug)]
pub(crate) struct MockState {
    pub(crate) script: Mutex<Script>,
    pub(crate) seen: Mutex<Vec<Seen>>,
    /// Streams whose client (the gateway) went away before the end.
    pub(crate) disconnects: AtomicUsize,
}

/// A running mock upstream.
#[derive(Debug, Clone)]
pub(crate) struct Mock {
    pub(crate) url: String,
    pub(crate) state: Arc<MockState>,
}

impl Mock {
    pub(crate) fn set(&self, script: Script) {
        *self.state.script.lock().unwrap() = script;
    }
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub(crate) fn disconnects(&self) -> usize {
        self.state.disconnects.load(Ordering::SeqCst)
    }
}

pub(crate) async fn spawn_mock(script: Script) -> Mock {
    let state = Arc::new(MockState {
        script: Mutex::new(script),
        seen: Mutex::new(Vec::new()),
        disconnects: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(handle))
        .route("/v1/completions", post(handle))
        .route("/v1/embeddings", post(embeddings))
        .with_state(Arc::clone(&state));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Mock {
        url: format!("http://{addr}/v1"),
        state,
    }
}

async fn embeddings(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.seen.lock().unwrap().push(Seen { headers, body });
    axum::Json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "emb",
        "usage": {"prompt_tokens": 3, "total_tokens": 3}
    }))
    .into_response()
}

/// The chunk the mock sends for `token` (what OpenAI sends: `"usage":null` only when usage
/// was asked for).
pub(crate) fn chunk(content: &str, finish: Option<&str>, with_usage_null: bool) -> String {
    let mut v = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-model",
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    });
    if with_usage_null {
        v["usage"] = Value::Null;
    }
    format!("data: {v}\n\n")
}

/// The whole stream the mock sends for `tokens`.
pub(crate) fn stream_events(tokens: &[String], include_usage: bool) -> Vec<String> {
    let mut events: Vec<String> = tokens
        .iter()
        .map(|t| chunk(t, None, include_usage))
        .collect();
    events.push(chunk("", Some("stop"), include_usage));
    if include_usage {
        let usage = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
            "model": "upstream-model", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": tokens.len(), "total_tokens": 11 + tokens.len()}
        });
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

async fn handle(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    s.seen.lock().unwrap().push(Seen { headers, body });
    let script = s.script.lock().unwrap().clone();
    let (tokens, first_delay, gap, reset_after) = match script {
        Script::Status { code, body } => {
            return (
                StatusCode::from_u16(code).unwrap(),
                [("content-type", "application/json")],
                body,
            )
                .into_response();
        }
        Script::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::OK.into_response();
        }
        Script::Raw(writes) => {
            let body = futures_util::stream::iter(writes.into_iter().map(Ok::<_, std::io::Error>));
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap();
        }
        Script::Tokens {
            tokens,
            first_delay,
            gap,
        } => (tokens, first_delay, gap, None),
        Script::ResetAfter { tokens, after } => (
            tokens,
            Duration::ZERO,
            Duration::from_millis(5),
            Some(after),
        ),
        Script::ErrorAfter { tokens, after } => {
            let mut events: Vec<String> = tokens[..after]
                .iter()
                .map(|t| chunk(t, None, include_usage))
                .collect();
            events.push(
                "data: {\"error\":{\"message\":\"engine died\",\"type\":\"server_error\"}}\n\n"
                    .into(),
            );
            let body = events.concat();
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from(body))
                .unwrap();
        }
    };
    if !stream {
        tokio::time::sleep(first_delay).await;
        return axum::Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1,
            "model": "upstream-model",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tokens.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": tokens.len(), "total_tokens": 11 + tokens.len()}
        }))
        .into_response();
    }
    let events = stream_events(&tokens, include_usage);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let state = Arc::clone(&s);
    tokio::spawn(async move {
        tokio::time::sleep(first_delay).await;
        for (i, e) in events.into_iter().enumerate() {
            if reset_after == Some(i) {
                let _ = tx.send(Err(std::io::Error::other("mock reset"))).await;
                return;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                state.disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-served-by", "node-7")
        .body(body)
        .unwrap()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Secrets used by tests; they must never show up anywhere but where they belong.
pub(crate) const PROVIDER_KEY: &str = "sk-provider-SECRET-9f8e7d";
pub(crate) const CLIENT_KEY: &str = "ck-client-SECRET-1a2b3c";
pub(crate) const ADMIN_TOKEN: &str = "adm-SECRET-token-77";

pub(crate) fn env(name: &str) -> Option<String> {
    match name {
        "TEST_PROVIDER_KEY" => Some(PROVIDER_KEY.into()),
        "TEST_CLIENT_KEY" => Some(CLIENT_KEY.into()),
        "TEST_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        _ => None,
    }
}

/// A gateway in front of `mocks` (providers `p0`, `p1`, … serving model `m`).
pub(crate) struct TestGateway {
    pub(crate) url: String,
    pub(crate) running: Option<Running>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) http: reqwest::Client,
}

impl TestGateway {
    /// Extra config that makes the first request go to the first provider (round robin),
    /// for tests about what happens on a given provider.
    pub(crate) const IN_ORDER: &str = "[routing]\npolicy = \"round_robin\"\n";

    pub(crate) async fn start(mocks: &[&Mock], extra: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}\n[request_log]\npath = \"{}\"\nflush_interval = \"20ms\"\n",
            dir.path().join("log.db").display()
        );
        for (i, m) in mocks.iter().enumerate() {
            text.push_str(&format!(
                "[[providers]]\nid = \"p{i}\"\nbase_url = \"{}\"\nmodels = [\"m\"]\nnode_header = \"x-served-by\"\nquantization = \"fp8\"\nprice = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n",
                m.url
            ));
        }
        TestGateway::with_config(&text, dir).await
    }

    pub(crate) async fn with_config(text: &str, dir: tempfile::TempDir) -> TestGateway {
        let config = Config::parse(text, env).unwrap();
        let running = app::start(config).await.unwrap();
        TestGateway {
            url: format!("http://{}", running.addr),
            running: Some(running),
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Starts the gateway from the configuration file `dir/candor.toml` holding `text`, so
    /// that `POST /api/config/reload` can read it again.
    pub(crate) async fn from_file(text: &str, dir: tempfile::TempDir) -> TestGateway {
        let path = dir.path().join("candor.toml");
        std::fs::write(&path, text).unwrap();
        let running = app::start_from(&path, false).await.unwrap();
        TestGateway {
            url: format!("http://{}", running.addr),
            running: Some(running),
            dir,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("log.db")
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    /// Sends `chat(stream)` to `/v1/chat/completions`.
    pub(crate) async fn chat(&self, stream: bool) -> reqwest::Response {
        self.post("/v1/chat/completions", chat(stream))
            .send()
            .await
            .unwrap()
    }

    /// `GET path` without credentials.
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// GET `path` with the admin token.
    pub(crate) async fn admin(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url)).json(&body)
    }

    /// Request-log rows, newest first, once at least `n` are written.
    pub(crate) async fn rows(&self, n: usize) -> Vec<candor::request_log::RequestRecord> {
        let filter = candor::request_log::LogFilter::default();
        for _ in 0..200 {
            if let Ok(mut store) = candor::request_log::Store::open_read_only(&self.db())
                && let Ok(rows) = store.query(&filter, i64::MAX / 2)
                && rows.len() >= n
            {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("request log never reached {n} rows");
    }
}

pub(crate) fn chat(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Starts scenario `s`, runs it to its end sampling every `every`, and stops it; returns the
/// run's report and the gateway's own health report at the end.
pub(crate) async fn run_scenario(
    s: &candor::scenario::Scenario,
    every: Duration,
) -> (
    candor::scenario::ScenarioReport,
    candor::health::report::HealthReport,
) {
    let started = candor::scenario::start(s, 0).await.unwrap();
    let report = candor::scenario::run(
        s,
        &started,
        every,
        tokio_util::sync::CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    let health = started.gateway.gateway.health.report().await.unwrap();
    started.stop().await.unwrap();
    (report, health)
}

/// A simulated provider of `model` on loopback, decoding a token every `step`; its URL
/// without the API prefix.
pub(crate) async fn start_sim(model: &str, step: Duration) -> (app::Background, String) {
    let profile = candor::sim::Profile {
        model: model.into(),
        engine: candor::sim::engine::EngineConfig {
            decode_step: step,
            ..candor::sim::engine::EngineConfig::default()
        },
        ..candor::sim::Profile::default()
    };
    let (bg, _) = app::start_sim(profile, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", bg.addr);
    (bg, url)
}

/// A loopback port free a moment ago (for a child process that must be told its port).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `tests/sdk/<script>` with `args` on a blocking thread and returns the JSON it
/// prints, failing the test with its stderr when it fails.
pub(crate) async fn sdk_script(script: &str, args: Vec<String>) -> Value {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "the SDK script failed (is the `openai` package installed? `scripts/test` installs it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Polls `check` every 50 ms until it gives a value, for at most 10 s: for a state of
/// another process, where waiting a fixed time would be either too long or too short.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// The real `candor serve` binary on a free loopback port, with the tests' secrets in its
/// environment and its output captured.
pub(crate) struct Served {
    pub(crate) url: String,
    pub(crate) dir: tempfile::TempDir,
    /// A client that trusts the server's certificate when it has one.
    pub(crate) http: reqwest::Client,
    child: std::process::Child,
}

impl Served {
    /// Starts `candor serve` on `config`, where `{listen}` stands for the address and
    /// `{dir}` for a fresh temporary directory; waits until `/livez` answers.
    pub(crate) async fn start(config: &str) -> Served {
        Served::start_with_fds(config, None).await
    }

    /// `start`, with the process's descriptor limit (soft and hard) set to `fds`.
    pub(crate) async fn start_with_fds(config: &str, fds: Option<u32>) -> Served {
        Served::launch(config, fds, None, &[]).await
    }

    /// `start`, with `env` added to the process's environment.
    pub(crate) async fn start_env(config: &str, env: &[(&str, &str)]) -> Served {
        Served::launch(config, None, None, env).await
    }

    /// `start` for a config with `[server.tls]`: `url` is `https://…`, and readiness is
    /// checked trusting the certificate in `ca`.
    pub(crate) async fn start_tls(config: &str, ca: &std::path::Path) -> Served {
        Served::launch(config, None, Some(ca), &[]).await
    }

    async fn launch(
        config: &str,
        fds: Option<u32>,
        ca: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("candor.toml");
        let text = config
            .replace("{listen}", &format!("127.0.0.1:{port}"))
            .replace("{dir}", &dir.path().display().to_string());
        std::fs::write(&cfg, text).unwrap();
        let mut command = match fds {
            None => std::process::Command::new(env!("CARGO_BIN_EXE_candor")),
            Some(n) => {
                let mut sh = std::process::Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_candor"));
                sh
            }
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("TEST_PROVIDER_KEY", PROVIDER_KEY)
            .env("TEST_CLIENT_KEY", CLIENT_KEY)
            .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("CANDOR_LOG", "debug")
            .envs(env.iter().copied())
            // Files, not pipes: a pipe nobody drains would stall a gateway that logs a lot.
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        // A fresh connection per request: some tests shorten the gateway's connection
        // limits, and a kept-alive connection it closes just as the client reuses it fails
        // the request (the keep-alive race every HTTP/1.1 client has), not the test's point.
        let mut http = reqwest::Client::builder().pool_max_idle_per_host(0);
        let scheme = match ca {
            None => "http",
            Some(path) => {
                let pem = std::fs::read(path).unwrap();
                http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
                "https"
            }
        };
        let served = Served {
            url: format!("{scheme}://127.0.0.1:{port}"),
            dir,
            http: http.build().unwrap(),
            child,
        };
        let mut last = None;
        for _ in 0..200 {
            match served.get("/livez").await {
                Ok(_) => return served,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "candor serve did not answer /livez within 10 s ({last:?}): {}",
            served.output()
        );
    }

    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `GET path`.
    pub(crate) async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http.get(self.at(path)).send().await
    }

    /// `POST path` with `body` as JSON text, sent as it is.
    pub(crate) async fn post_raw(&self, path: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.at(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends `chat(stream)` to `/v1/chat/completions`.
    pub(crate) async fn chat(&self, stream: bool) -> reqwest::Response {
        self.http
            .post(self.at("/v1/chat/completions"))
            .json(&chat(stream))
            .send()
            .await
            .unwrap()
    }

    /// The value of an unlabelled sample on `/metrics`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} on /metrics"))
    }

    /// Resident memory of the process, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// True while the process runs.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends the process SIGHUP (reload the configuration).
    pub(crate) fn hangup(&mut self) {
        assert!(self.alive(), "candor serve died: {}", self.output());
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
    }

    /// Stops the process with SIGTERM, asserts a clean exit, and returns what it wrote.
    pub(crate) fn stop(&mut self) -> String {
        assert!(self.alive(), "candor serve died: {}", self.output());
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        let logs = self.output();
        assert!(
            status.success(),
            "candor serve exited with {status}: {logs}"
        );
        logs
    }

    /// Everything the process wrote so far (stderr, then stdout).
    pub(crate) fn output(&self) -> String {
        ["stderr.log", "stdout.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway CA in `dir` and a server certificate for 127.0.0.1 and localhost signed by
/// it: `(ca.pem, cert.pem, key.pem)`.
pub(crate) fn throwaway_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let made = std::process::Command::new("sh")
        .current_dir(dir)
        .arg("-ec")
        .arg(
            "EC='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
             openssl req -x509 $EC -days 1 -subj /CN=candor-test-ca -keyout ca.key -out ca.pem
             openssl req $EC -subj /CN=localhost -keyout key.pem -out leaf.csr
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > leaf.ext
             openssl x509 -req -days 1 -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
               -extfile leaf.ext -out cert.pem",
        )
        .output()
        .expect("sh and openssl must be installed (`scripts/test` installs openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}
