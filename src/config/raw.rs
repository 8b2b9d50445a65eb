//! What the TOML file says, before validation: serde types that nothing outside `config` sees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    #[serde(default)]
    pub(crate) targets: RawTargets,
    #[serde(default)]
    pub(crate) health: RawHealth,
    #[serde(default)]
    pub(crate) request_log: RawRequestLog,
    #[serde(default)]
    pub(crate) routing: super::routing::RawRouting,
    #[serde(default)]
    pub(crate) scrape: super::routing::RawScrape,
    #[serde(default)]
    pub(crate) providers: Vec<RawProvider>,
    #[serde(default)]
    pub(crate) dependency: Vec<super::alerting::RawDependency>,
    #[serde(default)]
    pub(crate) slo: super::alerting::RawSlo,
    #[serde(default)]
    pub(crate) alerts: super::alerting::RawAlerts,
    #[serde(default)]
    pub(crate) canaries: super::canaries::RawCanaries,
    #[serde(default)]
    pub(crate) tracing: super::tracing::RawTracing,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) admin_token_env: Option<String>,
    #[serde(default)]
    pub(crate) client_keys: Vec<RawClientKey>,
    pub(crate) max_body_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) grace_period: Option<Duration>,
    pub(crate) observation_queue: Option<usize>,
    pub(crate) max_in_flight: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) body_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_sse_event_bytes: Option<usize>,
    pub(crate) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientKey {
    pub(crate) id: String,
    pub(crate) key_env: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub(crate) connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) ttft: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) total: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTargets {
    #[serde(default, with = "humantime_serde")]
    pub(crate) ttft: Option<Duration>,
    pub(crate) decode_tokens_per_s: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) e2e: Option<Duration>,
    pub(crate) error_rate: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) min_requests: Option<u64>,
    pub(crate) failing_error_rate: Option<f64>,
    pub(crate) failing_within_targets: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRequestLog {
    pub(crate) path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) retention: Option<Duration>,
    pub(crate) batch_size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) flush_interval: Option<Duration>,
    pub(crate) queue: Option<usize>,
    pub(crate) buffer: Option<usize>,
    pub(crate) postgres_url_env: Option<String>,
    pub(crate) postgres_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub(crate) id: String,
    pub(crate) base_url: String,
    pub(crate) api_key_env: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) models: Vec<String>,
    #[serde(default)]
    pub(crate) model_map: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) price: RawPrice,
    pub(crate) quantization: Option<String>,
    pub(crate) node_header: Option<String>,
    pub(crate) metrics_url: Option<String>,
    pub(crate) gpu_metrics_url: Option<String>,
    pub(crate) health_url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub(crate) input_per_million: Option<f64>,
    pub(crate) output_per_million: Option<f64>,
}
