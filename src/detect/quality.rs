//! FM 1, silent quality degradation: a Bernoulli CUSUM on canary pass/fail, rate tests on
//! the descriptor rates of real traffic against the provider's own baseline, and drift of
//! output lengths and compression ratios against its baseline and its peers serving the same
//! model (reference §3.4, §8.3, §8.4). Pure: callers pass `now`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::{Clock, Fact, Finding, Mode, Severity};
use crate::health::baseline::learning_rate;
use crate::quality::CanaryResult;
use crate::quality::descriptors::{Descriptors, Finish};
use crate::quality::stats::{self, Drift};

/// Bernoulli CUSUM on canary failures (reference §8.3): in-control failure rate 1 %,
/// out-of-control 10 %; two quick failures cross h.
const P0: f64 = 0.01;
const P1: f64 = 0.10;
const H: f64 = 4.6;
/// Passes in a row after which a failing probe counts as recovered.
const RECOVERED_AFTER: u32 = 2;

/// Real-traffic windows: the current one holds at most this many responses.
const MAX_CURRENT: usize = 200;
/// …and is judged once it holds this many, against a baseline of at least as many.
const MIN_CURRENT: usize = 30;
const MIN_BASELINE: f64 = 30.0;
/// Baseline counts are halved past this many responses (a memory of a few thousand).
const BASELINE_CAP: f64 = 2000.0;
/// z above the baseline rate to alarm and below which the alarm clears.
const Z_ALARM: f64 = 3.5;
const Z_CLEAR: f64 = 2.0;
/// Responses between drift evaluations, and evaluations in a row that must drift.
const DRIFT_EVERY: u32 = 25;
const DRIFT_RUNS: u32 = 2;
/// Evidently's KS threshold (p ≤ 0.05) is for one comparison; the current window is judged
/// every `DRIFT_EVERY` responses (8 times per 200) on 2 distributions, so the false-alarm
/// budget is split Bonferroni-style (reference §8.3, threshold selection).
const DRIFT_P: f64 = stats::KS_P / 16.0;
/// …and a significant drift is a finding only when it is material: the distributions at
/// least half a reference standard deviation apart (normalised Wasserstein; Cohen's
/// "medium" effect). Evidently's 0.1 flags a feature for a data scientist to look at; at
/// that size ordinary traffic — a mix that moves over minutes, a router that sends one
/// provider more long prompts than another — drifts all day, and a page for it is wrong.
const DRIFT_MATERIAL: f64 = 0.5;
/// A response is degenerate above this share of repeated 4-grams (Welleck et al.).
const REPETITIVE: f64 = 0.5;
/// Letters outside the Latin script that make a response "foreign".
const FOREIGN: f64 = 0.01;
/// A prompt counted below this share of the provider's usual count-to-estimate ratio was
/// truncated (reference §3.3 item 2), judged on prompts of at least `TRUNCATION_MIN` tokens.
const TRUNCATED: f64 = 0.5;
const TRUNCATION_MIN: u64 = 64;

/// A descriptor rate: its signal name, words, and the smallest rise that matters.
struct RateDef {
    signal: &'static str,
    words: &'static str,
    material: f64,
}

const RATES: [RateDef; 7] = [
    RateDef {
        signal: "finish_max_tokens_share",
        words: "finish_reason=length (max_tokens used up)",
        material: 0.05,
    },
    RateDef {
        signal: "finish_context_limit_share",
        words: "finish_reason=length (context limit)",
        material: 0.05,
    },
    RateDef {
        signal: "json_invalid_share",
        words: "invalid JSON where JSON was asked for",
        material: 0.05,
    },
    RateDef {
        signal: "refusal_share",
        words: "refusals",
        material: 0.05,
    },
    RateDef {
        signal: "truncated_prompt_share",
        words: "prompts counted short (silent truncation)",
        material: 0.02,
    },
    RateDef {
        signal: "unexpected_script_share",
        words: "answers with unexpected script",
        material: 0.05,
    },
    RateDef {
        signal: "repetition_share",
        words: "repetitive answers (seq-rep-4 ≥ 0.5)",
        material: 0.05,
    },
];

/// Canary failure signals, most specific first.
const SPECIFIC_FIRST: [&str; 7] = [
    "truncated_prompt",
    "repetition",
    "unexpected_script",
    "output_diversity",
    "invalid_json",
    "schema_mismatch",
    "wrong_answer",
];

