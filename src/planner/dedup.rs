//! Deduplication over a stream as a stateful operator: `SELECT DISTINCT` and
//! `SELECT DISTINCT ON (keys) ...`.
//!
//! A row passes the first time its key is seen and never again, as Spark's `dropDuplicates`: the
//! operator keeps the keys seen. `SELECT DISTINCT` keys on every selected column; `DISTINCT ON
//! (keys)` keeps the first row of each key to arrive (on a stream there is no ORDER BY to choose
//! another). When a key column carries event time under a watermark, keys are kept by that time
//! and forgotten once the watermark passes it, so state stays bounded; rows whose time the
//! watermark has already passed are late, dropped and counted.
//!
//! `DISTINCT ON (keys, within_watermark(time))` is Spark's `dropDuplicatesWithinWatermark`: the
//! keys do not hold the time, and a key is kept from its first row until the watermark passes
//! that row's time plus the stream's watermark delay. On a static table `within_watermark()` is
//! a constant, so the query is `DISTINCT ON (keys)`.
//!
//! The input segment computes the selected columns followed by the key columns; the operator
//! emits the selected ones.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorPlan, watermark_delay, watermarked_columns};
use crate::error::{Error, Result};
use crate::operator::{DedupTime, Deduplicate, Sharded, StatefulOperator};
use crate::sink::OutputMode;

/// The state and output of one deduplication.
#[derive(Debug)]
pub(crate) struct DedupPlan {
    /// The input columns that are the key.
    keys: Vec<usize>,
    /// Where rows take their time from, if they have one.
    time: Option<DedupTime>,
    /// How many leading input columns are the output.
    width: usize,
    /// Names of the output columns, for EXPLAIN.
    output_names: Vec<String>,
    /// The output columns that carry event time under a watermark.
    watermarked: Vec<usize>,
}

impl OperatorPlan for DedupPlan {
    fn new_operator(&self, inputs: &[Arc<dyn ExecutionPlan>], shards: usize) -> Result<Sharded> {
        let [input] = inputs else {
            return Err(Error::Internal(format!("{} inputs for a deduplication", inputs.len())));
        };
        let schema = input.schema();
        let operators = (0..shards.max(1))
            .map(|_| -> Result<Box<dyn StatefulOperator>> {
                Ok(Box::new(Deduplicate::try_new(
                    &schema,
                    self.keys.clone(),
                    self.time,
                    self.width,
                )?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sharded::new(operators, vec![self.keys.clone()]))
    }

    fn describe(&self) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| match self.output_names.get(*k) {
                Some(name) => name.clone(),
                None => format!("key {}", k - self.width + 1),
            })
            .collect();
        let event_time = match self.time {
            Some(DedupTime::Key(i)) => format!(", event time: {} (with watermark)", keys[i]),
            Some(DedupTime::Within { delay, .. }) => format!(
                ", within the watermark: a key is kept until the watermark passes its first time + {}",
                crate::time::describe_duration(std::time::Duration::from_nanos(delay.unsigned_abs()))
            ),
            None => ", no watermarked key (state grows with every new key)".to_string(),
        };
        let columns = match self.keys == (0..self.width).collect::<Vec<_>>() {
            true => String::new(),
            false => format!(", columns [{}]", self.output_names.join(", ")),
        };
        format!("Deduplicate: keys [{}]{columns}{event_time}", keys.join(", "))
    }

    fn progress_name(&self) -> &'static str {
        "dedupe"
    }

    fn shape(&self, inputs: &[SchemaRef]) -> Vec<(String, Vec<String>)> {
        let Some(input) = inputs.first() else {
            return Vec::new();
        };
        let keys = self
            .keys
            .iter()
            .map(|k| format!("{} {}", input.field(*k).name(), input.field(*k).data_type()))
            .collect();
        vec![
            ("the deduplication keys".to_string(), keys),
            ("the stateful operator".to_string(), vec![self.describe()]),
        ]
    }

    fn partial_input(&self) -> bool {
        false
    }

    fn has_event_time(&self) -> bool {
        self.time.is_some()
    }

