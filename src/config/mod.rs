//! Configuration: TOML parsed into raw types, then validated into the runtime `Config`.
//!
//! This is the only module that reads the config file or the environment. Secrets are
//! named by environment variable in the file and held as [`Secret`], which never prints.

mod alerting;
mod canaries;
mod raw;
mod routing;
mod tracing;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use alerting::{
    AlertsConfig, DependencyConfig, DependencySource, PAGERDUTY_URL, SinkConfig, SinkKind,
    SloConfig,
};
pub use canaries::{Builtin, CanaryConfig, CustomProbe, Expect};
use raw::{RawConfig, RawProvider};
pub use routing::{Hedge, HedgeDelay, Policy, RoutingConfig, ScrapeConfig};
pub use tracing::TracingConfig;

/// A secret value (provider key, client key, admin token). Its `Debug` is redacted and it
/// has no `Display` or `Serialize`, so it cannot reach a log line or a response by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must send it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret built in code (tests); real secrets come from the environment.
    #[cfg(test)]
    pub fn for_tests(v: &str) -> Secret {
        Secret(v.into())
    }

    /// Compares with `candidate` in time independent of where they first differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != candidate.len() {
            return false;
        }
        mine.iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Why a configuration was rejected: every problem found, each with its path in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{0}")]
    Parse(String),
    /// The file parsed but some values are invalid.
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, authentication and limits.
    pub server: ServerConfig,
    /// Per-attempt timeouts.
    pub timeouts: Timeouts,
    /// The service-level targets every request is judged against.
    pub targets: Targets,
    /// How `/health` turns measurements into a verdict.
    pub health: HealthConfig,
    /// The embedded request log.
    pub request_log: RequestLogConfig,
    /// How providers are chosen, ejected and recovered.
    pub routing: RoutingConfig,
    /// How backend metrics are polled.
    pub scrape: ScrapeConfig,
    /// The upstream providers, in file order.
    pub providers: Vec<ProviderConfig>,
    /// Components upstream of the gateway watched for cascading timeouts.
    pub dependencies: Vec<DependencyConfig>,
    /// The business-metric objective.
    pub slo: SloConfig,
    /// Incident lifecycle and alert sinks.
    pub alerts: AlertsConfig,
    /// Synthetic probes.
    pub canaries: CanaryConfig,
    /// OpenTelemetry trace export; `None` when off.
    pub tracing: Option<TracingConfig>,
}

/// Listener, authentication and limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the proxy, admin API and metrics listen on.
    pub listen: SocketAddr,
    /// Token the admin API requires, when set.
    pub admin_token: Option<Secret>,
    /// Client keys; when empty, `/v1` is open.
    pub client_keys: Vec<ClientKey>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub grace_period: Duration,
    /// Capacity of the observation queue between the request path and the health task.
    pub observation_queue: usize,
    /// Client requests in flight at once; more are answered 503 at once.
    pub max_in_flight: usize,
    /// What one client connection may hold and for how long.
    pub connections: ConnectionLimits,
    /// TLS on the listener, when clients reach Candor directly.
    pub tls: Option<TlsFiles>,
}

/// The listener's certificate chain and private key (PEM files, read at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// Limits on client connections: none may hold a socket, a request slot or memory for
/// longer or more than these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte until its head (request line and headers) is complete.
    pub header_read_timeout: Duration,
    /// From the head until the whole body has arrived; past it the client gets 408.
    pub body_read_timeout: Duration,
    /// How long a connection may wait, with no request in progress, for the next one.
    pub idle_timeout: Duration,
    /// Client connections open at once; past it, accepting waits until one closes.
    pub max_connections: usize,
    /// Largest SSE event accepted from an upstream.
    pub max_sse_event_bytes: usize,
}

/// A client API key and the id that stands for it in logs.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The id recorded in logs and the request log.
    pub id: String,
    /// The key clients send as a bearer token.
    pub key: Secret,
}

