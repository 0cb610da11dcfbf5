//! A folder of files in an object store: the unit checkpoints are made of.
//!
//! Every write is atomic: the object store puts a whole object or nothing (the local file system
//! writes a temporary file and renames it), and so does a file written in parts ([`Upload`]),
//! which appears when its last part is in. Log entries are written with put-if-absent, so two
//! runs of one query that share a checkpoint by mistake fail instead of overwriting each other.
//!
//! # Local folders write over deleted files
//! A checkpoint writes a few files per batch and deletes as many later. On a local file system
//! that costs more than the bytes: the kernel hands a new file pages (on a disk, also blocks and
//! an inode) and takes them back when it is deleted, for several times the cost of copying the
//! bytes. So a local folder does not delete a file: it renames it to a hidden free name
//! and writes the next file over it (then truncates it to its length and renames it into
//! place), the way databases recycle their log segments. A folder keeps up to [`FREE_FILES`]
//! such files of up to 64 MiB each; leftovers of an earlier process are deleted when the folder
//! is listed.
//!
//! # Every file is sealed
//! What [`Dir::put`] and [`Dir::upload`] write ends with a seal line naming the file (its path
//! inside the checkpoint) and the content's checksum, and [`Dir::get`] returns the content only
//! once the seal holds ([`super::seal`]): a damaged, cut short or misplaced file is an error
//! naming it before anyone reads it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::seal::{self, Checksum};
use crate::error::{Error, Result};

/// A folder in an object store.
#[derive(Clone, Debug)]
pub(crate) struct Dir {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The folder inside the checkpoint (`state/0`; empty at its root): what seals name a file
    /// by, so a checkpoint can be moved or copied whole and still opens.
    inside: String,
    /// The folder as users know it (a path or URL), for messages.
    display: String,
    /// For a folder on the local file system: written and deleted through it, not `store`.
    local: Option<Local>,
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
    /// The folder `path` of `store`; `local` is where it is on the local file system, if it is.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        display: impl Into<String>,
        local: Option<PathBuf>,
    ) -> Self {
        Dir {
            store,
            path,
            inside: String::new(),
            display: display.into(),
            local: local.map(|folder| Local {
                folder,
                free: Arc::default(),
            }),
        }
    }

    /// The folder `name` inside this one.
    pub(crate) fn child(&self, name: &str) -> Dir {
        Dir {
            store: self.store.clone(),
            path: self.path.clone().join(name),
            inside: self.sealed_name(name),
            display: format!("{}/{name}", self.display),
            local: self.local.as_ref().map(|local| Local {
                folder: local.folder.join(name),
                free: local.free.clone(),
            }),
        }
    }

    /// The name of file `name` as users know it, for messages.
    pub(crate) fn display(&self, name: &str) -> String {
        format!("{}/{name}", self.display)
    }

    /// File `name` as its seal names it: its path inside the checkpoint.
    fn sealed_name(&self, name: &str) -> String {
        match self.inside.as_str() {
            "" => name.to_string(),
            inside => format!("{inside}/{name}"),
        }
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
    ///
    /// # Errors
    /// A file whose seal does not hold (damaged, cut short, another file's copy), naming it.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let Some(file) = self.get_sealed(name).await? else {
            return Ok(None);
        };
        match seal::open(&file, &self.sealed_name(name)) {
            Ok(content) => Ok(Some(file.slice_ref(content))),
            Err(broken) => Err(Error::Checkpoint {
                file: self.display(name),
                message: broken.to_string(),
            }),
        }
    }

    /// File `name` as stored, seal and all.
    pub(crate) async fn get_sealed(&self, name: &str) -> Result<Option<Bytes>> {
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

    fn io_error(&self, doing: &str, name: &str, error: std::io::Error) -> Error {
        Error::Io {
            context: format!("{doing} checkpoint file '{}'", self.display(name)),
            error,
        }
    }

    /// Writes file `name` atomically, sealed.
    pub(crate) async fn put(&self, name: &str, bytes: Bytes, mode: Write) -> Result<()> {
        let sealed = Bytes::from(seal::seal(&bytes, &self.sealed_name(name)));
        if let Some(local) = &self.local {
            let (local, file) = (local.clone(), name.to_string());
            return match blocking(move || local.put(&file, &[&bytes, &sealed], mode)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(already_exists(self.display(name))),
                Err(e) => Err(self.io_error("writing", name, e)),
            };
        }
        let options = PutOptions {
            mode: match mode {
                Write::Once => PutMode::Create,
                Write::Replace => PutMode::Overwrite,
            },
            ..Default::default()
        };
        match self
            .store
            .put_opts(
                &self.path.clone().join(name),
                PutPayload::from_iter([bytes, sealed]),
                options,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(datafusion::object_store::Error::AlreadyExists { .. }) => Err(already_exists(self.display(name))),
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
            checksum: Checksum::new(),
            dir: self.clone(),
            name: name.to_string(),
        })
    }

    /// Deletes file `name`; a file already gone is fine.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        if let Some(local) = &self.local {
            let (local, file) = (local.clone(), name.to_string());
            return blocking(move || local.delete(&file))
                .await
                .map_err(|e| self.io_error("deleting", name, e));
        }
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
        if let Some(local) = &self.local {
            let mut leftovers = Vec::new();
            names.retain(|name| match name.strip_prefix(FREE_PREFIX) {
                Some(rest) => {
                    if !rest.starts_with(PROCESS.as_str()) {
                        leftovers.push(local.folder.join(name));
                    }
                    false
                }
                None => true,
            });
            // Free files of an earlier process: a crash left them.
            if !leftovers.is_empty() {
                let _ = blocking(move || {
                    for leftover in leftovers {
                        if let Err(e) = std::fs::remove_file(&leftover) {
                            tracing::debug!(file = %leftover.display(), error = %e, "could not delete a leftover file");
                        }
                    }
                    Ok(())
                })
                .await;
            }
        }
        names.sort();
        Ok(names)
    }
}

