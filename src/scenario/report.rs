//! What a scenario run produced: the injected faults beside the gateway's own verdicts over
//! time, and the load generator's measurements.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::health::report::{HealthReport, Verdict};
use crate::load::LoadReport;
use crate::sim::fault::Scheduled;

/// One injected fault.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultWindow {
    /// Provider id or `vector-db`.
    pub target: String,
    /// Fault kind.
    pub kind: String,
    /// Start, seconds from the scenario start.
    pub start_s: f64,
    /// End, when it ends.
    pub end_s: Option<f64>,
}

impl FaultWindow {
    pub(super) fn of(target: &str, s: &Scheduled) -> FaultWindow {
        FaultWindow {
            target: target.to_owned(),
            kind: s.fault.name().to_owned(),
            start_s: s.at.as_secs_f64(),
            end_s: s.duration.map(|d| (s.at + d).as_secs_f64()),
        }
    }
}

/// One provider in a sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderSample {
    /// Provider id.
    pub id: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Routing state (`healthy`, `degraded`, `ejected`, `recovering`).
    pub state: &'static str,
    /// Why, in words.
    pub evidence: Vec<String>,
    /// Attempts in the last minute.
    pub requests_1m: u64,
    /// Median TTFT over the last minute, ms.
    pub ttft_p50_ms: Option<f64>,
    /// P95 TTFT over the last minute, ms.
    pub ttft_p95_ms: Option<f64>,
    /// P99 of each request's longest gap over the last minute, ms (mid-stream stalls).
    pub max_gap_p99_ms: Option<f64>,
    /// Median decode rate over the last minute.
    pub decode_p50: Option<f64>,
    /// P99 inter-token latency over the last minute, ms (stalls show here).
    pub itl_p99_ms: Option<f64>,
    /// Error rate over the last minute.
    pub error_rate: Option<f64>,
    /// In flight now.
    pub in_flight: i64,
    /// Mean prompt tokens per attempt over the last minute.
    pub prompt_tokens_mean: Option<f64>,
    /// Mean completion tokens per attempt over the last minute.
    pub completion_tokens_mean: Option<f64>,
    /// What the detectors found about it (failure-mode names).
    pub findings: Vec<&'static str>,
}

/// The gateway's health report, condensed, at one moment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds from the scenario start.
    pub t_s: f64,
    /// Overall verdict.
    pub verdict: Verdict,
    /// Share within targets over the last minute.
    pub within_targets_share: Option<f64>,
    /// Successful completions per minute.
    pub completions_per_min: f64,
    /// Each provider.
    pub providers: Vec<ProviderSample>,
    /// Open incidents (`mode/subject`).
    pub incidents: Vec<String>,
}

impl Sample {
    /// Condenses a report taken at `t`.
    pub fn from_report(t: Duration, r: &HealthReport) -> Sample {
        Sample {
            t_s: t.as_secs_f64(),
            verdict: r.verdict,
            within_targets_share: r.overall.one_minute.within_targets_share,
            completions_per_min: r.overall.one_minute.completions_per_min,
            providers: r
                .providers
                .iter()
                .map(|p| ProviderSample {
                    id: p.id.clone(),
                    verdict: p.scope.verdict,
                    state: p.state,
                    evidence: p.evidence.iter().map(|e| e.detail.clone()).collect(),
                    requests_1m: p.scope.one_minute.requests,
                    ttft_p50_ms: p.scope.one_minute.ttft_ms.p50,
                    ttft_p95_ms: p.scope.one_minute.ttft_ms.p95,
                    max_gap_p99_ms: p.scope.one_minute.max_gap_ms.p99,
                    decode_p50: p.scope.one_minute.decode_tokens_per_s_p50,
                    itl_p99_ms: p.scope.one_minute.itl_ms.p99,
                    error_rate: p.scope.one_minute.error_rate,
                    in_flight: p.scope.in_flight,
                    prompt_tokens_mean: per_request(
                        p.scope.one_minute.tokens_in,
                        p.scope.one_minute.requests,
                    ),
                    completion_tokens_mean: per_request(
                        p.scope.one_minute.tokens_out,
                        p.scope.one_minute.requests,
                    ),
                    findings: p.findings.iter().map(|f| f.mode.as_str()).collect(),
                })
                .collect(),
            incidents: r
                .incidents
                .iter()
                .map(|i| format!("{}/{}", i.mode, i.subject))
                .collect(),
        }
    }
}

fn per_request(tokens: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| tokens as f64 / requests as f64)
}

/// A verdict change.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transition {
    /// Seconds from the scenario start.
    pub t_s: f64,
    /// New verdict.
    pub verdict: Verdict,
}

/// An incident as the samples saw it: open from one sample to another.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IncidentSpan {
    /// `mode/subject`.
    pub incident: String,
    /// First sample that showed it open, s.
    pub opened_s: f64,
    /// First sample that no longer did (absent: open at the end).
    pub closed_s: Option<f64>,
}

