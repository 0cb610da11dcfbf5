//! The memory source: rows pushed from Rust code, like Spark's `MemoryStream`.
//!
//! It is the backbone of deterministic tests: a test adds exactly the batches it wants, runs a
//! trigger, and checks what came out.
//!
//! # Offsets across restarts
//! The rows live in the process, so an offset is `{"stream": <id>, "batches": n}`: the first `n`
//! batches of the stream instance `id`. A query restarted in the same process over its checkpoint
//! (stopped, then started again) goes on from `n` in the same instance. A new process has a new
//! instance, empty until rows are added: the checkpoint's offsets name the old instance, so the new
//! one is read from its first batch (none of its rows is skipped), and a batch that was logged but
//! never committed cannot be run again, since its rows went with the old process: that is an error
//! saying so, never a silent skip.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream as DfMemoryStream;

use super::{Built, Offset, ReadLimit, Source, SourceConnector, SourceRequest, project_schema};
use crate::error::{Error, Result};

/// The `memory` connector: rows come from Rust code or from `INSERT INTO <stream> ...`.
pub(crate) const CONNECTOR: SourceConnector = SourceConnector {
    name: "memory",
    options: &[],
    build,
};

fn build(request: &SourceRequest<'_>) -> Result<Built> {
    let schema = request
        .schema
        .clone()
        .ok_or_else(|| request.options.error("a memory stream needs a column list"))?;
    let stream = match request.name {
        Some(name) => MemoryStream::named(name, schema),
        None => MemoryStream::new(schema),
    };
    Ok((Arc::new(stream.clone()), Some(stream)))
}

/// A source fed from code: every [`MemoryStream::add_batch`] becomes visible to the next trigger.
///
/// Cloning gives another handle to the same stream.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use tidewater::MemoryStream;
/// use tidewater::arrow::array::Int64Array;
/// use tidewater::arrow::datatypes::{DataType, Field, Schema};
/// use tidewater::arrow::record_batch::RecordBatch;
///
/// let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
/// let stream = MemoryStream::new(schema.clone());
/// let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
/// stream.add_batch(batch).unwrap();
/// assert_eq!(stream.len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStream {
    schema: SchemaRef,
    /// The stream's name in SQL, if it was declared there: part of its identity in a checkpoint.
    name: Option<String>,
    /// This instance, in its offsets: unique per process and stream.
    id: Arc<str>,
    /// Every batch ever added, in order; offset `n` means "the first `n` batches".
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl MemoryStream {
    /// An empty stream of rows with this schema.
    pub fn new(schema: SchemaRef) -> Self {
        MemoryStream {
            schema,
            name: None,
            id: uuid::Uuid::new_v4().simple().to_string().into(),
            batches: Arc::default(),
        }
    }

    /// An empty stream declared in SQL as `name`.
    pub(crate) fn named(name: &str, schema: SchemaRef) -> Self {
        MemoryStream {
            name: Some(name.to_string()),
            ..MemoryStream::new(schema)
        }
    }

    /// Appends a batch. Its schema must have the stream's column names and types.
    ///
    /// # Errors
    /// A batch whose columns differ from the stream's schema.
    pub fn add_batch(&self, batch: RecordBatch) -> Result<()> {
        let expected: Vec<_> = self.schema.fields().iter().map(|f| (f.name(), f.data_type())).collect();
        let got: Vec<_> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| (f.name(), f.data_type()))
            .collect();
        if expected != got {
            return Err(Error::plan(format!(
                "memory stream: batch columns {got:?} do not match the stream's columns {expected:?}"
            )));
        }
        // Re-label with the stream's schema so nullability and metadata agree downstream.
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .map_err(|e| Error::plan(format!("memory stream: {e}")))?;
        self.lock().push(batch);
        Ok(())
    }

    /// Number of batches added so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no batch was added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordBatch>> {
        // A poisoned lock only means another thread panicked while pushing; the data is intact.
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offset(&self, batches: usize) -> Offset {
        Offset(serde_json::json!({ "stream": &*self.id, "batches": batches }))
    }

    /// The batches of this instance an offset stands for: `None` when it is another instance's
    /// (one of an earlier process, whose rows are gone).
    fn batches_at(&self, offset: &Offset) -> Result<Option<usize>> {
        let stream = offset.0.get("stream").and_then(|s| s.as_str());
        let batches = offset.0.get("batches").and_then(|n| n.as_u64());
        match (stream, batches) {
            (Some(stream), Some(n)) => Ok((stream == &*self.id).then(|| usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(Error::Internal(format!("memory stream offset {offset} is not one"))),
        }
    }

    /// Where reading after `start` begins in this instance: from its first batch when `start` is
    /// another instance's.
    fn first_after(&self, start: Option<&Offset>) -> Result<usize> {
        match start {
            None => Ok(0),
            Some(offset) => match self.batches_at(offset)? {
                Some(n) => Ok(n),
                // Asked on every trigger until this process's first batch: not a log line each.
                None => {
                    tracing::debug!(
                        stream = self.description(),
                        "the checkpoint's offsets are of this memory stream in an earlier process, whose rows \
                         are gone; reading this process's rows from the first"
                    );
                    Ok(0)
                }
            },
        }
    }
}

#[async_trait]
impl Source for MemoryStream {
    fn for_query(self: Arc<Self>) -> Result<Arc<dyn Source>> {
        Ok(self)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn description(&self) -> String {
        match &self.name {
            Some(name) => format!("MemoryStream[{name}]"),
            None => "MemoryStream".to_string(),
        }
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let (available, from) = (self.len(), self.first_after(start)?);
        let end = match &limit {
            ReadLimit::UpTo(cap) => available.min(self.batches_at(cap)?.unwrap_or(0)),
            ReadLimit::Default | ReadLimit::All => available,
        };
        if end <= from {
            return Ok(start.cloned());
        }
        Ok(Some(self.offset(end)))
    }

    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream> {
        let to = self.batches_at(end)?.ok_or_else(|| {
            Error::plan(format!(
                "{}: the batch to run again after the restart read rows that were added to this memory stream \
                 in an earlier process, and a memory stream keeps its rows only in memory: they are gone. Start \
                 the query with a new checkpoint_location (or read a replayable source such as files)",
                self.description()
            ))
        })?;
        let from = self.first_after(start)?;
        let batches = self.lock();
        let slice = batches
            .get(from..to)
            .ok_or_else(|| Error::Internal(format!("memory stream has no batches {from}..{to}")))?
            .to_vec();
        let schema = project_schema(&self.schema, projection)?;
        let stream = DfMemoryStream::try_new(slice, schema, projection.map(|p| p.to_vec()))?;
        Ok(Box::pin(stream))
    }
}
