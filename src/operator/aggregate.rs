//! Streaming aggregation: grouped, optionally by an event-time window, in all three output modes.
//!
//! # Background
//! Each batch, DataFusion's own partial aggregation reduces the batch to one row of partial state
//! per group. This operator merges those rows into long-lived [`GroupTable`]s and emits:
//! - update: the groups this batch changed;
//! - complete: every group;
//! - append: the groups of windows that the watermark has closed, once, as they are evicted.
//!
//! Groups are kept per window end ("bucket"), so closing a window drops its whole table at once.
//! A row whose window had already closed when the batch started (end at or before the previous
//! batch's watermark) is dropped and counted, as in Spark; so is a row without event time.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::{OperatorMetrics, StatefulOperator, check_state_schema, output_batch, take_rows};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::groups::Aggregates;
use crate::state::store::BUCKET_COLUMN;
use crate::state::{GroupTable, StateFile};

/// The bucket of groups that have no event-time key: never closed by a watermark.
const NO_WINDOW: i64 = i64::MAX;

/// Which group column carries event time, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventTimeKey {
    /// A `window(...)` struct: the window closes at its `end`.
    Window(usize),
    /// A timestamp column with a watermark: the group closes at its own time.
    Time(usize),
}

/// The state and rules of one streaming aggregation.
#[derive(Debug)]
pub(crate) struct StatefulAggregate {
    aggregates: Aggregates,
    key_schema: SchemaRef,
    state_schema: SchemaRef,
    /// The aggregation's output: keys, then one value per aggregate.
    output_schema: SchemaRef,
    event_time: Option<EventTimeKey>,
    /// Groups by window end in nanoseconds ([`NO_WINDOW`] without an event-time key).
    buckets: BTreeMap<i64, GroupTable>,
    /// Slots changed since the last [`StatefulOperator::changes`], by bucket.
    dirty: BTreeMap<i64, Vec<usize>>,
    /// Buckets evicted since the last [`StatefulOperator::changes`].
    removed: Vec<i64>,
    /// The columns of a state file: the bucket, the keys, the states.
    file_schema: SchemaRef,
}

impl StatefulAggregate {
    /// `partial_schema` is the partial aggregation's output: `key_count` key columns, then the
    /// state columns of `exprs`, then one hidden row count (the last column), which tells how
    /// many input rows a dropped group row stood for.
    pub(crate) fn try_new(
        exprs: Vec<Arc<AggregateFunctionExpr>>,
        partial_schema: &SchemaRef,
        key_count: usize,
        output_schema: SchemaRef,
        event_time: Option<EventTimeKey>,
    ) -> Result<Self> {
        let fields = partial_schema.fields();
        let key_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields[..key_count].to_vec()));
        let state_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            fields[key_count..fields.len() - 1].to_vec(),
        ));
        let file_schema = Arc::new(Schema::new(
            std::iter::once(Arc::new(Field::new(BUCKET_COLUMN, DataType::Int64, false)))
                .chain(fields[..fields.len() - 1].iter().cloned())
                .collect::<Vec<_>>(),
        ));
        Ok(StatefulAggregate {
            aggregates: Aggregates::try_new(exprs)?,
            key_schema,
            state_schema,
            output_schema,
            event_time,
            buckets: BTreeMap::new(),
            dirty: BTreeMap::new(),
            removed: Vec::new(),
            file_schema,
        })
    }

    /// The output rows (keys and final values) of `slots` of `table`.
    fn emit(&self, table: &GroupTable, slots: &[usize]) -> Result<RecordBatch> {
        let mut columns = table.keys_of(slots)?;
        columns.extend(self.aggregates.evaluate(&table.states_of(slots)?)?);
        output_batch(&self.output_schema, columns, slots.len())
    }
}

