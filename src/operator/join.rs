//! A join of two streams: both sides buffered in state, each batch's new rows joined with the
//! other side's (Spark's symmetric hash join).
//!
//! # Background
//! Each batch, in this order: rows at or before the previous batch's watermark are late and
//! dropped; the new left rows are joined with the right rows held and join the left state; the
//! new right rows are joined with the left rows held (the new ones too, so each pair meets once)
//! and join the right state. Every pair with equal keys is checked against the whole join
//! condition. Then rows whose time range has closed (see [`crate::planner::join`]) leave the
//! state, and an outer join emits those that never matched, with nulls for the other side; a left
//! semi join emits a left row once, on its first match.
//!
//! The state of a side is its rows, grouped by the time at which they leave ("bucket"), with an
//! index from key to rows and a flag per row that says whether it matched. In state files both
//! sides share the buckets (a bucket's rows of both sides leave together) and number their rows
//! in one sequence per bucket, the slot; a row fills its side's columns and a side column, the
//! other side's columns are null. A match flips a row's flag, which a delta writes as the row
//! again, under its slot.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt8Array, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, interleave, take};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, UInt8Type};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::HashMap;
use datafusion::physical_expr::PhysicalExpr;

use super::{Emitted, OperatorMetrics, StatefulOperator, check_state_schema, output_batch};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateFile;
use crate::state::file::{Buckets, file_schema, slot_rows};
use crate::state::store::SnapshotJob;
use crate::time::to_nanos;

/// The bucket of rows that never leave the state.
const NEVER: i64 = i64::MAX;
/// Rows leave the state in groups of a second of event time: a row stays until the watermark
/// passes the end of the second in which its range closes (an outer join's unmatched row comes
/// out up to a second of event time later than it could). Per-row buckets would cost a map entry
/// and a chunk per row.
const BUCKET_NANOS: i64 = 1_000_000_000;

/// The kinds of joins of two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
}

impl JoinKind {
    /// Whether rows of `side` that never matched are emitted when they leave the state.
    fn keeps_unmatched(self, side: usize) -> bool {
        matches!(
            (self, side),
            (JoinKind::Left | JoinKind::Full, 0) | (JoinKind::Right | JoinKind::Full, 1)
        )
    }
}

/// What a join's operator needs to know, shared by its shards.
#[derive(Debug)]
pub(crate) struct JoinSpec {
    pub(crate) kind: JoinKind,
    /// The number of each side's own columns (its keys follow them in its input).
    pub(crate) widths: [usize; 2],
    /// The key columns of each side's input.
    pub(crate) keys: [Vec<usize>; 2],
    /// Each side's watermarked time column, if the time range names one.
    pub(crate) times: [Option<usize>; 2],
    /// `right time - left time` lies within these bounds (nanoseconds) for a match.
    pub(crate) range: (Option<i64>, Option<i64>),
    /// The join condition besides the keys, over the left columns then the right ones.
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
    /// The left columns then the right ones.
    pub(crate) joined_schema: SchemaRef,
    pub(crate) output_schema: SchemaRef,
    /// Each side's input: its columns, then its keys.
    pub(crate) input_schemas: [SchemaRef; 2],
}

impl JoinSpec {
    /// When a row of `side` at `time` (nanoseconds) leaves the state: once the watermark has
    /// reached it, rounded up to a whole [`BUCKET_NANOS`] so that rows leave in groups.
    /// [`NEVER`] without a bound.
    fn leaves_at(&self, side: usize, time: i64) -> i64 {
        let at = match (side, self.range) {
            (0, (_, Some(b))) => time.saturating_add(b),
            (1, (Some(a), _)) => time.saturating_sub(a),
            _ => return NEVER,
        };
        match at.rem_euclid(BUCKET_NANOS) {
            0 => at,
            rest => at.saturating_add(BUCKET_NANOS - rest),
        }
    }
}

/// The rows of one side that leave the state at one time.
#[derive(Debug, Default)]
struct Bucket {
    chunks: Vec<RecordBatch>,
    /// The position of each chunk's first row among the bucket's rows of this side.
    starts: Vec<u32>,
    matched: Vec<bool>,
    /// Each row's slot in state files (shared with the other side's rows of the bucket).
    slots: Vec<u32>,
}

