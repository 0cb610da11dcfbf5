//! The streaming session: a DataFusion context that also knows streams, sinks and running queries.
//!
//! Static tables, `CREATE EXTERNAL TABLE`, views and plain queries are DataFusion's and behave
//! exactly as there. On top, the session keeps the streams and sinks declared with
//! `CREATE TABLE ... WITH (connector = ...)` and starts a streaming query for every
//! `INSERT INTO <sink> SELECT ...`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;

use crate::checkpoint::{Checkpoint, Metadata, Recovery, check_compatible};
use crate::connector::{self, Options, QueryOptions, SinkDefinition};
use crate::error::{Error, Result};
use crate::frame::{DataStreamReader, StreamingDataFrame};
use crate::planner::{IncrementalPlan, StreamTable, contains_stream, first_stream};
use crate::query::driver::{Driver, Retention};
use crate::query::{QueryShared, StreamingQuery};
use crate::sink::SinkRequest;
use crate::source::{MemoryStream, Source};
use crate::sql::{Parsed, Watermark, split_script};

mod commands;

/// What running one statement of a script did.
#[derive(Debug)]
pub enum StatementOutcome {
    /// A query or command with a result (DataFusion's `DataFrame`, not yet executed).
    Rows(DataFrame),
    /// An `INSERT INTO <sink> SELECT ...` started this streaming query.
    Started(StreamingQuery),
    /// A declaration (`CREATE TABLE ... WITH`) took effect.
    Done,
}

