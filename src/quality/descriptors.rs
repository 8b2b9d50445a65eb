//! Output descriptors computed on every response without storing its body (reference §3.3):
//! length, finish reason split by cause, JSON validity when JSON was asked for, refusal,
//! seq-rep-4, compression ratio, unexpected-script share, and prompt tokens reported against
//! the gateway's own estimate.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Output text kept for descriptors; longer outputs are judged on their first 32 KiB.
pub const MAX_TEXT: usize = 32 * 1024;
/// Bytes the compression ratio is computed over.
const COMPRESS_BYTES: usize = 8 * 1024;
/// Shorter outputs have no meaningful compression ratio (zlib's header dominates).
const MIN_COMPRESS_BYTES: usize = 100;
/// Words the repetition measure looks at.
const MAX_WORDS: usize = 2_000;
/// Characters at the start of an answer where refusals are looked for.
const REFUSAL_WINDOW: usize = 200;

thread_local! {
    static ZLIB: RefCell<flate2::Compress> =
        RefCell::new(flate2::Compress::new(flate2::Compression::default(), true));
}

/// Refusal openings (GCG-style evaluators' prefix list, reference §3.3 item 5).
const REFUSAL_PREFIXES: &[&str] = &[
    "I'm sorry",
    "I’m sorry",
    "Sorry",
    "I am sorry",
    "I apologize",
    "As an AI",
    "As a language model",
    "As an Assistant",
    "I cannot",
    "I can't",
    "I can’t",
    "I do not",
    "I am unable",
    "I'm unable",
    "I'm not able",
    "I am not able",
];
/// Phrases that mark a refusal anywhere in the first `REFUSAL_WINDOW` characters.
const REFUSAL_PHRASES: &[&str] = &[
    "As an AI",
    "as an AI language model",
    "I'm sorry, but",
    "I cannot assist",
    "I can't assist",
    "I cannot help",
    "I can't help",
];

/// What the request asked for, as far as descriptors care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// JSON was asked for (`response_format` `json_object` or `json_schema`).
    pub wants_json: bool,
    /// `max_tokens` / `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// The gateway's own estimate of the prompt's tokens (text only).
    pub prompt_tokens_estimate: Option<u64>,
}

/// Why generation ended, with `length` split by cause (reference §3.3 item 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model stopped by itself (or at a stop sequence).
    Stop,
    /// `length` with every allowed token used: runaway or verbose output.
    MaxTokens,
    /// `length` before `max_tokens`: the context window's ceiling was reached.
    ContextLimit,
    /// Tool calls, content filter, or anything else.
    Other,
}

impl Finish {
    /// Classifies an OpenAI finish reason.
    pub fn of(reason: &str, completion_tokens: Option<u64>, max_tokens: Option<u64>) -> Finish {
        match reason {
            "stop" | "eos" | "stop_sequence" | "end_turn" => Finish::Stop,
            "length" | "max_tokens" => match (completion_tokens, max_tokens) {
                (Some(c), Some(m)) if c < m => Finish::ContextLimit,
                (_, Some(_)) => Finish::MaxTokens,
                // No max_tokens: the server's limit is what is left of its context.
                (_, None) => Finish::ContextLimit,
            },
            _ => Finish::Other,
        }
    }
}

/// The descriptors of one response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Descriptors {
    /// Characters of output (content and text).
    pub output_chars: u64,
    /// Completion tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Why generation ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish: Option<Finish>,
    /// The output parses as JSON (only when JSON was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_valid: Option<bool>,
    /// The answer opens like a refusal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refusal: bool,
    /// `1 − unique 4-grams / 4-grams` over words (Welleck et al.); none under 8 words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_rep_4: Option<f64>,
    /// `bytes / zlib bytes`; Whisper calls a segment degenerate above 2.4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// Share of letters outside the Latin script.
    pub foreign_script: f64,
    /// The gateway's estimate of the prompt's tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_estimate: Option<u64>,
    /// Prompt tokens the upstream reported (`usage.prompt_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_reported: Option<u64>,
}

