//! The truth scorecard: scenarios drawn at random from a seed — two to eight providers of
//! mixed speed, a production trace, a load from light to overloaded, none, one or two faults
//! of any kind, sudden or creeping in — run in virtual time and scored against what was
//! injected: recall, time to detect, wrong names, wrong providers, and false incidents per
//! simulated hour on clean runs by load level.
//!
//! The generator knows nothing of the detectors' thresholds: the load is sized from the
//! engines' own arithmetic (a full batch's step time, the prefill rate) and the trace's mean
//! request, and each fault's expected name and time bound come from the detectors' documented
//! sensitivities (`docs/detectors.md`).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::report::IncidentSpan;
use super::{Scenario, ScenarioDependency, ScenarioError, ScenarioLoad, ScenarioProvider};
use crate::detect::Mode;
use crate::load::trace;
use crate::sim::Profile;
use crate::sim::engine::EngineConfig;
use crate::sim::fault::{Fault, Scheduled};
use crate::splitmix::{SplitMix, mix};

/// How heavily a drawn scenario loads its providers: demand over the capacity their engines
/// can serve, by the generator's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadLevel {
    /// 10–30 % of capacity.
    Light,
    /// 30–55 %.
    Moderate,
    /// 55–80 %.
    Heavy,
    /// 130–220 %: more than the providers can serve.
    Overloaded,
}

impl LoadLevel {
    const ALL: [LoadLevel; 4] = [
        LoadLevel::Light,
        LoadLevel::Moderate,
        LoadLevel::Heavy,
        LoadLevel::Overloaded,
    ];

    fn range(self) -> (f64, f64) {
        match self {
            LoadLevel::Light => (0.1, 0.3),
            LoadLevel::Moderate => (0.3, 0.55),
            LoadLevel::Heavy => (0.55, 0.8),
            LoadLevel::Overloaded => (1.3, 2.2),
        }
    }

    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadLevel::Light => "light",
            LoadLevel::Moderate => "moderate",
            LoadLevel::Heavy => "heavy",
            LoadLevel::Overloaded => "overloaded",
        }
    }
}

/// One injected fault and what a truthful gateway says about it.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// Provider id, or `vector-db`.
    pub target: String,
    /// The fault as injected (the first step of a creeping one).
    pub fault: String,
    /// Severity in words (`0.6x`, `20% +3s`, …).
    pub severity: String,
    /// Crept in over minutes rather than at once.
    pub gradual: bool,
    /// The incident it should open.
    pub expected: Mode,
    /// The incident's subject (the provider, or `gateway` for a cascade).
    pub subject: String,
    /// When it began, s.
    pub onset_s: f64,
    /// When it reached the detector's documented sensitivity, s (the onset for a step).
    pub sensitive_from_s: Option<f64>,
    /// When it ended, s.
    pub end_s: f64,
    /// How long after `sensitive_from_s` the incident may take.
    pub bound_s: f64,
}

/// A drawn scenario and what was injected in it.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The scenario, runnable as any other.
    pub scenario: Scenario,
    /// Its load level.
    pub level: LoadLevel,
    /// Demand over capacity.
    pub utilisation: f64,
    /// The faults (empty for a clean run).
    pub faults: Vec<Injected>,
}

/// The mean request of a trace as the load generator will send it.
#[derive(Debug, Clone, Copy)]
struct TraceShape {
    /// Requests per second at speedup 1.
    rate: f64,
    /// The busy rate over the mean: the 90th percentile of the request rate over one-minute
    /// windows of the trace (about 1.2 for the conversation traces, 3.6 for the bursty code
    /// trace). Load levels are set by the busy rate, not the mean.
    busy: f64,
    prompt: f64,
    output: f64,
}

const TRACES: [&str; 3] = ["azure-conv", "azure-code", "mooncake"];
const MAX_PROMPT: u32 = 4096;
const MAX_OUTPUT: u32 = 256;
/// Streamed tokens per simulated second at most: bounds a run's CPU time (every token crosses
/// the simulator, the gateway and the load generator).
const TOKEN_BUDGET: f64 = 1_500.0;
/// Faults start after the baselines have had this long to learn.
const EARLIEST_ONSET: f64 = 90.0;