/// Who may call Candor: the part of `[server]` a reload applies at once (key rotation).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Client keys; when empty, `/v1` is open.
    pub client_keys: Vec<ClientKey>,
    /// Token the admin API requires, when set.
    pub admin_token: Option<Secret>,
}

impl Config {
    /// Who may call, as this configuration says.
    pub fn access(&self) -> Access {
        Access {
            client_keys: self.server.client_keys.clone(),
            admin_token: self.server.admin_token.clone(),
        }
    }
}

/// Per-attempt timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From sending the request to the first token of a stream.
    pub ttft: Duration,
    /// Longest silence allowed between two stream chunks.
    pub idle: Duration,
    /// Whole attempt, first byte to last.
    pub total: Duration,
}

/// Service-level targets (the SLA a request is judged against).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Time to first token.
    pub ttft: Duration,
    /// Decode rate after the first token.
    pub decode_tokens_per_s: f64,
    /// End to end.
    pub e2e: Duration,
    /// Share of requests that may fail.
    pub error_rate: f64,
}

impl Targets {
    /// Whether a successful request met the targets: TTFT within bound (streams), and
    /// either the decode rate or the end-to-end time within bound.
    pub fn met_by(
        &self,
        ok: bool,
        ttft: Option<Duration>,
        e2e: Duration,
        decode: Option<f64>,
    ) -> bool {
        ok && ttft.is_none_or(|t| t <= self.ttft)
            && (decode.is_some_and(|d| d >= self.decode_tokens_per_s) || e2e <= self.e2e)
    }
}

/// How `/health` turns measurements into a verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Requests a window needs before its bounds are judged.
    pub min_requests: u64,
    /// Error rate at or above which a provider or the gateway is failing.
    pub failing_error_rate: f64,
    /// Share within targets below which the gateway is failing.
    pub failing_within_targets: f64,
}

/// Where the request log lives.
#[derive(Debug, Clone, PartialEq)]
pub enum LogDatabase {
    /// A SQLite file (the default).
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(PostgresTarget),
}

/// Where and how to reach the request log's PostgreSQL server.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresTarget {
    /// Its URL (a secret: it may hold a password). With `sslmode=require` the connection
    /// is TLS, the server's certificate checked against `ca_file` or the system's roots.
    pub url: Secret,
    /// PEM file of the certificate authorities that sign the server's certificate (a
    /// private CA, a cloud provider's bundle); the system's roots when unset.
    pub ca_file: Option<PathBuf>,
}

impl LogDatabase {
    /// `sqlite` or `postgres`, for `/health` and the logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LogDatabase::Sqlite(_) => "sqlite",
            LogDatabase::Postgres(_) => "postgres",
        }
    }
}

/// The request log.
#[derive(Debug, Clone)]
pub struct RequestLogConfig {
    /// The database.
    pub database: LogDatabase,
    /// Rows older than this are deleted.
    pub retention: Duration,
    /// Rows written per transaction at most.
    pub batch_size: usize,
    /// Longest a row waits before it is written.
    pub flush_interval: Duration,
    /// Capacity of the queue in front of the writer; a full queue drops rows (counted).
    pub queue: usize,
    /// Rows the writer holds while the database cannot be written; beyond, rows are lost
    /// (counted).
    pub buffer: usize,
}

/// Price per million tokens, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_million: f64,
    /// Per million completion tokens.
    pub output_per_million: f64,
}

