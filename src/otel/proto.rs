//! OTLP's `ExportTraceServiceRequest` in protobuf, written by hand: the few messages trace
//! export needs (opentelemetry-proto's `trace/v1` and `common/v1`) do not justify a code
//! generator and its dependencies. Field numbers are those of the `.proto` files.

use super::span::{Span, Status, Value};

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// The resource and scope every batch is sent under.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Resource attributes (`service.name`, ...).
    pub attributes: Vec<(&'static str, Value)>,
}

/// Encodes one export request: `resource_spans` holding one `ScopeSpans` with `spans`.
pub fn export_request(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    let mut scope_spans = Vec::new();
    message(&mut scope_spans, 1, |m| {
        string(m, 1, "candor");
        string(m, 2, env!("CARGO_PKG_VERSION"));
    });
    for s in spans {
        message(&mut scope_spans, 2, |m| span(m, s));
    }
    let mut resource_spans = Vec::new();
    message(&mut resource_spans, 1, |m| {
        for (k, v) in &resource.attributes {
            message(m, 1, |kv| key_value(kv, k, v));
        }
    });
    bytes(&mut resource_spans, 2, &scope_spans);
    let mut out = Vec::with_capacity(resource_spans.len() + 8);
    bytes(&mut out, 1, &resource_spans);
    out
}

fn span(m: &mut Vec<u8>, s: &Span) {
    bytes(m, 1, &s.trace_id);
    bytes(m, 2, &s.span_id);
    if let Some(p) = &s.parent {
        bytes(m, 4, p);
    }
    string(m, 5, &s.name);
    tag(m, 6, VARINT);
    varint(m, s.kind as u64);
    tag(m, 7, FIXED64);
    m.extend_from_slice(&s.start_ns.to_le_bytes());
    tag(m, 8, FIXED64);
    m.extend_from_slice(&s.end_ns.max(s.start_ns).to_le_bytes());
    for (k, v) in &s.attributes {
        message(m, 9, |kv| key_value(kv, k, v));
    }
    if let Status::Error(message_text) = &s.status {
        message(m, 15, |st| {
            string(st, 2, message_text);
            tag(st, 3, VARINT);
            varint(st, 2); // STATUS_CODE_ERROR
        });
    }
}

fn key_value(m: &mut Vec<u8>, key: &str, value: &Value) {
    string(m, 1, key);
    message(m, 2, |v| any_value(v, value));
}

fn any_value(m: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => string(m, 1, s),
        Value::Bool(b) => {
            tag(m, 2, VARINT);
            varint(m, u64::from(*b));
        }
        Value::Int(i) => {
            tag(m, 3, VARINT);
            // int64 is encoded as its two's-complement bits.
            varint(m, u64::from_le_bytes(i.to_le_bytes()));
        }
        Value::F64(f) => {
            tag(m, 4, FIXED64);
            m.extend_from_slice(&f.to_le_bytes());
        }
        Value::StrArray(items) => message(m, 5, |arr| {
            for s in items {
                message(arr, 1, |v| string(v, 1, s));
            }
        }),
    }
}

fn tag(m: &mut Vec<u8>, field: u32, wire: u8) {
    varint(m, (u64::from(field) << 3) | u64::from(wire));
}

fn varint(m: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        m.push((v as u8) | 0x80);
        v >>= 7;
    }
    m.push(v as u8);
}

fn bytes(m: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(m, field, LEN);
    varint(m, b.len() as u64);
    m.extend_from_slice(b);
}

fn string(m: &mut Vec<u8>, field: u32, s: &str) {
    bytes(m, field, s.as_bytes());
}

/// A nested message: written into a scratch buffer, then length-prefixed.
fn message(m: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes(m, field, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel::span::Kind;

    /// A minimal protobuf reader for the test: (field, wire type, payload) triples.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn read_varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = read_varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            let payload = match wire {
                VARINT => read_varint(&mut b).to_le_bytes().to_vec(),
                FIXED64 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                LEN => {
                    let n = read_varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, wire, payload));
        }
        out
    }

    fn field(b: &[u8], n: u32) -> Vec<u8> {
        fields(b)
            .into_iter()
            .find(|f| f.0 == n)
            .map(|f| f.2)
            .unwrap()
    }

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let mut m = Vec::new();
        varint(&mut m, 300);
        assert_eq!(m, [0xac, 0x02]);
        let mut m = Vec::new();
        any_value(&mut m, &Value::Int(-1));
        assert_eq!(m.len(), 1 + 10, "a negative int64 takes ten bytes");
    }

    #[test]
    fn a_span_encodes_to_the_otlp_field_numbers() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            name: "chat m".into(),
            kind: Kind::Client,
            start_ns: 5,
            end_ns: 9,
            attributes: vec![
                ("a.s", Value::Str("x".into())),
                ("a.i", Value::Int(42)),
                ("a.f", Value::F64(1.5)),
                ("a.b", Value::Bool(true)),
                ("a.l", Value::StrArray(vec!["p".into(), "q".into()])),
            ],
            status: Status::Error("boom".into()),
        };
        let resource = Resource {
            attributes: vec![("service.name", Value::Str("candor".into()))],
        };
        let req = export_request(&resource, &[span]);
        let rs = field(&req, 1);
        let res = field(&rs, 1);
        let kv = field(&res, 1);
        assert_eq!(field(&kv, 1), b"service.name");
        assert_eq!(field(&field(&kv, 2), 1), b"candor");
        let ss = field(&rs, 2);
        assert_eq!(field(&field(&ss, 1), 1), b"candor");
        let sp = field(&ss, 2);
        assert_eq!(field(&sp, 1), [1; 16]);
        assert_eq!(field(&sp, 2), [2; 8]);
        assert_eq!(field(&sp, 4), [3; 8]);
        assert_eq!(field(&sp, 5), b"chat m");
        assert_eq!(field(&sp, 6)[0], 3, "SPAN_KIND_CLIENT");
        assert_eq!(field(&sp, 7), 5u64.to_le_bytes());
        assert_eq!(field(&sp, 8), 9u64.to_le_bytes());
        let attrs: Vec<_> = fields(&sp).into_iter().filter(|f| f.0 == 9).collect();
        assert_eq!(attrs.len(), 5);
        let value = |i: usize| fields(&field(&attrs[i].2, 2)).remove(0);
        assert_eq!(value(0), (1, LEN, b"x".to_vec()));
        assert_eq!((value(1).0, value(1).2[0]), (3, 42));
        assert_eq!(value(2), (4, FIXED64, 1.5f64.to_le_bytes().to_vec()));
        assert_eq!((value(3).0, value(3).2[0]), (2, 1));
        let list = fields(&value(4).2);
        assert_eq!(list.len(), 2);
        let status = field(&sp, 15);
        assert_eq!(field(&status, 2), b"boom");
        assert_eq!(field(&status, 3)[0], 2, "STATUS_CODE_ERROR");
    }
}
