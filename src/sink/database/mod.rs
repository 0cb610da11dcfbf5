//! The database sink: a query's result written into a table of SQLite, PostgreSQL or
//! MySQL/MariaDB, exactly once.
//!
//! # Background
//! Each batch is written in one transaction that also records `(query id, batch id)` in the
//! database's `tidewater_commits` table. Before writing, the transaction looks up the last batch
//! recorded for the query: a batch at or below it is a replay (the driver re-runs the last batch
//! after a restart, with the same id and rows) and is skipped. Because the mark and the rows
//! commit together, a crash at any point leaves either both or neither, so every batch lands
//! exactly once in every output mode:
//!
//! - append: the rows are inserted;
//! - update: the rows are upserted on the key (`INSERT ... ON CONFLICT (key) DO UPDATE` in
//!   PostgreSQL and SQLite, `INSERT ... ON DUPLICATE KEY UPDATE` in MySQL);
//! - complete: the table's rows are deleted and the batch's inserted.
//!
//! The table is created when the query starts if it is missing ([`dialect`] has the type
//! mapping), and an existing one is checked against the query's output then, so a wrong table
//! fails the query before any batch. Failures that pass (a killed connection, a deadlock) are
//! retried ([`retry`]); the transaction was rolled back, so the retry writes the whole batch again.
//! Every step that waits on the network runs under a time limit ([`limits`]), so a server that
//! stops answering fails the query, naming the step, instead of hanging it.
//!
//! The query id comes from the query (and from its checkpoint, once it has one): a restarted
//! query with the same checkpoint continues the same commit marks.

mod backend;
mod dialect;
mod limits;
mod pool;
mod retry;
mod values;

use std::future::Future;
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use futures::TryStreamExt;

use self::backend::{InsertStatement, TableInfo};
use self::dialect::{COMMITS_TABLE, CommitStatements, Dialect, Kind};
pub(crate) use self::limits::Limits;
use self::pool::{Job, Pools, Written, open_pool};
use self::retry::{RetryPolicy, is_transient, with_retries};
use self::values::{Values, convert, flatten_batch, flatten_schema};
use super::{OutputMode, Sink, SinkConnector, SinkRequest, SinkSpec};
use crate::error::{Error, Result};
use crate::options::{Options, parse_duration};

/// The `database` connector.
pub(crate) const CONNECTOR: SinkConnector = SinkConnector {
    name: "database",
    options: &["url", "table", "key", "connect_timeout", "statement_timeout"],
    parse,
};

fn parse(options: &Options) -> Result<std::sync::Arc<dyn SinkSpec>> {
    let url = options.required("url")?.trim().to_string();
    if !is_supported_url(&url) {
        return Err(options.error(format!(
            "option 'url' must start with sqlite://, postgres:// or mysql:// (got '{}')",
            url.split("://").next().unwrap_or_default()
        )));
    }
    let table = options.required("table")?.to_string();
    if table.trim().is_empty() {
        return Err(options.error("option 'table' must name a table"));
    }
    let key = options
        .get("key")
        .map(|k| parse_key(k).map_err(|m| options.error(format!("option 'key': {m}"))))
        .transpose()?;
    let mut limits = Limits::default();
    for (option, limit) in [
        ("connect_timeout", &mut limits.connect),
        ("statement_timeout", &mut limits.statement),
    ] {
        if let Some(text) = options.get(option) {
            *limit = parse_duration(text).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                options.error(format!(
                    "option '{option}' must be a positive duration such as '10 seconds' or '5 minutes' (got '{text}')"
                ))
            })?;
        }
    }
    Ok(std::sync::Arc::new(DatabaseSpec {
        url,
        table,
        key,
        limits,
    }))
}

/// A declared database sink.
#[derive(Debug)]
struct DatabaseSpec {
    /// The connection URL (`sqlite://`, `postgres://`, `mysql://`).
    url: String,
    /// The table written to.
    table: String,
    /// The `key` option: the columns that identify a row (upsert key, primary key).
    key: Option<Vec<String>>,
    /// How long connecting and each statement step may take.
    limits: Limits,
}

