//! The session's own statements, for looking at and steering a session from SQL while its queries
//! run (the shell, scripts): `SHOW QUERIES`, `STOP QUERY`, and `SHOW TABLES` / `DESCRIBE` that
//! know streams and sinks.
//!
//! # Background
//! DataFusion answers `SHOW TABLES` and `DESCRIBE` from its catalog. Streams are there (as tables
//! it cannot tell from static ones), sinks are not: a sink has no columns of its own, they are
//! those of the query that writes into it, and only a memory sink's result becomes a catalog
//! table (once its query starts). So the session answers these itself, with every table it knows.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Builder, RecordBatch, StringBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{LogicalPlan, TableType};

use super::{StreamingSession, lock};
use crate::connector::SinkDefinition;
use crate::error::{Error, Result};
use crate::planner::StreamTable;
use crate::query::{StreamingQuery, Trigger};
use crate::sink::MemorySink;

/// DataFusion's system views, left out of `SHOW TABLES`: they describe the catalog, not data.
const INFORMATION_SCHEMA: &str = "information_schema";

impl StreamingSession {
    /// `SHOW QUERIES`: one row per query this session started, running or ended, oldest first.
    pub(super) fn show_queries(&self) -> Result<DataFrame> {
        let queries = lock(&self.inner.queries).clone();
        Ok(self.inner.ctx.read_batch(queries_batch(&queries)?)?)
    }

    /// `STOP QUERY name`: stops the query named `name` (or with this id) after its current batch,
    /// waits for it to end, and returns its `SHOW QUERIES` row. A query that has already ended is
    /// left as it is (as Spark's `stop()` does).
    ///
    /// # Errors
    /// No query has this name or id (the message lists the running ones), or the query failed
    /// while it stopped.
    pub(super) async fn stop_query(&self, name: &str) -> Result<DataFrame> {
        let query = self.find_query(name)?;
        if query.is_active() {
            tracing::info!(query = %name, "stopping the query after its current batch");
            query.stop().await?;
        }
        Ok(self.inner.ctx.read_batch(queries_batch(&[query])?)?)
    }

    /// The query `STOP QUERY` means: the running one with this name or id, else the newest ended
    /// one (names of ended queries may repeat); the exact spelling first, then ignoring case.
    fn find_query(&self, name: &str) -> Result<StreamingQuery> {
        let queries = lock(&self.inner.queries).clone();
        let exact = |q: &StreamingQuery| q.name() == Some(name) || q.id() == name;
        let loose = |q: &StreamingQuery| q.name().is_some_and(|n| n.eq_ignore_ascii_case(name)) || q.id() == name;
        let running_first = |matches: &dyn Fn(&StreamingQuery) -> bool| {
            queries
                .iter()
                .find(|q| q.is_active() && matches(q))
                .or_else(|| queries.iter().rev().find(|q| matches(q)))
                .cloned()
        };
        running_first(&exact).or_else(|| running_first(&loose)).ok_or_else(|| {
            let running: Vec<String> = queries
                .iter()
                .filter(|q| q.is_active())
                .map(|q| format!("'{}'", q.name().unwrap_or(q.id())))
                .collect();
            Error::plan(if running.is_empty() {
                format!("there is no query called '{name}'; no query is running")
            } else {
                format!(
                    "there is no query called '{name}'; running queries: {}",
                    running.join(", ")
                )
            })
        })
    }

