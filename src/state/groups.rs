//! The group table: group keys and their partial aggregate states, merged batch by batch.
//!
//! # Background
//! DataFusion's accumulators consume themselves when they emit (`state()` and `evaluate()` drain
//! them), so they cannot be both long-lived and read every batch. Instead, the table keeps each
//! group's *state rows* (the accumulators' `state()` output) as Arrow arrays, and every batch
//! merges only the groups it touches: old state rows and the batch's partial states go into fresh
//! accumulators, whose `state()` gives the new rows. Work per batch is proportional to the rows
//! and groups of the batch, never to the whole table.
//!
//! Keys are interned by DataFusion's `GroupValues` into dense slot ids. State rows live in chunks
//! (one per batch); `locations[slot]` says where a slot's current row is. Superseded rows are
//! garbage until the chunks are compacted, which happens when garbage outweighs live rows.

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat, interleave, take_arrays};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::error::{Error, Result};

/// How the aggregates of one operator turn state rows into fresh accumulators.
#[derive(Debug)]
pub(crate) struct Aggregates {
    exprs: Vec<Arc<AggregateFunctionExpr>>,
    /// `state_columns[i]` is the range of state columns that belong to `exprs[i]`.
    state_columns: Vec<std::ops::Range<usize>>,
}

impl Aggregates {
    pub(crate) fn try_new(exprs: Vec<Arc<AggregateFunctionExpr>>) -> Result<Self> {
        let mut state_columns = Vec::with_capacity(exprs.len());
        let mut next = 0;
        for expr in &exprs {
            let n = expr.state_fields()?.len();
            state_columns.push(next..next + n);
            next += n;
        }
        Ok(Aggregates { exprs, state_columns })
    }

    fn accumulator(expr: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>> {
        if expr.groups_accumulator_supported() {
            Ok(expr.create_groups_accumulator()?)
        } else {
            let expr = Arc::clone(expr);
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                expr.create_accumulator()
            })))
        }
    }

    /// Merges state rows into `groups` groups: `inputs` are `(state columns, group of each row)`.
    /// Returns the merged accumulators, one per aggregate.
    pub(crate) fn merge(
        &self,
        inputs: &[(&[ArrayRef], &[usize])],
        groups: usize,
    ) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        let mut accumulators = Vec::with_capacity(self.exprs.len());
        for (expr, columns) in self.exprs.iter().zip(&self.state_columns) {
            let mut acc = Self::accumulator(expr)?;
            for (states, group_of_row) in inputs {
                if !group_of_row.is_empty() {
                    acc.merge_batch(&states[columns.clone()], group_of_row, groups)?;
                }
            }
            accumulators.push(acc);
        }
        Ok(accumulators)
    }

    /// The final values of the groups whose state rows are `states` (one row per group).
    pub(crate) fn evaluate(&self, states: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        let rows = states.first().map_or(0, |a| a.len());
        if rows == 0 {
            // Some accumulators (those DataFusion adapts from row accumulators) cannot emit zero
            // groups: their values' type comes from the first value.
            return Ok(self
                .exprs
                .iter()
                .map(|e| datafusion::arrow::array::new_empty_array(e.field().data_type()))
                .collect());
        }
        let ids: Vec<usize> = (0..rows).collect();
        self.merge(&[(states, &ids)], rows)?
            .iter_mut()
            .map(|acc| Ok(acc.evaluate(EmitTo::All)?))
            .collect()
    }
}

/// The groups one [`GroupTable::merge`] touched, each once: slots, keys and new state rows.
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) slots: Vec<usize>,
    pub(crate) keys: Vec<ArrayRef>,
    pub(crate) states: RecordBatch,
}

