//! The Rust DataFrame API for streams, shaped like Spark's `readStream` / `writeStream`.
//!
//! A [`StreamingDataFrame`] is a DataFusion `DataFrame` over streams: the familiar verbs build the
//! same logical plan SQL would, and [`DataStreamWriter::start`] runs it as a streaming query.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::provider_as_source;

use crate::connector::{self, Options};
use crate::error::{Error, Result};
use crate::planner::StreamTable;
use crate::query::{StreamingQuery, Trigger};
use crate::session::StreamingSession;
use crate::sink::OutputMode;
use crate::sql::Watermark;

/// The event-time window of `time` with this width (e.g. `"1 hour"`), as in SQL's
/// `window(time, '1 hour')`: a struct `{start, end}` to group by.
///
/// # Examples
/// ```
/// use tidewater::datafusion::prelude::col;
/// let by_hour = tidewater::window(col("time"), "1 hour");
/// assert_eq!(by_hour.schema_name().to_string(), "window(time,Utf8(\"1 hour\"))");
/// ```
pub fn window(time: Expr, width: &str) -> Expr {
    let udf = datafusion::logical_expr::ScalarUDF::new_from_impl(crate::sql::window::TimeWindow::new());
    udf.call(vec![time, datafusion::logical_expr::lit(width)])
}

/// The sliding windows of `time`, `width` wide and starting every `slide` (e.g. `"1 hour"` every
/// `"10 minutes"`), as SQL's `window(time, '1 hour', '10 minutes')`: a row counts in every window
/// that holds it.
///
/// # Examples
/// ```
/// use tidewater::datafusion::prelude::col;
/// let hours = tidewater::sliding_window(col("time"), "1 hour", "10 minutes");
/// assert_eq!(hours.schema_name().to_string(), "window(time,Utf8(\"1 hour\"),Utf8(\"10 minutes\"))");
/// ```
pub fn sliding_window(time: Expr, width: &str, slide: &str) -> Expr {
    let udf = datafusion::logical_expr::ScalarUDF::new_from_impl(crate::sql::window::TimeWindow::new());
    udf.call(vec![
        time,
        datafusion::logical_expr::lit(width),
        datafusion::logical_expr::lit(slide),
    ])
}

/// The session of `time` with this gap (e.g. `"30 minutes"`), as in SQL's
/// `session_window(time, '30 minutes')`: a struct `{start, end}` to group by on a stream.
pub fn session_window(time: Expr, gap: &str) -> Expr {
    let udf = datafusion::logical_expr::ScalarUDF::new_from_impl(crate::sql::window::SessionWindow::new());
    udf.call(vec![time, datafusion::logical_expr::lit(gap)])
}

/// Describes a stream to read: `session.read_stream().format("json").schema(s).load("dir")`.
#[derive(Debug)]
pub struct DataStreamReader {
    session: StreamingSession,
    format: Option<String>,
    schema: Option<SchemaRef>,
    options: Vec<(String, String)>,
}

impl DataStreamReader {
    pub(crate) fn new(session: StreamingSession) -> Self {
        DataStreamReader {
            session,
            format: None,
            schema: None,
            options: Vec::new(),
        }
    }

    /// `json`, `csv`, `parquet` or `text` for files in a directory ([`load`](Self::load)); `rate`
    /// for generated rows or `socket` for lines from a TCP server ([`start`](Self::start)).
    pub fn format(mut self, format: &str) -> Self {
        self.format = Some(format.to_string());
        self
    }

    /// The columns to read (not needed for `text` and `rate`).
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// A source option, with the same names as in SQL (`max_files_per_trigger`, `mode`, ...);
    /// Spark's camelCase spellings (`maxFilesPerTrigger`) work too.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    /// A stream over the files landing in directory `path`.
    ///
    /// # Errors
    /// A missing format or schema, or a bad option.
    pub async fn load(self, path: &str) -> Result<StreamingDataFrame> {
        let mut options = self.options("read_stream()")?;
        options.insert("connector", "files");
        options.insert("format", self.format.clone().unwrap_or_default());
        options.insert("path", path);
        let built = connector::build_source(None, &options, self.schema)?;
        self.session.anonymous_stream(built.source, built.idle_timeout).await
    }

    /// A stream that takes no path: `rate`, or `socket` (with options `host` and `port`).
    ///
    /// # Errors
    /// A format that needs a path, or a bad option.
    pub async fn start(self) -> Result<StreamingDataFrame> {
        let mut options = self.options("read_stream()")?;
        let format = self.format.clone().unwrap_or_default();
        options.insert("connector", format);
        let built = connector::build_source(None, &options, self.schema)?;
        self.session.anonymous_stream(built.source, built.idle_timeout).await
    }

    /// The options given, once a format is.
    fn options(&self, context: &str) -> Result<Options> {
        if self.format.is_none() {
            return Err(Error::option(
                context,
                "format(...) is required: json, csv, parquet, text, rate or socket",
            ));
        }
        let mut options = Options::new(context);
        for (k, v) in &self.options {
            options.insert(k, v.clone());
        }
        Ok(options)
    }
}

