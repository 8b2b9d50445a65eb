//! Canary probes: the request each sends (explicit sampling parameters, streamed, usage
//! asked for) and the judgement of what came back — pass, or fail with the signal that
//! moved and the reason in words.

use serde_json::{Value, json};

use super::descriptors::{self, Ask};
use super::schema;
use crate::config::{Builtin, CanaryConfig, CustomProbe, Expect};
use crate::health::baseline::learning_rate;

/// Bytes of an answer quoted in a reason.
const EXCERPT_BYTES: usize = 120;
/// Seed every canary sends: answers are comparable from run to run.
const SEED: u64 = 7;
/// A failing answer shorter than this share of repeated 4-grams is not a repetition loop.
const REPETITION: f64 = 0.5;
/// Whisper's degenerate-segment threshold on the compression ratio.
const COMPRESSION: f64 = 2.4;
/// Letters outside the Latin script an English answer may carry (reference §9: ≥ 99 %).
const FOREIGN: f64 = 0.01;
/// Reported prompt tokens below this share of the gateway's estimate are a truncation.
const TRUNCATED_VS_ESTIMATE: f64 = 0.5;
/// …or below this share of what the provider reported for the same prompt before.
const TRUNCATED_VS_BASELINE: f64 = 0.9;
/// Output diversity (0 = every repeat identical, 1 = all distinct) above the baseline by
/// this much means the sampler no longer honours the temperature.
const DIVERSITY_RISE: f64 = 0.5;

/// What a probe checks.
#[derive(Debug, Clone)]
pub enum Check {
    /// The normalised answer equals this.
    Exact(String),
    /// The answer matches this.
    Regex(regex::Regex),
    /// The answer is JSON matching this schema.
    Schema(Value),
    /// The answer is in Latin script (every probe checks it; this one checks only it).
    Script,
    /// The needle comes back and the prompt was counted whole.
    Needle(String),
    /// Repeats stay as alike as they used to.
    Diversity,
}

/// One probe: what to send and what to expect.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Name in results.
    pub name: String,
    /// The request body (without `model`).
    pub body: Value,
    /// What the answer must satisfy.
    pub check: Check,
    /// Times the request is sent per run (k for the temperature probe).
    pub repeats: u32,
    /// Runs every this many intervals.
    pub every: u32,
    /// Models it applies to (empty: all).
    pub models: Vec<String>,
    /// What descriptors need to know about the request.
    pub ask: Ask,
}

/// What one request of a probe got back.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// The answer's text.
    pub text: String,
    /// Finish reason.
    pub finish_reason: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
}

/// The verdict on one run of a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Passed.
    pub pass: bool,
    /// The signal that failed (`wrong_answer`, `invalid_json`, `unexpected_script`, …).
    pub signal: Option<&'static str>,
    /// In words.
    pub reason: String,
    /// Diversity of the repeats, for the temperature probe.
    pub diversity: Option<f64>,
}

impl Verdict {
    fn pass(reason: impl Into<String>) -> Verdict {
        Verdict {
            pass: true,
            signal: None,
            reason: reason.into(),
            diversity: None,
        }
    }

    fn fail(signal: &'static str, reason: impl Into<String>) -> Verdict {
        Verdict {
            pass: false,
            signal: Some(signal),
            reason: reason.into(),
            diversity: None,
        }
    }
}

/// What a probe remembers about one provider between runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    /// Prompt tokens the provider reported the last time the truncation probe passed.
    pub prompt_tokens: Option<u64>,
    /// The diversity of the temperature probe's repeats when it passed (running mean).
    pub diversity: Option<f64>,
    /// Runs behind the diversity mean.
    pub runs: u32,
}

/// The probe set `cfg` asks for.
pub fn probes(cfg: &CanaryConfig) -> Vec<Probe> {
    let mut out: Vec<Probe> = cfg.builtin.iter().map(|b| builtin(*b, cfg)).collect();
    out.extend(cfg.probes.iter().map(custom));
    out
}

