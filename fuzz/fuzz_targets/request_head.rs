//! A client's request body: the head Candor reads (bounded nesting, one pass), and the
//! body it sends upstream (renamed model, usage requested) must never panic, and what it
//! sends must still be a JSON object when the client's was.
#![no_main]

use bytes::Bytes;
use candor::proxy::body::{RequestHead, upstream_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(head) = RequestHead::parse(data) else {
        return;
    };
    let _ = head.ask();
    let body = Bytes::copy_from_slice(data);
    for model in ["renamed-upstream-model", head.model.as_str()] {
        let sent = upstream_body(&body, &head, model);
        if sent != body {
            let v: serde_json::Value = serde_json::from_slice(&sent)
                .expect("a rewritten body is JSON");
            assert!(v.is_object(), "a rewritten body is an object");
        }
    }
});
