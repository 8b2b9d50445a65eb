//! The spans of one finished client request: one SERVER span for the request and one CLIENT
//! span per upstream attempt, named and attributed per the OpenTelemetry GenAI semantic
//! conventions, with Candor's own measurements under `candor.*` and the OpenInference
//! attributes Arize Phoenix renders natively.

use std::time::Duration;

use super::context::{RequestTrace, SpanId, TraceId};
use crate::proxy::body::Sampling;
use crate::request_log::{AttemptRecord, RequestRecord};

/// An attribute value (the OTLP `AnyValue` kinds Candor uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// An array of strings.
    StrArray(Vec<String>),
}

/// OTLP span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request as Candor served it.
    Server = 2,
    /// One call to a provider.
    Client = 3,
}

/// How a span ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Nothing to report.
    Unset,
    /// Failed, and why.
    Error(String),
}

/// One span, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// Its parent, if any.
    pub parent: Option<SpanId>,
    /// `{gen_ai.operation.name} {gen_ai.request.model}`.
    pub name: String,
    /// SERVER or CLIENT.
    pub kind: Kind,
    /// Start, Unix ns.
    pub start_ns: u64,
    /// End, Unix ns.
    pub end_ns: u64,
    /// Attributes, keys unique.
    pub attributes: Vec<(&'static str, Value)>,
    /// Outcome.
    pub status: Status,
}

/// What the request path knows about one attempt beyond its request-log record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptSpan {
    /// The attempt's span (also sent upstream in `traceparent`).
    pub span_id: SpanId,
    /// When it started, after the request arrived.
    pub offset: Duration,
    /// The provider's host and port.
    pub server: Option<(String, u16)>,
    /// The model name sent upstream.
    pub upstream_model: String,
    /// The response's `id`.
    pub response_id: Option<String>,
    /// The model the upstream says served it.
    pub served_model: Option<String>,
    /// Finish reason.
    pub finish_reason: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// The incident open on the provider when the attempt ended: (id, failure mode).
    pub incident: Option<(String, String)>,
}

/// A finished request, as the spans are built from it.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Its trace.
    pub trace: RequestTrace,
    /// The request-log row (attempts in the order they ended).
    pub record: &'a RequestRecord,
    /// Per attempt, aligned with `record.attempts`.
    pub attempts: &'a [AttemptSpan],
    /// Arrival, Unix ns.
    pub start_ns: u64,
    /// The client's sampling parameters.
    pub sampling: &'a Sampling,
    /// The incident open on the answering provider, if any: (id, failure mode).
    pub incident: Option<(String, String)>,
}

