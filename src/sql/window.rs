//! `window(time, width [, slide [, start_offset]])`: the event-time window a row falls in, as a
//! struct `{start, end}` of the time column's type (start inclusive, end exclusive).
//!
//! Windows are aligned to the Unix epoch plus `start_offset`, in UTC, as in Spark. Because the
//! function is an ordinary scalar function, the same `GROUP BY window(time, '1 hour')` runs on a
//! static table too, which is how streaming results are checked against batch results. Widths
//! are strings such as `'1 hour'` or SQL intervals; months and years, whose length varies, are
//! refused.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, IntervalUnit, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::time::{nanos_per, show_time};

/// The `window` function. See the [module docs](self).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimeWindow {
    signature: Signature,
}

impl TimeWindow {
    pub(crate) fn new() -> Self {
        TimeWindow {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// The most windows a sliding window may put one row in (`width / slide`): each is a row of the
/// aggregation's input, so past this one input row costs megabytes. A day in 10-second slides
/// is 8640.
pub(crate) const MAX_WINDOWS_PER_ROW: u64 = 10_000;

/// The window sizes of one call, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowSpec {
    pub(crate) width: i64,
    pub(crate) slide: i64,
    pub(crate) offset: i64,
}

/// The struct type `{start, end}` for event times of type `time`.
pub(crate) fn window_type(time: &DataType) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("start", time.clone(), true),
        Field::new("end", time.clone(), true),
    ]))
}

/// A duration argument in nanoseconds: a string such as `'1 hour'` or an interval. Durations that
/// do not fit in an `i64` of nanoseconds (about 292 years) are refused, never wrapped.
pub(crate) fn duration_nanos(value: &ScalarValue, what: &str) -> DfResult<i64> {
    const NANOS_PER_DAY: i128 = crate::time::NANOS_PER_DAY as i128;
    let nanos: i128 = match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            match crate::options::parse_duration(s) {
                Ok(d) => d.as_nanos() as i128,
                Err(m) => return plan_err!("window(): {what}: {m}"),
            }
        }
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            i128::from(v.days) * NANOS_PER_DAY + i128::from(v.milliseconds) * 1_000_000
        }
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(Some(_)) => {
            return plan_err!("window(): {what} has months or years, whose length varies; use days or smaller units");
        }
        other => return plan_err!("window(): {what} must be a constant duration such as '1 hour', got {other}"),
    };
    match i64::try_from(nanos) {
        Ok(nanos) => Ok(nanos),
        Err(_) => plan_err!(
            "window(): {what} is longer than the longest duration the engine computes with ({})",
            crate::time::longest_duration()
        ),
    }
}

impl WindowSpec {
    /// The sizes in `unit`, the unit of the time column.
    fn in_unit(self, unit: &TimeUnit) -> DfResult<WindowSpec> {
        Ok(WindowSpec {
            width: whole_units(self.width, unit, "window(): the width")?,
            slide: whole_units(self.slide, unit, "window(): the slide")?,
            offset: whole_units(self.offset, unit, "window(): the start offset")?,
        })
    }
}

/// A duration of `nanos` in `unit`, the unit of a time column. One that is not a whole number of
/// units is refused rather than cut (a 1500-millisecond window over a column of seconds would
/// otherwise count one second); `what` names it.
pub(crate) fn whole_units(nanos: i64, unit: &TimeUnit, what: &str) -> DfResult<i64> {
    let per = nanos_per(unit);
    if nanos % per != 0 {
        let unit = unit_name(unit);
        return exec_err!(
            "{what} ({nanos} nanoseconds) is not a whole number of {unit}, the unit of the time column; cast \
             the column to a finer TIMESTAMP or give a whole number of {unit}"
        );
    }
    Ok(nanos / per)
}

/// A unit of time, in words.
fn unit_name(unit: &TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "seconds",
        TimeUnit::Millisecond => "milliseconds",
        TimeUnit::Microsecond => "microseconds",
        TimeUnit::Nanosecond => "nanoseconds",
    }
}

