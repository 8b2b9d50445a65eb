//! `candor triage`: asks a running gateway to walk the on-call runbook and prints each step's
//! evidence and the diagnosis; exits 0 healthy, 1 degraded, 2 failing, 3 when the gateway
//! cannot be asked.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{admin_get, out};
use crate::triage::{Triage, render};

/// Arguments of `candor triage`.
#[derive(Debug, Args)]
pub struct TriageArgs {
    /// The gateway.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token.
    #[arg(long, env = "CANDOR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Only this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Incidents active within the last … (e.g. 30m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    since: Duration,
    /// The result as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: TriageArgs) -> anyhow::Result<ExitCode> {
    let mut query = vec![("since", humantime::format_duration(args.since).to_string())];
    if let Some(p) = &args.provider {
        query.push(("provider", p.clone()));
    }
    let t: Triage = match admin_get(
        &args.url,
        "/api/triage",
        args.admin_token.as_deref(),
        &query,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            return Ok(ExitCode::from(3));
        }
    };
    if args.json {
        out(&format!("{}\n", serde_json::to_string_pretty(&t)?));
    } else {
        out(&render(&t));
    }
    Ok(ExitCode::from(t.exit_code))
}
