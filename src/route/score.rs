//! Candor's scoring: predict each candidate's time to first token and to completion under
//! its current load, judge it against the targets, weigh health, KV pressure and price, and
//! choose by power of two choices. Pure.

use super::{Choice, Input};
use crate::splitmix::mix;

/// Saturation thresholds of the llm-d endpoint picker (reference §2): queue 5, KV 0.8.
const QUEUE_SATURATED: f64 = 5.0;
const KV_SATURATED: f64 = 0.8;
/// Margin a prediction must clear the targets by to count as meeting them.
const HEADROOM: f64 = 1.1;

/// What the router expects of one candidate for this request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Time to first token, s.
    pub ttft_s: f64,
    /// Per-stream decode rate, tokens/s.
    pub decode: f64,
    /// Time to complete, s.
    pub e2e_s: f64,
    /// KV-pressure multiplier (1 below 0.8 use).
    pub kv_factor: f64,
    /// Meets the targets as predicted.
    pub feasible: bool,
}

/// The best TTFT and decode rate measured among the candidates: what a provider with no
/// measurements yet is assumed to do, so that it gets traffic and is measured.
pub fn optimistic_prior(options: &[Choice<'_>]) -> (Option<f64>, Option<f64>) {
    let ttft = options
        .iter()
        .filter_map(|o| o.view.ttft_p50)
        .min_by(f64::total_cmp);
    let decode = options
        .iter()
        .filter_map(|o| o.view.decode)
        .max_by(f64::total_cmp);
    (ttft, decode)
}

/// Predicts `c`'s performance for the request in `input`; `prior` stands in for what has
/// not been measured (falling back to a provider that meets the targets comfortably).
pub fn predict(c: &Choice<'_>, input: &Input<'_>, prior: (Option<f64>, Option<f64>)) -> Prediction {
    let t = input.targets;
    let v = c.view;
    let mut ttft = v
        .ttft_p50
        .or(prior.0)
        .unwrap_or(t.ttft.as_secs_f64() * 0.25);
    let decode = v
        .decode
        .or(prior.1)
        .unwrap_or(t.decode_tokens_per_s * 2.0)
        .max(0.1);
    // The server's queue: requests ahead wait for a batch slot.
    let (queue, running, kv) = match &v.backend {
        Some(b) => (
            b.reading.queue.unwrap_or(0.0),
            b.reading.running.unwrap_or(0.0),
            b.reading.kv_usage.unwrap_or(0.0),
        ),
        // Configured but unknown metrics count as saturated (the endpoint picker's rule).
        None if v.backend_unknown => (QUEUE_SATURATED, QUEUE_SATURATED, KV_SATURATED),
        None => (0.0, 0.0, 0.0),
    };
    ttft *= 1.0 + queue / running.max(1.0);
    let kv_factor = if kv > KV_SATURATED {
        1.0 + 5.0 * (kv - KV_SATURATED)
    } else {
        1.0
    };
    let out = input.expected_output_tokens.max(1.0);
    let e2e = ttft + out / decode;
    // Predictions are estimates: a candidate counts as meeting the targets only with some
    // headroom, so one hovering at the limit is not preferred over one clear of it.
    let feasible = ttft * HEADROOM <= t.ttft.as_secs_f64()
        && (decode >= t.decode_tokens_per_s * HEADROOM || e2e * HEADROOM <= t.e2e.as_secs_f64());
    Prediction {
        ttft_s: ttft,
        decode,
        e2e_s: e2e,
        kv_factor,
        feasible,
    }
}

/// Candor's score (higher is better): health weight over predicted cost, divided among the
/// requests already in flight (Envoy's least-request weighting), with price as a tie-break.
pub(super) fn score(p: &Prediction, c: &Choice<'_>, price_term: f64) -> f64 {
    let weight = match c.view.state.weight() {
        w if w > 0.0 => w,
        // Ejected or recovering candidates only score when used as a last resort.
        _ => 0.01,
    };
    let cost = p.e2e_s.max(1e-3) * p.kv_factor * (1.0 + price_term);
    weight / (cost * (c.in_flight.max(0) as f64 + 1.0))
}

/// Power of two choices over `pool` (indices into `scored`): two random candidates, the
/// better score wins; candidates predicted to meet the targets come before the rest. The
/// others follow as failover, best first.
pub(super) fn choose(
    scored: &[(f64, bool, &str)],
    pool: &[usize],
    input: &Input<'_>,
) -> (Vec<usize>, String) {
    let feasible: Vec<usize> = pool.iter().copied().filter(|&i| scored[i].1).collect();
    let tier = if feasible.is_empty() {
        pool.to_vec()
    } else {
        feasible
    };
    let mut rest: Vec<usize> = pool.to_vec();
    let by_score = |a: &usize, b: &usize| {
        scored[*b]
            .1
            .cmp(&scored[*a].1)
            .then(scored[*b].0.total_cmp(&scored[*a].0))
    };
    rest.sort_by(by_score);
    let Some(&only) = tier.first() else {
        return (Vec::new(), String::new());
    };
    let (first, why) = if tier.len() == 1 {
        (
            only,
            "the only candidate predicted to meet the targets".to_owned(),
        )
    } else {
        let r = mix(input.random);
        let n = tier.len() as u64;
        let ia = r % n;
        let mut ib = (r >> 32) % (n - 1);
        if ib >= ia {
            ib += 1;
        }
        let (a, b) = (tier[ia as usize], tier[ib as usize]);
        let (win, lose) = if scored[a].0 >= scored[b].0 {
            (a, b)
        } else {
            (b, a)
        };
        (
            win,
            format!(
                "scored {:.3} against {} at {:.3} (power of two choices)",
                scored[win].0, scored[lose].2, scored[lose].0
            ),
        )
    };
    rest.retain(|&i| i != first);
    rest.insert(0, first);
    let note = if scored[first].1 {
        "predicted to meet the targets"
    } else {
        "no candidate is predicted to meet the targets; best effort"
    };
    (rest, format!("candor: {} {why}; {note}", scored[first].2))
}
