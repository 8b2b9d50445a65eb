//! Automated triage: walks the on-call runbook of the brief (reference §10) over the health
//! report and the incidents — synthetic test, tokens/s against error rate, queue depth
//! against GPU use, each provider against its baseline and peers — and ends in a named
//! diagnosis with evidence and an exit code (0 healthy, 1 degraded, 2 failing). Pure: the
//! admin API and `candor triage` feed it what the gateway knows.

use serde::{Deserialize, Serialize};

use crate::detect::Mode;
use crate::health::report::{HealthReport, ProviderReport, Verdict};
use crate::incident::Incident;

/// One runbook step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// 1–4.
    pub number: u32,
    /// Short name.
    pub name: String,
    /// The question the step answers.
    pub question: String,
    /// What was looked at, one line each.
    pub evidence: Vec<String>,
    /// The step's answer.
    pub conclusion: String,
}

/// A named diagnosis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Diagnosis {
    /// Failure-mode name.
    pub mode: String,
    /// In words.
    pub title: String,
    /// Provider id or `gateway`.
    pub subject: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// `open` or `resolved`.
    pub state: String,
    /// One line.
    pub summary: String,
    /// The signals behind it.
    pub evidence: Vec<String>,
    /// What to do.
    pub action: String,
    /// The incident.
    pub incident_id: String,
}

/// The triage result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Triage {
    /// `healthy`, `degraded` or `failing`.
    pub verdict: String,
    /// 0, 1 or 2.
    pub exit_code: u8,
    /// The provider triaged, if only one.
    pub provider: Option<String>,
    /// The runbook, step by step.
    pub steps: Vec<Step>,
    /// What is wrong, most urgent first (open incidents, then recently resolved ones).
    pub diagnosis: Vec<Diagnosis>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1} %", v * 100.0))
}

fn num(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1} {unit}"))
}

fn has(incidents: &[&Incident], modes: &[Mode], subject: Option<&str>) -> Vec<String> {
    incidents
        .iter()
        .filter(|i| i.state == "open" && modes.iter().any(|m| m.as_str() == i.mode))
        .filter(|i| subject.is_none_or(|s| i.subject == s))
        .map(|i| format!("{} on {}", i.mode, i.subject))
        .collect()
}

