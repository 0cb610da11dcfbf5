//! State files: one version of every shard of an operator's state, as one Arrow IPC file.
//!
//! # Background
//! One file holds every shard, each shard's rows as record batches of their own: the number of
//! files a batch creates (and clean-up later deletes) does not grow with `state_partitions`, which
//! is what a batch pays for on a local disk (a file costs more there than its bytes) and in an
//! object store (a request per file). An IPC file's footer locates every record batch, so a
//! shard's part can still be read on its own.
//!
//! Every shard's rows have the same columns: the bucket (window end), the group's slot, the group
//! keys and the aggregate states. A window's groups come in one run of its bucket, so that column
//! is run-end encoded: a few bytes per window instead of eight per row (of the 36 bytes a
//! counter's row had). A group's slot is its number within its bucket, handed out in order of
//! first appearance and never reused, so a row replaces the stored row of the same bucket and slot
//! and folding files never compares keys ([`fold`]). Restoring interns the keys in slot order,
//! which gives every group its old slot back. Session windows, whose keys change as sessions
//! merge, make each session a bucket of its own (slot 0).
//!
//! Files are Arrow IPC; what is not rows (the kind of file, and per shard its number of record
//! batches and dropped buckets) travels in the file's custom metadata.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, RunArray, UInt32Array};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int32Type, Int64Type, Schema, SchemaRef, UInt32Type};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;

use crate::error::{Error, Result};

/// Name of the first column of every state file: the bucket (window end, nanoseconds) a row
/// belongs to; operators without buckets write one constant.
const BUCKET_COLUMN: &str = "__tidewater_bucket";
/// Name of the second column: the group's slot within its bucket.
const SLOT_COLUMN: &str = "__tidewater_slot";

/// Metadata key of the file's kind: `delta` or `snapshot`.
const KIND: &str = "tidewater.kind";
/// Metadata key of what the file holds per shard, in shard order ([`ShardEntry`] as JSON).
const SHARDS: &str = "tidewater.shards";

/// What a state file says of one shard besides its rows.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ShardEntry {
    /// How many of the file's record batches, following the previous shard's, are this shard's.
    batches: usize,
    /// The buckets the shard dropped whole.
    removed: Vec<i64>,
}

/// How the rows of an operator's state files name their bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Buckets {
    /// A bucket's rows come together (a window's groups): a run-end encoded column.
    Runs,
    /// Every row is a bucket of its own (a session): a column of 64-bit integers.
    PerRow,
}

/// The columns of an operator's state files: bucket and slot, then `columns` (keys and states).
pub(crate) fn file_schema(buckets: Buckets, columns: impl IntoIterator<Item = FieldRef>) -> SchemaRef {
    let bucket = match buckets {
        // The fields `RunArray` makes.
        Buckets::Runs => DataType::RunEndEncoded(
            Arc::new(Field::new("run_ends", DataType::Int32, false)),
            Arc::new(Field::new("values", DataType::Int64, true)),
        ),
        Buckets::PerRow => DataType::Int64,
    };
    let leading = [
        Field::new(BUCKET_COLUMN, bucket, false),
        Field::new(SLOT_COLUMN, DataType::UInt32, false),
    ];
    Arc::new(Schema::new(
        leading.into_iter().map(Arc::new).chain(columns).collect::<Vec<_>>(),
    ))
}

/// Rows of a state file: the groups `slots` of bucket `bucket`, whose keys and states are
/// `columns`.
pub(crate) fn state_rows(
    schema: &SchemaRef,
    bucket: i64,
    slots: impl IntoIterator<Item = usize>,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let slots = slots
        .into_iter()
        .map(u32::try_from)
        .collect::<std::result::Result<UInt32Array, _>>()
        .map_err(|_| Error::Internal("more than 2^32 groups in one window of one shard".into()))?;
    let runs = bucket_runs_column(&[(bucket, slots.len())])?;
    file_rows(schema, runs, slots, columns)
}

