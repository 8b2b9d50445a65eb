//! The canary runner: every interval, each probe to each provider and model it applies to,
//! through the same request path as client traffic (pinned to the provider, tagged
//! synthetic so it never counts in SLA figures), judged, and handed to the health task.

mod send;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::proxy::Gateway;
use crate::quality::CanaryResult;
use crate::quality::probe::{self, Memory, Probe};
use send::Sent;

/// Client key id canary requests carry in the request log.
pub const KEY_ID: &str = "candor-canary";
/// A canary's first token may take this long at least (reference §9: `max(5 s, 3 × P99)`).
const MIN_TTFT_LIMIT: Duration = Duration::from_secs(5);

/// What the runner remembers per provider and probe.
#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    memory: Memory,
    passed_once: bool,
    passed_last: bool,
}

/// One (provider, model) target.
#[derive(Debug, Clone)]
struct Target {
    provider: usize,
    id: String,
    model: String,
}

/// Runs canaries until `stop`: the first round one interval after start, then every
/// interval.
pub async fn run(gw: Arc<Gateway>, stop: CancellationToken) {
    let cfg = gw.config.canaries.clone();
    let probes = probe::probes(&cfg);
    let mut states: BTreeMap<(usize, String, String), ProbeState> = BTreeMap::new();
    let mut tick = tokio::time::interval_at(Instant::now() + cfg.interval, cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let due: Vec<&Probe> = probes
            .iter()
            .filter(|p| round.is_multiple_of(p.every))
            .collect();
        round = round.wrapping_add(1);
        // Read each round: a configuration reload adds and removes providers.
        let targets = targets(&gw);
        let runs = targets.iter().map(|t| {
            let gw = &gw;
            let due = &due;
            async move {
                let limit = ttft_limit(gw, t.provider).min(cfg.timeout);
                let sends = due
                    .iter()
                    .filter(|p| applies(p, &t.model))
                    .map(|p| async move {
                        (
                            *p,
                            send::run(gw, t.provider, &t.model, p, limit, cfg.timeout).await,
                        )
                    });
                (t, join_all(sends).await)
            }
        });
        let done = tokio::select! {
            d = join_all(runs) => d,
            () = stop.cancelled() => return,
        };
        for r in judge_round(&done, &mut states) {
            gw.health.canary(r);
        }
    }
}

/// Every (provider in service, model it serves).
fn targets(gw: &Gateway) -> Vec<Target> {
    gw.upstreams()
        .active()
        .flat_map(|(i, p)| {
            p.config.models.iter().map(move |m| Target {
                provider: i,
                id: p.config.id.clone(),
                model: m.clone(),
            })
        })
        .collect()
}

fn applies(p: &Probe, model: &str) -> bool {
    p.models.is_empty() || p.models.iter().any(|m| m == model)
}

/// `max(5 s, 3 × the provider's recent P95 TTFT)`.
fn ttft_limit(gw: &Gateway, provider: usize) -> Duration {
    let snapshot = gw.snapshot.load();
    let p95 = snapshot
        .providers
        .get(provider)
        .and_then(|v| v.ttft_p95)
        .unwrap_or(0.0);
    MIN_TTFT_LIMIT.max(Duration::from_secs_f64((3.0 * p95).min(3600.0)))
}

/// Judges every run of a round. A failure counts toward quality when the probe passed on
/// this provider before or passed on a peer serving the same model in its latest run.
fn judge_round(
    done: &[(&Target, Vec<(&Probe, Sent)>)],
    states: &mut BTreeMap<(usize, String, String), ProbeState>,
) -> Vec<CanaryResult> {
    let mut results = Vec::new();
    for (t, runs) in done {
        for (p, sent) in runs {
            let key = (t.provider, t.model.clone(), p.name.clone());
            let mut st = states.get(&key).copied().unwrap_or_default();
            let verdict = match &sent.failure {
                Some((signal, reason)) => probe::Verdict {
                    pass: false,
                    signal: Some(signal),
                    reason: reason.clone(),
                    diversity: None,
                },
                None => probe::judge(p, &sent.outputs, &mut st.memory),
            };
            let peers_pass = states.iter().any(|((i, m, name), s)| {
                *i != t.provider && *m == t.model && *name == p.name && s.passed_last
            });
            st.passed_last = verdict.pass;
            st.passed_once |= verdict.pass;
            states.insert(key, st);
            results.push(CanaryResult {
                provider: t.provider,
                provider_id: t.id.clone(),
                model: t.model.clone(),
                probe: p.name.clone(),
                at_unix_ms: sent.at_unix_ms,
                at: sent.at,
                latency_ms: sent.latency.map(|d| d.as_secs_f64() * 1000.0),
                ttft_ms: sent.ttft.map(|d| d.as_secs_f64() * 1000.0),
                decode_tps: sent.decode_tps,
                pass: verdict.pass,
                counted: !verdict.pass && (st.passed_once || peers_pass),
                signal: verdict.signal,
                reason: verdict.reason,
                answer: sent
                    .outputs
                    .first()
                    .map(|o| probe::excerpt(&o.text))
                    .unwrap_or_default(),
            });
        }
    }
    results
}