#[async_trait]
impl SinkSpec for DatabaseSpec {
    fn exactly_once(&self) -> bool {
        true
    }

    fn details(&self) -> Vec<String> {
        vec![
            format!("url = {}", redact(&self.url)),
            format!("table = {}", self.table),
        ]
    }

    async fn build(&self, request: SinkRequest<'_>) -> Result<std::sync::Arc<dyn Sink>> {
        let sink = DatabaseSink::connect(DatabaseSinkConfig {
            url: self.url.clone(),
            table: self.table.clone(),
            key: self.key.clone(),
            grouping_key: request.grouping_key,
            session_key: request.session_key,
            schema: request.schema,
            output_mode: request.output_mode,
            query_id: request.query_id.to_string(),
            limits: self.limits,
        })
        .await?;
        Ok(std::sync::Arc::new(sink))
    }
}

/// How a database sink is set up: from the sink's options and the query it serves.
#[derive(Debug, Clone)]
pub(crate) struct DatabaseSinkConfig {
    /// `sqlite://path`, `postgres://user@host:port/db` or `mysql://user@host:port/db`.
    pub(crate) url: String,
    /// The table written to (one identifier, quoted as needed; not schema-qualified).
    pub(crate) table: String,
    /// The `key` option: output columns (after flattening) that identify a row.
    pub(crate) key: Option<Vec<String>>,
    /// The output columns that are the query's grouping keys (before flattening), when all are in
    /// the output: the key when the option is not given.
    pub(crate) grouping_key: Option<Vec<String>>,
    /// The output column of `grouping_key` that is a session window: only its start is part of
    /// the key, since a session grows at its end and is identified by its start.
    pub(crate) session_key: Option<String>,
    /// The query's output schema.
    pub(crate) schema: SchemaRef,
    /// The query's output mode.
    pub(crate) output_mode: OutputMode,
    /// The query's id, under which batches are recorded in `tidewater_commits`.
    pub(crate) query_id: String,
    /// How long connecting and each statement step may take (`connect_timeout`,
    /// `statement_timeout`).
    pub(crate) limits: Limits,
}

/// Writes a streaming query's output into a database table, one transaction per batch.
#[derive(Debug)]
pub(crate) struct DatabaseSink {
    /// The database for messages: its kind and URL without password.
    database: String,
    table: String,
    dialect: Dialect,
    pool: Pools,
    query_id: String,
    /// The table's columns: the output's, flattened, with their kinds.
    columns: Vec<(String, Kind)>,
    /// Positions in `columns` of the key's columns; empty without a key.
    key: Vec<usize>,
    insert: InsertStatement,
    /// The upsert on the key, when there is a key.
    upsert: Option<InsertStatement>,
    /// Deletes the rows of given keys, when there is a key: rows that a batch replaces under
    /// another key (merged sessions).
    delete: Option<InsertStatement>,
    commits: CommitStatements,
    /// `DELETE FROM <table>`, for complete mode.
    delete_all: String,
    /// The most bytes of values one insert statement carries.
    statement_budget: usize,
    retry: RetryPolicy,
    limits: Limits,
}

/// Whether `url` names a database the sink writes to (by its scheme).
pub(crate) fn is_supported_url(url: &str) -> bool {
    Dialect::of_url(url).is_some()
}

/// Parses the `key` option: column names separated by commas; a name with a comma, a quote or
/// surrounding spaces is written in double quotes (`"a, b"`, with `""` for a quote inside).
///
/// # Errors
/// An empty list or name, or an unclosed quote.
pub(crate) fn parse_key(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return Err(format!("'{text}' has an unclosed double quote")),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_some_and(|c| *c != ',') {
                return Err(format!("'{text}': expected a comma after \"{name}\""));
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                name.push(c);
                chars.next();
            }
            name = name.trim_end().to_string();
        }
        if name.is_empty() {
            return Err(format!("'{text}' has an empty column name"));
        }
        names.push(name);
        match chars.next() {
            Some(',') => continue,
            _ => return Ok(names),
        }
    }
}

