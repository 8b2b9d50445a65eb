//! The `[canaries]` section: synthetic probes sent to every provider and model on an
//! interval (reference §9), the built-in probe set, and users' own probes with an expected
//! answer, a regex or a JSON schema.

use std::time::Duration;

use serde::Deserialize;

/// The built-in probes (reference §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// A short question with a known answer (exact match after normalisation).
    KnownAnswer,
    /// JSON asked for with a schema (format compliance).
    JsonSchema,
    /// An English prompt whose answer must be Latin script.
    Script,
    /// A needle at the start of a long prompt; `usage.prompt_tokens` against the estimate.
    Truncation,
    /// k repeats at a fixed temperature; output diversity against the baseline.
    Temperature,
}

impl Builtin {
    /// Every built-in probe.
    pub const ALL: [Builtin; 5] = [
        Builtin::KnownAnswer,
        Builtin::JsonSchema,
        Builtin::Script,
        Builtin::Truncation,
        Builtin::Temperature,
    ];

    /// The probe's name.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::KnownAnswer => "known_answer",
            Builtin::JsonSchema => "json_schema",
            Builtin::Script => "script",
            Builtin::Truncation => "truncation",
            Builtin::Temperature => "temperature",
        }
    }
}

/// What a user's probe must answer.
#[derive(Debug, Clone)]
pub enum Expect {
    /// This text, after normalisation (case, surrounding whitespace and punctuation).
    Exact(String),
    /// A regular expression the answer must match somewhere.
    Regex(regex::Regex),
    /// JSON matching this schema.
    Schema(serde_json::Value),
}

/// A user's probe.
#[derive(Debug, Clone)]
pub struct CustomProbe {
    /// Name in results and incidents.
    pub name: String,
    /// The user message.
    pub prompt: String,
    /// What the answer must be.
    pub expect: Expect,
    /// `max_tokens`.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Models it is sent to (empty: all).
    pub models: Vec<String>,
}

/// Canary settings.
#[derive(Debug, Clone)]
pub struct CanaryConfig {
    /// Whether canaries run.
    pub enabled: bool,
    /// How often each provider and model is probed.
    pub interval: Duration,
    /// Longest a probe may take end to end.
    pub timeout: Duration,
    /// The built-in probes that run.
    pub builtin: Vec<Builtin>,
    /// Prompt size of the truncation probe, in estimated tokens.
    pub truncation_tokens: u32,
    /// The temperature probe runs every this many intervals.
    pub temperature_every: u32,
    /// Repeats of the temperature probe.
    pub temperature_repeats: u32,
    /// Users' own probes.
    pub probes: Vec<CustomProbe>,
    /// Span of real traffic the descriptor rates and distributions are judged over.
    pub traffic_window: Duration,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            builtin: Builtin::ALL.to_vec(),
            truncation_tokens: 1500,
            temperature_every: 5,
            temperature_repeats: 5,
            probes: Vec::new(),
            traffic_window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCanaries {
    enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    builtin: Option<Vec<Builtin>>,
    truncation_tokens: Option<u32>,
    temperature_every: Option<u32>,
    temperature_repeats: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    traffic_window: Option<Duration>,
    #[serde(default)]
    probe: Vec<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: String,
    prompt: String,
    expect_exact: Option<String>,
    expect_regex: Option<String>,
    expect_schema: Option<toml::Value>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    #[serde(default)]
    models: Vec<String>,
}

impl RawCanaries {
    pub(crate) fn validate(self, problems: &mut Vec<String>) -> CanaryConfig {
        let d = CanaryConfig::default();
        let cfg = CanaryConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            interval: self.interval.unwrap_or(d.interval),
            timeout: self.timeout.unwrap_or(d.timeout),
            builtin: self.builtin.unwrap_or(d.builtin),
            truncation_tokens: self.truncation_tokens.unwrap_or(d.truncation_tokens),
            temperature_every: self.temperature_every.unwrap_or(d.temperature_every),
            temperature_repeats: self.temperature_repeats.unwrap_or(d.temperature_repeats),
            traffic_window: self.traffic_window.unwrap_or(d.traffic_window),
            probes: validate_probes(self.probe, problems),
        };
        if cfg.interval < Duration::from_secs(1) || cfg.timeout.is_zero() {
            problems.push("canaries: interval must be at least 1s and timeout above 0".into());
        }
        if !(64..=1_000_000).contains(&cfg.truncation_tokens) {
            problems.push(format!(
                "canaries.truncation_tokens: between 64 and 1000000, got {}",
                cfg.truncation_tokens
            ));
        }
        if cfg.temperature_every == 0 || !(2..=20).contains(&cfg.temperature_repeats) {
            problems.push(
                "canaries: temperature_every must be at least 1 and temperature_repeats 2..=20"
                    .into(),
            );
        }
        if cfg.traffic_window < Duration::from_secs(1) {
            problems.push("canaries.traffic_window: at least 1s".into());
        }
        cfg
    }
}

fn validate_probes(raw: Vec<RawProbe>, problems: &mut Vec<String>) -> Vec<CustomProbe> {
    let mut out: Vec<CustomProbe> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("canaries.probe[{i}]");
        if p.name.trim().is_empty() || p.prompt.trim().is_empty() {
            problems.push(format!("{path}: name and prompt must not be empty"));
        }
        if out.iter().any(|o| o.name == p.name) || Builtin::ALL.iter().any(|b| b.name() == p.name) {
            problems.push(format!("{path}.name: {:?} is already taken", p.name));
        }
        let expect = match (p.expect_exact, p.expect_regex, p.expect_schema) {
            (Some(e), None, None) => Expect::Exact(e),
            (None, Some(r), None) => match regex::Regex::new(&r) {
                Ok(re) => Expect::Regex(re),
                Err(e) => {
                    problems.push(format!("{path}.expect_regex: {e}"));
                    continue;
                }
            },
            (None, None, Some(s)) => match serde_json::to_value(&s) {
                Ok(v) if v.is_object() => Expect::Schema(v),
                _ => {
                    problems.push(format!(
                        "{path}.expect_schema: must be a table (a JSON schema)"
                    ));
                    continue;
                }
            },
            _ => {
                problems.push(format!(
                    "{path}: give exactly one of expect_exact, expect_regex, expect_schema"
                ));
                continue;
            }
        };
        let temperature = p.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            problems.push(format!(
                "{path}.temperature: between 0 and 2, got {temperature}"
            ));
        }
        out.push(CustomProbe {
            name: p.name,
            prompt: p.prompt,
            expect,
            max_tokens: p.max_tokens.unwrap_or(64).max(1),
            temperature,
            models: p.models,
        });
    }
    out
}
