//! `candor demo`: three simulated providers, a simulated vector DB, the gateway and a
//! replay of a real production trace, with the five failure modes injected on a timeline.
//! No configuration, no network.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::out;
use crate::app;
use crate::config::Config;
use crate::health::report::HealthReport;
use crate::load::{self, LoadConfig, Rag, trace};
use crate::sim::dependency::Dependency;
use crate::sim::engine::EngineConfig;
use crate::sim::fault::Fault;
use crate::sim::{Profile, Sim};

/// Arguments of `candor demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Gateway port (falls back to a free port when taken).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Trace time compression.
    #[arg(long, default_value_t = 2.0)]
    speedup: f64,
}

const MODEL: &str = "llama-3.1-8b";

/// One step of the fault timeline: which provider (or the dependency), what, when, how long.
struct Phase {
    at: u64,
    secs: u64,
    target: Option<usize>,
    fault: Fault,
    what: &'static str,
}

fn timeline() -> Vec<Phase> {
    vec![
        Phase {
            at: 30,
            secs: 60,
            target: Some(1),
            fault: Fault::Slowdown { factor: 0.6 },
            what: "hardware degradation: decode at 0.6x",
        },
        Phase {
            at: 100,
            secs: 60,
            target: Some(0),
            fault: Fault::KvPressure { factor: 0.04 },
            what: "KV-cache thrashing: capacity cut to 4%",
        },
        Phase {
            at: 170,
            secs: 50,
            target: Some(2),
            fault: Fault::Deadlock,
            what: "batch-queue deadlock: engine stops, /health still 200",
        },
        Phase {
            at: 230,
            secs: 60,
            target: Some(1),
            fault: Fault::TemperatureDrift,
            what: "silent quality degradation: temperature drift",
        },
        Phase {
            at: 300,
            secs: 60,
            target: None,
            fault: Fault::DependencySlow { factor: 100.0 },
            what: "cascading timeouts: vector DB 100x slower",
        },
    ]
}
/// The timeline repeats with this period.
const CYCLE: u64 = 380;