fn request(prompt: &str, max_tokens: u32, temperature: f64) -> Value {
    json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": 1.0,
        "seed": SEED,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

fn probe(name: &str, body: Value, check: Check, prompt_chars: usize) -> Probe {
    let max_tokens = body["max_tokens"].as_u64();
    Probe {
        name: name.to_owned(),
        ask: Ask {
            wants_json: body.get("response_format").is_some(),
            max_tokens,
            prompt_tokens_estimate: Some(descriptors::estimate_tokens(prompt_chars as u64, 1)),
        },
        body,
        check,
        repeats: 1,
        every: 1,
        models: Vec::new(),
    }
}

fn builtin(b: Builtin, cfg: &CanaryConfig) -> Probe {
    let name = b.name();
    match b {
        Builtin::KnownAnswer => {
            let prompt = "What is 17 + 25? Answer with the number only.";
            probe(
                name,
                request(prompt, 8, 0.0),
                Check::Exact("42".into()),
                prompt.len(),
            )
        }
        Builtin::JsonSchema => {
            let prompt = "Return JSON with the sum of 2 + 3 in the field `sum`.";
            let schema = json!({
                "type": "object",
                "properties": {"sum": {"type": "integer"}},
                "required": ["sum"],
            });
            let mut body = request(prompt, 32, 0.0);
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "sum", "schema": schema, "strict": true},
            });
            probe(name, body, Check::Schema(schema), prompt.len())
        }
        Builtin::Script => {
            let prompt = "Write one short sentence in English about what a cache does.";
            probe(name, request(prompt, 48, 0.0), Check::Script, prompt.len())
        }
        Builtin::Truncation => {
            let prompt = truncation_prompt(cfg.truncation_tokens);
            let len = prompt.chars().count();
            probe(
                name,
                request(&prompt, 8, 0.0),
                Check::Needle(NEEDLE.into()),
                len,
            )
        }
        Builtin::Temperature => {
            let prompt = "Describe a key-value cache in one sentence.";
            let mut p = probe(
                name,
                request(prompt, 32, 0.0),
                Check::Diversity,
                prompt.len(),
            );
            p.repeats = cfg.temperature_repeats;
            p.every = cfg.temperature_every;
            p
        }
    }
}

/// The word the truncation probe hides at the very start of its prompt.
const NEEDLE: &str = "marmalade";
const FILLER: &str = "The cache keeps keys and values for every token it has seen so far. ";

/// "Repeat the first word" with the needle first and filler up to `tokens` (estimated).
fn truncation_prompt(tokens: u32) -> String {
    let head = format!("Repeat the first word of this text: {NEEDLE} ");
    let want = (tokens as usize * 4).saturating_sub(head.len() + 60);
    let mut prompt = head;
    while prompt.len() < want {
        prompt.push_str(FILLER);
    }
    prompt.push_str("\nAnswer with that one word only.");
    prompt
}

fn custom(p: &CustomProbe) -> Probe {
    let mut body = request(&p.prompt, p.max_tokens, p.temperature);
    let check = match &p.expect {
        Expect::Exact(e) => Check::Exact(e.clone()),
        Expect::Regex(r) => Check::Regex(r.clone()),
        Expect::Schema(s) => {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": p.name, "schema": s},
            });
            Check::Schema(s.clone())
        }
    };
    let mut out = probe(&p.name, body, check, p.prompt.chars().count());
    out.models.clone_from(&p.models);
    out
}

/// Lower case, surrounding whitespace, quotes and punctuation removed.
pub fn normalise(s: &str) -> String {
    s.trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_lowercase()
}

/// Judges a run's `outputs` (one per repeat) against `probe`, with the provider's `memory`
/// of earlier passing runs (updated when this one passes).
pub fn judge(probe: &Probe, outputs: &[Output], memory: &mut Memory) -> Verdict {
    let Some(first) = outputs.first() else {
        return Verdict::fail("no_answer", "no answer came back");
    };
    // Degeneration shows in every probe, whatever it checks.
    for o in outputs {
        if let Some(v) = degenerate(o) {
            return v;
        }
    }
    let text = first.text.trim();
    match &probe.check {
        Check::Exact(want) => {
            let got = normalise(text);
            if got == normalise(want) {
                Verdict::pass(format!("answered “{want}”"))
            } else {
                Verdict::fail(
                    "wrong_answer",
                    format!("answered “{}”, expected “{want}”", excerpt(text)),
                )
            }
        }
        Check::Regex(re) => {
            if re.is_match(text) {
                Verdict::pass(format!("answer matches /{re}/"))
            } else {
                Verdict::fail(
                    "wrong_answer",
                    format!("answer “{}” does not match /{re}/", excerpt(text)),
                )
            }
        }
        Check::Schema(s) => {
            let inner = descriptors::unfence(text).unwrap_or(text);
            match serde_json::from_str::<Value>(inner) {
                Err(e) => Verdict::fail(
                    "invalid_json",
                    format!("answer is not JSON ({e}): “{}”", excerpt(text)),
                ),
                Ok(v) => match schema::mismatch(s, &v) {
                    Some(m) => Verdict::fail(
                        "schema_mismatch",
                        format!("JSON does not match the schema: {m}"),
                    ),
                    None => Verdict::pass("JSON matches the schema"),
                },
            }
        }
        Check::Script => Verdict::pass("answer is in Latin script"),
        Check::Needle(needle) => needle_verdict(probe, first, needle, memory),
        Check::Diversity => diversity_verdict(outputs, memory),
    }
}

