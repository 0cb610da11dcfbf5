//! The files sink: each batch as Parquet, CSV or JSON files in a directory, exactly once.
//!
//! # Background
//! A batch may be written twice (a replay after a crash) or half (a crash while writing). So the
//! sink never lets a reader decide by listing the directory: it writes the batch's data files
//! under fresh names (`part-<batch>-<uuid>.<ext>`, inside `column=value/` directories when
//! partitioned), then commits the batch by creating its manifest entry
//! `_tidewater_metadata/<batch id>` with put-if-absent (see [`crate::storage`]). A batch id that
//! already has an entry is a replay and writes nothing; files no entry lists are leftovers of a
//! crash, invisible to Tidewater's readers and deleted when the sink first writes after starting.
//!
//! Append mode adds each batch's files; complete mode rewrites the whole table every batch (its
//! entry says `complete`, readers start from the latest such entry, and the files before it are
//! deleted once it is written). Update mode is refused: files cannot be changed once written.
//!
//! One query writes to one directory at a time.

pub(crate) mod table;

use std::collections::{BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{can_cast_types, cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use super::{OutputMode, Sink, SinkConnector, SinkRequest, SinkSpec};
use crate::error::{Error, Result};
use crate::options::Options;
use crate::storage::{self, CommittedFile, EntryMode, Location, ManifestEntry};

pub(crate) use table::CommittedFilesFactory;

/// The format of the files the sink writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SinkFormat {
    /// Apache Parquet, Snappy-compressed.
    Parquet,
    /// CSV with a header line.
    Csv,
    /// Newline-delimited JSON, one object per row (null fields left out).
    Json,
}

impl SinkFormat {
    fn extension(self) -> &'static str {
        match self {
            SinkFormat::Parquet => "parquet",
            SinkFormat::Csv => "csv",
            SinkFormat::Json => "json",
        }
    }
}

/// The `files` connector (also named by its formats: `connector = 'parquet'` and so on).
pub(crate) const CONNECTOR: SinkConnector = SinkConnector {
    name: "files",
    options: &["path", "format", "partition_by"],
    parse,
};

/// The formats, by the names the `format` option (or the connector) gives them.
pub(crate) const FORMATS: &[(&str, SinkFormat)] = &[
    ("parquet", SinkFormat::Parquet),
    ("csv", SinkFormat::Csv),
    ("json", SinkFormat::Json),
];

