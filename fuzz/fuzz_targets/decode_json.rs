//! A JSON-lines input file through the files source's decoder, in every malformed-record mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewater::FileFormat;

fuzz_target!(|data: &[u8]| {
    // A record is a line that is not blank (Spark's `multiLine = false`).
    let records = data
        .split_inclusive(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .count();
    tidewater_fuzz::check_modes(FileFormat::Json, data, records);
});
