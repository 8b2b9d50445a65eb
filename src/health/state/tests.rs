use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn cfg() -> RoutingConfig {
    RoutingConfig::default()
}

fn targets() -> Targets {
    Targets {
        ttft: Duration::from_secs(1),
        decode_tokens_per_s: 20.0,
        e2e: Duration::from_secs(10),
        error_rate: 0.01,
    }
}

fn clean() -> Signals {
    Signals {
        requests: 40,
        within_targets: 40,
        completed: 40,
        failures: 0,
        ttft_p50: Some(0.10),
        ttft_p95: Some(0.20),
        decode: Some(50.0),
        decode_live: true,
        e2e_p50: Some(3.0),
        load: 4.0,
        batch: Some(4.0),
        quickest_gap: Some(0.018),
        fastest_gap: Some(0.017),
        stalled_for: None,
        slow_first_token: None,
        stall_patience: None,
        late_share: None,
        backend_stuck: false,
        throttle_reasons: Some(0),
        overloaded: false,
        queued: false,
    }
}

#[test]
fn the_decode_step_is_learned_over_capacity_too() {
    let now = Instant::now();
    let mut h = ProviderHealth::new(now);
    let over = Signals {
        overloaded: true,
        queued: true,
        ..clean()
    };
    for _ in 0..30 {
        h.on_tick(now, &over, None, None, &cfg(), &targets(), true);
    }
    assert_eq!(h.state, State::Healthy);
    assert_eq!(
        h.baseline.at(4.0),
        None,
        "no time per token learned over capacity"
    );
    let step = h
        .baseline
        .gap_at(GapLine::Quickest, 4.0)
        .expect("the step is");
    assert!((step - 0.018).abs() < 1e-9, "{step}");
    // The fastest gaps only with nothing waiting: behind a queue, prefill runs inside the
    // steps of an engine that chunks its prompts.
    assert_eq!(h.baseline.gap_at(GapLine::Fastest, 4.0), None);
    for _ in 0..30 {
        h.on_tick(now, &clean(), None, None, &cfg(), &targets(), true);
    }
    let fastest = h
        .baseline
        .gap_at(GapLine::Fastest, 4.0)
        .expect("learned without a queue");
    assert!((fastest - 0.017).abs() < 1e-9, "{fastest}");
}

/// A provider that has learned its baseline on clean traffic.
fn learned(now: Instant) -> ProviderHealth {
    let mut h = ProviderHealth::new(now);
    for _ in 0..20 {
        assert!(!h.on_tick(now, &clean(), None, None, &cfg(), &targets(), true));
    }
    h
}

/// Peers performing exactly like their own baselines.
fn steady_peers() -> Ratios {
    Ratios {
        decode: Some(1.0),
        ttft: Some(1.0),
        late: None,
        step: None,
    }
}

/// A detector's finding that lowers the weight to one half.
fn flag() -> (Evidence, f64) {
    let ev = Evidence::new(
        "kv_cache_thrashing",
        0.3,
        Some(0.05),
        "baseline",
        "stalls".into(),
    );
    (ev, 0.5)
}

#[test]
fn clean_traffic_stays_healthy_and_teaches_the_baseline() {
    let now = Instant::now();
    let h = learned(now);
    assert_eq!(h.state, State::Healthy);
    assert!(h.evidence.is_empty());
    let b = h.baseline.at(4.0).unwrap();
    assert_eq!(b.decode, Some(50.0));
}

#[test]
fn slower_decoding_degrades_in_proportion_with_evidence() {
    let t0 = Instant::now();
    let mut h = learned(t0);
    let slow = Signals {
        decode: Some(30.0),
        ..clean()
    };
    let t1 = t0 + Duration::from_secs(1);
    // A blip is not a degradation: it must persist for a few ticks.
    assert!(!h.on_tick(t1, &slow, None, None, &cfg(), &targets(), true));
    assert!(!h.on_tick(t1, &slow, None, None, &cfg(), &targets(), true));
    assert_eq!(h.state, State::Healthy);
    assert!(h.on_tick(t1, &slow, None, None, &cfg(), &targets(), true));
    let State::Degraded { weight } = h.state else {
        panic!("expected degraded, got {:?}", h.state);
    };
    assert!((weight - 0.6).abs() < 1e-9, "weight {weight}");
    let e = &h.evidence[0];
    assert_eq!((e.signal, e.against), ("decode_rate", "baseline"));
    assert_eq!(
        h.evidence.len(),
        1,
        "no GPU evidence while the clocks are free"
    );
    assert_eq!((e.value, e.reference), (30.0, Some(50.0)));
    assert_eq!(e.since, Some(t1));
    // Still degraded a tick later: the evidence keeps its first-seen time, and the
    // baseline did not learn from the incident.
    let t2 = t1 + Duration::from_secs(1);
    h.on_tick(t2, &slow, None, None, &cfg(), &targets(), true);
    assert_eq!(h.evidence[0].since, Some(t1));
    assert_eq!(h.baseline.at(4.0).unwrap().decode, Some(50.0));
    // Back to normal: healthy again, evidence cleared.
    assert!(h.on_tick(t2, &clean(), None, None, &cfg(), &targets(), true));
    assert_eq!(h.state, State::Healthy);
    assert!(h.evidence.is_empty());
}

