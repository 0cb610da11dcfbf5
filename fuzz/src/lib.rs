//! What the decode fuzz targets share: the declared columns, and the invariants a decoded file
//! must keep in every malformed-record mode.
//!
//! # Background
//! A panic is not the only bug a decoder can have. The modes promise a count: `permissive` keeps
//! one row per record (a malformed one as nulls, its text in `_corrupt_record`),
//! `drop_malformed` drops exactly the records `permissive` calls malformed, and `fail_fast` fails
//! exactly when there is one. The number of records is counted here independently of the decoder
//! (JSON: lines that are not blank; CSV: records as the `csv` crate delimits them), so a decoder
//! that loses, invents or splits a record fails the target.

use std::sync::Arc;

use tidewater::ErrorKind;
use tidewater::arrow::array::{Array, AsArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tidewater::fuzzing::{DecodedFile, decode_file};
use tidewater::{FileFormat, MalformedMode};

/// The declared columns: one of each kind a stream commonly has, optionally `_corrupt_record`.
pub fn schema(corrupt_record: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("score", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
    ];
    if corrupt_record {
        fields.push(Field::new("_corrupt_record", DataType::Utf8, true));
    }
    Arc::new(Schema::new(fields))
}

fn rows(decoded: &DecodedFile) -> usize {
    decoded.batches.iter().map(|b| b.num_rows()).sum()
}

/// Decodes `bytes` as `format` in every mode and checks the modes against each other and against
/// `records`, the number of records in the file.
pub fn check_modes(format: FileFormat, bytes: &[u8], records: usize) {
    let decode = |mode, corrupt| decode_file(format.clone(), mode, schema(corrupt), bytes);
    let permissive = decode(MalformedMode::Permissive, false).expect("permissive mode reads any file");
    assert_eq!(rows(&permissive), records, "permissive: one row per record");
    assert_eq!(permissive.dropped, 0, "permissive drops nothing");
    assert!(
        permissive.malformed <= records as u64,
        "more malformed records than records"
    );
    for batch in &permissive.batches {
        assert_eq!(batch.schema(), schema(false), "rows in the declared schema");
    }

    let with_text = decode(MalformedMode::Permissive, true).expect("permissive mode reads any file");
    assert_eq!(
        rows(&with_text),
        records,
        "permissive with _corrupt_record: one row per record"
    );
    assert_eq!(
        with_text.malformed, permissive.malformed,
        "declaring _corrupt_record changes which records are malformed"
    );
    let texts: usize = with_text
        .batches
        .iter()
        .map(|b| {
            let column = b.column_by_name("_corrupt_record").expect("declared column");
            column.len() - column.null_count()
        })
        .sum();
    assert_eq!(
        texts as u64, with_text.malformed,
        "a _corrupt_record text per malformed record"
    );
    for batch in &with_text.batches {
        let corrupt = batch
            .column_by_name("_corrupt_record")
            .expect("declared column")
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            if corrupt.is_valid(row) {
                for column in &batch.columns()[..batch.num_columns() - 1] {
                    assert!(column.is_null(row), "a malformed record's columns are null");
                }
            }
        }
    }

    let dropping = decode(MalformedMode::DropMalformed, false).expect("drop_malformed reads any file");
    assert_eq!(dropping.malformed, 0, "drop_malformed keeps no malformed record");
    assert_eq!(
        dropping.dropped, permissive.malformed,
        "drop_malformed drops the records permissive keeps as nulls"
    );
    assert_eq!(
        rows(&dropping) + dropping.dropped as usize,
        records,
        "drop_malformed: kept + dropped"
    );

    match decode(MalformedMode::FailFast, false) {
        Ok(strict) => {
            assert_eq!(permissive.malformed, 0, "fail_fast passed over a malformed record");
            assert_eq!(rows(&strict), records, "fail_fast: one row per record");
            assert_eq!((strict.malformed, strict.dropped), (0, 0));
        }
        Err(error) => {
            assert!(permissive.malformed > 0, "fail_fast failed on a clean file: {error}");
            assert_eq!(error.kind(), ErrorKind::User, "{error}");
            assert!(error.to_string().contains(", line "), "no line in: {error}");
        }
    }
}