impl Price {
    /// Cost of one request.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_million
            + completion_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

/// One upstream provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Stable id used in logs, metrics and headers.
    pub id: String,
    /// Base URL including the API prefix, e.g. `http://10.0.0.5:8000/v1`, no trailing slash.
    pub base_url: String,
    /// Sent as a bearer token upstream.
    pub api_key: Option<Secret>,
    /// Model names clients may request from this provider.
    pub models: Vec<String>,
    /// Client model name → name sent upstream, where they differ.
    pub model_map: BTreeMap<String, String>,
    /// Price table.
    pub price: Price,
    /// Quantization label recorded with every request (e.g. `fp8`).
    pub quantization: Option<String>,
    /// Response header naming the node that served the request.
    pub node_header: Option<String>,
    /// Prometheus endpoint of the inference server.
    pub metrics_url: Option<String>,
    /// Prometheus endpoint of the DCGM exporter on the provider's GPU node.
    pub gpu_metrics_url: Option<String>,
    /// The provider's own health endpoint (checked with the scrapes, so a finding can say
    /// whether it still answers 200).
    pub health_url: Option<String>,
}

impl ProviderConfig {
    /// The model name to send upstream for a client's model name.
    pub fn upstream_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model_map
            .get(requested)
            .map(String::as_str)
            .unwrap_or(requested)
    }
}

/// Defaults for everything the file may leave out.
pub mod defaults {
    use std::time::Duration;

    /// Listen address.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// 4 MiB: comfortably above a 128k-token prompt.
    pub const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
    /// Shutdown drain.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
    /// Envoy's `connect_timeout` default (reference §7.1).
    pub const CONNECT: Duration = Duration::from_secs(5);
    /// Time to first token.
    pub const TTFT: Duration = Duration::from_secs(30);
    /// Silence between chunks.
    pub const IDLE: Duration = Duration::from_secs(30);
    /// Whole attempt.
    pub const TOTAL: Duration = Duration::from_secs(600);
    /// A request head: a few hundred bytes a well-behaved client sends in one write.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// A body of up to `MAX_BODY_BYTES` on a slow link.
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// A kept-alive connection with nothing to do (nginx's `keepalive_timeout` is 75 s).
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    /// Client connections; also capped at half the process's descriptor limit.
    pub const MAX_CONNECTIONS: usize = 10_000;
}

/// Unknown keys reported in one run at most.
const MAX_UNKNOWN: usize = 50;

/// Parses the raw config, reporting every unknown key rather than the first only: the
/// schema refuses unknown keys (a typo must not silently fall back to a default), so each
/// one refused is noted with its line, its line — or its whole table, for an unknown table —
/// is commented out, and the text parsed again. Other errors end the parse as they are.
fn parse_raw(text: &str) -> Result<(RawConfig, Vec<String>), ConfigError> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut unknown = Vec::new();
    loop {
        let error = match toml::from_str::<RawConfig>(&lines.join("\n")) {
            Ok(raw) => return Ok((raw, unknown)),
            Err(e) => e,
        };
        // toml reports schema errors only as text; this one is serde's derive message.
        let line = error.span().map(|span| {
            let upto = lines.iter().map(|l| l.len() + 1).scan(0, |acc, n| {
                *acc += n;
                Some(*acc)
            });
            upto.take_while(|end| *end <= span.start).count()
        });
        let (Some(line), true) = (line, error.message().starts_with("unknown field")) else {
            return if unknown.is_empty() {
                Err(ConfigError::Parse(error.to_string()))
            } else {
                // An error after a line was commented out may be of that removal's making.
                Err(ConfigError::Invalid(unknown))
            };
        };
        if unknown.len() >= MAX_UNKNOWN || line >= lines.len() {
            return Err(ConfigError::Invalid(unknown));
        }
        unknown.push(format!("line {}: {}", line + 1, error.message()));
        comment_out(&mut lines, line);
    }
}

/// Comments out line `i`; a table header takes its keys with it, up to the next header.
fn comment_out(lines: &mut [String], i: usize) {
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let end = if is_header(&lines[i]) {
        (i + 1..lines.len())
            .find(|&j| is_header(&lines[j]))
            .unwrap_or(lines.len())
    } else {
        i + 1
    };
    for l in &mut lines[i..end] {
        l.insert(0, '#');
    }
}

