//! The facts that flow from the request path to everything else: one `Observation` per
//! upstream attempt and one `RequestSummary` per client request.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Who is to blame for a failure; only `Upstream` failures count against a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The provider failed (5xx, reset, timeout, garbage).
    Upstream,
    /// The client caused it (bad request, disconnect).
    Client,
    /// Candor itself or its configuration (bad provider key, overload).
    Gateway,
}

impl Blame {
    /// Bounded label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Upstream => "upstream",
            Blame::Client => "client",
            Blame::Gateway => "gateway",
        }
    }
}

/// The error kind of an attempt Candor gave up on when it ejected the provider.
pub const ABANDONED: &str = "abandoned";

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered completely with a 2xx.
    Ok,
    /// The attempt failed.
    Error {
        /// Bounded kind (`connect`, `timeout_ttft`, `status_503`, `reset`, ...).
        kind: &'static str,
        /// Upstream HTTP status, when there was one.
        status: Option<u16>,
        /// Who caused it.
        blame: Blame,
        /// Human-readable detail (never contains secrets).
        message: String,
    },
    /// The client went away before the attempt ended.
    ClientCancelled,
    /// Candor cancelled it: the other attempt of a hedged pair answered first.
    Cancelled,
}

impl Outcome {
    /// Bounded label value for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error { kind, .. } => kind,
            Outcome::ClientCancelled => "client_cancelled",
            Outcome::Cancelled => "hedge_cancelled",
        }
    }

    /// True when Candor gave up on the attempt because it ejected the provider while the
    /// attempt waited for its first token.
    pub fn is_abandoned(&self) -> bool {
        matches!(self, Outcome::Error { kind, .. } if *kind == ABANDONED)
    }

    /// True when this outcome counts against the provider's health.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Outcome::Error {
                blame: Blame::Upstream,
                ..
            }
        )
    }
}

/// Where traffic came from: user traffic counts toward SLA figures, synthetic does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A client request.
    Client,
    /// A synthetic probe sent by Candor.
    Synthetic,
}

impl Source {
    /// `client` or `synthetic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Synthetic => "synthetic",
        }
    }
}

/// The API operation, named as in the OpenTelemetry GenAI conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    TextCompletion,
    /// `/v1/embeddings`
    Embeddings,
}

impl Operation {
    /// `gen_ai.operation.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }

    /// Path below the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "/chat/completions",
            Operation::TextCompletion => "/completions",
            Operation::Embeddings => "/embeddings",
        }
    }
}

/// The measurement of one upstream attempt. Exactly one is produced per attempt.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Index of the provider in the configuration.
    pub provider: usize,
    /// Provider id.
    pub provider_id: Arc<str>,
    /// Model the client asked for.
    pub model: Arc<str>,
    /// Operation.
    pub operation: Operation,
    /// Client or synthetic.
    pub source: Source,
    /// When the attempt started.
    pub started: Instant,
    /// Wall-clock start, Unix milliseconds.
    pub started_unix_ms: i64,
    /// Whether the response was streamed.
    pub streamed: bool,
    /// TCP (and TLS) connect time, when a new connection was opened.
    pub connect: Option<Duration>,
    /// Time until the response headers arrived.
    pub headers: Option<Duration>,
    /// Time until the first content or tool-call token (streams only).
    pub ttft: Option<Duration>,
    /// Start to end of the attempt.
    pub e2e: Duration,
    /// Per-token inter-token gaps in seconds (a chunk of k tokens contributes k gaps of gap/k).
    pub gaps: Vec<f32>,
    /// Longest gap between two chunks.
    pub max_gap: Option<Duration>,
    /// Tokens per second after the first token.
    pub decode_rate: Option<f64>,
    /// Prompt tokens (from `usage`).
    pub prompt_tokens: Option<u64>,
    /// Completion tokens (from `usage`, else counted).
    pub completion_tokens: Option<u64>,
    /// True when completion tokens were counted from chunks because `usage` was absent.
    pub tokens_counted: bool,
    /// Finish reason of the first choice.
    pub finish_reason: Option<String>,
    /// Model the upstream says served the request.
    pub served_model: Option<String>,
    /// `system_fingerprint` from the response.
    pub system_fingerprint: Option<String>,
    /// The response's `id`.
    pub response_id: Option<String>,
    /// Node that served it, from the provider's node header.
    pub node: Option<String>,
    /// Output descriptors (chat and text completions).
    pub quality: Option<crate::quality::descriptors::Descriptors>,
    /// Sent as a probe to a recovering provider.
    pub probe: bool,
    /// Sent as a hedge (a duplicate of a slow attempt).
    pub hedge: bool,
    /// How it ended.
    pub outcome: Outcome,
}

impl Observation {
    /// A blank observation for an attempt that is starting now.
    pub fn start(
        provider: usize,
        provider_id: Arc<str>,
        model: Arc<str>,
        operation: Operation,
        source: Source,
        streamed: bool,
        started: Instant,
    ) -> Observation {
        Observation {
            provider,
            provider_id,
            model,
            operation,
            source,
            started,
            started_unix_ms: unix_ms_now(),
            streamed,
            connect: None,
            headers: None,
            ttft: None,
            e2e: Duration::ZERO,
            gaps: Vec::new(),
            max_gap: None,
            decode_rate: None,
            prompt_tokens: None,
            completion_tokens: None,
            tokens_counted: false,
            finish_reason: None,
            served_model: None,
            system_fingerprint: None,
            response_id: None,
            node: None,
            quality: None,
            probe: false,
            hedge: false,
            outcome: Outcome::Ok,
        }
    }
}

/// What the client experienced for one request, after all attempts.
#[derive(Debug, Clone)]
pub struct RequestSummary {
    /// Model requested.
    pub model: Arc<str>,
    /// Provider whose attempt answered (or the last one tried).
    pub provider: Option<Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// True when the failure, if any, was caused by the client.
    pub client_fault: bool,
    /// Time to first token, for streams.
    pub ttft: Option<Duration>,
    /// End to end.
    pub e2e: Duration,
    /// Decode rate.
    pub decode_rate: Option<f64>,
    /// Whether it met every target.
    pub within_targets: bool,
    /// When it ended.
    pub ended: Instant,
    /// Client or synthetic.
    pub source: Source,
    /// The client's remaining deadline when the request arrived.
    pub deadline: Option<Duration>,
}

/// Wall-clock now as Unix milliseconds.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_attempt_abandoned_at_ejection_is_abandoned() {
        let error = |kind| Outcome::Error {
            kind,
            status: None,
            blame: Blame::Upstream,
            message: String::new(),
        };
        assert!(error(ABANDONED).is_abandoned());
        assert!(error(ABANDONED).is_upstream_failure());
        assert!(!error("timeout_ttft").is_abandoned());
        assert!(!Outcome::Cancelled.is_abandoned());
    }
}
