//! Instruction counts of the request path's hot pure code, under Callgrind (gungraun): the SSE
//! splitter and meter per chunk and per whole stream, the routing decision over 2, 8 and 64
//! providers, and recording one response into the health windows. Counts, unlike wall time,
//! do not move with the machine's noise, so each benchmark carries a hard limit on
//! instructions (`Ir`) about 25 % above what it measured when the limit was set: CI fails
//! when a change makes one of them that much slower.
//!
//! Run: `cargo bench --bench hot_paths` (needs valgrind and `gungraun-runner` 0.20.0 on
//! PATH; `.ci/run` installs both). New figures: docs/benchmarks.md.
#![expect(
    clippy::disallowed_methods,
    reason = "gungraun's main! exits with the runner's code"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use candor::config::{Policy, RoutingConfig, Targets};
use candor::health::report::Windows;
use candor::health::snapshot::ProviderView;
use candor::health::state::State;
use candor::health::window::Sample;
use candor::observation::{Observation, Operation, Source};
use candor::proxy::meter::Meter;
use candor::proxy::sse::{SseSplitter, event_data};
use candor::quality::descriptors::Ask;
use candor::route::{Choice, Input, Plan, plan};
use gungraun::{
    Callgrind, EventKind, LibraryBenchmarkConfig, library_benchmark, library_benchmark_group, main,
};
use tokio::time::Instant;

/// A limit of `ir` instructions for one benchmark.
fn limit(ir: u64) -> LibraryBenchmarkConfig {
    let mut c = LibraryBenchmarkConfig::default();
    c.tool(Callgrind::default().hard_limits([(EventKind::Ir, ir)]));
    c
}

/// One OpenAI chat.completion.chunk event as it comes off the wire.
fn chunk(i: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "The", " cache", " holds", " keys", " and", " values", " per", " token",
    ];
    format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
        WORDS[i % WORDS.len()]
    )
    .into_bytes()
}

fn ask() -> Option<Ask> {
    Some(Ask {
        wants_json: false,
        max_tokens: Some(1024),
        prompt_tokens_estimate: Some(42),
    })
}