/// The incidents open in `samples`, one span per stretch of samples showing it.
pub(super) fn incident_spans(samples: &[Sample]) -> Vec<IncidentSpan> {
    let mut out: Vec<IncidentSpan> = Vec::new();
    for s in samples {
        for key in &s.incidents {
            if !out
                .iter()
                .any(|o| &o.incident == key && o.closed_s.is_none())
            {
                out.push(IncidentSpan {
                    incident: key.clone(),
                    opened_s: s.t_s,
                    closed_s: None,
                });
            }
        }
        for o in out.iter_mut().filter(|o| o.closed_s.is_none()) {
            if !s.incidents.contains(&o.incident) {
                o.closed_s = Some(s.t_s);
            }
        }
    }
    out
}

/// The verdict history of the whole run.
pub type Verdicts = BTreeMap<String, Vec<Transition>>;

/// Verdict changes of the overall scope (`None`) or of one provider.
pub(super) fn transitions(samples: &[Sample], provider: Option<&str>) -> Vec<Transition> {
    let mut out: Vec<Transition> = Vec::new();
    for s in samples {
        let v = match provider {
            None => Some(s.verdict),
            Some(id) => s.providers.iter().find(|p| p.id == id).map(|p| p.verdict),
        };
        if let Some(v) = v
            && out.last().is_none_or(|t| t.verdict != v)
        {
            out.push(Transition {
                t_s: s.t_s,
                verdict: v,
            });
        }
    }
    out
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Wall time, s.
    pub duration_s: f64,
    /// What was injected.
    pub faults: Vec<FaultWindow>,
    /// Overall verdict changes.
    pub overall: Vec<Transition>,
    /// Verdict changes per provider.
    pub providers: Verdicts,
    /// Incidents the gateway had open, as seen by the samples.
    pub incidents: Vec<IncidentSpan>,
    /// The load generator's report.
    pub load: LoadReport,
    /// Every sample.
    pub samples: Vec<Sample>,
}

impl ScenarioReport {
    /// Means of the target's one-minute figures before a fault and while it lasted (from 15 s
    /// after onset, when the one-minute window has filled with it).
    pub fn effect(&self, f: &FaultWindow) -> String {
        let end = f.end_s.unwrap_or(f64::INFINITY);
        let pick = |lo: f64, hi: f64| -> Vec<&Sample> {
            self.samples
                .iter()
                .filter(|s| s.t_s >= lo && s.t_s < hi)
                .collect()
        };
        let before = pick(10.0, f.start_s);
        // Skip the first part of the fault, while the one-minute window still holds mostly
        // the time before it (at most 15 s, at most half the fault).
        let settle = ((end - f.start_s) / 2.0).min(15.0);
        let during = pick(f.start_s + settle, end);
        let mean =
            |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        let show = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.0}{unit}"));
        let provider = |ss: &[&Sample], k: fn(&ProviderSample) -> Option<f64>| {
            mean(
                ss.iter()
                    .filter_map(|s| s.providers.iter().find(|p| p.id == f.target))
                    .filter_map(k)
                    .collect(),
            )
        };
        if self.providers.contains_key(&f.target) {
            format!(
                "decode {} → {} tok/s, p95 TTFT {} → {}, p99 ITL {} → {}, errors {} → {}, tokens in/out per request {}/{} → {}/{}",
                show(provider(&before, |p| p.decode_p50), ""),
                show(provider(&during, |p| p.decode_p50), ""),
                show(provider(&before, |p| p.ttft_p95_ms), "ms"),
                show(provider(&during, |p| p.ttft_p95_ms), "ms"),
                show(provider(&before, |p| p.itl_p99_ms), "ms"),
                show(provider(&during, |p| p.itl_p99_ms), "ms"),
                show(provider(&before, |p| p.error_rate.map(|e| e * 100.0)), "%"),
                show(provider(&during, |p| p.error_rate.map(|e| e * 100.0)), "%"),
                show(provider(&before, |p| p.prompt_tokens_mean), ""),
                show(provider(&before, |p| p.completion_tokens_mean), ""),
                show(provider(&during, |p| p.prompt_tokens_mean), ""),
                show(provider(&during, |p| p.completion_tokens_mean), ""),
            )
        } else {
            let overall = |ss: &[&Sample]| mean(ss.iter().map(|s| s.completions_per_min).collect());
            format!(
                "gateway completions/min {} → {} (the dependency sits in front of the gateway)",
                show(overall(&before), ""),
                show(overall(&during), ""),
            )
        }
    }

    /// The fault timeline beside the gateway's verdicts, then the load table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} ({:.0}s)\n\ninjected faults:\n",
            self.name, self.duration_s
        );
        if self.faults.is_empty() {
            out.push_str("  (none)\n");
        }
        for f in &self.faults {
            let end = f.end_s.map_or("end".into(), |e| format!("{e:.0}s"));
            let _ = writeln!(
                out,
                "  {:>5.0}s..{end:<6} {:<10} {}",
                f.start_s, f.target, f.kind
            );
        }
        out.push_str("\nwhat the gateway's /health said:\n");
        let mut line = |who: &str, ts: &[Transition]| {
            let changes: Vec<String> = ts
                .iter()
                .map(|t| format!("{:.0}s {}", t.t_s, t.verdict.as_str()))
                .collect();
            let _ = writeln!(out, "  {who:<10} {}", changes.join(" → "));
        };
        line("overall", &self.overall);
        for (id, ts) in &self.providers {
            line(id, ts);
        }
        out.push_str("\nincidents Candor opened:\n");
        if self.incidents.is_empty() {
            out.push_str("  (none)\n");
        }
        for i in &self.incidents {
            let closed = i
                .closed_s
                .map_or("still open".into(), |c| format!("resolved at {c:.0}s"));
            let _ = writeln!(
                out,
                "  {:<36} opened at {:.0}s, {closed}",
                i.incident, i.opened_s
            );
        }
        out.push_str("\nwhat the gateway measured on the target, before → during each fault:\n");
        for f in &self.faults {
            let _ = writeln!(out, "  {:<10} {:<18} {}", f.target, f.kind, self.effect(f));
        }
        out.push_str("\nload:\n");
        for l in crate::load::table(&self.load).lines() {
            let _ = writeln!(out, "  {l}");
        }
        out
    }
}

