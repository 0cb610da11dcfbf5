//! A join of two streams as a stateful operator (Spark's stream-stream join).
//!
//! # Background
//! Both sides are buffered in state, keyed by the join's equality keys; each batch joins the new
//! rows of each side with what the other side holds, then keeps them. A row can leave the state
//! once no row of the other side that could still come can match it. That takes a watermark on
//! both sides and a time range between them in the join condition, such as
//! `c.time BETWEEN i.time AND i.time + INTERVAL '1' HOUR`: with `right.time - left.time` within
//! `[a, b]` and rows at or before the watermark `W` late (dropped), a left row at `l` can meet
//! no new right row once `l + b <= W`, and a right row at `r` no new left row once `r - a <= W`.
//! That is when an outer join emits a row that never matched, with nulls for the other side.
//!
//! The conditions are found in the join's `ON` clause: equalities between an expression of each
//! side are the keys; comparisons (`<`, `<=`, `>`, `>=`, `BETWEEN`) between the watermarked time
//! columns of the two sides, each plus or minus a constant interval, give the range. The whole
//! condition is still evaluated on every pair of rows with equal keys.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Cast, Expr, ExprSchemable, Join, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorPlan, watermarked_columns};
use crate::error::{Error, Result};
use crate::operator::join::{JoinKind, JoinSpec, StreamJoin};
use crate::operator::{Sharded, StatefulOperator};
use crate::sink::OutputMode;

/// The plan of one stream-stream join.
#[derive(Debug)]
pub(crate) struct JoinPlan {
    spec: Arc<JoinSpec>,
    /// The names of the two sides, for messages.
    sides: [String; 2],
    /// The equality keys, as text.
    keys: Vec<String>,
}

