//! The health task: the single owner of every rolling window and of the metric registry.
//! The request path hands it observations without waiting; the admin API asks it for
//! reports.

pub mod report;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{HealthConfig, Targets};
use crate::metrics::{Gauges, Metrics};
use crate::observation::{Observation, Outcome, RequestSummary, Source, unix_ms_now};
use crate::upstream::Upstreams;
use report::{HealthReport, ProviderReport, ScopeReport, TargetsView, Verdict};
use window::{Sample, Window};

/// Slot width of the rolling windows.
const SLOT: Duration = Duration::from_secs(5);
/// Slots kept: five minutes.
const SLOTS: usize = 60;

#[derive(Debug)]
enum Msg {
    Attempt(Box<Observation>, f64),
    Request(RequestSummary),
    Report(oneshot::Sender<HealthReport>),
    Metrics(oneshot::Sender<String>),
}

/// The request path's and admin API's handle on the health task.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl HealthHandle {
    fn try_send(&self, msg: Msg) {
        if self.tx.try_send(msg).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands over one attempt's observation with its cost; never waits.
    pub fn observe(&self, obs: Observation, cost: f64) {
        self.try_send(Msg::Attempt(Box::new(obs), cost));
    }

    /// Hands over what the client experienced; never waits.
    pub fn request_done(&self, summary: RequestSummary) {
        self.try_send(Msg::Request(summary));
    }

    /// The current report (after every observation queued before this call).
    pub async fn report(&self) -> Option<HealthReport> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Report(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The metric registry rendered in Prometheus text format.
    pub async fn metrics(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// The task that owns windows and metrics.
#[derive(Debug)]
pub struct HealthTask {
    rx: mpsc::Receiver<Msg>,
    upstreams: Arc<Upstreams>,
    targets: Targets,
    health: HealthConfig,
    overall: Window,
    providers: Vec<Window>,
    metrics: Metrics,
    observations_dropped: Arc<AtomicU64>,
    log_dropped: Arc<AtomicU64>,
}

impl HealthTask {
    /// Creates the task and its handle. `log_dropped` counts request-log drops for `/metrics`.
    pub fn new(
        upstreams: Arc<Upstreams>,
        targets: Targets,
        health: HealthConfig,
        queue: usize,
        log_dropped: Arc<AtomicU64>,
    ) -> (HealthTask, HealthHandle) {
        let (tx, rx) = mpsc::channel(queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let now = Instant::now();
        let providers = upstreams
            .all()
            .iter()
            .map(|_| Window::new(now, SLOT, SLOTS))
            .collect();
        (
            HealthTask {
                rx,
                upstreams,
                targets,
                health,
                overall: Window::new(now, SLOT, SLOTS),
                providers,
                metrics: Metrics::default(),
                observations_dropped: Arc::clone(&dropped),
                log_dropped,
            },
            HealthHandle { tx, dropped },
        )
    }

    /// Runs until `stop` is cancelled (then drains what is queued) or every handle is gone.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg, Instant::now()),
                    None => return,
                },
                () = stop.cancelled() => break,
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg, Instant::now());
        }
    }

    fn handle(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Attempt(obs, cost) => self.record_attempt(&obs, cost, now),
            Msg::Request(r) => self.record_request(&r),
            Msg::Report(reply) => {
                let _ = reply.send(self.report(now));
            }
            Msg::Metrics(reply) => {
                let _ = reply.send(self.metrics.render(&self.gauges()));
            }
        }
    }

    fn record_attempt(&mut self, obs: &Observation, cost: f64, now: Instant) {
        self.metrics.record_attempt(obs, cost);
        // A client that walks away says nothing about the provider; the deadlock
        // watchdog looks at in-flight age instead.
        if obs.outcome == Outcome::ClientCancelled {
            return;
        }
        let ok = obs.outcome == Outcome::Ok;
        let sample = Sample {
            failed: obs.outcome.is_upstream_failure(),
            completed: ok,
            within_targets: self.targets.met_by(ok, obs.ttft, obs.e2e, obs.decode_rate),
            ttft: obs.ttft.map(|d| d.as_secs_f64()),
            e2e: obs.e2e.as_secs_f64(),
            decode: obs.decode_rate,
            gaps: &obs.gaps,
            tokens_in: obs.prompt_tokens.unwrap_or(0),
            tokens_out: obs.completion_tokens.unwrap_or(0),
        };
        if let Some(w) = self.providers.get_mut(obs.provider) {
            w.record(now, &sample);
        }
    }

    fn record_request(&mut self, r: &RequestSummary) {
        self.metrics.record_request(r);
        if r.client_fault || r.source == Source::Synthetic {
            return;
        }
        let ok = (200..300).contains(&r.status);
        self.overall.record(
            r.ended,
            &Sample {
                failed: !ok,
                completed: ok,
                within_targets: r.within_targets,
                ttft: r.ttft.map(|d| d.as_secs_f64()),
                e2e: r.e2e.as_secs_f64(),
                decode: r.decode_rate,
                ..Sample::default()
            },
        );
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            in_flight: self
                .upstreams
                .all()
                .iter()
                .map(|p| (Arc::clone(&p.id), p.in_flight()))
                .collect(),
            request_log_dropped: self.log_dropped.load(Ordering::Relaxed),
            observations_dropped: self.observations_dropped.load(Ordering::Relaxed),
        }
    }

    /// The performance health report at `now`.
    pub fn report(&self, now: Instant) -> HealthReport {
        let providers: Vec<ProviderReport> = self
            .upstreams
            .all()
            .iter()
            .zip(&self.providers)
            .map(|(p, w)| ProviderReport {
                id: p.config.id.clone(),
                models: p.config.models.clone(),
                scope: ScopeReport::judge(w, now, p.in_flight(), &self.targets, &self.health),
            })
            .collect();
        let in_flight = providers.iter().map(|p| p.scope.in_flight).sum();
        let overall =
            ScopeReport::judge(&self.overall, now, in_flight, &self.targets, &self.health);
        let mut verdict = overall.verdict;
        if !providers.is_empty()
            && providers
                .iter()
                .all(|p| p.scope.verdict == Verdict::Failing)
        {
            verdict = Verdict::Failing;
        }
        HealthReport {
            verdict,
            generated_at_unix_ms: unix_ms_now(),
            targets: TargetsView::from(&self.targets),
            overall,
            providers,
        }
    }
}
