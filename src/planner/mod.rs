//! Incrementalization: from a query over streams to a plan that runs one batch at a time.
//!
//! # Background
//! A streaming query is planned by DataFusion once, when it starts, into ordinary physical plans
//! whose stream scans are placeholders ([`StreamScanExec`]). Each batch, [`IncrementalPlan::bind`]
//! hands every placeholder the batch's rows and resets the state of the other nodes, which gives a
//! bounded plan that DataFusion runs to completion. Bounded per-batch plans keep us clear of
//! DataFusion's open questions about never-ending inputs, and planning stays out of the hot loop.
//!
//! A query with an aggregation over a stream is cut in three (see [`aggregate`]): the *batch
//! plan* up to DataFusion's partial aggregation, the [`StatefulAggregate`] operator that merges
//! partial states across batches (or [`SessionAggregate`](crate::operator::SessionAggregate) for
//! session windows), and the *post plan* (HAVING, projection, ORDER BY/LIMIT) over
//! what the operator emits.
//!
//! This module also decides what a query may do on a stream and in which output mode, and refuses
//! the rest when the query starts, saying why and what would work. It does no I/O.

pub(crate) mod aggregate;
pub(crate) mod scan;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

pub(crate) use aggregate::AggregatePlan;
pub(crate) use scan::{StreamScanExec, StreamTable};

use crate::error::{Error, Result};
use crate::operator::Sharded;
use crate::sink::OutputMode;
use crate::source::Source;
use crate::sql::Watermark;

/// A streaming query's plan: made once, bound to new rows every batch.
#[derive(Debug)]
pub(crate) struct IncrementalPlan {
    /// What runs over each batch's rows: the whole query when it is stateless, otherwise the
    /// partial aggregation.
    batch: BatchPlan,
    scans: Vec<ScanSpec>,
    /// The aggregation, for a stateful query.
    aggregate: Option<AggregatePlan>,
}

/// The per-batch part of a plan.
#[derive(Debug)]
struct BatchPlan {
    logical: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
    /// The query reads the clock (`now()`, `current_date`, ...). DataFusion folds those into
    /// constants when it plans, so such a plan is made again each batch with the batch's
    /// timestamp, as Spark evaluates `current_timestamp()` per batch.
    reads_clock: bool,
    /// Takes the partial aggregation out of DataFusion's plan of an aggregate, if this is one.
    partial: bool,
}

/// One stream scan in the plan: what the driver must read for it each batch.
#[derive(Debug, Clone)]
pub(crate) struct ScanSpec {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) projection: Option<Vec<usize>>,
    /// The stream's watermark and the position of its event-time column in the scan's output.
    pub(crate) watermark: Option<(Watermark, usize)>,
    pub(crate) idle_timeout: Option<std::time::Duration>,
}

impl IncrementalPlan {
    /// Plans `logical` for streaming in `mode`.
    ///
    /// # Errors
    /// An operation that cannot run on a stream (yet), an output mode the query cannot serve, a
    /// query that reads no stream, or a DataFusion planning error.
    pub(crate) async fn new(state: &SessionState, logical: &LogicalPlan, mode: OutputMode) -> Result<Self> {
        if !contains_stream(logical) {
            return Err(Error::plan(
                "a streaming query must read at least one stream (a table created WITH (connector = ...) \
                 or read_stream()); for static tables run the query directly",
            ));
        }
        let analyzed = state
            .analyzer()
            .execute_and_check(logical.clone(), state.config_options(), |_, _| {})?;
        let (batch_logical, aggregate, partial) = match aggregate::split(state, &analyzed, mode).await? {
            Some((input, plan)) => (input, Some(plan), true),
            None => {
                check_stateless(&analyzed)?;
                if mode == OutputMode::Complete {
                    return Err(Error::plan(
                        "output mode 'complete' needs an aggregation: without one the result table is every \
                         row ever seen; use output_mode 'append' (or 'update')",
                    ));
                }
                (analyzed, None, false)
            }
        };
        let batch = BatchPlan {
            reads_clock: reads_clock(&batch_logical),
            physical: plan_at(state, &batch_logical, partial, Utc::now()).await?,
            logical: batch_logical,
            partial,
        };
        let scans = own_sources(scans_of(&batch.physical))?;
        tracing::debug!(
            plan = %datafusion::physical_plan::displayable(batch.physical.as_ref()).indent(false),
            "incremental plan"
        );
        Ok(IncrementalPlan {
            batch,
            scans,
            aggregate,
        })
    }

