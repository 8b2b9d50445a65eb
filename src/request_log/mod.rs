//! The request log: one row per client request with its full inference context, sent from
//! the request path without waiting and written in batches by one writer thread, to a SQLite
//! file or to PostgreSQL.

mod columns;
mod incidents;
mod postgres;
mod query;
mod sqlite;
mod store;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::Serialize;

pub use incidents::IncidentFilter;
pub use query::{LogFilter, StatusFilter};
pub use store::{Removed, Store, StoreError};
pub use writer::{Closer, Writer};

use crate::observation::{Blame, Observation, Outcome};

/// One attempt as stored in the request log.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AttemptRecord {
    /// Provider id.
    pub provider: String,
    /// Wall-clock start, Unix ms.
    pub started_unix_ms: i64,
    /// Outcome label (`ok`, `connect`, `server_error`, `client_cancelled`, ...).
    pub outcome: String,
    /// Upstream status.
    pub status: Option<u16>,
    /// Who is to blame for a failure.
    pub blame: Option<String>,
    /// Failure detail.
    pub error: Option<String>,
    /// New-connection time.
    pub connect_ms: Option<f64>,
    /// Time to response headers.
    pub headers_ms: Option<f64>,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// End to end.
    pub e2e_ms: f64,
    /// Longest inter-chunk gap.
    pub max_gap_ms: Option<f64>,
    /// Tokens per second after the first.
    pub decode_tps: Option<f64>,
    /// Provider's in-flight attempts when this one started (itself included).
    pub in_flight: i64,
    /// Sent as a probe to a recovering provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// Sent as a hedge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hedge: bool,
}

impl AttemptRecord {
    /// Summarises an observation.
    pub fn from_observation(obs: &Observation, in_flight: i64) -> AttemptRecord {
        let (status, blame, error) = match &obs.outcome {
            Outcome::Ok => (None, None, None),
            Outcome::Error {
                status,
                blame,
                message,
                ..
            } => (
                *status,
                Some(blame.as_str().to_owned()),
                Some(message.clone()),
            ),
            Outcome::ClientCancelled => (None, Some(Blame::Client.as_str().to_owned()), None),
            Outcome::Cancelled => (None, Some(Blame::Gateway.as_str().to_owned()), None),
        };
        AttemptRecord {
            provider: obs.provider_id.to_string(),
            started_unix_ms: obs.started_unix_ms,
            outcome: obs.outcome.label().to_owned(),
            status,
            blame,
            error,
            connect_ms: obs.connect.map(ms),
            headers_ms: obs.headers.map(ms),
            ttft_ms: obs.ttft.map(ms),
            e2e_ms: ms(obs.e2e),
            max_gap_ms: obs.max_gap.map(ms),
            decode_tps: obs.decode_rate,
            in_flight,
            probe: obs.probe,
            hedge: obs.hedge,
        }
    }
}

