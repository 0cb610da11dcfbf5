//! Options of a connector, as `WITH (...)` or `.option(key, value)` give them: one bag of strings
//! with typed readers that refuse a bad value naming the option and what is valid.
//!
//! It sits below sources and sinks, so each connector reads its own options in its own file.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};

/// Option names are case-insensitive; values are kept as written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Where the options come from, for error messages, e.g. `stream 'events'`.
    context: String,
    values: BTreeMap<String, String>,
}

impl Options {
    pub(crate) fn new(context: impl Into<String>) -> Self {
        Options {
            context: context.into(),
            values: BTreeMap::new(),
        }
    }

    /// Sets option `key`. Spark's camelCase names (`checkpointLocation`, `maxFilesPerTrigger`)
    /// mean the same as ours (`checkpoint_location`, `max_files_per_trigger`).
    pub(crate) fn insert(&mut self, key: &str, value: impl Into<String>) {
        let mut name = String::with_capacity(key.len() + 4);
        let mut previous = ' ';
        for c in key.chars() {
            if c.is_ascii_uppercase() && previous.is_ascii_lowercase() {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
            previous = c;
        }
        self.values.insert(name, value.into());
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> Error {
        Error::option(self.context.clone(), message)
    }

    /// Refuses options outside `valid`, listing the valid ones.
    pub(crate) fn check_known(&self, connector: &str, valid: &[&str]) -> Result<()> {
        for key in self.values.keys() {
            if key != "connector" && !valid.contains(&key.as_str()) {
                let mut all: Vec<&str> = std::iter::once("connector").chain(valid.iter().copied()).collect();
                all.sort_unstable();
                return Err(self.error(format!(
                    "unknown option '{key}' for connector '{connector}'; valid options: {}",
                    all.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value.trim()))
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.error(format!(
                    "option '{key}' = '{value}' is not valid; one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// A whole-number option from 1 to `max`: values past what the engine can do are refused
    /// here, at planning, rather than failing (or allocating without bound) once rows flow.
    pub(crate) fn positive(&self, key: &str, max: usize) -> Result<Option<usize>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.trim().parse::<u128>() {
            Ok(n) if n > 0 && n <= max as u128 => Ok(usize::try_from(n).ok()),
            _ => Err(self.error(format!(
                "option '{key}' = '{}' must be a whole number from 1 to {max}",
                crate::error::clip(value)
            ))),
        }
    }

    pub(crate) fn boolean(&self, key: &str) -> Result<Option<bool>> {
        self.choice(key, &[("true", true), ("false", false)])
    }

    pub(crate) fn required(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| self.error(format!("option '{key}' is required")))
    }
}

/// Parses a duration such as `'10 seconds'`, `'1 hour'`, `'500 milliseconds'` or `'1 day 2 hours'`.
///
/// # Examples
/// ```
/// # use std::time::Duration;
/// # use tidewater::parse_duration;
/// assert_eq!(parse_duration("2 seconds"), Ok(Duration::from_secs(2)));
/// assert_eq!(parse_duration("1 hour"), Ok(Duration::from_secs(3600)));
/// assert!(parse_duration("1 month").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let interval = datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano(text)
        .map_err(|_| format!("'{text}' is not a duration (e.g. '10 seconds', '5 minutes', '1 hour')"))?;
    if interval.months != 0 {
        return Err(format!(
            "'{text}' has months or years, whose length varies; use days, hours, minutes, seconds or milliseconds"
        ));
    }
    let nanos = i128::from(interval.days) * i128::from(crate::time::NANOS_PER_DAY) + i128::from(interval.nanoseconds);
    if nanos < 0 {
        return Err(format!("'{text}' is negative"));
    }
    // Event times are nanoseconds in an i64, so no longer duration can be added to one.
    match u64::try_from(nanos) {
        Ok(n) if n <= i64::MAX as u64 => Ok(Duration::from_nanos(n)),
        _ => Err(format!(
            "'{text}' is longer than the longest duration the engine computes with ({})",
            crate::time::longest_duration()
        )),
    }
}
