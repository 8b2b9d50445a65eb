//! The per-provider health state machine: healthy, degraded (with a weight), ejected until
//! a time, recovering on probes. Every state carries its evidence. Pure: the health task
//! feeds it attempts and per-tick signals with `now`.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::baseline::{Baseline, GapLine, Ratios, Reference};
use crate::config::{RoutingConfig, Targets};

/// A provider's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Performing like its baseline and peers.
    Healthy,
    /// Worse than its reference; gets traffic in proportion to `weight` (0–1).
    Degraded {
        /// Share of a healthy provider's traffic it should get.
        weight: f64,
    },
    /// Gets no traffic until `until`.
    Ejected {
        /// End of the ejection.
        until: Instant,
    },
    /// Gets real requests one at a time as probes until enough succeed.
    Recovering {
        /// Probe successes so far.
        successes: u32,
    },
}

impl State {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded { .. } => "degraded",
            State::Ejected { .. } => "ejected",
            State::Recovering { .. } => "recovering",
        }
    }

    /// In rotation: gets traffic (healthy or degraded), as opposed to ejected or probed.
    pub fn in_rotation(&self) -> bool {
        matches!(self, State::Healthy | State::Degraded { .. })
    }

    /// Routing weight: 1 healthy, the degraded weight, 0 otherwise.
    pub fn weight(&self) -> f64 {
        match self {
            State::Healthy => 1.0,
            State::Degraded { weight } => *weight,
            State::Ejected { .. } | State::Recovering { .. } => 0.0,
        }
    }
}

/// One fact behind a state: which signal, its value, what it was compared with, since when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// `decode_rate`, `ttft`, `misses_targets`, `consecutive_failures`, `error_rate`,
    /// `stall`, `backend_stuck`, `probe`, `ejection_capped`.
    pub signal: &'static str,
    /// The measured value.
    pub value: f64,
    /// What it was compared with.
    pub reference: Option<f64>,
    /// `baseline`, `peers`, `target` or `limit`.
    pub against: &'static str,
    /// When this signal first held (Unix ms in reports; an `Instant` here).
    #[serde(skip)]
    pub since: Option<Instant>,
    /// In words.
    pub detail: String,
}

impl Evidence {
    /// A fact first seen now (the state machine keeps the first-seen time of facts that
    /// persist).
    pub fn new(
        signal: &'static str,
        value: f64,
        reference: Option<f64>,
        against: &'static str,
        detail: String,
    ) -> Evidence {
        Evidence {
            signal,
            value,
            reference,
            against,
            since: None,
            detail,
        }
    }
}

/// What the health task measured for a provider over the recent window, at one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// Attempts in the recent window.
    pub requests: u64,
    /// Of which answered within the targets.
    pub within_targets: u64,
    /// Of which completed.
    pub completed: u64,
    /// Of which failed upstream.
    pub failures: u64,
    /// Median TTFT, s.
    pub ttft_p50: Option<f64>,
    /// P95 TTFT, s.
    pub ttft_p95: Option<f64>,
    /// Per-stream decode rate now, tokens/s (live, else the window's median).
    pub decode: Option<f64>,
    /// Median end to end, s.
    pub e2e_p50: Option<f64>,
    /// The quickest quarter of the recent window's token gaps, s (its first quartile), when
    /// there were enough gaps to tell: how long the engine's decode step takes when nothing
    /// is prefilled between two tokens. A slowed GPU lengthens every step; a loaded engine
    /// keeps its step and spends the rest of its time on the prompts it admits.
    pub quickest_gap: Option<f64>,
    /// The fastest tenth of the last ten seconds' token gaps, s, when there were enough to
    /// tell: the decode step alone even when a burst of arrivals prefills between most steps
    /// (a quarter of them would then include a prompt), and recent enough to follow a step
    /// that slows a little more every few seconds.
    pub fastest_gap: Option<f64>,
    /// Streams decoding at once on average over the last several seconds (stream-time
    /// decoding over wall time): the batch the engine runs for Candor, which a queue at the
    /// server does not inflate the way it does the load.
    pub batch: Option<f64>,
    /// `decode` was measured on this tick's own streams (not the recent window's median,
    /// which repeats itself tick after tick while no stream runs).
    pub decode_live: bool,
    /// Mean in-flight (the load the signals were measured at).
    pub load: f64,
    /// How long requests have been in flight with no token from anyone.
    pub stalled_for: Option<Duration>,
    /// Three times the P95 TTFT of the last 30 s since the provider was last healthy: a
    /// provider whose first tokens take long (long prompts, an intermittent delay) is not
    /// called stalled before that.
    pub slow_first_token: Option<Duration>,
    /// Set while every open stream still waits for its first token and the server's metrics
    /// do not show its engine holding work without a step: the watchdog waits this long
    /// before calling it a hang (the first-token timeout, or until the next scrape can say)
    /// — a flaky path that delays a share of requests by seconds is not a hung engine, and a
    /// front end that holds every request still gets named, later.
    pub stall_patience: Option<Duration>,
    /// The share of the recent window's first tokens later than max(1 s, 5 × the quickest
    /// first token learned): how much of a late tail the provider shows now.
    pub late_share: Option<f64>,
    /// The server's own metrics say it has work but makes no progress.
    pub backend_stuck: bool,
    /// The GPU exporter's clock-event (throttle) reason bits, when known.
    pub throttle_reasons: Option<u64>,
    /// A model it serves is over capacity: slow answers and timeouts are the load's, not
    /// the provider's.
    pub overloaded: bool,
    /// Work waited at the server within the span of `fastest_gap` (a scrape said so) or the
    /// model is over capacity.
    pub queued: bool,
}

