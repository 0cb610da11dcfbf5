//! The sink on its own, against real databases: SQLite always, PostgreSQL and MySQL/MariaDB when
//! `TIDEWATER_POSTGRES_URL` / `TIDEWATER_MYSQL_URL` are set. What a query cannot show from
//! outside: a batch id written twice (a replay after a restart) lands once.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::physical_plan::memory::MemoryStream;

use super::pool::on_pool;
use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
    ]))
}

fn rows(words: &[(&str, i64)]) -> SendableRecordBatchStream {
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(words.iter().map(|(w, _)| *w).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(words.iter().map(|(_, n)| *n).collect::<Vec<_>>())),
        ],
    )
    .expect("batch");
    Box::pin(MemoryStream::try_new(vec![batch], schema(), None).expect("stream"))
}

/// The databases to run against: a fresh SQLite file, and the servers whose URL is set.
fn databases(dir: &tempfile::TempDir) -> Vec<String> {
    let mut urls = vec![format!("sqlite://{}", dir.path().join("unit.db").display())];
    for var in ["TIDEWATER_POSTGRES_URL", "TIDEWATER_MYSQL_URL"] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => urls.push(url),
            _ => eprintln!("skipped: {var} is not set"),
        }
    }
    urls
}

fn config(url: &str, table: &str, mode: OutputMode, query_id: &str) -> DatabaseSinkConfig {
    DatabaseSinkConfig {
        url: url.to_string(),
        table: table.to_string(),
        key: Some(vec!["word".to_string()]),
        grouping_key: None,
        session_key: None,
        schema: schema(),
        output_mode: mode,
        query_id: query_id.to_string(),
        limits: Limits::default(),
    }
}

async fn content(sink: &DatabaseSink) -> Vec<(String, i64)> {
    // MySQL reports a binary-collation VARCHAR as bytes; read it as text.
    let word = match sink.dialect {
        Dialect::MySql => format!("CAST({} AS CHAR)", sink.dialect.quote("word")),
        _ => sink.dialect.quote("word"),
    };
    let sql = format!(
        "SELECT {word}, {} FROM {} ORDER BY 1",
        sink.dialect.quote("n"),
        sink.dialect.quote(&sink.table)
    );
    on_pool!(&sink.pool, pool => sqlx::query_as::<_, (String, i64)>(&sql).fetch_all(pool).await.expect("read back"))
}

async fn drop_table(sink: &DatabaseSink) {
    let sql = format!("DROP TABLE {}", sink.dialect.quote(&sink.table));
    sink.pool.execute(&sql).await.expect("drop");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn a_replayed_batch_is_skipped_in_every_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    for url in databases(&dir) {
        for mode in [OutputMode::Append, OutputMode::Update, OutputMode::Complete] {
            let table = unique("replay");
            let query_id = uuid::Uuid::new_v4().to_string();
            let sink = DatabaseSink::connect(config(&url, &table, mode, &query_id))
                .await
                .expect("connect");
            assert_eq!(
                sink.add_batch(0, mode, rows(&[("a", 1), ("b", 1)]))
                    .await
                    .expect("batch 0"),
                2
            );
            assert_eq!(sink.add_batch(1, mode, rows(&[("c", 1)])).await.expect("batch 1"), 1);
            // The driver re-runs batch 1 after a restart: same id, same rows. Nothing changes.
            assert_eq!(sink.add_batch(1, mode, rows(&[("c", 1)])).await.expect("replay 1"), 0);
            assert_eq!(
                sink.add_batch(0, mode, rows(&[("a", 1), ("b", 1)]))
                    .await
                    .expect("replay 0"),
                0
            );
            let expected: Vec<(String, i64)> = match mode {
                OutputMode::Complete => vec![("c".into(), 1)],
                _ => vec![("a".into(), 1), ("b".into(), 1), ("c".into(), 1)],
            };
            assert_eq!(content(&sink).await, expected, "{url} {mode}");

            // A restarted sink (same query id) continues the commit marks.
            let restarted = DatabaseSink::connect(config(&url, &table, mode, &query_id))
                .await
                .expect("reconnect");
            assert_eq!(
                restarted.add_batch(1, mode, rows(&[("c", 1)])).await.expect("replay"),
                0
            );
            assert_eq!(
                restarted.add_batch(2, mode, rows(&[("d", 2)])).await.expect("batch 2"),
                1
            );
            let after = content(&restarted).await;
            assert!(after.contains(&("d".to_string(), 2)), "{url} {mode}: {after:?}");
            assert_eq!(after.len(), if mode == OutputMode::Complete { 1 } else { 4 });

            // Another query's batch 0 is its own.
            let other = DatabaseSink::connect(config(&url, &table, mode, &format!("{query_id} (another)")))
                .await
                .expect("other");
            assert_eq!(other.add_batch(0, mode, rows(&[("e", 1)])).await.expect("other 0"), 1);
            drop_table(&sink).await;
        }
    }
}

#[tokio::test]
async fn two_writers_of_the_same_batch_commit_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    for url in databases(&dir) {
        let table = unique("race");
        let query_id = uuid::Uuid::new_v4().to_string();
        let first = DatabaseSink::connect(config(&url, &table, OutputMode::Append, &query_id))
            .await
            .expect("connect");
        let second = DatabaseSink::connect(config(&url, &table, OutputMode::Append, &query_id))
            .await
            .expect("connect");
        let batch: Vec<(String, i64)> = (0..500).map(|i| (format!("w{i}"), i)).collect();
        let refs: Vec<(&str, i64)> = batch.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        let (a, b) = tokio::join!(
            first.add_batch(0, OutputMode::Append, rows(&refs)),
            second.add_batch(0, OutputMode::Append, rows(&refs))
        );
        let (a, b) = (a.expect("first"), b.expect("second"));
        assert_eq!(a + b, 500, "{url}: exactly one writer commits ({a} + {b})");
        assert_eq!(content(&first).await.len(), 500, "{url}");
        drop_table(&first).await;
    }
}

#[tokio::test]
async fn update_mode_needs_a_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("key.db").display());
    let mut config = config(&url, "t", OutputMode::Update, "q");
    config.key = None;
    let message = DatabaseSink::connect(config.clone())
        .await
        .expect_err("no key")
        .to_string();
    assert!(message.contains("option 'key'"), "{message}");
    config.key = Some(vec!["nope".into()]);
    let message = DatabaseSink::connect(config).await.expect_err("bad key").to_string();
    assert!(
        message.contains("no column 'nope'") && message.contains("word, n"),
        "{message}"
    );
}

#[test]
fn key_option_parses_names_and_quoted_names() {
    assert_eq!(
        parse_key("action, window_start").expect("plain"),
        ["action", "window_start"]
    );
    assert_eq!(
        parse_key(r#""a, b", "say ""hi""" ,c d"#).expect("quoted"),
        ["a, b", r#"say "hi""#, "c d"]
    );
    assert!(parse_key("a,,b").is_err());
    assert!(parse_key(r#""open"#).is_err());
}

#[test]
fn passwords_stay_out_of_messages() {
    assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
    assert_eq!(redact("sqlite://out.db"), "sqlite://out.db");
}