/// Groups (keys and states) of one window, or of all time for an aggregation without windows.
pub(crate) struct GroupTable {
    interner: Box<dyn GroupValues>,
    key_schema: SchemaRef,
    state_schema: SchemaRef,
    /// Keys of all slots, in slot order, in chunks; `key_starts[i]` is the first slot of chunk `i`.
    keys: Vec<RecordBatch>,
    key_starts: Vec<usize>,
    /// State rows in chunks; `locations[slot] = (chunk, row)` is the slot's current row.
    states: Vec<RecordBatch>,
    locations: Vec<(usize, usize)>,
    /// Rows held in `states`, live or superseded.
    state_rows: usize,
}

impl std::fmt::Debug for GroupTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTable").field("groups", &self.len()).finish()
    }
}

/// Compact when superseded rows exceed live rows by this factor (and a floor, so small tables
/// are left alone).
const COMPACT_GARBAGE_FACTOR: usize = 2;
const COMPACT_MIN_ROWS: usize = 4096;

impl GroupTable {
    pub(crate) fn try_new(key_schema: SchemaRef, state_schema: SchemaRef) -> Result<Self> {
        Ok(GroupTable {
            interner: new_group_values(key_schema.clone(), &GroupOrdering::None)?,
            key_schema,
            state_schema,
            keys: Vec::new(),
            key_starts: Vec::new(),
            states: Vec::new(),
            locations: Vec::new(),
            state_rows: 0,
        })
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.locations.len()
    }

    /// Slots of the groups with `keys`, new groups added (keys recorded, locations to be set by
    /// the caller). Slots are dense and handed out in order of first appearance.
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<usize>> {
        let before = self.len();
        let mut slot_of_row = Vec::with_capacity(rows);
        if keys.is_empty() {
            // No grouping keys: one group for everything.
            slot_of_row.resize(rows, 0);
            self.locations.resize(before.max(1), (0, 0));
            return Ok(slot_of_row);
        }
        self.interner.intern(keys, &mut slot_of_row)?;
        let total = self.interner.len();
        if total > before {
            let mut first_rows = Vec::with_capacity(total - before);
            for (row, &slot) in slot_of_row.iter().enumerate() {
                if slot == before + first_rows.len() {
                    first_rows.push(row as u32);
                }
            }
            let new_keys = take_rows(keys, first_rows)?;
            self.key_starts.push(before);
            self.keys.push(
                RecordBatch::try_new(self.key_schema.clone(), new_keys)
                    .map_err(|e| Error::Internal(format!("group keys: {e}")))?,
            );
            self.locations.resize(total, (0, 0));
        }
        Ok(slot_of_row)
    }