impl Descriptors {
    /// Reported prompt tokens over the gateway's estimate (silent truncation shows as a
    /// ratio far below the provider's usual one).
    pub fn prompt_ratio(&self) -> Option<f64> {
        let est = self.prompt_tokens_estimate.filter(|e| *e > 0)?;
        Some(self.prompt_tokens_reported? as f64 / est as f64)
    }
}

/// Describes the output `text` of a request that asked `ask`.
pub fn describe(
    text: &str,
    ask: &Ask,
    finish_reason: Option<&str>,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
) -> Descriptors {
    Descriptors {
        output_chars: text.chars().count() as u64,
        output_tokens: completion_tokens,
        finish: finish_reason.map(|r| Finish::of(r, completion_tokens, ask.max_tokens)),
        json_valid: ask.wants_json.then(|| json_valid(text)),
        refusal: refusal(text),
        seq_rep_4: seq_rep(text, 4),
        compression_ratio: compression_ratio(text),
        foreign_script: foreign_script(text),
        prompt_tokens_estimate: ask.prompt_tokens_estimate,
        prompt_tokens_reported: prompt_tokens,
    }
}

/// The gateway's own token estimate for `chars` characters of prompt text in `messages`
/// messages: four characters a token (BPE on English) plus the chat template's few tokens
/// per message. Each provider's reported counts calibrate it.
pub fn estimate_tokens(chars: u64, messages: u64) -> u64 {
    chars.div_ceil(4) + 3 * messages
}

/// True when `text` (trimmed, or inside one Markdown code fence) parses as JSON.
pub fn json_valid(text: &str) -> bool {
    let t = text.trim();
    if serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok() {
        return true;
    }
    unfence(t).is_some_and(|inner| serde_json::from_str::<serde::de::IgnoredAny>(inner).is_ok())
}

/// The inside of a Markdown code fence (```json … ```).
pub fn unfence(t: &str) -> Option<&str> {
    let rest = t.strip_prefix("```")?;
    let body = rest.split_once('\n').map_or("", |(_, b)| b);
    Some(body.trim_end().strip_suffix("```")?.trim())
}

/// True when the answer opens like a refusal.
pub fn refusal(text: &str) -> bool {
    let t = text.trim_start();
    let head = match t.char_indices().nth(REFUSAL_WINDOW) {
        Some((i, _)) => &t[..i],
        None => t,
    };
    REFUSAL_PREFIXES.iter().any(|p| head.starts_with(p))
        || REFUSAL_PHRASES.iter().any(|p| head.contains(p))
}

/// `seq-rep-n`: the share of repeated word n-grams; `None` when there are fewer than `2n`
/// words.
pub fn seq_rep(text: &str, n: usize) -> Option<f64> {
    let words: Vec<&str> = text.split_whitespace().take(MAX_WORDS).collect();
    if words.len() < 2 * n {
        return None;
    }
    let grams = words.len() + 1 - n;
    let unique: HashSet<&[&str]> = words.windows(n).collect();
    Some(1.0 - unique.len() as f64 / grams as f64)
}

/// `len(utf8) / len(zlib(utf8))` over the first 8 KiB; `None` for short texts.
pub fn compression_ratio(text: &str) -> Option<f64> {
    let bytes = &text.as_bytes()[..text.len().min(COMPRESS_BYTES)];
    if bytes.len() < MIN_COMPRESS_BYTES {
        return None;
    }
    // One compressor per thread, reset between answers: allocating zlib's state costs more
    // than compressing a typical answer.
    let compressed = ZLIB.with(|z| {
        let mut z = z.borrow_mut();
        z.reset();
        let mut out = Vec::with_capacity(bytes.len() + 64);
        match z.compress_vec(bytes, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => Some(out.len()),
            _ => None,
        }
    })?;
    Some(bytes.len() as f64 / compressed.max(1) as f64)
}

