//! The `[tracing]` section: OpenTelemetry trace export over OTLP/HTTP (protobuf). Off
//! unless an endpoint is set; header values (API keys of hosted backends) come from the
//! environment, never from the file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use super::alerting::SecretLookup;

/// What the file says.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    endpoint: Option<String>,
    #[serde(default)]
    headers_env: BTreeMap<String, String>,
    sample_ratio: Option<f64>,
    service_name: Option<String>,
    project: Option<String>,
    queue: Option<usize>,
    batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    flush_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    export_timeout: Option<Duration>,
}

/// Validated trace export settings (present only when an endpoint is configured).
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:6006/v1/traces`.
    pub endpoint: String,
    /// Extra request headers (name, value from the environment).
    pub headers: Vec<(reqwest::header::HeaderName, Secret)>,
    /// Share of new traces recorded; a client's `traceparent` decides for its own trace.
    pub sample_ratio: f64,
    /// `service.name` of the resource.
    pub service_name: String,
    /// `openinference.project.name` of the resource (the project Phoenix files spans under).
    pub project: Option<String>,
    /// Traces (one per client request) waiting for export at most; more are dropped and
    /// counted.
    pub queue: usize,
    /// Spans per export request at most.
    pub batch_size: usize,
    /// How long a span waits for its batch to fill.
    pub flush_interval: Duration,
    /// Deadline of one export request.
    pub export_timeout: Duration,
}

impl RawTracing {
    /// Validates; `None` when no endpoint is set (tracing off).
    pub(crate) fn validate(
        self,
        secret: &mut SecretLookup<'_>,
        problems: &mut Vec<String>,
    ) -> Option<TracingConfig> {
        let endpoint = self.endpoint?;
        super::check_url(problems, "tracing.endpoint", &endpoint);
        let mut headers = Vec::new();
        for (name, var) in self.headers_env {
            let path = format!("tracing.headers_env.{name}");
            let Ok(header) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
                problems.push(format!("{path}: {name:?} is not a valid header name"));
                continue;
            };
            if let Some(value) = secret(&path, &var, problems) {
                if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                    // The value is a secret: say where it came from, never what it is.
                    problems.push(format!(
                        "{path}: the value of {var} is not a valid header value"
                    ));
                } else {
                    headers.push((header, value));
                }
            }
        }
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            problems.push(format!(
                "tracing.sample_ratio: must be between 0 and 1, got {sample_ratio}"
            ));
        }
        let positive = |name: &str, v: Option<usize>, default: usize, p: &mut Vec<String>| {
            let v = v.unwrap_or(default);
            if v == 0 {
                p.push(format!("tracing.{name}: must be above 0"));
            }
            v
        };
        let queue = positive("queue", self.queue, 4096, problems);
        let batch_size = positive("batch_size", self.batch_size, 512, problems);
        let flush_interval = self.flush_interval.unwrap_or(Duration::from_secs(1));
        let export_timeout = self.export_timeout.unwrap_or(Duration::from_secs(10));
        if flush_interval.is_zero() || export_timeout.is_zero() {
            problems.push("tracing: flush_interval and export_timeout must be above 0".into());
        }
        let service_name = self.service_name.unwrap_or_else(|| "candor".into());
        if service_name.is_empty() {
            problems.push("tracing.service_name: must not be empty".into());
        }
        Some(TracingConfig {
            endpoint,
            headers,
            sample_ratio,
            service_name,
            project: self.project.filter(|p| !p.is_empty()),
            queue,
            batch_size,
            flush_interval,
            export_timeout,
        })
    }
}
