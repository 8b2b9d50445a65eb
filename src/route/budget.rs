//! A retry (or hedge) budget: every request deposits `ratio` of a token, every retry takes a
//! whole one, and `min_per_s` tokens trickle in with time so a quiet gateway can still
//! retry. Lock-free; callers pass the time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Tokens are kept in thousandths.
const SCALE: f64 = 1000.0;

/// A token bucket shared by every request.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_s: f64,
    cap: i64,
    tokens: AtomicI64,
    last_ms: AtomicU64,
}

impl Budget {
    /// A budget of `ratio` retries per request plus `min_per_s` per second, holding at
    /// most `burst` tokens; it starts full.
    pub fn new(ratio: f64, min_per_s: f64, burst: f64) -> Budget {
        let cap = (burst.max(1.0) * SCALE) as i64;
        Budget {
            ratio,
            min_per_s,
            cap,
            tokens: AtomicI64::new(cap),
            last_ms: AtomicU64::new(0),
        }
    }

    fn add(&self, milli: i64) {
        if milli <= 0 {
            return;
        }
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + milli).min(self.cap))
            });
    }

    /// One request arrived.
    pub fn deposit(&self) {
        self.add((self.ratio * SCALE) as i64);
    }

    /// Takes one retry at `now_ms` (any monotonic milliseconds); false when spent.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let last = self.last_ms.swap(now_ms, Ordering::Relaxed);
        if last > 0 && now_ms > last {
            self.add(((now_ms - last) as f64 * self.min_per_s) as i64);
        }
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= SCALE as i64).then_some(t - SCALE as i64)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_share_of_requests_plus_a_trickle() {
        let b = Budget::new(0.2, 0.0, 2.0);
        assert!(b.try_withdraw(1));
        assert!(b.try_withdraw(1));
        assert!(!b.try_withdraw(1), "the starting burst is spent");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw(1));
        assert!(b.try_withdraw(1));
        assert!(!b.try_withdraw(1), "10 requests at 20 % buy two retries");

        let t = Budget::new(0.0, 10.0, 5.0);
        for _ in 0..5 {
            assert!(t.try_withdraw(1000));
        }
        assert!(!t.try_withdraw(1000));
        assert!(t.try_withdraw(1100), "100 ms at 10/s adds one");
        assert!(!t.try_withdraw(1100));
    }
}
