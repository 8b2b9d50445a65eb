//! The `[[dependency]]`, `[slo]` and `[alerts]` sections: components watched for cascading
//! timeouts, the business-metric objective and its time base, and where incidents and SLO
//! alerts are sent.

use std::time::Duration;

use serde::Deserialize;

use super::Secret;

/// How a dependency's latency is measured.
#[derive(Debug, Clone, PartialEq)]
pub enum DependencySource {
    /// Timed HTTP request; a non-2xx answer or a timeout counts as a failure.
    Probe {
        /// URL.
        url: String,
        /// `GET` or `POST`.
        method: String,
        /// JSON body for `POST`.
        body: Option<String>,
    },
    /// A latency metric in Prometheus text: a histogram (`_sum` / `_count`, the mean over
    /// each interval) or a gauge in seconds.
    Metric {
        /// The endpoint.
        url: String,
        /// The metric's base name.
        name: String,
    },
}

/// A component upstream of the gateway (a vector DB, a retriever) watched for latency.
#[derive(Debug, Clone, PartialEq)]
pub struct DependencyConfig {
    /// Name in findings (`vector-db`).
    pub name: String,
    /// How it is measured.
    pub source: DependencySource,
    /// How often.
    pub interval: Duration,
    /// Probe timeout (a timed-out probe counts as this latency).
    pub timeout: Duration,
}

/// The business-metric objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloConfig {
    /// Share of requests to serve within the targets (e.g. 0.99).
    pub objective: f64,
    /// Time compression of the burn-rate windows: 60 turns the 1 h window into 1 min
    /// (for tests and the demo); 1 in production.
    pub time_scale: f64,
    /// Completions per minute below this share of their baseline alert.
    pub completions_drop: f64,
    /// Least requests in a long window before its burn rate is judged.
    pub min_requests: u64,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            objective: 0.99,
            time_scale: 1.0,
            completions_drop: 0.5,
            min_requests: 20,
        }
    }
}

/// The kind of an alert sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// The incident as JSON.
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack,
    /// PagerDuty Events API v2 (trigger and resolve with a dedup key).
    Pagerduty,
}

/// Where alerts go.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Kind.
    pub kind: SinkKind,
    /// URL (a secret: webhook URLs often embed their token).
    pub url: Secret,
    /// PagerDuty routing key.
    pub routing_key: Option<Secret>,
    /// Least severity sent (`warning` or `critical`).
    pub min_severity: crate::detect::Severity,
}

/// Incident lifecycle and alert delivery.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// A finding absent this long resolves its incident.
    pub resolve_after: Duration,
    /// An incident re-notifies at most this often (on a severity change or a reopen).
    pub cooldown: Duration,
    /// Base of the dashboard links in alerts (default `http://{listen}/`).
    pub dashboard_url: Option<String>,
    /// Sinks.
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            resolve_after: Duration::from_secs(30),
            cooldown: Duration::from_secs(300),
            dashboard_url: None,
            sinks: Vec::new(),
        }
    }
}

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDependency {
    name: String,
    probe_url: Option<String>,
    probe_method: Option<String>,
    probe_body: Option<String>,
    metrics_url: Option<String>,
    latency_metric: Option<String>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlo {
    objective: Option<f64>,
    time_scale: Option<f64>,
    completions_drop: Option<f64>,
    min_requests: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    #[serde(default, with = "humantime_serde")]
    resolve_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    cooldown: Option<Duration>,
    dashboard_url: Option<String>,
    #[serde(default)]
    sinks: Vec<RawSink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: SinkKind,
    url: Option<String>,
    url_env: Option<String>,
    routing_key_env: Option<String>,
    min_severity: Option<String>,
}

/// Looks up a secret by environment variable, recording a problem when unset.
pub(crate) type SecretLookup<'a> = dyn FnMut(&str, &str, &mut Vec<String>) -> Option<Secret> + 'a;

pub(crate) fn validate_dependencies(
    raw: Vec<RawDependency>,
    problems: &mut Vec<String>,
) -> Vec<DependencyConfig> {
    let mut out: Vec<DependencyConfig> = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let path = format!("dependency[{i}]");
        if d.name.trim().is_empty() {
            problems.push(format!("{path}.name: must not be empty"));
        } else if out.iter().any(|o| o.name == d.name) {
            problems.push(format!("{path}.name: duplicate dependency {:?}", d.name));
        }
        let source = match (d.probe_url, d.metrics_url, d.latency_metric) {
            (Some(url), None, None) => {
                super::check_url(problems, &format!("{path}.probe_url"), &url);
                let method = d
                    .probe_method
                    .unwrap_or_else(|| "GET".into())
                    .to_uppercase();
                if method != "GET" && method != "POST" {
                    problems.push(format!("{path}.probe_method: GET or POST, got {method:?}"));
                }
                DependencySource::Probe {
                    url,
                    method,
                    body: d.probe_body,
                }
            }
            (None, Some(url), Some(name)) => {
                super::check_url(problems, &format!("{path}.metrics_url"), &url);
                DependencySource::Metric { url, name }
            }
            _ => {
                problems.push(format!(
                    "{path}: give either probe_url, or metrics_url with latency_metric"
                ));
                continue;
            }
        };
        let interval = d.interval.unwrap_or(Duration::from_secs(5));
        let timeout = d.timeout.unwrap_or(Duration::from_secs(2));
        if interval.is_zero() || timeout.is_zero() {
            problems.push(format!("{path}: interval and timeout must be above 0"));
        }
        out.push(DependencyConfig {
            name: d.name,
            source,
            interval,
            timeout,
        });
    }
    out
}

