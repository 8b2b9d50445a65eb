//! Candor: an OpenAI-compatible LLM inference gateway that tells the truth about the health
//! of every provider behind it.
//!
//! # Layout
//!
//! The modules follow a request's data flow; `ARCHITECTURE.md` is the map.
//!
//! - [`config`]: TOML → raw types → validated [`config::Config`]; the only reader of files
//!   and environment.
//! - [`server`]: the axum router — OpenAI API, `/health`, `/metrics`, admin API.
//! - [`proxy`]: runs one request — plan, attempts, failover before commit, metered stream.
//! - [`route`]: orders the candidate providers (pure).
//! - [`upstream`]: providers at run time and the pooled HTTP client.
//! - [`observation`]: the per-attempt fact that flows from the request path to the rest.
//! - [`health`]: the task owning rolling windows and metrics; builds the health report.
//! - [`metrics`]: every Prometheus metric name.
//! - [`reload`]: what a configuration reload did, for `/health`, `/metrics` and the admin API.
//! - [`request_log`]: one SQLite row per request, written off the request path.
//! - [`otel`]: OpenTelemetry spans per request and attempt, exported over OTLP/HTTP.
//! - [`app`]: starts and stops every long-lived worker.
//! - [`cli`]: the `candor` command.

pub mod alert;
pub mod app;
pub mod canary;
pub mod cli;
pub mod config;
pub mod detect;
pub mod health;
pub mod incident;
pub mod load;
pub mod metrics;
pub mod observation;
pub mod otel;
pub mod proxy;
pub mod quality;
pub mod reload;
pub mod request_log;
pub mod route;
pub mod scenario;
pub mod scrape;
pub mod server;
pub mod sim;
pub mod slo;
pub mod splitmix;
pub mod triage;
pub mod upstream;
