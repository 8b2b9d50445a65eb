//! Per-provider detectors: batch-queue deadlock, hardware degradation, KV-cache thrashing,
//! intermittent tail latency and the ordinary failures (error bursts, rate limiting, connection failures, mid-stream
//! resets). Pure: the health task hands each provider's recent window, signals, references
//! and scrape in; state that spans ticks (CUSUM sums, learned tails, onsets) lives here.

use std::time::Duration;

use tokio::time::Instant;

mod hardware;
mod kv;
mod tail;

pub(super) use hardware::STEP_RATIO;
pub use tail::late_after;

use kv::Tails;
use tail::FirstTokens;

use super::cusum::{Cusum, Since};
use super::{Clock, Fact, Finding, Mode, Severity};
use crate::health::baseline::{Ratios, Reference};
use crate::health::state::{Signals, State};
use crate::health::window::{ErrorClass, FailureRun, Slot};
use crate::scrape::Backend;

/// Attempts in the recent window before rates are judged.
const MIN_ATTEMPTS: u64 = 5;
/// Error shares that count as flat / a burst.
const FLAT_ERRORS: f64 = 0.05;
/// Server failures in a row that are a burst whatever the window's share (see
/// [`FailureRun`]; Envoy's `consecutive_5xx` default, and Candor's default ejection).
const IN_A_ROW: u32 = 5;
/// The fact on an error burst judged without the first-token timeouts of a queueing server:
/// its failures are the server's own answers.
pub(super) const QUEUE_TIMEOUTS_LEFT_OUT: &str = "queue_timeouts_left_out";

/// What the provider detectors see at one tick.
#[derive(Debug, Clone, Copy)]
pub struct ProviderInput<'a> {
    /// Provider id.
    pub id: &'a str,
    /// The recent window's attempts since the provider was last healthy: kept when it is
    /// degraded or ejected, so the evidence does not vanish the moment routing reacts.
    pub since_healthy: &'a Slot,
    /// The server failures its latest attempts ended with, in a row.
    pub failure_run: FailureRun,
    /// The tick's signals.
    pub signals: &'a Signals,
    /// The state before this tick's step.
    pub state: State,
    /// The provider's own baseline at its load.
    pub baseline: Option<Reference>,
    /// The median of its peers' ratios to their own baselines (what the traffic did to
    /// every provider of the model at once).
    pub peers: Option<Ratios>,
    /// The quickest token gaps its baseline learned at the batch it runs now, s: its decode
    /// step when healthy (see [`Signals::quickest_gap`]).
    pub quickest_gap_baseline: Option<f64>,
    /// Its decode step now against the one its baseline learned at the batch it runs with
    /// nothing waiting (see [`Signals::fastest_gap`]; below 1: each step slower).
    pub fastest_step: Option<f64>,
    /// The latest fresh scrape.
    pub backend: Option<&'a Backend>,
    /// Whether the provider's own health endpoint answered 2xx at its last check.
    pub health_endpoint_ok: Option<bool>,
    /// Requests in flight now.
    pub in_flight: i64,
    /// A scrape within the detectors' recent window showed requests waiting at the server
    /// (a burst can queue and drain between two scrapes; its late first tokens stay in view).
    pub queued_recently: bool,
    /// The server's own queue-time histogram showed requests that had waited seconds for a
    /// slot within the last minute (`None`: it exports no such histogram).
    pub waited_long_lately: Option<bool>,
    /// The stall watchdog: no token for this long with requests in flight is a hang.
    pub stall_limit: Duration,
    /// Users' first-token target, s.
    pub ttft_target: f64,
    /// The latest canary that got no first token (sent at, reason), if recent.
    pub canary_stuck: Option<(Instant, &'a str)>,
}

impl ProviderInput<'_> {
    /// Work waits at the server now (its fresh scrape says so) or the model is over
    /// capacity: first tokens, per-stream decode and timeouts are the queue's.
    pub(super) fn queueing(&self) -> bool {
        self.signals.overloaded || self.backend.is_some_and(Backend::queued)
    }

    /// [`ProviderInput::queueing`], or a scrape in the recent window showed work waiting (a
    /// burst can queue and drain between two scrapes; what it delayed stays in the window).
    pub(super) fn queued_lately(&self) -> bool {
        self.queued_recently || self.queueing()
    }

    /// Whether a queue at the server may account for late first tokens: requests wait there
    /// now (its queue-time histogram counts them only once admitted), or its histogram says
    /// some waited seconds for a slot in the last minute (then shorter waits and prefills
    /// crowded into the same steps made others late too, so any of them may be the queue's).
    /// When the histogram says none did, a queue seen at a scrape was a step's worth of
    /// admissions, too short to make a first token late; a server without the histogram
    /// cannot say, and any queue seen lately counts.
    pub(super) fn queue_explains_late(&self) -> bool {
        self.queueing() || self.waited_long_lately.unwrap_or(self.queued_recently)
    }
}

