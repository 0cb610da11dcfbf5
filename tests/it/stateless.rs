//! Stateless streaming SQL over the memory source: each batch in, that batch's rows out.

use crate::common::{push_json, query_rows, start};
use tidewater::StreamingSession;

async fn session_with_events() -> StreamingSession {
    let session = StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE events (phone_id INT, time TIMESTAMP, action VARCHAR,
                 WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
             CREATE TABLE out WITH (connector = 'memory', output_mode = 'append');",
        )
        .await
        .unwrap();
    session
}

#[tokio::test]
async fn projection_and_filter_run_per_batch() {
    let session = session_with_events().await;
    let query = start(
        &session,
        "INSERT INTO out SELECT upper(action) AS action, phone_id FROM events WHERE phone_id > 10",
    )
    .await;

    push_json(
        &session,
        "events",
        &[
            r#"{"phone_id": 5, "time": "2026-01-01T10:00:00", "action": "open"}"#,
            r#"{"phone_id": 11, "time": "2026-01-01T10:01:00", "action": "open"}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["OPEN|11"]);

    push_json(
        &session,
        "events",
        &[r#"{"phone_id": 12, "time": "2026-01-01T10:02:00", "action": "close"}"#],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM out").await, ["OPEN|11", "CLOSE|12"]);

    let progress = query.recent_progress();
    assert_eq!(progress.iter().map(|p| p.num_input_rows).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(
        progress.iter().map(|p| p.sink.num_output_rows).collect::<Vec<_>>(),
        [1, 1]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn case_casts_and_string_functions() {
    let session = session_with_events().await;
    let query = start(
        &session,
        "INSERT INTO out SELECT
             CASE WHEN action = 'open' THEN 'in' ELSE 'out' END AS direction,
             CAST(phone_id AS VARCHAR) || '-' || substr(action, 1, 2) AS tag,
             CAST(time AS DATE) AS day,
             length(action) AS len
         FROM events",
    )
    .await;
    push_json(
        &session,
        "events",
        &[
            r#"{"phone_id": 1, "time": "2026-01-01T23:59:00", "action": "open"}"#,
            r#"{"phone_id": 2, "time": "2026-01-02T00:00:00", "action": "close"}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM out").await,
        ["in|1-op|2026-01-01|4", "out|2-cl|2026-01-02|5"]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn words_split_with_unnest() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE lines (value VARCHAR) WITH (connector = 'memory');
         CREATE TABLE words WITH (connector = 'memory');
         INSERT INTO words SELECT unnest(string_to_array(value, ' ')) AS word FROM lines",
    )
    .await;
    push_json(
        &session,
        "lines",
        &[r#"{"value": "the quick fox"}"#, r#"{"value": "the end"}"#],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM words").await,
        ["the", "quick", "fox", "the", "end"]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn json_fields_extracted_from_a_string_column() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE rsvps (value VARCHAR) WITH (connector = 'memory');
         CREATE TABLE venues WITH (connector = 'memory');
         INSERT INTO venues
         SELECT json_get_str(value, 'venue', 'venue_name') AS venue, value->>'response' AS response
         FROM rsvps WHERE json_get(value, 'venue') IS NOT NULL",
    )
    .await;
    push_json(
        &session,
        "rsvps",
        &[
            r#"{"value": "{\"venue\": {\"venue_name\": \"Hub\", \"lat\": 1.5}, \"response\": \"yes\"}"}"#,
            r#"{"value": "{\"response\": \"no\"}"}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(query_rows(&session, "SELECT * FROM venues").await, ["Hub|yes"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn union_all_of_two_streams() {
    let session = StreamingSession::new();
    let query = start(
        &session,
        "CREATE TABLE a (n INT) WITH (connector = 'memory');
         CREATE TABLE b (n INT) WITH (connector = 'memory');
         CREATE TABLE both_ WITH (connector = 'memory');
         INSERT INTO both_ SELECT n, 'a' AS src FROM a UNION ALL SELECT n * 10, 'b' FROM b",
    )
    .await;
    push_json(&session, "a", &[r#"{"n": 1}"#]);
    query.process_all_available().await.unwrap();
    push_json(&session, "b", &[r#"{"n": 2}"#]);
    push_json(&session, "a", &[r#"{"n": 3}"#]);
    query.process_all_available().await.unwrap();
    let mut rows = query_rows(&session, "SELECT * FROM both_").await;
    rows.sort();
    assert_eq!(rows, ["1|a", "20|b", "3|a"]);
    // Each batch reads only what arrived since the previous one.
    let inputs: u64 = query.recent_progress().iter().map(|p| p.num_input_rows).sum();
    assert_eq!(inputs, 3);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn join_with_a_static_table_and_a_udf() {
    use tidewater::datafusion::arrow::datatypes::DataType;
    use tidewater::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    let session = StreamingSession::new();
    let double = create_udf(
        "double_it",
        vec![DataType::Int32],
        DataType::Int32,
        Volatility::Immutable,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = tidewater::datafusion::common::cast::as_int32_array(&arrays[0])?;
            let doubled: tidewater::arrow::array::Int32Array = input.iter().map(|v| v.map(|v| v * 2)).collect();
            Ok(ColumnarValue::Array(std::sync::Arc::new(doubled)))
        }),
    );
    session.context().register_udf(double);
    session
        .sql("CREATE TABLE phones AS VALUES (1, 'alice'), (2, 'bob')")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let query = start(
        &session,
        "CREATE TABLE calls (phone_id INT) WITH (connector = 'memory');
         CREATE TABLE named WITH (connector = 'memory');
         INSERT INTO named SELECT p.column2 AS owner, double_it(c.phone_id) AS twice
         FROM calls c JOIN phones p ON c.phone_id = p.column1",
    )
    .await;
    push_json(
        &session,
        "calls",
        &[r#"{"phone_id": 2}"#, r#"{"phone_id": 3}"#, r#"{"phone_id": 1}"#],
    );
    query.process_all_available().await.unwrap();
    let mut rows = query_rows(&session, "SELECT * FROM named").await;
    rows.sort();
    assert_eq!(rows, ["alice|2", "bob|4"]);
    query.stop().await.unwrap();
}

#[tokio::test]
async fn plain_queries_over_static_tables_behave_as_in_datafusion() {
    let session = StreamingSession::new();
    let rows = query_rows(
        &session,
        "SELECT x, count(*) AS n FROM (VALUES (1), (1), (2)) AS t(x) GROUP BY x ORDER BY x",
    )
    .await;
    assert_eq!(rows, ["1|2", "2|1"]);
}
