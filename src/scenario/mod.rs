//! Scenarios: simulated providers with fault timelines, a simulated dependency, a gateway and
//! a trace replay, started together on loopback. `candor scenario run` and `candor demo` are
//! both scenarios; the run samples the gateway's own health report every second so what was
//! injected can be set beside what Candor saw.

mod report;
pub mod truth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError, Background, Running};
use crate::config::{Config, ConfigError, Policy};
use crate::load::{self, LoadConfig, Rag, trace};
use crate::sim::dependency::Dependency;
use crate::sim::fault::Scheduled;
use crate::sim::{Profile, Sim};
pub use report::{FaultWindow, ProviderSample, Sample, ScenarioReport, Verdicts, comparison_table};

/// The scenario `candor demo` runs, embedded so the demo needs no file.
pub const DEMO: &str = include_str!("../../scenarios/demo.toml");

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// How long to run (the load stops then).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Model every simulated provider serves.
    #[serde(default = "default_model")]
    pub model: String,
    /// Simulated providers.
    pub providers: Vec<ScenarioProvider>,
    /// Simulated vector DB, queried before each LLM call when present.
    #[serde(default)]
    pub dependency: Option<ScenarioDependency>,
    /// The trace replay.
    pub load: ScenarioLoad,
    /// When set, every fault timeline repeats with this period.
    #[serde(default, with = "humantime_serde")]
    pub fault_cycle: Option<Duration>,
    /// Extra gateway configuration (`[gateway.targets]`, `[gateway.timeouts]`, `[gateway.health]`).
    #[serde(default)]
    pub gateway: toml::Table,
}

fn default_model() -> String {
    "llama-3.1-8b".into()
}

/// One simulated provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioProvider {
    /// Provider id at the gateway.
    pub id: String,
    /// Price per million input tokens.
    #[serde(default)]
    pub input_per_million: f64,
    /// Price per million output tokens.
    #[serde(default)]
    pub output_per_million: f64,
    /// Engine and faults (the model is the scenario's).
    #[serde(default)]
    pub profile: Profile,
}

/// The simulated dependency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioDependency {
    /// Healthy median latency.
    #[serde(with = "humantime_serde", default = "default_dep_latency")]
    pub median_latency: Duration,
    /// Client deadline for dependency + LLM.
    #[serde(with = "humantime_serde", default = "default_deadline")]
    pub deadline: Duration,
    /// Faults on the dependency.
    #[serde(default)]
    pub faults: Vec<Scheduled>,
}

fn default_dep_latency() -> Duration {
    Duration::from_millis(15)
}

fn default_deadline() -> Duration {
    Duration::from_secs(20)
}

/// The trace replay.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioLoad {
    /// `azure-conv`, `azure-code`, `mooncake`, or a file path.
    #[serde(default = "default_trace")]
    pub trace: String,
    /// Time compression.
    #[serde(default = "one")]
    pub speedup: f64,
    /// Prompt length scale.
    #[serde(default = "one")]
    pub prompt_scale: f64,
    /// Prompt cap, tokens.
    #[serde(default = "default_max_prompt")]
    pub max_prompt_tokens: u32,
    /// Output cap, tokens.
    #[serde(default = "default_max_output")]
    pub max_output_tokens: u32,
}

fn default_trace() -> String {
    "azure-conv".into()
}
fn one() -> f64 {
    1.0
}
fn default_max_prompt() -> u32 {
    4096
}
fn default_max_output() -> u32 {
    256
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable or invalid file.
    #[error("scenario {0}: {1}")]
    File(String, String),
    /// The generated gateway configuration is invalid.
    #[error("gateway configuration: {0}")]
    Config(#[from] ConfigError),
    /// Something could not start.
    #[error(transparent)]
    Start(#[from] AppError),
    /// The trace could not be read.
    #[error("trace: {0}")]
    Trace(String),
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::File(name.clone(), e.to_string()))?;
        Scenario::parse(&text).map_err(|e| ScenarioError::File(name, e.to_string()))
    }

    /// Parses scenario text.
    pub fn parse(text: &str) -> Result<Scenario, toml::de::Error> {
        toml::from_str(text)
    }

    /// Makes the gateway route with `policy`.
    pub fn set_policy(&mut self, policy: Policy) {
        let routing = self
            .gateway
            .entry("routing")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = routing.as_table_mut() {
            t.insert("policy".into(), policy.as_str().into());
        }
    }

    /// Every fault on the timeline, with where it applies.
    pub fn fault_windows(&self) -> Vec<FaultWindow> {
        let mut out: Vec<FaultWindow> = self
            .providers
            .iter()
            .flat_map(|p| p.profile.faults.iter().map(|f| FaultWindow::of(&p.id, f)))
            .chain(
                self.dependency
                    .iter()
                    .flat_map(|d| d.faults.iter().map(|f| FaultWindow::of("vector-db", f))),
            )
            .collect();
        out.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        out
    }
}

