//! An upstream's event stream cut into reads at arbitrary points: the splitter yields the
//! same events whatever the cuts, never holds more than its limit, and the meter reads any
//! event without panicking.
#![no_main]

use candor::proxy::meter::Meter;
use candor::proxy::sse::{SseSplitter, complete_tail, event_data};
use candor::splitmix::SplitMix;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

/// Events of `stream` read in pieces of random lengths (whole when `cuts` is `None`), or
/// `None` once one is too large.
fn split(stream: &[u8], mut cuts: Option<SplitMix>, limit: usize) -> Option<Vec<Vec<u8>>> {
    let mut s = SseSplitter::with_limit(limit);
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = cuts
            .as_mut()
            .map_or(rest.len(), |r| 1 + r.below(64) as usize)
            .min(rest.len());
        s.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(e) = s.next_event().ok()? {
            assert!(e.len() <= limit);
            events.push(e.to_vec());
        }
    }
    events.extend(s.remainder().map(|r| r.to_vec()));
    Some(events)
}

// The input: two bytes of limit (little-endian, in units of 16 bytes), one byte seeding the
// read lengths, then the stream.
fuzz_target!(|data: &[u8]| {
    let [a, b, seed, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes([*a, *b])).max(1) * 16;
    let whole = split(stream, None, limit);
    let pieces = split(stream, Some(SplitMix::new(u64::from(*seed))), limit);
    if let (Some(whole), Some(pieces)) = (&whole, &pieces) {
        assert_eq!(whole, pieces, "the same events whatever the reads");
        assert_eq!(whole.concat(), stream, "nothing lost or added");
    }
    let mut meter = Meter::new(Instant::now());
    for event in whole.into_iter().flatten() {
        if let Some(data) = event_data(&event) {
            meter.on_data(Instant::now(), &data);
        }
        let _ = complete_tail(&event);
    }
});