#[test]
fn a_new_provider_is_not_degraded_for_being_slower_than_its_peers() {
    // Mixed hardware: with no baseline of its own there is nothing fair to compare with,
    // however its peers do.
    let now = Instant::now();
    let mut h = ProviderHealth::new(now);
    let slow = Signals {
        decode: Some(20.0),
        ..clean()
    };
    for _ in 0..10 {
        h.on_tick(
            now,
            &slow,
            Some(steady_peers()),
            None,
            &cfg(),
            &targets(),
            true,
        );
    }
    assert_eq!(h.state, State::Healthy);
}

#[test]
fn a_drop_every_peer_shares_is_the_traffic_and_one_they_do_not_is_the_provider() {
    let now = Instant::now();
    let slow = Signals {
        decode: Some(30.0),
        ..clean()
    };
    // Every provider of the model decodes at 60 % of its baseline: a burst, not a fault.
    let loaded = Ratios {
        decode: Some(0.6),
        ttft: Some(1.0),
        late: None,
        step: None,
    };
    let mut h = learned(now);
    for _ in 0..10 {
        h.on_tick(now, &slow, Some(loaded), None, &cfg(), &targets(), true);
    }
    assert_eq!(h.state, State::Healthy);
    // The peers decode as usual: this one is slow.
    let mut h = learned(now);
    for _ in 0..3 {
        h.on_tick(
            now,
            &slow,
            Some(steady_peers()),
            None,
            &cfg(),
            &targets(),
            true,
        );
    }
    assert_eq!(h.state, State::Degraded { weight: 0.6 });
    assert_eq!(h.evidence[0].against, "baseline");
    assert!(
        h.evidence[0].detail.contains("peers"),
        "{}",
        h.evidence[0].detail
    );
}

#[test]
fn consecutive_failures_eject_for_the_base_time_then_probes_decide() {
    let t0 = Instant::now();
    let c = cfg();
    let mut h = learned(t0);
    for i in 0..4 {
        assert!(
            !h.on_attempt(t0, true, false, false, &c, true),
            "failure {i}"
        );
    }
    assert!(h.on_attempt(t0, true, false, false, &c, true));
    assert_eq!(
        h.state,
        State::Ejected {
            until: t0 + c.base_ejection
        }
    );
    assert_eq!(h.evidence[0].signal, "consecutive_failures");
    assert_eq!(h.evidence[0].value, 5.0);
    // Time passes: recovering, and only probes count.
    let t1 = t0 + c.base_ejection;
    assert!(h.on_tick(t1, &clean(), None, None, &c, &targets(), true));
    assert_eq!(h.state, State::Recovering { successes: 0 });
    for _ in 0..10 {
        h.on_attempt(t1, false, true, false, &c, true);
        h.on_tick(t1, &clean(), None, None, &c, &targets(), true);
    }
    assert_eq!(
        h.state,
        State::Recovering { successes: 0 },
        "never without probes"
    );
    // A failed probe ejects again, for twice as long.
    assert!(h.on_attempt(t1, true, false, true, &c, true));
    assert_eq!(
        h.state,
        State::Ejected {
            until: t1 + c.base_ejection * 2
        }
    );
    let t2 = t1 + c.base_ejection * 2;
    h.on_tick(t2, &clean(), None, None, &c, &targets(), true);
    // A probe that succeeds but misses the targets does not count either.
    assert!(h.on_attempt(t2, false, false, true, &c, true));
    assert!(matches!(h.state, State::Ejected { .. }));
    let t3 = t2 + c.base_ejection * 3;
    h.on_tick(t3, &clean(), None, None, &c, &targets(), true);
    for i in 0..c.probe_successes {
        let changed = h.on_attempt(t3, false, true, true, &c, true);
        assert_eq!(changed, i + 1 == c.probe_successes);
    }
    assert_eq!(h.state, State::Healthy);
    assert_eq!(h.ejections(), 3);
}

