//! `candor scenario run FILE`: start a scenario, run it, and print the injected faults beside
//! what the gateway reported.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::{out, until_signal};
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
    },
}

pub(super) async fn run(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let Action::Run { file, port, json } = args.action;
    let s = Scenario::load(&file)?;
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
