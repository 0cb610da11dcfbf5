//! Checkpoints: what lets a query stop, crash or be redeployed and go on exactly where it was.
//!
//! # Layout
//! ```text
//! <checkpoint>/metadata          query id, state_partitions, the shape of the query's state
//! <checkpoint>/offsets/<N>       batch N's end offsets, watermarks and timestamp: written BEFORE N runs
//! <checkpoint>/commits/<N>       written AFTER the sink has batch N and state version N is durable
//! <checkpoint>/state/...         state files (see the state store)
//! <checkpoint>/sources/<i>/...   source-private logs (the files source's list of files per batch)
//! ```
//! # Recovery
//! The last offsets entry N and the last commit decide ([`decide`]): with commit N the query goes
//! on with N + 1; without it, batch N runs again with the logged offsets, watermarks and timestamp,
//! so it produces the same output, which the sink (idempotent per batch id) takes once. Every other
//! combination means a damaged checkpoint and is an error naming the file: never a silent fresh
//! start.
//!
//! This module knows nothing of operators: the shape of the state is a list of named facts the
//! planner provides, compared one by one when a query restarts.

mod dir;
mod seal;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::execution::runtime_env::RuntimeEnv;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) use dir::{Dir, Write};

use crate::error::{Error, Result};
use crate::source::Offset;

/// The checkpoint format this version writes and reads. 2: state files number groups by slot.
/// 3: each session of a session window is a bucket of its own, written as deltas. 4: one state
/// file per version for all shards. 5: a window's bucket column is run-end encoded. 6: every file
/// ends with a seal (its name and checksum), and the metadata names each source.
const FORMAT_VERSION: u32 = 6;

/// What a checkpoint records about the query it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) version: u32,
    /// The query id, the same across restarts (sinks record batches under it).
    pub(crate) id: String,
    /// Shards of the state: fixed for the life of the checkpoint.
    pub(crate) state_partitions: usize,
    /// The sources, in the order the offsets log lists their offsets.
    pub(crate) sources: Vec<String>,
    /// The shape of the state as named facts (`group keys`, `aggregates`, ...); empty when stateless.
    pub(crate) state: Vec<(String, Vec<String>)>,
}

impl Metadata {
    pub(crate) fn new(
        id: String,
        state_partitions: usize,
        sources: Vec<String>,
        state: Vec<(String, Vec<String>)>,
    ) -> Self {
        Metadata {
            version: FORMAT_VERSION,
            id,
            state_partitions,
            sources,
            state,
        }
    }
}

/// One entry of the offsets log: everything needed to run batch N again identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetEntry {
    pub(crate) batch_id: u64,
    /// The batch's timestamp (what `now()` returns in it), milliseconds since the epoch.
    pub(crate) batch_timestamp_ms: i64,
    /// The watermark that makes rows late in this batch (the previous batch's), nanoseconds.
    pub(crate) late_watermark: Option<i64>,
    /// The watermark that closes windows in this batch, nanoseconds.
    pub(crate) watermark: Option<i64>,
    /// End offset of each source (in [`Metadata::sources`] order); `None` before any input.
    pub(crate) offsets: Vec<Option<Offset>>,
}

/// One entry of the commits log: batch N is done, and what the next batch starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CommitEntry {
    pub(crate) batch_id: u64,
    /// The largest event time read from each source up to this batch, nanoseconds.
    pub(crate) max_event_times: Vec<Option<i64>>,
    /// The watermark computed after this batch: the next batch closes windows with it.
    pub(crate) next_watermark: Option<i64>,
}

/// Where a query starts, from what its checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// An empty checkpoint: batch 0 is next.
    Fresh,
    /// Batch `last` committed: the next batch follows it.
    Resume { last: OffsetEntry, commit: CommitEntry },
    /// Batch `batch` was logged but never committed: it runs again as logged, after the
    /// committed batch before it (if any).
    Replay {
        batch: OffsetEntry,
        previous: Option<(OffsetEntry, CommitEntry)>,
    },
}

/// What to do given the last batch ids in the offsets and commits logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Fresh,
    Resume(u64),
    Replay(u64),
}

