//! The database sink against real databases: SQLite always (a temporary file), PostgreSQL and
//! MariaDB/MySQL when `TIDEWATER_POSTGRES_URL` / `TIDEWATER_MYSQL_URL` are set (`.ci/run` sets
//! them). Every test uses tables of its own (a random suffix) and drops them at the end.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tidewater::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int8Array,
    Int16Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, TimestampNanosecondArray,
    UInt32Array, UInt64Array,
};
use tidewater::arrow::datatypes::{Field, Schema};
use tidewater::datafusion::common::ScalarValue;
use tidewater::datafusion::prelude::lit;
use tidewater::{MemoryStream, OutputMode, StreamingQuery, StreamingSession};

use crate::common::{push_json, start};

/// A database the tests write to, and a client to read it back.
struct Db {
    kind: Kind,
    url: String,
    client: Client,
    /// Held by MariaDB tests: one kills every other connection of the test database.
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

enum Client {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// MariaDB tests run one at a time: the connection-killing test cannot tell the sink's
/// connections from another test's.
pub(crate) static MYSQL_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The databases to test against: SQLite in `dir`, and each server whose URL is set.
async fn databases(dir: &tempfile::TempDir) -> Vec<Db> {
    let mut out = vec![sqlite(dir).await];
    out.extend(postgres().await);
    out.extend(mysql().await);
    out
}

async fn sqlite(dir: &tempfile::TempDir) -> Db {
    // The file does not exist yet: the sink creates it.
    let url = format!("sqlite://{}", dir.path().join("out.db").display());
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let client = Client::Sqlite(
        sqlx::SqlitePool::connect_with(options.create_if_missing(true))
            .await
            .unwrap(),
    );
    Db {
        kind: Kind::Sqlite,
        url,
        client,
        _serial: None,
    }
}

fn url_of(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            println!("skipped: {var} is not set");
            None
        }
    }
}

async fn postgres() -> Option<Db> {
    let url = url_of("TIDEWATER_POSTGRES_URL")?;
    // Timestamps with a time zone read back in UTC.
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let client = Client::Postgres(
        sqlx::PgPool::connect_with(options.options([("TimeZone", "UTC")]))
            .await
            .unwrap(),
    );
    Some(Db {
        kind: Kind::Postgres,
        url,
        client,
        _serial: None,
    })
}

async fn mysql() -> Option<Db> {
    let url = url_of("TIDEWATER_MYSQL_URL")?;
    let serial = MYSQL_SERIAL.lock().await;
    let client = Client::MySql(sqlx::MySqlPool::connect(&url).await.unwrap());
    Some(Db {
        kind: Kind::MySql,
        url,
        client,
        _serial: Some(serial),
    })
}

