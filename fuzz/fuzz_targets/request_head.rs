//! A client's request body: the head Candor reads (bounded nesting, one pass) and the body
//! it sends upstream (renamed model, usage requested) never panic, and what it sends is a
//! body Candor itself accepts, naming the upstream's model and asking for usage when a
//! stream needs it.
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
        let again = RequestHead::parse(&sent).expect("the body sent upstream parses");
        assert_eq!(again.model, model, "the upstream's model is named");
        assert!(!again.needs_usage_injection(), "a stream asks for usage");
        assert_eq!(again.stream, head.stream);
    }
});
