//! `candor load`: replays a real production trace against an OpenAI-compatible endpoint
//! (streaming, prompts and `max_tokens` sized from the trace, optional RAG dependency call
//! with a deadline), shows progress, and reports SLA attainment and latency percentiles.

pub mod trace;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::Targets;
use crate::health::window::LogHistogram;
use crate::observation::{Observation, Operation, Source};
use crate::proxy::meter::Meter;
use crate::proxy::sse::{SseSplitter, event_data};
use trace::TraceRequest;

/// A RAG step before each LLM call.
#[derive(Debug, Clone)]
pub struct Rag {
    /// The dependency's query URL.
    pub url: String,
    /// Client deadline for the whole request (dependency + LLM).
    pub deadline: Duration,
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of the endpoint (`…/v1` is appended when missing).
    pub url: String,
    /// Model to request.
    pub model: String,
    /// Bearer key, if the endpoint needs one.
    pub api_key: Option<String>,
    /// The recorded requests.
    pub trace: Vec<TraceRequest>,
    /// Time compression (2 = twice as fast as recorded).
    pub speedup: f64,
    /// Prompt length scale.
    pub prompt_scale: f64,
    /// Prompt length cap, tokens.
    pub max_prompt_tokens: u32,
    /// Output length cap, tokens.
    pub max_output_tokens: u32,
    /// Stop after this many requests.
    pub limit: Option<usize>,
    /// Optional RAG step.
    pub rag: Option<Rag>,
    /// Targets a request is judged against.
    pub targets: Targets,
    /// Draw a progress line on standard error.
    pub progress: bool,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th.
    pub p95: Option<f64>,
    /// 99th.
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(h: &LogHistogram) -> Percentiles {
        let q = |p| h.quantile(p).map(|v| v * 1000.0);
        Percentiles {
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// What the replay measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: u64,
    /// Answered completely with 2xx.
    pub ok: u64,
    /// Failures by kind (`http_503`, `connect`, `stream_error`, …).
    pub errors: BTreeMap<String, u64>,
    /// Requests within every target.
    pub within_targets: u64,
    /// within_targets / requests.
    pub within_targets_share: f64,
    /// Time to first token, ms.
    pub ttft_ms: Percentiles,
    /// End to end, ms.
    pub e2e_ms: Percentiles,
    /// Median decode rate, tokens/s.
    pub decode_tokens_per_s_p50: Option<f64>,
    /// Wall time of the replay, s.
    pub duration_s: f64,
    /// What the answers looked like (counts of requests).
    pub quality: QualitySignals,
    /// Requests by when they were sent, in `SLICE` steps from the origin.
    pub timeline: Vec<Slice>,
}

/// Width of a timeline slice.
pub const SLICE: Duration = Duration::from_secs(5);

/// The requests sent during one slice of time.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Slice {
    /// Requests sent in the slice (and finished).
    pub requests: u64,
    /// Of which within every target.
    pub within_targets: u64,
    /// Of which failed.
    pub errors: u64,
}

impl std::ops::Add for Slice {
    type Output = Slice;
    fn add(self, o: Slice) -> Slice {
        Slice {
            requests: self.requests + o.requests,
            within_targets: self.within_targets + o.within_targets,
            errors: self.errors + o.errors,
        }
    }
}

impl LoadReport {
    /// Requests that got neither an answer nor an error response: the connection broke,
    /// the stream was cut without a finish, or nothing came back in time.
    pub fn lost(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "transport" | "connect" | "stream_reset" | "truncated" | "timeout"
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests sent in `[from, to)` seconds from the origin (whole slices): (requests,
    /// within targets, errors).
    pub fn between(&self, from: f64, to: f64) -> Slice {
        let w = SLICE.as_secs_f64();
        self.timeline
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as f64 * w >= from && (*i as f64 + 1.0) * w <= to)
            .fold(Slice::default(), |a, (_, s)| a + *s)
    }
}

/// Cheap output checks the load generator makes on every answer.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QualitySignals {
    /// Ended with `finish_reason = length`.
    pub finish_length: u64,
    /// Completion length more than 20 % away from what the trace asked for.
    pub output_length_off: u64,
    /// `usage.prompt_tokens` under 90 % of the prompt sent (silent truncation).
    pub prompt_tokens_short: u64,
    /// Output with characters outside ASCII (the prompts are ASCII English).
    pub non_ascii_output: u64,
}

/// Measurements accumulated over one or more replays.
#[derive(Debug, Default)]
pub struct Tally {
    report: LoadReport,
    ttft: LogHistogram,
    e2e: LogHistogram,
    decode: LogHistogram,
    elapsed: Duration,
    origin: Option<Instant>,
}

impl Tally {
    /// The report over everything recorded so far.
    pub fn report(&self) -> LoadReport {
        let mut report = self.report.clone();
        report.within_targets_share = report.within_targets as f64 / report.requests.max(1) as f64;
        report.ttft_ms = Percentiles::of(&self.ttft);
        report.e2e_ms = Percentiles::of(&self.e2e);
        report.decode_tokens_per_s_p50 = self.decode.quantile(0.5);
        report.duration_s = self.elapsed.as_secs_f64();
        report
    }