fn parse(options: &Options) -> Result<std::sync::Arc<dyn SinkSpec>> {
    let partition_by = options
        .get("partition_by")
        .map(|columns| {
            columns
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(std::sync::Arc::new(FilesSpec {
        path: options.required("path")?.to_string(),
        format: options.choice("format", FORMATS)?.unwrap_or(SinkFormat::Parquet),
        partition_by,
    }))
}

/// A declared files sink.
#[derive(Debug)]
struct FilesSpec {
    /// The directory: a local path or an object store URL.
    path: String,
    format: SinkFormat,
    /// Columns whose values name the `column=value/` directories rows go to.
    partition_by: Vec<String>,
}

#[async_trait]
impl SinkSpec for FilesSpec {
    fn exactly_once(&self) -> bool {
        true
    }

    fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        check_output_mode(mode)
    }

    fn details(&self) -> Vec<String> {
        let mut details = vec![
            format!("path = {}", self.path),
            format!("format = {}", self.format.extension()),
        ];
        if !self.partition_by.is_empty() {
            details.push(format!("partition_by = {}", self.partition_by.join(", ")));
        }
        details
    }

    /// Refuses to write where one of the query's sources reads: its output would come back as
    /// input forever.
    async fn build(&self, request: SinkRequest<'_>) -> Result<std::sync::Arc<dyn Sink>> {
        let sink_place = storage::Place::of(&self.path)?;
        for (directory, source) in &request.source_directories {
            if storage::Place::of(directory)?.overlaps(&sink_place) {
                return Err(Error::plan(format!(
                    "the files sink writes into '{}', where the query's source {source} reads: its output \
                     would come back as input forever; write somewhere else",
                    self.path
                )));
            }
        }
        Ok(std::sync::Arc::new(FileSink::try_new(
            &self.path,
            self.format,
            &self.partition_by,
            &request.schema,
            request.output_mode,
        )?))
    }
}

/// Refuses the output modes the files sink cannot serve.
///
/// # Errors
/// Update mode, saying why and what to use instead.
pub(crate) fn check_output_mode(mode: OutputMode) -> Result<()> {
    match mode {
        OutputMode::Append | OutputMode::Complete => Ok(()),
        OutputMode::Update => Err(Error::plan(
            "the files sink does not support output_mode 'update': files cannot be changed once \
             written, so updated rows cannot replace the old ones; use 'append' (with a watermark \
             for an aggregation) to write each final row once, or 'complete' to rewrite the whole \
             result every batch",
        )),
    }
}

/// Writes a streaming query's output as files in a directory, committing each batch through the
/// manifest log so readers see each batch once and whole.
#[derive(Debug)]
pub(crate) struct FileSink {
    location: Location,
    format: SinkFormat,
    /// Positions of the `partition_by` columns in the output, in `partition_by` order.
    partition_columns: Vec<(usize, String)>,
    /// Positions of the columns the files hold: the output's, without the partition columns.
    file_columns: Vec<usize>,
    /// What the directory's manifest holds; read on the first `add_batch`, then kept up to date.
    /// The lock also keeps batches from overlapping.
    manifest: Mutex<Option<ManifestState>>,
}

#[derive(Debug)]
struct ManifestState {
    /// Batch ids that have a manifest entry.
    committed: BTreeSet<u64>,
    /// Files readers see now, relative to the directory.
    visible: Vec<String>,
}

impl FileSink {
    /// A sink writing `format` files into `path` (a local directory or an object store URL) for a
    /// query with output `schema`, in directories by the values of `partition_by`.
    ///
    /// # Errors
    /// Update mode; a partition column that is not in the output, repeated, or of a type that
    /// cannot name a directory; no column left for the files; a column CSV cannot hold.
    pub(crate) fn try_new(
        path: &str,
        format: SinkFormat,
        partition_by: &[String],
        schema: &SchemaRef,
        mode: OutputMode,
    ) -> Result<Self> {
        check_output_mode(mode)?;
        let columns = || {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            names.join(", ")
        };
        let mut partition_columns = Vec::new();
        for name in partition_by {
            let index = schema.index_of(name).map_err(|_| {
                Error::plan(format!(
                    "partition column '{name}' is not a column of the query's output; its columns are: {}",
                    columns()
                ))
            })?;
            if partition_columns.iter().any(|(i, _)| *i == index) {
                return Err(Error::plan(format!("partition column '{name}' is given twice")));
            }
            let data_type = schema.field(index).data_type();
            if !names_a_directory(data_type) {
                return Err(Error::plan(format!(
                    "partition column '{name}' is {data_type}, which cannot name a directory; \
                     partition by a string, number, boolean, date or timestamp column"
                )));
            }
            partition_columns.push((index, name.clone()));
        }
        let file_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_columns.iter().any(|(p, _)| p == i))
            .collect();
        if file_columns.is_empty() {
            return Err(Error::plan(format!(
                "partition_by names every column of the output ({}): at least one must be left for the files",
                columns()
            )));
        }
        if format == SinkFormat::Csv
            && let Some(field) = file_columns
                .iter()
                .map(|i| schema.field(*i))
                .find(|f| f.data_type().is_nested())
        {
            return Err(Error::plan(format!(
                "format 'csv' cannot hold column '{}' of type {}; use format 'parquet' or 'json'",
                field.name(),
                field.data_type()
            )));
        }
        Ok(FileSink {
            location: storage::resolve(path)?,
            format,
            partition_columns,
            file_columns,
            manifest: Mutex::new(None),
        })
    }

    /// The shape of the data files this sink writes, which are the only files it ever deletes.
    fn own_file_shape(&self) -> Result<OwnFileShape> {
        let partition_prefixes = self
            .partition_columns
            .iter()
            .map(|(_, column)| {
                let segment = storage::partition_segment(column, None)?;
                Ok(match segment.split_once('=') {
                    Some((escaped, _)) => format!("{escaped}="),
                    None => segment,
                })
            })
            .collect::<Result<_>>()?;
        Ok(OwnFileShape {
            partition_prefixes,
            extension: self.format.extension(),
        })
    }

    fn store_error(&self, doing: &str, error: datafusion::object_store::Error) -> Error {
        Error::ObjectStore {
            context: format!("{doing} in files sink '{}'", self.location.display),
            error,
        }
    }

    /// Reads the manifest and deletes the files of batches that never committed (or that a later
    /// complete batch replaced). Marks the directory as a sink's output first, so that a crash
    /// in the first batch leaves files that readers ignore and the next start deletes.
    async fn open(&self) -> Result<ManifestState> {
        let Location { store, path: dir, .. } = &self.location;
        let entries = storage::read_manifest(store, dir, &self.location.display, None).await?;
        let marker = storage::metadata_dir(dir).join("version");
        match store
            .put_opts(
                &marker,
                PutPayload::from_static(b"1\n"),
                PutOptions::from(PutMode::Create),
            )
            .await
        {
            Ok(_) | Err(datafusion::object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(self.store_error("marking the directory", e)),
        }
        let entries = entries.unwrap_or_default();
        let visible: Vec<String> = storage::visible(&entries)
            .iter()
            .flat_map(|e| e.files.iter().map(|f| f.path.clone()))
            .collect();
        let keep: HashSet<&str> = visible.iter().filter_map(|f| f.rsplit('/').next()).collect();
        let own = self.own_file_shape()?;
        let leftovers: Vec<Path> = store
            .list(Some(dir))
            .try_filter(|object| {
                let leftover = object.location.prefix_match(dir).is_some_and(|relative| {
                    let relative: Vec<_> = relative.collect();
                    own.matches(&relative) && relative.last().is_some_and(|name| !keep.contains(name.as_ref()))
                });
                futures::future::ready(leftover)
            })
            .map_ok(|object| object.location)
            .try_collect()
            .await
            .map_err(|e| self.store_error("listing", e))?;
        if !leftovers.is_empty() {
            for file in &leftovers {
                tracing::warn!(
                    file = %self.location.display_file(file),
                    "files sink deletes a data file no committed batch lists (left by a batch that did not commit)"
                );
            }
            tracing::warn!(
                directory = %self.location.display,
                files = leftovers.len(),
                "files sink deleted the files of batches that did not commit"
            );
            self.delete(leftovers).await;
        }
        Ok(ManifestState {
            committed: entries.iter().map(|e| e.batch_id).collect(),
            visible,
        })
    }

    /// Deletes files no reader sees any more; a failure only leaves them for the next start.
    async fn delete(&self, files: Vec<Path>) {
        let store = &self.location.store;
        let results: Vec<_> = futures::stream::iter(files)
            .map(|file| async move { (store.delete(&file).await, file) })
            .buffer_unordered(8)
            .collect()
            .await;
        for (result, file) in results {
            match result {
                Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(file = %file, error = %e, "could not delete an invisible file"),
            }
        }
    }

    /// Splits the batch's rows by partition values; each part holds the file columns only.
    fn split(&self, batches: Vec<RecordBatch>) -> Result<Vec<Part>> {
        let internal = |e: datafusion::arrow::error::ArrowError| Error::Internal(format!("partitioning rows: {e}"));
        let mut parts: Vec<Part> = Vec::new();
        let mut index: HashMap<Vec<Option<String>>, usize> = HashMap::new();
        for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
            let file_batch = batch.project(&self.file_columns).map_err(internal)?;
            if self.partition_columns.is_empty() {
                match parts.first_mut() {
                    Some(part) => part.batches.push(file_batch),
                    None => parts.push(Part {
                        values: Vec::new(),
                        batches: vec![file_batch],
                    }),
                }
                continue;
            }
            let keys: Vec<ArrayRef> = self
                .partition_columns
                .iter()
                .map(|(i, _)| cast(batch.column(*i), &DataType::Utf8))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            let keys: Vec<_> = keys.iter().map(|k| k.as_string::<i32>()).collect();
            let mut rows_of_part: Vec<Vec<u32>> = vec![Vec::new(); parts.len()];
            let mut previous: Option<(usize, usize)> = None; // (row, part): runs of one key are common
            for row in 0..batch.num_rows() {
                let same = previous.is_some_and(|(p, _)| keys.iter().all(|k| equal_at(k, p, row)));
                let part = match previous {
                    Some((_, part)) if same => part,
                    _ => {
                        let key: Vec<Option<String>> = keys
                            .iter()
                            .map(|k| k.is_valid(row).then(|| k.value(row).to_string()))
                            .collect();
                        *index.entry(key.clone()).or_insert_with(|| {
                            parts.push(Part {
                                values: key,
                                batches: Vec::new(),
                            });
                            rows_of_part.push(Vec::new());
                            parts.len() - 1
                        })
                    }
                };
                rows_of_part[part].push(row as u32);
                previous = Some((row, part));
            }
            for (part, rows) in rows_of_part.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                let taken = take_record_batch(&file_batch, &UInt32Array::from(rows)).map_err(internal)?;
                parts[part].batches.push(taken);
            }
        }
        Ok(parts)
    }

    /// Writes the data files of batch `batch_id` and returns them (relative to the directory too),
    /// partitions in the order their first rows came.
    async fn write_files(&self, batch_id: u64, batches: Vec<RecordBatch>) -> Result<Vec<(Path, CommittedFile)>> {
        let parts = self.split(batches)?;
        let mut named = Vec::with_capacity(parts.len());
        for part in parts {
            let mut relative = String::new();
            for ((_, column), value) in self.partition_columns.iter().zip(&part.values) {
                relative.push_str(&storage::partition_segment(column, value.as_deref())?);
                relative.push('/');
            }
            relative.push_str(&format!(
                "part-{batch_id:05}-{}.{}",
                uuid::Uuid::new_v4(),
                self.format.extension()
            ));
            named.push((relative, part.batches));
        }
        let format = self.format;
        let encoded = tokio::task::spawn_blocking(move || {
            named
                .into_iter()
                .map(|(relative, batches)| {
                    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                    encode(format, &batches).map(|bytes| (relative, bytes, rows))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Internal(format!("encoding task: {e}")))??;
        let store = &self.location.store;
        futures::stream::iter(encoded)
            .map(|(relative, bytes, rows)| async move {
                let file = storage::file_path(&self.location.path, &relative)?;
                store
                    .put(&file, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.store_error(&format!("writing '{relative}'"), e))?;
                Ok((file, CommittedFile { path: relative, rows }))
            })
            .buffered(8)
            .try_collect()
            .await
    }
}

/// The rows of one partition of a batch, without the partition columns.
struct Part {
    values: Vec<Option<String>>,
    batches: Vec<RecordBatch>,
}

fn equal_at(keys: &datafusion::arrow::array::StringArray, a: usize, b: usize) -> bool {
    match (keys.is_valid(a), keys.is_valid(b)) {
        (true, true) => keys.value(a) == keys.value(b),
        (valid_a, valid_b) => valid_a == valid_b,
    }
}

/// Whether values of this type have a text form fit for a directory name.
fn names_a_directory(data_type: &DataType) -> bool {
    let binary = matches!(
        data_type,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_)
    );
    !binary && !data_type.is_nested() && can_cast_types(data_type, &DataType::Utf8)
}

/// Where and under which names one files sink writes its data files: `part-<batch>-<uuid>.<ext>`
/// with its own format's extension, inside one `column=value/` directory per partition column, in
/// `partition_by` order. The directory may hold other files (a user's notes, another tool's
/// output); only files of this shape can come from the sink's own crashed batches, so only they
/// are ever deleted as leftovers.
#[derive(Debug)]
struct OwnFileShape {
    /// `column=` of each partition directory level, escaped as in the directory names.
    partition_prefixes: Vec<String>,
    /// The extension of the sink's format.
    extension: &'static str,
}

impl OwnFileShape {
    /// Whether the file at `relative` (path segments inside the output directory) has this shape.
    fn matches(&self, relative: &[datafusion::object_store::path::PathPart<'_>]) -> bool {
        let Some((name, directories)) = relative.split_last() else {
            return false;
        };
        directories.len() == self.partition_prefixes.len()
            && directories
                .iter()
                .zip(&self.partition_prefixes)
                .all(|(directory, prefix)| directory.as_ref().starts_with(prefix.as_str()))
            && is_part_file(name.as_ref(), self.extension)
    }
}

/// True for a name this sink gives data files of format `extension`: `part-<batch>-<uuid>.<ext>`.
fn is_part_file(name: &str, extension: &str) -> bool {
    let Some((batch, rest)) = name.strip_prefix("part-").and_then(|r| r.split_once('-')) else {
        return false;
    };
    let Some((id, found)) = rest.split_once('.') else {
        return false;
    };
    !batch.is_empty()
        && batch.bytes().all(|b| b.is_ascii_digit())
        && uuid::Uuid::parse_str(id).is_ok()
        && found == extension
}

/// One file's bytes.
fn encode(format: SinkFormat, batches: &[RecordBatch]) -> Result<Bytes> {
    let Some(first) = batches.first() else {
        return Err(Error::Internal("encoding a file without rows".to_string()));
    };
    let failed = |e: String| Error::Internal(format!("encoding {}: {e}", format.extension()));
    let mut buffer = Vec::new();
    match format {
        SinkFormat::Parquet => {
            use datafusion::parquet::arrow::ArrowWriter;
            use datafusion::parquet::basic::Compression;
            use datafusion::parquet::file::properties::WriterProperties;
            let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
            let mut writer = ArrowWriter::try_new(&mut buffer, first.schema(), Some(properties))
                .map_err(|e| failed(e.to_string()))?;
            for batch in batches {
                writer.write(batch).map_err(|e| failed(e.to_string()))?;
            }
            writer.close().map_err(|e| failed(e.to_string()))?;
        }
        SinkFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut buffer);
            for batch in batches {
                writer.write(batch).map_err(|e| failed(e.to_string()))?;
            }
        }
        SinkFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buffer);
            for batch in batches {
                writer.write(batch).map_err(|e| failed(e.to_string()))?;
            }
            writer.finish().map_err(|e| failed(e.to_string()))?;
        }
    }
    Ok(Bytes::from(buffer))
}