    /// The stream scans, in the order [`IncrementalPlan::bind`] takes their inputs.
    pub(crate) fn scans(&self) -> &[ScanSpec] {
        &self.scans
    }

    /// What the query reads, a line per stream scan: the source, its watermark, and the columns
    /// read when not all.
    pub(crate) fn inputs(&self) -> Vec<String> {
        self.scans
            .iter()
            .map(|scan| {
                let schema = scan.source.schema();
                let mut line = scan.source.description();
                if let Some(projection) = &scan.projection {
                    let columns: Vec<&str> = projection.iter().map(|i| schema.field(*i).name().as_str()).collect();
                    line.push_str(&format!(", columns [{}]", columns.join(", ")));
                }
                if let Some((watermark, _)) = &scan.watermark {
                    line.push_str(&format!(
                        ", watermark {} - {}",
                        watermark.column,
                        crate::time::describe_duration(watermark.delay)
                    ));
                }
                line
            })
            .collect()
    }

    /// The distinct sources the query reads, in the order of their first scan: the order in which
    /// the checkpoint lists their offsets.
    pub(crate) fn sources(&self) -> Vec<Arc<dyn Source>> {
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        for scan in &self.scans {
            if !sources.iter().any(|s| Arc::ptr_eq(s, &scan.source)) {
                sources.push(scan.source.clone());
            }
        }
        sources
    }

    /// The stateful aggregation, if the query has one.
    pub(crate) fn aggregate(&self) -> Option<&AggregatePlan> {
        self.aggregate.as_ref()
    }

    /// A fresh operator for the query's aggregation.
    pub(crate) fn new_operator(&self, shards: usize) -> Result<Option<Sharded>> {
        self.aggregate
            .as_ref()
            .map(|a| a.new_operator(&self.batch.physical, shards))
            .transpose()
    }

    /// The shape of the query's state, as named facts a checkpoint records and compares when
    /// the query restarts; empty for a stateless query.
    pub(crate) fn state_shape(&self) -> Vec<(String, Vec<String>)> {
        self.aggregate
            .as_ref()
            .map(|a| a.shape(&self.batch.physical.schema()))
            .unwrap_or_default()
    }

    /// The batch plan of one batch: `inputs[i]` feeds `scans()[i]`; every other node is reset,
    /// so the plan can run again. `batch_time` is what `now()` returns in this batch.
    pub(crate) async fn bind(
        &self,
        state: &SessionState,
        batch_time: DateTime<Utc>,
        inputs: Vec<SendableRecordBatchStream>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let template = match self.batch.reads_clock {
            true => plan_at(state, &self.batch.logical, self.batch.partial, batch_time).await?,
            false => Arc::clone(&self.batch.physical),
        };
        bind_inputs(template, inputs)
    }

    /// The plan as text: what runs over each batch, the stateful operator, and what runs after it.
    pub(crate) fn explain(&self, state_partitions: &str) -> String {
        let show = |plan: &Arc<dyn ExecutionPlan>| {
            datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string()
        };
        let mut text = format!("== Batch plan ==\n{}", show(&self.batch.physical));
        if let Some(aggregate) = &self.aggregate {
            text.push_str(&format!(
                "== Stateful operator ==\n{}, state partitions: {state_partitions}\n== Post plan ==\n{}",
                aggregate.describe(),
                show(&aggregate.post)
            ));
        }
        text
    }