#[test]
fn the_ejection_cap_leaves_the_provider_degraded_with_evidence() {
    let now = Instant::now();
    let c = cfg();
    let mut h = learned(now);
    for _ in 0..5 {
        h.on_attempt(now, true, false, false, &c, false);
    }
    assert_eq!(h.state, State::Degraded { weight: MIN_WEIGHT });
    let signals: Vec<_> = h.evidence.iter().map(|e| e.signal).collect();
    assert_eq!(signals, vec!["consecutive_failures", "ejection_capped"]);
}

#[test]
fn a_stall_or_a_stuck_backend_ejects_at_once() {
    let now = Instant::now();
    let c = cfg();
    let mut h = learned(now);
    let stalled = Signals {
        stalled_for: Some(c.stall_after),
        ..clean()
    };
    assert!(h.on_tick(now, &stalled, None, None, &c, &targets(), true));
    assert!(matches!(h.state, State::Ejected { .. }));
    assert_eq!(h.evidence[0].signal, "stall");

    let mut h = learned(now);
    let short = Signals {
        stalled_for: Some(c.stall_after / 2),
        ..clean()
    };
    assert!(!h.on_tick(now, &short, None, None, &c, &targets(), true));
    // A provider whose first tokens normally take 4 s is not stalled after 3 s.
    let long_prompts = Signals {
        stalled_for: Some(Duration::from_secs(3)),
        slow_first_token: Some(Duration::from_secs(12)),
        ..clean()
    };
    assert!(!h.on_tick(now, &long_prompts, None, None, &c, &targets(), true));
    // First tokens the engine is not seen holding wait for their patience.
    let held_elsewhere = Signals {
        stalled_for: Some(Duration::from_secs(4)),
        stall_patience: Some(Duration::from_secs(10)),
        ..clean()
    };
    assert!(!h.on_tick(now, &held_elsewhere, None, None, &c, &targets(), true));
    let stuck = Signals {
        backend_stuck: true,
        ..clean()
    };
    assert!(h.on_tick(now, &stuck, None, None, &c, &targets(), true));
    assert_eq!(h.evidence[0].signal, "backend_stuck");
}

/// Decoding at a fifth of its baseline, answers taking 20 s: below every target.
fn misses_the_targets() -> Signals {
    Signals {
        decode: Some(10.0),
        e2e_p50: Some(20.0),
        ..clean()
    }
}

#[test]
fn missing_the_targets_two_ticks_running_ejects_on_performance() {
    let now = Instant::now();
    let c = cfg();
    let mut h = learned(now);
    let slow = misses_the_targets();
    let peers = steady_peers();
    assert!(!h.on_tick(now, &slow, Some(peers), None, &c, &targets(), true));
    assert!(h.on_tick(now, &slow, Some(peers), None, &c, &targets(), true));
    assert!(matches!(h.state, State::Ejected { .. }));
    assert!(h.evidence.iter().any(|e| e.signal == "misses_targets"));
}

#[test]
fn missing_the_targets_below_its_baseline_with_no_healthy_peer_only_degrades() {
    // The whole fleet is loaded: no healthy peer to compare, and this provider decodes below
    // what it learned at lighter load. Less traffic, not ejection (which would cascade).
    let now = Instant::now();
    let c = cfg();
    let mut h = learned(now);
    let slow = misses_the_targets();
    for _ in 0..5 {
        assert!(!matches!(h.state, State::Ejected { .. }));
        h.on_tick(now, &slow, None, None, &c, &targets(), true);
    }
    assert!(matches!(h.state, State::Degraded { .. }), "{:?}", h.state);
    assert!(
        h.evidence
            .iter()
            .any(|e| e.signal == "decode_rate" && e.against == "baseline")
    );
}

#[test]
fn too_few_requests_are_not_judged() {
    let now = Instant::now();
    let mut h = learned(now);
    let thin = Signals {
        requests: 2,
        decode: Some(1.0),
        ..clean()
    };
    assert!(!h.on_tick(now, &thin, None, None, &cfg(), &targets(), true));
    assert_eq!(h.state, State::Healthy);
}

#[test]
fn gpu_throttle_bits_corroborate_a_slowdown() {
    let now = Instant::now();
    let mut h = learned(now);
    let slow = Signals {
        decode: Some(30.0),
        throttle_reasons: Some(0x40 | 0x1),
        ..clean()
    };
    for _ in 0..3 {
        h.on_tick(now, &slow, None, None, &cfg(), &targets(), true);
    }
    let gpu = h
        .evidence
        .iter()
        .find(|e| e.signal == "gpu_throttle")
        .unwrap();
    assert_eq!(gpu.detail, "GPU clocks held back: hw_thermal");
}

