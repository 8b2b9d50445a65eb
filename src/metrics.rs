//! Every Prometheus metric Candor exposes, named here and nowhere else. Recorded by the
//! health task (the single writer) and rendered in the Prometheus text format.
//!
//! Names follow the OpenTelemetry GenAI conventions where one exists
//! (`gen_ai.client.operation.duration` → `gen_ai_client_operation_duration_seconds`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use crate::observation::{Observation, RequestSummary};

/// OTel GenAI bucket boundaries for operation duration and time to first chunk (seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// OTel GenAI buckets for time per output chunk, with finer low buckets for fast servers.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0, 10.0,
];
/// OTel GenAI buckets for token usage.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Decode rate, tokens per second.
const DECODE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe_n(&mut self, v: f64, n: u64) {
        if !v.is_finite() || n == 0 {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += n;
        }
        self.sum += v * n as f64;
        self.count += n;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        histogram_series(
            out,
            name,
            labels,
            self.bounds,
            &self.counts,
            self.sum,
            self.count,
        );
    }
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one histogram series from per-bucket (not yet cumulative) counts; `labels` may be
/// empty.
pub(crate) fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
    count: u64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, b) in bounds.iter().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {sum}");
    let _ = writeln!(out, "{name}_count{braces} {count}");
}

/// Per (provider, model, operation) attempt series.
#[derive(Debug, Clone)]
struct AttemptSeries {
    duration: Histogram,
    ttft: Histogram,
    itl: Histogram,
    decode: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
    tokens_in: u64,
    tokens_out: u64,
    cost: f64,
    outcomes: BTreeMap<&'static str, u64>,
}

