//! What the metric names of vLLM, SGLang, TGI, llama.cpp, Triton / TensorRT-LLM and the DCGM
//! exporter mean (reference §1–2), read into one engine-neutral reading. Pure.

use serde::Serialize;

use super::text::Line;

/// One scrape of a provider's server (and GPU exporter), engine-neutral. `None`: not exposed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Reading {
    /// Which engine's names were found.
    pub engine: Option<&'static str>,
    /// Requests waiting for a batch slot (queue depth).
    pub queue: Option<f64>,
    /// Requests in the running batch.
    pub running: Option<f64>,
    /// KV-cache use, 0–1.
    pub kv_usage: Option<f64>,
    /// Preemptions (SGLang: retractions) since start; a counter.
    pub preemptions_total: Option<f64>,
    /// Generated tokens since start; a counter.
    pub generation_tokens_total: Option<f64>,
    /// Engine steps since start; a counter.
    pub engine_steps_total: Option<f64>,
    /// Requests that waited longer than [`LONG_WAIT_S`] to be scheduled, since start; a
    /// counter read off the server's queue-time histogram (vLLM's
    /// `request_queue_time_seconds`, SGLang's `queue_time_seconds`). Unlike the waiting
    /// gauge, a queue that forms and drains between two scrapes shows in it.
    pub waited_long_total: Option<f64>,
    /// Slowest GPU's SM clock, MHz.
    pub sm_clock_mhz: Option<f64>,
    /// Clock-event (throttle) reason bits, OR-ed over GPUs.
    pub throttle_reasons: Option<u64>,
    /// GPU memory in use, 0–1 (all GPUs together).
    pub gpu_memory_used: Option<f64>,
    /// GPU utilisation, 0–1 (mean over GPUs).
    pub gpu_util: Option<f64>,
    /// Hottest GPU, °C.
    pub gpu_temp_c: Option<f64>,
}

/// How several series of one name combine.
#[derive(Debug, Clone, Copy)]
enum Agg {
    Sum,
    Max,
    Min,
    Mean,
}

/// The per-field accumulator: (sum, min, max, count).
#[derive(Debug, Clone, Copy)]
struct Acc(f64, f64, f64, u32);

impl Default for Acc {
    fn default() -> Self {
        Acc(0.0, f64::INFINITY, f64::NEG_INFINITY, 0)
    }
}

impl Acc {
    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.0 += v;
            self.1 = self.1.min(v);
            self.2 = self.2.max(v);
            self.3 += 1;
        }
    }

    fn get(self, agg: Agg) -> Option<f64> {
        (self.3 > 0).then(|| match agg {
            Agg::Sum => self.0,
            Agg::Max => self.2,
            Agg::Min => self.1,
            Agg::Mean => self.0 / f64::from(self.3),
        })
    }
}

/// A wait for a batch slot longer than this, seconds, is a queue users feel (a bucket bound
/// of vLLM's and SGLang's queue-time histograms).
pub const LONG_WAIT_S: f64 = 1.0;
/// The queue-time histograms, by base name.
const QUEUE_TIME: [&str; 2] = [
    "vllm:request_queue_time_seconds",
    "sglang:queue_time_seconds",
];

/// Engine names by their metric prefix.
const ENGINES: [(&str, &str); 7] = [
    ("vllm:", "vllm"),
    ("sglang:", "sglang"),
    ("tgi_", "tgi"),
    ("llamacpp:", "llama.cpp"),
    ("nv_trt_llm_", "tensorrt-llm"),
    ("trtllm_", "tensorrt-llm"),
    ("nv_inference_", "triton"),
];

