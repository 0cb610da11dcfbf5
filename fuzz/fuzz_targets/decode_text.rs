//! A text input file through the files source's decoder: one row per line, with the line's text
//! (invalid UTF-8 replaced), in every mode and every string type the `value` column may have.
//! The first byte picks the mode and type; the rest is the file.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tidewater::arrow::array::Array;
use tidewater::arrow::compute::cast;
use tidewater::arrow::datatypes::{DataType, Field, Schema};
use tidewater::fuzzing::decode_file;
use tidewater::{FileFormat, MalformedMode};

const MODES: [MalformedMode; 3] = [
    MalformedMode::Permissive,
    MalformedMode::DropMalformed,
    MalformedMode::FailFast,
];
const TYPES: [DataType; 3] = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];

fuzz_target!(|data: &[u8]| {
    let Some((&options, file)) = data.split_first() else {
        return;
    };
    let mode = MODES[usize::from(options) % MODES.len()];
    let value_type = TYPES[usize::from(options / 3) % TYPES.len()].clone();
    let schema = Arc::new(Schema::new(vec![Field::new("value", value_type, true)]));
    let decoded = decode_file(FileFormat::Text, mode, schema.clone(), file).expect("text reads any file");
    assert_eq!(
        (decoded.malformed, decoded.dropped),
        (0, 0),
        "text has no malformed records"
    );

    let text = String::from_utf8_lossy(file);
    let mut lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut row = 0;
    for batch in &decoded.batches {
        assert_eq!(batch.schema(), schema);
        let values = cast(batch.column(0), &DataType::Utf8).expect("string column");
        let values = values
            .as_any()
            .downcast_ref::<tidewater::arrow::array::StringArray>()
            .expect("Utf8");
        for i in 0..values.len() {
            assert_eq!(Some(values.value(i)), lines.get(row).copied(), "row {row}");
            row += 1;
        }
    }
    assert_eq!(row, lines.len(), "one row per line");
});
