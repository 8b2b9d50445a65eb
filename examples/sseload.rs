//! The streaming half of `bench/overhead`: a timestamping SSE upstream and a load client that
//! measures, per stream, the time to first chunk and, per chunk, the delay from the moment
//! the upstream wrote it (its send time, in ns, is the chunk's text) to the moment the client
//! read it (both read the same system clock, so the delay through a proxy minus the delay
//! direct is what the proxy adds per chunk).
//!
//! `cargo run --release --example sseload -- upstream --listen 127.0.0.1:9000 --chunks 20 --gap-ms 40`
//! `cargo run --release --example sseload -- run --url http://127.0.0.1:8080/v1/chat/completions --streams 200 --seconds 20`
//!
//! `run` prints one JSON line: streams completed, errors (by kind), chunks, and the P50 /
//! P99 / P99.9 / max of the time to first chunk and of the per-chunk delay, in microseconds.
#![expect(
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a benchmark tool prints its figures and runs its connections on tasks"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve streams of `chunks` chunks, one every `gap_ms`, each stamped with its send time.
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 20)]
        chunks: u32,
        #[arg(long, default_value_t = 40)]
        gap_ms: u64,
    },
    /// Keep `streams` streams open against `url` for `seconds` (closed loop: each stream is
    /// followed by the next), then print the figures.
    Run {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 200)]
        streams: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = "bench-stream")]
        model: String,
        /// Sent as `Authorization: Bearer …` (a proxy that needs a key).
        #[arg(long)]
        bearer: Option<String>,
    },
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Upstream {
            listen,
            chunks,
            gap_ms,
        } => upstream(listen, chunks, Duration::from_millis(gap_ms)).await,
        Command::Run {
            url,
            streams,
            seconds,
            model,
            bearer,
        } => run(url, streams, Duration::from_secs(seconds), model, bearer).await,
    }
}

async fn upstream(listen: SocketAddr, chunks: u32, gap: Duration) -> anyhow::Result<()> {
    let app = Router::new().fallback(move |body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let usage = req["stream_options"]["include_usage"] == true;
        // Chunk 0 at once (no prefill), then one every `gap`; then the finish chunk, the
        // usage chunk when asked for, and [DONE].
        let events = futures_util::stream::unfold(0u32, move |i| async move {
            if i > chunks + 2 {
                return None;
            }
            if i > 0 && i < chunks {
                tokio::time::sleep(gap).await;
            }
            let base = |v: Value| format!("data: {v}\n\n");
            let text = match i {
                i if i < chunks => base(json!({
                    "id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "bench-model",
                    "choices": [{"index": 0, "delta": {"content": format!(" {}", now_ns())},
                                 "finish_reason": null}],
                })),
                i if i == chunks => base(json!({
                    "id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "bench-model",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                })),
                i if i == chunks + 1 && usage => base(json!({
                    "id": "chatcmpl-bench", "object": "chat.completion.chunk",
                    "created": 1_700_000_000, "model": "bench-model", "choices": [],
                    "usage": {"prompt_tokens": 42, "completion_tokens": chunks,
                              "total_tokens": 42 + chunks},
                })),
                i if i == chunks + 1 => String::new(),
                _ => "data: [DONE]\n\n".to_owned(),
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), i + 1))
        });
        let mut r = Response::new(Body::from_stream(events));
        r.headers_mut()
            .insert(CONTENT_TYPE, "text/event-stream".parse().expect("valid"));
        r
    });
    let listener = tokio::net::TcpListener::bind(listen).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// What one client task measured.
#[derive(Default)]
struct Tally {
    streams: u64,
    chunks: u64,
    ttfc_us: Vec<u64>,
    delay_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

async fn run(
    url: String,
    streams: usize,
    span: Duration,
    model: String,
    bearer: Option<String>,
) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = bearer {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse()?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(streams)
        .tcp_nodelay(true)
        .build()?;
    let body = Bytes::from(serde_json::to_vec(&json!({
        "model": model, "stream": true, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Explain continuous batching in one sentence."}],
    }))?);
    let end = Instant::now() + span;
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < end {
                    if let Err(kind) = one_stream(&client, &url, body.clone(), &mut t).await {
                        *t.errors.entry(kind).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.streams += t.streams;
        all.chunks += t.chunks;
        all.ttfc_us.extend(t.ttfc_us);
        all.delay_us.extend(t.delay_us);
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    println!(
        "{}",
        json!({
            "streams": all.streams,
            "chunks": all.chunks,
            "errors": all.errors,
            "streams_per_s": all.streams as f64 / span.as_secs_f64(),
            "ttfc_us": percentiles(&mut all.ttfc_us),
            "chunk_delay_us": percentiles(&mut all.delay_us),
        })
    );
    Ok(())
}

/// One stream, start to `[DONE]`; an error names its kind.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    t: &mut Tally,
) -> Result<(), String> {
    let started = Instant::now();
    let resp = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("connect/send: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut first = true;
    let mut done = false;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|_| "body read".to_owned())?;
        let at = now_ns();
        if first {
            t.ttfc_us
                .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            first = false;
        }
        buf.extend_from_slice(&piece);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let Some(data) = event.strip_prefix(b"data: ") else {
                continue;
            };
            if data.starts_with(b"[DONE]") {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_slice(data).map_err(|_| "bad chunk".to_owned())?;
            // The upstream writes its send time as the token; a proxy that re-encodes
            // chunks (LiteLLM) keeps the content.
            let sent = v["choices"][0]["delta"]["content"]
                .as_str()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if let Some(sent) = sent {
                t.chunks += 1;
                t.delay_us.push(at.saturating_sub(sent) / 1_000);
            }
        }
    }
    if !done {
        return Err("stream ended without [DONE]".into());
    }
    t.streams += 1;
    Ok(())
}

fn percentiles(xs: &mut [u64]) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_unstable();
    let at = |q: f64| xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)];
    json!({"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "max": xs[xs.len() - 1]})
}
