//! The `[routing]` and `[scrape]` sections: which policy picks providers, how providers are
//! ejected and recovered, the retry budget, hedging, and how backend metrics are polled.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How the router picks among the providers serving a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Candor's: predicted completion within the targets, health state, KV pressure and
    /// price, power of two choices over the weights.
    Candor,
    /// Rotate through the providers.
    RoundRobin,
    /// Fewest requests in flight.
    LeastBusy,
    /// LiteLLM's default: random, cooling a provider down for 5 s when more than half of
    /// the current minute's requests to it failed.
    ErrorCooldown,
}

impl Policy {
    /// The name used in config, headers and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Candor => "candor",
            Policy::RoundRobin => "round_robin",
            Policy::LeastBusy => "least_busy",
            Policy::ErrorCooldown => "error_cooldown",
        }
    }

    /// Every policy, Candor's first.
    pub const ALL: [Policy; 4] = [
        Policy::Candor,
        Policy::RoundRobin,
        Policy::LeastBusy,
        Policy::ErrorCooldown,
    ];
}

/// When a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// The chosen provider's P95 TTFT (falling back to the TTFT target without data).
    P95,
    /// A fixed delay.
    Fixed(Duration),
}

/// Hedging for one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    /// After how long without a first token the duplicate goes out.
    pub delay: HedgeDelay,
    /// Largest share of the model's requests that may be hedged.
    pub budget: f64,
}

/// Validated routing configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// The policy.
    pub policy: Policy,
    /// Retries allowed as a share of requests (on top of `min_retries_per_s`).
    pub retry_budget: f64,
    /// Retries always allowed per second, however few requests there are.
    pub min_retries_per_s: f64,
    /// First retry backoff; doubles per retry, with full jitter.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Consecutive upstream failures that eject a provider (Envoy's `consecutive_5xx`).
    pub consecutive_failures: u32,
    /// First ejection time; multiplied by the number of ejections in a row.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of a model's providers ejected at once (rounded up, never all).
    pub max_ejected_share: f64,
    /// Probe successes in a row that bring a recovering provider back.
    pub probe_successes: u32,
    /// No token for this long while requests are in flight: the provider is stalled.
    pub stall_after: Duration,
    /// A signal below this share of its reference (baseline or peers) degrades a provider.
    pub degrade_ratio: f64,
    /// How much price counts against speed (0: ignore price).
    pub price_weight: f64,
    /// Hedging, per model.
    pub hedge: BTreeMap<String, Hedge>,
    /// Seed of the random tie-breaks and backoff jitter (absent: drawn at start). Fixed, a
    /// scenario run in virtual time routes the same way every time.
    pub seed: Option<u64>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            policy: Policy::Candor,
            retry_budget: 0.2,
            min_retries_per_s: 10.0,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(250),
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
            probe_successes: 3,
            stall_after: Duration::from_secs(2),
            degrade_ratio: 0.8,
            price_weight: 0.1,
            hedge: BTreeMap::new(),
            seed: None,
        }
    }
}

