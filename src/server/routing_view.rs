//! A provider's routing state as the admin API shows it: state, weight, evidence with
//! wall-clock times, predictions, baseline and the provider's own metrics.

use serde::Serialize;
use tokio::time::Instant;

use crate::health::snapshot::ProviderView;
use crate::health::state::{Evidence, State};

/// A provider's routing state as the admin API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct RoutingView {
    state: &'static str,
    weight: f64,
    since_unix_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ejected_until_unix_ms: Option<i64>,
    ejections_in_a_row: u32,
    evidence: Vec<EvidenceView>,
    predicted_ttft_ms: Option<f64>,
    decode_tokens_per_s: Option<f64>,
    baseline_ttft_ms: Option<f64>,
    baseline_decode_tokens_per_s: Option<f64>,
    backend: Option<crate::scrape::Backend>,
    backend_unknown: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_until_unix_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct EvidenceView {
    #[serde(flatten)]
    evidence: Evidence,
    since_unix_ms: Option<i64>,
}

/// Wall-clock Unix ms of the monotonic instant `t`, given both clocks now.
fn unix_ms_at(t: Instant, now: Instant, now_unix: i64) -> i64 {
    let delta = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if t >= now {
        now_unix.saturating_add(delta(t - now))
    } else {
        now_unix.saturating_sub(delta(now - t))
    }
}

impl RoutingView {
    pub(crate) fn of(v: &ProviderView, now: Instant, now_unix: i64) -> RoutingView {
        let at = |t: Instant| unix_ms_at(t, now, now_unix);
        RoutingView {
            state: v.state.name(),
            weight: v.state.weight(),
            since_unix_ms: at(v.since),
            ejected_until_unix_ms: match v.state {
                State::Ejected { until } => Some(at(until)),
                _ => None,
            },
            ejections_in_a_row: v.ejections,
            evidence: v
                .evidence
                .iter()
                .map(|e| EvidenceView {
                    evidence: e.clone(),
                    since_unix_ms: e.since.map(at),
                })
                .collect(),
            predicted_ttft_ms: v.ttft_p50.map(|s| s * 1000.0),
            decode_tokens_per_s: v.decode,
            baseline_ttft_ms: v.baseline.and_then(|b| b.ttft).map(|s| s * 1000.0),
            baseline_decode_tokens_per_s: v.baseline.and_then(|b| b.decode),
            backend: v.backend.clone(),
            backend_unknown: v.backend_unknown,
            retry_after_until_unix_ms: v.retry_after_until.map(at),
        }
    }
}
