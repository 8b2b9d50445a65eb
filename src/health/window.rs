//! Rolling windows of request measurements: fixed time slots, each with counts and
//! log-bucketed histograms, merged on demand for quantiles. Pure: callers pass `now`.

use std::time::Duration;

use tokio::time::Instant;

/// Smallest value a histogram resolves (seconds or tokens/s).
const MIN: f64 = 1e-5;
/// Bucket growth factor: quantiles are within ±2.5 %.
const RATIO: f64 = 1.05;
/// Buckets from `MIN` to 1e5.
const BUCKETS: usize = 472;

/// A histogram with logarithmic buckets, allocated on first use.
#[derive(Debug, Clone, Default)]
pub struct LogHistogram {
    counts: Option<Box<[u32]>>,
    total: u64,
}

impl LogHistogram {
    fn index(v: f64) -> usize {
        if v <= MIN {
            return 0;
        }
        ((v / MIN).ln() / RATIO.ln())
            .floor()
            .clamp(0.0, (BUCKETS - 1) as f64) as usize
    }

    fn value(i: usize) -> f64 {
        // Geometric middle of the bucket.
        MIN * RATIO.powf(i as f64 + 0.5)
    }

    /// Adds `n` observations of `v`.
    pub fn record_n(&mut self, v: f64, n: u32) {
        if !v.is_finite() || v < 0.0 || n == 0 {
            return;
        }
        let counts = self
            .counts
            .get_or_insert_with(|| vec![0; BUCKETS].into_boxed_slice());
        counts[Self::index(v)] += n;
        self.total += u64::from(n);
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &LogHistogram) {
        let Some(theirs) = &other.counts else {
            return;
        };
        let mine = self
            .counts
            .get_or_insert_with(|| vec![0; BUCKETS].into_boxed_slice());
        for (a, b) in mine.iter_mut().zip(theirs.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// How many observations lie above `v` (to bucket resolution).
    pub fn count_above(&self, v: f64) -> u64 {
        let Some(counts) = &self.counts else {
            return 0;
        };
        let from = Self::index(v) + 1;
        counts.iter().skip(from).map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile (0..=1), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts = self.counts.as_ref()?;
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(Self::value(i));
            }
        }
        None
    }
}

/// What kind of failure an attempt was, for the ordinary-failure detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 429 from the provider.
    RateLimited,
    /// Could not connect.
    Connection,
    /// The stream broke after its first token.
    MidStreamReset,
    /// Any other upstream failure: 5xx, timeouts, resets before the first token.
    Server,
}

impl ErrorClass {
    /// Every class, in the order of [`Slot::errors`].
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::RateLimited,
        ErrorClass::Connection,
        ErrorClass::MidStreamReset,
        ErrorClass::Server,
    ];

    /// The class of an upstream failure of `kind`, after a first token or not.
    pub fn of(kind: &str, after_first_token: bool) -> ErrorClass {
        match kind {
            "rate_limited" => ErrorClass::RateLimited,
            "connect" | "timeout_connect" => ErrorClass::Connection,
            "reset" | "stream_error" | "timeout_idle" if after_first_token => {
                ErrorClass::MidStreamReset
            }
            _ => ErrorClass::Server,
        }
    }

    /// True when a failure of `kind` is an attempt that got no first token within its
    /// limit: the provider may be slow, hung or only queueing, not failing.
    pub fn first_token_timeout(kind: &str, after_first_token: bool) -> bool {
        !after_first_token && matches!(kind, "timeout_ttft" | "timeout_total")
    }
}

