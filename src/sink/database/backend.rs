//! The statements the sink runs, for each sqlx driver: reading a table's shape, the commit mark,
//! and the bulk insert.
//!
//! # Background
//! The sink's logic (one transaction per batch, the commit check, retries) is written once over
//! [`Backend`]; each driver implements the few operations whose Rust types differ. SQLite and
//! MySQL insert with multi-row `VALUES` lists of bind parameters, as many rows per statement as
//! the parameter and packet limits allow. PostgreSQL binds one array per column and inserts
//! `SELECT ... FROM UNNEST($1, $2, ...)`: one small statement, the same text for every chunk (so
//! it is prepared once per connection), and values in PostgreSQL's binary format. sqlx caches
//! prepared statements per connection, so a repeated chunk size is parsed once.

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::Array;
use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, MySql, Postgres, Row, Sqlite, Type};

use super::dialect::Dialect;
use super::values::Values;

/// What the database says about an existing table.
#[derive(Debug, Default)]
pub(crate) struct TableInfo {
    /// Columns in order, with their declared type as the database reports it; empty when the
    /// table does not exist.
    pub(crate) columns: Vec<(String, String)>,
    /// Column sets of the table's unique indexes (its primary key among them).
    pub(crate) unique_keys: Vec<Vec<String>>,
    /// MySQL's storage engine of the table (only InnoDB has transactions).
    pub(crate) engine: Option<String>,
}

/// The text of the insert statement of one sink, made once when the query starts.
#[derive(Debug, Clone)]
pub(crate) struct InsertStatement {
    /// `INSERT INTO t (a, b) VALUES ` for a multi-row insert; the whole statement for PostgreSQL.
    pub(crate) head: String,
    /// One row's parameters, `(?, ?)` (not used for PostgreSQL).
    pub(crate) row: String,
    /// After the rows: the upsert clause, or nothing.
    pub(crate) tail: String,
}

impl InsertStatement {
    /// The statement that inserts `rows` rows.
    pub(crate) fn sql(&self, dialect: Dialect, rows: usize) -> String {
        if dialect == Dialect::Postgres {
            return format!("{}{}", self.head, self.tail);
        }
        let mut sql = String::with_capacity(self.head.len() + rows * (self.row.len() + 1) + self.tail.len());
        sql.push_str(&self.head);
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&self.row);
        }
        sql.push_str(&self.tail);
        sql
    }
}

/// The statements whose text and Rust types are the same for every driver.
#[async_trait]
pub(crate) trait Statements: Database {
    /// Runs a statement without parameters (DDL, `DELETE FROM t`).
    async fn execute(conn: &mut Self::Connection, sql: &str) -> Result<u64, sqlx::Error>;

    /// Runs `sql` with a query id for its first parameter and, if given, a batch id for its
    /// second; with `select`, returns the first column of the first row (an integer, if any),
    /// otherwise the number of rows changed.
    async fn with_ids(
        conn: &mut Self::Connection,
        sql: &str,
        query_id: &str,
        batch_id: Option<i64>,
        select: bool,
    ) -> Result<Option<i64>, sqlx::Error>;
}

/// What one sqlx driver does for the sink.
#[async_trait]
pub(crate) trait Backend: Statements {
    /// The SQL dialect of this driver.
    const DIALECT: Dialect;

    /// The shape of `table` (in the connection's default schema or database).
    async fn table_info(conn: &mut Self::Connection, table: &str) -> Result<TableInfo, sqlx::Error>;

    /// The most bytes of values one statement should carry.
    async fn statement_budget(_conn: &mut Self::Connection) -> Result<usize, sqlx::Error> {
        Ok(DEFAULT_STATEMENT_BYTES)
    }

    /// Inserts rows `rows` of `columns` with `statement`; returns the rows affected as the
    /// database counts them.
    async fn insert(
        conn: &mut Self::Connection,
        statement: &InsertStatement,
        columns: &[Values],
        rows: Range<usize>,
    ) -> Result<u64, sqlx::Error>;
}

