//! Reads what routing needs from a client's JSON body and prepares the body sent upstream,
//! touching the bytes only when the model name must change or usage must be requested.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::quality::descriptors::{Ask, estimate_tokens};

/// The fields of a request body that Candor looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestHead {
    /// Requested model.
    pub model: String,
    /// `stream: true`.
    pub stream: bool,
    /// The client asked for usage in the stream itself.
    pub client_wants_usage: bool,
    /// `stream_options` is present in the body.
    pub has_stream_options: bool,
    /// `max_tokens` or `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// `response_format` asks for JSON (`json_object` or `json_schema`).
    pub wants_json: bool,
    /// Characters of prompt text (message contents, or `prompt`) and the message count.
    pub prompt_chars: u64,
    /// Messages in the prompt.
    pub messages: u64,
    /// The sampling parameters, for traces.
    pub sampling: Sampling,
}

/// The sampling parameters a request asked for, as far as they have the documented types
/// (a value of another type is the upstream's to refuse, and is left out here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// `temperature`.
    pub temperature: Option<f64>,
    /// `top_p`.
    pub top_p: Option<f64>,
    /// `frequency_penalty`.
    pub frequency_penalty: Option<f64>,
    /// `presence_penalty`.
    pub presence_penalty: Option<f64>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `n`: choices asked for.
    pub n: Option<u64>,
    /// `stop`: one sequence or several.
    pub stop: Vec<String>,
}

impl Sampling {
    fn from_head(h: &Head<'_>) -> Sampling {
        fn read<T: serde::de::DeserializeOwned>(v: Option<&RawValue>) -> Option<T> {
            v.and_then(|v| serde_json::from_str(v.get()).ok())
        }
        let stop = read::<String>(h.stop)
            .map(|s| vec![s])
            .or_else(|| read::<Vec<String>>(h.stop))
            .unwrap_or_default();
        Sampling {
            temperature: read(h.temperature),
            top_p: read(h.top_p),
            frequency_penalty: read(h.frequency_penalty),
            presence_penalty: read(h.presence_penalty),
            seed: read(h.seed),
            n: read(h.n),
            stop,
        }
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default, borrow)]
    messages: Option<Vec<MessageHead<'a>>>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default)]
    response_format: Option<FormatHead>,
    #[serde(default, borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(default, borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(default, borrow)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(default, borrow)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(default, borrow)]
    seed: Option<&'a RawValue>,
    #[serde(default, borrow)]
    n: Option<&'a RawValue>,
    #[serde(default, borrow)]
    stop: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartHead<'a> {
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct FormatHead {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Deepest nesting of arrays and objects accepted in a request body. The API's own shapes
/// need a few levels (content parts, tool schemas a dozen or so); serde_json refuses to
/// re-encode past 128, and a parser that recursed without a bound could be made to
/// overflow its stack.
pub const MAX_DEPTH: usize = 64;

/// Checks, in one pass over the bytes and before any parser recurses into them, that the
/// body is UTF-8, a JSON object nested at most `MAX_DEPTH` deep, and that every string in
/// it — the ones Candor skips included — is well formed. serde_json checks the strings it
/// decodes, not the ones it skips, and a body Candor cannot judge must not go upstream as
/// it came (fuzzing found invalid UTF-8 and broken `\u` escapes getting through).
fn check_shape(body: &[u8]) -> Result<(), BodyError> {
    let malformed = |what: String| {
        BodyError::Malformed(format!(
            "We could not parse the JSON body of your request: {what}."
        ))
    };
    if let Err(e) = std::str::from_utf8(body) {
        return Err(malformed(format!(
            "it is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed("the body must be a JSON object".into()));
    }
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b'"' => {
                i = string_end(body, i)
                    .ok_or_else(|| malformed(format!("a string is malformed at byte {i}")))?;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(BodyError::TooDeep);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The index just past the closing quote of the JSON string whose contents start at `i`,
/// or `None` when it is not a valid JSON string: unterminated, a control character, an
/// unknown escape, a `\u` without four hex digits, or a surrogate without its pair.
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    let hex4 = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    loop {
        match *body.get(i)? {
            b'"' => return Some(i + 1),
            0..0x20 => return None,
            b'\\' => {
                match *body.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let unit = hex4(i + 2)?;
                        i += 6;
                        if (0xDC00..0xE000).contains(&unit) {
                            return None;
                        }
                        if (0xD800..0xDC00).contains(&unit) {
                            // A high surrogate must be followed by its low half.
                            if body.get(i..i + 2)? != b"\\u"
                                || !(0xDC00..0xE000).contains(&hex4(i + 2)?)
                            {
                                return None;
                            }
                            i += 6;
                        }
                    }
                    _ => return None,
                }
            }
            _ => i += 1,
        }
    }
}

/// Characters of a JSON string less its quotes (escapes count as written), if `raw` is one.
fn string_chars(raw: &RawValue) -> Option<u64> {
    let s = raw.get().trim_start();
    s.starts_with('"')
        .then(|| (s.chars().count() as u64).saturating_sub(2))
}

/// Characters of prompt text in a message's `content` or a completion's `prompt`: a
/// string, or an array of strings or content parts (only their `text`: images and audio
/// are not prompt text; token-id arrays count nothing). The API nests no deeper, so
/// neither does this: each byte is read once by the array parse and once by its element's.
fn text_chars(raw: &RawValue) -> u64 {
    if let Some(n) = string_chars(raw) {
        return n;
    }
    let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return 0;
    };
    parts
        .iter()
        .map(|p| {
            string_chars(p).unwrap_or_else(|| {
                serde_json::from_str::<PartHead<'_>>(p.get())
                    .ok()
                    .and_then(|h| h.text)
                    .and_then(string_chars)
                    .unwrap_or(0)
            })
        })
        .sum()
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not an object.
    #[error("{0}")]
    Malformed(String),
    /// No `model`, or not a string.
    #[error("you must provide a model parameter")]
    MissingModel,
    /// Arrays and objects nested deeper than `MAX_DEPTH`.
    #[error(
        "We could not parse the JSON body of your request: arrays and objects are nested more than {MAX_DEPTH} deep."
    )]
    TooDeep,
}

