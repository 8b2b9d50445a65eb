//! The simulator's `/metrics`, with vLLM's metric names and meanings (reference §1.1).

use std::fmt::Write;

use tokio::time::Instant;

use super::Sim;
use super::engine::{ITER_BUCKETS, ITL_BUCKETS, TTFT_BUCKETS};
use super::fault::Effects;

/// One histogram's data: bucket bounds, per-bucket counts, sum and count.
struct Hist<'a>(&'a [f64], &'a [u64], f64, u64);

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: Hist<'_>) {
    let Hist(bounds, counts, sum, count) = h;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut acc = 0;
    for (i, b) in bounds.iter().enumerate() {
        acc += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {acc}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Renders the engine's state as vLLM would expose it.
pub(super) fn render(sim: &Sim) -> String {
    let s = sim.lock();
    let fx = Effects::of(&s.faults.active(Instant::now()));
    let e = &s.engine;
    let st = e.stats().clone();
    let labels = format!("engine=\"0\",model_name=\"{}\"", sim.profile.model);
    let mut out = String::with_capacity(8192);
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v}"
        );
    };
    gauge(
        &mut out,
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        e.running() as f64,
    );
    gauge(
        &mut out,
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        e.waiting() as f64,
    );
    gauge(
        &mut out,
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        e.kv_usage(&fx).min(1.0),
    );
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {v}"
        );
    };
    counter(
        &mut out,
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        st.preemptions,
    );
    counter(
        &mut out,
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        st.prompt_tokens,
    );
    counter(
        &mut out,
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        st.generation_tokens,
    );
    let _ = writeln!(
        out,
        "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter"
    );
    for (reason, v) in [
        ("stop", st.success_stop),
        ("length", st.success_length),
        ("abort", 0),
    ] {
        let _ = writeln!(
            out,
            "vllm:request_success_total{{{labels},finished_reason=\"{reason}\"}} {v}"
        );
    }
    histogram(
        &mut out,
        "vllm:iteration_tokens_total",
        "Histogram of number of tokens per engine_step.",
        &labels,
        Hist(
            ITER_BUCKETS,
            &st.iter_buckets,
            st.step_tokens as f64,
            st.steps,
        ),
    );
    histogram(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &labels,
        Hist(TTFT_BUCKETS, &st.ttft.0, st.ttft.1, st.ttft.2),
    );
    histogram(
        &mut out,
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        &labels,
        Hist(ITL_BUCKETS, &st.itl.0, st.itl.1, st.itl.2),
    );
    out
}
