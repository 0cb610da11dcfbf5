//! The connection pool of each database, and the transaction that writes one batch.
//!
//! # Background
//! sqlx has one pool type per database; [`Pools`] holds the one the URL names and dispatches to
//! code written once over [`Backend`]. One try at a batch is one transaction ([`write_on`]):
//! look up the query's last committed batch, record this one, write the rows, commit. Whatever
//! fails in between drops the transaction, which rolls it back, so a retry starts clean.
//!
//! A step cut off by its time limit ([`super::limits`]) leaves its connection in the middle of a
//! statement; such a connection is closed rather than returned to the pool ([`Closing`]), where
//! sqlx would test it with a ping that a silent server never answers.

use std::str::FromStr;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{MySql, Pool, Postgres, Sqlite};

use super::backend::{Backend, InsertStatement, TableInfo};
use super::dialect::{CommitStatements, Dialect};
use super::limits::Limits;
use super::values::Values;

/// Connections the sink keeps open: one writes batches; a second lets start-up checks and a
/// retry not wait for a connection being torn down.
const MAX_CONNECTIONS: u32 = 2;

/// Runs `$body` with `$pool` bound to the concrete pool.
macro_rules! on_pool {
    ($pools:expr, $pool:ident => $body:expr) => {
        match $pools {
            Pools::Sqlite($pool) => $body,
            Pools::Postgres($pool) => $body,
            Pools::MySql($pool) => $body,
        }
    };
}
#[cfg(test)]
pub(crate) use on_pool;

/// The connection pool, for the database the URL names.
pub(crate) enum Pools {
    Sqlite(Pool<Sqlite>),
    Postgres(Pool<Postgres>),
    MySql(Pool<MySql>),
}

impl std::fmt::Debug for Pools {
    /// Only the pool's size: its connect options hold the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, size) = on_pool!(self, pool => (std::any::type_name_of_val(pool), pool.size()));
        f.debug_struct("Pools")
            .field("kind", &kind)
            .field("size", &size)
            .finish()
    }
}

/// What one try at writing a batch did.
pub(crate) enum Written {
    /// The batch is committed with this many rows affected.
    Rows(u64),
    /// The commits table already records the batch for this query: nothing was written.
    AlreadyCommitted,
}

/// One batch to write.
pub(crate) struct Job<'a> {
    /// The batch id, as the commits table stores it.
    pub(crate) batch_id: i64,
    /// The query whose commit mark is checked and moved.
    pub(crate) query_id: &'a str,
    /// Complete mode: the table's rows are deleted first.
    pub(crate) complete: bool,
    /// `DELETE FROM <table>`.
    pub(crate) delete_all: &'a str,
    /// The commits table's statements.
    pub(crate) commits: &'a CommitStatements,
    /// The insert or upsert.
    pub(crate) statement: &'a InsertStatement,
    /// The batch's values, one entry per column.
    pub(crate) columns: &'a [Values],
    /// Rows in `columns`.
    pub(crate) rows: usize,
    /// Rows per insert statement.
    pub(crate) rows_per_statement: usize,
    /// The delete by key, when rows of earlier batches are replaced.
    pub(crate) delete: Option<&'a InsertStatement>,
    /// The keys of the replaced rows, one entry per key column.
    pub(crate) replaced: &'a [Values],
    /// Rows in `replaced`.
    pub(crate) replaced_rows: usize,
}

impl Pools {
    /// Opens one connection outside the pool and closes it: the pool retries a refused connection
    /// until its timeout and then reports only the timeout, this gives the server's own answer.
    pub(crate) async fn probe(&self) -> std::result::Result<(), sqlx::Error> {
        on_pool!(self, pool => probe_on(pool).await)
    }

    pub(crate) async fn table_info(&self, table: &str) -> std::result::Result<TableInfo, sqlx::Error> {
        on_pool!(self, pool => table_info_on(pool, table).await)
    }

    pub(crate) async fn execute(&self, sql: &str) -> std::result::Result<u64, sqlx::Error> {
        on_pool!(self, pool => execute_on(pool, sql).await)
    }

    pub(crate) async fn statement_budget(&self) -> std::result::Result<usize, sqlx::Error> {
        on_pool!(self, pool => statement_budget_on(pool).await)
    }

    pub(crate) async fn write(&self, job: &Job<'_>, was_new: &mut bool) -> std::result::Result<Written, sqlx::Error> {
        on_pool!(self, pool => write_on(pool, job, was_new).await)
    }
}

async fn probe_on<DB: Backend>(pool: &Pool<DB>) -> std::result::Result<(), sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    pool.connect_options().connect().await?.close().await
}

/// A connection taken from the pool that is closed when dropped, unless [`Closing::release`]d
/// once its step has finished. A step that is cut off (by a timeout, or because the query stopped)
/// or fails leaves the connection in an unknown state: closing it ends the server's session, which
/// rolls back any transaction still open there, and frees the pool's slot at once.
struct Closing<DB: sqlx::Database>(Option<PoolConnection<DB>>);

impl<DB: sqlx::Database> Closing<DB> {
    async fn acquire(pool: &Pool<DB>) -> std::result::Result<Self, sqlx::Error> {
        Ok(Closing(Some(pool.acquire().await?)))
    }

