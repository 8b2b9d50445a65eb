//! A stand-in for a RAG vector database: `POST /query` answers after a latency drawn from
//! a log-normal distribution (raised by the `dependency_slow` fault), with a latency
//! histogram at `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::time::Instant;

use super::fault::{Effects, Fault, Faults, Injection, Scheduled};
use super::text::SplitMix;

/// Latency buckets of `vectordb_query_duration_seconds`.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The simulated dependency.
#[derive(Debug)]
pub struct Dependency {
    median: Duration,
    sigma: f64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    faults: Faults,
    rng: SplitMix,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Dependency {
    /// A dependency whose healthy query latency has this median and log-normal sigma.
    pub fn new(
        median: Duration,
        sigma: f64,
        timeline: Vec<Scheduled>,
        cycle: Option<Duration>,
    ) -> Arc<Dependency> {
        Arc::new(Dependency {
            median,
            sigma,
            inner: Mutex::new(Inner {
                faults: Faults::new(Instant::now(), timeline, cycle),
                rng: SplitMix::new(42),
                counts: vec![0; BUCKETS.len()],
                sum: 0.0,
                count: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Draws one query latency at `now`.
    pub fn latency(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        let fx = Effects::of(&s.faults.active(now));
        // Box–Muller for a standard normal.
        let (u1, u2) = (s.rng.unit().max(1e-12), s.rng.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let secs = self.median.as_secs_f64() * (self.sigma * z).exp() * fx.dependency;
        Duration::from_secs_f64(secs.clamp(0.0, 600.0))
    }

    /// Injects a fault for `duration`.
    pub fn inject(&self, fault: Fault, duration: Duration) {
        self.lock()
            .faults
            .inject(fault, Instant::now(), Some(duration));
    }

    fn record(&self, d: Duration) {
        let mut s = self.lock();
        let v = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| v <= b) {
            s.counts[i] += 1;
        }
        s.sum += v;
        s.count += 1;
    }
}

/// The dependency's router.
pub fn router(dep: Arc<Dependency>) -> Router {
    Router::new()
        .route("/query", post(query))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .route("/sim/faults", post(add_fault).delete(clear))
        .with_state(dep)
}

async fn query(State(dep): State<Arc<Dependency>>) -> Json<serde_json::Value> {
    let start = Instant::now();
    tokio::time::sleep(dep.latency(start)).await;
    dep.record(start.elapsed());
    Json(
        json!({"results": [{"id": "doc-1", "score": 0.91, "text": "KV caches hold attention keys and values."}]}),
    )
}

async fn metrics(State(dep): State<Arc<Dependency>>) -> impl IntoResponse {
    let s = dep.lock();
    let name = "vectordb_query_duration_seconds";
    let mut out = String::new();
    crate::metrics::family(&mut out, name, "histogram", "Query latency.");
    crate::metrics::histogram_series(&mut out, name, "", BUCKETS, &s.counts, s.sum, s.count);
    ([("content-type", "text/plain; version=0.0.4")], out)
}

async fn add_fault(State(dep): State<Arc<Dependency>>, Json(f): Json<Injection>) -> &'static str {
    dep.lock().faults.apply(f, Instant::now());
    "ok"
}

async fn clear(State(dep): State<Arc<Dependency>>) -> &'static str {
    dep.lock().faults.clear();
    "ok"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_fault_raises_latency() {
        let dep = Dependency::new(Duration::from_millis(20), 0.2, Vec::new(), None);
        let now = Instant::now();
        let mut normal: Vec<f64> = (0..200).map(|_| dep.latency(now).as_secs_f64()).collect();
        normal.sort_by(f64::total_cmp);
        assert!(
            (normal[100] - 0.020).abs() < 0.004,
            "median {}",
            normal[100]
        );
        dep.lock()
            .faults
            .inject(Fault::DependencySlow { factor: 10.0 }, now, None);
        let mut slow: Vec<f64> = (0..200).map(|_| dep.latency(now).as_secs_f64()).collect();
        slow.sort_by(f64::total_cmp);
        assert!(slow[100] > 0.15, "median under fault {}", slow[100]);
    }
}