/// One request's contribution to a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample<'a> {
    /// Counted as a failure in the error rate.
    pub failed: bool,
    /// Met every target.
    pub within_targets: bool,
    /// Completed successfully.
    pub completed: bool,
    /// Time to first token, seconds.
    pub ttft: Option<f64>,
    /// End to end, seconds.
    pub e2e: f64,
    /// Decode rate, tokens/s.
    pub decode: Option<f64>,
    /// Per-token inter-token gaps, seconds.
    pub gaps: &'a [f32],
    /// Longest gap between two chunks, seconds.
    pub max_gap: Option<f64>,
    /// Requests in flight when it started (the load it saw).
    pub in_flight: i64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// The kind of failure, for upstream failures.
    pub error: Option<ErrorClass>,
    /// The client's remaining deadline on arrival, seconds.
    pub deadline: Option<f64>,
    /// Ended in a timeout: for the gateway's own window a 504; for a provider's attempt,
    /// no first token within the limit.
    pub timed_out: bool,
    /// What it cost, USD.
    pub cost: f64,
}

/// The server failures (class [`ErrorClass::Server`]) a provider's attempts ended with in a
/// row, since its last attempt that ended otherwise. A run of them is the classic outlier
/// signal (Envoy's `consecutive_5xx`, five by default): evidence that needs no window share,
/// so a burst that gets its provider ejected after a handful of failures is named from
/// those failures rather than from what the window sees once the provider returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureRun {
    /// Server failures in a row, timeouts included.
    pub server: u32,
    /// Of them, attempts that got no first token within the limit.
    pub timeouts: u32,
    /// When the run's first failure was recorded.
    pub since: Option<Instant>,
}

impl FailureRun {
    /// Extends the run with a server failure; any other attempt ends it.
    pub fn record(&mut self, now: Instant, s: &Sample<'_>) {
        if !(s.failed && s.error == Some(ErrorClass::Server)) {
            *self = FailureRun::default();
            return;
        }
        self.since.get_or_insert(now);
        self.server = self.server.saturating_add(1);
        self.timeouts = self.timeouts.saturating_add(u32::from(s.timed_out));
    }

    /// The run's length, without first-token timeouts when `queueing` (those are the
    /// queue's, see [`Slot::server_errors`]).
    pub fn counted(&self, queueing: bool) -> u32 {
        if queueing {
            self.server - self.timeouts
        } else {
            self.server
        }
    }
}

/// Aggregates over a span of time.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// Requests (or attempts) recorded.
    pub requests: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which met every target.
    pub within_targets: u64,
    /// Of which completed successfully.
    pub completed: u64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// TTFT seconds.
    pub ttft: LogHistogram,
    /// End-to-end seconds.
    pub e2e: LogHistogram,
    /// Decode tokens/s.
    pub decode: LogHistogram,
    /// Inter-token gap seconds.
    pub itl: LogHistogram,
    /// Longest gap per request, seconds.
    pub max_gap: LogHistogram,
    /// Sum of in-flight counts at start (divide by `requests` for the mean load).
    pub in_flight_sum: u64,
    /// Failures by [`ErrorClass`] (in the order of [`ErrorClass::ALL`]).
    pub errors: [u64; 4],
    /// Remaining client deadline on arrival, seconds.
    pub deadline: LogHistogram,
    /// Ended in a timeout (see [`Sample::timed_out`]).
    pub timed_out: u64,
    /// Cost, USD.
    pub cost: f64,
}

impl Slot {
    fn record(&mut self, s: &Sample<'_>) {
        self.requests += 1;
        self.failed += u64::from(s.failed);
        self.within_targets += u64::from(s.within_targets);
        self.completed += u64::from(s.completed);
        self.tokens_in += s.tokens_in;
        self.tokens_out += s.tokens_out;
        if let Some(t) = s.ttft {
            self.ttft.record_n(t, 1);
        }
        if !s.failed {
            self.e2e.record_n(s.e2e, 1);
        }
        if let Some(d) = s.decode {
            self.decode.record_n(d, 1);
        }
        for &g in s.gaps {
            self.itl.record_n(f64::from(g), 1);
        }
        if let Some(g) = s.max_gap {
            self.max_gap.record_n(g, 1);
        }
        self.in_flight_sum += u64::try_from(s.in_flight).unwrap_or(0);
        if let Some(c) = s.error {
            self.errors[c as usize] += 1;
        }
        if let Some(d) = s.deadline {
            self.deadline.record_n(d, 1);
        }
        self.timed_out += u64::from(s.timed_out);
        self.cost += s.cost;
    }

