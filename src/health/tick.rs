//! The health task's tick: measure each provider's recent signals (windows, live token
//! counters, scrapes), compare with baselines and peers, step the state machines, and
//! publish the snapshot the router reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::baseline::{GapLine, Ratios, Reference};
use super::snapshot::{ProviderView, Snapshot};
use super::state::{Evidence, MIN_SAMPLES, Signals, stall_limit};
use super::window::Slot;
use super::{HealthTask, Tracked, fresh};
use crate::detect::{
    Clock, Finding, Folding, GatewayInput, Member, Mode, ModelInput, PeerPool, ProviderInput, fold,
};
use crate::upstream::Provider;

/// Span of the recent window.
const RECENT: Duration = Duration::from_secs(30);
/// Highest weight of a provider with KV-cache thrashing: it should get less of the new
/// (long-context) work until its cache recovers.
const KV_THRASH_WEIGHT: f64 = 0.5;

/// The state-machine evidence and weight cap for a finding that should shift traffic.
fn flag(f: &Finding) -> Option<(Evidence, f64)> {
    let first = f.facts.first()?;
    let weight = match f.mode {
        Mode::KvCacheThrashing => KV_THRASH_WEIGHT,
        Mode::SilentQualityDegradation => QUALITY_WEIGHT,
        // Fewer requests into the tail: the slower the share, the less traffic.
        Mode::TailLatency => (1.0 - TAIL_WEIGHT_PER_SHARE * first.value).max(QUALITY_WEIGHT),
        // Traffic in proportion to measured speed.
        Mode::HardwareDegradation => first
            .baseline
            .filter(|b| *b > 0.0)
            .map_or(KV_THRASH_WEIGHT, |b| first.value / b),
        _ => return None,
    };
    Some((
        Evidence::new(
            f.mode.as_str(),
            first.value,
            first.baseline.or(first.threshold),
            "baseline",
            f.summary.clone(),
        ),
        weight,
    ))
}

/// Weight a provider with an intermittent tail loses per unit of its slow share (a fifth of
/// its first tokens late: 0.4).
const TAIL_WEIGHT_PER_SHARE: f64 = 3.0;

/// Highest weight of a provider whose outputs are degraded: as little traffic as routing
/// allows (it still answers when nothing better is left).
const QUALITY_WEIGHT: f64 = 0.05;

/// Span of the gateway-level window the cascade detector judges (short: its onsets matter).
const GATEWAY_RECENT: Duration = Duration::from_secs(10);
/// Stream-seconds of decoding a tick needs before its live decode rate counts.
const MIN_STREAM_S: f64 = 0.25;
/// Weight of the newest live decode-rate measurement.
const LIVE_ALPHA: f64 = 0.5;
/// The quantile of the recent window's token gaps taken as the engine's bare decode step:
/// under a standing queue an engine that prefills whole prompts between its steps does so on
/// a fraction of them, so its quickest quarter of gaps are steps with nothing in between.
const QUICKEST_GAPS: f64 = 0.25;
/// The quantile of the last `LATEST` seconds' token gaps taken as the decode step alone.
const FASTEST_GAPS: f64 = 0.1;
/// The window of the fastest gaps: short, so the step follows a slowdown within seconds.
const LATEST: Duration = Duration::from_secs(10);
/// Token gaps in a window before its quickest gaps are taken.
const MIN_GAPS: u64 = 200;
/// Weight of the newest tick in the mean decoding batch: a time constant of about ten
/// seconds, near the age of the gaps in the recent window (recorded as streams end).
const BATCH_ALPHA: f64 = 0.05;

