use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::health::snapshot::ProviderView;

fn targets() -> Targets {
    Targets {
        ttft: Duration::from_secs(1),
        decode_tokens_per_s: 10.0,
        e2e: Duration::from_secs(5),
        error_rate: 0.01,
    }
}

fn view(now: Instant, decode: f64, state: State) -> ProviderView {
    ProviderView {
        state,
        ttft_p50: Some(0.1),
        ttft_p95: Some(0.2),
        decode: Some(decode),
        ..ProviderView::new(now)
    }
}

const IDS: [&str; 4] = ["a", "b", "c", "d"];

fn input<'a>(
    policy: Policy,
    cfg: &'a RoutingConfig,
    t: &'a Targets,
    views: &'a [ProviderView],
    in_flight: &[i64],
    now: Instant,
    random: u64,
) -> Input<'a> {
    Input {
        policy,
        cfg,
        targets: t,
        options: views
            .iter()
            .enumerate()
            .map(|(i, v)| Choice {
                index: i,
                id: IDS[i],
                view: v,
                in_flight: in_flight[i],
                price: 0.0,
                probe_free: true,
            })
            .collect(),
        expected_output_tokens: 100.0,
        deadline_left: None,
        now,
        turn: random as usize,
        random,
    }
}

/// Routes `n` requests to providers that finish each in-flight request with a chance
/// proportional to their decode rate per step; returns each provider's share.
fn simulate(views: &[ProviderView], n: usize) -> Vec<f64> {
    let now = Instant::now();
    let (cfg, t) = (RoutingConfig::default(), targets());
    let mut in_flight = vec![0i64; views.len()];
    let mut picks = vec![0usize; views.len()];
    let mut rng = 7u64;
    for _ in 0..n {
        rng = mix(rng);
        let p = plan(&input(
            Policy::Candor,
            &cfg,
            &t,
            views,
            &in_flight,
            now,
            rng,
        ));
        let first = p.order[0];
        picks[first] += 1;
        in_flight[first] += 1;
        for (i, v) in views.iter().enumerate() {
            let speed = v.decode.unwrap_or(0.0) / 600.0;
            for _ in 0..in_flight[i] {
                rng = mix(rng);
                if (rng % 10_000) as f64 / 10_000.0 < speed {
                    in_flight[i] -= 1;
                }
            }
        }
    }
    picks.iter().map(|&c| c as f64 / n as f64).collect()
}

#[test]
fn equal_providers_share_evenly() {
    let now = Instant::now();
    let views = vec![view(now, 60.0, State::Healthy); 3];
    let share = simulate(&views, 6000);
    for s in &share {
        assert!((s - 1.0 / 3.0).abs() < 0.05, "shares {share:?}");
    }
}

#[test]
fn a_slower_provider_gets_less_traffic_in_proportion() {
    let now = Instant::now();
    let views = vec![
        view(now, 60.0, State::Healthy),
        view(now, 60.0, State::Healthy),
        view(now, 36.0, State::Degraded { weight: 0.6 }),
        view(now, 18.0, State::Degraded { weight: 0.3 }),
    ];
    let share = simulate(&views, 8000);
    assert!(
        share[0] > share[2] && share[2] > share[3] && share[3] > 0.0,
        "shares {share:?}"
    );
    assert!(share[2] < 0.8 * share[0], "shares {share:?}");
}

#[test]
fn ejected_providers_are_skipped_with_their_evidence() {
    let now = Instant::now();
    let mut ejected = view(
        now,
        60.0,
        State::Ejected {
            until: now + Duration::from_secs(30),
        },
    );
    ejected.evidence.push(crate::health::state::Evidence {
        signal: "stall",
        value: 3.0,
        reference: Some(2.0),
        against: "limit",
        since: Some(now),
        detail: "requests in flight but no token for 3.0 s".into(),
    });
    let views = vec![ejected, view(now, 60.0, State::Healthy)];
    let (cfg, t) = (RoutingConfig::default(), targets());
    for r in 0..50 {
        let p = plan(&input(Policy::Candor, &cfg, &t, &views, &[0, 0], now, r));
        assert_eq!(p.order, vec![1]);
        assert_eq!(p.candidates[0].decision, "skipped");
        assert!(p.candidates[0].reason.contains("no token for 3.0 s"));
        assert_eq!(p.candidates[1].decision, "chosen");
        assert!(p.reason.starts_with("candor: b"));
    }
    // Round robin knows nothing of ejection.
    let p = plan(&input(
        Policy::RoundRobin,
        &cfg,
        &t,
        &views,
        &[0, 0],
        now,
        0,
    ));
    assert_eq!(p.order, vec![0, 1]);
}

