//! From Arrow columns to values a database takes: struct columns flattened, every Arrow type
//! turned into one of a few bindable representations.
//!
//! # Background
//! A database column holds scalars, so a struct column such as a time window `w {start, end}`
//! becomes one column per field, named `w_start` and `w_end` (deeper structs repeat the rule). The
//! values are converted once per batch, with Arrow's cast kernels, into the few representations
//! the three drivers bind (64-bit integers, floats, text, bytes, dates, timestamps); the
//! [`Kind`] of a column decides which, so that what a created column's type promises
//! ([`Dialect::sql_type`]) is what is written into it.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    StringArray, StructArray, make_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::dialect::{Dialect, Kind};

/// One column of a batch, ready to bind. Rows are indexed as in the batch.
#[derive(Debug)]
pub(crate) enum Values {
    /// Booleans.
    Bool(BooleanArray),
    /// Integers of every width (and unsigned ones up to 32 bits).
    Int(Int64Array),
    /// `Float16` and `Float32`.
    Float32(Float32Array),
    /// `Float64`.
    Float64(Float64Array),
    /// Strings; also decimals (exact), 64-bit unsigned integers and, in SQLite, dates and
    /// timestamps (ISO 8601 text), and every type written as display text.
    Text(StringArray),
    /// Bytes.
    Binary(BinaryArray),
    /// Dates (PostgreSQL, MySQL).
    Date(Vec<Option<NaiveDate>>),
    /// Timestamps without time zone, or with one in MySQL (as UTC wall time).
    Timestamp(Vec<Option<NaiveDateTime>>),
    /// Timestamps with a time zone, in PostgreSQL (`TIMESTAMPTZ`).
    TimestampUtc(Vec<Option<DateTime<Utc>>>),
}

impl Values {
    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Bool(a) => a.len(),
            Values::Int(a) => a.len(),
            Values::Float32(a) => a.len(),
            Values::Float64(a) => a.len(),
            Values::Text(a) => a.len(),
            Values::Binary(a) => a.len(),
            Values::Date(v) => v.len(),
            Values::Timestamp(v) => v.len(),
            Values::TimestampUtc(v) => v.len(),
        }
    }

    /// Whether row `row` is null.
    pub(crate) fn is_null(&self, row: usize) -> bool {
        match self {
            Values::Bool(a) => a.is_null(row),
            Values::Int(a) => a.is_null(row),
            Values::Float32(a) => a.is_null(row),
            Values::Float64(a) => a.is_null(row),
            Values::Text(a) => a.is_null(row),
            Values::Binary(a) => a.is_null(row),
            Values::Date(v) => v[row].is_none(),
            Values::Timestamp(v) => v[row].is_none(),
            Values::TimestampUtc(v) => v[row].is_none(),
        }
    }

    /// About how many bytes the values take on the wire: 8 per fixed-width value, the length of
    /// strings and bytes. Used to keep one statement well under the servers' packet limits.
    pub(crate) fn wire_bytes(&self) -> usize {
        match self {
            Values::Text(a) => a.value_data().len() + 4 * a.len(),
            Values::Binary(a) => a.value_data().len() + 4 * a.len(),
            other => 8 * other.len(),
        }
    }
}

/// The columns of `schema` as the database sees them, struct columns flattened into
/// `<name>_<field>`.
pub(crate) fn flatten_schema(schema: &Schema) -> Vec<(String, DataType)> {
    let mut out = Vec::new();
    for field in schema.fields() {
        flatten_field(field.name().clone(), field, &mut out);
    }
    out
}

fn flatten_field(name: String, field: &Field, out: &mut Vec<(String, DataType)>) {
    match field.data_type() {
        DataType::Struct(children) => {
            for child in children {
                flatten_field(format!("{name}_{}", child.name()), child, out);
            }
        }
        other => out.push((name, other.clone())),
    }
}

/// The columns of `batch`, flattened as [`flatten_schema`] names them. A row where a struct is
/// null has nulls in every column made of it.
pub(crate) fn flatten_batch(batch: &RecordBatch) -> Vec<ArrayRef> {
    let mut out = Vec::new();
    for column in batch.columns() {
        flatten_array(Arc::clone(column), &mut out);
    }
    out
}

fn flatten_array(array: ArrayRef, out: &mut Vec<ArrayRef>) {
    let Some(structs) = array.as_struct_opt() else {
        out.push(array);
        return;
    };
    for child in structs.columns() {
        flatten_array(with_parent_nulls(structs, child), out);
    }
}

/// `child` with the rows where `parent` is null made null too.
fn with_parent_nulls(parent: &StructArray, child: &ArrayRef) -> ArrayRef {
    let Some(parent_nulls) = parent.nulls() else {
        return Arc::clone(child);
    };
    let nulls = NullBuffer::union(Some(parent_nulls), child.logical_nulls().as_ref());
    match child.to_data().into_builder().nulls(nulls).build() {
        Ok(data) => make_array(data),
        // Only a malformed array could fail here; keep the child as it is.
        Err(_) => Arc::clone(child),
    }
}