impl Bucket {
    fn len(&self) -> u32 {
        self.matched.len() as u32
    }

    /// `(chunk, row)` of `slot`.
    fn locate(&self, slot: u32) -> (usize, usize) {
        let chunk = self.starts.partition_point(|s| *s <= slot) - 1;
        (chunk, (slot - self.starts[chunk]) as usize)
    }

    fn push(&mut self, rows: RecordBatch, matched: &[bool], slots: std::ops::Range<u32>) -> u32 {
        let first = self.len();
        self.starts.push(first);
        self.chunks.push(rows);
        self.matched.extend_from_slice(matched);
        self.slots.extend(slots);
        first
    }
}

/// The rows of one key, `(bucket, position)`: most keys have one, held without an allocation.
#[derive(Debug)]
enum KeyRows {
    One((i64, u32)),
    Many(Vec<(i64, u32)>),
}

impl KeyRows {
    fn as_slice(&self) -> &[(i64, u32)] {
        match self {
            KeyRows::One(at) => std::slice::from_ref(at),
            KeyRows::Many(all) => all,
        }
    }

    fn push(&mut self, at: (i64, u32)) {
        match self {
            KeyRows::One(first) => *self = KeyRows::Many(vec![*first, at]),
            KeyRows::Many(all) => all.push(at),
        }
    }

    /// Drops the rows of `bucket`; says whether any are left.
    fn leave(&mut self, bucket: i64) -> bool {
        match self {
            KeyRows::One((b, _)) => *b != bucket,
            KeyRows::Many(all) => {
                all.retain(|(b, _)| *b != bucket);
                !all.is_empty()
            }
        }
    }
}

/// Adds `at` to the rows of `key`.
fn index_row(index: &mut HashMap<OwnedRow, KeyRows>, key: OwnedRow, at: (i64, u32)) {
    match index.entry(key) {
        datafusion::common::hash_map::Entry::Occupied(mut rows) => rows.get_mut().push(at),
        datafusion::common::hash_map::Entry::Vacant(slot) => {
            slot.insert(KeyRows::One(at));
        }
    }
}

/// One side's state.
#[derive(Debug, Default)]
struct Side {
    buckets: BTreeMap<i64, Bucket>,
    /// Rows by key: `(bucket, position)`. Rows with a null key match nothing and are not here.
    index: HashMap<OwnedRow, KeyRows>,
}

impl Side {
    fn rows(&self) -> u64 {
        self.buckets.values().map(|b| u64::from(b.len())).sum()
    }

    fn memory(&self) -> u64 {
        let chunks: usize = self
            .buckets
            .values()
            .flat_map(|b| &b.chunks)
            .map(|c| c.get_array_memory_size())
            .sum();
        (chunks + self.index.capacity() * 48) as u64
    }
}

/// One shard of a join of two streams.
#[derive(Debug)]
pub(crate) struct StreamJoin {
    spec: Arc<JoinSpec>,
    sides: [Side; 2],
    converter: RowConverter,
    /// The next slot of each bucket in state files.
    next_slot: BTreeMap<i64, u32>,
    /// Rows added or flagged since the last [`StatefulOperator::changes`]: side, bucket, and
    /// position among the side's rows of the bucket.
    changed: Vec<(usize, i64, u32)>,
    removed: Vec<i64>,
    file_schema: SchemaRef,
}