fn profiles() -> Vec<(&'static str, Profile, f64, f64)> {
    let engine = |ms: u64| EngineConfig {
        slots: 16,
        kv_capacity_tokens: 120_000,
        prefill_tokens_per_s: 12_000.0,
        decode_step: Duration::from_millis(ms),
        decode_step_per_seq: Duration::from_micros(300),
    };
    [
        ("fast-a", 9, 0.20, 0.60),
        ("mid-b", 12, 0.10, 0.30),
        ("slow-c", 16, 0.05, 0.15),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (id, ms, pin, pout))| {
        (
            id,
            Profile {
                model: MODEL.into(),
                seed: 11 + i as u64,
                engine: engine(ms),
                ..Profile::default()
            },
            pin,
            pout,
        )
    })
    .collect()
}

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut sims: Vec<(String, Arc<Sim>, app::Background)> = Vec::new();
    let mut providers = String::new();
    for (id, profile, pin, pout) in profiles() {
        let (bg, sim) = app::start_sim(profile, any).await?;
        let _ = write!(
            providers,
            "[[providers]]\nid = \"{id}\"\nbase_url = \"http://{}/v1\"\nmodels = [\"{MODEL}\"]\nmetrics_url = \"http://{}/metrics\"\nquantization = \"bf16\"\nprice = {{ input_per_million = {pin}, output_per_million = {pout} }}\n",
            bg.addr, bg.addr
        );
        sims.push((id.to_owned(), sim, bg));
    }
    let dep = Dependency::new(Duration::from_millis(15), 0.3, Vec::new());
    let dep_bg = app::start_dependency(Arc::clone(&dep), any).await?;
    let config_text = |port: u16| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ngrace_period = \"2s\"\n[timeouts]\nttft = \"8s\"\nidle = \"5s\"\ntotal = \"60s\"\n[targets]\nttft = \"1s\"\ndecode_tokens_per_s = 40.0\ne2e = \"20s\"\nerror_rate = 0.01\n[health]\nmin_requests = 10\n[request_log]\npath = \"{}\"\n{providers}",
            dir.path().join("candor.db").display()
        )
    };
    let running = match app::start(Config::parse(&config_text(args.port), |_| None)?).await {
        Ok(r) => r,
        Err(app::AppError::Bind { .. }) => {
            app::start(Config::parse(&config_text(0), |_| None)?).await?
        }
        Err(e) => return Err(e.into()),
    };
    let gw = format!("http://{}", running.addr);
    out(&format!(
        "Candor demo: 3 simulated providers of {MODEL}, a simulated vector DB, a replay of the Azure LLM conversation trace at {}x.\n\n  gateway     {gw}/v1   (point any OpenAI SDK here, model \"{MODEL}\")\n  health      {gw}/health\n  metrics     {gw}/metrics\n  requests    {gw}/api/requests?limit=20\n  request log {}\n\nFault timeline (repeats every {CYCLE}s):\n",
        args.speedup,
        dir.path().join("candor.db").display()
    ));
    for p in timeline() {
        let target = p.target.map_or("vector-db", |i| sims[i].0.as_str());
        out(&format!(
            "  t={:>3}s..{:>3}s  {target:<9} {}\n",
            p.at,
            p.at + p.secs,
            p.what
        ));
    }
    out("\nCtrl-C stops everything.\n\n");

    let stop = CancellationToken::new();
    let load_cfg = LoadConfig {
        url: gw.clone(),
        model: MODEL.into(),
        api_key: None,
        trace: trace::parse(trace::samples::AZURE_CONV)?,
        speedup: args.speedup,
        prompt_scale: 0.5,
        max_prompt_tokens: 4096,
        max_output_tokens: 256,
        limit: None,
        rag: Some(Rag {
            url: format!("http://{}/query", dep_bg.addr),
            deadline: Duration::from_secs(20),
        }),
        targets: running.gateway.config.targets,
        progress: false,
    };
    let start = Instant::now();
    let load_loop = async {
        while !stop.is_cancelled() {
            load::run(&load_cfg, stop.clone()).await;
        }
    };
    let health = running.gateway.health.clone();
    let status_loop = async {
        let mut applied = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let t = start.elapsed().as_secs();
            let cycle = t / CYCLE;
            let in_cycle = t % CYCLE;
            let phases = timeline();
            let mut current = "none";
            for (i, p) in phases.iter().enumerate() {
                let key = cycle * 100 + i as u64 + 1;
                if in_cycle >= p.at && in_cycle < p.at + p.secs {
                    current = p.what;
                    if applied < key {
                        applied = key;
                        let left = Duration::from_secs(p.at + p.secs - in_cycle);
                        match p.target {
                            Some(s) => sims[s].1.lock().faults.inject(
                                p.fault.clone(),
                                Instant::now(),
                                Some(left),
                            ),
                            None => dep.inject(p.fault.clone(), left),
                        }
                    }
                }
            }
            if let Some(r) = health.report().await {
                out(&status_line(t, current, &r));
            }
        }
    };
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = load_loop => {},
        () = status_loop => {},
        () = super::shutdown_signal() => {},
        () = deadline => {},
    }
    stop.cancel();
    out("\nstopping…\n");
    running.stop().await?;
    for (_, _, bg) in sims {
        bg.stop().await;
    }
    dep_bg.stop().await;
    Ok(())
}

fn status_line(t: u64, fault: &str, r: &HealthReport) -> String {
    let o = &r.overall.one_minute;
    let mut line = format!(
        "[{t:>4}s] {:<13} within targets {:>5.1}%  {:>5.1} completions/min | fault: {fault}\n",
        r.verdict.as_str(),
        o.within_targets_share.unwrap_or(1.0) * 100.0,
        o.completions_per_min,
    );
    for p in &r.providers {
        let w = &p.scope.one_minute;
        let _ = writeln!(
            line,
            "         {:<7} {:<13} reqs/1m {:>4}  p95 TTFT {:>6}  decode {:>6} tok/s  err {:>5.1}%  in flight {}",
            p.id,
            p.scope.verdict.as_str(),
            w.requests,
            w.ttft_ms.p95.map_or("-".into(), |v| format!("{v:.0}ms")),
            w.decode_tokens_per_s_p50
                .map_or("-".into(), |v| format!("{v:.0}")),
            w.error_rate.unwrap_or(0.0) * 100.0,
            p.scope.in_flight,
        );
    }
    line
}
