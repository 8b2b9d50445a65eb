//! Output quality: descriptors of every response (computed on the request path without
//! storing bodies), canary probes with their checks, and the JSON-schema subset they use.
//! Pure; the canary runner (`crate::canary`) sends the probes and the quality detector
//! (`crate::detect`) judges the results.

pub mod descriptors;
pub mod probe;
pub mod schema;
pub mod stats;

use serde::Serialize;
use tokio::time::Instant;

/// The signals a canary fails on that are about availability, not content: they feed the
/// deadlock and error detectors, not the quality one.
pub const AVAILABILITY: [&str; 2] = ["no_first_token", "error"];

/// One run of one probe against one provider and model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryResult {
    /// Provider index.
    #[serde(skip)]
    pub provider: usize,
    /// Provider id.
    pub provider_id: String,
    /// Model probed.
    pub model: String,
    /// Probe name.
    pub probe: String,
    /// When it was sent (Unix ms).
    pub at_unix_ms: i64,
    /// When it was sent.
    #[serde(skip)]
    pub at: Instant,
    /// End to end of the (first) request, ms.
    pub latency_ms: Option<f64>,
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Decode tokens per second.
    pub decode_tps: Option<f64>,
    /// Passed.
    pub pass: bool,
    /// The signal that failed.
    pub signal: Option<&'static str>,
    /// In words.
    pub reason: String,
    /// A failure that counts toward quality: the probe has passed on this provider before,
    /// or passes on a peer serving the same model (a probe this model never passes says
    /// nothing about a change).
    pub counted: bool,
    /// The start of the answer (synthetic: no user data).
    pub answer: String,
}

impl CanaryResult {
    /// True when it failed on availability (no first token, an error).
    pub fn unavailable(&self) -> bool {
        self.signal.is_some_and(|s| AVAILABILITY.contains(&s))
    }
}
