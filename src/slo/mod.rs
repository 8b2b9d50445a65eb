//! SLO alerting on the business metric: the share of requests served within the targets,
//! judged with the multi-window, multi-burn-rate alerts of the SRE workbook (reference §8.2),
//! and successful completions per minute against their baseline. The time base is scaled
//! (`slo.time_scale`) so tests and the demo can compress an hour into a minute. Pure: the
//! health task records requests and evaluates on its tick with `now`.

pub mod rules;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::SloConfig;
use crate::detect::{Clock, Fact, Finding, Mode, Severity};

/// One burn-rate alert: a share of the 30-day budget consumed within the long window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnWindow {
    /// Name (`page_fast`, …).
    pub name: &'static str,
    /// Page or ticket.
    pub severity: Severity,
    /// Long window (unscaled).
    pub long: Duration,
    /// Short window (unscaled).
    pub short: Duration,
    /// Burn-rate threshold.
    pub rate: f64,
}

const H: u64 = 3600;
/// Sloth's Google 30-day windows (reference §8.2).
pub const WINDOWS: [BurnWindow; 4] = [
    BurnWindow {
        name: "page_fast",
        severity: Severity::Critical,
        long: Duration::from_secs(H),
        short: Duration::from_secs(300),
        rate: 14.4,
    },
    BurnWindow {
        name: "page_slow",
        severity: Severity::Critical,
        long: Duration::from_secs(6 * H),
        short: Duration::from_secs(1800),
        rate: 6.0,
    },
    BurnWindow {
        name: "ticket_fast",
        severity: Severity::Warning,
        long: Duration::from_secs(24 * H),
        short: Duration::from_secs(2 * H),
        rate: 3.0,
    },
    BurnWindow {
        name: "ticket_slow",
        severity: Severity::Warning,
        long: Duration::from_secs(72 * H),
        short: Duration::from_secs(6 * H),
        rate: 1.0,
    },
];

/// The completions-per-minute comparison: the last 5 minutes against the hour before.
const RECENT: Duration = Duration::from_secs(300);
const BASELINE: Duration = Duration::from_secs(H);
/// Least completions the baseline must predict for the recent window before a drop counts
/// (Poisson noise: expecting 40, seeing under 20 happens about once in 2,000 draws).
const MIN_EXPECTED: f64 = 40.0;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: u64,
    good: u64,
    completed: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.total += o.total;
        self.good += o.good;
        self.completed += o.completed;
    }
}

/// Per-(scaled)-minute counts over the longest window.
#[derive(Debug, Clone)]
pub struct Slo {
    cfg: SloConfig,
    origin: Instant,
    width: Duration,
    slots: Vec<(u64, Counts)>,
}

impl Slo {
    /// An empty ledger starting at `now`.
    pub fn new(cfg: SloConfig, now: Instant) -> Slo {
        let width = Duration::from_secs_f64(60.0 / cfg.time_scale);
        // 72 h of minutes, plus one slot in progress.
        let count = 72 * 60 + 1;
        Slo {
            cfg,
            origin: now,
            width,
            slots: vec![(u64::MAX, Counts::default()); count],
        }
    }

    /// A duration of the unscaled SLO time base on this ledger's clock.
    pub fn scaled(&self, d: Duration) -> Duration {
        Duration::from_secs_f64(d.as_secs_f64() / self.cfg.time_scale)
    }

