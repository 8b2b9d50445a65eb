//! Server-sent-event framing: splits an upstream byte stream into whole events without
//! copying them, and edits the few events Candor must hide from the client.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Largest SSE event held by default (`[server] max_sse_event_bytes`): a chat chunk is
/// well under a kilobyte, a tool call's arguments in one event some kilobytes.
pub const DEFAULT_MAX_EVENT: usize = 1 << 20;

/// An event grew past the splitter's limit without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream sent an SSE event longer than {limit} bytes")]
pub struct EventTooLarge {
    /// The limit in bytes.
    pub limit: usize,
}

/// Splits a byte stream into complete SSE events (each ending with its blank line), holding
/// at most one event of `limit` bytes (plus the read that overflowed it).
#[derive(Debug)]
pub struct SseSplitter {
    buf: BytesMut,
    scanned: usize,
    limit: usize,
}

impl Default for SseSplitter {
    fn default() -> SseSplitter {
        SseSplitter::with_limit(DEFAULT_MAX_EVENT)
    }
}

impl SseSplitter {
    /// A splitter refusing events over `limit` bytes.
    pub fn with_limit(limit: usize) -> SseSplitter {
        SseSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// Appends bytes received from upstream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, including its terminating blank line; an error once an
    /// event is over the limit (complete or not: the bytes are not kept either way).
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        let found = self.scan();
        let too_large = match &found {
            Some(event) => event.len() > self.limit,
            None => self.buf.len() > self.limit,
        };
        if too_large {
            self.buf = BytesMut::new();
            self.scanned = 0;
            return Err(EventTooLarge { limit: self.limit });
        }
        Ok(found)
    }

    fn scan(&mut self) -> Option<Bytes> {
        let buf = &self.buf[..];
        let mut i = self.scanned;
        while let Some(off) = memchr(b'\n', &buf[i..]) {
            let nl = i + off;
            let end = match (buf.get(nl + 1), buf.get(nl + 2)) {
                (Some(b'\n'), _) => Some(nl + 2),
                (Some(b'\r'), Some(b'\n')) => Some(nl + 3),
                (None, _) | (Some(b'\r'), None) => {
                    // The terminator may be split across reads: rescan from here next time.
                    self.scanned = nl;
                    return None;
                }
                _ => None,
            };
            if let Some(end) = end {
                self.scanned = 0;
                return Some(self.buf.split_to(end).freeze());
            }
            i = nl + 1;
        }
        self.scanned = buf.len();
        None
    }

    /// Whatever is left when the upstream ends without a final blank line.
    pub fn remainder(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    /// At the end of the stream, the last event if the upstream sent it whole but without its
    /// blank line (see `complete_tail`); a fragment is dropped.
    pub fn last_event(&mut self) -> Option<Bytes> {
        self.remainder().as_deref().and_then(complete_tail)
    }
}

/// A last event the upstream ended without its blank line, made whole when it is one — its
/// data `[DONE]` or a JSON value — and `None` when it is a fragment cut off mid-event (the
/// SSE standard drops an unterminated event; a client given a fragment and then an error
/// event would fail to parse both).
pub fn complete_tail(tail: &[u8]) -> Option<Bytes> {
    let data = event_data(tail)?;
    let whole =
        &data[..] == b"[DONE]" || serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok();
    if !whole {
        return None;
    }
    let body = tail.trim_ascii_end();
    let mut event = BytesMut::with_capacity(body.len() + 2);
    event.extend_from_slice(body);
    event.extend_from_slice(b"\n\n");
    Some(event.freeze())
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The `data:` payload of one event (multi-line data joined by `\n`), or `None` for
/// comments and events without data.
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut found: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        found = Some(match found {
            None => Cow::Borrowed(rest),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(rest);
                Cow::Owned(joined)
            }
        });
    }
    found
}

