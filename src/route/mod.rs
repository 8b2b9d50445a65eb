//! Orders the providers that serve a model for one request, and says why. Candor's policy
//! predicts each candidate's time to complete under its current load, queue and KV pressure,
//! weighs health state and price, and picks by power of two choices; the baseline policies
//! (round robin, least busy, error cooldown) exist to be compared with it. Every policy
//! honours ejection-independent gateway rules: `retry-after` and the client's deadline.
//! Pure: no I/O, no clock — the caller passes `now` and random bits.

pub mod budget;
mod score;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Policy, RoutingConfig, Targets};
use crate::health::snapshot::ProviderView;
use crate::health::state::State;
use crate::splitmix::mix;
pub use score::{Prediction, optimistic_prior, predict};

/// One provider serving the model, as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// Provider index.
    pub index: usize,
    /// Provider id.
    pub id: &'a str,
    /// What the health model published.
    pub view: &'a ProviderView,
    /// Attempts open now.
    pub in_flight: i64,
    /// Price per million output tokens (for the price term).
    pub price: f64,
    /// The provider's probe slot is free.
    pub probe_free: bool,
}

/// Everything a routing decision depends on.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Policy.
    pub policy: Policy,
    /// Routing knobs.
    pub cfg: &'a RoutingConfig,
    /// Service-level targets.
    pub targets: &'a Targets,
    /// Providers serving the model, configuration order.
    pub options: Vec<Choice<'a>>,
    /// Output tokens the request is expected to produce.
    pub expected_output_tokens: f64,
    /// Remaining client deadline.
    pub deadline_left: Option<Duration>,
    /// Now.
    pub now: Instant,
    /// Round-robin turn.
    pub turn: usize,
    /// Random bits.
    pub random: u64,
}

/// One candidate in the decision, as recorded in the request log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Provider id.
    pub provider: String,
    /// Health state at decision time.
    pub state: String,
    /// Policy score (higher is better), where the policy scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Predicted time to complete, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_ms: Option<f64>,
    /// `chosen`, `probe`, `failover` or `skipped`.
    pub decision: String,
    /// Why.
    pub reason: String,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Provider indices to try, first choice first.
    pub order: Vec<usize>,
    /// Every candidate with its score and decision.
    pub candidates: Vec<Candidate>,
    /// Why the first choice was made (`x-candor-route`).
    pub reason: String,
    /// The first choice is a probe of a recovering provider.
    pub probe: Option<usize>,
    /// Set when no provider can answer within the client's deadline.
    pub deadline_unmet: Option<String>,
}

/// A candidate being weighed.
#[derive(Debug, Clone)]
struct Weighed<'a> {
    opt: Choice<'a>,
    pred: Prediction,
    score: f64,
    skip: Option<String>,
    /// Excluded by health (ejection, cooldown, recovering) but usable as a last resort.
    soft_skip: bool,
}

