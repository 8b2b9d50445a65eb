use super::*;
use crate::sim::fault::Fault;

fn job(prompt: u32, n: usize) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Job {
            prompt_tokens: prompt,
            output: (0..n).map(|i| format!("t{i}")).collect(),
            finish: "stop",
            tx,
        },
        rx,
    )
}

/// Runs the engine in virtual time; returns each sequence's token arrival times.
fn run(
    engine: &mut Engine,
    fx: &Effects,
    rxs: &mut [mpsc::UnboundedReceiver<Event>],
    t0: Instant,
) -> Vec<Vec<Instant>> {
    let mut now = t0;
    let mut times = vec![Vec::new(); rxs.len()];
    while let Some(d) = engine.step(fx, now) {
        now += d;
        engine.finish_step(now);
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(ev) = rx.try_recv() {
                if matches!(ev, Event::Token(_)) {
                    times[i].push(now);
                }
            }
        }
    }
    times
}

fn cfg() -> EngineConfig {
    EngineConfig {
        slots: 8,
        kv_capacity_tokens: 100_000,
        prefill_tokens_per_s: 10_000.0,
        decode_step: Duration::from_millis(10),
        decode_step_per_seq: Duration::from_millis(1),
        ..EngineConfig::default()
    }
}

#[test]
fn decode_rate_at_batch_b_matches_the_step_time() {
    for b in [1usize, 4, 8] {
        let t0 = Instant::now();
        let mut e = Engine::new(cfg());
        let mut rxs = Vec::new();
        for _ in 0..b {
            let (j, rx) = job(100, 50);
            e.submit(j, t0);
            rxs.push(rx);
        }
        let times = run(&mut e, &Effects::of(&[]), &mut rxs, t0);
        let step = cfg().step_time(b).as_secs_f64();
        for t in &times {
            assert_eq!(t.len(), 50);
            let want = 1.0 / step;
            // From the second token on, one token per step.
            let measured = 48.0 / t[49].duration_since(t[1]).as_secs_f64();
            assert!(
                (measured / want - 1.0).abs() < 0.01,
                "batch {b}: {measured} vs {want}"
            );
        }
        // TTFT includes the prefill of every prompt admitted in the first step.
        let first = times[0][0].duration_since(t0).as_secs_f64();
        let want = step + (100 * b) as f64 / 10_000.0;
        assert!((first - want).abs() < 1e-6, "ttft {first} vs {want}");
        assert_eq!(e.stats().generation_tokens, 50 * b as u64);
        assert_eq!(e.stats().success_stop, b as u64);
    }
}

#[test]
fn slowdown_factor_shows_in_tokens_per_second() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg());
    let (j, rx) = job(10, 40);
    e.submit(j, t0);
    let fx = Effects::of(&[Fault::Slowdown { factor: 0.6 }]);
    let times = run(&mut e, &fx, &mut [rx], t0);
    let rate = 38.0 / times[0][39].duration_since(times[0][1]).as_secs_f64();
    assert!((rate / (0.6 / 0.010) - 1.0).abs() < 0.01, "rate {rate}");
}

