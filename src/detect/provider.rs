//! Per-provider detectors: batch-queue deadlock, hardware degradation, KV-cache thrashing and
//! the ordinary failures (error bursts, rate limiting, connection failures, mid-stream
//! resets). Pure: the health task hands each provider's recent window, signals, references
//! and scrape in; state that spans ticks (CUSUM sums, learned tails, onsets) lives here.

use std::time::Duration;

use tokio::time::Instant;

use super::cusum::{Cusum, Since};
use super::{Clock, Fact, Finding, Mode, Severity};
use crate::health::baseline::Reference;
use crate::health::state::{Evidence, Signals, State};
use crate::health::window::{ErrorClass, Slot};
use crate::scrape::Backend;

/// Attempts in the recent window before rates are judged.
const MIN_ATTEMPTS: u64 = 5;
/// Decode-rate CUSUM: σ of a window's decode ratio, allowance and limit. Within one load
/// bucket the decode rate itself moves by up to 20 %, so a ratio of 0.8 adds nothing
/// (k = 2σ); 0.6 alarms in five ticks, 0.7 in ten, 0.75 in twenty.
const DECODE_SIGMA: f64 = 0.1;
const DECODE_K: f64 = 2.0;
const DECODE_H: f64 = 10.0;
/// Largest standardised step one tick may add to a CUSUM.
const Z_CAP: f64 = 4.0;
/// No token for this long with streams open: not judged as a slowdown.
const NO_PROGRESS: Duration = Duration::from_millis(500);
/// A decode rate this far below its references is a degradation (reference §6.3).
const DECODE_RATIO: f64 = 0.8;
/// Stall: a gap longer than max(1 s, 10 × median ITL) (reference §4.3).
const STALL_FLOOR_S: f64 = 1.0;
const STALL_ITL_MULT: f64 = 10.0;
/// KV thrashing: share of requests with a stall, its multiple of the learned share, the
/// least stalls, and how much the median may move for "P50 flat".
const STALL_SHARE: f64 = 0.05;
const STALL_SHARE_MULT: f64 = 3.0;
const MIN_STALLS: u64 = 3;
const FLAT_P50: f64 = 1.5;
/// TTFT tail: P99/P50 at least this multiple of its learned value, and at least the floor,
/// while the median stays within `FLAT_TTFT_P50` of its own.
const TAIL_MULT: f64 = 3.0;
const TAIL_FLOOR: f64 = 10.0;
const FLAT_TTFT_P50: f64 = 2.0;
/// KV usage that counts as saturated (GIE's threshold; reference §2, §4.2).
const KV_FULL: f64 = 0.8;
/// How long a KV-thrashing finding stands after its signature last held.
const KV_HOLD: Duration = Duration::from_secs(20);
/// How long a saturated or preempting scrape counts.
const KV_MEMORY: Duration = Duration::from_secs(30);
/// Error shares that count as flat / a burst.
const FLAT_ERRORS: f64 = 0.05;
/// Learning rate of the tail baselines (per tick).
const LEARN: f64 = 0.02;

/// What the provider detectors see at one tick.
#[derive(Debug, Clone, Copy)]
pub struct ProviderInput<'a> {
    /// Provider id.
    pub id: &'a str,
    /// The recent window's attempts since the provider was last healthy: kept when it is
    /// degraded or ejected, so the evidence does not vanish the moment routing reacts.
    pub since_healthy: &'a Slot,
    /// The tick's signals.
    pub signals: &'a Signals,
    /// The state before this tick's step.
    pub state: State,
    /// The state's evidence.
    pub evidence: &'a [Evidence],
    /// The provider's own baseline at its load.
    pub baseline: Option<Reference>,
    /// Healthy peers at comparable load.
    pub peers: Option<Reference>,
    /// The latest fresh scrape.
    pub backend: Option<&'a Backend>,
    /// Whether the provider's own health endpoint answered 2xx at its last check.
    pub health_endpoint_ok: Option<bool>,
    /// Requests in flight now.
    pub in_flight: i64,
    /// The stall watchdog: no token for this long with requests in flight is a hang.
    pub stall_limit: Duration,
}

/// Learned tails of a healthy provider (KV-thrashing reference).
#[derive(Debug, Clone, Copy, Default)]
struct Tails {
    itl_p50: f64,
    ttft_p50: f64,
    stall_share: f64,
    r_ttft: f64,
    r_itl: f64,
    ticks: u32,
}

