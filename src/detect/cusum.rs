//! One-sided tabular CUSUM with onset tracking (reference §8.3), and the simpler "since
//! when has this held" tracker. Pure: callers pass `now`.

use tokio::time::Instant;

/// A one-sided CUSUM on standardised deviations in the bad direction:
/// `S = max(0, S + z − k)`, alarm when `S > h`. The onset is the first observation of the
/// current excursion (the sum stood at rest — 0, or the little above it that in-control
/// noise reaches — just before it): when the signal began to move, not when the alarm fired.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cusum {
    k: f64,
    h: f64,
    s: f64,
    zero_at: Option<Instant>,
}

impl Cusum {
    /// A CUSUM with allowance `k` (half the shift to detect, in σ) and decision limit `h`.
    pub const fn new(k: f64, h: f64) -> Cusum {
        Cusum {
            k,
            h,
            s: 0.0,
            zero_at: None,
        }
    }

    /// Adds one standardised observation at `now`; true while in alarm. The sum is capped
    /// at `2h` so that the alarm clears within `h/k` clean observations once the shift ends.
    pub fn step(&mut self, now: Instant, z: f64) -> bool {
        if !z.is_finite() {
            return self.alarm();
        }
        // At rest (near 0; in-control noise wanders a little above it): the next step that
        // rises is where an excursion would begin.
        let rest = self.k.max(self.h / 4.0);
        if self.s <= rest {
            self.zero_at = Some(now);
        }
        self.s = (self.s + z - self.k).clamp(0.0, 2.0 * self.h);
        if self.s <= rest {
            self.zero_at = Some(now);
        }
        self.alarm()
    }

    /// True while the sum is above the decision limit.
    pub fn alarm(&self) -> bool {
        self.s > self.h
    }

    /// True while the sum is away from rest: an excursion is under way (an alarm that fell
    /// back under the limit but not to rest is the same excursion, for hysteresis).
    pub fn excursion(&self) -> bool {
        self.s > self.k.max(self.h / 4.0)
    }

    /// When the current excursion began.
    pub fn onset(&self) -> Option<Instant> {
        self.zero_at
    }
}

/// Since when a condition has held without a break.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Since(Option<Instant>);

impl Since {
    /// Records whether the condition holds at `now`; returns since when it has.
    pub fn update(&mut self, now: Instant, holds: bool) -> Option<Instant> {
        if holds {
            self.0.get_or_insert(now);
        } else {
            self.0 = None;
        }
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn alarms_on_a_shift_and_dates_it_from_where_it_began() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Cusum::new(0.5, 5.0);
        for s in 0..20 {
            assert!(!c.step(at(s), 0.3), "in control at {s}");
        }
        // A 3σ shift from t = 20 s.
        let mut fired = None;
        for s in 20..30 {
            if c.step(at(s), 3.0) && fired.is_none() {
                fired = Some(s);
            }
        }
        assert_eq!(fired, Some(22), "2.5 per step crosses 5 on the third step");
        assert_eq!(
            c.onset(),
            Some(at(20)),
            "onset is the first step of the excursion"
        );
        // The cap lets it clear within h/k clean steps.
        let mut cleared = None;
        for s in 30..60 {
            if !c.step(at(s), 0.0) && cleared.is_none() {
                cleared = Some(s);
            }
        }
        assert!(cleared.is_some_and(|s| s <= 41), "{cleared:?}");
    }

    #[test]
    fn since_tracks_an_unbroken_run() {
        let t0 = Instant::now();
        let mut s = Since::default();
        assert_eq!(s.update(t0, false), None);
        assert_eq!(
            s.update(t0 + Duration::from_secs(1), true),
            Some(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            s.update(t0 + Duration::from_secs(2), true),
            Some(t0 + Duration::from_secs(1))
        );
        assert_eq!(s.update(t0 + Duration::from_secs(3), false), None);
    }
}
