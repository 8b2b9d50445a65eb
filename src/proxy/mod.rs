//! Runs one client request: plan the providers, make attempts, fail over before anything
//! reaches the client, then commit — a complete body or a metered stream.

pub mod admission;
pub mod attempt;
pub mod body;
mod choose;
pub mod meter;
mod race;
pub mod sse;
pub mod stream;
pub mod track;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::health::HealthHandle;
use crate::health::snapshot::SharedSnapshot;
use crate::observation::{Operation, Source, unix_ms_now};
use crate::request_log::{LogSender, RequestRecord};
use crate::route::budget::Budget;
use crate::splitmix::SharedSplitMix;
use crate::upstream::Upstreams;
use body::RequestHead;
pub use stream::MeteredStream;
use track::RequestTrack;

/// Everything the request path shares.
#[derive(Debug)]
pub struct Gateway {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Client keys and the admin token (replaced by a configuration reload).
    access: arc_swap::ArcSwap<crate::config::Access>,
    /// Providers at run time (replaced whole by a configuration reload).
    upstreams: arc_swap::ArcSwap<Upstreams>,
    /// Pooled upstream client.
    pub client: reqwest::Client,
    /// Handle on the health task.
    pub health: HealthHandle,
    /// Request-log sender.
    pub request_log: LogSender,
    /// What the health model publishes, read without locks.
    pub snapshot: SharedSnapshot,
    /// Retries allowed across all requests.
    pub retry_budget: Budget,
    /// Hedges allowed, per hedged model.
    pub hedge_budgets: BTreeMap<String, Budget>,
    /// The limit on client requests in flight.
    pub admission: Arc<admission::Admission>,
    /// OpenTelemetry trace export (off unless configured).
    pub tracer: crate::otel::Tracer,
    /// Configuration reloads: ask for one, and what the last did.
    pub reload: crate::reload::Control,
    rotation: AtomicUsize,
    /// Random tie-breaks and jitter (`routing.seed`).
    dice: SharedSplitMix,
    epoch: Instant,
}

