//! The files source over real directories: formats, ordering, limits, ignored names, malformed
//! records in each mode, and files that misbehave.

use std::path::Path;

use crate::common::{drop_file, query_rows, start};
use tidewater::{ErrorKind, StreamingSession};

/// Starts `INSERT INTO out SELECT * FROM events` over `dir` with the given column list and options.
async fn files_query(
    dir: &Path,
    columns: &str,
    options: &str,
    trigger: &str,
) -> (StreamingSession, tidewater::StreamingQuery) {
    let session = StreamingSession::new();
    let sql = format!(
        "CREATE TABLE events ({columns}) WITH (connector = 'files', path = '{}', {options});
         CREATE TABLE out WITH (connector = 'memory', trigger = '{trigger}');
         INSERT INTO out SELECT * FROM events",
        dir.display()
    );
    let query = start(&session, &sql).await;
    (session, query)
}

#[tokio::test]
async fn json_files_are_read_once_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "b.json", b"{\"n\": 1, \"s\": \"one\"}\n{\"n\": 2}\n");
    std::thread::sleep(std::time::Duration::from_millis(20));
    drop_file(dir.path(), "a.json", b"{\"n\": 3, \"s\": \"three\", \"extra\": true}");
    let (session, query) = files_query(dir.path(), "n BIGINT, s VARCHAR", "format = 'json'", "available_now").await;
    assert!(query.await_termination(None).await.unwrap());
    // b.json is older, so it comes first; extra fields are ignored, missing ones are null.
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["1|one", "2|NULL", "3|three"]
    );
}

#[tokio::test]
async fn max_files_per_trigger_bounds_each_batch_and_new_files_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        drop_file(dir.path(), &format!("f{i}.csv"), format!("{i},x{i}\n").as_bytes());
    }
    let (session, query) = files_query(
        dir.path(),
        "n INT, s VARCHAR",
        "format = 'csv', max_files_per_trigger = '2'",
        "available_now",
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    let per_batch: Vec<u64> = query.recent_progress().iter().map(|p| p.num_input_rows).collect();
    assert_eq!(per_batch, [2, 2, 1]);
    assert_eq!(query_rows(&session, "SELECT count(*) FROM out").await, ["5"]);

    // A running query (default trigger) sees files that land later, each exactly once.
    let dir = tempfile::tempdir().unwrap();
    let (session, query) = files_query(dir.path(), "value VARCHAR", "format = 'text'", "0 seconds").await;
    drop_file(dir.path(), "1.txt", b"first\nsecond\n");
    query.process_all_available().await.unwrap();
    drop_file(dir.path(), "2.txt", b"third");
    query.process_all_available().await.unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["first", "second", "third"]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn max_bytes_per_trigger_bounds_each_batch_by_the_files_sizes() {
    let dir = tempfile::tempdir().unwrap();
    // Files of 100, 100, 300, 50 and 50 bytes (a line of 10 bytes is one row).
    for (i, rows) in [10, 10, 30, 5, 5].into_iter().enumerate() {
        let content = format!("{i},xxxxxxx\n").repeat(rows);
        assert_eq!(content.len(), rows * 10);
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop_file(dir.path(), &format!("f{i}.csv"), content.as_bytes());
    }
    let (session, query) = files_query(
        dir.path(),
        "n INT, s VARCHAR",
        "format = 'csv', maxBytesPerTrigger = '200'",
        "available_now",
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    let per_batch: Vec<u64> = query.recent_progress().iter().map(|p| p.num_input_rows).collect();
    // Two files fill 200 bytes; a file over the budget is read alone; the last two fit together.
    assert_eq!(per_batch, [20, 30, 10]);
    assert_eq!(query_rows(&session, "SELECT count(*) FROM out").await, ["60"]);

    // Trigger once reads everything in one batch, as Spark's does.
    let (_session, query) = files_query(
        dir.path(),
        "n INT, s VARCHAR",
        "format = 'csv', max_bytes_per_trigger = '200'",
        "once",
    )
    .await;
    assert!(query.await_termination(None).await.unwrap());
    let per_batch: Vec<u64> = query.recent_progress().iter().map(|p| p.num_input_rows).collect();
    assert_eq!(per_batch, [60]);
}

#[tokio::test]
async fn hidden_temporary_and_metadata_files_are_ignored_until_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let (session, query) = files_query(dir.path(), "value VARCHAR", "format = 'text'", "0 seconds").await;
    for name in [".hidden.txt", "_SUCCESS", "part.txt._COPYING_", "part.txt.tmp"] {
        std::fs::write(dir.path().join(name), b"ignored").unwrap();
    }
    query.process_all_available().await.unwrap();
    assert!(query_rows(&session, "SELECT * FROM out").await.is_empty());
    // A file written under a temporary name and then renamed in is read once, under its new name.
    std::fs::rename(dir.path().join("part.txt.tmp"), dir.path().join("part.txt")).unwrap();
    query.process_all_available().await.unwrap();
    query.process_all_available().await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["ignored"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn csv_header_delimiter_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "a.csv", b"id;name\n1;ann\n2;bob");
    let (session, query) = files_query(
        dir.path(),
        "id INT, name VARCHAR",
        "format = 'csv', header = 'true', delimiter = ';'",
        "available_now",
    )
    .await;
    query.await_termination(None).await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["1|ann", "2|bob"]);

    // Parquet written by DataFusion; columns matched by name, a missing one reads as null.
    let parquet_dir = tempfile::tempdir().unwrap();
    let writer = StreamingSession::new();
    let target = parquet_dir.path().join("_staging");
    writer
        .sql(&format!(
            "COPY (SELECT CAST(7 AS BIGINT) AS n, 'seven' AS s) TO '{}' STORED AS PARQUET",
            target.join("x.parquet").display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    std::fs::rename(target.join("x.parquet"), parquet_dir.path().join("x.parquet")).unwrap();
    let (session, query) = files_query(
        parquet_dir.path(),
        "s VARCHAR, n INT, missing DOUBLE",
        "format = 'parquet'",
        "available_now",
    )
    .await;
    query.await_termination(None).await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["seven|7|NULL"]);
}

const MIXED: &[u8] = b"{\"n\": 1}\nnot json at all\n{\"n\": \"abc\"}\n\n{\"n\": 4}\n";

#[tokio::test]
async fn permissive_mode_keeps_bad_lines_as_nulls_with_the_raw_text() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "mixed.json", MIXED);
    let (session, query) = files_query(
        dir.path(),
        "n INT, _corrupt_record VARCHAR",
        "format = 'json'",
        "available_now",
    )
    .await;
    query.await_termination(None).await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["1|NULL", "NULL|not json at all", r#"NULL|{"n": "abc"}"#, "4|NULL"]
    );
    let metrics = &query.last_progress().unwrap().sources[0].metrics;
    assert_eq!(metrics["numMalformedRecords"], "2");
}

