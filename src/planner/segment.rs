//! Segments: the stateless plans of a streaming query, between its sources and stateful operators.
//!
//! # Background
//! A streaming query is a chain of stateful operators with stateless plans between them. Each of
//! those plans is a *segment*: an ordinary DataFusion physical plan, made once, whose leaves are
//! placeholders ([`StreamScanExec`]) for either a stream's new rows or what an earlier operator
//! emitted in the same batch. Each batch binds every leaf to its rows and runs the segment to
//! completion. The first segment of an aggregation is DataFusion's own partial aggregation, so
//! per-batch work is DataFusion's; the last segment (the *post plan*) feeds the sink.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::projection::ProjectionExec;

use super::StreamScanExec;
use crate::error::{Error, Result};

/// What a segment's leaf reads each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    /// The new rows of the query's stream scan with this index (see
    /// [`IncrementalPlan::scans`](super::IncrementalPlan::scans)).
    Scan(usize),
    /// What the stateful operator with this id emitted in this batch.
    Operator(usize),
}

/// One stateless plan of a streaming query.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(super) logical: LogicalPlan,
    pub(crate) physical: Arc<dyn ExecutionPlan>,
    /// The plan reads the clock (`now()`, `current_date`, ...). DataFusion folds those into
    /// constants when it plans, so such a plan is made again each batch with the batch's
    /// timestamp, as Spark evaluates `current_timestamp()` per batch.
    reads_clock: bool,
    /// The segment ends in DataFusion's partial aggregation (the input of an aggregation).
    partial: bool,
    /// The leaves, left to right: the order [`Segment::bind`] takes its inputs in.
    pub(crate) leaves: Vec<Leaf>,
}

impl Segment {
    /// Plans `logical`; `partial` keeps only the partial stage of its aggregation. The leaves that
    /// are stream scans are numbered from `first_scan` on, left to right.
    pub(super) async fn new(
        state: &SessionState,
        logical: LogicalPlan,
        partial: bool,
        first_scan: usize,
    ) -> Result<Segment> {
        let physical = plan_at(state, &logical, partial, Utc::now()).await?;
        let mut found = Vec::new();
        leaf_scans(&physical, &mut found);
        let mut scans = first_scan..;
        let leaves = found
            .iter()
            .map(|scan| match scan.operator {
                Some(id) => Leaf::Operator(id),
                None => Leaf::Scan(scans.next().unwrap_or_default()),
            })
            .collect();
        Ok(Segment {
            reads_clock: super::reads_clock(&logical),
            logical,
            physical,
            partial,
            leaves,
        })
    }

    /// The segment over one batch: `inputs[i]` feeds `leaves[i]`, every other node is reset so the
    /// plan can run again. `batch_time` is what `now()` returns in this batch.
    pub(crate) async fn bind(
        &self,
        state: &SessionState,
        batch_time: DateTime<Utc>,
        inputs: Vec<SendableRecordBatchStream>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let template = match self.reads_clock {
            true => plan_at(state, &self.logical, self.partial, batch_time).await?,
            false => Arc::clone(&self.physical),
        };
        bind_inputs(template, inputs)
    }

    /// The leaf scans of the segment, left to right.
    pub(crate) fn scans(&self) -> Vec<&StreamScanExec> {
        let mut scans = Vec::new();
        leaf_scans(&self.physical, &mut scans);
        scans
    }

    /// The plan as text, one node a line.
    pub(crate) fn display(&self) -> String {
        datafusion::physical_plan::displayable(self.physical.as_ref())
            .indent(true)
            .to_string()
    }

    /// The operator column that output column `index` passes through unchanged, if it does.
    ///
    /// # Background
    /// A sink that upserts needs the columns that identify a result row; an operator's keys do,
    /// provided they reach the output. The plan is followed down from the output column through
    /// projections (of plain columns), filters and nodes that keep their input's columns, to an
    /// operator's output.
    pub(crate) fn operator_column(&self, index: usize) -> Option<(usize, usize)> {
        operator_column(&self.physical, index)
    }
}