impl DatabaseSink {
    /// Connects, creates the table (and `tidewater_commits`) when missing, and checks an existing
    /// table against the query's output.
    ///
    /// # Errors
    /// A URL that names no supported database, an output with columns the database cannot hold,
    /// no key in update mode, an existing table with missing or incompatible columns (or without
    /// a unique key on the key columns, in update mode), or a database that cannot be reached.
    pub(crate) async fn connect(config: DatabaseSinkConfig) -> Result<Self> {
        let dialect = Dialect::of_url(&config.url).ok_or_else(|| {
            Error::option(
                "database sink",
                format!(
                    "option 'url' = '{}' names no supported database; use sqlite://, postgres:// or mysql://",
                    redact(&config.url)
                ),
            )
        })?;
        let database = format!("{} {}", dialect.name(), redact(&config.url));
        let table = config.table.clone();
        let user_error = |message: String| Error::Database {
            database: database.clone(),
            table: table.clone(),
            message,
            user: true,
        };
        dialect
            .check_identifier(&table)
            .map_err(|m| user_error(format!("the table name cannot be used: {m}")))?;
        // A query writing the commit marks could forge another query's batches as written.
        let unqualified = table.rsplit('.').next().unwrap_or(&table).trim_matches(['"', '`']);
        if unqualified.eq_ignore_ascii_case(COMMITS_TABLE) {
            return Err(user_error(format!(
                "'{COMMITS_TABLE}' holds the batch marks that make database sinks exactly-once; \
                 a query cannot write into it"
            )));
        }

        let flat = flatten_schema(&config.schema);
        if flat.is_empty() {
            return Err(user_error("the query's output has no columns".into()));
        }
        let mut columns = Vec::with_capacity(flat.len());
        for (name, data_type) in &flat {
            if columns
                .iter()
                .any(|(n, _): &(String, Kind)| same_name(dialect, n, name))
            {
                return Err(user_error(format!(
                    "two output columns are both named '{name}' (struct columns become <column>_<field>); \
                     rename one with AS"
                )));
            }
            dialect
                .check_identifier(name)
                .map_err(|m| user_error(format!("column '{name}' cannot be used: {m}; rename it with AS")))?;
            let kind = Kind::of(data_type);
            dialect
                .check_kind(kind)
                .map_err(|m| user_error(format!("column '{name}': {m}")))?;
            columns.push((name.clone(), kind));
        }

        let key_names = resolve_key(&config, &columns).map_err(user_error)?;
        let key: Vec<usize> = key_names
            .iter()
            .flatten()
            .filter_map(|k| columns.iter().position(|(n, _)| n == k))
            .collect();

        let retry = RetryPolicy::default();
        let limits = config.limits;
        let pool = open_pool(dialect, &config.url, &table, limits).map_err(|e| {
            Error::option(
                format!("database sink '{table}'"),
                format!("option 'url' = '{}': {e}", redact(&config.url)),
            )
        })?;
        with_retries(retry, limits.connecting(), &database, &table, "connecting", || {
            pool.probe()
        })
        .await?;
        let sink = DatabaseSink {
            insert: insert_statement(dialect, &table, &columns, None),
            upsert: key_names
                .as_deref()
                .map(|key| insert_statement(dialect, &table, &columns, Some(key))),
            delete: (!key.is_empty()).then(|| delete_statement(dialect, &table, &columns, &key)),
            commits: dialect.commit_statements(),
            delete_all: format!("DELETE FROM {}", dialect.quote(&table)),
            database,
            table,
            dialect,
            pool,
            query_id: config.query_id,
            columns,
            key,
            statement_budget: 0,
            retry,
            limits,
        };
        sink.prepare(config.output_mode, key_names.as_deref()).await
    }

