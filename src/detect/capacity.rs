//! Capacity exhausted: a model's demand beyond what its providers can serve. Every provider
//! still in rotation queues at once (the server's own waiting count, or first tokens far
//! behind its baseline) and users feel it (a falling share within the targets). That is one
//! condition of the model, not a fault of each provider: the findings the load explains on
//! the queueing providers (stalls their caches do not confirm, timeouts, broken streams,
//! output-length drift) are folded into it as its consequences, and when a provider fault
//! took capacity away (a hang, an error storm, a slowdown) the shortfall is folded into that
//! fault instead — one incident per cause. Pure: the health task hands each model's
//! providers in with `now`.

use std::time::Duration;

use tokio::time::Instant;

use super::cusum::Since;
use super::provider::{QUEUE_TIMEOUTS_LEFT_OUT, STEP_RATIO};
use super::{Clock, Fact, Finding, Mode, Severity};

/// How long every provider must queue before the model is called over capacity: a burst of
/// arrivals that the queue absorbs in a few seconds is not.
const SUSTAIN: Duration = Duration::from_secs(3);
/// Once called, the condition holds while users still feel it and at least this share of
/// the providers in rotation still queue, or some are out of rotation (ejections and drained
/// queues come and go under overload; the shortfall does not).
const HOLD_QUEUEING: f64 = 0.5;
/// A first token this many times its baseline is a queue…
const QUEUE_TTFT_MULT: f64 = 2.0;
/// …when it is also later by this share of the TTFT target.
const QUEUE_TTFT_SHARE: f64 = 0.25;
/// Users feel it: fewer than this share of the model's recent requests within the targets.
const FELT_WITHIN: f64 = 0.9;
/// Requests in the model's recent window before the share is judged.
const MIN_REQUESTS: u64 = 10;
/// Quality signals that follow the traffic mix (which answers finish in time) rather than
/// the model's outputs: under overload they move with the load.
const LOAD_SHAPED_QUALITY: [&str; 4] = [
    "output_tokens_drift",
    "compression_ratio_drift",
    "finish_max_tokens_share",
    "finish_context_limit_share",
];

/// One provider of the model at a tick.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Provider id.
    pub id: &'a str,
    /// In rotation (healthy or degraded), as opposed to ejected or recovering.
    pub serving: bool,
    /// The server's own count of waiting requests, from a fresh scrape.
    pub waiting: Option<f64>,
    /// Requests Candor has in flight to it.
    pub in_flight: i64,
    /// Median TTFT in the recent window, s.
    pub ttft_p50: Option<f64>,
    /// Its quickest learned baseline TTFT (no queue), s.
    pub ttft_baseline: Option<f64>,
    /// Attempts in the recent window, and of those within the targets.
    pub requests: u64,
    /// See `requests`.
    pub within_targets: u64,
    /// Answers completed in the recent window.
    pub completed: u64,
}

impl Member<'_> {
    /// True when the provider is queueing work now.
    pub fn queueing(&self, ttft_target: f64) -> bool {
        let server_says = self.waiting.is_some_and(|w| w >= 1.0);
        let first_tokens_late = match (self.ttft_p50, self.ttft_baseline) {
            (Some(t), Some(b)) => {
                t >= QUEUE_TTFT_MULT * b && t - b >= QUEUE_TTFT_SHARE * ttft_target
            }
            _ => false,
        };
        server_says || first_tokens_late
    }
}

/// What the capacity detector sees of one model at a tick.
#[derive(Debug, Clone)]
pub struct ModelInput<'a> {
    /// The model's name.
    pub model: &'a str,
    /// Its providers.
    pub members: Vec<Member<'a>>,
    /// The TTFT target, s.
    pub ttft_target: f64,
    /// The span of the recent window, for rates.
    pub window: Duration,
}

/// The capacity detector's state for one model.
#[derive(Debug, Clone, Default)]
pub struct CapacityWatch {
    queueing: Since,
    /// When the current episode began, while one is open.
    episode: Option<Instant>,
}

