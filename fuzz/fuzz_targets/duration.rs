//! Any text through `parse_duration`, which reads triggers, idle timeouts, watermark delays and
//! window widths: an answer or an error, and an answer is a duration the engine computes with.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(duration) = tidewater::parse_duration(text) {
        assert!(duration.as_nanos() <= i64::MAX as u128, "'{text}' -> {duration:?}");
    }
});
