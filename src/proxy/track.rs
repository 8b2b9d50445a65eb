//! Follows one client request through its attempts and makes sure that, however it ends
//! (answer, failure, or the client walking away), exactly one observation per attempt and
//! exactly one request-log row leave the request path.

use std::sync::Arc;

use tokio::time::Instant;

use super::Gateway;
use crate::observation::{Observation, Outcome, RequestSummary, Source};
use crate::request_log::{AttemptRecord, RequestRecord, ms};
use crate::upstream::InFlight;

/// Status recorded when the client went away before the answer ended (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

#[derive(Debug)]
struct Current {
    obs: Observation,
    in_flight: i64,
    _guard: InFlight,
}

/// The timing of the attempt whose answer the client got.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// Client-perceived time to first token.
    ttft: Option<std::time::Duration>,
    /// Decode rate of the answering attempt.
    decode: Option<f64>,
}

/// The life of one client request.
#[derive(Debug)]
pub struct RequestTrack {
    gw: Arc<Gateway>,
    started: Instant,
    source: Source,
    record: RequestRecord,
    current: Option<Current>,
    answer: Option<Answer>,
    finished: bool,
}

impl RequestTrack {
    /// Starts tracking a request that arrived at `started`.
    pub fn new(gw: Arc<Gateway>, started: Instant, source: Source, record: RequestRecord) -> Self {
        RequestTrack {
            gw,
            started,
            source,
            record,
            current: None,
            answer: None,
            finished: false,
        }
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// Opens an attempt; it stays open (and counted in flight) until `end_attempt`.
    pub fn begin_attempt(&mut self, obs: Observation, guard: InFlight, in_flight: i64) {
        self.end_attempt();
        self.current = Some(Current {
            obs,
            in_flight,
            _guard: guard,
        });
    }

    /// The open attempt's observation.
    pub fn current_mut(&mut self) -> Option<&mut Observation> {
        self.current.as_mut().map(|c| &mut c.obs)
    }

    /// Closes the open attempt: records it and hands its observation to the health task.
    pub fn end_attempt(&mut self) {
        let Some(Current { obs, in_flight, .. }) = self.current.take() else {
            return;
        };
        let cost = self.gw.upstreams.get(obs.provider).map_or(0.0, |p| {
            p.config.price.cost(
                obs.prompt_tokens.unwrap_or(0),
                obs.completion_tokens.unwrap_or(0),
            )
        });
        self.record
            .attempts
            .push(AttemptRecord::from_observation(&obs, in_flight));
        if cost > 0.0 {
            *self.record.cost_usd.get_or_insert(0.0) += cost;
        }
        self.record.provider = Some(obs.provider_id.to_string());
        self.record.in_flight = Some(in_flight);
        if obs.outcome == Outcome::Ok || self.answer.is_none() {
            self.take_answer(&obs);
        }
        self.gw.health.observe(obs, cost);
    }

    /// Copies into the record what the client got from this attempt.
    fn take_answer(&mut self, a: &Observation) {
        let r = &mut self.record;
        r.quantization = self
            .gw
            .upstreams
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
        // What the client waited for its first token: failed attempts before this one included.
        self.answer = Some(Answer {
            ttft: a
                .ttft
                .map(|t| a.started.saturating_duration_since(self.started) + t),
            decode: a.decode_rate,
        });
    }

    /// Ends the request with the status the client got and, for failures, why.
    pub fn finish(&mut self, status: u16, error: Option<(&str, String)>) {
        if self.finished {
            return;
        }
        self.end_attempt();
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
        });
        self.gw.request_log.send(std::mem::take(&mut self.record));
    }
}

impl Drop for RequestTrack {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The request future was dropped: the client went away mid-request.
        let started = self.started;
        if let Some(c) = &mut self.current {
            if c.obs.e2e.is_zero() {
                c.obs.e2e = Instant::now().saturating_duration_since(c.obs.started.max(started));
            }
            c.obs.outcome = Outcome::ClientCancelled;
        }
        self.finish(
            CLIENT_CLOSED,
            Some((
                "client_cancelled",
                "the client closed the connection".into(),
            )),
        );
    }
}