/// Attribute list builder that skips absent values.
#[derive(Default)]
struct Attrs(Vec<(&'static str, Value)>);

impl Attrs {
    fn str(&mut self, k: &'static str, v: Option<&str>) -> &mut Self {
        if let Some(v) = v {
            self.0.push((k, Value::Str(v.to_owned())));
        }
        self
    }
    fn int(&mut self, k: &'static str, v: Option<u64>) -> &mut Self {
        if let Some(v) = v {
            self.0
                .push((k, Value::Int(i64::try_from(v).unwrap_or(i64::MAX))));
        }
        self
    }
    fn f64(&mut self, k: &'static str, v: Option<f64>) -> &mut Self {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.0.push((k, Value::F64(v)));
        }
        self
    }
    fn bool(&mut self, k: &'static str, v: bool) -> &mut Self {
        self.0.push((k, Value::Bool(v)));
        self
    }
    fn strs(&mut self, k: &'static str, v: Vec<String>) -> &mut Self {
        if !v.is_empty() {
            self.0.push((k, Value::StrArray(v)));
        }
        self
    }
}

/// The request's spans: its SERVER span first, then one CLIENT span per attempt.
pub fn build(f: &Finished<'_>) -> Vec<Span> {
    let mut out = Vec::with_capacity(1 + f.attempts.len());
    out.push(server_span(f));
    for (a, extra) in f.record.attempts.iter().zip(f.attempts) {
        out.push(attempt_span(f, a, extra));
    }
    out
}

fn name(operation: &str, model: &str) -> String {
    if model.is_empty() {
        operation.to_owned()
    } else {
        format!("{operation} {model}")
    }
}

fn ns(ms: f64) -> u64 {
    // Saturating float-to-integer conversion; negative or NaN becomes 0.
    (ms * 1e6) as u64
}

fn server_span(f: &Finished<'_>) -> Span {
    let r = f.record;
    let mut a = Attrs::default();
    a.str("gen_ai.operation.name", Some(&r.operation))
        .str("gen_ai.request.model", Some(&r.requested_model))
        .str("gen_ai.provider.name", r.provider.as_deref());
    sampling(&mut a, f.sampling, r.max_tokens);
    let answer = answering(f);
    a.str("gen_ai.response.model", r.served_model.as_deref())
        .str(
            "gen_ai.response.id",
            answer.and_then(|x| x.response_id.as_deref()),
        )
        .strs(
            "gen_ai.response.finish_reasons",
            r.finish_reason.iter().cloned().collect(),
        )
        .int("gen_ai.usage.input_tokens", r.prompt_tokens)
        .int("gen_ai.usage.output_tokens", r.completion_tokens)
        .str("error.type", r.error_type.as_deref())
        .int("http.response.status_code", Some(u64::from(r.status)))
        .str("candor.request.id", Some(&r.request_id))
        .str("candor.provider.id", r.provider.as_deref())
        .bool("candor.stream", r.stream)
        .f64("candor.ttft_ms", r.ttft_ms)
        .f64("candor.decode_tokens_per_s", r.decode_tps)
        .f64("candor.longest_gap_ms", r.max_gap_ms)
        .str("candor.route.reason", r.route_reason.as_deref())
        .strs("candor.route.candidates", candidates(r))
        .int("candor.attempts", Some(r.attempts.len() as u64))
        .f64("candor.cost_usd", r.cost_usd)
        .bool("candor.within_targets", r.within_targets)
        .str("candor.source", Some(&r.source))
        .str("candor.client_key.id", r.client_key_id.as_deref())
        .f64("candor.provider.queue_depth", r.queue_depth)
        .f64("candor.provider.kv_usage", r.kv_usage);
    incident(&mut a, f.incident.as_ref());
    a.str("openinference.span.kind", Some("CHAIN"));
    Span {
        trace_id: f.trace.trace_id,
        span_id: f.trace.span_id,
        parent: f.trace.parent,
        name: name(&r.operation, &r.requested_model),
        kind: Kind::Server,
        start_ns: f.start_ns,
        end_ns: f.start_ns.saturating_add(ns(r.e2e_ms)),
        attributes: a.0,
        status: match (&r.error_type, &r.error_message) {
            (Some(kind), message) => Status::Error(message.clone().unwrap_or(kind.clone())),
            (None, _) if r.status >= 500 => Status::Error(format!("status {}", r.status)),
            _ => Status::Unset,
        },
    }
}

/// The attempt whose answer the client got: the last one that succeeded, else the last.
fn answering<'a>(f: &Finished<'a>) -> Option<&'a AttemptSpan> {
    f.record
        .attempts
        .iter()
        .zip(f.attempts)
        .rev()
        .find(|(a, _)| a.outcome == "ok")
        .or_else(|| f.record.attempts.iter().zip(f.attempts).next_back())
        .map(|(_, x)| x)
}

fn candidates(r: &RequestRecord) -> Vec<String> {
    r.route_candidates
        .iter()
        .map(|c| format!("{} {}: {}", c.provider, c.decision, c.reason))
        .collect()
}

fn sampling(a: &mut Attrs, s: &Sampling, max_tokens: Option<u64>) {
    a.int("gen_ai.request.max_tokens", max_tokens)
        .f64("gen_ai.request.temperature", s.temperature)
        .f64("gen_ai.request.top_p", s.top_p)
        .f64("gen_ai.request.frequency_penalty", s.frequency_penalty)
        .f64("gen_ai.request.presence_penalty", s.presence_penalty)
        .strs("gen_ai.request.stop_sequences", s.stop.clone());
    if let Some(seed) = s.seed {
        a.0.push(("gen_ai.request.seed", Value::Int(seed)));
    }
    a.int("gen_ai.request.choice.count", s.n.filter(|&n| n != 1));
}

fn incident(a: &mut Attrs, incident: Option<&(String, String)>) {
    if let Some((id, mode)) = incident {
        a.str("candor.incident.id", Some(id))
            .str("candor.incident.mode", Some(mode));
    }
}