/// `[server]`'s connection limits, each above zero.
fn connection_limits(raw: &raw::RawServer, problems: &mut Vec<String>) -> ConnectionLimits {
    let limits = ConnectionLimits {
        header_read_timeout: raw
            .header_read_timeout
            .unwrap_or(defaults::HEADER_READ_TIMEOUT),
        body_read_timeout: raw.body_read_timeout.unwrap_or(defaults::BODY_READ_TIMEOUT),
        idle_timeout: raw.idle_timeout.unwrap_or(defaults::IDLE_TIMEOUT),
        max_connections: raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
        max_sse_event_bytes: raw
            .max_sse_event_bytes
            .unwrap_or(crate::proxy::sse::DEFAULT_MAX_EVENT),
    };
    for (name, zero) in [
        ("header_read_timeout", limits.header_read_timeout.is_zero()),
        ("body_read_timeout", limits.body_read_timeout.is_zero()),
        ("idle_timeout", limits.idle_timeout.is_zero()),
        ("max_connections", limits.max_connections == 0),
        ("max_sse_event_bytes", limits.max_sse_event_bytes == 0),
    ] {
        if zero {
            problems.push(format!("server.{name}: must be above 0"));
        }
    }
    limits
}

impl Config {
    /// Reads, parses and validates a config file, taking secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_source(path).map(|(c, _)| c)
    }

    /// Reads, parses and validates `path`, and returns its text too (a reload compares it
    /// with the next version to tell which sections changed).
    pub fn load_source(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        #[expect(clippy::disallowed_methods, reason = "config is where env is read")]
        let config = Config::parse(&text, |name| std::env::var(name).ok())?;
        Ok((config, text))
    }

    /// Parses and validates config text; `env` looks up environment variables.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (raw, unknown) = parse_raw(text)?;
        match Config::from_raw(raw, &env) {
            Ok(config) if unknown.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid(unknown)),
            Err(ConfigError::Invalid(problems)) => Err(ConfigError::Invalid(
                unknown.into_iter().chain(problems).collect(),
            )),
            Err(e) => Err(e),
        }
    }

    fn from_raw(
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut secret = |path: &str, var: &str, problems: &mut Vec<String>| -> Option<Secret> {
            match env(var) {
                Some(v) if !v.is_empty() => Some(Secret(v)),
                _ => {
                    problems.push(format!("{path}: environment variable {var} is not set"));
                    None
                }
            }
        };

        let listen_text = raw.server.listen.as_deref().unwrap_or(defaults::LISTEN);
        let listen = listen_text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "server.listen: {listen_text:?} is not an address like 127.0.0.1:8080"
            ));
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let admin_token = raw
            .server
            .admin_token_env
            .as_deref()
            .and_then(|var| secret("server.admin_token_env", var, &mut problems));
        let mut client_keys = Vec::new();
        let mut key_ids = HashSet::new();
        for (i, k) in raw.server.client_keys.iter().enumerate() {
            let path = format!("server.client_keys[{i}]");
            if k.id.trim().is_empty() {
                problems.push(format!("{path}.id: must not be empty"));
            } else if !key_ids.insert(k.id.clone()) {
                problems.push(format!("{path}.id: duplicate key id {:?}", k.id));
            }
            if let Some(key) = secret(&format!("{path}.key_env"), &k.key_env, &mut problems) {
                client_keys.push(ClientKey {
                    id: k.id.clone(),
                    key,
                });
            }
        }
        let max_body_bytes = raw
            .server
            .max_body_bytes
            .unwrap_or(defaults::MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            problems.push("server.max_body_bytes: must be above 0".into());
        }
        let max_in_flight = raw.server.max_in_flight.unwrap_or(4_096);
        if max_in_flight == 0 {
            problems.push("server.max_in_flight: must be above 0".into());
        }
        let connections = connection_limits(&raw.server, &mut problems);
        let observation_queue = raw.server.observation_queue.unwrap_or(16_384);
        if observation_queue == 0 {
            problems.push("server.observation_queue: must be above 0".into());
        }

        let timeouts = Timeouts {
            connect: raw.timeouts.connect.unwrap_or(defaults::CONNECT),
            ttft: raw.timeouts.ttft.unwrap_or(defaults::TTFT),
            idle: raw.timeouts.idle.unwrap_or(defaults::IDLE),
            total: raw.timeouts.total.unwrap_or(defaults::TOTAL),
        };
        for (name, d) in [
            ("connect", timeouts.connect),
            ("ttft", timeouts.ttft),
            ("idle", timeouts.idle),
            ("total", timeouts.total),
        ] {
            if d.is_zero() {
                problems.push(format!("timeouts.{name}: must be above 0"));
            }
        }
        if timeouts.ttft > timeouts.total {
            problems.push("timeouts.ttft: must not exceed timeouts.total".into());
        }
        if timeouts.idle > timeouts.total {
            problems.push("timeouts.idle: must not exceed timeouts.total".into());
        }

        let targets = Targets {
            ttft: raw.targets.ttft.unwrap_or(Duration::from_secs(2)),
            decode_tokens_per_s: raw.targets.decode_tokens_per_s.unwrap_or(10.0),
            e2e: raw.targets.e2e.unwrap_or(Duration::from_secs(30)),
            error_rate: raw.targets.error_rate.unwrap_or(0.01),
        };
        if targets.ttft.is_zero() || targets.e2e.is_zero() {
            problems.push("targets: ttft and e2e must be above 0".into());
        }
        if !(targets.decode_tokens_per_s.is_finite() && targets.decode_tokens_per_s > 0.0) {
            problems.push("targets.decode_tokens_per_s: must be a number above 0".into());
        }
        check_fraction(&mut problems, "targets.error_rate", targets.error_rate);

        let health = HealthConfig {
            min_requests: raw.health.min_requests.unwrap_or(20),
            failing_error_rate: raw.health.failing_error_rate.unwrap_or(0.5),
            failing_within_targets: raw.health.failing_within_targets.unwrap_or(0.5),
        };
        check_fraction(
            &mut problems,
            "health.failing_error_rate",
            health.failing_error_rate,
        );
        check_fraction(
            &mut problems,
            "health.failing_within_targets",
            health.failing_within_targets,
        );

        let database = match &raw.request_log.postgres_url_env {
            Some(var) => secret("request_log.postgres_url_env", var, &mut problems)
                .filter(|url| {
                    let ok = url.expose().parse::<postgres::Config>().is_ok();
                    if !ok {
                        problems.push(format!(
                            "request_log.postgres_url_env: {var} does not hold a PostgreSQL URL \
                             like postgresql://user:password@host:5432/database"
                        ));
                    }
                    ok
                })
                .map(|url| {
                    LogDatabase::Postgres(PostgresTarget {
                        url,
                        ca_file: raw.request_log.postgres_ca_file.clone(),
                    })
                }),
            None => None,
        };
        if database.is_none() && raw.request_log.postgres_ca_file.is_some() {
            problems.push(
                "request_log.postgres_ca_file: only with postgres_url_env (PostgreSQL)".into(),
            );
        }
        if database.is_some() && raw.request_log.path.is_some() {
            problems.push(
                "request_log: give either path (SQLite) or postgres_url_env (PostgreSQL), not both"
                    .into(),
            );
        }
        let request_log = RequestLogConfig {
            database: database.unwrap_or_else(|| {
                LogDatabase::Sqlite(PathBuf::from(
                    raw.request_log.path.as_deref().unwrap_or("candor.db"),
                ))
            }),
            retention: raw
                .request_log
                .retention
                .unwrap_or(Duration::from_secs(7 * 86_400)),
            batch_size: raw.request_log.batch_size.unwrap_or(256),
            flush_interval: raw
                .request_log
                .flush_interval
                .unwrap_or(Duration::from_millis(200)),
            queue: raw.request_log.queue.unwrap_or(8_192),
            buffer: raw.request_log.buffer.unwrap_or(50_000),
        };
        if request_log.batch_size == 0 || request_log.queue == 0 || request_log.buffer == 0 {
            problems.push("request_log: batch_size, queue and buffer must be above 0".into());
        }
        if request_log.retention.is_zero() {
            problems.push("request_log.retention: must be above 0".into());
        }

        let routing = raw.routing.validate(&mut problems);
        let scrape = raw.scrape.validate(&mut problems);
        let dependencies = alerting::validate_dependencies(raw.dependency, &mut problems);
        let slo = raw.slo.validate(&mut problems);
        let alerts = raw.alerts.validate(&mut secret, &mut problems);
        let canaries = raw.canaries.validate(&mut problems);
        let tracing = raw.tracing.validate(&mut secret, &mut problems);

        if raw.providers.is_empty() {
            problems.push("providers: at least one [[providers]] entry is required".into());
        }
        let mut ids = HashSet::new();
        let mut providers = Vec::new();
        for (i, p) in raw.providers.into_iter().enumerate() {
            if let Some(p) = validate_provider(i, p, &mut ids, &mut secret, &mut problems) {
                providers.push(p);
            }
        }

        // Every model a setting names must be served, or the setting silently does nothing.
        let named = routing
            .hedge
            .keys()
            .map(|m| ("routing.hedge".to_owned(), m))
            .chain(canaries.probes.iter().enumerate().flat_map(|(i, p)| {
                p.models
                    .iter()
                    .map(move |m| (format!("canaries.probe[{i}].models"), m))
            }));
        for (path, model) in named {
            if !providers.iter().any(|p| p.models.contains(model)) {
                problems.push(format!(
                    "{path}: model {model:?} is not served by any provider"
                ));
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                admin_token,
                client_keys,
                max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
                grace_period: raw.server.grace_period.unwrap_or(defaults::GRACE_PERIOD),
                observation_queue,
                max_in_flight,
                connections,
                tls: raw.server.tls.map(|t| TlsFiles {
                    cert_path: t.cert_path,
                    key_path: t.key_path,
                }),
            },
            timeouts,
            targets,
            health,
            request_log,
            routing,
            scrape,
            providers,
            dependencies,
            slo,
            alerts,
            canaries,
            tracing,
        })
    }
}

