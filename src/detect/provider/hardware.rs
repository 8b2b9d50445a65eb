//! FM 4, hardware degradation: a CUSUM of the decode rate against the provider's own
//! baseline at the same load, less the drop its peers share (every provider of a model
//! slowing at once is the traffic); DCGM clocks and throttle bits as confirmation.

use std::time::Duration;

use tokio::time::Instant;

use crate::health::baseline::{self, Ratios};
use crate::scrape::Backend;

use super::{
    Clock, Fact, Finding, MIN_ATTEMPTS, Mode, ProviderDetectors, ProviderInput, Severity, rate,
};

/// Decode-rate CUSUM: σ of a window's decode ratio (at least; a provider's own learned
/// spread when larger), allowance and limit. Within one load bucket the decode rate itself
/// moves by 10–20 %, so a ratio of 0.85 adds nothing (k = 1.5σ); at σ = 0.1, 0.6 alarms in
/// four ticks, 0.7 in seven, 0.75 in ten (a 25 % slowdown is the documented sensitivity for
/// a provider whose rate spreads by 10 % or less).
const DECODE_SIGMA: f64 = 0.1;
pub(super) const DECODE_K: f64 = 1.5;
pub(super) const DECODE_H: f64 = 10.0;
/// Largest standardised step one tick may add to a CUSUM.
const Z_CAP: f64 = 4.0;
/// No token for this long with streams open: not judged as a slowdown.
const NO_PROGRESS: Duration = Duration::from_millis(500);
/// A decode rate this far below its references is a degradation (reference §6.3).
const DECODE_RATIO: f64 = 0.8;
/// With a standing queue, an engine generating at least this share of the provider's
/// baseline per running sequence is loaded, not slowed: admitting from the queue keeps
/// prefill between its decode steps, which costs each running stream up to a third of its
/// rate (measured on the simulator's engines with whole-prompt prefill). A slowdown
/// multiplies on top of that: 0.6x under a queue leaves about 0.4, 0.75x about 0.5. With or
/// without a queue, a stream decoding at this share of its baseline or more while the decode
/// step is as quick as learned has lost no more than admitted prompts take between steps.
const QUEUED_ENGINE_RATIO: f64 = 0.6;
/// Decode-step CUSUM, on the fastest tenth of the last ten seconds' token gaps against the
/// line the provider learned in its mean batch with nothing waiting: the step a GPU takes
/// with nothing prefilled between two tokens, which neither short answers nor long prompts
/// move the way they move the per-stream rate (a histogram bucket, about 5 %, is its noise).
/// A step 15 % slower or less adds nothing (k = 3σ); 20 % slower alarms in about eight
/// ticks, 25 % in four or five (capped at 5σ a tick, so one wild tick cannot alarm alone).
const STEP_SIGMA: f64 = 0.05;
pub(super) const STEP_K: f64 = 3.0;
pub(super) const STEP_H: f64 = 8.0;
const STEP_Z_CAP: f64 = 5.0;
/// The fact a slowdown named from its decode step carries: the load cannot explain it.
pub(in crate::detect) const STEP_RATIO: &str = "decode_step_ratio";

