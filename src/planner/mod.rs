//! Incrementalization: from a query over streams to a plan that runs one batch at a time.
//!
//! # Background
//! A streaming query is planned by DataFusion once, when it starts, into ordinary physical plans
//! whose stream scans are placeholders ([`StreamScanExec`]). Each batch binds every placeholder to
//! the batch's rows and resets the other nodes, which gives bounded plans that DataFusion runs to
//! completion. Bounded per-batch plans keep us clear of DataFusion's open questions about
//! never-ending inputs, and planning stays out of the hot loop.
//!
//! A query is cut at its stateful operators (aggregations over a stream, session windows,
//! deduplication) into a chain: each operator has an id (its place in the chain, which names its
//! state folder), a [`Segment`] that computes its input from the batch's rows and from earlier
//! operators' output, and the query ends in the *post plan* over the last operator's output (the
//! whole query, when it is stateless). Every operator but the last emits in append mode, only
//! rows that are final, so the next one can take them as new input; the last emits in the
//! query's output mode.
//!
//! This module also decides what a query may do on a stream and in which output mode, and refuses
//! the rest when the query starts, saying why and what would work. It does no I/O.

pub(crate) mod aggregate;
pub(crate) mod dedup;
pub(crate) mod join;
pub(crate) mod scan;
pub(crate) mod segment;

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

pub(crate) use scan::{OperatorOutputTable, StreamScanExec, StreamTable};
pub(crate) use segment::{Leaf, Segment};

use crate::error::{Error, Result};
use crate::operator::Sharded;
use crate::sink::OutputMode;
use crate::source::Source;
use crate::sql::Watermark;

/// A streaming query's plan: made once, bound to new rows every batch.
#[derive(Debug)]
pub(crate) struct IncrementalPlan {
    scans: Vec<ScanSpec>,
    /// The stateful operators, in the order they run; an operator's id is its index.
    operators: Vec<Stage>,
    /// What feeds the sink: the post plan after the last operator, or the whole query.
    output: Segment,
}

/// What the planner knows of one kind of stateful operator.
pub(crate) trait OperatorPlan: std::fmt::Debug + Send + Sync {
    /// A fresh operator with `shards` shards; `inputs` are the plans of its input segments.
    fn new_operator(&self, inputs: &[Arc<dyn ExecutionPlan>], shards: usize) -> Result<Sharded>;

    /// One line on the operator: its kind, keys, values and event time.
    fn describe(&self) -> String;

    /// The operator's name in progress reports (Spark's `operatorName`).
    fn progress_name(&self) -> &'static str;

    /// The shape of its state, as named facts a checkpoint records and compares on restart;
    /// `inputs` are the schemas of its input segments.
    fn shape(&self, inputs: &[SchemaRef]) -> Vec<(String, Vec<String>)>;

    /// Whether its input segments end in DataFusion's partial aggregation.
    fn partial_input(&self) -> bool;

    /// Whether watermarks close what it holds (it has an event-time key).
    fn has_event_time(&self) -> bool;

    /// Whether the batch's time closes what it holds (windows over processing time).
    fn has_processing_time(&self) -> bool {
        false
    }

    /// Refuses an output mode the operator cannot emit in; `last` says whether its output goes to
    /// the post plan (in the query's mode) or to another operator (always append).
    fn check_mode(&self, mode: OutputMode, last: bool) -> Result<()>;

    /// The output columns that identify an output row (an aggregation's grouping keys).
    fn keys(&self) -> Vec<usize>;

    /// The output column that is a session window, whose rows an update may replace.
    fn session(&self) -> Option<usize> {
        None
    }

    /// The output columns (by position) that carry event time under a watermark downstream.
    fn watermarked(&self) -> Vec<usize>;
}

/// One stateful operator of a query, with the plans of its inputs (two for a join).
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) id: usize,
    pub(crate) inputs: Vec<Segment>,
    pub(crate) plan: Box<dyn OperatorPlan>,
    /// The mode it emits in: the query's for the last operator, append for the others.
    pub(crate) mode: OutputMode,
}

