//! A provider's baseline: what its TTFT and per-stream decode rate look like when it is
//! healthy, learned per load bucket (decode slows as batches grow, so a busy provider is
//! compared with itself when busy). Only healthy periods feed it. Pure.

/// Upper bounds of the load buckets (mean requests in flight).
const BUCKETS: [f64; 6] = [1.5, 3.0, 6.0, 12.0, 24.0, f64::INFINITY];
/// Per-stream decode rate allowed per load bucket heavier than the one learned: a batch
/// twice the size costs a memory-bound decode step well under 25 % more, and the prefills
/// of twice the arrivals interleave with it.
const LIGHTER_DECODE: f64 = 0.75;
/// Ticks (a minute at 0.5 s) of a plain mean that anchor a load bucket's baseline.
const ANCHOR_TICKS: u32 = 120;
/// Ticks of data before a bucket is trusted.
const MIN_TICKS: u32 = 5;
/// Slowest learning rate: a half-life of about 3,500 ticks (half an hour at 0.5 s). A fault
/// that creeps in over ten minutes moves a baseline this slow by a few per cent only, so the
/// reference the detectors compare with is the last known-good state, not the drift.
const MIN_ALPHA: f64 = 0.0002;

/// The weight of the `n`-th observation (counting from 1) in a running average that is a
/// plain mean at first and an exponential one, of weight `floor`, once `1/n` falls below it.
pub fn learning_rate(n: u32, floor: f64) -> f64 {
    (1.0 / f64::from(n.max(1))).max(floor)
}

/// The weight of the `ticks`-th observation in a baseline: a plain mean over the first minute
/// of data, then an average so slow that the first minute stays the anchor (a plain mean over
/// everything would take in a fault that creeps in over minutes as fast as it creeps).
fn anchored(ticks: u32) -> f64 {
    if ticks <= ANCHOR_TICKS {
        1.0 / f64::from(ticks.max(1))
    } else {
        MIN_ALPHA
    }
}

/// Reference values to compare a provider with.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reference {
    /// Median TTFT, s.
    pub ttft: Option<f64>,
    /// Per-stream decode rate, tokens/s.
    pub decode: Option<f64>,
    /// How much the decode rate spreads from tick to tick when healthy at this load, as a
    /// share of its mean (its coefficient of variation). Short answers, bursts and whole
    /// prompts prefilled between decode steps make some providers' rates far noisier than
    /// others'; a drop is judged in units of this spread.
    pub decode_spread: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    ttft: f64,
    decode: f64,
    /// Mean of the squared decode rate (for its spread).
    decode_sq: f64,
    ticks: u32,
}

impl Bucket {
    fn spread(&self) -> Option<f64> {
        let var = (self.decode_sq - self.decode * self.decode).max(0.0);
        (self.decode > 0.0).then(|| var.sqrt() / self.decode)
    }
}

/// How far a provider is from its own baseline now: current over baseline, for the decode
/// rate and the median time to first token. Its peers' median of these is the common-mode
/// reference: when every provider of a model moves the same way at once, that is the
/// traffic, not one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ratios {
    /// Decode rate over the baseline's (below 1: slower).
    pub decode: Option<f64>,
    /// Median TTFT over the baseline's (above 1: slower).
    pub ttft: Option<f64>,
    /// The share of first tokens seconds late (not a ratio: a burst queues first tokens at
    /// every provider at once, a flaky one delays its own).
    pub late: Option<f64>,
    /// The decode step learned at the batch it runs over the step now (the fastest token
    /// gaps with nothing waiting; below 1: each step slower).
    pub step: Option<f64>,
}

