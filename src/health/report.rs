//! The performance health report behind `GET /health`: window statistics, breached bounds
//! and a verdict, overall and per provider. Pure: built from windows and `now`.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::window::{Slot, Window};
use crate::config::{HealthConfig, Targets};

/// The judgement on a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every bound holds (or there is not yet enough traffic to judge).
    WithinBounds,
    /// At least one bound is breached.
    Degraded,
    /// Most requests fail or miss their targets.
    Failing,
}

impl Verdict {
    /// The name used in JSON and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::WithinBounds => "within_bounds",
            Verdict::Degraded => "degraded",
            Verdict::Failing => "failing",
        }
    }
}

/// P50/P95/P99 in milliseconds (absent without data).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// Statistics over one window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowStats {
    /// Requests (attempts, for a provider) that ended in the window.
    pub requests: u64,
    /// Of which failed (upstream or gateway at fault).
    pub errors: u64,
    /// errors / requests.
    pub error_rate: Option<f64>,
    /// Of which met every target.
    pub within_targets: u64,
    /// within_targets / requests.
    pub within_targets_share: Option<f64>,
    /// Successful completions per minute.
    pub completions_per_min: f64,
    /// Time to first token, ms.
    pub ttft_ms: Quantiles,
    /// End to end, ms.
    pub e2e_ms: Quantiles,
    /// Inter-token latency, ms.
    pub itl_ms: Quantiles,
    /// Median decode rate, tokens/s.
    pub decode_tokens_per_s_p50: Option<f64>,
    /// Longest gap between chunks per request, ms.
    pub max_gap_ms: Quantiles,
    /// Mean requests in flight when these started.
    pub in_flight_mean: Option<f64>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
}

impl WindowStats {
    /// Statistics from merged slots covering `span`.
    pub fn from_slot(s: &Slot, span: Duration) -> WindowStats {
        let ratio = |n: u64| (s.requests > 0).then(|| n as f64 / s.requests as f64);
        let q = |h: &super::window::LogHistogram| Quantiles {
            p50: h.quantile(0.50).map(|v| v * 1000.0),
            p95: h.quantile(0.95).map(|v| v * 1000.0),
            p99: h.quantile(0.99).map(|v| v * 1000.0),
        };
        WindowStats {
            requests: s.requests,
            errors: s.failed,
            error_rate: ratio(s.failed),
            within_targets: s.within_targets,
            within_targets_share: ratio(s.within_targets),
            completions_per_min: s.completed as f64 * 60.0 / span.as_secs_f64().max(1.0),
            ttft_ms: q(&s.ttft),
            e2e_ms: q(&s.e2e),
            itl_ms: q(&s.itl),
            decode_tokens_per_s_p50: s.decode.quantile(0.5),
            max_gap_ms: q(&s.max_gap),
            in_flight_mean: s.mean_in_flight(),
            tokens_in: s.tokens_in,
            tokens_out: s.tokens_out,
        }
    }
}

/// A bound that does not hold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breach {
    /// Which bound (`ttft_p95_ms`, `e2e_p95_ms`, `decode_tokens_per_s_p50`, `error_rate`).
    pub bound: &'static str,
    /// Measured value.
    pub value: f64,
    /// The target it breaks.
    pub limit: f64,
    /// The window judged (`1m`, or `5m` when the last minute had too little traffic).
    pub window: &'static str,
}

/// Statistics and judgement for one scope (the gateway overall, or one provider).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScopeReport {
    /// The verdict.
    pub verdict: Verdict,
    /// Bounds that do not hold.
    pub breached: Vec<Breach>,
    /// Why no judgement was possible, when there was too little traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Requests in flight now.
    pub in_flight: i64,
    /// Last minute.
    #[serde(rename = "1m")]
    pub one_minute: WindowStats,
    /// Last five minutes.
    #[serde(rename = "5m")]
    pub five_minutes: WindowStats,
    /// Last hour.
    #[serde(rename = "1h")]
    pub one_hour: WindowStats,
}

/// The window spans reported.
pub const ONE_MINUTE: Duration = Duration::from_secs(60);
/// The window spans reported.
pub const FIVE_MINUTES: Duration = Duration::from_secs(300);
/// The window spans reported.
pub const ONE_HOUR: Duration = Duration::from_secs(3600);

/// A scope's windows: 5-second slots for the last five minutes, 1-minute slots for the hour.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Fine window.
    pub fine: Window,
    /// Coarse window.
    pub hour: Window,
}

impl Windows {
    /// Empty windows starting at `now`.
    pub fn new(now: Instant) -> Windows {
        Windows {
            fine: Window::new(now, Duration::from_secs(5), 60),
            hour: Window::new(now, Duration::from_secs(60), 60),
        }
    }

    /// Records into both.
    pub fn record(&mut self, now: Instant, s: &super::window::Sample<'_>) {
        self.fine.record(now, s);
        self.hour.record(now, s);
    }
}