/// A run-end encoded bucket column of `runs`, `(bucket, rows)` each; runs of no rows are left out.
fn bucket_runs_column(runs: &[(i64, usize)]) -> Result<ArrayRef> {
    let mut end = 0usize;
    let (mut ends, mut buckets) = (Vec::with_capacity(runs.len()), Vec::with_capacity(runs.len()));
    for (bucket, rows) in runs.iter().filter(|(_, rows)| *rows > 0) {
        end += rows;
        ends.push(
            i32::try_from(end).map_err(|_| Error::Internal("more than 2^31 rows in one state file part".into()))?,
        );
        buckets.push(*bucket);
    }
    let runs = RunArray::<Int32Type>::try_new(&Int32Array::from(ends), &Int64Array::from(buckets))
        .map_err(|e| Error::Internal(format!("state rows: {e}")))?;
    Ok(Arc::new(runs))
}

/// Rows of a state file where every row is the one group of its own bucket (slot 0), as each
/// session of a session window is.
pub(crate) fn bucket_rows(schema: &SchemaRef, buckets: Int64Array, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let slots = UInt32Array::from_value(0, buckets.len());
    file_rows(schema, Arc::new(buckets), slots, columns)
}

/// Rows of a state file with a bucket column of one value per row (see [`Buckets::PerRow`]) and
/// the given slots.
pub(crate) fn slot_rows(
    schema: &SchemaRef,
    buckets: Int64Array,
    slots: UInt32Array,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    file_rows(schema, Arc::new(buckets), slots, columns)
}

fn file_rows(schema: &SchemaRef, buckets: ArrayRef, slots: UInt32Array, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let leading: [ArrayRef; 2] = [buckets, Arc::new(slots)];
    RecordBatch::try_new(schema.clone(), leading.into_iter().chain(columns).collect())
        .map_err(|e| Error::Internal(format!("state rows: {e}")))
}

/// One version's change to one shard's state, or a whole state.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    /// Upserted rows, in the columns of [`file_schema`]. A row replaces the stored row of the
    /// same bucket and slot.
    pub(crate) rows: RecordBatch,
    /// Buckets dropped whole. They are applied before `rows`, which never hold rows of them.
    pub(crate) removed: Vec<i64>,
    /// A snapshot holds the whole state: everything before it is replaced.
    pub(crate) snapshot: bool,
}

impl StateFile {
    /// One version's change: `rows` upserted after the buckets `removed` are dropped.
    pub(crate) fn delta(rows: RecordBatch, removed: Vec<i64>) -> Self {
        StateFile {
            rows,
            removed,
            snapshot: false,
        }
    }

    /// A whole state.
    pub(crate) fn snapshot(rows: RecordBatch) -> Self {
        StateFile {
            rows,
            removed: Vec::new(),
            snapshot: true,
        }
    }

    /// The bucket of each row.
    pub(crate) fn buckets(&self) -> Result<Int64Array> {
        match self.bucket_column()? {
            BucketColumn::PerRow(buckets) => Ok(buckets.clone()),
            BucketColumn::Runs(_) => Ok(self
                .bucket_runs()?
                .into_iter()
                .flat_map(|(bucket, _, rows)| std::iter::repeat_n(bucket, rows))
                .collect()),
        }
    }