impl HealthTask {
    /// Re-judges every provider at `now`: runs the detectors, steps the state machines (a
    /// detector's finding can lower a provider's weight), updates the incidents, and
    /// republishes the snapshot.
    pub(super) fn tick(&mut self, now: Instant) {
        let clock = self.clock(now);
        // What each provider did since it was last healthy, over the detectors' window: the
        // detectors judge it, and the stall watchdog takes its patience from it.
        let since_healthy: Vec<Slot> = self
            .providers
            .iter()
            .map(|t| t.since_healthy.sum(now, RECENT))
            .collect();
        let signals: Vec<Signals> = since_healthy
            .iter()
            .enumerate()
            .map(|(i, w)| self.measure(i, w, now))
            .collect();
        let pools = self.quality_pools();
        let own = self.own_ratios(&signals);
        for (i, (s, since_healthy)) in signals.iter().zip(&since_healthy).enumerate() {
            let peers = self.peer_ratios(i, &own);
            let can_eject = self.can_eject(i);
            let stale = self.scrape.stale_after;
            let (Some(p), Some(t)) = (self.upstreams.get(i), self.providers.get_mut(i)) else {
                continue;
            };
            if p.retired {
                t.findings.clear();
                continue;
            }
            t.signals = *s;
            let input = ProviderInput {
                id: &p.config.id,
                since_healthy,
                failure_run: t.failure_run,
                signals: s,
                state: t.health.state,
                baseline: t.health.baseline.at(s.load),
                peers,
                quickest_gap_baseline: s
                    .batch
                    .and_then(|b| t.health.baseline.gap_at(GapLine::Quickest, b)),
                fastest_step: t.fastest_step(s),
                backend: fresh(t.backend.as_ref(), t.backend_failed, stale, now).map(|(b, _)| b),
                health_endpoint_ok: t.health_endpoint_ok,
                in_flight: p.in_flight(),
                queued_recently: t
                    .queued_at
                    .is_some_and(|at| now.saturating_duration_since(at) <= RECENT),
                waited_long_lately: t.waited_long_lately(now),
                stall_limit: stall_limit(s, &self.routing),
                ttft_target: self.targets.ttft.as_secs_f64(),
                canary_stuck: t
                    .canaries
                    .values()
                    .filter(|c| c.signal == Some("no_first_token"))
                    .filter(|c| now.saturating_duration_since(c.at) <= 2 * self.canary_interval)
                    .map(|c| (c.at, c.reason.as_str()))
                    .max_by_key(|c| c.0),
            };
            t.findings = t.detectors.step(&input, &clock, now);
            t.findings.extend(t.quality.step(
                &p.config.id,
                pools.get(i).and_then(Option::as_ref),
                self.quality_window,
                &clock,
                now,
            ));
            let flagged = t.findings.iter().find_map(flag);
            if t.health.on_tick(
                now,
                s,
                peers,
                flagged,
                &self.routing,
                &self.targets,
                can_eject,
            ) {
                t.state_changed(now);
                self.on_state_change(i);
            }
        }
        self.capacity_findings = self.judge_capacity(&signals, &clock, now);
        let recent = self.overall.fine.sum(now, GATEWAY_RECENT);
        self.gateway_finding = self.gateway.step(
            &GatewayInput { recent: &recent },
            &self.dependencies,
            &clock,
            now,
        );
        self.slo_findings = self.slo.evaluate(now, &clock);
        self.update_incidents(clock.unix_ms);
        self.publish(now);
    }

    /// Opens, updates and resolves incidents from this tick's findings; sends the events to
    /// the request log and the alert sinks.
    fn update_incidents(&mut self, now_ms: i64) {
        let findings = self
            .providers
            .iter()
            .flat_map(|t| &t.findings)
            .chain(&self.gateway_finding)
            .chain(&self.slo_findings)
            .chain(&self.capacity_findings);
        for e in self.incidents.step(now_ms, findings, self.resolve_after) {
            if e.kind != crate::incident::EventKind::Updated {
                tracing::info!(
                    incident = %e.incident.id,
                    event = e.kind.as_str(),
                    mode = %e.incident.mode,
                    subject = %e.incident.subject,
                    "{}",
                    e.incident.summary
                );
                tracing::debug!(
                    incident = %e.incident.id,
                    evidence = %e.incident.evidence,
                    "evidence"
                );
            }
            if let Some(tx) = &self.alerts
                && tx.try_send(e.clone()).is_err()
            {
                tracing::warn!(incident = %e.incident.id, "alert queue full; alert dropped");
            }
            self.log.send_incident(e);
        }
    }

