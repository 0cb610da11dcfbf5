//! Deduplication: each key passes once, the first time it is seen.
//!
//! # Background
//! The state is a set of keys, kept in [`GroupTable`]s without aggregate states. When a key
//! column carries event time, keys are kept per event time ("bucket"), so the watermark drops a
//! whole bucket at once when it passes it, as it closes an aggregation's window; a row whose time
//! the previous batch's watermark had passed is late, dropped and counted (Spark's rule for
//! `dropDuplicates` with a watermark). Without event time every key is kept for good.
//!
//! The input rows keep their order: a batch emits the first row of each key it is the first to
//! see, among the rows the operator's shard received.

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};

use super::{Emitted, OperatorMetrics, StatefulOperator, check_state_schema};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::file::{Buckets, file_schema, state_rows};
use crate::state::groups::TableView;
use crate::state::store::SnapshotJob;
use crate::state::{GroupTable, StateFile};
use crate::time::to_nanos;

/// The bucket of keys without event time: never dropped.
const NO_TIME: i64 = i64::MAX;

/// The keys seen by one deduplication (one shard of it).
#[derive(Debug)]
pub(crate) struct Deduplicate {
    /// The input columns that are the key.
    keys: Vec<usize>,
    /// The key (a position in `keys`) that carries event time.
    event_time: Option<usize>,
    key_schema: SchemaRef,
    /// The output: the first `width` input columns.
    output_schema: SchemaRef,
    /// Keys by event time in nanoseconds ([`NO_TIME`] without event time).
    buckets: BTreeMap<i64, GroupTable>,
    /// Keys added since the last [`StatefulOperator::changes`]: bucket, slots, key columns.
    changed: Vec<(i64, Vec<usize>, Vec<ArrayRef>)>,
    /// Buckets dropped since the last [`StatefulOperator::changes`].
    removed: Vec<i64>,
    file_schema: SchemaRef,
}

impl Deduplicate {
    pub(crate) fn try_new(
        input: &SchemaRef,
        keys: Vec<usize>,
        event_time: Option<usize>,
        width: usize,
    ) -> Result<Self> {
        let key_fields: Vec<_> = keys.iter().map(|k| input.fields()[*k].clone()).collect();
        let key_schema = std::sync::Arc::new(Schema::new(key_fields.clone()));
        let output_schema = std::sync::Arc::new(Schema::new(input.fields()[..width].to_vec()));
        Ok(Deduplicate {
            keys,
            event_time,
            key_schema,
            output_schema,
            buckets: BTreeMap::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            file_schema: file_schema(Buckets::Runs, key_fields),
        })
    }

    /// The bucket of each row of `batch`; `None` where its event time is null.
    fn buckets_of(&self, batch: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let Some(key) = self.event_time else {
            return Ok(vec![Some(NO_TIME); batch.num_rows()]);
        };
        let nanos = to_nanos(batch.column(self.keys[key]))?;
        Ok(nanos.iter().collect())
    }

    fn table(&mut self, bucket: i64) -> Result<&mut GroupTable> {
        Ok(match self.buckets.entry(bucket) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(GroupTable::try_new(
                self.key_schema.clone(),
                std::sync::Arc::new(Schema::empty()),
            )?),
        })
    }
}