/// A DataFrame over one or more streams. Build it with the DataFusion verbs, then
/// [`write_stream`](StreamingDataFrame::write_stream).
#[derive(Debug, Clone)]
pub struct StreamingDataFrame {
    session: StreamingSession,
    df: DataFrame,
}

impl StreamingDataFrame {
    pub(crate) fn new(session: StreamingSession, df: DataFrame) -> Self {
        StreamingDataFrame { session, df }
    }

    fn map(self, f: impl FnOnce(DataFrame) -> datafusion::error::Result<DataFrame>) -> Result<Self> {
        Ok(StreamingDataFrame {
            df: f(self.df)?,
            session: self.session,
        })
    }

    /// Keeps these columns.
    pub fn select_columns(self, columns: &[&str]) -> Result<Self> {
        self.map(|df| df.select_columns(columns))
    }

    /// Computes these expressions.
    pub fn select(self, exprs: Vec<Expr>) -> Result<Self> {
        self.map(|df| df.select(exprs))
    }

    /// Keeps the rows where `predicate` is true.
    pub fn filter(self, predicate: Expr) -> Result<Self> {
        self.map(|df| df.filter(predicate))
    }

    /// Adds (or replaces) a column.
    pub fn with_column(self, name: &str, expr: Expr) -> Result<Self> {
        self.map(|df| df.with_column(name, expr))
    }

    /// Renames a column.
    pub fn with_column_renamed(self, old: &str, new: &str) -> Result<Self> {
        self.map(|df| df.with_column_renamed(old, new))
    }

    /// Drops columns.
    pub fn drop_columns(self, columns: &[&str]) -> Result<Self> {
        self.map(|df| df.drop_columns(columns))
    }