/// The detectors' state for one provider.
#[derive(Debug, Clone)]
pub struct ProviderDetectors {
    decode: Cusum,
    step: Cusum,
    tails: Tails,
    stalls: Since,
    stuck: Since,
    errors: [Since; 4],
    held: Vec<Finding>,
    last_hw: Option<Finding>,
    kv_peak: Option<(f64, Instant)>,
    preempt_peak: Option<(f64, Instant)>,
    kv_last: Option<(Finding, Instant)>,
    first_tokens: FirstTokens,
    tail_since: Since,
    tail_last: Option<(Finding, Instant)>,
}

impl Default for ProviderDetectors {
    fn default() -> Self {
        ProviderDetectors {
            decode: Cusum::new(hardware::DECODE_K, hardware::DECODE_H),
            step: Cusum::new(hardware::STEP_K, hardware::STEP_H),
            tails: Tails::default(),
            stalls: Since::default(),
            stuck: Since::default(),
            errors: [Since::default(); 4],
            held: Vec::new(),
            last_hw: None,
            kv_peak: None,
            preempt_peak: None,
            kv_last: None,
            first_tokens: FirstTokens::default(),
            tail_since: Since::default(),
            tail_last: None,
        }
    }
}

impl ProviderDetectors {
    /// Runs every provider detector at `now`. While the provider is ejected or recovering
    /// it gets no traffic to judge, so what was found is held until it recovers.
    pub fn step(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Vec<Finding> {
        let mut found = Vec::new();
        found.extend(self.deadlock(p, clock, now));
        let out_of_rotation = matches!(p.state, State::Ejected { .. } | State::Recovering { .. });
        if !out_of_rotation {
            found.extend(self.hardware(p, clock, now));
            let kv = self.kv_thrashing(p, clock, now);
            // A late first token with streams stalling and a full cache is the cache's.
            if kv.is_none() {
                found.extend(self.tail_latency(p, clock, now));
            }
            found.extend(kv);
        }
        let explained = found
            .iter()
            .chain(&self.held)
            .any(|f| matches!(f.mode, Mode::BatchQueueDeadlock | Mode::KvCacheThrashing));
        // A hang or a starved KV cache explains the timeouts and broken streams it causes.
        found.extend(self.ordinary(p, clock, now).into_iter().filter(|f| {
            !(explained && matches!(f.mode, Mode::ErrorBurst | Mode::MidStreamResets))
        }));
        if out_of_rotation {
            for h in &self.held {
                if !found.iter().any(|f| f.mode == h.mode) {
                    found.push(h.clone());
                }
            }
        }
        self.held.clone_from(&found);
        found
    }

    /// FM 3: requests in flight with no token progress past the watchdog, or the server's
    /// own metrics show work queued with no generation (reference §5.2).
    fn deadlock(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Option<Finding> {
        let s = p.signals;
        let stalled = s.stalled_for.filter(|d| *d >= p.stall_limit);
        let stuck_since = self.stuck.update(now, s.backend_stuck);
        // A canary with no first token while nothing completes is a hang too — unless the
        // server's own metrics show its engine generating (the canary waited in a queue) or
        // nothing at the server at all (whatever held the canary up has drained).
        let canary = p.canary_stuck.filter(|_| {
            p.since_healthy.completed == 0
                && s.requests == 0
                && !p.backend.is_some_and(|b| b.generating() || b.idle())
        });
        let onset = match (stalled, stuck_since, canary) {
            (Some(d), _, _) => now.checked_sub(d).unwrap_or(now),
            (None, Some(t), _) => t,
            (None, None, Some((at, _))) => at,
            (None, None, None) => return None,
        };
        let mut facts = Vec::new();
        let mut summary;
        if let Some(d) = stalled {
            facts.push(
                Fact::new(
                    "no_token_for_s",
                    d.as_secs_f64(),
                    "s",
                    format!(
                        "{} requests in flight, no token for {:.1} s",
                        p.in_flight,
                        d.as_secs_f64()
                    ),
                )
                .threshold(p.stall_limit.as_secs_f64()),
            );
            summary = format!(
                "{} stopped producing tokens: {} requests in flight, none progressed for {:.1} s",
                p.id,
                p.in_flight,
                d.as_secs_f64()
            );
        } else if stuck_since.is_some() {
            summary = format!("{} reports queued work but generates no tokens", p.id);
        } else {
            summary = format!("{}'s canary got no first token and nothing completes", p.id);
        }
        if let Some((_, reason)) = p.canary_stuck {
            facts.push(Fact::new(
                "canary_no_first_token",
                1.0,
                "canary",
                format!("the synthetic canary got {reason}"),
            ));
        }
        facts.push(Fact::new(
            "completions_recent",
            p.since_healthy.completed as f64,
            "requests",
            format!(
                "{} completions and {} attempts ended in the recent window",
                p.since_healthy.completed, p.since_healthy.requests
            ),
        ));
        if let Some(b) = p.backend {
            facts.extend(server_queue(b));
            if let Some(g) = b.generation_tokens_per_s {
                facts.push(
                    Fact::new(
                        "backend_generation_tokens_per_s",
                        g,
                        "tokens/s",
                        format!("the server generates {g:.1} tokens/s"),
                    )
                    .threshold(0.0),
                );
            }
            if let Some(steps) = b.engine_steps_per_s {
                facts.push(Fact::new(
                    "backend_engine_steps_per_s",
                    steps,
                    "steps/s",
                    format!("the engine steps {steps:.1} times/s"),
                ));
            }
        }
        if p.health_endpoint_ok == Some(true) {
            summary.push_str("; its own health endpoint still answers 200");
            facts.push(Fact::new(
                "health_endpoint",
                200.0,
                "status",
                "the provider's own health endpoint still answers 200".into(),
            ));
        }
        Some(Finding {
            mode: Mode::BatchQueueDeadlock,
            subject: p.id.to_owned(),
            provider: Some(p.id.to_owned()),
            severity: Severity::Critical,
            onset_unix_ms: clock.ms(onset),
            summary,
            facts,
            action: "Candor ejected the provider and failed over the requests that had no \
                     token yet; restart the inference engine (a /health probe will not, it \
                     still answers 200) and check its logs for a hung scheduler or engine core"
                .into(),
            root_cause: None,
        })
    }

    /// Error bursts, rate limiting, connection failures and mid-stream resets in the recent
    /// window. While work queues at the server (or the model is over capacity), attempts
    /// that waited out their first-token limit there are the queue's and do not count: what
    /// made the queue — a hang, a slowdown, a KV shortage, too much traffic — is named by its
    /// own detector; 5xx answers still count.
    fn ordinary(&mut self, p: &ProviderInput<'_>, clock: &Clock, now: Instant) -> Vec<Finding> {
        let w = p.since_healthy;
        let queueing = p.queued_lately();
        let mut out = Vec::new();
        for (i, class) in ErrorClass::ALL.into_iter().enumerate() {
            let rule = Rule::of(class);
            let ((n, of), run) = match class {
                ErrorClass::Server => (w.server_errors(queueing), p.failure_run.counted(queueing)),
                _ => ((w.errors_of(class), w.requests), 0),
            };
            let t = Tally {
                n,
                of,
                run,
                queue_timeouts: (class == ErrorClass::Server && queueing).then_some(w.timed_out),
            };
            let onset = self.errors[i].update(now, n > 0);
            let in_a_row = t.in_a_row();
            // A window too small to judge a share is judged when most of it failed: at light
            // load, routing cools a provider down after a few failures and it then gets no
            // traffic to add to the window (3 of 4 attempts failing is a burst all the same).
            let judged = of >= MIN_ATTEMPTS || 2 * n > of;
            let by_share = judged && n >= rule.least && t.share() >= rule.min_share;
            if !(by_share || in_a_row) {
                continue;
            }
            let onset = onset
                .into_iter()
                .chain(p.failure_run.since.filter(|_| in_a_row))
                .min()
                .unwrap_or(now);
            out.push(rule.finding(p.id, &t, clock.ms(onset)));
        }
        out
    }
}

/// What one class of ordinary failure counted in the window.
struct Tally {
    /// Failures, and the attempts they are a share of.
    n: u64,
    of: u64,
    /// Server failures in a row (0 for the other classes).
    run: u32,
    /// For server failures at a queueing server: the first-token timeouts left out.
    queue_timeouts: Option<u64>,
}

impl Tally {
    fn share(&self) -> f64 {
        rate(self.n, self.of)
    }

    /// Enough server failures in a row to be a burst whatever the share.
    fn in_a_row(&self) -> bool {
        self.run >= IN_A_ROW
    }
}

/// How one class of ordinary failure is judged and named.
struct Rule {
    mode: Mode,
    /// Failures in the window before the share is judged.
    least: u64,
    /// Share of attempts that is a finding, and one that is critical.
    min_share: f64,
    critical: f64,
    what: &'static str,
    action: &'static str,
}

impl Rule {
    fn of(class: ErrorClass) -> Rule {
        match class {
            ErrorClass::RateLimited => Rule {
                mode: Mode::RateLimited,
                least: 3,
                min_share: 0.1,
                critical: 0.5,
                what: "answered 429 Too Many Requests",
                action: "Candor honours retry-after and routes around it; raise the provider's \
                         quota or spread the load over more keys or providers",
            },
            ErrorClass::Connection => Rule {
                mode: Mode::ConnectionFailures,
                least: 3,
                min_share: 0.2,
                critical: 0.5,
                what: "could not be connected to",
                action: "Candor retries elsewhere and ejects after consecutive failures; check \
                         the provider's process, network path and DNS",
            },
            ErrorClass::MidStreamReset => Rule {
                mode: Mode::MidStreamResets,
                least: 2,
                min_share: 0.05,
                critical: 0.25,
                what: "broke streams after their first token",
                action: "streams cannot be failed over once tokens reached the client; check \
                         the provider's proxies and idle timeouts and its logs for crashes",
            },
            ErrorClass::Server => Rule {
                mode: Mode::ErrorBurst,
                least: 3,
                min_share: 0.2,
                critical: 0.5,
                what: "failed with server errors or timeouts",
                action: "Candor retries within its budget and ejects the provider when \
                         failures persist; check the provider's logs",
            },
        }
    }

    /// The finding for provider `id` from what its window counted, with `onset` (Unix ms).
    fn finding(&self, id: &str, t: &Tally, onset_unix_ms: i64) -> Finding {
        let (n, of, run, share) = (t.n, t.of, t.run, t.share());
        let in_a_row = t.in_a_row();
        let mut summary = format!(
            "{id} {}: {n} of the last {of} attempts ({:.0} %)",
            self.what,
            share * 100.0
        );
        let mut facts = vec![
            Fact::new(
                "failure_share",
                share,
                "ratio",
                format!("{n} of {of} attempts"),
            )
            .threshold(self.min_share),
        ];
        if let Some(left_out) = t.queue_timeouts {
            // The marker that these are the server's own answers (see
            // `capacity::load_explains`), present even when no timeout was left out.
            facts.push(Fact::new(
                QUEUE_TIMEOUTS_LEFT_OUT,
                left_out as f64,
                "attempts",
                format!(
                    "{left_out} attempts that waited out their first-token limit in its queue \
                     are not counted"
                ),
            ));
            if left_out > 0 {
                summary.push_str(&format!(
                    " it answered (besides {left_out} that waited out their first-token limit \
                     in its queue)"
                ));
            }
        }
        if in_a_row {
            summary.push_str(&format!("; the last {run} in a row"));
            facts.push(
                Fact::new(
                    "server_failures_in_a_row",
                    f64::from(run),
                    "attempts",
                    format!("its last {run} attempts all failed"),
                )
                .threshold(f64::from(IN_A_ROW)),
            );
        }
        Finding {
            mode: self.mode,
            subject: id.to_owned(),
            provider: Some(id.to_owned()),
            severity: if share >= self.critical || in_a_row {
                Severity::Critical
            } else {
                Severity::Warning
            },
            onset_unix_ms,
            summary,
            facts,
            action: self.action.into(),
            root_cause: None,
        }
    }
}

/// What the server's own metrics say waits and runs at it (and how full its KV cache is).
pub(super) fn server_queue(b: &Backend) -> Option<Fact> {
    let r = &b.reading;
    let (q, run) = (r.queue?, r.running?);
    let kv = r
        .kv_usage
        .map(|k| format!(", its KV cache {:.0} % full", k * 100.0))
        .unwrap_or_default();
    Some(Fact::new(
        "backend_queue",
        q,
        "requests",
        format!("the server reports {q:.0} waiting and {run:.0} running{kv}"),
    ))
}

/// The last finding of a detector, while younger than `hold`: once Candor moves traffic away
/// the symptoms fade while the cause may remain, so a finding stands until the provider has
/// carried its (reduced) share cleanly for a while.
fn held(last: Option<&(Finding, Instant)>, hold: Duration, now: Instant) -> Option<Finding> {
    last.filter(|(_, at)| now.saturating_duration_since(*at) <= hold)
        .map(|(f, _)| f.clone())
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}
