//! Config text: parsed and validated (every unknown key collected) without panicking.
#![no_main]

use candor::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, |_| Some("fuzz-secret".to_owned()));
    }
});
