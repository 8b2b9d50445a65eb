//! The health task: the single owner of every rolling window and of the metric registry.
//! The request path hands it observations without waiting; the admin API asks it for
//! reports.

pub mod baseline;
pub mod report;
pub mod series;
pub mod snapshot;
pub mod state;
mod tick;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, HealthConfig, RoutingConfig, ScrapeConfig, Targets};
use crate::detect::{
    CapacityWatch, DependencyWatch, Finding, GatewayDetectors, ProviderDetectors, QualityDetector,
};
use crate::incident::{self, Incidents};
use crate::metrics::{Gauges, Metrics};
use crate::observation::{Observation, Outcome, RequestSummary, Source, unix_ms_now};
use crate::quality::CanaryResult;
use crate::request_log::LogSender;
use crate::scrape::Backend;
use crate::slo::Slo;
use crate::upstream::{Change, Live, Provider, Upstreams};
use report::{
    BackendReport, DependencyReport, HealthReport, ProviderReport, RequestLogReport, ScopeReport,
    TargetsView, Verdict, Windows,
};
use series::{Series, SeriesSpan};
use snapshot::{ProviderView, SharedSnapshot, Snapshot};
use state::ProviderHealth;
use window::{ErrorClass, FailureRun, Sample, Window};

/// How often states are re-judged and the snapshot republished.
pub const TICK: Duration = Duration::from_millis(500);
/// The recent window the state machine judges: slot width and count (30 s).
const RECENT_SLOT: Duration = Duration::from_secs(2);
const RECENT_SLOTS: usize = 15;
/// How long a wait of seconds for a slot in a server's queue-time histogram stays in view:
/// twice the recent window, since the histogram counts a request when it leaves the queue
/// and the gateway its attempt only when the answer ends.
const LONG_WAIT_SEEN: Duration = Duration::from_secs(60);
/// LiteLLM's cooldown time (reference gateway anchors).
const COOLDOWN: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Msg {
    Attempt(Box<Observation>, f64, i64),
    Request(RequestSummary),
    Backend(usize, Option<Backend>),
    HealthEndpoint(usize, bool),
    Dependency(usize, Instant, Option<f64>, f64),
    RetryAfter(usize, Duration),
    Canary(Box<CanaryResult>),
    Report(oneshot::Sender<HealthReport>),
    Series(SeriesSpan, oneshot::Sender<Series>),
    Metrics(oneshot::Sender<String>),
    Reload(Arc<Upstreams>, Vec<Change>, oneshot::Sender<()>),
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

    /// Hands over one attempt's observation with its cost and the in-flight count it
    /// started with; never waits.
    pub fn observe(&self, obs: Observation, cost: f64, in_flight: i64) {
        self.try_send(Msg::Attempt(Box::new(obs), cost, in_flight));
    }

    /// Hands over a scrape of provider `index` (`None`: the scrape failed).
    pub fn backend(&self, index: usize, backend: Option<Backend>) {
        self.try_send(Msg::Backend(index, backend));
    }

    /// Provider `index`'s own health endpoint answered 2xx (`true`) or not.
    pub fn health_endpoint(&self, index: usize, ok: bool) {
        self.try_send(Msg::HealthEndpoint(index, ok));
    }

    /// Dependency `index` answered in `latency_s` (`None`: failed; counted as `timeout_s`),
    /// measured from `at`.
    pub fn dependency(&self, index: usize, at: Instant, latency_s: Option<f64>, timeout_s: f64) {
        self.try_send(Msg::Dependency(index, at, latency_s, timeout_s));
    }

    /// Provider `index` asked for no traffic for `wait` (`retry-after`).
    pub fn retry_after(&self, index: usize, wait: Duration) {
        self.try_send(Msg::RetryAfter(index, wait));
    }

    /// Hands over a canary result; never waits.
    pub fn canary(&self, result: CanaryResult) {
        self.try_send(Msg::Canary(Box::new(result)));
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

    /// Per-slot history of the overall and per-provider windows over `span`.
    pub async fn series(&self, span: SeriesSpan) -> Option<Series> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Series(span, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Takes the providers of a reloaded configuration: new slots start afresh, changed
    /// ones keep or restart their health as `changes` says, removed ones stop being judged
    /// (their incidents resolve); the snapshot for the new providers is published before
    /// this returns, so the router never sees a provider it has no view of.
    pub async fn reload(&self, upstreams: Arc<Upstreams>, changes: Vec<Change>) -> Option<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Reload(upstreams, changes, tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// The metric registry rendered in Prometheus text format.
    pub async fn metrics(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Per-provider bookkeeping the task owns.
#[derive(Debug)]
struct Tracked {
    windows: Windows,
    /// The window the state machine judges; cleared when the state changes so a recovered
    /// provider is not judged on what it did while broken.
    recent: Window,
    /// The same attempts, cleared only when the provider becomes healthy: the failures that
    /// ejected it stay in view of the detectors while it is out of rotation.
    since_healthy: Window,
    /// The server failures its latest attempts ended with, in a row.
    failure_run: FailureRun,
    health: ProviderHealth,
    live: Option<(Live, Instant)>,
    live_decode: Option<f64>,
    load: Option<f64>,
    /// Mean streams decoding at once (see [`Signals::batch`]).
    batch: Option<f64>,
    /// Mean completion tokens of the latest answers (kept while no answer arrives).
    mean_output_tokens: Option<f64>,
    signals: state::Signals,
    backend: Option<(Backend, Instant)>,
    backend_failed: bool,
    /// When a scrape last showed a queue formed at the server (`Backend::queue_formed`), or
    /// requests that had waited seconds for a slot since the scrape before
    /// (`Backend::waited_long`).
    queued_at: Option<Instant>,
    /// When a scrape last carried a queue-time histogram (`Backend::waited_long` known).
    queue_histogram_at: Option<Instant>,
    /// When that histogram last showed requests that had waited seconds for a slot.
    waited_long_at: Option<Instant>,
    /// (minute, requests, failures) for the error-cooldown policy.
    minute: (u64, u64, u64),
    cooldown_until: Option<Instant>,
    retry_after_until: Option<Instant>,
    /// The provider's own health endpoint answered 2xx at its last check.
    health_endpoint_ok: Option<bool>,
    detectors: ProviderDetectors,
    /// What the detectors found at the last tick.
    findings: Vec<Finding>,
    /// A model it serves was over capacity at the last tick.
    overloaded: bool,
    quality: QualityDetector,
    /// The latest result of each canary probe, by probe and model.
    canaries: BTreeMap<(String, String), CanaryResult>,
}

impl Tracked {
    /// The last scrape, when it succeeded and is younger than `stale`.
    fn fresh_backend(&self, stale: Duration, now: Instant) -> Option<(&Backend, Instant)> {
        fresh(self.backend.as_ref(), self.backend_failed, stale, now)
    }

    /// Its decode step now against the step learned with nothing waiting at the batch it
    /// runs (the fastest token gaps; below 1: each step slower).
    fn fastest_step(&self, s: &state::Signals) -> Option<f64> {
        let learned = s
            .batch
            .and_then(|b| self.health.baseline.gap_at(baseline::GapLine::Fastest, b));
        baseline::step_ratio(learned, s.fastest_gap)
    }

    /// Whether its queue-time histogram showed requests that had waited seconds for a slot
    /// within [`LONG_WAIT_SEEN`] of `now` (`None`: no scrape in that time carried one).
    fn waited_long_lately(&self, now: Instant) -> Option<bool> {
        let within = |at: Instant| now.saturating_duration_since(at) <= LONG_WAIT_SEEN;
        self.queue_histogram_at
            .is_some_and(within)
            .then(|| self.waited_long_at.is_some_and(within))
    }

    /// Clears what a state change makes stale.
    fn state_changed(&mut self, now: Instant) {
        self.recent = Window::new(now, RECENT_SLOT, RECENT_SLOTS);
        if self.health.state == state::State::Healthy {
            self.since_healthy = Window::new(now, RECENT_SLOT, RECENT_SLOTS);
        }
    }

    fn new(now: Instant) -> Tracked {
        Tracked {
            windows: Windows::new(now),
            recent: Window::new(now, RECENT_SLOT, RECENT_SLOTS),
            since_healthy: Window::new(now, RECENT_SLOT, RECENT_SLOTS),
            failure_run: FailureRun::default(),
            health: ProviderHealth::new(now),
            live: None,
            live_decode: None,
            load: None,
            batch: None,
            mean_output_tokens: None,
            signals: state::Signals::default(),
            backend: None,
            queued_at: None,
            queue_histogram_at: None,
            waited_long_at: None,
            backend_failed: false,
            minute: (0, 0, 0),
            cooldown_until: None,
            retry_after_until: None,
            health_endpoint_ok: None,
            detectors: ProviderDetectors::default(),
            findings: Vec::new(),
            overloaded: false,
            quality: QualityDetector::default(),
            canaries: BTreeMap::new(),
        }
    }
}

/// A scrape, when it succeeded and is younger than `stale` (stale metrics are unknown, never
/// healthy).
fn fresh(
    backend: Option<&(Backend, Instant)>,
    failed: bool,
    stale: Duration,
    now: Instant,
) -> Option<(&Backend, Instant)> {
    let (b, at) = backend?;
    (!failed && now.saturating_duration_since(*at) <= stale).then_some((b, *at))
}

/// The task that owns windows, health states, the snapshot and metrics.
#[derive(Debug)]
pub struct HealthTask {
    rx: mpsc::Receiver<Msg>,
    upstreams: Arc<Upstreams>,
    targets: Targets,
    health: HealthConfig,
    routing: RoutingConfig,
    scrape: ScrapeConfig,
    overall: Windows,
    providers: Vec<Tracked>,
    snapshot: SharedSnapshot,
    started: Instant,
    metrics: Metrics,
    observations_dropped: Arc<AtomicU64>,
    log_status: Arc<crate::request_log::LogStatus>,
    gateway: GatewayDetectors,
    gateway_finding: Option<Finding>,
    dependencies: Vec<DependencyWatch>,
    slo: Slo,
    slo_findings: Vec<Finding>,
    /// Per model: whether its demand exceeds its providers' capacity.
    capacity: BTreeMap<String, CapacityWatch>,
    capacity_findings: Vec<Finding>,
    incidents: Incidents,
    resolve_after: Duration,
    /// Monotonic time to Unix ms, anchored once when the task was created: incident times and
    /// report stamps follow the same clock as the windows (wall-clock steps do not bend them,
    /// and a paused clock in virtual time moves them too).
    epoch: crate::detect::Clock,
    /// The span of real traffic the quality detector judges.
    quality_window: Duration,
    canary_interval: Duration,
    /// The stall watchdog's patience with first tokens the engine is not seen holding.
    patience: tick::Patience,
    log: LogSender,
    alerts: Option<mpsc::Sender<incident::Event>>,
}

impl HealthTask {
    /// Creates the task, its handle and the snapshot it publishes. Incident events go to
    /// the request log (`log`, whose drop counter `/metrics` shows) and to `alerts`.
    pub fn new(
        upstreams: Arc<Upstreams>,
        config: &Config,
        log: LogSender,
        alerts: Option<mpsc::Sender<incident::Event>>,
    ) -> (HealthTask, HealthHandle, SharedSnapshot) {
        let log_status = log.status();
        let (tx, rx) = mpsc::channel(config.server.observation_queue);
        let dropped = Arc::new(AtomicU64::new(0));
        let now = Instant::now();
        let providers = upstreams.all().iter().map(|_| Tracked::new(now)).collect();
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot {
            providers: upstreams
                .all()
                .iter()
                .map(|_| ProviderView::new(now))
                .collect(),
        }));
        (
            HealthTask {
                rx,
                upstreams,
                targets: config.targets,
                health: config.health,
                routing: config.routing.clone(),
                scrape: config.scrape,
                overall: Windows::new(now),
                providers,
                snapshot: Arc::clone(&snapshot),
                started: now,
                metrics: Metrics::default(),
                observations_dropped: Arc::clone(&dropped),
                log_status,
                gateway: GatewayDetectors::default(),
                gateway_finding: None,
                dependencies: config
                    .dependencies
                    .iter()
                    .map(|d| DependencyWatch::new(&d.name))
                    .collect(),
                slo: Slo::new(config.slo, now),
                slo_findings: Vec::new(),
                capacity: BTreeMap::new(),
                capacity_findings: Vec::new(),
                incidents: Incidents::default(),
                resolve_after: config.alerts.resolve_after,
                epoch: crate::detect::Clock {
                    at: now,
                    unix_ms: unix_ms_now(),
                },
                quality_window: config.canaries.traffic_window,
                canary_interval: config.canaries.interval,
                patience: tick::Patience::new(
                    config.routing.stall_after,
                    config.scrape.interval,
                    config.timeouts.ttft,
                ),
                log,
                alerts,
            },
            HealthHandle { tx, dropped },
            snapshot,
        )
    }

    /// The clock anchored at `now`.
    fn clock(&self, now: Instant) -> crate::detect::Clock {
        crate::detect::Clock {
            at: now,
            unix_ms: self.epoch.ms(now),
        }
    }

    /// Runs until `stop` is cancelled (then drains what is queued) or every handle is gone.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg, Instant::now()),
                    None => return,
                },
                _ = tick.tick() => self.tick(Instant::now()),
                () = stop.cancelled() => break,
            }
        }
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg, Instant::now());
        }
    }

    fn handle(&mut self, msg: Msg, now: Instant) {
        match msg {
            Msg::Attempt(obs, cost, in_flight) => self.record_attempt(&obs, cost, in_flight, now),
            Msg::Request(r) => self.record_request(&r),
            Msg::Backend(i, b) => {
                if let Some(t) = self.providers.get_mut(i) {
                    t.backend_failed = b.is_none();
                    if let Some(b) = b {
                        if b.queue_formed() || b.waited_long() {
                            t.queued_at = Some(now);
                        }
                        if b.waited_long.is_some() {
                            t.queue_histogram_at = Some(now);
                        }
                        if b.waited_long() {
                            t.waited_long_at = Some(now);
                        }
                        t.backend = Some((b, now));
                    }
                }
            }
            Msg::HealthEndpoint(i, ok) => {
                if let Some(t) = self.providers.get_mut(i) {
                    t.health_endpoint_ok = Some(ok);
                }
            }
            Msg::Dependency(i, at, latency, timeout) => {
                if let Some(d) = self.dependencies.get_mut(i) {
                    d.observe(at.min(now), latency, timeout);
                }
            }
            Msg::RetryAfter(i, wait) => {
                if let Some(t) = self.providers.get_mut(i) {
                    t.retry_after_until = Some(now + wait);
                    self.publish(now);
                }
            }
            Msg::Canary(r) => {
                if let Some(t) = self.providers.get_mut(r.provider) {
                    t.quality.on_canary(&r);
                    t.canaries.insert((r.probe.clone(), r.model.clone()), *r);
                }
            }
            Msg::Report(reply) => {
                let _ = reply.send(self.report(now));
            }
            Msg::Series(span, reply) => {
                let _ = reply.send(self.series(span, now));
            }
            Msg::Metrics(reply) => {
                let _ = reply.send(self.metrics.render(&self.gauges(now)));
            }
            Msg::Reload(upstreams, changes, reply) => {
                self.reload(upstreams, &changes, now);
                let _ = reply.send(());
            }
        }
    }

    fn record_attempt(&mut self, obs: &Observation, cost: f64, in_flight: i64, now: Instant) {
        self.metrics.record_attempt(obs, cost);
        // A client that walks away, or a hedge Candor cancelled, says nothing about the
        // provider; the stall watchdog looks at progress instead.
        // Nor does an attempt Candor abandoned when it ejected the provider: the ejection's
        // own evidence is the cause, and counting the attempts it abandoned again would make
        // every ejection look like an error burst of Candor's own making.
        if matches!(obs.outcome, Outcome::ClientCancelled | Outcome::Cancelled)
            || obs.outcome.is_abandoned()
        {
            return;
        }
        let ok = obs.outcome == Outcome::Ok;
        let failed = obs.outcome.is_upstream_failure();
        let within = self.targets.met_by(ok, obs.ttft, obs.e2e, obs.decode_rate);
        let (error, timed_out) = match &obs.outcome {
            Outcome::Error { kind, .. } if failed => {
                let first = obs.ttft.is_some();
                (
                    Some(ErrorClass::of(kind, first)),
                    ErrorClass::first_token_timeout(kind, first),
                )
            }
            _ => (None, false),
        };
        let sample = Sample {
            failed,
            completed: ok,
            within_targets: within,
            ttft: obs.ttft.map(|d| d.as_secs_f64()),
            e2e: obs.e2e.as_secs_f64(),
            decode: obs.decode_rate,
            gaps: &obs.gaps,
            max_gap: obs.max_gap.map(|d| d.as_secs_f64()),
            in_flight,
            tokens_in: obs.prompt_tokens.unwrap_or(0),
            tokens_out: obs.completion_tokens.unwrap_or(0),
            cost,
            error,
            timed_out,
            ..Sample::default()
        };
        let can_eject = self.can_eject(obs.provider);
        let Some(t) = self.providers.get_mut(obs.provider) else {
            return;
        };
        if ok {
            t.quality.on_identity(
                now,
                obs.served_model.as_deref(),
                obs.system_fingerprint.as_deref(),
            );
            if obs.source == Source::Client
                && let Some(d) = &obs.quality
            {
                t.quality.on_response(now, d);
            }
        }
        t.windows.record(now, &sample);
        t.recent.record(now, &sample);
        t.since_healthy.record(now, &sample);
        t.failure_run.record(now, &sample);
        // LiteLLM: more than half of this minute's requests failed (not the only one).
        let minute = now.saturating_duration_since(self.started).as_secs() / 60;
        if t.minute.0 != minute {
            t.minute = (minute, 0, 0);
        }
        t.minute.1 += 1;
        t.minute.2 += u64::from(failed);
        if failed && t.minute.1 > 1 && t.minute.2 * 2 > t.minute.1 {
            t.cooldown_until = Some(now + COOLDOWN);
        }
        // While the model is over capacity its failures are timeouts behind a queue: they say
        // nothing about this provider, and ejecting it would only pile its load on the rest.
        let changed = t.health.on_attempt(
            now,
            failed && !t.overloaded,
            within,
            obs.probe,
            &self.routing,
            can_eject,
        );
        if changed {
            t.state_changed(now);
            self.on_state_change(obs.provider);
            self.publish(now);
        }
    }

    fn record_request(&mut self, r: &RequestSummary) {
        // Canaries are not client requests: their attempts are measured like any other, but
        // they never count as requests, in SLA figures or in the business metric.
        if r.source == Source::Synthetic {
            return;
        }
        self.metrics.record_request(r);
        if r.client_fault {
            return;
        }
        let ok = (200..300).contains(&r.status);
        self.metrics.record_sli(r.within_targets);
        self.slo.record(r.ended, r.within_targets, ok);
        self.overall.record(
            r.ended,
            &Sample {
                failed: !ok,
                completed: ok,
                within_targets: r.within_targets,
                ttft: r.ttft.map(|d| d.as_secs_f64()),
                e2e: r.e2e.as_secs_f64(),
                decode: r.decode_rate,
                deadline: r.deadline.map(|d| d.as_secs_f64()),
                timed_out: r.status == 504,
                ..Sample::default()
            },
        );
    }

    /// After provider `i` changed state: when it was ejected, attempts still waiting on it
    /// give up and fail over.
    fn on_state_change(&self, i: usize) {
        if let (Some(t), Some(p)) = (self.providers.get(i), self.upstreams.get(i))
            && matches!(t.health.state, state::State::Ejected { .. })
        {
            p.abandon_waiting();
        }
    }

    /// True when ejecting `provider` keeps every model it serves within the cap: at most
    /// `max_ejected_share` of the model's providers (rounded up) and never all of them.
    fn can_eject(&self, provider: usize) -> bool {
        let ejected = |i: &usize| {
            self.providers
                .get(*i)
                .is_some_and(|t| t.health.state.weight() == 0.0)
        };
        self.upstreams.models().all(|m| {
            let serving = self.upstreams.serving(m);
            if !serving.contains(&provider) {
                return true;
            }
            let n = serving.len();
            let allowed = ((n as f64 * self.routing.max_ejected_share).ceil() as usize).min(n - 1);
            serving.iter().filter(|i| ejected(i)).count() < allowed
        })
    }

    /// See [`HealthHandle::reload`].
    fn reload(&mut self, upstreams: Arc<Upstreams>, changes: &[Change], now: Instant) {
        for &change in changes {
            let i = change.index();
            // Slots are appended in order (`Upstreams::reconcile`), so a new one is the next.
            if i >= self.providers.len() {
                self.providers.push(Tracked::new(now));
                continue;
            }
            let Some(t) = self.providers.get_mut(i) else {
                continue;
            };
            match change {
                Change::Added(_) | Change::Replaced(_) => *t = Tracked::new(now),
                // Another object with its own counters: the next tick starts from them.
                Change::Updated(_) => t.live = None,
                // The tick stops judging a retired provider and drops its findings.
                Change::Removed(_) => {}
            }
        }
        self.upstreams = upstreams;
        self.publish(now);
    }

    /// Providers in service with their bookkeeping (a retired slot is kept for its index
    /// only).
    fn active(&self) -> impl Iterator<Item = (&Arc<Provider>, &Tracked)> {
        self.upstreams
            .all()
            .iter()
            .zip(&self.providers)
            .filter(|(p, _)| !p.retired)
    }

    fn gauges(&self, now: Instant) -> Gauges {
        Gauges {
            in_flight: self
                .active()
                .map(|(p, _)| (Arc::clone(&p.id), p.in_flight()))
                .collect(),
            routing: self
                .active()
                .map(|(p, t)| {
                    (
                        Arc::clone(&p.id),
                        t.health.state.name(),
                        t.health.state.weight(),
                    )
                })
                .collect(),
            request_log_dropped: self.log_status.lost(),
            request_log_buffered: self.log_status.buffered(),
            request_log_written: self.log_status.written(),
            request_log_failing: self.log_status.failing_since().is_some(),
            observations_dropped: self.observations_dropped.load(Ordering::Relaxed),
            open_incidents: self.incidents.counts().into_iter().collect(),
            dependencies: self
                .dependencies
                .iter()
                .map(|d| (d.name.clone(), d.last.map(|l| l.0)))
                .collect(),
            burn_rates: self.slo.burn_rates(now),
            canaries: self
                .providers
                .iter()
                .flat_map(|t| t.canaries.values())
                .map(|c| {
                    (
                        c.provider_id.clone(),
                        c.model.clone(),
                        c.probe.clone(),
                        c.pass,
                    )
                })
                .collect(),
        }
    }

    /// What provider `p` (tracked as `t`) shows at `now`.
    fn provider_report(&self, p: &Provider, t: &Tracked, now: Instant) -> ProviderReport {
        let baseline = t.health.baseline.at(t.signals.load);
        ProviderReport {
            id: p.config.id.clone(),
            models: p.config.models.clone(),
            state: t.health.state.name(),
            weight: t.health.state.weight(),
            evidence: t.health.evidence.clone(),
            backend: self.backend_report(
                p.config.metrics_url.is_some() || p.config.gpu_metrics_url.is_some(),
                t,
                now,
            ),
            health_endpoint_ok: t.health_endpoint_ok,
            findings: t.findings.clone(),
            canaries: t.canaries.values().cloned().collect(),
            decode_now: t.signals.decode,
            baseline_decode_tokens_per_s: baseline.and_then(|b| b.decode),
            baseline_ttft_ms: baseline.and_then(|b| b.ttft).map(|s| s * 1000.0),
            baseline_decode_spread: baseline.and_then(|b| b.decode_spread),
            scope: ScopeReport::judge(&t.windows, now, p.in_flight(), &self.targets, &self.health),
        }
    }

    /// The performance health report at `now`.
    pub fn report(&self, now: Instant) -> HealthReport {
        let providers: Vec<ProviderReport> = self
            .active()
            .map(|(p, t)| self.provider_report(p, t, now))
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
        let request_log = RequestLogReport {
            rows_lost: self.log_status.lost(),
            rows_buffered: self.log_status.buffered(),
            failing_since_unix_ms: self.log_status.failing_since(),
        };
        if request_log.failing_since_unix_ms.is_some() {
            // Serving still works, but what it serves is no longer on record: not healthy.
            verdict = verdict.max(Verdict::Degraded);
        }
        let clock = self.clock(now);
        HealthReport {
            verdict,
            request_log,
            generated_at_unix_ms: clock.unix_ms,
            targets: TargetsView::from(&self.targets),
            overall,
            providers,
            incidents: self.incidents.open().cloned().collect(),
            findings: self
                .gateway_finding
                .iter()
                .chain(&self.slo_findings)
                .chain(&self.capacity_findings)
                .cloned()
                .collect(),
            overloaded: self
                .capacity_findings
                .iter()
                .map(|f| f.subject.clone())
                .collect(),
            dependencies: self
                .dependencies
                .iter()
                .map(|d| DependencyReport {
                    name: d.name.clone(),
                    latency_ms: d.last.map(|l| l.0 * 1000.0),
                    baseline_ms: d.baseline().map(|b| b * 1000.0),
                    failing: d.failing,
                    anomalous_since_unix_ms: d.anomalous_since().map(|t| clock.ms(t)),
                })
                .collect(),
            // The server fills this in: reloads are not the health task's business.
            config_reload: None,
        }
    }

    /// Per-slot history over `span`, for the dashboard's charts.
    pub fn series(&self, span: SeriesSpan, now: Instant) -> Series {
        fn pick(w: &Windows, span: SeriesSpan) -> &Window {
            match span {
                SeriesSpan::FiveMinutes => &w.fine,
                SeriesSpan::Hour => &w.hour,
            }
        }
        let clock = self.clock(now);
        Series::build(
            &clock,
            pick(&self.overall, span),
            self.active()
                .map(|(p, t)| (p.config.id.as_str(), pick(&t.windows, span))),
            now,
        )
    }

    fn backend_report(&self, configured: bool, t: &Tracked, now: Instant) -> BackendReport {
        if !configured {
            return BackendReport {
                status: "not_configured",
                age_s: None,
                metrics: None,
            };
        }
        match self.fresh_backend(t, now) {
            Some((b, at)) => BackendReport {
                status: "ok",
                age_s: Some(now.saturating_duration_since(at).as_secs_f64()),
                metrics: Some(b.clone()),
            },
            None => BackendReport {
                status: "unknown",
                age_s: t
                    .backend
                    .as_ref()
                    .map(|(_, at)| now.saturating_duration_since(*at).as_secs_f64()),
                metrics: None,
            },
        }
    }

    /// The provider's last scrape, when it succeeded and is not stale.
    fn fresh_backend<'a>(&self, t: &'a Tracked, now: Instant) -> Option<(&'a Backend, Instant)> {
        t.fresh_backend(self.scrape.stale_after, now)
    }
}