fn shape(name: &str, prompt_scale: f64) -> Result<TraceShape, ScenarioError> {
    let text = trace::read(name).map_err(|e| ScenarioError::Trace(format!("{name}: {e}")))?;
    let t = trace::parse(&text).map_err(|e| ScenarioError::Trace(e.to_string()))?;
    let n = t.len().max(1) as f64;
    let span = t.last().map_or(1.0, |r| r.offset.as_secs_f64()).max(1.0);
    let prompt = t
        .iter()
        .map(|r| ((f64::from(r.input_tokens) * prompt_scale) as u32).clamp(1, MAX_PROMPT))
        .map(f64::from)
        .sum::<f64>();
    let output = t
        .iter()
        .map(|r| f64::from(r.output_tokens.clamp(1, MAX_OUTPUT)))
        .sum::<f64>();
    let mut per_minute = vec![0u32; (span / 60.0) as usize + 1];
    for r in &t {
        if let Some(c) = per_minute.get_mut((r.offset.as_secs_f64() / 60.0) as usize) {
            *c += 1;
        }
    }
    // The last minute is partial; leave it out when there are others.
    if per_minute.len() > 1 {
        per_minute.pop();
    }
    let mut rates: Vec<f64> = per_minute.iter().map(|&c| f64::from(c) / 60.0).collect();
    let busy = percentile(&mut rates, 0.9).unwrap_or(n / span) / (n / span);
    Ok(TraceShape {
        rate: n / span,
        busy: busy.max(1.0),
        prompt: prompt / n,
        output: output / n,
    })
}

/// Requests per second an engine serves with every slot busy: prefill (unchunked, it stalls
/// the batch) plus each request's share of the full batch's decode steps.
fn capacity(e: &EngineConfig, t: &TraceShape) -> f64 {
    let step = e.step_time(e.slots).as_secs_f64();
    1.0 / (t.prompt / e.prefill_tokens_per_s + t.output * step / e.slots as f64)
}

fn pick<T: Copy>(r: &mut SplitMix, xs: &[T]) -> T {
    xs[r.below(xs.len() as u64) as usize]
}

fn between(r: &mut SplitMix, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * r.unit()
}

fn engine(r: &mut SplitMix) -> EngineConfig {
    let slots = pick(r, &[16, 32, 48, 64]);
    EngineConfig {
        slots,
        kv_capacity_tokens: (slots as f64
            * f64::from(MAX_PROMPT + MAX_OUTPUT)
            * between(r, 1.0, 1.5)) as u64,
        prefill_tokens_per_s: between(r, 8_000.0, 40_000.0),
        decode_step: Duration::from_secs_f64(between(r, 0.006, 0.020)),
        decode_step_per_seq: Duration::from_secs_f64(between(r, 0.000_15, 0.000_6)),
        chunked_prefill: r.unit() < 0.5,
        max_batched_tokens: pick(r, &[8_192, 16_384]),
    }
}

/// Makes an engine `k` times smaller: fewer slots first (a smaller deployment, each stream
/// as fast), then slower decode steps once at sixteen slots (fewer would queue at loads a
/// production server carries without one). Prefill keeps its rate: a slow prefill would
/// stall every stream for seconds, which is a fault, not a smaller engine.
fn shrink(e: &mut EngineConfig, k: f64) {
    let slots = ((e.slots as f64 / k).round() as usize).max(16).min(e.slots);
    let left = k * slots as f64 / e.slots as f64;
    e.kv_capacity_tokens = e.kv_capacity_tokens * slots as u64 / e.slots.max(1) as u64;
    e.slots = slots;
    if left > 1.0 {
        e.decode_step = e.decode_step.mul_f64(left);
        e.decode_step_per_seq = e.decode_step_per_seq.mul_f64(left);
    }
}