/// Converts a (flattened) column into the representation its [`Kind`] is bound as in `dialect`.
///
/// # Errors
/// A value the database cannot take (a date or timestamp out of range), as a message for the
/// caller to put the column's name on.
pub(crate) fn convert(array: &ArrayRef, kind: Kind, dialect: Dialect) -> Result<Values, String> {
    let cast_to = |to: &DataType| cast(array, to).map_err(|e| format!("converting {}: {e}", array.data_type()));
    Ok(match kind {
        Kind::Bool => Values::Bool(cast_to(&DataType::Boolean)?.as_boolean().clone()),
        Kind::Int {
            bits: 64,
            signed: false,
        } => Values::Text(cast_to(&DataType::Utf8)?.as_string::<i32>().clone()),
        Kind::Int { .. } => Values::Int(
            cast_to(&DataType::Int64)?
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .clone(),
        ),
        Kind::Float32 => Values::Float32(
            cast_to(&DataType::Float32)?
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
                .clone(),
        ),
        Kind::Float64 => Values::Float64(
            cast_to(&DataType::Float64)?
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .clone(),
        ),
        Kind::Decimal { .. } | Kind::Text => Values::Text(cast_to(&DataType::Utf8)?.as_string::<i32>().clone()),
        Kind::Null => Values::Text(StringArray::new_null(array.len())),
        Kind::Binary => Values::Binary(cast_to(&DataType::Binary)?.as_binary::<i32>().clone()),
        Kind::Date => {
            let days = cast_to(&DataType::Date32)?;
            let days = days.as_primitive::<Date32Type>();
            let dates = days
                .iter()
                .map(|d| d.map(|d| Date32Type::to_naive_date_opt(d).ok_or_else(|| format!("date {d} is out of range"))))
                .map(Option::transpose)
                .collect::<Result<Vec<_>, String>>()?;
            match dialect {
                Dialect::Sqlite => Values::Text(
                    dates
                        .iter()
                        .map(|d| d.map(|d| d.format("%Y-%m-%d").to_string()))
                        .collect(),
                ),
                Dialect::Postgres | Dialect::MySql => Values::Date(dates),
            }
        }
        Kind::Timestamp { utc } => {
            let micros = cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let micros = micros.as_primitive::<TimestampMicrosecondType>();
            let times = micros
                .iter()
                .map(|t| {
                    t.map(|t| {
                        DateTime::from_timestamp_micros(t).ok_or_else(|| format!("timestamp {t} µs is out of range"))
                    })
                })
                .map(Option::transpose)
                .collect::<Result<Vec<_>, String>>()?;
            match (dialect, utc) {
                (Dialect::Sqlite, _) => {
                    let suffix = if utc { "Z" } else { "" };
                    Values::Text(
                        times
                            .iter()
                            .map(|t| t.map(|t| format!("{}{suffix}", t.format("%Y-%m-%d %H:%M:%S%.f"))))
                            .collect(),
                    )
                }
                (Dialect::Postgres, true) => Values::TimestampUtc(times),
                (Dialect::Postgres | Dialect::MySql, _) => {
                    Values::Timestamp(times.iter().map(|t| t.map(|t| t.naive_utc())).collect())
                }
            }
        }
        Kind::Formatted => {
            let options = FormatOptions::default();
            let formatter = ArrayFormatter::try_new(array.as_ref(), &options)
                .map_err(|e| format!("formatting {}: {e}", array.data_type()))?;
            Values::Text(
                (0..array.len())
                    .map(|row| array.is_valid(row).then(|| formatter.value(row).to_string()))
                    .collect(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::Fields;

    #[test]
    fn struct_columns_flatten_with_their_nulls() {
        let fields = Fields::from(vec![
            Field::new("start", DataType::Int32, true),
            Field::new("end", DataType::Int32, true),
        ]);
        let window = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
                Arc::new(Int32Array::from(vec![3, 4])) as ArrayRef,
            ],
            Some(NullBuffer::from(vec![true, false])),
        );
        let schema = Arc::new(Schema::new(vec![Field::new("w", DataType::Struct(fields), true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(window)]).expect("batch");
        let names: Vec<String> = flatten_schema(&schema).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["w_start", "w_end"]);
        let columns = flatten_batch(&batch);
        assert_eq!(columns.len(), 2);
        assert!(columns[0].is_valid(0) && columns[0].is_null(1));
        assert!(columns[1].is_null(1));
    }

    #[test]
    fn timestamps_become_iso_text_in_sqlite() {
        let array: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![Some(1_700_000_000_123_456_789), None]).with_timezone("+02:00"),
        );
        let kind = Kind::of(array.data_type());
        let Values::Text(text) = convert(&array, kind, Dialect::Sqlite).expect("converts") else {
            panic!("text expected");
        };
        assert_eq!(text.value(0), "2023-11-14 22:13:20.123456Z");
        assert!(text.is_null(1));
    }
}