/// The state machine for one provider.
#[derive(Debug, Clone)]
pub struct ProviderHealth {
    /// Current state.
    pub state: State,
    /// Why.
    pub evidence: Vec<Evidence>,
    /// When the current state began.
    pub since: Instant,
    /// The learned baseline.
    pub baseline: Baseline,
    consecutive_failures: u32,
    ejections: u32,
    missed_ticks: u32,
    suspect_ticks: u32,
    healthy_since: Instant,
}

/// Minimum attempts in the recent window before performance is judged.
pub const MIN_SAMPLES: u64 = 5;
/// TTFT differences smaller than this are noise, whatever the ratio…
const TTFT_FLOOR_S: f64 = 0.05;
/// …and so are those below this share of the TTFT target.
const TTFT_FLOOR_SHARE: f64 = 0.25;
/// Ticks a healthy provider must look worse than its reference before it is degraded: a
/// burst (say, failed-over requests landing at once) is not a degradation.
const DEGRADE_AFTER_TICKS: u32 = 3;
/// Clock-event bits that slow a GPU: SW power cap, HW slowdown, SW and HW thermal, HW power
/// brake (DCGM exporter's decoding, reference §1.6).
const SLOWDOWN_BITS: u64 = 0x4 | 0x8 | 0x20 | 0x40 | 0x80;
/// Lowest weight a degraded provider keeps.
const MIN_WEIGHT: f64 = 0.05;
/// Error rate in the recent window that ejects (LiteLLM's cooldown share; reference gateway
/// anchors), with at least `MIN_SAMPLES` attempts.
const EJECT_ERROR_RATE: f64 = 0.5;

impl ProviderHealth {
    /// A healthy provider at `now`.
    pub fn new(now: Instant) -> ProviderHealth {
        ProviderHealth {
            state: State::Healthy,
            evidence: Vec::new(),
            since: now,
            baseline: Baseline::default(),
            consecutive_failures: 0,
            ejections: 0,
            missed_ticks: 0,
            suspect_ticks: 0,
            healthy_since: now,
        }
    }