    fn bucket_column(&self) -> Result<BucketColumn<'_>> {
        let column = (self.rows.num_columns() > 0).then(|| self.rows.column(0));
        let invalid = || Error::Internal(format!("a state file without a valid {BUCKET_COLUMN} column"));
        if let Some(runs) = column.and_then(|c| c.as_run_opt::<Int32Type>()) {
            let buckets = runs.values().as_primitive_opt::<Int64Type>().ok_or_else(invalid)?;
            if buckets.null_count() > 0 {
                return Err(invalid());
            }
            return Ok(BucketColumn::Runs(runs));
        }
        let buckets = column
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(invalid)?;
        match buckets.null_count() {
            0 => Ok(BucketColumn::PerRow(buckets)),
            _ => Err(invalid()),
        }
    }

    /// The slot of each row.
    pub(crate) fn slots(&self) -> Result<&UInt32Array> {
        (self.rows.num_columns() > 1)
            .then(|| self.rows.column(1).as_primitive_opt::<UInt32Type>())
            .flatten()
            .ok_or_else(|| Error::Internal(format!("a state file without the {SLOT_COLUMN} column")))
    }

    /// The rows as runs of one bucket each: `(bucket, first row, rows)`, in file order.
    pub(crate) fn bucket_runs(&self) -> Result<Vec<(i64, usize, usize)>> {
        let mut runs: Vec<(i64, usize, usize)> = Vec::new();
        let mut add = |bucket: i64, first: usize, rows: usize| match runs.last_mut() {
            Some((b, _, len)) if *b == bucket => *len += rows,
            _ => runs.push((bucket, first, rows)),
        };
        match self.bucket_column()? {
            BucketColumn::PerRow(buckets) => {
                for (row, bucket) in buckets.values().iter().enumerate() {
                    add(*bucket, row, 1);
                }
            }
            BucketColumn::Runs(array) => {
                let ends = array.run_ends();
                let buckets = array.values().as_primitive::<Int64Type>();
                let (offset, len) = (ends.offset(), ends.len());
                let mut first = 0;
                for (physical, end) in ends.values().iter().enumerate() {
                    let end = (*end as usize).saturating_sub(offset).min(len);
                    if end > first {
                        add(buckets.value(physical), first, end - first);
                        first = end;
                    }
                }
            }
        }
        Ok(runs)
    }
}

/// A state file's bucket column, as [`Buckets`] says it is.
enum BucketColumn<'a> {
    Runs(&'a RunArray<Int32Type>),
    PerRow(&'a Int64Array),
}

/// Encodes one version of every shard's state, shards in order, as one Arrow IPC file: each
/// shard's rows are record batches of their own, and the file's metadata says how many batches and
/// which dropped buckets belong to each shard.
///
/// What is encoded so far can be taken out between shards ([`StateEncoder::take`]), so that a
/// large snapshot goes to the store shard by shard instead of being held whole.
pub(super) struct StateEncoder {
    /// Created with the first shard, whose schema it takes.
    writer: Option<FileWriter<Vec<u8>>>,
    entries: Vec<ShardEntry>,
    rows: u64,
    snapshot: bool,
}

fn encoding_error(e: datafusion::arrow::error::ArrowError) -> Error {
    Error::Internal(format!("encoding state: {e}"))
}

impl StateEncoder {
    pub(super) fn new(snapshot: bool) -> Self {
        StateEncoder {
            writer: None,
            entries: Vec::new(),
            rows: 0,
            snapshot,
        }
    }

    /// Adds the next shard's part.
    pub(super) fn push(&mut self, shard: StateFile) -> Result<()> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => self
                .writer
                .insert(FileWriter::try_new(Vec::new(), &shard.rows.schema()).map_err(encoding_error)?),
        };
        // Sized up front: growing the buffer would copy the rows over and over.
        writer.get_mut().reserve(shard.rows.get_array_memory_size() + 1024);
        let batches = usize::from(shard.rows.num_rows() > 0);
        if batches > 0 {
            writer.write(&shard.rows).map_err(encoding_error)?;
        }
        self.rows += shard.rows.num_rows() as u64;
        self.entries.push(ShardEntry {
            batches,
            removed: shard.removed,
        });
        Ok(())
    }

    /// How many bytes are encoded and not taken yet.
    pub(super) fn buffered(&self) -> usize {
        self.writer.as_ref().map_or(0, |writer| writer.get_ref().len())
    }

    /// The bytes encoded since the last call. The writer keeps its own count of offsets, so
    /// taking them out of its buffer does not change what it writes next.
    pub(super) fn take(&mut self) -> Bytes {
        self.writer
            .as_mut()
            .map(|writer| Bytes::from(std::mem::take(writer.get_mut())))
            .unwrap_or_default()
    }

    /// The rest of the file (everything not taken, then the footer with the metadata) and the
    /// rows of all shards.
    pub(super) fn finish(self) -> Result<(Bytes, u64)> {
        let mut writer = self
            .writer
            .ok_or_else(|| Error::Internal("a state file of no shards".into()))?;
        writer.write_metadata(KIND, if self.snapshot { "snapshot" } else { "delta" });
        writer.write_metadata(
            SHARDS,
            serde_json::to_string(&self.entries).map_err(|e| Error::Internal(e.to_string()))?,
        );
        writer.finish().map_err(encoding_error)?;
        Ok((Bytes::from(writer.into_inner().map_err(encoding_error)?), self.rows))
    }
}