fn attempt_kind(a: &AttemptRecord, first: bool) -> &'static str {
    if a.probe {
        "probe"
    } else if a.hedge {
        "hedge"
    } else if first {
        "first"
    } else {
        "retry"
    }
}

fn attempt_span(f: &Finished<'_>, a: &AttemptRecord, x: &AttemptSpan) -> Span {
    let r = f.record;
    let first = r
        .attempts
        .iter()
        .zip(f.attempts)
        .find(|(b, _)| !b.hedge && !b.probe)
        .is_some_and(|(_, y)| y.span_id == x.span_id);
    let decision = r
        .route_candidates
        .iter()
        .find(|c| c.provider == a.provider)
        .map(|c| format!("{}: {}", c.decision, c.reason));
    let failed = a.outcome != "ok";
    let mut at = Attrs::default();
    at.str("gen_ai.operation.name", Some(&r.operation))
        .str("gen_ai.request.model", Some(&x.upstream_model))
        .str("gen_ai.provider.name", Some(&a.provider));
    sampling(&mut at, f.sampling, r.max_tokens);
    at.str("gen_ai.response.model", x.served_model.as_deref())
        .str("gen_ai.response.id", x.response_id.as_deref())
        .strs(
            "gen_ai.response.finish_reasons",
            x.finish_reason.iter().cloned().collect(),
        )
        .int("gen_ai.usage.input_tokens", x.prompt_tokens)
        .int("gen_ai.usage.output_tokens", x.completion_tokens)
        .str("error.type", failed.then_some(a.outcome.as_str()))
        .str("server.address", x.server.as_ref().map(|s| s.0.as_str()))
        .int("server.port", x.server.as_ref().map(|s| u64::from(s.1)))
        .int("http.response.status_code", a.status.map(u64::from))
        .str("candor.provider.id", Some(&a.provider))
        .str("candor.attempt.kind", Some(attempt_kind(a, first)))
        .str("candor.attempt.outcome", Some(&a.outcome))
        .str("candor.attempt.blame", a.blame.as_deref())
        .str("candor.route.decision", decision.as_deref())
        .f64("candor.ttft_ms", a.ttft_ms)
        .f64("candor.decode_tokens_per_s", a.decode_tps)
        .f64("candor.longest_gap_ms", a.max_gap_ms)
        .f64("candor.connect_ms", a.connect_ms)
        .int("candor.provider.in_flight", u64::try_from(a.in_flight).ok());
    incident(&mut at, x.incident.as_ref());
    openinference(&mut at, r, x);
    let start_ns = f
        .start_ns
        .saturating_add(u64::try_from(x.offset.as_nanos()).unwrap_or(u64::MAX));
    Span {
        trace_id: f.trace.trace_id,
        span_id: x.span_id,
        parent: Some(f.trace.span_id),
        name: name(&r.operation, &x.upstream_model),
        kind: Kind::Client,
        start_ns,
        end_ns: start_ns.saturating_add(ns(a.e2e_ms)),
        attributes: at.0,
        status: if failed {
            Status::Error(a.error.clone().unwrap_or_else(|| a.outcome.clone()))
        } else {
            Status::Unset
        },
    }
}

