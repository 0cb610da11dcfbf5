//! Cutting a query with an aggregation into batch plan, stateful operator and post plan.
//!
//! The cut is made on the analyzed logical plan: walking down from the root through projections,
//! filters, sorts and limits (the *post plan*) to the first aggregation over a stream. Its input
//! must be stateless. The batch plan is the aggregation itself with one hidden `count(1)` added,
//! planned by DataFusion and cut just above its partial stage, so the per-batch work is
//! DataFusion's own partial aggregation; the hidden count tells how many input rows a late group
//! row stood for. The post plan reads the operator's output through an [`OperatorOutputTable`].

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionState;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, lit};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::projection::ProjectionExec;

use super::scan::{OperatorOutputTable, StreamTable};
use super::{bind_inputs, check_stateless, contains_stream, scanned_table};
use crate::error::{Error, Result};
use crate::operator::{EventTimeKey, SessionAggregate, Sharded, StatefulAggregate, StatefulOperator};
use crate::sink::OutputMode;
use crate::sql::window::SessionPiece;

/// Name of the hidden row count added to a streaming aggregation.
const ROW_COUNT: &str = "__tidewater_rows";
/// Name under which the post plan reads the aggregation's output.
const OUTPUT_TABLE: &str = "__tidewater_aggregate";

/// The stateful part of a streaming aggregation and the plan after it.
#[derive(Debug)]
pub(crate) struct AggregatePlan {
    key_count: usize,
    /// The aggregation's output schema (keys, then values), as the post plan reads it.
    output_schema: SchemaRef,
    event_time: Option<EventTimeKey>,
    /// Position of the `session_window` key, for a session-window aggregation.
    session: Option<usize>,
    /// The event-time key is a window over processing time (`window(current_timestamp(), ...)`):
    /// its watermark is the batch's time.
    processing_time: bool,
    /// The post plan, over one stream scan without a source: the operator's output.
    pub(super) post: Arc<dyn ExecutionPlan>,
    /// The post plan before physical planning, when it reads the clock (`now()` after the
    /// aggregation): it is planned again for each batch, with the batch's time.
    post_logical: Option<LogicalPlan>,
    /// That scan's projection of the operator's output, and its (positional) schema.
    post_input: (Option<Vec<usize>>, SchemaRef),
}