impl OperatorPlan for JoinPlan {
    fn new_operator(&self, inputs: &[Arc<dyn ExecutionPlan>], shards: usize) -> Result<Sharded> {
        if inputs.len() != 2 {
            return Err(Error::Internal(format!("{} inputs for a join", inputs.len())));
        }
        let operators = (0..shards.max(1))
            .map(|_| -> Result<Box<dyn StatefulOperator>> {
                Ok(Box::new(StreamJoin::try_new(Arc::clone(&self.spec))?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sharded::new(operators, self.spec.keys.to_vec()))
    }

    fn describe(&self) -> String {
        let spec = &self.spec;
        let kind = match spec.kind {
            JoinKind::Inner => "inner",
            JoinKind::Left => "left outer",
            JoinKind::Right => "right outer",
            JoinKind::Full => "full outer",
            JoinKind::LeftSemi => "left semi",
        };
        let range = match spec.range {
            (Some(a), Some(b)) => format!(", time range: right - left in [{}, {}]", show(a), show(b)),
            (Some(a), None) => format!(", time range: right - left >= {}", show(a)),
            (None, Some(b)) => format!(", time range: right - left <= {}", show(b)),
            (None, None) => String::new(),
        };
        let state = match self.unbounded() {
            Some(side) => format!(", state of {side} grows without end"),
            None => ", state bounded by the watermark".to_string(),
        };
        format!(
            "StreamJoin: {kind} join of {} and {} on [{}]{range}{state}",
            self.sides[0],
            self.sides[1],
            self.keys.join(", ")
        )
    }

    fn progress_name(&self) -> &'static str {
        "symmetricHashJoin"
    }

    fn shape(&self, inputs: &[SchemaRef]) -> Vec<(String, Vec<String>)> {
        let describe = |schema: &SchemaRef| {
            schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
        };
        let mut facts: Vec<(String, Vec<String>)> = inputs
            .iter()
            .enumerate()
            .map(|(side, schema)| (format!("the columns of side {}", side + 1), describe(schema)))
            .collect();
        facts.push(("the stateful operator".to_string(), vec![self.describe()]));
        facts
    }

    fn partial_input(&self) -> bool {
        false
    }

    fn has_event_time(&self) -> bool {
        self.spec.times.iter().any(Option::is_some)
    }

    fn check_mode(&self, mode: OutputMode, last: bool) -> Result<()> {
        match (last, mode) {
            (true, OutputMode::Complete) => {
                return Err(Error::plan(
                    "output mode 'complete' needs an aggregation: a join of two streams emits each joined row \
                     once; use output_mode 'append', or aggregate the joined rows",
                ));
            }
            // As in Spark: a join's rows are final when emitted, which is what append mode says.
            (true, OutputMode::Update) => {
                return Err(Error::plan(
                    "a join of two streams emits its rows once, when they are final: use output_mode 'append' \
                     (or aggregate the joined rows, in any mode)",
                ));
            }
            _ => {}
        }
        let needs = match self.spec.kind {
            JoinKind::Left => Some((0, "left outer")),
            JoinKind::Right => Some((1, "right outer")),
            JoinKind::Full => [0, 1]
                .into_iter()
                .find(|s| !self.evictable(*s))
                .map(|s| (s, "full outer")),
            JoinKind::Inner | JoinKind::LeftSemi => None,
        };
        if let Some((side, kind)) = needs
            && !self.evictable(side)
        {
            return Err(Error::plan(format!(
                "a {kind} join of two streams emits a row of {} that found no match once no match can come any \
                 more, which needs a watermark on both streams and a time range between them in the join \
                 condition, such as AND right.time BETWEEN left.time AND left.time + INTERVAL '1' HOUR",
                self.sides[side]
            )));
        }
        Ok(())
    }

    fn keys(&self) -> Vec<usize> {
        Vec::new()
    }

    fn watermarked(&self) -> Vec<usize> {
        let spec = &self.spec;
        let mut columns = Vec::new();
        if let Some(t) = spec.times[0] {
            columns.push(t);
        }
        if let (Some(t), false) = (spec.times[1], spec.kind == JoinKind::LeftSemi) {
            columns.push(spec.widths[0] + t);
        }
        columns
    }
}

impl JoinPlan {
    /// Whether rows of `side` leave the state once the watermark passes them.
    fn evictable(&self, side: usize) -> bool {
        let spec = &self.spec;
        let bound = match side {
            0 => spec.range.1,
            _ => spec.range.0,
        };
        spec.times[0].is_some() && spec.times[1].is_some() && bound.is_some()
    }

    /// The side whose state grows without end, if one does.
    fn unbounded(&self) -> Option<&str> {
        (0..2).find(|s| !self.evictable(*s)).map(|s| self.sides[s].as_str())
    }
}

fn show(nanos: i64) -> String {
    let text = crate::time::describe_duration(std::time::Duration::from_nanos(nanos.unsigned_abs()));
    if nanos < 0 { format!("-{text}") } else { text }
}

/// The join `join` of two streams as an operator: its two input segments' logical plans (each
/// side's columns followed by its keys) and its plan.
pub(crate) fn cut(join: &Join) -> Result<(Vec<LogicalPlan>, Box<dyn OperatorPlan>)> {
    let kind = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Right => JoinKind::Right,
        JoinType::Full => JoinKind::Full,
        JoinType::LeftSemi => JoinKind::LeftSemi,
        other => {
            let kind = match other {
                JoinType::LeftAnti => "left anti join (as EXCEPT and NOT EXISTS are)",
                JoinType::RightAnti => "right anti join",
                JoinType::RightSemi => "right semi join",
                _ => "mark join (as IN and EXISTS are)",
            };
            return Err(Error::plan(format!(
                "a {kind} of two streams is not supported: joins of two streams are inner, left, right or full \
                 outer, or left semi joins"
            )));
        }
    };
    let (left, right) = (join.left.schema(), join.right.schema());
    // The conditions: equalities between the sides are keys; the rest is the filter.
    let mut keys: Vec<(Expr, Expr)> = join.on.clone();
    let mut rest = Vec::new();
    for condition in join.filter.iter().flat_map(split_conjunction) {
        match condition {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op: Operator::Eq,
                right: b,
            }) => match (side_of(a, left, right), side_of(b, left, right)) {
                (Some(0), Some(1)) => keys.push((a.as_ref().clone(), b.as_ref().clone())),
                (Some(1), Some(0)) => keys.push((b.as_ref().clone(), a.as_ref().clone())),
                _ => rest.push(condition.clone()),
            },
            other => rest.push(other.clone()),
        }
    }
    let names = [side_name(&join.left), side_name(&join.right)];
    if keys.is_empty() {
        return Err(Error::plan(format!(
            "a join of two streams ({} and {}) needs at least one equality between a column of each, such as \
             ON a.id = b.id, to find the rows that can match",
            names[0], names[1]
        )));
    }
    let watermarked = [watermarked_columns(&join.left), watermarked_columns(&join.right)];
    let (range, time_columns) = time_range(&rest, left, right, &watermarked);
    let times = [
        time_columns[0]
            .as_ref()
            .and_then(|c| left.index_of_column_by_name(None, c)),
        time_columns[1]
            .as_ref()
            .and_then(|c| right.index_of_column_by_name(None, c)),
    ];

    // Each side's segment: its columns, then its keys (the right's cast to the left's types).
    let mut inputs = Vec::with_capacity(2);
    let mut key_positions = [Vec::new(), Vec::new()];
    for (side, (plan, schema)) in [(&join.left, left), (&join.right, right)].into_iter().enumerate() {
        let mut exprs: Vec<Expr> = schema.columns().into_iter().map(Expr::Column).collect();
        let width = exprs.len();
        for (i, (l, r)) in keys.iter().enumerate() {
            let key = match side {
                0 => l.clone(),
                _ => {
                    let wanted = l.get_type(left)?;
                    match r.get_type(right)? == wanted {
                        true => r.clone(),
                        false => Expr::Cast(Cast::new(Box::new(r.clone()), wanted)),
                    }
                }
            };
            exprs.push(key.alias(format!("__tidewater_key_{i}")));
            key_positions[side].push(width + i);
        }
        inputs.push(
            LogicalPlanBuilder::from(plan.as_ref().clone())
                .project(exprs)?
                .build()?,
        );
    }
    let widths = [left.fields().len(), right.fields().len()];
    let joined = left.join(right)?;
    let filter = conjunction(rest)
        .map(|f| create_physical_expr(&f, &joined, &ExecutionProps::new(), &PhysicalPlanningContext::default()))
        .transpose()?;
    let spec = JoinSpec {
        kind,
        widths,
        keys: key_positions,
        times,
        range,
        filter,
        joined_schema: Arc::new(joined.as_arrow().clone()),
        output_schema: Arc::new(join.schema.as_arrow().clone()),
        input_schemas: [
            Arc::new(inputs[0].schema().as_arrow().clone()),
            Arc::new(inputs[1].schema().as_arrow().clone()),
        ],
    };
    let plan = JoinPlan {
        spec: Arc::new(spec),
        sides: names,
        keys: keys.iter().map(|(l, r)| format!("{l} = {r}")).collect(),
    };
    if let Some(side) = plan.unbounded() {
        tracing::warn!(
            join = %plan.describe(),
            "the join keeps every row of {side} for good: its state grows with the streams. Give both streams a \
             watermark and the join condition a time range between them to bound it"
        );
    }
    Ok((inputs, Box::new(plan)))
}

