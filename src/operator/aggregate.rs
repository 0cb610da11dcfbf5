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
//! batch's watermark) is dropped and counted, as in Spark, except in complete mode, which keeps
//! every window; a row without event time is dropped and counted too.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, interleave};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::{Emitted, OperatorMetrics, StatefulOperator, check_state_schema, output_batch};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::file::{Buckets, file_schema, state_rows};
use crate::state::groups::{Aggregates, Merged, snapshot_of_buckets};
use crate::state::store::SnapshotJob;
use crate::state::{GroupTable, StateFile};
use crate::time::to_nanos;

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
    /// Groups merged since the last [`StatefulOperator::changes`], by bucket, in merge order.
    changed: Vec<(i64, Merged)>,
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
        let file_schema = file_schema(Buckets::Runs, fields[..fields.len() - 1].iter().cloned());
        Ok(StatefulAggregate {
            aggregates: Aggregates::try_new(exprs)?,
            key_schema,
            state_schema,
            output_schema,
            event_time,
            buckets: BTreeMap::new(),
            changed: Vec::new(),
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
        inputs: &[Vec<RecordBatch>],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted> {
        let partial = super::only_input(inputs)?;
        let mut metrics = OperatorMetrics::default();
        let key_count = self.key_schema.fields().len();
        let partial: Vec<&RecordBatch> = partial.iter().filter(|b| b.num_rows() > 0).collect();
        // Complete mode keeps every window, so no row is too late for it (as in Spark).
        let late_watermark = late_watermark.filter(|_| mode != OutputMode::Complete);
        // Rows `(batch, row)` of each bucket, leaving out late rows and rows without event time.
        let mut by_bucket: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
        for (index, batch) in partial.iter().enumerate() {
            let columns = batch.columns();
            let rows_column = columns[columns.len() - 1].as_primitive::<Int64Type>();
            for (row, bucket) in self.bucket_of_rows(batch)?.into_iter().enumerate() {
                let input_rows = rows_column.value(row) as u64;
                match bucket {
                    None => metrics.null_event_time += input_rows,
                    Some(end) if end != NO_WINDOW && late_watermark.is_some_and(|w| end <= w) => {
                        metrics.dropped_by_watermark += input_rows
                    }
                    Some(end) => by_bucket.entry(end).or_default().push((index, row)),
                }
            }
        }
        let mut out = Vec::new();
        // One merge per bucket, so that every group it touched appears once in its result.
        for (end, at) in by_bucket {
            let column = |c: usize| -> Result<ArrayRef> {
                let arrays: Vec<&dyn Array> = partial.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &at).map_err(|e| Error::Internal(format!("partial rows: {e}")))
            };
            let width = partial[0].num_columns();
            let keys = (0..key_count).map(column).collect::<Result<Vec<_>>>()?;
            let states = (key_count..width - 1).map(column).collect::<Result<Vec<_>>>()?;
            let table = bucket(&mut self.buckets, end, &self.key_schema, &self.state_schema)?;
            let merged = table.merge(&self.aggregates, &keys, &states)?;
            metrics.rows_updated += merged.slots.len() as u64;
            if mode == OutputMode::Update {
                let mut columns = merged.keys.clone();
                columns.extend(self.aggregates.evaluate(merged.states.columns())?);
                out.push(output_batch(&self.output_schema, columns, merged.slots.len())?);
            }
            self.changed.push((end, merged));
        }
        if mode == OutputMode::Complete {
            for table in self.buckets.values() {
                out.push(self.emit(table, &(0..table.len()).collect::<Vec<_>>())?);
            }
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
                self.changed.retain(|(changed, _)| *changed != end);
                self.removed.push(end);
            }
        }
        metrics.rows_total = self.buckets.values().map(|t| t.len() as u64).sum();
        metrics.memory_bytes = self.buckets.values().map(|t| t.memory_size() as u64).sum();
        let rows =
            concat_batches(&self.output_schema, &out).map_err(|e| Error::Internal(format!("aggregate output: {e}")))?;
        Ok(Emitted {
            rows,
            // A group's key never changes, so an update replaces its earlier row under the same key.
            replaced: RecordBatch::new_empty(self.output_schema.clone()),
            metrics,
        })
    }

    fn next_close(&self) -> Option<i64> {
        self.buckets.keys().next().copied().filter(|end| *end != NO_WINDOW)
    }

    fn changes(&mut self) -> Result<StateFile> {
        let parts = std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(end, merged)| {
                let mut columns = merged.keys;
                columns.extend(merged.states.columns().iter().cloned());
                state_rows(&self.file_schema, end, merged.slots, columns)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows =
            concat_batches(&self.file_schema, &parts).map_err(|e| Error::Internal(format!("state delta: {e}")))?;
        Ok(StateFile::delta(rows, std::mem::take(&mut self.removed)))
    }

    fn discard_changes(&mut self) {
        self.changed.clear();
        self.removed.clear();
    }

    fn snapshot(&self) -> SnapshotJob {
        snapshot_of_buckets(&self.buckets, &self.file_schema)
    }

    fn restore(&mut self, state: &StateFile) -> Result<()> {
        check_state_schema(state, &self.file_schema)?;
        let key_count = self.key_schema.fields().len();
        self.buckets.clear();
        self.discard_changes();
        // A folded state holds each bucket's groups in slot order: interning them in that order
        // gives every group its old slot.
        for (end, first, rows) in state.bucket_runs()? {
            let rows_of = |range: std::ops::Range<usize>| -> Vec<ArrayRef> {
                range.map(|c| state.rows.column(c).slice(first, rows)).collect()
            };
            let keys = rows_of(2..2 + key_count);
            let states = rows_of(2 + key_count..state.rows.num_columns());
            let table = bucket(&mut self.buckets, end, &self.key_schema, &self.state_schema)?;
            let before = table.len();
            table.replace(&keys, &states)?;
            if before != 0 || table.len() != rows {
                return Err(Error::Internal(format!(
                    "restored state of window {end} is not in slot order ({rows} rows, {} groups)",
                    table.len()
                )));
            }
        }
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
