//! `candor scenario run FILE`: start a scenario, run it, and print the injected faults beside
//! what the gateway reported.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::{out, until_signal};
use crate::config::Policy;
use crate::scenario::{self, Scenario};

/// `candor scenario …`
#[derive(Debug, Args)]
pub struct ScenarioArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run a scenario file.
    Run {
        /// Scenario (TOML), e.g. scenarios/deadlock.toml.
        file: PathBuf,
        /// Gateway port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Routing policy, overriding the scenario's.
        #[arg(long, value_parser = parse_policy)]
        policy: Option<Policy>,
    },
    /// Run a scenario once per routing policy and compare them.
    Compare {
        /// Scenario (TOML), e.g. scenarios/routing.toml.
        file: PathBuf,
        /// Policies, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = parse_policy,
              default_value = "candor,round_robin,least_busy,error_cooldown")]
        policies: Vec<Policy>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown policy {s:?}; one of {}", names.join(", "))
        })
}

pub(super) async fn run(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let (file, port, json, policy) = match args.action {
        Action::Run {
            file,
            port,
            json,
            policy,
        } => (file, port, json, policy),
        Action::Compare {
            file,
            policies,
            json,
        } => return compare(&file, &policies, json).await,
    };
    let mut s = Scenario::load(&file)?;
    if let Some(p) = policy {
        s.set_policy(p);
    }
    let started = scenario::start(&s, port).await?;
    if !json {
        out(&format!(
            "running scenario {} for {} — {}\ngateway on http://{}\n",
            s.name,
            humantime::format_duration(s.duration),
            s.description,
            started.gateway.addr
        ));
    }
    let stop = CancellationToken::new();
    let report = until_signal(
        &stop,
        scenario::run(&s, &started, Duration::from_secs(1), stop.clone(), |_| {}),
    )
    .await?;
    started.stop().await?;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        out(&report.table());
    }
    Ok(ExitCode::SUCCESS)
}

async fn compare(
    file: &std::path::Path,
    policies: &[Policy],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let s = Scenario::load(file)?;
    let stop = CancellationToken::new();
    let runs = until_signal(
        &stop,
        scenario::compare(&s, policies, stop.clone(), |p| {
            if !json {
                out(&format!(
                    "running {} for {} with policy {}\n",
                    s.name,
                    humantime::format_duration(s.duration),
                    p.as_str()
                ));
            }
        }),
    )
    .await?;
    if json {
        let v: Vec<serde_json::Value> = runs
            .iter()
            .map(|(p, r)| serde_json::json!({"policy": p.as_str(), "report": r}))
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        out(&format!(
            "\n{} — {}\n\n{}",
            s.name,
            s.description,
            scenario::comparison_table(&s.fault_windows(), &runs)
        ));
    }
    Ok(ExitCode::SUCCESS)
}