    /// Sets the time the timeline counts from (default: the first replay's start).
    pub fn set_origin(&mut self, origin: Instant) {
        self.origin = Some(origin);
    }

    fn slice(&mut self, sent: Instant) -> &mut Slice {
        let origin = *self.origin.get_or_insert(sent);
        let i =
            (sent.saturating_duration_since(origin).as_secs_f64() / SLICE.as_secs_f64()) as usize;
        let timeline = &mut self.report.timeline;
        if timeline.len() <= i {
            timeline.resize(i + 1, Slice::default());
        }
        &mut timeline[i]
    }
}

/// A prompt of about `tokens` tokens (four characters each), varied by `seed`.
pub fn prompt_of(tokens: u32, seed: usize) -> String {
    const WORDS: &[&str] = &[
        "data", "cache", "model", "token", "batch", "queue", "layer", "query",
    ];
    let target = tokens as usize * 4;
    let mut s = format!("Request {seed}. ");
    let mut i = seed;
    while s.len() < target {
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.truncate(target.max(8));
    s
}

struct Done {
    started: Instant,
    quality: QualitySignals,
    ok: bool,
    error: Option<String>,
    ttft: Option<Duration>,
    e2e: Duration,
    decode: Option<f64>,
}

async fn one(client: &reqwest::Client, cfg: &LoadConfig, r: TraceRequest, index: usize) -> Done {
    let started = Instant::now();
    let fail = |kind: String| Done {
        started,
        quality: QualitySignals::default(),
        ok: false,
        error: Some(kind),
        ttft: None,
        e2e: started.elapsed(),
        decode: None,
    };
    let mut deadline_ms = None;
    if let Some(rag) = &cfg.rag {
        match client
            .post(&rag.url)
            .json(&serde_json::json!({"query": index}))
            .timeout(rag.deadline)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                let _ = resp.bytes().await;
            }
            Ok(resp) => return fail(format!("dependency_{}", resp.status().as_u16())),
            Err(_) => return fail("dependency_timeout".into()),
        }
        let left = rag.deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return fail("deadline_exceeded".into());
        }
        deadline_ms = Some(left.as_millis());
    }
    let prompt_tokens =
        ((f64::from(r.input_tokens) * cfg.prompt_scale) as u32).clamp(1, cfg.max_prompt_tokens);
    let out = r.output_tokens.clamp(1, cfg.max_output_tokens);
    let body = serde_json::json!({
        "model": cfg.model,
        "stream": true,
        "messages": [{"role": "user", "content": prompt_of(prompt_tokens, index)}],
        "max_tokens": out + 16,
        "min_tokens": out,
        "stream_options": {"include_usage": true},
    });
    let base = cfg.url.trim_end_matches('/');
    let url = if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    let mut req = client.post(url).json(&body);
    if let Some(k) = &cfg.api_key {
        req = req.bearer_auth(k);
    }
    if let Some(ms) = deadline_ms {
        req = req
            .header("x-candor-timeout-ms", ms.to_string())
            .timeout(Duration::from_millis(ms as u64));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return fail("timeout".into()),
        Err(e) if e.is_connect() => return fail("connect".into()),
        Err(_) => return fail("transport".into()),
    };
    if !resp.status().is_success() {
        return fail(format!("http_{}", resp.status().as_u16()));
    }
    let mut meter = Meter::new(started);
    let mut splitter = SseSplitter::default();
    let mut body = resp.bytes_stream();
    let mut broken = None;
    let mut non_ascii = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                let now = Instant::now();
                splitter.push(&bytes);
                loop {
                    match splitter.next_event() {
                        Ok(Some(ev)) => {
                            if let Some(data) = event_data(&ev) {
                                non_ascii |= has_non_ascii(&data);
                                meter.on_data(now, &data);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            broken = Some("too_large");
                            break;
                        }
                    }
                }
                if broken.is_some() {
                    break;
                }
            }
            Err(e) => {
                broken = Some(if e.is_timeout() {
                    "timeout"
                } else {
                    "stream_reset"
                });
                break;
            }
        }
    }
    if meter.stream_error().is_some() {
        broken = Some("stream_error");
    }
    if broken.is_none() && !meter.saw_done() && !meter.saw_finish() {
        broken = Some("truncated");
    }
    let mut obs = Observation::start(
        0,
        "load".into(),
        cfg.model.as_str().into(),
        Operation::Chat,
        Source::Client,
        true,
        started,
    );
    meter.finish(Instant::now(), &mut obs);
    let got = obs.completion_tokens.unwrap_or(0) as f64;
    let quality = QualitySignals {
        finish_length: u64::from(obs.finish_reason.as_deref() == Some("length")),
        output_length_off: u64::from((got - f64::from(out)).abs() > 0.2 * f64::from(out)),
        prompt_tokens_short: u64::from(
            obs.prompt_tokens
                .is_some_and(|p| (p as f64) < 0.9 * f64::from(prompt_tokens)),
        ),
        non_ascii_output: u64::from(non_ascii),
    };
    let ok = broken.is_none();
    Done {
        started,
        // Answer checks describe answers: a broken stream is counted as an error instead.
        quality: if ok {
            quality
        } else {
            QualitySignals::default()
        },
        ok,
        error: broken.map(str::to_owned),
        ttft: obs.ttft,
        e2e: obs.e2e,
        decode: obs.decode_rate,
    }
}