#[test]
fn missing_the_targets_under_load_alone_is_not_a_fault() {
    let now = Instant::now();
    let mut h = learned(now);
    // Four times the load it learned at: slower and missing the targets, but within the
    // allowance for two load buckets heavier, and with no peers to compare.
    let busy = Signals {
        decode: Some(25.0),
        e2e_p50: Some(20.0),
        load: 16.0,
        ..clean()
    };
    for _ in 0..10 {
        assert!(!h.on_tick(now, &busy, None, None, &cfg(), &targets(), true));
    }
    assert_eq!(h.state, State::Healthy);
}

#[test]
fn a_degraded_provider_is_not_healthy_again_for_want_of_a_comparison() {
    let now = Instant::now();
    // A new provider a detector flagged: degraded before any baseline was learned.
    let mut h = ProviderHealth::new(now);
    for _ in 0..3 {
        h.on_tick(now, &clean(), None, Some(flag()), &cfg(), &targets(), true);
    }
    assert_eq!(h.state, State::Degraded { weight: 0.5 });
    // The flag cleared, but there is no baseline and no peer to compare with.
    for _ in 0..5 {
        assert!(!h.on_tick(now, &clean(), None, None, &cfg(), &targets(), true));
    }
    assert!(matches!(h.state, State::Degraded { .. }));
    // A fair comparison (peers measured against their baselines) shows nothing: healthy.
    assert!(h.on_tick(
        now,
        &clean(),
        Some(steady_peers()),
        None,
        &cfg(),
        &targets(),
        true
    ));
    assert_eq!(h.state, State::Healthy);
}

#[test]
fn a_provider_slower_than_its_peers_but_like_its_own_baseline_is_not_degraded() {
    // Mixed hardware: this one always decodes at half its peers' rate.
    let now = Instant::now();
    let mut h = learned(now);
    let faster_peers = steady_peers();
    for _ in 0..5 {
        assert!(!h.on_tick(
            now,
            &clean(),
            Some(faster_peers),
            None,
            &cfg(),
            &targets(),
            true
        ));
    }
    assert_eq!(h.state, State::Healthy);
    // Slower than its baseline while its peers are not: degraded.
    let slow = Signals {
        decode: Some(30.0),
        ..clean()
    };
    for _ in 0..3 {
        h.on_tick(
            now,
            &slow,
            Some(faster_peers),
            None,
            &cfg(),
            &targets(),
            true,
        );
    }
    assert_eq!(h.state, State::Degraded { weight: 0.6 });
    assert_eq!(h.evidence[0].against, "baseline");
}

#[test]
fn a_slow_first_token_alone_degrades_but_never_ejects() {
    let now = Instant::now();
    let mut h = learned(now);
    // A queue: first tokens take 2 s (over the 1 s target), decoding is unchanged.
    let queued = Signals {
        ttft_p50: Some(2.0),
        ttft_p95: Some(3.0),
        ..clean()
    };
    for _ in 0..10 {
        h.on_tick(now, &queued, None, None, &cfg(), &targets(), true);
    }
    assert_eq!(h.state, State::Degraded { weight: 0.05 });
    assert_eq!(h.evidence[0].signal, "ttft");
}

#[test]
fn over_capacity_timeouts_and_slowness_neither_eject_nor_degrade() {
    let now = Instant::now();
    let mut h = learned(now);
    // Half the attempts time out behind a queue and decoding is at a third of the baseline.
    let loaded = Signals {
        failures: 25,
        decode: Some(15.0),
        ttft_p50: Some(4.0),
        ttft_p95: Some(6.0),
        overloaded: true,
        ..clean()
    };
    for _ in 0..10 {
        assert!(!h.on_tick(now, &loaded, None, None, &cfg(), &targets(), true));
    }
    assert_eq!(h.state, State::Healthy);
    for _ in 0..10 {
        assert!(!h.on_attempt(now, false, false, false, &cfg(), true));
    }
    // What was learned is not what overload looks like.
    assert_eq!(h.baseline.at(4.0).unwrap().decode, Some(50.0));
    // The same signals without the overload are a fault.
    let faulty = Signals {
        overloaded: false,
        ..loaded
    };
    assert!(h.on_tick(now, &faulty, None, None, &cfg(), &targets(), true));
    assert!(matches!(h.state, State::Ejected { .. }));
}