/// Everything a scenario started.
#[derive(Debug)]
pub struct Started {
    /// The gateway.
    pub gateway: Running,
    /// Simulators by provider id.
    pub sims: Vec<(String, Arc<Sim>, Background)>,
    /// The dependency.
    pub dependency: Option<(Arc<Dependency>, Background)>,
    /// The gateway's request-log directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// When the fault timelines started.
    pub started: Instant,
}

impl Started {
    /// Stops everything in order.
    pub async fn stop(self) -> Result<(), AppError> {
        let result = self.gateway.stop().await;
        for (_, _, bg) in self.sims {
            bg.stop().await;
        }
        if let Some((_, bg)) = self.dependency {
            bg.stop().await;
        }
        result
    }
}

/// Starts the scenario's simulators, dependency and gateway (listening on `port`, or a free
/// port when 0 or taken).
pub async fn start(s: &Scenario, port: u16) -> Result<Started, ScenarioError> {
    let dir = tempfile::tempdir()
        .map_err(|e| ScenarioError::File("temporary directory".into(), e.to_string()))?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut sims = Vec::new();
    let mut providers = Vec::new();
    for p in &s.providers {
        let profile = Profile {
            model: s.model.clone(),
            fault_cycle: s.fault_cycle.or(p.profile.fault_cycle),
            ..p.profile.clone()
        };
        let (bg, sim) = app::start_sim(profile, any).await?;
        let mut t = toml::Table::new();
        t.insert("id".into(), p.id.clone().into());
        t.insert("base_url".into(), format!("http://{}/v1", bg.addr).into());
        t.insert(
            "metrics_url".into(),
            format!("http://{}/metrics", bg.addr).into(),
        );
        t.insert(
            "health_url".into(),
            format!("http://{}/health", bg.addr).into(),
        );
        t.insert(
            "models".into(),
            toml::Value::Array(vec![s.model.clone().into()]),
        );
        t.insert("quantization".into(), "bf16".into());
        let mut price = toml::Table::new();
        price.insert("input_per_million".into(), p.input_per_million.into());
        price.insert("output_per_million".into(), p.output_per_million.into());
        t.insert("price".into(), price.into());
        providers.push(toml::Value::Table(t));
        sims.push((p.id.clone(), sim, bg));
    }
    let dependency = match &s.dependency {
        Some(d) => {
            let dep = Dependency::new(d.median_latency, 0.3, d.faults.clone(), s.fault_cycle);
            let bg = app::start_dependency(Arc::clone(&dep), any).await?;
            Some((dep, bg))
        }
        None => None,
    };
    let started = Instant::now();
    let config = |port: u16| -> Result<Config, ScenarioError> {
        let mut root = s.gateway.clone();
        let server = root
            .entry("server")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = server.as_table_mut() {
            t.insert("listen".into(), format!("127.0.0.1:{port}").into());
            t.entry("grace_period").or_insert_with(|| "2s".into());
        }
        let mut log = toml::Table::new();
        log.insert(
            "path".into(),
            dir.path().join("candor.db").display().to_string().into(),
        );
        root.insert("request_log".into(), log.into());
        // A fixed routing seed: run in virtual time, the same scenario routes the same way.
        if let Some(t) = root
            .entry("routing")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        {
            t.entry("seed").or_insert_with(|| 1.into());
        }
        root.insert("providers".into(), toml::Value::Array(providers.clone()));
        // The gateway watches the vector DB through the latency histogram it exports.
        if let Some((_, bg)) = &dependency
            && !root.contains_key("dependency")
        {
            let mut d = toml::Table::new();
            d.insert("name".into(), "vector-db".into());
            d.insert(
                "metrics_url".into(),
                format!("http://{}/metrics", bg.addr).into(),
            );
            d.insert(
                "latency_metric".into(),
                "vectordb_query_duration_seconds".into(),
            );
            d.insert("interval".into(), "1s".into());
            root.insert(
                "dependency".into(),
                toml::Value::Array(vec![toml::Value::Table(d)]),
            );
        }
        let text = toml::to_string(&root)
            .map_err(|e| ScenarioError::File("gateway".into(), e.to_string()))?;
        Ok(Config::parse(&text, |_| None)?)
    };
    let gateway = match app::start(config(port)?).await {
        Ok(r) => r,
        Err(AppError::Bind { .. }) if port != 0 => app::start(config(0)?).await?,
        Err(e) => return Err(e.into()),
    };
    Ok(Started {
        gateway,
        sims,
        dependency,
        dir,
        started,
    })
}