impl StatefulOperator for Deduplicate {
    fn process(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        _mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted> {
        let input = super::only_input(inputs)?;
        let mut metrics = OperatorMetrics::default();
        let mut out = Vec::new();
        for batch in input.iter().filter(|b| b.num_rows() > 0) {
            let buckets = self.buckets_of(batch)?;
            let mut keep = vec![false; batch.num_rows()];
            // The rows of each bucket, in input order.
            let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (row, bucket) in buckets.iter().enumerate() {
                match bucket {
                    None => metrics.null_event_time += 1,
                    Some(time) if *time != NO_TIME && late_watermark.is_some_and(|w| *time <= w) => {
                        metrics.dropped_by_watermark += 1
                    }
                    Some(time) => by_bucket.entry(*time).or_default().push(row as u32),
                }
            }
            for (bucket, rows) in by_bucket {
                let keys: Vec<ArrayRef> = self.keys.iter().map(|k| batch.column(*k).clone()).collect();
                let keys = crate::state::groups::take_rows(&keys, rows.clone())?;
                let (first, added) = self.table(bucket)?.insert(&keys)?;
                let new_rows: Vec<u32> = rows.iter().zip(&first).filter(|(_, f)| **f).map(|(r, _)| *r).collect();
                for row in &new_rows {
                    keep[*row as usize] = true;
                }
                if !added.is_empty() {
                    metrics.rows_updated += added.len() as u64;
                    let added_keys = crate::state::groups::take_rows(
                        &keys,
                        first
                            .iter()
                            .enumerate()
                            .filter(|(_, f)| **f)
                            .map(|(i, _)| i as u32)
                            .collect(),
                    )?;
                    self.changed.push((bucket, added, added_keys));
                }
            }
            let kept = filter_record_batch(batch, &BooleanArray::from(keep))
                .map_err(|e| Error::Internal(format!("deduplication: {e}")))?;
            let columns = kept.columns()[..self.output_schema.fields().len()].to_vec();
            out.push(super::output_batch(&self.output_schema, columns, kept.num_rows())?);
        }
        // Keys the watermark has passed can no longer come back in time: forget them.
        if let Some(watermark) = close_watermark {
            let open = self.buckets.split_off(&watermark.saturating_add(1));
            let closed = std::mem::replace(&mut self.buckets, open);
            for (bucket, table) in closed {
                if bucket == NO_TIME {
                    self.buckets.insert(bucket, table);
                    continue;
                }
                metrics.rows_removed += table.len() as u64;
                self.changed.retain(|(changed, _, _)| *changed != bucket);
                self.removed.push(bucket);
            }
        }
        metrics.rows_total = self.buckets.values().map(|t| t.len() as u64).sum();
        metrics.memory_bytes = self.buckets.values().map(|t| t.memory_size() as u64).sum();
        let rows = concat_batches(&self.output_schema, &out)
            .map_err(|e| Error::Internal(format!("deduplication output: {e}")))?;
        Ok(Emitted {
            rows,
            replaced: RecordBatch::new_empty(self.output_schema.clone()),
            metrics,
        })
    }

    fn next_close(&self) -> Option<i64> {
        self.buckets.keys().next().copied().filter(|t| *t != NO_TIME)
    }

    fn changes(&mut self) -> Result<StateFile> {
        let parts = std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(bucket, slots, keys)| state_rows(&self.file_schema, bucket, slots, keys))
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
        let views: Vec<(i64, TableView)> = self.buckets.iter().map(|(t, table)| (*t, table.view())).collect();
        let schema = self.file_schema.clone();
        Box::new(move || {
            let parts = views
                .into_iter()
                .map(|(bucket, view)| state_rows(&schema, bucket, 0..view.len(), view.columns()?))
                .collect::<Result<Vec<_>>>()?;
            let rows = concat_batches(&schema, &parts).map_err(|e| Error::Internal(format!("state snapshot: {e}")))?;
            Ok(StateFile::snapshot(rows))
        })
    }

    fn restore(&mut self, state: &StateFile) -> Result<()> {
        check_state_schema(state, &self.file_schema)?;
        self.buckets.clear();
        self.discard_changes();
        for (bucket, first, rows) in state.bucket_runs()? {
            let keys: Vec<ArrayRef> = (2..state.rows.num_columns())
                .map(|c| state.rows.column(c).slice(first, rows))
                .collect();
            let table = self.table(bucket)?;
            table.replace(&keys, &[])?;
            if table.len() != rows {
                return Err(Error::Internal(format!(
                    "restored keys of bucket {bucket}: {rows} rows gave {} keys",
                    table.len()
                )));
            }
        }
        Ok(())
    }
}
