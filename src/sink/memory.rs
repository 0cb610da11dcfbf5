//! The memory sink: the result as an in-process table that the session can query with SQL while
//! the stream runs.
//!
//! Append and update add the batch's rows; complete replaces the table's content. A batch id at or
//! below the last one written is a replay and is skipped. The table lives in the process: after a
//! restart it starts empty.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;

use super::{OutputMode, Sink, SinkConnector, SinkRequest, SinkSpec};
use crate::error::{Error, Result};

/// The `memory` connector.
pub(crate) const CONNECTOR: SinkConnector = SinkConnector {
    name: "memory",
    options: &[],
    parse: |_| Ok(Arc::new(MemorySpec)),
};

#[derive(Debug)]
struct MemorySpec;

#[async_trait]
impl SinkSpec for MemorySpec {
    fn is_table(&self) -> bool {
        true
    }

    /// The table, registered in the session under the query's name (replacing an earlier run's).
    async fn build(&self, request: SinkRequest<'_>) -> Result<Arc<dyn Sink>> {
        let table = Arc::new(MemorySink::new(request.name, request.schema));
        request.context.deregister_table(request.name)?;
        request.context.register_table(request.name, table.clone())?;
        Ok(table)
    }
}

/// A table holding a streaming query's output. Register it in a session to query it.
#[derive(Debug)]
pub struct MemorySink {
    name: String,
    schema: SchemaRef,
    content: RwLock<Content>,
}

#[derive(Debug, Default)]
struct Content {
    batches: Vec<RecordBatch>,
    /// The last batch id written; a batch id at or below it is a replay.
    last_batch_id: Option<u64>,
}

impl MemorySink {
    /// An empty table called `name` with the query's output schema.
    pub fn new(name: impl Into<String>, schema: SchemaRef) -> Self {
        MemorySink {
            name: name.into(),
            schema,
            content: RwLock::default(),
        }
    }

    /// The table's current rows.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.content.read().unwrap_or_else(|e| e.into_inner()).batches.clone()
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn description(&self) -> String {
        format!("MemorySink[{}]", self.name)
    }

    async fn add_batch(&self, batch_id: u64, mode: OutputMode, data: SendableRecordBatchStream) -> Result<u64> {
        let batches: Vec<RecordBatch> = data.try_collect().await.map_err(Error::from_datafusion)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut content = self.content.write().unwrap_or_else(|e| e.into_inner());
        if content.last_batch_id.is_some_and(|last| batch_id <= last) {
            tracing::debug!(batch_id, "memory sink skips a replayed batch");
            return Ok(0);
        }
        let batches = batches.into_iter().filter(|b| b.num_rows() > 0);
        match mode {
            OutputMode::Append | OutputMode::Update => content.batches.extend(batches),
            OutputMode::Complete => content.batches = batches.collect(),
        }
        content.last_batch_id = Some(batch_id);
        Ok(rows as u64)
    }
}

#[async_trait]
impl TableProvider for MemorySink {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let batches = self.batches();
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