    fn epoch(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.origin).as_nanos() / self.width.as_nanos().max(1)) as u64
    }

    /// Records one client request (not synthetic, not the client's fault).
    pub fn record(&mut self, now: Instant, within_targets: bool, completed: bool) {
        let e = self.epoch(now);
        let n = self.slots.len() as u64;
        let (se, c) = &mut self.slots[(e % n) as usize];
        if *se != e {
            *se = e;
            *c = Counts::default();
        }
        c.total += 1;
        c.good += u64::from(within_targets);
        c.completed += u64::from(completed);
    }

    /// Counts over the last `span` of unscaled time (in whole slots), excluding the last
    /// `skip`.
    fn sum(&self, now: Instant, span: Duration, skip: Duration) -> (Counts, u64) {
        let e = self.epoch(now);
        let slots = |d: Duration| (d.as_secs() / 60).max(1);
        let skip_n = if skip.is_zero() { 0 } else { slots(skip) };
        let newest = e.saturating_sub(skip_n);
        let oldest = (newest + 1).saturating_sub(slots(span));
        let mut total = Counts::default();
        for (se, c) in &self.slots {
            if *se != u64::MAX && *se >= oldest && *se <= newest {
                total.add(*c);
            }
        }
        // How many slots of that span the ledger has existed for.
        let covered = (newest + 1).saturating_sub(oldest).min(e + 1);
        (total, covered)
    }

    /// The burn rate of the last `span`: the bad share over the error budget.
    pub fn burn_rate(&self, now: Instant, span: Duration) -> Option<f64> {
        let (c, _) = self.sum(now, span, Duration::ZERO);
        (c.total > 0).then(|| (1.0 - c.good as f64 / c.total as f64) / (1.0 - self.cfg.objective))
    }

    /// The burn rate over every alert window (labelled in the SLO time base).
    pub fn burn_rates(&self, now: Instant) -> Vec<(String, f64)> {
        let mut spans: Vec<Duration> = WINDOWS.iter().flat_map(|w| [w.short, w.long]).collect();
        spans.sort();
        spans.dedup();
        spans
            .into_iter()
            .filter_map(|d| Some((rules::prom_duration(d), self.burn_rate(now, d)?)))
            .collect()
    }

    /// When the current run of over-threshold (scaled) minutes began, scanning back over
    /// `span`.
    fn onset(&self, now: Instant, span: Duration, bad_share: f64) -> Instant {
        let e = self.epoch(now);
        let n = self.slots.len() as u64;
        let mut first = e;
        for back in 0..(span.as_secs() / 60).min(n - 1) {
            let Some(epoch) = e.checked_sub(back) else {
                break;
            };
            let (se, c) = self.slots[(epoch % n) as usize];
            let bad = se == epoch
                && c.total > 0
                && (c.total - c.good) as f64 / c.total as f64 >= bad_share;
            if !bad && back > 0 {
                break;
            }
            if bad {
                first = epoch;
            }
        }
        self.origin + self.width * u32::try_from(first).unwrap_or(u32::MAX)
    }

    /// The SLO findings at `now`: error-budget burn (every window pair that fires) and a
    /// drop in completions per minute.
    pub fn evaluate(&self, now: Instant, clock: &Clock) -> Vec<Finding> {
        let mut out = Vec::new();
        let budget = 1.0 - self.cfg.objective;
        let mut facts = Vec::new();
        let mut worst: Option<(Severity, &BurnWindow)> = None;
        for w in &WINDOWS {
            // A pair is judged once its short window is complete (the long one may still be
            // filling: a new gateway can page within its first hour).
            let (long, _) = self.sum(now, w.long, Duration::ZERO);
            let (_, short_covered) = self.sum(now, w.short, Duration::ZERO);
            if long.total < self.cfg.min_requests || short_covered < w.short.as_secs() / 60 {
                continue;
            }
            let (Some(bl), Some(bs)) = (self.burn_rate(now, w.long), self.burn_rate(now, w.short))
            else {
                continue;
            };
            if bl >= w.rate && bs >= w.rate {
                facts.push(
                    Fact::new(
                        "burn_rate",
                        bl,
                        "x",
                        format!(
                            "{}: burning the error budget at {bl:.1}x over {} and {bs:.1}x over {} (threshold {}x)",
                            w.name,
                            words(w.long),
                            words(w.short),
                            w.rate
                        ),
                    )
                    .threshold(w.rate),
                );
                if worst.is_none_or(|(s, _)| w.severity > s) {
                    worst = Some((w.severity, w));
                }
            }
        }
        if let Some((severity, w)) = worst {
            let (c, _) = self.sum(now, w.short, Duration::ZERO);
            let share = c.good as f64 / c.total.max(1) as f64;
            let onset = self.onset(now, w.long, budget * w.rate);
            out.push(Finding {
                mode: Mode::SloBurn,
                subject: "slo".into(),
                provider: None,
                severity,
                onset_unix_ms: clock.ms(onset),
                summary: format!(
                    "only {:.1} % of requests served within the targets over the last {} (objective {:.2} %): the error budget burns at {:.1}x",
                    share * 100.0,
                    self.span(w.short),
                    self.cfg.objective * 100.0,
                    (1.0 - share) / budget
                ),
                facts,
                action: "look at the open incidents for the cause; candor triage walks the runbook"
                    .into(),
                root_cause: None,
            });
        }
        out.extend(self.completions_drop(now, clock));
        out
    }

    fn completions_drop(&self, now: Instant, clock: &Clock) -> Option<Finding> {
        let (recent, _) = self.sum(now, RECENT, Duration::ZERO);
        let (base, covered) = self.sum(now, BASELINE, RECENT);
        let minutes = |d: Duration| (d.as_secs() / 60) as f64;
        // The baseline must cover most of its hour.
        if (covered as f64) < 0.75 * minutes(BASELINE) {
            return None;
        }
        let base_rate = base.completed as f64 / covered as f64;
        let expected = base_rate * minutes(RECENT);
        let now_rate = recent.completed as f64 / minutes(RECENT);
        if expected < MIN_EXPECTED || now_rate >= self.cfg.completions_drop * base_rate {
            return None;
        }
        Some(Finding {
            mode: Mode::CompletionsDrop,
            subject: "slo".into(),
            provider: None,
            severity: Severity::Critical,
            onset_unix_ms: clock.ms(now.checked_sub(self.scaled(RECENT)).unwrap_or(now)),
            summary: format!(
                "successful completions fell to {now_rate:.1} per minute from {base_rate:.1} ({:.0} % of normal)",
                now_rate / base_rate * 100.0
            ),
            facts: vec![
                Fact::new(
                    "completions_per_min",
                    now_rate,
                    "1/min",
                    format!("over the last {} against the hour before", words(RECENT)),
                )
                .baseline(Some(base_rate))
                .threshold(self.cfg.completions_drop * base_rate),
            ],
            action: "find out whether clients stopped sending (upstream of Candor) or requests \
                     fail before completing (open incidents); candor triage walks the runbook"
                .into(),
            root_cause: None,
        })
    }
}

impl Slo {
    /// A window in words, saying when SLO time is compressed.
    fn span(&self, d: Duration) -> String {
        if self.cfg.time_scale == 1.0 {
            words(d)
        } else {
            format!("{} of SLO time (x{})", words(d), self.cfg.time_scale)
        }
    }
}

fn words(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(H) {
        format!("{} h", s / H)
    } else {
        format!("{} min", s / 60)
    }
}

#[cfg(test)]
mod tests;