/// The name of a side for messages: the stream or alias it reads.
fn side_name(plan: &LogicalPlan) -> String {
    let mut name = None;
    let _ = plan.apply(|node| {
        name = match node {
            LogicalPlan::SubqueryAlias(alias) => Some(alias.alias.to_string()),
            LogicalPlan::TableScan(scan) => Some(scan.table_name.to_string()),
            _ => None,
        };
        Ok(match name {
            Some(_) => TreeNodeRecursion::Stop,
            None => TreeNodeRecursion::Continue,
        })
    });
    name.unwrap_or_else(|| "a stream".to_string())
}

/// Which side's columns an expression reads: 0 (left), 1 (right), or `None` for both or neither.
fn side_of(expr: &Expr, left: &DFSchema, right: &DFSchema) -> Option<usize> {
    let columns = expr.column_refs();
    if columns.is_empty() {
        return None;
    }
    if columns.iter().all(|c| left.has_column(c)) {
        Some(0)
    } else if columns.iter().all(|c| right.has_column(c)) {
        Some(1)
    } else {
        None
    }
}

/// Bounds `[a, b]` on `right.time - left.time`, in nanoseconds; `None` where unbounded.
type Range = (Option<i64>, Option<i64>);

/// `right.time - left.time` bounds `[a, b]` (nanoseconds) that `conditions` give between
/// watermarked time columns of the two sides, and those columns.
fn time_range(
    conditions: &[Expr],
    left: &DFSchema,
    right: &DFSchema,
    watermarked: &[std::collections::HashSet<String>; 2],
) -> (Range, [Option<String>; 2]) {
    let mut range: Range = (None, None);
    let mut columns: [Option<String>; 2] = [None, None];
    // A time column of a side plus a constant: (side, column, nanoseconds).
    let term = |expr: &Expr| -> Option<(usize, String, i64)> {
        let (column, offset) = match expr {
            Expr::Column(c) => (c, 0),
            Expr::BinaryExpr(BinaryExpr { left: c, op, right: v }) => {
                let (Expr::Column(c), Expr::Literal(v, _)) = (c.as_ref(), v.as_ref()) else {
                    return None;
                };
                let nanos = interval_nanos(v)?;
                match op {
                    Operator::Plus => (c, nanos),
                    Operator::Minus => (c, nanos.checked_neg()?),
                    _ => return None,
                }
            }
            _ => return None,
        };
        let side = side_of(&Expr::Column(column.clone()), left, right)?;
        watermarked[side]
            .contains(&column.name)
            .then(|| (side, column.name.clone(), offset))
    };
    // `x op y` with x, y terms of different sides, as bounds on right - left.
    let mut bound = |x: &Expr, op: Operator, y: &Expr| {
        let (Some((sx, cx, ox)), Some((sy, cy, oy))) = (term(x), term(y)) else {
            return;
        };
        if sx == sy {
            return;
        }
        // x + ox op y + oy, as right - left op value.
        let (op, value) = match sx {
            1 => (op, oy.checked_sub(ox)),
            _ => (op.swap().unwrap_or(op), ox.checked_sub(oy)),
        };
        let Some(value) = value else {
            return;
        };
        match op {
            Operator::GtEq | Operator::Gt => range.0 = Some(range.0.map_or(value, |a| a.max(value))),
            Operator::LtEq | Operator::Lt => range.1 = Some(range.1.map_or(value, |b| b.min(value))),
            _ => return,
        }
        let (l, r) = if sx == 0 { (cx, cy) } else { (cy, cx) };
        columns[0].get_or_insert(l);
        columns[1].get_or_insert(r);
    };
    for condition in conditions {
        match condition {
            Expr::BinaryExpr(BinaryExpr { left: x, op, right: y }) => bound(x, *op, y),
            Expr::Between(between) if !between.negated => {
                bound(&between.expr, Operator::GtEq, &between.low);
                bound(&between.expr, Operator::LtEq, &between.high);
            }
            _ => {}
        }
    }
    (range, columns)
}

/// A constant interval in nanoseconds; `None` for anything else (months, whose length varies).
fn interval_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalDayTime(Some(_)) => {
            crate::sql::window::duration_nanos(value, "the join's time range").ok()
        }
        _ => None,
    }
}