    /// Adds `chunk` of state rows; row `i` becomes the current row of `slots[i]`.
    fn push_states(&mut self, chunk: RecordBatch, slots: &[usize]) -> Result<()> {
        let chunk_index = self.states.len();
        self.state_rows += chunk.num_rows();
        self.states.push(chunk);
        for (row, slot) in slots.iter().enumerate() {
            self.locations[*slot] = (chunk_index, row);
        }
        if self.state_rows > COMPACT_MIN_ROWS && self.state_rows > COMPACT_GARBAGE_FACTOR * self.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Merges partial states (one row per group and batch partition, `keys` beside `states`)
    /// into the table. Returns the groups touched, in order of first appearance, with their keys
    /// and new state rows: what the batch emits in update mode and what the state's delta holds.
    pub(crate) fn merge(&mut self, aggregates: &Aggregates, keys: &[ArrayRef], states: &[ArrayRef]) -> Result<Merged> {
        let rows = states.first().or(keys.first()).map_or(0, |a| a.len());
        if rows == 0 {
            return Ok(Merged {
                slots: Vec::new(),
                keys: keys.to_vec(),
                states: RecordBatch::new_empty(self.state_schema.clone()),
            });
        }
        let before = self.len();
        let slot_of_row = self.intern(keys, rows)?;
        let mut touched: Vec<usize> = Vec::new();
        let mut first_rows: Vec<u32> = Vec::new();
        let mut local_of: HashMap<usize, usize> = HashMap::with_capacity(rows);
        let group_of_row: Vec<usize> = slot_of_row
            .iter()
            .enumerate()
            .map(|(row, &slot)| {
                *local_of.entry(slot).or_insert_with(|| {
                    touched.push(slot);
                    first_rows.push(row as u32);
                    touched.len() - 1
                })
            })
            .collect();
        let old: Vec<usize> = touched.iter().copied().filter(|s| *s < before).collect();
        let old_states = self.states_of(&old)?;
        let old_groups: Vec<usize> = old.iter().map(|s| local_of[s]).collect();
        let mut accumulators =
            aggregates.merge(&[(&old_states, &old_groups), (states, &group_of_row)], touched.len())?;
        let mut merged = Vec::with_capacity(self.state_schema.fields().len());
        for acc in &mut accumulators {
            merged.extend(acc.state(EmitTo::All)?);
        }
        let chunk = RecordBatch::try_new(self.state_schema.clone(), merged)
            .map_err(|e| Error::Internal(format!("merged state: {e}")))?;
        self.push_states(chunk.clone(), &touched)?;
        Ok(Merged {
            slots: touched,
            keys: take_rows(keys, first_rows)?,
            states: chunk,
        })
    }

    /// Adds the keys of a table without states (a set of keys): says of each row whether it is
    /// the first row of a key the table did not hold, and returns the slots of those keys.
    pub(crate) fn insert(&mut self, keys: &[ArrayRef]) -> Result<(Vec<bool>, Vec<usize>)> {
        let rows = keys.first().map_or(0, |a| a.len());
        let before = self.len();
        let slot_of_row = self.intern(keys, rows)?;
        let mut added = Vec::new();
        let first = slot_of_row
            .iter()
            .map(|&slot| {
                // New slots are handed out in order of first appearance.
                let new = slot == before + added.len();
                if new {
                    added.push(slot);
                }
                new
            })
            .collect();
        Ok((first, added))
    }

    /// Sets the state rows of the groups with `keys` (one row each, keys distinct), replacing
    /// what the table held for them: how a restored snapshot or delta is applied.
    pub(crate) fn replace(&mut self, keys: &[ArrayRef], states: &[ArrayRef]) -> Result<()> {
        let rows = states.first().or(keys.first()).map_or(0, |a| a.len());
        if rows == 0 {
            return Ok(());
        }
        let slots = self.intern(keys, rows)?;
        if self.state_schema.fields().is_empty() {
            return Ok(());
        }
        let chunk = RecordBatch::try_new(self.state_schema.clone(), states.to_vec())
            .map_err(|e| Error::Internal(format!("restored state: {e}")))?;
        self.push_states(chunk, &slots)
    }

    /// State rows of `slots`, one column per state field.
    pub(crate) fn states_of(&self, slots: &[usize]) -> Result<Vec<ArrayRef>> {
        let at: Vec<(usize, usize)> = slots.iter().map(|s| self.locations[*s]).collect();
        gather(&self.states, &at, &self.state_schema)
    }

    /// Keys of `slots`, one column per key.
    pub(crate) fn keys_of(&self, slots: &[usize]) -> Result<Vec<ArrayRef>> {
        if self.key_schema.fields().is_empty() {
            return Ok(Vec::new());
        }
        let at: Vec<(usize, usize)> = slots
            .iter()
            .map(|s| {
                let chunk = self.key_starts.partition_point(|start| *start <= *s) - 1;
                (chunk, s - self.key_starts[chunk])
            })
            .collect();
        gather(&self.keys, &at, &self.key_schema)
    }

    /// Rewrites the live state rows into one chunk.
    fn compact(&mut self) -> Result<()> {
        let all: Vec<usize> = (0..self.len()).collect();
        let live = self.states_of(&all)?;
        let chunk = RecordBatch::try_new(self.state_schema.clone(), live)
            .map_err(|e| Error::Internal(format!("compacting state: {e}")))?;
        self.state_rows = chunk.num_rows();
        self.states = vec![chunk];
        for (slot, location) in self.locations.iter_mut().enumerate() {
            *location = (0, slot);
        }
        Ok(())
    }

    /// The table as it is now, to be read later on another thread: its chunks are immutable and
    /// shared, so this costs a copy of the slot locations only.
    pub(crate) fn view(&self) -> TableView {
        TableView {
            key_schema: self.key_schema.clone(),
            state_schema: self.state_schema.clone(),
            keys: self.keys.clone(),
            states: self.states.clone(),
            locations: self.locations.clone(),
        }
    }

    /// Bytes held: interned keys, key copies and state rows.
    pub(crate) fn memory_size(&self) -> usize {
        let batches: usize = self
            .keys
            .iter()
            .chain(&self.states)
            .map(|b| b.get_array_memory_size())
            .sum();
        self.interner.size() + batches + self.locations.capacity() * std::mem::size_of::<(usize, usize)>()
    }
}

/// A group table frozen at one moment; see [`GroupTable::view`].
#[derive(Debug)]
pub(crate) struct TableView {
    key_schema: SchemaRef,
    state_schema: SchemaRef,
    keys: Vec<RecordBatch>,
    states: Vec<RecordBatch>,
    locations: Vec<(usize, usize)>,
}

impl TableView {
    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.locations.len()
    }