fn specificity(signal: &str) -> usize {
    SPECIFIC_FIRST
        .iter()
        .position(|s| *s == signal)
        .unwrap_or(SPECIFIC_FIRST.len())
}

/// What one response contributes: which rates apply and which flags are set.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    applies: u8,
    flags: u8,
    tokens: Option<f64>,
    ratio: Option<f64>,
    prompt_ratio: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    base_k: f64,
    base_n: f64,
    alarm: Option<Instant>,
}

/// The distributions watched for drift: output length and compression ratio.
const DISTRIBUTIONS: [(&str, &str, &str); 2] = [
    ("output_tokens_drift", "output length", " tokens"),
    ("compression_ratio_drift", "compression ratio", ""),
];

#[derive(Debug, Clone, Default)]
struct DriftState {
    runs: u32,
    alarm: Option<(Instant, Fact)>,
}

/// One failing probe.
#[derive(Debug, Clone)]
struct Failing {
    signal: &'static str,
    reason: String,
    failures: u32,
    passes: u32,
}

/// The quality detector's state for one provider.
#[derive(Debug, Clone, Default)]
pub struct QualityDetector {
    cusum: f64,
    excursion: Option<Instant>,
    alarmed: bool,
    failing: BTreeMap<String, Failing>,
    current: VecDeque<Sample>,
    rates: [Rate; 7],
    reference: [VecDeque<f64>; 2],
    calibration: Option<(f64, u32)>,
    since_eval: u32,
    drift: [DriftState; 2],
    /// Served models and `system_fingerprint`s seen (a few), and when a new one appeared.
    identities: VecDeque<(Option<String>, Option<String>)>,
    new_identity: Option<(Instant, String)>,
}

/// Served-model/fingerprint values remembered (replicas of one provider may differ).
const IDENTITIES: usize = 8;

/// The current windows of a provider's peers serving the same model.
#[derive(Debug, Clone, Default)]
pub struct PeerPool {
    /// Per descriptor rate: (flagged, judged) responses.
    pub rates: [(f64, f64); 7],
    /// Output lengths and compression ratios (filled only when a drift evaluation is due).
    pub values: [Vec<f64>; 2],
}

impl QualityDetector {
    /// A canary result (availability failures are the other detectors' business).
    pub fn on_canary(&mut self, r: &CanaryResult) {
        if r.unavailable() || (!r.pass && !r.counted) {
            return;
        }
        let w = if r.pass {
            ((1.0 - P1) / (1.0 - P0)).ln()
        } else {
            (P1 / P0).ln()
        };
        if self.cusum <= 0.0 && !r.pass {
            self.excursion = Some(r.at);
        }
        self.cusum = (self.cusum + w).clamp(0.0, 2.0 * H);
        if self.cusum > H {
            self.alarmed = true;
        }
        if r.pass {
            if let Some(f) = self.failing.get_mut(&r.probe) {
                f.passes += 1;
                if f.passes >= RECOVERED_AFTER {
                    self.failing.remove(&r.probe);
                }
            }
        } else {
            let f = self.failing.entry(r.probe.clone()).or_insert(Failing {
                signal: "",
                reason: String::new(),
                failures: 0,
                passes: 0,
            });
            f.signal = r.signal.unwrap_or("failed");
            f.reason.clone_from(&r.reason);
            f.failures += 1;
            f.passes = 0;
        }
        if self.failing.is_empty() || self.cusum <= 0.0 {
            self.failing.clear();
            self.alarmed = false;
            self.cusum = 0.0;
            self.excursion = None;
        }
    }

    /// The served model and `system_fingerprint` of a response: a value never seen before
    /// (after the first) is remembered as a change of what serves this provider's traffic —
    /// context for a quality finding (reference §3.3 item 12), not a finding by itself.
    pub fn on_identity(&mut self, now: Instant, model: Option<&str>, fingerprint: Option<&str>) {
        // Called for every successful attempt: allocates only for a value not seen before.
        if (model.is_none() && fingerprint.is_none())
            || self
                .identities
                .iter()
                .any(|(m, f)| m.as_deref() == model && f.as_deref() == fingerprint)
        {
            return;
        }
        if !self.identities.is_empty() {
            self.new_identity = Some((
                now,
                format!(
                    "model {} fingerprint {}",
                    model.unwrap_or("?"),
                    fingerprint.unwrap_or("?")
                ),
            ));
        }
        self.identities
            .push_back((model.map(str::to_owned), fingerprint.map(str::to_owned)));
        if self.identities.len() > IDENTITIES {
            self.identities.pop_front();
        }
    }