impl Stage {
    /// A fresh operator for this stage.
    pub(crate) fn new_operator(&self, shards: usize) -> Result<Sharded> {
        let inputs: Vec<_> = self.inputs.iter().map(|i| Arc::clone(&i.physical)).collect();
        self.plan.new_operator(&inputs, shards)
    }
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
        let (cut, output) = cut(&analyzed)?;
        check_chain(&cut, &output, mode)?;
        let count = cut.len();
        let mut operators = Vec::with_capacity(count);
        let mut scans = Vec::new();
        for (id, (logical, plan)) in cut.into_iter().enumerate() {
            let mut inputs = Vec::with_capacity(logical.len());
            for input in logical {
                let input = Segment::new(state, input, plan.partial_input(), scans.len()).await?;
                scans.extend(scan_specs(&input));
                inputs.push(input);
            }
            let mode = if id + 1 == count { mode } else { OutputMode::Append };
            operators.push(Stage { id, inputs, plan, mode });
        }
        let output = Segment::new(state, output, false, scans.len()).await?;
        scans.extend(scan_specs(&output));
        check_chained(&operators, &output)?;
        for stage in &operators {
            stage.plan.check_mode(mode, stage.id + 1 == count)?;
        }
        let plan = IncrementalPlan {
            scans: own_sources(scans)?,
            operators,
            output,
        };
        tracing::debug!(plan = %plan.explain("-"), "incremental plan");
        Ok(plan)
    }

    /// The stream scans, in the order the segments' [`Leaf::Scan`]s number them.
    pub(crate) fn scans(&self) -> &[ScanSpec] {
        &self.scans
    }

    /// The stateful operators, in the order they run.
    pub(crate) fn operators(&self) -> &[Stage] {
        &self.operators
    }

    /// The plan whose output goes to the sink.
    pub(crate) fn output(&self) -> &Segment {
        &self.output
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

    /// The shape of the query's state, as named facts a checkpoint records and compares when
    /// the query restarts: per operator, prefixed with its id; empty for a stateless query.
    pub(crate) fn state_shape(&self) -> Vec<(String, Vec<String>)> {
        self.operators
            .iter()
            .flat_map(|stage| {
                let inputs: Vec<SchemaRef> = stage.inputs.iter().map(|i| i.physical.schema()).collect();
                stage
                    .plan
                    .shape(&inputs)
                    .into_iter()
                    .map(move |(what, facts)| (format!("stateful operator {}: {what}", stage.id), facts))
            })
            .collect()
    }

    /// The plan as text: what runs over each batch, each stateful operator, and what runs after.
    pub(crate) fn explain(&self, state_partitions: &str) -> String {
        let mut text = String::new();
        for stage in &self.operators {
            for (side, input) in stage.inputs.iter().enumerate() {
                let reads_operator = input.leaves.iter().any(|l| matches!(l, Leaf::Operator(_)));
                let title = match (stage.inputs.len() > 1, reads_operator) {
                    (false, false) => "Batch plan".to_string(),
                    (false, true) => format!("Plan before stateful operator {}", stage.id),
                    (true, _) => format!("Input {} of stateful operator {}", side + 1, stage.id),
                };
                text.push_str(&format!("== {title} ==\n{}", input.display()));
            }
            text.push_str(&format!(
                "== Stateful operator {} ==\n{}, state partitions: {state_partitions}\n",
                stage.id,
                stage.plan.describe(),
            ));
        }
        let title = match self.operators.is_empty() {
            true => "== Batch plan ==",
            false => "== Post plan ==",
        };
        text.push_str(&format!("{title}\n{}", self.output.display()));
        text
    }

    /// The last operator, whose output the post plan reads.
    fn last(&self) -> Option<&Stage> {
        self.operators.last()
    }

    /// The output columns that are the last operator's keys (an aggregation's grouping keys), in
    /// output order: `Some` when every key reaches the output unchanged (perhaps renamed), `None`
    /// when one is dropped or only used inside an expression, or without stateful operators.
    pub(crate) fn output_keys(&self) -> Option<Vec<String>> {
        let last = self.last()?;
        let keys = last.plan.keys();
        let schema = self.output.physical.schema();
        let mut found = vec![false; keys.len()];
        let mut names = Vec::new();
        for (index, field) in schema.fields().iter().enumerate() {
            if let Some((id, column)) = self.output.operator_column(index)
                && id == last.id
                && let Some(key) = keys.iter().position(|k| *k == column)
            {
                found[key] = true;
                names.push(field.name().clone());
            }
        }
        found.iter().all(|f| *f).then_some(names)
    }

    /// The output column that is the last operator's session window, if it reaches the output
    /// unchanged.
    pub(crate) fn session_output(&self) -> Option<String> {
        let last = self.last()?;
        let session = last.plan.session()?;
        let schema = self.output.physical.schema();
        (0..schema.fields().len())
            .find(|index| self.output.operator_column(*index) == Some((last.id, session)))
            .map(|index| schema.field(index).name().clone())
    }

    /// The output schema of the whole query.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.output.physical.schema()
    }
}