impl Db {
    fn quote(&self, name: &str) -> String {
        match self.kind {
            Kind::MySql => format!("`{}`", name.replace('`', "``")),
            _ => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// A column as text, whatever its type.
    fn text(&self, column: &str) -> String {
        let column = self.quote(column);
        match self.kind {
            Kind::Sqlite => format!("CAST({column} AS TEXT)"),
            Kind::Postgres => format!("({column})::text"),
            Kind::MySql => format!("CAST({column} AS CHAR)"),
        }
    }

    async fn execute(&self, sql: &str) {
        match &self.client {
            Client::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Client::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
            Client::MySql(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The rows of a query whose columns are all text (see [`Db::text`]), as `a|b|c`.
    async fn rows(&self, sql: &str) -> Vec<String> {
        fn join<R: Row>(rows: Vec<R>) -> Vec<String>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            row.try_get::<Option<String>, _>(i)
                                .unwrap()
                                .unwrap_or_else(|| "NULL".into())
                        })
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        }
        match &self.client {
            Client::Sqlite(p) => join(
                sqlx::query(sql)
                    .fetch_all(p)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}")),
            ),
            Client::Postgres(p) => join(
                sqlx::query(sql)
                    .fetch_all(p)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}")),
            ),
            Client::MySql(p) => join(
                sqlx::query(sql)
                    .fetch_all(p)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}")),
            ),
        }
    }

    /// `columns` of `table` as text, ordered by all of them.
    async fn content(&self, table: &str, columns: &[&str]) -> Vec<String> {
        let list: Vec<String> = columns.iter().map(|c| self.text(c)).collect();
        let order: Vec<String> = (1..=columns.len()).map(|i| i.to_string()).collect();
        self.rows(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            list.join(", "),
            self.quote(table),
            order.join(", ")
        ))
        .await
    }

    async fn drop_table(&self, table: &str) {
        self.execute(&format!("DROP TABLE IF EXISTS {}", self.quote(table)))
            .await;
    }

    /// Ends every connection the sink writing `table` has open.
    async fn kill_sink_connections(&self, table: &str) -> usize {
        match &self.client {
            Client::Sqlite(_) => 0,
            Client::Postgres(p) => {
                let name = tidewater_application_name(table);
                let killed: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind(name)
                .fetch_all(p)
                .await
                .unwrap();
                killed.len()
            }
            Client::MySql(p) => {
                let ids: Vec<(i64,)> = sqlx::query_as(
                    "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
                     WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
                )
                .fetch_all(p)
                .await
                .unwrap();
                for (id,) in &ids {
                    // The connection may have gone by itself in the meantime.
                    let _ = sqlx::query(&format!("KILL {id}")).execute(p).await;
                }
                ids.len()
            }
        }
    }
}