impl AttemptSeries {
    fn new() -> AttemptSeries {
        AttemptSeries {
            duration: Histogram::new(DURATION_BUCKETS),
            ttft: Histogram::new(DURATION_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            decode: Histogram::new(DECODE_BUCKETS),
            input_tokens: Histogram::new(TOKEN_BUCKETS),
            output_tokens: Histogram::new(TOKEN_BUCKETS),
            tokens_in: 0,
            tokens_out: 0,
            cost: 0.0,
            outcomes: BTreeMap::new(),
        }
    }
}

type AttemptKey = (Arc<str>, Arc<str>, &'static str);
type RequestKey = (Arc<str>, Arc<str>, &'static str);

/// Live values read at render time rather than recorded.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// (provider id, attempts in flight).
    pub in_flight: Vec<(Arc<str>, i64)>,
    /// (provider id, routing state name, routing weight).
    pub routing: Vec<(Arc<str>, &'static str, f64)>,
    /// Request-log rows lost: the queue or the writer's buffer was full, or the database
    /// refused them.
    pub request_log_dropped: u64,
    /// Request-log rows held by the writer while the database cannot be written.
    pub request_log_buffered: u64,
    /// Request-log rows written.
    pub request_log_written: u64,
    /// The request log's last write failed.
    pub request_log_failing: bool,
    /// Observations dropped because the health task's queue was full.
    pub observations_dropped: u64,
    /// ((failure mode, provider or subject), open incidents).
    pub open_incidents: Vec<((String, String), u64)>,
    /// (dependency, latest latency in seconds).
    pub dependencies: Vec<(String, Option<f64>)>,
    /// (window, burn rate of the SLI over it).
    pub burn_rates: Vec<(String, f64)>,
    /// (provider, model, probe, passed at its latest run).
    pub canaries: Vec<(String, String, String, bool)>,
}

/// The metric registry. One writer (the health task).
#[derive(Debug, Default)]
pub struct Metrics {
    attempts: BTreeMap<AttemptKey, AttemptSeries>,
    requests: BTreeMap<RequestKey, u64>,
    sli_total: u64,
    sli_good: u64,
}

impl Metrics {
    /// Counts one client request for the SLI (not synthetic, not the client's fault).
    pub fn record_sli(&mut self, within_targets: bool) {
        self.sli_total += 1;
        self.sli_good += u64::from(within_targets);
    }

    /// Records one attempt (user traffic and synthetic alike; synthetic is labelled).
    pub fn record_attempt(&mut self, obs: &Observation, cost: f64) {
        let key = (
            Arc::clone(&obs.provider_id),
            Arc::clone(&obs.model),
            obs.operation.as_str(),
        );
        let s = self.attempts.entry(key).or_insert_with(AttemptSeries::new);
        *s.outcomes.entry(obs.outcome.label()).or_default() += 1;
        s.duration.observe_n(obs.e2e.as_secs_f64(), 1);
        if let Some(t) = obs.ttft {
            s.ttft.observe_n(t.as_secs_f64(), 1);
        }
        // Gaps are recorded per token: equal consecutive gaps (one chunk's k tokens) go in at once.
        let mut i = 0;
        while i < obs.gaps.len() {
            let g = obs.gaps[i];
            let mut j = i + 1;
            while j < obs.gaps.len() && obs.gaps[j] == g {
                j += 1;
            }
            s.itl.observe_n(f64::from(g), (j - i) as u64);
            i = j;
        }
        if let Some(r) = obs.decode_rate {
            s.decode.observe_n(r, 1);
        }
        if let Some(p) = obs.prompt_tokens {
            s.input_tokens.observe_n(p as f64, 1);
            s.tokens_in += p;
        }
        if let Some(c) = obs.completion_tokens {
            s.output_tokens.observe_n(c as f64, 1);
            s.tokens_out += c;
        }
        s.cost += cost;
    }

    /// Records one client request as the client saw it.
    pub fn record_request(&mut self, r: &RequestSummary) {
        let provider = r.provider.clone().unwrap_or_else(|| Arc::from("none"));
        let outcome = match r.status {
            200..=299 => "ok",
            499 => "client_cancelled",
            400..=498 => "client_error",
            _ => "error",
        };
        *self
            .requests
            .entry((provider, Arc::clone(&r.model), outcome))
            .or_default() += 1;
    }

    /// The whole registry in Prometheus text format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        type Pick = fn(&AttemptSeries) -> &Histogram;
        let hists: [(&str, &str, Pick); 6] = [
            (
                "gen_ai_client_operation_duration_seconds",
                "Duration of each upstream attempt, start to last byte.",
                |s| &s.duration,
            ),
            (
                "gen_ai_client_operation_time_to_first_chunk_seconds",
                "Time from sending an attempt to its first output token (streams).",
                |s| &s.ttft,
            ),
            (
                "gen_ai_client_operation_time_per_output_chunk_seconds",
                "Inter-token latency; a chunk of k tokens counts as k gaps of gap/k.",
                |s| &s.itl,
            ),
            (
                "candor_decode_tokens_per_second",
                "Decode rate of each streamed attempt after its first token.",
                |s| &s.decode,
            ),
            (
                "gen_ai_client_token_usage",
                "Input tokens per attempt (gen_ai_token_type=input).",
                |s| &s.input_tokens,
            ),
            (
                "candor_output_token_usage",
                "Output tokens per attempt.",
                |s| &s.output_tokens,
            ),
        ];
        for (name, help, pick) in hists {
            family(&mut out, name, "histogram", help);
            for ((p, m, op), s) in &self.attempts {
                let mut labels = series_labels(p, m, op);
                if name == "gen_ai_client_token_usage" {
                    labels.push_str(",gen_ai_token_type=\"input\"");
                }
                pick(s).render(&mut out, name, &labels);
            }
        }

        family(
            &mut out,
            "candor_attempts_total",
            "counter",
            "Upstream attempts by outcome.",
        );
        for ((p, m, op), s) in &self.attempts {
            for (outcome, n) in &s.outcomes {
                let _ = writeln!(
                    out,
                    "candor_attempts_total{{{},outcome=\"{outcome}\"}} {n}",
                    series_labels(p, m, op)
                );
            }
        }
        family(
            &mut out,
            "candor_requests_total",
            "counter",
            "Client requests by answering provider, model and outcome.",
        );
        for ((p, m, outcome), n) in &self.requests {
            let _ = writeln!(
                out,
                "candor_requests_total{{provider=\"{}\",gen_ai_request_model=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(p),
                escape(m)
            );
        }
        family(
            &mut out,
            "candor_tokens_total",
            "counter",
            "Tokens processed by type.",
        );
        for ((p, m, op), s) in &self.attempts {
            let l = series_labels(p, m, op);
            let _ = writeln!(
                out,
                "candor_tokens_total{{{l},gen_ai_token_type=\"input\"}} {}",
                s.tokens_in
            );
            let _ = writeln!(
                out,
                "candor_tokens_total{{{l},gen_ai_token_type=\"output\"}} {}",
                s.tokens_out
            );
        }
        family(
            &mut out,
            "candor_cost_usd_total",
            "counter",
            "Cost from the provider price table, US dollars.",
        );
        for ((p, m, op), s) in &self.attempts {
            let _ = writeln!(
                out,
                "candor_cost_usd_total{{{}}} {}",
                series_labels(p, m, op),
                s.cost
            );
        }
        family(
            &mut out,
            "candor_in_flight_requests",
            "gauge",
            "Upstream attempts currently open.",
        );
        for (p, n) in &gauges.in_flight {
            let _ = writeln!(
                out,
                "candor_in_flight_requests{{provider=\"{}\"}} {n}",
                escape(p)
            );
        }
        family(
            &mut out,
            "candor_provider_state",
            "gauge",
            "1 for the provider's current routing state (healthy, degraded, ejected, recovering).",
        );
        for (p, state, _) in &gauges.routing {
            for name in ["healthy", "degraded", "ejected", "recovering"] {
                let _ = writeln!(
                    out,
                    "candor_provider_state{{provider=\"{}\",state=\"{name}\"}} {}",
                    escape(p),
                    u8::from(*state == name)
                );
            }
        }
        family(
            &mut out,
            "candor_provider_routing_weight",
            "gauge",
            "Share of a healthy provider's traffic the provider should get (1 healthy, 0 ejected).",
        );
        for (p, _, w) in &gauges.routing {
            let _ = writeln!(
                out,
                "candor_provider_routing_weight{{provider=\"{}\"}} {w}",
                escape(p)
            );
        }
        for (name, kind, help, v) in [
            (
                "candor_request_log_dropped_total",
                "counter",
                "Request-log rows lost: the writer's queue or buffer was full, or the database refused them.",
                gauges.request_log_dropped,
            ),
            (
                "candor_request_log_failing",
                "gauge",
                "1 while the request log's writes fail (rows are held, up to its buffer), else 0.",
                u64::from(gauges.request_log_failing),
            ),
            (
                "candor_request_log_rows_written_total",
                "counter",
                "Request-log rows written to the database (its rate is the log's ingestion rate).",
                gauges.request_log_written,
            ),
            (
                "candor_request_log_buffered_rows",
                "gauge",
                "Request-log rows held by the writer, waiting for the database.",
                gauges.request_log_buffered,
            ),
            (
                crate::slo::rules::SLI_TOTAL,
                "counter",
                "Client requests judged for the SLI (not synthetic, not the client's fault).",
                self.sli_total,
            ),
            (
                crate::slo::rules::SLI_GOOD,
                "counter",
                "Of which served within the targets (2xx, TTFT and decode rate or end to end).",
                self.sli_good,
            ),
        ] {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        family(
            &mut out,
            "candor_open_incidents",
            "gauge",
            "Open incidents by failure mode and provider (or subject).",
        );
        for ((mode, provider), n) in &gauges.open_incidents {
            let _ = writeln!(
                out,
                "candor_open_incidents{{mode=\"{}\",provider=\"{}\"}} {n}",
                escape(mode),
                escape(provider)
            );
        }
        family(
            &mut out,
            "candor_slo_burn_rate",
            "gauge",
            "Error-budget burn rate of the SLI over each alert window (SLO time base).",
        );
        for (w, v) in &gauges.burn_rates {
            let _ = writeln!(out, "candor_slo_burn_rate{{window=\"{w}\"}} {v}");
        }
        family(
            &mut out,
            "candor_dependency_latency_seconds",
            "gauge",
            "Latest latency of each watched dependency.",
        );
        for (d, v) in &gauges.dependencies {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "candor_dependency_latency_seconds{{dependency=\"{}\"}} {v}",
                    escape(d)
                );
            }
        }
        family(
            &mut out,
            "candor_canary_passing",
            "gauge",
            "1 when the canary probe passed at its latest run, 0 when it failed.",
        );
        for (provider, model, probe, pass) in &gauges.canaries {
            let _ = writeln!(
                out,
                "candor_canary_passing{{provider=\"{}\",model=\"{}\",probe=\"{}\"}} {}",
                escape(provider),
                escape(model),
                escape(probe),
                u8::from(*pass)
            );
        }
        family(
            &mut out,
            "candor_observations_dropped_total",
            "counter",
            "Observations dropped because the health task queue was full.",
        );
        let _ = writeln!(
            out,
            "candor_observations_dropped_total {}",
            gauges.observations_dropped
        );
        out
    }
}

fn series_labels(provider: &str, model: &str, op: &str) -> String {
    format!(
        "provider=\"{}\",gen_ai_request_model=\"{}\",gen_ai_operation_name=\"{op}\"",
        escape(provider),
        escape(model)
    )
}

/// Escapes a label value per the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_repeats() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe_n(0.05, 3);
        h.observe_n(0.5, 1);
        h.observe_n(7.0, 1);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 4\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_count{a=\"b\"} 5\n"));
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