    /// For each provider, its peers' current windows (their values only when its drift
    /// evaluation is due).
    fn quality_pools(&self) -> Vec<Option<PeerPool>> {
        (0..self.providers.len())
            .map(|i| {
                let t = self.providers.get(i)?;
                let peers = self.upstreams.peers(i);
                if peers.is_empty() {
                    return None;
                }
                let mut pool = PeerPool::default();
                let since = t.quality.window_start();
                for j in peers {
                    if let Some(peer) = self.providers.get(j) {
                        peer.quality
                            .pool_into(&mut pool, t.quality.drift_due(), since);
                    }
                }
                Some(pool)
            })
            .collect()
    }

    /// Provider `i`'s signals now, `since_healthy` being its attempts over the last 30 s since
    /// it was last healthy; also advances its live decode-rate average.
    fn measure(&mut self, i: usize, since_healthy: &Slot, now: Instant) -> Signals {
        let Some(p) = self.upstreams.get(i).map(Arc::clone) else {
            return Signals::default();
        };
        let live = p.live();
        let stale = self.scrape.stale_after;
        let Some(t) = self.providers.get_mut(i) else {
            return Signals::default();
        };
        if let Some((prev, at)) = t.live {
            // Tokens over the exact stream-time spent decoding since the last tick (streams
            // shorter than a tick included); a quarter of a stream-second is enough to judge.
            let stream_s = live.decoding_ms.saturating_sub(prev.decoding_ms) as f64 / 1000.0;
            let wall_s = now.saturating_duration_since(at).as_secs_f64();
            if wall_s > 0.0 {
                t.batch = Some(smooth(t.batch, stream_s / wall_s, BATCH_ALPHA));
            }
            t.live_decode = (stream_s >= MIN_STREAM_S).then(|| {
                let rate = live.tokens.saturating_sub(prev.tokens) as f64 / stream_s;
                smooth(t.live_decode, rate, LIVE_ALPHA)
            });
        }
        t.live = Some((live, now));
        t.load = Some(smooth(t.load, live.in_flight as f64, LIVE_ALPHA));
        let recent = t.recent.sum(now, RECENT);
        let latest = t.recent.sum(now, LATEST);
        if recent.completed > 0 {
            t.mean_output_tokens = Some(recent.tokens_out as f64 / recent.completed as f64);
        }
        let now_ms = p.ms(now);
        let stalled_for = (live.streams > 0).then(|| {
            let since = live.last_progress_ms.max(live.busy_since_ms);
            Duration::from_millis(now_ms.saturating_sub(since))
        });
        let stall_patience = stalled_for
            .filter(|_| live.decoding == 0)
            .and_then(|d| self.patience.of(t, now.checked_sub(d).unwrap_or(now)));
        let fresh = t.fresh_backend(stale, now).map(|(b, _)| b);
        Signals {
            requests: recent.requests,
            within_targets: recent.within_targets,
            completed: recent.completed,
            failures: recent.failed,
            ttft_p50: recent.ttft.quantile(0.5),
            ttft_p95: recent.ttft.quantile(0.95),
            decode: t.live_decode.or_else(|| recent.decode.quantile(0.5)),
            decode_live: t.live_decode.is_some(),
            batch: t.batch,
            quickest_gap: (recent.itl.count() >= MIN_GAPS)
                .then(|| recent.itl.quantile(QUICKEST_GAPS))
                .flatten(),
            fastest_gap: (latest.itl.count() >= MIN_GAPS)
                .then(|| latest.itl.quantile(FASTEST_GAPS))
                .flatten(),
            e2e_p50: recent.e2e.quantile(0.5),
            // The load now (a short average), matching the live decode rate it qualifies.
            load: t.load.unwrap_or(live.in_flight as f64),
            stalled_for,
            stall_patience,
            // From the window kept since the provider was last healthy: the one the state
            // machine judges is cleared when the state changes, and with it what a slow
            // first-token tail had shown (a provider degraded for late first tokens would
            // then be called hung the next time one of them is late).
            slow_first_token: since_healthy
                .ttft
                .quantile(0.95)
                .map(|p95| Duration::from_secs_f64(p95 * 3.0)),
            late_share: late_share(
                &recent.ttft,
                t.health.baseline.unqueued_ttft(),
                self.targets.ttft.as_secs_f64(),
            ),
            backend_stuck: fresh.is_some_and(crate::scrape::Backend::stuck),
            overloaded: t.overloaded,
            queued: t.overloaded
                || fresh.is_some_and(crate::scrape::Backend::queued)
                || t.queued_at
                    .is_some_and(|at| now.saturating_duration_since(at) <= LATEST),
            throttle_reasons: fresh.and_then(|b| b.reading.throttle_reasons),
        }
    }

