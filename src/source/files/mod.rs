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
//! A directory that a files sink writes (it has a `_tidewater_metadata/` manifest log, see
//! [`crate::storage`]) is read through its manifest instead: each committed batch's files join the
//! log in batch order, so a downstream query sees each batch once and never a partial one, and
//! columns of the stream named by the sink's `column=value/` directories are filled from them.
//!
//! Files of one batch are fetched and decoded concurrently (decoding on the blocking pool), and
//! come out in log order.

mod log;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

use super::decode::{CORRUPT_RECORD_COLUMN, DecodePlan, Decoded};

use super::{
    Built, Offset, ReadLimit, Source, SourceConnector, SourceLog, SourceRequest, count, malformed_mode, project_schema,
};
use crate::error::{Error, Result};
use crate::storage::{self, Location};

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

/// The `files` connector.
pub(crate) const CONNECTOR: SourceConnector = SourceConnector {
    name: "files",
    options: &[
        "path",
        "format",
        "max_files_per_trigger",
        "max_bytes_per_trigger",
        "mode",
        "header",
        "delimiter",
    ],
    build,
};

/// The default of `max_bytes_per_trigger`: a backlog is read in batches of about this much input,
/// so one batch's decoded rows stay within memory.
const DEFAULT_MAX_BYTES_PER_TRIGGER: u64 = 1 << 30;

fn build(request: &SourceRequest<'_>) -> Result<Built> {
    let options = request.options;
    let format = options
        .choice("format", &[("json", 0), ("csv", 1), ("parquet", 2), ("text", 3)])?
        .ok_or_else(|| options.error("option 'format' is required; one of: json, csv, parquet, text"))?;
    if format != 1 && (options.get("header").is_some() || options.get("delimiter").is_some()) {
        return Err(options.error("options 'header' and 'delimiter' only apply to format 'csv'"));
    }
    let format = match format {
        0 => FileFormat::Json,
        1 => FileFormat::Csv {
            header: options.boolean("header")?.unwrap_or(false),
            delimiter: delimiter(options)?,
        },
        2 => FileFormat::Parquet,
        _ => FileFormat::Text,
    };
    let schema = match (request.schema.clone(), &format) {
        (Some(schema), _) => schema,
        (None, FileFormat::Text) => Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)])),
        (None, _) => {
            return Err(
                options.error("a files stream needs a column list, e.g. CREATE TABLE t (a INT, b VARCHAR) WITH (...)")
            );
        }
    };
    let config = FilesSourceConfig {
        path: options.required("path")?.to_string(),
        format,
        schema,
        max_files_per_trigger: options.positive("max_files_per_trigger", usize::MAX)?,
        max_bytes_per_trigger: Some(
            options
                .positive("max_bytes_per_trigger", usize::MAX)?
                .map_or(DEFAULT_MAX_BYTES_PER_TRIGGER, |n| n as u64),
        ),
        mode: malformed_mode(options)?,
    };
    let source = FilesSource::try_new(config).map_err(|e| options.error(e.to_string()))?;
    Ok((Arc::new(source), None))
}

fn delimiter(options: &crate::options::Options) -> Result<u8> {
    match options.get("delimiter") {
        None => Ok(b','),
        Some(d) if d.len() == 1 => Ok(d.as_bytes()[0]),
        Some("\\t") => Ok(b'\t'),
        Some(d) => Err(options.error(format!("option 'delimiter' = '{d}' must be a single character"))),
    }
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
    /// New files are admitted into a batch while their sizes add up to at most this many bytes,
    /// and always at least one (no limit when `None`). A batch's files are decoded in memory
    /// together, so this bounds what one batch holds after a backlog piles up.
    pub max_bytes_per_trigger: Option<u64>,
    /// Handling of malformed records.
    pub mode: MalformedMode,
}

/// How many of the files of `sizes` (in order) fit in `budget` bytes: at least one, so that a
/// file larger than the budget is still read, alone.
fn within_bytes(sizes: &[u64], budget: u64) -> usize {
    let mut total = 0u64;
    let fitting = sizes
        .iter()
        .take_while(|size| {
            total = total.saturating_add(**size);
            total <= budget
        })
        .count();
    fitting.max(1).min(sizes.len())
}