    /// Failures of class `c`.
    pub fn errors_of(&self, c: ErrorClass) -> u64 {
        self.errors[c as usize]
    }

    /// Server failures ([`ErrorClass::Server`]) and the attempts they are a share of. When
    /// `queueing`, first-token timeouts are left out of both: a request that waited out its
    /// first-token limit in a server's queue says the queue is long, not that the server
    /// fails; of the attempts the server did answer, the share that failed is its own.
    pub fn server_errors(&self, queueing: bool) -> (u64, u64) {
        let all = self.errors_of(ErrorClass::Server);
        if queueing {
            (
                all.saturating_sub(self.timed_out),
                self.requests.saturating_sub(self.timed_out),
            )
        } else {
            (all, self.requests)
        }
    }

    fn merge(&mut self, o: &Slot) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.within_targets += o.within_targets;
        self.completed += o.completed;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.ttft.merge(&o.ttft);
        self.e2e.merge(&o.e2e);
        self.decode.merge(&o.decode);
        self.itl.merge(&o.itl);
        self.max_gap.merge(&o.max_gap);
        self.in_flight_sum += o.in_flight_sum;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.deadline.merge(&o.deadline);
        self.timed_out += o.timed_out;
        self.cost += o.cost;
    }

    /// Mean requests in flight when these started.
    pub fn mean_in_flight(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.in_flight_sum as f64 / self.requests as f64)
    }
}

/// A ring of equal time slots covering `slots × width`.
#[derive(Debug, Clone)]
pub struct Window {
    origin: Instant,
    width: Duration,
    slots: Vec<(u64, Slot)>,
}

impl Window {
    /// A window of `count` slots of `width`, starting at `origin`.
    pub fn new(origin: Instant, width: Duration, count: usize) -> Window {
        Window {
            origin,
            width,
            slots: vec![(u64::MAX, Slot::default()); count.max(1)],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.width.as_nanos().max(1))
            as u64
    }

    /// Records a sample at `now`.
    pub fn record(&mut self, now: Instant, s: &Sample<'_>) {
        let epoch = self.epoch(now);
        let n = self.slots.len() as u64;
        let (e, slot) = &mut self.slots[(epoch % n) as usize];
        if *e != epoch {
            *e = epoch;
            *slot = Slot::default();
        }
        slot.record(s);
    }

    /// How much of the last `span` the window has existed for (less than `span` just after
    /// start), so rates are not diluted by time before the window began.
    pub fn covered(&self, now: Instant, span: Duration) -> Duration {
        span.min(now.saturating_duration_since(self.origin))
    }

    /// Everything recorded in the last `span` (rounded up to whole slots) before `now`.
    pub fn sum(&self, now: Instant, span: Duration) -> Slot {
        let epoch = self.epoch(now);
        let want = (span.as_nanos().div_ceil(self.width.as_nanos().max(1)) as u64)
            .clamp(1, self.slots.len() as u64);
        let oldest = epoch.saturating_sub(want - 1);
        let mut total = Slot::default();
        for (e, slot) in &self.slots {
            if *e != u64::MAX && *e >= oldest && *e <= epoch {
                total.merge(slot);
            }
        }
        total
    }