#[async_trait]
impl Sink for FileSink {
    fn description(&self) -> String {
        format!("FileSink[{}]", self.location.display)
    }

    async fn add_batch(&self, batch_id: u64, mode: OutputMode, data: SendableRecordBatchStream) -> Result<u64> {
        check_output_mode(mode)?;
        let mut manifest = self.manifest.lock().await;
        if manifest.is_none() {
            *manifest = Some(self.open().await?);
        }
        let Some(state) = manifest.as_mut() else {
            return Err(Error::Internal("files sink manifest state missing".to_string()));
        };
        if state.committed.contains(&batch_id) {
            tracing::info!(batch_id, directory = %self.location.display, "batch already committed: skipped");
            return Ok(0);
        }
        let batches: Vec<RecordBatch> = data.try_collect().await.map_err(Error::from_datafusion)?;
        let written = self.write_files(batch_id, batches).await?;
        let (paths, files): (Vec<Path>, Vec<CommittedFile>) = written.into_iter().unzip();
        let rows = files.iter().map(|f| f.rows).sum();
        let entry_mode = match mode {
            OutputMode::Complete => EntryMode::Complete,
            _ => EntryMode::Append,
        };
        let entry = ManifestEntry::new(batch_id, entry_mode, files);
        let json = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::Internal(format!("serializing a manifest entry: {e}")))?;
        let entry_path = storage::entry_path(&self.location.path, batch_id);
        match self
            .location
            .store
            .put_opts(&entry_path, PutPayload::from(json), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) => {}
            Err(datafusion::object_store::Error::AlreadyExists { .. }) => {
                // Someone committed this batch meanwhile: theirs counts, ours is a leftover.
                tracing::warn!(batch_id, directory = %self.location.display, "batch committed by another writer");
                state.committed.insert(batch_id);
                self.delete(paths).await;
                return Ok(0);
            }
            Err(e) => return Err(self.store_error(&format!("committing batch {batch_id}"), e)),
        }
        state.committed.insert(batch_id);
        let committed = entry.files.into_iter().map(|f| f.path);
        match entry_mode {
            EntryMode::Append => state.visible.extend(committed),
            EntryMode::Complete => {
                let replaced = std::mem::replace(&mut state.visible, committed.collect());
                let replaced = replaced
                    .iter()
                    .map(|relative| storage::file_path(&self.location.path, relative))
                    .collect::<Result<Vec<_>>>()?;
                self.delete(replaced).await;
            }
        }
        tracing::debug!(batch_id, rows, files = paths.len(), "files sink committed a batch");
        Ok(rows)
    }
}

#[cfg(test)]
mod tests;
