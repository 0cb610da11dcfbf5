//! Session windows: `GROUP BY key, session_window(time, gap)`.
//!
//! # Background
//! A session is a run of rows of one key where each row comes at most `gap` after the previous
//! one; it spans `[first time, last time + gap)`, and spans that overlap or touch are one session,
//! as in Spark. Sessions grow, and merge when a row bridges two
//! of them, so their keys change as data arrives: that is why they get their own state instead of
//! the [`GroupTable`](crate::state::GroupTable) of fixed keys. Each row enters as a piece
//! `[time, time + gap)` (DataFusion's partial aggregation pre-merges rows with equal times); per
//! key, the pieces and the stored sessions are sorted and those that meet merged, their states
//! merged by fresh accumulators, as for other windows. A session is final when the watermark passes
//! its end: append mode emits it then and forgets it; complete mode emits every session each batch;
//! update mode emits the sessions a batch created, grew or merged, and forgets final ones silently.
//! In update mode a session's start identifies it: a merge keeps the earliest start, and the
//! sessions it absorbed (or the session whose start an earlier row moved) are reported as
//! replaced, so that a sink keyed on the start can delete their rows.
//!
//! In the state store each session is a bucket of its own, under a number the shard hands out:
//! a delta holds the sessions the batch created or grew and removes those merged away or closed,
//! so a batch writes what it changed, however many sessions are open.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, NullArray, RecordBatch, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::{Emitted, OperatorMetrics, StatefulOperator, check_state_schema, output_batch};
use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateFile;
use crate::state::file::{Buckets, bucket_rows, file_schema};
use crate::state::groups::{Aggregates, gather, take_rows};
use crate::state::store::SnapshotJob;
use crate::time::to_nanos;

/// One session of one key: its span in nanoseconds, its id and where its state row is.
#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    end: i64,
    /// The session's number in this shard, its bucket in state files. A session keeps it as it
    /// grows; when sessions merge, the merged one keeps the smallest id and the others are removed.
    id: i64,
    at: (usize, usize),
}

/// The state of a session-window aggregation.
pub(crate) struct SessionAggregate {
    aggregates: Aggregates,
    /// Position of the `session_window` column among the group columns.
    session_column: usize,
    key_count: usize,
    /// Encodes the other group columns; shared with snapshot work on another thread.
    converter: KeyCodec,
    state_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Sessions by key (the other group columns, row-encoded), sorted by start.
    sessions: HashMap<OwnedRow, Vec<Session>>,
    /// Every session by `(end, id)`, with its key: the watermark closes sessions in this order,
    /// so a batch never looks at the sessions it does not close.
    closing: BTreeMap<(i64, i64), OwnedRow>,
    /// Bytes of the keys in `closing`.
    key_bytes: usize,
    /// State rows in chunks, live or superseded.
    states: Vec<RecordBatch>,
    state_rows: usize,
    /// The id the next new session gets.
    next_id: i64,
    /// Sessions created or grown since the last delta: id and key.
    changed: HashMap<i64, OwnedRow>,
    /// Sessions merged into others or closed since the last delta.
    removed: Vec<i64>,
    /// The columns of a state file: the session's id as its bucket, slot 0, the other keys, the
    /// session's start and end in nanoseconds, the states.
    file_schema: SchemaRef,
}

impl std::fmt::Debug for SessionAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAggregate")
            .field("keys", &self.sessions.len())
            .finish()
    }
}