    /// `SHOW TABLES`: every stream, sink and static table, by name.
    pub(super) async fn show_tables(&self) -> Result<DataFrame> {
        let sinks: Vec<SinkDefinition> = lock(&self.inner.sinks).values().cloned().collect();
        let mut rows: Vec<TableRow> = sinks.iter().map(sink_row).collect();
        let (default_catalog, default_schema) = {
            let state = self.inner.ctx.state();
            let catalog = &state.config_options().catalog;
            (catalog.default_catalog.clone(), catalog.default_schema.clone())
        };
        for catalog_name in self.inner.ctx.catalog_names() {
            let Some(catalog) = self.inner.ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog
                    .schema(&schema_name)
                    .filter(|_| schema_name != INFORMATION_SCHEMA)
                else {
                    continue;
                };
                for table in schema.table_names() {
                    let Some(provider) = schema.table(&table).await? else {
                        continue;
                    };
                    let name = if catalog_name == default_catalog && schema_name == default_schema {
                        table.clone()
                    } else if catalog_name == default_catalog {
                        format!("{schema_name}.{table}")
                    } else {
                        format!("{catalog_name}.{schema_name}.{table}")
                    };
                    rows.extend(catalog_row(name, &table, provider.as_ref(), &sinks));
                }
            }
        }
        rows.sort_by(|a, b| (&a.name, a.kind).cmp(&(&b.name, b.kind)));
        Ok(self.inner.ctx.read_batch(tables_batch(&rows)?)?)
    }

    /// Whether `DESCRIBE name` is the session's to answer: a sink DataFusion's catalog does not
    /// hold (a memory sink whose query has started is a catalog table, described as one).
    pub(super) fn describes_sink(&self, name: &str) -> Result<bool> {
        Ok(lock(&self.inner.sinks).contains_key(name) && !self.inner.ctx.table_exist(name)?)
    }

    /// `DESCRIBE sink`: the columns of the query running into it, in DataFusion's `DESCRIBE`
    /// shape; with no query running, one row saying that its query gives its columns.
    pub(super) fn describe_sink(&self, name: &str) -> Result<DataFrame> {
        let definition = lock(&self.inner.sinks)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("sink '{name}' vanished")))?;
        let query_name = definition.query.query_name.as_deref().unwrap_or(name);
        let schema = self
            .active_queries()
            .into_iter()
            .find(|q| q.name() == Some(query_name))
            .and_then(|q| lock(&self.inner.query_schemas).get(q.id()).cloned());
        let rows: Vec<[String; 3]> = match schema {
            Some(schema) => schema
                .fields()
                .iter()
                .map(|f| {
                    let nullable = if f.is_nullable() { "YES" } else { "NO" };
                    [f.name().clone(), f.data_type().to_string(), nullable.to_string()]
                })
                .collect(),
            None => vec![[
                "*".to_string(),
                format!("sink '{name}' has the columns of the query that writes into it; none is running"),
                "unknown".to_string(),
            ]],
        };
        let mut columns: [StringBuilder; 3] = Default::default();
        for row in &rows {
            for (column, value) in columns.iter_mut().zip(row) {
                column.append_value(value);
            }
        }
        let batch = RecordBatch::try_new(
            Arc::new(LogicalPlan::describe_schema()),
            columns.iter_mut().map(|c| Arc::new(c.finish()) as _).collect(),
        )
        .map_err(|e| Error::Internal(format!("describe rows: {e}")))?;
        Ok(self.inner.ctx.read_batch(batch)?)
    }
}

/// One row of `SHOW QUERIES` per query: what it is doing and what its last batch did.
///
/// `input_rows` counts every batch's input rows in this process.
fn queries_batch(queries: &[StreamingQuery]) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut batches = UInt64Builder::new();
    let mut input_rows = UInt64Builder::new();
    let mut rate = Float64Builder::new();
    let mut watermark = StringBuilder::new();
    let mut state_rows = UInt64Builder::new();
    let mut last_error = StringBuilder::new();
    for query in queries {
        let progress = query.recent_progress();
        let last = progress.last();
        let error = query.exception();
        name.append_option(query.name());
        id.append_value(query.id());
        status.append_value(match (&error, query.is_active()) {
            (Some(e), _) => format!("failed: {e}"),
            (None, false) => "stopped".to_string(),
            (None, true) => query.status().message,
        });
        batches.append_value(last.map_or(0, |p| p.batch_id + 1));
        input_rows.append_value(query.total_input_rows());
        // One decimal: the rate of one batch is a rough figure.
        rate.append_value(last.map_or(0.0, |p| (p.input_rows_per_second * 10.0).round() / 10.0));
        watermark.append_option(last.and_then(|p| p.event_time.get("watermark")));
        state_rows.append_option(
            last.filter(|p| !p.state_operators.is_empty())
                .map(|p| p.state_operators.iter().map(|o| o.num_rows_total).sum::<u64>()),
        );
        last_error.append_option(error.map(|e| e.to_string()));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, true),
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("batches", DataType::UInt64, false),
        Field::new("input_rows", DataType::UInt64, false),
        Field::new("input_rows_per_second", DataType::Float64, false),
        Field::new("watermark", DataType::Utf8, true),
        Field::new("state_rows", DataType::UInt64, true),
        Field::new("last_error", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(name.finish()),
            Arc::new(id.finish()),
            Arc::new(status.finish()),
            Arc::new(batches.finish()),
            Arc::new(input_rows.finish()),
            Arc::new(rate.finish()),
            Arc::new(watermark.finish()),
            Arc::new(state_rows.finish()),
            Arc::new(last_error.finish()),
        ],
    )
    .map_err(|e| Error::Internal(format!("query rows: {e}")))
}