/// The leaf scans under `plan`, left to right.
fn leaf_scans<'a>(plan: &'a Arc<dyn ExecutionPlan>, scans: &mut Vec<&'a StreamScanExec>) {
    match plan.downcast_ref::<StreamScanExec>() {
        Some(scan) => scans.push(scan),
        None => plan.children().into_iter().for_each(|child| leaf_scans(child, scans)),
    }
}

/// One operator output as the stream a leaf of the next segment reads: the leaf's projection of
/// the operator's columns, under the leaf's (positional) names.
pub(crate) fn operator_stream(scan: &StreamScanExec, output: &RecordBatch) -> Result<SendableRecordBatchStream> {
    let schema = scan.properties().eq_properties.schema().clone();
    let columns = match &scan.projection {
        Some(p) => p.iter().map(|i| Arc::clone(output.column(*i))).collect(),
        None => output.columns().to_vec(),
    };
    let options = RecordBatchOptions::new().with_row_count(Some(output.num_rows()));
    let input = RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| Error::Internal(format!("operator output for the next plan: {e}")))?;
    Ok(Box::pin(MemoryStream::try_new(vec![input], schema, None)?))
}

/// Plans a logical plan physically with `now()` fixed at `time`; for an aggregation (`partial`),
/// keeps only DataFusion's partial stage.
pub(super) async fn plan_at(
    state: &SessionState,
    logical: &LogicalPlan,
    partial: bool,
    time: DateTime<Utc>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut state = state.clone();
    // Order does not matter to an aggregation: let DataFusion spread the batch over its
    // partitions (other plans keep rows in source order instead).
    if partial {
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = true;
    }
    let config = Arc::clone(state.config_options());
    let props = state.execution_props_mut();
    props.mark_start_execution(config);
    props.query_execution_start_time = Some(time);
    let physical = state.create_physical_plan(logical).await?;
    match partial {
        true => super::aggregate::partial_of(physical),
        false => Ok(physical),
    }
}

/// Replaces the leaf scans of `plan`, left to right, with `inputs`, and resets every other node.
fn bind_inputs(plan: Arc<dyn ExecutionPlan>, inputs: Vec<SendableRecordBatchStream>) -> Result<Arc<dyn ExecutionPlan>> {
    let mut expected = 0;
    let _ = plan.apply(|node| {
        expected += usize::from(node.downcast_ref::<StreamScanExec>().is_some());
        Ok(TreeNodeRecursion::Continue)
    });
    if inputs.len() != expected {
        return Err(Error::Internal(format!(
            "{} inputs for {expected} leaf scans",
            inputs.len()
        )));
    }
    // `apply` and `transform_up` visit leaves in the same (left to right) order.
    let mut inputs = inputs.into_iter();
    let bound = plan.transform_up(|node| {
        if let Some(scan) = node.downcast_ref::<StreamScanExec>() {
            let input = inputs
                .next()
                .ok_or_else(|| Error::Internal("too few inputs for the leaf scans".into()).into_datafusion())?;
            return Ok(Transformed::yes(Arc::new(scan.bind(input)) as Arc<dyn ExecutionPlan>));
        }
        Ok(Transformed::yes(node.reset_state()?))
    })?;
    Ok(bound.data)
}

/// The `(operator id, column)` that column `index` of `plan` passes through unchanged, if any.
fn operator_column(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Option<(usize, usize)> {
    if let Some(scan) = plan.downcast_ref::<StreamScanExec>() {
        let column = match &scan.projection {
            Some(projection) => projection.get(index).copied()?,
            None => index,
        };
        return Some((scan.operator?, column));
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let column = projection.expr().get(index)?.expr.downcast_ref::<PhysicalColumn>()?;
        return operator_column(projection.input(), column.index());
    }
    let [input] = plan.children()[..] else {
        return None;
    };
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let index = match filter.projection() {
            Some(projection) => *projection.get(index)?,
            None => index,
        };
        return operator_column(input, index);
    }
    // Sorts, limits, repartitions and coalescing keep their input's columns.
    let same = plan.schema().fields().len() == input.schema().fields().len()
        && plan
            .schema()
            .fields()
            .iter()
            .zip(input.schema().fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same { operator_column(input, index) } else { None }
}
