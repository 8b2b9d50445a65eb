//! Per-slot history of the health windows (`/api/series`): one point per slot, oldest
//! first, so the dashboard draws trends from what the health task already keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::window::{Slot, Window};
use crate::detect::Clock;

/// Which window to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SeriesSpan {
    /// 5-second slots over the last five minutes.
    #[default]
    #[serde(rename = "5m")]
    FiveMinutes,
    /// 1-minute slots over the last hour.
    #[serde(rename = "1h")]
    Hour,
}

/// Points per slot, one array per measure, aligned with [`Series::t_unix_ms`]. Quantiles
/// are `null` for a slot without data.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Points {
    /// Requests (attempts, for a provider) that ended in the slot.
    pub requests: Vec<u64>,
    /// Of which failed.
    pub errors: Vec<u64>,
    /// Of which met every target.
    pub within_targets: Vec<u64>,
    /// Of which completed successfully.
    pub completed: Vec<u64>,
    /// P95 time to first token, ms.
    pub ttft_p95_ms: Vec<Option<f64>>,
    /// Median decode rate, tokens/s.
    pub decode_p50: Vec<Option<f64>>,
    /// Cost, USD (attempts only: the overall scope sums its providers).
    pub cost_usd: Vec<f64>,
}

impl Points {
    fn push(&mut self, slot: Option<&Slot>) {
        let empty = Slot::default();
        let s = slot.unwrap_or(&empty);
        self.requests.push(s.requests);
        self.errors.push(s.failed);
        self.within_targets.push(s.within_targets);
        self.completed.push(s.completed);
        self.ttft_p95_ms
            .push(s.ttft.quantile(0.95).map(|v| v * 1000.0));
        self.decode_p50.push(s.decode.quantile(0.5));
        self.cost_usd.push(s.cost);
    }
}

/// One provider's points.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProviderSeries {
    /// Provider id.
    pub id: String,
    /// Its points.
    #[serde(flatten)]
    pub points: Points,
}

/// The history the dashboard charts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// Slot width, seconds.
    pub slot_s: f64,
    /// Start of each slot, Unix ms; the last slot is the one in progress.
    pub t_unix_ms: Vec<i64>,
    /// What clients experienced (requests, not attempts).
    pub overall: Points,
    /// Per provider, in configuration order.
    pub providers: Vec<ProviderSeries>,
}

/// How many points a series has at most.
const POINTS: usize = 60;

impl Series {
    /// Reads `overall` and each provider's window (all sharing one origin and width) at
    /// `now`.
    pub fn build<'a>(
        clock: &Clock,
        overall: &Window,
        providers: impl Iterator<Item = (&'a str, &'a Window)>,
        now: Instant,
    ) -> Series {
        let slots = overall.slots(now, POINTS);
        let to_ms = |ago: Duration| clock.unix_ms - ago.as_millis() as i64;
        let mut series = Series {
            slot_s: overall.width().as_secs_f64(),
            t_unix_ms: slots.iter().map(|(ago, _)| to_ms(*ago)).collect(),
            overall: Points::default(),
            providers: Vec::new(),
        };
        for (_, s) in &slots {
            series.overall.push(*s);
        }
        let mut cost = vec![0.0; slots.len()];
        for (id, window) in providers {
            let mut points = Points::default();
            for (i, (_, s)) in window.slots(now, slots.len()).iter().enumerate() {
                points.push(*s);
                if let Some(c) = cost.get_mut(i) {
                    *c += s.map_or(0.0, |s| s.cost);
                }
            }
            series.providers.push(ProviderSeries {
                id: id.to_owned(),
                points,
            });
        }
        series.overall.cost_usd = cost;
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::window::Sample;

    #[test]
    fn series_aligns_providers_with_the_overall_slots_and_sums_cost() {
        let origin = Instant::now();
        let width = Duration::from_secs(5);
        let mut overall = Window::new(origin, width, 60);
        let mut a = Window::new(origin, width, 60);
        let mut b = Window::new(origin, width, 60);
        let at = |s: u64| origin + Duration::from_secs(s);
        let ok = Sample {
            completed: true,
            within_targets: true,
            ttft: Some(0.2),
            decode: Some(50.0),
            cost: 0.25,
            ..Sample::default()
        };
        overall.record(at(1), &ok);
        overall.record(at(6), &ok);
        a.record(at(1), &ok);
        b.record(
            at(6),
            &Sample {
                failed: true,
                cost: 0.5,
                ..Sample::default()
            },
        );
        let now = at(8);
        let clock = Clock {
            at: now,
            unix_ms: 1_000_000,
        };
        let s = Series::build(&clock, &overall, [("a", &a), ("b", &b)].into_iter(), now);
        assert_eq!(s.slot_s, 5.0);
        assert_eq!(s.t_unix_ms, vec![1_000_000 - 8_000, 1_000_000 - 3_000]);
        assert_eq!(s.overall.requests, vec![1, 1]);
        assert_eq!(s.overall.cost_usd, vec![0.25, 0.5]);
        assert_eq!(s.providers[0].points.completed, vec![1, 0]);
        assert_eq!(s.providers[1].points.errors, vec![0, 1]);
        let ttft = s.providers[0].points.ttft_p95_ms[0].unwrap();
        assert!((ttft - 200.0).abs() < 6.0, "{ttft}");
        assert_eq!(s.providers[0].points.ttft_p95_ms[1], None);
        assert_eq!(s.providers[1].points.decode_p50, vec![None, None]);
    }
}