impl SessionAggregate {
    /// Like [`StatefulAggregate::try_new`](super::StatefulAggregate::try_new), with the position
    /// of the `session_window` column among the `key_count` group columns.
    pub(crate) fn try_new(
        exprs: Vec<Arc<AggregateFunctionExpr>>,
        partial_schema: &SchemaRef,
        key_count: usize,
        session_column: usize,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        let fields = partial_schema.fields();
        let other_keys: Vec<SortField> = fields[..key_count]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != session_column)
            .map(|(_, f)| SortField::new(f.data_type().clone()))
            .collect();
        let file_schema = file_schema(
            Buckets::PerRow,
            fields[..key_count]
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != session_column)
                .map(|(_, f)| f.clone())
                .chain([
                    Arc::new(Field::new("__tidewater_session_start", DataType::Int64, false)),
                    Arc::new(Field::new("__tidewater_session_end", DataType::Int64, false)),
                ])
                .chain(fields[key_count..fields.len() - 1].iter().cloned()),
        );
        Ok(SessionAggregate {
            file_schema,
            aggregates: Aggregates::try_new(exprs)?,
            session_column,
            key_count,
            converter: KeyCodec::try_new(other_keys)?,
            state_schema: Arc::new(Schema::new(fields[key_count..fields.len() - 1].to_vec())),
            output_schema,
            sessions: HashMap::new(),
            closing: BTreeMap::new(),
            key_bytes: 0,
            states: Vec::new(),
            state_rows: 0,
            next_id: 0,
            changed: HashMap::new(),
            removed: Vec::new(),
        })
    }

    fn other_keys(&self, columns: &[ArrayRef]) -> Vec<ArrayRef> {
        columns[..self.key_count]
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.session_column)
            .map(|(_, c)| Arc::clone(c))
            .collect()
    }

    /// Output rows for `(key, session)` pairs.
    fn emit(&self, picked: &[(OwnedRow, Session)]) -> Result<RecordBatch> {
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("session output: {e}"));
        let mut keys = self.converter.decode(picked.iter().map(|(k, _)| k.row()))?;
        let DataType::Struct(fields) = self.output_schema.field(self.session_column).data_type().clone() else {
            return Err(Error::Internal("session_window column is not a struct".into()));
        };
        let time_type = fields[0].data_type().clone();
        let starts =
            datafusion::arrow::array::Int64Array::from(picked.iter().map(|(_, s)| s.start).collect::<Vec<_>>());
        let ends = datafusion::arrow::array::Int64Array::from(picked.iter().map(|(_, s)| s.end).collect::<Vec<_>>());
        let from_nanos = |a: &datafusion::arrow::array::Int64Array| -> Result<ArrayRef> {
            let ns = cast(
                a,
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None),
            )
            .map_err(internal)?;
            cast(&ns, &time_type).map_err(internal)
        };
        let sessions =
            StructArray::try_new(fields, vec![from_nanos(&starts)?, from_nanos(&ends)?], None).map_err(internal)?;
        keys.insert(self.session_column, Arc::new(sessions));
        let at: Vec<(usize, usize)> = picked.iter().map(|(_, s)| s.at).collect();
        keys.extend(
            self.aggregates
                .evaluate(&gather(&self.states, &at, &self.state_schema)?)?,
        );
        output_batch(&self.output_schema, keys, picked.len())
    }

    /// The keys of `picked` in one buffer (which another thread can own), and its sessions.
    fn unzip(&self, picked: Vec<(&OwnedRow, Session)>) -> (Rows, Vec<Session>) {
        let bytes = picked.iter().map(|(key, _)| key.as_ref().as_ref().len()).sum();
        let mut keys = self.converter.empty_rows(picked.len(), bytes);
        let mut sessions = Vec::with_capacity(picked.len());
        for (key, session) in picked {
            keys.push(key.row());
            sessions.push(session);
        }
        (keys, sessions)
    }

    /// Enters a session in the index by end.
    fn track(&mut self, key: &OwnedRow, session: &Session) {
        self.key_bytes += key.as_ref().as_ref().len();
        self.closing.insert((session.end, session.id), key.clone());
    }

    /// Takes a session that was merged into another out of the index by end.
    fn untrack(&mut self, session: &Session) {
        if let Some(key) = self.closing.remove(&(session.end, session.id)) {
            self.key_bytes -= key.as_ref().as_ref().len();
        }
    }

    fn layout(&self) -> FileLayout {
        FileLayout {
            converter: self.converter.clone(),
            file_schema: Arc::clone(&self.file_schema),
            state_schema: Arc::clone(&self.state_schema),
        }
    }

    fn compact(&mut self) -> Result<()> {
        let mut all: Vec<&mut Session> = self.sessions.values_mut().flatten().collect();
        let at: Vec<(usize, usize)> = all.iter().map(|s| s.at).collect();
        let live = gather(&self.states, &at, &self.state_schema)?;
        let chunk = RecordBatch::try_new(self.state_schema.clone(), live)
            .map_err(|e| Error::Internal(format!("compacting sessions: {e}")))?;
        for (row, session) in all.iter_mut().enumerate() {
            session.at = (0, row);
        }
        self.state_rows = chunk.num_rows();
        self.states = vec![chunk];
        Ok(())
    }
}

/// Row-encodes the group keys other than the session window (shared with snapshot work on another
/// thread). A query may group by the session window alone; arrow's row format needs a column, so
/// then a null column stands in for the key, and decoding leaves it out again.
#[derive(Clone)]
struct KeyCodec {
    converter: Arc<RowConverter>,
    /// No key besides the session window.
    none: bool,
}

