//! Measures one upstream attempt token by token: TTFT, every inter-token gap, the longest
//! gap, decode rate, usage, finish reason. Pure: every method takes `now`.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::observation::Observation;
use crate::quality::descriptors::{Ask, MAX_TEXT, describe};

/// What one SSE data payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// The `[DONE]` sentinel.
    Done,
    /// The final usage-only chunk (`choices: []`, `usage` set).
    UsageOnly,
    /// An `{"error": ...}` object sent mid-stream.
    Error,
    /// Anything else (content, role, finish).
    Other,
}

/// Token-level measurements of one attempt, fed as the response arrives.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    first_chunk_len: usize,
    /// (gap since the previous token-bearing chunk in seconds, content length) per chunk
    /// after the first.
    chunks: Vec<(f32, usize)>,
    max_gap: Duration,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    model: Option<String>,
    fingerprint: Option<String>,
    response_id: Option<String>,
    done: bool,
    error: Option<String>,
    /// What the request asked, when output descriptors are wanted.
    ask: Option<Ask>,
    /// The output text (up to `MAX_TEXT`), for descriptors; never stored.
    text: String,
}

/// Token counts from an OpenAI `usage` object.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceView<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    system_fingerprint: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

fn len(s: &Option<Cow<'_, str>>) -> usize {
    s.as_deref().map_or(0, str::len)
}

impl ChoiceView<'_> {
    /// Bytes of generated output this choice carries (content, reasoning, tool calls).
    fn output_len(&self) -> usize {
        let delta = self.delta.as_ref().map_or(0, |d| {
            len(&d.content)
                + len(&d.reasoning_content)
                + len(&d.reasoning)
                + d.tool_calls.as_ref().map_or(0, |calls| {
                    calls
                        .iter()
                        .filter_map(|c| c.function.as_ref())
                        .map(|f| len(&f.name) + len(&f.arguments))
                        .sum()
                })
        });
        delta + len(&self.text)
    }
}

