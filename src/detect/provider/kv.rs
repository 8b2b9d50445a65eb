//! FM 2, KV-cache thrashing: mid-stream stalls and a first-token tail pulling away while the
//! inter-token median and the errors stay flat; the server's KV usage and preemptions
//! confirm, and with them a blown first-token time is the same shortage.

use std::time::Duration;

use tokio::time::Instant;

use crate::health::baseline::learning_rate;
use crate::health::state::State;

use super::{
    Clock, FLAT_ERRORS, Fact, Finding, MIN_ATTEMPTS, Mode, ProviderDetectors, ProviderInput,
    Severity, held, rate,
};

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
/// KV usage that rules a shortage out: a cache that never passed half full over
/// `KV_MEMORY`, with no preemption, is not thrashing, whatever the stalls look like (long
/// prefills and bursts stall streams too).
const KV_CLEAR: f64 = 0.5;
/// How long a KV-thrashing finding stands after its signature last held.
const KV_HOLD: Duration = Duration::from_secs(20);
/// How long a saturated or preempting scrape counts.
const KV_MEMORY: Duration = Duration::from_secs(30);
/// Learning rate of the tail baselines (per tick).
const LEARN: f64 = 0.02;

/// Learned tails of a healthy provider (KV-thrashing reference).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tails {
    itl_p50: f64,
    ttft_p50: f64,
    stall_share: f64,
    r_ttft: f64,
    r_itl: f64,
    ticks: u32,
}

impl ProviderDetectors {
    /// FM 2: mid-stream stalls (a gap > max(1 s, 10 × median ITL)) in a growing share of
    /// requests and the tails rising while the medians and the error rate stay flat;
    /// KV usage near 1 and preemptions confirm (reference §4.3–4.4).
    pub(super) fn kv_thrashing(
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
        // The server's own account can overrule the gateway's inference: a cache far from
        // full with nothing preempted has no shortage to thrash on.
        let backend_contradicts = p.backend.is_some()
            && kv_peak.is_some_and(|k| k < KV_CLEAR)
            && preempt_peak.is_none_or(|r| r == 0.0);
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
            && !backend_contradicts
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
                format!("{} of {} attempts failed", w.failed, w.requests),
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

    /// The last KV-thrashing finding, for `KV_HOLD` after its signature last held (the cache
    /// shortage outlasts the symptoms once traffic moves away).
    pub(super) fn kv_held(&self, now: Instant) -> Option<Finding> {
        held(self.kv_last.as_ref(), KV_HOLD, now)
    }
}

fn learn(t: Tails, itl_p50: f64, ttft_p50: f64, share: f64, r_ttft: f64, r_itl: f64) -> Tails {
    let a = learning_rate(t.ticks.saturating_add(1), LEARN);
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