impl KeyCodec {
    fn try_new(fields: Vec<SortField>) -> Result<Self> {
        let none = fields.is_empty();
        let fields = match none {
            true => vec![SortField::new(DataType::Null)],
            false => fields,
        };
        let converter = RowConverter::new(fields).map_err(|e| Error::Internal(format!("session keys: {e}")))?;
        Ok(KeyCodec {
            converter: Arc::new(converter),
            none,
        })
    }

    /// The keys of `rows` rows, from their key columns.
    fn encode(&self, columns: &[ArrayRef], rows: usize) -> Result<Rows> {
        let stand_in: [ArrayRef; 1] = [Arc::new(NullArray::new(rows))];
        let columns = if self.none { &stand_in[..] } else { columns };
        self.converter
            .convert_columns(columns)
            .map_err(|e| Error::Internal(format!("session keys: {e}")))
    }

    /// The key columns of `rows`.
    fn decode<'a>(&self, rows: impl IntoIterator<Item = Row<'a>>) -> Result<Vec<ArrayRef>> {
        let columns = self
            .converter
            .convert_rows(rows)
            .map_err(|e| Error::Internal(format!("session keys: {e}")))?;
        Ok(if self.none { Vec::new() } else { columns })
    }

    fn empty_rows(&self, rows: usize, bytes: usize) -> Rows {
        self.converter.empty_rows(rows, bytes)
    }
}

/// How sessions become state-file rows; cheap to clone, for snapshot work on another thread.
struct FileLayout {
    converter: KeyCodec,
    file_schema: SchemaRef,
    state_schema: SchemaRef,
}

impl FileLayout {
    /// Session `i` of `sessions`, whose key is row `i` of `keys` and whose state is in `chunks`,
    /// as row `i`: its id as the bucket, the key, its span, its state.
    fn rows(&self, keys: &Rows, sessions: &[Session], chunks: &[RecordBatch]) -> Result<RecordBatch> {
        let mut columns = self.converter.decode(keys.iter())?;
        columns.push(Arc::new(Int64Array::from_iter_values(sessions.iter().map(|s| s.start))));
        columns.push(Arc::new(Int64Array::from_iter_values(sessions.iter().map(|s| s.end))));
        let at: Vec<(usize, usize)> = sessions.iter().map(|s| s.at).collect();
        columns.extend(gather(chunks, &at, &self.state_schema)?);
        let ids = Int64Array::from_iter_values(sessions.iter().map(|s| s.id));
        bucket_rows(&self.file_schema, ids, columns)
    }
}

/// A piece of input for one key: a partial row's span, or a stored session.
#[derive(Clone, Copy)]
enum Piece {
    New {
        start: i64,
        end: i64,
        batch: usize,
        row: usize,
    },
    Old(Session),
}

impl Piece {
    fn span(&self) -> (i64, i64) {
        match self {
            Piece::New { start, end, .. } => (*start, *end),
            Piece::Old(s) => (s.start, s.end),
        }
    }
}