    /// The output columns that are the query's grouping keys (see [`AggregatePlan::output_keys`]);
    /// `None` for a query without an aggregation, or when a grouping key is not in the output.
    pub(crate) fn output_keys(&self) -> Option<Vec<String>> {
        self.aggregate.as_ref().and_then(AggregatePlan::output_keys)
    }

    /// The output column that is a session window key; see [`AggregatePlan::session_output`].
    pub(crate) fn session_output(&self) -> Option<String> {
        self.aggregate.as_ref().and_then(AggregatePlan::session_output)
    }

    /// The output schema of the whole query.
    pub(crate) fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        match &self.aggregate {
            Some(a) => a.post_schema(),
            None => self.batch.physical.schema(),
        }
    }
}

/// Plans a batch plan physically with `now()` fixed at `time`; for an aggregation (`partial`),
/// keeps only DataFusion's partial stage.
async fn plan_at(
    state: &SessionState,
    logical: &LogicalPlan,
    partial: bool,
    time: DateTime<Utc>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut state = state.clone();
    // Order does not matter to an aggregation: let DataFusion spread the batch over its
    // partitions (stateless queries keep rows in source order instead).
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
        true => aggregate::partial_of(physical),
        false => Ok(physical),
    }
}

/// Replaces the stream scans of `plan`, left to right, with `inputs`, and resets every other node.
pub(crate) fn bind_inputs(
    plan: Arc<dyn ExecutionPlan>,
    inputs: Vec<SendableRecordBatchStream>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let expected = count_scans(&plan);
    if inputs.len() != expected {
        return Err(Error::Internal(format!(
            "{} inputs for {expected} stream scans",
            inputs.len()
        )));
    }
    // `scans_of` and `transform_up` visit leaves in the same (left to right) order.
    let mut inputs = inputs.into_iter();
    let bound = plan.transform_up(|node| {
        if let Some(scan) = node.downcast_ref::<StreamScanExec>() {
            let input = inputs
                .next()
                .ok_or_else(|| Error::Internal("too few inputs for the stream scans".into()).into_datafusion())?;
            return Ok(Transformed::yes(Arc::new(scan.bind(input)) as Arc<dyn ExecutionPlan>));
        }
        Ok(Transformed::yes(node.reset_state()?))
    })?;
    Ok(bound.data)
}

