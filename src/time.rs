//! Event-time arithmetic, checked.
//!
//! The engine computes with event times as nanoseconds since the epoch in an `i64`
//! (1677-09-21 to 2262-04-11), whatever the unit of the column they came from. Every step from a
//! user's value to that range — a `TIMESTAMP(0)` in year 9999, a window end past 2262, a duration
//! of 200 000 days — is checked: a value that does not fit is an [`Error::OutOfRange`] naming it,
//! never wrapped or saturated into another meaning. PostgreSQL answers "timestamp out of range" in
//! the same places.

use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};

use crate::error::{Error, Result};

/// Nanoseconds in one day.
pub(crate) const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// What the range is, for messages.
pub(crate) const RANGE: &str = "1677-09-21 to 2262-04-11";

/// Nanoseconds in one unit of a timestamp column.
pub(crate) fn nanos_per(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// A duration in nanoseconds, `None` when it does not fit in an `i64` (about 292 years).
pub(crate) fn duration_nanos(duration: Duration) -> Option<i64> {
    i64::try_from(duration.as_nanos()).ok()
}

/// The longest duration the engine computes with, for messages.
pub(crate) fn longest_duration() -> String {
    format!("{} days, about 292 years", i64::MAX / NANOS_PER_DAY)
}

/// A raw timestamp value in `unit`, as users write it (`2262-04-11T23:47:16`), or as a number
/// when even that cannot be shown.
pub(crate) fn show_time(raw: i64, unit: &TimeUnit) -> String {
    let per_second = 1_000_000_000 / nanos_per(unit);
    let (secs, sub) = (raw.div_euclid(per_second), raw.rem_euclid(per_second));
    // `sub` is below one second, so this is below 10^9.
    let nanos = u32::try_from(sub * nanos_per(unit)).unwrap_or(0);
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        None => format!("{raw} ({unit:?}s since the epoch)"),
    }
}

/// Timestamps of any unit as nanoseconds since the epoch; a time outside the range is an error
/// naming it. `i64::MAX` itself is refused too: operators use it as "no window".
pub(crate) fn to_nanos(times: &ArrayRef) -> Result<Int64Array> {
    let DataType::Timestamp(unit, _) = times.data_type() else {
        return Err(Error::Internal(format!("event time of type {}", times.data_type())));
    };
    let factor = nanos_per(unit);
    let raw = cast(times, &DataType::Int64).map_err(|e| Error::Internal(format!("event time: {e}")))?;
    let raw = raw.as_primitive::<Int64Type>();
    let nanos = raw.unary_opt::<_, Int64Type>(|v| v.checked_mul(factor).filter(|n| *n != i64::MAX));
    if nanos.null_count() == raw.null_count() {
        return Ok(nanos);
    }
    let row = (0..raw.len())
        .find(|r| raw.is_valid(*r) && nanos.is_null(*r))
        .unwrap_or_default();
    Err(Error::OutOfRange(format!(
        "event time {} is outside the range the engine computes in ({RANGE}); filter such rows out with \
         WHERE, or correct them",
        show_time(raw.value(row), unit)
    )))
}

/// The wall clock in nanoseconds since the epoch (the clock stays in range until 2262).
pub(crate) fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// A duration as a person writes it: `10 minutes`, `1 hour 30 minutes`, `1.5 seconds`.
pub(crate) fn describe_duration(duration: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")];
    let mut seconds = duration.as_secs();
    let nanos = duration.subsec_nanos();
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        let n = seconds / size;
        seconds %= size;
        let last = size == 1;
        if n > 0 || (last && nanos > 0) || (last && parts.is_empty()) {
            let value = match (last, nanos) {
                (true, 1..) => format!("{n}.{}", format!("{nanos:09}").trim_end_matches('0')),
                _ => n.to_string(),
            };
            let plural = if value == "1" { "" } else { "s" };
            parts.push(format!("{value} {unit}{plural}"));
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(describe_duration(Duration::from_secs(600)), "10 minutes");
        assert_eq!(describe_duration(Duration::from_secs(5400)), "1 hour 30 minutes");
        assert_eq!(describe_duration(Duration::from_millis(1500)), "1.5 seconds");
        assert_eq!(describe_duration(Duration::from_secs(86_401)), "1 day 1 second");
        assert_eq!(describe_duration(Duration::ZERO), "0 seconds");
    }
}
