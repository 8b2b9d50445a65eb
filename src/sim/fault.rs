//! Faults the simulator can inject, each reproducing one way inference fails, and the
//! timeline that switches them on and off.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// One injectable fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Hardware degradation: prefill and decode run at `factor` of normal speed.
    Slowdown {
        /// 0.6 is the brief's 40 % drop.
        factor: f64,
    },
    /// KV-cache pressure: usable KV capacity shrinks to `factor`; preemptions follow.
    KvPressure {
        /// Share of capacity left.
        factor: f64,
    },
    /// Batch-queue deadlock: the engine stops stepping; requests queue forever.
    Deadlock,
    /// Sampling temperature drift: outputs become incoherent and more varied.
    TemperatureDrift,
    /// Silent context truncation: the front of longer prompts is dropped.
    PromptTruncation {
        /// Prompt tokens kept (the tail).
        keep_tokens: u32,
    },
    /// JSON outputs come back malformed.
    BrokenJson,
    /// Unexpected-script characters mixed into outputs.
    ForeignScript,
    /// Outputs fall into a repetition loop until `max_tokens`.
    Repetition,
    /// A share of requests fail with `status` (429 carries `retry-after`).
    Errors {
        /// Share of requests, 0..=1.
        rate: f64,
        /// HTTP status.
        status: u16,
    },
    /// A share of streams are cut mid-way with a connection reset.
    Reset {
        /// Share of streams.
        rate: f64,
    },
    /// A share of requests wait `delay` before being queued.
    LatencySpike {
        /// Share of requests.
        rate: f64,
        /// Extra delay.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// (Dependency only) query latency multiplied by `factor`.
    DependencySlow {
        /// Latency multiplier.
        factor: f64,
    },
}

impl Fault {
    /// Short name for timelines and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Slowdown { .. } => "slowdown",
            Fault::KvPressure { .. } => "kv_pressure",
            Fault::Deadlock => "deadlock",
            Fault::TemperatureDrift => "temperature_drift",
            Fault::PromptTruncation { .. } => "prompt_truncation",
            Fault::BrokenJson => "broken_json",
            Fault::ForeignScript => "foreign_script",
            Fault::Repetition => "repetition",
            Fault::Errors { .. } => "errors",
            Fault::Reset { .. } => "reset",
            Fault::LatencySpike { .. } => "latency_spike",
            Fault::DependencySlow { .. } => "dependency_slow",
        }
    }
}

/// A fault scheduled on the timeline, relative to the simulator's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    /// When it starts.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    /// How long it lasts (forever when absent).
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
}

/// A fault injected at run time (`POST /sim/faults`): the fault, for `duration` or until
/// cleared.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Injection {
    /// How long it lasts.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// The fault.
    #[serde(flatten)]
    pub fault: Fault,
}

/// A fault in force.
#[derive(Debug, Clone)]
struct Active {
    fault: Fault,
    until: Option<Instant>,
}

/// The faults in force now: the timeline's plus those injected at run time.
#[derive(Debug, Clone)]
pub struct Faults {
    start: Instant,
    cycle: Option<Duration>,
    timeline: Vec<Scheduled>,
    injected: Vec<Active>,
}

impl Faults {
    /// Faults for a simulator that started at `start`; with `cycle`, the timeline repeats.
    pub fn new(start: Instant, timeline: Vec<Scheduled>, cycle: Option<Duration>) -> Faults {
        Faults {
            start,
            cycle,
            timeline,
            injected: Vec::new(),
        }
    }

    /// Injects a fault now, for `duration` or until cleared.
    pub fn inject(&mut self, fault: Fault, now: Instant, duration: Option<Duration>) {
        self.injected.push(Active {
            fault,
            until: duration.map(|d| now + d),
        });
    }

    /// Applies a run-time injection at `now`.
    pub fn apply(&mut self, injection: Injection, now: Instant) {
        self.inject(injection.fault, now, injection.duration);
    }

    /// Clears injected faults and the rest of the timeline.
    pub fn clear(&mut self) {
        self.injected.clear();
        self.timeline.clear();
    }

