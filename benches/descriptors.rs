//! What output descriptors cost on the request path: a whole streamed response metered
//! without descriptors (what Candor did before) and with them (text kept, descriptors
//! computed at the end), side by side, for short, typical and long answers.
//! Run: `cargo bench --bench descriptors`.
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candor::observation::{Observation, Operation, Source};
use candor::proxy::meter::Meter;
use candor::quality::descriptors::Ask;
use tokio::time::Instant;

const WORDS: &[&str] = &[
    "the", "cache", "holds", "keys", "and", "values", "for", "each", "token", "so", "decoding",
    "stays", "fast", "while", "memory", "lasts", "under", "load", "batches", "grow",
];

fn chunks(tokens: usize) -> Vec<String> {
    let mut out: Vec<String> = (0..tokens)
        .map(|i| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{{"index":0,"delta":{{"content":" {}"}},"finish_reason":null}}]}}"#,
                WORDS[(i * 7 + i / 3) % WORDS.len()]
            )
        })
        .collect();
    out.push(r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.into());
    out.push(r#"{"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],"usage":{"prompt_tokens":900,"completion_tokens":256}}"#.into());
    out
}

fn meter_once(chunks: &[String], ask: Option<Ask>, t0: Instant) {
    let mut m = Meter::new(t0).asking(ask);
    for (i, c) in chunks.iter().enumerate() {
        m.on_data(t0 + Duration::from_millis(i as u64), c.as_bytes());
    }
    let mut obs = Observation::start(
        0,
        Arc::from("p"),
        Arc::from("m"),
        Operation::Chat,
        Source::Client,
        true,
        t0,
    );
    m.finish(t0 + Duration::from_secs(5), &mut obs);
    black_box(obs);
}

/// Median of 15 runs of `iters` responses, in µs per response.
fn time(iters: u32, mut f: impl FnMut()) -> f64 {
    let mut runs: Vec<f64> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let t0 = Instant::now();
    let ask = Ask {
        wants_json: false,
        max_tokens: Some(1024),
        prompt_tokens_estimate: Some(880),
    };
    println!(
        "| answer | meter only (µs/response) | meter + descriptors | added | added per token |"
    );
    println!("|---|---|---|---|---|");
    for (name, tokens, iters) in [
        ("short, 16 tokens", 16, 2000),
        ("typical, 256 tokens", 256, 300),
        ("long, 4096 tokens", 4096, 20),
    ] {
        let c = chunks(tokens);
        let plain = time(iters, || meter_once(&c, None, t0));
        let with = time(iters, || meter_once(&c, Some(ask), t0));
        println!(
            "| {name} | {plain:.1} | {with:.1} | {:.1} µs ({:+.0} %) | {:.2} µs |",
            with - plain,
            (with / plain - 1.0) * 100.0,
            (with - plain) / tokens as f64
        );
    }
}