    /// Declares an event-time watermark on `column` of the stream this frame reads: rows more
    /// than `delay` (e.g. `"10 minutes"`) older than the latest event time seen are late, and
    /// windows ending before that are final (Spark's `withWatermark`). The column must be a
    /// timestamp column of the stream, under its name in the stream.
    ///
    /// # Errors
    /// A bad delay, or no stream of this frame has a timestamp column of that name.
    pub fn with_watermark(self, column: &str, delay: &str) -> Result<Self> {
        let delay = crate::options::parse_duration(delay).map_err(|m| Error::option("with_watermark()", m))?;
        let watermark = Watermark {
            column: column.to_string(),
            delay,
        };
        let mut found = None;
        let plan = self.df.logical_plan().clone().transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(table) = crate::planner::scanned_table(&node) else {
                return Ok(Transformed::no(node));
            };
            let Some(stream) = table.downcast_ref::<StreamTable>() else {
                return Ok(Transformed::no(node));
            };
            if stream.source.schema().field_with_name(column).is_err() {
                return Ok(Transformed::no(node));
            }
            let marked = StreamTable::try_new(&stream.name, stream.source.clone(), Some(watermark.clone()))
                .map_err(|e| e.into_datafusion())?
                .with_idle_timeout(stream.idle_timeout);
            found = Some(stream.name.clone());
            let mut scan = scan.clone();
            scan.source = provider_as_source(Arc::new(marked));
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })?;
        if found.is_none() {
            return Err(Error::option(
                "with_watermark()",
                format!("no stream read by this frame has a column '{column}'"),
            ));
        }
        let state = self.session.context().state();
        Ok(StreamingDataFrame {
            df: DataFrame::new(state, plan.data),
            session: self.session,
        })
    }

    /// Each distinct row once, the first time it arrives (`SELECT DISTINCT`).
    pub fn distinct(self) -> Result<Self> {
        self.map(|df| df.distinct())
    }

    /// The first row of each distinct value of `columns` to arrive, all columns kept (Spark's
    /// `dropDuplicates(columns)`; `SELECT DISTINCT ON (columns) *` in SQL). The keys seen are
    /// state: when one of `columns` is the stream's watermarked event-time column, keys the
    /// watermark has passed are forgotten and late rows dropped, so the state stays bounded;
    /// otherwise it grows with every new key.
    ///
    /// # Errors
    /// A column the frame does not have.
    pub fn drop_duplicates(self, columns: &[&str]) -> Result<Self> {
        let on = self.key_columns(columns)?;
        let all = self.df.schema().columns().into_iter().map(Expr::Column).collect();
        self.map(|df| df.distinct_on(on, all, None))
    }

    /// The first row of each distinct value of `columns`, all columns kept, with each value
    /// forgotten once the watermark passes its first row's time plus the watermark's delay
    /// (Spark's `dropDuplicatesWithinWatermark`): a repeat within that time is dropped, the
    /// state stays bounded, and the event time need not be one of `columns`. `SELECT DISTINCT ON
    /// (columns, within_watermark(time)) *` in SQL.
    ///
    /// # Errors
    /// A column the frame does not have, or a frame whose stream declares no watermark.
    pub fn drop_duplicates_within_watermark(self, columns: &[&str]) -> Result<Self> {
        let mut watermark = None;
        let _ = self.df.logical_plan().apply(|node| {
            if let Some(table) = crate::planner::scanned_table(node)
                && let Some(stream) = table.downcast_ref::<StreamTable>()
            {
                watermark = watermark.clone().or(stream.watermark.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        let Some(watermark) = watermark else {
            return Err(Error::plan(
                "drop_duplicates_within_watermark() needs a watermark: declare one on the stream first \
                 (with_watermark(), or WATERMARK FOR in CREATE TABLE)",
            ));
        };
        let mut on = self.key_columns(columns)?;
        let time = self.key_columns(&[watermark.column.as_str()])?;
        let within = datafusion::logical_expr::ScalarUDF::new_from_impl(crate::sql::dedup::WithinWatermark::new());
        on.push(within.call(time));
        let all = self.df.schema().columns().into_iter().map(Expr::Column).collect();
        self.map(|df| df.distinct_on(on, all, None))
    }

    /// The frame's columns named `columns`.
    fn key_columns(&self, columns: &[&str]) -> Result<Vec<Expr>> {
        Ok(columns
            .iter()
            .map(|c| {
                let field = self.df.schema().qualified_field_with_unqualified_name(c)?;
                Ok(Expr::Column(field.into()))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?)
    }

    /// Joins this frame with `right` (a stream or a static table's frame) on `on`, as
    /// `DataFrame::join_on` does: equalities between the two sides and, for a join of two
    /// streams, the time range between their watermarked time columns that lets the state go
    /// (see the README's joins of two streams).
    pub fn join(self, right: StreamingDataFrame, join_type: JoinType, on: Vec<Expr>) -> Result<Self> {
        self.map(|df| df.join_on(right.df, join_type, on))
    }

    /// Rows of both frames (`UNION ALL`).
    pub fn union(self, other: StreamingDataFrame) -> Result<Self> {
        self.map(|df| df.union(other.df))
    }

    /// Groups by `group` and computes `aggregates` (with [`window`] to group by time windows).
    pub fn aggregate(self, group: Vec<Expr>, aggregates: Vec<Expr>) -> Result<Self> {
        self.map(|df| df.aggregate(group, aggregates))
    }

    /// Any other DataFusion DataFrame operation, e.g. a join with a static table.
    pub fn transform(self, f: impl FnOnce(DataFrame) -> datafusion::error::Result<DataFrame>) -> Result<Self> {
        self.map(f)
    }

    /// The columns of the result.
    pub fn schema(&self) -> &DFSchema {
        self.df.schema()
    }

    /// The logical plan, as DataFusion sees it.
    pub fn logical_plan(&self) -> &LogicalPlan {
        self.df.logical_plan()
    }

    /// Starts describing where the results go.
    pub fn write_stream(self) -> DataStreamWriter {
        DataStreamWriter {
            session: self.session,
            plan: self.df.into_unoptimized_plan(),
            format: "console".to_string(),
            options: Vec::new(),
            output_mode: None,
            trigger: None,
            query_name: None,
        }
    }
}

/// Describes the sink of a streaming query: `.format("memory").query_name("q").start()`.
#[derive(Debug)]
pub struct DataStreamWriter {
    session: StreamingSession,
    plan: LogicalPlan,
    format: String,
    options: Vec<(String, String)>,
    output_mode: Option<OutputMode>,
    trigger: Option<Trigger>,
    query_name: Option<String>,
}

impl DataStreamWriter {
    /// `console` (the default) or `memory`.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_string();
        self
    }

    /// A sink option, with the same names as in SQL (`num_rows`, `truncate`, `checkpoint_location`);
    /// Spark's camelCase spellings (`checkpointLocation`) work too.
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    /// The output mode (append by default).
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = Some(mode);
        self
    }

    /// When batches run (as soon as data is there, by default).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = Some(trigger);
        self
    }

    /// The query's name; for the memory sink also the name of the result table.
    pub fn query_name(mut self, name: &str) -> Self {
        self.query_name = Some(name.to_string());
        self
    }

    /// Starts the query.
    ///
    /// # Errors
    /// A bad option, a memory sink without a query name, or a query the output mode cannot serve.
    pub async fn start(self) -> Result<StreamingQuery> {
        let mut options = Options::new("write_stream()");
        options.insert("connector", self.format.clone());
        for (k, v) in &self.options {
            options.insert(k, v.clone());
        }
        if let Some(name) = &self.query_name {
            options.insert("query_name", name.clone());
        }
        let name = match (&self.query_name, self.format.eq_ignore_ascii_case("memory")) {
            (Some(name), _) => name.clone(),
            (None, true) => {
                return Err(Error::option(
                    "write_stream()",
                    "the memory sink needs query_name(...): it names the result table",
                ));
            }
            (None, false) => self.format.clone(),
        };
        let mut definition = connector::sink_definition(&name, &options)?;
        if let Some(mode) = self.output_mode {
            definition.query.output_mode = mode;
        }
        if let Some(trigger) = self.trigger {
            definition.query.trigger = trigger;
        }
        self.session.start_query(self.plan, definition).await
    }
}
