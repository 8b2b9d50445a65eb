//! `candor sim`: a simulated inference server or vector DB on a port, until Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::out;
use crate::app;
use crate::sim::Profile;
use crate::sim::dependency::Dependency;

/// Arguments of `candor sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Profile (TOML): model, engine parameters, fault timeline.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Run the simulated vector-DB dependency instead of an inference server.
    #[arg(long)]
    dependency: bool,
    /// Dependency: median query latency.
    #[arg(long, default_value = "15ms", value_parser = humantime::parse_duration)]
    median_latency: Duration,
}

pub(super) async fn run(args: SimArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    if args.dependency {
        let bg = app::start_dependency(
            Dependency::new(args.median_latency, 0.3, Vec::new(), None),
            addr,
        )
        .await?;
        out(&format!(
            "simulated vector DB on http://{} (POST /query, GET /metrics, POST|DELETE /sim/faults)\n",
            bg.addr
        ));
        super::shutdown_signal().await;
        bg.stop().await;
        return Ok(());
    }
    let profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::default(),
    };
    let model = profile.model.clone();
    let faults = profile.faults.len();
    let (bg, _sim) = app::start_sim(profile, addr).await?;
    out(&format!(
        "simulated inference server for model {model:?} on http://{}/v1 ({faults} scheduled fault(s)); /metrics, /health, POST|DELETE /sim/faults\n",
        bg.addr
    ));
    super::shutdown_signal().await;
    bg.stop().await;
    Ok(())
}