    /// Creates what is missing and checks what exists; learns the statement budget.
    async fn prepare(mut self, mode: OutputMode, key: Option<&[String]>) -> Result<Self> {
        let create = self.dialect.create_table(&self.table, &self.columns, key);
        let mut info = self
            .retrying("reading the table's columns", |p| p.table_info(&self.table))
            .await?;
        if info.columns.is_empty() {
            tracing::info!(database = %self.database, table = %self.table, sql = %create, "creating the sink's table");
            self.retrying("creating the table", |p| p.execute(&create)).await?;
            info = self
                .retrying("reading the table's columns", |p| p.table_info(&self.table))
                .await?;
        }
        self.check_table(&info, mode, key)?;
        let create_commits = self.dialect.create_commits_table();
        match self
            .retrying("creating the commits table", |p| p.execute(&create_commits))
            .await
        {
            Ok(_) => {}
            // A silent server would only be waited on once more.
            Err(e @ Error::DatabaseTimeout { .. }) => return Err(e),
            Err(e) => {
                // Two queries starting at once may both try to create it; one wins.
                let commits = self
                    .retrying("reading the commits table", |p| p.table_info(COMMITS_TABLE))
                    .await?;
                if commits.columns.is_empty() {
                    return Err(e);
                }
            }
        }
        self.statement_budget = self
            .retrying("reading the server's packet size", |p| p.statement_budget())
            .await?;
        tracing::info!(
            database = %self.database,
            table = %self.table,
            mode = %mode,
            key = ?key,
            "database sink ready"
        );
        Ok(self)
    }

    /// Checks an existing table: every output column is there with a type that can take it; in
    /// update mode, a unique key on exactly the key's columns; in MySQL, a transactional engine.
    fn check_table(&self, info: &TableInfo, mode: OutputMode, key: Option<&[String]>) -> Result<()> {
        let dialect = self.dialect;
        let mut missing = Vec::new();
        let mut incompatible = Vec::new();
        for (name, kind) in &self.columns {
            match info.columns.iter().find(|(n, _)| same_name(dialect, n, name)) {
                None => missing.push(format!("'{name}' ({})", dialect.sql_type(*kind, false))),
                Some((_, declared)) if !dialect.accepts(declared, *kind) => incompatible.push(format!(
                    "'{name}' is {declared} in the table, but the query writes {} values",
                    dialect.sql_type(*kind, false)
                )),
                Some(_) => {}
            }
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "the table has no column {} (its columns: {})",
                missing.join(", "),
                info.columns
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !incompatible.is_empty() {
            problems.push(format!("incompatible column types: {}", incompatible.join("; ")));
        }
        if let (OutputMode::Update, Some(key)) = (mode, key) {
            let matches = |index: &Vec<String>| {
                index.len() == key.len() && key.iter().all(|k| index.iter().any(|c| same_name(dialect, c, k)))
            };
            if !info.unique_keys.iter().any(matches) {
                problems.push(format!(
                    "update mode upserts on the key ({}), but the table has no primary key or unique index on \
                     exactly those columns; add one, or let the sink create the table",
                    key.join(", ")
                ));
            }
        }
        if let Some(engine) = &info.engine
            && !engine.eq_ignore_ascii_case("InnoDB")
        {
            problems.push(format!(
                "the table's storage engine is {engine}, which has no transactions; exactly-once needs InnoDB"
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Database {
            database: self.database.clone(),
            table: self.table.clone(),
            message: format!(
                "the existing table does not fit the query's output: {}",
                problems.join("; ")
            ),
            user: true,
        })
    }

    /// Runs `op` on the pool within the statement limit, retrying failures that pass.
    async fn retrying<'a, T, F, Fut>(&'a self, what: &str, op: F) -> Result<T>
    where
        F: Fn(&'a Pools) -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        with_retries(
            self.retry,
            self.limits.statement(),
            &self.database,
            &self.table,
            what,
            || op(&self.pool),
        )
        .await
    }

    /// The batch's columns converted for binding, with the number of rows.
    fn convert(&self, batches: &[RecordBatch], batch_id: u64) -> Result<(Vec<Values>, usize)> {
        let Some(first) = batches.first() else {
            return Ok((Vec::new(), 0));
        };
        let batch = concat_batches(&first.schema(), batches)
            .map_err(|e| Error::Internal(format!("joining the batch's output: {e}")))?;
        let arrays = flatten_batch(&batch);
        if arrays.len() != self.columns.len() {
            return Err(Error::Internal(format!(
                "the batch has {} columns, the database sink expected {}",
                arrays.len(),
                self.columns.len()
            )));
        }
        let mut columns = Vec::with_capacity(arrays.len());
        for (array, (name, kind)) in arrays.iter().zip(&self.columns) {
            let array = match array.data_type() {
                DataType::Dictionary(_, values) => datafusion::arrow::compute::cast(array, values)
                    .map_err(|e| Error::Internal(format!("decoding dictionary column '{name}': {e}")))?,
                _ => array.clone(),
            };
            columns.push(convert(&array, *kind, self.dialect).map_err(|m| Error::Database {
                database: self.database.clone(),
                table: self.table.clone(),
                message: format!("batch {batch_id}, column '{name}': {m}"),
                user: true,
            })?);
        }
        for &k in &self.key {
            let nulls = (0..batch.num_rows()).filter(|r| columns[k].is_null(*r)).count();
            if nulls > 0 {
                return Err(Error::Database {
                    database: self.database.clone(),
                    table: self.table.clone(),
                    message: format!(
                        "batch {batch_id}: key column '{}' is null in {nulls} row(s); a key identifies a row and \
                         cannot be null: filter those rows or coalesce the column",
                        self.columns[k].0
                    ),
                    user: true,
                });
            }
        }
        Ok((columns, batch.num_rows()))
    }

    /// For a pool timeout, which hides why no connection could be made: `; connecting: <why>`.
    async fn cause_of(&self, error: &sqlx::Error) -> String {
        if !matches!(error, sqlx::Error::PoolTimedOut) {
            return String::new();
        }
        let limit = self.limits.connect;
        match tokio::time::timeout(limit, self.pool.probe()).await {
            Ok(Err(e)) => format!("; connecting: {e}"),
            Ok(Ok(())) => String::new(),
            Err(_) => format!("; connecting: no answer within {limit:?}"),
        }
    }

    /// Rows per insert statement: within the parameter limit and the byte budget.
    fn rows_per_statement(&self, columns: &[Values], rows: usize) -> usize {
        let bytes: usize = columns.iter().map(Values::wire_bytes).sum();
        let per_row = (bytes / rows.max(1)).max(1);
        let by_bytes = (self.statement_budget / per_row).max(1);
        match self.dialect {
            // One parameter per column, whatever the rows.
            Dialect::Postgres => by_bytes,
            Dialect::Sqlite | Dialect::MySql => by_bytes.min((self.dialect.max_params() / columns.len().max(1)).max(1)),
        }
    }
}

#[async_trait]
impl Sink for DatabaseSink {
    fn description(&self) -> String {
        format!("DatabaseSink[{}, table {}]", self.database, self.table)
    }

