//! Polls a watched dependency (`[[dependency]]`): a timed HTTP probe, or a latency metric in
//! Prometheus text (a histogram's mean over each interval, or a gauge in seconds), and hands
//! each latency to the health task for the cascade detector.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::text;
use crate::config::{DependencyConfig, DependencySource};
use crate::health::HealthHandle;

/// A histogram's running sum and count, or a gauge's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// `_sum` and `_count` (all series added).
    Histogram {
        /// Seconds.
        sum: f64,
        /// Observations.
        count: f64,
    },
    /// Seconds.
    Gauge(f64),
}

/// Reads metric `name` from Prometheus text.
pub fn read(body: &str, name: &str) -> Option<Latency> {
    let (sum_name, count_name) = (format!("{name}_sum"), format!("{name}_count"));
    let (mut sum, mut count, mut gauge) = (None::<f64>, None::<f64>, None::<f64>);
    for l in text::parse(body) {
        if l.name == sum_name {
            *sum.get_or_insert(0.0) += l.value;
        } else if l.name == count_name {
            *count.get_or_insert(0.0) += l.value;
        } else if l.name == name {
            gauge = Some(gauge.map_or(l.value, |g: f64| g.max(l.value)));
        }
    }
    match (sum, count, gauge) {
        (Some(sum), Some(count), _) => Some(Latency::Histogram { sum, count }),
        (_, _, Some(g)) => Some(Latency::Gauge(g)),
        _ => None,
    }
}

/// The mean latency between two histogram readings (`None` without new observations or
/// after a counter reset).
pub fn mean_between(prev: Latency, cur: Latency) -> Option<f64> {
    match (prev, cur) {
        (Latency::Histogram { sum: s0, count: c0 }, Latency::Histogram { sum: s1, count: c1 })
            if c1 > c0 && s1 >= s0 =>
        {
            Some((s1 - s0) / (c1 - c0))
        }
        (_, Latency::Gauge(g)) => Some(g),
        _ => None,
    }
}

/// Polls dependency `index` until `stop`.
pub async fn run(
    index: usize,
    cfg: DependencyConfig,
    client: reqwest::Client,
    health: HealthHandle,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout_s = cfg.timeout.as_secs_f64();
    let mut prev: Option<(Latency, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match &cfg.source {
            DependencySource::Probe { url, method, body } => {
                let started = Instant::now();
                let req = if method == "POST" {
                    client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone().unwrap_or_else(|| "{}".into()))
                } else {
                    client.get(url)
                };
                let ok = tokio::select! {
                    r = req.timeout(cfg.timeout).send() => r.is_ok_and(|r| r.status().is_success()),
                    () = stop.cancelled() => return,
                };
                let took = started.elapsed().as_secs_f64();
                // Dated when the probe went out: that is when the latency began.
                health.dependency(index, started, ok.then_some(took), timeout_s);
            }
            DependencySource::Metric { url, name } => {
                let body = super::fetch(&client, url, cfg.timeout).await;
                let now = Instant::now();
                let Some(cur) = body.as_deref().and_then(|b| read(b, name)) else {
                    prev = None;
                    health.dependency(index, now, None, timeout_s);
                    continue;
                };
                // The mean of what was observed since the previous scrape, dated at its
                // start: the change happened somewhere in that interval.
                if let Some((p, at)) = prev
                    && let Some(mean) = mean_between(p, cur)
                {
                    health.dependency(index, at, Some(mean), timeout_s);
                }
                prev = Some((cur, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_means_per_interval_and_gauges_read_directly() {
        let a = "# HELP x\nq_seconds_bucket{le=\"0.1\"} 3\nq_seconds_sum 0.5\nq_seconds_count 10\n";
        let b = "q_seconds_sum 2.5\nq_seconds_count 12\n";
        let (pa, pb) = (read(a, "q_seconds").unwrap(), read(b, "q_seconds").unwrap());
        assert_eq!(mean_between(pa, pb), Some(1.0));
        assert_eq!(mean_between(pb, pb), None, "no new observations");
        assert_eq!(mean_between(pb, pa), None, "a counter reset");
        let g = read("lat_seconds{db=\"x\"} 0.25\n", "lat_seconds").unwrap();
        assert_eq!(mean_between(g, g), Some(0.25));
        assert_eq!(read("other 1\n", "q_seconds"), None);
    }
}
