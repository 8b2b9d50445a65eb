//! A scraped metrics page (vLLM, SGLang, llama.cpp, DCGM): the text parser and the
//! engine reader take anything without panicking.
#![no_main]

use candor::scrape::{engines, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let page = String::from_utf8_lossy(data);
    let lines = text::parse(&page);
    let _ = engines::read(&lines);
});