    async fn add_batch(&self, batch_id: u64, mode: OutputMode, data: SendableRecordBatchStream) -> Result<u64> {
        self.add_batch_replacing(batch_id, mode, data, Vec::new()).await
    }

    /// Deletes the rows of the replaced rows' keys, then writes the batch, in one transaction.
    async fn add_batch_replacing(
        &self,
        batch_id: u64,
        mode: OutputMode,
        data: SendableRecordBatchStream,
        replaced: Vec<RecordBatch>,
    ) -> Result<u64> {
        let batches: Vec<RecordBatch> = data.try_collect().await.map_err(Error::from_datafusion)?;
        let (columns, rows) = self.convert(&batches, batch_id)?;
        let (replaced, replaced_rows) = self.convert(&replaced, batch_id)?;
        // The key's columns, in table order as the delete statement lists them.
        let replaced: Vec<Values> = replaced
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.key.contains(i))
            .map(|(_, values)| values)
            .collect();
        let statement = match mode {
            OutputMode::Update => self.upsert.as_ref().ok_or_else(|| {
                Error::Internal(format!(
                    "database sink for '{}' got an update batch without a key",
                    self.table
                ))
            })?,
            OutputMode::Append | OutputMode::Complete => &self.insert,
        };
        let job = Job {
            batch_id: i64::try_from(batch_id)
                .map_err(|_| Error::Internal(format!("batch id {batch_id} does not fit a BIGINT")))?,
            query_id: &self.query_id,
            complete: mode == OutputMode::Complete,
            delete_all: &self.delete_all,
            commits: &self.commits,
            statement,
            rows_per_statement: self.rows_per_statement(&columns, rows),
            columns: &columns,
            rows,
            delete: self.delete.as_ref().filter(|_| replaced_rows > 0),
            replaced: &replaced,
            replaced_rows,
        };
        let start = Instant::now();
        // Set once a try recorded the batch in its transaction: if a later try finds it recorded,
        // that try's commit went through although its answer was lost.
        let mut was_new = false;
        let mut attempt = 0;
        let limit = self.limits.statement();
        let step = format!("writing batch {batch_id}");
        loop {
            attempt += 1;
            // A try that runs into the limit is not retried: see `limits`.
            let written = limit
                .run(&self.database, &self.table, &step, self.pool.write(&job, &mut was_new))
                .await?;
            match written {
                Ok(Written::Rows(affected)) => {
                    tracing::debug!(
                        batch_id,
                        rows,
                        affected,
                        ms = start.elapsed().as_millis() as u64,
                        table = %self.table,
                        "database sink committed the batch"
                    );
                    return Ok(rows as u64);
                }
                Ok(Written::AlreadyCommitted) if was_new => {
                    tracing::info!(batch_id, table = %self.table, "an earlier try committed the batch");
                    return Ok(rows as u64);
                }
                Ok(Written::AlreadyCommitted) => {
                    tracing::info!(batch_id, query_id = %self.query_id, table = %self.table,
                        "database sink skips a batch already committed (a replay)");
                    return Ok(0);
                }
                Err(e) if is_transient(&e) && attempt < self.retry.attempts => {
                    let pause = self.retry.delay(attempt);
                    tracing::warn!(batch_id, attempt, error = %e, pause_ms = pause.as_millis() as u64,
                        database = %self.database, table = %self.table, "database sink retries the batch");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    let tries = if attempt > 1 {
                        format!(" after {attempt} tries")
                    } else {
                        String::new()
                    };
                    let cause = self.cause_of(&e).await;
                    return Err(Error::Database {
                        database: self.database.clone(),
                        table: self.table.clone(),
                        message: format!(
                            "writing batch {batch_id} failed{tries} (rolled back; a restart writes it again): {e}{cause}"
                        ),
                        user: false,
                    });
                }
            }
        }
    }
}