    /// The last `count` slots up to and including the one `now` falls in, oldest first,
    /// each with how long before `now` it started (`None`: nothing recorded in it). Slots
    /// before the window began are left out.
    pub fn slots(&self, now: Instant, count: usize) -> Vec<(Duration, Option<&Slot>)> {
        let epoch = self.epoch(now);
        let count = (count.clamp(1, self.slots.len()) as u64).min(epoch + 1);
        let n = self.slots.len() as u64;
        (epoch + 1 - count..=epoch)
            .map(|e| {
                let start = self
                    .width
                    .saturating_mul(u32::try_from(e).unwrap_or(u32::MAX));
                let ago = now.saturating_duration_since(self.origin + start);
                let (stored, slot) = &self.slots[(e % n) as usize];
                (ago, (*stored == e).then_some(slot))
            })
            .collect()
    }

    /// The slot width.
    pub fn width(&self) -> Duration {
        self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_bucket_resolution() {
        let mut h = LogHistogram::default();
        for i in 1..=1000 {
            h.record_n(f64::from(i) / 1000.0, 1);
        }
        for (q, want) in [(0.5, 0.5), (0.95, 0.95), (0.99, 0.99)] {
            let got = h.quantile(q).unwrap();
            assert!((got / want - 1.0).abs() < 0.03, "q{q}: {got} vs {want}");
        }
        assert_eq!(LogHistogram::default().quantile(0.5), None);
    }

    #[test]
    fn window_forgets_old_slots() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, Duration::from_secs(5), 60);
        let s = Sample {
            e2e: 1.0,
            completed: true,
            ..Sample::default()
        };
        w.record(t0, &s);
        w.record(t0 + Duration::from_secs(50), &s);
        let now = t0 + Duration::from_secs(62);
        assert_eq!(w.sum(now, Duration::from_secs(60)).requests, 1);
        assert_eq!(w.sum(now, Duration::from_secs(300)).requests, 2);
        // After the ring wraps, the old slot must not come back.
        let later = t0 + Duration::from_secs(400);
        assert_eq!(w.sum(later, Duration::from_secs(300)).requests, 0);
        w.record(later, &s);
        assert_eq!(w.sum(later, Duration::from_secs(300)).requests, 1);
    }

    #[test]
    fn failures_are_classed_by_what_they_say_about_the_provider() {
        assert_eq!(ErrorClass::of("status_503", false), ErrorClass::Server);
        assert_eq!(
            ErrorClass::of("rate_limited", false),
            ErrorClass::RateLimited
        );
        assert_eq!(ErrorClass::of("connect", false), ErrorClass::Connection);
        assert_eq!(ErrorClass::of("reset", true), ErrorClass::MidStreamReset);
        assert_eq!(ErrorClass::of("reset", false), ErrorClass::Server);
        assert!(ErrorClass::first_token_timeout("timeout_ttft", false));
        assert!(!ErrorClass::first_token_timeout("timeout_idle", true));
        assert!(!ErrorClass::first_token_timeout("status_500", false));
    }

    #[test]
    fn slots_come_oldest_first_with_their_age_and_gaps_empty() {
        let origin = Instant::now();
        let mut w = Window::new(origin, Duration::from_secs(5), 12);
        let at = |s: u64| origin + Duration::from_secs(s);
        w.record(
            at(1),
            &Sample {
                cost: 0.5,
                ..Sample::default()
            },
        );
        w.record(at(12), &Sample::default());
        w.record(at(13), &Sample::default());
        let slots = w.slots(at(17), 60);
        // Four slots exist since the origin (0-5, 5-10, 10-15, 15-20 s).
        assert_eq!(slots.len(), 4);
        assert_eq!(slots[0].0, Duration::from_secs(17));
        assert_eq!(slots[3].0, Duration::from_secs(2));
        assert_eq!(slots[0].1.map(|s| (s.requests, s.cost)), Some((1, 0.5)));
        assert!(slots[1].1.is_none());
        assert_eq!(slots[2].1.map(|s| s.requests), Some(2));
        assert!(slots[3].1.is_none());
        // A ring slot reused by a later epoch is not reported for an older one.
        let later = w.slots(at(70), 3);
        assert_eq!(later.len(), 3);
        assert!(later.iter().all(|(_, s)| s.is_none()));
    }
}
