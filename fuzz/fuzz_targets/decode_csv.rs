//! A CSV input file through the files source's decoder, in every malformed-record mode. The
//! first byte picks the `header` option and the delimiter; the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewater::FileFormat;

const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

fuzz_target!(|data: &[u8]| {
    let Some((&options, file)) = data.split_first() else {
        return;
    };
    let header = options & 1 == 1;
    let delimiter = DELIMITERS[usize::from(options >> 1) % DELIMITERS.len()];
    // The records as the `csv` crate delimits them, with the dialect arrow's decoder uses.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(file);
    let mut record = csv::ByteRecord::new();
    let mut records = 0usize;
    while let Ok(true) = reader.read_byte_record(&mut record) {
        records += 1;
    }
    if header {
        records = records.saturating_sub(1);
    }
    tidewater_fuzz::check_modes(FileFormat::Csv { header, delimiter }, file, records);
});