/// Watches a directory and reads each new file once, oldest first; files must appear atomically
/// (names starting with `.` or `_`, or ending in `.tmp` or `._COPYING_`, are ignored).
#[derive(Debug)]
pub struct FilesSource {
    config: FilesSourceConfig,
    /// The watched directory.
    location: Location,
    /// Files in the order they are read; offset `n` means "the first `n` files of the log".
    log: Mutex<FileLog>,
    malformed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct FileLog {
    files: Vec<Path>,
    /// The size of each file in `files`, as listed (0 when unknown: files restored from the
    /// checkpoint, which are only read again as logged).
    sizes: Vec<u64>,
    seen: HashSet<Path>,
    /// The directory is a files sink's output: files come from its manifest, not a listing.
    sink_output: bool,
    /// The last manifest entry whose files are in the log.
    last_entry: Option<u64>,
}

impl FilesSource {
    /// A source over `config.path`.
    ///
    /// # Errors
    /// A URL with an unsupported scheme, or a schema the format cannot produce.
    pub fn try_new(config: FilesSourceConfig) -> Result<Self> {
        if config.format == FileFormat::Text {
            // One string column, and `_corrupt_record` for lines that are not UTF-8.
            let data: Vec<_> = config
                .schema
                .fields()
                .iter()
                .filter(|f| f.name() != CORRUPT_RECORD_COLUMN)
                .collect();
            let ok = data.len() == 1
                && matches!(
                    data[0].data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                );
            if !ok {
                return Err(Error::plan(format!(
                    "format 'text' produces one string column (value VARCHAR, and optionally _corrupt_record \
                     VARCHAR), but the stream declares {}",
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
        let location = storage::resolve(&config.path)?;
        Ok(FilesSource {
            config,
            location,
            log: Mutex::default(),
            malformed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Files `from..to` of the log.
    fn files(&self, from: usize, to: usize) -> Result<Vec<Path>> {
        Ok(self
            .lock()
            .files
            .get(from..to)
            .ok_or_else(|| Error::Internal(format!("files source has no files {from}..{to} in its log")))?
            .to_vec())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists the directory and appends files not seen before to the log, oldest first; or, for a
    /// files sink's output, the files of batches committed since the last call, in batch order.
    async fn discover(&self) -> Result<()> {
        if self.lock().sink_output {
            return self.discover_committed().await;
        }
        if let Some(dir) = &self.location.local
            && !dir.is_dir()
        {
            return Err(Error::Input {
                file: self.config.path.clone(),
                line: None,
                message: "the input directory does not exist".to_string(),
            });
        }
        let listing = self
            .location
            .store
            .list_with_delimiter(Some(&self.location.path))
            .await
            .map_err(|e| Error::ObjectStore {
                context: format!("listing '{}'", self.config.path),
                error: e,
            })?;
        let metadata = storage::metadata_dir(&self.location.path);
        if listing.common_prefixes.contains(&metadata) {
            tracing::debug!(directory = %self.config.path, "reading a files sink's output through its manifest");
            self.lock().sink_output = true;
            return self.discover_committed().await;
        }
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
                log.sizes.push(object.size);
            }
        }
        Ok(())
    }

    /// Appends the files of manifest entries not read before, skipping entries that a later
    /// complete entry replaced.
    async fn discover_committed(&self) -> Result<()> {
        let after = self.lock().last_entry;
        let Location { store, path, .. } = &self.location;
        let Some(entries) = storage::read_manifest(store, path, &self.config.path, after).await? else {
            return Ok(());
        };
        let mut files = Vec::new();
        for entry in storage::visible(&entries) {
            for file in &entry.files {
                files.push(storage::file_path(path, &file.path)?);
            }
        }
        let mut log = self.lock();
        for file in files {
            if log.seen.insert(file.clone()) {
                tracing::debug!(file = %file, "new committed file");
                log.files.push(file);
                log.sizes.push(0);
            }
        }
        if let Some(last) = entries.last() {
            log.last_entry = Some(last.batch_id);
        }
        Ok(())
    }

    fn display(&self, location: &Path) -> String {
        self.location.display_file(location)
    }

    /// The `column=value` directories of a file of a files sink's (partitioned) output.
    fn partitions_of(&self, location: &Path) -> Vec<(String, Option<String>)> {
        match location.prefix_match(&self.location.path) {
            Some(relative) => storage::partition_values(relative),
            None => Vec::new(),
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
    /// Each query keeps its own log of files, restored from its own checkpoint.
    fn for_query(self: Arc<Self>) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(FilesSource::try_new(self.config.clone())?))
    }

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
        let log = self.lock();
        let logged = log.files.len();
        let mut end = logged;
        if limit != ReadLimit::All {
            if let Some(max) = self.config.max_files_per_trigger {
                end = end.min(start.saturating_add(max));
            }
            if let Some(budget) = self.config.max_bytes_per_trigger {
                end = end.min(within_bytes(log.sizes.get(start..end).unwrap_or_default(), budget) + start);
            }
        }
        drop(log);
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
        let files = self.files(from, to)?;
        let schema = project_schema(&self.config.schema, projection)?;
        // Every declared column is decoded, whatever the projection: see `decode`.
        let plan = Arc::new(DecodePlan::new(
            self.config.format.clone(),
            self.config.mode,
            self.config.schema.clone(),
        ));
        let projection: Option<Arc<[usize]>> = projection.map(Arc::from);
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        let source = self;
        let decoded: Vec<_> = futures::stream::iter(files)
            .map(|location| {
                let plan = plan.clone();
                let store = source.location.store.clone();
                let name = source.display(&location);
                let partitions = source.partitions_of(&location);
                let projection = projection.clone();
                async move {
                    let mut decoded = read_file(store, location, name, plan, partitions).await?;
                    if let Some(projection) = projection {
                        decoded.batches = decoded
                            .batches
                            .iter()
                            .map(|batch| batch.project(&projection))
                            .collect::<Result<_, _>>()
                            .map_err(|e| Error::Internal(format!("projecting decoded rows: {e}")))?;
                    }
                    Ok::<_, Error>(decoded)
                }
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

    async fn persist(&self, log: &dyn SourceLog, batch_id: u64, start: Option<&Offset>, end: &Offset) -> Result<()> {
        let (from, to) = (count(start, "files source")?, count(Some(end), "files source")?);
        let from = if log::compacts(batch_id) { 0 } else { from };
        let files = self.files(from, to)?;
        log::persist(log, batch_id, &files).await
    }

    async fn restore(&self, log: &dyn SourceLog, end: Option<&Offset>) -> Result<()> {
        let files = log::restore(log).await?;
        let logged = count(end, "files source")?;
        if files.len() < logged {
            return Err(Error::Checkpoint {
                file: log.display(""),
                message: format!(
                    "lists {} files where the offsets log says {logged} were read: the source's log was deleted \
                     or damaged, so which files were read is lost; restore the folder, or start the query \
                     with a new checkpoint_location",
                    files.len()
                ),
            });
        }
        let mut state = self.lock();
        for file in files {
            if state.seen.insert(file.clone()) {
                state.files.push(file);
                state.sizes.push(0);
            }
        }
        Ok(())
    }

    fn directory(&self) -> Option<String> {
        Some(self.config.path.clone())
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
    partitions: Vec<(String, Option<String>)>,
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
    tokio::task::spawn_blocking(move || decode_partitioned(&plan, &name, bytes, &partitions))
        .await
        .map_err(|e| Error::Internal(format!("decoding task: {e}")))?
}

/// Decodes one file; the columns its `column=value` directories name come from the path (a files
/// sink leaves them out of the files), cast from text to their declared types.
fn decode_partitioned(
    plan: &DecodePlan,
    file: &str,
    bytes: Bytes,
    partitions: &[(String, Option<String>)],
) -> Result<Decoded> {
    let output = &plan.output;
    let from_path: Vec<(usize, Option<&str>)> = output
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, field)| {
            let (_, value) = partitions.iter().find(|(column, _)| column == field.name())?;
            Some((i, value.as_deref()))
        })
        .collect();
    if from_path.is_empty() {
        return plan.decode(file, bytes);
    }
    let in_file: Vec<_> = output
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| !from_path.iter().any(|(p, _)| p == i))
        .map(|(_, f)| f.clone())
        .collect();
    let inner = DecodePlan::new(plan.format.clone(), plan.mode, Arc::new(Schema::new(in_file)));
    let mut decoded = inner.decode(file, bytes)?;
    let input_error = |message: String| Error::Input {
        file: file.to_string(),
        line: None,
        message,
    };
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    decoded.batches = decoded
        .batches
        .into_iter()
        .map(|batch| {
            let rows = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            // In ascending position, so each column lands where the output has it.
            for (i, value) in &from_path {
                let field = output.field(*i);
                let text: ArrayRef = Arc::new(StringArray::from(vec![*value; rows]));
                let column = cast_with_options(&text, field.data_type(), &strict).map_err(|e| {
                    input_error(format!(
                        "partition directory value '{}' of column '{}' is not a {}: {e}",
                        value.unwrap_or(storage::HIVE_DEFAULT_PARTITION),
                        field.name(),
                        field.data_type()
                    ))
                })?;
                columns.insert(*i, column);
            }
            RecordBatch::try_new_with_options(
                output.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(rows)),
            )
            .map_err(|e| input_error(format!("partition columns: {e}")))
        })
        .collect::<Result<_>>()?;
    Ok(decoded)
}
