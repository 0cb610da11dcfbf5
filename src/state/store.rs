//! The state store: versions of an operator's state, as delta and snapshot files per shard.
//!
//! # Background
//! After batch N, each shard writes `state/<operator>/<shard>/<N>.delta`: the rows it upserted and
//! the buckets (windows) it dropped in that batch. Writing only changes keeps the cost of a batch
//! proportional to what it touched, not to the size of the state. Restoring version N reads the
//! latest `<S>.snapshot` with S <= N and applies the deltas S+1..=N in order.
//!
//! Snapshots are made off the batch path: every `snapshot_interval` versions a background task
//! folds the last snapshot and the deltas after it into a new snapshot, then deletes files no
//! retained version needs. A batch never waits for it.
//!
//! Files are Arrow IPC; what is not rows (the dropped buckets, the kind of file, how many leading
//! columns form the key) travels in the file's custom metadata.

use datafusion::common::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::checkpoint::{Dir, Write};
use crate::error::{Error, Result};

/// Name of the first column of every state file: the bucket (window end, nanoseconds) a row
/// belongs to; operators without buckets write one constant.
pub(crate) const BUCKET_COLUMN: &str = "__tidewater_bucket";

const KIND: &str = "tidewater.kind";
const KEY_COLUMNS: &str = "tidewater.key_columns";
const REMOVED: &str = "tidewater.removed_buckets";

/// One version's change to one shard's state, or a whole state.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    /// Upserted rows: [`BUCKET_COLUMN`], then the rest of the key (`key_columns` columns in all),
    /// then the state columns. A row replaces the stored row of the same key.
    pub(crate) rows: RecordBatch,
    pub(crate) key_columns: usize,
    /// Buckets dropped whole. They are applied before `rows`, which never hold rows of them.
    pub(crate) removed: Vec<i64>,
    /// A snapshot holds the whole state: everything before it is replaced.
    pub(crate) snapshot: bool,
}

impl StateFile {
    fn encode(&self) -> Result<Bytes> {
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("encoding state: {e}"));
        let mut writer = FileWriter::try_new(Vec::new(), &self.rows.schema()).map_err(internal)?;
        writer.write_metadata(KIND, if self.snapshot { "snapshot" } else { "delta" });
        writer.write_metadata(KEY_COLUMNS, self.key_columns.to_string());
        writer.write_metadata(
            REMOVED,
            serde_json::to_string(&self.removed).map_err(|e| Error::Internal(e.to_string()))?,
        );
        writer.write(&self.rows).map_err(internal)?;
        writer.finish().map_err(internal)?;
        Ok(Bytes::from(writer.into_inner().map_err(internal)?))
    }

    fn decode(bytes: Bytes, file: &str) -> Result<Self> {
        let damaged = |message: String| Error::Checkpoint {
            file: file.to_string(),
            message,
        };
        let reader = FileReader::try_new(Cursor::new(bytes), None)
            .map_err(|e| damaged(format!("not a readable state file ({e}); it is damaged or truncated")))?;
        let metadata = reader.custom_metadata().clone();
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| damaged(format!("no '{key}' in its metadata")))
        };
        let snapshot = field(KIND)? == "snapshot";
        let key_columns = field(KEY_COLUMNS)?
            .parse()
            .map_err(|e| damaged(format!("'{KEY_COLUMNS}': {e}")))?;
        let removed = serde_json::from_str(&field(REMOVED)?).map_err(|e| damaged(format!("'{REMOVED}': {e}")))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| damaged(format!("unreadable rows ({e}); the file is damaged or truncated")))?;
        let rows = datafusion::arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| Error::Internal(format!("state file rows: {e}")))?;
        Ok(StateFile {
            rows,
            key_columns,
            removed,
            snapshot,
        })
    }

    /// The bucket of each row.
    pub(crate) fn buckets(&self) -> Result<&datafusion::arrow::array::Int64Array> {
        self.rows
            .column(0)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::Internal("state file without a bucket column".into()))
    }
}

/// The state files of one operator, shard by shard.
#[derive(Debug)]
pub(crate) struct StateStore {
    dir: Dir,
    shards: usize,
    snapshot_interval: u64,
    /// The background snapshot task, while one runs.
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The version of the latest snapshot made (or found), if any.
    last_snapshot: Arc<Mutex<Option<u64>>>,
}

