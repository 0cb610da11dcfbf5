//! The state store: versions of an operator's state, as one delta or snapshot file per version.
//!
//! # Background
//! After batch N the store writes `state/<operator>/<N>.delta`: for every shard, the rows it
//! upserted and the buckets (windows) it dropped in that batch. Writing only changes keeps the cost
//! of a batch proportional to what it touched, not to the size of the state. Restoring version N
//! reads the latest `<S>.snapshot` with S <= N and applies the deltas S+1..=N in order
//! ([`fold`]). What a file holds is in [`super::file`].
//!
//! Snapshots are made off the batch path: the operator hands over a frozen view of its state
//! (shared immutable chunks), and a background thread at the lowest CPU priority encodes it shard
//! by shard and writes it out (in parts once it is large, [`STREAM_SNAPSHOTS_FROM`]); then files
//! no retained version needs are deleted. A batch never waits for it.
//!
//! A snapshot rewrites the whole state, so making one every few batches would cost every batch a
//! share of the state's size, however little the batch changed. Instead a snapshot is due once at
//! least `snapshot_interval` deltas were written since the last one *and* those deltas hold twice as
//! many rows as it does ([`DELTA_ROWS_PER_SNAPSHOT_ROW`]; or after [`MAX_INTERVALS`] intervals):
//! snapshots then write at most half as many rows as the deltas, and a restore never reads more
//! than about three times the state (1M groups restore in a fifth of a second).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::file::{StateEncoder, StateFile, decode, encode_deltas, fold};
use crate::checkpoint::{CLEAN_EVERY, Dir, Write};
use crate::error::{Error, Result};

/// A snapshot is due once the deltas written since the last one hold this many times its rows.
pub(crate) const DELTA_ROWS_PER_SNAPSHOT_ROW: u64 = 2;

/// However few rows the deltas hold, a snapshot is due after this many snapshot intervals, so
/// that a restore never reads more than this many intervals of delta files.
pub(crate) const MAX_INTERVALS: u64 = 100;

/// What the store knows of its files: which may exist, so that clean-up deletes them by name
/// (listing a folder costs a `stat` per file on a local disk), and how many rows were written since
/// the latest snapshot, which decides when the next one is due.
#[derive(Debug, Default)]
struct Files {
    /// The oldest version whose files may exist.
    first: u64,
    /// Versions with a snapshot, ascending.
    snapshots: Vec<u64>,
    /// Rows of the latest snapshot, all shards together.
    snapshot_rows: u64,
    /// Rows of the deltas written after it.
    delta_rows: u64,
}

impl Files {
    /// Whether a snapshot of version `version` is due; see the module docs.
    fn snapshot_due(&self, version: u64, interval: u64) -> bool {
        let deltas = self
            .snapshots
            .last()
            .map_or(version + 1, |s| version.saturating_sub(*s));
        deltas >= interval
            && (self.delta_rows >= DELTA_ROWS_PER_SNAPSHOT_ROW * self.snapshot_rows
                || deltas >= interval * MAX_INTERVALS)
    }
}

/// State files with fewer rows are encoded on the task that writes them.
const ENCODE_INLINE_ROWS: u64 = 65_536;

/// State files read at once when a version is restored.
const CONCURRENT_READS: usize = 8;

/// Work that turns a frozen view of one shard's state into a snapshot, run off the batch path.
pub(crate) type SnapshotJob = Box<dyn FnOnce() -> Result<StateFile> + Send>;