    /// Judges every model's capacity and folds each model's findings to one per cause (the
    /// load's consequences into the capacity finding, or the shortfall into the provider
    /// fault that caused it). Returns the capacity findings that stand on their own.
    fn judge_capacity(&mut self, signals: &[Signals], clock: &Clock, now: Instant) -> Vec<Finding> {
        let ttft_target = self.targets.ttft.as_secs_f64();
        let stale = self.scrape.stale_after;
        let models: Vec<String> = self.upstreams.models().map(str::to_owned).collect();
        let mut out = Vec::new();
        for t in &mut self.providers {
            t.overloaded = false;
        }
        for model in models {
            let serving = self.upstreams.serving(&model).to_vec();
            let members: Vec<Member<'_>> = serving
                .iter()
                .filter_map(|&j| {
                    let (t, p, s) = (
                        self.providers.get(j)?,
                        self.upstreams.get(j)?,
                        signals.get(j)?,
                    );
                    Some(Member {
                        id: &p.config.id,
                        serving: t.health.state.in_rotation(),
                        waiting: t
                            .fresh_backend(stale, now)
                            .and_then(|(b, _)| b.reading.queue),
                        in_flight: p.in_flight(),
                        ttft_p50: s.ttft_p50,
                        ttft_baseline: t.health.baseline.unqueued_ttft(),
                        requests: s.requests,
                        within_targets: s.within_targets,
                        completed: s.completed,
                    })
                })
                .collect();
            let queueing: Vec<bool> = members.iter().map(|m| m.queueing(ttft_target)).collect();
            let input = ModelInput {
                model: &model,
                members,
                ttft_target,
                window: RECENT,
            };
            let found = self
                .capacity
                .entry(model.clone())
                .or_default()
                .step(&input, clock, now);
            let over = found.is_some();
            let mut folding: Vec<Folding<'_>> = self
                .providers
                .iter_mut()
                .enumerate()
                .filter(|(j, _)| serving.contains(j))
                .zip(&queueing)
                .map(|((_, t), &queueing)| {
                    t.overloaded |= over;
                    Folding {
                        serving: t.health.state.in_rotation(),
                        findings: &mut t.findings,
                        queueing,
                    }
                })
                .collect();
            out.extend(fold(found, &mut folding));
        }
        out
    }