/// Validated scrape configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScrapeConfig {
    /// Poll interval.
    pub interval: Duration,
    /// Per-scrape timeout.
    pub timeout: Duration,
    /// Older values count as unknown.
    pub stale_after: Duration,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        ScrapeConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            stale_after: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouting {
    policy: Option<Policy>,
    retry_budget: Option<f64>,
    min_retries_per_s: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    backoff_base: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    consecutive_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    base_ejection: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_ejection: Option<Duration>,
    max_ejected_share: Option<f64>,
    probe_successes: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    stall_after: Option<Duration>,
    degrade_ratio: Option<f64>,
    price_weight: Option<f64>,
    #[serde(default)]
    hedge: Vec<RawHedge>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHedge {
    model: String,
    delay: Option<String>,
    budget: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScrape {
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_after: Option<Duration>,
}

impl RawRouting {
    pub(crate) fn validate(self, problems: &mut Vec<String>) -> RoutingConfig {
        let d = RoutingConfig::default();
        let mut share = |path: &str, v: Option<f64>, default: f64, max: f64| {
            let v = v.unwrap_or(default);
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                problems.push(format!(
                    "routing.{path}: must be between 0 and {max}, got {v}"
                ));
            }
            v
        };
        let cfg = RoutingConfig {
            policy: self.policy.unwrap_or(d.policy),
            retry_budget: share("retry_budget", self.retry_budget, d.retry_budget, 1.0),
            min_retries_per_s: share(
                "min_retries_per_s",
                self.min_retries_per_s,
                d.min_retries_per_s,
                1e6,
            ),
            max_ejected_share: share(
                "max_ejected_share",
                self.max_ejected_share,
                d.max_ejected_share,
                1.0,
            ),
            degrade_ratio: share("degrade_ratio", self.degrade_ratio, d.degrade_ratio, 1.0),
            price_weight: share("price_weight", self.price_weight, d.price_weight, 10.0),
            backoff_base: self.backoff_base.unwrap_or(d.backoff_base),
            backoff_max: self.backoff_max.unwrap_or(d.backoff_max),
            consecutive_failures: self.consecutive_failures.unwrap_or(d.consecutive_failures),
            base_ejection: self.base_ejection.unwrap_or(d.base_ejection),
            max_ejection: self.max_ejection.unwrap_or(d.max_ejection),
            probe_successes: self.probe_successes.unwrap_or(d.probe_successes),
            stall_after: self.stall_after.unwrap_or(d.stall_after),
            hedge: BTreeMap::new(),
            seed: self.seed,
        };
        if cfg.consecutive_failures == 0 || cfg.probe_successes == 0 {
            problems
                .push("routing: consecutive_failures and probe_successes must be above 0".into());
        }
        if cfg.base_ejection.is_zero() || cfg.stall_after.is_zero() {
            problems.push("routing: base_ejection and stall_after must be above 0".into());
        }
        if cfg.max_ejection < cfg.base_ejection {
            problems.push("routing.max_ejection: must not be below base_ejection".into());
        }
        if cfg.backoff_max < cfg.backoff_base {
            problems.push("routing.backoff_max: must not be below backoff_base".into());
        }
        let mut hedge = BTreeMap::new();
        for (i, h) in self.hedge.into_iter().enumerate() {
            let path = format!("routing.hedge[{i}]");
            let delay = match h.delay.as_deref() {
                None | Some("p95") => HedgeDelay::P95,
                Some(text) => match humantime::parse_duration(text) {
                    Ok(d) if !d.is_zero() => HedgeDelay::Fixed(d),
                    _ => {
                        problems.push(format!(
                            "{path}.delay: {text:?} is neither \"p95\" nor a duration like \"300ms\""
                        ));
                        HedgeDelay::P95
                    }
                },
            };
            let budget = h.budget.unwrap_or(0.1);
            if !(budget.is_finite() && budget > 0.0 && budget <= 1.0) {
                problems.push(format!("{path}.budget: must be a fraction in (0, 1]"));
            }
            if hedge
                .insert(h.model.clone(), Hedge { delay, budget })
                .is_some()
            {
                problems.push(format!("{path}.model: {:?} is hedged twice", h.model));
            }
        }
        RoutingConfig { hedge, ..cfg }
    }
}

impl RawScrape {
    pub(crate) fn validate(self, problems: &mut Vec<String>) -> ScrapeConfig {
        let d = ScrapeConfig::default();
        let interval = self.interval.unwrap_or(d.interval);
        let cfg = ScrapeConfig {
            interval,
            timeout: self.timeout.unwrap_or(d.timeout.min(interval)),
            stale_after: self.stale_after.unwrap_or(interval * 3),
        };
        if cfg.interval.is_zero() || cfg.timeout.is_zero() {
            problems.push("scrape: interval and timeout must be above 0".into());
        }
        if cfg.stale_after < cfg.interval {
            problems.push("scrape.stale_after: must not be below scrape.interval".into());
        }
        cfg
    }
}