impl Ratios {
    /// `current` against `reference`.
    pub fn of(current: Reference, reference: Option<Reference>) -> Ratios {
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
            _ => None,
        };
        Ratios {
            decode: div(current.decode, reference.and_then(|r| r.decode)),
            ttft: div(current.ttft, reference.and_then(|r| r.ttft)),
            late: None,
            step: None,
        }
    }

    /// The median of each ratio over `all`.
    pub fn median(all: &[Ratios]) -> Option<Ratios> {
        let pick = |f: fn(&Ratios) -> Option<f64>| {
            let mut v: Vec<f64> = all.iter().filter_map(f).collect();
            median(&mut v)
        };
        let r = Ratios {
            decode: pick(|r| r.decode),
            ttft: pick(|r| r.ttft),
            late: pick(|r| r.late),
            step: pick(|r| r.step),
        };
        (r.decode.is_some() || r.ttft.is_some() || r.late.is_some() || r.step.is_some())
            .then_some(r)
    }

    /// How much of a drop in decode rate the peers share: their ratio over `SHARED_NOISE`,
    /// capped at 1 (peers within the ordinary tick-to-tick spread of their baselines, or
    /// faster, excuse nothing; a median of noisy ratios would otherwise excuse a few per cent
    /// of every real slowdown).
    pub fn shared_decode_drop(peers: Option<Ratios>) -> f64 {
        shared_drop(peers.and_then(|p| p.decode), SHARED_NOISE)
    }

    /// How much of a slower decode step the peers share: their step ratio over
    /// `SHARED_STEP_NOISE`, capped at 1 (as for the decode rate).
    pub fn shared_step_drop(peers: Option<Ratios>) -> f64 {
        shared_drop(peers.and_then(|p| p.step), SHARED_STEP_NOISE)
    }

    /// How much of a rise in TTFT the peers share: their ratio, at least 1.
    pub fn shared_ttft_rise(peers: Option<Ratios>) -> f64 {
        peers.and_then(|p| p.ttft).map_or(1.0, |t| t.max(1.0))
    }
}

/// The spread of a provider's decode ratio around its baseline from one tick to the next.
const SHARED_NOISE: f64 = 0.9;
/// The same for its decode step: the fastest token gaps move little with the traffic (a
/// histogram's bucket, about 5 %).
const SHARED_STEP_NOISE: f64 = 0.95;

/// The share of a drop the peers' median `ratio` excuses: the ratio over the ordinary
/// `noise`, capped at 1 (no peers: nothing excused).
fn shared_drop(ratio: Option<f64>, noise: f64) -> f64 {
    ratio.map_or(1.0, |d| (d / noise).clamp(f64::MIN_POSITIVE, 1.0))
}

/// The decode step `learned` at a batch over the step `now` at that batch (token gaps of
/// one of the [`GapLine`]s, s): below 1, each step is slower than it was when healthy.
pub fn step_ratio(learned: Option<f64>, now: Option<f64>) -> Option<f64> {
    match (learned, now) {
        (Some(base), Some(gap)) if gap > 0.0 && base > 0.0 => Some(base / gap),
        _ => None,
    }
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The learned baseline: one running average per load bucket, and the time a stream spends
/// per token fitted as a line against the load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    buckets: [Bucket; BUCKETS.len()],
    step: StepFit,
    quickest: StepFit,
    fastest: StepFit,
}

/// The two lines of the decode step a baseline learns from token gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapLine {
    /// The first quartile of the last thirty seconds' gaps, learned over capacity too:
    /// judged behind a queue, where an engine prefilling whole prompts between steps keeps
    /// its quickest gaps.
    Quickest,
    /// The fastest tenth of the last ten seconds' gaps, learned only with nothing waiting
    /// at the server: judged there alone, and sooner.
    Fastest,
}

impl GapLine {
    /// How far past the heaviest batch it has seen the line predicts: less for the fastest
    /// gaps, which name a slowdown on their own, and a batch far beyond any run (a provider
    /// taking a failed peer's traffic) also brings prefill into more of its steps.
    fn reach(self) -> f64 {
        match self {
            GapLine::Quickest => FIT_REACH,
            GapLine::Fastest => 1.2,
        }
    }
}

/// Ticks of data before the step-time line is trusted.
const FIT_TICKS: u32 = 20;
/// The line predicts up to this multiple of the heaviest load it was fitted on.
const FIT_REACH: f64 = 1.5;

/// A continuous-batching engine's decode step costs a fixed part plus a part per sequence in
/// the batch, so the time a stream waits per token is close to a line in the load:
/// `a + b·load`. Fitted by least squares on running means (a plain mean over the first
/// minute, then learned as slowly as the buckets), it predicts the decode rate at any load
/// it has seen, where a bucket holds one figure for loads that decode 25 % apart.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct StepFit {
    ticks: u32,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    yy: f64,
    max_x: f64,
}

