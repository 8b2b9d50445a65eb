//! Follows one client request through its attempts and makes sure that, however it ends
//! (answer, failure, or the client walking away), exactly one observation per attempt and
//! exactly one request-log row leave the request path.

use std::sync::Arc;

use tokio::time::Instant;

use super::Gateway;
use super::body::Sampling;
use crate::observation::{Observation, Outcome, RequestSummary, Source, unix_ms_now};
use crate::otel::RequestTrace;
use crate::otel::context::{SpanId, new_span_id};
use crate::otel::span::{self, AttemptSpan};
use crate::request_log::{AttemptRecord, RequestRecord, ms};
use crate::upstream::{InFlight, Provider};

/// Status recorded when the client went away before the answer ended (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One attempt of the request: its observation and its hold on the provider's in-flight
/// count. A reserved slot (a hedge that may never fire) has no guard until launched.
#[derive(Debug)]
pub struct Slot {
    /// The attempt's measurements.
    pub obs: Observation,
    /// The provider's in-flight count when it started (itself included).
    pub in_flight: i64,
    /// The attempt's span, sent upstream in `traceparent` (zero when tracing is off).
    pub span_id: SpanId,
    guard: Option<InFlight>,
}

impl Slot {
    /// A slot for an attempt on `provider`, started now.
    pub fn launch(&mut self, provider: &Arc<Provider>) {
        let now = Instant::now();
        self.obs.started = now;
        self.obs.started_unix_ms = unix_ms_now();
        self.guard = Some(provider.track(self.obs.streamed));
        self.in_flight = provider.in_flight();
    }

    /// True once the attempt went out.
    pub fn launched(&self) -> bool {
        self.guard.is_some()
    }
}

/// The timing of the attempt whose answer the client got.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// Client-perceived time to first token.
    ttft: Option<std::time::Duration>,
    /// Decode rate of the answering attempt.
    decode: Option<f64>,
    /// The answering provider.
    provider: usize,
}

/// The life of one client request.
#[derive(Debug)]
pub struct RequestTrack {
    gw: Arc<Gateway>,
    started: Instant,
    source: Source,
    record: RequestRecord,
    /// Open attempts by slot number (a closed slot is `None`, so numbers stay valid).
    slots: Vec<Option<Slot>>,
    /// The attempt committed to the client (a stream in progress).
    committed: Option<Slot>,
    answer: Option<Answer>,
    finished: bool,
    /// The request's trace, when tracing is on.
    trace: Option<RequestTrace>,
    /// What the spans need beyond the record, when this request's trace is recorded.
    spans: Option<Box<Spans>>,
}

/// What a recorded trace needs beyond the request-log row.
#[derive(Debug)]
struct Spans {
    /// Arrival, Unix ns.
    start_ns: u64,
    sampling: Sampling,
    /// Per attempt, aligned with the record's attempts.
    attempts: Vec<AttemptSpan>,
}

impl RequestTrack {
    /// The client's deadline, when it sent one.
    pub fn client_deadline(&self) -> Option<Instant> {
        let ms = u64::try_from(self.record.deadline_ms?).ok()?;
        Some(self.started + std::time::Duration::from_millis(ms))
    }

    /// Starts tracking a request that arrived at `started`.
    pub fn new(
        gw: Arc<Gateway>,
        started: Instant,
        source: Source,
        mut record: RequestRecord,
    ) -> Self {
        record.source = source.as_str().to_owned();
        RequestTrack {
            gw,
            started,
            source,
            record,
            slots: Vec::new(),
            committed: None,
            answer: None,
            finished: false,
            trace: None,
            spans: None,
        }
    }