/// The scans of a segment's stream leaves, left to right.
fn scan_specs(segment: &Segment) -> Vec<ScanSpec> {
    segment
        .scans()
        .into_iter()
        .filter_map(|scan| {
            let origin = scan.origin.as_ref()?;
            let watermark = origin.watermark.as_ref().and_then(|w| {
                let index = scan.properties().eq_properties.schema().index_of(&w.column).ok()?;
                Some((w.clone(), index))
            });
            Some(ScanSpec {
                source: origin.source.clone(),
                projection: scan.projection.clone(),
                watermark,
                idle_timeout: origin.idle_timeout,
            })
        })
        .collect()
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

/// The stateful operators found in a query, bottom up: each one's input plans and its plan.
type Operators = Vec<(Vec<LogicalPlan>, Box<dyn OperatorPlan>)>;

/// Cuts `analyzed` at every stateful node over a stream, bottom up: each becomes an operator
/// whose input is the plan below it, and a scan of the operator's output takes its place in the
/// plan above. Returns the operators and what is left above the last one.
fn cut(analyzed: &LogicalPlan) -> Result<(Operators, LogicalPlan)> {
    let mut operators: Operators = Vec::new();
    let output = analyzed.clone().transform_up(|node| {
        let id = operators.len();
        let found = match &node {
            LogicalPlan::Aggregate(aggregate) if contains_stream(&aggregate.input) => {
                Some(aggregate::cut(aggregate).map_err(Error::into_datafusion)?)
            }
            LogicalPlan::Distinct(distinct) if node.inputs().iter().any(|i| contains_stream(i)) => {
                Some(dedup::cut(distinct).map_err(Error::into_datafusion)?)
            }
            LogicalPlan::Join(join) if contains_stream(&join.left) && contains_stream(&join.right) => {
                Some(join::cut(join).map_err(Error::into_datafusion)?)
            }
            _ => None,
        };
        let Some((inputs, plan)) = found else {
            return Ok(Transformed::no(node));
        };
        let scan = output_scan(id, &node, plan.as_ref()).map_err(Error::into_datafusion)?;
        operators.push((inputs, plan));
        Ok(Transformed::yes(scan))
    })?;
    Ok((operators, output.data))
}

/// A scan of operator `id`'s output in place of `node`, under `node`'s column names and
/// qualifiers. The operator's table has plain positional names; a projection gives them back.
fn output_scan(id: usize, node: &LogicalPlan, plan: &dyn OperatorPlan) -> Result<LogicalPlan> {
    let name = format!("__tidewater_operator_{id}");
    let schema = node.schema();
    let positional = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
            .collect::<Vec<_>>(),
    ));
    // Under the names the query gives them and the table's own, which a column followed down
    // through the projections above ends at.
    let watermarked = plan
        .watermarked()
        .into_iter()
        .flat_map(|i| [schema.field(i).name().clone(), format!("c{i}")])
        .collect();
    let table: Arc<dyn TableProvider> = Arc::new(OperatorOutputTable {
        operator: id,
        schema: positional,
        watermarked,
    });
    let requalify: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(name.as_str()), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    Ok(
        LogicalPlanBuilder::scan(name.as_str(), provider_as_source(table), None)?
            .project(requalify)?
            .build()?,
    )
}

/// Checks a cut query: every segment is stateless, and ORDER BY / LIMIT come only after the last
/// operator, in complete mode. (Whether the output mode suits each operator is checked once the
/// segments show that the operators form a chain.)
fn check_chain(operators: &Operators, output: &LogicalPlan, mode: OutputMode) -> Result<()> {
    for (inputs, plan) in operators {
        for input in inputs {
            // An aggregation's input segment is the aggregation itself: what is below it is
            // stateless.
            let stateless = match plan.partial_input() {
                true => input.inputs(),
                false => vec![input],
            };
            for plan in stateless {
                check_stateless(plan)?;
            }
        }
    }
    if operators.is_empty() {
        check_stateless(output)?;
        if mode == OutputMode::Complete {
            return Err(Error::plan(
                "output mode 'complete' needs an aggregation: without one the result table is every \
                 row ever seen; use output_mode 'append' (or 'update')",
            ));
        }
        return Ok(());
    }
    let sorts = output.exists(|node| Ok(matches!(node, LogicalPlan::Sort(_) | LogicalPlan::Limit(_))))?;
    if sorts && mode != OutputMode::Complete {
        return Err(Error::plan(format!(
            "ORDER BY and LIMIT after a streaming aggregation need output mode 'complete' (the whole result \
             table each batch); in '{mode}' mode each batch emits only some rows, so there is nothing to sort"
        )));
    }
    check_stateless_but_sorts(output, mode == OutputMode::Complete)
}

