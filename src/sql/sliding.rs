//! Sliding windows: `GROUP BY window(time, '1 hour', '5 minutes')` puts each row in every window
//! that contains it.
//!
//! A scalar function gives one value per row, so an analyzer rule rewrites such an aggregation the
//! way Spark expands it: below the aggregation, a projection adds `window_list(time, ...)` (all the
//! windows of the row) and an unnest makes one row per window; the aggregation then groups by that
//! column, under the original expression's name so everything above still finds it. The rule runs
//! for every query of the session, so the same SQL gives the same answer on static tables and
//! on streams.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF};
use datafusion::optimizer::AnalyzerRule;

use super::window::{WindowList, window_spec};

/// The column that holds one window per row below a rewritten aggregation.
pub(crate) const WINDOWS_COLUMN: &str = "__tidewater_window";

/// The analyzer rule. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct SlidingWindows;

impl AnalyzerRule for SlidingWindows {
    fn name(&self) -> &str {
        "tidewater_sliding_windows"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::Aggregate(aggregate) => {
                let Some(args) = find_sliding(&aggregate.group_expr) else {
                    return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
                };
                let input = expand(Arc::unwrap_or_clone(aggregate.input), args.clone())?;
                let group_expr = replace_all(aggregate.group_expr, &args)?;
                let rewritten = Aggregate::try_new(Arc::new(input), group_expr, aggregate.aggr_expr)?;
                Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
            }
            LogicalPlan::Projection(projection) => {
                let Some(args) = find_sliding(&projection.expr) else {
                    return Ok(Transformed::no(LogicalPlan::Projection(projection)));
                };
                let input = expand(Arc::unwrap_or_clone(projection.input), args.clone())?;
                let exprs = replace_all(projection.expr, &args)?;
                Ok(Transformed::yes(
                    LogicalPlanBuilder::from(input).project(exprs)?.build()?,
                ))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }
}

/// The arguments of the first `window(...)` in `exprs` whose slide is shorter than its width.
fn find_sliding(exprs: &[Expr]) -> Option<Vec<Expr>> {
    let mut found = None;
    for expr in exprs {
        let _ = expr.apply(|e| {
            if let Some(args) = sliding_args(e) {
                found = Some(args);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if found.is_some() {
            break;
        }
    }
    found
}

/// The arguments of `e` when it is `window(...)` with a slide shorter than its width.
fn sliding_args(e: &Expr) -> Option<Vec<Expr>> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    if f.func.name() != "window" {
        return None;
    }
    let constants: Vec<Option<datafusion::common::ScalarValue>> = f
        .args
        .iter()
        .map(|a| match a {
            Expr::Literal(v, _) => Some(v.clone()),
            _ => None,
        })
        .collect();
    let refs: Vec<_> = constants.iter().map(Option::as_ref).collect();
    let spec = window_spec(&refs).ok()?;
    (spec.slide != spec.width).then(|| f.args.clone())
}

/// `input` with one row per (row, window containing it), the window in [`WINDOWS_COLUMN`].
fn expand(input: LogicalPlan, args: Vec<Expr>) -> Result<LogicalPlan> {
    let windows = ScalarUDF::new_from_impl(WindowList::new())
        .call(args)
        .alias(WINDOWS_COLUMN);
    let mut columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
    columns.push(windows);
    LogicalPlanBuilder::from(input)
        .project(columns)?
        .unnest_column(WINDOWS_COLUMN)?
        .build()
}

/// `exprs` with every `window(args)` replaced by the expanded window column, under the names
/// they had, so the plan above still finds them.
fn replace_all(exprs: Vec<Expr>, args: &[Expr]) -> Result<Vec<Expr>> {
    exprs
        .into_iter()
        .map(|expr| {
            let name = expr.schema_name().to_string();
            let replaced = expr.transform_up(|e| match sliding_args(&e) {
                Some(a) if a == args => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(WINDOWS_COLUMN)))),
                _ => Ok(Transformed::no(e)),
            })?;
            Ok(match (replaced.transformed, replaced.data) {
                (true, e @ Expr::Alias(_)) => e,
                (true, e) => e.alias(name),
                (false, e) => e,
            })
        })
        .collect()
}