    /// Ejections in a row (the ejection-time multiplier).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    fn set(&mut self, state: State, evidence: Vec<Evidence>, now: Instant) -> bool {
        let changed = std::mem::discriminant(&state) != std::mem::discriminant(&self.state);
        // Keep the first-seen time of signals that still hold.
        let evidence = evidence
            .into_iter()
            .map(|mut e| {
                e.since = self
                    .evidence
                    .iter()
                    .find(|old| old.signal == e.signal)
                    .and_then(|old| old.since)
                    .or(Some(now));
                e
            })
            .collect();
        self.evidence = evidence;
        if changed {
            self.since = now;
            if state == State::Healthy {
                self.healthy_since = now;
            }
        }
        self.state = state;
        changed
    }

    /// Ejects for `base × ejections in a row` (capped), unless `can_eject` is false, in
    /// which case the provider stays degraded at the lowest weight. Returns true on change.
    fn eject(
        &mut self,
        mut evidence: Vec<Evidence>,
        now: Instant,
        cfg: &RoutingConfig,
        can_eject: bool,
    ) -> bool {
        if !can_eject {
            evidence.push(Evidence::new(
                "ejection_capped",
                1.0,
                Some(cfg.max_ejected_share),
                "limit",
                "would be ejected, but the share of providers ejected at once is at its cap".into(),
            ));
            return self.set(State::Degraded { weight: MIN_WEIGHT }, evidence, now);
        }
        self.ejections = self.ejections.saturating_add(1);
        let time = cfg
            .base_ejection
            .saturating_mul(self.ejections)
            .min(cfg.max_ejection.max(cfg.base_ejection));
        self.consecutive_failures = 0;
        self.missed_ticks = 0;
        self.set(State::Ejected { until: now + time }, evidence, now)
    }

    /// Takes one finished attempt. `probe` marks a probe sent while recovering.
    pub fn on_attempt(
        &mut self,
        now: Instant,
        upstream_failure: bool,
        within_targets: bool,
        probe: bool,
        cfg: &RoutingConfig,
        can_eject: bool,
    ) -> bool {
        if upstream_failure {
            self.consecutive_failures += 1;
        } else {
            self.consecutive_failures = 0;
        }
        match self.state {
            State::Recovering { successes } if probe => {
                if !upstream_failure && within_targets {
                    let successes = successes + 1;
                    if successes >= cfg.probe_successes {
                        return self.set(State::Healthy, Vec::new(), now);
                    }
                    self.state = State::Recovering { successes };
                    false
                } else {
                    let ev = Evidence::new(
                        "probe",
                        f64::from(successes),
                        Some(f64::from(cfg.probe_successes)),
                        "limit",
                        if upstream_failure {
                            "a probe request failed".into()
                        } else {
                            "a probe request missed the targets".into()
                        },
                    );
                    self.eject(vec![ev], now, cfg, true)
                }
            }
            State::Healthy | State::Degraded { .. }
                if self.consecutive_failures >= cfg.consecutive_failures =>
            {
                let ev = Evidence::new(
                    "consecutive_failures",
                    f64::from(self.consecutive_failures),
                    Some(f64::from(cfg.consecutive_failures)),
                    "limit",
                    format!("{} upstream failures in a row", self.consecutive_failures),
                );
                self.eject(vec![ev], now, cfg, can_eject)
            }
            _ => false,
        }
    }

    /// Re-judges the provider at a tick from its recent `signals` against its own baseline
    /// at this load, less what `peers` (the median of its peers' ratios to their own
    /// baselines) share. `flagged` is a
    /// detector's finding that should lower the provider's weight to at most its second
    /// element (KV-cache thrashing, hardware degradation: the signals here judge a 30-second
    /// window and flap with the load; the detectors keep their memory). Returns true when the
    /// state changed.
    #[allow(clippy::too_many_arguments)]
    pub fn on_tick(
        &mut self,
        now: Instant,
        s: &Signals,
        peers: Option<Ratios>,
        flagged: Option<(Evidence, f64)>,
        cfg: &RoutingConfig,
        targets: &Targets,
        can_eject: bool,
    ) -> bool {
        match self.state {
            State::Ejected { until } => {
                if now >= until {
                    let evidence = std::mem::take(&mut self.evidence);
                    return self.set(State::Recovering { successes: 0 }, evidence, now);
                }
                return false;
            }
            State::Recovering { .. } => return false,
            State::Healthy | State::Degraded { .. } => {}
        }
        // Envoy: a healthy sweep decrements the ejection multiplier.
        if self.state == State::Healthy
            && self.ejections > 0
            && now.saturating_duration_since(self.healthy_since) >= cfg.base_ejection
        {
            self.ejections -= 1;
            self.healthy_since = now;
        }

        if let Some(ev) = hard_failure(s, cfg) {
            return self.eject(vec![ev], now, cfg, can_eject);
        }
        if s.requests < MIN_SAMPLES {
            return false;
        }
        // The provider against its own baseline at this load (a fleet may mix fast and slow
        // hardware, so it is compared with itself), less what its peers share: when every
        // provider of the model moved the same way at once, that is the traffic. With no
        // baseline at this load there is nothing fair to compare with.
        // Over capacity, every provider is slow and times out: the load explains it, and
        // judging (or learning) performance now would only eject the ones carrying it.
        let own = self.baseline.at(s.load).filter(|_| !s.overloaded);
        let ratios = Ratios::of(
            Reference {
                ttft: s.ttft_p50,
                decode: s.decode,
                decode_spread: None,
            },
            own,
        );
        let mut evidence = Vec::new();
        let mut weight: f64 = 1.0;
        if let (Some(d), Some(r), Some(base)) =
            (s.decode, ratios.decode, own.and_then(|o| o.decode))
        {
            let relative = r / Ratios::shared_decode_drop(peers);
            if r < cfg.degrade_ratio && relative < cfg.degrade_ratio {
                weight = weight.min(relative);
                evidence.push(Evidence::new(
                    "decode_rate",
                    d,
                    Some(base),
                    "baseline",
                    format!(
                        "decoding at {d:.1} tokens/s, {:.0} % below its baseline of {base:.1} at this load{}",
                        (1.0 - r) * 100.0,
                        peer_words(peers.and_then(|p| p.decode), "decode"),
                    ),
                ));
            }
        }
        // A first token later by a few tens of milliseconds is the prompt mix, not a fault:
        // only a difference users feel (a share of the target) counts.
        let ttft_floor = TTFT_FLOOR_S.max(TTFT_FLOOR_SHARE * targets.ttft.as_secs_f64());
        if let (Some(t), Some(base)) = (s.ttft_p50, own.and_then(|o| o.ttft))
            && t - base > ttft_floor
        {
            let ratio = base / t * Ratios::shared_ttft_rise(peers);
            if ratio < cfg.degrade_ratio {
                weight = weight.min(ratio);
                evidence.push(Evidence::new(
                    "ttft",
                    t,
                    Some(base),
                    "baseline",
                    format!(
                        "median time to first token {:.0} ms against its baseline of {:.0} ms{}",
                        t * 1000.0,
                        base * 1000.0,
                        peer_words(peers.and_then(|p| p.ttft), "first-token time"),
                    ),
                ));
            }
        }
        if let Some((ev, w)) = flagged {
            weight = weight.min(w);
            evidence.push(ev);
        }
        // A decode-rate outlier against its own baseline and its healthy peers that also
        // misses the targets, two ticks running, is ejected like an erroring host. Missing the
        // targets without being an outlier is load, not a fault, and so is a slow first token
        // alone (a queue, often of the router's own making): ejecting for either would pile
        // the load onto the others. Those only lower the provider's weight. So does a drop
        // against the baseline alone, with no healthy peer to compare: when the whole fleet
        // is loaded every provider decodes below what it learned at lighter load, and
        // ejecting one of them (often the fastest, which carries the most) starts a cascade.
        // (The decode evidence holds against every reference there is, so with a peer
        // reference it holds against the peers.)
        let decode_outlier = evidence.iter().any(|e| e.signal == "decode_rate")
            && peers.is_some_and(|p| p.decode.is_some());
        let refs = own.is_some() || peers.is_some();
        match misses_targets(s, targets) {
            Some(miss) if decode_outlier => {
                self.missed_ticks += 1;
                evidence.push(miss);
                if self.missed_ticks >= 2 {
                    return self.eject(evidence, now, cfg, can_eject);
                }
            }
            _ => self.missed_ticks = 0,
        }
        if evidence.is_empty() {
            // A degraded provider is healthy again only on a fair comparison, never for
            // want of one (it may have lost the traffic that made it comparable).
            if !refs && self.state != State::Healthy {
                return false;
            }
            self.suspect_ticks = 0;
            // Learned from this tick's own streams only (evidence once: while none run, the
            // window's median would be learned again and again, and its spread would shrink).
            if let (Some(t), Some(d)) = (s.ttft_p50, s.decode.filter(|_| s.decode_live))
                && self.state == State::Healthy
                && !s.overloaded
            {
                self.baseline.learn(s.load, t, d);
            }
            // The decode step is learned over capacity too: a queue lengthens first tokens and
            // the time per token, not the quickest gaps (a model may be over capacity from
            // its first minute, and then this is all there is to judge a slowdown by).
            if let (Some(b), Some(g)) = (s.batch, s.quickest_gap)
                && s.decode_live
                && self.state == State::Healthy
            {
                self.baseline.learn_gap(GapLine::Quickest, b, g);
            }
            // The fastest gaps only with nothing waiting: behind a queue, an engine that
            // chunks its prompts runs prefill inside every step.
            if let (Some(b), Some(g)) = (s.batch, s.fastest_gap)
                && s.decode_live
                && self.state == State::Healthy
                && !s.queued
            {
                self.baseline.learn_gap(GapLine::Fastest, b, g);
            }
            if self.state != State::Healthy {
                return self.set(State::Healthy, Vec::new(), now);
            }
            return false;
        }
        // The GPU's own account corroborates a slowdown (reference §6.2).
        if let Some(bits) = s.throttle_reasons.filter(|b| b & SLOWDOWN_BITS != 0) {
            evidence.push(Evidence::new(
                "gpu_throttle",
                bits as f64,
                None,
                "limit",
                format!(
                    "GPU clocks held back: {}",
                    crate::scrape::engines::throttle_names(bits & SLOWDOWN_BITS).join(", ")
                ),
            ));
        }
        self.suspect_ticks += 1;
        if self.state == State::Healthy && self.suspect_ticks < DEGRADE_AFTER_TICKS {
            return false;
        }
        let weight = weight.clamp(MIN_WEIGHT, 1.0);
        self.set(State::Degraded { weight }, evidence, now)
    }
}

