//! FM 5, cascading timeouts: change-point onsets of every watched dependency (an HTTP probe or
//! a scraped latency metric) and of the gateway's own symptoms (remaining client deadline on
//! arrival, gateway timeouts, end-to-end latency); when the symptoms rise, the dependency
//! whose onset came first is named as the probable root cause, with the lead (reference §7.3).
//! Pure: samples and windows come in with `now`.

use tokio::time::Instant;

use super::cusum::{Cusum, Since};
use super::{Clock, Fact, Finding, Mode, RootCause, Severity, hms};
use crate::health::baseline::learning_rate;
use crate::health::window::Slot;

/// Samples of a dependency before its latency is judged.
const LEARN_SAMPLES: u32 = 10;
/// Floor of a dependency's log-latency σ (a log-normal σ of 0.3 is ordinary jitter).
const DEP_SIGMA_FLOOR: f64 = 0.25;
/// Learning rate of a dependency's log-latency mean and variance.
const DEP_ALPHA: f64 = 0.05;
/// Gateway-symptom CUSUM σ of a window's log ratio, and the moves that count.
const GW_SIGMA: f64 = 0.1;
const DEADLINE_DROP: f64 = 0.8;
/// Learning rate of the gateway symptoms' baselines (per tick).
const GW_ALPHA: f64 = 0.02;
const E2E_RISE: f64 = 1.5;
const TIMEOUT_SHARE: f64 = 0.05;
const MIN_TIMEOUTS: u64 = 3;
/// A dependency this many times its learned latency is a leading indicator on its own.
const LEADING_MULT: f64 = 3.0;
/// Requests in the gateway window before its symptoms are judged.
const MIN_REQUESTS: u64 = 10;

/// One watched dependency: its latency samples, learned normal, and change-point state.
#[derive(Debug, Clone)]
pub struct DependencyWatch {
    /// Its name in config and findings.
    pub name: String,
    mean: f64,
    var: f64,
    samples: u32,
    cusum: Cusum,
    /// Latest latency, seconds, and when.
    pub last: Option<(f64, Instant)>,
    /// Latest probe or scrape failed.
    pub failing: bool,
}

impl DependencyWatch {
    /// A dependency with nothing learned yet.
    pub fn new(name: &str) -> DependencyWatch {
        DependencyWatch {
            name: name.to_owned(),
            mean: 0.0,
            var: 0.0,
            samples: 0,
            cusum: Cusum::new(0.5, 5.0),
            last: None,
            failing: false,
        }
    }

    /// Takes one latency sample (seconds); a failed probe counts as `timeout_s`.
    pub fn observe(&mut self, now: Instant, latency_s: Option<f64>, timeout_s: f64) {
        self.failing = latency_s.is_none();
        let x = latency_s.unwrap_or(timeout_s).max(1e-6);
        self.last = Some((x, now));
        let lx = x.ln();
        if self.samples >= LEARN_SAMPLES {
            let z = (lx - self.mean) / self.sigma();
            if self.cusum.step(now, z) {
                // Never learn from an anomaly.
                return;
            }
        }
        self.samples = self.samples.saturating_add(1);
        let a = learning_rate(self.samples, DEP_ALPHA);
        let d = lx - self.mean;
        self.mean += a * d;
        self.var = (1.0 - a) * (self.var + a * d * d);
    }

    fn sigma(&self) -> f64 {
        self.var.sqrt().max(DEP_SIGMA_FLOOR)
    }

    /// The normal latency, seconds, once learned.
    pub fn baseline(&self) -> Option<f64> {
        (self.samples >= LEARN_SAMPLES).then(|| self.mean.exp())
    }

    /// Since when its latency has been anomalous, while it is.
    pub fn anomalous_since(&self) -> Option<Instant> {
        self.cusum.alarm().then(|| self.cusum.onset()).flatten()
    }
}

/// What the gateway-level detector sees at one tick.
#[derive(Debug, Clone, Copy)]
pub struct GatewayInput<'a> {
    /// Client requests that ended in the last few seconds.
    pub recent: &'a Slot,
}