/// True when a JSON payload carries non-ASCII text, raw or as a `\\uXXXX` escape above 0x7F.
fn has_non_ascii(data: &[u8]) -> bool {
    if data.iter().any(|&b| b >= 0x80) {
        return true;
    }
    data.windows(6).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && std::str::from_utf8(&w[2..])
                .ok()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
                .is_some_and(|c| c > 0x7f)
    })
}

fn progress_line(t: &Tally, sent: usize, total: usize, in_flight: usize, elapsed: Duration) {
    let width = 30;
    let filled = (sent * width).checked_div(total).unwrap_or(0);
    let share = t.report.within_targets as f64 * 100.0 / t.report.requests.max(1) as f64;
    let line = format!(
        "\r[{}{}] {sent}/{total} sent, {} done, {in_flight} in flight, {} errors, {share:.1}% within targets, {:.0}s ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        t.report.requests,
        t.report.errors.values().sum::<u64>(),
        elapsed.as_secs_f64()
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Replays the trace until it ends, `limit` is reached, or `stop` is cancelled.
pub async fn run(cfg: &LoadConfig, stop: CancellationToken) -> LoadReport {
    let mut tally = Tally::default();
    run_into(cfg, stop, &mut tally).await;
    tally.report()
}

/// Like [`run`], adding to `tally` (so repeated replays give one report).
pub async fn run_into(cfg: &LoadConfig, stop: CancellationToken, tally: &mut Tally) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default();
    let total = cfg
        .limit
        .map_or(cfg.trace.len(), |l| l.min(cfg.trace.len()));
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let speed = cfg.speedup.max(1e-3);
    let record = |t: &mut Tally, d: Done| {
        t.report.requests += 1;
        let within = d.ok && cfg.targets.met_by(true, d.ttft, d.e2e, d.decode);
        if d.ok {
            t.report.ok += 1;
            t.e2e.record_n(d.e2e.as_secs_f64(), 1);
        }
        if let Some(e) = d.error {
            *t.report.errors.entry(e).or_default() += 1;
        }
        t.report.within_targets += u64::from(within);
        let slice = t.slice(d.started);
        slice.requests += 1;
        slice.within_targets += u64::from(within);
        slice.errors += u64::from(!d.ok);
        let q = &mut t.report.quality;
        q.finish_length += d.quality.finish_length;
        q.output_length_off += d.quality.output_length_off;
        q.prompt_tokens_short += d.quality.prompt_tokens_short;
        q.non_ascii_output += d.quality.non_ascii_output;
        if let Some(v) = d.ttft {
            t.ttft.record_n(v.as_secs_f64(), 1);
        }
        if let Some(v) = d.decode {
            t.decode.record_n(v, 1);
        }
    };
    loop {
        let due = cfg
            .trace
            .get(next)
            .filter(|_| next < total)
            .map(|r| start + r.offset.div_f64(speed));
        if due.is_none() && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            () = async { if let Some(d) = due { sleep_until(d).await } else { std::future::pending().await } } => {
                let r = cfg.trace[next];
                in_flight.push(one(&client, cfg, r, next));
                next += 1;
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => record(tally, done),
            _ = tick.tick(), if cfg.progress => progress_line(tally, next, total, in_flight.len(), start.elapsed()),
            () = stop.cancelled() => break,
        }
    }
    if cfg.progress {
        progress_line(tally, next, total, in_flight.len(), start.elapsed());
        let _ = std::io::stderr().lock().write_all(b"\n");
    }
    tally.elapsed += start.elapsed();
}

/// The report as a text table.
pub fn table(r: &LoadReport) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let errors = if r.errors.is_empty() {
        "none".into()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "requests            {}\nok                  {}\nerrors              {errors}\nwithin targets      {} ({:.1}%)\nTTFT ms             p50 {}  p95 {}  p99 {}\nend-to-end ms       p50 {}  p95 {}  p99 {}\ndecode tokens/s     p50 {}\nanswers             finish=length {}, output length off {}, prompt tokens short {}, non-ASCII {}\nduration            {:.1}s ({:.1} req/s)\n",
        r.requests,
        r.ok,
        r.within_targets,
        r.within_targets_share * 100.0,
        f(r.ttft_ms.p50),
        f(r.ttft_ms.p95),
        f(r.ttft_ms.p99),
        f(r.e2e_ms.p50),
        f(r.e2e_ms.p95),
        f(r.e2e_ms.p99),
        r.decode_tokens_per_s_p50
            .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
        r.quality.finish_length,
        r.quality.output_length_off,
        r.quality.prompt_tokens_short,
        r.quality.non_ascii_output,
        r.duration_s,
        r.requests as f64 / r.duration_s.max(1e-9),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_non_ascii_raw_or_escaped() {
        assert!(!has_non_ascii(br#"{"c":"plain \n text \u0041"}"#));
        assert!(has_non_ascii("{\"c\":\"สวัสดี\"}".as_bytes()));
        assert!(has_non_ascii(br#"{"c":"\u0e2a"}"#));
    }

    #[test]
    fn prompts_have_the_asked_length() {
        let p = prompt_of(100, 3);
        assert_eq!(crate::sim::text::count_tokens(&p), 100);
        assert_ne!(prompt_of(100, 4), p);
    }
}
