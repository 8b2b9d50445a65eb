//! One try against one provider: send, wait for headers and (for streams) the first token
//! within the timeouts, and classify any failure by blame and retryability.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::time::{Instant, timeout_at};

use super::meter::{DataKind, Meter, truncate};
use super::sse::{EventTooLarge, SseSplitter, event_data};
use crate::config::Timeouts;
use crate::observation::{Blame, Observation, Outcome};
use crate::quality::descriptors::Ask;
use crate::upstream::{Provider, with_connect_timing};

/// Largest upstream body read into memory (non-streamed responses and error bodies).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Why an attempt failed, who is to blame, and whether another provider may be tried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// Bounded kind for metrics and logs.
    pub kind: &'static str,
    /// Upstream status, when there was one.
    pub status: Option<u16>,
    /// Who caused it.
    pub blame: Blame,
    /// True when another provider may be tried (nothing has reached the client yet).
    pub retryable: bool,
    /// Human-readable detail, free of secrets.
    pub message: String,
    /// The upstream's error response, passed to the client when the client is to blame.
    pub body: Option<(Bytes, Option<HeaderValue>)>,
    /// How long the upstream asked us to stay away (`retry-after`, in seconds).
    pub retry_after: Option<Duration>,
}

impl CallError {
    /// A failure the upstream caused, retryable.
    pub(super) fn upstream(kind: &'static str, message: impl Into<String>) -> CallError {
        CallError {
            kind,
            status: None,
            blame: Blame::Upstream,
            retryable: true,
            message: message.into(),
            body: None,
            retry_after: None,
        }
    }

    /// The outcome this error gives the attempt.
    pub fn outcome(&self) -> Outcome {
        Outcome::Error {
            kind: self.kind,
            status: self.status,
            blame: self.blame,
            message: self.message.clone(),
        }
    }

    /// True for timeouts (the client gets 504 when every attempt timed out).
    pub fn is_timeout(&self) -> bool {
        self.kind.starts_with("timeout")
    }

    /// A timeout that fired because the client's deadline (which capped it) ran out is the
    /// deadline's doing, not the provider's: it must not count against the provider's health.
    pub fn blame_deadline(mut self, deadline: Option<Instant>, now: Instant) -> CallError {
        if self.is_timeout() && deadline.is_some_and(|d| d <= now) {
            self.kind = "timeout_deadline";
            self.blame = Blame::Client;
            self.message = format!("the client's deadline ran out ({})", self.message);
        }
        self
    }
}

/// What went upstream.
#[derive(Debug)]
pub struct AttemptRequest<'a> {
    /// The pooled client.
    pub client: &'a reqwest::Client,
    /// Target provider.
    pub provider: &'a Provider,
    /// Full URL.
    pub url: String,
    /// Body to send.
    pub body: Bytes,
    /// True when the client asked for a stream.
    pub stream: bool,
    /// Headers forwarded from the client (`traceparent`, deadline).
    pub forward: HeaderMap,
    /// Timeouts for this attempt.
    pub timeouts: Timeouts,
    /// What output descriptors need (none for embeddings).
    pub ask: Option<Ask>,
    /// Largest SSE event accepted from the upstream.
    pub max_event: usize,
}

/// A stream whose first token has arrived: ready to commit to the client.
pub struct OpenStream {
    /// Upstream status (2xx).
    pub status: StatusCode,
    /// Upstream content type.
    pub content_type: Option<HeaderValue>,
    /// Events already read (up to and including the first token), as the meter saw them.
    pub first_events: Vec<(Bytes, DataKind)>,
    /// The rest of the upstream body.
    pub rest: BoxStream<'static, reqwest::Result<Bytes>>,
    /// Bytes read past the last complete event.
    pub splitter: SseSplitter,
    /// Measurements so far.
    pub meter: Meter,
    /// When the attempt's total time runs out.
    pub deadline: Instant,
}

impl std::fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStream")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A successful attempt.
#[derive(Debug)]
pub enum Answer {
    /// A complete non-streamed response.
    Complete {
        /// Upstream status (2xx).
        status: StatusCode,
        /// Upstream content type.
        content_type: Option<HeaderValue>,
        /// Upstream body, unchanged.
        body: Bytes,
    },
    /// A stream with its first token in hand.
    Stream(Box<OpenStream>),
}

