//! Session windows on static tables.
//!
//! On a stream, the session operator merges sessions as rows arrive. On a static table the whole
//! input is there, so an analyzer rule computes sessions with window functions instead: per key,
//! ordered by time, a row starts a new session when it comes after the end (`time + gap`)
//! of every earlier row; a running sum of those starts numbers the sessions; the aggregation
//! groups by that number and rebuilds `{start, end}` from the first and last time. The same SQL
//! thus gives the same answer on both.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::functions::core::expr_fn::named_struct;
use datafusion::functions_aggregate::expr_fn::{max, min};
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprFunctionExt, ExprSchemable, LogicalPlan, LogicalPlanBuilder, WindowFrame, WindowFrameBound,
    WindowFrameUnits, col, lit, when,
};
use datafusion::optimizer::AnalyzerRule;

use super::window::{duration_nanos, whole_units};
use crate::planner::contains_stream;

const PREVIOUS_END: &str = "__tidewater_previous_end";
const STARTS: &str = "__tidewater_starts_session";
const SESSION: &str = "__tidewater_session";
const FIRST: &str = "__tidewater_session_first";
const LAST: &str = "__tidewater_session_last";

/// The analyzer rule. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct StaticSessionWindows;

impl AnalyzerRule for StaticSessionWindows {
    fn name(&self) -> &str {
        "tidewater_static_session_windows"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::Aggregate(aggregate) if !contains_stream(&aggregate.input) => rewrite(aggregate),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }
}

fn rewrite(aggregate: Aggregate) -> Result<Transformed<LogicalPlan>> {
    let found = aggregate
        .group_expr
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e.clone().unalias() {
            Expr::ScalarFunction(f) if f.func.name() == "session_window" && f.args.len() == 2 => Some((i, f.args)),
            _ => None,
        });
    let Some((index, args)) = found else {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    };
    let Expr::Literal(gap, _) = &args[1] else {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    };
    let gap = duration_nanos(gap, "the gap")?;
    let time = args[0].clone();
    // As in a stream: a gap of no whole number of the column's units is refused, not cut.
    if let Ok(DataType::Timestamp(unit, _)) = time.get_type(aggregate.input.schema()) {
        whole_units(gap, &unit, "session_window(): the gap")?;
    }
    let gap = lit(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
        0, 0, gap,
    ))));
    let keys: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, e)| e.clone().unalias())
        .collect();
    let by_time = vec![time.clone().sort(true, false)];
    let unbounded = WindowFrameBound::Preceding(ScalarValue::UInt64(None));

    let previous_end = Expr::from(WindowFunction::new(max_udaf(), vec![time.clone() + gap.clone()]))
        .partition_by(keys.clone())
        .order_by(by_time.clone())
        .window_frame(WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            unbounded.clone(),
            WindowFrameBound::Preceding(ScalarValue::UInt64(Some(1))),
        ))
        .build()?
        .alias(PREVIOUS_END);
    let input = LogicalPlanBuilder::from(Arc::unwrap_or_clone(aggregate.input))
        .window(vec![previous_end])?
        .build()?;
    let starts = when(
        col(PREVIOUS_END).is_null().or(time.clone().gt(col(PREVIOUS_END))),
        lit(1i64),
    )
    .otherwise(lit(0i64))?
    .alias(STARTS);
    let mut columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
    columns.push(starts);
    let session = Expr::from(WindowFunction::new(sum_udaf(), vec![col(STARTS)]))
        .partition_by(keys)
        .order_by(by_time)
        .window_frame(WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            unbounded,
            WindowFrameBound::CurrentRow,
        ))
        .build()?
        .alias(SESSION);
    let input = LogicalPlanBuilder::from(input)
        .project(columns)?
        .window(vec![session])?
        .build()?;

    let mut group_expr = aggregate.group_expr.clone();
    group_expr[index] = col(SESSION);
    let mut aggr_expr = aggregate.aggr_expr.clone();
    aggr_expr.push(min(time.clone()).alias(FIRST));
    aggr_expr.push(max(time).alias(LAST));
    let grouped = LogicalPlanBuilder::from(input)
        .aggregate(group_expr, aggr_expr)?
        .build()?;
    // The original columns, in order, with the session number turned back into {start, end}.
    let output: Vec<Expr> = aggregate
        .schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            if i == index {
                named_struct(vec![lit("start"), col(FIRST), lit("end"), col(LAST) + gap.clone()]).alias(field.name())
            } else {
                Expr::Column(Column::new(qualifier.cloned(), field.name()))
            }
        })
        .collect();
    Ok(Transformed::yes(
        LogicalPlanBuilder::from(grouped).project(output)?.build()?,
    ))
}