impl RequestHead {
    /// Parses the head of a request body.
    pub fn parse(body: &[u8]) -> Result<RequestHead, BodyError> {
        check_shape(body)?;
        let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
            BodyError::Malformed(format!(
                "We could not parse the JSON body of your request ({e}). The body must be a JSON object."
            ))
        })?;
        let sampling = Sampling::from_head(&head);
        let model = match head.model {
            Some(Value::String(m)) if !m.trim().is_empty() => m,
            _ => return Err(BodyError::MissingModel),
        };
        let (prompt_chars, messages) = match (&head.messages, head.prompt) {
            (Some(ms), _) => (
                ms.iter().filter_map(|m| m.content).map(text_chars).sum(),
                ms.len() as u64,
            ),
            (None, Some(p)) => (text_chars(p), 0),
            (None, None) => (0, 0),
        };
        Ok(RequestHead {
            wants_json: head
                .response_format
                .and_then(|f| f.kind)
                .is_some_and(|k| k == "json_object" || k == "json_schema"),
            prompt_chars,
            messages,
            model,
            stream: head.stream.unwrap_or(false),
            client_wants_usage: head
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            has_stream_options: head.stream_options.is_some(),
            max_tokens: head.max_completion_tokens.or(head.max_tokens),
            sampling,
        })
    }

    /// What output descriptors need to know about this request.
    pub fn ask(&self) -> Ask {
        Ask {
            wants_json: self.wants_json,
            max_tokens: self.max_tokens,
            prompt_tokens_estimate: (self.prompt_chars > 0)
                .then(|| estimate_tokens(self.prompt_chars, self.messages)),
        }
    }

    /// True when Candor must ask the upstream for usage the client did not ask for.
    pub fn needs_usage_injection(&self) -> bool {
        self.stream && !self.client_wants_usage
    }
}

