//! Arbitrary bytes decoded as a stored event (envelope and all) and as a bare `Event`, the way
//! a store reads its records back: never a panic, and whatever decodes re-encodes to JSON that
//! decodes to the same value and encodes to the same text again (so a record read, rewritten
//! and read again is the record that was read).
//!
//! Random bytes rarely form a whole event; seed the corpus with the golden events, one per file:
//! `split -l 1 core/tests/golden/events.jsonl fuzz/corpus/stored_event_decode/golden-`.
#![no_main]

use fleetops_core::store::StoredEvent;
use fleetops_core::Event;
use libfuzzer_sys::fuzz_target;

/// Decodes `$data` as `$t`; if that works, checks the encode/decode round trip. (A macro
/// rather than a generic function keeps `serde` out of this crate's dependencies.)
macro_rules! round_trip {
    ($t:ty, $data:expr) => {
        if let Ok(value) = serde_json::from_slice::<$t>($data) {
            let text = serde_json::to_vec(&value).expect("a decoded value encodes");
            let again: $t = match serde_json::from_slice(&text) {
                Ok(v) => v,
                Err(e) => panic!(
                    "re-encoded {} does not decode: {e}\n{}",
                    stringify!($t),
                    String::from_utf8_lossy(&text)
                ),
            };
            assert_eq!(value, again, "decode(encode(v)) != v");
            let text_again = serde_json::to_vec(&again).expect("encodes");
            assert_eq!(text, text_again, "encoding is not stable");
        }
    };
}

fuzz_target!(|data: &[u8]| {
    round_trip!(StoredEvent, data);
    round_trip!(Event, data);
});