/// Draws the scenario for `seed`.
pub fn draw(seed: u64) -> Result<Drawn, ScenarioError> {
    let mut r = SplitMix::new(mix(seed));
    let trace_name = pick(&mut r, &TRACES);
    let prompt_scale = if trace_name == "mooncake" { 0.2 } else { 0.5 };
    let t = shape(trace_name, prompt_scale)?;
    let n = 2 + r.below(7) as usize;
    let mut engines: Vec<EngineConfig> = (0..n).map(|_| engine(&mut r)).collect();
    let level = if r.unit() < 0.2 {
        LoadLevel::Overloaded
    } else {
        pick(&mut r, &LoadLevel::ALL[..3])
    };
    let (lo, hi) = level.range();
    let utilisation = between(&mut r, lo, hi);
    let cap: f64 = engines.iter().map(|e| capacity(e, &t)).sum();
    let tokens = utilisation * cap * t.output / t.busy;
    if tokens > TOKEN_BUDGET {
        let k = tokens / TOKEN_BUDGET;
        engines.iter_mut().for_each(|e| shrink(e, k));
    }
    let cap: f64 = engines.iter().map(|e| capacity(e, &t)).sum();
    // The mean demand whose busy minutes load the providers to `utilisation`.
    let demand = utilisation * cap / t.busy;
    let slowest_stream = engines
        .iter()
        .map(|e| 1.0 / e.step_time(e.slots).as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let decode_target = (0.5 * slowest_stream).floor().max(1.0);
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let fault_count = match r.below(20) {
        0..=6 => 0,
        7..=16 => 1,
        _ => 2,
    };
    let with_dependency = r.unit() < 0.3;
    let mut faults: Vec<(Injected, Vec<Scheduled>)> = Vec::new();
    for _ in 0..fault_count {
        let taken: Vec<&str> = faults.iter().map(|(f, _)| f.target.as_str()).collect();
        let free: Vec<&String> = ids
            .iter()
            .filter(|i| !taken.contains(&i.as_str()))
            .collect();
        let onset = between(&mut r, EARLIEST_ONSET, 150.0).round();
        if let Some(f) = draw_fault(&mut r, &free, taken.contains(&"vector-db"), onset) {
            faults.push(f);
        }
    }
    let needs_dependency = faults.iter().any(|(f, _)| f.target == "vector-db");
    let end = faults.iter().map(|(f, _)| f.end_s).fold(0.0, f64::max);
    let duration = (end + 30.0).max(240.0);
    let providers = ids
        .iter()
        .zip(engines)
        .zip(0u64..)
        .map(|((id, engine), i)| ScenarioProvider {
            id: id.clone(),
            input_per_million: 0.1,
            output_per_million: 0.3,
            profile: Profile {
                seed: mix(seed ^ mix(i)),
                engine,
                faults: faults
                    .iter()
                    .filter(|(f, _)| &f.target == id)
                    .flat_map(|(_, s)| s.clone())
                    .collect(),
                ..Profile::default()
            },
        })
        .collect();
    let dependency = (with_dependency || needs_dependency).then(|| ScenarioDependency {
        median_latency: Duration::from_millis(15),
        deadline: Duration::from_secs(30),
        faults: faults
            .iter()
            .filter(|(f, _)| f.target == "vector-db")
            .flat_map(|(_, s)| s.clone())
            .collect(),
    });
    let scenario = Scenario {
        name: format!("truth-{seed}"),
        description: format!(
            "{n} providers, {trace_name} at {:.0} % of capacity ({}), {}",
            utilisation * 100.0,
            level.as_str(),
            if faults.is_empty() {
                "clean".to_owned()
            } else {
                faults
                    .iter()
                    .map(|(f, _)| format!("{} {} on {}", f.fault, f.severity, f.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        duration: Duration::from_secs_f64(duration),
        model: super::default_model(),
        providers,
        dependency,
        load: ScenarioLoad {
            trace: trace_name.into(),
            speedup: demand / t.rate,
            prompt_scale,
            max_prompt_tokens: MAX_PROMPT,
            max_output_tokens: MAX_OUTPUT,
        },
        fault_cycle: None,
        gateway: gateway_table(decode_target),
    };
    Ok(Drawn {
        seed,
        scenario,
        level,
        utilisation,
        faults: faults.into_iter().map(|(f, _)| f).collect(),
    })
}

/// Targets a healthy pool below saturation meets: a first token within 2 s, half the slowest
/// engine's full-batch decode rate, the mean answer's time at that rate with room to spare.
fn gateway_table(decode_target: f64) -> toml::Table {
    let e2e = (2.0 + 2.0 * f64::from(MAX_OUTPUT) / decode_target).ceil();
    let table = |pairs: &[(&str, toml::Value)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    };
    let mut root = toml::Table::new();
    root.insert(
        "targets".into(),
        table(&[
            ("ttft", "2s".into()),
            ("decode_tokens_per_s", decode_target.into()),
            ("e2e", format!("{e2e}s").into()),
        ]),
    );
    root.insert(
        "timeouts".into(),
        table(&[
            ("ttft", "10s".into()),
            ("idle", "5s".into()),
            ("total", format!("{}s", e2e + 30.0).into()),
        ]),
    );
    root.insert("health".into(), table(&[("min_requests", 10.into())]));
    root
}

/// One fault of a kind drawn at random, on a free provider (or the vector DB), from `onset`.
fn draw_fault(
    r: &mut SplitMix,
    free: &[&String],
    dependency_taken: bool,
    onset: f64,
) -> Option<(Injected, Vec<Scheduled>)> {
    let kinds = if dependency_taken { 9 } else { 10 };
    let kind = r.below(kinds);
    let held = between(r, 45.0, 90.0).round();
    if kind == 9 {
        let factor = pick(r, &[3.0, 10.0, 40.0, 100.0]);
        let step = Step {
            target: "vector-db",
            subject: "gateway",
            fault: Fault::DependencySlow { factor },
            severity: format!("{factor}x"),
            expected: Mode::CascadingTimeouts,
            bound: 45.0,
        };
        return Some(step.at(onset, held));
    }
    let target = free.get(r.below(free.len() as u64) as usize)?.as_str();
    let one = |fault: Fault, severity: String, expected: Mode, bound: f64| {
        Step {
            target,
            subject: target,
            fault,
            severity,
            expected,
            bound,
        }
        .at(onset, held)
    };
    Some(match kind {
        0 if r.unit() < 0.5 => creeping_slowdown(r, target, onset),
        0 => {
            let factor = pick(r, &[0.75, 0.6, 0.4]);
            one(
                Fault::Slowdown { factor },
                format!("{factor}x"),
                Mode::HardwareDegradation,
                20.0,
            )
        }
        1 => {
            let factor = pick(r, &[0.02, 0.01]);
            one(
                Fault::KvPressure { factor },
                format!("{factor}x"),
                Mode::KvCacheThrashing,
                60.0,
            )
        }
        2 => one(
            Fault::Deadlock,
            "hang".into(),
            Mode::BatchQueueDeadlock,
            15.0,
        ),
        3 => {
            let rate = pick(r, &[0.2, 0.35]);
            let delay = Duration::from_secs(pick(r, &[3, 5]));
            one(
                Fault::LatencySpike { rate, delay },
                format!("{:.0}% +{}s", rate * 100.0, delay.as_secs()),
                Mode::TailLatency,
                30.0,
            )
        }
        4 => {
            let rate = pick(r, &[0.3, 0.6]);
            one(
                Fault::Errors { rate, status: 500 },
                format!("{:.0}% 500", rate * 100.0),
                Mode::ErrorBurst,
                20.0,
            )
        }
        5 => {
            let rate = pick(r, &[0.2, 0.5]);
            one(
                Fault::Errors { rate, status: 429 },
                format!("{:.0}% 429", rate * 100.0),
                Mode::RateLimited,
                20.0,
            )
        }
        6 => {
            let rate = pick(r, &[0.1, 0.3]);
            one(
                Fault::Reset { rate },
                format!("{:.0}% of streams", rate * 100.0),
                Mode::MidStreamResets,
                20.0,
            )
        }
        7 => one(
            Fault::Repetition,
            "every answer".into(),
            Mode::SilentQualityDegradation,
            120.0,
        ),
        _ => one(
            Fault::TemperatureDrift,
            "every answer".into(),
            Mode::SilentQualityDegradation,
            120.0,
        ),
    })
}

/// A fault switched on at once, and what should name it.
struct Step<'a> {
    target: &'a str,
    subject: &'a str,
    fault: Fault,
    severity: String,
    expected: Mode,
    bound: f64,
}

impl Step<'_> {
    /// The fault from `onset`, for `held` seconds.
    fn at(self, onset: f64, held: f64) -> (Injected, Vec<Scheduled>) {
        let injected = Injected {
            target: self.target.to_owned(),
            fault: self.fault.name().to_owned(),
            severity: self.severity,
            gradual: false,
            expected: self.expected,
            subject: self.subject.to_owned(),
            onset_s: onset,
            sensitive_from_s: Some(onset),
            end_s: onset + held,
            bound_s: self.bound,
        };
        let scheduled = Scheduled {
            at: Duration::from_secs_f64(onset),
            duration: Some(Duration::from_secs_f64(held)),
            fault: self.fault,
        };
        (injected, vec![scheduled])
    }
}

/// A decode slowdown creeping from 0.95x to 0.7x or 0.6x in 15 s steps over one to three
/// minutes, then held for a minute. Its documented sensitivity (25 %) is reached part-way.
fn creeping_slowdown(r: &mut SplitMix, target: &str, onset: f64) -> (Injected, Vec<Scheduled>) {
    let last = pick(r, &[0.7, 0.6]);
    let steps = 4 + r.below(9) as usize;
    let mut out = Vec::new();
    let mut sensitive = None;
    for i in 0..=steps {
        let factor = 0.95 + (last - 0.95) * i as f64 / steps as f64;
        let at = onset + 15.0 * i as f64;
        let held = if i == steps { 60.0 } else { 15.0 };
        if sensitive.is_none() && factor <= 0.75 + 1e-9 {
            sensitive = Some(at);
        }
        out.push(Scheduled {
            at: Duration::from_secs_f64(at),
            duration: Some(Duration::from_secs_f64(held)),
            fault: Fault::Slowdown {
                factor: (factor * 1000.0).round() / 1000.0,
            },
        });
    }
    let end = onset + 15.0 * steps as f64 + 60.0;
    let injected = Injected {
        target: target.to_owned(),
        fault: "slowdown".into(),
        severity: format!("0.95x → {last}x over {} s", 15 * steps),
        gradual: true,
        expected: Mode::HardwareDegradation,
        subject: target.to_owned(),
        onset_s: onset,
        sensitive_from_s: sensitive,
        end_s: end,
        bound_s: 30.0,
    };
    (injected, out)
}

/// Modes that name a provider's own fault (as opposed to a model's capacity, the gateway's
/// cascade or the business alerts).
fn provider_fault(m: Mode) -> bool {
    !matches!(
        m,
        Mode::CapacityExhausted | Mode::CascadingTimeouts | Mode::SloBurn | Mode::CompletionsDrop
    )
}

/// An incident span with its mode parsed.
fn parsed(s: &IncidentSpan) -> Option<(Mode, &str, f64)> {
    let (mode, subject) = s.incident.split_once('/')?;
    Some((Mode::parse(mode)?, subject, s.opened_s))
}

/// What one fault's run showed.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    /// The fault.
    pub fault: Injected,
    /// The right name on the right subject opened while it lasted (or just after).
    pub named: bool,
    /// Seconds from reaching the sensitivity to the incident.
    pub detect_s: Option<f64>,
    /// Not named, but its provider got another provider-fault incident.
    pub wrong_name: bool,
    /// The expected name opened on a provider with no fault.
    pub wrong_provider: bool,
}

/// What one drawn run showed.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// Seed.
    pub seed: u64,
    /// Load level.
    pub level: LoadLevel,
    /// Demand over capacity.
    pub utilisation: f64,
    /// Providers.
    pub providers: usize,
    /// Trace.
    pub trace: String,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Share of requests within the targets.
    pub within_targets: f64,
    /// One per fault.
    pub faults: Vec<FaultOutcome>,
    /// Provider-fault incidents on providers that had no fault (`mode/subject@opened`).
    pub false_incidents: Vec<String>,
    /// Capacity incidents opened.
    pub capacity_incidents: usize,
    /// Every incident (`mode/subject@opened`).
    pub incidents: Vec<String>,
}

/// Scores a finished run of `d`.
pub fn score(d: &Drawn, report: &super::ScenarioReport) -> RunOutcome {
    let spans: Vec<(Mode, &str, f64)> = report.incidents.iter().filter_map(parsed).collect();
    let faulted = |subject: &str, at: f64| {
        d.faults
            .iter()
            .any(|f| f.target == subject && at >= f.onset_s - 1.0 && at <= f.end_s + 60.0)
    };
    let faults = d
        .faults
        .iter()
        .map(|f| {
            let window = |at: f64| at >= f.onset_s - 1.0 && at <= f.end_s + 15.0;
            let hit = spans
                .iter()
                .filter(|(m, s, at)| *m == f.expected && *s == f.subject && window(*at))
                .map(|(.., at)| *at)
                .min_by(f64::total_cmp);
            FaultOutcome {
                named: hit.is_some(),
                detect_s: hit.map(|at| (at - f.sensitive_from_s.unwrap_or(f.onset_s)).max(0.0)),
                wrong_name: hit.is_none()
                    && spans.iter().any(|(m, s, at)| {
                        *s == f.target && *m != f.expected && provider_fault(*m) && window(*at)
                    }),
                wrong_provider: spans.iter().any(|(m, s, at)| {
                    *m == f.expected && *s != f.subject && window(*at) && !faulted(s, *at)
                }),
                fault: f.clone(),
            }
        })
        .collect();
    let show = |(m, s, at): &(Mode, &str, f64)| format!("{}/{s}@{at:.0}", m.as_str());
    RunOutcome {
        seed: d.seed,
        level: d.level,
        utilisation: d.utilisation,
        providers: d.scenario.providers.len(),
        trace: d.scenario.load.trace.clone(),
        simulated_s: report.duration_s,
        within_targets: report.load.within_targets_share,
        faults,
        false_incidents: spans
            .iter()
            .filter(|(m, s, at)| provider_fault(*m) && !faulted(s, *at))
            .map(show)
            .collect(),
        capacity_incidents: spans
            .iter()
            .filter(|(m, ..)| *m == Mode::CapacityExhausted)
            .count(),
        incidents: spans.iter().map(show).collect(),
    }
}

/// Draws, runs in virtual time and scores `seed`.
pub fn run_seed(seed: u64) -> Result<RunOutcome, ScenarioError> {
    let d = draw(seed)?;
    let report = super::run_virtual(&d.scenario)?;
    Ok(score(&d, &report))
}

fn percentile(xs: &mut [f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() - 1) as f64 * p).round() as usize;
    Some(xs[i])
}

