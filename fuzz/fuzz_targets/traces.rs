//! Trace files for replay (Azure LLM 2023 CSV, Mooncake JSONL): refused or read, never a
//! panic.
#![no_main]

use candor::load::trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = trace::parse(text);
        let _ = trace::parse_azure(text);
        let _ = trace::parse_mooncake(text);
    }
});
