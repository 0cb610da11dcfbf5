//! Bad statements and options are refused at once, naming the option and the valid choices.

use tidewater::{ErrorKind, StreamingSession};

async fn error_of(session: &StreamingSession, sql: &str) -> tidewater::Error {
    match session.run_script(sql).await {
        Ok(_) => panic!("expected an error for: {sql}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn unknown_options_list_the_valid_ones() {
    let session = StreamingSession::new();
    let e = error_of(
        &session,
        "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'json', path = 'x', max_file = '3')",
    )
    .await;
    let message = e.to_string();
    assert!(message.contains("unknown option 'max_file'"), "{message}");
    assert!(message.contains("max_files_per_trigger"), "{message}");
    assert!(message.starts_with("statement 1 (line 1)"), "{message}");
    assert_eq!(e.kind(), ErrorKind::User);

    let message = error_of(&session, "CREATE TABLE s WITH (connector = 'console', colour = 'red')")
        .await
        .to_string();
    assert!(
        message.contains("unknown option 'colour'") && message.contains("output_mode"),
        "{message}"
    );
}

#[tokio::test]
async fn bad_values_name_the_option_and_the_choices() {
    let session = StreamingSession::new();
    let cases = [
        (
            "CREATE TABLE s WITH (connector = 'console', output_mode = 'appendd')",
            "append, update, complete",
        ),
        (
            "CREATE TABLE s WITH (connector = 'console', trigger = 'sometimes')",
            "option 'trigger'",
        ),
        (
            "CREATE TABLE s WITH (connector = 'console', trigger = '1 month')",
            "months",
        ),
        (
            "CREATE TABLE s WITH (connector = 'console', num_rows = '-1')",
            "option 'num_rows'",
        ),
        ("CREATE TABLE s WITH (connector = 'kafkaa')", "one of: console, memory"),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'xml', path = 'x')",
            "json, csv, parquet, text",
        ),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'json', path = 'x', mode = 'lenient')",
            "drop_malformed",
        ),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'json')",
            "option 'path' is required",
        ),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'json', path = 'x', header = 'true')",
            "only apply to format 'csv'",
        ),
        (
            "CREATE TABLE t (a INT) WITH (connector = 'files', format = 'text', path = 'x')",
            "one string column",
        ),
        (
            "CREATE TABLE t (a INT) WITH (path = 'x')",
            "option 'connector' is required",
        ),
    ];
    for (sql, expected) in cases {
        let message = error_of(&session, sql).await.to_string();
        assert!(
            message.contains(expected),
            "{sql}\n  gave: {message}\n  expected to contain: {expected}"
        );
    }
}

#[tokio::test]
async fn watermark_declarations_are_checked() {
    let session = StreamingSession::new();
    let message = error_of(
        &session,
        "CREATE TABLE e (n INT, WATERMARK FOR n AS n - INTERVAL '1' MINUTE) WITH (connector = 'memory')",
    )
    .await
    .to_string();
    assert!(message.contains("needs a TIMESTAMP column"), "{message}");
    let message = error_of(
        &session,
        "CREATE TABLE e (t TIMESTAMP, WATERMARK FOR x AS x - INTERVAL '1' MINUTE) WITH (connector = 'memory')",
    )
    .await
    .to_string();
    assert!(message.contains("no such column"), "{message}");
    let message = error_of(
        &session,
        "CREATE TABLE e (t TIMESTAMP, WATERMARK FOR t AS t * 2) WITH (connector = 'memory')",
    )
    .await
    .to_string();
    assert!(message.contains("WATERMARK FOR t"), "{message}");
    // Both interval spellings are accepted.
    session
        .run_script(
            "CREATE TABLE ok1 (t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '10' MINUTE) WITH (connector = 'memory');
             CREATE TABLE ok2 (t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '30 seconds') WITH (connector = 'memory');",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn queries_a_stream_cannot_serve_are_refused_at_start() {
    let session = StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE e (n INT, s VARCHAR) WITH (connector = 'memory');
             CREATE TABLE c WITH (connector = 'console', output_mode = 'complete');
             CREATE TABLE m WITH (connector = 'memory');",
        )
        .await
        .unwrap();
    let cases = [
        (
            "INSERT INTO c SELECT n FROM e",
            "output mode 'complete' needs an aggregation",
        ),
        (
            "INSERT INTO m SELECT s, count(*) FROM e GROUP BY s",
            "needs an event-time window with a watermark",
        ),
        (
            "INSERT INTO c SELECT DISTINCT s FROM e",
            "output mode 'complete' needs an aggregation: SELECT DISTINCT",
        ),
        (
            "INSERT INTO m SELECT DISTINCT ON (s) n, s FROM e ORDER BY s, n",
            "leave out the ORDER BY",
        ),
        (
            "INSERT INTO c SELECT n, count(*) FROM (SELECT s, count(*) AS n FROM e GROUP BY s) GROUP BY n",
            "an aggregation that feeds another stateful operator must emit each group once",
        ),
        (
            "INSERT INTO m SELECT s, count(*) FROM e GROUP BY s UNION ALL SELECT s, count(*) FROM e GROUP BY s",
            "side by side",
        ),
        ("INSERT INTO m SELECT n FROM e ORDER BY n", "ORDER BY"),
        (
            "INSERT INTO m SELECT s, count(*) AS k FROM e GROUP BY s ORDER BY k",
            "need output mode 'complete'",
        ),
        (
            "INSERT INTO c SELECT window(n, '1 hour') AS w, count(*) FROM e GROUP BY window(n, '1 hour')",
            "must be a TIMESTAMP",
        ),
        (
            "INSERT INTO c SELECT count(*) FROM e GROUP BY window(s, '0 seconds')",
            "width must be above zero",
        ),
        (
            "INSERT INTO c SELECT count(*) FROM e GROUP BY window(s, '-1 hour')",
            "negative",
        ),
        (
            "INSERT INTO c SELECT count(*) FROM e GROUP BY window(s, '1 month')",
            "months",
        ),
        (
            "INSERT INTO c SELECT count(*) FROM e GROUP BY window(s, '1 hour', '2 hours')",
            "must not exceed the width",
        ),
        (
            "INSERT INTO m SELECT a.n FROM e a LEFT ANTI JOIN e b ON a.n = b.n",
            "a left anti join (as EXCEPT and NOT EXISTS are) of two streams is not supported",
        ),
        ("INSERT INTO m SELECT 1 AS one", "must read at least one stream"),
    ];
    for (sql, expected) in cases {
        let message = error_of(&session, sql).await.to_string();
        assert!(message.contains(expected), "{sql}\n  gave: {message}");
    }
    // A plain query over a stream explains how to run it.
    let message = error_of(&session, "SELECT * FROM e").await.to_string();
    assert!(
        message.contains("'e' is a stream") && message.contains("INSERT INTO"),
        "{message}"
    );
    assert!(session.active_queries().is_empty());
}

#[tokio::test]
async fn errors_point_at_the_statement_line() {
    let session = StreamingSession::new();
    let message = error_of(
        &session,
        "CREATE TABLE e (n INT) WITH (connector = 'memory');\n\n\nSELEC oops;",
    )
    .await
    .to_string();
    assert!(message.starts_with("statement 2 (line 4)"), "{message}");
}
