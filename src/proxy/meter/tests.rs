use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::observation::{Observation, Operation, Source};

fn obs(t0: Instant) -> Observation {
    Observation::start(
        0,
        Arc::from("p"),
        Arc::from("m"),
        Operation::Chat,
        Source::Client,
        true,
        t0,
    )
}

fn content(s: &str) -> String {
    format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{s}"}},"finish_reason":null}}]}}"#)
}

const ROLE: &str = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
const FINISH: &str = r#"{"model":"served","system_fingerprint":"fp1","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;

#[test]
fn single_token_chunks_give_exact_gaps_and_rate() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut m = Meter::new(t0);
    assert_eq!(m.on_data(ms(100), ROLE.as_bytes()), DataKind::Other);
    assert!(!m.saw_token(), "a role chunk is not a token");
    m.on_data(ms(200), content("a").as_bytes());
    m.on_data(ms(250), content("b").as_bytes());
    m.on_data(ms(300), content("c").as_bytes());
    m.on_data(ms(900), content("d").as_bytes()); // a 600 ms stall
    m.on_data(ms(950), FINISH.as_bytes());
    assert_eq!(m.on_data(ms(951), b"[DONE]"), DataKind::Done);
    let mut o = obs(t0);
    m.finish(ms(960), &mut o);
    assert_eq!(o.ttft, Some(Duration::from_millis(200)));
    assert_eq!(o.e2e, Duration::from_millis(960));
    assert_eq!(o.completion_tokens, Some(4));
    assert!(o.tokens_counted, "no usage: tokens were counted");
    assert_eq!(o.max_gap, Some(Duration::from_millis(600)));
    let gaps: Vec<u32> = o.gaps.iter().map(|g| (g * 1000.0).round() as u32).collect();
    assert_eq!(gaps, vec![50, 50, 600]);
    // (4 − 1) tokens over 700 ms.
    assert!((o.decode_rate.unwrap() - 3.0 / 0.7).abs() < 1e-6);
    assert_eq!(o.finish_reason.as_deref(), Some("length"));
    assert_eq!(o.served_model.as_deref(), Some("served"));
    assert_eq!(o.system_fingerprint.as_deref(), Some("fp1"));
}

#[test]
fn a_chunk_of_k_tokens_counts_as_k_gaps_of_gap_over_k() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut m = Meter::new(t0);
    m.on_data(ms(100), content("ab").as_bytes());
    m.on_data(ms(200), content("cdef").as_bytes());
    m.on_data(ms(300), content("gh").as_bytes());
    let usage = r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#;
    assert_eq!(m.on_data(ms(310), usage.as_bytes()), DataKind::UsageOnly);
    let mut o = obs(t0);
    m.finish(ms(320), &mut o);
    assert_eq!(o.prompt_tokens, Some(9));
    assert_eq!(o.completion_tokens, Some(4));
    assert!(!o.tokens_counted);
    // 8 bytes carry 4 tokens: the middle chunk holds 2 tokens (two gaps of 50 ms), the last 1.
    let gaps: Vec<u32> = o.gaps.iter().map(|g| (g * 1000.0).round() as u32).collect();
    assert_eq!(gaps, vec![50, 50, 100]);
    assert_eq!(o.max_gap, Some(Duration::from_millis(100)));
    // 4 tokens, 1 in the first chunk: 3 over 200 ms.
    assert!((o.decode_rate.unwrap() - 15.0).abs() < 1e-6);
}

#[test]
fn tool_calls_and_completions_text_are_tokens() {
    let t0 = Instant::now();
    let mut m = Meter::new(t0);
    let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#;
    m.on_data(t0 + Duration::from_millis(30), tool.as_bytes());
    assert!(m.saw_token());
    let text = r#"{"choices":[{"index":0,"text":"hello","finish_reason":null}]}"#;
    m.on_data(t0 + Duration::from_millis(60), text.as_bytes());
    let mut o = obs(t0);
    m.finish(t0 + Duration::from_millis(70), &mut o);
    assert_eq!(o.ttft, Some(Duration::from_millis(30)));
    assert_eq!(o.completion_tokens, Some(2));
}

#[test]
fn error_objects_and_garbage_are_recognised() {
    let t0 = Instant::now();
    let mut m = Meter::new(t0);
    assert_eq!(m.on_data(t0, b"not json"), DataKind::Other);
    let err = r#"{"error":{"message":"engine died","code":500}}"#;
    assert_eq!(m.on_data(t0, err.as_bytes()), DataKind::Error);
    assert!(m.stream_error().unwrap().contains("engine died"));
    let mut o = obs(t0);
    m.finish(t0, &mut o);
    assert_eq!(o.completion_tokens, None);
    assert_eq!(o.ttft, None);
}

#[test]
fn non_streamed_bodies_give_usage_and_finish() {
    let t0 = Instant::now();
    let mut m = Meter::new(t0);
    m.on_body(br#"{"model":"x","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#);
    let mut o = obs(t0);
    m.finish(t0 + Duration::from_millis(5), &mut o);
    assert_eq!(o.prompt_tokens, Some(3));
    assert_eq!(o.completion_tokens, Some(1));
    assert_eq!(o.finish_reason.as_deref(), Some("stop"));
    assert_eq!(o.decode_rate, None);
}

#[test]
fn truncate_respects_char_boundaries() {
    assert_eq!(truncate("héllo", 2), "h…");
    assert_eq!(truncate("abc", 5), "abc");
}