#[test]
fn kv_pressure_preempts_and_stalls_mid_stream_while_the_median_holds() {
    let t0 = Instant::now();
    let mut e = Engine::new(EngineConfig {
        kv_capacity_tokens: 1_000,
        ..cfg()
    });
    let mut rxs = Vec::new();
    for _ in 0..8 {
        let (j, rx) = job(100, 100);
        e.submit(j, t0);
        rxs.push(rx);
    }
    let fx = Effects::of(&[]);
    let times = run(&mut e, &fx, &mut rxs, t0);
    assert!(e.stats().preemptions > 0, "a full KV cache must preempt");
    let mut gaps: Vec<f64> = times
        .iter()
        .flat_map(|t| {
            t.windows(2)
                .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    let p50 = gaps[gaps.len() / 2];
    let max = gaps[gaps.len() - 1];
    assert!(p50 < 0.03, "median gap stays a step: {p50}");
    assert!(
        max > 10.0 * p50,
        "a preempted stream stalls mid-way: max {max} p50 {p50}"
    );
    // Every sequence still finishes: no errors.
    assert!(times.iter().all(|t| t.len() == 100));
    assert_eq!(e.stats().success_stop, 8);
}

#[test]
fn deadlock_stops_every_token() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg());
    let (j, mut rx) = job(10, 5);
    e.submit(j, t0);
    assert!(e.step(&Effects::of(&[Fault::Deadlock]), t0).is_none());
    assert_eq!(e.waiting(), 1);
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_closed_receiver_cancels_the_sequence() {
    let t0 = Instant::now();
    let mut e = Engine::new(cfg());
    let (j, rx) = job(10, 1000);
    e.submit(j, t0);
    let fx = Effects::of(&[]);
    let d = e.step(&fx, t0).unwrap();
    e.finish_step(t0 + d);
    drop(rx);
    assert!(e.step(&fx, t0 + d).is_none(), "nothing left to run");
    assert_eq!(e.running(), 0);
}

/// The longest gap between two tokens of stream 0, and its first token's time.
fn longest_gap_while_prompts_arrive(chunked: bool) -> (f64, f64) {
    let t0 = Instant::now();
    let mut e = Engine::new(EngineConfig {
        max_batched_tokens: 2_048,
        chunked_prefill: chunked,
        ..cfg()
    });
    let (j, rx) = job(100, 200);
    e.submit(j, t0);
    let mut rxs = vec![rx];
    let fx = Effects::of(&[]);
    // The first stream is decoding when seven 8,000-token prompts arrive.
    let mut now = t0;
    for _ in 0..5 {
        let d = e.step(&fx, now).unwrap();
        now += d;
        e.finish_step(now);
    }
    for _ in 0..7 {
        let (j, rx) = job(8_000, 5);
        e.submit(j, now);
        rxs.push(rx);
    }
    let times = run(&mut e, &fx, &mut rxs, now);
    let gap = times[0]
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    (gap, times[1][0].duration_since(now).as_secs_f64())
}

#[test]
fn unchunked_a_step_prefills_whole_prompts_and_every_stream_waits() {
    // 8,000 tokens at 10,000/s: each long prompt is a step of its own (over the 2,048
    // budget, alone), 0.8 s during which the running stream gets nothing.
    let (gap, first) = longest_gap_while_prompts_arrive(false);
    assert!((0.8..1.0).contains(&gap), "gap {gap}");
    assert!(
        first < 1.0,
        "the first long prompt's first token after {first} s"
    );
}

#[test]
fn chunked_prefill_keeps_streams_decoding_between_chunks() {
    // At most 2,048 tokens a step, decodes first: a running stream waits about 0.2 s at a
    // time, never a whole prompt's prefill.
    let (gap, first) = longest_gap_while_prompts_arrive(true);
    assert!(gap < 0.25, "gap {gap}");
    assert!(
        first > 0.8,
        "a chunked 8,000-token prompt takes four steps: {first} s"
    );
}

#[test]
fn queue_time_counts_the_wait_for_a_first_admission_only() {
    let t0 = Instant::now();
    let mut e = Engine::new(EngineConfig { slots: 1, ..cfg() });
    let (a, ra) = job(10, 20);
    let (b, rb) = job(10, 20);
    e.submit(a, t0);
    e.submit(b, t0);
    let times = run(&mut e, &Effects::of(&[]), &mut [ra, rb], t0);
    let (counts, sum, n) = &e.stats().queue_time;
    assert_eq!(*n, 2);
    // The first waited nothing; the second the whole of the first's answer.
    let second = times[0]
        .last()
        .unwrap()
        .saturating_duration_since(t0)
        .as_secs_f64();
    assert!((sum - second).abs() < 1e-6, "{sum} vs {second}");
    assert_eq!(counts.iter().sum::<u64>(), 2);
}
