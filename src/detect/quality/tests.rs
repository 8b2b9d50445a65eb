use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::quality::descriptors::{Ask, describe};
use crate::splitmix::SplitMix;

const WINDOW: Duration = Duration::from_secs(60);

fn clock(now: Instant) -> Clock {
    Clock {
        at: now,
        unix_ms: 1_700_000_000_000,
    }
}

fn canary(at: Instant, probe: &str, pass: bool, signal: Option<&'static str>) -> CanaryResult {
    CanaryResult {
        provider: 0,
        provider_id: "p".into(),
        model: "m".into(),
        probe: probe.into(),
        at_unix_ms: 0,
        at,
        latency_ms: Some(50.0),
        ttft_ms: Some(10.0),
        decode_tps: None,
        pass,
        signal,
        reason: signal.map_or("ok".into(), |s| format!("failed: {s}")),
        counted: true,
        answer: String::new(),
    }
}

/// A healthy answer: prose of random length, stopped by itself, prompt counted in full.
fn healthy(rng: &mut SplitMix) -> Descriptors {
    const WORDS: &[&str] = &[
        "the", "cache", "holds", "keys", "and", "values", "for", "each", "token", "so", "decoding",
        "stays", "fast", "while", "memory", "lasts", "under", "load", "batches", "grow",
    ];
    let n = 20 + rng.below(80) as usize;
    let text: Vec<&str> = (0..n)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect();
    let prompt = 200 + rng.below(800);
    let ask = Ask {
        wants_json: false,
        max_tokens: Some(512),
        prompt_tokens_estimate: Some(prompt),
    };
    describe(
        &text.join(" "),
        &ask,
        Some("stop"),
        Some(n as u64),
        Some(prompt + rng.below(20)),
    )
}

/// `n` healthy responses, one every 100 ms, to a provider and its peer; returns the time of
/// the last.
fn warm_pair(
    q: &mut QualityDetector,
    peer: &mut QualityDetector,
    rng: &mut SplitMix,
    n: u64,
) -> Instant {
    let t0 = Instant::now();
    let mut now = t0;
    for i in 0..n {
        now = t0 + Duration::from_millis(100 * i);
        q.on_response(now, &healthy(rng));
        peer.on_response(now, &healthy(rng));
        assert!(q.step("p", None, WINDOW, &clock(now), now).is_none());
    }
    now
}

#[test]
fn two_counted_canary_failures_alarm_and_two_passes_clear() {
    let mut q = QualityDetector::default();
    let t0 = Instant::now();
    q.on_identity(t0, Some("m-v1"), Some("fp_a"));
    for i in 0..10 {
        q.on_canary(&canary(
            t0 + Duration::from_secs(i),
            "known_answer",
            true,
            None,
        ));
    }
    assert!(q.step("p", None, WINDOW, &clock(t0), t0).is_none());
    let t1 = t0 + Duration::from_secs(60);
    q.on_canary(&canary(t1, "json_schema", false, Some("invalid_json")));
    assert!(
        q.step("p", None, WINDOW, &clock(t1), t1).is_none(),
        "one failure is noise"
    );
    q.on_canary(&canary(
        t1 + Duration::from_secs(1),
        "json_schema",
        false,
        Some("invalid_json"),
    ));
    let f = q
        .step("p", None, WINDOW, &clock(t1), t1)
        .expect("two failures alarm");
    assert_eq!(f.mode, Mode::SilentQualityDegradation);
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.facts[0].signal, "invalid_json");
    assert!(f.summary.contains("canary json_schema"), "{}", f.summary);
    assert_eq!(
        f.onset_unix_ms,
        clock(t1).ms(t1),
        "onset is the first failure"
    );
    for k in 0..2 {
        q.on_canary(&canary(
            t1 + Duration::from_secs(5 + k),
            "json_schema",
            true,
            None,
        ));
    }
    assert!(q.step("p", None, WINDOW, &clock(t1), t1).is_none());
}

#[test]
fn uncounted_and_availability_failures_do_not_count() {
    let mut q = QualityDetector::default();
    let t0 = Instant::now();
    for i in 0..5 {
        let mut c = canary(
            t0 + Duration::from_secs(i),
            "custom",
            false,
            Some("wrong_answer"),
        );
        c.counted = false;
        q.on_canary(&c);
        q.on_canary(&canary(t0, "known_answer", false, Some("no_first_token")));
    }
    assert!(q.step("p", None, WINDOW, &clock(t0), t0).is_none());
}

