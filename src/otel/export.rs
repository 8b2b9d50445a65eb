//! The export worker: gathers spans from the queue into batches (full, or as old as the flush
//! interval) and posts each to the OTLP/HTTP endpoint as protobuf, retrying once when the
//! backend says it is busy; flushes what is queued when Candor stops.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{self, Resource};
use super::span::{Span, Value};
use super::{ExportStatus, Tracer};
use crate::config::TracingConfig;

/// Pause before the one retry of a batch the backend could not take.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where batches go and how.
struct Sink {
    client: reqwest::Client,
    endpoint: String,
    resource: Resource,
    status: Arc<ExportStatus>,
}

/// Runs until `stop`, then exports what is still queued.
pub async fn run(
    config: TracingConfig,
    tracer: Tracer,
    mut rx: mpsc::Receiver<Vec<Span>>,
    stop: CancellationToken,
) {
    let Some(sink) = Sink::new(&config, &tracer) else {
        return;
    };
    let mut batch: Vec<Span> = Vec::new();
    let mut due: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            got = rx.recv() => {
                let Some(spans) = got else { break };
                due.get_or_insert_with(|| Instant::now() + config.flush_interval);
                batch.extend(spans);
                if batch.len() >= config.batch_size {
                    sink.flush(std::mem::take(&mut batch)).await;
                    due = None;
                }
            }
            () = sleep_until(due) => {
                sink.flush(std::mem::take(&mut batch)).await;
                due = None;
            }
        }
    }
    while let Ok(spans) = rx.try_recv() {
        batch.extend(spans);
        if batch.len() >= config.batch_size {
            sink.flush(std::mem::take(&mut batch)).await;
        }
    }
    sink.flush(batch).await;
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Sink {
    fn new(config: &TracingConfig, tracer: &Tracer) -> Option<Sink> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (name, value) in &config.headers {
            if let Ok(mut v) = HeaderValue::from_str(value.expose()) {
                v.set_sensitive(true);
                headers.insert(name.clone(), v);
            }
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.export_timeout)
            .build();
        let client = match client {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "cannot build the trace exporter's HTTP client; traces are off");
                return None;
            }
        };
        let mut attributes = vec![
            ("service.name", Value::Str(config.service_name.clone())),
            (
                "service.version",
                Value::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            ("telemetry.sdk.name", Value::Str("candor".into())),
            ("telemetry.sdk.language", Value::Str("rust".into())),
        ];
        if let Some(p) = &config.project {
            attributes.push(("openinference.project.name", Value::Str(p.clone())));
        }
        Some(Sink {
            client,
            endpoint: config.endpoint.clone(),
            resource: Resource { attributes },
            status: tracer.status()?,
        })
    }

    async fn flush(&self, batch: Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        // `Bytes`: the retry shares the encoded body instead of copying it.
        let body = bytes::Bytes::from(proto::export_request(&self.resource, &batch));
        let mut result = self.post(body.clone()).await;
        if let Err(Failure::Busy(why)) = &result {
            tracing::debug!(%why, "trace export: the backend is busy; retrying once");
            tokio::time::sleep(RETRY_AFTER).await;
            result = self.post(body).await;
        }
        match result {
            Ok(()) => ExportStatus::add(&self.status.exported, batch.len()),
            Err(Failure::Busy(why) | Failure::Refused(why)) => {
                ExportStatus::add(&self.status.dropped_export_failed, batch.len());
                tracing::warn!(
                    endpoint = %crate::config::shown_url(&self.endpoint),
                    spans = batch.len(),
                    %why,
                    "trace export failed; spans dropped"
                );
            }
        }
    }

    async fn post(&self, body: bytes::Bytes) -> Result<(), Failure> {
        let response = self
            .client
            .post(&self.endpoint)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Busy(format!("cannot reach the backend: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let why = format!("the backend answered {status}");
        // OTLP/HTTP: these may succeed later; anything else will not.
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Err(Failure::Busy(why))
        } else {
            Err(Failure::Refused(why))
        }
    }
}

/// Why an export failed.
enum Failure {
    /// Worth one more try.
    Busy(String),
    /// Will not succeed as sent.
    Refused(String),
}