/// Reads and checks the constant arguments of a `window` call.
pub(crate) fn window_spec(args: &[Option<&ScalarValue>]) -> DfResult<WindowSpec> {
    let constant = |i: usize, what: &str| match args.get(i) {
        Some(Some(v)) => duration_nanos(v, what).map(Some),
        Some(None) => plan_err!("window(): {what} must be a constant"),
        None => Ok(None),
    };
    let Some(width) = constant(1, "the width")? else {
        return plan_err!("window(time, width [, slide [, start_offset]]) needs a width such as '1 hour'");
    };
    let slide = constant(2, "the slide")?.unwrap_or(width);
    let offset = constant(3, "the start offset")?.unwrap_or(0);
    if width <= 0 {
        return plan_err!("window(): the width must be above zero");
    }
    if slide <= 0 {
        return plan_err!("window(): the slide must be above zero");
    }
    if slide > width {
        return plan_err!("window(): the slide must not exceed the width (rows between windows would be lost)");
    }
    if offset.unsigned_abs() >= slide.unsigned_abs() {
        return plan_err!("window(): the start offset must be smaller than the slide");
    }
    let per_row = width.unsigned_abs().div_ceil(slide.unsigned_abs());
    if per_row > MAX_WINDOWS_PER_ROW {
        return plan_err!(
            "window(): a width {per_row} times its slide puts every row in {per_row} windows; at most \
             {MAX_WINDOWS_PER_ROW} are allowed (use a longer slide)"
        );
    }
    Ok(WindowSpec { width, slide, offset })
}

/// The window sizes of a call being executed (its constant arguments).
fn spec_of_call(args: &ScalarFunctionArgs) -> DfResult<WindowSpec> {
    let constants: Vec<Option<&ScalarValue>> = args
        .args
        .iter()
        .map(|a| match a {
            ColumnarValue::Scalar(s) => Some(s),
            ColumnarValue::Array(_) => None,
        })
        .collect();
    window_spec(&constants)
}