#[test]
fn a_recovering_provider_gets_one_probe_at_a_time() {
    let now = Instant::now();
    let views = vec![
        view(now, 60.0, State::Healthy),
        view(now, 60.0, State::Recovering { successes: 1 }),
    ];
    let (cfg, t) = (RoutingConfig::default(), targets());
    let mut i = input(Policy::Candor, &cfg, &t, &views, &[0, 0], now, 3);
    let p = plan(&i);
    assert_eq!(p.probe, Some(1));
    assert_eq!(
        p.order,
        vec![1, 0],
        "the probe goes first, the healthy one is failover"
    );
    assert_eq!(p.candidates[1].decision, "probe");
    i.options[1].probe_free = false;
    let p = plan(&i);
    assert_eq!(p.probe, None);
    assert_eq!(p.order, vec![0]);
    assert!(
        p.candidates[1]
            .reason
            .contains("not probed by this request")
    );
    // Nor is a probe sent where the deadline cannot be met.
    let mut slow = view(now, 60.0, State::Recovering { successes: 0 });
    slow.ttft_p50 = Some(0.5);
    let views = vec![view(now, 60.0, State::Healthy), slow];
    let mut i = input(Policy::Candor, &cfg, &t, &views, &[0, 0], now, 3);
    i.deadline_left = Some(Duration::from_millis(300));
    let p = plan(&i);
    assert_eq!((p.probe, p.order), (None, vec![0]));
}

#[test]
fn health_never_refuses_service_on_its_own() {
    let now = Instant::now();
    let until = now + Duration::from_secs(30);
    let views = vec![
        view(now, 60.0, State::Ejected { until }),
        view(now, 60.0, State::Ejected { until }),
    ];
    let (cfg, t) = (RoutingConfig::default(), targets());
    let p = plan(&input(Policy::Candor, &cfg, &t, &views, &[0, 0], now, 1));
    assert_eq!(p.order.len(), 2);
}

#[test]
fn the_deadline_skips_providers_that_cannot_meet_it() {
    let now = Instant::now();
    let mut slow = view(now, 60.0, State::Healthy);
    slow.ttft_p50 = Some(0.5);
    let views = vec![slow, view(now, 60.0, State::Healthy)];
    let (cfg, t) = (RoutingConfig::default(), targets());
    let mut i = input(Policy::RoundRobin, &cfg, &t, &views, &[0, 0], now, 0);
    i.deadline_left = Some(Duration::from_millis(300));
    let p = plan(&i);
    assert_eq!(p.order, vec![1]);
    assert!(p.candidates[0].reason.contains("cannot meet the deadline"));
    i.deadline_left = Some(Duration::from_millis(50));
    let p = plan(&i);
    assert!(p.order.is_empty());
    let msg = p.deadline_unmet.unwrap();
    assert!(msg.contains("50 ms"), "{msg}");
}

#[test]
fn retry_after_and_cooldown_are_honoured() {
    let now = Instant::now();
    let mut told = view(now, 60.0, State::Healthy);
    told.retry_after_until = Some(now + Duration::from_secs(2));
    let views = vec![told, view(now, 60.0, State::Healthy)];
    let (cfg, t) = (RoutingConfig::default(), targets());
    for policy in Policy::ALL {
        let p = plan(&input(policy, &cfg, &t, &views, &[0, 0], now, 0));
        assert_eq!(p.order, vec![1], "{policy:?}");
    }
    let mut cool = view(now, 60.0, State::Healthy);
    cool.cooldown_until = Some(now + Duration::from_secs(5));
    let views = vec![cool, view(now, 60.0, State::Healthy)];
    for r in 0..20 {
        let p = plan(&input(
            Policy::ErrorCooldown,
            &cfg,
            &t,
            &views,
            &[0, 0],
            now,
            r,
        ));
        assert_eq!(p.order, vec![1]);
    }
}

#[test]
fn least_busy_takes_the_fewest_in_flight() {
    let now = Instant::now();
    let views = vec![view(now, 60.0, State::Healthy); 3];
    let (cfg, t) = (RoutingConfig::default(), targets());
    let p = plan(&input(
        Policy::LeastBusy,
        &cfg,
        &t,
        &views,
        &[4, 1, 2],
        now,
        9,
    ));
    assert_eq!(p.order, vec![1, 2, 0]);
}

#[test]
fn infeasible_candidates_come_last_and_say_so() {
    let now = Instant::now();
    let mut t = targets();
    t.decode_tokens_per_s = 40.0;
    t.e2e = Duration::from_secs(1);
    let views = vec![
        view(now, 20.0, State::Healthy),
        view(now, 60.0, State::Healthy),
    ];
    let cfg = RoutingConfig::default();
    for r in 0..20 {
        let p = plan(&input(Policy::Candor, &cfg, &t, &views, &[0, 5], now, r));
        assert_eq!(p.order, vec![1, 0]);
        assert!(
            p.candidates[0]
                .reason
                .contains("predicted to miss the targets")
        );
    }
}