/// The application name the sink's PostgreSQL sessions carry.
fn tidewater_application_name(table: &str) -> String {
    let mut name = format!("tidewater {table}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The `WITH (...)` of a database sink.
fn sink_options(db: &Db, table: &str, mode: &str) -> String {
    format!(
        "connector = 'database', url = '{}', table = '{}', output_mode = '{mode}',
         checkpoint_location = 'memory:///checkpoints/{}'",
        db.url,
        table.replace('\'', "''"),
        unique("cp")
    )
}

async fn stop(query: StreamingQuery) {
    query.stop().await.unwrap();
}

#[tokio::test]
async fn update_mode_upserts_a_running_count_per_word() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let table = unique("counts");
        let session = StreamingSession::new();
        let query = start(
            &session,
            &format!(
                "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE counts WITH ({});
                 INSERT INTO counts SELECT word, count(*) AS n FROM words GROUP BY word",
                sink_options(&db, &table, "update")
            ),
        )
        .await;
        let batches: [(&[&str], &[&str]); 3] = [
            (&["cat", "dog", "cat"], &["cat|2", "dog|1"]),
            (&["dog", "eel"], &["cat|2", "dog|2", "eel|1"]),
            (&["cat", "Cat"], &["Cat|1", "cat|3", "dog|2", "eel|1"]),
        ];
        for (words, expected) in batches {
            let lines: Vec<String> = words.iter().map(|w| format!(r#"{{"word": "{w}"}}"#)).collect();
            push_json(&session, "words", &lines.iter().map(String::as_str).collect::<Vec<_>>());
            query.process_all_available().await.unwrap();
            let mut content = db.content(&table, &["word", "n"]).await;
            content.sort();
            assert_eq!(content, expected, "{:?}", db.kind);
        }
        // The grouping column became the primary key of the created table.
        let duplicate = format!("INSERT INTO {} (word, n) VALUES ('cat', 1)", db.quote(&table));
        let refused = match &db.client {
            Client::Sqlite(p) => sqlx::query(&duplicate).execute(p).await.is_err(),
            Client::Postgres(p) => sqlx::query(&duplicate).execute(p).await.is_err(),
            Client::MySql(p) => sqlx::query(&duplicate).execute(p).await.is_err(),
        };
        assert!(refused, "{:?}: word is the primary key", db.kind);
        stop(query).await;
        db.drop_table(&table).await;
    }
}

#[tokio::test]
async fn append_mode_writes_each_closed_hourly_window_once() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let table = unique("hourly");
        let session = StreamingSession::new();
        let query = start(
            &session,
            &format!(
                "CREATE TABLE events (time TIMESTAMP, action VARCHAR,
                   WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
                 CREATE TABLE hourly WITH ({});
                 INSERT INTO hourly SELECT action, window(time, '1 hour') AS w, count(*) AS n
                 FROM events GROUP BY action, window(time, '1 hour')",
                sink_options(&db, &table, "append")
            ),
        )
        .await;
        let columns = ["action", "w_start", "w_end", "n"];
        push_json(
            &session,
            "events",
            &[
                r#"{"time": "2026-01-01T10:05:00", "action": "open"}"#,
                r#"{"time": "2026-01-01T10:40:00", "action": "open"}"#,
                r#"{"time": "2026-01-01T10:50:00", "action": "close"}"#,
            ],
        );
        query.process_all_available().await.unwrap();
        assert!(
            db.content(&table, &columns).await.is_empty(),
            "{:?}: nothing is final yet",
            db.kind
        );

        // 11:30 moves the watermark to 11:20: the 10:00 windows close.
        push_json(
            &session,
            "events",
            &[r#"{"time": "2026-01-01T11:30:00", "action": "open"}"#],
        );
        query.process_all_available().await.unwrap();
        let ts = |t: &str| match db.kind {
            Kind::MySql => format!("2026-01-01 {t}.000000"),
            _ => format!("2026-01-01 {t}"),
        };
        let ten = [
            format!("close|{}|{}|1", ts("10:00:00"), ts("11:00:00")),
            format!("open|{}|{}|2", ts("10:00:00"), ts("11:00:00")),
        ];
        assert_eq!(db.content(&table, &columns).await, ten, "{:?}", db.kind);

        // A late row for 10:00 is dropped; 12:15 closes 11:00.
        push_json(
            &session,
            "events",
            &[
                r#"{"time": "2026-01-01T10:30:00", "action": "open"}"#,
                r#"{"time": "2026-01-01T12:45:00", "action": "open"}"#,
            ],
        );
        query.process_all_available().await.unwrap();
        let mut expected = ten.to_vec();
        expected.push(format!("open|{}|{}|1", ts("11:00:00"), ts("12:00:00")));
        assert_eq!(db.content(&table, &columns).await, expected, "{:?}", db.kind);
        stop(query).await;
        db.drop_table(&table).await;
    }
}

/// Session windows in update mode: the table holds each phone's current sessions. A batch that
/// merges two sessions, or moves a session's start earlier, deletes the row of the session it
/// replaced; a restart from the checkpoint in the middle keeps doing so. Once with the session
/// struct in the output (the key is the phone and the session's start, found by the sink), once
/// with start and end projected and the key given.
#[tokio::test]
async fn update_mode_sessions_replace_the_rows_of_the_sessions_they_merge() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let ts = |t: &str| match db.kind {
            Kind::MySql => format!("2026-01-01 {t}.000000"),
            _ => format!("2026-01-01 {t}"),
        };
        let forms = [
            (
                "SELECT phone, session_window(time, '30 minutes') AS s, count(*) AS n FROM taps
                 GROUP BY phone, session_window(time, '30 minutes')",
                "",
                ["phone", "s_start", "s_end", "n"],
            ),
            (
                "SELECT phone, s['start'] AS started, s['end'] AS ended, n FROM (SELECT phone,
                 session_window(time, '30 minutes') AS s, count(*) AS n FROM taps
                 GROUP BY phone, session_window(time, '30 minutes'))",
                ", key = 'phone, started'",
                ["phone", "started", "ended", "n"],
            ),
        ];
        for (select, key, columns) in forms {
            let table = unique("sessions");
            let checkpoint = dir.path().join(unique("cp"));
            let script = format!(
                "CREATE TABLE taps (phone INT, time TIMESTAMP) WITH (connector = 'memory');
                 CREATE TABLE sessions WITH (connector = 'database', url = '{}', table = '{table}',
                   output_mode = 'update', checkpoint_location = '{}'{key});
                 INSERT INTO sessions {select}",
                db.url,
                checkpoint.display()
            );
            let batches: [(&[&str], Vec<String>); 4] = [
                (
                    &[
                        r#"{"phone": 1, "time": "2026-01-01T10:00:00"}"#,
                        r#"{"phone": 1, "time": "2026-01-01T11:00:00"}"#,
                        r#"{"phone": 2, "time": "2026-01-01T10:00:00"}"#,
                    ],
                    vec![
                        format!("1|{}|{}|1", ts("10:00:00"), ts("10:30:00")),
                        format!("1|{}|{}|1", ts("11:00:00"), ts("11:30:00")),
                        format!("2|{}|{}|1", ts("10:00:00"), ts("10:30:00")),
                    ],
                ),
                // 10:20 and 10:45 bridge phone 1's sessions: the 11:00 one is merged away.
                (
                    &[
                        r#"{"phone": 1, "time": "2026-01-01T10:20:00"}"#,
                        r#"{"phone": 1, "time": "2026-01-01T10:45:00"}"#,
                    ],
                    vec![
                        format!("1|{}|{}|4", ts("10:00:00"), ts("11:30:00")),
                        format!("2|{}|{}|1", ts("10:00:00"), ts("10:30:00")),
                    ],
                ),
                // After the restart: 09:40 moves the session's start earlier.
                (
                    &[r#"{"phone": 1, "time": "2026-01-01T09:40:00"}"#],
                    vec![
                        format!("1|{}|{}|5", ts("09:40:00"), ts("11:30:00")),
                        format!("2|{}|{}|1", ts("10:00:00"), ts("10:30:00")),
                    ],
                ),
                (
                    &[r#"{"phone": 2, "time": "2026-01-01T12:00:00"}"#],
                    vec![
                        format!("1|{}|{}|5", ts("09:40:00"), ts("11:30:00")),
                        format!("2|{}|{}|1", ts("10:00:00"), ts("10:30:00")),
                        format!("2|{}|{}|1", ts("12:00:00"), ts("12:30:00")),
                    ],
                ),
            ];
            let mut session = StreamingSession::new();
            let mut query = start(&session, &script).await;
            for (i, (taps, expected)) in batches.into_iter().enumerate() {
                if i == 2 {
                    stop(query).await;
                    session = StreamingSession::new();
                    query = start(&session, &script).await;
                }
                push_json(&session, "taps", taps);
                query.process_all_available().await.unwrap();
                assert_eq!(
                    db.content(&table, &columns).await,
                    expected,
                    "{:?} {select}, batch {i}",
                    db.kind
                );
            }
            stop(query).await;
            db.drop_table(&table).await;
        }
    }
}