/// Refuses stateful operators side by side: each operator's output must feed one later operator
/// (or, for the last, the post plan) and nothing else; only a join joins two branches.
fn check_chained(operators: &[Stage], output: &Segment) -> Result<()> {
    // Each segment with the id of the operator it feeds (the post plan's is past the last).
    let segments: Vec<(usize, &Segment)> = operators
        .iter()
        .flat_map(|s| s.inputs.iter().map(move |i| (s.id, i)))
        .chain([(operators.len(), output)])
        .collect();
    for stage in operators {
        let readers: Vec<usize> = segments
            .iter()
            .filter(|(_, segment)| segment.leaves.contains(&Leaf::Operator(stage.id)))
            .map(|(reader, _)| *reader)
            .collect();
        let reads = segments
            .iter()
            .flat_map(|(_, s)| &s.leaves)
            .filter(|l| **l == Leaf::Operator(stage.id))
            .count();
        let last = stage.id + 1 == operators.len();
        let fits = match readers[..] {
            [reader] => reader > stage.id && (reader == operators.len()) == last,
            _ => false,
        };
        if !fits || reads != 1 {
            return Err(Error::plan(
                "stateful operators side by side (such as a UNION or a join of two aggregations over streams) \
                 are not supported: a query's stateful operators form a chain, each reading the one before",
            ));
        }
    }
    Ok(())
}

/// The delay, in nanoseconds, of the watermark a stream under `plan` declares on `column`.
pub(crate) fn watermark_delay(plan: &LogicalPlan, column: &str) -> Option<i64> {
    let mut delay = None;
    let _ = plan.apply(|node| {
        if let Some(provider) = scanned_table(node)
            && let Some(table) = provider.downcast_ref::<StreamTable>()
            && let Some(w) = table.watermark.as_ref().filter(|w| w.column == column)
        {
            delay = Some(crate::time::duration_nanos(w.delay).unwrap_or(i64::MAX));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    delay
}

/// The columns of streams and operator outputs under `plan` that carry a watermark, by name.
pub(crate) fn watermarked_columns(plan: &LogicalPlan) -> HashSet<String> {
    let mut watermarked = HashSet::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            if let Some(table) = provider.downcast_ref::<StreamTable>()
                && let Some(w) = &table.watermark
            {
                watermarked.insert(w.column.clone());
            }
            if let Some(table) = provider.downcast_ref::<OperatorOutputTable>() {
                watermarked.extend(table.watermarked.iter().cloned());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    watermarked
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
pub(crate) fn scanned_table(node: &LogicalPlan) -> Option<Arc<dyn TableProvider>> {
    let LogicalPlan::TableScan(scan) = node else {
        return None;
    };
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<StreamTable>().is_some().then_some(provider)
}

/// The stream a table scan reads, if it reads one: a stream's name, or for the output of a
/// stateful operator (which is a stream to the plan above it), which operator's.
pub(crate) fn scanned_stream(node: &LogicalPlan) -> Option<String> {
    let LogicalPlan::TableScan(scan) = node else {
        return None;
    };
    let provider = source_as_provider(&scan.source).ok()?;
    if let Some(table) = provider.downcast_ref::<StreamTable>() {
        return Some(table.name.clone());
    }
    let output = provider.downcast_ref::<OperatorOutputTable>()?;
    Some(format!("the output of stateful operator {}", output.operator))
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
    check_stateless_but_sorts(plan, false)
}

/// [`check_stateless`], letting ORDER BY and LIMIT through when `sorts` (complete mode, after
/// an aggregation: each batch emits the whole result table).
fn check_stateless_but_sorts(plan: &LogicalPlan, sorts: bool) -> Result<()> {
    let mut problem = None;
    plan.apply(|node| {
        let streaming: Vec<bool> = node.inputs().iter().map(|i| contains_stream(i)).collect();
        let any = streaming.iter().any(|s| *s);
        problem = match node {
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) if any => {
                Some("this aggregation over a stream is not supported")
            }
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) if sorts => None,
            LogicalPlan::Sort(_) if any => Some(
                "ORDER BY over a stream is not supported: a stream has no end to sort to (sorting is \
                 possible after an aggregation in complete mode)",
            ),
            LogicalPlan::Limit(_) if any => Some("LIMIT over a stream is not supported (it is after an aggregation in complete mode)"),
            LogicalPlan::Window(_) if any => {
                Some("window functions (OVER ...) over a stream are not supported; use GROUP BY window(...) for time windows")
            }
            LogicalPlan::Join(join) if streaming.len() == 2 => match (streaming[0], streaming[1], join.join_type) {
                (true, true, _) => Some("this join of two streams is not supported"),
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