/// One row of `SHOW TABLES`.
struct TableRow {
    name: String,
    /// `stream`, `sink` or `table`.
    kind: &'static str,
    connector: Option<String>,
    details: Option<String>,
}

fn tables_batch(rows: &[TableRow]) -> Result<RecordBatch> {
    let mut name = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut connector = StringBuilder::new();
    let mut details = StringBuilder::new();
    for row in rows {
        name.append_value(&row.name);
        kind.append_value(row.kind);
        connector.append_option(row.connector.as_deref());
        details.append_option(row.details.as_deref());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, true),
        Field::new("details", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(name.finish()),
            Arc::new(kind.finish()),
            Arc::new(connector.finish()),
            Arc::new(details.finish()),
        ],
    )
    .map_err(|e| Error::Internal(format!("table rows: {e}")))
}

/// A sink's row: its connector, output mode, trigger and where it writes.
fn sink_row(sink: &SinkDefinition) -> TableRow {
    let query = &sink.query;
    let mut details = vec![format!("output_mode = {}", query.output_mode)];
    match query.trigger {
        Trigger::Default => {}
        Trigger::ProcessingTime(interval) => details.push(format!("trigger = {interval:?}")),
        Trigger::Once => details.push("trigger = once".to_string()),
        Trigger::AvailableNow => details.push("trigger = available_now".to_string()),
    }
    if sink.spec.is_table() {
        details.push(format!("table = {}", memory_table(sink).unwrap_or(&sink.name)));
    }
    details.extend(sink.spec.details());
    TableRow {
        name: sink.name.clone(),
        kind: "sink",
        connector: Some(sink.connector.to_string()),
        details: Some(details.join(", ")),
    }
}

/// The row of a catalog table called `table` (shown as `name`): a stream, a memory sink's result
/// (unless the sink's own row, of the same name, says it already), or a static table.
fn catalog_row(name: String, table: &str, provider: &dyn TableProvider, sinks: &[SinkDefinition]) -> Option<TableRow> {
    if let Some(stream) = provider.downcast_ref::<StreamTable>() {
        let description = stream.source.description();
        let details = match &stream.watermark {
            Some(w) => format!(
                "{description}, watermark {} - {}",
                w.column,
                crate::time::describe_duration(w.delay)
            ),
            None => description.clone(),
        };
        return Some(TableRow {
            name,
            kind: "stream",
            connector: stream.connector.map(str::to_string),
            details: Some(details),
        });
    }
    if provider.downcast_ref::<MemorySink>().is_some()
        && let Some(sink) = sinks.iter().find(|s| memory_table(s) == Some(table))
    {
        return (sink.name != table).then(|| TableRow {
            name,
            kind: "table",
            connector: Some("memory".to_string()),
            details: Some(format!("the result of sink '{}'", sink.name)),
        });
    }
    let details = match provider.table_type() {
        TableType::Base => "base table",
        TableType::View => "view",
        TableType::Temporary => "temporary",
    };
    Some(TableRow {
        name,
        kind: "table",
        connector: None,
        details: Some(details.to_string()),
    })
}

/// The table a memory sink's result is kept in: its query's name, or the sink's.
fn memory_table(sink: &SinkDefinition) -> Option<&str> {
    sink.spec
        .is_table()
        .then(|| sink.query.query_name.as_deref().unwrap_or(&sink.name))
}