impl StatefulOperator for SessionAggregate {
    fn process(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted> {
        let partial = super::only_input(inputs)?;
        let mut metrics = OperatorMetrics::default();
        let partial: Vec<&RecordBatch> = partial.iter().filter(|b| b.num_rows() > 0).collect();
        // Complete mode keeps every session, so no row is too late for it (as in Spark).
        let late_watermark = late_watermark.filter(|_| mode != OutputMode::Complete);
        // New pieces per key.
        let mut pieces: HashMap<OwnedRow, Vec<Piece>> = HashMap::new();
        for (b, batch) in partial.iter().enumerate() {
            let columns = batch.columns();
            let counts = columns[columns.len() - 1].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let spans = columns[self.session_column].as_struct();
            let nulls = spans.logical_nulls();
            let starts = to_nanos(spans.column(0))?;
            let ends = to_nanos(spans.column(1))?;
            let keys = self.converter.encode(&self.other_keys(columns), batch.num_rows())?;
            for row in 0..batch.num_rows() {
                let rows = counts.value(row) as u64;
                if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                    metrics.null_event_time += rows;
                    continue;
                }
                let (start, end) = (starts.value(row), ends.value(row));
                if late_watermark.is_some_and(|w| end <= w) {
                    metrics.dropped_by_watermark += rows;
                    continue;
                }
                pieces.entry(keys.row(row).owned()).or_default().push(Piece::New {
                    start,
                    end,
                    batch: b,
                    row,
                });
            }
        }

        // Merge pieces with the stored sessions of their key: each run of overlapping spans
        // becomes one session. A stored session that no piece touched stays as it is.
        let mut merged: Vec<(OwnedRow, i64, i64, Option<i64>)> = Vec::new();
        // Update mode: stored sessions that this batch's merges replace under another start.
        let mut replaced: Vec<(OwnedRow, Session)> = Vec::new();
        let (mut old_at, mut old_group) = (Vec::new(), Vec::new());
        let mut new_rows: Vec<Vec<u32>> = vec![Vec::new(); partial.len()];
        let mut new_group: Vec<Vec<usize>> = vec![Vec::new(); partial.len()];
        for (key, mut list) in pieces {
            let stored = self.sessions.remove(&key).unwrap_or_default();
            list.extend(stored.into_iter().map(Piece::Old));
            list.sort_by_key(|p| p.span());
            let mut untouched = Vec::new();
            let mut first = 0;
            while first < list.len() {
                let (start, mut end) = list[first].span();
                let mut next = first + 1;
                while next < list.len() && list[next].span().0 <= end {
                    end = end.max(list[next].span().1);
                    next += 1;
                }
                let run = &list[first..next];
                first = next;
                if let [Piece::Old(session)] = run {
                    untouched.push(*session);
                    continue;
                }
                let group = merged.len();
                let mut id: Option<i64> = None;
                for piece in run {
                    match *piece {
                        Piece::Old(s) => {
                            if mode == OutputMode::Update && s.start != start {
                                replaced.push((key.clone(), s));
                            }
                            old_at.push(s.at);
                            old_group.push(group);
                            self.untrack(&s);
                            // The merged session goes on as the oldest of those it absorbs.
                            if let Some(kept) = id {
                                self.removed.push(kept.max(s.id));
                            }
                            id = Some(id.map_or(s.id, |kept| kept.min(s.id)));
                        }
                        Piece::New { batch, row, .. } => {
                            new_rows[batch].push(row as u32);
                            new_group[batch].push(group);
                        }
                    }
                }
                merged.push((key.clone(), start, end, id));
            }
            if !untouched.is_empty() {
                self.sessions.insert(key, untouched);
            }
        }
        metrics.rows_updated = merged.len() as u64;
        let mut updated: Vec<(OwnedRow, Session)> = Vec::new();
        if !merged.is_empty() {
            let old_states = gather(&self.states, &old_at, &self.state_schema)?;
            let mut inputs: Vec<(Vec<ArrayRef>, Vec<usize>)> = vec![(old_states, old_group)];
            for (b, batch) in partial.iter().enumerate() {
                let columns = batch.columns();
                let states = take_rows(
                    &columns[self.key_count..columns.len() - 1],
                    std::mem::take(&mut new_rows[b]),
                )?;
                inputs.push((states, std::mem::take(&mut new_group[b])));
            }
            let refs: Vec<(&[ArrayRef], &[usize])> = inputs.iter().map(|(s, g)| (s.as_slice(), g.as_slice())).collect();
            let mut accumulators = self.aggregates.merge(&refs, merged.len())?;
            let mut columns = Vec::new();
            for acc in &mut accumulators {
                columns.extend(acc.state(EmitTo::All)?);
            }
            let chunk = RecordBatch::try_new(self.state_schema.clone(), columns)
                .map_err(|e| Error::Internal(format!("merged sessions: {e}")))?;
            let chunk_index = self.states.len();
            self.state_rows += chunk.num_rows();
            self.states.push(chunk);
            for (row, (key, start, end, id)) in merged.into_iter().enumerate() {
                let id = id.unwrap_or_else(|| {
                    self.next_id += 1;
                    self.next_id - 1
                });
                let session = Session {
                    start,
                    end,
                    id,
                    at: (chunk_index, row),
                };
                self.changed.insert(id, key.clone());
                self.track(&key, &session);
                if mode == OutputMode::Update {
                    updated.push((key.clone(), session));
                }
                let list = self.sessions.entry(key).or_default();
                list.push(session);
                list.sort_by_key(|s| s.start);
            }
        }

        // Emit: complete mode everything; update mode the sessions this batch created, grew or
        // merged; append mode the sessions the watermark closed.
        let mut picked: Vec<(OwnedRow, Session)> = updated;
        match (mode, close_watermark) {
            (OutputMode::Complete, _) => {
                for (key, list) in &self.sessions {
                    picked.extend(list.iter().map(|s| (key.clone(), *s)));
                }
            }
            (_, Some(watermark)) => {
                while let Some(entry) = self.closing.first_entry() {
                    if entry.key().0 > watermark {
                        break;
                    }
                    let ((_, id), key) = entry.remove_entry();
                    self.key_bytes -= key.as_ref().as_ref().len();
                    let Some(list) = self.sessions.get_mut(&key) else {
                        return Err(Error::Internal(format!(
                            "closing session {id} of a key without sessions"
                        )));
                    };
                    let Some(at) = list.iter().position(|s| s.id == id) else {
                        return Err(Error::Internal(format!(
                            "closing session {id}, which its key does not have"
                        )));
                    };
                    let session = list.remove(at);
                    if list.is_empty() {
                        self.sessions.remove(&key);
                    }
                    metrics.rows_removed += 1;
                    self.removed.push(id);
                    if mode == OutputMode::Append {
                        picked.push((key, session));
                    }
                }
            }
            _ => {}
        }
        // Emitted before compacting: the replaced sessions' states are in superseded rows.
        let rows = self.emit(&picked)?;
        let replaced = self.emit(&replaced)?;
        let live = self.closing.len();
        if self.state_rows > 4096 && self.state_rows > 2 * live {
            self.compact()?;
        }
        metrics.rows_total = live as u64;
        // The keys are held twice (by key and by end), plus about 64 bytes of map entry each.
        metrics.memory_bytes = (self.states.iter().map(|b| b.get_array_memory_size()).sum::<usize>()
            + 2 * self.key_bytes
            + live * (std::mem::size_of::<Session>() + 64)) as u64;
        Ok(Emitted {
            rows,
            replaced,
            metrics,
        })
    }