    /// Follows the request in `trace`; a recorded trace keeps what its spans need.
    pub fn traced(&mut self, trace: RequestTrace, sampling: &Sampling) {
        self.trace = Some(trace);
        if trace.sampled {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(self.started.elapsed());
            self.spans = Some(Box::new(Spans {
                start_ns: u64::try_from(now.as_nanos()).unwrap_or(0),
                sampling: sampling.clone(),
                attempts: Vec::new(),
            }));
        }
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// Reserves a slot for an attempt described by `obs`; it goes out when launched.
    pub fn reserve(&mut self, obs: Observation) -> usize {
        self.record.provider = Some(obs.provider_id.to_string());
        let span_id = if self.trace.is_some() {
            new_span_id()
        } else {
            [0; 8]
        };
        self.slots.push(Some(Slot {
            obs,
            in_flight: 0,
            span_id,
            guard: None,
        }));
        self.slots.len() - 1
    }

    /// Opens an attempt on `provider` now; it stays counted in flight until closed.
    pub fn open(&mut self, obs: Observation, provider: &Arc<Provider>) -> usize {
        let i = self.reserve(obs);
        if let Some(Some(s)) = self.slots.get_mut(i) {
            s.launch(provider);
        }
        i
    }

    /// Slot `i`.
    pub fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// Slots `i` and `j` (distinct) at once.
    pub fn pair_mut(&mut self, i: usize, j: usize) -> Option<(&mut Slot, &mut Slot)> {
        if i == j || i.max(j) >= self.slots.len() {
            return None;
        }
        let (lo, hi) = self.slots.split_at_mut(i.max(j));
        let (a, b) = (lo[i.min(j)].as_mut()?, hi[0].as_mut()?);
        Some(if i < j { (a, b) } else { (b, a) })
    }

    /// The committed attempt's observation.
    pub fn current_mut(&mut self) -> Option<&mut Observation> {
        self.committed.as_mut().map(|c| &mut c.obs)
    }

    /// Commits slot `i` to the client (a stream); it ends with the request.
    pub fn commit(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i).and_then(Option::take) {
            let old = self.committed.take();
            self.end_slot(old, true);
            self.committed = Some(slot);
        }
    }

    /// Closes slot `i`: records it (if it went out) and hands its observation over.
    pub fn close(&mut self, i: usize) {
        let slot = self.slots.get_mut(i).and_then(Option::take);
        self.end_slot(slot, false);
    }

    /// Records a finished attempt; `answered` marks the one whose answer the client got.
    fn end_slot(&mut self, slot: Option<Slot>, answered: bool) {
        let Some(Slot {
            obs,
            in_flight,
            span_id,
            guard,
        }) = slot
        else {
            return;
        };
        let Some(guard) = guard else {
            // A hedge that never went out is not an attempt.
            return;
        };
        // The provider the attempt went to, even if a reload has replaced it since.
        let provider = Arc::clone(guard.provider());
        drop(guard);
        if obs.probe {
            provider.release_probe();
        }
        let cost = provider.config.price.cost(
            obs.prompt_tokens.unwrap_or(0),
            obs.completion_tokens.unwrap_or(0),
        );
        self.record
            .attempts
            .push(AttemptRecord::from_observation(&obs, in_flight));
        if let Some(spans) = &mut self.spans {
            spans.attempts.push(attempt_span(
                &self.gw,
                &provider,
                &obs,
                span_id,
                self.started,
            ));
        }
        if cost > 0.0 {
            *self.record.cost_usd.get_or_insert(0.0) += cost;
        }
        if answered || obs.outcome == Outcome::Ok || self.answer.is_none() {
            self.record.provider = Some(obs.provider_id.to_string());
            self.record.in_flight = Some(in_flight);
            self.take_answer(&obs);
        }
        self.gw.health.observe(obs, cost, in_flight);
    }

    /// Ends every open attempt (in slot order) and the committed one.
    fn end_all(&mut self) {
        for i in 0..self.slots.len() {
            self.close(i);
        }
        let committed = self.committed.take();
        self.end_slot(committed, true);
    }