/// The key the sink upserts on (and makes the primary key of a table it creates): the `key`
/// option, or in update mode the query's grouping columns, flattened.
fn resolve_key(
    config: &DatabaseSinkConfig,
    columns: &[(String, Kind)],
) -> std::result::Result<Option<Vec<String>>, String> {
    let names = || columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(key) = &config.key {
        for k in key {
            if !columns.iter().any(|(n, _)| n == k) {
                return Err(format!(
                    "option 'key': the output has no column '{k}' (its columns, struct columns flattened: {})",
                    names()
                ));
            }
        }
        return Ok(Some(key.clone()));
    }
    if config.output_mode != OutputMode::Update {
        return Ok(None);
    }
    let Some(grouping) = &config.grouping_key else {
        return Err(format!(
            "update mode upserts each row on a key, and the query's grouping columns are not all in its output \
             (or it has no GROUP BY); give the key with option 'key', e.g. key = '{}'",
            columns.first().map(|(n, _)| n.as_str()).unwrap_or("id")
        ));
    };
    let mut key = Vec::new();
    for field in config.schema.fields().iter().filter(|f| grouping.contains(f.name())) {
        let schema = datafusion::arrow::datatypes::Schema::new(vec![field.as_ref().clone()]);
        let flat = flatten_schema(&schema).into_iter().map(|(n, _)| n);
        match config.session_key.as_ref() == Some(field.name()) {
            // A session window flattens to its start and end; the start identifies it.
            true => key.extend(flat.take(1)),
            false => key.extend(flat),
        }
    }
    if key.is_empty() {
        return Err("update mode needs a key: give it with option 'key'".into());
    }
    Ok(Some(key))
}