fn file_name(version: u64, snapshot: bool) -> String {
    format!("{version}.{}", if snapshot { "snapshot" } else { "delta" })
}

/// The versions of the deltas and snapshots among `names`.
fn versions(names: &[String]) -> (Vec<u64>, Vec<u64>) {
    let (mut deltas, mut snapshots) = (Vec::new(), Vec::new());
    for name in names {
        match name.split_once('.') {
            Some((v, "delta")) => deltas.extend(v.parse::<u64>().ok()),
            Some((v, "snapshot")) => snapshots.extend(v.parse::<u64>().ok()),
            _ => {}
        }
    }
    deltas.sort_unstable();
    snapshots.sort_unstable();
    (deltas, snapshots)
}

impl StateStore {
    /// The store of one operator in `dir` (`state/<operator>`).
    pub(crate) fn new(dir: Dir, shards: usize, snapshot_interval: u64) -> Self {
        StateStore {
            dir,
            shards,
            snapshot_interval: snapshot_interval.max(1),
            maintenance: Mutex::new(None),
            last_snapshot: Arc::new(Mutex::new(None)),
        }
    }

    fn shard(&self, shard: usize) -> Dir {
        self.dir.child(&shard.to_string())
    }

    /// Writes version `version`: one file per shard, concurrently.
    pub(crate) async fn write(&self, version: u64, files: Vec<StateFile>) -> Result<()> {
        if files.len() != self.shards {
            return Err(Error::Internal(format!(
                "{} state files for {} shards",
                files.len(),
                self.shards
            )));
        }
        let writes = files.into_iter().enumerate().map(|(shard, file)| async move {
            let bytes = tokio::task::spawn_blocking(move || file.encode().map(|b| (b, file.snapshot)))
                .await
                .map_err(|e| Error::Internal(format!("encoding state: {e}")))??;
            self.shard(shard)
                .put(&file_name(version, bytes.1), bytes.0, Write::Replace)
                .await
        });
        futures::future::try_join_all(writes).await?;
        Ok(())
    }

    /// The files that make version `version` of each shard: a snapshot (if any), then deltas.
    pub(crate) async fn load(&self, version: u64) -> Result<Vec<Vec<StateFile>>> {
        let loads = (0..self.shards).map(|shard| load_shard(self.shard(shard), version));
        let shards = futures::future::try_join_all(loads).await?;
        // The next snapshot comes an interval after the newest one found.
        *lock(&self.last_snapshot) = shards.iter().filter_map(|(base, _)| *base).max();
        Ok(shards.into_iter().map(|(_, files)| files).collect())
    }

    /// After version `version` is committed: starts a background snapshot when one is due, and
    /// deletes files that no version from `oldest_kept` on needs. Never waits.
    pub(crate) fn maintain(&self, version: u64, oldest_kept: u64) {
        let due = lock(&self.last_snapshot).is_none_or(|s| version >= s + self.snapshot_interval)
            && version + 1 >= self.snapshot_interval;
        if !due {
            return;
        }
        let mut running = lock(&self.maintenance);
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let dirs: Vec<Dir> = (0..self.shards).map(|s| self.shard(s)).collect();
        let last_snapshot = self.last_snapshot.clone();
        *running = Some(tokio::spawn(async move {
            let work = async {
                for dir in &dirs {
                    snapshot_shard(dir, version).await?;
                    clean_shard(dir, oldest_kept).await?;
                }
                Ok::<_, Error>(())
            };
            match work.await {
                Ok(()) => {
                    *lock(&last_snapshot) = Some(version);
                    tracing::debug!(version, "state snapshot written");
                }
                // The deltas are all there: a failed snapshot only means a longer restore.
                Err(e) => tracing::warn!(version, error = %e, "state snapshot failed"),
            }
        }));
    }

