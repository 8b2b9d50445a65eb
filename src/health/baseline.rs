//! A provider's baseline: what its TTFT and per-stream decode rate look like when it is
//! healthy, learned per load bucket (decode slows as batches grow, so a busy provider is
//! compared with itself when busy). Only healthy periods feed it. Pure.

/// Upper bounds of the load buckets (mean requests in flight).
const BUCKETS: [f64; 6] = [1.5, 3.0, 6.0, 12.0, 24.0, f64::INFINITY];
/// Ticks of data before a bucket is trusted.
const MIN_TICKS: u32 = 5;
/// Slowest learning rate: a half-life of about 350 ticks (three minutes at 0.5 s).
const MIN_ALPHA: f64 = 0.002;

/// Reference values to compare a provider with.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reference {
    /// Median TTFT, s.
    pub ttft: Option<f64>,
    /// Per-stream decode rate, tokens/s.
    pub decode: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    ttft: f64,
    decode: f64,
    ticks: u32,
}

/// The learned baseline, one running average per load bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    buckets: [Bucket; BUCKETS.len()],
}

fn bucket_of(load: f64) -> usize {
    BUCKETS
        .iter()
        .position(|&b| load < b)
        .unwrap_or(BUCKETS.len() - 1)
}

impl Baseline {
    /// Learns from one healthy tick measured at `load`.
    pub fn learn(&mut self, load: f64, ttft: f64, decode: f64) {
        if !(ttft.is_finite() && decode.is_finite() && ttft > 0.0 && decode > 0.0) {
            return;
        }
        let b = &mut self.buckets[bucket_of(load)];
        b.ticks = b.ticks.saturating_add(1);
        // A plain mean at first, then an exponential average.
        let alpha = (1.0 / f64::from(b.ticks)).max(MIN_ALPHA);
        b.ttft += alpha * (ttft - b.ttft);
        b.decode += alpha * (decode - b.decode);
    }

    /// The reference at `load`, when this load bucket has been learned. A provider at a
    /// load it has never run at healthy has no baseline there (decode slows as batches
    /// grow, so another bucket's figures would call ordinary load a degradation); peers at
    /// comparable load are the reference then.
    pub fn at(&self, load: f64) -> Option<Reference> {
        let b = &self.buckets[bucket_of(load)];
        (b.ticks >= MIN_TICKS).then_some(Reference {
            ttft: Some(b.ttft),
            decode: Some(b.decode),
        })
    }

    /// True when `a` and `b` fall in the same or neighbouring load buckets.
    pub fn comparable(a: f64, b: f64) -> bool {
        bucket_of(a).abs_diff(bucket_of(b)) <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_per_load_bucket_and_never_borrows_another_load() {
        let mut b = Baseline::default();
        assert_eq!(b.at(1.0), None);
        for _ in 0..10 {
            b.learn(1.0, 0.1, 80.0);
            b.learn(20.0, 0.3, 40.0);
        }
        assert_eq!(b.at(1.0).and_then(|r| r.decode), Some(80.0));
        assert_eq!(b.at(20.0).and_then(|r| r.decode), Some(40.0));
        // 4 in flight was never seen healthy: no baseline there.
        assert_eq!(b.at(4.0), None);
        assert!(Baseline::comparable(2.0, 4.0));
        assert!(!Baseline::comparable(1.0, 20.0));
    }
}