/// The insert (or, with `key`, upsert) statement of the sink's table.
fn insert_statement(
    dialect: Dialect,
    table: &str,
    columns: &[(String, Kind)],
    key: Option<&[String]>,
) -> InsertStatement {
    let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let list = names.iter().map(|n| dialect.quote(n)).collect::<Vec<_>>().join(", ");
    let tail = key.map(|key| dialect.upsert_clause(&names, key)).unwrap_or_default();
    let kinds: Vec<Kind> = columns.iter().map(|(_, k)| *k).collect();
    match dialect {
        Dialect::Postgres => InsertStatement {
            head: format!("INSERT INTO {} ({list}) {}", dialect.quote(table), pg_unnest(&kinds)),
            row: String::new(),
            tail,
        },
        Dialect::Sqlite | Dialect::MySql => InsertStatement {
            head: format!("INSERT INTO {} ({list}) VALUES ", dialect.quote(table)),
            row: format!("({})", vec!["?"; kinds.len()].join(", ")),
            tail,
        },
    }
}

/// `SELECT ... FROM UNNEST($1, $2, ...)`: PostgreSQL's rows of one array parameter per column,
/// each cast to the column's array type and its values to the column's type.
fn pg_unnest(kinds: &[Kind]) -> String {
    let dialect = Dialect::Postgres;
    let rows = dialect.quote("tidewater_rows");
    let aliases: Vec<String> = (1..=kinds.len()).map(|i| dialect.quote(&format!("c{i}"))).collect();
    let arrays: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| format!("CAST(${} AS {})", i + 1, Dialect::pg_array_type(*k)))
        .collect();
    let select: Vec<String> = kinds
        .iter()
        .zip(&aliases)
        .map(|(kind, alias)| match kind {
            Kind::Null => "NULL".to_string(),
            Kind::Decimal { .. }
            | Kind::Int {
                bits: 64,
                signed: false,
            } => {
                format!("CAST({rows}.{alias} AS NUMERIC)")
            }
            _ => format!("{rows}.{alias}"),
        })
        .collect();
    format!(
        "SELECT {} FROM UNNEST({}) AS {rows} ({})",
        select.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// The statement that deletes the rows whose key (the columns at positions `key` of `columns`)
/// is one of the bound rows': `DELETE FROM t WHERE (k1, k2) IN (...)`, the key's columns bound in
/// table order, as [`insert_statement`] binds rows.
fn delete_statement(dialect: Dialect, table: &str, columns: &[(String, Kind)], key: &[usize]) -> InsertStatement {
    let key: Vec<&(String, Kind)> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| key.contains(i))
        .map(|(_, c)| c)
        .collect();
    let names = key.iter().map(|(n, _)| dialect.quote(n)).collect::<Vec<_>>().join(", ");
    let head = format!("DELETE FROM {} WHERE ({names}) IN (", dialect.quote(table));
    let kinds: Vec<Kind> = key.iter().map(|(_, k)| *k).collect();
    match dialect {
        Dialect::Postgres => InsertStatement {
            head: format!("{head}{})", pg_unnest(&kinds)),
            row: String::new(),
            tail: String::new(),
        },
        // SQLite compares row values only with a subquery: `IN (VALUES (?, ?), ...)`.
        Dialect::Sqlite => InsertStatement {
            head: format!("{head}VALUES "),
            row: format!("({})", vec!["?"; kinds.len()].join(", ")),
            tail: ")".into(),
        },
        Dialect::MySql => InsertStatement {
            head,
            row: format!("({})", vec!["?"; kinds.len()].join(", ")),
            tail: ")".into(),
        },
    }
}

/// Whether two column names are the same column: exactly in PostgreSQL, ignoring ASCII case in
/// MySQL and SQLite (whose column names are case-insensitive).
fn same_name(dialect: Dialect, a: &str, b: &str) -> bool {
    match dialect {
        Dialect::Postgres => a == b,
        Dialect::Sqlite | Dialect::MySql => a.eq_ignore_ascii_case(b),
    }
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