/// The fault windows as phases: faults of one kind on one target less than 10 s apart (a
/// burst) are one phase.
fn phases(faults: &[FaultWindow]) -> Vec<(String, f64, f64)> {
    let mut merged: Vec<(String, String, f64, f64)> = Vec::new();
    for f in faults {
        let end = f.end_s.unwrap_or(f64::INFINITY);
        match merged
            .iter_mut()
            .find(|(k, t, _, e)| *k == f.kind && *t == f.target && f.start_s - *e < 10.0)
        {
            Some(m) => m.3 = m.3.max(end),
            None => merged.push((f.kind.clone(), f.target.clone(), f.start_s, end)),
        }
    }
    merged
        .into_iter()
        .map(|(kind, target, start, end)| {
            let until = if end.is_finite() {
                format!("{end:.0}")
            } else {
                "end".into()
            };
            (format!("{kind} {target} {start:.0}–{until} s"), start, end)
        })
        .collect()
}

/// Policies side by side: the load generator's figures for the whole run, then the share
/// within targets in each fault window (whole 5-second slices inside it) and outside all.
pub fn comparison_table(
    faults: &[FaultWindow],
    runs: &[(crate::config::Policy, ScenarioReport)],
) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}"));
    let share = |s: crate::load::Slice| {
        if s.requests == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.1} %",
                s.within_targets as f64 * 100.0 / s.requests as f64
            )
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| policy | requests | within targets | errors | lost | TTFT P50 ms | TTFT P99 ms | e2e P50 ms | e2e P99 ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (policy, r) in runs {
        let l = &r.load;
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} % | {} | {} | {} | {} | {} | {} |",
            policy.as_str(),
            l.requests,
            l.within_targets_share * 100.0,
            l.errors.values().sum::<u64>(),
            l.lost(),
            ms(l.ttft_ms.p50),
            ms(l.ttft_ms.p99),
            ms(l.e2e_ms.p50),
            ms(l.e2e_ms.p99),
        );
    }
    let _ = writeln!(out);
    for (policy, r) in runs {
        let kinds: Vec<String> = r
            .load
            .errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !kinds.is_empty() {
            let _ = writeln!(out, "errors with {}: {}", policy.as_str(), kinds.join(", "));
        }
    }
    let windows = phases(faults);
    if windows.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let mut header = "| policy | outside faults |".to_owned();
    let mut rule = "|---|---:|".to_owned();
    for (name, ..) in &windows {
        header.push_str(&format!(" {name} |"));
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for (policy, r) in runs {
        let l = &r.load;
        // Outside every fault: the whole timeline minus the fault windows, slice by slice.
        let w = crate::load::SLICE.as_secs_f64();
        let outside = l
            .timeline
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let (a, b) = (*i as f64 * w, (*i as f64 + 1.0) * w);
                windows.iter().all(|(_, s, e)| b <= *s || a >= *e)
            })
            .fold(crate::load::Slice::default(), |acc, (_, s)| acc + *s);
        let mut row = format!("| {} | {} |", policy.as_str(), share(outside));
        for (_, from, to) in &windows {
            row.push_str(&format!(" {} |", share(l.between(*from, *to))));
        }
        let _ = writeln!(out, "{row}");
    }
    out
}