    fn check_mode(&self, mode: OutputMode, last: bool) -> Result<()> {
        if last && mode == OutputMode::Complete {
            return Err(Error::plan(
                "output mode 'complete' needs an aggregation: SELECT DISTINCT over a stream emits each new row \
                 once; use output_mode 'append' (or 'update'), or count the rows with GROUP BY",
            ));
        }
        Ok(())
    }

    fn keys(&self) -> Vec<usize> {
        self.keys.iter().copied().filter(|k| *k < self.width).collect()
    }

    fn watermarked(&self) -> Vec<usize> {
        self.watermarked.clone()
    }
}

/// The deduplication `distinct` (over a stream) as an operator: its input segment's logical plan
/// and its plan.
pub(crate) fn cut(distinct: &Distinct) -> Result<(Vec<LogicalPlan>, Box<dyn OperatorPlan>)> {
    let watermarked = watermarked_columns(distinct.input());
    let mut within: Option<(usize, i64)> = None;
    let (input, keys, width) = match distinct {
        Distinct::All(input) => {
            let width = input.schema().fields().len();
            (input.as_ref().clone(), (0..width).collect::<Vec<_>>(), width)
        }
        Distinct::On(on) => {
            if on.sort_expr.is_some() {
                return Err(Error::plan(
                    "DISTINCT ON ... ORDER BY over a stream is not supported: a stream keeps the first row of \
                     each key to arrive; leave out the ORDER BY",
                ));
            }
            // The selected columns under their names, then the keys (a within_watermark() marker's
            // time among them).
            let width = on.select_expr.len();
            let mut exprs: Vec<Expr> = on
                .schema
                .iter()
                .zip(&on.select_expr)
                .map(|((qualifier, field), e)| e.clone().alias_qualified(qualifier.cloned(), field.name()))
                .collect();
            let mut keys = Vec::new();
            for (i, e) in on.on_expr.iter().enumerate() {
                let position = width + i;
                match within_watermark(e) {
                    Some(time) => {
                        let Expr::Column(column) = time else {
                            return Err(within_error());
                        };
                        let delay = watermark_delay(&on.input, &column.name).ok_or_else(within_error)?;
                        within = Some((position, delay));
                        exprs.push(time.clone().alias(format!("__tidewater_key_{i}")));
                    }
                    None => {
                        keys.push(position);
                        exprs.push(e.clone().alias(format!("__tidewater_key_{i}")));
                    }
                }
            }
            let input = LogicalPlanBuilder::from(on.input.as_ref().clone())
                .project(exprs)?
                .build()?;
            (input, keys, width)
        }
    };
    let schema = input.schema();
    let is_event_time = |i: usize| {
        let field = schema.field(i);
        matches!(field.data_type(), DataType::Timestamp(_, _)) && watermarked.contains(field.name())
    };
    // A key is event time when it is a watermarked column (for DISTINCT ON, when its expression is).
    let key_time = keys.iter().position(|k| match distinct {
        Distinct::On(on) => {
            matches!(&on.on_expr[k - width], Expr::Column(c) if watermarked.contains(&c.name))
                && matches!(schema.field(*k).data_type(), DataType::Timestamp(_, _))
        }
        Distinct::All(_) => is_event_time(*k),
    });
    let output_names = (0..width).map(|i| schema.field(i).name().clone()).collect();
    let watermarked = (0..width).filter(|i| is_event_time(*i)).collect();
    let time = match within {
        Some((column, delay)) => Some(DedupTime::Within { column, delay }),
        None => key_time.map(DedupTime::Key),
    };
    let plan = DedupPlan {
        keys,
        time,
        width,
        output_names,
        watermarked,
    };
    Ok((vec![input], Box::new(plan)))
}

/// The argument of a `within_watermark(...)` marker, if `expr` is one.
fn within_watermark(expr: &Expr) -> Option<&Expr> {
    match expr {
        Expr::ScalarFunction(f) if f.func.name() == "within_watermark" => f.args.first(),
        _ => None,
    }
}

fn within_error() -> Error {
    Error::plan(
        "within_watermark() takes the time column a stream declares its watermark on, such as \
         DISTINCT ON (id, within_watermark(time)) over a stream with WATERMARK FOR time AS ...",
    )
}