/// What a reload applies at once: the providers, the client keys and the admin token.
/// Everything else in the file is read at start only.
const RELOADED: [&str; 3] = ["providers", "server.client_keys", "server.admin_token_env"];

/// The sections (and `[server]` keys) that differ between two versions of a valid file
/// but take effect only after a restart, sorted; a reload names them rather than half-apply
/// them.
pub fn restart_required(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return Vec::new();
    };
    let flatten = |t: &toml::Table| -> BTreeMap<String, toml::Value> {
        let mut out = BTreeMap::new();
        for (k, v) in t {
            match (k.as_str(), v) {
                ("server", toml::Value::Table(server)) => {
                    for (sk, sv) in server {
                        out.insert(format!("server.{sk}"), sv.clone());
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out.retain(|k, _| !RELOADED.contains(&k.as_str()));
        out
    };
    let (old, new) = (flatten(&old), flatten(&new));
    let mut changed: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    changed.sort_unstable();
    changed.dedup();
    changed
}

fn check_fraction(problems: &mut Vec<String>, path: &str, v: f64) {
    if !(v.is_finite() && v > 0.0 && v <= 1.0) {
        problems.push(format!("{path}: must be a fraction in (0, 1], got {v}"));
    }
}

fn validate_provider(
    i: usize,
    p: RawProvider,
    ids: &mut HashSet<String>,
    secret: &mut impl FnMut(&str, &str, &mut Vec<String>) -> Option<Secret>,
    problems: &mut Vec<String>,
) -> Option<ProviderConfig> {
    let path = format!("providers[{i}]");
    let before = problems.len();
    let id = p.id.trim().to_owned();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(format!(
            "{path}.id: {:?} must be non-empty letters, digits, '-', '_' or '.'",
            p.id
        ));
    } else if !ids.insert(id.clone()) {
        problems.push(format!("{path}.id: duplicate provider id {id:?}"));
    }
    let base_url = p.base_url.trim_end_matches('/').to_owned();
    check_url(problems, &format!("{path}.base_url"), &base_url);
    for (name, url) in [
        ("metrics_url", &p.metrics_url),
        ("gpu_metrics_url", &p.gpu_metrics_url),
        ("health_url", &p.health_url),
    ] {
        if let Some(u) = url {
            check_url(problems, &format!("{path}.{name}"), u);
        }
    }
    let api_key = match (&p.api_key_env, &p.api_key_file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{path}: set api_key_env or api_key_file, not both"));
            None
        }
        (Some(var), None) => secret(&format!("{path}.api_key_env"), var, problems),
        (None, Some(file)) => secret_file(&format!("{path}.api_key_file"), file, problems),
        (None, None) => None,
    };
    if p.models.is_empty() {
        problems.push(format!("{path}.models: list at least one model"));
    }
    for from in p.model_map.keys() {
        if !p.models.contains(from) {
            problems.push(format!(
                "{path}.model_map: {from:?} is not in {path}.models"
            ));
        }
    }
    let price = Price {
        input_per_million: p.price.input_per_million.unwrap_or(0.0),
        output_per_million: p.price.output_per_million.unwrap_or(0.0),
    };
    if !(price.input_per_million >= 0.0 && price.output_per_million >= 0.0) {
        problems.push(format!("{path}.price: prices must be 0 or more"));
    }
    if let Some(h) = &p.node_header
        && axum::http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        problems.push(format!(
            "{path}.node_header: {h:?} is not a valid header name"
        ));
    }
    (problems.len() == before).then_some(ProviderConfig {
        id,
        base_url,
        api_key,
        models: p.models,
        model_map: p.model_map,
        price,
        quantization: p.quantization,
        node_header: p.node_header.map(|h| h.to_ascii_lowercase()),
        metrics_url: p.metrics_url,
        gpu_metrics_url: p.gpu_metrics_url,
        health_url: p.health_url,
    })
}