/// Decides how to recover from the last offsets entry and the last commit. Every combination
/// that a crash cannot leave behind is an error.
pub(crate) fn decide(last_offsets: Option<u64>, last_commit: Option<u64>) -> std::result::Result<Decision, String> {
    match (last_offsets, last_commit) {
        (None, None) => Ok(Decision::Fresh),
        (None, Some(c)) => Err(format!("commits/{c} exists but the offsets log is empty")),
        (Some(n), Some(c)) if c == n => Ok(Decision::Resume(n)),
        (Some(n), Some(c)) if c + 1 == n => Ok(Decision::Replay(n)),
        (Some(0), None) => Ok(Decision::Replay(0)),
        (Some(n), None) => Err(format!(
            "offsets/{n} exists but the commits log is empty (expected commits/{})",
            n - 1
        )),
        (Some(n), Some(c)) if c > n => Err(format!("commits/{c} exists but the offsets log ends at {n}")),
        (Some(n), Some(c)) => Err(format!(
            "the offsets log is at batch {n} but the commits log only at {c}: batches {}..{} were never committed",
            c + 1,
            n - 1
        )),
    }
}

/// Old checkpoint entries and state files are looked for every this many batches.
pub(crate) const CLEAN_EVERY: u64 = 10;

/// The `checkpoint_location` that turns checkpoints off.
pub(crate) const NO_CHECKPOINT: &str = "none";

/// A query's checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    /// `None` when checkpoints are off: nothing is written, a restart starts over.
    root: Option<Dir>,
    /// A temporary checkpoint's directory on the local disk, removed when the last clone of
    /// the checkpoint is dropped: when the query ends, however it ends.
    _temporary: Option<Arc<TemporaryDir>>,
    /// The first batch whose log entries may still exist, once known: clean-up deletes entries
    /// by name from there, so it never lists the logs again after the first time.
    first_entry: Arc<Mutex<Option<u64>>>,
}

impl Checkpoint {
    /// The checkpoint at `location`: a local path or an object store URL. URLs are looked up in
    /// the session's object store registry first, so `memory://` keeps its content for the
    /// session's lifetime and stores registered by the application are used.
    pub(crate) fn open(location: &str, runtime: &RuntimeEnv) -> Result<Self> {
        if location == NO_CHECKPOINT {
            return Ok(Checkpoint {
                root: None,
                _temporary: None,
                first_entry: Arc::default(),
            });
        }
        Ok(Checkpoint {
            root: Some(folder(location, Some(runtime))?),
            _temporary: None,
            first_entry: Arc::default(),
        })
    }