/// The body to send upstream: the client's bytes unchanged unless the upstream model name
/// differs or usage must be requested.
pub fn upstream_body(body: &Bytes, head: &RequestHead, upstream_model: &str) -> Bytes {
    let rename = upstream_model != head.model;
    let inject = head.needs_usage_injection();
    if !rename && !inject {
        return body.clone();
    }
    if !rename && !head.has_stream_options {
        // Splice the member in after the opening brace: no re-encoding of the client's JSON.
        if let Some(open) = body.iter().position(|&b| b == b'{') {
            let rest = &body[open + 1..];
            let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let mut out = BytesMut::with_capacity(body.len() + 48);
            out.put_slice(&body[..=open]);
            out.put_slice(br#""stream_options":{"include_usage":true}"#);
            if !empty {
                out.put_u8(b',');
            }
            out.put_slice(rest);
            return out.freeze();
        }
    }
    // Re-encode the top level only: every other member goes out as the client wrote it
    // (numbers of any size, escapes), so any body the head parser took can be rewritten.
    let Ok(Members(members)) = serde_json::from_slice::<Members<'_>>(body) else {
        return body.clone();
    };
    let mut out = Vec::with_capacity(body.len() + 48);
    out.push(b'{');
    let model = serde_json::to_vec(upstream_model).unwrap_or_default();
    let mut has_options = false;
    for (key, value) in &members {
        match key.as_str() {
            "model" if rename => push_member(&mut out, key, &model),
            "stream_options" if inject => {
                has_options = true;
                push_member(&mut out, key, &with_usage(value));
            }
            _ => push_member(&mut out, key, value.get().as_bytes()),
        }
    }
    if inject && !has_options {
        push_member(&mut out, "stream_options", br#"{"include_usage":true}"#);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Appends `"key":value` to an object being written (a comma first unless it is the first).
fn push_member(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    // A string always encodes.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    out.extend_from_slice(value);
}

/// `stream_options` with `include_usage` set, its other members as written.
fn with_usage(options: &RawValue) -> Vec<u8> {
    let mut out = br#"{"include_usage":true"#.to_vec();
    if let Ok(Members(members)) = serde_json::from_str::<Members<'_>>(options.get()) {
        for (key, value) in members.iter().filter(|(k, _)| k != "include_usage") {
            push_member(&mut out, key, value.get().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// A JSON object's members in order, each value as written.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> RequestHead {
        RequestHead::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn reads_the_head() {
        let h = parse(r#"{"model":"m","stream":true,"max_tokens":7,"messages":[]}"#);
        assert_eq!(h.model, "m");
        assert!(h.stream && h.needs_usage_injection());
        assert_eq!(h.max_tokens, Some(7));
        let h = parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(!h.needs_usage_injection());
    }

    #[test]
    fn counts_prompt_text_and_sees_json_requests() {
        let h = parse(
            r#"{"model":"m","response_format":{"type":"json_object"},"messages":[
                {"role":"system","content":"abcd"},
                {"role":"user","content":[{"type":"text","text":"efghijkl"},{"type":"image_url","image_url":{"url":"data:AAAA"}}]}]}"#,
        );
        assert!(h.wants_json);
        assert_eq!((h.prompt_chars, h.messages), (12, 2));
        assert_eq!(h.ask().prompt_tokens_estimate, Some(3 + 6));
        let h = parse(r#"{"model":"m","prompt":["abcd","efgh"]}"#);
        assert_eq!((h.prompt_chars, h.messages, h.wants_json), (8, 0, false));
        let h = parse(r#"{"model":"m","response_format":{"type":"text"}}"#);
        assert!(!h.wants_json && h.ask().prompt_tokens_estimate.is_none());
    }

    #[test]
    fn refuses_bad_bodies() {
        assert!(matches!(
            RequestHead::parse(b"{oops"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            RequestHead::parse(b"[1,2]"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            RequestHead::parse(br#"["m", true]"#),
            Err(BodyError::Malformed(_))
        ));
        assert_eq!(RequestHead::parse(b"{}"), Err(BodyError::MissingModel));
        assert_eq!(
            RequestHead::parse(br#"{"model":3}"#),
            Err(BodyError::MissingModel)
        );
    }

    #[test]
    fn bounds_nesting_in_one_pass() {
        let nested = |n: usize| {
            format!(
                r#"{{"model":"m","messages":[{{"content":{}"x"{}}}]}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // Depth counts the body's own object and the messages array.
        assert!(RequestHead::parse(nested(MAX_DEPTH - 3).as_bytes()).is_ok());
        assert_eq!(
            RequestHead::parse(nested(MAX_DEPTH).as_bytes()),
            Err(BodyError::TooDeep)
        );
        assert_eq!(
            RequestHead::parse(nested(25_000).as_bytes()),
            Err(BodyError::TooDeep)
        );
        // Invalid UTF-8 anywhere, even in a field Candor does not read (found by fuzzing).
        assert!(matches!(
            RequestHead::parse(b"{\"model\":\"m\",\"x\":{\"u\x8e\x93\":1}}"),
            Err(BodyError::Malformed(_))
        ));
        // Escapes the parser would skip unchecked (found by fuzzing), and good ones.
        for bad in [
            &br#"{"model":"m","x":{"k\udAed!!":1}}"#[..],
            br#"{"model":"m","x":"\q"}"#,
            br#"{"model":"m","x":"\u12"}"#,
            br#"{"model":"m","x":"\udc00"}"#,
            b"{\"model\":\"m\",\"x\":\"a\x01\"}",
            br#"{"model":"m","x":"unterminated"#,
        ] {
            assert!(
                matches!(RequestHead::parse(bad), Err(BodyError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let good = parse(r#"{"model":"m","x":"\ud83d\ude00 \" \\ \/ \n \u00e9"}"#);
        assert_eq!(good.model, "m");
        // Brackets inside strings are text, not nesting.
        let text = format!(
            r#"{{"model":"m","prompt":"{}\\\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        let h = parse(&text);
        assert_eq!(h.prompt_chars, 1004);
        // Arrays nested inside content count no text, and the API's shapes still do.
        assert_eq!(parse(&nested(3)).prompt_chars, 0);
        assert_eq!(
            parse(r#"{"model":"m","prompt":[[1,2],[3]]}"#).prompt_chars,
            0
        );
    }

    #[test]
    fn leaves_bytes_alone_when_nothing_changes() {
        let body = Bytes::from_static(b"{ \"model\" : \"m\",  \"x\":1 }");
        assert_eq!(
            upstream_body(&body, &parse(std::str::from_utf8(&body).unwrap()), "m"),
            body
        );
    }

    #[test]
    fn splices_usage_request_without_reencoding() {
        let body = Bytes::from_static(b"{\"model\":\"m\", \"stream\":true}");
        let out = upstream_body(&body, &parse(std::str::from_utf8(&body).unwrap()), "m");
        assert_eq!(
            &out[..],
            b"{\"stream_options\":{\"include_usage\":true},\"model\":\"m\", \"stream\":true}"
        );
    }

    #[test]
    fn renames_model_and_keeps_other_fields() {
        let text =
            r#"{"model":"public","stream":true,"stream_options":{"include_usage":false},"n":2}"#;
        let out = upstream_body(&Bytes::from(text), &parse(text), "private");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "private");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["n"], 2);
        // Members Candor does not touch go out as written, even numbers serde_json's own
        // values cannot hold (found by fuzzing: the rename fell back to the client's body).
        let text = r#"{"model":"public","x":{"big":666e6666,"esc":"\u00e9"},"stream":false}"#;
        let out = upstream_body(&Bytes::from(text), &parse(text), "private");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"private","x":{"big":666e6666,"esc":"\u00e9"},"stream":false}"#
        );
        // serde_json's private raw-value marker as a key: its own values read it as a token
        // and fail (found by fuzzing, when the rename went through them); as written, it is
        // just a key.
        let text = r#"{"model":"public","$serde_json::private::RawValue":false,"x":{"$serde_json::private::RawValue":1}}"#;
        let out = upstream_body(&Bytes::from(text), &parse(text), "private");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"private","$serde_json::private::RawValue":false,"x":{"$serde_json::private::RawValue":1}}"#
        );
        let text = r#"{"model":"m","stream":true,"stream_options":{"x":1e999}}"#;
        let out = upstream_body(&Bytes::from(text), &parse(text), "m");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1e999}}"#
        );
    }
}