/// Finds the top-level `"usage":null` member that the upstream added only because Candor
/// asked for usage, with one neighbouring comma: cutting `event[from..to]` leaves the event
/// exactly as the client would have received it. `None` when there is no such member.
pub fn null_usage_span(event: &[u8]) -> Option<(usize, usize)> {
    const KEY: &[u8] = b"\"usage\":";
    let start = find(event, KEY)?;
    let mut end = start + KEY.len();
    while event.get(end) == Some(&b' ') {
        end += 1;
    }
    if !event[end..].starts_with(b"null") {
        return None;
    }
    end += 4;
    // Take one neighbouring comma with it so the JSON stays valid.
    if event.get(end) == Some(&b',') {
        return Some((start, end + 1));
    }
    let mut s = start;
    while s > 0 && event[s - 1] == b' ' {
        s -= 1;
    }
    Some(if s > 0 && event[s - 1] == b',' {
        (s - 1, end)
    } else {
        (start, end)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitmix::SplitMix;

    fn all(s: &mut SseSplitter) -> Vec<Bytes> {
        std::iter::from_fn(|| s.next_event().unwrap()).collect()
    }

    #[test]
    fn splits_events_across_reads() {
        let mut s = SseSplitter::default();
        s.push(b"data: {\"a\":1}\n\nda");
        assert_eq!(
            all(&mut s),
            vec![Bytes::from_static(b"data: {\"a\":1}\n\n")]
        );
        s.push(b"ta: [DONE]\n");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n");
        assert_eq!(all(&mut s), vec![Bytes::from_static(b"data: [DONE]\n\n")]);
        assert!(s.remainder().is_none());
    }

    #[test]
    fn handles_crlf_and_comments() {
        let mut s = SseSplitter::default();
        s.push(b": ping\r\n\r\ndata: x\r\n");
        let ev = all(&mut s);
        assert_eq!(ev.len(), 1);
        assert_eq!(event_data(&ev[0]), None);
        s.push(b"\r\n");
        let ev = all(&mut s);
        assert_eq!(event_data(&ev[0]).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn refuses_an_event_over_the_limit_and_keeps_nothing_of_it() {
        let mut s = SseSplitter::with_limit(64);
        s.push(b"data: {\"a\":1}\n\n");
        assert_eq!(all(&mut s).len(), 1);
        // Unterminated and growing: refused once past the limit, whatever the reads.
        for _ in 0..6 {
            s.push(&[b'x'; 10]);
            assert_eq!(s.next_event(), Ok(None));
        }
        s.push(&[b'x'; 10]);
        assert_eq!(s.next_event(), Err(EventTooLarge { limit: 64 }));
        assert!(s.remainder().is_none());
        // Complete but too long, in one read.
        let mut s = SseSplitter::with_limit(8);
        s.push(b"data: 0123456789\n\n");
        assert!(s.next_event().is_err());
    }

    /// A valid stream of `n` events drawn from `rng`: data lines (one or several), comments,
    /// `event:` fields, LF or CRLF line ends, and a final `[DONE]`.
    fn random_stream(rng: &mut SplitMix, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let eol: &[u8] = if rng.below(4) == 0 { b"\r\n" } else { b"\n" };
            match rng.below(6) {
                0 => out.extend_from_slice(b": keep-alive"),
                1 => {
                    out.extend_from_slice(b"event: message");
                    out.extend_from_slice(eol);
                    out.extend_from_slice(format!("data: {{\"i\":{i}}}").as_bytes());
                }
                2 => {
                    out.extend_from_slice(b"data: line one");
                    out.extend_from_slice(eol);
                    out.extend_from_slice(b"data: line two");
                }
                _ => {
                    let text: String = (0..rng.below(40))
                        .map(|_| char::from(b'a' + rng.below(26) as u8))
                        .collect();
                    out.extend_from_slice(
                        format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}")
                            .as_bytes(),
                    );
                }
            }
            out.extend_from_slice(eol);
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    /// The events of `stream` read in pieces whose lengths come from `rng` (whole when
    /// `rng` is `None`).
    fn read_in_pieces(stream: &[u8], mut rng: Option<&mut SplitMix>) -> Vec<Bytes> {
        let mut s = SseSplitter::default();
        let mut events = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let n = match rng.as_deref_mut() {
                Some(r) => (1 + r.below(12) as usize).min(rest.len()),
                None => rest.len(),
            };
            s.push(&rest[..n]);
            rest = &rest[n..];
            events.extend(all(&mut s));
        }
        assert!(
            s.remainder().is_none(),
            "a valid stream leaves nothing over"
        );
        events
    }

    #[test]
    fn any_split_of_a_valid_stream_into_reads_yields_the_same_events() {
        let mut rng = SplitMix::new(17);
        for case in 0..500 {
            let n = 1 + rng.below(20) as usize;
            let stream = random_stream(&mut rng, n);
            let whole = read_in_pieces(&stream, None);
            assert_eq!(whole.len(), n + 1, "case {case}");
            assert_eq!(whole.concat(), stream, "case {case}: bytes kept as sent");
            let pieces = read_in_pieces(&stream, Some(&mut rng));
            assert_eq!(pieces, whole, "case {case}");
        }
    }

    #[test]
    fn completes_a_whole_last_event_and_drops_a_fragment() {
        assert_eq!(
            complete_tail(b"data: [DONE]\n").as_deref(),
            Some(&b"data: [DONE]\n\n"[..])
        );
        assert_eq!(
            complete_tail(b"data: {\"a\":1}").as_deref(),
            Some(&b"data: {\"a\":1}\n\n"[..])
        );
        assert_eq!(complete_tail(b"data: {\"partial\":"), None);
        assert_eq!(complete_tail(b": comment"), None);
    }

    #[test]
    fn joins_multiline_data() {
        assert_eq!(
            event_data(b"event: m\ndata: a\ndata:b\n\n").as_deref(),
            Some(&b"a\nb"[..])
        );
    }

    #[test]
    fn strips_null_usage_in_every_position() {
        let cases: [(&[u8], &[u8]); 3] = [
            (
                b"data: {\"id\":\"x\",\"usage\":null,\"choices\":[]}\n\n",
                b"data: {\"id\":\"x\",\"choices\":[]}\n\n",
            ),
            (
                b"data: {\"id\":\"x\",\"choices\":[],\"usage\": null}\n\n",
                b"data: {\"id\":\"x\",\"choices\":[]}\n\n",
            ),
            (b"data: {\"usage\":null}\n\n", b"data: {}\n\n"),
        ];
        let strip = |e: &[u8]| null_usage_span(e).map(|(from, to)| [&e[..from], &e[to..]].concat());
        for (input, want) in cases {
            assert_eq!(strip(input).as_deref(), Some(want));
        }
        assert!(strip(b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n").is_none());
        assert!(strip(b"data: {\"c\":\"say \\\"usage\\\":null\"}\n\n").is_none());
    }
}