/// A DataFusion session that runs streaming queries. Cloning gives another handle to the same
/// session.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tidewater::Result<()> {
/// use tidewater::StreamingSession;
/// let session = StreamingSession::new();
/// let rows = session.sql("SELECT 1 + 1 AS two").await?.collect().await?;
/// assert_eq!(rows[0].num_rows(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct StreamingSession {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: SessionContext,
    /// Sink tables by name; they are not in DataFusion's catalog (a memory sink's result table is,
    /// once its query starts).
    sinks: Mutex<HashMap<String, SinkDefinition>>,
    /// Handles of streams declared with `connector = 'memory'`, by stream name.
    memory_streams: Mutex<HashMap<String, MemoryStream>>,
    /// Every query started in this session.
    queries: Mutex<Vec<StreamingQuery>>,
    /// The output schema of each query started from SQL, by query id: `DESCRIBE` of a sink shows
    /// the columns of the query writing into it (a sink has no columns of its own).
    query_schemas: Mutex<HashMap<String, SchemaRef>>,
    /// Numbers the anonymous streams of `read_stream()`.
    next_anonymous: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingSession")
            .field("session_id", &self.ctx.session_id())
            .field("sinks", &lock(&self.sinks).keys().collect::<Vec<_>>())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for StreamingSession {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamingSession {
    /// A session with DataFusion's defaults, `VARCHAR` read as `Utf8`, and the JSON functions
    /// (`json_get_str`, `->>`, ...).
    pub fn new() -> Self {
        let mut config = SessionConfig::new().with_information_schema(true);
        // Sources decode strings to Utf8; declared VARCHAR columns must match them.
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        Self::with_config(config)
    }

    /// A session with this DataFusion configuration.
    pub fn with_config(config: SessionConfig) -> Self {
        let mut ctx = SessionContext::new_with_config(config);
        ctx.register_udf(ScalarUDF::new_from_impl(crate::sql::window::TimeWindow::new()));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::sql::window::WindowList::new()));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::sql::window::SessionWindow::new()));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::sql::window::WindowTime::new()));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::sql::dedup::WithinWatermark::new()));
        ctx.add_analyzer_rule(Arc::new(crate::sql::sliding::SlidingWindows));
        ctx.add_analyzer_rule(Arc::new(crate::sql::sessions::StaticSessionWindows));
        // This rule drops grouping keys computed from other keys (`GROUP BY v, v + 1`) and computes
        // them above the aggregation. A streaming aggregation's state and output are keyed by the
        // grouping keys as written, so its plan must keep them all.
        ctx.remove_optimizer_rule("eliminate_group_by_constant");
        if let Err(e) = datafusion_functions_json::register_all(&mut ctx) {
            tracing::warn!(error = %e, "JSON functions unavailable");
        }
        // `memory://` is one in-memory store for the session's lifetime: checkpoints there survive a
        // query's restart within the process (tests, notebooks).
        if let Ok(url) = url::Url::parse("memory://") {
            ctx.register_object_store(&url, Arc::new(datafusion::object_store::memory::InMemory::new()));
        }
        // `CREATE EXTERNAL TABLE` over a files sink's output reads the files it committed, no others.
        for factory in ctx.state_ref().write().table_factories_mut().values_mut() {
            *factory = Arc::new(crate::sink::CommittedFilesFactory::new(factory.clone()));
        }
        StreamingSession {
            inner: Arc::new(Inner {
                ctx,
                sinks: Mutex::default(),
                memory_streams: Mutex::default(),
                queries: Mutex::default(),
                query_schemas: Mutex::default(),
                next_anonymous: AtomicU64::new(0),
            }),
        }
    }

    /// The DataFusion context underneath, to register static tables, functions and options.
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// Runs one SQL statement.
    ///
    /// A query over static tables returns its (lazy) result as in DataFusion; a declaration returns
    /// an empty frame; `INSERT INTO <sink> SELECT ...` starts a streaming query and returns one row
    /// with its `id`, `run_id` and `name` (find the handle with [`StreamingSession::active_queries`],
    /// or use [`StreamingSession::run_script`]).
    ///
    /// # Errors
    /// A syntax, planning or option error, or more than one statement.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let mut statements = split_script(sql)?;
        if statements.len() != 1 {
            return Err(Error::plan(format!(
                "sql() runs one statement, got {}; use run_script() for several",
                statements.len()
            )));
        }
        let statement = statements.remove(0);
        match self.execute(statement.parse()?).await? {
            StatementOutcome::Rows(df) => Ok(df),
            StatementOutcome::Done => Ok(self
                .inner
                .ctx
                .read_batch(RecordBatch::new_empty(Arc::new(Schema::empty())))?),
            StatementOutcome::Started(query) => {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("id", DataType::Utf8, false),
                    Field::new("run_id", DataType::Utf8, false),
                    Field::new("name", DataType::Utf8, true),
                ]));
                let batch = RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(StringArray::from(vec![query.id()])),
                        Arc::new(StringArray::from(vec![query.run_id()])),
                        Arc::new(StringArray::from(vec![query.name()])),
                    ],
                )
                .map_err(|e| Error::Internal(format!("query row: {e}")))?;
                Ok(self.inner.ctx.read_batch(batch)?)
            }
        }
    }

    /// Runs the statements of a script in order and returns what each did. Streaming queries
    /// start and keep running while later statements run.
    ///
    /// # Errors
    /// The first failing statement's error, with its position (`statement 3 (line 12): ...`).
    pub async fn run_script(&self, sql: &str) -> Result<Vec<StatementOutcome>> {
        let mut outcomes = Vec::new();
        for statement in split_script(sql)? {
            let (index, line) = (statement.index, statement.line);
            let outcome = async { self.execute(statement.parse()?).await }
                .await
                .map_err(|e| Error::Statement {
                    index,
                    line,
                    error: Box::new(e),
                })?;
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn execute(&self, parsed: Parsed) -> Result<StatementOutcome> {
        match parsed {
            Parsed::CreateTable {
                name,
                columns,
                options,
                watermark,
            } => {
                self.create_table(&name, columns, options, watermark).await?;
                Ok(StatementOutcome::Done)
            }
            Parsed::Insert { target, query, .. } if lock(&self.inner.sinks).contains_key(&target) => {
                let definition = self.sink(&target)?;
                let plan = self.plan_query(query).await?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let query = self.start_query(plan, definition).await?;
                lock(&self.inner.query_schemas).insert(query.id().to_string(), schema);
                Ok(StatementOutcome::Started(query))
            }
            Parsed::Insert { target, query, .. } if lock(&self.inner.memory_streams).contains_key(&target) => {
                let stream = self.memory_stream(&target)?;
                let plan = self.plan_query(query).await?;
                let rows = self.push_rows(&target, &stream, plan).await?;
                let count = RecordBatch::try_new(
                    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)])),
                    vec![Arc::new(datafusion::arrow::array::UInt64Array::from(vec![rows]))],
                )
                .map_err(|e| Error::Internal(format!("count row: {e}")))?;
                Ok(StatementOutcome::Rows(self.inner.ctx.read_batch(count)?))
            }
            Parsed::ShowQueries => Ok(StatementOutcome::Rows(self.show_queries()?)),
            Parsed::StopQuery { name } => Ok(StatementOutcome::Rows(self.stop_query(&name).await?)),
            Parsed::ShowTables => Ok(StatementOutcome::Rows(self.show_tables().await?)),
            Parsed::Describe { name, .. } if self.describes_sink(&name)? => {
                Ok(StatementOutcome::Rows(self.describe_sink(&name)?))
            }
            Parsed::ExplainInsert { target, query, .. } if lock(&self.inner.sinks).contains_key(&target) => {
                let definition = self.sink(&target)?;
                let plan = self.plan_query(query).await?;
                let incremental =
                    IncrementalPlan::new(&self.streaming_state(), &plan, definition.query.output_mode).await?;
                let text = explain_text(&incremental, &definition);
                let lines = StringArray::from(text.lines().collect::<Vec<_>>());
                let batch = RecordBatch::try_new(
                    Arc::new(Schema::new(vec![Field::new("plan", DataType::Utf8, false)])),
                    vec![Arc::new(lines)],
                )
                .map_err(|e| Error::Internal(format!("explain rows: {e}")))?;
                Ok(StatementOutcome::Rows(self.inner.ctx.read_batch(batch)?))
            }
            Parsed::Insert { statement, .. }
            | Parsed::Other(statement)
            | Parsed::Describe { statement, .. }
            | Parsed::ExplainInsert { statement, .. } => {
                let plan = self.plan_statement(statement).await?;
                if let LogicalPlan::Ddl(DdlStatement::DropTable(drop)) = &plan {
                    return self.drop_table(drop).await;
                }
                if let Some(stream) = first_stream(&plan) {
                    return Err(Error::plan(format!(
                        "'{stream}' is a stream: a query over it runs as a streaming query, started with \
                         INSERT INTO <sink> SELECT ... (a sink is a table created WITH (connector = 'console' | 'memory'))"
                    )));
                }
                Ok(StatementOutcome::Rows(self.inner.ctx.execute_logical_plan(plan).await?))
            }
        }
    }

    /// The declared sink `name`.
    fn sink(&self, name: &str) -> Result<SinkDefinition> {
        lock(&self.inner.sinks)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("sink '{name}' vanished")))
    }

    /// The logical plan of the `SELECT` of an `INSERT`.
    async fn plan_query(&self, query: Box<ast::Query>) -> Result<LogicalPlan> {
        self.plan_statement(DfStatement::Statement(Box::new(ast::Statement::Query(query))))
            .await
    }

    /// `DROP TABLE`, for sinks and streams too. A sink a running query writes to stays.
    async fn drop_table(&self, drop: &datafusion::logical_expr::DropTable) -> Result<StatementOutcome> {
        let name = drop.name.table();
        if self.active_queries().iter().any(|q| q.name() == Some(name)) {
            return Err(Error::plan(format!(
                "query '{name}' is running: stop it before dropping its table"
            )));
        }
        let was_sink = lock(&self.inner.sinks).remove(name).is_some();
        lock(&self.inner.memory_streams).remove(name);
        if was_sink && !self.inner.ctx.table_exist(name)? {
            return Ok(StatementOutcome::Done);
        }
        let plan = LogicalPlan::Ddl(DdlStatement::DropTable(drop.clone()));
        Ok(StatementOutcome::Rows(self.inner.ctx.execute_logical_plan(plan).await?))
    }

    /// `INSERT INTO <memory stream> VALUES ... | SELECT ...`: the rows become one new batch of the
    /// stream, their columns matched to the stream's by position and cast to its types.
    async fn push_rows(&self, name: &str, stream: &MemoryStream, plan: LogicalPlan) -> Result<u64> {
        if contains_stream(&plan) {
            return Err(Error::plan(format!(
                "rows inserted into stream '{name}' must not come from a stream"
            )));
        }
        let schema = Source::schema(stream);
        let batches = self.inner.ctx.execute_logical_plan(plan).await?.collect().await?;
        let mut rows = 0;
        let mut columns_of_batches = Vec::new();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            if batch.num_columns() != schema.fields().len() {
                return Err(Error::plan(format!(
                    "stream '{name}' has {} columns, the inserted rows have {}",
                    schema.fields().len(),
                    batch.num_columns()
                )));
            }
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| {
                    let strict = datafusion::arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    };
                    datafusion::arrow::compute::cast_with_options(column, field.data_type(), &strict)
                        .map_err(|e| Error::plan(format!("stream '{name}', column '{}': {e}", field.name())))
                })
                .collect::<Result<Vec<_>>>()?;
            rows += batch.num_rows() as u64;
            columns_of_batches.push(
                RecordBatch::try_new(schema.clone(), columns)
                    .map_err(|e| Error::plan(format!("stream '{name}': {e}")))?,
            );
        }
        let batch = datafusion::arrow::compute::concat_batches(&schema, &columns_of_batches)
            .map_err(|e| Error::Internal(format!("joining inserted rows: {e}")))?;
        stream.add_batch(batch)?;
        Ok(rows)
    }

    async fn plan_statement(&self, statement: DfStatement) -> Result<LogicalPlan> {
        Ok(self.inner.ctx.state().statement_to_plan(statement).await?)
    }

    async fn create_table(
        &self,
        name: &str,
        columns: Option<DfStatement>,
        options: Options,
        watermark: Option<Watermark>,
    ) -> Result<()> {
        if self.inner.ctx.table_exist(name)? || lock(&self.inner.sinks).contains_key(name) {
            return Err(Error::plan(format!("table '{name}' already exists")));
        }
        let schema = match columns {
            Some(statement) => Some(self.declared_schema(statement).await?),
            None => None,
        };
        if options.is_sink(schema.is_some()) {
            if watermark.is_some() {
                return Err(Error::plan(format!(
                    "sink '{name}': a WATERMARK belongs to a stream, not a sink"
                )));
            }
            let definition = connector::sink_definition(name, &options)?;
            lock(&self.inner.sinks).insert(name.to_string(), definition);
            return Ok(());
        }
        let built = connector::build_source(Some(name), &options, schema)?;
        let table = StreamTable::try_new(name, built.source, watermark)?
            .with_idle_timeout(built.idle_timeout)
            .with_connector(built.connector);
        self.register_table(table)?;
        if let Some(memory) = built.memory {
            lock(&self.inner.memory_streams).insert(name.to_string(), memory);
        }
        Ok(())
    }

    /// The Arrow schema of a `CREATE TABLE t (columns...)`, as DataFusion types it.
    async fn declared_schema(&self, statement: DfStatement) -> Result<SchemaRef> {
        match self.plan_statement(statement).await? {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                Ok(Arc::new(create.input.schema().as_arrow().clone()))
            }
            other => Err(Error::Internal(format!("column list planned as {}", other.display()))),
        }
    }

    /// Registers a stream under `name`, readable from SQL and [`StreamingSession::stream`].
    ///
    /// # Errors
    /// A name already taken, or a watermark on a column that is missing or not a timestamp.
    pub fn register_stream(&self, name: &str, source: Arc<dyn Source>, watermark: Option<Watermark>) -> Result<()> {
        self.register_table(StreamTable::try_new(name, source, watermark)?)
    }

    fn register_table(&self, table: StreamTable) -> Result<()> {
        let name = table.name.clone();
        let name = name.as_str();
        if self.inner.ctx.table_exist(name)? {
            return Err(Error::plan(format!("table '{name}' already exists")));
        }
        self.inner.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }

    /// The handle of a stream declared with `connector = 'memory'`, to push rows into it.
    ///
    /// # Errors
    /// No memory stream has this name.
    pub fn memory_stream(&self, name: &str) -> Result<MemoryStream> {
        lock(&self.inner.memory_streams)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::plan(format!("there is no memory stream called '{name}'")))
    }

    /// A registered stream as a streaming DataFrame.
    ///
    /// # Errors
    /// No table has this name, or it is not a stream.
    pub async fn stream(&self, name: &str) -> Result<StreamingDataFrame> {
        let df = self.inner.ctx.table(name).await?;
        if !contains_stream(df.logical_plan()) {
            return Err(Error::plan(format!("'{name}' is a static table, not a stream")));
        }
        Ok(StreamingDataFrame::new(self.clone(), df))
    }

    /// Starts describing a stream to read, as in Spark's `spark.readStream`.
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader::new(self.clone())
    }

    /// Queries that have not ended yet.
    pub fn active_queries(&self) -> Vec<StreamingQuery> {
        lock(&self.inner.queries)
            .iter()
            .filter(|q| q.is_active())
            .cloned()
            .collect()
    }

    /// Registers `source` under a fresh name and returns it as a streaming DataFrame.
    pub(crate) async fn anonymous_stream(
        &self,
        source: Arc<dyn Source>,
        idle_timeout: Option<std::time::Duration>,
    ) -> Result<StreamingDataFrame> {
        let n = self.inner.next_anonymous.fetch_add(1, Ordering::Relaxed);
        let name = format!("__stream_{n}");
        self.register_table(StreamTable::try_new(&name, source, None)?.with_idle_timeout(idle_timeout))?;
        self.stream(&name).await
    }

    /// The DataFusion state streaming queries plan and run with.
    fn streaming_state(&self) -> datafusion::execution::SessionState {
        let mut state = self.inner.ctx.state();
        // Keep each batch's rows in source order: a stateless batch is too small to gain from
        // round-robin repartitioning, and users expect output in input order.
        state
            .config_mut()
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = false;
        state
    }

    /// Plans `plan` incrementally and starts its micro-batch loop writing to the sink.
    pub(crate) async fn start_query(&self, plan: LogicalPlan, definition: SinkDefinition) -> Result<StreamingQuery> {
        let options = &definition.query;
        let name = options.query_name.clone().unwrap_or_else(|| definition.name.clone());
        if self.active_queries().iter().any(|q| q.name() == Some(name.as_str())) {
            return Err(Error::plan(format!("a query named '{name}' is already running")));
        }
        let state = self.streaming_state();
        let incremental = IncrementalPlan::new(&state, &plan, options.output_mode).await?;
        let (checkpoint, metadata, recovery) = self.open_checkpoint(&incremental, options).await?;
        let query_id = metadata.id.clone();
        let source_directories = incremental
            .sources()
            .iter()
            .filter_map(|source| Some((source.directory()?, source.description())))
            .collect();
        let sink = definition
            .spec
            .build(SinkRequest {
                name: &name,
                context: &self.inner.ctx,
                schema: incremental.schema(),
                output_mode: options.output_mode,
                query_id: &query_id,
                grouping_key: incremental.output_keys(),
                session_key: incremental.session_output(),
                source_directories,
            })
            .await?;
        let state_partitions = metadata.state_partitions;
        let explained = incremental.explain(&state_partitions.to_string());
        let shared = Arc::new(QueryShared::new(query_id, Some(name), explained));
        let query = StreamingQuery::new(shared.clone());
        let driver = Driver {
            shared,
            plan: incremental,
            sink,
            output_mode: options.output_mode,
            trigger: options.trigger,
            state_partitions,
            state,
            checkpoint,
            recovery,
            retention: Retention {
                snapshot_interval: options.state_snapshot_interval as u64,
                min_batches: options.min_batches_to_retain as u64,
            },
        };
        tokio::spawn(driver.run());
        lock(&self.inner.queries).push(query.clone());
        Ok(query)
    }

    /// The query's checkpoint (a temporary one without `checkpoint_location`), its metadata
    /// (written when new, checked against the query otherwise) and where the query starts.
    async fn open_checkpoint(
        &self,
        plan: &IncrementalPlan,
        options: &QueryOptions,
    ) -> Result<(Checkpoint, Metadata, Recovery)> {
        let checkpoint = match &options.checkpoint_location {
            Some(location) => Checkpoint::open(location, self.inner.ctx.runtime_env().as_ref())?,
            None => {
                let checkpoint = Checkpoint::temporary()?;
                tracing::info!(
                    location = %checkpoint.location(),
                    "no checkpoint_location: using a temporary checkpoint, removed when the query stops; \
                     a restart starts over"
                );
                checkpoint
            }
        };
        let sources = plan.sources().iter().map(|s| s.identity()).collect();
        let shape = plan.state_shape();
        let metadata = match checkpoint.metadata().await? {
            Some(stored) => {
                let partitions = options.state_partitions.unwrap_or(stored.state_partitions);
                check_state_partitions(partitions, &format!("{}/metadata", checkpoint.location()))?;
                let current = Metadata::new(stored.id.clone(), partitions, sources, shape);
                check_compatible(&stored, &current, &format!("{}/metadata", checkpoint.location()))?;
                stored
            }
            None => {
                let partitions = options
                    .state_partitions
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                check_state_partitions(partitions, "option 'state_partitions'")?;
                let metadata = Metadata::new(uuid::Uuid::new_v4().to_string(), partitions, sources, shape);
                checkpoint.write_metadata(&metadata).await?;
                metadata
            }
        };
        let recovery = checkpoint.recover().await?;
        Ok((checkpoint, metadata, recovery))
    }
}