#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(default)]
    choices: Vec<BodyChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    system_fingerprint: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BodyChoice {
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    message: Option<BodyMessage>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct BodyMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Appends `s` to `text` while it is shorter than `MAX_TEXT`.
fn keep(text: &mut String, s: &str) {
    let room = MAX_TEXT.saturating_sub(text.len());
    text.push_str(&s[..s.floor_char_boundary(room)]);
}

impl Meter {
    /// A meter for an attempt sent at `started`.
    pub fn new(started: Instant) -> Meter {
        Meter {
            started,
            first_token: None,
            last_token: None,
            first_chunk_len: 0,
            chunks: Vec::new(),
            max_gap: Duration::ZERO,
            usage: None,
            finish_reason: None,
            model: None,
            fingerprint: None,
            response_id: None,
            done: false,
            error: None,
            ask: None,
            text: String::new(),
        }
    }

    /// Computes output descriptors for a request that asked `ask` (none for embeddings).
    pub fn asking(mut self, ask: Option<Ask>) -> Meter {
        self.ask = ask;
        self
    }

    /// Records one SSE `data:` payload received at `now`.
    pub fn on_data(&mut self, now: Instant, data: &[u8]) -> DataKind {
        if data == b"[DONE]" {
            self.done = true;
            return DataKind::Done;
        }
        let Ok(chunk) = serde_json::from_slice::<ChunkView<'_>>(data) else {
            return DataKind::Other;
        };
        if let Some(err) = chunk.error {
            self.error = Some(truncate(err.get(), 300));
            return DataKind::Error;
        }
        if self.model.is_none() {
            self.model = chunk.model.map(Cow::into_owned);
        }
        if self.fingerprint.is_none() {
            self.fingerprint = chunk.system_fingerprint.map(Cow::into_owned);
        }
        if self.response_id.is_none() {
            self.response_id = chunk.id.map(Cow::into_owned);
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        let mut out_len = 0;
        for c in &chunk.choices {
            out_len += c.output_len();
            if self.ask.is_some() {
                if let Some(content) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    keep(&mut self.text, content);
                }
                keep(&mut self.text, c.text.as_deref().unwrap_or_default());
            }
            if self.finish_reason.is_none()
                && let Some(f) = &c.finish_reason
            {
                self.finish_reason = Some(f.to_string());
            }
        }
        if out_len > 0 {
            match self.last_token {
                None => {
                    self.first_token = Some(now);
                    self.first_chunk_len = out_len;
                }
                Some(prev) => {
                    let gap = now.saturating_duration_since(prev);
                    self.max_gap = self.max_gap.max(gap);
                    self.chunks.push((gap.as_secs_f32(), out_len));
                }
            }
            self.last_token = Some(now);
        }
        if chunk.choices.is_empty() && chunk.usage.is_some() {
            DataKind::UsageOnly
        } else {
            DataKind::Other
        }
    }

    /// Records a complete non-streamed response body.
    pub fn on_body(&mut self, body: &[u8]) {
        if let Ok(b) = serde_json::from_slice::<BodyView<'_>>(body) {
            self.usage = b.usage;
            self.model = b.model.map(Cow::into_owned);
            self.fingerprint = b.system_fingerprint.map(Cow::into_owned);
            self.response_id = b.id.map(Cow::into_owned);
            if let Some(c) = b.choices.into_iter().next() {
                if self.ask.is_some() {
                    let text = c.message.and_then(|m| m.content).or(c.text);
                    keep(&mut self.text, text.as_deref().unwrap_or_default());
                }
                self.finish_reason = c.finish_reason;
            }
        }
    }

    /// True once the `[DONE]` sentinel arrived.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// True once a finish reason arrived.
    pub fn saw_finish(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// True once any output token arrived.
    pub fn saw_token(&self) -> bool {
        self.first_token.is_some()
    }

    /// Token-bearing chunks so far (one token each for most servers).
    pub fn token_chunks(&self) -> u64 {
        u64::from(self.first_token.is_some()) + self.chunks.len() as u64
    }

    /// The error object the upstream sent mid-stream, if any.
    pub fn stream_error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Writes the measurements into `obs` for an attempt that ended at `now`.
    pub fn finish(self, now: Instant, obs: &mut Observation) {
        obs.e2e = now.saturating_duration_since(self.started);
        obs.ttft = self
            .first_token
            .map(|t| t.saturating_duration_since(self.started));
        obs.served_model = self.model;
        obs.system_fingerprint = self.fingerprint;
        obs.response_id = self.response_id;
        obs.finish_reason = self.finish_reason;
        obs.prompt_tokens = self.usage.and_then(|u| u.prompt_tokens);
        let token_chunks = self.first_token.map_or(0, |_| 1 + self.chunks.len() as u64);
        let reported = self.usage.and_then(|u| u.completion_tokens);
        obs.completion_tokens = reported.or((token_chunks > 0).then_some(token_chunks));
        obs.tokens_counted = reported.is_none() && token_chunks > 0;
        if let Some(ask) = &self.ask {
            obs.quality = Some(describe(
                &self.text,
                ask,
                obs.finish_reason.as_deref(),
                obs.completion_tokens,
                obs.prompt_tokens,
            ));
        }
        if self.chunks.is_empty() {
            return;
        }
        obs.max_gap = Some(self.max_gap);
        // Share the completion tokens among chunks by their output length, so a chunk that
        // carries k tokens counts as k gaps of gap/k.
        let total_tokens = obs.completion_tokens.unwrap_or(token_chunks) as f64;
        let total_len =
            (self.first_chunk_len + self.chunks.iter().map(|c| c.1).sum::<usize>()).max(1) as f64;
        let per_byte = total_tokens / total_len;
        let exact = total_tokens as u64 == token_chunks;
        let mut gaps = Vec::with_capacity(obs.completion_tokens.unwrap_or(0) as usize);
        for &(gap, len) in &self.chunks {
            let k = if exact {
                1
            } else {
                ((len as f64 * per_byte).round() as usize).max(1)
            };
            gaps.extend(std::iter::repeat_n(gap / k as f32, k));
        }
        let first_k = if exact {
            1.0
        } else {
            (self.first_chunk_len as f64 * per_byte).round().max(1.0)
        };
        if let (Some(first), Some(last)) = (self.first_token, self.last_token) {
            let span = last.saturating_duration_since(first).as_secs_f64();
            if span > 0.0 {
                obs.decode_rate = Some(((total_tokens - first_k).max(1.0)) / span);
            }
        }
        obs.gaps = gaps;
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", &s[..s.floor_char_boundary(max)])
}

#[cfg(test)]
mod tests;