impl ProviderDetectors {
    /// FM 4: decode rate at comparable load below the provider's own baseline and its peers
    /// (CUSUM of the ratio; reference §6.3, §8.3); DCGM clocks and throttle bits confirm.
    pub(super) fn hardware(
        &mut self,
        p: &ProviderInput<'_>,
        clock: &Clock,
        now: Instant,
    ) -> Option<Finding> {
        let s = p.signals;
        // No tokens at all is a hang (the deadlock detector's), not a slow GPU.
        if s.stalled_for.is_some_and(|d| d >= NO_PROGRESS) {
            return None;
        }
        let live = s.decode_live && p.since_healthy.requests >= MIN_ATTEMPTS;
        let step = self.step_evidence(p, live, now);
        // Too little traffic to judge (a state change just cleared the window, the router
        // sends it little), or no stream ran this tick (each tick's streams are evidence once;
        // the window's median would add the same figure tick after tick): what was found
        // stands while a CUSUM is in alarm.
        let (Some(own), Some(decode)) =
            (p.baseline.and_then(|r| r.decode), s.decode.filter(|_| live))
        else {
            return self
                .last_hw
                .clone()
                .filter(|_| self.decode.excursion() || self.step.excursion());
        };
        let peers = p.peers.and_then(|r| r.decode);
        // Against its own baseline at this load (a fleet may mix hardware, so a provider is
        // compared with itself), less what its peers share: when they all decode below their
        // baselines at once, the load did it (a burst, or traffic moved onto them).
        let own_ratio = decode / own;
        let ratio = own_ratio / Ratios::shared_decode_drop(p.peers);
        // In units of the spread this provider's rate shows when healthy at this load (at
        // least `DECODE_SIGMA`): a provider whose rate swings with its traffic needs a deeper
        // drop to alarm. Winsorised, so one wild tick cannot alarm alone.
        let sigma = p
            .baseline
            .and_then(|r| r.decode_spread)
            .map_or(DECODE_SIGMA, |s| s.max(DECODE_SIGMA));
        let z = ((1.0 - ratio) / sigma).clamp(-Z_CAP, Z_CAP);
        // The decode step itself, its quickest token gaps against what it learned at this
        // batch: a slowed GPU takes longer over every step; a loaded engine steps as quickly
        // as ever and loses the rest of its time between steps, to the prompts it admits.
        let step_as_learned = step_ratio(p).is_some_and(|r| r >= DECODE_RATIO);
        // So a stream losing up to what admitted prompts cost it, with the step as learned, is
        // no evidence of a slower GPU (traffic heavier than its baseline learned: a burst, or
        // traffic moved back onto it). A deeper drop counts whatever the step says, which is
        // read from streams as they end and trails a sudden slowdown.
        let between_steps = own_ratio >= QUEUED_ENGINE_RATIO && step_as_learned;
        let z = if between_steps { z.min(0.0) } else { z };
        // Once named, the finding stands until the sums are back at rest: a noisy ratio
        // around the limit is one slowdown, not a string of them.
        let named = self.last_hw.is_some();
        let alarm = self.decode.step(now, z) || (named && self.decode.excursion());
        let half = 1.0 - (1.0 - DECODE_RATIO) / 2.0;
        // Over capacity, or with work queued at the server, a slowdown is the load unless its
        // peers decode as usual: a loaded server queues and decodes each stream more slowly;
        // a slowed one does too, but then its peers do not.
        let peers_as_usual = p.peers.is_some() && Ratios::shared_decode_drop(p.peers) >= 1.0;
        let queue = p.queueing();
        let load = queue && !peers_as_usual;
        // The engine's own count says more than the streams Candor sees: a slowed GPU
        // generates fewer tokens per running sequence; a loaded one does not — except by the
        // prefill of what it admits, which under a standing queue runs between decode steps
        // all the time (and again for requests that time out before their first token).
        let floor = if queue {
            QUEUED_ENGINE_RATIO
        } else {
            DECODE_RATIO
        };
        let engine_as_usual = p
            .backend
            .and_then(Backend::tokens_per_running)
            .is_some_and(|r| r >= floor * own);
        // Under a queue, prompts are admitted between steps all the time: a step as learned
        // says the load, however deep the per-stream drop.
        let steps_as_usual = queue && step_as_learned;
        let usual = load || engine_as_usual || steps_as_usual || ratio >= half || own_ratio >= half;
        // The step is read at the mean batch of the last seconds, which a burst of traffic
        // moved onto the provider can leave behind its quickest gaps: the per-stream rate must
        // agree that it slowed.
        let step = step.filter(|_| own_ratio < half);
        let by_rate = alarm && !usual;
        if step.is_none() && !by_rate {
            if named && (alarm || self.step.excursion()) {
                // Recovering (or loaded), the sums not yet at rest: the finding stands as
                // named.
                return self.last_hw.clone();
            }
            self.last_hw = None;
            return None;
        }
        let onset = [
            self.decode.onset().filter(|_| self.decode.excursion()),
            self.step.onset().filter(|_| step.is_some()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
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
                    "peer_decode_ratio",
                    q,
                    "ratio",
                    format!(
                        "its peers serving the same model decode at {:.0} % of their own baselines",
                        q * 100.0
                    ),
                )
                .baseline(Some(1.0))
                .threshold(DECODE_RATIO),
            );
        }
        let errors = rate(s.failures, s.requests);
        facts.push(Fact::new(
            "error_rate",
            errors,
            "ratio",
            if s.failures == 0 {
                format!("none of {} attempts failed", s.requests)
            } else {
                format!("{} of {} attempts failed", s.failures, s.requests)
            },
        ));
        if let (Some(gap), Some(base)) = (s.quickest_gap, p.quickest_gap_baseline) {
            facts.push(
                Fact::new(
                    "quickest_token_gap_ms",
                    gap * 1000.0,
                    "ms",
                    format!(
                        "its quickest quarter of token gaps take {:.1} ms, against {:.1} ms \
                         learned at this batch (the decode step with nothing between)",
                        gap * 1000.0,
                        base * 1000.0
                    ),
                )
                .baseline(Some(base * 1000.0))
                .threshold(base * 1000.0 / DECODE_RATIO),
            );
        }
        if let Some(r) = step {
            facts.push(
                Fact::new(
                    STEP_RATIO,
                    r,
                    "ratio",
                    format!(
                        "each decode step takes {:.0} % longer than it did at this batch when \
                         healthy, with nothing waiting at the server",
                        (1.0 / r - 1.0) * 100.0
                    ),
                )
                .baseline(Some(1.0))
                .threshold(DECODE_RATIO),
            );
        }
        let mut confirmed = false;
        if let Some(b) = p.backend {
            if let Some(r) = b.tokens_per_running() {
                facts.push(
                    Fact::new(
                        "backend_tokens_per_s_per_running",
                        r,
                        "tokens/s",
                        format!(
                            "the server generates {r:.1} tokens/s per running sequence \
                             ({:.0} running, {:.0} waiting)",
                            b.reading.running.unwrap_or(0.0),
                            b.reading.queue.unwrap_or(0.0)
                        ),
                    )
                    .threshold(own * DECODE_RATIO),
                );
            }
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
        let slowest = step.map_or(ratio, |r| r.min(ratio));
        let severity = if slowest < 0.6 || p.state.weight() < 0.6 {
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
                "{} decodes {:.0} % slower than its own baseline at this load{}{}",
                p.id,
                (1.0 - step.map_or(own_ratio, |r| r.min(own_ratio))) * 100.0,
                match peers {
                    Some(q) if q < 1.0 =>
                        format!(", while its peers are at {:.0} % of theirs", q * 100.0),
                    Some(_) => ", while its peers decode as usual".to_owned(),
                    None => String::new(),
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

    /// The decode step's evidence this tick: steps its CUSUM when streams ran and nothing
    /// waits at the server (behind a queue, prefill runs inside the steps of an engine that
    /// chunks its prompts, and the quickest gaps are no longer the decode step alone), less
    /// the slowdown its peers share. Some(ratio) while in alarm and the step is slower than
    /// `DECODE_RATIO` of its learned figure.
    fn step_evidence(&mut self, p: &ProviderInput<'_>, live: bool, now: Instant) -> Option<f64> {
        if !live || p.signals.queued {
            return None;
        }
        let r = p.fastest_step? / Ratios::shared_step_drop(p.peers);
        let z = ((1.0 - r) / STEP_SIGMA).min(STEP_Z_CAP);
        (self.step.step(now, z) && r < DECODE_RATIO).then_some(r)
    }
}

/// The provider's decode step now against its baseline's at the batch it runs: the learned
/// quickest token gaps over today's (below 1: each step slower).
fn step_ratio(p: &ProviderInput<'_>) -> Option<f64> {
    baseline::step_ratio(p.quickest_gap_baseline, p.signals.quickest_gap)
}
