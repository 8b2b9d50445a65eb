//! Burn-rate alerts fire on both windows, stay quiet within the objective, and scale in time.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn clock(t: Instant) -> Clock {
    Clock { at: t, unix_ms: 0 }
}

fn cfg(scale: f64) -> SloConfig {
    SloConfig {
        time_scale: scale,
        ..SloConfig::default()
    }
}

/// `per_min` requests every (scaled) minute for `minutes`, `bad` of them missing the targets.
fn feed(s: &mut Slo, t0: Instant, from_min: u64, minutes: u64, per_min: u64, bad: u64, scale: f64) {
    for m in from_min..from_min + minutes {
        for i in 0..per_min {
            let t = t0
                + Duration::from_secs_f64(
                    (m as f64 * 60.0 + i as f64 * 60.0 / per_min as f64) / scale,
                );
            s.record(t, i >= bad, i >= bad);
        }
    }
}

#[test]
fn within_the_objective_nothing_fires() {
    let t0 = Instant::now();
    let mut s = Slo::new(cfg(1.0), t0);
    // 0.5 % bad against a 1 % budget for two hours.
    feed(&mut s, t0, 0, 120, 200, 1, 1.0);
    let now = t0 + Duration::from_secs(120 * 60);
    assert!(s.evaluate(now, &clock(t0)).is_empty());
    let rate = s.burn_rate(now, Duration::from_secs(3600)).unwrap();
    assert!((rate - 0.5).abs() < 0.01, "{rate}");
}

#[test]
fn a_fast_burn_pages_and_names_both_windows() {
    let t0 = Instant::now();
    let mut s = Slo::new(cfg(1.0), t0);
    feed(&mut s, t0, 0, 55, 100, 0, 1.0);
    // 5 minutes with half the requests missing: 1 h burn ≈ 4.2, 5 m burn = 50.
    feed(&mut s, t0, 55, 5, 100, 50, 1.0);
    let now = t0 + Duration::from_secs(60 * 60 - 1);
    assert!(
        s.evaluate(now, &clock(t0)).is_empty(),
        "1 h burn below 14.4"
    );
    // Another 20 minutes of it: the 1 h window crosses 14.4 too.
    feed(&mut s, t0, 60, 20, 100, 50, 1.0);
    let now = t0 + Duration::from_secs(80 * 60 - 1);
    let f = s.evaluate(now, &clock(t0));
    let burn = f.iter().find(|f| f.mode == Mode::SloBurn).expect("pages");
    assert_eq!(burn.severity, Severity::Critical);
    assert!(burn.facts.iter().any(|x| x.detail.starts_with("page_fast")));
    // Onset: the first bad minute.
    assert_eq!(burn.onset_unix_ms, 55 * 60 * 1000);
    // The completions drop too: 50 % of normal is at the threshold, not below it.
    assert!(!f.iter().any(|f| f.mode == Mode::CompletionsDrop));
}

#[test]
fn a_compressed_time_base_fires_in_seconds() {
    let t0 = Instant::now();
    let scale = 60.0;
    let mut s = Slo::new(cfg(scale), t0);
    feed(&mut s, t0, 0, 60, 100, 0, scale);
    feed(&mut s, t0, 60, 20, 100, 60, scale);
    // 80 scaled minutes = 80 real seconds.
    let now = t0 + Duration::from_secs(80);
    let f = s.evaluate(now, &clock(t0));
    assert!(f.iter().any(|f| f.mode == Mode::SloBurn));
    assert!(
        f.iter().any(|f| f.mode == Mode::CompletionsDrop),
        "completions fell to 40 %"
    );
}