/// OpenInference's names for what the GenAI attributes say, so Phoenix shows the attempt
/// as the LLM call it is (the request span is the CHAIN around it).
fn openinference(a: &mut Attrs, r: &RequestRecord, x: &AttemptSpan) {
    let kind = if r.operation == "embeddings" {
        "EMBEDDING"
    } else {
        "LLM"
    };
    let total = x.prompt_tokens.zip(x.completion_tokens).map(|(p, c)| p + c);
    a.str("openinference.span.kind", Some(kind))
        .str(
            "llm.model_name",
            Some(x.served_model.as_deref().unwrap_or(&x.upstream_model)),
        )
        .int("llm.token_count.prompt", x.prompt_tokens)
        .int("llm.token_count.completion", x.completion_tokens)
        .int("llm.token_count.total", total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Candidate;

    fn record() -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            operation: "chat".into(),
            requested_model: "m".into(),
            provider: Some("b".into()),
            served_model: Some("served-m".into()),
            status: 200,
            e2e_ms: 120.0,
            ttft_ms: Some(40.0),
            prompt_tokens: Some(7),
            completion_tokens: Some(3),
            finish_reason: Some("stop".into()),
            max_tokens: Some(16),
            route_candidates: vec![Candidate {
                provider: "a".into(),
                state: "healthy".into(),
                score: None,
                predicted_ms: None,
                decision: "chosen".into(),
                reason: "fastest".into(),
            }],
            attempts: vec![
                AttemptRecord {
                    provider: "a".into(),
                    started_unix_ms: 0,
                    outcome: "server_error".into(),
                    status: Some(503),
                    blame: Some("upstream".into()),
                    error: Some("overloaded".into()),
                    connect_ms: None,
                    headers_ms: None,
                    ttft_ms: None,
                    e2e_ms: 10.0,
                    max_gap_ms: None,
                    decode_tps: None,
                    in_flight: 1,
                    probe: false,
                    hedge: false,
                },
                AttemptRecord {
                    provider: "b".into(),
                    started_unix_ms: 0,
                    outcome: "ok".into(),
                    status: None,
                    blame: None,
                    error: None,
                    connect_ms: None,
                    headers_ms: None,
                    ttft_ms: Some(20.0),
                    e2e_ms: 100.0,
                    max_gap_ms: Some(5.0),
                    decode_tps: Some(50.0),
                    in_flight: 2,
                    probe: false,
                    hedge: false,
                },
            ],
            ..RequestRecord::default()
        }
    }

    fn get<'a>(s: &'a Span, k: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v)
    }

    #[test]
    fn a_request_with_a_failover_is_a_server_span_and_two_client_spans() {
        let r = record();
        let attempts = [
            AttemptSpan {
                span_id: [2; 8],
                upstream_model: "m-a".into(),
                server: Some(("10.0.0.1".into(), 8000)),
                ..AttemptSpan::default()
            },
            AttemptSpan {
                span_id: [3; 8],
                offset: Duration::from_millis(15),
                upstream_model: "m-b".into(),
                response_id: Some("chatcmpl-9".into()),
                served_model: Some("served-m".into()),
                prompt_tokens: Some(7),
                completion_tokens: Some(3),
                incident: Some(("inc-1".into(), "tail_latency".into())),
                ..AttemptSpan::default()
            },
        ];
        let sampling = Sampling {
            temperature: Some(0.2),
            ..Sampling::default()
        };
        let spans = build(&Finished {
            trace: RequestTrace {
                trace_id: [9; 16],
                span_id: [1; 8],
                parent: Some([8; 8]),
                sampled: true,
            },
            record: &r,
            attempts: &attempts,
            start_ns: 1_000_000_000,
            sampling: &sampling,
            incident: None,
        });
        assert_eq!(spans.len(), 3);
        let (server, failed, answer) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!((server.kind, server.parent), (Kind::Server, Some([8; 8])));
        assert_eq!(server.name, "chat m");
        assert_eq!(server.end_ns - server.start_ns, 120_000_000);
        assert_eq!(
            get(server, "gen_ai.response.id"),
            Some(&Value::Str("chatcmpl-9".into()))
        );
        assert_eq!(
            get(server, "gen_ai.request.temperature"),
            Some(&Value::F64(0.2))
        );
        assert_eq!(
            get(server, "gen_ai.response.finish_reasons"),
            Some(&Value::StrArray(vec!["stop".into()]))
        );
        assert_eq!(failed.parent, Some([1; 8]));
        assert_eq!(failed.kind, Kind::Client);
        assert_eq!(failed.status, Status::Error("overloaded".into()));
        assert_eq!(
            get(failed, "error.type"),
            Some(&Value::Str("server_error".into()))
        );
        assert_eq!(get(failed, "server.port"), Some(&Value::Int(8000)));
        assert_eq!(
            get(failed, "candor.attempt.kind"),
            Some(&Value::Str("first".into()))
        );
        assert_eq!(
            get(answer, "candor.attempt.kind"),
            Some(&Value::Str("retry".into()))
        );
        assert_eq!(answer.start_ns, 1_015_000_000);
        assert_eq!(answer.name, "chat m-b");
        assert_eq!(
            get(answer, "candor.incident.mode"),
            Some(&Value::Str("tail_latency".into()))
        );
        assert_eq!(get(answer, "llm.token_count.total"), Some(&Value::Int(10)));
        assert_eq!(get(answer, "error.type"), None);
        for s in &spans {
            let mut keys: Vec<_> = s.attributes.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), n, "attribute keys must be unique in {}", s.name);
        }
    }
}