/// The gateway-level detectors' state.
#[derive(Debug, Clone)]
pub struct GatewayDetectors {
    deadline: Cusum,
    deadline_base: Base,
    e2e: Cusum,
    e2e_base: Base,
    timeouts: Since,
    episode: Option<Episode>,
}

impl Default for GatewayDetectors {
    fn default() -> Self {
        GatewayDetectors {
            deadline: Cusum::new(0.5, 5.0),
            deadline_base: Base::default(),
            e2e: Cusum::new(0.5, 5.0),
            e2e_base: Base::default(),
            timeouts: Since::default(),
            episode: None,
        }
    }
}

/// A dependency named as the probable root cause, as it was when named.
#[derive(Debug, Clone)]
struct Suspect {
    name: String,
    onset: Instant,
    latency: f64,
    baseline: f64,
    failing: bool,
}

/// A run of ticks with gateway symptoms.
#[derive(Debug, Clone)]
struct Episode {
    onset: Instant,
    root: Option<Suspect>,
}

impl Symptom {
    /// A latency symptom: `(value, base, factor)` in seconds, reported in ms; `what` has
    /// `{v}` and `{b}` for the value and the base.
    fn moved(
        signal: &'static str,
        what: &str,
        (value, base, factor): (f64, f64, f64),
        onset: Instant,
        upstream_of_gateway: bool,
    ) -> Symptom {
        let ms = |s: f64| format!("{:.0}", s * 1000.0);
        Symptom {
            onset,
            fact: Fact::new(
                signal,
                value * 1000.0,
                "ms",
                what.replace("{v}", &ms(value)).replace("{b}", &ms(base)),
            )
            .baseline(Some(base * 1000.0))
            .threshold(factor * base * 1000.0),
            upstream_of_gateway,
        }
    }
}

/// A gateway symptom: what moved, since when, and the fact.
struct Symptom {
    onset: Instant,
    fact: Fact,
    /// Only evidence of time lost before the gateway (not provider slowness).
    upstream_of_gateway: bool,
}