/// One version's deltas of every shard as one file.
pub(super) fn encode_deltas(deltas: Vec<StateFile>) -> Result<Bytes> {
    let mut encoder = StateEncoder::new(false);
    for delta in deltas {
        encoder.push(delta)?;
    }
    Ok(encoder.finish()?.0)
}

/// Decodes the state file `file` (its name, for messages) of a checkpoint with `shards` shards:
/// each shard's part, in shard order.
pub(crate) fn decode(bytes: Bytes, file: &str, shards: usize) -> Result<Vec<StateFile>> {
    let damaged = |message: String| Error::Checkpoint {
        file: file.to_string(),
        message,
    };
    check_blocks(&bytes)
        .map_err(|e| damaged(format!("not a readable state file ({e}); it is damaged or truncated")))?;
    let mut reader = arrow_guard(|| FileReader::try_new(Cursor::new(bytes), None))
        .map_err(|e| damaged(format!("not a readable state file ({e}); it is damaged or truncated")))?;
    let metadata = reader.custom_metadata().clone();
    let field = |key: &str| {
        metadata
            .get(key)
            .ok_or_else(|| damaged(format!("no '{key}' in its metadata")))
    };
    let snapshot = field(KIND)? == "snapshot";
    let entries: Vec<ShardEntry> =
        serde_json::from_str(field(SHARDS)?).map_err(|e| damaged(format!("'{SHARDS}': {e}")))?;
    if entries.len() != shards {
        return Err(damaged(format!(
            "holds {} shards where the checkpoint has {shards}",
            entries.len()
        )));
    }
    let schema = reader.schema();
    entries
        .into_iter()
        .map(|entry| {
            let batches = arrow_guard(|| {
                reader
                    .by_ref()
                    .take(entry.batches)
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .map_err(|e| damaged(format!("unreadable rows ({e}); the file is damaged or truncated")))?;
            if batches.len() != entry.batches {
                return Err(damaged("fewer record batches than its metadata lists".into()));
            }
            let rows = match <[RecordBatch; 1]>::try_from(batches) {
                Ok([rows]) => rows,
                // Arrow builds arrays of the file's own types here, which may be any it declares.
                Err(batches) => arrow_guard(|| datafusion::arrow::compute::concat_batches(&schema, &batches))
                    .map_err(|e| damaged(format!("unreadable rows ({e}); the file is damaged")))?,
            };
            let part = StateFile {
                rows,
                removed: entry.removed,
                snapshot,
            };
            part.bucket_column()
                .and(part.slots())
                .map_err(|e| damaged(e.to_string()))?;
            Ok(part)
        })
        .collect()
}

/// Checks that every block an Arrow IPC file's footer lists lies within the file.
///
/// # Background
/// Arrow's reader allocates as many bytes as the footer says a block holds before reading it;
/// a wrong length (the `state_file` fuzz target found one of 71 PB) is an allocation failure,
/// which aborts the process where a panic could still be caught.
fn check_blocks(file: &[u8]) -> std::result::Result<(), String> {
    use datafusion::arrow::ipc::{reader::read_footer_length, root_as_footer};
    let trailer_start = file
        .len()
        .checked_sub(10)
        .ok_or("shorter than an Arrow file's trailer")?;
    let trailer: [u8; 10] = file[trailer_start..]
        .try_into()
        .map_err(|_| "no Arrow trailer".to_string())?;
    let footer_len = read_footer_length(trailer).map_err(|e| e.to_string())?;
    let footer_start = trailer_start
        .checked_sub(footer_len)
        .ok_or("its footer is longer than the file")?;
    let footer = root_as_footer(&file[footer_start..trailer_start]).map_err(|e| format!("unreadable footer: {e}"))?;
    for blocks in [footer.recordBatches(), footer.dictionaries()].into_iter().flatten() {
        for block in blocks.iter() {
            let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
            let end = i128::from(offset) + i128::from(meta) + i128::from(body);
            if offset < 0 || meta < 0 || body < 0 || end > footer_start as i128 {
                return Err(format!(
                    "its footer lists a block of {} bytes at {offset}, outside the file",
                    i128::from(meta) + i128::from(body)
                ));
            }
        }
    }
    Ok(())
}

/// Runs arrow's IPC reader, turning a panic into an error.
///
/// # Background
/// The reader trusts the lengths and types a file states, and panics on some that do not fit its
/// bytes instead of returning an error (arrow-rs issues #7124, #10437). Only a file whose seal
/// holds gets here, so such a file was written wrong rather than damaged; it must still fail the
/// restart naming the file, never abort the process.
fn arrow_guard<T>(
    read: impl FnOnce() -> std::result::Result<T, datafusion::arrow::error::ArrowError>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "the Arrow reader failed: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic")
        )),
    }
}

