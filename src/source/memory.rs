//! The memory source: rows pushed from Rust code, like Spark's `MemoryStream`.
//!
//! It is the backbone of deterministic tests: a test adds exactly the batches it wants, runs a
//! trigger, and checks what came out. The offset is the number of batches added so far.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream as DfMemoryStream;

use super::{Offset, ReadLimit, Source, count, project_schema};
use crate::error::{Error, Result};

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
    /// Every batch ever added, in order; offset `n` means "the first `n` batches".
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl MemoryStream {
    /// An empty stream of rows with this schema.
    pub fn new(schema: SchemaRef) -> Self {
        MemoryStream {
            schema,
            batches: Arc::default(),
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
        "MemoryStream".to_string()
    }

    async fn latest_offset(&self, start: Option<&Offset>, limit: ReadLimit) -> Result<Option<Offset>> {
        let available = self.len();
        if available == 0 {
            return Ok(start.cloned());
        }
        let end = match &limit {
            ReadLimit::UpTo(cap) => available.min(count(Some(cap), "memory stream")?),
            ReadLimit::Default | ReadLimit::All => available,
        };
        Ok(Some(Offset::from_u64(end.max(count(start, "memory stream")?) as u64)))
    }

    async fn read(
        &self,
        start: Option<&Offset>,
        end: &Offset,
        projection: Option<&[usize]>,
    ) -> Result<SendableRecordBatchStream> {
        let (from, to) = (count(start, "memory stream")?, count(Some(end), "memory stream")?);
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