impl GatewayDetectors {
    /// Judges the gateway's symptoms and names the dependency that moved first.
    pub fn step(
        &mut self,
        g: &GatewayInput<'_>,
        deps: &[DependencyWatch],
        clock: &Clock,
        now: Instant,
    ) -> Option<Finding> {
        let w = g.recent;
        if w.requests < MIN_REQUESTS {
            return self.leading(w, deps, clock);
        }
        let mut symptoms = Vec::new();
        // Remaining client deadline on arrival: shrinking means time is lost before the
        // gateway (the client's own dependencies).
        if let Some(d) = w
            .deadline
            .quantile(0.5)
            .filter(|_| w.deadline.count() >= MIN_REQUESTS)
            && let Some((base, onset)) =
                track(&mut self.deadline, &mut self.deadline_base, d, -1.0, now)
            && d <= DEADLINE_DROP * base
        {
            symptoms.push(Symptom::moved(
                "deadline_remaining_ms",
                "clients arrive with {v} ms of their deadline left, against {b} ms normally",
                (d, base, DEADLINE_DROP),
                onset,
                true,
            ));
        }
        if let Some(e) = w.e2e.quantile(0.5)
            && let Some((base, onset)) = track(&mut self.e2e, &mut self.e2e_base, e, 1.0, now)
            && e >= E2E_RISE * base
        {
            symptoms.push(Symptom::moved(
                "e2e_p50_ms",
                "median end to end {v} ms against {b} ms normally",
                (e, base, E2E_RISE),
                onset,
                false,
            ));
        }
        let share = w.timed_out as f64 / w.requests as f64;
        let since = self.timeouts.update(now, w.timed_out > 0);
        if w.timed_out >= MIN_TIMEOUTS && share >= TIMEOUT_SHARE {
            symptoms.push(Symptom {
                onset: since.unwrap_or(now),
                fact: Fact::new(
                    "gateway_timeouts",
                    share,
                    "ratio",
                    format!(
                        "{} of the last {} requests ran out of deadline at the gateway (504)",
                        w.timed_out, w.requests
                    ),
                )
                .threshold(TIMEOUT_SHARE),
                upstream_of_gateway: false,
            });
        }
        if symptoms.is_empty() {
            self.episode = None;
            return self.leading(w, deps, clock);
        }
        let now_onset = symptoms.iter().map(|s| s.onset).min().unwrap_or(now);
        // One episode keeps its first onset and the root cause named in it, even when the
        // dependency recovers before the symptoms fade.
        let episode = self.episode.get_or_insert(Episode {
            onset: now_onset,
            root: None,
        });
        episode.onset = episode.onset.min(now_onset);
        let onset = episode.onset;
        // Root cause: the anomalous dependency whose onset came first, if it came no later
        // than the symptoms.
        let current = deps
            .iter()
            .filter_map(|d| d.anomalous_since().map(|t| (t, d)))
            .filter(|(t, _)| *t <= onset)
            .min_by_key(|(t, _)| *t)
            .map(|(t, d)| Suspect {
                name: d.name.clone(),
                onset: t,
                latency: d.last.map_or(0.0, |l| l.0),
                baseline: d.baseline().unwrap_or(0.0),
                failing: d.failing,
            });
        if let Some(d) = &current {
            episode.root = Some(d.clone());
        }
        // Slower answers and gateway timeouts with no dependency slow now and no time lost
        // before the gateway are the providers' business (their own detectors) or the
        // traffic's (longer answers), not a cascade.
        if current.is_none() && !symptoms.iter().any(|s| s.upstream_of_gateway) {
            self.episode = None;
            // A dependency that moved after them may still be far off on its own.
            return self.leading(w, deps, clock);
        }
        let root = episode.root.clone();
        let mut facts: Vec<Fact> = symptoms.into_iter().map(|s| s.fact).collect();
        let root_cause = root.map(|d| {
            let lead = onset.saturating_duration_since(d.onset).as_secs_f64();
            facts.push(
                Fact::new(
                    "dependency_latency_ms",
                    d.latency * 1000.0,
                    "ms",
                    format!(
                        "{} answered in {:.0} ms against {:.0} ms normally{}",
                        d.name,
                        d.latency * 1000.0,
                        d.baseline * 1000.0,
                        if d.failing {
                            " (its probe was failing)"
                        } else {
                            ""
                        }
                    ),
                )
                .baseline(Some(d.baseline * 1000.0)),
            );
            RootCause {
                component: d.name.clone(),
                onset_unix_ms: clock.ms(d.onset),
                lead_s: lead,
                detail: format!(
                    "{} latency rose at {}, {} before the gateway's symptoms ({})",
                    d.name,
                    clock.hms(d.onset),
                    lead_words(lead),
                    clock.hms(onset)
                ),
            }
        });
        let critical = facts.iter().any(|f| f.signal == "gateway_timeouts");
        let summary = match &root_cause {
            Some(r) => format!(
                "cascading timeouts: probable root cause {} — {}",
                r.component, r.detail
            ),
            None => format!(
                "cascading timeouts: clients arrive with less of their deadline since {}, so \
                 time is lost before the gateway; no watched dependency moved first (add \
                 [[dependency]] entries to name it)",
                hms(clock.ms(onset))
            ),
        };
        let action = match &root_cause {
            Some(r) => format!(
                "fix {} (its latency), not the model: the providers are healthy. Candor \
                 forwards the remaining deadline upstream and answers 504 at once when a \
                 request cannot finish in time",
                r.component
            ),
            None => "find what the clients call before Candor: time is lost there. Candor \
                     forwards the remaining deadline upstream and answers 504 at once when a \
                     request cannot finish in time"
                .into(),
        };
        Some(Finding {
            mode: Mode::CascadingTimeouts,
            subject: "gateway".into(),
            provider: None,
            severity: if critical {
                Severity::Critical
            } else {
                Severity::Warning
            },
            onset_unix_ms: clock.ms(onset),
            summary,
            facts,
            action,
            root_cause,
        })
    }
}