    /// A checkpoint in a fresh temporary directory, for a query without a checkpoint location.
    pub(crate) fn temporary() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tidewater-checkpoint-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).map_err(|e| Error::Io {
            context: format!("creating temporary checkpoint '{}'", path.display()),
            error: e,
        })?;
        Ok(Checkpoint {
            root: Some(folder(&path.display().to_string(), None)?),
            _temporary: Some(Arc::new(TemporaryDir(path))),
            first_entry: Arc::default(),
        })
    }

    /// Where the checkpoint is, as the user gave it (or the temporary directory).
    pub(crate) fn location(&self) -> &str {
        self.root.as_ref().map_or(NO_CHECKPOINT, Dir::location)
    }

    /// The folder of the state files (`None` without checkpoints).
    pub(crate) fn state_dir(&self) -> Option<Dir> {
        self.root.as_ref().map(|r| r.child("state"))
    }

    /// The folder of source `index`'s private log (`None` without checkpoints).
    pub(crate) fn source_dir(&self, index: usize) -> Option<Dir> {
        self.root.as_ref().map(|r| r.child("sources").child(&index.to_string()))
    }

    async fn read<T: DeserializeOwned>(&self, dir: &Dir, name: &str) -> Result<Option<T>> {
        let Some(bytes) = dir.get(name).await? else {
            return Ok(None);
        };
        parse_file(&bytes, &dir.display(name)).map(Some)
    }

    async fn write<T: Serialize>(&self, dir: &Dir, name: &str, value: &T) -> Result<()> {
        dir.put(name, file_bytes(value)?, Write::Once).await
    }

    /// The metadata, `None` for a new checkpoint.
    pub(crate) async fn metadata(&self) -> Result<Option<Metadata>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let file = root.display("metadata");
        let metadata: Option<Metadata> = match self.read(root, "metadata").await {
            Ok(metadata) => metadata,
            Err(error) => {
                // Checkpoints before format 6 have no seals: say which format it is, not "damaged".
                let version = root
                    .get_sealed("metadata")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                    .and_then(|value| value.get("version")?.as_u64());
                return Err(match version {
                    Some(version) if version != u64::from(FORMAT_VERSION) => version_error(version, &file),
                    _ => error,
                });
            }
        };
        if let Some(m) = &metadata {
            check_version(m, &file)?;
        }
        Ok(metadata)
    }

    /// Writes the metadata of a new checkpoint. A checkpoint that already holds log entries is not
    /// new: its metadata was lost, and with it the query id the sinks know its batches by and what
    /// its state must match, so that is an error rather than a fresh start.
    pub(crate) async fn write_metadata(&self, metadata: &Metadata) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        for log in ["offsets", "commits"] {
            if let Some(id) = dir::batch_ids(&root.child(log).list().await?).first() {
                return Err(Error::Checkpoint {
                    file: root.display("metadata"),
                    message: format!(
                        "missing, but the checkpoint holds {log}/{id}: it is damaged (a new query id would make \
                         the sinks take replayed batches as new ones). Restore the file, or start the query \
                         with a new checkpoint_location"
                    ),
                });
            }
        }
        self.write(root, "metadata", metadata).await
    }

    pub(crate) async fn write_offsets(&self, entry: &OffsetEntry) -> Result<()> {
        self.write_entry("offsets", entry.batch_id, entry).await
    }

    pub(crate) async fn write_commit(&self, entry: &CommitEntry) -> Result<()> {
        self.write_entry("commits", entry.batch_id, entry).await
    }

    /// Writes entry `batch_id` of log `log`, unless checkpoints are off.
    async fn write_entry<T: Serialize>(&self, log: &str, batch_id: u64, entry: &T) -> Result<()> {
        match &self.root {
            Some(root) => self.write(&root.child(log), &batch_id.to_string(), entry).await,
            None => Ok(()),
        }
    }

    /// Reads entry `batch_id` of log `log`; a missing entry is an error naming the file.
    async fn entry<T: DeserializeOwned>(&self, root: &Dir, log: &str, batch_id: u64) -> Result<T> {
        let dir = root.child(log);
        let name = batch_id.to_string();
        let entry: T = self.read(&dir, &name).await?.ok_or_else(|| Error::Checkpoint {
            file: dir.display(&name),
            message: "missing".into(),
        })?;
        Ok(entry)
    }

    /// Where the query starts: see the module docs.
    pub(crate) async fn recover(&self) -> Result<Recovery> {
        let Some(root) = &self.root else {
            return Ok(Recovery::Fresh);
        };
        let last_id = |log: &'static str| async move {
            Ok::<_, Error>(dir::batch_ids(&root.child(log).list().await?).last().copied())
        };
        let decision =
            decide(last_id("offsets").await?, last_id("commits").await?).map_err(|message| Error::Checkpoint {
                file: root.location().to_string(),
                message,
            })?;
        let check_id = |entry: &OffsetEntry, n: u64| {
            if entry.batch_id != n {
                return Err(Error::Checkpoint {
                    file: root.child("offsets").display(&n.to_string()),
                    message: format!("holds batch {} instead of {n}", entry.batch_id),
                });
            }
            Ok(())
        };
        let committed = |n: u64| async move {
            let offsets: OffsetEntry = self.entry(root, "offsets", n).await?;
            let commit: CommitEntry = self.entry(root, "commits", n).await?;
            check_id(&offsets, n)?;
            Ok::<_, Error>((offsets, commit))
        };
        Ok(match decision {
            Decision::Fresh => Recovery::Fresh,
            Decision::Resume(n) => {
                let (last, commit) = committed(n).await?;
                Recovery::Resume { last, commit }
            }
            Decision::Replay(n) => {
                let batch: OffsetEntry = self.entry(root, "offsets", n).await?;
                check_id(&batch, n)?;
                let previous = match n {
                    0 => None,
                    _ => Some(committed(n - 1).await?),
                };
                Recovery::Replay { batch, previous }
            }
        })
    }

    /// Deletes offsets and commits entries of batches before `oldest_kept`. Only the first call
    /// lists the logs; later ones delete by name what the previous call kept.
    pub(crate) async fn clean_logs(&self, oldest_kept: u64) -> Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        let known = *self.first_entry.lock().unwrap_or_else(|e| e.into_inner());
        let first = match known {
            Some(first) => first,
            None => {
                let mut first = oldest_kept;
                for log in ["offsets", "commits"] {
                    first = first.min(
                        dir::batch_ids(&root.child(log).list().await?)
                            .first()
                            .copied()
                            .unwrap_or(first),
                    );
                }
                first
            }
        };
        for log in ["offsets", "commits"] {
            let dir = root.child(log);
            for id in first..oldest_kept {
                dir.delete(&id.to_string()).await?;
            }
        }
        *self.first_entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(first.max(oldest_kept));
        Ok(())
    }
}

/// A checkpoint file's JSON (metadata, an offsets or a commits entry) as a `T`. Anything else is
/// a damaged file: an error naming `file`, never a guess.
pub(crate) fn parse_file<T: DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Checkpoint {
        file: file.to_string(),
        message: format!("unreadable ({e}); the file is damaged or was not written by Tidewater"),
    })
}

