//! A folder of files in an object store: the unit checkpoints are made of.
//!
//! Every write is atomic: the object store puts a whole object or nothing (the local file system
//! writes a temporary file and renames it), and so does a file written in parts ([`Upload`]),
//! which appears when its last part is in. Log entries are written with put-if-absent, so two
//! runs of one query that share a checkpoint by mistake fail instead of overwriting each other.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::error::{Error, Result};

/// A folder in an object store.
#[derive(Clone, Debug)]
pub(crate) struct Dir {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The folder as users know it (a path or URL), for messages.
    display: String,
}

/// How a file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Fails if the file exists: log entries, written once.
    Once,
    /// Replaces the file: state files rewritten when a batch is replayed.
    Replace,
}

impl Dir {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, display: impl Into<String>) -> Self {
        Dir {
            store,
            path,
            display: display.into(),
        }
    }

    /// The folder `name` inside this one.
    pub(crate) fn child(&self, name: &str) -> Dir {
        Dir {
            store: self.store.clone(),
            path: self.path.clone().join(name),
            display: format!("{}/{name}", self.display),
        }
    }

    /// The name of file `name` as users know it, for messages.
    pub(crate) fn display(&self, name: &str) -> String {
        format!("{}/{name}", self.display)
    }

    /// The folder itself as users know it.
    pub(crate) fn location(&self) -> &str {
        &self.display
    }

    fn store_error(&self, doing: &str, name: &str, error: datafusion::object_store::Error) -> Error {
        Error::ObjectStore {
            context: format!("{doing} checkpoint file '{}'", self.display(name)),
            error,
        }
    }

    /// The content of file `name`, `None` when it does not exist.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let result = match self.store.get(&self.path.clone().join(name)).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(bytes) => Ok(Some(bytes)),
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error("reading", name, e)),
        }
    }

    /// Writes file `name` atomically.
    pub(crate) async fn put(&self, name: &str, bytes: Bytes, mode: Write) -> Result<()> {
        let options = PutOptions {
            mode: match mode {
                Write::Once => PutMode::Create,
                Write::Replace => PutMode::Overwrite,
            },
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path.clone().join(name), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(datafusion::object_store::Error::AlreadyExists { .. }) => Err(Error::Checkpoint {
                file: self.display(name),
                message: "already exists: is another run of this query writing to the same checkpoint?".into(),
            }),
            Err(e) => Err(self.store_error("writing", name, e)),
        }
    }

    /// Starts writing file `name` in parts, for a file too large to hold whole in memory. It
    /// replaces any file of that name once finished.
    pub(crate) async fn upload(&self, name: &str) -> Result<Upload> {
        let upload = self
            .store
            .put_multipart(&self.path.clone().join(name))
            .await
            .map_err(|e| self.store_error("writing", name, e))?;
        Ok(Upload {
            parts: WriteMultipart::new(upload),
            dir: self.clone(),
            name: name.to_string(),
        })
    }

    /// Deletes file `name`; a file already gone is fine.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.path.clone().join(name)).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error("deleting", name, e)),
        }
    }

    /// The names of the files directly in this folder (not in sub-folders), sorted.
    pub(crate) async fn list(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path))
            .await
            .map_err(|e| self.store_error("listing", "", e))?;
        let mut names: Vec<String> = listing
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A file being written in parts ([`Dir::upload`]): it appears whole on [`Upload::finish`], and
/// not at all after [`Upload::abort`].
pub(crate) struct Upload {
    parts: WriteMultipart,
    dir: Dir,
    name: String,
}

impl Upload {
    /// Appends `bytes`. Waits while earlier parts are still on their way, so that no more than
    /// two are held at a time.
    pub(crate) async fn write(&mut self, bytes: Bytes) -> Result<()> {
        self.parts
            .wait_for_capacity(2)
            .await
            .map_err(|e| self.dir.store_error("writing", &self.name, e))?;
        self.parts.put(bytes);
        Ok(())
    }

    /// Writes what is left and makes the file appear.
    pub(crate) async fn finish(self) -> Result<()> {
        match self.parts.finish().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.dir.store_error("writing", &self.name, e)),
        }
    }

    /// Gives the file up: nothing of it appears.
    pub(crate) async fn abort(self) {
        if let Err(e) = self.parts.abort().await {
            tracing::warn!(file = %self.dir.display(&self.name), error = %e, "could not abort a partial write");
        }
    }
}

/// Batch ids of the entries of a log folder: files named by a number. Anything else (a temporary
/// file left by a crash in the middle of a write) is not an entry.
pub(crate) fn batch_ids(names: &[String]) -> Vec<u64> {
    let mut ids: Vec<u64> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable();
    ids
}

#[async_trait::async_trait]
impl crate::source::SourceLog for Dir {
    async fn put(&self, name: &str, content: Bytes) -> Result<()> {
        Dir::put(self, name, content, Write::Replace).await
    }

    async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        Dir::get(self, name).await
    }

    async fn list(&self) -> Result<Vec<String>> {
        Dir::list(self).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        Dir::delete(self, name).await
    }

    fn display(&self, name: &str) -> String {
        Dir::display(self, name)
    }
}
