//! The `candor` command line: argument definitions and dispatch to each subcommand.

mod demo;
mod load;
mod logs;
mod rules;
mod scenario;
mod sim;
mod triage;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// Candor — the LLM inference gateway that tells the truth about inference health.
#[derive(Debug, Parser)]
#[command(name = "candor", version, about)]
pub struct Cli {
    /// Runtime worker threads (default: one per CPU core). On a machine shared with the
    /// upstream, fewer workers mean fewer cross-thread wake-ups per request.
    #[arg(long, global = true, env = "CANDOR_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Work with configuration files.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Query the request log.
    Logs(logs::LogsArgs),
    /// Run a simulated inference server (or, with --dependency, a simulated vector DB).
    Sim(sim::SimArgs),
    /// Replay a production trace against an endpoint and report SLA attainment.
    Load(load::LoadArgs),
    /// Three simulated providers, the gateway and a trace replay, with faults injected.
    Demo(demo::DemoArgs),
    /// Run scenario files (providers, faults, load) and compare faults with what Candor saw.
    Scenario(scenario::ScenarioArgs),
    /// Walk the on-call runbook against a running gateway: evidence, diagnosis, exit code
    /// (0 healthy, 1 degraded, 2 failing).
    Triage(triage::TriageArgs),
    /// Print Prometheus alerting rules equivalent to Candor's SLO alerts.
    Rules(rules::RulesArgs),
}

/// `candor config …`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Parse and validate a file; print every problem; exit 1 if any.
    Check {
        /// Configuration file.
        file: PathBuf,
    },
}

/// Writes `text` to standard output (a closed pipe is not an error).
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            crate::app::serve_file(&config, shutdown_signal())
                .await
                .with_context(|| format!("cannot serve {}", config.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                out(&format!(
                    "{}: ok ({} provider(s), {} model(s), listening on {})\n",
                    file.display(),
                    c.providers.len(),
                    crate::upstream::Upstreams::new(&c.providers)
                        .models()
                        .count(),
                    c.server.listen
                ));
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{}: {e}", file.display());
                Ok(ExitCode::from(1))
            }
        },
        Command::Logs(args) => logs::run(args).await,
        Command::Sim(args) => sim::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Load(args) => load::run(args).await,
        Command::Demo(args) => demo::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Scenario(args) => scenario::run(args).await,
        Command::Triage(args) => triage::run(args).await,
        Command::Rules(args) => rules::run(&args),
    }
}

/// GETs `path` from a running gateway's admin API and decodes the JSON answer.
pub(crate) async fn admin_get<T: serde::de::DeserializeOwned>(
    url: &str,
    path: &str,
    token: Option<&str>,
    query: &[(&str, String)],
) -> anyhow::Result<T> {
    let mut req = reqwest::Client::new()
        .get(format!("{}{path}", url.trim_end_matches('/')))
        .query(query);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.context("cannot reach the gateway")?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!(
            "the gateway answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp.json().await?)
}

/// Runs `fut`; on Ctrl-C or SIGTERM cancels `stop` and lets `fut` wind down and return.
pub(crate) async fn until_signal<F: std::future::Future>(
    stop: &tokio_util::sync::CancellationToken,
    fut: F,
) -> F::Output {
    tokio::pin!(fut);
    tokio::select! {
        r = &mut fut => r,
        () = shutdown_signal() => {
            stop.cancel();
            fut.await
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