/// A stream of `tokens` token chunks, the finish chunk, the usage chunk and `[DONE]`.
fn stream(tokens: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<_> = (0..tokens).map(chunk).collect();
    out.push(b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n".to_vec());
    out.push(b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":256,\"total_tokens\":298}}\n\n".to_vec());
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

/// What the gateway does with each read from the upstream: split it into events and meter
/// each event's data.
fn feed(splitter: &mut SseSplitter, meter: &mut Meter, bytes: &[u8], now: Instant) {
    splitter.push(bytes);
    while let Ok(Some(ev)) = splitter.next_event() {
        if let Some(d) = event_data(&ev) {
            black_box(meter.on_data(now, &d));
        }
    }
}

/// A splitter and a meter in the middle of a stream (ten tokens in), and the next chunk.
fn mid_stream() -> (SseSplitter, Meter, Instant, Vec<u8>) {
    let t0 = Instant::now();
    let mut splitter = SseSplitter::default();
    let mut meter = Meter::new(t0).asking(ask());
    for (i, c) in (0..10).map(chunk).enumerate() {
        feed(
            &mut splitter,
            &mut meter,
            &c,
            t0 + Duration::from_millis(i as u64 * 20),
        );
    }
    (splitter, meter, t0 + Duration::from_millis(220), chunk(10))
}

// What the gateway does with each chunk: split it into events, meter each.
#[library_benchmark]
#[bench::one_chunk(args = (), setup = mid_stream, config = limit(13_600))]
fn sse_chunk(input: (SseSplitter, Meter, Instant, Vec<u8>)) -> (SseSplitter, Meter) {
    let (mut splitter, mut meter, now, bytes) = input;
    feed(&mut splitter, &mut meter, black_box(&bytes), now);
    (splitter, meter)
}

// A whole 256-token stream: every chunk split and metered, then the meter's summary with
// the output descriptors (repetition, compression ratio, script, refusal).
#[library_benchmark]
#[bench::stream_256_tokens(args = (256,), setup = stream, config = limit(4_700_000))]
fn sse_stream(chunks: Vec<Vec<u8>>) -> Observation {
    let t0 = Instant::now();
    let mut splitter = SseSplitter::default();
    let mut meter = Meter::new(t0).asking(ask());
    for (i, c) in chunks.iter().enumerate() {
        feed(
            &mut splitter,
            &mut meter,
            c,
            t0 + Duration::from_millis(i as u64 * 20),
        );
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
    meter.finish(t0 + Duration::from_secs(6), &mut obs);
    obs
}

/// Routing inputs for `n` providers: health views with some spread, one degraded.
struct Fleet {
    now: Instant,
    views: Vec<ProviderView>,
    ids: Vec<String>,
    cfg: RoutingConfig,
    targets: Targets,
}

fn fleet(n: usize) -> Fleet {
    let now = Instant::now();
    let views = (0..n)
        .map(|i| ProviderView {
            state: if i == 1 {
                State::Degraded { weight: 0.5 }
            } else {
                State::Healthy
            },
            ttft_p50: Some(0.15 + 0.01 * (i % 7) as f64),
            ttft_p95: Some(0.4 + 0.02 * (i % 5) as f64),
            decode: Some(40.0 + (i % 9) as f64),
            ..ProviderView::new(now)
        })
        .collect();
    Fleet {
        now,
        views,
        ids: (0..n).map(|i| format!("provider-{i}")).collect(),
        cfg: RoutingConfig::default(),
        targets: Targets {
            ttft: Duration::from_secs(1),
            decode_tokens_per_s: 10.0,
            e2e: Duration::from_secs(10),
            error_rate: 0.01,
        },
    }
}

// Candor's routing decision for one request.
#[library_benchmark]
#[bench::providers_2(args = (2,), setup = fleet, config = limit(13_400))]
#[bench::providers_8(args = (8,), setup = fleet, config = limit(27_000))]
#[bench::providers_64(args = (64,), setup = fleet, config = limit(190_000))]
fn route(f: Fleet) -> Plan {
    let input = Input {
        policy: Policy::Candor,
        cfg: &f.cfg,
        targets: &f.targets,
        options: f
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| Choice {
                index: i,
                id: &f.ids[i],
                view: v,
                in_flight: (i % 4) as i64,
                price: 0.6,
                probe_free: true,
            })
            .collect(),
        expected_output_tokens: 256.0,
        deadline_left: None,
        now: f.now,
        turn: 3,
        random: 0x9e37_79b9_7f4a_7c15,
    };
    plan(black_box(&input))
}

/// Health windows a minute in, and one streamed response's measurements (256 token gaps).
fn windows() -> (Windows, Instant, Vec<f32>) {
    let t0 = Instant::now();
    let mut w = Windows::new(t0);
    // One token per chunk, gaps varying like a real stream's.
    let gaps: Vec<f32> = (0..256).map(|i| 0.018 + 0.001 * (i % 7) as f32).collect();
    for i in 0..60 {
        w.record(t0 + Duration::from_secs(i), &sample(&gaps));
    }
    (w, t0 + Duration::from_secs(61), gaps)
}

fn sample(gaps: &[f32]) -> Sample<'_> {
    Sample {
        failed: false,
        within_targets: true,
        completed: true,
        ttft: Some(0.18),
        e2e: 5.3,
        decode: Some(50.0),
        gaps,
        max_gap: Some(0.05),
        in_flight: 3,
        tokens_in: 42,
        tokens_out: 256,
        error: None,
        deadline: None,
        timed_out: false,
        cost: 0.000_16,
    }
}

// Recording one response into a scope's fine and hourly windows.
#[library_benchmark]
#[bench::one_response(args = (), setup = windows, config = limit(108_000))]
fn health_record(input: (Windows, Instant, Vec<f32>)) -> Windows {
    let (mut w, now, gaps) = input;
    w.record(now, black_box(&sample(&gaps)));
    w
}

library_benchmark_group!(
    name = hot_paths,
    benchmarks = [sse_chunk, sse_stream, route, health_record]
);

main!(library_benchmark_groups = hot_paths);