fn secs(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.0}"))
}

/// The scorecard over `runs`, in Markdown: one row per failure mode (step and creeping
/// faults apart), then clean runs by load level.
pub fn scorecard(runs: &[RunOutcome]) -> String {
    let mut out = String::from(
        "| fault | load | runs | named | recall | within bound | TTD P50 s | TTD P95 s | wrong name | wrong provider |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(Mode, bool, bool)> = runs
        .iter()
        .flat_map(|r| {
            r.faults.iter().map(move |f| {
                (
                    f.fault.expected,
                    f.fault.gradual,
                    r.level == LoadLevel::Overloaded,
                )
            })
        })
        .collect();
    keys.sort();
    keys.dedup();
    for (mode, gradual, over) in keys {
        let fs: Vec<&FaultOutcome> = runs
            .iter()
            .filter(|r| (r.level == LoadLevel::Overloaded) == over)
            .flat_map(|r| &r.faults)
            .filter(|f| f.fault.expected == mode && f.fault.gradual == gradual)
            .collect();
        let named = fs.iter().filter(|f| f.named).count();
        let within = fs
            .iter()
            .filter(|f| f.detect_s.is_some_and(|d| d <= f.fault.bound_s))
            .count();
        let mut ttd: Vec<f64> = fs.iter().filter_map(|f| f.detect_s).collect();
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {named} | {:.0} % | {within} | {} | {} | {} | {} |",
            mode.as_str(),
            if gradual { " (creeping)" } else { "" },
            if over {
                "overloaded"
            } else {
                "below saturation"
            },
            fs.len(),
            100.0 * named as f64 / fs.len().max(1) as f64,
            secs(percentile(&mut ttd, 0.5)),
            secs(percentile(&mut ttd, 0.95)),
            fs.iter().filter(|f| f.wrong_name).count(),
            fs.iter().filter(|f| f.wrong_provider).count(),
        );
    }
    out.push_str(
        "\n| clean runs | runs | simulated h | provider-fault incidents | per simulated h | runs with a capacity incident | median share within targets |\n|---|---|---|---|---|---|---|\n",
    );
    for level in LoadLevel::ALL {
        let rs: Vec<&RunOutcome> = runs
            .iter()
            .filter(|r| r.level == level && r.faults.is_empty())
            .collect();
        if rs.is_empty() {
            continue;
        }
        let hours: f64 = rs.iter().map(|r| r.simulated_s).sum::<f64>() / 3600.0;
        let false_n: usize = rs.iter().map(|r| r.false_incidents.len()).sum();
        let mut within: Vec<f64> = rs.iter().map(|r| r.within_targets).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {hours:.2} | {false_n} | {:.1} | {} | {:.0} % |",
            level.as_str(),
            rs.len(),
            false_n as f64 / hours.max(1e-9),
            rs.iter().filter(|r| r.capacity_incidents > 0).count(),
            100.0 * percentile(&mut within, 0.5).unwrap_or(0.0),
        );
    }
    let faulty: Vec<&RunOutcome> = runs.iter().filter(|r| !r.faults.is_empty()).collect();
    let extra: usize = faulty.iter().map(|r| r.false_incidents.len()).sum();
    let _ = writeln!(
        out,
        "\nruns with faults: {}; provider-fault incidents on providers without a fault in them: {extra}",
        faulty.len()
    );
    out
}