impl GatewayDetectors {
    /// The leading indicator: a watched dependency far off its learned latency before any
    /// client runs out of deadline. A warning under the cascade's name (it becomes the
    /// cascade, in the same incident, when deadlines are hit), with how much of the
    /// clients' budget the dependency now takes.
    fn leading(&self, w: &Slot, deps: &[DependencyWatch], clock: &Clock) -> Option<Finding> {
        let (onset, d, latency, base) = deps
            .iter()
            .filter_map(|d| {
                let onset = d.anomalous_since()?;
                let base = d.baseline()?;
                let latency = d.last?.0;
                (latency >= LEADING_MULT * base).then_some((onset, d, latency, base))
            })
            .min_by_key(|(t, ..)| *t)?;
        let ms = |s: f64| s * 1000.0;
        // The clients' budget: what they still had on arrival plus what the dependency took.
        let remaining = w.deadline.quantile(0.5).filter(|_| w.deadline.count() > 0);
        let budget = remaining.map(|r| latency / (latency + r));
        let mut facts = vec![
            Fact::new(
                "dependency_latency_ms",
                ms(latency),
                "ms",
                format!(
                    "{} answers in {:.0} ms against {:.0} ms normally ({:.0}x) since {}",
                    d.name,
                    ms(latency),
                    ms(base),
                    latency / base,
                    clock.hms(onset)
                ),
            )
            .baseline(Some(ms(base)))
            .threshold(ms(LEADING_MULT * base)),
        ];
        if let Some(share) = budget {
            facts.push(Fact::new(
                "deadline_budget_share",
                share,
                "ratio",
                format!(
                    "it takes {:.0} % of the clients' deadline budget before they reach Candor",
                    share * 100.0
                ),
            ));
        }
        facts.push(Fact::new(
            "gateway_timeouts",
            w.timed_out as f64,
            "requests",
            "no client has run out of deadline at the gateway yet".into(),
        ));
        Some(Finding {
            mode: Mode::CascadingTimeouts,
            subject: "gateway".into(),
            provider: None,
            severity: Severity::Warning,
            onset_unix_ms: clock.ms(onset),
            summary: format!(
                "leading indicator of cascading timeouts: {} is {:.0}x slower than normal{}; \
                 no client deadline missed yet",
                d.name,
                latency / base,
                budget.map_or_else(String::new, |s| format!(
                    " and takes {:.0} % of the clients' deadline budget",
                    s * 100.0
                ))
            ),
            facts,
            action: format!(
                "look at {} now, before clients run out of deadline: the providers are \
                 healthy. Candor forwards the remaining deadline upstream and answers 504 at \
                 once when a request cannot finish in time",
                d.name
            ),
            root_cause: Some(RootCause {
                component: d.name.clone(),
                onset_unix_ms: clock.ms(onset),
                lead_s: 0.0,
                detail: format!("{} latency rose at {}", d.name, clock.hms(onset)),
            }),
        })
    }
}

/// A learned normal: a plain mean over the first `WARMUP` ticks, then an exponential one.
#[derive(Debug, Clone, Copy, Default)]
struct Base {
    mean: f64,
    ticks: u32,
}

/// Ticks of data before a gateway symptom's normal is trusted.
const WARMUP: u32 = 20;

/// Steps a CUSUM on the log ratio of `x` to its learned base in direction `sign` (+1: a
/// rise is bad, −1: a drop is bad); learns the base while in control. Returns the base and
/// the onset while in alarm.
fn track(
    c: &mut Cusum,
    base: &mut Base,
    x: f64,
    sign: f64,
    now: Instant,
) -> Option<(f64, Instant)> {
    if !(x.is_finite() && x > 0.0) {
        return None;
    }
    if base.ticks >= WARMUP {
        let z = sign * (x / base.mean).ln() / GW_SIGMA;
        if c.step(now, z) {
            return Some((base.mean, c.onset().unwrap_or(now)));
        }
    }
    base.ticks = base.ticks.saturating_add(1);
    base.mean += learning_rate(base.ticks, GW_ALPHA) * (x - base.mean);
    None
}

fn lead_words(s: f64) -> String {
    if s < 1.0 {
        "under a second".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}