#[tokio::test]
async fn complete_mode_replaces_the_table_with_the_current_top_two() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let table = unique("top");
        let session = StreamingSession::new();
        let query = start(
            &session,
            &format!(
                "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE top WITH ({});
                 INSERT INTO top SELECT word, count(*) AS n FROM words GROUP BY word ORDER BY n DESC, word LIMIT 2",
                sink_options(&db, &table, "complete")
            ),
        )
        .await;
        let batches: [(&[&str], &[&str]); 3] = [
            (&["a"], &["a|1"]),
            (&["b", "b", "c"], &["a|1", "b|2"]),
            (&["c", "c", "a", "a", "a"], &["a|4", "c|3"]),
        ];
        for (words, expected) in batches {
            let lines: Vec<String> = words.iter().map(|w| format!(r#"{{"word": "{w}"}}"#)).collect();
            push_json(&session, "words", &lines.iter().map(String::as_str).collect::<Vec<_>>());
            query.process_all_available().await.unwrap();
            assert_eq!(db.content(&table, &["word", "n"]).await, expected, "{:?}", db.kind);
        }
        stop(query).await;
        db.drop_table(&table).await;
    }
}

#[tokio::test]
async fn killed_connections_neither_lose_nor_repeat_rows() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tidewater=info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        if db.kind == Kind::Sqlite {
            continue; // no server connection to kill
        }
        let (appended, counts) = (unique("kill_rows"), unique("kill_counts"));
        let session = StreamingSession::new();
        session
            .run_script(&format!(
                "CREATE TABLE events (id BIGINT, word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE appended WITH ({});
                 CREATE TABLE counts WITH ({});",
                sink_options(&db, &appended, "append"),
                sink_options(&db, &counts, "update"),
            ))
            .await
            .unwrap();
        let rows = start(&session, "INSERT INTO appended SELECT id, word FROM events").await;
        let totals = start(
            &session,
            "INSERT INTO counts SELECT word, count(*) AS n FROM events GROUP BY word",
        )
        .await;

        let stream = session.memory_stream("events").unwrap();
        let schema = tidewater::Source::schema(&stream);
        const BATCHES: i64 = 12;
        const ROWS: i64 = 3000;
        let mut killed = 0;
        for b in 0..BATCHES {
            let ids: Vec<i64> = (b * ROWS..(b + 1) * ROWS).collect();
            let words: Vec<String> = ids.iter().map(|i| format!("w{}", i % 7)).collect();
            stream
                .add_batch(
                    RecordBatch::try_new(
                        schema.clone(),
                        vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(words))],
                    )
                    .unwrap(),
                )
                .unwrap();
            // Kill between batches (the pool finds the connection dead) and during them (the
            // transaction fails and is retried).
            if b % 2 == 0 {
                killed += db.kill_sink_connections(&appended).await;
                killed += db.kill_sink_connections(&counts).await;
            }
            let work = async {
                rows.process_all_available().await.unwrap();
                totals.process_all_available().await.unwrap();
            };
            let killer = async {
                tokio::time::sleep(Duration::from_millis(20 + 15 * (b as u64 % 4))).await;
                db.kill_sink_connections(&appended).await + db.kill_sink_connections(&counts).await
            };
            let ((), k) = tokio::join!(work, killer);
            killed += k;
        }
        assert!(killed > 0, "{:?}: the test killed no connection", db.kind);
        assert!(
            rows.is_active() && totals.is_active(),
            "{:?}: the queries survive",
            db.kind
        );
        let total = BATCHES * ROWS;
        let (count, distinct) = (db.text("n"), db.text("d"));
        let summary = db
            .rows(&format!(
                "SELECT {count}, {distinct} FROM (SELECT count(*) AS n, count(DISTINCT id) AS d FROM {}) AS s",
                db.quote(&appended)
            ))
            .await;
        assert_eq!(summary, [format!("{total}|{total}")], "{:?}", db.kind);
        let expected: Vec<String> = (0..7)
            .map(|w| format!("w{w}|{}", (0..total).filter(|i| i % 7 == w).count()))
            .collect();
        assert_eq!(db.content(&counts, &["word", "n"]).await, expected, "{:?}", db.kind);
        stop(rows).await;
        stop(totals).await;
        db.drop_table(&appended).await;
        db.drop_table(&counts).await;
    }
}