    /// Every fault in force at `now`.
    pub fn active(&self, now: Instant) -> Vec<Fault> {
        let mut t = now.saturating_duration_since(self.start);
        if let Some(c) = self.cycle.filter(|c| !c.is_zero()) {
            t = Duration::from_nanos((t.as_nanos() % c.as_nanos()) as u64);
        }
        let scheduled = self
            .timeline
            .iter()
            .filter(move |s| s.at <= t && s.duration.is_none_or(|d| t < s.at + d))
            .map(|s| s.fault.clone());
        let injected = self
            .injected
            .iter()
            .filter(move |a| a.until.is_none_or(|u| now < u))
            .map(|a| a.fault.clone());
        scheduled.chain(injected).collect()
    }
}

/// The effect of the faults in force, folded into numbers the engine and text use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Speed multiplier (1 = normal).
    pub speed: f64,
    /// KV capacity multiplier.
    pub kv: f64,
    /// Engine stopped.
    pub deadlock: bool,
    /// Quality faults.
    pub temperature_drift: bool,
    /// Tokens kept from the end of the prompt, when truncating.
    pub keep_prompt_tokens: Option<u32>,
    /// JSON breaks.
    pub broken_json: bool,
    /// Foreign characters.
    pub foreign_script: bool,
    /// Repetition loops.
    pub repetition: bool,
    /// (rate, status) of injected errors.
    pub errors: Option<(f64, u16)>,
    /// Share of streams reset.
    pub reset: f64,
    /// (rate, delay) of latency spikes.
    pub spike: Option<(f64, Duration)>,
    /// Dependency latency multiplier.
    pub dependency: f64,
}

impl Effects {
    /// Folds `faults` into effects.
    pub fn of(faults: &[Fault]) -> Effects {
        let mut e = Effects {
            speed: 1.0,
            kv: 1.0,
            dependency: 1.0,
            ..Effects::default()
        };
        for f in faults {
            match *f {
                Fault::Slowdown { factor } => e.speed *= factor.clamp(0.01, 10.0),
                Fault::KvPressure { factor } => e.kv *= factor.clamp(0.01, 1.0),
                Fault::Deadlock => e.deadlock = true,
                Fault::TemperatureDrift => e.temperature_drift = true,
                Fault::PromptTruncation { keep_tokens } => {
                    e.keep_prompt_tokens = Some(keep_tokens.max(1));
                }
                Fault::BrokenJson => e.broken_json = true,
                Fault::ForeignScript => e.foreign_script = true,
                Fault::Repetition => e.repetition = true,
                Fault::Errors { rate, status } => e.errors = Some((rate.clamp(0.0, 1.0), status)),
                Fault::Reset { rate } => e.reset = rate.clamp(0.0, 1.0),
                Fault::LatencySpike { rate, delay } => {
                    e.spike = Some((rate.clamp(0.0, 1.0), delay))
                }
                Fault::DependencySlow { factor } => e.dependency *= factor.max(0.0),
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_switches_faults_on_and_off() {
        let t0 = Instant::now();
        let timeline: Vec<Scheduled> =
            toml::from_str::<std::collections::BTreeMap<String, Vec<Scheduled>>>(
                r#"
faults = [
  { at = "10s", duration = "20s", kind = "slowdown", factor = 0.6 },
  { at = "40s", kind = "deadlock" },
]"#,
            )
            .unwrap()
            .remove("faults")
            .unwrap();
        let mut f = Faults::new(t0, timeline.clone(), None);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(f.active(at(5)).is_empty());
        assert_eq!(Effects::of(&f.active(at(15))).speed, 0.6);
        assert!(f.active(at(35)).is_empty());
        assert!(Effects::of(&f.active(at(45))).deadlock);
        f.inject(Fault::Repetition, at(45), Some(Duration::from_secs(5)));
        assert!(Effects::of(&f.active(at(46))).repetition);
        assert!(!Effects::of(&f.active(at(51))).repetition);
        f.clear();
        assert!(f.active(at(100)).is_empty());
        let cyclic = Faults::new(t0, timeline, Some(Duration::from_secs(100)));
        assert_eq!(
            Effects::of(&cyclic.active(at(115))).speed,
            0.6,
            "repeats every 100 s"
        );
    }
}