    fn connection(&mut self) -> std::result::Result<&mut DB::Connection, sqlx::Error> {
        match self.0.as_mut() {
            Some(conn) => Ok(&mut **conn),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// Gives the connection back to the pool, for the next step.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl<DB: sqlx::Database> Drop for Closing<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

async fn table_info_on<DB: Backend>(pool: &Pool<DB>, table: &str) -> std::result::Result<TableInfo, sqlx::Error> {
    let mut conn = Closing::acquire(pool).await?;
    let info = DB::table_info(conn.connection()?, table).await?;
    conn.release();
    Ok(info)
}

async fn execute_on<DB: Backend>(pool: &Pool<DB>, sql: &str) -> std::result::Result<u64, sqlx::Error> {
    let mut conn = Closing::acquire(pool).await?;
    let affected = DB::execute(conn.connection()?, sql).await?;
    conn.release();
    Ok(affected)
}

async fn statement_budget_on<DB: Backend>(pool: &Pool<DB>) -> std::result::Result<usize, sqlx::Error> {
    let mut conn = Closing::acquire(pool).await?;
    let budget = DB::statement_budget(conn.connection()?).await?;
    conn.release();
    Ok(budget)
}

/// One try at a batch: one transaction that checks and records the commit mark and writes the
/// rows. Returning early (or failing) drops the transaction, which rolls it back.
async fn write_on<DB: Backend>(
    pool: &Pool<DB>,
    job: &Job<'_>,
    was_new: &mut bool,
) -> std::result::Result<Written, sqlx::Error> {
    let mut conn = Closing::acquire(pool).await?;
    let written = write_in_transaction::<DB>(conn.connection()?, job, was_new).await?;
    conn.release();
    Ok(written)
}

async fn write_in_transaction<DB: Backend>(
    conn: &mut DB::Connection,
    job: &Job<'_>,
    was_new: &mut bool,
) -> std::result::Result<Written, sqlx::Error> {
    use sqlx::Connection;
    // SQLite: take the write lock now, not at the first write (which could fail as busy with a
    // reader in the middle of the transaction).
    let mut tx = match DB::DIALECT {
        Dialect::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
        Dialect::Postgres | Dialect::MySql => conn.begin().await?,
    };
    let last = DB::with_ids(&mut tx, &job.commits.last, job.query_id, None, true).await?;
    if last.is_some_and(|last| last >= job.batch_id) {
        return Ok(Written::AlreadyCommitted);
    }
    // The mark first: a concurrent writer of the same batch waits on its key, then fails.
    match DB::with_ids(&mut tx, &job.commits.record, job.query_id, Some(job.batch_id), false).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(Written::AlreadyCommitted),
        other => other?,
    };
    *was_new = true;
    DB::with_ids(&mut tx, &job.commits.prune, job.query_id, Some(job.batch_id), false).await?;
    if job.complete {
        DB::execute(&mut tx, job.delete_all).await?;
    }
    let mut affected = 0;
    if let Some(delete) = job.delete {
        // Keys are a part of a row: the insert's chunk size fits them too.
        affected += in_chunks::<DB>(&mut tx, delete, job.replaced, job.replaced_rows, job.rows_per_statement).await?;
    }
    affected += in_chunks::<DB>(&mut tx, job.statement, job.columns, job.rows, job.rows_per_statement).await?;
    tx.commit().await?;
    Ok(Written::Rows(affected))
}

/// Runs `statement` over rows `0..rows` of `columns` in chunks of at most `chunk` rows; returns
/// the rows affected.
async fn in_chunks<DB: Backend>(
    conn: &mut DB::Connection,
    statement: &InsertStatement,
    columns: &[Values],
    rows: usize,
    chunk: usize,
) -> std::result::Result<u64, sqlx::Error> {
    let (mut affected, mut start) = (0, 0);
    while start < rows {
        let end = (start + chunk.max(1)).min(rows);
        affected += DB::insert(conn, statement, columns, start..end).await?;
        start = end;
    }
    Ok(affected)
}

/// A pool on `url` for the sink of `table`, connecting when first used (a missing SQLite file is
/// created then). Taking a connection from it waits at most `limits.connect`.
pub(crate) fn open_pool(
    dialect: Dialect,
    url: &str,
    table: &str,
    limits: Limits,
) -> std::result::Result<Pools, sqlx::Error> {
    Ok(match dialect {
        Dialect::Sqlite => {
            // WAL lets readers look at the table while a batch is written; synchronous stays FULL,
            // so a committed batch survives a power cut (the checkpoint relies on it).
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            Pools::Sqlite(pool_options(limits).connect_lazy_with(options))
        }
        Dialect::Postgres => {
            // UTC, so that timestamps with a time zone convert the same way whatever the server's
            // default; the application name (`tidewater <table>`, cut to PostgreSQL's 63 bytes)
            // lets a DBA see, and tests kill, the sink's sessions.
            let mut name = format!("tidewater {table}");
            while name.len() > 63 {
                name.pop();
            }
            let options = PgConnectOptions::from_str(url)?
                .application_name(&name)
                .options([("TimeZone", "UTC")]);
            Pools::Postgres(pool_options(limits).connect_lazy_with(options))
        }
        Dialect::MySql => {
            let url = match url.split_once("://") {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
                _ => url.to_string(),
            };
            let options = MySqlConnectOptions::from_str(&url)?.timezone(Some("+00:00".to_string()));
            Pools::MySql(pool_options(limits).connect_lazy_with(options))
        }
    })
}

/// The pool keeps trying a refused connection until `limits.connect`, then reports a pool
/// timeout (which is retried, see [`super::retry`]).
fn pool_options<DB: sqlx::Database>(limits: Limits) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(limits.connect)
}