    /// Descriptors of one successful client response.
    pub fn on_response(&mut self, now: Instant, d: &Descriptors) {
        let prompt_ratio = d
            .prompt_ratio()
            .filter(|_| d.prompt_tokens_estimate.unwrap_or(0) >= TRUNCATION_MIN);
        let calibrated = self.calibration.map_or(1.0, |c| c.0);
        let truncated = prompt_ratio.map(|r| r < calibrated * TRUNCATED);
        if let (Some(r), Some(false)) = (prompt_ratio, truncated) {
            let (mean, n) = self.calibration.unwrap_or((r, 0));
            let n = n.saturating_add(1);
            self.calibration = Some((mean + learning_rate(n, 0.01) * (r - mean), n));
        }
        let finish = d.finish;
        let checks: [Option<bool>; 7] = [
            finish.map(|f| f == Finish::MaxTokens),
            finish.map(|f| f == Finish::ContextLimit),
            d.json_valid.map(|v| !v),
            (d.output_chars > 0).then_some(d.refusal),
            truncated,
            (d.output_chars > 0).then_some(d.foreign_script > FOREIGN),
            // The compression ratio grows with length on any text (Whisper's 2.4 is for
            // transcript segments): it is watched as a distribution, not a per-answer flag.
            d.seq_rep_4.map(|r| r >= REPETITIVE),
        ];
        let mut s = Sample {
            at: now,
            applies: 0,
            flags: 0,
            tokens: d.output_tokens.map(|t| t as f64),
            ratio: d.compression_ratio,
            prompt_ratio,
        };
        for (i, c) in checks.iter().enumerate() {
            if let Some(flag) = c {
                s.applies |= 1 << i;
                s.flags |= u8::from(*flag) << i;
            }
        }
        self.current.push_back(s);
        self.since_eval += 1;
        while self.current.len() > MAX_CURRENT {
            self.retire();
        }
    }

    /// Moves the oldest current response into the baselines (rates that are in alarm keep
    /// their baseline clean).
    fn retire(&mut self) {
        let Some(s) = self.current.pop_front() else {
            return;
        };
        for (i, r) in self.rates.iter_mut().enumerate() {
            if s.applies & (1 << i) == 0 || r.alarm.is_some() {
                continue;
            }
            r.base_n += 1.0;
            r.base_k += f64::from((s.flags >> i) & 1);
            if r.base_n > BASELINE_CAP {
                r.base_n /= 2.0;
                r.base_k /= 2.0;
            }
        }
        for (j, v) in [s.tokens, s.ratio].into_iter().enumerate() {
            if let Some(v) = v
                && self.drift[j].alarm.is_none()
            {
                let r = &mut self.reference[j];
                r.push_back(v);
                if r.len() > stats::KS_MAX_REFERENCE {
                    r.pop_front();
                }
            }
        }
    }

    /// When this provider's current window begins (its oldest response still in it).
    pub fn window_start(&self) -> Option<Instant> {
        self.current.front().map(|s| s.at)
    }

    /// Adds the responses of the current window answered from `since` on to a peer's pool:
    /// the rates' counts, and the values when `values`. Matching the peers' span to the
    /// judged provider's compares the same stretch of traffic: a workload whose mix moves
    /// over minutes otherwise looks like a provider that changed.
    pub fn pool_into(&self, pool: &mut PeerPool, values: bool, since: Option<Instant>) {
        for s in self
            .current
            .iter()
            .filter(|s| since.is_none_or(|t| s.at >= t))
        {
            for (i, (k, n)) in pool.rates.iter_mut().enumerate() {
                if s.applies & (1 << i) != 0 {
                    *n += 1.0;
                    *k += f64::from((s.flags >> i) & 1);
                }
            }
            if values {
                pool.values[0].extend(s.tokens);
                pool.values[1].extend(s.ratio);
            }
        }
    }