    /// Each provider's signals against its own baseline at its load.
    fn own_ratios(&self, signals: &[Signals]) -> Vec<Option<Ratios>> {
        self.providers
            .iter()
            .zip(signals)
            .map(|(t, s)| {
                // Out of rotation, or too little traffic: its figures say nothing now.
                let serving = t.health.state.in_rotation();
                (serving && s.requests >= MIN_SAMPLES).then(|| Ratios {
                    late: s.late_share,
                    step: t.fastest_step(s),
                    ..Ratios::of(
                        Reference {
                            ttft: s.ttft_p50,
                            decode: s.decode,
                            decode_spread: None,
                        },
                        t.health.baseline.at(s.load),
                    )
                })
            })
            .collect()
    }

    /// The median of `i`'s peers' ratios to their own baselines: what the traffic did to
    /// every provider of the model at once.
    fn peer_ratios(&self, i: usize, own: &[Option<Ratios>]) -> Option<Ratios> {
        let all: Vec<Ratios> = self
            .upstreams
            .peers(i)
            .into_iter()
            .filter_map(|j| own.get(j).copied().flatten())
            .collect();
        Ratios::median(&all)
    }

    /// Publishes what the router needs, by provider index.
    pub(super) fn publish(&mut self, now: Instant) {
        let providers = self
            .upstreams
            .all()
            .iter()
            .zip(&self.providers)
            .map(|(p, t)| self.view(p, t, now))
            .collect();
        self.snapshot.store(Arc::new(Snapshot { providers }));
    }

    fn view(&self, p: &Provider, t: &Tracked, now: Instant) -> ProviderView {
        let scraped = p.config.metrics_url.is_some();
        let s = &t.signals;
        let baseline = t.health.baseline.at(s.load);
        let fresh = self.fresh_backend(t, now);
        ProviderView {
            state: t.health.state,
            since: t.health.since,
            evidence: t.health.evidence.clone(),
            ejections: t.health.ejections(),
            ttft_p50: s.ttft_p50.or(baseline.and_then(|b| b.ttft)),
            ttft_p95: s.ttft_p95,
            decode: s.decode.or(baseline.and_then(|b| b.decode)),
            mean_output_tokens: t.mean_output_tokens,
            baseline,
            backend: fresh.map(|(b, _)| b.clone()),
            backend_unknown: scraped && fresh.is_none(),
            cooldown_until: t.cooldown_until.filter(|&u| u > now),
            retry_after_until: t.retry_after_until.filter(|&u| u > now),
            incident: self
                .incidents
                .open()
                .find(|i| i.provider.as_deref() == Some(&*p.id))
                .map(|i| (Arc::from(i.id.as_str()), Arc::from(i.mode.as_str()))),
        }
    }
}

/// The share of `ttft`'s first tokens that are late (the tail detector's definition) against
/// `unqueued` (or the window's own median while nothing is learned) and the TTFT `target`.
fn late_share(
    ttft: &super::window::LogHistogram,
    unqueued: Option<f64>,
    target: f64,
) -> Option<f64> {
    let n = ttft.count();
    let reference = unqueued.or_else(|| ttft.quantile(0.5))?;
    let late = crate::detect::late_after(reference, target);
    (n > 0).then(|| ttft.count_above(late) as f64 / n as f64)
}

/// An exponential average: `new` weighted `alpha` into `old`, or `new` when there is none.
fn smooth(old: Option<f64>, new: f64, alpha: f64) -> f64 {
    old.map_or(new, |o| o + alpha * (new - o))
}

/// How long the stall watchdog waits when every open stream of a provider still waits for
/// its first token. A late first token may be held in front of the engine (a slow path, a
/// retry inside the provider) or stuck in it; only the server's own metrics tell which.
#[derive(Debug, Clone, Copy)]
pub(super) struct Patience {
    /// Until the next scrape can say.
    next_scrape: Duration,
    /// While the engine is seen serving or empty: the attempts' first-token timeout.
    first_token_timeout: Duration,
}