/// Decides the order of attempts for one request.
pub fn plan(input: &Input<'_>) -> Plan {
    if input.options.is_empty() {
        return Plan {
            order: Vec::new(),
            candidates: Vec::new(),
            reason: "no provider serves this model".into(),
            probe: None,
            deadline_unmet: None,
        };
    }
    let max_price = input
        .options
        .iter()
        .map(|o| o.price)
        .fold(0.0_f64, f64::max);
    let prior = optimistic_prior(&input.options);
    let mut probe = None;
    let mut weighed: Vec<Weighed<'_>> = input
        .options
        .iter()
        .map(|o| {
            let pred = predict(o, input, prior);
            let mut w = Weighed {
                opt: *o,
                score: score::score(
                    &pred,
                    o,
                    if max_price > 0.0 {
                        input.cfg.price_weight * o.price / max_price
                    } else {
                        0.0
                    },
                ),
                pred,
                skip: None,
                soft_skip: false,
            };
            if let Some(until) = o.view.retry_after_until
                && until > input.now
            {
                w.skip = Some(format!(
                    "asked for no traffic for {} more ms (retry-after)",
                    until.saturating_duration_since(input.now).as_millis()
                ));
                w.soft_skip = true;
            }
            match (input.policy, o.view.state) {
                (Policy::Candor, State::Ejected { until }) => {
                    w.skip = Some(format!(
                        "ejected for {} more s: {}",
                        until.saturating_duration_since(input.now).as_secs(),
                        evidence_summary(o.view)
                    ));
                    w.soft_skip = true;
                }
                (Policy::Candor, State::Recovering { successes }) if w.skip.is_none() => {
                    if probe.is_none() && o.probe_free && !deadline_blocks(&w, input) {
                        probe = Some(o.index);
                    } else {
                        w.skip = Some(format!(
                            "recovering ({successes} of {} probes passed); not probed by this request",
                            input.cfg.probe_successes
                        ));
                        w.soft_skip = true;
                    }
                }
                (Policy::ErrorCooldown, _) => {
                    if let Some(until) = o.view.cooldown_until
                        && until > input.now
                    {
                        w.skip = Some(
                            "cooling down: more than half of this minute's requests failed".into(),
                        );
                        w.soft_skip = true;
                    }
                }
                _ => {}
            }
            if let Some(left) = input.deadline_left
                && w.skip.is_none()
                && w.pred.ttft_s >= left.as_secs_f64()
            {
                w.skip = Some(format!(
                    "cannot meet the deadline: predicted first token in {:.0} ms, {} ms left",
                    w.pred.ttft_s * 1000.0,
                    left.as_millis()
                ));
            }
            w
        })
        .collect();

    let usable = weighed
        .iter()
        .filter(|w| w.skip.is_none() && Some(w.opt.index) != probe)
        .count();
    if usable == 0 && probe.is_none() {
        // Never refuse service because of health alone: if every candidate is excluded by
        // health, use them all (the deadline still applies).
        let mut any = false;
        for w in &mut weighed {
            if w.soft_skip && !deadline_blocks(w, input) {
                w.skip = None;
                any = true;
            }
        }
        if !any {
            let fastest = weighed
                .iter()
                .map(|w| w.pred.ttft_s)
                .fold(f64::INFINITY, f64::min);
            let msg = format!(
                "No provider can answer within the remaining deadline of {} ms (fastest predicted first token: {:.0} ms).",
                input.deadline_left.map_or(0, |d| d.as_millis()),
                fastest * 1000.0
            );
            return Plan {
                order: Vec::new(),
                candidates: record(&weighed, &[], None, ""),
                reason: "deadline".into(),
                probe: None,
                deadline_unmet: Some(msg),
            };
        }
    }

    let pool: Vec<usize> = (0..weighed.len())
        .filter(|&i| weighed[i].skip.is_none() && Some(weighed[i].opt.index) != probe)
        .collect();
    let (mut order, reason) = match input.policy {
        Policy::Candor => score::choose(&weighed_scores(&weighed), &pool, input),
        Policy::RoundRobin => {
            let start = input.turn % pool.len().max(1);
            let order: Vec<usize> = pool[start..]
                .iter()
                .chain(&pool[..start])
                .copied()
                .collect();
            (
                order,
                format!("round_robin: turn {} of {}", start + 1, pool.len()),
            )
        }
        Policy::LeastBusy => {
            let mut order = pool;
            let r = input.random;
            order.sort_by_key(|&i| (weighed[i].opt.in_flight, mix(r ^ i as u64)));
            let reason = order.first().map_or_else(String::new, |&i| {
                format!("least_busy: {} in flight", weighed[i].opt.in_flight)
            });
            (order, reason)
        }
        Policy::ErrorCooldown => {
            let mut order = pool;
            let r = input.random;
            order.sort_by_key(|&i| mix(r ^ i as u64));
            (
                order,
                "error_cooldown: random among providers not cooling down".into(),
            )
        }
    };
    let mut reason = reason;
    if let Some(p) = probe
        && let Some(i) = weighed.iter().position(|w| w.opt.index == p)
    {
        order.insert(0, i);
        reason = format!(
            "probe: {} is recovering; real requests test it before it gets traffic again",
            weighed[i].opt.id
        );
    }
    let candidates = record(&weighed, &order, probe, &reason);
    Plan {
        order: order.iter().map(|&i| weighed[i].opt.index).collect(),
        candidates,
        reason,
        probe,
        deadline_unmet: None,
    }
}

fn deadline_blocks(w: &Weighed<'_>, input: &Input<'_>) -> bool {
    input
        .deadline_left
        .is_some_and(|left| w.pred.ttft_s >= left.as_secs_f64())
}

fn weighed_scores<'a>(w: &[Weighed<'a>]) -> Vec<(f64, bool, &'a str)> {
    w.iter()
        .map(|w| (w.score, w.pred.feasible, w.opt.id))
        .collect()
}

fn evidence_summary(v: &ProviderView) -> String {
    v.evidence
        .first()
        .map_or_else(|| "no evidence recorded".into(), |e| e.detail.clone())
}

fn record(
    weighed: &[Weighed<'_>],
    order: &[usize],
    probe: Option<usize>,
    reason: &str,
) -> Vec<Candidate> {
    weighed
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let position = order.iter().position(|&o| o == i);
            let (decision, why) = match (&w.skip, position) {
                (Some(s), _) => ("skipped", s.clone()),
                (None, Some(0)) if probe == Some(w.opt.index) => ("probe", reason.to_owned()),
                (None, Some(0)) => ("chosen", reason.to_owned()),
                (None, Some(n)) => ("failover", format!("failover #{n}")),
                (None, None) => ("skipped", "not in the plan".into()),
            };
            Candidate {
                provider: w.opt.id.to_owned(),
                state: w.opt.view.state.name().to_owned(),
                score: w.score.is_finite().then_some(w.score),
                predicted_ms: Some(w.pred.e2e_s * 1000.0),
                decision: decision.into(),
                reason: if w.pred.feasible || w.skip.is_some() {
                    why
                } else {
                    format!("{why}; predicted to miss the targets")
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
