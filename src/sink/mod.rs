//! Sinks: where a streaming query's result goes, batch by batch.
//!
//! The driver hands each batch's output to [`Sink::add_batch`] together with the batch id. A sink
//! that promises exactly-once makes `add_batch` idempotent per batch id: after a crash the driver
//! re-runs the last uncommitted batch with the same id and the same rows. One sink per file (or
//! directory): [`console`] prints, [`memory`] keeps the result as a table the session can query,
//! [`database`] writes into a table of SQLite, PostgreSQL or MySQL in one transaction per batch.
//! [`files`] writes Parquet, CSV or JSON files that readers see batch by batch, each batch once.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub(crate) mod console;
pub(crate) mod database;
pub(crate) mod files;
pub(crate) mod memory;

pub use console::ConsoleSink;
pub(crate) use files::CommittedFilesFactory;
pub use memory::MemorySink;

/// Which rows of the result table a batch writes to the sink (Spark's output modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Only new rows, each written once and never changed.
    #[default]
    Append,
    /// The rows that changed in this batch.
    Update,
    /// The whole result table, every batch.
    Complete,
}

impl OutputMode {
    /// The option value naming this mode.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a sink connector is declared: its name (the `connector` option), the options it takes
/// besides the query's, and how it reads them. Each sink file has its `CONNECTOR`, and the
/// registry in [`crate::connector`] lists them.
pub(crate) struct SinkConnector {
    pub(crate) name: &'static str,
    pub(crate) options: &'static [&'static str],
    pub(crate) parse: fn(&crate::options::Options) -> Result<Arc<dyn SinkSpec>>,
}

/// A declared sink: its options, read; a query that writes to it builds the sink.
#[async_trait]
pub(crate) trait SinkSpec: Debug + Send + Sync {
    /// Whether the sink writes each batch once by its id, so that a restarted query must go on
    /// with its batch ids: it needs a checkpoint.
    fn exactly_once(&self) -> bool {
        false
    }

    /// Refuses an output mode the sink cannot serve, saying why.
    fn check_output_mode(&self, mode: OutputMode) -> Result<()> {
        let _ = mode;
        Ok(())
    }

    /// Where it writes, as `SHOW TABLES` lists it (`path = out, format = json`).
    fn details(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether its rows become a table of the session (the memory sink).
    fn is_table(&self) -> bool {
        false
    }

    /// The sink for one query.
    async fn build(&self, request: SinkRequest<'_>) -> Result<Arc<dyn Sink>>;
}

/// What a query tells the sink it writes to.
pub(crate) struct SinkRequest<'a> {
    /// The query's name: a memory sink's table.
    pub(crate) name: &'a str,
    pub(crate) context: &'a datafusion::prelude::SessionContext,
    /// The query's output.
    pub(crate) schema: SchemaRef,
    pub(crate) output_mode: OutputMode,
    pub(crate) query_id: &'a str,
    /// The output columns that are the query's grouping keys, if all are in the output.
    pub(crate) grouping_key: Option<Vec<String>>,
    /// The output column that is a session window key.
    pub(crate) session_key: Option<String>,
    /// The directories the query's sources read, as given: a sink may not write there.
    pub(crate) source_directories: Vec<(String, String)>,
}

/// The output of a streaming query.
#[async_trait]
pub trait Sink: Send + Sync + Debug {
    /// A short human description for progress reports, e.g. `MemorySink[words]`.
    fn description(&self) -> String;

    /// Writes batch `batch_id`'s output and returns the number of rows written. Called once per
    /// batch in order, and again with the same id and rows when a batch is replayed.
    async fn add_batch(&self, batch_id: u64, mode: OutputMode, data: SendableRecordBatchStream) -> Result<u64>;

    /// Like [`add_batch`](Sink::add_batch), with the rows of earlier batches that this batch's
    /// rows replace under another key, as they were written then. Only update mode has them, for
    /// session windows: a session is identified by its start, and a batch that merges sessions
    /// (or moves a session's start earlier) replaces the rows of the sessions it absorbed.
    ///
    /// The default ignores `replaced` and calls `add_batch`: a sink that appends every update, as
    /// Spark's update mode does, keeps the earlier rows. A sink that keeps one row per key (the
    /// database sink) deletes them in the same transaction as the batch's rows.
    async fn add_batch_replacing(
        &self,
        batch_id: u64,
        mode: OutputMode,
        data: SendableRecordBatchStream,
        replaced: Vec<datafusion::arrow::array::RecordBatch>,
    ) -> Result<u64> {
        let _ = replaced;
        self.add_batch(batch_id, mode, data).await
    }
}
