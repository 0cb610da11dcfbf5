//! Deduplication: each key passes once, the first time it is seen.
//!
//! # Background
//! The state is a set of keys, kept in [`GroupTable`]s without aggregate states. When a key
//! column carries event time, keys are kept per event time ("bucket"), so the watermark drops a
//! whole bucket at once when it passes it, as it closes an aggregation's window; a row whose time
//! the previous batch's watermark had passed is late, dropped and counted (Spark's rule for
//! `dropDuplicates` with a watermark). Without event time every key is kept for good.
//!
//! Within the watermark (Spark's `dropDuplicatesWithinWatermark`), the key has no time in it: a
//! key is kept from its first row's time until the watermark passes that time plus the stream's
//! delay, in the bucket of that moment, and an index over all buckets tells a repeat.
//!
//! The input rows keep their order: a batch emits the first row of each key it is the first to
//! see, among the rows the operator's shard received.

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::HashMap;

use super::{Emitted, OperatorMetrics, StatefulOperator, check_state_schema};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::file::{Buckets, file_schema, state_rows};
use crate::state::groups::snapshot_of_buckets;
use crate::state::store::SnapshotJob;
use crate::state::{GroupTable, StateFile};
use crate::time::to_nanos;

/// The bucket of keys without event time: never dropped.
const NO_TIME: i64 = i64::MAX;

/// Where a deduplication's rows take their time from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DedupTime {
    /// A key (a position among the keys) is a watermarked time: the bucket is that time.
    Key(usize),
    /// The input column with the watermarked time, not a key: a key is kept until the watermark
    /// passes its first row's time plus `delay` nanoseconds.
    Within { column: usize, delay: i64 },
}

/// The keys seen by one deduplication (one shard of it).
#[derive(Debug)]
pub(crate) struct Deduplicate {
    /// The input columns that are the key.
    keys: Vec<usize>,
    time: Option<DedupTime>,
    /// Within the watermark: every key held, with its bucket.
    index: Option<(RowConverter, HashMap<OwnedRow, i64>)>,
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
    pub(crate) fn try_new(input: &SchemaRef, keys: Vec<usize>, time: Option<DedupTime>, width: usize) -> Result<Self> {
        let key_fields: Vec<_> = keys.iter().map(|k| input.fields()[*k].clone()).collect();
        let key_schema = std::sync::Arc::new(Schema::new(key_fields.clone()));
        let output_schema = std::sync::Arc::new(Schema::new(input.fields()[..width].to_vec()));
        let index = match time {
            Some(DedupTime::Within { .. }) => {
                let fields = key_fields
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect();
                let converter =
                    RowConverter::new(fields).map_err(|e| Error::Internal(format!("deduplication keys: {e}")))?;
                Some((converter, HashMap::new()))
            }
            _ => None,
        };
        Ok(Deduplicate {
            keys,
            time,
            index,
            key_schema,
            output_schema,
            buckets: BTreeMap::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            file_schema: file_schema(Buckets::Runs, key_fields),
        })
    }

    /// The time and bucket of each row of `batch`; `None` where its event time is null.
    fn buckets_of(&self, batch: &RecordBatch) -> Result<Vec<Option<(i64, i64)>>> {
        let (column, delay) = match self.time {
            None => return Ok(vec![Some((NO_TIME, NO_TIME)); batch.num_rows()]),
            Some(DedupTime::Key(key)) => (self.keys[key], 0),
            Some(DedupTime::Within { column, delay }) => (column, delay),
        };
        let nanos = to_nanos(batch.column(column))?;
        Ok(nanos.iter().map(|t| t.map(|t| (t, t.saturating_add(delay)))).collect())
    }

    /// Within the watermark: keeps the rows whose key no bucket holds (the first of each), and
    /// records their keys in the index.
    fn first_of_keys(&mut self, batch: &RecordBatch, by_bucket: &mut BTreeMap<i64, Vec<u32>>) -> Result<()> {
        let Some((converter, index)) = &mut self.index else {
            return Ok(());
        };
        let columns: Vec<ArrayRef> = self.keys.iter().map(|k| batch.column(*k).clone()).collect();
        let rows = converter
            .convert_columns(&columns)
            .map_err(|e| Error::Internal(format!("deduplication keys: {e}")))?;
        let mut rows_of_bucket: Vec<(u32, i64)> = by_bucket
            .iter()
            .flat_map(|(bucket, rows)| rows.iter().map(move |r| (*r, *bucket)))
            .collect();
        rows_of_bucket.sort_unstable();
        by_bucket.clear();
        for (row, bucket) in rows_of_bucket {
            if let datafusion::common::hash_map::Entry::Vacant(e) = index.entry(rows.row(row as usize).owned()) {
                e.insert(bucket);
                by_bucket.entry(bucket).or_default().push(row);
            }
        }
        Ok(())
    }

    /// Within the watermark: forgets the keys of a bucket that leaves.
    fn forget(&mut self, table: &GroupTable) -> Result<()> {
        let Some((converter, index)) = &mut self.index else {
            return Ok(());
        };
        let keys = table.view().columns()?;
        let rows = converter
            .convert_columns(&keys)
            .map_err(|e| Error::Internal(format!("deduplication keys: {e}")))?;
        for row in rows.iter() {
            index.remove(&row.owned());
        }
        Ok(())
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
                    Some((time, _)) if *time != NO_TIME && late_watermark.is_some_and(|w| *time <= w) => {
                        metrics.dropped_by_watermark += 1
                    }
                    Some((_, bucket)) => by_bucket.entry(*bucket).or_default().push(row as u32),
                }
            }
            self.first_of_keys(batch, &mut by_bucket)?;
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
                self.forget(&table)?;
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
        snapshot_of_buckets(&self.buckets, &self.file_schema)
    }

    fn restore(&mut self, state: &StateFile) -> Result<()> {
        check_state_schema(state, &self.file_schema)?;
        self.buckets.clear();
        self.discard_changes();
        if let Some((_, index)) = &mut self.index {
            index.clear();
        }
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
            if let Some((converter, index)) = &mut self.index {
                let rows = converter
                    .convert_columns(&keys)
                    .map_err(|e| Error::Internal(format!("deduplication keys: {e}")))?;
                index.extend(rows.iter().map(|row| (row.owned(), bucket)));
            }
        }
        Ok(())
    }
}
