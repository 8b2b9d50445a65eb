//! Runs one client request: plan the providers, make attempts, fail over before anything
//! reaches the client, then commit — a complete body or a metered stream.

pub mod attempt;
pub mod body;
pub mod meter;
pub mod sse;
pub mod stream;
pub mod track;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::health::HealthHandle;
use crate::observation::{Observation, Operation, Source, unix_ms_now};
use crate::request_log::{LogSender, RequestRecord};
use crate::route;
use crate::upstream::Upstreams;
use attempt::{Answer, AttemptRequest, CallError};
use body::RequestHead;
pub use stream::MeteredStream;
use track::RequestTrack;

/// Everything the request path shares.
#[derive(Debug)]
pub struct Gateway {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Providers at run time.
    pub upstreams: Arc<Upstreams>,
    /// Pooled upstream client.
    pub client: reqwest::Client,
    /// Handle on the health task.
    pub health: HealthHandle,
    /// Request-log sender.
    pub request_log: LogSender,
    rotation: AtomicUsize,
}

impl Gateway {
    /// Assembles the shared request-path state.
    pub fn new(
        config: Arc<Config>,
        upstreams: Arc<Upstreams>,
        client: reqwest::Client,
        health: HealthHandle,
        request_log: LogSender,
    ) -> Gateway {
        Gateway {
            config,
            upstreams,
            client,
            health,
            request_log,
            rotation: AtomicUsize::new(0),
        }
    }
}

/// One client request, as the server hands it over.
#[derive(Debug)]
pub struct ClientRequest {
    /// Which API.
    pub operation: Operation,
    /// The body exactly as received.
    pub body: Bytes,
    /// Candor's id for it.
    pub request_id: String,
    /// The client's `traceparent`, forwarded upstream.
    pub traceparent: Option<HeaderValue>,
    /// Id of the client key used.
    pub client_key_id: Option<String>,
    /// When it arrived.
    pub arrived: Instant,
    /// Client or synthetic.
    pub source: Source,
}

/// A committed answer.
#[derive(Debug)]
pub enum Reply {
    /// A complete body (success, or the upstream's own client-error answer).
    Complete {
        /// Status.
        status: StatusCode,
        /// Content type.
        content_type: Option<HeaderValue>,
        /// Body bytes, unchanged.
        body: Bytes,
        /// Answering provider.
        provider: Arc<str>,
    },
    /// A stream.
    Stream {
        /// Status.
        status: StatusCode,
        /// Answering provider.
        provider: Arc<str>,
        /// The metered stream.
        stream: Box<MeteredStream>,
    },
}

/// One failed attempt, as reported to the client in a 502/504.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttemptFailure {
    /// Provider id.
    pub provider: String,
    /// Failure kind.
    pub kind: &'static str,
    /// Upstream status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
}

/// Why a request got no answer from any provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is unusable.
    #[error(transparent)]
    BadRequest(#[from] body::BodyError),
    /// No provider serves the model.
    #[error("The model `{model}` does not exist or is not served here. Served models: {}.", .served.join(", "))]
    UnknownModel {
        /// Requested model.
        model: String,
        /// What is served.
        served: Vec<String>,
    },
    /// Every attempt failed.
    #[error("{}", all_failed_message(.attempts))]
    AllFailed {
        /// Each attempt.
        attempts: Vec<AttemptFailure>,
        /// True when every attempt timed out.
        timed_out: bool,
    },
}

fn all_failed_message(attempts: &[AttemptFailure]) -> String {
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| format!("{}: {}", a.provider, a.message))
        .collect();
    format!(
        "All {} attempt(s) to reach a provider failed — {}",
        attempts.len(),
        parts.join("; ")
    )
}