fn already_exists(file: String) -> Error {
    Error::Checkpoint {
        file,
        message: "already exists: is another run of this query writing to the same checkpoint?".into(),
    }
}

/// Runs file system calls off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// How many deleted files a local folder keeps to write over.
pub(crate) const FREE_FILES: usize = 128;

/// Deleted files larger than this are deleted for good: such a file is a snapshot written in parts
/// ([`Dir::upload`]), which does not write over free files, so it would only take up room.
const FREE_FILE_MAX_BYTES: u64 = 64 << 20;

/// The names of free (and not yet placed) files start with this, then [`PROCESS`].
const FREE_PREFIX: &str = ".tidewater-free-";

/// Tells this process's free files from those an earlier one left behind.
static PROCESS: LazyLock<String> = LazyLock::new(|| format!("{}-", uuid::Uuid::new_v4().simple()));

/// Numbers free files.
static NEXT_FREE: AtomicU64 = AtomicU64::new(0);

/// A free file: deleted from its folder's point of view, kept to be written over.
#[derive(Debug)]
struct FreeFile {
    path: PathBuf,
    len: u64,
}

/// A folder on the local file system and the free files of the checkpoint it belongs to.
#[derive(Clone, Debug)]
struct Local {
    folder: PathBuf,
    /// Free files by folder.
    free: Arc<Mutex<HashMap<PathBuf, Vec<FreeFile>>>>,
}

impl Local {
    fn free_name(&self) -> PathBuf {
        let n = NEXT_FREE.fetch_add(1, Ordering::Relaxed);
        self.folder.join(format!("{FREE_PREFIX}{}{n}", PROCESS.as_str()))
    }

