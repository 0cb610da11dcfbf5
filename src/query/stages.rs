//! The stateful stage of a running query: its operators, their state stores, and one batch run
//! through the chain of segments and operators.
//!
//! Each batch, every operator in chain order takes the rows of its input segment (bound to the
//! batch's stream rows and to what the operator before it emitted), with the two watermarks: the
//! previous batch's, which makes rows late, and the current one, which closes what it holds. The
//! post plan then runs over the last operator's output. Each operator's state changes become
//! version N of its own store, `state/<operator id>/`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, collect};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::operator::{OperatorMetrics, Sharded};
use crate::planner::segment::operator_stream;
use crate::planner::{IncrementalPlan, Leaf, Segment};
use crate::state::store::SnapshotJob;
use crate::state::{StateFile, StateStore};

/// One operator of a running query and where its state goes.
struct Running {
    operator: Sharded,
    /// `None` when the query keeps no state on disk.
    store: Option<Arc<StateStore>>,
}

/// The stateful operators of a running query, in chain order.
pub(crate) struct Operators {
    running: Vec<Running>,
}

/// What the operators of one batch leave for the commit: per operator, the state's changes and
/// a snapshot when one is due.
pub(crate) type Changes = Vec<(Arc<StateStore>, Vec<StateFile>, Option<Vec<SnapshotJob>>)>;

/// One batch's result: the post plan bound to its input, and the rows an update replaces.
pub(crate) struct BatchOutput {
    pub(crate) plan: Arc<dyn ExecutionPlan>,
    /// The post plan's rows for what the last operator's update replaced (see
    /// [`Emitted::replaced`](crate::operator::Emitted::replaced)).
    pub(crate) replaced: Vec<RecordBatch>,
    /// Each operator's metrics, in chain order, with its name in progress reports.
    pub(crate) metrics: Vec<(&'static str, OperatorMetrics)>,
}

impl Operators {
    /// Fresh operators for `plan`, each with `shards` shards and, with a checkpoint that keeps
    /// state, its store in `state/<id>/`.
    pub(crate) fn new(
        plan: &IncrementalPlan,
        shards: usize,
        checkpoint: &Checkpoint,
        snapshot_interval: u64,
    ) -> Result<Self> {
        let running = plan
            .operators()
            .iter()
            .map(|stage| {
                let operator = stage.new_operator(shards)?;
                let store = checkpoint.state_dir().map(|dir| {
                    Arc::new(StateStore::new(
                        dir.child(&stage.id.to_string()),
                        operator.len(),
                        snapshot_interval,
                    ))
                });
                Ok(Running { operator, store })
            })
            .collect::<Result<_>>()?;
        Ok(Operators { running })
    }

    /// The state stores, in chain order.
    pub(crate) fn stores(&self) -> Vec<Arc<StateStore>> {
        self.running.iter().filter_map(|r| r.store.clone()).collect()
    }

    /// The earliest time at which some operator has something to close, in nanoseconds.
    pub(crate) fn next_close(&self) -> Option<i64> {
        self.running.iter().filter_map(|r| r.operator.next_close()).min()
    }

    /// Puts every operator's state back as it was after batch `batch_id`.
    pub(crate) async fn restore(&mut self, batch_id: u64) -> Result<()> {
        for running in &mut self.running {
            if let Some(store) = &running.store {
                running.operator.restore(store.load(batch_id).await?)?;
            }
        }
        Ok(())
    }

    /// Runs one batch through the chain: `streams[i]` are the rows of stream scan `i`.
    /// `watermarks` are the previous batch's (late rows) and the current one (what closes).
    pub(crate) async fn run(
        &mut self,
        plan: &IncrementalPlan,
        state: &SessionState,
        batch_time: DateTime<Utc>,
        streams: Vec<SendableRecordBatchStream>,
        watermarks: (Option<i64>, Option<i64>),
    ) -> Result<BatchOutput> {
        let mut streams: Vec<Option<SendableRecordBatchStream>> = streams.into_iter().map(Some).collect();
        let mut outputs: Vec<RecordBatch> = Vec::with_capacity(self.running.len());
        let mut metrics = Vec::with_capacity(self.running.len());
        let mut replaced = None;
        for (stage, running) in plan.operators().iter().zip(&mut self.running) {
            let mut input = Vec::with_capacity(stage.inputs.len());
            for segment in &stage.inputs {
                let inputs = leaf_inputs(segment, &mut streams, &outputs)?;
                let bound = segment.bind(state, batch_time, inputs).await?;
                input.push(collect(bound, state.task_ctx()).await?);
            }
            let emitted = running
                .operator
                .process(&input, stage.mode, watermarks.0, watermarks.1)?;
            metrics.push((stage.plan.progress_name(), emitted.metrics));
            outputs.push(emitted.rows);
            replaced = Some(emitted.replaced);
        }
        let output = plan.output();
        let inputs = leaf_inputs(output, &mut streams, &outputs)?;
        let bound = output.bind(state, batch_time, inputs).await?;
        let replaced = match replaced.filter(|r| r.num_rows() > 0) {
            Some(rows) => {
                // The post plan again, over the replaced rows in place of the last operator's.
                let last = outputs.len() - 1;
                outputs[last] = rows;
                let mut none: Vec<Option<SendableRecordBatchStream>> = Vec::new();
                let inputs = leaf_inputs(output, &mut none, &outputs)?;
                let plan = output.bind(state, batch_time, inputs).await?;
                collect(plan, state.task_ctx()).await?
            }
            None => Vec::new(),
        };
        Ok(BatchOutput {
            plan: bound,
            replaced,
            metrics,
        })
    }

    /// The state's changes of the batch just run, for the commit to write as version
    /// `batch_id`; without stores (no checkpoint), they are dropped.
    pub(crate) fn changes(&mut self, batch_id: u64) -> Result<Changes> {
        let mut changes = Vec::new();
        for running in &mut self.running {
            match &running.store {
                Some(store) => {
                    let files = running.operator.changes()?;
                    // A due snapshot is taken now, as the state is after this batch.
                    let snapshot = store.snapshot_due(batch_id).then(|| running.operator.snapshot());
                    changes.push((store.clone(), files, snapshot));
                }
                None => running.operator.discard_changes(),
            }
        }
        Ok(changes)
    }
}

/// The streams for a segment's leaves: stream scans take their rows from `streams` (no rows
/// when already taken or absent), operator leaves read what the operator emitted.
fn leaf_inputs(
    segment: &Segment,
    streams: &mut [Option<SendableRecordBatchStream>],
    outputs: &[RecordBatch],
) -> Result<Vec<SendableRecordBatchStream>> {
    segment
        .leaves
        .iter()
        .zip(segment.scans())
        .map(|(leaf, scan)| match leaf {
            Leaf::Scan(i) => Ok(match streams.get_mut(*i).and_then(Option::take) {
                Some(stream) => stream,
                None => {
                    let schema = scan.properties().eq_properties.schema().clone();
                    Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty()))
                        as SendableRecordBatchStream
                }
            }),
            Leaf::Operator(id) => {
                let output = outputs
                    .get(*id)
                    .ok_or_else(|| Error::Internal(format!("stateful operator {id} runs after its reader")))?;
                operator_stream(scan, output)
            }
        })
        .collect()
}