#[tokio::test]
async fn drop_malformed_drops_and_counts_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "mixed.json", MIXED);
    let (session, query) = files_query(
        dir.path(),
        "n INT",
        "format = 'json', mode = 'drop_malformed'",
        "available_now",
    )
    .await;
    query.await_termination(None).await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["1", "4"]);
    let metrics = &query.last_progress().unwrap().sources[0].metrics;
    assert_eq!(metrics["numDroppedMalformedRecords"], "2");
}

#[tokio::test]
async fn fail_fast_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "mixed.json", MIXED);
    let (_session, query) = files_query(
        dir.path(),
        "n INT",
        "format = 'json', mode = 'fail_fast'",
        "available_now",
    )
    .await;
    let error = query.await_termination(None).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("mixed.json, line 2"), "{message}");
    assert!(message.contains("batch 0"), "{message}");
    assert_eq!(error.kind(), ErrorKind::User);
    assert!(!query.is_active());

    // The same for CSV: a value that is not a number.
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "bad.csv", b"1,a\n2,b\nthree,c\n");
    let (_session, query) = files_query(
        dir.path(),
        "n INT, s VARCHAR",
        "format = 'csv', mode = 'fail_fast'",
        "available_now",
    )
    .await;
    let message = query.await_termination(None).await.unwrap_err().to_string();
    assert!(message.contains("bad.csv, line 3"), "{message}");
}

#[tokio::test]
async fn csv_malformed_rows_in_permissive_mode() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "bad.csv", b"1,a\nthree,c\n4,d,extra\n5,e\n");
    let (session, query) = files_query(
        dir.path(),
        "n INT, s VARCHAR, _corrupt_record VARCHAR",
        "format = 'csv'",
        "available_now",
    )
    .await;
    query.await_termination(None).await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["1|a|NULL", "NULL|NULL|three,c", "NULL|NULL|4,d,extra", "5|e|NULL"]
    );
}

#[tokio::test]
async fn empty_files_give_no_rows_and_no_error() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "empty.json", b"");
    drop_file(dir.path(), "one.json", b"{\"n\": 1}\n");
    let (session, query) = files_query(dir.path(), "n INT", "format = 'json'", "available_now").await;
    assert!(query.await_termination(None).await.unwrap());
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["1"]);
}

#[tokio::test]
async fn a_missing_directory_fails_the_query_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (_session, query) = files_query(&missing, "n INT", "format = 'json'", "available_now").await;
    let message = query.await_termination(None).await.unwrap_err().to_string();
    assert!(
        message.contains("nope") && message.contains("does not exist"),
        "{message}"
    );
}

#[tokio::test]
async fn a_file_removed_after_listing_is_an_error_naming_it() {
    use tidewater::{FileFormat, FilesSource, FilesSourceConfig, MalformedMode, ReadLimit, Source};
    let dir = tempfile::tempdir().unwrap();
    drop_file(dir.path(), "gone.json", b"{\"n\": 1}\n");
    let source = FilesSource::try_new(FilesSourceConfig {
        path: dir.path().display().to_string(),
        format: FileFormat::Json,
        schema: std::sync::Arc::new(tidewater::arrow::datatypes::Schema::new(vec![
            tidewater::arrow::datatypes::Field::new("n", tidewater::arrow::datatypes::DataType::Int32, true),
        ])),
        max_files_per_trigger: None,
        max_bytes_per_trigger: None,
        mode: MalformedMode::Permissive,
    })
    .unwrap();
    let end = source.latest_offset(None, ReadLimit::Default).await.unwrap().unwrap();
    std::fs::rename(dir.path().join("gone.json"), dir.path().join(".moved")).unwrap();
    let Err(error) = source.read(None, &end, None).await else {
        panic!("reading a file that is gone must fail");
    };
    let error = error.to_string();
    assert!(error.contains("gone.json") && error.contains("gone"), "{error}");
}

#[tokio::test]
async fn declared_types_that_do_not_fit_parquet_columns_are_refused_with_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StreamingSession::new();
    writer
        .sql(&format!(
            "COPY (SELECT 'not a number' AS n) TO '{}' STORED AS PARQUET",
            dir.path().join("_tmp.parquet").display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    std::fs::rename(dir.path().join("_tmp.parquet"), dir.path().join("x.parquet")).unwrap();
    let (_session, query) = files_query(dir.path(), "n STRUCT<a INT>", "format = 'parquet'", "available_now").await;
    let message = query.await_termination(None).await.unwrap_err().to_string();
    assert!(
        message.contains("x.parquet") && message.contains("column 'n'"),
        "{message}"
    );
}
