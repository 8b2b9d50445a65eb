//! What the simulated model says: deterministic text for a prompt and seed, right answers
//! to simple canary prompts, and the damage each quality fault does to them.

use super::fault::Effects;

pub use crate::splitmix::SplitMix;

/// FNV-1a, for seeding from text.
pub fn hash(text: &str, seed: u64) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The simulator's tokenizer: about four characters per token, like BPE on English.
pub fn count_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The tail of `text` that fits in `keep` tokens (what a truncating server keeps).
pub fn keep_tail(text: &str, keep: u32) -> &str {
    let chars = text.chars().count();
    let keep_chars = (keep as usize).saturating_mul(4);
    if chars <= keep_chars {
        return text;
    }
    let skip = chars - keep_chars;
    let at = text.char_indices().nth(skip).map_or(text.len(), |(i, _)| i);
    &text[at..]
}

const WORDS: &[&str] = &[
    "the", "model", "serves", "tokens", "quickly", "and", "the", "answer", "is", "clear", "data",
    "flows", "through", "a", "cache", "of", "keys", "values", "in", "memory", "while", "requests",
    "wait", "their", "turn", "to", "decode", "each", "step", "adds", "one", "word", "for", "every",
    "sequence", "so", "latency", "stays", "low", "when", "batches", "are", "small",
];
const NOISE: &[&str] = &[
    "zebra",
    "quantum",
    "purple",
    "seventeen",
    "moss",
    "harbor",
    "echoing",
    "nine",
    "lantern",
    "velvet",
    "orbit",
    "kettle",
    "whisper",
    "granite",
    "tumble",
    "ochre",
    "sprocket",
    "fable",
];
const FOREIGN: &[&str] = &[
    "สวัสดี",
    "ข้อมูล",
    "模型",
    "数据",
    "缓存",
    "ภาษา",
    "请求",
    "โมเดล",
];

/// What to generate for one request.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    /// All prompt text (messages joined).
    pub prompt: &'a str,
    /// JSON asked for (`response_format` or the word JSON in the prompt).
    pub wants_json: bool,
    /// Keys the JSON must carry (from a JSON schema), if known.
    pub json_keys: Vec<String>,
    /// `max_tokens`.
    pub max_tokens: u32,
    /// `min_tokens` (vLLM's extension): natural length when set.
    pub min_tokens: Option<u32>,
    /// Request seed (else the profile's).
    pub seed: u64,
}

/// The generated output.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// One entry per token.
    pub tokens: Vec<String>,
    /// `stop` or `length`.
    pub finish: &'static str,
}

/// Generates the reply to `ask` under `effects`; `noise` drives fault randomness only.
pub fn reply(ask: &Ask<'_>, effects: &Effects, noise: &mut SplitMix) -> Output {
    let mut rng = SplitMix::new(hash(ask.prompt, ask.seed));
    let answer = canary_answer(ask);
    let mut words: Vec<String> = match (&answer, ask.wants_json) {
        (_, true) => vec![json_answer(ask, &mut rng, effects.broken_json)],
        (Some(a), false) => vec![a.clone()],
        (None, false) => {
            let n = ask.min_tokens.unwrap_or(20 + rng.below(60) as u32).max(1);
            (0..n)
                .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize].to_owned())
                .collect()
        }
    };
    if effects.temperature_drift {
        for w in &mut words {
            if noise.unit() < 0.6 {
                *w = NOISE[noise.below(NOISE.len() as u64) as usize].to_owned();
            }
        }
        // A drifting sampler rambles on.
        let extra = noise.below(8);
        for _ in 0..extra {
            words.push(NOISE[noise.below(NOISE.len() as u64) as usize].to_owned());
        }
    }
    if effects.foreign_script {
        for (i, w) in words.iter_mut().enumerate() {
            if i % 2 == 0 {
                *w = FOREIGN[noise.below(FOREIGN.len() as u64) as usize].to_owned();
            }
        }
    }
    let max = ask.max_tokens.max(1) as usize;
    if effects.repetition {
        let phrase = ["and", "then", "the", "model", "said"];
        words = (0..max)
            .map(|i| phrase[i % phrase.len()].to_owned())
            .collect();
    }
    let mut tokens: Vec<String> = Vec::with_capacity(words.len().min(max));
    for (i, w) in words.into_iter().enumerate() {
        tokens.push(if i == 0 { w } else { format!(" {w}") });
    }
    let finish = if tokens.len() >= max || effects.repetition {
        tokens.truncate(max);
        "length"
    } else {
        "stop"
    };
    Output { tokens, finish }
}

/// The right answer to a known canary prompt, if `ask` is one.
fn canary_answer(ask: &Ask<'_>) -> Option<String> {
    let lower = ask.prompt.to_ascii_lowercase();
    if let Some(i) = lower.find("repeat the first word") {
        let rest = &ask.prompt[i..];
        let text = rest.split_once(':').map_or("", |(_, t)| t);
        return text.split_whitespace().next().map(str::to_owned);
    }
    arithmetic(&lower).map(|v| v.to_string())
}