impl RawSlo {
    pub(crate) fn validate(self, problems: &mut Vec<String>) -> SloConfig {
        let d = SloConfig::default();
        let cfg = SloConfig {
            objective: self.objective.unwrap_or(d.objective),
            time_scale: self.time_scale.unwrap_or(d.time_scale),
            completions_drop: self.completions_drop.unwrap_or(d.completions_drop),
            min_requests: self.min_requests.unwrap_or(d.min_requests),
        };
        if !(cfg.objective > 0.0 && cfg.objective < 1.0) {
            problems.push(format!(
                "slo.objective: must be between 0 and 1 (exclusive), got {}",
                cfg.objective
            ));
        }
        if !(cfg.time_scale.is_finite() && (1.0..=100_000.0).contains(&cfg.time_scale)) {
            problems.push(format!(
                "slo.time_scale: must be between 1 and 100000, got {}",
                cfg.time_scale
            ));
        }
        if !(cfg.completions_drop > 0.0 && cfg.completions_drop < 1.0) {
            problems.push(format!(
                "slo.completions_drop: must be between 0 and 1 (exclusive), got {}",
                cfg.completions_drop
            ));
        }
        cfg
    }
}

impl RawAlerts {
    pub(crate) fn validate(
        self,
        secret: &mut SecretLookup<'_>,
        problems: &mut Vec<String>,
    ) -> AlertsConfig {
        let d = AlertsConfig::default();
        let mut sinks = Vec::new();
        for (i, s) in self.sinks.into_iter().enumerate() {
            let path = format!("alerts.sinks[{i}]");
            let url = match (s.url, s.url_env, s.kind) {
                (Some(u), None, _) => {
                    super::check_url(problems, &format!("{path}.url"), &u);
                    Some(Secret(u))
                }
                (None, Some(var), _) => secret(&format!("{path}.url_env"), &var, problems),
                (None, None, SinkKind::Pagerduty) => Some(Secret(PAGERDUTY_URL.into())),
                _ => {
                    problems.push(format!("{path}: give url or url_env (not both)"));
                    None
                }
            };
            let routing_key = match (&s.routing_key_env, s.kind) {
                (Some(var), SinkKind::Pagerduty) => {
                    secret(&format!("{path}.routing_key_env"), var, problems)
                }
                (None, SinkKind::Pagerduty) => {
                    problems.push(format!(
                        "{path}.routing_key_env: PagerDuty needs a routing key"
                    ));
                    None
                }
                (Some(_), _) => {
                    problems.push(format!(
                        "{path}.routing_key_env: only for kind = \"pagerduty\""
                    ));
                    None
                }
                (None, _) => None,
            };
            let min_severity = match s.min_severity.as_deref() {
                None | Some("warning") => crate::detect::Severity::Warning,
                Some("critical") => crate::detect::Severity::Critical,
                Some(other) => {
                    problems.push(format!(
                        "{path}.min_severity: warning or critical, got {other:?}"
                    ));
                    crate::detect::Severity::Warning
                }
            };
            if let Some(url) = url {
                sinks.push(SinkConfig {
                    kind: s.kind,
                    url,
                    routing_key,
                    min_severity,
                });
            }
        }
        if let Some(u) = &self.dashboard_url {
            super::check_url(problems, "alerts.dashboard_url", u);
        }
        AlertsConfig {
            resolve_after: self.resolve_after.unwrap_or(d.resolve_after),
            cooldown: self.cooldown.unwrap_or(d.cooldown),
            dashboard_url: self.dashboard_url,
            sinks,
        }
    }
}