impl Gateway {
    /// Assembles the shared request-path state.
    pub fn new(parts: Parts) -> Gateway {
        let Parts {
            config,
            upstreams,
            client,
            health,
            request_log,
            snapshot,
            tracer,
            reload,
        } = parts;
        let r = &config.routing;
        Gateway {
            retry_budget: Budget::new(
                r.retry_budget,
                r.min_retries_per_s,
                r.min_retries_per_s.max(10.0),
            ),
            hedge_budgets: r
                .hedge
                .iter()
                .map(|(m, h)| (m.clone(), Budget::new(h.budget, 0.0, 10.0)))
                .collect(),
            admission: admission::Admission::new(config.server.max_in_flight),
            access: arc_swap::ArcSwap::from_pointee(config.access()),
            dice: SharedSplitMix::new(r.seed.unwrap_or_else(rand::random)),
            config,
            upstreams: arc_swap::ArcSwap::new(upstreams),
            client,
            health,
            request_log,
            snapshot,
            tracer,
            reload,
            rotation: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// The providers now. Indices never change meaning (see `Upstreams::reconcile`), so an
    /// index taken from one load is valid in any later one.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Client keys and the admin token now.
    pub fn access(&self) -> arc_swap::Guard<Arc<crate::config::Access>> {
        self.access.load()
    }

    /// Puts the client keys and admin token of a reloaded configuration in force.
    pub fn set_access(&self, access: crate::config::Access) {
        self.access.store(Arc::new(access));
    }

    /// The provider at `index` now.
    pub fn provider(&self, index: usize) -> Option<Arc<crate::upstream::Provider>> {
        self.upstreams.load().get(index).cloned()
    }

    /// Puts the providers of a reloaded configuration in service.
    pub fn set_upstreams(&self, upstreams: Arc<Upstreams>) {
        self.upstreams.store(upstreams);
    }

    /// Milliseconds since the gateway started (the budgets' clock).
    fn ms_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the gateway is assembled from (`app` builds each part).
#[derive(Debug)]
pub struct Parts {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Providers at start.
    pub upstreams: Arc<Upstreams>,
    /// Pooled upstream client.
    pub client: reqwest::Client,
    /// Handle on the health task.
    pub health: HealthHandle,
    /// Request-log sender.
    pub request_log: LogSender,
    /// What the health model publishes.
    pub snapshot: SharedSnapshot,
    /// Trace export.
    pub tracer: crate::otel::Tracer,
    /// Configuration reloads.
    pub reload: crate::reload::Control,
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
    /// The client's deadline (`x-candor-timeout-ms`), when it sent one.
    pub deadline: Option<Instant>,
    /// Send to this provider only (canaries probe each provider, whatever its health).
    pub pin: Option<usize>,
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
        /// Why it was chosen.
        route: Arc<str>,
    },
    /// A stream.
    Stream {
        /// Status.
        status: StatusCode,
        /// Answering provider.
        provider: Arc<str>,
        /// Why it was chosen.
        route: Arc<str>,
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
    /// No provider can answer within the client's deadline.
    #[error("{0}")]
    Deadline(String),
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
    // The caller's trace context, read once: continued when tracing is on, recorded either way.
    let parent = req
        .traceparent
        .as_ref()
        .and_then(crate::otel::context::parse);
    let trace = gw.tracer.begin(parent);
    let mut record = RequestRecord {
        request_id: req.request_id.clone(),
        trace_id: trace
            .map(|t| t.trace_id)
            .or(parent.map(|p| p.trace_id))
            .map(|id| crate::otel::context::hex(&id)),
        ts_ms: unix_ms_now(),
        operation: req.operation.as_str().to_owned(),
        client_key_id: req.client_key_id.clone(),
        deadline_ms: req.deadline.map(|d| {
            i64::try_from(d.saturating_duration_since(req.arrived).as_millis()).unwrap_or(i64::MAX)
        }),
        ..RequestRecord::default()
    };
    let head = match RequestHead::parse(&req.body) {
        Ok(h) => h,
        Err(e) => {
            let mut track = RequestTrack::new(Arc::clone(gw), req.arrived, req.source, record);
            if let Some(t) = trace {
                track.traced(t, &body::Sampling::default());
            }
            track.finish(400, Some(("invalid_request", e.to_string())));
            return Err(e.into());
        }
    };
    record.requested_model.clone_from(&head.model);
    record.stream = head.stream;
    record.max_tokens = head.max_tokens;
    gw.retry_budget.deposit();
    if let Some(b) = gw.hedge_budgets.get(&head.model) {
        b.deposit();
    }
    let snapshot = gw.snapshot.load_full();
    let plan = match req.pin {
        Some(i) => choose::pinned(gw, &head, i),
        None => choose::plan(gw, &snapshot, &head, req.deadline, Instant::now()),
    };
    record.route_reason = Some(plan.reason.clone());
    record.route_candidates.clone_from(&plan.candidates);
    if let Some(b) = plan
        .order
        .first()
        .and_then(|&i| snapshot.providers.get(i))
        .and_then(|v| v.backend.as_ref())
    {
        record.queue_depth = b.reading.queue;
        record.kv_usage = b.reading.kv_usage;
    }
    let mut track = RequestTrack::new(Arc::clone(gw), req.arrived, req.source, record);
    if let Some(t) = trace {
        track.traced(t, &head.sampling);
    }
    if plan.order.is_empty() {
        if let Some(message) = plan.deadline_unmet {
            track.finish(504, Some(("deadline_exceeded", message.clone())));
            return Err(Error::Deadline(message));
        }
        let err = Error::UnknownModel {
            model: head.model.clone(),
            served: gw.upstreams().models().map(str::to_owned).collect(),
        };
        track.finish(404, Some(("model_not_found", err.to_string())));
        return Err(err);
    }
    let ctx = race::Ctx {
        gw,
        req: &req,
        head: &head,
        snapshot: &snapshot,
        route: Arc::from(plan.reason.as_str()),
        trace,
    };
    race::run(&ctx, &plan, track).await
}
