//! Integration tests: a real gateway on loopback in front of scripted upstreams.
#![expect(
    clippy::disallowed_methods,
    reason = "tests run servers and background work on their own tasks"
)]
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod alerts;
mod canary;
mod cli;
mod crash;
mod errors;
mod failover;
mod health;
mod hostile;
mod postgres;
mod prometheus;
mod reload;
mod routing;
mod rules;
mod scenario;
mod sdk;
mod secrets;
mod sim;
mod streaming;
mod support;
mod tls;