/// Walks the runbook. `incidents` are those open or active within the triage window.
pub fn walk(report: &HealthReport, incidents: &[Incident], provider: Option<&str>) -> Triage {
    let providers: Vec<&ProviderReport> = report
        .providers
        .iter()
        .filter(|p| provider.is_none_or(|id| p.id == id))
        .collect();
    let relevant: Vec<&Incident> = incidents
        .iter()
        .filter(|i| {
            provider.is_none_or(|id| i.provider.as_deref() == Some(id) || i.provider.is_none())
        })
        .collect();
    let steps = vec![
        synthetic(&providers, &relevant),
        tokens_vs_errors(&providers, &relevant),
        queue_vs_gpu(&providers, &relevant),
        baselines(report, &providers, &relevant),
    ];
    let mut diagnosis: Vec<Diagnosis> = relevant
        .iter()
        .map(|i| Diagnosis {
            mode: i.mode.clone(),
            title: Mode::parse(&i.mode).map_or_else(|| i.mode.clone(), |m| m.title().to_owned()),
            subject: i.subject.clone(),
            severity: i.severity.clone(),
            state: i.state.clone(),
            summary: i.summary.clone(),
            evidence: i.evidence["facts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["detail"].as_str().map(str::to_owned))
                .chain(
                    i.evidence["root_cause"]["detail"]
                        .as_str()
                        .map(|d| format!("root cause: {d}")),
                )
                .collect(),
            action: i.action.clone(),
            incident_id: i.id.clone(),
        })
        .collect();
    diagnosis.sort_by_key(|d| (d.state != "open", d.severity != "critical"));
    let open: Vec<&Diagnosis> = diagnosis.iter().filter(|d| d.state == "open").collect();
    let verdict = match provider {
        Some(_) => providers
            .iter()
            .map(|p| p.scope.verdict)
            .max()
            .unwrap_or(Verdict::WithinBounds),
        None => report.verdict,
    };
    // Over capacity with no provider fault open: the truth is "overloaded", not a degraded
    // or failing provider.
    let provider_fault = relevant
        .iter()
        .any(|i| i.state == "open" && i.provider.is_some());
    let overloaded = !report.overloaded.is_empty()
        || open
            .iter()
            .any(|d| d.mode == Mode::CapacityExhausted.as_str());
    let (verdict, exit_code) = if overloaded && !provider_fault {
        (
            "overloaded",
            if open.iter().any(|d| d.severity == "critical") {
                2
            } else {
                1
            },
        )
    } else if verdict == Verdict::Failing || open.iter().any(|d| d.severity == "critical") {
        ("failing", 2)
    } else if verdict == Verdict::Degraded || !open.is_empty() {
        ("degraded", 1)
    } else {
        ("healthy", 0)
    };
    Triage {
        verdict: verdict.into(),
        exit_code,
        provider: provider.map(str::to_owned),
        steps,
        diagnosis,
    }
}

fn synthetic(providers: &[&ProviderReport], incidents: &[&Incident]) -> Step {
    let mut evidence = Vec::new();
    for p in providers {
        let failing: Vec<String> = p
            .canaries
            .iter()
            .filter(|c| !c.pass)
            .map(|c| format!("{} ({})", c.probe, c.reason))
            .collect();
        if p.canaries.is_empty() {
            evidence.push(format!("{}: no canary has run yet", p.id));
        } else if failing.is_empty() {
            evidence.push(format!(
                "{}: all {} canary probes pass",
                p.id,
                p.canaries.len()
            ));
        } else {
            evidence.push(format!(
                "{}: canaries failing — {}",
                p.id,
                failing.join("; ")
            ));
        }
        let stalled = p
            .evidence
            .iter()
            .find(|e| e.signal == "stall" || e.signal == "backend_stuck");
        evidence.push(match stalled {
            Some(e) => format!("{}: {}", p.id, e.detail),
            None => format!("{}: tokens flowing ({} in flight)", p.id, p.scope.in_flight),
        });
        if let Some(ok) = p.health_endpoint_ok {
            evidence.push(format!(
                "{}: its own health endpoint answers {}",
                p.id,
                if ok { "2xx" } else { "an error" }
            ));
        }
    }
    let hung = has(incidents, &[Mode::BatchQueueDeadlock], None);
    let wrong = has(incidents, &[Mode::SilentQualityDegradation], None);
    let mut conclusions = Vec::new();
    if !hung.is_empty() {
        conclusions.push(format!("no first token: {} (FM 3)", hung.join(", ")));
    }
    if !wrong.is_empty() {
        conclusions.push(format!(
            "wrong or malformed answers: {} (FM 1)",
            wrong.join(", ")
        ));
    }
    let conclusion = if conclusions.is_empty() {
        "every provider produces tokens and its canaries' answers check out".into()
    } else {
        conclusions.join("; ")
    };
    Step {
        number: 1,
        name: "synthetic test".into(),
        question: "Do providers answer, and are the answers right?".into(),
        evidence,
        conclusion,
    }
}

fn tokens_vs_errors(providers: &[&ProviderReport], incidents: &[&Incident]) -> Step {
    let mut evidence = Vec::new();
    for p in providers {
        let w = &p.scope.one_minute;
        evidence.push(format!(
            "{}: decoding {} per stream (baseline {}), error rate {}, P50/P99 TTFT {}/{}",
            p.id,
            num(p.decode_now.or(w.decode_tokens_per_s_p50), "tokens/s"),
            num(p.baseline_decode_tokens_per_s, "tokens/s"),
            pct(w.error_rate),
            num(w.ttft_ms.p50, "ms"),
            num(w.ttft_ms.p99, "ms"),
        ));
    }
    let slow = has(incidents, &[Mode::HardwareDegradation], None);
    let tails = has(incidents, &[Mode::KvCacheThrashing], None);
    let late = has(incidents, &[Mode::TailLatency], None);
    let over = has(incidents, &[Mode::CapacityExhausted], None);
    let errors = has(
        incidents,
        &[
            Mode::ErrorBurst,
            Mode::ConnectionFailures,
            Mode::RateLimited,
            Mode::MidStreamResets,
        ],
        None,
    );
    let conclusion = if !slow.is_empty() {
        format!("tokens/s down with errors flat: {} (FM 4)", slow.join(", "))
    } else if !tails.is_empty() {
        format!(
            "only the tails move, errors flat: {} (FM 2)",
            tails.join(", ")
        )
    } else if !late.is_empty() {
        format!(
            "some first tokens seconds late, the median flat: {} (intermittent tail)",
            late.join(", ")
        )
    } else if !over.is_empty() {
        format!(
            "every provider slower and timing out at once: {} (overload, not a fault)",
            over.join(", ")
        )
    } else if !errors.is_empty() {
        format!(
            "errors, not slowness: {} (outage or overload)",
            errors.join(", ")
        )
    } else {
        "throughput and errors as normal".into()
    };
    Step {
        number: 2,
        name: "tokens/s against error rate".into(),
        question: "Is throughput down with errors flat?".into(),
        evidence,
        conclusion,
    }
}

fn queue_vs_gpu(providers: &[&ProviderReport], incidents: &[&Incident]) -> Step {
    let mut evidence = Vec::new();
    for p in providers {
        match (&p.backend.metrics, p.backend.status) {
            (Some(b), _) => {
                let r = &b.reading;
                evidence.push(format!(
                    "{}: queue {}, running {}, KV {}, preemptions {}, generating {}, SM clock {}{}",
                    p.id,
                    num(r.queue, ""),
                    num(r.running, ""),
                    pct(r.kv_usage),
                    num(b.preemptions_per_s, "/s"),
                    num(b.generation_tokens_per_s, "tokens/s"),
                    num(r.sm_clock_mhz, "MHz"),
                    if b.throttle.is_empty() {
                        String::new()
                    } else {
                        format!(", throttled: {}", b.throttle.join(", "))
                    }
                ));
            }
            (None, "not_configured") => {
                evidence.push(format!("{}: no backend metrics configured", p.id));
            }
            (None, _) => evidence.push(format!(
                "{}: backend metrics unknown (scrape failing or stale)",
                p.id
            )),
        }
    }
    let hung = has(incidents, &[Mode::BatchQueueDeadlock], None);
    let over = has(incidents, &[Mode::CapacityExhausted], None);
    let kv = has(incidents, &[Mode::KvCacheThrashing], None);
    let hw = has(incidents, &[Mode::HardwareDegradation], None);
    let conclusion = if !hung.is_empty() {
        format!("queue up, progress 0: {} (FM 3)", hung.join(", "))
    } else if !over.is_empty() {
        format!(
            "queues up on every provider while they generate: {} over capacity (demand, not a fault)",
            over.join(", ")
        )
    } else if !kv.is_empty() {
        format!("queue up with KV full: {} (FM 2)", kv.join(", "))
    } else if !hw.is_empty() {
        format!("queue flat, slower: {} (FM 4)", hw.join(", "))
    } else {
        "queues and GPUs as normal".into()
    };
    Step {
        number: 3,
        name: "queue depth against GPU use".into(),
        question: "Is the queue rising while the GPU is not busier?".into(),
        evidence,
        conclusion,
    }
}

fn baselines(
    report: &HealthReport,
    providers: &[&ProviderReport],
    incidents: &[&Incident],
) -> Step {
    let mut evidence = Vec::new();
    for p in providers {
        let off: Vec<&str> = p.evidence.iter().map(|e| e.detail.as_str()).collect();
        evidence.push(format!(
            "{}: {} (weight {:.2}){}",
            p.id,
            p.state,
            p.weight,
            if off.is_empty() {
                String::new()
            } else {
                format!(": {}", off.join("; "))
            }
        ));
    }
    for d in &report.dependencies {
        evidence.push(format!(
            "dependency {}: {} against {} normally{}",
            d.name,
            num(d.latency_ms, "ms"),
            num(d.baseline_ms, "ms"),
            d.anomalous_since_unix_ms
                .map(|t| format!(", anomalous since {}", crate::detect::hms(t)))
                .unwrap_or_default()
        ));
    }
    let cascade = has(incidents, &[Mode::CascadingTimeouts], None);
    let over = has(incidents, &[Mode::CapacityExhausted], None);
    let outliers: Vec<&str> = providers
        .iter()
        .filter(|p| p.state != "healthy")
        .map(|p| p.id.as_str())
        .collect();
    let conclusion = if !cascade.is_empty() {
        "all providers affected and a dependency moved first: fix the dependency, not the model (FM 5)"
            .into()
    } else if !over.is_empty() {
        format!(
            "every provider loaded at once: {} over capacity; add capacity or shed load, the \
             providers are not broken",
            over.join(", ")
        )
    } else if outliers.is_empty() {
        "every provider matches its baseline and peers".into()
    } else if outliers.len() == report.providers.len() && report.providers.len() > 1 {
        "every provider is off: look upstream (a dependency) or at shared infrastructure".into()
    } else {
        format!("single outlier(s) routed around: {}", outliers.join(", "))
    };
    Step {
        number: 4,
        name: "each provider against its baseline and peers".into(),
        question: "One backend or all?".into(),
        evidence,
        conclusion,
    }
}

/// Plain-text rendering for the terminal.
pub fn render(t: &Triage) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in &t.steps {
        let _ = writeln!(out, "Step {} — {}: {}", s.number, s.name, s.question);
        for e in &s.evidence {
            let _ = writeln!(out, "    {e}");
        }
        let _ = writeln!(out, "  → {}\n", s.conclusion);
    }
    if t.diagnosis.is_empty() {
        let _ = writeln!(out, "Diagnosis: nothing wrong found.");
    }
    for d in &t.diagnosis {
        let _ = writeln!(
            out,
            "Diagnosis: {} on {} ({}, {})\n    {}",
            d.title, d.subject, d.severity, d.state, d.summary
        );
        for e in &d.evidence {
            let _ = writeln!(out, "    - {e}");
        }
        let _ = writeln!(out, "    Action: {}\n", d.action);
    }
    let _ = writeln!(out, "Verdict: {} (exit {})", t.verdict, t.exit_code);
    out
}