impl Patience {
    /// The patience the configuration gives: `stall_after` plus a scrape interval until the
    /// next scrape, and the attempts' first-token timeout.
    pub(super) fn new(
        stall_after: Duration,
        scrape_interval: Duration,
        first_token_timeout: Duration,
    ) -> Patience {
        Patience {
            next_scrape: stall_after + scrape_interval,
            first_token_timeout,
        }
    }

    /// For `t`'s provider, its stall having begun at `since`: a scrape since then that shows
    /// the engine holding work without a step, or a failed scrape, is a hang at the usual
    /// limit (`None`); one that shows it stepping or empty gives the requests until their
    /// first-token timeout; with no scrape since, the watchdog waits for the next one.
    /// Without scrapes at all, the usual limit.
    fn of(&self, t: &Tracked, since: Instant) -> Option<Duration> {
        let (b, at) = t.backend.as_ref()?;
        if t.backend_failed {
            return None;
        }
        if *at < since {
            return Some(self.next_scrape);
        }
        (!b.holds_work_still()).then_some(self.first_token_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{Backend, Reading};

    fn scrape(waiting: f64, running: f64, tokens_per_s: f64, steps_per_s: f64) -> Backend {
        Backend {
            reading: Reading {
                queue: Some(waiting),
                running: Some(running),
                ..Reading::default()
            },
            generation_tokens_per_s: Some(tokens_per_s),
            engine_steps_per_s: Some(steps_per_s),
            ..Backend::default()
        }
    }

    #[test]
    fn late_first_tokens_wait_for_the_server_to_say_whether_its_engine_holds_them() {
        let t0 = Instant::now();
        // Stall after 2 s, a scrape every 5 s, a 10 s first-token timeout.
        let patience = Patience::new(
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_secs(10),
        );
        let mut t = Tracked::new(t0);
        let stall_began = t0 + Duration::from_secs(1);
        // No scrapes configured: the usual limit.
        assert_eq!(patience.of(&t, stall_began), None);
        // The last scrape predates the stall: wait for the next one.
        t.backend = Some((scrape(0.0, 2.0, 300.0, 20.0), t0));
        assert_eq!(patience.of(&t, stall_began), Some(Duration::from_secs(7)));
        // Since the stall began: an empty or stepping engine is not holding the requests...
        let after = t0 + Duration::from_secs(2);
        t.backend = Some((scrape(0.0, 0.0, 0.0, 0.0), after));
        assert_eq!(patience.of(&t, stall_began), Some(Duration::from_secs(10)));
        t.backend = Some((scrape(0.0, 2.0, 0.0, 0.2), after));
        assert_eq!(patience.of(&t, stall_began), Some(Duration::from_secs(10)));
        // ...one holding work without a step is hung, and so is a server that stopped
        // answering its metrics.
        t.backend = Some((scrape(3.0, 0.0, 0.0, 0.0), after));
        assert_eq!(patience.of(&t, stall_began), None);
        t.backend = Some((scrape(0.0, 2.0, 300.0, 20.0), after));
        t.backend_failed = true;
        assert_eq!(patience.of(&t, stall_began), None);
    }

    #[test]
    fn a_wait_of_seconds_stays_in_view_a_minute_while_the_queue_histogram_is_read() {
        let t0 = Instant::now();
        let mut t = Tracked::new(t0);
        // No scrape has carried a queue-time histogram: the server cannot say.
        assert_eq!(t.waited_long_lately(t0), None);
        t.queue_histogram_at = Some(t0);
        assert_eq!(t.waited_long_lately(t0), Some(false));
        t.waited_long_at = Some(t0);
        let later = t0 + Duration::from_secs(45);
        t.queue_histogram_at = Some(later);
        assert_eq!(t.waited_long_lately(later), Some(true));
        // Past the minute the wait is out of view; past a minute without the histogram, so is
        // what it said.
        assert_eq!(
            t.waited_long_lately(t0 + Duration::from_secs(90)),
            Some(false)
        );
        assert_eq!(t.waited_long_lately(t0 + Duration::from_secs(120)), None);
    }
}
