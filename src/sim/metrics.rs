//! The simulator's `/metrics`, with vLLM's metric names and meanings (reference §1.1).

use std::fmt::Write;

use tokio::time::Instant;

use super::Sim;
use super::engine::{ITER_BUCKETS, ITL_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS};
use super::fault::Effects;
use crate::metrics::{family, histogram_series};

/// One histogram's data: bucket bounds, per-bucket counts, sum and count.
struct Hist<'a>(&'a [f64], &'a [u64], f64, u64);

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: Hist<'_>) {
    family(out, name, "histogram", help);
    histogram_series(out, name, labels, h.0, h.1, h.2, h.3);
}

/// Renders the engine's state as vLLM would expose it.
pub(super) fn render(sim: &Sim) -> String {
    let s = sim.lock();
    let fx = Effects::of(&s.faults.active(Instant::now()));
    let e = &s.engine;
    let st = e.stats().clone();
    let labels = format!("engine=\"0\",model_name=\"{}\"", sim.profile.model);
    let mut out = String::with_capacity(8192);
    let mut scalar = |name: &str, kind: &str, help: &str, v: f64| {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    };
    scalar(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        e.running() as f64,
    );
    scalar(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        e.waiting() as f64,
    );
    scalar(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        e.kv_usage(&fx).min(1.0),
    );
    scalar(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        st.preemptions as f64,
    );
    scalar(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        st.prompt_tokens as f64,
    );
    scalar(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        st.generation_tokens as f64,
    );
    family(
        &mut out,
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
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
    histogram(
        &mut out,
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        &labels,
        Hist(
            REQUEST_BUCKETS,
            &st.queue_time.0,
            st.queue_time.1,
            st.queue_time.2,
        ),
    );
    out
}