/// Evaluates the first `a op b` in `text`.
fn arithmetic(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let (a, mut j) = number(b, i);
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let op = *b.get(j)?;
            let mut k = j + 1;
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            if "+-*x/".as_bytes().contains(&op) && b.get(k).is_some_and(u8::is_ascii_digit) {
                let (c, _) = number(b, k);
                return match op {
                    b'+' => a.checked_add(c),
                    b'-' => a.checked_sub(c),
                    b'*' | b'x' => a.checked_mul(c),
                    _ => a.checked_div(c),
                };
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

fn number(b: &[u8], mut i: usize) -> (i64, usize) {
    let mut v: i64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        v = v.saturating_mul(10).saturating_add(i64::from(b[i] - b'0'));
        i += 1;
    }
    (v, i)
}

fn json_answer(ask: &Ask<'_>, rng: &mut SplitMix, broken: bool) -> String {
    let keys: Vec<String> = if ask.json_keys.is_empty() {
        vec!["answer".into()]
    } else {
        ask.json_keys.clone()
    };
    let answer = canary_answer(ask);
    let fields: Vec<String> = keys
        .iter()
        .map(|k| {
            let v = match &answer {
                Some(a) if a.parse::<i64>().is_ok() => a.clone(),
                Some(a) => format!("\"{a}\""),
                None => format!("\"{}\"", WORDS[rng.below(WORDS.len() as u64) as usize]),
            };
            format!("\"{k}\": {v}")
        })
        .collect();
    let json = format!("{{{}}}", fields.join(", "));
    if broken {
        // Drop the closing brace and a quote: valid-looking, unparseable.
        json.trim_end_matches('}').replacen('"', "", 1)
    } else {
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(prompt: &str) -> Ask<'_> {
        Ask {
            prompt,
            max_tokens: 64,
            seed: 1,
            ..Ask::default()
        }
    }

    fn text(o: &Output) -> String {
        o.tokens.concat()
    }

    fn clean() -> Effects {
        Effects::of(&[])
    }

    #[test]
    fn answers_canaries_right() {
        let mut n = SplitMix::new(0);
        assert_eq!(
            text(&reply(
                &ask("What is 17 + 25? Answer with a number."),
                &clean(),
                &mut n
            )),
            "42"
        );
        assert_eq!(text(&reply(&ask("what is 6 * 7"), &clean(), &mut n)), "42");
        assert_eq!(
            text(&reply(
                &ask("Repeat the first word of this text: banana split is sweet"),
                &clean(),
                &mut n
            )),
            "banana"
        );
        let mut j = ask("Return JSON with the sum of 2 + 3");
        j.wants_json = true;
        j.json_keys = vec!["sum".into(), "unit".into()];
        let out = text(&reply(&j, &clean(), &mut n));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["sum"], 5);
        assert!(v.get("unit").is_some());
    }

    #[test]
    fn same_prompt_same_seed_same_text() {
        let mut n = SplitMix::new(0);
        let a = reply(&ask("tell me about caches"), &clean(), &mut n);
        let b = reply(&ask("tell me about caches"), &clean(), &mut n);
        assert_eq!(a, b);
        let mut other = ask("tell me about caches");
        other.seed = 2;
        assert_ne!(reply(&other, &clean(), &mut n), a);
    }

    #[test]
    fn min_tokens_sets_length_and_max_tokens_cuts() {
        let mut n = SplitMix::new(0);
        let mut a = ask("long story");
        a.min_tokens = Some(30);
        let o = reply(&a, &clean(), &mut n);
        assert_eq!((o.tokens.len(), o.finish), (30, "stop"));
        a.max_tokens = 10;
        let o = reply(&a, &clean(), &mut n);
        assert_eq!((o.tokens.len(), o.finish), (10, "length"));
    }

    #[test]
    fn quality_faults_change_outputs() {
        let mut n = SplitMix::new(9);
        let canary = ask("What is 17 + 25?");
        let drift = Effects {
            temperature_drift: true,
            ..clean()
        };
        let outs: Vec<String> = (0..10)
            .map(|_| text(&reply(&canary, &drift, &mut n)))
            .collect();
        assert!(outs.iter().any(|o| o != "42"), "drift must break canaries");
        let mut distinct = outs;
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 2, "drift must vary outputs");

        let foreign = Effects {
            foreign_script: true,
            ..clean()
        };
        let o = text(&reply(&ask("tell me about caches"), &foreign, &mut n));
        assert!(!o.is_ascii());

        let rep = Effects {
            repetition: true,
            ..clean()
        };
        let o = reply(&ask("hello"), &rep, &mut n);
        assert_eq!((o.tokens.len(), o.finish), (64, "length"));

        let mut j = ask("Give JSON");
        j.wants_json = true;
        let broken = Effects {
            broken_json: true,
            ..clean()
        };
        assert!(
            serde_json::from_str::<serde_json::Value>(&text(&reply(&j, &broken, &mut n))).is_err()
        );
    }

    #[test]
    fn truncation_keeps_the_tail() {
        let prompt = "Repeat the first word of this text: alpha beta gamma delta";
        assert_eq!(keep_tail(prompt, 100), prompt);
        let tail = keep_tail(prompt, 3);
        assert_eq!(tail.chars().count(), 12);
        assert!(prompt.ends_with(tail));
        assert_eq!(count_tokens("abcdefgh"), 2);
        assert_eq!(count_tokens(""), 1);
    }
}