#[tokio::test]
async fn names_that_need_quoting_are_written_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let canary = unique("x");
        db.execute(&format!("CREATE TABLE {} (v INT)", db.quote(&canary))).await;
        let table = format!("\"; DROP TABLE {canary}; -- {}", unique("t"));
        let session = StreamingSession::new();
        let query = start(
            &session,
            &format!(
                r#"CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE weird WITH ({});
                 INSERT INTO weird SELECT word AS "select", count(*) AS "my ""count"" `n`",
                   max(word) AS "; DROP TABLE {canary}; --" FROM words GROUP BY word"#,
                sink_options(&db, &table, "update")
            ),
        )
        .await;
        push_json(
            &session,
            "words",
            &[r#"{"word": "it's"}"#, r#"{"word": "it's"}"#, r#"{"word": "a\"b"}"#],
        );
        query.process_all_available().await.unwrap();
        push_json(&session, "words", &[r#"{"word": "it's"}"#]);
        query.process_all_available().await.unwrap();
        let columns = ["select", "my \"count\" `n`", &format!("; DROP TABLE {canary}; --")];
        assert_eq!(
            db.content(&table, &columns).await,
            ["a\"b|1|a\"b", "it's|3|it's"],
            "{:?}",
            db.kind
        );
        // The canary is still there.
        assert_eq!(
            db.rows(&format!("SELECT {} FROM {}", db.text("v"), db.quote(&canary)))
                .await
                .len(),
            0
        );
        stop(query).await;
        db.drop_table(&table).await;
        db.drop_table(&canary).await;
    }
}

/// One row of every Arrow type the engine emits, and a row of nulls.
fn typed_batch() -> RecordBatch {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("i8", Arc::new(Int8Array::from(vec![Some(-8), None]))),
        ("i16", Arc::new(Int16Array::from(vec![Some(-16), None]))),
        ("i32", Arc::new(Int32Array::from(vec![Some(-32), None]))),
        (
            "i64",
            Arc::new(Int64Array::from(vec![Some(-9_007_199_254_740_993), None])),
        ),
        ("u32", Arc::new(UInt32Array::from(vec![Some(4_000_000_000), None]))),
        (
            "u64",
            Arc::new(UInt64Array::from(vec![Some(18_000_000_000_000_000_000), None])),
        ),
        ("f32", Arc::new(Float32Array::from(vec![Some(1.5), None]))),
        ("f64", Arc::new(Float64Array::from(vec![Some(-2.25), None]))),
        (
            "dec",
            Arc::new(
                Decimal128Array::from(vec![Some(1_234_567_890_123_i128), None])
                    .with_precision_and_scale(20, 4)
                    .unwrap(),
            ),
        ),
        ("s", Arc::new(StringArray::from(vec![Some("héllo 'q' \"dq\" ✓"), None]))),
        ("b", Arc::new(BooleanArray::from(vec![Some(true), None]))),
        ("d", Arc::new(Date32Array::from(vec![Some(20_454), None]))),
        (
            "ts",
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(1_767_262_530_123_456_789),
                None,
            ])),
        ),
        (
            "tstz",
            Arc::new(TimestampMicrosecondArray::from(vec![Some(1_767_262_530_500_000), None]).with_timezone("+02:00")),
        ),
        ("bin", Arc::new(BinaryArray::from(vec![Some(&b"\x00\xffab"[..]), None]))),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, columns.into_iter().map(|(_, a)| a).collect()).unwrap()
}

