//! An aggregation over a stream as a stateful operator.
//!
//! The operator's input segment is the aggregation itself with one hidden `count(1)` added,
//! planned by DataFusion and cut just above its partial stage, so the per-batch work is
//! DataFusion's own partial aggregation; the hidden count tells how many input rows a late group
//! row stood for. The [`StatefulAggregate`] (or, for session windows, [`SessionAggregate`])
//! merges those partial states across batches.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, ScalarUDF, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};

use super::{OperatorPlan, watermarked_columns};
use crate::error::{Error, Result};
use crate::operator::{EventTimeKey, SessionAggregate, Sharded, StatefulAggregate, StatefulOperator};
use crate::sink::OutputMode;
use crate::sql::window::SessionPiece;

/// Name of the hidden row count added to a streaming aggregation.
const ROW_COUNT: &str = "__tidewater_rows";

/// The stateful part of a streaming aggregation.
#[derive(Debug)]
pub(crate) struct AggregatePlan {
    key_count: usize,
    /// The aggregation's output schema (keys, then values), as the plan after it reads it.
    output_schema: SchemaRef,
    event_time: Option<EventTimeKey>,
    /// Position of the `session_window` key, for a session-window aggregation.
    session: Option<usize>,
    /// The event-time key is a window over processing time (`window(current_timestamp(), ...)`):
    /// its watermark is the batch's time.
    processing_time: bool,
    /// Some grouping key is a GROUPING SET, ROLLUP or CUBE.
    grouping_sets: bool,
}

impl OperatorPlan for AggregatePlan {
    /// A fresh operator; `partial` is its input segment (a partial `AggregateExec`).
    fn new_operator(&self, inputs: &[Arc<dyn ExecutionPlan>], shards: usize) -> Result<Sharded> {
        let [partial] = inputs else {
            return Err(Error::Internal(format!("{} inputs for an aggregation", inputs.len())));
        };
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
        Ok(Sharded::new(operators, vec![key_columns]))
    }

    fn describe(&self) -> String {
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

    fn progress_name(&self) -> &'static str {
        "stateStoreSave"
    }

    /// The shape of the state, given the partial aggregation's schema.
    fn shape(&self, inputs: &[SchemaRef]) -> Vec<(String, Vec<String>)> {
        let Some(partial) = inputs.first() else {
            return Vec::new();
        };
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

    fn partial_input(&self) -> bool {
        true
    }

    fn has_event_time(&self) -> bool {
        self.event_time.is_some()
    }

    fn has_processing_time(&self) -> bool {
        self.processing_time
    }

    fn check_mode(&self, mode: OutputMode, last: bool) -> Result<()> {
        if self.grouping_sets {
            return Err(Error::plan(
                "GROUPING SETS, ROLLUP and CUBE over a stream are not supported",
            ));
        }
        if !last && self.event_time.is_none() {
            return Err(Error::plan(
                "an aggregation that feeds another stateful operator must emit each group once, when it is \
                 final, so it needs an event-time window with a watermark: group by window(<time column>, ...) \
                 on a stream that declares WATERMARK FOR <time column>",
            ));
        }
        if last && mode == OutputMode::Append && self.event_time.is_none() {
            return Err(Error::plan(
                "output mode 'append' emits each group once, when it is final, so it needs an event-time window \
                 with a watermark: group by window(<time column>, ...) on a stream that declares WATERMARK FOR \
                 <time column>, or by window(current_timestamp(), ...) over processing time; or use output_mode \
                 'update' or 'complete'",
            ));
        }
        Ok(())
    }

    fn keys(&self) -> Vec<usize> {
        (0..self.key_count).collect()
    }

    fn session(&self) -> Option<usize> {
        self.session
    }

    /// A window or time key downstream of the aggregation still carries event time: the rows the
    /// aggregation emits in append mode are those the watermark has closed.
    fn watermarked(&self) -> Vec<usize> {
        match self.event_time {
            Some(EventTimeKey::Window(i) | EventTimeKey::Time(i)) if !self.processing_time => vec![i],
            _ => Vec::new(),
        }
    }
}

/// The aggregation `aggregate` (over a stream) as an operator: its input segment's logical plan
/// (the aggregation with its hidden row count) and its plan.
pub(crate) fn cut(aggregate: &Aggregate) -> Result<(Vec<LogicalPlan>, Box<dyn OperatorPlan>)> {
    let (event_time, session, processing_time) = event_time_key(aggregate);
    let mut aggr_expr = aggregate.aggr_expr.clone();
    // Counting a literal no query would count keeps DataFusion from merging this aggregate with
    // an equal one of the user's.
    aggr_expr.push(count(lit(ROW_COUNT)).alias(ROW_COUNT));
    let mut input = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?);
    if session.is_some() {
        input = session_pieces(input)?;
    }
    let plan = AggregatePlan {
        key_count: aggregate.group_expr.len(),
        output_schema: Arc::new(aggregate.schema.as_arrow().clone()),
        event_time,
        session,
        processing_time,
        grouping_sets: aggregate.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))),
    };
    Ok((vec![input], Box::new(plan)))
}

/// Which grouping key carries event time: a `window(col, ...)`, a `session_window(col, ...)` or
/// `col` itself, where `col` is a stream's watermark column, or a `window(current_timestamp(),
/// ...)` over processing time (the third value); and which key is a session window, watermark or
/// not.
fn event_time_key(aggregate: &Aggregate) -> (Option<EventTimeKey>, Option<usize>, bool) {
    let watermarked = watermarked_columns(&aggregate.input);
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
                // The event time of an earlier window aggregation's windows (chained windows).
                Some(Expr::ScalarFunction(time)) if time.func.name() == "window_time" => {
                    match time.args.first().map(|a| origin(a.clone().unalias(), &aggregate.input)) {
                        Some(Expr::Column(c)) if watermarked.contains(&c.name) => Some(EventTimeKey::Window(i)),
                        _ => None,
                    }
                }
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
