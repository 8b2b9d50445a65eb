//! Sends one probe's requests through the gateway's own request path and reads the answers
//! as a client would: text, finish reason, usage, time to first token, decode rate.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::Deserialize;
use tokio::time::{Instant, timeout_at};

use crate::observation::{Operation, Source, unix_ms_now};
use crate::proxy::sse::{SseSplitter, event_data};
use crate::proxy::{self, ClientRequest, Error, Gateway, Reply};
use crate::quality::probe::{Output, Probe};

/// What a probe's requests got.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// When the first request was sent.
    pub(super) at: Instant,
    pub(super) at_unix_ms: i64,
    /// One output per repeat (empty on failure).
    pub(super) outputs: Vec<Output>,
    /// End to end, TTFT and decode rate of the first request.
    pub(super) latency: Option<Duration>,
    pub(super) ttft: Option<Duration>,
    pub(super) decode_tps: Option<f64>,
    /// Availability failure: (signal, reason).
    pub(super) failure: Option<(&'static str, String)>,
}

/// Sends `probe` (its repeats at once) to provider `i` for `model`.
pub(super) async fn run(
    gw: &std::sync::Arc<Gateway>,
    i: usize,
    model: &str,
    probe: &Probe,
    ttft_limit: Duration,
    timeout: Duration,
) -> Sent {
    let mut sent = Sent {
        at: Instant::now(),
        at_unix_ms: unix_ms_now(),
        outputs: Vec::new(),
        latency: None,
        ttft: None,
        decode_tps: None,
        failure: None,
    };
    let mut body = probe.body.clone();
    body["model"] = serde_json::Value::String(model.to_owned());
    let body = Bytes::from(body.to_string());
    let runs = (0..probe.repeats).map(|_| once(gw, i, body.clone(), ttft_limit, timeout));
    for (rep, result) in join_all(runs).await.into_iter().enumerate() {
        match result {
            Ok((output, timing)) => {
                if rep == 0 {
                    (sent.latency, sent.ttft, sent.decode_tps) = timing;
                }
                sent.outputs.push(output);
            }
            Err(failure) => {
                sent.outputs.clear();
                sent.failure = Some(failure);
                break;
            }
        }
    }
    sent
}

type Timing = (Option<Duration>, Option<Duration>, Option<f64>);

async fn once(
    gw: &std::sync::Arc<Gateway>,
    i: usize,
    body: Bytes,
    ttft_limit: Duration,
    timeout: Duration,
) -> Result<(Output, Timing), (&'static str, String)> {
    let arrived = Instant::now();
    let req = ClientRequest {
        operation: Operation::Chat,
        body,
        request_id: format!("canary-{:024x}", rand::random::<u128>() >> 32),
        traceparent: None,
        client_key_id: Some(super::KEY_ID.into()),
        arrived,
        source: Source::Synthetic,
        deadline: Some(arrived + timeout),
        pin: Some(i),
    };
    let reply = match timeout_at(arrived + ttft_limit, proxy::handle(gw, req)).await {
        Err(_) => return Err(no_first_token(ttft_limit)),
        Ok(Err(
            Error::AllFailed {
                timed_out: true, ..
            }
            | Error::Deadline(_),
        )) => {
            return Err(no_first_token(ttft_limit));
        }
        Ok(Err(e)) => return Err(("error", proxy::meter::truncate(&e.to_string(), 300))),
        Ok(Ok(r)) => r,
    };
    let first = Instant::now();
    match reply {
        Reply::Complete { status, body, .. } => {
            if !status.is_success() {
                return Err((
                    "error",
                    format!(
                        "status {status}: {}",
                        proxy::meter::truncate(&String::from_utf8_lossy(&body), 300)
                    ),
                ));
            }
            let mut out = Output::default();
            let mut reader = Reader::default();
            reader.whole(&body, &mut out);
            Ok((out, (Some(first - arrived), None, None)))
        }
        Reply::Stream { mut stream, .. } => {
            let mut out = Output::default();
            let mut reader = Reader::default();
            let mut splitter = SseSplitter::default();
            let mut last = first;
            loop {
                let Ok(next) = timeout_at(arrived + timeout, stream.next()).await else {
                    return Err(("error", format!("the answer took over {timeout:?}")));
                };
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| ("error", format!("stream broke: {e}")))?;
                splitter.push(&chunk);
                let now = Instant::now();
                while let Some(event) = splitter
                    .next_event()
                    .map_err(|e| ("error", e.to_string()))?
                {
                    if let Some(data) = event_data(&event)
                        && reader.chunk(&data, &mut out)?
                    {
                        last = now;
                    }
                }
            }
            let span = last.saturating_duration_since(first).as_secs_f64();
            let decode =
                (reader.chunks > 1 && span > 0.0).then(|| (reader.chunks - 1) as f64 / span);
            Ok((out, (Some(last - arrived), Some(first - arrived), decode)))
        }
    }
}

fn no_first_token(limit: Duration) -> (&'static str, String) {
    (
        "no_first_token",
        format!("no first token within {:.1} s", limit.as_secs_f64()),
    )
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<crate::proxy::meter::Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Message>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

/// Assembles an answer from chunks or a whole body.
#[derive(Debug, Default)]
struct Reader {
    chunks: u64,
}

impl Reader {
    /// One SSE data payload; true when it carried output.
    fn chunk(&mut self, data: &[u8], out: &mut Output) -> Result<bool, (&'static str, String)> {
        if data == b"[DONE]" {
            return Ok(false);
        }
        let Ok(c) = serde_json::from_slice::<Chunk>(data) else {
            return Ok(false);
        };
        if let Some(e) = c.error {
            return Err(("error", format!("error inside the stream: {e}")));
        }
        Ok(self.take(c, out))
    }

    fn whole(&mut self, body: &[u8], out: &mut Output) {
        if let Ok(c) = serde_json::from_slice::<Chunk>(body) {
            self.take(c, out);
        }
    }

    fn take(&mut self, c: Chunk, out: &mut Output) -> bool {
        if let Some(u) = c.usage {
            out.prompt_tokens = u.prompt_tokens.or(out.prompt_tokens);
            out.completion_tokens = u.completion_tokens.or(out.completion_tokens);
        }
        let mut got = false;
        for ch in c.choices {
            let text = ch
                .delta
                .or(ch.message)
                .and_then(|m| m.content)
                .or(ch.text)
                .unwrap_or_default();
            if !text.is_empty() {
                out.text.push_str(&text);
                got = true;
            }
            if ch.finish_reason.is_some() {
                out.finish_reason = ch.finish_reason;
            }
        }
        self.chunks += u64::from(got);
        got
    }
}