/// A secret read from a file (a mounted Kubernetes or Docker secret, say): its content less
/// surrounding whitespace. Read at start and again at every reload, so replacing the file
/// and reloading rotates the key. Problems name the file, never its content.
fn secret_file(path: &str, file: &Path, problems: &mut Vec<String>) -> Option<Secret> {
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Some(Secret(text.trim().to_owned())),
        Ok(_) => {
            problems.push(format!("{path}: {} is empty", file.display()));
            None
        }
        Err(e) => {
            problems.push(format!("{path}: cannot read {}: {e}", file.display()));
            None
        }
    }
}

fn check_url(problems: &mut Vec<String>, path: &str, url: &str) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => problems.push(format!(
            "{path}: {:?} is not an http(s) URL",
            shown_url(url)
        )),
    }
}

/// A URL fit to show in the admin API, the dashboard, logs and errors: credentials in it
/// (`user:password@`) and the values of its query (`?key=…` is a common way to pass an API
/// key) replaced by `***`. A URL that does not parse loses everything before its last `@`.
pub fn shown_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return match url.rsplit_once('@') {
            Some((before, after)) => {
                let scheme = before.split_once("://").map_or("", |(s, _)| s);
                format!("{scheme}://***@{after}")
            }
            None => url.to_owned(),
        };
    };
    let credentials = !u.username().is_empty() || u.password().is_some();
    if !credentials && u.query().is_none() {
        return url.to_owned();
    }
    if credentials {
        let _ = u.set_password(None);
        let _ = u.set_username("***");
    }
    if u.query().is_some() {
        let keys: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        u.query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), "***")));
    }
    u.to_string()
}

#[cfg(test)]
mod tests;