/// The load configuration for a started scenario.
pub fn load_config(s: &Scenario, started: &Started) -> Result<LoadConfig, ScenarioError> {
    let text = trace::read(&s.load.trace)
        .map_err(|e| ScenarioError::Trace(format!("{}: {e}", s.load.trace)))?;
    Ok(LoadConfig {
        url: format!("http://{}", started.gateway.addr),
        model: s.model.clone(),
        api_key: None,
        trace: trace::parse(&text).map_err(|e| ScenarioError::Trace(e.to_string()))?,
        speedup: s.load.speedup,
        prompt_scale: s.load.prompt_scale,
        max_prompt_tokens: s.load.max_prompt_tokens,
        max_output_tokens: s.load.max_output_tokens,
        limit: None,
        rag: match (&s.dependency, &started.dependency) {
            (Some(d), Some((_, bg))) => Some(Rag {
                url: format!("http://{}/query", bg.addr),
                deadline: d.deadline,
            }),
            _ => None,
        },
        targets: started.gateway.gateway.config.targets,
        progress: false,
    })
}

/// Runs a started scenario for its duration (or until `stop`), replaying the trace in a
/// loop and sampling the gateway's health report every `every`. `on_sample` sees each sample.
pub async fn run(
    s: &Scenario,
    started: &Started,
    every: Duration,
    stop: CancellationToken,
    mut on_sample: impl FnMut(&Sample),
) -> Result<ScenarioReport, ScenarioError> {
    let load_cfg = load_config(s, started)?;
    let load_stop = stop.child_token();
    let mut tally = load::Tally::default();
    tally.set_origin(started.started);
    let replay = async {
        while !load_stop.is_cancelled() {
            load::run_into(&load_cfg, load_stop.clone(), &mut tally).await;
        }
    };
    let mut samples = Vec::new();
    let health = started.gateway.gateway.health.clone();
    let sampler = async {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let t = started.started.elapsed();
            if let Some(r) = health.report().await {
                let sample = Sample::from_report(t, &r);
                on_sample(&sample);
                samples.push(sample);
            }
        }
    };
    tokio::select! {
        () = replay => {},
        () = sampler => {},
        () = tokio::time::sleep_until(started.started + s.duration) => {},
        () = stop.cancelled() => {},
    }
    load_stop.cancel();
    let mut by_provider: BTreeMap<String, Vec<report::Transition>> = BTreeMap::new();
    for (id, ..) in &started.sims {
        by_provider.insert(id.clone(), report::transitions(&samples, Some(id)));
    }
    Ok(ScenarioReport {
        name: s.name.clone(),
        duration_s: started.started.elapsed().as_secs_f64(),
        faults: s.fault_windows(),
        overall: report::transitions(&samples, None),
        providers: by_provider,
        incidents: report::incident_spans(&samples),
        load: {
            let mut load = tally.report();
            load.duration_s = started.started.elapsed().as_secs_f64();
            load
        },
        samples,
    })
}

/// Runs `s` start to finish in virtual time: on a runtime of its own, one thread, whose clock
/// is paused and jumps to the next timer whenever every task waits. The simulators, the
/// dependency, the gateway and the load all read that clock, so a scenario takes the CPU time
/// its traffic needs rather than its duration. Blocks the calling thread, which must not be a
/// runtime worker (use `spawn_blocking`).
pub fn run_virtual(s: &Scenario) -> Result<ScenarioReport, ScenarioError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| ScenarioError::Start(AppError::Serve(e)))?;
    runtime.block_on(async {
        let started = start(s, 0).await?;
        let report = run(
            s,
            &started,
            Duration::from_secs(1),
            CancellationToken::new(),
            |_| {},
        )
        .await;
        started.stop().await?;
        report
    })
}

/// Runs `s` once per policy, one after another with fresh simulators, and returns each
/// run's report. `on_run` is told which policy starts.
pub async fn compare(
    s: &Scenario,
    policies: &[Policy],
    stop: CancellationToken,
    mut on_run: impl FnMut(Policy),
) -> Result<Vec<(Policy, ScenarioReport)>, ScenarioError> {
    let mut out = Vec::new();
    for &policy in policies {
        if stop.is_cancelled() {
            break;
        }
        on_run(policy);
        let mut one = s.clone();
        one.set_policy(policy);
        let started = start(&one, 0).await?;
        let report = run(
            &one,
            &started,
            Duration::from_secs(1),
            stop.child_token(),
            |_| {},
        )
        .await;
        started.stop().await?;
        out.push((policy, report?));
    }
    Ok(out)
}