    /// Copies into the record what the client got from this attempt.
    fn take_answer(&mut self, a: &Observation) {
        let r = &mut self.record;
        r.quantization = self
            .gw
            .upstreams()
            .get(a.provider)
            .and_then(|p| p.config.quantization.clone());
        r.served_model.clone_from(&a.served_model);
        r.system_fingerprint.clone_from(&a.system_fingerprint);
        r.node.clone_from(&a.node);
        r.decode_tps = a.decode_rate;
        r.max_gap_ms = a.max_gap.map(ms);
        r.prompt_tokens = a.prompt_tokens;
        r.completion_tokens = a.completion_tokens;
        r.tokens_counted = a.tokens_counted;
        r.finish_reason.clone_from(&a.finish_reason);
        r.quality.clone_from(&a.quality);
        // What the client waited for its first token: failed attempts before this one included.
        self.answer = Some(Answer {
            ttft: a
                .ttft
                .map(|t| a.started.saturating_duration_since(self.started) + t),
            decode: a.decode_rate,
            provider: a.provider,
        });
    }

    /// Ends the request with the status the client got and, for failures, why.
    pub fn finish(&mut self, status: u16, error: Option<(&str, String)>) {
        if self.finished {
            return;
        }
        self.end_all();
        self.finished = true;
        let now = Instant::now();
        let e2e = now.saturating_duration_since(self.started);
        let r = &mut self.record;
        r.status = status;
        r.e2e_ms = ms(e2e);
        if let Some((kind, message)) = error {
            r.error_type = Some(kind.to_owned());
            r.error_message = Some(message);
        }
        let ok = (200..300).contains(&status) && r.error_type.is_none();
        let ttft = self.answer.as_ref().and_then(|a| a.ttft);
        let decode = self.answer.as_ref().and_then(|a| a.decode);
        r.ttft_ms = ttft.map(ms);
        r.within_targets = self.gw.config.targets.met_by(ok, ttft, e2e, decode);
        self.gw.health.request_done(RequestSummary {
            model: Arc::from(r.requested_model.as_str()),
            provider: r.provider.as_deref().map(Arc::from),
            status: if ok || status >= 300 { status } else { 502 },
            client_fault: (400..500).contains(&status),
            ttft,
            e2e,
            decode_rate: decode,
            within_targets: r.within_targets,
            ended: now,
            source: self.source,
            deadline: r
                .deadline_ms
                .and_then(|d| u64::try_from(d).ok())
                .map(std::time::Duration::from_millis),
        });
        self.export_spans();
        self.gw.request_log.send(std::mem::take(&mut self.record));
    }

    /// Builds and hands over the spans of a recorded trace.
    fn export_spans(&mut self) {
        let (Some(trace), Some(spans)) = (self.trace, self.spans.take()) else {
            return;
        };
        let incident = self
            .answer
            .and_then(|a| open_incident(&self.gw, a.provider));
        let built = span::build(&span::Finished {
            trace,
            record: &self.record,
            attempts: &spans.attempts,
            start_ns: spans.start_ns,
            sampling: &spans.sampling,
            incident,
        });
        self.gw.tracer.send(built);
    }
}

/// The incident open on provider `index`, if any: (id, failure mode).
fn open_incident(gw: &Gateway, index: usize) -> Option<(String, String)> {
    let snapshot = gw.snapshot.load();
    let (id, mode) = snapshot.providers.get(index)?.incident.as_ref()?;
    Some((id.to_string(), mode.to_string()))
}

/// What an attempt's span needs beyond its request-log record.
fn attempt_span(
    gw: &Gateway,
    provider: &Provider,
    obs: &Observation,
    span_id: SpanId,
    arrived: Instant,
) -> AttemptSpan {
    AttemptSpan {
        span_id,
        offset: obs.started.saturating_duration_since(arrived),
        server: provider.server(),
        upstream_model: provider.config.upstream_model(&obs.model).to_owned(),
        response_id: obs.response_id.clone(),
        served_model: obs.served_model.clone(),
        finish_reason: obs.finish_reason.clone(),
        prompt_tokens: obs.prompt_tokens,
        completion_tokens: obs.completion_tokens,
        incident: open_incident(gw, obs.provider),
    }
}
