//! `candor demo`: the embedded demo scenario — three simulated providers, a simulated vector
//! DB, the gateway and a replay of a real production trace, with the five failure modes
//! injected on a repeating timeline. No configuration, no network.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{out, until_signal};
use crate::scenario::{self, Sample, Scenario};

/// Arguments of `candor demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway port (falls back to a free port when taken).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Trace time compression (the scenario's is 1.5).
    #[arg(long)]
    speedup: Option<f64>,
}

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut s = Scenario::parse(scenario::DEMO)?;
    if let Some(d) = args.duration {
        s.duration = d;
    }
    if let Some(x) = args.speedup {
        s.load.speedup = x;
    }
    let started = scenario::start(&s, args.port).await?;
    let gw = format!("http://{}", started.gateway.addr);
    let mut intro = format!(
        "Candor demo: {} simulated providers of {}, a simulated vector DB, the Azure LLM conversation trace at {}x.\n\n  dashboard   {gw}/   (open it in a browser)\n  gateway     {gw}/v1   (point any OpenAI SDK here, model \"{}\")\n  health      {gw}/health\n  metrics     {gw}/metrics\n  requests    {gw}/api/requests?limit=20\n  incidents   {gw}/api/incidents\n  triage      candor triage --url {gw}\n  request log {}\n\nFault timeline (repeats every {}):\n",
        s.providers.len(),
        s.model,
        s.load.speedup,
        s.model,
        started.dir.path().join("candor.db").display(),
        s.fault_cycle
            .map_or("never".into(), |c| humantime::format_duration(c)
                .to_string()),
    );
    for f in s.fault_windows() {
        let end = f.end_s.map_or("end".into(), |e| format!("{e:.0}s"));
        let _ = writeln!(
            intro,
            "  t={:>4.0}s..{end:<6} {:<8} {}",
            f.start_s, f.target, f.kind
        );
    }
    intro.push_str("\nCtrl-C stops everything.\n\n");
    out(&intro);

    let stop = CancellationToken::new();
    let windows = s.fault_windows();
    let cycle = s.fault_cycle.map(|c| c.as_secs_f64());
    let report = until_signal(
        &stop,
        scenario::run(
            &s,
            &started,
            Duration::from_secs(2),
            stop.clone(),
            |sample| {
                let t = cycle.map_or(sample.t_s, |c| sample.t_s % c);
                let active: Vec<String> = windows
                    .iter()
                    .filter(|f| f.start_s <= t && f.end_s.is_none_or(|e| t < e))
                    .map(|f| format!("{} on {}", f.kind, f.target))
                    .collect();
                out(&status(sample, &active));
            },
        ),
    )
    .await?;
    out(&format!(
        "\nstopping…\n\n{}",
        crate::load::table(&report.load)
    ));
    started.stop().await?;
    Ok(())
}

fn status(s: &Sample, faults: &[String]) -> String {
    let fault = if faults.is_empty() {
        "none".into()
    } else {
        faults.join(", ")
    };
    let incidents = if s.incidents.is_empty() {
        "none".into()
    } else {
        s.incidents.join(", ")
    };
    let mut line = format!(
        "[{:>4.0}s] {:<13} within targets {:>5.1}%  {:>5.1} completions/min | injected: {fault} | incidents: {incidents}\n",
        s.t_s,
        s.verdict.as_str(),
        s.within_targets_share.unwrap_or(1.0) * 100.0,
        s.completions_per_min,
    );
    for p in &s.providers {
        let _ = writeln!(
            line,
            "         {:<7} {:<13} {:<10} reqs/1m {:>4}  p95 TTFT {:>6}  decode {:>4} tok/s  err {:>5.1}%  in flight {}{}",
            p.id,
            p.verdict.as_str(),
            p.state,
            p.requests_1m,
            p.ttft_p95_ms.map_or("-".into(), |v| format!("{v:.0}ms")),
            p.decode_p50.map_or("-".into(), |v| format!("{v:.0}")),
            p.error_rate.unwrap_or(0.0) * 100.0,
            p.in_flight,
            p.evidence
                .first()
                .map_or_else(String::new, |e| format!("  ({e})")),
        );
    }
    line
}