impl AggregatePlan {
    /// A fresh operator; `partial` is the batch plan (a partial `AggregateExec`).
    pub(crate) fn new_operator(&self, partial: &Arc<dyn ExecutionPlan>, shards: usize) -> Result<Sharded> {
        let exec = partial
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| Error::Internal("the batch plan of an aggregation is not an AggregateExec".into()))?;
        let mut exprs = exec.aggr_expr().to_vec();
        exprs.pop(); // the hidden row count
        let schema = partial.schema();
        if exec.group_expr().expr().len() != self.key_count
            || exprs.len() + self.key_count != self.output_schema.fields().len()
        {
            return Err(Error::Internal(format!(
                "the batch plan's aggregation has {} grouping keys and {} aggregates, the query {} keys and \
                 {} columns: an optimizer rule changed its shape",
                exec.group_expr().expr().len(),
                exprs.len(),
                self.key_count,
                self.output_schema.fields().len()
            )));
        }
        let output = &self.output_schema;
        let operators = (0..shards.max(1))
            .map(|_| -> Result<Box<dyn StatefulOperator>> {
                Ok(match self.session {
                    Some(column) => Box::new(SessionAggregate::try_new(
                        exprs.clone(),
                        &schema,
                        self.key_count,
                        column,
                        output.clone(),
                    )?),
                    None => Box::new(StatefulAggregate::try_new(
                        exprs.clone(),
                        &schema,
                        self.key_count,
                        output.clone(),
                        self.event_time,
                    )?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Sessions of one key must meet in one shard: the session column does not pick it.
        let key_columns = (0..self.key_count).filter(|i| Some(*i) != self.session).collect();
        Ok(Sharded::new(operators, key_columns))
    }

    /// One line on the operator: its kind, keys and event time.
    pub(crate) fn describe(&self) -> String {
        let keys: Vec<&str> = self.output_schema.fields()[..self.key_count]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let kind = match self.session {
            Some(_) => "SessionAggregate",
            None => "StatefulAggregate",
        };
        let event_time = match (self.event_time, self.processing_time) {
            (Some(EventTimeKey::Window(i)), true) => format!(
                ", processing time: {} (closed at the batch time)",
                self.output_schema.field(i).name()
            ),
            (Some(EventTimeKey::Window(i) | EventTimeKey::Time(i)), _) => {
                format!(", event time: {} (with watermark)", self.output_schema.field(i).name())
            }
            (None, _) => String::new(),
        };
        let aggregates: Vec<&str> = self.output_schema.fields()[self.key_count..]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!(
            "{kind}: keys [{}], aggregates [{}]{event_time}",
            keys.join(", "),
            aggregates.join(", ")
        )
    }

    /// The shape of the state this aggregation keeps, given its partial aggregation's schema:
    /// what a checkpoint's state must match (see [`super::IncrementalPlan::state_shape`]).
    pub(crate) fn shape(&self, partial: &SchemaRef) -> Vec<(String, Vec<String>)> {
        let describe = |fields: &[datafusion::arrow::datatypes::FieldRef]| {
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        };
        let fields = partial.fields();
        let event_time = match self.event_time {
            Some(EventTimeKey::Window(i) | EventTimeKey::Time(i)) => vec![self.output_schema.field(i).name().clone()],
            None => Vec::new(),
        };
        vec![
            ("the group keys".to_string(), describe(&fields[..self.key_count])),
            (
                "the aggregates".to_string(),
                describe(&fields[self.key_count..fields.len() - 1]),
            ),
            ("the event-time key".to_string(), event_time),
            ("the stateful operator".to_string(), vec![self.describe()]),
        ]
    }

    /// The schema of the query's final output.
    pub(crate) fn post_schema(&self) -> SchemaRef {
        self.post.schema()
    }

    /// The post plan bound to the operator's output of one batch.
    /// `batch_time` is what `now()` returns in the batch.
    pub(crate) async fn bind_post(
        &self,
        state: &SessionState,
        batch_time: chrono::DateTime<chrono::Utc>,
        output: RecordBatch,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (projection, schema) = &self.post_input;
        let columns = match &projection {
            Some(p) => p.iter().map(|i| Arc::clone(output.column(*i))).collect(),
            None => output.columns().to_vec(),
        };
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(output.num_rows()));
        let input = RecordBatch::try_new_with_options(schema.clone(), columns, &options)
            .map_err(|e| Error::Internal(format!("aggregate output for the post plan: {e}")))?;
        let stream = MemoryStream::try_new(vec![input], Arc::clone(schema), None)?;
        let post = match &self.post_logical {
            Some(logical) => super::plan_at(state, logical, false, batch_time).await?,
            None => Arc::clone(&self.post),
        };
        bind_inputs(post, vec![Box::pin(stream)])
    }

    /// Whether the aggregation groups by event time with a watermark.
    pub(crate) fn has_event_time(&self) -> bool {
        self.event_time.is_some()
    }

    /// Whether the aggregation windows processing time, whose watermark is the batch's time.
    pub(crate) fn has_processing_time(&self) -> bool {
        self.processing_time
    }

    /// The output columns that are the aggregation's grouping keys, in output order: `Some` when
    /// every grouping key reaches the output unchanged (perhaps renamed), `None` when one is
    /// dropped or only used inside an expression.
    ///
    /// # Background
    /// A sink that upserts (the database sink in update mode) needs the columns that identify a
    /// result row; the grouping keys do, provided they are all in the output. The post plan is
    /// followed down from each output column through projections (of plain columns), filters and
    /// nodes that keep their input's columns, to the operator's output.
    pub(crate) fn output_keys(&self) -> Option<Vec<String>> {
        let schema = self.post.schema();
        let mut found = vec![false; self.key_count];
        let mut names = Vec::new();
        for (index, field) in schema.fields().iter().enumerate() {
            if let Some(key) = operator_column(&self.post, index).filter(|c| *c < self.key_count) {
                found[key] = true;
                names.push(field.name().clone());
            }
        }
        found.iter().all(|f| *f).then_some(names)
    }

    /// The output column that is the `session_window` key, if it reaches the output unchanged.
    pub(crate) fn session_output(&self) -> Option<String> {
        let session = self.session?;
        let schema = self.post.schema();
        (0..schema.fields().len())
            .find(|index| operator_column(&self.post, *index) == Some(session))
            .map(|index| schema.field(index).name().clone())
    }
}

/// Finds the aggregation over a stream in `analyzed`. Returns the logical batch plan (the
/// aggregation with its hidden row count) and the rest, or `None` for a query without one.
pub(crate) async fn split(
    state: &SessionState,
    analyzed: &LogicalPlan,
    mode: OutputMode,
) -> Result<Option<(LogicalPlan, AggregatePlan)>> {
    let mut post_nodes: Vec<&LogicalPlan> = Vec::new();
    let mut node = analyzed;
    let aggregate = loop {
        match node {
            LogicalPlan::Aggregate(aggregate) if contains_stream(&aggregate.input) => break aggregate,
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
                if node.inputs().len() == 1 =>
            {
                post_nodes.push(node);
                node = node.inputs()[0];
            }
            _ => return Ok(None),
        }
    };
    check_stateless(&aggregate.input)?;
    if post_nodes.iter().any(|n| contains_stream_beside(n)) {
        return Err(Error::plan("a query may read streams only below its aggregation"));
    }
    if mode != OutputMode::Complete
        && post_nodes
            .iter()
            .any(|n| matches!(n, LogicalPlan::Sort(_) | LogicalPlan::Limit(_)))
    {
        return Err(Error::plan(format!(
            "ORDER BY and LIMIT after a streaming aggregation need output mode 'complete' (the whole result \
             table each batch); in '{mode}' mode each batch emits only some rows, so there is nothing to sort"
        )));
    }
    if aggregate.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
        return Err(Error::plan(
            "GROUPING SETS, ROLLUP and CUBE over a stream are not supported",
        ));
    }
    let (event_time, session, processing_time) = event_time_key(aggregate);
    if mode == OutputMode::Append && event_time.is_none() {
        return Err(Error::plan(
            "output mode 'append' emits each group once, when it is final, so it needs an event-time window with a \
             watermark: group by window(<time column>, ...) on a stream that declares WATERMARK FOR <time column>, \
             or by window(current_timestamp(), ...) over processing time; or use output_mode 'update' or 'complete'",
        ));
    }

    let mut aggr_expr = aggregate.aggr_expr.clone();
    // Counting a literal no query would count keeps DataFusion from merging this aggregate with
    // an equal one of the user's.
    aggr_expr.push(count(lit(ROW_COUNT)).alias(ROW_COUNT));
    let mut batch = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?);
    if session.is_some() {
        batch = session_pieces(batch)?;
    }

    // The post plan: the nodes above the aggregation, over a table of its output. The table's
    // columns have plain positional names; a projection gives them back the names and qualifiers
    // the nodes refer to.
    let output_schema: SchemaRef = Arc::new(aggregate.schema.as_arrow().clone());
    let positional = Arc::new(datafusion::arrow::datatypes::Schema::new(
        output_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
            .collect::<Vec<_>>(),
    ));
    let table: Arc<dyn TableProvider> = Arc::new(OperatorOutputTable { schema: positional });
    let requalify: Vec<Expr> = aggregate
        .schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(OUTPUT_TABLE), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let mut post = LogicalPlanBuilder::scan(OUTPUT_TABLE, provider_as_source(table), None)?
        .project(requalify)?
        .build()?;
    for node in post_nodes.iter().rev() {
        post = node.with_new_exprs(node.expressions(), vec![post])?;
    }
    let post_logical = super::reads_clock(&post).then(|| post.clone());
    let post = state.create_physical_plan(&post).await?;
    let mut post_input = None;
    let _ = post.apply(|node| {
        if let Some(scan) = node.downcast_ref::<super::StreamScanExec>() {
            post_input = Some((
                scan.projection.clone(),
                scan.properties().eq_properties.schema().clone(),
            ));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let post_input = post_input.ok_or_else(|| Error::Internal("post plan without its input".into()))?;
    let plan = AggregatePlan {
        key_count: aggregate.group_expr.len(),
        output_schema,
        event_time,
        session,
        processing_time,
        post,
        post_logical,
        post_input,
    };
    Ok(Some((batch, plan)))
}

/// The column of the stateful operator's output that column `index` of `plan` (a post plan) passes
/// through unchanged, if it does.
fn operator_column(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Option<usize> {
    if let Some(scan) = plan.downcast_ref::<super::StreamScanExec>() {
        return match &scan.projection {
            Some(projection) => projection.get(index).copied(),
            None => Some(index),
        };
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

/// True when a post-plan node reads a stream other than through its single input.
fn contains_stream_beside(node: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = node.apply_subqueries(|sub| {
        found |= contains_stream(sub);
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Which grouping key carries event time: a `window(col, ...)`, a `session_window(col, ...)` or
/// `col` itself, where `col` is a stream's watermark column, or a `window(current_timestamp(),
/// ...)` over processing time (the third value); and which key is a session window, watermark or
/// not.
fn event_time_key(aggregate: &Aggregate) -> (Option<EventTimeKey>, Option<usize>, bool) {
    let mut watermarked: HashSet<String> = HashSet::new();
    let _ = aggregate.input.apply(|node| {
        if let Some(provider) = scanned_table(node)
            && let Some(table) = provider.downcast_ref::<StreamTable>()
            && let Some(w) = &table.watermark
        {
            watermarked.insert(w.column.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let origins: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .map(|e| origin(e.clone().unalias(), &aggregate.input))
        .collect();
    let session = origins
        .iter()
        .position(|e| matches!(e, Expr::ScalarFunction(f) if f.func.name() == "session_window"));
    let mut processing_time = false;
    let event_time = origins.iter().enumerate().find_map(|(i, e)| match e {
        Expr::ScalarFunction(f) if matches!(f.func.name(), "window" | "window_list" | "session_window") => {
            match f.args.first().map(|a| a.clone().unalias()) {
                Some(Expr::Column(c)) if watermarked.contains(&c.name) => Some(EventTimeKey::Window(i)),
                // `now()` is the batch's time (`current_timestamp()` is its other name).
                Some(Expr::ScalarFunction(now)) if now.func.name() == "now" && f.func.name() != "session_window" => {
                    processing_time = true;
                    Some(EventTimeKey::Window(i))
                }
                _ => None,
            }
        }
        Expr::Column(c) if watermarked.contains(&c.name) => Some(EventTimeKey::Time(i)),
        _ => None,
    });
    (event_time, session, processing_time)
}

/// Replaces every `session_window(...)` in the plan by the row's own piece of a session, which
/// the session operator merges; the replaced expressions keep their names.
fn session_pieces(plan: LogicalPlan) -> Result<LogicalPlan> {
    let piece = Arc::new(ScalarUDF::new_from_impl(SessionPiece::new()));
    let replaced = plan.transform_up(|node| {
        let mut changed = false;
        let exprs = node
            .expressions()
            .into_iter()
            .map(|expr| {
                let name = expr.schema_name().to_string();
                let new = expr.transform_up(|e| match e {
                    Expr::ScalarFunction(f) if f.func.name() == "session_window" => Ok(Transformed::yes(
                        Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&piece), f.args)),
                    )),
                    other => Ok(Transformed::no(other)),
                })?;
                changed |= new.transformed;
                Ok(match (new.transformed, new.data) {
                    (true, e @ Expr::Alias(_)) => e,
                    (true, e) => e.alias(name),
                    (false, e) => e,
                })
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        if !changed {
            return Ok(Transformed::no(node));
        }
        let inputs = node.inputs().into_iter().cloned().collect();
        Ok(Transformed::yes(node.with_new_exprs(exprs, inputs)?))
    })?;
    Ok(replaced.data)
}

/// The expression a column stands for, followed down through projections, aliases and filters
/// (so `window(time, ...) AS w` in a subquery is found from `GROUP BY w`).
fn origin(expr: Expr, plan: &LogicalPlan) -> Expr {
    let Expr::Column(column) = &expr else {
        return expr;
    };
    match plan {
        LogicalPlan::Projection(projection) => {
            let found = projection
                .schema
                .iter()
                .zip(&projection.expr)
                .find(|((_, field), _)| field.name() == &column.name)
                .map(|(_, e)| e.clone().unalias());
            match found {
                Some(e) => origin(e, &projection.input),
                None => expr,
            }
        }
        LogicalPlan::SubqueryAlias(alias) => origin(Expr::Column(Column::new_unqualified(&column.name)), &alias.input),
        LogicalPlan::Filter(filter) => origin(expr, &filter.input),
        // An unnested column stands for the list it came from (sliding windows).
        LogicalPlan::Unnest(unnest) => origin(expr, &unnest.input),
        _ => expr,
    }
}

/// The partial stage of DataFusion's plan of an aggregation: its `Partial` aggregate, or a
/// `Single` one turned into a partial one.
pub(crate) fn partial_of(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let mut node = plan;
    loop {
        if let Some(exec) = node.downcast_ref::<AggregateExec>() {
            match exec.mode() {
                AggregateMode::Partial => return Ok(node),
                AggregateMode::Single | AggregateMode::SinglePartitioned => {
                    let partial = AggregateExec::try_new(
                        AggregateMode::Partial,
                        exec.group_expr().clone(),
                        exec.aggr_expr().to_vec(),
                        exec.filter_expr().to_vec(),
                        Arc::clone(exec.input()),
                        exec.input_schema(),
                    )?;
                    return Ok(Arc::new(partial));
                }
                _ => {}
            }
        }
        let children = node.children();
        match children.as_slice() {
            [child] => node = Arc::clone(child),
            _ => {
                return Err(Error::Internal(
                    "no partial aggregation in the plan of an aggregation".into(),
                ));
            }
        }
    }
}