/// The default byte budget of one statement's values: large enough that per-statement costs
/// vanish (a 100k-row batch of four columns takes a handful of statements), small enough for
/// every server's default packet size.
const DEFAULT_STATEMENT_BYTES: usize = 8 << 20;

/// Implements [`Statements`] for a driver: the text is the same for all, the types differ.
macro_rules! statements {
    ($db:ty) => {
        #[async_trait]
        impl Statements for $db {
            async fn execute(conn: &mut Self::Connection, sql: &str) -> Result<u64, sqlx::Error> {
                Ok(sqlx::Executor::execute(conn, sql).await?.rows_affected())
            }

            async fn with_ids(
                conn: &mut Self::Connection,
                sql: &str,
                query_id: &str,
                batch_id: Option<i64>,
                select: bool,
            ) -> Result<Option<i64>, sqlx::Error> {
                let mut query = sqlx::query(sql).bind(query_id);
                if let Some(batch_id) = batch_id {
                    query = query.bind(batch_id);
                }
                if select {
                    let row = query.fetch_optional(conn).await?;
                    return Ok(match row {
                        Some(row) => row.try_get::<Option<i64>, _>(0)?,
                        None => None,
                    });
                }
                Ok(Some(query.execute(conn).await?.rows_affected() as i64))
            }
        }
    };
}

statements!(Sqlite);
statements!(Postgres);
statements!(MySql);