impl CapacityWatch {
    /// Judges the model at `now`: a finding while every provider in rotation has queued for
    /// `SUSTAIN` and fewer than `FELT_WITHIN` of its requests meet the targets.
    pub fn step(&mut self, m: &ModelInput<'_>, clock: &Clock, now: Instant) -> Option<Finding> {
        let serving: Vec<&Member<'_>> = m.members.iter().filter(|p| p.serving).collect();
        let queueing = serving.iter().filter(|p| p.queueing(m.ttft_target)).count();
        let all_queue = !serving.is_empty() && queueing == serving.len();
        let since = self.queueing.update(now, all_queue);
        let requests: u64 = m.members.iter().map(|p| p.requests).sum();
        let within: u64 = m.members.iter().map(|p| p.within_targets).sum();
        let share = within as f64 / requests.max(1) as f64;
        // Users feel it: fewer requests within the targets, or — sooner, since a 30-second
        // share lags a queue that has just formed — every provider's median first token
        // already past the target.
        let late = !serving.is_empty()
            && serving
                .iter()
                .all(|p| p.ttft_p50.is_some_and(|t| t > m.ttft_target));
        let felt = requests >= MIN_REQUESTS && (share < FELT_WITHIN || late);
        let onset = match (self.episode, since) {
            (Some(start), _)
                if felt
                    && (queueing as f64 >= HOLD_QUEUEING * serving.len() as f64
                        || serving.len() < m.members.len()) =>
            {
                start
            }
            (_, Some(t)) if felt && now.saturating_duration_since(t) >= SUSTAIN => t,
            _ => {
                self.episode = None;
                return None;
            }
        };
        self.episode = Some(onset);
        Some(self.finding(m, &serving, share, clock.ms(onset)))
    }

    fn finding(
        &self,
        m: &ModelInput<'_>,
        serving: &[&Member<'_>],
        share: f64,
        onset_unix_ms: i64,
    ) -> Finding {
        let secs = m.window.as_secs_f64().max(1.0);
        let served: u64 = serving.iter().map(|p| p.completed).sum();
        let in_flight: i64 = serving.iter().map(|p| p.in_flight).sum();
        let waiting: Vec<String> = serving
            .iter()
            .map(|p| match (p.waiting, p.ttft_p50) {
                (Some(w), _) => format!("{} {w:.0} waiting", p.id),
                (None, Some(t)) => format!("{} first tokens after {:.0} ms", p.id, t * 1000.0),
                (None, None) => p.id.to_owned(),
            })
            .collect();
        let out = m.members.len() - serving.len();
        let facts = vec![
            Fact::new(
                "providers_queueing",
                serving.len() as f64,
                "providers",
                format!(
                    "every provider in rotation is queueing: {}{}",
                    waiting.join(", "),
                    if out > 0 {
                        format!(" ({out} more out of rotation)")
                    } else {
                        String::new()
                    }
                ),
            ),
            Fact::new(
                "served_per_s",
                served as f64 / secs,
                "requests/s",
                format!(
                    "they complete {:.1} requests/s with {in_flight} in flight",
                    served as f64 / secs
                ),
            ),
            Fact::new(
                "within_targets_share",
                share,
                "ratio",
                format!(
                    "{:.0} % of the model's recent requests met the targets",
                    share * 100.0
                ),
            )
            .threshold(FELT_WITHIN),
        ];
        Finding {
            mode: Mode::CapacityExhausted,
            subject: m.model.to_owned(),
            provider: None,
            severity: if share < 0.5 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            onset_unix_ms,
            summary: format!(
                "{} is over capacity: demand exceeds what its {} provider{} in rotation can \
                 serve ({:.0} % of requests within the targets); the providers are loaded, \
                 not broken",
                m.model,
                serving.len(),
                if serving.len() == 1 { "" } else { "s" },
                share * 100.0
            ),
            facts,
            action: "add replicas or providers for the model, or lower the offered load \
                     (server.max_in_flight sheds the excess at once with 503 and \
                     retry-after); do not restart or drain the providers: they are serving at \
                     their capacity"
                .into(),
            root_cause: None,
        }
    }
}

/// Peers decoding at least this share of their own baselines are "as usual": a provider
/// slow against them is slow on its own, whatever the load.
const PEERS_AS_USUAL: f64 = 0.9;

/// True when `f`, found on a provider of a model over capacity, is what the load explains
/// rather than a fault of its own. `common` says at least half of the model's providers
/// (two or more) have a finding of the same kind: what every provider shows at once is the
/// traffic's.
/// - Errors: an error burst counted with the first-token timeouts of a server whose queue
///   Candor could not see; answered 5xx (the timeouts left out), 429s and broken streams
///   only when common — on one provider of several they are its own.
/// - On a queueing provider, also stalls its server's cache does not confirm, a slowdown its
///   peers share or that has no peer to compare with, and output drift that follows which
///   answers finish in time.
fn load_explains(f: &Finding, queueing: bool, common: bool) -> bool {
    match f.mode {
        Mode::ErrorBurst => common || !f.facts.iter().any(|x| x.signal == QUEUE_TIMEOUTS_LEFT_OUT),
        Mode::MidStreamResets | Mode::RateLimited => common,
        Mode::TailLatency => queueing,
        Mode::KvCacheThrashing => {
            queueing
                && !f.facts.iter().any(|x| {
                    (x.signal == "kv_cache_usage" && x.threshold.is_some_and(|t| x.value >= t))
                        || (x.signal == "preemptions_per_s" && x.value > 0.0)
                })
        }
        Mode::HardwareDegradation => {
            queueing
                && !f.facts.iter().any(|x| {
                    (x.signal == "peer_decode_ratio" && x.value >= PEERS_AS_USUAL)
                        || x.signal == STEP_RATIO
                })
        }
        Mode::SilentQualityDegradation => {
            queueing
                && f.facts
                    .iter()
                    .all(|x| LOAD_SHAPED_QUALITY.contains(&x.signal))
        }
        _ => false,
    }
}

/// True when `f` takes capacity away on its own: the provider hangs, cannot be reached, or
/// slows while its peers do not.
fn takes_capacity(f: &Finding) -> bool {
    matches!(
        f.mode,
        Mode::BatchQueueDeadlock | Mode::HardwareDegradation | Mode::ConnectionFailures
    )
}

/// One provider's findings this tick, and whether it queues and is in rotation.
#[derive(Debug)]
pub struct Folding<'a> {
    /// Its findings; those folded into a cause are removed.
    pub findings: &'a mut Vec<Finding>,
    /// Queueing now.
    pub queueing: bool,
    /// In rotation.
    pub serving: bool,
}

