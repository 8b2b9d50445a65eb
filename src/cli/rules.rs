//! `candor rules`: prints Prometheus alerting rules equivalent to Candor's SLO alerts, for the
//! objective and time scale of a configuration file (or the defaults).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::out;
use crate::config::{Config, SloConfig};

/// Arguments of `candor rules`.
#[derive(Debug, Args)]
pub struct RulesArgs {
    /// Take `[slo]` from this configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub(super) fn run(args: &RulesArgs) -> anyhow::Result<ExitCode> {
    let slo = match &args.config {
        Some(path) => Config::load(path)?.slo,
        None => SloConfig::default(),
    };
    out(&crate::slo::rules::render(&slo));
    Ok(ExitCode::SUCCESS)
}