/// The bytes of a checkpoint file holding `value`: pretty JSON, so a person can read a damaged
/// checkpoint's files.
pub(crate) fn file_bytes<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec_pretty(value)
        .map(Bytes::from)
        .map_err(|e| Error::Internal(format!("checkpoint entry: {e}")))
}

/// Refuses metadata of another checkpoint format: its files would be read as what they are not.
pub(crate) fn check_version(metadata: &Metadata, file: &str) -> Result<()> {
    match metadata.version == FORMAT_VERSION {
        true => Ok(()),
        false => Err(version_error(u64::from(metadata.version), file)),
    }
}

fn version_error(version: u64, file: &str) -> Error {
    Error::Checkpoint {
        file: file.to_string(),
        message: format!("format version {version} is not the one this Tidewater reads ({FORMAT_VERSION})"),
    }
}

/// A directory removed when dropped.
#[derive(Debug)]
struct TemporaryDir(std::path::PathBuf);

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove the temporary checkpoint");
        }
    }
}

/// The checkpoint folder at `location` (created when it is a missing local directory).
fn folder(location: &str, runtime: Option<&RuntimeEnv>) -> Result<Dir> {
    let resolved = crate::storage::resolve_in(location, runtime)?;
    if let Some(local) = &resolved.local {
        std::fs::create_dir_all(local).map_err(|e| Error::Io {
            context: format!("creating checkpoint location '{location}'"),
            error: e,
        })?;
    }
    Ok(Dir::new(
        resolved.store,
        resolved.path,
        location.trim_end_matches('/'),
        resolved.local,
    ))
}

/// Refuses to restart a query over a checkpoint whose state it could not use, naming what
/// changed. Changes that leave the state usable (the projection after an aggregation, the
/// trigger, the sink) are not recorded, so they pass.
pub(crate) fn check_compatible(stored: &Metadata, current: &Metadata, file: &str) -> Result<()> {
    let changed = |what: &str, before: String, now: String| {
        Err(Error::plan(format!(
            "the query no longer fits its checkpoint ({file}): {what} changed from {before} to {now}; \
             restore the query as it was, or start it with a new checkpoint_location"
        )))
    };
    if stored.sources != current.sources {
        return changed(
            "the streams read",
            format!("[{}]", stored.sources.join(", ")),
            format!("[{}]", current.sources.join(", ")),
        );
    }
    if stored.state_partitions != current.state_partitions {
        return changed(
            "state_partitions",
            stored.state_partitions.to_string(),
            current.state_partitions.to_string(),
        );
    }
    if stored.state.is_empty() != current.state.is_empty() {
        let has = |m: &Metadata| if m.state.is_empty() { "no state" } else { "state" }.to_string();
        return changed("the query's kind", has(stored), has(current));
    }
    let names = |m: &Metadata| m.state.iter().map(|(what, _)| fact_name(what)).collect::<Vec<_>>();
    if names(stored) != names(current) {
        // Other operators, or operators of another kind: name them all.
        let operators = |m: &Metadata| {
            let described: Vec<String> = m
                .state
                .iter()
                .filter(|(what, _)| what.ends_with("the stateful operator"))
                .map(|(_, facts)| facts.join(", "))
                .collect();
            format!("[{}]", described.join("; "))
        };
        return changed("the stateful operators", operators(stored), operators(current));
    }
    for ((what, before), (_, now)) in stored.state.iter().zip(&current.state) {
        if before != now {
            return changed(
                &fact_name(what),
                format!("[{}]", before.join(", ")),
                format!("[{}]", now.join(", ")),
            );
        }
    }
    Ok(())
}