impl ScopeReport {
    /// Judges a window against the targets.
    pub fn judge(
        windows: &Windows,
        now: Instant,
        in_flight: i64,
        targets: &Targets,
        health: &HealthConfig,
    ) -> ScopeReport {
        let window = &windows.fine;
        let one = WindowStats::from_slot(
            &window.sum(now, ONE_MINUTE),
            window.covered(now, ONE_MINUTE),
        );
        let five = WindowStats::from_slot(
            &window.sum(now, FIVE_MINUTES),
            window.covered(now, FIVE_MINUTES),
        );
        let (judged, label) = if one.requests >= health.min_requests {
            (Some(&one), "1m")
        } else if five.requests >= health.min_requests {
            (Some(&five), "5m")
        } else {
            (None, "")
        };
        let mut report = ScopeReport {
            verdict: Verdict::WithinBounds,
            breached: Vec::new(),
            note: None,
            in_flight,
            one_minute: one.clone(),
            five_minutes: five.clone(),
            one_hour: WindowStats::from_slot(
                &windows.hour.sum(now, ONE_HOUR),
                windows.hour.covered(now, ONE_HOUR),
            ),
        };
        let Some(w) = judged else {
            report.note = Some(format!(
                "fewer than {} requests in 5 minutes: bounds not judged",
                health.min_requests
            ));
            return report;
        };
        let mut breach = |bound, value: Option<f64>, limit: f64, above: bool| {
            if let Some(v) = value
                && ((above && v > limit) || (!above && v < limit))
            {
                report.breached.push(Breach {
                    bound,
                    value: v,
                    limit,
                    window: label,
                });
            }
        };
        breach(
            "ttft_p95_ms",
            w.ttft_ms.p95,
            targets.ttft.as_secs_f64() * 1000.0,
            true,
        );
        breach(
            "e2e_p95_ms",
            w.e2e_ms.p95,
            targets.e2e.as_secs_f64() * 1000.0,
            true,
        );
        breach(
            "decode_tokens_per_s_p50",
            w.decode_tokens_per_s_p50,
            targets.decode_tokens_per_s,
            false,
        );
        breach("error_rate", w.error_rate, targets.error_rate, true);
        let failing = w.error_rate.is_some_and(|r| r >= health.failing_error_rate)
            || w.within_targets_share
                .is_some_and(|s| s < health.failing_within_targets);
        report.verdict = if failing {
            Verdict::Failing
        } else if report.breached.is_empty() {
            Verdict::WithinBounds
        } else {
            Verdict::Degraded
        };
        report
    }
}

/// The targets as shown in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetsView {
    /// TTFT bound, ms.
    pub ttft_ms: f64,
    /// Decode rate bound, tokens/s.
    pub decode_tokens_per_s: f64,
    /// End-to-end bound, ms.
    pub e2e_ms: f64,
    /// Error-rate bound.
    pub error_rate: f64,
}

impl From<&Targets> for TargetsView {
    fn from(t: &Targets) -> TargetsView {
        TargetsView {
            ttft_ms: t.ttft.as_secs_f64() * 1000.0,
            decode_tokens_per_s: t.decode_tokens_per_s,
            e2e_ms: t.e2e.as_secs_f64() * 1000.0,
            error_rate: t.error_rate,
        }
    }
}

/// One provider's report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderReport {
    /// Provider id.
    pub id: String,
    /// Models it serves.
    pub models: Vec<String>,
    /// Routing state: `healthy`, `degraded`, `ejected`, `recovering`.
    pub state: &'static str,
    /// Routing weight (1 healthy, 0 ejected).
    pub weight: f64,
    /// Why the state is what it is.
    pub evidence: Vec<super::state::Evidence>,
    /// What the provider's own metrics say.
    pub backend: BackendReport,
    /// Whether its own health endpoint answered 2xx at the last check (absent: not
    /// configured).
    pub health_endpoint_ok: Option<bool>,
    /// What the detectors found at the last tick.
    pub findings: Vec<crate::detect::Finding>,
    /// Per-stream decode rate now (live), tokens/s.
    pub decode_now: Option<f64>,
    /// Its learned healthy decode rate at the current load, tokens/s.
    pub baseline_decode_tokens_per_s: Option<f64>,
    /// Its learned healthy median TTFT at the current load, ms.
    pub baseline_ttft_ms: Option<f64>,
    /// How far its decode rate spreads from tick to tick when healthy at the current load,
    /// as a share of the baseline (its coefficient of variation): the hardware detector
    /// judges a drop in units of this spread (at least 0.1), so a noisier provider needs a
    /// deeper slowdown before it is named.
    pub baseline_decode_spread: Option<f64>,
    /// The latest result of each canary probe (per model).
    pub canaries: Vec<crate::quality::CanaryResult>,
    /// Statistics over its attempts, and its verdict.
    #[serde(flatten)]
    pub scope: ScopeReport,
}

/// The provider's own metrics as `/health` shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackendReport {
    /// `ok`, `unknown` (configured, but failing or stale) or `not_configured`.
    pub status: &'static str,
    /// Age of the reading, s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<f64>,
    /// Queue depth, running, KV and GPU memory use, rates.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<crate::scrape::Backend>,
}