/// The state files of one operator.
#[derive(Debug)]
pub(crate) struct StateStore {
    /// The operator's folder, `state/<operator>`.
    dir: Dir,
    shards: usize,
    snapshot_interval: u64,
    /// The background snapshot and clean-up task, while one runs.
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    files: Arc<Mutex<Files>>,
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
            files: Arc::default(),
        }
    }

    /// Writes version `version`: every shard's delta, in shard order, as one file.
    pub(crate) async fn write(&self, version: u64, deltas: Vec<StateFile>) -> Result<()> {
        if deltas.len() != self.shards {
            return Err(Error::Internal(format!(
                "{} state deltas for {} shards",
                deltas.len(),
                self.shards
            )));
        }
        let rows: u64 = deltas.iter().map(|d| d.rows.num_rows() as u64).sum();
        // A small delta encodes in less time than handing it to another thread takes.
        let bytes = match rows < ENCODE_INLINE_ROWS {
            true => encode_deltas(deltas)?,
            false => tokio::task::spawn_blocking(move || encode_deltas(deltas))
                .await
                .map_err(|e| Error::Internal(format!("encoding state: {e}")))??,
        };
        self.dir.put(&file_name(version, false), bytes, Write::Replace).await?;
        lock(&self.files).delta_rows += rows;
        Ok(())
    }

    /// Version `version` of each shard's state, folded into one snapshot per shard.
    pub(crate) async fn load(&self, version: u64) -> Result<Vec<StateFile>> {
        let (deltas, snapshots) = versions(&self.dir.list().await?);
        let base = snapshots.iter().rev().find(|s| **s <= version).copied();
        let names: Vec<String> = base
            .map(|b| file_name(b, true))
            .into_iter()
            .chain((base.map_or(0, |b| b + 1)..=version).map(|v| file_name(v, false)))
            .collect();
        let files: Vec<Vec<StateFile>> = futures::stream::iter(names)
            .map(|name| async move { read(&self.dir, &name, self.shards).await })
            .buffered(CONCURRENT_READS)
            .try_collect()
            .await?;
        // File by file to shard by shard.
        let mut shards: Vec<Vec<StateFile>> = (0..self.shards).map(|_| Vec::with_capacity(files.len())).collect();
        for file in files {
            for (shard, part) in shards.iter_mut().zip(file) {
                shard.push(part);
            }
        }
        let rows = |snapshot: bool| -> u64 {
            shards
                .iter()
                .flatten()
                .filter(|part| part.snapshot == snapshot)
                .map(|part| part.rows.num_rows() as u64)
                .sum()
        };
        *lock(&self.files) = Files {
            first: deltas
                .first()
                .into_iter()
                .chain(snapshots.first())
                .min()
                .copied()
                .unwrap_or(0),
            snapshot_rows: rows(true),
            delta_rows: rows(false),
            snapshots,
        };
        let folds = shards.into_iter().map(|parts| async move {
            tokio::task::spawn_blocking(move || fold(&parts))
                .await
                .map_err(|e| Error::Internal(format!("folding state: {e}")))?
                .map_err(|e| Error::Checkpoint {
                    file: self.dir.display(&file_name(version, false)),
                    message: format!("state version {version} cannot be rebuilt: {e}"),
                })
        });
        futures::future::try_join_all(folds).await
    }

    /// Whether the state after version `version` should be snapshotted; see the module docs.
    pub(crate) fn snapshot_due(&self, version: u64) -> bool {
        lock(&self.files).snapshot_due(version, self.snapshot_interval) && !self.busy()
    }

    /// Whether the background task still runs.
    fn busy(&self) -> bool {
        lock(&self.maintenance).as_ref().is_some_and(|task| !task.is_finished())
    }

    /// After version `version` is committed: writes its snapshot from `snapshot` (one job per
    /// shard) when given, and from time to time deletes files that no version from `oldest_kept`
    /// on needs. Both in the background; never waits.
    pub(crate) fn maintain(&self, version: u64, oldest_kept: u64, snapshot: Option<Vec<SnapshotJob>>) {
        if snapshot.is_none() && !version.is_multiple_of(CLEAN_EVERY) || self.busy() {
            return;
        }
        let dir = self.dir.clone();
        let files = self.files.clone();
        let written = lock(&files).delta_rows;
        let task = tokio::spawn(async move {
            let work = async {
                if let Some(jobs) = snapshot {
                    let rows = write_snapshot(&dir, version, jobs, STREAM_SNAPSHOTS_FROM).await?;
                    let mut now = lock(&files);
                    now.snapshots.push(version);
                    now.snapshot_rows = rows;
                    // Deltas written while the snapshot was made come after it.
                    now.delta_rows = now.delta_rows.saturating_sub(written);
                    tracing::debug!(version, rows, "state snapshot written");
                }
                clean(&dir, &files, oldest_kept).await
            };
            // The deltas are all there: a failed snapshot only means a longer restore.
            if let Err(e) = work.await {
                tracing::warn!(version, error = %e, "state snapshot or clean-up failed");
            }
        });
        *lock(&self.maintenance) = Some(task);
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

/// The state file `name` of a checkpoint with `shards` shards: each shard's part.
async fn read(dir: &Dir, name: &str, shards: usize) -> Result<Vec<StateFile>> {
    let bytes = dir.get(name).await?.ok_or_else(|| Error::Checkpoint {
        file: dir.display(name),
        message: "missing: the state version cannot be restored without it".into(),
    })?;
    let file = dir.display(name);
    tokio::task::spawn_blocking(move || decode(bytes, &file, shards))
        .await
        .map_err(|e| Error::Internal(format!("decoding state: {e}")))?
}

/// Snapshots whose encoded shards reach this size are written as they are made, in parts (a
/// multipart write), so that one holds no more than about two shards' bytes at a time; smaller
/// ones are one put (for an object store, one request; in `memory://`, no copy).
const STREAM_SNAPSHOTS_FROM: usize = 64 << 20;

/// Makes the snapshot of version `version` from every shard's job, one shard after another, and
/// writes it; returns its rows. Once the encoded shards reach `stream_from` bytes they are
/// written in parts as they come ([`STREAM_SNAPSHOTS_FROM`]). The file appears only whole, and not
/// at all if making or writing it fails.
async fn write_snapshot(dir: &Dir, version: u64, jobs: Vec<SnapshotJob>, stream_from: usize) -> Result<u64> {
    let name = file_name(version, true);
    // Encoded bytes, the file's last bytes coming last; one waits while the next shard is made.
    let (parts, received) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stopped = || Error::Internal("the snapshot's write stopped".into());
    let made = async {
        at_idle_priority(move || {
            let mut encoder = StateEncoder::new(true);
            for job in jobs {
                encoder.push(job()?)?;
                if encoder.buffered() >= stream_from {
                    parts.blocking_send(encoder.take()).map_err(|_| stopped())?;
                }
            }
            let (last, rows) = encoder.finish()?;
            parts.blocking_send(last).map_err(|_| stopped())?;
            Ok::<_, Error>(rows)
        })
        .await?
    };
    // Every part but the last goes out as it comes: which one is last shows when the channel
    // closes, and whether it is the whole file when `made` succeeded. Both sides run to their end
    // (the receiver goes with `uploading`, so a failed write stops the thread), and then what was
    // started is finished or given up.
    let (mut upload, mut last) = (None, None);
    let uploading = async {
        let mut received = received;
        while let Some(part) = received.recv().await {
            if let Some(earlier) = last.replace(part) {
                if upload.is_none() {
                    upload = Some(dir.upload(&name).await?);
                }
                if let Some(upload) = &mut upload {
                    upload.write(earlier).await?;
                }
            }
        }
        Ok(())
    };
    let (made, uploaded) = futures::future::join(made, uploading).await;
    match (made.and_then(|rows| uploaded.map(|()| rows)), upload, last) {
        (Ok(rows), None, Some(whole)) => {
            dir.put(&name, whole, Write::Replace).await?;
            Ok(rows)
        }
        (Ok(rows), Some(mut upload), Some(last)) => match upload.write(last).await {
            Ok(()) => upload.finish().await.map(|()| rows),
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        },
        (result, upload, _) => {
            if let Some(upload) = upload {
                upload.abort().await;
            }
            result.and(Err(Error::Internal("a snapshot without bytes".into())))
        }
    }
}

/// Runs `work` on a thread of its own at the lowest CPU priority, so that it takes only CPU the
/// batches leave idle: a snapshot is maintenance, like a compaction, and nothing waits for it.
async fn at_idle_priority<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tidewater-snapshot".into())
        .spawn(move || {
            lower_priority();
            let _ = done.send(work());
        })
        .map_err(|e| Error::Internal(format!("starting the snapshot thread: {e}")))?;
    result
        .await
        .map_err(|_| Error::Internal("the snapshot thread ended without a result".into()))
}