    /// True when a drift evaluation is due at the next step (so callers build peer pools
    /// only then).
    pub fn drift_due(&self) -> bool {
        self.since_eval >= DRIFT_EVERY && self.current.len() >= MIN_CURRENT
    }

    /// The finding at `now`, if any: the canary CUSUM, the descriptor rates of the traffic
    /// of the last `window`, and drift against the baseline (and `peers`, when given).
    pub fn step(
        &mut self,
        id: &str,
        peers: Option<&PeerPool>,
        window: Duration,
        clock: &Clock,
        now: Instant,
    ) -> Option<Finding> {
        while self
            .current
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > window)
        {
            self.retire();
        }
        let mut facts = Vec::new();
        let mut onset: Option<Instant> = None;
        let mut earliest = |t: Instant| onset = Some(onset.map_or(t, |o: Instant| o.min(t)));
        if self.alarmed {
            if let Some(t) = self.excursion {
                earliest(t);
            }
            // The most specific signal first: it names what changed ("the prompt was cut")
            // where a wrong answer only says that something did.
            let mut failing: Vec<(&String, &Failing)> = self.failing.iter().collect();
            failing.sort_by_key(|(_, f)| specificity(f.signal));
            for (probe, f) in failing {
                facts.push(
                    Fact::new(
                        f.signal,
                        f64::from(f.failures),
                        "canary failures",
                        format!("canary {probe}: {}", f.reason),
                    )
                    .threshold(H),
                );
            }
        }
        let canary_facts = facts.len();
        for (i, def) in RATES.iter().enumerate() {
            if let Some((fact, since)) = self.rate(i, def, peers, clock, now) {
                earliest(since);
                facts.push(fact);
            }
        }
        if self.drift_due() {
            self.since_eval = 0;
            for j in 0..DISTRIBUTIONS.len() {
                self.evaluate_drift(j, peers, clock, now);
            }
        }
        for d in &self.drift {
            if let Some((since, fact)) = &d.alarm {
                earliest(*since);
                facts.push(fact.clone());
            }
        }
        let first = facts.first()?.clone();
        let onset = onset.unwrap_or(now);
        // A new served model or fingerprint shortly before (or since) the onset.
        if let Some((at, id)) = self
            .new_identity
            .as_ref()
            .filter(|(at, _)| *at + window >= onset)
        {
            facts.push(Fact::new(
                "served_identity_changed",
                1.0,
                "change",
                format!(
                    "the provider started answering as {id} at {}",
                    clock.hms(*at)
                ),
            ));
        }
        let severity = if canary_facts > 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        Some(Finding {
            mode: Mode::SilentQualityDegradation,
            subject: id.to_owned(),
            provider: Some(id.to_owned()),
            severity,
            onset_unix_ms: clock.ms(onset),
            summary: format!("{id} answers 200 with degraded output — {}", first.detail),
            facts,
            action: "Candor sends this provider as little traffic as it can while its outputs \
                are degraded. Compare its model version, quantization, sampling defaults \
                (vLLM --generation-config) and context settings (Ollama num_ctx) with \
                before the onset, and roll the change back."
                .into(),
            root_cause: None,
        })
    }

    /// Rate `i` of the current window against its baseline: a fact while in alarm. When the
    /// model's other providers answer the same traffic with the same rate now, it is the
    /// traffic that changed, not this provider.
    fn rate(
        &mut self,
        i: usize,
        def: &RateDef,
        peers: Option<&PeerPool>,
        clock: &Clock,
        now: Instant,
    ) -> Option<(Fact, Instant)> {
        let bit = 1u8 << i;
        let (mut n, mut k, mut first_hit) = (0.0, 0.0, None);
        let mut short = Vec::new();
        for s in self.current.iter().filter(|s| s.applies & bit != 0) {
            n += 1.0;
            if s.flags & bit != 0 {
                k += 1.0;
                first_hit.get_or_insert(s.at);
                short.extend(s.prompt_ratio);
            }
        }
        let r = &mut self.rates[i];
        if n < MIN_CURRENT as f64 || r.base_n < MIN_BASELINE {
            r.alarm = None;
            return None;
        }
        let (p, base) = (k / n, r.base_k / r.base_n);
        let excess = p - base;
        // z against the baseline, and against the peers now when they have traffic.
        let mut z = stats::z_above(k, n, r.base_k, r.base_n);
        let peer = peers
            .map(|pool| pool.rates[i])
            .filter(|(_, pn)| *pn >= MIN_CURRENT as f64);
        if let Some((pk, pn)) = peer {
            z = z.min(stats::z_above(k, n, pk, pn));
        }
        r.alarm = match r.alarm {
            None if z >= Z_ALARM && excess >= def.material => first_hit.or(Some(now)),
            Some(_) if z < Z_CLEAR || excess < def.material / 2.0 => None,
            keep => keep,
        };
        let since = r.alarm?;
        let mut detail = format!(
            "{} {:.0} % → {:.0} % of the last {n:.0} responses since {}",
            def.words,
            base * 100.0,
            p * 100.0,
            clock.hms(since)
        );
        if let Some((pk, pn)) = peer {
            detail.push_str(&format!("; peers {:.0} %", pk / pn * 100.0));
        }
        if def.signal == "truncated_prompt_share" && !short.is_empty() {
            let mean = short.iter().sum::<f64>() / short.len() as f64;
            let usual = self.calibration.map_or(1.0, |c| c.0);
            detail.push_str(&format!(
                "; prompt tokens {:.0} % below what was sent",
                (1.0 - mean / usual).max(0.0) * 100.0
            ));
        }
        Some((
            Fact::new(def.signal, p, "share", detail)
                .baseline(Some(base))
                .threshold(base + def.material),
            since,
        ))
    }

    /// Distribution `j` of the current window against the baseline and the peers.
    fn evaluate_drift(&mut self, j: usize, peers: Option<&PeerPool>, clock: &Clock, now: Instant) {
        let mut current: Vec<f64> = self
            .current
            .iter()
            .filter_map(|s| if j == 0 { s.tokens } else { s.ratio })
            .collect();
        let mut reference: Vec<f64> = self.reference[j].iter().copied().collect();
        let state = &mut self.drift[j];
        if current.len() < MIN_CURRENT || (reference.len() as f64) < MIN_BASELINE {
            state.runs = 0;
            state.alarm = None;
            return;
        }
        let own = stats::drift(&mut reference, &mut current);
        let drifted = |d: &Option<Drift>| {
            d.is_some_and(|d| {
                let significant = if d.test == "ks" {
                    d.value <= DRIFT_P
                } else {
                    d.drifted
                };
                significant && d.distance >= DRIFT_MATERIAL
            })
        };
        // A workload change moves every provider of the model alike: the peers must not
        // look like this provider now.
        let mut peer_values = peers
            .map(|p| p.values[j].clone())
            .filter(|v| v.len() >= MIN_CURRENT);
        let vs_peers = peer_values
            .as_mut()
            .map(|v| stats::drift(v, &mut current.clone()));
        let contradicted = vs_peers.as_ref().is_some_and(|d| !drifted(d));
        if !drifted(&own) || contradicted {
            state.runs = 0;
            state.alarm = None;
            return;
        }
        state.runs += 1;
        if state.runs < DRIFT_RUNS || state.alarm.is_some() {
            if let (Some((_, fact)), Some(d)) = (&mut state.alarm, own) {
                fact.value = d.distance;
            }
            return;
        }
        let Some(d) = own else { return };
        let (signal, words, unit) = DISTRIBUTIONS[j];
        let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
        let peer_median = peer_values.as_deref().map(|v| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            median(&v)
        });
        let since = self
            .current
            .get(self.current.len().saturating_sub(2 * DRIFT_EVERY as usize))
            .map_or(now, |s| s.at);
        let detail = format!(
            "{words} median {:.1} → {:.1}{unit} since {} ({} {:.2}, normalised Wasserstein {:.2}{})",
            median(&reference),
            median(&current),
            clock.hms(since),
            if d.test == "ks" {
                "KS p"
            } else {
                "normalised Wasserstein"
            },
            d.value,
            d.distance,
            peer_median.map_or(String::new(), |m| format!("; peers {m:.1}")),
        );
        state.alarm = Some((
            since,
            Fact::new(signal, d.distance, "normalised Wasserstein", detail)
                .baseline(Some(median(&reference)))
                .threshold(DRIFT_MATERIAL),
        ));
    }
}

#[cfg(test)]
mod tests;