/// The whole `/health` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthReport {
    /// Overall verdict: the worse of the gateway-wide judgement and "no provider usable".
    pub verdict: Verdict,
    /// Wall-clock time of the report.
    pub generated_at_unix_ms: i64,
    /// The targets judged against.
    pub targets: TargetsView,
    /// What clients experienced.
    pub overall: ScopeReport,
    /// Each provider, in configuration order.
    pub providers: Vec<ProviderReport>,
    /// Open incidents (their history is at `/api/incidents`).
    pub incidents: Vec<crate::incident::Incident>,
    /// Gateway-level findings of the last tick (cascades, SLO burn, capacity).
    pub findings: Vec<crate::detect::Finding>,
    /// Models whose demand exceeds what their providers in rotation can serve now: the
    /// providers are loaded, not broken.
    pub overloaded: Vec<String>,
    /// Watched dependencies.
    pub dependencies: Vec<DependencyReport>,
    /// Whether the request log keeps what it is sent.
    pub request_log: RequestLogReport,
    /// The last configuration reload (when, result, what changed); `None` before any.
    pub config_reload: Option<crate::reload::Outcome>,
}

/// The request log as `/health` shows it.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RequestLogReport {
    /// Rows and incident events lost since start (queue or buffer full, or refused by the
    /// database).
    pub rows_lost: u64,
    /// Rows and incident events held while the database cannot be written, to be written
    /// once it can.
    pub rows_buffered: u64,
    /// Since when its writes have failed (Unix ms); `None` while they succeed.
    pub failing_since_unix_ms: Option<i64>,
}

/// A watched dependency as `/health` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DependencyReport {
    /// Name.
    pub name: String,
    /// Latest latency, ms.
    pub latency_ms: Option<f64>,
    /// Its learned normal, ms.
    pub baseline_ms: Option<f64>,
    /// The latest probe or scrape failed.
    pub failing: bool,
    /// Since when its latency has been anomalous (Unix ms).
    pub anomalous_since_unix_ms: Option<i64>,
}

impl HealthReport {
    /// True when at least one provider is not failing (readiness).
    pub fn any_provider_usable(&self) -> bool {
        self.providers
            .iter()
            .any(|p| p.scope.verdict != Verdict::Failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::window::Sample;

    fn targets() -> Targets {
        Targets {
            ttft: Duration::from_millis(500),
            decode_tokens_per_s: 20.0,
            e2e: Duration::from_secs(10),
            error_rate: 0.05,
        }
    }

    fn health() -> HealthConfig {
        HealthConfig {
            min_requests: 10,
            failing_error_rate: 0.5,
            failing_within_targets: 0.5,
        }
    }

    fn fill(w: &mut Windows, now: Instant, n: usize, ttft: f64, failed_every: usize) {
        for i in 0..n {
            let failed = failed_every > 0 && i % failed_every == 0;
            w.record(
                now,
                &Sample {
                    failed,
                    completed: !failed,
                    within_targets: !failed && ttft <= 0.5,
                    ttft: Some(ttft),
                    e2e: 2.0,
                    decode: Some(40.0),
                    ..Sample::default()
                },
            );
        }
    }

    #[test]
    fn healthy_traffic_is_within_bounds() {
        let now = Instant::now();
        let mut w = Windows::new(now);
        fill(&mut w, now, 50, 0.2, 0);
        let r = ScopeReport::judge(&w, now, 3, &targets(), &health());
        assert_eq!(r.verdict, Verdict::WithinBounds);
        assert!(r.breached.is_empty());
        assert_eq!(r.one_minute.requests, 50);
        assert!((r.one_minute.ttft_ms.p50.unwrap() - 200.0).abs() < 6.0);
    }

    #[test]
    fn slow_first_token_degrades_with_evidence() {
        let now = Instant::now();
        let mut w = Windows::new(now);
        fill(&mut w, now, 40, 0.2, 0);
        fill(&mut w, now, 10, 0.9, 0);
        let r = ScopeReport::judge(&w, now, 0, &targets(), &health());
        assert_eq!(r.verdict, Verdict::Degraded);
        assert_eq!(r.breached[0].bound, "ttft_p95_ms");
        assert_eq!(r.breached[0].window, "1m");
        assert!(r.breached[0].value > 850.0);
    }

    #[test]
    fn mostly_errors_is_failing() {
        let now = Instant::now();
        let mut w = Windows::new(now);
        fill(&mut w, now, 20, 0.2, 1);
        let r = ScopeReport::judge(&w, now, 0, &targets(), &health());
        assert_eq!(r.verdict, Verdict::Failing);
    }

    #[test]
    fn too_little_traffic_is_not_judged() {
        let now = Instant::now();
        let mut w = Windows::new(now);
        fill(&mut w, now, 3, 5.0, 1);
        let r = ScopeReport::judge(&w, now, 0, &targets(), &health());
        assert_eq!(r.verdict, Verdict::WithinBounds);
        assert!(r.note.is_some());
    }
}