    /// Waits for a running background snapshot (when a query stops).
    pub(crate) async fn finish(&self) {
        let task = lock(&self.maintenance).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read(dir: &Dir, name: &str) -> Result<StateFile> {
    let bytes = dir.get(name).await?.ok_or_else(|| Error::Checkpoint {
        file: dir.display(name),
        message: "missing: the state version cannot be restored without it".into(),
    })?;
    let file = dir.display(name);
    tokio::task::spawn_blocking(move || StateFile::decode(bytes, &file))
        .await
        .map_err(|e| Error::Internal(format!("decoding state: {e}")))?
}

/// The files of version `version` of one shard, in the order they apply, and the version of the
/// snapshot they start from.
async fn load_shard(dir: Dir, version: u64) -> Result<(Option<u64>, Vec<StateFile>)> {
    let (_, snapshots) = versions(&dir.list().await?);
    let base = snapshots.iter().rev().find(|s| **s <= version).copied();
    let mut files = Vec::new();
    if let Some(base) = base {
        files.push(read(&dir, &file_name(base, true)).await?);
    }
    for v in base.map_or(0, |b| b + 1)..=version {
        files.push(read(&dir, &file_name(v, false)).await?);
    }
    Ok((base, files))
}

/// Folds version `version` of one shard into `<version>.snapshot`.
async fn snapshot_shard(dir: &Dir, version: u64) -> Result<()> {
    let (_, files) = load_shard(dir.clone(), version).await?;
    let snapshot = tokio::task::spawn_blocking(move || fold(&files))
        .await
        .map_err(|e| Error::Internal(format!("folding state: {e}")))??;
    let bytes = tokio::task::spawn_blocking(move || snapshot.encode())
        .await
        .map_err(|e| Error::Internal(format!("encoding state: {e}")))??;
    dir.put(&file_name(version, true), bytes, Write::Replace).await
}

/// Deletes the files that restoring any version from `oldest_kept` on does not read: everything
/// before the latest snapshot at or below `oldest_kept`.
async fn clean_shard(dir: &Dir, oldest_kept: u64) -> Result<()> {
    let (deltas, snapshots) = versions(&dir.list().await?);
    let Some(base) = snapshots.iter().rev().find(|s| **s <= oldest_kept).copied() else {
        return Ok(());
    };
    for v in deltas.into_iter().filter(|v| *v <= base) {
        dir.delete(&file_name(v, false)).await?;
    }
    for v in snapshots.into_iter().filter(|v| *v < base) {
        dir.delete(&file_name(v, true)).await?;
    }
    Ok(())
}

/// Where the latest row of each key is: `(file, row)` by the key's row-encoded bytes.
type RowsByKey = HashMap<Box<[u8]>, (usize, usize)>;

/// Applies `files` in order into one snapshot: a snapshot resets, dropped buckets go, a row
/// replaces the row of the same key. Only the deltas' keys are hashed; the base snapshot's rows
/// are looked up, so folding costs about a pass over the snapshot plus the deltas' rows.
pub(crate) fn fold(files: &[StateFile]) -> Result<StateFile> {
    let start = files.iter().rposition(|f| f.snapshot).unwrap_or(0);
    let files = &files[start..];
    let Some(first) = files.first() else {
        return Err(Error::Internal("folding no state files".into()));
    };
    if files.len() == 1 {
        return Ok(StateFile {
            snapshot: true,
            removed: Vec::new(),
            ..first.clone()
        });
    }
    let (base, deltas) = match first.snapshot {
        true => (Some(first), &files[1..]),
        false => (None, files),
    };
    let schema: SchemaRef = first.rows.schema();
    let key_columns = first.key_columns;
    let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("folding state: {e}"));
    let converter = RowConverter::new(
        schema.fields()[1..key_columns]
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(internal)?;
    let keys_of = |file: &StateFile| converter.convert_columns(&file.rows.columns()[1..key_columns]);

    // The latest row of each key among the deltas, by bucket, and the buckets they dropped.
    let mut latest: HashMap<i64, RowsByKey> = HashMap::default();
    let mut removed: datafusion::common::HashSet<i64> = datafusion::common::HashSet::default();
    for (index, file) in deltas.iter().enumerate() {
        for bucket in &file.removed {
            latest.remove(bucket);
            removed.insert(*bucket);
        }
        let keys = keys_of(file).map_err(internal)?;
        let buckets = file.buckets()?;
        for row in 0..file.rows.num_rows() {
            latest
                .entry(buckets.value(row))
                .or_default()
                .insert(keys.row(row).as_ref().into(), (index, row));
        }
    }
    let mut parts = Vec::with_capacity(2);
    if let Some(base) = base {
        // The snapshot's rows that no delta replaced or dropped.
        let keys = keys_of(base).map_err(internal)?;
        let buckets = base.buckets()?;
        let kept: Vec<u32> = (0..base.rows.num_rows())
            .filter(|&row| {
                let bucket = buckets.value(row);
                !removed.contains(&bucket)
                    && latest
                        .get(&bucket)
                        .is_none_or(|m| !m.contains_key(keys.row(row).as_ref()))
            })
            .map(|row| row as u32)
            .collect();
        parts.push(
            datafusion::arrow::compute::take_record_batch(
                &base.rows,
                &datafusion::arrow::array::UInt32Array::from(kept),
            )
            .map_err(internal)?,
        );
    }
    let at: Vec<(usize, usize)> = latest.into_values().flat_map(|m| m.into_values()).collect();
    let columns = (0..schema.fields().len())
        .map(|c| {
            let arrays: Vec<&dyn Array> = deltas.iter().map(|f| f.rows.column(c).as_ref()).collect();
            interleave(&arrays, &at).map_err(internal)
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    parts.push(RecordBatch::try_new(schema.clone(), columns).map_err(internal)?);
    let rows = datafusion::arrow::compute::concat_batches(&schema, &parts).map_err(internal)?;
    Ok(StateFile {
        rows,
        key_columns,
        removed: Vec::new(),
        snapshot: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    /// A state file of rows `(bucket, key, value)`.
    fn file(rows: &[(i64, &str, i64)], removed: &[i64], snapshot: bool) -> StateFile {
        let schema = Arc::new(Schema::new(vec![
            Field::new(BUCKET_COLUMN, DataType::Int64, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Int64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        StateFile {
            rows,
            key_columns: 2,
            removed: removed.to_vec(),
            snapshot,
        }
    }

    fn content(file: &StateFile) -> Vec<(i64, String, i64)> {
        let mut rows: Vec<_> = (0..file.rows.num_rows())
            .map(|r| {
                (
                    file.rows.column(0).as_primitive::<Int64Type>().value(r),
                    file.rows.column(1).as_string::<i32>().value(r).to_string(),
                    file.rows.column(2).as_primitive::<Int64Type>().value(r),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn folding_applies_snapshots_removals_and_upserts_in_order() {
        let files = [
            file(&[(1, "old", 9)], &[], false),
            // A snapshot replaces everything before it.
            file(&[(10, "a", 1), (10, "b", 2), (20, "a", 3)], &[], true),
            file(&[(10, "a", 5), (30, "c", 1)], &[], false),
            // Bucket 10 closed; a later row of the same key lives in another bucket.
            file(&[(20, "a", 4)], &[10], false),
        ];
        let folded = fold(&files).unwrap();
        assert!(folded.snapshot && folded.removed.is_empty());
        assert_eq!(content(&folded), [(20, "a".to_string(), 4), (30, "c".to_string(), 1)]);
        // Without a snapshot the first delta is the base.
        let folded = fold(&files[2..]).unwrap();
        assert_eq!(content(&folded), [(20, "a".to_string(), 4), (30, "c".to_string(), 1)]);
        let folded = fold(&[
            file(&[(1, "x", 1), (2, "y", 2)], &[], false),
            file(&[(1, "x", 5)], &[2], false),
        ])
        .unwrap();
        assert_eq!(content(&folded), [(1, "x".to_string(), 5)]);
    }

    #[test]
    fn a_state_file_round_trips_and_a_truncated_one_is_named() {
        let original = file(&[(10, "a", 1), (20, "b", 2)], &[5, 7], false);
        let bytes = original.encode().unwrap();
        let back = StateFile::decode(bytes.clone(), "cp/state/0/0/3.delta").unwrap();
        assert_eq!(content(&back), content(&original));
        assert_eq!(back.removed, [5, 7]);
        assert_eq!((back.key_columns, back.snapshot), (2, false));
        let error = StateFile::decode(bytes.slice(..bytes.len() - 20), "cp/state/0/0/3.delta").unwrap_err();
        assert!(error.to_string().contains("cp/state/0/0/3.delta"), "{error}");
    }
}