/// Folds one model's findings to one per cause. With `capacity` (the model is over
/// capacity), the findings the load explains become its consequences; when a provider fault
/// took capacity away before the shortfall began (a hang, an unreachable server, a slowdown
/// its peers do not share), the shortfall and those consequences attach to that fault's
/// finding instead and the capacity finding is not raised. Returns the capacity finding when
/// it stands on its own.
pub fn fold(capacity: Option<Finding>, members: &mut [Folding<'_>]) -> Option<Finding> {
    let mut capacity = capacity?;
    let with = |mode: Mode, members: &[Folding<'_>]| {
        members
            .iter()
            .filter(|m| m.findings.iter().any(|f| f.mode == mode))
            .count()
    };
    let common: Vec<Mode> = [Mode::ErrorBurst, Mode::MidStreamResets, Mode::RateLimited]
        .into_iter()
        .filter(|&mode| {
            let n = with(mode, members);
            n >= 2 && 2 * n >= members.len()
        })
        .collect();
    for m in members.iter_mut() {
        let queueing = m.serving && m.queueing;
        m.findings.retain(|f| {
            let explained = load_explains(f, queueing, common.contains(&f.mode));
            if explained {
                capacity.facts.push(consequence_fact(f));
            }
            !explained
        });
    }
    let cause = members
        .iter_mut()
        .flat_map(|m| m.findings.iter_mut())
        .filter(|f| takes_capacity(f) && f.onset_unix_ms <= capacity.onset_unix_ms)
        .min_by_key(|f| f.onset_unix_ms);
    let Some(cause) = cause else {
        return Some(capacity);
    };
    cause.facts.push(Fact::new(
        "capacity_shortfall",
        1.0,
        "consequence",
        format!("consequence: {}", capacity.summary),
    ));
    cause.facts.extend(
        capacity
            .facts
            .into_iter()
            .filter(|f| f.unit == "consequence" || f.signal == "providers_queueing"),
    );
    cause.summary.push_str(
        "; the providers left cannot carry the load (their queues and timeouts follow from it)",
    );
    None
}

fn consequence_fact(f: &Finding) -> Fact {
    Fact::new(
        "consequence",
        1.0,
        "consequence",
        format!(
            "consequence: {} on {} — {}",
            f.mode.as_str(),
            f.subject,
            f.summary
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(t: Instant) -> Clock {
        Clock {
            at: t,
            unix_ms: 1_000_000,
        }
    }

    fn member(id: &str, waiting: f64, within: u64) -> Member<'_> {
        Member {
            id,
            serving: true,
            waiting: Some(waiting),
            in_flight: 40,
            ttft_p50: Some(3.0),
            ttft_baseline: Some(0.1),
            requests: 40,
            within_targets: within,
            completed: 38,
        }
    }

    fn input<'a>(members: Vec<Member<'a>>) -> ModelInput<'a> {
        ModelInput {
            model: "m",
            members,
            ttft_target: 1.0,
            window: Duration::from_secs(30),
        }
    }

    /// Steps `w` every 500 ms for `secs` and returns the last finding.
    fn run(w: &mut CapacityWatch, m: &ModelInput<'_>, t0: Instant, secs: u64) -> Option<Finding> {
        let mut last = None;
        for i in 0..secs * 2 {
            let now = t0 + Duration::from_millis(500 * i);
            last = w.step(m, &clock(now), now);
        }
        last
    }

    /// A provider in rotation that queues, with `findings`.
    fn queueing(findings: &mut Vec<Finding>) -> Folding<'_> {
        Folding {
            findings,
            queueing: true,
            serving: true,
        }
    }

    fn finding(mode: Mode, subject: &str, onset: i64) -> Finding {
        Finding {
            mode,
            subject: subject.into(),
            provider: Some(subject.into()),
            severity: Severity::Warning,
            onset_unix_ms: onset,
            summary: format!("{} on {subject}", mode.as_str()),
            facts: Vec::new(),
            action: String::new(),
            root_cause: None,
        }
    }

    #[test]
    fn every_provider_queueing_while_users_feel_it_is_one_capacity_finding() {
        let t0 = Instant::now();
        let m = input(vec![member("a", 40.0, 12), member("b", 35.0, 10)]);
        let mut w = CapacityWatch::default();
        // A few seconds of queueing is a burst the queue absorbs.
        assert!(run(&mut w, &m, t0, 2).is_none());
        let f = run(&mut w, &m, t0, 10).expect("over capacity");
        assert_eq!(f.mode, Mode::CapacityExhausted);
        assert_eq!(f.subject, "m");
        assert_eq!(f.provider, None);
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.summary.contains("not broken"), "{}", f.summary);
        assert!(f.facts[0].detail.contains("a 40 waiting"), "{:?}", f.facts);
    }

    #[test]
    fn heavy_traffic_within_the_targets_or_one_idle_provider_is_not_over_capacity() {
        let t0 = Instant::now();
        // Queues everywhere, yet every request meets the targets: heavy, not over.
        let busy = |id| Member {
            ttft_p50: Some(0.4),
            ..member(id, 4.0, 40)
        };
        let heavy = input(vec![busy("a"), busy("b")]);
        assert!(run(&mut CapacityWatch::default(), &heavy, t0, 30).is_none());
        // One provider has room: the router can still place the work.
        let mut idle = member("b", 0.0, 10);
        idle.ttft_p50 = Some(0.1);
        let spare = input(vec![member("a", 40.0, 10), idle]);
        assert!(run(&mut CapacityWatch::default(), &spare, t0, 30).is_none());
    }

    #[test]
    fn the_loads_consequences_fold_into_the_capacity_finding() {
        let capacity = finding(Mode::CapacityExhausted, "m", 100);
        let mut a = vec![
            finding(Mode::ErrorBurst, "a", 120),
            finding(Mode::KvCacheThrashing, "a", 120),
        ];
        let mut b = vec![finding(Mode::HardwareDegradation, "b", 130)];
        let mut members = [queueing(&mut a), queueing(&mut b)];
        let f = fold(Some(capacity), &mut members).expect("stands on its own");
        assert!(a.is_empty() && b.is_empty(), "{a:?} {b:?}");
        let consequences = f.facts.iter().filter(|x| x.signal == "consequence").count();
        assert_eq!(consequences, 3);
    }

    #[test]
    fn one_providers_own_errors_stand_beside_the_capacity_finding_unless_every_provider_has_them() {
        let answered = |mode: Mode, subject: &str| Finding {
            facts: vec![Fact::new(
                QUEUE_TIMEOUTS_LEFT_OUT,
                12.0,
                "attempts",
                String::new(),
            )],
            ..finding(mode, subject, 120)
        };
        let folded = |findings: Vec<Vec<Finding>>| {
            let mut findings = findings;
            let mut members: Vec<Folding<'_>> = findings.iter_mut().map(queueing).collect();
            fold(
                Some(finding(Mode::CapacityExhausted, "m", 100)),
                &mut members,
            )
            .expect("stands on its own");
            findings.into_iter().map(|f| f.len()).collect::<Vec<_>>()
        };
        // One of four answers 500s, one 429s, one breaks streams: each its own fault.
        let own = folded(vec![
            vec![answered(Mode::ErrorBurst, "a")],
            vec![finding(Mode::RateLimited, "b", 120)],
            vec![finding(Mode::MidStreamResets, "c", 120)],
            vec![],
        ]);
        assert_eq!(own, [1, 1, 1, 0]);
        // Timeouts counted where no queue was in sight are the load's.
        assert_eq!(
            folded(vec![vec![finding(Mode::ErrorBurst, "a", 120)], vec![]]),
            [0, 0]
        );
        // Half the providers or more with the same failure: the traffic's.
        let common = folded(vec![
            vec![answered(Mode::ErrorBurst, "a")],
            vec![answered(Mode::ErrorBurst, "b")],
            vec![finding(Mode::RateLimited, "c", 120)],
            vec![],
        ]);
        assert_eq!(common, [0, 0, 1, 0]);
    }

    #[test]
    fn a_shortfall_a_hang_caused_folds_into_the_hang() {
        let capacity = finding(Mode::CapacityExhausted, "m", 200);
        let mut dead = vec![finding(Mode::BatchQueueDeadlock, "a", 100)];
        let mut busy = vec![
            finding(Mode::ErrorBurst, "b", 210),
            finding(Mode::HardwareDegradation, "b", 210),
        ];
        let mut members = [
            Folding {
                findings: &mut dead,
                queueing: false,
                serving: false,
            },
            queueing(&mut busy),
        ];
        assert!(fold(Some(capacity), &mut members).is_none());
        assert!(busy.is_empty(), "{busy:?}");
        assert_eq!(dead.len(), 1);
        assert!(dead[0].summary.contains("cannot carry the load"));
        assert!(
            dead[0]
                .facts
                .iter()
                .any(|x| x.signal == "capacity_shortfall")
        );
        assert_eq!(
            dead[0]
                .facts
                .iter()
                .filter(|x| x.signal == "consequence")
                .count(),
            2
        );
    }

    #[test]
    fn a_slowdown_named_from_its_decode_step_is_not_the_loads() {
        // Named before the queue formed, from a decode step a third slower with nothing
        // waiting: when the model then runs over capacity, the slowdown is the cause.
        let capacity = finding(Mode::CapacityExhausted, "m", 200);
        let mut hw = finding(Mode::HardwareDegradation, "a", 150);
        hw.facts
            .push(Fact::new(STEP_RATIO, 0.7, "ratio", String::new()));
        let mut a = vec![hw];
        let mut b = vec![];
        let mut members = [queueing(&mut a), queueing(&mut b)];
        assert!(fold(Some(capacity), &mut members).is_none());
        assert!(a[0].facts.iter().any(|x| x.signal == "capacity_shortfall"));
    }

    #[test]
    fn a_slowdown_its_peers_do_not_share_is_not_the_loads() {
        let capacity = finding(Mode::CapacityExhausted, "m", 200);
        let mut hw = finding(Mode::HardwareDegradation, "a", 150);
        hw.facts
            .push(Fact::new("peer_decode_ratio", 0.98, "ratio", String::new()));
        let mut a = vec![hw];
        let mut members = [queueing(&mut a)];
        // The slow provider took the capacity away: the shortfall is its consequence.
        assert!(fold(Some(capacity), &mut members).is_none());
        assert_eq!(a.len(), 1);
        assert!(a[0].facts.iter().any(|x| x.signal == "capacity_shortfall"));
    }
}