/// Runs one attempt, filling `obs` with what was measured before the answer (or failure).
/// For a complete answer `obs` is final; for a stream the meter inside finishes it.
pub async fn run(req: AttemptRequest<'_>, obs: &mut Observation) -> Result<Answer, CallError> {
    let started = obs.started;
    let total_deadline = started + req.timeouts.total;
    let mut builder = req
        .client
        .post(&req.url)
        .headers(req.forward)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = &req.provider.config.api_key {
        builder = builder.bearer_auth(key.expose());
    }
    if req.stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    let request = builder.body(req.body);

    let ttft_deadline = (started + req.timeouts.ttft).min(total_deadline);
    let headers_deadline = if req.stream {
        ttft_deadline
    } else {
        total_deadline
    };
    let (sent, connect) = with_connect_timing(timeout_at(headers_deadline, request.send())).await;
    obs.connect = connect;
    let response = match sent {
        Err(_) if req.stream => return Err(timeout("timeout_ttft", req.timeouts.ttft)),
        Err(_) => return Err(timeout("timeout_total", req.timeouts.total)),
        Ok(Err(e)) => return Err(transport_error(&e)),
        Ok(Ok(r)) => r,
    };
    obs.headers = Some(Instant::now().saturating_duration_since(started));
    if let Some(name) = &req.provider.config.node_header {
        obs.node = response
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    if !status.is_success() {
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = read_body(response, total_deadline)
            .await
            .unwrap_or_default();
        let mut err = status_error(status, body, content_type, retry_after);
        if let Some(key) = &req.provider.config.api_key {
            redact(&mut err, key.expose());
        }
        return Err(err);
    }
    let is_sse = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !req.stream || !is_sse {
        let body = read_body(response, total_deadline).await?;
        let mut meter = Meter::new(started).asking(req.ask);
        meter.on_body(&body);
        meter.finish(Instant::now(), obs);
        return Ok(Answer::Complete {
            status,
            content_type,
            body,
        });
    }

    let mut rest = response.bytes_stream().boxed();
    let mut splitter = SseSplitter::with_limit(req.max_event);
    let mut meter = Meter::new(started).asking(req.ask);
    let mut first_events = Vec::new();
    loop {
        let Ok(next) = timeout_at(ttft_deadline, rest.next()).await else {
            return Err(timeout("timeout_ttft", req.timeouts.ttft));
        };
        match next {
            Some(Ok(bytes)) => splitter.push(&bytes),
            Some(Err(e)) => return Err(transport_error(&e)),
            None => {
                if let Some(tail) = splitter.last_event() {
                    let kind = event_data(&tail)
                        .map_or(DataKind::Other, |d| meter.on_data(Instant::now(), &d));
                    first_events.push((tail, kind));
                }
                if meter.saw_done() || meter.saw_finish() {
                    // A complete stream with no output tokens: still a valid answer.
                    break;
                }
                return Err(CallError::upstream(
                    "reset",
                    "upstream closed the stream before the first token",
                ));
            }
        }
        let now = Instant::now();
        // Stop at the first token: what follows belongs to the committed stream.
        while !meter.saw_token()
            && let Some(event) = splitter.next_event().map_err(too_large)?
        {
            let kind = event_data(&event).map_or(DataKind::Other, |d| meter.on_data(now, &d));
            if kind == DataKind::Error {
                return Err(CallError::upstream(
                    "stream_error",
                    format!(
                        "upstream sent an error before the first token: {}",
                        meter.stream_error().unwrap_or_default()
                    ),
                ));
            }
            first_events.push((event, kind));
        }
        if meter.saw_token() || meter.saw_done() {
            break;
        }
    }
    Ok(Answer::Stream(Box::new(OpenStream {
        status,
        content_type,
        first_events,
        rest,
        splitter,
        meter,
        deadline: total_deadline,
    })))
}

/// An upstream event over the limit: the upstream's failure.
pub fn too_large(e: EventTooLarge) -> CallError {
    CallError::upstream("too_large", e.to_string())
}

fn timeout(kind: &'static str, limit: Duration) -> CallError {
    CallError::upstream(
        kind,
        format!(
            "no response within the {} limit of {}",
            kind.trim_start_matches("timeout_"),
            humantime::format_duration(limit)
        ),
    )
}

/// Reads a whole body, bounded in size and time.
async fn read_body(response: reqwest::Response, deadline: Instant) -> Result<Bytes, CallError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    loop {
        match timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(CallError::upstream(
                    "timeout_total",
                    "upstream body did not finish in time",
                ));
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Ok(Some(Err(e))) => return Err(transport_error(&e)),
            Ok(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > MAX_UPSTREAM_BODY {
                    return Err(CallError::upstream(
                        "too_large",
                        "upstream body exceeds 64 MiB",
                    ));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// Classifies a transport failure; the message names the root cause, never the URL.
pub fn transport_error(e: &reqwest::Error) -> CallError {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let kind = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout_connect"
    } else {
        "reset"
    };
    let what = if e.is_connect() {
        "cannot connect to upstream"
    } else {
        "upstream connection failed"
    };
    CallError::upstream(kind, format!("{what}: {root}"))
}

fn status_error(
    status: StatusCode,
    body: Bytes,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
) -> CallError {
    let code = status.as_u16();
    let (kind, blame, retryable) = match code {
        // This provider's context window is smaller than the prompt: another provider of
        // the model may have a larger one (a fleet can mix them), so try it; not a health
        // failure of this one.
        400 | 413 if context_overflow(&body) => (CONTEXT_EXCEEDED, Blame::Gateway, true),
        429 => ("rate_limited", Blame::Upstream, true),
        408 => ("status_408", Blame::Upstream, true),
        401 | 403 => ("upstream_auth", Blame::Gateway, true),
        404 => ("upstream_not_found", Blame::Gateway, true),
        400..=499 => ("client_error", Blame::Client, false),
        _ => ("server_error", Blame::Upstream, true),
    };
    let detail = upstream_message(&body);
    let mut message = format!("upstream answered {status}");
    if let Some(d) = detail {
        message.push_str(": ");
        message.push_str(&d);
    }
    if let Some(ra) = retry_after.as_ref().and_then(|v| v.to_str().ok()) {
        message.push_str(&format!(" (retry-after {ra})"));
    }
    CallError {
        kind,
        status: Some(code),
        blame,
        retryable,
        message,
        body: Some((body, content_type)),
        retry_after: retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}

/// The kind of a refusal for the provider's context window: retried elsewhere, and the
/// client's answer only when every provider refused.
pub const CONTEXT_EXCEEDED: &str = "context_exceeded";

/// An upstream refusal because the prompt does not fit its context window: llama.cpp's
/// `exceed_context_size_error` ("exceeds the available context size"), OpenAI's
/// `context_length_exceeded`, vLLM's "maximum context length".
fn context_overflow(body: &[u8]) -> bool {
    const MARKERS: [&str; 4] = [
        "exceed_context_size_error",
        "exceeds the available context size",
        "context_length_exceeded",
        "maximum context length",
    ];
    let head = &body[..body.len().min(4096)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    MARKERS.iter().any(|m| text.contains(m))
}

/// Removes the provider's key from an upstream error (some providers echo it back).
fn redact(err: &mut CallError, key: &str) {
    const MASK: &str = "[redacted]";
    if key.is_empty() {
        return;
    }
    if err.message.contains(key) {
        err.message = err.message.replace(key, MASK);
    }
    if let Some((body, _)) = &mut err.body
        && let Some(text) = std::str::from_utf8(body).ok().filter(|t| t.contains(key))
    {
        *body = Bytes::from(text.replace(key, MASK));
    }
}

/// The `error.message` of an OpenAI-style error body, else a short prefix of the body.
fn upstream_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct E {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Inner {
        Obj { message: String },
        Text(String),
    }
    if let Ok(e) = serde_json::from_slice::<E>(body) {
        return Some(truncate(
            match &e.error {
                Inner::Obj { message } | Inner::Text(message) => message,
            },
            300,
        ));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| truncate(text, 200))
}
