//! Every detector fires on its failure mode and stays quiet on clean traffic.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::health::baseline::{Ratios, Reference};
use crate::health::state::{Signals, State};
use crate::health::window::{ErrorClass, FailureRun, Sample, Slot, Window};

fn slot(samples: &[Sample<'_>]) -> Slot {
    let t0 = Instant::now();
    let mut w = Window::new(t0, Duration::from_secs(1), 60);
    for s in samples {
        w.record(t0, s);
    }
    w.sum(t0, Duration::from_secs(60))
}

fn ok(ttft: f64, gaps: &'static [f32], max_gap: f64) -> Sample<'static> {
    Sample {
        completed: true,
        within_targets: true,
        ttft: Some(ttft),
        e2e: 1.0,
        decode: Some(80.0),
        gaps,
        max_gap: Some(max_gap),
        in_flight: 4,
        ..Sample::default()
    }
}

fn failed(class: ErrorClass) -> Sample<'static> {
    Sample {
        failed: true,
        error: Some(class),
        e2e: 0.1,
        ..Sample::default()
    }
}

const GAPS: &[f32] = &[0.012; 40];

fn clock(t: Instant) -> Clock {
    Clock {
        at: t,
        unix_ms: 1_000_000,
    }
}

struct Fixture {
    recent: Slot,
    signals: Signals,
    state: State,
    baseline: Option<Reference>,
    peers: Option<Ratios>,
    quickest_gap_baseline: Option<f64>,
    fastest_step: Option<f64>,
    health_ok: Option<bool>,
    backend: Option<crate::scrape::Backend>,
    queued_recently: bool,
    waited_long_lately: Option<bool>,
    canary_stuck: Option<Instant>,
    failure_run: FailureRun,
}

impl Fixture {
    fn new(recent: Slot) -> Fixture {
        Fixture {
            signals: Signals {
                requests: recent.requests,
                failures: recent.failed,
                decode: Some(80.0),
                decode_live: true,
                load: 4.0,
                ..Signals::default()
            },
            recent,
            state: State::Healthy,
            baseline: Some(Reference {
                ttft: Some(0.1),
                decode: Some(80.0),
                decode_spread: None,
            }),
            peers: Some(Ratios {
                ttft: Some(1.0),
                decode: Some(1.0),
                late: None,
                step: None,
            }),
            quickest_gap_baseline: None,
            fastest_step: None,
            health_ok: None,
            backend: None,
            queued_recently: false,
            waited_long_lately: None,
            canary_stuck: None,
            failure_run: FailureRun::default(),
        }
    }

    /// Steps `ticks` ticks of 500 ms from `from`; true when any of them found `mode`.
    fn finds(&self, d: &mut ProviderDetectors, from: Instant, ticks: u64, mode: Mode) -> bool {
        (0..ticks)
            .any(|i| modes(&self.step(d, from + Duration::from_millis(500 * i))).contains(&mode))
    }

    fn step(&self, d: &mut ProviderDetectors, now: Instant) -> Vec<Finding> {
        let input = ProviderInput {
            id: "p",
            since_healthy: &self.recent,
            failure_run: self.failure_run,
            signals: &self.signals,
            state: self.state,
            baseline: self.baseline,
            peers: self.peers,
            quickest_gap_baseline: self.quickest_gap_baseline,
            fastest_step: self.fastest_step,
            backend: self.backend.as_ref(),
            health_endpoint_ok: self.health_ok,
            in_flight: 6,
            queued_recently: self.queued_recently,
            waited_long_lately: self.waited_long_lately,
            stall_limit: Duration::from_secs(2),
            ttft_target: 2.0,
            canary_stuck: self
                .canary_stuck
                .map(|at| (at, "no first token within 10 s")),
        };
        d.step(&input, &clock(now), now)
    }
}

fn clean_slot() -> Slot {
    slot(&vec![ok(0.1, GAPS, 0.02); 40])
}

/// Detectors that have watched 10 s of clean traffic from `t0`.
fn learned_on_clean_traffic(t0: Instant) -> ProviderDetectors {
    let mut d = ProviderDetectors::default();
    for i in 0..20 {
        let fx = Fixture::new(clean_slot());
        assert!(
            fx.step(&mut d, t0 + Duration::from_millis(500 * i))
                .is_empty()
        );
    }
    d
}

fn modes(f: &[Finding]) -> Vec<Mode> {
    f.iter().map(|f| f.mode).collect()
}

#[test]
fn clean_traffic_finds_nothing_for_minutes() {
    let t0 = Instant::now();
    let mut d = ProviderDetectors::default();
    for i in 0..600 {
        let mut f = Fixture::new(clean_slot());
        // Ordinary jitter of the decode rate, ±12 %.
        f.signals.decode = Some(80.0 * (1.0 + 0.12 * ((i as f64) * 0.7).sin()));
        assert!(
            f.step(&mut d, t0 + Duration::from_millis(500 * i))
                .is_empty(),
            "tick {i}"
        );
    }
}

#[test]
fn a_hang_is_named_with_its_onset_and_the_200_health_endpoint() {
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    fx.health_ok = Some(true);
    let mut d = ProviderDetectors::default();
    fx.signals.stalled_for = Some(Duration::from_millis(900));
    assert!(fx.step(&mut d, t0).is_empty(), "under the watchdog");
    let now = t0 + Duration::from_secs(2);
    fx.signals.stalled_for = Some(Duration::from_millis(2900));
    let f = fx.step(&mut d, now);
    assert_eq!(modes(&f), [Mode::BatchQueueDeadlock]);
    let f = &f[0];
    assert_eq!(f.severity, Severity::Critical);
    // Onset: the last token, not the alarm.
    assert_eq!(f.onset_unix_ms, clock(now).ms(now) - 2900);
    assert!(f.summary.contains("still answers 200"), "{}", f.summary);
    // Ejected: no traffic to judge, the finding is held until the provider recovers.
    fx.state = State::Ejected {
        until: now + Duration::from_secs(30),
    };
    fx.signals.stalled_for = None;
    let held = fx.step(&mut d, now + Duration::from_secs(5));
    assert_eq!(modes(&held), [Mode::BatchQueueDeadlock]);
    fx.state = State::Healthy;
    assert!(fx.step(&mut d, now + Duration::from_secs(40)).is_empty());
}

#[test]
fn a_40_percent_slowdown_is_hardware_degradation_within_seconds() {
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    let mut d = ProviderDetectors::default();
    for i in 0..10 {
        assert!(
            fx.step(&mut d, t0 + Duration::from_millis(500 * i))
                .is_empty()
        );
    }
    fx.signals.decode = Some(48.0);
    let start = t0 + Duration::from_secs(5);
    let mut fired = None;
    for i in 0..20 {
        let now = start + Duration::from_millis(500 * i);
        if let Some(f) = fx
            .step(&mut d, now)
            .into_iter()
            .find(|f| f.mode == Mode::HardwareDegradation)
        {
            fired = Some((i, f));
            break;
        }
    }
    let (ticks, f) = fired.expect("fires");
    assert!(ticks <= 6, "needs {ticks} ticks");
    assert!(ticks >= 1, "one tick alone is not enough");
    // Onset at the tick before the drop (where the CUSUM last stood at 0).
    assert!(f.onset_unix_ms <= clock(t0).ms(start));
    assert!(f.summary.contains("40 %"), "{}", f.summary);
    let decode = f
        .facts
        .iter()
        .find(|x| x.signal == "decode_tokens_per_s")
        .unwrap();
    assert_eq!(decode.baseline, Some(80.0));
    // A provider slower than its peers but like its own baseline is just slower hardware.
    let mut slow_hw = Fixture::new(clean_slot());
    slow_hw.signals.decode = Some(50.0);
    slow_hw.baseline = Some(Reference {
        ttft: Some(0.1),
        decode: Some(52.0),
        decode_spread: None,
    });
    let mut d = ProviderDetectors::default();
    for i in 0..100 {
        assert!(
            slow_hw
                .step(&mut d, t0 + Duration::from_millis(500 * i))
                .is_empty()
        );
    }
}

#[test]
fn a_hang_is_not_called_a_slowdown() {
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    let mut d = ProviderDetectors::default();
    fx.signals.decode = Some(2.0);
    fx.signals.stalled_for = Some(Duration::from_millis(1500));
    for i in 0..4 {
        let f = fx.step(&mut d, t0 + Duration::from_millis(500 * i));
        assert!(!modes(&f).contains(&Mode::HardwareDegradation));
    }
}

#[test]
fn mid_stream_stalls_with_flat_medians_are_kv_thrashing() {
    let t0 = Instant::now();
    let mut d = learned_on_clean_traffic(t0);
    let learned = d.clone();
    // 8 of 40 streams freeze for ~3 s mid-answer; medians and errors unchanged.
    let mut samples = vec![ok(0.1, GAPS, 0.02); 32];
    samples.extend(vec![ok(0.1, GAPS, 3.0); 8]);
    let fx = Fixture::new(slot(&samples));
    let now = t0 + Duration::from_secs(10);
    let f = fx.step(&mut d, now);
    assert_eq!(modes(&f), [Mode::KvCacheThrashing]);
    let share = &f[0].facts[0];
    assert_eq!(share.signal, "stall_share");
    assert!((share.value - 0.2).abs() < 1e-9);
    // Traffic moved away and the stalls stop: the finding stands a while, then clears.
    let clean = Fixture::new(clean_slot());
    assert_eq!(
        modes(&clean.step(&mut d, now + Duration::from_secs(5))),
        [Mode::KvCacheThrashing]
    );
    assert!(clean.step(&mut d, now + Duration::from_secs(25)).is_empty());
    // The same stalls with many errors are not the thrash signature.
    let mut errs = samples.clone();
    errs.extend(vec![failed(ErrorClass::Server); 10]);
    let fx = Fixture::new(slot(&errs));
    let mut learned = learned;
    let f = fx.step(&mut learned, now);
    assert!(
        !modes(&f).contains(&Mode::KvCacheThrashing),
        "{:?}",
        modes(&f)
    );
    // One stall in 40 is noise.
    let mut one = vec![ok(0.1, GAPS, 0.02); 39];
    one.push(ok(0.1, GAPS, 3.0));
    let fx = Fixture::new(slot(&one));
    let mut d3 = ProviderDetectors::default();
    assert!(fx.step(&mut d3, now).is_empty());
}

#[test]
fn stalls_the_servers_own_cache_contradicts_are_not_kv_thrashing() {
    // Long prefills stall streams too: the server says its cache stayed a third full and
    // preempted nothing, so the stalls are not a cache shortage.
    let t0 = Instant::now();
    let mut d = learned_on_clean_traffic(t0);
    let mut samples = vec![ok(0.1, GAPS, 0.02); 32];
    samples.extend(vec![ok(0.1, GAPS, 3.0); 8]);
    let mut fx = Fixture::new(slot(&samples));
    fx.backend = Some(crate::scrape::Backend {
        reading: crate::scrape::engines::Reading {
            kv_usage: Some(0.36),
            ..Default::default()
        },
        preemptions_per_s: Some(0.0),
        ..Default::default()
    });
    for i in 0..10 {
        let f = fx.step(
            &mut d,
            t0 + Duration::from_secs(10) + Duration::from_millis(500 * i),
        );
        assert!(!modes(&f).contains(&Mode::KvCacheThrashing), "{f:#?}");
    }
}

#[test]
fn a_slow_stretch_counts_once_however_long_the_idle_after_it() {
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    let mut d = ProviderDetectors::default();
    // The window's median says 40 % slow, but no stream has run since: the same figure
    // repeated for a minute is one observation, not 120.
    fx.signals.decode = Some(48.0);
    fx.signals.decode_live = false;
    assert!(!fx.finds(&mut d, t0, 120, Mode::HardwareDegradation));
    // Streams running that slow are evidence.
    fx.signals.decode_live = true;
    let later = t0 + Duration::from_secs(60);
    assert!(fx.finds(&mut d, later, 20, Mode::HardwareDegradation));
}

#[test]
fn a_provider_whose_rate_swings_needs_a_deeper_drop() {
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    // Healthy at this load its rate spreads by 30 % from tick to tick (short answers, whole
    // prompts prefilled between its decode steps): 30 % below its mean is within its noise.
    fx.baseline = fx.baseline.map(|r| Reference {
        decode_spread: Some(0.3),
        ..r
    });
    fx.signals.decode = Some(56.0);
    let mut d = ProviderDetectors::default();
    assert!(!fx.finds(&mut d, t0, 60, Mode::HardwareDegradation));
    // Cut to a third it is named.
    fx.signals.decode = Some(26.0);
    let later = t0 + Duration::from_secs(30);
    assert!(fx.finds(&mut d, later, 20, Mode::HardwareDegradation));
}

#[test]
fn a_slowdown_every_peer_shares_is_the_traffic_not_hardware() {
    // A burst: every provider of the model decodes at 60 % of its baseline at once.
    let t0 = Instant::now();
    let mut fx = Fixture::new(clean_slot());
    let mut d = ProviderDetectors::default();
    fx.signals.decode = Some(48.0);
    fx.peers = Some(Ratios {
        decode: Some(0.6),
        ttft: Some(1.5),
        late: None,
        step: None,
    });
    for i in 0..120 {
        let f = fx.step(&mut d, t0 + Duration::from_millis(500 * i));
        assert!(!modes(&f).contains(&Mode::HardwareDegradation), "{f:#?}");
    }
    // The peers recover while this one stays slow: now it is the provider.
    fx.peers = Some(Ratios {
        decode: Some(0.98),
        ttft: Some(1.0),
        late: None,
        step: None,
    });
    let later = t0 + Duration::from_secs(60);
    let named = (0..20).find_map(|i| {
        fx.step(&mut d, later + Duration::from_millis(500 * i))
            .into_iter()
            .find(|f| f.mode == Mode::HardwareDegradation)
    });
    let f = named.expect("named once the peers are back to normal");
    assert!(f.summary.contains("peers"), "{}", f.summary);
    assert!(
        f.facts.iter().any(|x| x.signal == "peer_decode_ratio"),
        "{:#?}",
        f.facts
    );
}

#[test]
fn a_fifth_of_first_tokens_seconds_late_with_a_flat_median_is_tail_latency() {
    let t0 = Instant::now();
    let mut d = learned_on_clean_traffic(t0);
    let mut learned = d.clone();
    // 8 of 40 requests wait 3 s before their first token; no stream stalls mid-answer.
    let mut samples = vec![ok(0.1, GAPS, 0.02); 32];
    samples.extend(vec![ok(3.1, GAPS, 0.02); 8]);
    let fx = Fixture::new(slot(&samples));
    let now = t0 + Duration::from_secs(10);
    let f = fx.step(&mut d, now);
    assert_eq!(modes(&f), [Mode::TailLatency]);
    assert_eq!(f[0].facts[0].signal, "slow_first_token_share");
    assert!((f[0].facts[0].value - 0.2).abs() < 1e-9);
    assert!(f[0].summary.contains("median"), "{}", f[0].summary);
    // First tokens late against the usual but within users' target are no tail users feel
    // (a burst of long prompts queued behind each other's prefill).
    let mut within = vec![ok(0.1, GAPS, 0.02); 32];
    within.extend(vec![ok(1.8, GAPS, 0.02); 8]);
    let f = Fixture::new(slot(&within)).step(&mut learned.clone(), now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // A third of them late moves the median of all (to 0.2 s, twice the learned 0.1 s), not
    // that of the rest: still a tail.
    let mut third = vec![ok(0.1, GAPS, 0.02); 13];
    third.extend(vec![ok(0.2, GAPS, 0.02); 13]);
    third.extend(vec![ok(3.1, GAPS, 0.02); 14]);
    let f = Fixture::new(slot(&third)).step(&mut learned.clone(), now);
    assert_eq!(modes(&f), [Mode::TailLatency]);
    // Every first token slower (the median moved) is not an intermittent tail.
    let fx = Fixture::new(slot(&vec![ok(3.1, GAPS, 0.02); 40]));
    let f = fx.step(&mut learned.clone(), now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // Nor is the same tail under overload: that is the queue's.
    let mut fx = Fixture::new(slot(&samples));
    fx.signals.overloaded = true;
    let mut overloaded = learned.clone();
    let f = fx.step(&mut overloaded, now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // Nor when its peers show the same share of late first tokens: a burst queued them all.
    let mut fx = Fixture::new(slot(&samples));
    fx.peers = Some(Ratios {
        late: Some(0.15),
        step: None,
        ..fx.peers.unwrap_or_default()
    });
    let f = fx.step(&mut learned.clone(), now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // Peers with a few late ones of their own excuse nothing.
    fx.peers = Some(Ratios {
        late: Some(0.02),
        step: None,
        ..fx.peers.unwrap_or_default()
    });
    let f = fx.step(&mut learned, now);
    assert_eq!(modes(&f), [Mode::TailLatency]);
}

#[test]
fn a_queue_explains_late_first_tokens_only_when_the_servers_queue_time_says_one_formed() {
    let t0 = Instant::now();
    let mut learned = learned_on_clean_traffic(t0);
    let now = t0 + Duration::from_secs(10);
    // 8 of 40 first tokens 3 s late, and a scrape in the window showed requests waiting.
    let mut samples = vec![ok(0.1, GAPS, 0.02); 32];
    samples.extend(vec![ok(3.1, GAPS, 0.02); 8]);
    let mut fx = Fixture::new(slot(&samples));
    fx.queued_recently = true;
    // A server that does not say how long its requests waited: they may be the queue's.
    let f = fx.step(&mut learned.clone(), now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // Its queue-time histogram says requests waited seconds for a slot: a queue formed.
    fx.waited_long_lately = Some(true);
    let f = fx.step(&mut learned.clone(), now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
    // It says none did: what waited at the scrape was admitted within a second; the late
    // first tokens were late before the engine saw them.
    fx.waited_long_lately = Some(false);
    let f = fx.step(&mut learned.clone(), now);
    assert_eq!(modes(&f), [Mode::TailLatency]);
    // Unless requests wait at the server now: the histogram counts them only once admitted.
    fx.backend = Some(crate::scrape::Backend {
        reading: crate::scrape::engines::Reading {
            queue: Some(4.0),
            ..Default::default()
        },
        ..Default::default()
    });
    let f = fx.step(&mut learned, now);
    assert!(!modes(&f).contains(&Mode::TailLatency), "{f:#?}");
}

#[test]
fn a_saturated_cache_explains_a_blown_first_token_time_and_its_timeouts() {
    let t0 = Instant::now();
    let mut d = learned_on_clean_traffic(t0);
    // First tokens take 3x longer at the median and a fifth of attempts time out.
    let mut samples = vec![ok(0.3, GAPS, 0.02); 32];
    samples.extend(vec![failed(ErrorClass::Server); 8]);
    let now = t0 + Duration::from_secs(10);
    let mut without = Fixture::new(slot(&samples));
    assert_eq!(
        modes(&without.step(&mut d.clone(), now)),
        [Mode::ErrorBurst],
        "from the gateway alone this is an error burst"
    );
    without.backend = Some(crate::scrape::Backend {
        reading: crate::scrape::engines::Reading {
            kv_usage: Some(0.97),
            ..Default::default()
        },
        preemptions_per_s: Some(2.0),
        ..Default::default()
    });
    let f = without.step(&mut d, now);
    assert_eq!(
        modes(&f),
        [Mode::KvCacheThrashing],
        "the timeouts are its symptom"
    );
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(
        f[0].facts
            .iter()
            .any(|x| x.signal == "kv_cache_usage" && x.value > 0.9)
    );
}

/// A scrape of a server with `waiting` and `running` requests generating `tokens_per_s`.
fn server(waiting: f64, running: f64, tokens_per_s: f64) -> crate::scrape::Backend {
    crate::scrape::Backend {
        reading: crate::scrape::engines::Reading {
            queue: Some(waiting),
            running: Some(running),
            ..Default::default()
        },
        generation_tokens_per_s: Some(tokens_per_s),
        engine_steps_per_s: Some(if tokens_per_s > 0.0 { 20.0 } else { 0.0 }),
        ..Default::default()
    }
}

fn timed_out() -> Sample<'static> {
    Sample {
        timed_out: true,
        ..failed(ErrorClass::Server)
    }
}

#[test]
fn first_token_timeouts_behind_a_queue_are_the_queues_not_an_error_burst() {
    let t0 = Instant::now();
    let burst = |failure: Sample<'static>, queue: Option<crate::scrape::Backend>| {
        let mut samples = vec![ok(0.1, GAPS, 0.02); 16];
        samples.extend(vec![failure; 8]);
        let mut fx = Fixture::new(slot(&samples));
        fx.backend = queue;
        modes(&fx.step(&mut ProviderDetectors::default(), t0))
    };
    // Requests that waited out their first-token limit at a server with 30 waiting: the
    // queue's (what made it is named by its own detector, or by the capacity condition).
    assert_eq!(burst(timed_out(), Some(server(30.0, 16.0, 400.0))), []);
    // The same timeouts with no queue in sight, or server errors at a queueing server, are
    // the provider's failures.
    assert_eq!(burst(timed_out(), None), [Mode::ErrorBurst]);
    assert_eq!(
        burst(timed_out(), Some(server(0.0, 4.0, 400.0))),
        [Mode::ErrorBurst]
    );
    assert_eq!(
        burst(failed(ErrorClass::Server), Some(server(30.0, 16.0, 400.0))),
        [Mode::ErrorBurst]
    );
}

#[test]
fn at_a_queueing_server_only_its_own_errors_count_toward_a_burst() {
    let t0 = Instant::now();
    let mixed = |errors: usize, timeouts: usize| {
        let mut samples = vec![ok(0.1, GAPS, 0.02); 16];
        samples.extend(vec![timed_out(); timeouts]);
        samples.extend(vec![failed(ErrorClass::Server); errors]);
        let mut fx = Fixture::new(slot(&samples));
        fx.backend = Some(server(30.0, 16.0, 400.0));
        modes(&fx.step(&mut ProviderDetectors::default(), t0))
    };
    // Overloaded and answering 500 to 10 of the 26 attempts it answered: a burst, however
    // many more waited out their first token in its queue.
    assert_eq!(mixed(10, 12), [Mode::ErrorBurst]);
    // A few 500s among many queue timeouts: 3 of the 19 it answered, under the burst share.
    assert_eq!(mixed(3, 20), []);
}

#[test]
fn at_light_load_most_of_a_small_window_failing_is_a_burst() {
    let t0 = Instant::now();
    let window = |ok_n: usize, failed_n: usize| {
        let mut samples = vec![ok(0.1, GAPS, 0.02); ok_n];
        samples.extend(vec![failed(ErrorClass::Server); failed_n]);
        modes(&Fixture::new(slot(&samples)).step(&mut ProviderDetectors::default(), t0))
    };
    // Routing cooled the provider down after 3 of its 4 attempts failed: no fifth attempt
    // comes to make the window big enough for a share.
    assert_eq!(window(1, 3), [Mode::ErrorBurst]);
    // Too few failures, or not most of a small window.
    assert_eq!(window(2, 2), []);
    assert_eq!(window(1, 2), []);
}

#[test]
fn server_failures_in_a_row_are_a_burst_before_the_window_share_says_so() {
    let t0 = Instant::now();
    let run = |failure: Sample<'static>, n: usize, queue: bool| {
        // Forty good attempts, then `n` failures that got the provider ejected: 11 % of the
        // window, under the burst share.
        let mut samples = vec![ok(0.1, GAPS, 0.02); 40];
        samples.extend(vec![failure; n]);
        let mut fx = Fixture::new(slot(&samples));
        fx.state = State::Ejected {
            until: t0 + Duration::from_secs(30),
        };
        if queue {
            fx.backend = Some(server(30.0, 16.0, 400.0));
        }
        let mut last = FailureRun::default();
        for s in &samples {
            last.record(t0, s);
        }
        fx.failure_run = last;
        let found = fx.step(&mut ProviderDetectors::default(), t0);
        let facts: Vec<_> = found
            .iter()
            .flat_map(|f| &f.facts)
            .map(|f| f.signal)
            .collect();
        (modes(&found), facts.contains(&"server_failures_in_a_row"))
    };
    assert_eq!(
        run(failed(ErrorClass::Server), 5, false),
        (vec![Mode::ErrorBurst], true)
    );
    assert_eq!(run(failed(ErrorClass::Server), 4, false), (vec![], false));
    // Five 500s at a queueing server still are; five queue timeouts are the queue's.
    assert_eq!(
        run(failed(ErrorClass::Server), 5, true),
        (vec![Mode::ErrorBurst], true)
    );
    assert_eq!(run(timed_out(), 5, true), (vec![], false));
    // Any other attempt ends a run.
    let mut r = FailureRun::default();
    for s in [failed(ErrorClass::Server); 4] {
        r.record(t0, &s);
    }
    r.record(t0, &failed(ErrorClass::RateLimited));
    r.record(t0, &failed(ErrorClass::Server));
    assert_eq!(r.counted(false), 1);
}

#[test]
fn a_stuck_canary_is_a_hang_only_while_the_server_holds_work_and_makes_no_tokens() {
    let t0 = Instant::now();
    let hang = |backend: Option<crate::scrape::Backend>| {
        // No attempt ended in the window (the provider is out of rotation) and the canary
        // got no first token.
        let mut fx = Fixture::new(slot(&[]));
        fx.canary_stuck = Some(t0);
        fx.backend = backend;
        modes(&fx.step(
            &mut ProviderDetectors::default(),
            t0 + Duration::from_secs(1),
        ))
        .contains(&Mode::BatchQueueDeadlock)
    };
    assert!(
        hang(None),
        "with nothing else to go on, a stuck canary is a hang"
    );
    assert!(hang(Some(server(3.0, 2.0, 0.0))), "work held, no tokens");
    // The engine generating: the canary waited in a queue. Nothing at the server: whatever
    // held it up has drained.
    assert!(!hang(Some(server(30.0, 16.0, 250.0))));
    assert!(!hang(Some(server(0.0, 0.0, 0.0))));
}

#[test]
fn a_per_stream_slowdown_the_engines_own_count_does_not_show_is_not_hardware() {
    let t0 = Instant::now();
    let slowed = |tokens_per_s: f64, waiting: f64| {
        let mut fx = Fixture::new(clean_slot());
        let mut d = learned_on_clean_traffic(t0);
        fx.signals.decode = Some(48.0);
        fx.backend = Some(server(waiting, 4.0, tokens_per_s));
        fx.finds(
            &mut d,
            t0 + Duration::from_secs(10),
            20,
            Mode::HardwareDegradation,
        )
    };
    // Candor's streams see 48 tokens/s against 80; the engine says each of its 4 running
    // sequences gets 75 (what a slowed GPU cannot do) — or 45 (what it does).
    assert!(!slowed(300.0, 0.0));
    assert!(slowed(180.0, 0.0));
    // With a standing queue the engine admits a prompt at every free slot, and their
    // prefill costs each running stream up to a third of its rate: 56 of 80 is the queue's;
    // a slowdown on top of the queue leaves less than 0.6 of the baseline.
    assert!(!slowed(224.0, 20.0));
    assert!(slowed(160.0, 20.0));
}

#[test]
fn behind_a_queue_a_decode_step_as_quick_as_ever_is_load_not_hardware() {
    let t0 = Instant::now();
    // A full batch behind a standing queue, the engine prefilling what it admits between
    // steps: each stream decodes at a third of its baseline, the engine's own count agrees
    // (both what a slowed GPU would show too), and its peers decode as usual.
    let judged = |quickest_gap: Option<f64>, waiting: f64| {
        let mut fx = Fixture::new(clean_slot());
        let mut d = learned_on_clean_traffic(t0);
        fx.signals.decode = Some(27.0);
        fx.signals.quickest_gap = quickest_gap;
        fx.quickest_gap_baseline = Some(0.030);
        fx.backend = Some(server(waiting, 32.0, 32.0 * 27.0));
        fx.finds(
            &mut d,
            t0 + Duration::from_secs(10),
            20,
            Mode::HardwareDegradation,
        )
    };
    // Its quickest gaps are the 30 ms step it learned at this batch: the queue's doing.
    assert!(!judged(Some(0.031), 40.0));
    // Every step a third slower (the documented sensitivity is a quarter): a slowdown.
    assert!(judged(Some(0.045), 40.0));
    // Without enough gaps to tell, or without a queue, the step says nothing either way.
    assert!(judged(None, 40.0));
    assert!(judged(Some(0.031), 0.0));
}

#[test]
fn a_stream_losing_time_between_steps_as_quick_as_ever_is_traffic_not_hardware() {
    let t0 = Instant::now();
    // Nothing waits at the server, its peers decode as usual, the engine's own count per
    // running sequence agrees with the streams: each decodes at `rate` against the 80
    // tokens/s learned at this load, and its quickest gaps take `quickest_gap` against the
    // 30 ms learned at this batch.
    let judged = |rate: f64, quickest_gap: Option<f64>| {
        let mut fx = Fixture::new(clean_slot());
        let mut d = learned_on_clean_traffic(t0);
        fx.signals.decode = Some(rate);
        fx.signals.quickest_gap = quickest_gap;
        fx.quickest_gap_baseline = Some(0.030);
        fx.backend = Some(server(0.0, 4.0, 4.0 * rate));
        fx.finds(
            &mut d,
            t0 + Duration::from_secs(10),
            60,
            Mode::HardwareDegradation,
        )
    };
    // 30 % slower per stream with every step as quick as learned: the time went between
    // steps (prompts admitted from heavier traffic than the baseline learned at), for 30 s.
    assert!(!judged(56.0, Some(0.031)));
    // The same drop with every step a quarter slower, or with no gaps to tell: a slowdown.
    assert!(judged(56.0, Some(0.040)));
    assert!(judged(56.0, None));
    // Deeper than prompts admitted between steps can take, the drop is named whatever the
    // step says (its gaps are read as streams end, and trail a sudden slowdown).
    assert!(judged(36.0, Some(0.031)));
}

#[test]
fn a_slower_decode_step_with_nothing_waiting_is_named_however_noisy_the_rate() {
    let t0 = Instant::now();
    // Short answers and long prompts: the per-stream rate swings by 30 % when healthy, so
    // a 12 % lower rate says nothing; the fastest token gaps (the decode step alone) say
    // each step takes `gap` against the 30 ms learned at this batch.
    let judged = |gap: f64, queued: bool, peers_step: Option<f64>| {
        let mut fx = Fixture::new(clean_slot());
        let mut d = learned_on_clean_traffic(t0);
        fx.baseline = Some(Reference {
            decode_spread: Some(0.3),
            ..fx.baseline.expect("set")
        });
        fx.signals.decode = Some(70.0);
        fx.signals.queued = queued;
        fx.fastest_step = Some(0.030 / gap);
        fx.peers = fx.peers.map(|r| Ratios {
            step: peers_step,
            ..r
        });
        let from = t0 + Duration::from_secs(10);
        (0..20)
            .flat_map(|i| fx.step(&mut d, from + Duration::from_millis(500 * i)))
            .find(|f| f.mode == Mode::HardwareDegradation)
    };
    // A quarter slower: named within a few ticks, with the step as its evidence.
    let f = judged(0.040, false, Some(1.0)).expect("named");
    let step = f.facts.iter().find(|x| x.signal == "decode_step_ratio");
    assert!(step.is_some_and(|x| x.value < 0.8), "{:?}", f.facts);
    assert!(f.summary.contains("25 % slower"), "{}", f.summary);
    // A step within its noise, or a step its peers share (the traffic), is nothing.
    assert!(judged(0.033, false, Some(1.0)).is_none());
    assert!(judged(0.040, false, Some(0.75)).is_none());
    // Behind a queue an engine that chunks prompts prefills inside its steps: not judged.
    assert!(judged(0.040, true, Some(1.0)).is_none());
}

#[test]
fn ordinary_failures_are_named_by_kind() {
    let t0 = Instant::now();
    let cases = [
        (ErrorClass::RateLimited, 4, Mode::RateLimited),
        (ErrorClass::Connection, 4, Mode::ConnectionFailures),
        (ErrorClass::MidStreamReset, 3, Mode::MidStreamResets),
        (ErrorClass::Server, 6, Mode::ErrorBurst),
    ];
    for (class, n, mode) in cases {
        let mut samples = vec![ok(0.1, GAPS, 0.02); 16];
        samples.extend(vec![failed(class); n]);
        let fx = Fixture::new(slot(&samples));
        let mut d = ProviderDetectors::default();
        let f = fx.step(&mut d, t0);
        assert_eq!(modes(&f), [mode], "{class:?}");
    }
    // One error of each kind in 40 requests is not a burst.
    let mut samples = vec![ok(0.1, GAPS, 0.02); 36];
    samples.extend(ErrorClass::ALL.map(failed));
    let fx = Fixture::new(slot(&samples));
    assert!(fx.step(&mut ProviderDetectors::default(), t0).is_empty());
}

fn gateway_slot(deadline: f64, timeouts: usize) -> Slot {
    let mut v: Vec<Sample<'_>> = (0..30)
        .map(|_| Sample {
            completed: true,
            e2e: 1.0,
            deadline: Some(deadline),
            ..Sample::default()
        })
        .collect();
    v.extend((0..timeouts).map(|_| Sample {
        failed: true,
        timed_out: true,
        e2e: 0.01,
        deadline: Some(deadline),
        ..Sample::default()
    }));
    slot(&v)
}

#[test]
fn a_slow_dependency_is_named_as_the_root_cause_of_shrinking_deadlines() {
    let t0 = Instant::now();
    let c = clock(t0);
    let mut dep = DependencyWatch::new("vector-db");
    let mut g = GatewayDetectors::default();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // 30 s of normal: 15 ms queries, 3.98 s of deadline left on arrival.
    for i in 0..60 {
        dep.observe(
            at(i * 500),
            Some(0.015 * (1.0 + 0.2 * ((i as f64).sin()))),
            2.0,
        );
        let slot = gateway_slot(3.98, 0);
        assert!(
            g.step(
                &GatewayInput { recent: &slot },
                std::slice::from_ref(&dep),
                &c,
                at(i * 500)
            )
            .is_none()
        );
    }
    assert!(dep.baseline().is_some_and(|b| (b - 0.015).abs() < 0.003));
    // The vector DB turns 100x slower at 30 s; the gateway sees shorter deadlines after.
    let mut found = None;
    for i in 60..120 {
        dep.observe(at(i * 500), Some(1.5), 2.0);
        let deadline = if i < 63 { 3.98 } else { 2.4 };
        let slot = gateway_slot(deadline, if i > 70 { 5 } else { 0 });
        if let Some(f) = g.step(
            &GatewayInput { recent: &slot },
            std::slice::from_ref(&dep),
            &c,
            at(i * 500),
        ) {
            found = Some(f);
            break;
        }
    }
    let f = found.expect("a cascade is found");
    assert_eq!(f.mode, Mode::CascadingTimeouts);
    let root = f.root_cause.expect("root cause named");
    assert_eq!(root.component, "vector-db");
    assert!(
        root.onset_unix_ms <= c.ms(at(30_000)),
        "onset {}",
        root.onset_unix_ms - c.ms(t0)
    );
    assert!(root.lead_s >= 0.0);
    assert!(f.summary.contains("vector-db"), "{}", f.summary);
}

#[test]
fn steady_deadlines_and_a_quiet_dependency_find_nothing() {
    let t0 = Instant::now();
    let c = clock(t0);
    let mut dep = DependencyWatch::new("vector-db");
    let mut g = GatewayDetectors::default();
    for i in 0..400u64 {
        let t = t0 + Duration::from_millis(500 * i);
        let jitter = 1.0 + 0.3 * ((i as f64) * 1.3).sin();
        dep.observe(t, Some(0.015 * jitter), 2.0);
        let slot = gateway_slot(3.9 + 0.05 * ((i as f64) * 0.9).cos(), 0);
        assert!(
            g.step(
                &GatewayInput { recent: &slot },
                std::slice::from_ref(&dep),
                &c,
                t
            )
            .is_none(),
            "tick {i}"
        );
        assert!(dep.anomalous_since().is_none(), "tick {i}");
    }
}

#[test]
fn a_dependency_ten_times_slower_is_a_warning_before_any_deadline_is_missed() {
    let t0 = Instant::now();
    let c = clock(t0);
    let mut dep = DependencyWatch::new("vector-db");
    let mut g = GatewayDetectors::default();
    let step = |g: &mut GatewayDetectors, dep: &DependencyWatch, slot: &Slot, t: Instant| {
        g.step(
            &GatewayInput { recent: slot },
            std::slice::from_ref(dep),
            &c,
            t,
        )
    };
    for i in 0..60u64 {
        let t = t0 + Duration::from_millis(500 * i);
        dep.observe(t, Some(0.015), 2.0);
        assert!(step(&mut g, &dep, &gateway_slot(3.9, 0), t).is_none());
    }
    // Twice as slow: off its baseline, but not yet far enough to be worth a finding.
    let t1 = t0 + Duration::from_secs(30);
    for i in 0..10u64 {
        let t = t1 + Duration::from_millis(500 * i);
        dep.observe(t, Some(0.03), 2.0);
        assert!(step(&mut g, &dep, &gateway_slot(3.9, 0), t).is_none());
    }
    // Ten times: a leading indicator, while the clients still arrive with all their deadline.
    let t2 = t0 + Duration::from_secs(40);
    let mut found = None;
    for i in 0..6u64 {
        let t = t2 + Duration::from_millis(500 * i);
        dep.observe(t, Some(0.15), 2.0);
        found = found.or(step(&mut g, &dep, &gateway_slot(3.9, 0), t));
    }
    let f = found.expect("named before any deadline is missed");
    assert_eq!(f.mode, Mode::CascadingTimeouts);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.summary.contains("leading indicator"), "{}", f.summary);
    assert!(f.summary.contains("vector-db"), "{}", f.summary);
    assert!(
        f.facts.iter().any(|x| x.signal == "deadline_budget_share"),
        "{:#?}",
        f.facts
    );
    assert_eq!(f.root_cause.unwrap().component, "vector-db");
}

#[test]
fn shrinking_deadlines_without_a_watched_dependency_still_name_the_cascade() {
    let t0 = Instant::now();
    let c = clock(t0);
    let mut g = GatewayDetectors::default();
    for i in 0..20u64 {
        let slot = gateway_slot(4.0, 0);
        assert!(
            g.step(
                &GatewayInput { recent: &slot },
                &[],
                &c,
                t0 + Duration::from_millis(500 * i)
            )
            .is_none()
        );
    }
    let mut found = None;
    for i in 20..40u64 {
        let slot = gateway_slot(1.5, 0);
        found = found.or(g.step(
            &GatewayInput { recent: &slot },
            &[],
            &c,
            t0 + Duration::from_millis(500 * i),
        ));
    }
    let f = found.expect("found");
    assert!(f.root_cause.is_none());
    assert!(f.summary.contains("[[dependency]]"), "{}", f.summary);
}