/// The detectors' state for one provider.
#[derive(Debug, Clone)]
pub struct ProviderDetectors {
    decode: Cusum,
    tails: Tails,
    stalls: Since,
    stuck: Since,
    errors: [Since; 4],
    held: Vec<Finding>,
    last_hw: Option<Finding>,
    kv_peak: Option<(f64, Instant)>,
    preempt_peak: Option<(f64, Instant)>,
    kv_last: Option<(Finding, Instant)>,
}

impl Default for ProviderDetectors {
    fn default() -> Self {
        ProviderDetectors {
            decode: Cusum::new(DECODE_K, DECODE_H),
            tails: Tails::default(),
            stalls: Since::default(),
            stuck: Since::default(),
            errors: [Since::default(); 4],
            held: Vec::new(),
            last_hw: None,
            kv_peak: None,
            preempt_peak: None,
            kv_last: None,
        }
    }
}

impl ProviderDetectors {
    /// Runs every provider detector at `now`. While the provider is ejected or recovering
    /// it gets no traffic to judge, so what was found is held until it recovers.
    pub fn step(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Vec<Finding> {
        let mut found = Vec::new();
        found.extend(self.deadlock(p, clock, now));
        let out_of_rotation = matches!(p.state, State::Ejected { .. } | State::Recovering { .. });
        if !out_of_rotation {
            found.extend(self.hardware(p, clock, now));
            found.extend(self.kv_thrashing(p, clock, now));
        }
        let explained = found
            .iter()
            .chain(&self.held)
            .any(|f| matches!(f.mode, Mode::BatchQueueDeadlock | Mode::KvCacheThrashing));
        // A hang or a starved KV cache explains the timeouts and broken streams it causes.
        found.extend(self.ordinary(p, clock, now).into_iter().filter(|f| {
            !(explained && matches!(f.mode, Mode::ErrorBurst | Mode::MidStreamResets))
        }));
        if out_of_rotation {
            for h in &self.held {
                if !found.iter().any(|f| f.mode == h.mode) {
                    found.push(h.clone());
                }
            }
        }
        self.held.clone_from(&found);
        found
    }

    /// FM 3: requests in flight with no token progress past the watchdog, or the server's
    /// own metrics show work queued with no generation (reference §5.2).
    fn deadlock(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Option<Finding> {
        let s = p.signals;
        let stalled = s.stalled_for.filter(|d| *d >= p.stall_limit);
        let stuck_since = self.stuck.update(now, s.backend_stuck);
        let onset = match (stalled, stuck_since) {
            (Some(d), _) => now.checked_sub(d).unwrap_or(now),
            (None, Some(t)) => t,
            (None, None) => return None,
        };
        let mut facts = Vec::new();
        let mut summary;
        if let Some(d) = stalled {
            facts.push(
                Fact::new(
                    "no_token_for_s",
                    d.as_secs_f64(),
                    "s",
                    format!(
                        "{} requests in flight, no token for {:.1} s",
                        p.in_flight,
                        d.as_secs_f64()
                    ),
                )
                .threshold(p.stall_limit.as_secs_f64()),
            );
            summary = format!(
                "{} stopped producing tokens: {} requests in flight, none progressed for {:.1} s",
                p.id,
                p.in_flight,
                d.as_secs_f64()
            );
        } else {
            summary = format!("{} reports queued work but generates no tokens", p.id);
        }
        facts.push(Fact::new(
            "completions_recent",
            p.since_healthy.completed as f64,
            "requests",
            format!(
                "{} completions and {} attempts ended in the recent window",
                p.since_healthy.completed, p.since_healthy.requests
            ),
        ));
        if let Some(b) = p.backend {
            let r = &b.reading;
            if let (Some(q), Some(run)) = (r.queue, r.running) {
                facts.push(Fact::new(
                    "backend_queue",
                    q,
                    "requests",
                    format!("the server reports {q:.0} waiting and {run:.0} running"),
                ));
            }
            if let Some(g) = b.generation_tokens_per_s {
                facts.push(
                    Fact::new(
                        "backend_generation_tokens_per_s",
                        g,
                        "tokens/s",
                        format!("the server generates {g:.1} tokens/s"),
                    )
                    .threshold(0.0),
                );
            }
            if let Some(steps) = b.engine_steps_per_s {
                facts.push(Fact::new(
                    "backend_engine_steps_per_s",
                    steps,
                    "steps/s",
                    format!("the engine steps {steps:.1} times/s"),
                ));
            }
        }
        if p.health_endpoint_ok == Some(true) {
            summary.push_str("; its own health endpoint still answers 200");
            facts.push(Fact::new(
                "health_endpoint",
                200.0,
                "status",
                "the provider's own health endpoint still answers 200".into(),
            ));
        }
        Some(Finding {
            mode: Mode::BatchQueueDeadlock,
            subject: p.id.to_owned(),
            provider: Some(p.id.to_owned()),
            severity: Severity::Critical,
            onset_unix_ms: clock.ms(onset),
            summary,
            facts,
            action: "Candor ejected the provider and failed over the requests that had no \
                     token yet; restart the inference engine (a /health probe will not, it \
                     still answers 200) and check its logs for a hung scheduler or engine core"
                .into(),
            root_cause: None,
        })
    }

    /// FM 4: decode rate at comparable load below the provider's own baseline and its peers
    /// (CUSUM of the ratio; reference §6.3, §8.3); DCGM clocks and throttle bits confirm.
    fn hardware(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Option<Finding> {
        let s = p.signals;
        // No tokens at all is a hang (the deadlock detector's), not a slow GPU.
        if s.stalled_for.is_some_and(|d| d >= NO_PROGRESS) {
            return None;
        }
        // Too little traffic to judge (a state change just cleared the window, or the
        // router sends it little): what was found stands while the CUSUM is in alarm.
        let (Some(own), Some(decode)) = (
            p.baseline.and_then(|r| r.decode),
            s.decode
                .filter(|_| p.since_healthy.requests >= MIN_ATTEMPTS),
        ) else {
            return self.last_hw.clone().filter(|_| self.decode.alarm());
        };
        let peers = p.peers.and_then(|r| r.decode);
        // Against its own baseline at this load (a fleet may mix hardware, so a provider is
        // compared with itself); its peers must not contradict — they serve comparable or
        // heavier load, so one slower than they are is slow, one faster is not degraded.
        let ratio = decode / own;
        let slower_than_peers = peers.is_none_or(|q| decode < q);
        // Winsorised, so one wild tick cannot alarm alone.
        let z = ((1.0 - ratio) / DECODE_SIGMA).clamp(-Z_CAP, Z_CAP);
        let alarm = self.decode.step(now, z);
        if !alarm || !slower_than_peers || ratio >= 1.0 - (1.0 - DECODE_RATIO) / 2.0 {
            self.last_hw = None;
            return None;
        }
        let onset = self.decode.onset().unwrap_or(now);
        let mut facts = vec![
            Fact::new(
                "decode_tokens_per_s",
                decode,
                "tokens/s",
                format!(
                    "decoding at {decode:.1} tokens/s per stream, {:.0} % below its own baseline of {own:.1} at this load",
                    (1.0 - decode / own) * 100.0
                ),
            )
            .baseline(Some(own))
            .threshold(own * DECODE_RATIO),
        ];
        if let Some(q) = peers {
            facts.push(
                Fact::new(
                    "peer_decode_tokens_per_s",
                    decode,
                    "tokens/s",
                    format!("healthy peers serving the same model decode at {q:.1} tokens/s"),
                )
                .baseline(Some(q))
                .threshold(q * DECODE_RATIO),
            );
        }
        facts.push(Fact::new(
            "error_rate",
            rate(s.failures, s.requests),
            "ratio",
            format!(
                "{} of {} attempts failed: no errors to explain it",
                s.failures, s.requests
            ),
        ));
        let mut confirmed = false;
        if let Some(b) = p.backend {
            if !b.throttle.is_empty() {
                confirmed = true;
                facts.push(Fact::new(
                    "gpu_throttle_reasons",
                    b.reading.throttle_reasons.unwrap_or(0) as f64,
                    "bits",
                    format!(
                        "the GPU reports clocks held back: {}",
                        b.throttle.join(", ")
                    ),
                ));
            }
            if let Some(mhz) = b.reading.sm_clock_mhz {
                facts.push(Fact::new(
                    "gpu_sm_clock_mhz",
                    mhz,
                    "MHz",
                    format!("slowest SM clock {mhz:.0} MHz"),
                ));
            }
        }
        let severity = if ratio < 0.6 || p.state.weight() < 0.6 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        self.last_hw = Some(Finding {
            mode: Mode::HardwareDegradation,
            subject: p.id.to_owned(),
            provider: Some(p.id.to_owned()),
            severity,
            onset_unix_ms: clock.ms(onset),
            summary: format!(
                "{} decodes {:.0} % slower than its baseline{} with no errors{}",
                p.id,
                (1.0 - decode / own) * 100.0,
                if peers.is_some() {
                    " and its peers"
                } else {
                    ""
                },
                if confirmed {
                    "; the GPU confirms throttling"
                } else {
                    ""
                }
            ),
            facts,
            action: format!(
                "Candor routes traffic in proportion to measured speed (weight now {:.2}); \
                 check the GPU's clocks, temperature and power capping (nvidia-smi -q -d \
                 PERFORMANCE,TEMPERATURE), NVLink/PCIe errors, and drain the node if it persists",
                p.state.weight()
            ),
            root_cause: None,
        });
        self.last_hw.clone()
    }

    /// FM 2: mid-stream stalls (a gap > max(1 s, 10 × median ITL)) in a growing share of
    /// requests and the tails rising while the medians and the error rate stay flat;
    /// KV usage near 1 and preemptions confirm (reference §4.3–4.4).
    fn kv_thrashing(
        &mut self,
        p: &ProviderInput<'_>,
        clock: &Clock,
        now: Instant,
    ) -> Option<Finding> {
        let w = p.since_healthy;
        let (Some(itl_p50), Some(itl_p99), Some(ttft_p50), Some(ttft_p99)) = (
            w.itl.quantile(0.5),
            w.itl.quantile(0.99),
            w.ttft.quantile(0.5),
            w.ttft.quantile(0.99),
        ) else {
            return self.kv_held(now);
        };
        let t = self.tails;
        let learned = t.ticks >= 10;
        let ref_itl = if learned { t.itl_p50 } else { itl_p50 };
        let limit = STALL_FLOOR_S.max(STALL_ITL_MULT * ref_itl);
        let measured = w.max_gap.count();
        let stalls = w.max_gap.count_above(limit);
        let share = stalls as f64 / measured.max(1) as f64;
        let errors = rate(w.failed, w.requests);
        let (r_ttft, r_itl) = (ttft_p99 / ttft_p50, itl_p99 / itl_p50);
        let flat_itl = !learned || itl_p50 <= FLAT_P50 * t.itl_p50;
        let base_share = if learned { t.stall_share } else { 0.0 };
        // The server's own account over the recent window (max over time, as in reference
        // §4.4): KV cache saturated, or preempting.
        if let Some(b) = p.backend {
            self.kv_peak = peak(self.kv_peak, b.reading.kv_usage, now);
            self.preempt_peak = peak(self.preempt_peak, b.preemptions_per_s, now);
        }
        let kv_peak = self.kv_peak.map(|(v, _)| v);
        let preempt_peak = self.preempt_peak.map(|(v, _)| v);
        let backend_confirms =
            kv_peak.is_some_and(|k| k >= KV_FULL) || preempt_peak.is_some_and(|r| r > 0.0);
        // Mid-stream stalls in a growing share of requests.
        let stalling =
            stalls >= MIN_STALLS && share >= STALL_SHARE.max(STALL_SHARE_MULT * base_share);
        // The TTFT tail pulls away from a median that stays (roughly) put: recomputed
        // prefills queue behind a full cache.
        let tail_ratio = if learned { TAIL_MULT * t.r_ttft } else { 0.0 }.max(TAIL_FLOOR);
        let tail = learned && r_ttft >= tail_ratio && ttft_p50 <= FLAT_TTFT_P50 * t.ttft_p50;
        let tails_up =
            learned && (r_ttft >= 2.0 * t.r_ttft || ttft_p50 >= FLAT_TTFT_P50 * t.ttft_p50);
        let moving = (stalls > 0 && share > base_share) || tails_up;
        let onset = self.stalls.update(now, moving);
        // From the gateway alone: stalls, or the tail with a few stalls, errors flat. With the
        // server saying its cache is saturated, a first-token time blown up in the tail or the
        // median is the same shortage, and the timeouts it causes are its symptom too.
        let queueing = learned && (r_ttft >= tail_ratio || ttft_p50 >= FLAT_TTFT_P50 * t.ttft_p50);
        let thrashing = w.requests >= 2 * MIN_ATTEMPTS
            && flat_itl
            && ((errors < FLAT_ERRORS && (stalling || (tail && stalls >= 2)))
                || (backend_confirms && (stalling || queueing)));
        if !thrashing {
            // Ordinary stalls belong in the learned share; tails already pulling away do not.
            if p.state == State::Healthy && w.requests >= 2 * MIN_ATTEMPTS && !tails_up {
                self.tails = learn(t, itl_p50, ttft_p50, share, r_ttft, r_itl);
            }
            return self.kv_held(now);
        }
        let onset = onset.unwrap_or(now);
        let stall_fact = Fact::new(
            "stall_share",
            share,
            "ratio",
            format!("{stalls} of {measured} streams stalled mid-answer (a gap over {limit:.1} s)"),
        )
        .baseline(learned.then_some(t.stall_share))
        .threshold(STALL_SHARE.max(STALL_SHARE_MULT * base_share));
        let tail_fact = Fact::new(
            "ttft_p99_over_p50",
            r_ttft,
            "ratio",
            format!(
                "time-to-first-token P99/P50 {r_ttft:.1} (P50 {:.0} ms)",
                ttft_p50 * 1000.0
            ),
        )
        .baseline(learned.then_some(t.r_ttft))
        .threshold(tail_ratio);
        // The signal that fired comes first.
        let mut facts = if stalling {
            vec![stall_fact, tail_fact]
        } else {
            vec![tail_fact, stall_fact]
        };
        facts.extend([
            Fact::new(
                "itl_p99_over_p50",
                r_itl,
                "ratio",
                format!(
                    "inter-token P99/P50 {r_itl:.1} (P50 {:.0} ms)",
                    itl_p50 * 1000.0
                ),
            )
            .baseline(learned.then_some(t.r_itl)),
            Fact::new(
                "itl_p50_ms",
                itl_p50 * 1000.0,
                "ms",
                "the median inter-token latency stays flat".into(),
            )
            .baseline(learned.then_some(t.itl_p50 * 1000.0))
            .threshold(FLAT_P50 * ref_itl * 1000.0),
            Fact::new(
                "error_rate",
                errors,
                "ratio",
                format!(
                    "{} of {} attempts failed: errors stay flat",
                    w.failed, w.requests
                ),
            )
            .threshold(FLAT_ERRORS),
        ]);
        if let Some(kv) = kv_peak {
            facts.push(
                Fact::new(
                    "kv_cache_usage",
                    kv,
                    "ratio",
                    format!(
                        "the server's KV cache reached {:.0} % in the last {} s",
                        kv * 100.0,
                        KV_MEMORY.as_secs()
                    ),
                )
                .threshold(KV_FULL),
            );
        }
        if let Some(pre) = preempt_peak {
            facts.push(
                Fact::new(
                    "preemptions_per_s",
                    pre,
                    "1/s",
                    format!(
                        "the server preempted up to {pre:.2} requests/s in the last {} s",
                        KV_MEMORY.as_secs()
                    ),
                )
                .threshold(0.0),
            );
        }
        let f = Finding {
            mode: Mode::KvCacheThrashing,
            subject: p.id.to_owned(),
            provider: Some(p.id.to_owned()),
            severity: if errors >= FLAT_ERRORS {
                Severity::Critical
            } else {
                Severity::Warning
            },
            onset_unix_ms: clock.ms(onset),
            summary: format!(
                "{}: time-to-first-token P99/P50 at {r_ttft:.0}x{} and {:.0} % of streams \
                 stalling mid-answer, inter-token latency flat{}",
                p.id,
                if learned {
                    format!(" (normally {:.0}x)", t.r_ttft)
                } else {
                    String::new()
                },
                share * 100.0,
                if backend_confirms {
                    "; the server's KV cache is saturated"
                } else {
                    ""
                }
            ),
            facts,
            action: "Candor lowers the provider's weight and prefers providers with free KV \
                     cache; on the server lower max_num_seqs / max_num_batched_tokens or raise \
                     gpu_memory_utilization; do not eject on a single stall"
                .into(),
            root_cause: None,
        };
        self.kv_last = Some((f.clone(), now));
        Some(f)
    }

    /// The last KV-thrashing finding, for `KV_HOLD` after its signature last held: once
    /// Candor moves traffic away the symptoms fade while the cache shortage remains, so the
    /// finding stands until the provider has carried its (reduced) share cleanly for a while.
    fn kv_held(&self, now: Instant) -> Option<Finding> {
        self.kv_last
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= KV_HOLD)
            .map(|(f, _)| f.clone())
    }

    /// Error bursts, rate limiting, connection failures and mid-stream resets in the recent
    /// window.
    fn ordinary(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Vec<Finding> {
        let w = p.since_healthy;
        let mut out = Vec::new();
        for (i, class) in ErrorClass::ALL.into_iter().enumerate() {
            let n = w.errors_of(class);
            let share = rate(n, w.requests);
            let onset = self.errors[i].update(now, n > 0);
            let (mode, least, min_share, critical, what, action) = match class {
                ErrorClass::RateLimited => (
                    Mode::RateLimited,
                    3,
                    0.1,
                    0.5,
                    "answered 429 Too Many Requests",
                    "Candor honours retry-after and routes around it; raise the provider's \
                     quota or spread the load over more keys or providers",
                ),
                ErrorClass::Connection => (
                    Mode::ConnectionFailures,
                    3,
                    0.2,
                    0.5,
                    "could not be connected to",
                    "Candor retries elsewhere and ejects after consecutive failures; check the \
                     provider's process, network path and DNS",
                ),
                ErrorClass::MidStreamReset => (
                    Mode::MidStreamResets,
                    2,
                    0.05,
                    0.25,
                    "broke streams after their first token",
                    "streams cannot be failed over once tokens reached the client; check the \
                     provider's proxies and idle timeouts and its logs for crashes",
                ),
                ErrorClass::Server => (
                    Mode::ErrorBurst,
                    3,
                    0.2,
                    0.5,
                    "failed with server errors or timeouts",
                    "Candor retries within its budget and ejects the provider when failures \
                     persist; check the provider's logs",
                ),
            };
            if w.requests < MIN_ATTEMPTS || n < least || share < min_share {
                continue;
            }
            out.push(Finding {
                mode,
                subject: p.id.to_owned(),
                provider: Some(p.id.to_owned()),
                severity: if share >= critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                onset_unix_ms: clock.ms(onset.unwrap_or(now)),
                summary: format!(
                    "{} {what}: {n} of the last {} attempts ({:.0} %)",
                    p.id,
                    w.requests,
                    share * 100.0
                ),
                facts: vec![
                    Fact::new(
                        "failure_share",
                        share,
                        "ratio",
                        format!("{n} of {} attempts", w.requests),
                    )
                    .threshold(min_share),
                ],
                action: action.into(),
                root_cause: None,
            });
        }
        out
    }
}

fn learn(t: Tails, itl_p50: f64, ttft_p50: f64, share: f64, r_ttft: f64, r_itl: f64) -> Tails {
    let a = if t.ticks < 10 {
        1.0 / f64::from(t.ticks + 1)
    } else {
        LEARN
    };
    Tails {
        itl_p50: t.itl_p50 + a * (itl_p50 - t.itl_p50),
        ttft_p50: t.ttft_p50 + a * (ttft_p50 - t.ttft_p50),
        stall_share: t.stall_share + a * (share - t.stall_share),
        r_ttft: t.r_ttft + a * (r_ttft - t.r_ttft),
        r_itl: t.r_itl + a * (r_itl - t.r_itl),
        ticks: t.ticks.saturating_add(1),
    }
}

/// The highest of `old` (while younger than `KV_MEMORY`) and `new`.
fn peak(old: Option<(f64, Instant)>, new: Option<f64>, now: Instant) -> Option<(f64, Instant)> {
    let old = old.filter(|(_, t)| now.saturating_duration_since(*t) <= KV_MEMORY);
    match (old, new) {
        (Some((o, t)), Some(n)) if o > n => Some((o, t)),
        (_, Some(n)) => Some((n, now)),
        (o, None) => o,
    }
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}
