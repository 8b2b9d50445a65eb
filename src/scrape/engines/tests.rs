use super::super::text::parse;
use super::*;

fn reading(text: &str) -> Reading {
    read(&parse(text))
}

#[test]
fn vllm_queue_running_kv_and_counters() {
    let r = reading(include_str!("../../../tests/fixtures/metrics/vllm.prom"));
    assert_eq!(r.engine, Some("vllm"));
    assert_eq!(r.queue, Some(7.0));
    assert_eq!(r.running, Some(24.0));
    assert_eq!(r.kv_usage, Some(0.913));
    assert_eq!(r.preemptions_total, Some(42.0));
    assert_eq!(r.generation_tokens_total, Some(456_789.0));
    assert_eq!(r.engine_steps_total, Some(19_876.0));
    // 1,923 requests scheduled, 1,850 of them within a second of arriving.
    assert_eq!(r.waited_long_total, Some(73.0));
}

#[test]
fn sglang_names() {
    let r = reading(include_str!("../../../tests/fixtures/metrics/sglang.prom"));
    assert_eq!(r.engine, Some("sglang"));
    assert_eq!(
        (r.queue, r.running, r.kv_usage),
        (Some(3.0), Some(12.0), Some(0.42))
    );
    assert_eq!(r.preemptions_total, Some(0.0));
    assert_eq!(r.generation_tokens_total, Some(220_410.0));
    // `le="1"` as SGLang writes it, read as the same bound.
    assert_eq!(r.waited_long_total, Some(12.0));
}

#[test]
fn tgi_names_and_token_budget_as_kv() {
    let r = reading(include_str!("../../../tests/fixtures/metrics/tgi.prom"));
    assert_eq!(r.engine, Some("tgi"));
    assert_eq!((r.queue, r.running), (Some(5.0), Some(8.0)));
    assert_eq!(r.kv_usage, Some(0.75));
    assert_eq!(r.generation_tokens_total, Some(245_000.0));
    assert_eq!(r.engine_steps_total, Some(82_000.0));
}

#[test]
fn llamacpp_names() {
    let r = reading(include_str!(
        "../../../tests/fixtures/metrics/llamacpp.prom"
    ));
    assert_eq!(r.engine, Some("llama.cpp"));
    assert_eq!((r.queue, r.running), (Some(1.0), Some(2.0)));
    // Newer llama.cpp builds do not export KV use: unknown, not zero.
    assert_eq!(r.kv_usage, None);
    assert_eq!(r.generation_tokens_total, Some(9120.0));
    assert_eq!(r.engine_steps_total, Some(8800.0));
}

#[test]
fn triton_tensorrt_llm_names() {
    let r = reading(include_str!(
        "../../../tests/fixtures/metrics/triton_trtllm.prom"
    ));
    assert_eq!(r.engine, Some("triton"));
    // Triton's pending count (0) plus TRT-LLM's waiting requests (6).
    assert_eq!(r.queue, Some(6.0));
    assert_eq!(r.running, Some(16.0));
    assert_eq!(r.kv_usage, Some(0.75));
    assert_eq!(r.engine_steps_total, Some(5120.0 + 771_234.0));
    assert!((r.gpu_memory_used.unwrap() - 0.9).abs() < 1e-9);
    assert_eq!(r.gpu_util, Some(0.97));
}

#[test]
fn dcgm_clock_throttle_and_memory() {
    let r = reading(include_str!("../../../tests/fixtures/metrics/dcgm.prom"));
    assert_eq!(r.engine, Some("dcgm"));
    assert_eq!(r.sm_clock_mhz, Some(1155.0));
    assert_eq!(r.throttle_reasons, Some(0x60));
    assert_eq!(throttle_names(0x60), vec!["sw_thermal", "hw_thermal"]);
    assert!((r.gpu_memory_used.unwrap() - 0.95).abs() < 1e-9);
    assert_eq!(r.gpu_temp_c, Some(89.0));
    assert_eq!(r.gpu_util, Some(0.95));
    assert_eq!(r.queue, None);
}

#[test]
fn deprecated_vllm_kv_name_is_a_fallback() {
    let r = reading("vllm:gpu_cache_usage_perc 0.5\n");
    assert_eq!(r.kv_usage, Some(0.5));
    let r = reading("vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.7\n");
    assert_eq!(r.kv_usage, Some(0.7));
}
