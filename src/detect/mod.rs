//! Failure-mode detectors: pure functions over the health model's windows and the scraped
//! backend metrics, stepped on the health task's tick. Each emits findings with the failure
//! mode's name, the provider, a severity, the onset (when the signal began to move, not when
//! the alarm fired), the evidence and a suggested action. Findings become incidents
//! (`crate::incident`).

mod capacity;
mod cascade;
pub mod cusum;
mod provider;
mod quality;

use serde::Serialize;
use tokio::time::Instant;

pub use capacity::{CapacityWatch, Folding, Member, ModelInput, fold};
pub use cascade::{DependencyWatch, GatewayDetectors, GatewayInput};
pub use provider::{ProviderDetectors, ProviderInput, late_after};
pub use quality::{PeerPool, QualityDetector};

/// The failure modes Candor names (DESIGN §2), the ordinary failures, and the business-metric
/// alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// FM 1: outputs degrade with no error (canaries and output drift).
    SilentQualityDegradation,
    /// FM 2: preemptions and mid-stream stalls; P99 up, P50 and errors flat.
    KvCacheThrashing,
    /// FM 3: requests in flight, no token progress, health endpoint still 200.
    BatchQueueDeadlock,
    /// FM 4: decode rate below the provider's own baseline and its peers, no errors.
    HardwareDegradation,
    /// FM 5: a dependency before the gateway slowed; client deadlines run out.
    CascadingTimeouts,
    /// 5xx and timeouts.
    ErrorBurst,
    /// 429s.
    RateLimited,
    /// Cannot connect.
    ConnectionFailures,
    /// Streams broken after their first token.
    MidStreamResets,
    /// The share of requests served within the targets burns the error budget too fast.
    SloBurn,
    /// Successful completions per minute fell against their baseline.
    CompletionsDrop,
    /// A model's demand exceeds what its providers in rotation can serve.
    CapacityExhausted,
    /// A share of a provider's requests delayed by seconds, its median and errors flat.
    TailLatency,
}

impl Mode {
    /// The name in JSON, metrics and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SilentQualityDegradation => "silent_quality_degradation",
            Mode::KvCacheThrashing => "kv_cache_thrashing",
            Mode::BatchQueueDeadlock => "batch_queue_deadlock",
            Mode::HardwareDegradation => "hardware_degradation",
            Mode::CascadingTimeouts => "cascading_timeouts",
            Mode::ErrorBurst => "error_burst",
            Mode::RateLimited => "rate_limited",
            Mode::ConnectionFailures => "connection_failures",
            Mode::MidStreamResets => "mid_stream_resets",
            Mode::SloBurn => "slo_burn",
            Mode::CompletionsDrop => "completions_drop",
            Mode::CapacityExhausted => "capacity_exhausted",
            Mode::TailLatency => "tail_latency",
        }
    }

    /// The name in words.
    pub fn title(self) -> &'static str {
        match self {
            Mode::SilentQualityDegradation => "silent quality degradation",
            Mode::KvCacheThrashing => "KV-cache thrashing",
            Mode::BatchQueueDeadlock => "batch-queue deadlock",
            Mode::HardwareDegradation => "hardware degradation",
            Mode::CascadingTimeouts => "cascading timeouts",
            Mode::ErrorBurst => "error burst",
            Mode::RateLimited => "rate limited",
            Mode::ConnectionFailures => "connection failures",
            Mode::MidStreamResets => "mid-stream resets",
            Mode::SloBurn => "SLO error budget burning",
            Mode::CompletionsDrop => "completions per minute dropped",
            Mode::CapacityExhausted => "capacity exhausted",
            Mode::TailLatency => "intermittent tail latency",
        }
    }

    /// Every mode.
    pub const ALL: [Mode; 13] = [
        Mode::SilentQualityDegradation,
        Mode::KvCacheThrashing,
        Mode::BatchQueueDeadlock,
        Mode::HardwareDegradation,
        Mode::CascadingTimeouts,
        Mode::ErrorBurst,
        Mode::RateLimited,
        Mode::ConnectionFailures,
        Mode::MidStreamResets,
        Mode::SloBurn,
        Mode::CompletionsDrop,
        Mode::CapacityExhausted,
        Mode::TailLatency,
    ];

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a ticket: degraded, users mostly served.
    Warning,
    /// Worth a page: users are hurt now.
    Critical,
}

impl Severity {
    /// The name in JSON and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One signal behind a finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    /// Signal name (`decode_tokens_per_s`, `stall_share`, …).
    pub signal: &'static str,
    /// Its current value.
    pub value: f64,
    /// What it normally is (the provider's own baseline, its peers, or the dependency's).
    pub baseline: Option<f64>,
    /// The threshold it crossed.
    pub threshold: Option<f64>,
    /// Unit of value, baseline and threshold.
    pub unit: &'static str,
    /// In words.
    pub detail: String,
}

impl Fact {
    pub(crate) fn new(
        signal: &'static str,
        value: f64,
        unit: &'static str,
        detail: String,
    ) -> Fact {
        Fact {
            signal,
            value,
            baseline: None,
            threshold: None,
            unit,
            detail,
        }
    }

    pub(crate) fn baseline(mut self, b: Option<f64>) -> Fact {
        self.baseline = b;
        self
    }

    pub(crate) fn threshold(mut self, t: f64) -> Fact {
        self.threshold = Some(t);
        self
    }
}

/// The component named as the probable root cause of a cascade.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootCause {
    /// The watched dependency.
    pub component: String,
    /// When its latency began to rise (Unix ms).
    pub onset_unix_ms: i64,
    /// How long before the gateway's symptoms it moved, seconds.
    pub lead_s: f64,
    /// In words.
    pub detail: String,
}

/// What a detector found at one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The failure mode.
    pub mode: Mode,
    /// What it is about: a provider id, or `gateway`.
    pub subject: String,
    /// The provider, when it is about one.
    pub provider: Option<String>,
    /// How urgent.
    pub severity: Severity,
    /// When the signal began to move (Unix ms).
    pub onset_unix_ms: i64,
    /// One line in words.
    pub summary: String,
    /// The signals behind it.
    pub facts: Vec<Fact>,
    /// What to do (and what Candor already did).
    pub action: String,
    /// For cascades: the component that moved first.
    pub root_cause: Option<RootCause>,
}

impl Finding {
    /// Identity across ticks: one incident per mode and subject.
    pub fn key(&self) -> String {
        format!("{}/{}", self.mode.as_str(), self.subject)
    }
}

/// Converts monotonic instants to Unix milliseconds, anchored at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The anchor.
    pub at: Instant,
    /// The anchor in Unix ms.
    pub unix_ms: i64,
}

impl Clock {
    /// `t` in Unix ms.
    pub fn ms(&self, t: Instant) -> i64 {
        if t >= self.at {
            self.unix_ms + t.duration_since(self.at).as_millis() as i64
        } else {
            self.unix_ms - self.at.duration_since(t).as_millis() as i64
        }
    }

    /// Clock time of `t` as `HH:MM:SS` UTC.
    pub fn hms(&self, t: Instant) -> String {
        hms(self.ms(t))
    }
}

/// Unix ms as `HH:MM:SS` UTC.
pub fn hms(unix_ms: i64) -> String {
    let s = unix_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests;
