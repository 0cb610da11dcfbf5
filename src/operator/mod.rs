//! Stateful operators: the parts of a streaming query that remember across batches.
//!
//! An operator takes what the batch's stateless plan produced, merges it into its state, and
//! emits rows according to the output mode and the watermarks. It never reads sources or writes
//! sinks; the driver hands it its input and takes its output. One operator per file.

pub(crate) mod aggregate;
pub(crate) mod dedup;
pub(crate) mod join;
pub(crate) mod session;
pub(crate) mod shards;

pub(crate) use aggregate::{EventTimeKey, StatefulAggregate};
pub(crate) use dedup::{DedupTime, Deduplicate};
pub(crate) use session::SessionAggregate;
pub(crate) use shards::Sharded;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::sink::OutputMode;
use crate::state::StateFile;
use crate::state::store::SnapshotJob;

/// A stateful operator: merges a batch's input into its state and says what to emit.
pub(crate) trait StatefulOperator: Send + std::fmt::Debug {
    /// Takes one batch's input, the rows of each input segment (partial aggregates for an
    /// aggregation; a join's two sides), and returns the rows to emit in `mode`.
    ///
    /// `late_watermark` (nanoseconds) is the watermark the batch started with: input whose
    /// window ended at or before it is late, dropped and counted. `close_watermark` is the one
    /// after the batch: windows ending at or before it are final.
    fn process(
        &mut self,
        inputs: &[Vec<RecordBatch>],
        mode: OutputMode,
        late_watermark: Option<i64>,
        close_watermark: Option<i64>,
    ) -> Result<Emitted>;

    /// The earliest end of a window the operator holds, in nanoseconds: when the watermark
    /// reaches it, a batch has something to close. `None` when nothing can close.
    fn next_close(&self) -> Option<i64> {
        None
    }

    /// What changed in the state since the last call: the next state version's delta.
    fn changes(&mut self) -> Result<StateFile>;

    /// Forgets the changes since the last call (when the query keeps no checkpoint).
    fn discard_changes(&mut self);

    /// The whole state as it is now, as work that makes a snapshot of it later on another
    /// thread. Called on the batch path, so it only freezes the state (shared immutable chunks);
    /// the job does the copying.
    fn snapshot(&self) -> SnapshotJob;

    /// Rebuilds the state from one version of it, folded into a snapshot.
    fn restore(&mut self, state: &StateFile) -> Result<()>;
}

/// What a stateful operator emits for one batch.
#[derive(Debug)]
pub(crate) struct Emitted {
    /// The rows the output mode emits.
    pub(crate) rows: RecordBatch,
    /// Rows that earlier batches emitted and that `rows` now replace under another key, as they
    /// were then: in update mode, the sessions a merge absorbed into an earlier one, or whose start
    /// an earlier row moved. A sink that keeps rows by key deletes them (see
    /// [`Sink::add_batch_replacing`](crate::sink::Sink::add_batch_replacing)). Empty for operators
    /// whose keys never change.
    pub(crate) replaced: RecordBatch,
    pub(crate) metrics: OperatorMetrics,
}

/// What a stateful operator reports for a batch (Spark's `StateOperatorProgress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OperatorMetrics {
    pub(crate) rows_total: u64,
    pub(crate) rows_updated: u64,
    pub(crate) rows_removed: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) dropped_by_watermark: u64,
    pub(crate) null_event_time: u64,
}

impl OperatorMetrics {
    /// Adds another shard's numbers.
    pub(crate) fn add(&mut self, other: &OperatorMetrics) {
        self.rows_total += other.rows_total;
        self.rows_updated += other.rows_updated;
        self.rows_removed += other.rows_removed;
        self.memory_bytes += other.memory_bytes;
        self.dropped_by_watermark += other.dropped_by_watermark;
        self.null_event_time += other.null_event_time;
    }
}

/// An operator's output rows: `columns` (keys, then values) in the types of `schema`. Values come
/// out of accumulators in their own types; the plan's output types are the contract.
pub(crate) fn output_batch(schema: &SchemaRef, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                datafusion::arrow::compute::cast(&c, f.data_type())
                    .map_err(|e| Error::Internal(format!("operator output {}: {e}", f.name())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| Error::Internal(format!("operator output: {e}")))
}

/// The rows of the only input of a one-input operator.
pub(crate) fn only_input(inputs: &[Vec<RecordBatch>]) -> Result<&[RecordBatch]> {
    match inputs {
        [input] => Ok(input),
        _ => Err(Error::Internal(format!(
            "{} inputs for an operator of one",
            inputs.len()
        ))),
    }
}

/// Refuses state files whose columns are not the operator's: a checkpoint of another query.
pub(crate) fn check_state_schema(file: &StateFile, expected: &SchemaRef) -> Result<()> {
    let found = file.rows.schema();
    let types = |s: &SchemaRef| s.fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>();
    if types(&found) != types(expected) {
        return Err(Error::plan(format!(
            "the checkpoint's state has columns {:?} but this query keeps {:?}; start the query with a new \
             checkpoint_location",
            found.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
            expected.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        )));
    }
    Ok(())
}
