//! OpenTelemetry traces: each client request becomes a SERVER span with one CLIENT span per
//! upstream attempt, continuing the client's W3C `traceparent` and passing each attempt's
//! own span on to the provider. The request path only builds the spans of a sampled
//! request and hands them to a bounded queue without waiting; one worker batches them and
//! exports them over OTLP/HTTP (protobuf). A full queue or a failed export drops spans and
//! counts them in `/metrics`; it never slows a request.

pub mod context;
pub mod export;
pub mod proto;
pub mod span;

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::config::TracingConfig;
pub use context::RequestTrace;
use span::Span;

/// Export counters, shared by the request path, the worker and `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStatus {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
}

impl ExportStatus {
    /// Spans the backend accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped, by reason: (queue full, export failed).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_queue_full.load(Ordering::Relaxed),
            self.dropped_export_failed.load(Ordering::Relaxed),
        )
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The request path's handle on trace export: decides sampling and enqueues spans.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    inner: Option<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    tx: mpsc::Sender<Vec<Span>>,
    /// New traces are sampled when the low 8 bytes of their id fall under this.
    threshold: u64,
    status: Arc<ExportStatus>,
}

impl Tracer {
    /// Trace export configured by `config`, and the receiving end for the worker; `Tracer`
    /// off (and no receiver) when tracing is not configured.
    pub fn new(config: Option<&TracingConfig>) -> (Tracer, Option<mpsc::Receiver<Vec<Span>>>) {
        let Some(c) = config else {
            return (Tracer::default(), None);
        };
        let (tx, rx) = mpsc::channel(c.queue);
        let inner = Inner {
            tx,
            // Saturating float-to-integer conversion: 1.0 maps to u64::MAX.
            threshold: (c.sample_ratio * u64::MAX as f64) as u64,
            status: Arc::new(ExportStatus::default()),
        };
        (Tracer { inner: Some(inner) }, Some(rx))
    }

    /// The counters the worker updates.
    pub fn status(&self) -> Option<Arc<ExportStatus>> {
        self.inner.as_ref().map(|i| Arc::clone(&i.status))
    }

    /// The trace of a request whose caller's context is `parent` (a valid `traceparent`),
    /// or `None` when tracing is off. A parent is continued and decides sampling
    /// (parent-based sampling); a request without one starts a trace sampled by
    /// `sample_ratio`.
    pub fn begin(&self, parent: Option<context::Parent>) -> Option<RequestTrace> {
        let inner = self.inner.as_ref()?;
        let span_id = context::new_span_id();
        Some(match parent {
            Some(p) => RequestTrace {
                trace_id: p.trace_id,
                span_id,
                parent: Some(p.span_id),
                sampled: p.sampled,
            },
            None => {
                let trace_id = context::new_trace_id();
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                RequestTrace {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: u64::from_be_bytes(low) < inner.threshold
                        || inner.threshold == u64::MAX,
                }
            }
        })
    }

    /// Hands a request's spans to the exporter without waiting; counted as dropped when the
    /// queue is full.
    pub fn send(&self, spans: Vec<Span>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let n = spans.len();
        if inner.tx.try_send(spans).is_err() {
            ExportStatus::add(&inner.status.dropped_queue_full, n);
        }
    }

    /// Appends the export counters to a `/metrics` page (nothing when tracing is off).
    pub fn render(&self, out: &mut String) {
        let Some(inner) = &self.inner else {
            return;
        };
        let s = &inner.status;
        let (full, failed) = s.dropped();
        let _ = write!(
            out,
            "# HELP candor_trace_spans_exported_total Spans the OpenTelemetry backend accepted.\n\
             # TYPE candor_trace_spans_exported_total counter\n\
             candor_trace_spans_exported_total {}\n\
             # HELP candor_trace_spans_dropped_total Spans dropped: the export queue was full, \
             or the backend refused or could not be reached.\n\
             # TYPE candor_trace_spans_dropped_total counter\n\
             candor_trace_spans_dropped_total{{reason=\"queue_full\"}} {full}\n\
             candor_trace_spans_dropped_total{{reason=\"export_failed\"}} {failed}\n",
            s.exported(),
        );
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn config(ratio: f64, queue: usize) -> TracingConfig {
        TracingConfig {
            endpoint: "http://127.0.0.1:1/v1/traces".into(),
            headers: Vec::new(),
            sample_ratio: ratio,
            service_name: "candor".into(),
            project: None,
            queue,
            batch_size: 8,
            flush_interval: std::time::Duration::from_secs(1),
            export_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn the_clients_sampling_decision_is_kept_and_new_traces_follow_the_ratio() {
        let (none, _rx) = Tracer::new(Some(&config(0.0, 4)));
        let parent = |tp: &'static str| context::parse(&HeaderValue::from_static(tp));
        let sampled = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = none.begin(sampled).unwrap();
        assert!(t.sampled, "a sampled parent is recorded whatever the ratio");
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(!none.begin(None).unwrap().sampled);
        let (all, _rx) = Tracer::new(Some(&config(1.0, 4)));
        let unsampled = parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!all.begin(unsampled).unwrap().sampled);
        assert!(all.begin(None).unwrap().sampled);
        let (half, _rx) = Tracer::new(Some(&config(0.5, 4)));
        let n = (0..4000)
            .filter(|_| half.begin(None).unwrap().sampled)
            .count();
        assert!((1700..2300).contains(&n), "{n} of 4000 sampled at 0.5");
        assert_eq!(Tracer::default().begin(sampled), None, "off");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (t, _rx) = Tracer::new(Some(&config(1.0, 1)));
        let span = || {
            vec![Span {
                trace_id: [1; 16],
                span_id: [1; 8],
                parent: None,
                name: "x".into(),
                kind: span::Kind::Server,
                start_ns: 0,
                end_ns: 0,
                attributes: Vec::new(),
                status: span::Status::Unset,
            }]
        };
        t.send(span());
        t.send(span());
        let mut page = String::new();
        t.render(&mut page);
        assert!(
            page.contains("candor_trace_spans_dropped_total{reason=\"queue_full\"} 1\n"),
            "{page}"
        );
    }
}