impl StepFit {
    fn learn(&mut self, load: f64, step: f64) {
        self.ticks = self.ticks.saturating_add(1);
        let a = anchored(self.ticks);
        self.x += a * (load - self.x);
        self.y += a * (step - self.y);
        self.xx += a * (load * load - self.xx);
        self.xy += a * (load * step - self.xy);
        self.yy += a * (step * step - self.yy);
        self.max_x = self.max_x.max(load);
    }

    /// The step time predicted at `load` and the spread around the line (as a share of the
    /// mean step time), when the line has seen enough and reaches that far.
    fn predict(&self, load: f64, reach: f64) -> Option<(f64, f64)> {
        if self.ticks < FIT_TICKS || load > reach * self.max_x.max(1.0) {
            return None;
        }
        let var_x = self.xx - self.x * self.x;
        // A heavier batch never decodes faster; with one load only, the line is flat.
        let b = if var_x > 1e-6 {
            ((self.xy - self.x * self.y) / var_x).max(0.0)
        } else {
            0.0
        };
        let step = self.y + b * (load - self.x);
        let resid = (self.yy - self.y * self.y - b * b * var_x).max(0.0);
        (step > 0.0 && self.y > 0.0).then(|| (step, resid.sqrt() / self.y))
    }
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
        let alpha = anchored(b.ticks);
        b.ttft += alpha * (ttft - b.ttft);
        b.decode += alpha * (decode - b.decode);
        b.decode_sq += alpha * (decode * decode - b.decode_sq);
        self.step.learn(load, 1.0 / decode);
    }

    /// The reference at `load`. The decode rate from the step-time line where it reaches
    /// (see [`StepFit`]); else, as for the first token, this load bucket when learned, or the
    /// nearest learned bucket of heavier load. Failing those, the next lighter bucket's decode
    /// rate with an allowance of `LIGHTER_DECODE` (a batch twice the size decodes each stream
    /// more slowly; the allowance is generous, so a lighter load's figures under-call a
    /// degradation rather than call ordinary load one), and no TTFT (queueing makes first
    /// tokens at a heavier load unknowable from a lighter one).
    pub fn at(&self, load: f64) -> Option<Reference> {
        let fitted = self.step.predict(load, FIT_REACH);
        let here = bucket_of(load);
        let learned = self.buckets[here..].iter().find(|b| b.ticks >= MIN_TICKS);
        // One bucket lighter at most: twice the load is a batch the same server still
        // decodes at a predictable cost; four times or more may be a batch it never ran, or
        // a queue, and what a stream decodes there is unknown.
        let lighter = here
            .checked_sub(1)
            .map(|i| self.buckets[i])
            .filter(|b| b.ticks >= MIN_TICKS);
        let (decode, decode_spread) = match (fitted, learned, lighter) {
            (Some((step, spread)), ..) => (Some(1.0 / step), Some(spread)),
            (None, Some(b), _) => (Some(b.decode), b.spread()),
            (None, None, Some(b)) => (Some(b.decode * LIGHTER_DECODE), b.spread()),
            (None, None, None) => (None, None),
        };
        let ttft = learned.map(|b| b.ttft);
        (ttft.is_some() || decode.is_some()).then_some(Reference {
            ttft,
            decode,
            decode_spread,
        })
    }

    /// Learns from one healthy tick the token gaps (s) of `line` seen with `batch` streams
    /// decoding on average.
    pub fn learn_gap(&mut self, line: GapLine, batch: f64, gap: f64) {
        if batch.is_finite() && gap.is_finite() && gap > 0.0 {
            self.line_mut(line).learn(batch, gap);
        }
    }

    /// The token gaps of `line` learned at a batch of `batch` decoding streams: the decode
    /// step itself, with nothing prefilled between two tokens. Fitted as a line in the batch
    /// (a step costs a fixed part plus a part per sequence), it predicts up to
    /// [`GapLine::reach`] times the largest batch it has seen.
    pub fn gap_at(&self, line: GapLine, batch: f64) -> Option<f64> {
        let fit = match line {
            GapLine::Quickest => &self.quickest,
            GapLine::Fastest => &self.fastest,
        };
        fit.predict(batch, line.reach()).map(|(step, _)| step)
    }

    fn line_mut(&mut self, line: GapLine) -> &mut StepFit {
        match line {
            GapLine::Quickest => &mut self.quickest,
            GapLine::Fastest => &mut self.fastest,
        }
    }

    /// The quickest first token learned at any load: what a first token costs with no queue
    /// in front of it.
    pub fn unqueued_ttft(&self) -> Option<f64> {
        self.buckets
            .iter()
            .filter(|b| b.ticks >= MIN_TICKS)
            .map(|b| b.ttft)
            .min_by(f64::total_cmp)
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
        // Fewer ticks than the step-time line needs: the buckets answer.
        let mut b = Baseline::default();
        assert_eq!(b.at(1.0), None);
        for _ in 0..5 {
            b.learn(1.0, 0.1, 80.0);
            b.learn(20.0, 0.3, 40.0);
        }
        assert_eq!(b.at(1.0).and_then(|r| r.decode), Some(80.0));
        assert_eq!(b.at(20.0).and_then(|r| r.decode), Some(40.0));
        // 4 in flight was never seen healthy: the heavier bucket stands in.
        assert_eq!(b.at(4.0).and_then(|r| r.decode), Some(40.0));
        // Heavier than anything learned: the next lighter bucket, with an allowance of a
        // quarter, and no first-token reference; further than one bucket, nothing.
        let heavier = b.at(30.0).unwrap();
        assert_eq!(heavier.ttft, None);
        assert!((heavier.decode.unwrap() - 40.0 * 0.75).abs() < 1e-9);
        let mut light = Baseline::default();
        for _ in 0..10 {
            light.learn(1.0, 0.1, 80.0);
        }
        assert!(light.at(2.0).is_some());
        assert_eq!(light.at(4.0), None, "four times the load is not judged");
        assert!(Baseline::comparable(2.0, 4.0));
        assert!(
            Baseline::comparable(1.0, 20.0),
            "a busier peer is a fair reference"
        );
        assert!(!Baseline::comparable(20.0, 1.0), "an idle peer is not");
    }

    #[test]
    fn the_step_time_line_predicts_the_decode_rate_between_learned_loads() {
        // An engine whose step costs 10 ms plus 1 ms per sequence, seen at 4 and 16 in flight.
        let mut b = Baseline::default();
        for i in 0..40 {
            let load = if i % 2 == 0 { 4.0 } else { 16.0 };
            b.learn(load, 0.1, 1.0 / (0.010 + 0.001 * load));
            b.learn_gap(GapLine::Quickest, load, 0.010 + 0.001 * load);
        }
        let at = |load: f64| b.at(load).and_then(|r| r.decode).unwrap();
        // 10 in flight (a bucket never learned): 50 tokens/s, not either bucket's figure.
        assert!((at(10.0) - 50.0).abs() < 1e-6, "{}", at(10.0));
        assert!(
            (at(24.0) - 1.0 / 0.034).abs() < 1e-6,
            "reaches 1.5x the heaviest"
        );
        // The quickest gaps learned beside it follow the same line.
        let step = b.gap_at(GapLine::Quickest, 20.0).unwrap();
        assert!((step - 0.030).abs() < 1e-9, "{step}");
        assert_eq!(
            b.gap_at(GapLine::Quickest, 30.0),
            None,
            "beyond 1.5x the heaviest"
        );
        // Beyond that the buckets answer again (here: none heavier, one lighter).
        assert!((at(30.0) - 1.0 / 0.026 * 0.75).abs() < 1e-6, "{}", at(30.0));
        // An exact line has no spread; one rate alternating 60/100 spreads by a quarter.
        assert!(b.at(10.0).and_then(|r| r.decode_spread).unwrap() < 1e-6);
        let mut noisy = Baseline::default();
        for i in 0..100 {
            noisy.learn(1.0, 0.1, if i % 2 == 0 { 60.0 } else { 100.0 });
        }
        let spread = noisy.at(1.0).and_then(|r| r.decode_spread).unwrap();
        assert!((spread - 0.25).abs() < 1e-6, "{spread}");
    }
}