#[tokio::test]
async fn every_arrow_type_is_mapped_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let table = unique("types");
        let session = StreamingSession::new();
        let batch = typed_batch();
        let stream = MemoryStream::new(batch.schema());
        session
            .register_stream("typed", Arc::new(stream.clone()), None)
            .unwrap();
        let query = session
            .stream("typed")
            .await
            .unwrap()
            // An always-null column (Arrow type Null), as `NULL AS nothing` gives.
            .with_column("nothing", lit(ScalarValue::Null))
            .unwrap()
            .write_stream()
            .format("database")
            .option("url", &db.url)
            .option("table", &table)
            .option("checkpointLocation", format!("memory:///checkpoints/{}", unique("cp")))
            .output_mode(OutputMode::Append)
            .start()
            .await
            .unwrap();
        stream.add_batch(batch).unwrap();
        query.process_all_available().await.unwrap();
        let columns = [
            "i8", "i16", "i32", "i64", "u32", "u64", "f32", "f64", "dec", "s", "b", "d", "ts", "tstz", "nothing",
        ];
        // Bytes: compare their hex.
        let bin = db.quote("bin");
        let hex = match db.kind {
            Kind::Postgres => format!("encode({bin}, 'hex')"),
            _ => format!("CASE WHEN {bin} IS NULL THEN NULL ELSE lower(hex({bin})) END"),
        };
        let list: Vec<String> = columns.iter().map(|c| db.text(c)).chain([hex]).collect();
        let got = db
            .rows(&format!(
                "SELECT {} FROM {} ORDER BY {} IS NULL",
                list.join(", "),
                db.quote(&table),
                db.quote("i8")
            ))
            .await;
        let expected_first = match db.kind {
            Kind::Sqlite => {
                "-8|-16|-32|-9007199254740993|4000000000|1.8e+19|1.5|-2.25|123456789.0123|héllo 'q' \"dq\" ✓|1|2026-01-01|2026-01-01 10:15:30.123456|2026-01-01 10:15:30.500Z|NULL|00ff6162"
            }
            Kind::Postgres => {
                "-8|-16|-32|-9007199254740993|4000000000|18000000000000000000|1.5|-2.25|123456789.0123|héllo 'q' \"dq\" ✓|true|2026-01-01|2026-01-01 10:15:30.123456|2026-01-01 10:15:30.5+00|NULL|00ff6162"
            }
            Kind::MySql => {
                "-8|-16|-32|-9007199254740993|4000000000|18000000000000000000|1.5|-2.25|123456789.0123|héllo 'q' \"dq\" ✓|1|2026-01-01|2026-01-01 10:15:30.123456|2026-01-01 10:15:30.500000|NULL|00ff6162"
            }
        };
        let nulls = ["NULL"; 16].join("|");
        assert_eq!(got, [expected_first.to_string(), nulls], "{:?}", db.kind);
        stop(query).await;
        db.drop_table(&table).await;
    }
}