/// Milliseconds as a float.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One client request with its full inference context.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct RequestRecord {
    /// Candor's request id (also in `x-candor-request-id`).
    pub request_id: String,
    /// W3C trace id from `traceparent`, when the client sent one.
    pub trace_id: Option<String>,
    /// Wall-clock arrival, Unix ms.
    pub ts_ms: i64,
    /// `chat`, `text_completion` or `embeddings`.
    pub operation: String,
    /// Id of the client key used (never the key).
    pub client_key_id: Option<String>,
    /// Model the client asked for.
    pub requested_model: String,
    /// Provider whose answer the client got (or the last one tried).
    pub provider: Option<String>,
    /// Model the upstream says served it.
    pub served_model: Option<String>,
    /// `system_fingerprint`.
    pub system_fingerprint: Option<String>,
    /// Serving node, from the provider's node header.
    pub node: Option<String>,
    /// Quantization label of the provider.
    pub quantization: Option<String>,
    /// True for streamed responses.
    pub stream: bool,
    /// Status sent to the client (499 when the client went away).
    pub status: u16,
    /// Error kind, when the request failed.
    pub error_type: Option<String>,
    /// Error message, when the request failed.
    pub error_message: Option<String>,
    /// Provider's in-flight attempts when the answering attempt started.
    pub in_flight: Option<i64>,
    /// Provider queue depth at request time (from scraped backend metrics).
    pub queue_depth: Option<f64>,
    /// Provider KV-cache usage at request time (from scraped backend metrics).
    pub kv_usage: Option<f64>,
    /// Time to first token.
    pub ttft_ms: Option<f64>,
    /// End to end, arrival to last byte.
    pub e2e_ms: f64,
    /// Decode tokens per second.
    pub decode_tps: Option<f64>,
    /// Longest inter-chunk gap.
    pub max_gap_ms: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// True when completion tokens were counted rather than reported.
    pub tokens_counted: bool,
    /// Cost from the provider's price table, US dollars.
    pub cost_usd: Option<f64>,
    /// Finish reason.
    pub finish_reason: Option<String>,
    /// `max_tokens` the client asked for.
    pub max_tokens: Option<u64>,
    /// Remaining client deadline on arrival, ms.
    pub deadline_ms: Option<i64>,
    /// Why the answering provider was chosen (`x-candor-route`).
    pub route_reason: Option<String>,
    /// Every candidate the router weighed: score, prediction, decision and why.
    pub route_candidates: Vec<crate::route::Candidate>,
    /// Whether the request met every target.
    pub within_targets: bool,
    /// `client`, or `synthetic` for Candor's canaries (never counted in SLA figures).
    pub source: String,
    /// Output descriptors of the answer (no body is stored).
    pub quality: Option<crate::quality::descriptors::Descriptors>,
    /// Every attempt in order.
    pub attempts: Vec<AttemptRecord>,
}

/// Whether the log keeps what it is sent, shared by the request path, the writer and
/// `/health` and `/metrics`: rows lost for any reason are counted, rows held while the
/// database cannot be written are gauged, and a failing write marks the log failing until
/// a write succeeds.
#[derive(Debug, Default)]
pub struct LogStatus {
    lost: AtomicU64,
    written: AtomicU64,
    buffered: AtomicU64,
    /// Unix ms of the first failed write since the last good one; 0 while writes succeed.
    failing_since: AtomicI64,
}

impl LogStatus {
    /// Rows and incident events lost so far (full queue, full buffer, or refused by the
    /// database).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Rows written so far (their rate is the log's ingestion rate).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn count_written(&self, n: usize) {
        self.written
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Rows and incident events held by the writer, waiting for the database.
    pub fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Since when writes have been failing (Unix ms), if they are.
    pub fn failing_since(&self) -> Option<i64> {
        Some(self.failing_since.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    fn count_lost(&self, n: usize) {
        self.lost
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn set_buffered(&self, n: usize) {
        self.buffered
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A write failed at `now_ms`.
    fn write_failed(&self, now_ms: i64) {
        let _ = self.failing_since.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A write succeeded.
    fn write_ok(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
    }
}

/// The request path's handle on the log: a non-blocking send that counts drops.
#[derive(Debug, Clone)]
pub struct LogSender {
    records: SyncSender<Box<RequestRecord>>,
    control: SyncSender<writer::Control>,
    status: Arc<LogStatus>,
}

impl LogSender {
    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn send(&self, record: RequestRecord) {
        match self.records.try_send(Box::new(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.status.count_lost(1);
            }
        }
    }

    /// Queues an incident event; never waits (a full queue drops it and counts it).
    pub fn send_incident(&self, event: crate::incident::Event) {
        if self
            .control
            .try_send(writer::Control::Incident(Box::new(event)))
            .is_err()
        {
            self.status.count_lost(1);
        }
    }

    /// The log's shared status (read by `/health` and `/metrics`).
    pub fn status(&self) -> Arc<LogStatus> {
        Arc::clone(&self.status)
    }
}