/// A repetition loop or unexpected script, whatever the probe asked.
fn degenerate(o: &Output) -> Option<Verdict> {
    let rep = descriptors::seq_rep(&o.text, 4);
    let ratio = descriptors::compression_ratio(&o.text);
    if rep.is_some_and(|r| r >= REPETITION) || ratio.is_some_and(|r| r > COMPRESSION) {
        return Some(Verdict::fail(
            "repetition",
            format!(
                "the answer repeats itself (seq-rep-4 {:.2}{}, finish_reason {}): “{}”",
                rep.unwrap_or(0.0),
                ratio.map_or(String::new(), |r| format!(", compression ratio {r:.1}")),
                o.finish_reason.as_deref().unwrap_or("none"),
                excerpt(&o.text)
            ),
        ));
    }
    let foreign = descriptors::foreign_script(&o.text);
    (foreign > FOREIGN).then(|| {
        Verdict::fail(
            "unexpected_script",
            format!(
                "{:.0} % of the answer's letters are not Latin script in reply to an English prompt: “{}”",
                foreign * 100.0,
                excerpt(&o.text)
            ),
        )
    })
}

fn needle_verdict(probe: &Probe, o: &Output, needle: &str, memory: &mut Memory) -> Verdict {
    let estimate = probe.ask.prompt_tokens_estimate.unwrap_or(0);
    if let Some(reported) = o.prompt_tokens {
        let short_of_estimate = (reported as f64) < estimate as f64 * TRUNCATED_VS_ESTIMATE;
        let short_of_before = memory
            .prompt_tokens
            .is_some_and(|b| (reported as f64) < b as f64 * TRUNCATED_VS_BASELINE);
        if short_of_estimate || short_of_before {
            let before = memory
                .prompt_tokens
                .map_or(String::new(), |b| format!(", {b} before"));
            return Verdict::fail(
                "truncated_prompt",
                format!(
                    "prompt counted as {reported} tokens against the gateway's estimate of {estimate}{before}: the front of the prompt was dropped"
                ),
            );
        }
    }
    if !normalise(&o.text).contains(needle) {
        // Counted whole, the prompt reached the model: the answer itself is wrong. Without
        // a count, a lost needle is the best evidence of truncation there is.
        let (signal, counted) = match o.prompt_tokens {
            Some(r) => (
                "wrong_answer",
                format!(", though the prompt was counted whole ({r} tokens)"),
            ),
            None => ("truncated_prompt", " and no usage was reported".to_owned()),
        };
        return Verdict::fail(
            signal,
            format!(
                "the word at the start of a {estimate}-token prompt did not come back (answered “{}”){counted}",
                excerpt(&o.text)
            ),
        );
    }
    if let Some(r) = o.prompt_tokens {
        memory.prompt_tokens = Some(r);
    }
    Verdict::pass(format!(
        "needle returned; prompt counted as {} tokens (estimate {estimate})",
        o.prompt_tokens.map_or("?".into(), |p| p.to_string())
    ))
}

fn diversity_verdict(outputs: &[Output], memory: &mut Memory) -> Verdict {
    let mut texts: Vec<String> = outputs.iter().map(|o| normalise(&o.text)).collect();
    let k = texts.len();
    texts.sort();
    texts.dedup();
    let d = if k > 1 {
        (texts.len() - 1) as f64 / (k - 1) as f64
    } else {
        0.0
    };
    let base = memory.diversity.unwrap_or(0.0);
    let mut v = if d >= base + DIVERSITY_RISE {
        Verdict::fail(
            "output_diversity",
            format!(
                "{} distinct answers of {k} at temperature 0 (diversity {d:.2}, baseline {base:.2}): the sampler no longer honours the temperature",
                texts.len()
            ),
        )
    } else {
        memory.runs = memory.runs.saturating_add(1);
        let rate = learning_rate(memory.runs, 0.05);
        memory.diversity = Some(base + rate * (d - base));
        Verdict::pass(format!(
            "{} distinct answers of {k} (diversity {d:.2})",
            texts.len()
        ))
    };
    v.diversity = Some(d);
    v
}

/// The start of an answer, for reasons (one truncation rule with the meter's).
pub fn excerpt(s: &str) -> String {
    crate::proxy::meter::truncate(s, EXCERPT_BYTES)
}

#[cfg(test)]
mod tests;