/// Refuses a number of state partitions the engine cannot hold (`what` says where it came from).
fn check_state_partitions(partitions: usize, what: &str) -> Result<()> {
    let max = crate::state::MAX_STATE_PARTITIONS;
    if (1..=max).contains(&partitions) {
        Ok(())
    } else {
        Err(Error::option(
            what.to_string(),
            format!("{partitions} state partitions: a query has from 1 to {max}"),
        ))
    }
}

/// `EXPLAIN INSERT INTO <sink> ...`: where the rows go and how, what is read, then the
/// incremental plan.
fn explain_text(incremental: &IncrementalPlan, definition: &SinkDefinition) -> String {
    let options = &definition.query;
    let trigger = match options.trigger {
        crate::query::Trigger::Default => "a batch as soon as new input is there".to_string(),
        crate::query::Trigger::ProcessingTime(every) => format!("a batch every {every:?}"),
        crate::query::Trigger::Once => "one batch of everything available, then stop".to_string(),
        crate::query::Trigger::AvailableNow => "everything available at start, then stop".to_string(),
    };
    let partitions = options
        .state_partitions
        .map_or_else(|| "one per core".to_string(), |n| n.to_string());
    let mut text = format!(
        "== Query ==\nsink: {} ({}), output mode {}, {trigger}\n",
        definition.name, definition.connector, options.output_mode
    );
    for input in incremental.inputs() {
        text.push_str(&format!("reads: {input}\n"));
    }
    text.push_str(&incremental.explain(&partitions));
    text
}