/// A fact's name as this version writes it: `stateful operator <id>: <what>`. Checkpoints of
/// versions with one operator at most wrote `<what>` for operator 0.
fn fact_name(what: &str) -> String {
    match what.starts_with("stateful operator ") {
        true => what.to_string(),
        false => format!("stateful operator 0: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_decision_for_every_combination_of_logs() {
        assert_eq!(decide(None, None), Ok(Decision::Fresh));
        assert_eq!(decide(Some(0), None), Ok(Decision::Replay(0)));
        assert_eq!(decide(Some(4), Some(4)), Ok(Decision::Resume(4)));
        assert_eq!(decide(Some(5), Some(4)), Ok(Decision::Replay(5)));
        for (offsets, commits, says) in [
            (None, Some(0), "offsets log is empty"),
            (Some(3), None, "expected commits/2"),
            (Some(3), Some(5), "offsets log ends at 3"),
            (Some(7), Some(4), "batches 5..6 were never committed"),
        ] {
            let error = decide(offsets, commits).expect_err("a damaged checkpoint");
            assert!(error.contains(says), "{error}");
        }
    }

    /// A source's offsets are any JSON; what an offsets file holds must read back as written,
    /// or a replayed batch would ask its source for other offsets. Found by the
    /// `checkpoint_entries` fuzz target: a float such as `1.5e200` came back one unit off.
    #[test]
    fn offsets_of_any_json_read_back_as_written() {
        let file = br#"{"batch_id": 3, "batch_timestamp_ms": 1767225600000, "late_watermark": null,
            "watermark": 1704067200000000000, "offsets": [{"position": 1, "pos": 1.5e+200,
            "big": 1767225600704067200000000000, "tiny": 4.9e-324}, [1, -9, "x"]]}"#;
        let written = file_bytes(&parse_file::<OffsetEntry>(file, "offsets/3").expect("reads")).expect("writes");
        let again = file_bytes(&parse_file::<OffsetEntry>(&written, "offsets/3").expect("reads back")).expect("writes");
        assert_eq!(written, again, "{}", String::from_utf8_lossy(&written));
    }

    fn entry(batch_id: u64, offset: u64) -> OffsetEntry {
        OffsetEntry {
            batch_id,
            batch_timestamp_ms: 1_767_225_600_000,
            late_watermark: None,
            watermark: Some(5),
            offsets: vec![Some(Offset::from_u64(offset)), None],
        }
    }

    fn commit(batch_id: u64) -> CommitEntry {
        CommitEntry {
            batch_id,
            max_event_times: vec![Some(7), None],
            next_watermark: Some(6),
        }
    }

    #[tokio::test]
    async fn log_entries_are_written_once_and_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("cp").display().to_string();
        let checkpoint = Checkpoint::open(&location, &RuntimeEnv::default()).unwrap();
        assert_eq!(checkpoint.recover().await.unwrap(), Recovery::Fresh);

        checkpoint.write_offsets(&entry(0, 3)).await.unwrap();
        // Offsets without a commit: batch 0 runs again as logged.
        assert_eq!(
            checkpoint.recover().await.unwrap(),
            Recovery::Replay {
                batch: entry(0, 3),
                previous: None
            }
        );
        // A second writer of the same entry fails and leaves the first one as it was.
        let error = checkpoint.write_offsets(&entry(0, 9)).await.unwrap_err().to_string();
        assert!(error.contains("offsets/0") && error.contains("another run"), "{error}");

        checkpoint.write_commit(&commit(0)).await.unwrap();
        checkpoint.write_offsets(&entry(1, 4)).await.unwrap();
        assert_eq!(
            checkpoint.recover().await.unwrap(),
            Recovery::Replay {
                batch: entry(1, 4),
                previous: Some((entry(0, 3), commit(0)))
            }
        );
        checkpoint.write_commit(&commit(1)).await.unwrap();
        assert_eq!(
            checkpoint.recover().await.unwrap(),
            Recovery::Resume {
                last: entry(1, 4),
                commit: commit(1)
            }
        );

        // A write cut short by a crash leaves a temporary file next to the entries: not an entry.
        std::fs::write(dir.path().join("cp/offsets/2#1"), b"{").unwrap();
        assert!(matches!(checkpoint.recover().await.unwrap(), Recovery::Resume { .. }));

        checkpoint.clean_logs(1).await.unwrap();
        assert!(!dir.path().join("cp/offsets/0").exists() && !dir.path().join("cp/commits/0").exists());
        assert!(matches!(checkpoint.recover().await.unwrap(), Recovery::Resume { .. }));
    }

    fn metadata(partitions: usize, keys: &[&str]) -> Metadata {
        Metadata::new(
            "q".into(),
            partitions,
            vec!["MemoryStream[events]".into()],
            vec![
                ("group keys".into(), keys.iter().map(|k| k.to_string()).collect()),
                ("aggregates".into(), vec!["count(*)".into()]),
            ],
        )
    }

    #[test]
    fn compatibility_names_what_changed() {
        let stored = metadata(2, &["word"]);
        assert!(check_compatible(&stored, &metadata(2, &["word"]), "cp/metadata").is_ok());
        let error = check_compatible(&stored, &metadata(2, &["user"]), "cp/metadata").expect_err("keys changed");
        assert!(
            error.to_string().contains("group keys changed from [word] to [user]"),
            "{error}"
        );
        let error = check_compatible(&stored, &metadata(4, &["word"]), "cp/metadata").expect_err("shards changed");
        assert!(
            error.to_string().contains("state_partitions changed from 2 to 4"),
            "{error}"
        );
    }
}