impl StatefulOperator for StatefulAggregate {
    /// Merges one batch's partial states; windows ending at or before `close_watermark` are
    /// emitted in append mode and evicted (kept in complete mode, which re-emits everything).
    fn process(
        &mut self,
        partial: &[RecordBatch],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<(RecordBatch, OperatorMetrics)> {
        let mut metrics = OperatorMetrics::default();
        let key_count = self.key_schema.fields().len();
        let mut touched: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for batch in partial.iter().filter(|b| b.num_rows() > 0) {
            let columns = batch.columns();
            let rows_column = columns[columns.len() - 1].as_primitive::<Int64Type>();
            let buckets = self.bucket_of_rows(batch)?;
            // Rows of each bucket, leaving out late rows and rows without event time.
            let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (row, bucket) in buckets.iter().enumerate() {
                let input_rows = rows_column.value(row) as u64;
                match bucket {
                    None => metrics.null_event_time += input_rows,
                    Some(end) if *end != NO_WINDOW && late_watermark.is_some_and(|w| *end <= w) => {
                        metrics.dropped_by_watermark += input_rows
                    }
                    Some(end) => by_bucket.entry(*end).or_default().push(row as u32),
                }
            }
            for (end, rows) in by_bucket {
                let indices = UInt32Array::from(rows);
                let keys = take_rows(&columns[..key_count], &indices)?;
                let states = take_rows(&columns[key_count..columns.len() - 1], &indices)?;
                let table = bucket(&mut self.buckets, end, &self.key_schema, &self.state_schema)?;
                let slots = table.merge(&self.aggregates, &keys, &states)?;
                let seen = touched.entry(end).or_default();
                seen.extend(slots);
            }
        }
        for slots in touched.values_mut() {
            slots.sort_unstable();
            slots.dedup();
        }
        metrics.rows_updated = touched.values().map(|s| s.len() as u64).sum();
        for (end, slots) in &touched {
            self.dirty.entry(*end).or_default().extend(slots);
        }

        let mut out = Vec::new();
        match mode {
            OutputMode::Update => {
                for (end, slots) in &touched {
                    out.push(self.emit(&self.buckets[end], slots)?);
                }
            }
            OutputMode::Complete => {
                for table in self.buckets.values() {
                    out.push(self.emit(table, &(0..table.len()).collect::<Vec<_>>())?);
                }
            }
            OutputMode::Append => {}
        }
        // Windows the watermark has passed are final: emit them (append) and forget them.
        // Complete mode keeps everything, since it re-emits the whole table every batch.
        if mode != OutputMode::Complete
            && let Some(watermark) = close_watermark
        {
            let open = self.buckets.split_off(&watermark.saturating_add(1));
            let closed = std::mem::replace(&mut self.buckets, open);
            for (end, table) in closed {
                if end == NO_WINDOW {
                    self.buckets.insert(end, table);
                    continue;
                }
                if mode == OutputMode::Append {
                    out.push(self.emit(&table, &(0..table.len()).collect::<Vec<_>>())?);
                }
                metrics.rows_removed += table.len() as u64;
                self.dirty.remove(&end);
                self.removed.push(end);
            }
        }
        metrics.rows_total = self.buckets.values().map(|t| t.len() as u64).sum();
        metrics.memory_bytes = self.buckets.values().map(|t| t.memory_size() as u64).sum();
        let output =
            concat_batches(&self.output_schema, &out).map_err(|e| Error::Internal(format!("aggregate output: {e}")))?;
        Ok((output, metrics))
    }

    fn changes(&mut self) -> Result<StateFile> {
        let mut parts = Vec::with_capacity(self.dirty.len());
        for (end, mut slots) in std::mem::take(&mut self.dirty) {
            slots.sort_unstable();
            slots.dedup();
            let table = &self.buckets[&end];
            let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![end; slots.len()]))];
            columns.extend(table.keys_of(&slots)?);
            columns.extend(table.states_of(&slots)?);
            parts.push(
                RecordBatch::try_new(self.file_schema.clone(), columns)
                    .map_err(|e| Error::Internal(format!("state delta: {e}")))?,
            );
        }
        let rows =
            concat_batches(&self.file_schema, &parts).map_err(|e| Error::Internal(format!("state delta: {e}")))?;
        Ok(StateFile {
            rows,
            key_columns: 1 + self.key_schema.fields().len(),
            removed: std::mem::take(&mut self.removed),
            snapshot: false,
        })
    }

    fn discard_changes(&mut self) {
        self.dirty.clear();
        self.removed.clear();
    }

    fn restore(&mut self, files: &[StateFile]) -> Result<()> {
        let key_count = self.key_schema.fields().len();
        for file in files {
            check_state_schema(file, &self.file_schema)?;
            if file.snapshot {
                self.buckets.clear();
            }
            for end in &file.removed {
                self.buckets.remove(end);
            }
            let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (row, end) in file.buckets()?.values().iter().enumerate() {
                by_bucket.entry(*end).or_default().push(row as u32);
            }
            let columns = file.rows.columns();
            for (end, rows) in by_bucket {
                let (keys, states) = if rows.len() == file.rows.num_rows() {
                    // One bucket (always so without windows): no need to copy the rows.
                    (columns[1..=key_count].to_vec(), columns[1 + key_count..].to_vec())
                } else {
                    let indices = UInt32Array::from(rows);
                    (
                        take_rows(&columns[1..=key_count], &indices)?,
                        take_rows(&columns[1 + key_count..], &indices)?,
                    )
                };
                bucket(&mut self.buckets, end, &self.key_schema, &self.state_schema)?.replace(&keys, &states)?;
            }
        }
        self.dirty.clear();
        self.removed.clear();
        Ok(())
    }
}

impl StatefulAggregate {
    /// The bucket (window end in nanoseconds) of each partial row; `None` without event time.
    fn bucket_of_rows(&self, batch: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let Some(key) = self.event_time else {
            return Ok(vec![Some(NO_WINDOW); batch.num_rows()]);
        };
        let (times, nulls): (ArrayRef, Option<datafusion::arrow::buffer::NullBuffer>) = match key {
            EventTimeKey::Window(i) => {
                let windows = batch.column(i).as_struct();
                let ends = windows
                    .column_by_name("end")
                    .ok_or_else(|| Error::Internal("window struct without end".into()))?;
                (ends.clone(), windows.logical_nulls())
            }
            EventTimeKey::Time(i) => (batch.column(i).clone(), None),
        };
        let nanos = to_nanos(&times)?;
        Ok((0..nanos.len())
            .map(|r| {
                let null = nulls.as_ref().is_some_and(|n| n.is_null(r)) || nanos.is_null(r);
                (!null).then(|| nanos.value(r))
            })
            .collect())
    }
}

/// The group table of bucket `end`, created when missing.
fn bucket<'a>(
    buckets: &'a mut BTreeMap<i64, GroupTable>,
    end: i64,
    key_schema: &SchemaRef,
    state_schema: &SchemaRef,
) -> Result<&'a mut GroupTable> {
    Ok(match buckets.entry(end) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(GroupTable::try_new(key_schema.clone(), state_schema.clone())?)
        }
    })
}

/// Timestamps of any unit as nanoseconds since the epoch.
pub(crate) fn to_nanos(times: &ArrayRef) -> Result<Int64Array> {
    let DataType::Timestamp(unit, _) = times.data_type() else {
        return Err(Error::Internal(format!("event time of type {}", times.data_type())));
    };
    let factor = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    let raw = cast(times, &DataType::Int64).map_err(|e| Error::Internal(format!("event time: {e}")))?;
    Ok(raw.as_primitive::<Int64Type>().unary(|v| v.saturating_mul(factor)))
}