#[tokio::test]
async fn an_existing_table_that_does_not_fit_is_refused_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        let table = unique("existing");
        let text = match db.kind {
            Kind::MySql => "VARCHAR(20)",
            _ => "TEXT",
        };
        db.execute(&format!("CREATE TABLE {} (word {text}, n {text})", db.quote(&table)))
            .await;
        let session = StreamingSession::new();
        session
            .run_script(&format!(
                "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                 CREATE TABLE counts WITH ({});
                 CREATE TABLE wider WITH ({});",
                sink_options(&db, &table, "complete"),
                sink_options(&db, &table, "update"),
            ))
            .await
            .unwrap();
        let error = session
            .run_script("INSERT INTO counts SELECT word, count(*) AS n FROM words GROUP BY word")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("'n' is") && error.contains(&table),
            "{:?}: {error}",
            db.kind
        );
        let error = session
            .run_script("INSERT INTO wider SELECT word, min(word) AS first FROM words GROUP BY word")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no column 'first'"), "{:?}: {error}", db.kind);
        assert!(
            error.contains("no primary key or unique index"),
            "{:?}: {error}",
            db.kind
        );
        db.drop_table(&table).await;
    }
}

#[tokio::test]
async fn update_mode_without_grouping_columns_in_the_output_asks_for_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(&dir).await;
    let session = StreamingSession::new();
    session
        .run_script(&format!(
            "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
             CREATE TABLE counts WITH ({});",
            sink_options(&db, "counts", "update")
        ))
        .await
        .unwrap();
    let error = session
        .run_script("INSERT INTO counts SELECT count(*) AS n FROM words GROUP BY word")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("option 'key'"), "{error}");

    // With a key, and a window flattened into <name>_start / <name>_end.
    session
        .run_script(&format!(
            "CREATE TABLE events (time TIMESTAMP, action VARCHAR) WITH (connector = 'memory');
             CREATE TABLE hourly WITH ({}, key = 'action, window_start');",
            sink_options(&db, "hourly", "update")
        ))
        .await
        .unwrap();
    let query = start(
        &session,
        "INSERT INTO hourly SELECT action, w.start AS window_start, count(*) AS n
         FROM (SELECT action, window(time, '1 hour') AS w FROM events) GROUP BY action, w",
    )
    .await;
    push_json(
        &session,
        "events",
        &[r#"{"time": "2026-01-01T10:05:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();
    push_json(
        &session,
        "events",
        &[r#"{"time": "2026-01-01T10:15:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        db.content("hourly", &["action", "window_start", "n"]).await,
        ["open|2026-01-01 10:00:00|2"]
    );
    stop(query).await;

    // Without the option, the grouping columns are the key, a window flattened into two.
    session
        .run_script(&format!(
            "CREATE TABLE windows WITH ({});",
            sink_options(&db, "windows", "update")
        ))
        .await
        .unwrap();
    let query = start(
        &session,
        "INSERT INTO windows SELECT window(time, '1 hour') AS w, action, count(*) AS n
         FROM events GROUP BY action, window(time, '1 hour')",
    )
    .await;
    query.process_all_available().await.unwrap();
    push_json(
        &session,
        "events",
        &[r#"{"time": "2026-01-01T11:15:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();
    push_json(
        &session,
        "events",
        &[r#"{"time": "2026-01-01T11:25:00", "action": "open"}"#],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        db.content("windows", &["action", "w_start", "w_end", "n"]).await,
        [
            "open|2026-01-01 10:00:00|2026-01-01 11:00:00|2",
            "open|2026-01-01 11:00:00|2026-01-01 12:00:00|2"
        ]
    );
    let key = db
        .rows("SELECT name FROM pragma_table_info('windows') WHERE pk > 0 ORDER BY pk")
        .await;
    assert_eq!(key, ["w_start", "w_end", "action"]);
    stop(query).await;
}

#[tokio::test]
async fn options_are_checked_when_the_sink_is_declared() {
    let session = StreamingSession::new();
    let error = session
        .run_script("CREATE TABLE t WITH (connector = 'database', table = 't')")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("option 'url' is required"), "{error}");
    let error = session
        .run_script("CREATE TABLE t WITH (connector = 'database', url = 'oracle://x', table = 't')")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("sqlite://, postgres:// or mysql://"), "{error}");
    let error = session
        .run_script("CREATE TABLE t WITH (connector = 'database', url = 'sqlite://x.db', table = 't', key = 'a,,b')")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("option 'key'"), "{error}");
}

#[tokio::test]
async fn a_failing_statement_fails_the_query_naming_the_database_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(&dir).await;
    let session = StreamingSession::new();
    let query = start(
        &session,
        &format!(
            "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
             CREATE TABLE gone WITH ({});
             INSERT INTO gone SELECT word FROM words",
            sink_options(&db, "gone", "append")
        ),
    )
    .await;
    db.drop_table("gone").await;
    push_json(&session, "words", &[r#"{"word": "a"}"#]);
    let error = query.process_all_available().await.unwrap_err().to_string();
    assert!(
        error.contains("SQLite sqlite://") && error.contains("table 'gone'") && error.contains("no such table"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported() {
    let session = StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
             CREATE TABLE nowhere WITH (connector = 'database', url = 'postgres://tidewater:secret@127.0.0.1:1/none',
               table = 'nowhere', checkpoint_location = 'memory:///checkpoints/nowhere');",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let error = session
        .run_script("INSERT INTO nowhere SELECT word FROM words")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("PostgreSQL postgres://tidewater:***@127.0.0.1:1/none"),
        "{error}"
    );
    assert!(
        error.contains("table 'nowhere'") && error.contains("after 6 tries"),
        "{error}"
    );
    assert!(!error.contains("secret"), "{error}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "backoff pauses: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_commit_marks_table_is_refused_as_a_sink_table() {
    let dir = tempfile::tempdir().unwrap();
    for db in databases(&dir).await {
        for name in ["tidewater_commits", "TIDEWATER_COMMITS"] {
            let session = StreamingSession::new();
            session
                .run_script(&format!(
                    "CREATE TABLE words (word VARCHAR) WITH (connector = 'memory');
                     CREATE TABLE marks WITH ({});",
                    sink_options(&db, name, "complete")
                ))
                .await
                .unwrap();
            let error = session
                .run_script("INSERT INTO marks SELECT word, count(*) AS n FROM words GROUP BY word")
                .await
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains("a query cannot write into it"),
                "{:?}: {message}",
                db.kind
            );
            assert_eq!(error.kind(), tidewater::ErrorKind::User, "{:?}", db.kind);
        }
    }
}