fn count_scans(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut n = 0;
    let _ = plan.apply(|node| {
        n += usize::from(node.downcast_ref::<StreamScanExec>().is_some());
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

fn scans_of(plan: &Arc<dyn ExecutionPlan>) -> Vec<ScanSpec> {
    let mut scans = Vec::new();
    let _ = plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<StreamScanExec>()
            && let Some(origin) = &scan.origin
        {
            let watermark = origin.watermark.as_ref().and_then(|w| {
                let index = scan.properties().eq_properties.schema().index_of(&w.column).ok()?;
                Some((w.clone(), index))
            });
            scans.push(ScanSpec {
                source: origin.source.clone(),
                projection: scan.projection.clone(),
                watermark,
                idle_timeout: origin.idle_timeout,
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans
}

/// Gives the query its own instance of each source it reads (see [`Source::for_query`]); scans
/// of one source (a self-union) keep sharing theirs.
fn own_sources(mut scans: Vec<ScanSpec>) -> Result<Vec<ScanSpec>> {
    let mut own: Vec<(Arc<dyn Source>, Arc<dyn Source>)> = Vec::new();
    for scan in &mut scans {
        let instance = match own.iter().find(|(shared, _)| Arc::ptr_eq(shared, &scan.source)) {
            Some((_, instance)) => instance.clone(),
            None => {
                let instance = scan.source.clone().for_query()?;
                own.push((scan.source.clone(), instance.clone()));
                instance
            }
        };
        scan.source = instance;
    }
    Ok(scans)
}

/// True when the plan calls a function whose value is the current time or date.
fn reads_clock(plan: &LogicalPlan) -> bool {
    const CLOCK_FUNCTIONS: &[&str] = &["now", "current_timestamp", "current_date", "current_time", "today"];
    let mut found = false;
    // The closures never fail, so neither does the walk.
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && CLOCK_FUNCTIONS.contains(&f.func.name())
                {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

/// The stream table a table scan reads, if it reads one.
pub(crate) fn scanned_table(node: &LogicalPlan) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    let LogicalPlan::TableScan(scan) = node else {
        return None;
    };
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<StreamTable>().is_some().then_some(provider)
}

/// The stream a table scan reads, if it reads one.
pub(crate) fn scanned_stream(node: &LogicalPlan) -> Option<String> {
    scanned_table(node).and_then(|p| p.downcast_ref::<StreamTable>().map(|t| t.name.clone()))
}

/// The first stream the plan reads, if it reads any (subqueries included).
pub(crate) fn first_stream(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    // The closure never fails, so neither does the walk.
    let _ = plan.apply_with_subqueries(|node| {
        found = scanned_stream(node);
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// True when the plan reads a stream anywhere.
pub(crate) fn contains_stream(plan: &LogicalPlan) -> bool {
    first_stream(plan).is_some()
}

/// Whether an expression of `node` holds a subquery that reads a stream.
fn reads_stream_in_subquery(node: &LogicalPlan) -> datafusion::common::Result<bool> {
    let mut found = false;
    node.apply_subqueries(|subquery| {
        // `contains_stream` looks into the subquery's own subqueries too.
        found = contains_stream(subquery);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

/// Refuses operations that need state across batches and that no operator handles.
pub(crate) fn check_stateless(plan: &LogicalPlan) -> Result<()> {
    let mut problem = None;
    plan.apply(|node| {
        let streaming: Vec<bool> = node.inputs().iter().map(|i| contains_stream(i)).collect();
        let any = streaming.iter().any(|s| *s);
        problem = match node {
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) if any => Some(
                "this aggregation over a stream is not supported: a query may have one aggregation (GROUP BY \
                 or aggregate functions), with only projections, filters and, in complete mode, ORDER BY / \
                 LIMIT after it; DISTINCT is not supported yet",
            ),
            LogicalPlan::Sort(_) if any => Some(
                "ORDER BY over a stream is not supported: a stream has no end to sort to (sorting is \
                 possible after an aggregation in complete mode)",
            ),
            LogicalPlan::Limit(_) if any => Some("LIMIT over a stream is not supported (it is after an aggregation in complete mode)"),
            LogicalPlan::Window(_) if any => {
                Some("window functions (OVER ...) over a stream are not supported; use GROUP BY window(...) for time windows")
            }
            LogicalPlan::Join(join) if streaming.len() == 2 => match (streaming[0], streaming[1], join.join_type) {
                (true, true, _) => Some("joining two streams is not supported in this version; join a stream with a static table"),
                (true, false, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark)
                | (false, true, JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark) => None,
                (true, false, _) | (false, true, _) => Some(
                    "this outer join would have to emit static rows that match no stream row, which is never \
                     final on a stream; use an inner join, or an outer join that keeps the stream's side",
                ),
                (false, false, _) => None,
            },
            LogicalPlan::RecursiveQuery(_) if any => Some("recursive queries over a stream are not supported"),
            LogicalPlan::Union(_) if any && !streaming.iter().all(|s| *s) => Some(
                "a UNION of a stream and a static table is not supported: the static rows would be emitted \
                 again with every batch; union streams with streams (as in Spark)",
            ),
            _ => None,
        };
        if problem.is_none() && reads_stream_in_subquery(node)? {
            problem = Some(
                "a stream inside a subquery (IN, EXISTS or a scalar subquery) is not supported: its answer \
                 changes with every batch, so the rows it selects are never final; join the stream with the \
                 table instead, keeping the stream's side (as in Spark)",
            );
        }
        Ok(if problem.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    match problem {
        Some(message) => Err(Error::plan(message)),
        None => Ok(()),
    }
}
