//! The files source: a directory that new files land in.
//!
//! # Background
//! Like Spark's file stream source, every file is read exactly once: each listing appends the
//! files not seen before to a log, oldest first, and an offset is a position in that log. Reading
//! the range between two offsets always reads the same files, so a batch can be replayed. Files
//! must appear atomically (written elsewhere, then renamed into the directory); names that start
//! with `.` or `_`, or end in `._COPYING_` or `.tmp`, are files still being written or metadata,
//! and are ignored.
//!
//! Files of one batch are fetched and decoded concurrently (decoding on the blocking pool), and
//! come out in log order.

mod decode;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

pub(crate) use decode::CORRUPT_RECORD_COLUMN;
use decode::{DecodePlan, Decoded};

use super::{Offset, ReadLimit, Source, count, project_schema};
use crate::error::{Error, Result};

/// The format of the files in a watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Newline-delimited JSON, one object per line; fields are matched to columns by name.
    Json,
    /// Delimited text; fields are matched to columns by position.
    Csv {
        /// The first line of each file is a header and is skipped.
        header: bool,
        /// Field separator, `,` by default.
        delimiter: u8,
    },
    /// Apache Parquet; columns are matched by name and cast to the declared types.
    Parquet,
    /// Plain text: each line becomes a row with one `value` column.
    Text,
}

/// What to do with a record that does not fit the schema (Spark's `mode` option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MalformedMode {
    /// Keep the row with null columns, and the raw line in `_corrupt_record` if declared.
    #[default]
    Permissive,
    /// Drop the row (and count it).
    DropMalformed,
    /// Fail the query with an error naming the file and line.
    FailFast,
}

/// Everything the files source needs to know.
#[derive(Clone, Debug)]
pub struct FilesSourceConfig {
    /// A local directory, or an object store URL (`file:///...`).
    pub path: String,
    /// The files' format.
    pub format: FileFormat,
    /// Columns to read; for `text`, a single string column.
    pub schema: SchemaRef,
    /// At most this many new files per batch (all new files when `None`).
    pub max_files_per_trigger: Option<usize>,
    /// Handling of malformed records.
    pub mode: MalformedMode,
}