/// Gives the calling thread the lowest scheduling priority (nice 19); where that is not
/// available the thread keeps the normal one.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `setpriority` only reads its integer arguments. On Linux a nice value is a
    // per-thread attribute, and `gettid` names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
}

/// Deletes the files that restoring any version from `oldest_kept` on does not read: everything
/// before the latest snapshot at or below `oldest_kept`.
async fn clean(dir: &Dir, files: &Mutex<Files>, oldest_kept: u64) -> Result<()> {
    let (first, base) = {
        let kept = lock(files);
        match kept.snapshots.iter().rev().find(|s| **s <= oldest_kept) {
            Some(base) => (kept.first, *base),
            None => return Ok(()),
        }
    };
    for v in first..=base {
        dir.delete(&file_name(v, false)).await?;
        if v < base {
            dir.delete(&file_name(v, true)).await?;
        }
    }
    let mut kept = lock(files);
    kept.first = kept.first.max(base);
    kept.snapshots.retain(|s| *s >= base);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::file::{Buckets, file_schema, state_rows};
    use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type};

    /// A state file of rows `(bucket, slot, key, value)`.
    fn file(rows: &[(i64, usize, &str, i64)], removed: &[i64], snapshot: bool) -> StateFile {
        let schema = file_schema(
            Buckets::Runs,
            [
                Arc::new(Field::new("key", DataType::Utf8, false)),
                Arc::new(Field::new("value", DataType::Int64, false)),
            ],
        );
        let parts: Vec<RecordBatch> = rows
            .iter()
            .map(|(bucket, slot, key, value)| {
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from(vec![*key])),
                    Arc::new(Int64Array::from(vec![*value])),
                ];
                state_rows(&schema, *bucket, [*slot], columns).unwrap()
            })
            .collect();
        StateFile {
            rows: datafusion::arrow::compute::concat_batches(&schema, &parts).unwrap(),
            removed: removed.to_vec(),
            snapshot,
        }
    }

    /// The rows of `file` in file order.
    fn content(file: &StateFile) -> Vec<(i64, u32, String, i64)> {
        let (buckets, slots) = (file.buckets().unwrap(), file.slots().unwrap());
        (0..file.rows.num_rows())
            .map(|r| {
                (
                    buckets.value(r),
                    slots.value(r),
                    file.rows.column(2).as_string::<i32>().value(r).to_string(),
                    file.rows.column(3).as_primitive::<Int64Type>().value(r),
                )
            })
            .collect()
    }

    fn row(bucket: i64, slot: u32, key: &str, value: i64) -> (i64, u32, String, i64) {
        (bucket, slot, key.to_string(), value)
    }

    #[test]
    fn folding_applies_snapshots_removals_and_upserts_in_order() {
        let files = [
            file(&[(1, 0, "old", 9)], &[], false),
            // A snapshot replaces everything before it.
            file(&[(10, 0, "a", 1), (10, 1, "b", 2), (20, 0, "a", 3)], &[], true),
            // A new slot follows the last one of its bucket; a later row of a slot replaces it.
            file(
                &[(30, 0, "c", 1), (10, 0, "a", 5), (10, 2, "d", 7), (30, 0, "c", 2)],
                &[],
                false,
            ),
            // Bucket 10 closed; the same key lives on in bucket 20.
            file(&[(20, 0, "a", 4), (20, 1, "e", 1)], &[10], false),
        ];
        let folded = fold(&files).unwrap();
        assert!(folded.snapshot && folded.removed.is_empty());
        // Buckets ascending, each in slot order.
        assert_eq!(
            content(&folded),
            [row(20, 0, "a", 4), row(20, 1, "e", 1), row(30, 0, "c", 2)]
        );

        // Without a snapshot the first delta is the base.
        let folded = fold(&[
            file(&[(1, 0, "x", 1), (2, 0, "y", 2)], &[], false),
            file(&[(1, 1, "z", 3), (1, 0, "x", 5)], &[2], false),
        ])
        .unwrap();
        assert_eq!(content(&folded), [row(1, 0, "x", 5), row(1, 1, "z", 3)]);
        // A lone snapshot is the state as it is.
        assert_eq!(content(&fold(&files[1..2]).unwrap()), content(&files[1]));
    }

    #[test]
    fn a_snapshot_is_due_when_the_deltas_since_the_last_one_hold_twice_its_rows() {
        let fresh = Files::default();
        assert!(!fresh.snapshot_due(8, 10), "the first snapshot waits for 10 deltas");
        assert!(fresh.snapshot_due(9, 10));
        let after = |delta_rows| Files {
            snapshots: vec![9],
            snapshot_rows: 1000,
            delta_rows,
            ..Files::default()
        };
        assert!(!after(5000).snapshot_due(18, 10), "never sooner than the interval");
        assert!(
            !after(1999).snapshot_due(19, 10),
            "deltas smaller than twice the snapshot"
        );
        assert!(after(2000).snapshot_due(19, 10));
        assert!(!after(1).snapshot_due(9 + 10 * MAX_INTERVALS - 1, 10));
        assert!(
            after(1).snapshot_due(9 + 10 * MAX_INTERVALS, 10),
            "however small the deltas"
        );
    }

    #[test]
    fn a_slot_that_skips_ahead_is_an_error_not_a_guess() {
        let error = fold(&[file(&[(1, 0, "x", 1), (1, 2, "z", 3)], &[], false)]).unwrap_err();
        assert!(
            error.to_string().contains("slot 2 of bucket 1 comes before slot 1"),
            "{error}"
        );
    }

    #[test]
    fn a_state_file_holds_every_shard_and_round_trips() {
        // Three shards: one with rows and dropped buckets, one without changes, one with rows.
        let shards = [
            file(&[(10, 0, "a", 1), (20, 0, "b", 2)], &[5, 7], false),
            file(&[], &[], false),
            file(&[(10, 0, "c", 3)], &[], false),
        ];
        let bytes = encode_deltas(shards.to_vec()).unwrap();
        let back = decode(bytes.clone(), "cp/state/0/3.delta", 3).unwrap();
        assert_eq!(back.len(), 3);
        for (back, original) in back.iter().zip(&shards) {
            assert_eq!(content(back), content(original));
            assert_eq!(back.removed, original.removed);
            assert!(!back.snapshot);
        }

        // Taken out shard by shard, as snapshots are written, the parts make the same file.
        let mut encoder = StateEncoder::new(false);
        let mut parts = Vec::new();
        for shard in &shards {
            encoder.push(shard.clone()).unwrap();
            parts.extend_from_slice(&encoder.take());
        }
        let (tail, rows) = encoder.finish().unwrap();
        parts.extend_from_slice(&tail);
        assert_eq!(rows, 3);
        assert_eq!(parts, bytes);

        // A truncated file, or one of another number of shards, is an error naming the file.
        let error = decode(bytes.slice(..bytes.len() - 20), "cp/state/0/3.delta", 3).unwrap_err();
        assert!(error.to_string().contains("cp/state/0/3.delta"), "{error}");
        let error = decode(bytes, "cp/state/0/3.delta", 2).unwrap_err();
        assert!(
            error.to_string().contains("cp/state/0/3.delta") && error.to_string().contains("holds 3 shards"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_snapshot_is_written_whole_or_in_parts_and_one_that_fails_leaves_no_file() {
        let temp = tempfile::tempdir().unwrap();
        let store = Arc::new(datafusion::object_store::local::LocalFileSystem::new());
        let path = datafusion::object_store::path::Path::from_absolute_path(temp.path()).unwrap();
        let dir = Dir::new(store, path, "cp/state/0", Some(temp.path().to_path_buf()));
        let shards = [
            file(&[(1, 0, "a", 1), (1, 1, "b", 2)], &[], true),
            file(&[(2, 0, "c", 3)], &[], true),
        ];
        let job = |shard: &StateFile| -> SnapshotJob {
            let shard = shard.clone();
            Box::new(move || Ok(shard))
        };
        // One put, and a multipart write of a part per shard.
        for (version, stream_from) in [(1, STREAM_SNAPSHOTS_FROM), (2, 0)] {
            let failing: SnapshotJob = Box::new(|| Err(Error::Internal("the view is gone".into())));
            // Streamed, the first shard is written before the third fails.
            let jobs = vec![job(&shards[0]), job(&shards[1]), failing];
            let error = write_snapshot(&dir, 7, jobs, stream_from).await.unwrap_err();
            assert!(error.to_string().contains("the view is gone"), "{error}");

            let name = file_name(version, true);
            let rows = write_snapshot(&dir, version, shards.iter().map(job).collect(), stream_from)
                .await
                .unwrap();
            assert_eq!(rows, 3);
            let back = read(&dir, &name, 2).await.unwrap();
            for (back, original) in back.iter().zip(&shards) {
                assert!(back.snapshot);
                assert_eq!(content(back), content(original));
            }
        }
        // Nothing of the failed snapshots is left, not even a partial write.
        let mut left: Vec<String> = std::fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.snapshot", "2.snapshot"]);
    }
}