    /// The free file closest in length to `len` bytes: the smallest that holds them, else the
    /// largest.
    fn take_free(&self, len: u64) -> Option<FreeFile> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let files = free.get_mut(&self.folder)?;
        let sized = files.iter().map(|f| f.len).enumerate();
        let (best, _) = sized
            .clone()
            .filter(|(_, size)| *size >= len)
            .min_by_key(|(_, size)| *size)
            .or_else(|| sized.max_by_key(|(_, size)| *size))?;
        Some(files.swap_remove(best))
    }

    /// Keeps `file` to write over, unless the folder has enough of them.
    fn give_free(&self, file: FreeFile) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let files = free.entry(self.folder.clone()).or_default();
        if files.len() < FREE_FILES {
            files.push(file);
        } else if let Err(e) = std::fs::remove_file(&file.path) {
            tracing::debug!(file = %file.path.display(), error = %e, "could not delete a free file");
        }
    }

    fn has_room(&self) -> bool {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.get(&self.folder).is_none_or(|files| files.len() < FREE_FILES)
    }

    /// Writes `parts` to a free file (or a new one), then gives it the name `name`: by a rename
    /// that replaces any file of that name, or for [`Write::Once`] by a hard link that fails if
    /// one exists.
    fn put(&self, name: &str, parts: &[&[u8]], mode: Write) -> std::io::Result<()> {
        let len: u64 = parts.iter().map(|part| part.len() as u64).sum();
        let reused = std::iter::from_fn(|| self.take_free(len)).find_map(|free| {
            Some((
                std::fs::OpenOptions::new().write(true).open(&free.path).ok()?,
                free.path,
            ))
        });
        let (mut file, path) = match reused {
            Some(reused) => reused,
            None => {
                let path = self.free_name();
                let open = || std::fs::OpenOptions::new().write(true).create_new(true).open(&path);
                let file = match open() {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        std::fs::create_dir_all(&self.folder)?;
                        open()?
                    }
                    file => file?,
                };
                (file, path)
            }
        };
        let written = parts
            .iter()
            .try_for_each(|part| file.write_all(part))
            .and_then(|()| file.set_len(len));
        drop(file);
        let placed = written.and_then(|()| {
            let target = self.folder.join(name);
            match mode {
                Write::Replace => std::fs::rename(&path, &target),
                Write::Once => std::fs::hard_link(&path, &target).and_then(|()| std::fs::remove_file(&path)),
            }
        });
        if placed.is_err() {
            // Not placed: the file is free again.
            self.give_free(FreeFile { path, len });
        }
        placed
    }

    /// Renames file `name` to a free name to write over later, or deletes it when the folder
    /// keeps enough free files. A file already gone is fine.
    fn delete(&self, name: &str) -> std::io::Result<()> {
        let path = self.folder.join(name);
        let done = if self.has_room() {
            let free = self.free_name();
            std::fs::rename(&path, &free).and_then(|()| {
                let len = std::fs::symlink_metadata(&free)?.len();
                match len <= FREE_FILE_MAX_BYTES {
                    true => self.give_free(FreeFile { path: free, len }),
                    false => std::fs::remove_file(&free)?,
                }
                Ok(())
            })
        } else {
            std::fs::remove_file(&path)
        };
        match done {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            done => done,
        }
    }
}