/// Runs `req` to a committed reply or an error.
pub async fn handle(gw: &Arc<Gateway>, req: ClientRequest) -> Result<Reply, Error> {
    let mut record = RequestRecord {
        request_id: req.request_id.clone(),
        trace_id: req.traceparent.as_ref().and_then(trace_id),
        ts_ms: unix_ms_now(),
        operation: req.operation.as_str().to_owned(),
        client_key_id: req.client_key_id.clone(),
        ..RequestRecord::default()
    };
    let head = match RequestHead::parse(&req.body) {
        Ok(h) => h,
        Err(e) => {
            let mut track = RequestTrack::new(Arc::clone(gw), req.arrived, req.source, record);
            track.finish(400, Some(("invalid_request", e.to_string())));
            return Err(e.into());
        }
    };
    record.requested_model.clone_from(&head.model);
    record.stream = head.stream;
    record.max_tokens = head.max_tokens;
    let serving = gw.upstreams.serving(&head.model);
    let plan = route::plan(serving, gw.rotation.fetch_add(1, Ordering::Relaxed));
    record.route_reason = Some(plan.reason.clone());
    let mut track = RequestTrack::new(Arc::clone(gw), req.arrived, req.source, record);
    if plan.order.is_empty() {
        let err = Error::UnknownModel {
            model: head.model.clone(),
            served: gw.upstreams.models().map(str::to_owned).collect(),
        };
        track.finish(404, Some(("model_not_found", err.to_string())));
        return Err(err);
    }

    let model: Arc<str> = Arc::from(head.model.as_str());
    let timeouts = gw.config.timeouts;
    let mut failures = Vec::new();
    let mut all_timed_out = true;
    for &index in &plan.order {
        let Some(provider) = gw.upstreams.get(index) else {
            continue;
        };
        let started = Instant::now();
        let guard = provider.track();
        let in_flight = provider.in_flight();
        track.begin_attempt(
            Observation::start(
                index,
                Arc::clone(&provider.id),
                Arc::clone(&model),
                req.operation,
                req.source,
                head.stream,
                started,
            ),
            guard,
            in_flight,
        );
        let mut forward = HeaderMap::new();
        if let Some(tp) = &req.traceparent {
            forward.insert(HeaderName::from_static("traceparent"), tp.clone());
        }
        let attempt = AttemptRequest {
            client: &gw.client,
            provider,
            url: format!("{}{}", provider.config.base_url, req.operation.path()),
            body: body::upstream_body(
                &req.body,
                &head,
                provider.config.upstream_model(&head.model),
            ),
            stream: head.stream,
            forward,
            timeouts,
        };
        let Some(obs) = track.current_mut() else {
            continue;
        };
        match attempt::run(attempt, obs).await {
            Ok(Answer::Complete {
                status,
                content_type,
                body,
            }) => {
                track.finish(status.as_u16(), None);
                return Ok(Reply::Complete {
                    status,
                    content_type,
                    body,
                    provider: Arc::clone(&provider.id),
                });
            }
            Ok(Answer::Stream(open)) => {
                let status = open.status;
                let stream =
                    MeteredStream::new(*open, track, head.needs_usage_injection(), timeouts.idle);
                return Ok(Reply::Stream {
                    status,
                    provider: Arc::clone(&provider.id),
                    stream: Box::new(stream),
                });
            }
            Err(err) => {
                if let Some(obs) = track.current_mut() {
                    obs.e2e = Instant::now().saturating_duration_since(started);
                    obs.outcome = err.outcome();
                }
                track.end_attempt();
                if !err.retryable {
                    return Ok(passthrough(track, err, provider.id.clone()));
                }
                all_timed_out &= err.is_timeout();
                failures.push(AttemptFailure {
                    provider: provider.config.id.clone(),
                    kind: err.kind,
                    status: err.status,
                    message: err.message.clone(),
                });
            }
        }
    }
    let err = Error::AllFailed {
        attempts: failures,
        timed_out: all_timed_out,
    };
    let status = if all_timed_out { 504 } else { 502 };
    track.finish(status, Some(("all_attempts_failed", err.to_string())));
    Err(err)
}

/// The upstream's own answer to a request the client got wrong, passed through unchanged.
fn passthrough(mut track: RequestTrack, err: CallError, provider: Arc<str>) -> Reply {
    let status = err
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    track.finish(status.as_u16(), Some((err.kind, err.message.clone())));
    let (body, content_type) = err.body.unwrap_or_default();
    Reply::Complete {
        status,
        content_type,
        body,
        provider,
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(tp: &HeaderValue) -> Option<String> {
    let s = tp.to_str().ok()?;
    let mut parts = s.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}