/// How the peers compare with their own baselines, in words (empty without peers).
fn peer_words(peer_ratio: Option<f64>, what: &str) -> String {
    peer_ratio.map_or_else(String::new, |r| {
        format!(
            "; its peers' {what} is at {:.0} % of their own baselines",
            r * 100.0
        )
    })
}

/// The stall watchdog: requests in flight with no token for this long is a hang —
/// `stall_after`, or three times the recent P95 TTFT, or (first tokens only, the engine not
/// seen holding them) `Signals::stall_patience`, whichever is longest.
pub fn stall_limit(s: &Signals, cfg: &RoutingConfig) -> Duration {
    [s.slow_first_token, s.stall_patience]
        .into_iter()
        .flatten()
        .fold(cfg.stall_after, Duration::max)
}

/// Stalls and error storms: reasons to eject at once.
fn hard_failure(s: &Signals, cfg: &RoutingConfig) -> Option<Evidence> {
    let limit = stall_limit(s, cfg);
    if let Some(stall) = s.stalled_for
        && stall >= limit
    {
        return Some(Evidence::new(
            "stall",
            stall.as_secs_f64(),
            Some(limit.as_secs_f64()),
            "limit",
            format!(
                "requests in flight but no token for {:.1} s",
                stall.as_secs_f64()
            ),
        ));
    }
    if s.backend_stuck {
        return Some(Evidence::new(
            "backend_stuck",
            0.0,
            None,
            "limit",
            "the server reports waiting and running requests but generates no tokens".into(),
        ));
    }
    let rate = s.failures as f64 / s.requests.max(1) as f64;
    (!s.overloaded && s.requests >= MIN_SAMPLES && rate >= EJECT_ERROR_RATE).then(|| {
        Evidence::new(
            "error_rate",
            rate,
            Some(EJECT_ERROR_RATE),
            "limit",
            format!("{} of the last {} attempts failed", s.failures, s.requests),
        )
    })
}

/// The provider's recent performance cannot meet the service-level targets.
fn misses_targets(s: &Signals, t: &Targets) -> Option<Evidence> {
    let ttft_limit = t.ttft.as_secs_f64();
    if let Some(p95) = s.ttft_p95
        && p95 > ttft_limit
        && s.ttft_p50.is_some_and(|p50| p50 > ttft_limit * 0.5)
    {
        return Some(Evidence::new(
            "misses_targets",
            p95,
            Some(ttft_limit),
            "target",
            format!(
                "P95 time to first token {:.0} ms exceeds the {:.0} ms target",
                p95 * 1000.0,
                ttft_limit * 1000.0
            ),
        ));
    }
    let e2e_ok = s.e2e_p50.is_some_and(|e| e <= t.e2e.as_secs_f64());
    match s.decode {
        Some(d) if d < t.decode_tokens_per_s && !e2e_ok => Some(Evidence::new(
            "misses_targets",
            d,
            Some(t.decode_tokens_per_s),
            "target",
            format!(
                "decoding at {d:.1} tokens/s, below the {:.1} tokens/s target",
                t.decode_tokens_per_s
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