/// Reads every known name in `lines` (one or more scrapes: server and DCGM exporter).
pub fn read(lines: &[Line<'_>]) -> Reading {
    let mut f = [Acc::default(); 12];
    const QUEUE: usize = 0;
    const RUNNING: usize = 1;
    const KV: usize = 2;
    const PREEMPT: usize = 3;
    const GEN: usize = 4;
    const STEPS: usize = 5;
    const CLOCK: usize = 6;
    const FB_USED: usize = 7;
    const FB_FREE: usize = 8;
    const UTIL: usize = 9;
    const TEMP: usize = 10;
    const TGI_TOKENS: usize = 11;
    let mut tgi_budget = Acc::default();
    let mut throttle: Option<u64> = None;
    let mut engine = None;
    let mut kv_fallback = Acc::default();
    // Queue-time histogram: every request's wait, and those within `LONG_WAIT_S`.
    let (mut waits, mut short_waits) = (Acc::default(), Acc::default());
    for l in lines {
        if let Some(series) = QUEUE_TIME.iter().find_map(|b| l.name.strip_prefix(b)) {
            match series {
                "_count" => waits.add(l.value),
                "_bucket"
                    if l.label("le").and_then(|v| v.parse::<f64>().ok()) == Some(LONG_WAIT_S) =>
                {
                    short_waits.add(l.value);
                }
                _ => {}
            }
        }
        if engine.is_none() {
            engine = ENGINES
                .iter()
                .find(|(p, _)| l.name.starts_with(p))
                .map(|(_, e)| *e);
        }
        let v = l.value;
        let slot = match l.name {
            "vllm:num_requests_waiting"
            | "sglang:num_queue_reqs"
            | "tgi_queue_size"
            | "llamacpp:requests_deferred"
            | "trtllm_num_requests_waiting"
            | "nv_inference_pending_request_count" => Some(QUEUE),
            "vllm:num_requests_running"
            | "sglang:num_running_reqs"
            | "tgi_batch_current_size"
            | "llamacpp:requests_processing"
            | "trtllm_num_requests_running" => Some(RUNNING),
            "nv_trt_llm_request_metrics" => match l.label("request_type") {
                Some("waiting") => Some(QUEUE),
                Some("scheduled") => Some(RUNNING),
                _ => None,
            },
            "vllm:kv_cache_usage_perc"
            | "sglang:token_usage"
            | "llamacpp:kv_cache_usage_ratio"
            | "trtllm_kv_cache_utilization" => Some(KV),
            "nv_trt_llm_kv_cache_block_metrics" => {
                (l.label("kv_cache_block_type") == Some("fraction")).then_some(KV)
            }
            // Deprecated vLLM name, used only when the new one is absent.
            "vllm:gpu_cache_usage_perc" => {
                kv_fallback.add(v);
                None
            }
            "vllm:num_preemptions_total"
            | "sglang:num_retracted_requests_total"
            | "sglang:num_retracted_reqs" => Some(PREEMPT),
            "vllm:generation_tokens_total"
            | "sglang:generation_tokens_total"
            | "llamacpp:tokens_predicted_total"
            | "tgi_request_generated_tokens_sum" => Some(GEN),
            "vllm:iteration_tokens_total_count"
            | "llamacpp:n_decode_total"
            | "tgi_batch_inference_count"
            | "nv_inference_exec_count" => Some(STEPS),
            "nv_trt_llm_general_metrics" => {
                (l.label("general_type") == Some("iteration_counter")).then_some(STEPS)
            }
            "tgi_batch_current_max_tokens" => Some(TGI_TOKENS),
            "tgi_batch_max_total_tokens" => {
                tgi_budget.add(v);
                None
            }
            "DCGM_FI_DEV_SM_CLOCK" => Some(CLOCK),
            "DCGM_FI_DEV_FB_USED" => Some(FB_USED),
            "DCGM_FI_DEV_FB_FREE" => Some(FB_FREE),
            "nv_gpu_memory_used_bytes" => Some(FB_USED),
            "nv_gpu_memory_total_bytes" => {
                // Triton reports total, not free.
                f[FB_FREE].add(v);
                None
            }
            "DCGM_FI_DEV_GPU_UTIL" => {
                f[UTIL].add(v / 100.0);
                None
            }
            "nv_gpu_utilization" => Some(UTIL),
            "DCGM_FI_DEV_GPU_TEMP" => Some(TEMP),
            "DCGM_FI_DEV_CLOCKS_EVENT_REASONS" | "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS" => {
                if v.is_finite() && v >= 0.0 {
                    throttle = Some(throttle.unwrap_or(0) | v as u64);
                }
                None
            }
            _ => None,
        };
        if let Some(i) = slot {
            f[i].add(v);
        }
    }
    let used = f[FB_USED].get(Agg::Sum);
    // DCGM gives used and free (MiB); Triton gives used and total (bytes).
    let triton_total = lines.iter().any(|l| l.name == "nv_gpu_memory_total_bytes");
    let gpu_memory_used = match (used, f[FB_FREE].get(Agg::Sum)) {
        (Some(u), Some(t)) if triton_total && t > 0.0 => Some(u / t),
        (Some(u), Some(free)) if u + free > 0.0 => Some(u / (u + free)),
        _ => None,
    };
    let tgi_kv = match (f[TGI_TOKENS].get(Agg::Sum), tgi_budget.get(Agg::Sum)) {
        (Some(used), Some(max)) if max > 0.0 => Some(used / max),
        _ => None,
    };
    Reading {
        engine: engine.or(used.map(|_| "dcgm")),
        queue: f[QUEUE].get(Agg::Sum),
        running: f[RUNNING].get(Agg::Sum),
        kv_usage: f[KV].get(Agg::Max).or(kv_fallback.get(Agg::Max)).or(tgi_kv),
        preemptions_total: f[PREEMPT].get(Agg::Sum),
        generation_tokens_total: f[GEN].get(Agg::Sum),
        engine_steps_total: f[STEPS].get(Agg::Sum),
        waited_long_total: match (waits.get(Agg::Sum), short_waits.get(Agg::Sum)) {
            (Some(all), Some(short)) => Some((all - short).max(0.0)),
            _ => None,
        },
        sm_clock_mhz: f[CLOCK].get(Agg::Min),
        throttle_reasons: throttle,
        gpu_memory_used,
        gpu_util: f[UTIL].get(Agg::Mean),
        gpu_temp_c: f[TEMP].get(Agg::Max),
    }
}

/// Names of the clock-event reason bits that slow a GPU (DCGM exporter's decoding).
pub fn throttle_names(bits: u64) -> Vec<&'static str> {
    const NAMES: [(u64, &str); 8] = [
        (0x2, "clocks_setting"),
        (0x4, "sw_power_cap"),
        (0x8, "hw_slowdown"),
        (0x10, "sync_boost"),
        (0x20, "sw_thermal"),
        (0x40, "hw_thermal"),
        (0x80, "hw_power_brake"),
        (0x100, "display_clocks"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests;
