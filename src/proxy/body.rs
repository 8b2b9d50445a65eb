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

/// Characters of text in a JSON string, an array of strings, or an array of content parts
/// (only their `text`: images and audio are not prompt text).
fn text_chars(raw: &RawValue) -> u64 {
    let s = raw.get().trim_start();
    if s.starts_with('"') {
        // The JSON string's characters less its quotes (escapes count as written).
        return (s.chars().count() as u64).saturating_sub(2);
    }
    if s.starts_with('[')
        && let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(s)
    {
        return parts
            .iter()
            .map(|p| match serde_json::from_str::<PartHead<'_>>(p.get()) {
                Ok(PartHead { text: Some(t) }) => text_chars(t),
                Ok(_) => 0,
                Err(_) if p.get().starts_with('"') => text_chars(p),
                Err(_) => 0,
            })
            .sum();
    }
    0
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
}

impl RequestHead {
    /// Parses the head of a request body.
    pub fn parse(body: &[u8]) -> Result<RequestHead, BodyError> {
        let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
            BodyError::Malformed(format!(
                "We could not parse the JSON body of your request ({e}). The body must be a JSON object."
            ))
        })?;
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
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    if let Some(obj) = value.as_object_mut() {
        if rename {
            obj.insert("model".into(), Value::String(upstream_model.to_owned()));
        }
        if inject {
            let opts = obj
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".into(), Value::Bool(true));
            } else {
                *opts = serde_json::json!({"include_usage": true});
            }
        }
    }
    serde_json::to_vec(&value).map_or_else(|_| body.clone(), Bytes::from)
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
        assert_eq!(RequestHead::parse(b"{}"), Err(BodyError::MissingModel));
        assert_eq!(
            RequestHead::parse(br#"{"model":3}"#),
            Err(BodyError::MissingModel)
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
    }
}