/// Watches a directory and reads each new file once, oldest first; files must appear atomically
/// (names starting with `.` or `_`, or ending in `.tmp` or `._COPYING_`, are ignored).
#[derive(Debug)]
pub struct FilesSource {
    config: FilesSourceConfig,
    store: Arc<dyn ObjectStore>,
    /// The watched directory inside `store`.
    directory: Path,
    /// For local directories, the path on disk, to say clearly when it does not exist.
    local_directory: Option<std::path::PathBuf>,
    /// Files in the order they are read; offset `n` means "the first `n` files of the log".
    log: Mutex<FileLog>,
    malformed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct FileLog {
    files: Vec<Path>,
    seen: HashSet<Path>,
}

impl FilesSource {
    /// A source over `config.path`.
    ///
    /// # Errors
    /// A URL with an unsupported scheme, or a schema the format cannot produce.
    pub fn try_new(config: FilesSourceConfig) -> Result<Self> {
        if config.format == FileFormat::Text {
            let fields = config.schema.fields();
            let ok = fields.len() == 1
                && matches!(
                    fields[0].data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                );
            if !ok {
                return Err(Error::plan(format!(
                    "format 'text' produces one string column (value VARCHAR), but the stream declares {}",
                    describe_columns(&config.schema)
                )));
            }
        }
        if let Ok(i) = config.schema.index_of(CORRUPT_RECORD_COLUMN)
            && !matches!(
                config.schema.field(i).data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        {
            return Err(Error::plan(format!("column {CORRUPT_RECORD_COLUMN} must be VARCHAR")));
        }
        let (store, directory, local_directory): (Arc<dyn ObjectStore>, Path, _) = match url::Url::parse(&config.path) {
            Ok(url) if url.scheme().len() > 1 => {
                let (store, path) = datafusion::object_store::parse_url(&url).map_err(|e| Error::ObjectStore {
                    context: format!("opening '{}'", config.path),
                    error: e,
                })?;
                let local = (url.scheme() == "file").then(|| std::path::PathBuf::from(url.path()));
                (Arc::from(store), path, local)
            }
            // Not a URL (or a Windows drive letter): a local path, relative to the working directory.
            _ => {
                let absolute = std::path::absolute(&config.path).map_err(|e| Error::Io {
                    context: format!("resolving path '{}'", config.path),
                    error: e,
                })?;
                let path = Path::from_absolute_path(&absolute).map_err(|e| Error::ObjectStore {
                    context: format!("path '{}'", config.path),
                    error: e.into(),
                })?;
                (
                    Arc::new(datafusion::object_store::local::LocalFileSystem::new()) as Arc<dyn ObjectStore>,
                    path,
                    Some(absolute),
                )
            }
        };
        Ok(FilesSource {
            config,
            store,
            directory,
            local_directory,
            log: Mutex::default(),
            malformed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the directory and appends files not seen before to the log, oldest first.
    async fn discover(&self) -> Result<()> {
        if let Some(dir) = &self.local_directory
            && !dir.is_dir()
        {
            return Err(Error::Input {
                file: self.config.path.clone(),
                line: None,
                message: "the input directory does not exist".to_string(),
            });
        }
        let listing = self
            .store
            .list_with_delimiter(Some(&self.directory))
            .await
            .map_err(|e| Error::ObjectStore {
                context: format!("listing '{}'", self.config.path),
                error: e,
            })?;
        let mut fresh: Vec<_> = {
            let log = self.lock();
            listing
                .objects
                .into_iter()
                .filter(|o| o.location.filename().is_some_and(is_data_file) && !log.seen.contains(&o.location))
                .collect()
        };
        fresh.sort_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)));
        let mut log = self.lock();
        for object in fresh {
            if log.seen.insert(object.location.clone()) {
                tracing::debug!(file = %object.location, "new input file");
                log.files.push(object.location);
            }
        }
        Ok(())
    }

    fn display(&self, location: &Path) -> String {
        match &self.local_directory {
            Some(_) => format!("/{location}"),
            None => location.to_string(),
        }
    }
}

/// True for a file name that holds data, false for hidden, metadata and in-progress files.
fn is_data_file(name: &str) -> bool {
    !(name.starts_with('.') || name.starts_with('_') || name.ends_with("._COPYING_") || name.ends_with(".tmp"))
}

fn describe_columns(schema: &SchemaRef) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", columns.join(", "))
}

#[async_trait]
impl Source for FilesSource {
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    fn description(&self) -> String {
        format!("FilesSource[{}]", self.config.path)
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let start = count(start, "files source")?;
        let cap = match &limit {
            ReadLimit::UpTo(cap) => Some(count(Some(cap), "files source")?),
            ReadLimit::Default | ReadLimit::All => None,
        };
        // Under a cap the log already holds every file up to it: no need to list again.
        if cap.is_none_or(|cap| cap > self.lock().files.len()) {
            self.discover().await?;
        }
        let logged = self.lock().files.len();
        let mut end = logged;
        if limit != ReadLimit::All
            && let Some(max) = self.config.max_files_per_trigger
        {
            end = end.min(start + max);
        }
        if let Some(cap) = cap {
            end = end.min(cap);
        }
        Ok((logged > 0).then(|| Offset::from_u64(end.max(start) as u64)))
    }

    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream> {
        let (from, to) = (count(start, "files source")?, count(Some(end), "files source")?);
        let files = self
            .lock()
            .files
            .get(from..to)
            .ok_or_else(|| Error::Internal(format!("files source has no files {from}..{to} in its log")))?
            .to_vec();
        let schema = project_schema(&self.config.schema, projection)?;
        let plan = Arc::new(DecodePlan::new(
            self.config.format.clone(),
            self.config.mode,
            schema.clone(),
        ));
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        let source = self;
        let decoded: Vec<_> = futures::stream::iter(files)
            .map(|location| {
                let plan = plan.clone();
                let store = source.store.clone();
                let name = source.display(&location);
                async move { read_file(store, location, name, plan).await }
            })
            .buffered(parallelism)
            .try_collect()
            .await?;
        let mut batches = Vec::new();
        for file in decoded {
            self.malformed.fetch_add(file.malformed, Ordering::Relaxed);
            self.dropped.fetch_add(file.dropped, Ordering::Relaxed);
            batches.extend(file.batches);
        }
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "numMalformedRecords".to_string(),
                self.malformed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "numDroppedMalformedRecords".to_string(),
                self.dropped.load(Ordering::Relaxed).to_string(),
            ),
        ])
    }
}

async fn read_file(
    store: Arc<dyn ObjectStore>,
    location: Path,
    name: String,
    plan: Arc<DecodePlan>,
) -> Result<Decoded> {
    let bytes = match store.get(&location).await {
        Ok(result) => result.bytes().await,
        Err(e) => Err(e),
    };
    let bytes = bytes.map_err(|e| match e {
        datafusion::object_store::Error::NotFound { .. } => Error::Input {
            file: name.clone(),
            line: None,
            message: "the file was listed but is gone: input files must be moved into the directory \
                      atomically and stay there until they are read"
                .to_string(),
        },
        other => Error::ObjectStore {
            context: format!("reading '{name}'"),
            error: other,
        },
    })?;
    tokio::task::spawn_blocking(move || plan.decode(&name, bytes))
        .await
        .map_err(|e| Error::Internal(format!("decoding task: {e}")))?
}
