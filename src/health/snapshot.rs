//! The read-only view of every provider that the router reads without locks: published by
//! the health task (an `ArcSwap` store) on every tick and state change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::baseline::Reference;
use super::state::{Evidence, State};
use crate::scrape::Backend;

/// Everything the router knows about one provider.
#[derive(Debug, Clone)]
pub struct ProviderView {
    /// State.
    pub state: State,
    /// Since when.
    pub since: Instant,
    /// Why.
    pub evidence: Vec<Evidence>,
    /// Ejections in a row.
    pub ejections: u32,
    /// Recent median TTFT, s.
    pub ttft_p50: Option<f64>,
    /// Recent P95 TTFT, s.
    pub ttft_p95: Option<f64>,
    /// Per-stream decode rate now, tokens/s.
    pub decode: Option<f64>,
    /// Mean completion tokens of recent answers.
    pub mean_output_tokens: Option<f64>,
    /// The learned baseline at the current load.
    pub baseline: Option<Reference>,
    /// The provider's own metrics, when fresh.
    pub backend: Option<Backend>,
    /// True when metrics are configured but failing or stale (unknown, never healthy).
    pub backend_unknown: bool,
    /// The error-cooldown policy's cooldown (LiteLLM semantics).
    pub cooldown_until: Option<Instant>,
    /// The provider asked for no traffic until then (`retry-after`).
    pub retry_after_until: Option<Instant>,
    /// An incident open on the provider: (id, failure mode).
    pub incident: Option<(Arc<str>, Arc<str>)>,
}

impl ProviderView {
    /// A provider nothing is known about yet.
    pub fn new(now: Instant) -> ProviderView {
        ProviderView {
            state: State::Healthy,
            since: now,
            evidence: Vec::new(),
            ejections: 0,
            ttft_p50: None,
            ttft_p95: None,
            decode: None,
            mean_output_tokens: None,
            baseline: None,
            backend: None,
            backend_unknown: false,
            cooldown_until: None,
            retry_after_until: None,
            incident: None,
        }
    }
}

/// Every provider, by configuration index.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Views by provider index.
    pub providers: Vec<ProviderView>,
}

/// The shared cell the health task writes and the router reads.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