/// Applies `files` in order into one snapshot: a snapshot resets, dropped buckets go, a row
/// replaces the row of its bucket and slot. No key is compared: the cost is one pass over the
/// rows plus one gather of the surviving ones. The result holds each bucket's rows in slot order,
/// buckets ascending.
pub(crate) fn fold(files: &[StateFile]) -> Result<StateFile> {
    let start = files.iter().rposition(|f| f.snapshot).unwrap_or(0);
    let files = &files[start..];
    let Some(first) = files.first() else {
        return Err(Error::Internal("folding no state files".into()));
    };
    if let [snapshot] = files
        && snapshot.snapshot
    {
        return Ok(snapshot.clone());
    }
    // Where each slot's latest row is, `(file, row)`, bucket by bucket.
    let mut buckets: BTreeMap<i64, Vec<(usize, usize)>> = BTreeMap::new();
    for (index, file) in files.iter().enumerate() {
        for bucket in &file.removed {
            buckets.remove(bucket);
        }
        let slots = file.slots()?.values();
        for (bucket, first_row, rows) in file.bucket_runs()? {
            let locations = buckets.entry(bucket).or_default();
            for row in first_row..first_row + rows {
                let slot = slots[row] as usize;
                match slot.cmp(&locations.len()) {
                    std::cmp::Ordering::Less => locations[slot] = (index, row),
                    std::cmp::Ordering::Equal => locations.push((index, row)),
                    std::cmp::Ordering::Greater => {
                        return Err(Error::Internal(format!(
                            "slot {slot} of bucket {bucket} comes before slot {}",
                            locations.len()
                        )));
                    }
                }
            }
        }
    }
    let schema: SchemaRef = first.rows.schema();
    let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("folding state: {e}"));
    let total = buckets.values().map(Vec::len).sum();
    let mut at = Vec::with_capacity(total);
    let mut slot_column = Vec::with_capacity(total);
    for locations in buckets.values() {
        slot_column.extend(0..locations.len() as u32);
        at.extend_from_slice(locations);
    }
    let bucket_column: ArrayRef = match first.bucket_column()? {
        BucketColumn::Runs(_) => bucket_runs_column(
            &buckets
                .iter()
                .map(|(b, locations)| (*b, locations.len()))
                .collect::<Vec<_>>(),
        )?,
        BucketColumn::PerRow(_) => Arc::new(
            buckets
                .iter()
                .flat_map(|(b, locations)| std::iter::repeat_n(*b, locations.len()))
                .collect::<Int64Array>(),
        ),
    };
    let mut columns: Vec<ArrayRef> = vec![bucket_column, Arc::new(UInt32Array::from(slot_column))];
    for c in 2..schema.fields().len() {
        let arrays: Vec<&dyn Array> = files.iter().map(|f| f.rows.column(c).as_ref()).collect();
        columns.push(interleave(&arrays, &at).map_err(internal)?);
    }
    Ok(StateFile::snapshot(
        RecordBatch::try_new(schema, columns).map_err(internal)?,
    ))
}
