//! A provider's baseline: what its TTFT and per-stream decode rate look like when it is
//! healthy, learned per load bucket (decode slows as batches grow, so a busy provider is
//! compared with itself when busy). Only healthy periods feed it. Pure.

/// Upper bounds of the load buckets (mean requests in flight).
const BUCKETS: [f64; 6] = [1.5, 3.0, 6.0, 12.0, 24.0, f64::INFINITY];
/// Ticks of data before a bucket is trusted.
const MIN_TICKS: u32 = 5;
/// Slowest learning rate: a half-life of about 350 ticks (three minutes at 0.5 s).
const MIN_ALPHA: f64 = 0.002;

/// The weight of the `n`-th observation (counting from 1) in a running average that is a
/// plain mean at first and an exponential one, of weight `floor`, once `1/n` falls below it.
pub fn learning_rate(n: u32, floor: f64) -> f64 {
    (1.0 / f64::from(n.max(1))).max(floor)
}

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
        let alpha = learning_rate(b.ticks, MIN_ALPHA);
        b.ttft += alpha * (ttft - b.ttft);
        b.decode += alpha * (decode - b.decode);
    }

    /// The reference at `load`: this load bucket when learned, else the nearest learned
    /// bucket of heavier load. Never a lighter one: decode slows and TTFT grows as batches
    /// grow, so a lighter load's figures would call ordinary load a degradation, while a
    /// heavier load's figures can only under-call one.
    pub fn at(&self, load: f64) -> Option<Reference> {
        self.buckets[bucket_of(load)..]
            .iter()
            .find(|b| b.ticks >= MIN_TICKS)
            .map(|b| Reference {
                ttft: Some(b.ttft),
                decode: Some(b.decode),
            })
    }

    /// True when a peer at load `peer` is a fair reference for a provider at load `mine`:
    /// the same or a neighbouring load bucket, or any heavier load (a provider slower than
    /// a busier peer is slow).
    pub fn comparable(mine: f64, peer: f64) -> bool {
        bucket_of(peer) + 1 >= bucket_of(mine)
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
        // 4 in flight was never seen healthy: the heavier bucket stands in, never the
        // lighter one.
        assert_eq!(b.at(4.0).and_then(|r| r.decode), Some(40.0));
        assert_eq!(b.at(30.0), None);
        assert!(Baseline::comparable(2.0, 4.0));
        assert!(
            Baseline::comparable(1.0, 20.0),
            "a busier peer is a fair reference"
        );
        assert!(!Baseline::comparable(20.0, 1.0), "an idle peer is not");
    }
}
