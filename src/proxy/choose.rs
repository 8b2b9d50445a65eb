//! Builds the router's input for one request from the health snapshot and the providers'
//! live counters, and asks `route::plan` for the order of attempts.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Gateway;
use super::body::RequestHead;
use crate::health::snapshot::Snapshot;
use crate::route::{self, Choice, Input, Plan};

/// Output length assumed when neither the request nor recent answers say.
const DEFAULT_OUTPUT_TOKENS: f64 = 256.0;

/// The plan for `head` at `now`, from `snapshot` (loaded once for the request).
pub(super) fn plan(
    gw: &Arc<Gateway>,
    snapshot: &Snapshot,
    head: &RequestHead,
    deadline: Option<Instant>,
    now: Instant,
) -> Plan {
    let upstreams = gw.upstreams();
    let serving = upstreams.serving(&head.model);
    let mut options = Vec::with_capacity(serving.len());
    for &i in serving {
        let (Some(p), Some(view)) = (upstreams.get(i), snapshot.providers.get(i)) else {
            continue;
        };
        options.push(Choice {
            index: i,
            id: &p.config.id,
            view,
            in_flight: p.in_flight(),
            price: p.config.price.output_per_million + p.config.price.input_per_million,
            probe_free: p.probe_free(),
        });
    }
    // What recent answers for this model looked like, capped by what the client allows.
    let typical = options
        .iter()
        .filter_map(|o| o.view.mean_output_tokens)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    let expected = match (head.max_tokens, typical) {
        (Some(max), Some(t)) => t.min(max as f64),
        (Some(max), None) => (max as f64).min(DEFAULT_OUTPUT_TOKENS),
        (None, Some(t)) => t,
        (None, None) => DEFAULT_OUTPUT_TOKENS,
    };
    route::plan(&Input {
        policy: gw.config.routing.policy,
        cfg: &gw.config.routing,
        targets: &gw.config.targets,
        options,
        expected_output_tokens: expected,
        deadline_left: deadline.map(|d| d.saturating_duration_since(now)),
        now,
        turn: gw.rotation.fetch_add(1, Ordering::Relaxed),
        random: gw.dice.next_u64(),
    })
}

/// The plan for a request pinned to provider `i` (a canary): that provider alone, if it
/// serves the model.
pub(super) fn pinned(gw: &Arc<Gateway>, head: &RequestHead, i: usize) -> Plan {
    let upstreams = gw.upstreams();
    let serves = upstreams.serving(&head.model).contains(&i);
    let id = upstreams.get(i).map_or("?", |p| p.config.id.as_str());
    Plan {
        order: if serves { vec![i] } else { Vec::new() },
        candidates: Vec::new(),
        reason: format!("canary pinned to {id}"),
        probe: None,
        deadline_unmet: None,
    }
}