    /// The sessions created or grown since the last call, each a bucket of its own, and the
    /// sessions merged away or closed.
    fn changes(&mut self) -> Result<StateFile> {
        let changed = std::mem::take(&mut self.changed);
        let mut picked: Vec<(&OwnedRow, Session)> = changed
            .iter()
            .filter_map(|(id, key)| {
                let session = self.sessions.get(key)?.iter().find(|s| s.id == *id)?;
                Some((key, *session))
            })
            .collect();
        picked.sort_unstable_by_key(|(_, s)| s.id);
        let (keys, sessions) = self.unzip(picked);
        let rows = self.layout().rows(&keys, &sessions, &self.states)?;
        Ok(StateFile::delta(rows, std::mem::take(&mut self.removed)))
    }

    fn discard_changes(&mut self) {
        self.changed.clear();
        self.removed.clear();
    }

    /// Every session, in no particular order (each is a bucket of its own).
    fn snapshot(&self) -> SnapshotJob {
        let all = self
            .sessions
            .iter()
            .flat_map(|(key, list)| list.iter().map(move |s| (key, *s)));
        let (keys, sessions) = self.unzip(all.collect());
        // The chunks are immutable and shared: the job sees the state as it is now.
        let states = self.states.clone();
        let layout = self.layout();
        Box::new(move || Ok(StateFile::snapshot(layout.rows(&keys, &sessions, &states)?)))
    }

    fn restore(&mut self, file: &StateFile) -> Result<()> {
        self.sessions.clear();
        self.closing.clear();
        self.key_bytes = 0;
        self.states.clear();
        self.state_rows = 0;
        self.discard_changes();
        check_state_schema(file, &self.file_schema)?;
        // Each session is the one row of its bucket.
        if let Some(slot) = file.slots()?.values().iter().find(|slot| **slot != 0) {
            return Err(Error::Internal(format!(
                "session state with a second row (slot {slot}) for one session"
            )));
        }
        let ids = file.buckets()?;
        self.next_id = ids.values().iter().max().map_or(0, |max| max + 1);
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("session state: {e}"));
        let columns = file.rows.columns();
        let other = self.key_count - 1;
        // After the bucket and slot columns: the other keys, start, end, the states.
        let keys = self.converter.encode(&columns[2..2 + other], file.rows.num_rows())?;
        let starts = columns[2 + other].as_primitive::<Int64Type>();
        let ends = columns[3 + other].as_primitive::<Int64Type>();
        for row in 0..file.rows.num_rows() {
            let key = keys.row(row).owned();
            let session = Session {
                start: starts.value(row),
                end: ends.value(row),
                id: ids.value(row),
                at: (0, row),
            };
            self.track(&key, &session);
            self.sessions.entry(key).or_default().push(session);
        }
        for list in self.sessions.values_mut() {
            list.sort_by_key(|s| s.start);
        }
        let states =
            RecordBatch::try_new(self.state_schema.clone(), columns[4 + other..].to_vec()).map_err(internal)?;
        self.state_rows = states.num_rows();
        self.states.push(states);
        Ok(())
    }
}