/// Adds row `row` of every column to `args`, for a multi-row `VALUES` insert.
fn add_row<'q, DB>(args: &mut DB::Arguments<'q>, columns: &'q [Values], row: usize) -> Result<(), BoxDynError>
where
    DB: Database,
    Option<bool>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
    Option<f32>: Encode<'q, DB> + Type<DB>,
    Option<f64>: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    Option<NaiveDate>: Encode<'q, DB> + Type<DB>,
    Option<NaiveDateTime>: Encode<'q, DB> + Type<DB>,
    Option<DateTime<Utc>>: Encode<'q, DB> + Type<DB>,
{
    for column in columns {
        match column {
            Values::Bool(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Int(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Float32(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Float64(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Text(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Binary(a) => args.add(a.is_valid(row).then(|| a.value(row)))?,
            Values::Date(v) => args.add(v[row])?,
            Values::Timestamp(v) => args.add(v[row])?,
            Values::TimestampUtc(v) => args.add(v[row])?,
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;

    async fn table_info(conn: &mut Self::Connection, table: &str) -> Result<TableInfo, sqlx::Error> {
        let rows = sqlx::query("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut *conn)
            .await?;
        let mut columns = Vec::new();
        let mut primary: Vec<(i64, String)> = Vec::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            let pk: i64 = row.try_get(2)?;
            if pk > 0 {
                primary.push((pk, name.clone()));
            }
            columns.push((name, row.try_get(1)?));
        }
        // An INTEGER PRIMARY KEY is the rowid and has no index: take the primary key from the
        // columns, the other unique constraints from the indexes.
        primary.sort();
        let mut unique_keys = Vec::new();
        if !primary.is_empty() {
            unique_keys.push(primary.into_iter().map(|(_, n)| n).collect());
        }
        let rows = sqlx::query(
            "SELECT il.name, ii.name FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii \
             WHERE il.\"unique\" = 1 AND il.partial = 0 ORDER BY il.name, ii.seqno",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        unique_keys.extend(group_index_rows(
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Option<String>, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        ));
        Ok(TableInfo {
            columns,
            unique_keys,
            engine: None,
        })
    }

    async fn insert(
        conn: &mut Self::Connection,
        statement: &InsertStatement,
        columns: &[Values],
        rows: Range<usize>,
    ) -> Result<u64, sqlx::Error> {
        let sql = statement.sql(Self::DIALECT, rows.len());
        let mut args = <Sqlite as Database>::Arguments::default();
        args.reserve(rows.len() * columns.len(), 0);
        for row in rows {
            add_row::<Sqlite>(&mut args, columns, row).map_err(sqlx::Error::Encode)?;
        }
        Ok(sqlx::query_with(&sql, args).execute(conn).await?.rows_affected())
    }
}

#[async_trait]
impl Backend for MySql {
    const DIALECT: Dialect = Dialect::MySql;

    async fn table_info(conn: &mut Self::Connection, table: &str) -> Result<TableInfo, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let columns = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let rows = sqlx::query(
            "SELECT CAST(INDEX_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let unique_keys = group_index_rows(
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Option<String>, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        );
        let engine = sqlx::query(
            "SELECT CAST(ENGINE AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()?
        .flatten();
        Ok(TableInfo {
            columns,
            unique_keys,
            engine,
        })
    }

    /// Half of the server's `max_allowed_packet`, which bounds one statement with its values.
    async fn statement_budget(conn: &mut Self::Connection) -> Result<usize, sqlx::Error> {
        let row = sqlx::query("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(conn)
            .await?;
        let packet: i64 = row.try_get(0)?;
        Ok((packet.max(1 << 20) as usize / 2).min(DEFAULT_STATEMENT_BYTES))
    }

    async fn insert(
        conn: &mut Self::Connection,
        statement: &InsertStatement,
        columns: &[Values],
        rows: Range<usize>,
    ) -> Result<u64, sqlx::Error> {
        let sql = statement.sql(Self::DIALECT, rows.len());
        let mut args = <MySql as Database>::Arguments::default();
        args.reserve(rows.len() * columns.len(), columns.iter().map(Values::wire_bytes).sum());
        for row in rows {
            add_row::<MySql>(&mut args, columns, row).map_err(sqlx::Error::Encode)?;
        }
        Ok(sqlx::query_with(&sql, args).execute(conn).await?.rows_affected())
    }
}

#[async_trait]
impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;

    async fn table_info(conn: &mut Self::Connection, table: &str) -> Result<TableInfo, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let columns = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let rows = sqlx::query(
            "SELECT i.indexrelid::oid::bigint::text, a.attname::text \
             FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass(quote_ident(current_schema()) || '.' || quote_ident($1)) \
               AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
             ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let unique_keys = group_index_rows(
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Option<String>, _>(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?,
        );
        Ok(TableInfo {
            columns,
            unique_keys,
            engine: None,
        })
    }

    async fn insert(
        conn: &mut Self::Connection,
        statement: &InsertStatement,
        columns: &[Values],
        rows: Range<usize>,
    ) -> Result<u64, sqlx::Error> {
        let mut args = <Postgres as Database>::Arguments::default();
        for column in columns {
            add_array(&mut args, column, rows.clone()).map_err(sqlx::Error::Encode)?;
        }
        let sql = statement.sql(Self::DIALECT, rows.len());
        Ok(sqlx::query_with(&sql, args).execute(conn).await?.rows_affected())
    }
}

/// Adds rows `rows` of `column` to `args` as one PostgreSQL array.
fn add_array(args: &mut sqlx::postgres::PgArguments, column: &Values, rows: Range<usize>) -> Result<(), BoxDynError> {
    match column {
        Values::Bool(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Int(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Float32(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Float64(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Text(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Binary(a) => args.add(rows.map(|r| a.is_valid(r).then(|| a.value(r))).collect::<Vec<_>>()),
        Values::Date(v) => args.add(v[rows].to_vec()),
        Values::Timestamp(v) => args.add(v[rows].to_vec()),
        Values::TimestampUtc(v) => args.add(v[rows].to_vec()),
    }
}

/// Index rows `(index name, column)` in index order, grouped into one column list per index
/// (an index with an expression column, reported as a null column, is left out).
fn group_index_rows(rows: Vec<(String, Option<String>)>) -> Vec<Vec<String>> {
    let mut keys: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for (index, column) in rows {
        if keys.last().is_none_or(|(name, _)| *name != index) {
            keys.push((index, Some(Vec::new())));
        }
        if let Some((_, columns)) = keys.last_mut() {
            match (columns.as_mut(), column) {
                (Some(list), Some(column)) => list.push(column),
                _ => *columns = None,
            }
        }
    }
    keys.into_iter().filter_map(|(_, columns)| columns).collect()
}