/// Share of letters outside the Latin script (digits, punctuation, symbols and emoji are
/// neutral). 0 when there are no letters.
pub fn foreign_script(text: &str) -> f64 {
    let (mut letters, mut foreign) = (0u64, 0u64);
    for c in text.chars() {
        if c.is_ascii() {
            letters += u64::from(c.is_ascii_alphabetic());
        } else if c.is_alphabetic() {
            letters += 1;
            foreign += u64::from(!latin(c));
        }
    }
    if letters == 0 {
        0.0
    } else {
        foreign as f64 / letters as f64
    }
}

/// Latin letters beyond ASCII: Latin-1 Supplement, Extended-A/B, IPA, Extended Additional,
/// ligatures.
fn latin(c: char) -> bool {
    matches!(c as u32, 0x00C0..=0x02AF | 0x1E00..=0x1EFF | 0xFB00..=0xFB06 | 0x00AA | 0x00BA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_split_length_by_cause() {
        assert_eq!(Finish::of("stop", Some(5), Some(10)), Finish::Stop);
        assert_eq!(Finish::of("length", Some(10), Some(10)), Finish::MaxTokens);
        assert_eq!(
            Finish::of("length", Some(7), Some(10)),
            Finish::ContextLimit
        );
        assert_eq!(Finish::of("length", Some(7), None), Finish::ContextLimit);
        assert_eq!(Finish::of("tool_calls", None, None), Finish::Other);
    }

    #[test]
    fn json_validity_accepts_fenced_json_and_rejects_broken() {
        assert!(json_valid(" {\"a\": 1} "));
        assert!(json_valid("```json\n{\"a\": [1, 2]}\n```"));
        assert!(!json_valid("{\"a\": 1"));
        assert!(!json_valid("here you go: {\"a\": 1}"));
    }

    #[test]
    fn refusals_are_recognised_at_the_start() {
        assert!(refusal("I'm sorry, but I can't help with that."));
        assert!(refusal("  As an AI language model, I cannot do that"));
        assert!(!refusal("The answer is 42. I cannot stress this enough."));
        assert!(!refusal(""));
    }

    #[test]
    fn repetition_and_compression_separate_loops_from_prose() {
        let prose = "The cache holds attention keys and values for every sequence in the batch, \
            so the scheduler can decode one more token per step without recomputing the prefix; \
            when memory runs short it preempts the newest requests and recomputes them later.";
        let looped = "and then the model said ".repeat(40);
        assert!(seq_rep(prose, 4).unwrap() < 0.05);
        assert!(seq_rep(&looped, 4).unwrap() > 0.9);
        assert!(seq_rep("too short", 4).is_none());
        assert!(compression_ratio(prose).unwrap() < 2.0);
        assert!(compression_ratio(&looped).unwrap() > 2.4);
        assert!(compression_ratio("short").is_none());
    }

    #[test]
    fn foreign_script_counts_letters_only() {
        assert_eq!(foreign_script("The answer is 42! 🚀"), 0.0);
        assert_eq!(foreign_script("Café über naïve"), 0.0);
        let mixed = foreign_script("The model สวัสดี says 模型");
        assert!(mixed > 0.3 && mixed < 0.7, "{mixed}");
        assert_eq!(foreign_script("123 ..."), 0.0);
    }

    #[test]
    fn describe_fills_everything_and_the_prompt_ratio() {
        let ask = Ask {
            wants_json: true,
            max_tokens: Some(16),
            prompt_tokens_estimate: Some(1000),
        };
        let d = describe("{\"sum\": 5}", &ask, Some("stop"), Some(6), Some(520));
        assert_eq!(d.output_chars, 10);
        assert_eq!(d.finish, Some(Finish::Stop));
        assert_eq!(d.json_valid, Some(true));
        assert!((d.prompt_ratio().unwrap() - 0.52).abs() < 1e-9);
        assert_eq!(estimate_tokens(400, 2), 106);
    }
}