impl ScalarUDFImpl for TimeWindow {
    fn name(&self) -> &str {
        "window"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if !(2..=4).contains(&arg_types.len()) {
            return plan_err!("window(time, width [, slide [, start_offset]]) takes 2 to 4 arguments");
        }
        let time = match &arg_types[0] {
            DataType::Timestamp(_, _) => arg_types[0].clone(),
            DataType::Date32 | DataType::Date64 | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                DataType::Timestamp(TimeUnit::Nanosecond, None)
            }
            other => return plan_err!("window(): the time column must be a TIMESTAMP, got {other}"),
        };
        let durations = arg_types[1..].iter().map(|t| match t {
            DataType::Interval(IntervalUnit::MonthDayNano | IntervalUnit::DayTime | IntervalUnit::YearMonth) => {
                Ok(t.clone())
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(DataType::Utf8),
            other => plan_err!("window(): durations are strings such as '1 hour' or intervals, got {other}"),
        });
        std::iter::once(Ok(time)).chain(durations).collect()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        window_spec(args.scalar_arguments)?;
        Ok(Arc::new(Field::new(
            self.name(),
            window_type(args.arg_fields[0].data_type()),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let spec = spec_of_call(&args)?;
        if spec.slide != spec.width {
            return exec_err!(
                "window() with a slide shorter than its width puts a row in several windows, so it can only be \
                 a GROUP BY key"
            );
        }
        let times = args.args[0].to_array(args.number_rows)?;
        let DataType::Timestamp(unit, _) = times.data_type() else {
            return exec_err!(
                "window(): the time column must be a TIMESTAMP, got {}",
                times.data_type()
            );
        };
        let WindowSpec { width, offset, .. } = spec.in_unit(unit)?;
        let raw: PrimitiveArray<Int64Type> = match unit {
            TimeUnit::Second => times.as_primitive::<TimestampSecondType>().reinterpret_cast(),
            TimeUnit::Millisecond => times.as_primitive::<TimestampMillisecondType>().reinterpret_cast(),
            TimeUnit::Microsecond => times.as_primitive::<TimestampMicrosecondType>().reinterpret_cast(),
            TimeUnit::Nanosecond => times.as_primitive::<TimestampNanosecondType>().reinterpret_cast(),
        };
        let starts: PrimitiveArray<Int64Type> =
            raw.try_unary(|t| windows_at(t, width, width, offset, unit).map(|(start, _)| start))?;
        let ends: PrimitiveArray<Int64Type> = starts.unary(|s| s + width);
        let time_type = times.data_type().clone();
        let as_time = |a: PrimitiveArray<Int64Type>| -> DfResult<ArrayRef> {
            Ok(datafusion::arrow::compute::cast(&a, &time_type)?)
        };
        let DataType::Struct(fields) = window_type(&time_type) else {
            return exec_err!("window(): struct type expected");
        };
        let nulls: Option<NullBuffer> = times.logical_nulls();
        let windows = StructArray::try_new(fields, vec![as_time(starts)?, as_time(ends)?], nulls)?;
        Ok(ColumnarValue::Array(Arc::new(windows)))
    }
}

/// The windows of `width`, `slide` and `offset` that hold time `t` (all in one unit): the latest
/// window's start and the earliest's. Checked: when a window would start before or end after
/// the range the engine computes in, the row is refused with its time, never given a wrapped
/// window (a row in 2262 with a window ending in 1677).
fn windows_at(t: i64, width: i64, slide: i64, offset: i64, unit: &TimeUnit) -> Result<(i64, i64), ArrowError> {
    let time = t;
    let (t, width, slide, offset) = (i128::from(t), i128::from(width), i128::from(slide), i128::from(offset));
    let latest = t - (t - offset).rem_euclid(slide);
    // Windows start every `slide` before `latest`; the earliest one still ends after `t`.
    let earliest = latest - (width - (t - latest) - 1) / slide * slide;
    if !(in_range(earliest, unit) && in_range(latest + width, unit)) {
        return Err(outside_range("window()", time, unit));
    }
    // Both fit: they are within the range in nanoseconds, so in the column's unit too.
    Ok((latest as i64, earliest as i64))
}

/// Whether time `v`, in `unit`, lies strictly inside the range the engine computes in
/// (nanoseconds in an `i64`, whose largest value operators keep for "no window").
fn in_range(v: i128, unit: &TimeUnit) -> bool {
    v.checked_mul(i128::from(nanos_per(unit)))
        .is_some_and(|n| n > i128::from(i64::MIN) && n < i128::from(i64::MAX))
}

/// The error for a row at `time` (in `unit`) whose window of `function` cannot be represented.
fn outside_range(function: &str, time: i64, unit: &TimeUnit) -> ArrowError {
    ArrowError::ComputeError(format!(
        "{function}: the row at {} falls in a window outside the range the engine computes in ({}); filter \
         such rows out with WHERE, or correct them",
        show_time(time, unit),
        crate::time::RANGE
    ))
}

/// `window_list(time, width, slide [, start_offset])`: every sliding window that contains `time`,
/// as a list of `{start, end}` structs, latest first. The sliding-window rewrite
/// ([`super::sliding`]) unnests it below the aggregation; it is not meant to be called directly.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowList {
    signature: Signature,
}

impl WindowList {
    pub(crate) fn new() -> Self {
        WindowList {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn list_type(time: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", window_type(time), true)))
}

impl ScalarUDFImpl for WindowList {
    fn name(&self) -> &str {
        "window_list"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        TimeWindow::new().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(list_type(&arg_types[0]))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::array::{ListArray, StructArray};
        use datafusion::arrow::buffer::OffsetBuffer;
        let spec = spec_of_call(&args)?;
        let times = args.args[0].to_array(args.number_rows)?;
        let time_type = times.data_type().clone();
        let DataType::Timestamp(unit, _) = &time_type else {
            return exec_err!("window(): the time column must be a TIMESTAMP, got {time_type}");
        };
        let WindowSpec { width, slide, offset } = spec.in_unit(unit)?;
        let raw = datafusion::arrow::compute::cast(&times, &DataType::Int64)?;
        let raw = raw.as_primitive::<Int64Type>();
        let (mut starts, mut lengths) = (Vec::new(), Vec::with_capacity(raw.len()));
        for row in 0..raw.len() {
            if raw.is_null(row) {
                lengths.push(0);
                continue;
            }
            let (latest, earliest) = windows_at(raw.value(row), width, slide, offset, unit)?;
            let mut start = latest;
            let mut n = 0;
            while start >= earliest {
                starts.push(start);
                n += 1;
                match start.checked_sub(slide) {
                    Some(next) => start = next,
                    None => break,
                }
            }
            lengths.push(n);
        }
        let starts = PrimitiveArray::<Int64Type>::from(starts);
        let ends: PrimitiveArray<Int64Type> = starts.unary(|s| s + width);
        let as_time = |a: PrimitiveArray<Int64Type>| -> DfResult<ArrayRef> {
            Ok(datafusion::arrow::compute::cast(&a, &time_type)?)
        };
        let DataType::Struct(fields) = window_type(&time_type) else {
            return exec_err!("window(): struct type expected");
        };
        let windows = StructArray::try_new(fields, vec![as_time(starts)?, as_time(ends)?], None)?;
        let DataType::List(item) = list_type(&time_type) else {
            return exec_err!("window_list(): list type expected");
        };
        let list = ListArray::try_new(
            item,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(windows),
            times.logical_nulls(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// `session_window(time, gap)`: the session a row belongs to, as a struct `{start, end}`.
///
/// Sessions depend on the rows around each row, so no scalar function can compute them: a
/// streaming aggregation replaces this call by [`SessionPiece`] and merges the pieces into
/// sessions (see `operator::session`); an aggregation over static tables is rewritten by
/// [`super::sessions`]. Anywhere else (outside a GROUP BY) the call is refused when it runs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionWindow {
    signature: Signature,
    name: &'static str,
}

impl SessionWindow {
    /// The user-facing `session_window`.
    pub(crate) fn new() -> Self {
        SessionWindow {
            signature: Signature::user_defined(Volatility::Immutable),
            name: "session_window",
        }
    }
}

/// The row's own piece of a session, `{time, time + gap}`, which the session operator merges.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionPiece {
    signature: Signature,
}

impl SessionPiece {
    pub(crate) const NAME: &'static str = "__tidewater_session_piece";

    pub(crate) fn new() -> Self {
        SessionPiece {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn session_coerce(arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
    if arg_types.len() != 2 {
        return plan_err!("session_window(time, gap) takes 2 arguments");
    }
    TimeWindow::new().coerce_types(arg_types)
}

impl ScalarUDFImpl for SessionWindow {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        session_coerce(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        window_spec(args.scalar_arguments).map_err(|e| e.context("session_window(): the gap"))?;
        Ok(Arc::new(Field::new(
            self.name(),
            window_type(args.arg_fields[0].data_type()),
            true,
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        exec_err!("session_window() can only be a GROUP BY key: GROUP BY ..., session_window(time, gap)")
    }
}

impl ScalarUDFImpl for SessionPiece {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        session_coerce(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(window_type(&arg_types[0]))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let gap = match &args.args[1] {
            ColumnarValue::Scalar(v) => duration_nanos(v, "the gap")?,
            ColumnarValue::Array(_) => return exec_err!("session_window(): the gap must be a constant"),
        };
        let times = args.args[0].to_array(args.number_rows)?;
        let time_type = times.data_type().clone();
        let DataType::Timestamp(unit, _) = &time_type else {
            return exec_err!("session_window(): the time column must be a TIMESTAMP, got {time_type}");
        };
        let gap = whole_units(gap, unit, "session_window(): the gap")?;
        let raw = datafusion::arrow::compute::cast(&times, &DataType::Int64)?;
        let starts = raw.as_primitive::<Int64Type>().clone();
        // Checked: a row whose session would end past the range is refused, never wrapped.
        let ends: PrimitiveArray<Int64Type> = starts.try_unary(|t| {
            let end = i128::from(t) + i128::from(gap);
            match in_range(i128::from(t), unit) && in_range(end, unit) {
                true => Ok(t + gap),
                false => Err(outside_range("session_window()", t, unit)),
            }
        })?;
        let DataType::Struct(fields) = window_type(&time_type) else {
            return exec_err!("session_window(): struct type expected");
        };
        let as_time = |a: &dyn Array| datafusion::arrow::compute::cast(a, &time_type);
        let pieces = StructArray::try_new(fields, vec![as_time(&starts)?, as_time(&ends)?], times.logical_nulls())?;
        Ok(ColumnarValue::Array(Arc::new(pieces)))
    }
}

/// `window_time(window)`: the event time of a window, its end less one unit of its type (Spark's
/// `window_time`, end minus a microsecond for microsecond times): the time under which a window
/// aggregation's output falls into the right window of a second window aggregation, as in
/// `GROUP BY window(window_time(w), '1 hour')` over `SELECT window(t, '10 minutes') AS w ...`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowTime {
    signature: Signature,
}

impl WindowTime {
    pub(crate) fn new() -> Self {
        WindowTime {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WindowTime {
    fn name(&self) -> &str {
        "window_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match &arg_types[0] {
            DataType::Struct(fields) => match fields.find("end") {
                Some((_, end)) if matches!(end.data_type(), DataType::Timestamp(_, _)) => Ok(end.data_type().clone()),
                _ => plan_err!(
                    "window_time() takes a window (a struct with a timestamp 'end'), not {}",
                    arg_types[0]
                ),
            },
            other => plan_err!("window_time() takes a window made by window() or session_window(), not {other}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::compute::cast;
        let rows = args.number_rows;
        let windows = args.args[0].to_array(rows)?;
        let windows = windows.as_struct();
        let Some(end) = windows.column_by_name("end") else {
            return exec_err!("window_time(): the window has no 'end'");
        };
        let ends = cast(end, &DataType::Int64)?;
        // A window's end is above the smallest time, so taking one away cannot wrap.
        let times: PrimitiveArray<Int64Type> = ends.as_primitive::<Int64Type>().unary(|end| end.saturating_sub(1));
        let nulls = NullBuffer::union(windows.nulls(), times.nulls());
        let times = PrimitiveArray::<Int64Type>::new(times.values().clone(), nulls);
        Ok(ColumnarValue::Array(cast(&times, end.data_type())?))
    }
}