    /// The keys, then the states, of every group in slot order.
    pub(crate) fn columns(&self) -> Result<Vec<ArrayRef>> {
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("state view: {e}"));
        let mut columns = Vec::with_capacity(self.key_schema.fields().len() + self.state_schema.fields().len());
        // Keys are stored in slot order already.
        for c in 0..self.key_schema.fields().len() {
            let chunks: Vec<&dyn Array> = self.keys.iter().map(|b| b.column(c).as_ref()).collect();
            columns.push(match chunks.as_slice() {
                [] => datafusion::arrow::array::new_empty_array(self.key_schema.field(c).data_type()),
                [only] => only.slice(0, only.len()),
                _ => concat(&chunks).map_err(internal)?,
            });
        }
        columns.extend(gather(&self.states, &self.locations, &self.state_schema)?);
        Ok(columns)
    }
}

/// Rows `rows` of each of `columns`.
pub(crate) fn take_rows(columns: &[ArrayRef], rows: Vec<u32>) -> Result<Vec<ArrayRef>> {
    take_arrays(columns, &UInt32Array::from(rows), None).map_err(|e| Error::Internal(format!("taking rows: {e}")))
}

/// Rows `at = (chunk, row)` of `chunks`, column by column.
pub(crate) fn gather(chunks: &[RecordBatch], at: &[(usize, usize)], schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
    (0..schema.fields().len())
        .map(|c| {
            if at.is_empty() || chunks.is_empty() {
                return Ok(datafusion::arrow::array::new_empty_array(schema.field(c).data_type()));
            }
            let columns: Vec<&dyn Array> = chunks.iter().map(|b| b.column(c).as_ref()).collect();
            interleave(&columns, at).map_err(|e| Error::Internal(format!("gathering state rows: {e}")))
        })
        .collect()
}

/// Work that makes a snapshot of `buckets` of group tables later (see
/// [`SnapshotJob`](crate::state::store::SnapshotJob)): each bucket's groups in slot order, as rows
/// of `schema` (bucket, slot, keys, states). Only the tables' views are taken now.
pub(crate) fn snapshot_of_buckets(
    buckets: &std::collections::BTreeMap<i64, GroupTable>,
    schema: &SchemaRef,
) -> crate::state::store::SnapshotJob {
    let views: Vec<(i64, TableView)> = buckets.iter().map(|(bucket, table)| (*bucket, table.view())).collect();
    let schema = schema.clone();
    Box::new(move || {
        let parts = views
            .into_iter()
            .map(|(bucket, view)| crate::state::file::state_rows(&schema, bucket, 0..view.len(), view.columns()?))
            .collect::<Result<Vec<_>>>()?;
        let rows = datafusion::arrow::compute::concat_batches(&schema, &parts)
            .map_err(|e| Error::Internal(format!("state snapshot: {e}")))?;
        Ok(crate::state::StateFile::snapshot(rows))
    })
}