/// A file being written in parts ([`Dir::upload`]): it appears whole on [`Upload::finish`], and
/// not at all after [`Upload::abort`].
pub(crate) struct Upload {
    parts: WriteMultipart,
    /// Of the parts written so far: the seal is the last part.
    checksum: Checksum,
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
        self.checksum.update(&bytes);
        self.parts.put(bytes);
        Ok(())
    }

    /// Writes what is left and the seal, and makes the file appear.
    pub(crate) async fn finish(mut self) -> Result<()> {
        let sealed = self.checksum.seal(&self.dir.sealed_name(&self.name));
        self.parts.put(Bytes::from(sealed));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A local checkpoint folder `cp/<name>` in `root`, and where it is on disk.
    fn local(root: &std::path::Path, name: &str) -> (Dir, PathBuf) {
        let store = Arc::new(datafusion::object_store::local::LocalFileSystem::new());
        let path = Path::from_absolute_path(root).unwrap();
        (
            Dir::new(store, path, "cp", Some(root.to_path_buf())).child(name),
            root.join(name),
        )
    }

    /// Every name in `folder`, hidden ones too, sorted.
    fn on_disk(folder: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[cfg(unix)]
    fn inode(path: &std::path::Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    #[tokio::test]
    async fn a_local_folder_writes_new_files_over_deleted_ones() {
        let root = tempfile::tempdir().unwrap();
        // The folder does not exist yet: the first write makes it.
        let (dir, folder) = local(root.path(), "state");
        dir.put("1.delta", Bytes::from(vec![1; 10_000]), Write::Replace)
            .await
            .unwrap();
        #[cfg(unix)]
        let first = inode(&folder.join("1.delta"));

        // Deleted, the file stays on disk under a hidden name, and listings do not show it.
        dir.delete("1.delta").await.unwrap();
        let hidden = on_disk(&folder);
        assert!(
            matches!(hidden.as_slice(), [free] if free.starts_with(FREE_PREFIX)),
            "{hidden:?}"
        );
        assert!(dir.list().await.unwrap().is_empty());
        assert_eq!(dir.get("1.delta").await.unwrap(), None);

        // The next file is written over it, cut to its own length.
        dir.put("2.delta", Bytes::from(vec![2; 3_000]), Write::Replace)
            .await
            .unwrap();
        assert_eq!(on_disk(&folder), ["2.delta"]);
        #[cfg(unix)]
        assert_eq!(inode(&folder.join("2.delta")), first);
        assert_eq!(dir.get("2.delta").await.unwrap(), Some(Bytes::from(vec![2; 3_000])));

        // Deleting what is gone is fine.
        dir.delete("1.delta").await.unwrap();
    }

    #[tokio::test]
    async fn a_local_log_entry_is_written_once_and_a_refused_one_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (dir, folder) = local(root.path(), "offsets");
        dir.put("0", Bytes::from_static(b"first"), Write::Once).await.unwrap();
        dir.delete("0").await.unwrap();
        dir.put("1", Bytes::from_static(b"second"), Write::Once).await.unwrap();
        let error = dir
            .put("1", Bytes::from_static(b"again"), Write::Once)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cp/offsets/1") && error.to_string().contains("already exists"));
        assert_eq!(dir.get("1").await.unwrap(), Some(Bytes::from_static(b"second")));
        assert_eq!(dir.list().await.unwrap(), ["1"]);
        // The refused write's file is free again, not a second file.
        assert_eq!(on_disk(&folder).len(), 2);
        // A replaced file is replaced.
        dir.put("1", Bytes::from_static(b"third"), Write::Replace)
            .await
            .unwrap();
        assert_eq!(dir.get("1").await.unwrap(), Some(Bytes::from_static(b"third")));
    }

    #[tokio::test]
    async fn a_local_folder_keeps_a_bounded_number_of_free_files_and_drops_those_of_earlier_processes() {
        let root = tempfile::tempdir().unwrap();
        let (dir, folder) = local(root.path(), "commits");
        for n in 0..=FREE_FILES {
            dir.put(&n.to_string(), Bytes::from_static(b"{}"), Write::Once)
                .await
                .unwrap();
        }
        for n in 0..=FREE_FILES {
            dir.delete(&n.to_string()).await.unwrap();
        }
        assert_eq!(on_disk(&folder).len(), FREE_FILES);

        // Nor does it keep a file larger than any it writes whole.
        let (dir, folder) = local(root.path(), "state");
        dir.put("9.snapshot", Bytes::from_static(b"rows"), Write::Replace)
            .await
            .unwrap();
        let large = std::fs::OpenOptions::new()
            .write(true)
            .open(folder.join("9.snapshot"))
            .unwrap();
        large.set_len(FREE_FILE_MAX_BYTES + 1).unwrap();
        dir.delete("9.snapshot").await.unwrap();
        assert!(on_disk(&folder).is_empty());
        let (dir, folder) = local(root.path(), "commits");

        // A crash leaves free files behind; the next process deletes them when it lists.
        let leftover = folder.join(format!("{FREE_PREFIX}0123-7"));
        std::fs::write(&leftover, b"{}").unwrap();
        assert!(dir.list().await.unwrap().is_empty());
        assert!(!leftover.exists());
        assert_eq!(on_disk(&folder).len(), FREE_FILES);
    }
}
