//! W3C Trace Context: the `traceparent` a client sends is continued, a request without one
//! starts a trace, and every upstream attempt carries its own span id onward.

use reqwest::header::HeaderValue;

/// A trace id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// The trace one client request belongs to, and its server span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace {
    /// The trace (the client's, or a new one).
    pub trace_id: TraceId,
    /// The span of this request in Candor (kind SERVER).
    pub span_id: SpanId,
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<SpanId>,
    /// Whether this trace is recorded (and exported).
    pub sampled: bool,
}

impl RequestTrace {
    /// The `traceparent` for an upstream attempt whose span is `attempt`.
    pub fn header_for(&self, attempt: SpanId) -> Option<HeaderValue> {
        let flags = u8::from(self.sampled);
        HeaderValue::from_str(&format!(
            "00-{}-{}-{flags:02x}",
            hex(&self.trace_id),
            hex(&attempt)
        ))
        .ok()
    }
}

/// What a valid `traceparent` says: trace, parent span, sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Trace id.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller recorded its span.
    pub sampled: bool,
}

/// Parses a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`). Versions above 00 are read the
/// same way, as the specification asks; all-zero ids and version `ff` are invalid.
pub fn parse(value: &HeaderValue) -> Option<Parent> {
    let s = value.to_str().ok()?;
    let mut parts = s.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") || unhex::<1>(version).is_none() {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = unhex::<16>(trace).filter(|t| *t != [0; 16])?;
    let span_id = unhex::<8>(span).filter(|s| *s != [0; 8])?;
    let [flags] = unhex::<1>(flags)?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A random span id (never zero).
pub fn new_span_id() -> SpanId {
    loop {
        let id: SpanId = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A random trace id (never zero).
pub fn new_trace_id() -> TraceId {
    loop {
        let id: TraceId = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn a_valid_traceparent_is_read_and_continued() {
        let p = parse(&hv(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let t = RequestTrace {
            trace_id: p.trace_id,
            span_id: [1; 8],
            parent: Some(p.span_id),
            sampled: true,
        };
        assert_eq!(
            t.header_for([0xab; 8]).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01"
        );
    }

    #[test]
    fn malformed_or_zero_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(&hv(bad)), None, "{bad}");
        }
        // A later version may append fields; its first four are read.
        assert!(
            parse(&hv(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x"
            ))
            .is_some()
        );
        let unsampled = parse(&hv(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.unwrap().sampled);
    }
}