impl StreamJoin {
    pub(crate) fn try_new(spec: Arc<JoinSpec>) -> Result<Self> {
        let input = &spec.input_schemas[0];
        let fields: Vec<SortField> = spec.keys[0]
            .iter()
            .map(|k| SortField::new(input.field(*k).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| Error::Internal(format!("join keys: {e}")))?;
        // Both sides' columns (nullable: a row fills its side's), its side, its matched flag.
        let columns = spec
            .input_schemas
            .iter()
            .flat_map(|s| {
                s.fields()
                    .iter()
                    .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            })
            .chain([
                Arc::new(Field::new("__tidewater_side", DataType::UInt8, false)),
                Arc::new(Field::new("__tidewater_matched", DataType::Boolean, false)),
            ]);
        let file_schema = file_schema(Buckets::PerRow, columns);
        Ok(StreamJoin {
            spec,
            sides: [Side::default(), Side::default()],
            converter,
            next_slot: BTreeMap::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            file_schema,
        })
    }

    /// The keys of `batch` as rows, `None` where a key is null.
    fn keys(&self, side: usize, batch: &RecordBatch) -> Result<Vec<Option<OwnedRow>>> {
        let columns: Vec<ArrayRef> = self.spec.keys[side].iter().map(|k| batch.column(*k).clone()).collect();
        let rows = self
            .converter
            .convert_columns(&columns)
            .map_err(|e| Error::Internal(format!("join keys: {e}")))?;
        Ok((0..batch.num_rows())
            .map(|r| columns.iter().all(|c| c.is_valid(r)).then(|| rows.row(r).owned()))
            .collect())
    }

    /// Joins `batch` (new rows of `side`) with the other side's state: emits the matching pairs
    /// in `out` and flags the rows that matched. Returns which rows of `batch` matched.
    fn probe(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        keys: &[Option<OwnedRow>],
        out: &mut Vec<RecordBatch>,
    ) -> Result<Vec<bool>> {
        let other = 1 - side;
        let mut pairs: Vec<(u32, i64, u32)> = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            if let Some(found) = key.as_ref().and_then(|k| self.sides[other].index.get(k)) {
                pairs.extend(
                    found
                        .as_slice()
                        .iter()
                        .map(|(bucket, slot)| (row as u32, *bucket, *slot)),
                );
            }
        }
        let mut matched = vec![false; batch.num_rows()];
        if pairs.is_empty() {
            return Ok(matched);
        }
        // The other side's rows of the pairs, gathered from their chunks.
        let state = &self.sides[other];
        let mut chunks: Vec<&RecordBatch> = Vec::new();
        let mut chunk_of: HashMap<(i64, usize), usize> = HashMap::new();
        let mut at = Vec::with_capacity(pairs.len());
        for (_, bucket, slot) in &pairs {
            let rows = &state.buckets[bucket];
            let (chunk, row) = rows.locate(*slot);
            let index = *chunk_of.entry((*bucket, chunk)).or_insert_with(|| {
                chunks.push(&rows.chunks[chunk]);
                chunks.len() - 1
            });
            at.push((index, row));
        }
        let width = self.spec.widths[other];
        let theirs = (0..width)
            .map(|c| {
                let arrays: Vec<&dyn Array> = chunks.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &at).map_err(|e| Error::Internal(format!("join rows: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let indices = UInt32Array::from(pairs.iter().map(|p| p.0).collect::<Vec<_>>());
        let ours = batch.columns()[..self.spec.widths[side]]
            .iter()
            .map(|c| take(c, &indices, None).map_err(|e| Error::Internal(format!("join rows: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let (left, right) = match side {
            0 => (ours, theirs),
            _ => (theirs, ours),
        };
        let joined = RecordBatch::try_new(self.spec.joined_schema.clone(), left.into_iter().chain(right).collect())
            .map_err(|e| Error::Internal(format!("joined rows: {e}")))?;
        let keep = match &self.spec.filter {
            Some(filter) => {
                let value = filter.evaluate(&joined)?.into_array(joined.num_rows())?;
                let value = value.as_boolean();
                (0..value.len()).map(|i| value.is_valid(i) && value.value(i)).collect()
            }
            None => vec![true; joined.num_rows()],
        };
        // Flag what matched; a semi join emits a left row on its first match only.
        let mut emit = keep.clone();
        for (i, (row, bucket, slot)) in pairs.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let first_for_left = match side {
                0 => !matched[*row as usize],
                _ => !self.sides[0].buckets[bucket].matched[*slot as usize],
            };
            if self.spec.kind == JoinKind::LeftSemi && !first_for_left {
                emit[i] = false;
            }
            matched[*row as usize] = true;
            let flag = &mut self.sides[other]
                .buckets
                .get_mut(bucket)
                .ok_or_else(|| Error::Internal("a joined row's bucket is gone".into()))?
                .matched[*slot as usize];
            // Only outer and semi joins read the flags again: an inner join's are not written.
            if !*flag {
                *flag = true;
                if self.spec.kind != JoinKind::Inner {
                    self.changed.push((other, *bucket, *slot));
                }
            }
        }
        let rows = filter_record_batch(&joined, &BooleanArray::from(emit))
            .map_err(|e| Error::Internal(format!("joined rows: {e}")))?;
        out.push(self.output(rows)?);
        Ok(matched)
    }

    /// Joined rows (left columns, then right) as the join's output.
    fn output(&self, joined: RecordBatch) -> Result<RecordBatch> {
        let columns = match self.spec.kind {
            JoinKind::LeftSemi => joined.columns()[..self.spec.widths[0]].to_vec(),
            _ => joined.columns().to_vec(),
        };
        output_batch(&self.spec.output_schema, columns, joined.num_rows())
    }

    /// Rows of `side` that never matched, with nulls for the other side.
    fn unmatched(&self, side: usize, rows: &RecordBatch) -> Result<RecordBatch> {
        let n = rows.num_rows();
        let ours: Vec<ArrayRef> = rows.columns()[..self.spec.widths[side]].to_vec();
        let other = 1 - side;
        let nulls: Vec<ArrayRef> = self.spec.input_schemas[other].fields()[..self.spec.widths[other]]
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        let columns = match side {
            0 => ours.into_iter().chain(nulls).collect(),
            _ => nulls.into_iter().chain(ours).collect(),
        };
        output_batch(&self.spec.output_schema, columns, n)
    }

    /// Keeps `batch`'s rows of `side` (`matched` says which matched) in their buckets.
    fn keep(
        &mut self,
        side: usize,
        batch: &RecordBatch,
        mut keys: Vec<Option<OwnedRow>>,
        leave: &[i64],
        matched: &[bool],
    ) -> Result<u64> {
        let mut by_bucket: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, bucket) in leave.iter().enumerate() {
            by_bucket.entry(*bucket).or_default().push(row as u32);
        }
        let mut kept = 0;
        for (bucket, rows) in by_bucket {
            let taken = datafusion::arrow::compute::take_record_batch(batch, &UInt32Array::from(rows.clone()))
                .map_err(|e| Error::Internal(format!("join state: {e}")))?;
            let flags: Vec<bool> = rows.iter().map(|r| matched[*r as usize]).collect();
            let next = self.next_slot.entry(bucket).or_default();
            let slots = *next..*next + rows.len() as u32;
            *next = slots.end;
            let first = self.sides[side]
                .buckets
                .entry(bucket)
                .or_default()
                .push(taken, &flags, slots);
            for (i, row) in rows.iter().enumerate() {
                let slot = first + i as u32;
                if let Some(key) = keys[*row as usize].take() {
                    index_row(&mut self.sides[side].index, key, (bucket, slot));
                }
                self.changed.push((side, bucket, slot));
            }
            kept += rows.len() as u64;
        }
        Ok(kept)
    }

    /// Drops the buckets of `side` that leave at or before `watermark`; returns those rows that
    /// never matched.
    fn evict(&mut self, side: usize, watermark: i64) -> Result<(u64, Vec<RecordBatch>)> {
        let state = &mut self.sides[side];
        let open = state.buckets.split_off(&watermark.saturating_add(1));
        let closed = std::mem::replace(&mut state.buckets, open);
        let (mut removed, mut unmatched) = (0, Vec::new());
        for (bucket, rows) in closed {
            if bucket == NEVER {
                self.sides[side].buckets.insert(bucket, rows);
                continue;
            }
            removed += u64::from(rows.len());
            for chunk in &rows.chunks {
                for key in self.keys(side, chunk)?.into_iter().flatten() {
                    let index = &mut self.sides[side].index;
                    if let Some(found) = index.get_mut(&key)
                        && !found.leave(bucket)
                    {
                        index.remove(&key);
                    }
                }
            }
            if self.spec.kind.keeps_unmatched(side) {
                for (chunk, start) in rows.chunks.iter().zip(&rows.starts) {
                    let never: Vec<bool> = (0..chunk.num_rows())
                        .map(|r| !rows.matched[*start as usize + r])
                        .collect();
                    let lonely = filter_record_batch(chunk, &BooleanArray::from(never))
                        .map_err(|e| Error::Internal(format!("join state: {e}")))?;
                    unmatched.push(self.unmatched(side, &lonely)?);
                }
            }
            self.changed.retain(|(s, b, _)| *s != side || *b != bucket);
            self.next_slot.remove(&bucket);
            if !self.removed.contains(&bucket) {
                self.removed.push(bucket);
            }
        }
        Ok((removed, unmatched))
    }

    /// The state file rows of `(side, bucket, position)`s as they are now, by bucket and slot.
    fn file_rows(&self, rows: &[(usize, i64, u32)]) -> Result<RecordBatch> {
        let mut rows: Vec<(i64, u32, usize, u32)> = rows
            .iter()
            .filter_map(|&(side, bucket, at)| {
                let slot = *self.sides[side].buckets.get(&bucket)?.slots.get(at as usize)?;
                Some((bucket, slot, side, at))
            })
            .collect();
        rows.sort_unstable();
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("join state: {e}"));
        // Each side's columns: its rows' values where the row is of the side, nulls elsewhere.
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.file_schema.fields().len() - 2);
        for side in 0..2 {
            let fields = self.spec.input_schemas[side].fields();
            // Chunk 0 is one row of nulls, for the rows of the other side.
            let nulls: Vec<ArrayRef> = fields.iter().map(|f| new_null_array(f.data_type(), 1)).collect();
            let mut chunks: Vec<&[ArrayRef]> = vec![&nulls];
            let mut chunk_of: HashMap<(i64, usize), usize> = HashMap::new();
            let mut at = Vec::with_capacity(rows.len());
            for &(bucket, _, row_side, position) in &rows {
                if row_side != side {
                    at.push((0, 0));
                    continue;
                }
                let held = &self.sides[side].buckets[&bucket];
                let (chunk, row) = held.locate(position);
                let index = *chunk_of.entry((bucket, chunk)).or_insert_with(|| {
                    chunks.push(held.chunks[chunk].columns());
                    chunks.len() - 1
                });
                at.push((index, row));
            }
            for c in 0..fields.len() {
                let arrays: Vec<&dyn Array> = chunks.iter().map(|b| b[c].as_ref()).collect();
                columns.push(interleave(&arrays, &at).map_err(internal)?);
            }
        }
        columns.push(Arc::new(UInt8Array::from(
            rows.iter().map(|r| r.2 as u8).collect::<Vec<_>>(),
        )));
        columns.push(Arc::new(BooleanArray::from(
            rows.iter()
                .map(|&(bucket, _, side, at)| self.sides[side].buckets[&bucket].matched[at as usize])
                .collect::<Vec<_>>(),
        )));
        slot_rows(
            &self.file_schema,
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
            columns,
        )
    }

    /// Every row held.
    fn all_rows(&self) -> Vec<(usize, i64, u32)> {
        (0..2)
            .flat_map(|side| {
                self.sides[side]
                    .buckets
                    .iter()
                    .flat_map(move |(bucket, held)| (0..held.len()).map(move |at| (side, *bucket, at)))
            })
            .collect()
    }
}

impl StatefulOperator for StreamJoin {
    fn process(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        _mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted> {
        let mut metrics = OperatorMetrics::default();
        let mut out = Vec::new();
        for side in 0..2 {
            let input = inputs.get(side).map(Vec::as_slice).unwrap_or_default();
            let schema = self.spec.input_schemas[side].clone();
            let batch = concat_batches(&schema, input).map_err(|e| Error::Internal(format!("join input: {e}")))?;
            // Rows in time: not late, with a time where the range needs one.
            let (batch, leave) = match self.spec.times[side] {
                Some(column) => {
                    let times = to_nanos(batch.column(column))?;
                    let mut keep = Vec::with_capacity(batch.num_rows());
                    let mut leave = Vec::new();
                    for time in times.iter() {
                        let ok = match time {
                            None => {
                                metrics.null_event_time += 1;
                                false
                            }
                            Some(t) if late_watermark.is_some_and(|w| t <= w) => {
                                metrics.dropped_by_watermark += 1;
                                false
                            }
                            Some(t) => {
                                leave.push(self.spec.leaves_at(side, t));
                                true
                            }
                        };
                        keep.push(ok);
                    }
                    let batch = filter_record_batch(&batch, &BooleanArray::from(keep))
                        .map_err(|e| Error::Internal(format!("join input: {e}")))?;
                    (batch, leave)
                }
                None => {
                    let n = batch.num_rows();
                    (batch, vec![NEVER; n])
                }
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(side, &batch)?;
            let matched = self.probe(side, &batch, &keys, &mut out)?;
            metrics.rows_updated += self.keep(side, &batch, keys, &leave, &matched)?;
        }
        if let Some(watermark) = close_watermark {
            for side in 0..2 {
                let (removed, unmatched) = self.evict(side, watermark)?;
                metrics.rows_removed += removed;
                out.extend(unmatched);
            }
        }
        metrics.rows_total = self.sides.iter().map(Side::rows).sum();
        metrics.memory_bytes = self.sides.iter().map(Side::memory).sum();
        let rows =
            concat_batches(&self.spec.output_schema, &out).map_err(|e| Error::Internal(format!("join output: {e}")))?;
        Ok(Emitted {
            rows,
            replaced: RecordBatch::new_empty(self.spec.output_schema.clone()),
            metrics,
        })
    }

    fn next_close(&self) -> Option<i64> {
        self.sides
            .iter()
            .filter_map(|s| s.buckets.keys().next().copied())
            .filter(|b| *b != NEVER)
            .min()
    }

    fn changes(&mut self) -> Result<StateFile> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let rows = self.file_rows(&changed)?;
        Ok(StateFile::delta(rows, std::mem::take(&mut self.removed)))
    }

    fn discard_changes(&mut self) {
        self.changed.clear();
        self.removed.clear();
    }

    fn snapshot(&self) -> SnapshotJob {
        // Rows are immutable chunks; the flags are copied now, the rows gathered later.
        let rows = self.file_rows(&self.all_rows());
        Box::new(move || Ok(StateFile::snapshot(rows?)))
    }

    fn restore(&mut self, state: &StateFile) -> Result<()> {
        check_state_schema(state, &self.file_schema)?;
        self.sides = [Side::default(), Side::default()];
        self.next_slot.clear();
        self.discard_changes();
        let rows = &state.rows;
        let buckets = state.buckets()?;
        let slots = state.slots()?;
        let sides = rows.column(rows.num_columns() - 2).as_primitive::<UInt8Type>();
        let flags = rows.column(rows.num_columns() - 1).as_boolean();
        let widths = [
            self.spec.input_schemas[0].fields().len(),
            self.spec.input_schemas[1].fields().len(),
        ];
        for r in 0..rows.num_rows() {
            let (bucket, slot) = (buckets.value(r), slots.value(r));
            let side = usize::from(sides.value(r) != 0);
            let first = 2 + if side == 0 { 0 } else { widths[0] };
            let columns: Vec<ArrayRef> = (first..first + widths[side])
                .map(|c| rows.column(c).slice(r, 1))
                .collect();
            let one = RecordBatch::try_new(self.spec.input_schemas[side].clone(), columns)
                .map_err(|e| Error::Internal(format!("restored join state: {e}")))?;
            let keys = self.keys(side, &one)?;
            let next = self.next_slot.entry(bucket).or_default();
            if *next != slot {
                return Err(Error::Internal(format!(
                    "restored join state of bucket {bucket}: slot {slot} where {} was next",
                    *next
                )));
            }
            *next += 1;
            let held = self.sides[side].buckets.entry(bucket).or_default();
            let at = held.push(one, &[flags.value(r)], slot..slot + 1);
            if let Some(key) = keys.into_iter().next().flatten() {
                index_row(&mut self.sides[side].index, key, (bucket, at));
            }
        }
        Ok(())
    }
}
