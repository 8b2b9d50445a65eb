//! Intermittent tail latency: a share of a provider's requests wait seconds for their first
//! token while its median stays where it was learned and its errors stay flat — a flaky
//! node, a slow retry path or a noisy neighbour, not a slower engine (that moves the median)
//! and not a cache shortage (that stalls streams mid-answer and fills the server's cache,
//! the KV detector's).

use std::time::Duration;

use tokio::time::Instant;

use crate::health::baseline::learning_rate;
use crate::health::state::State;

use super::{
    Clock, FLAT_ERRORS, Fact, Finding, MIN_ATTEMPTS, Mode, ProviderDetectors, ProviderInput,
    Severity, held, rate, server_queue,
};

/// A first token later than max(`SLOW_FLOOR_S`, `SLOW_MULT` × the learned median, the TTFT
/// target) is slow.
const SLOW_FLOOR_S: f64 = 1.0;
const SLOW_MULT: f64 = 5.0;

/// The time past which a first token is late for a provider whose first tokens normally take
/// `typical` seconds, with users' first-token target `target` seconds: far off the usual and
/// past what users were promised. A first token within the target is not a tail users feel,
/// and a burst of long prompts queued behind each other's prefill makes such first tokens on
/// a healthy server every minute.
pub fn late_after(typical: f64, target: f64) -> f64 {
    SLOW_FLOOR_S.max(SLOW_MULT * typical).max(target)
}
/// A tail: at least this share of first tokens slow, `SHARE_MULT` times the learned share,
/// and `MIN_SLOW` of them.
const SHARE: f64 = 0.05;
const SHARE_MULT: f64 = 3.0;
const MIN_SLOW: u64 = 3;
/// "Median flat": within this multiple of the learned median.
const FLAT_MEDIAN: f64 = 1.5;
/// Learning rate of the learned median and slow share (per tick), and ticks before trusted.
const LEARN: f64 = 0.02;
const LEARN_TICKS: u32 = 10;
/// How long the finding stands after its signature last held (routing moves traffic away,
/// and the tail is then seen on fewer requests).
const HOLD: Duration = Duration::from_secs(20);

/// What a healthy provider's first tokens look like.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FirstTokens {
    median: f64,
    slow_share: f64,
    ticks: u32,
}

impl ProviderDetectors {
    /// A share of first tokens seconds late with the median and errors flat.
    pub(super) fn tail_latency(
        &mut self,
        p: &ProviderInput<'_>,
        clock: &Clock,
        now: Instant,
    ) -> Option<Finding> {
        let w = p.since_healthy;
        let l = self.first_tokens;
        let learned = l.ticks >= LEARN_TICKS;
        let (Some(median), true) = (w.ttft.quantile(0.5), w.requests >= 2 * MIN_ATTEMPTS) else {
            return self.tail_held(now);
        };
        let limit = late_after(if learned { l.median } else { median }, p.ttft_target);
        let measured = w.ttft.count();
        let late = w.ttft.count_above(limit);
        // Late first tokens behind a queue at the server are the queue's.
        let slow = if p.queue_explains_late() { 0 } else { late };
        let share = slow as f64 / measured.max(1) as f64;
        let errors = rate(w.failed, w.requests);
        // A tail its peers show too is the traffic's (a burst queues first tokens everywhere
        // at once); a flaky provider's is its own.
        let shared = p.peers.and_then(|r| r.late).unwrap_or(0.0);
        let threshold = SHARE
            .max(SHARE_MULT * l.slow_share)
            .max(SHARE_MULT * shared);
        // The median of the first tokens that were not late: a tail of a third of them moves
        // the median of all, not that of the rest, which a slower engine or a queue moves.
        let on_time = w
            .ttft
            .quantile(0.5 * (1.0 - late as f64 / measured.max(1) as f64))
            .unwrap_or(median);
        let flat = learned && on_time <= FLAT_MEDIAN * l.median;
        let tail = flat && errors < FLAT_ERRORS && slow >= MIN_SLOW && share >= threshold;
        let onset = self
            .tail_since
            .update(now, flat && slow > 0 && share > l.slow_share);
        if !tail {
            if p.state == State::Healthy && (!learned || share < threshold) {
                let a = learning_rate(l.ticks.saturating_add(1), LEARN);
                self.first_tokens = FirstTokens {
                    median: l.median + a * (on_time - l.median),
                    slow_share: l.slow_share + a * (share - l.slow_share),
                    ticks: l.ticks.saturating_add(1),
                };
            }
            return self.tail_held(now);
        }
        let p95 = w.ttft.quantile(0.95).unwrap_or(limit);
        let f = Finding {
            mode: Mode::TailLatency,
            subject: p.id.to_owned(),
            provider: Some(p.id.to_owned()),
            severity: Severity::Warning,
            onset_unix_ms: clock.ms(onset.unwrap_or(now)),
            summary: format!(
                "{}: {:.0} % of first tokens take over {limit:.1} s while the others' median \
                 stays at {:.0} ms (P95 {:.1} s): an intermittent delay, not a slower engine",
                p.id,
                share * 100.0,
                on_time * 1000.0,
                p95
            ),
            facts: vec![
                Fact::new(
                    "slow_first_token_share",
                    share,
                    "ratio",
                    format!("{slow} of {measured} first tokens took over {limit:.1} s"),
                )
                .baseline(Some(l.slow_share))
                .threshold(threshold),
                Fact::new(
                    "on_time_ttft_p50_ms",
                    on_time * 1000.0,
                    "ms",
                    format!(
                        "the median time to first token of the others stays flat (of all: \
                         {:.0} ms)",
                        median * 1000.0
                    ),
                )
                .baseline(Some(l.median * 1000.0))
                .threshold(FLAT_MEDIAN * l.median * 1000.0),
                Fact::new(
                    "ttft_p95_ms",
                    p95 * 1000.0,
                    "ms",
                    format!("P95 time to first token {:.0} ms", p95 * 1000.0),
                ),
                Fact::new(
                    "error_rate",
                    errors,
                    "ratio",
                    format!("{} of {} attempts failed", w.failed, w.requests),
                )
                .threshold(FLAT_ERRORS),
            ]
            .into_iter()
            .chain(p.backend.and_then(server_queue))
            .collect(),
            action: "Candor sends the provider less traffic while its tail lasts; look for one \
                     bad replica or node behind it, retries inside the provider, or a noisy \
                     neighbour (the median is fine, so the engine itself is not slower)"
                .into(),
            root_cause: None,
        };
        self.tail_last = Some((f.clone(), now));
        Some(f)
    }

    fn tail_held(&self, now: Instant) -> Option<Finding> {
        held(self.tail_last.as_ref(), HOLD, now)
    }
}