#[test]
fn clean_traffic_stays_quiet() {
    let mut q = QualityDetector::default();
    let mut rng = SplitMix::new(1);
    let t0 = Instant::now();
    for i in 0..3000u64 {
        let now = t0 + Duration::from_millis(100 * i);
        q.on_response(now, &healthy(&mut rng));
        let f = q.step("p", None, WINDOW, &clock(now), now);
        assert!(f.is_none(), "response {i}: {f:?}");
    }
}

#[test]
fn repetition_and_truncation_in_traffic_are_named_within_200_responses() {
    for (fault, signal) in [
        ("repetition", "repetition_share"),
        ("truncation", "truncated_prompt_share"),
        ("foreign", "unexpected_script_share"),
        ("max_tokens", "finish_max_tokens_share"),
    ] {
        let mut q = QualityDetector::default();
        let mut rng = SplitMix::new(2);
        let t0 = Instant::now();
        let mut now = t0;
        for i in 0..400u64 {
            now = t0 + Duration::from_millis(100 * i);
            q.on_response(now, &healthy(&mut rng));
            assert!(q.step("p", None, WINDOW, &clock(now), now).is_none());
        }
        let mut found = None;
        for i in 0..200u64 {
            now += Duration::from_millis(100);
            let mut d = healthy(&mut rng);
            match fault {
                "repetition" => d.seq_rep_4 = Some(0.9),
                "truncation" => d.prompt_tokens_reported = Some(64),
                "foreign" => d.foreign_script = 0.5,
                _ => d.finish = Some(Finish::MaxTokens),
            }
            q.on_response(now, &d);
            if let Some(f) = q.step("p", None, WINDOW, &clock(now), now) {
                found = Some((i, f));
                break;
            }
        }
        let (after, f) = found.unwrap_or_else(|| panic!("{fault} not found in 200 responses"));
        assert!(f.facts.iter().any(|x| x.signal == signal), "{fault}: {f:?}");
        assert_eq!(f.severity, Severity::Warning);
        assert!(after < 60, "{fault} took {after} responses");
        if fault == "truncation" {
            assert!(f.summary.contains("below what was sent"), "{}", f.summary);
        }
    }
}

#[test]
fn output_length_drift_is_named_unless_the_peers_moved_too() {
    for peers_moved in [false, true] {
        let (mut q, mut peer) = (QualityDetector::default(), QualityDetector::default());
        let mut rng = SplitMix::new(3);
        let mut now = warm_pair(&mut q, &mut peer, &mut rng, 500);
        let mut found = None;
        for _ in 0..200u64 {
            now += Duration::from_millis(100);
            let tripled = |mut d: Descriptors| {
                d.output_tokens = d.output_tokens.map(|t| t * 3);
                d
            };
            q.on_response(now, &tripled(healthy(&mut rng)));
            let d = healthy(&mut rng);
            peer.on_response(now, &if peers_moved { tripled(d) } else { d });
            let mut pool = PeerPool::default();
            peer.pool_into(&mut pool, true, None);
            if let Some(f) = q.step("p", Some(&pool), WINDOW, &clock(now), now) {
                found = Some(f);
                break;
            }
        }
        if peers_moved {
            assert!(
                found.is_none(),
                "a workload change is not a fault: {found:?}"
            );
        } else {
            let f = found.expect("drift named");
            assert_eq!(f.facts[0].signal, "output_tokens_drift", "{f:?}");
            assert!(f.facts[0].detail.contains("peers"), "{}", f.facts[0].detail);
        }
    }
}

#[test]
fn a_rate_the_peers_share_is_the_traffic_not_the_provider() {
    let (mut q, mut peer) = (QualityDetector::default(), QualityDetector::default());
    let mut rng = SplitMix::new(5);
    let mut now = warm_pair(&mut q, &mut peer, &mut rng, 400);
    // Clients start sending a small max_tokens: every provider's answers are cut alike.
    for _ in 0..200u64 {
        now += Duration::from_millis(100);
        for d in [&mut q, &mut peer] {
            let mut x = healthy(&mut rng);
            x.finish = Some(Finish::MaxTokens);
            d.on_response(now, &x);
        }
        let mut pool = PeerPool::default();
        peer.pool_into(&mut pool, false, None);
        let f = q.step("p", Some(&pool), WINDOW, &clock(now), now);
        assert!(f.is_none(), "{f:?}");
    }
}
