//! The files source's own log in the checkpoint: which files each batch read.
//!
//! A directory listing is not a stable order (files arrive, modification times tie), so after a
//! restart the source cannot rebuild "the first n files" by listing again. Before each batch it
//! logs the batch's files as entry `<batch>`; every [`COMPACT_EVERY`] batches it writes
//! `<batch>.compact` with every file so far and drops older entries, so the log stays one file
//! plus a few. Restoring reads the newest compact entry and the entries after it: the files in
//! their original order, and the set of files already seen, which are never read again.

use bytes::Bytes;
use datafusion::object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::SourceLog;

/// A compact entry every this many batches.
pub(super) const COMPACT_EVERY: u64 = 10;

#[derive(Serialize, Deserialize)]
struct Entry {
    files: Vec<String>,
}

/// Whether batch `batch_id` writes a compact entry (with every file up to its end).
pub(super) fn compacts(batch_id: u64) -> bool {
    batch_id.is_multiple_of(COMPACT_EVERY)
}

/// Logs the files of batch `batch_id`: `files` are the batch's files, or every file up to the
/// batch's end when [`compacts`] says so.
pub(super) async fn persist(log: &dyn SourceLog, batch_id: u64, files: &[Path]) -> Result<()> {
    let entry = Entry {
        files: files.iter().map(|p| p.to_string()).collect(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&entry).map_err(|e| Error::Internal(e.to_string()))?);
    if !compacts(batch_id) {
        return log.put(&batch_id.to_string(), bytes).await;
    }
    log.put(&format!("{batch_id}.compact"), bytes).await?;
    for name in log.list().await? {
        if parse(&name).is_some_and(|(id, _)| id < batch_id) {
            log.delete(&name).await?;
        }
    }
    Ok(())
}

/// The logged files, in the order they were read.
pub(super) async fn restore(log: &dyn SourceLog) -> Result<Vec<Path>> {
    let mut entries: Vec<(u64, bool, String)> = log
        .list()
        .await?
        .into_iter()
        .filter_map(|name| parse(&name).map(|(id, compact)| (id, compact, name)))
        .collect();
    entries.sort();
    let base = entries.iter().rposition(|(_, compact, _)| *compact).unwrap_or(0);
    let mut files = Vec::new();
    for (_, _, name) in &entries[base..] {
        let bytes = log.get(name).await?.ok_or_else(|| Error::Checkpoint {
            file: log.display(name),
            message: "listed but missing".into(),
        })?;
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
            file: log.display(name),
            message: format!("unreadable ({e}); the file is damaged"),
        })?;
        files.extend(entry.files.into_iter().map(Path::from));
    }
    Ok(files)
}

/// `<batch>` or `<batch>.compact`; anything else is not an entry.
fn parse(name: &str) -> Option<(u64, bool)> {
    match name.split_once('.') {
        Some((id, "compact")) => id.parse().ok().map(|id| (id, true)),
        None => name.parse().ok().map(|id| (id, false)),
        _ => None,
    }
}
