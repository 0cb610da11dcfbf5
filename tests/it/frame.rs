//! The Rust DataFrame API: read_stream, the DataFrame verbs, write_stream.

use std::sync::Arc;

use crate::common::{drop_file, query_rows};
use tidewater::arrow::datatypes::{DataType, Field, Schema};
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingSession, Trigger};

#[tokio::test]
async fn read_transform_and_write_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    drop_file(
        dir.path(),
        "a.json",
        b"{\"phone_id\": 3, \"action\": \"open\"}\n{\"phone_id\": 12, \"action\": \"close\"}\n",
    );
    let session = StreamingSession::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("phone_id", DataType::Int32, true),
        Field::new("action", DataType::Utf8, true),
    ]));
    let query = session
        .read_stream()
        .format("json")
        .schema(schema)
        .option("max_files_per_trigger", 1)
        .load(&dir.path().display().to_string())
        .await
        .unwrap()
        .filter(col("phone_id").gt(lit(10)))
        .unwrap()
        .with_column("loud", tidewater::datafusion::functions::expr_fn::upper(col("action")))
        .unwrap()
        .select_columns(&["loud", "phone_id"])
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("loud_actions")
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    assert_eq!(query.name(), Some("loud_actions"));
    assert_eq!(query_rows(&session, "SELECT * FROM loud_actions").await, ["CLOSE|12"]);
}

#[tokio::test]
async fn memory_sink_needs_a_query_name_and_text_needs_no_schema() {
    let dir = tempfile::tempdir().unwrap();
    let session = StreamingSession::new();
    let frame = session
        .read_stream()
        .format("text")
        .load(&dir.path().display().to_string())
        .await
        .unwrap();
    assert_eq!(frame.schema().fields().len(), 1);
    let error = frame.write_stream().format("memory").start().await.unwrap_err();
    assert!(error.to_string().contains("query_name"), "{error}");

    let error = session.read_stream().format("json").load("x").await.unwrap_err();
    assert!(error.to_string().contains("column list"), "{error}");
}

#[tokio::test]
async fn windowed_counts_with_a_watermark_from_the_dataframe_api() {
    use tidewater::datafusion::functions::core::expr_ext::FieldAccessor;
    use tidewater::datafusion::functions_aggregate::expr_fn::count;
    let dir = tempfile::tempdir().unwrap();
    drop_file(
        dir.path(),
        "a.json",
        b"{\"time\": \"2026-01-01T10:05:00\", \"action\": \"open\"}\n{\"time\": \"2026-01-01T10:35:00\", \"action\": \"open\"}\n{\"time\": \"2026-01-01T12:00:00\", \"action\": \"close\"}\n",
    );
    let session = StreamingSession::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(tidewater::arrow::datatypes::TimeUnit::Nanosecond, None),
            true,
        ),
        Field::new("action", DataType::Utf8, true),
    ]));
    let events = session
        .read_stream()
        .format("json")
        .schema(schema)
        .load(&dir.path().display().to_string())
        .await
        .unwrap();
    assert!(events.clone().with_watermark("nope", "10 minutes").is_err());
    let query = events
        .with_watermark("time", "10 minutes")
        .unwrap()
        .aggregate(
            vec![col("action"), tidewater::window(col("time"), "1 hour").alias("w")],
            vec![count(lit(1)).alias("n")],
        )
        .unwrap()
        .select(vec![col("action"), col("w").field("start").alias("start"), col("n")])
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("hourly")
        .output_mode(OutputMode::Append)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    // The watermark (11:50) closed the 10:00 window only.
    assert_eq!(
        query_rows(&session, "SELECT * FROM hourly").await,
        ["open|2026-01-01T10:00:00|2"]
    );
}

/// Runs `drop_duplicates(["user"])` over the JSON files of `input` once, with `checkpoint`, and
/// returns the rows this run emitted.
async fn first_visits_once(input: &std::path::Path, checkpoint: &std::path::Path) -> Vec<String> {
    let session = StreamingSession::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, true),
        Field::new("page", DataType::Utf8, true),
    ]));
    let visits = session
        .read_stream()
        .format("json")
        .schema(schema)
        .load(&input.display().to_string())
        .await
        .unwrap();
    assert!(visits.clone().drop_duplicates(&["nope"]).is_err());
    let query = visits
        .drop_duplicates(&["user"])
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("first_visits")
        .option("checkpoint_location", checkpoint.display())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    query_rows(&session, "SELECT * FROM first_visits ORDER BY user").await
}

#[tokio::test]
async fn drop_duplicates_keeps_the_first_row_of_each_key_across_batches_and_restarts() {
    let (input, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    drop_file(
        input.path(),
        "1.json",
        b"{\"user\": 1, \"page\": \"home\"}\n{\"user\": 2, \"page\": \"home\"}\n{\"user\": 1, \"page\": \"cart\"}\n",
    );
    assert_eq!(
        first_visits_once(input.path(), checkpoint.path()).await,
        ["1|home", "2|home"]
    );
    // After a restart from the checkpoint, users seen before do not come out again.
    drop_file(
        input.path(),
        "2.json",
        b"{\"user\": 2, \"page\": \"pay\"}\n{\"user\": 3, \"page\": \"cart\"}\n{\"user\": 1, \"page\": \"home\"}\n",
    );
    assert_eq!(first_visits_once(input.path(), checkpoint.path()).await, ["3|cart"]);
}

#[tokio::test]
async fn drop_duplicates_within_watermark_forgets_a_key_once_the_watermark_passes_it() {
    let dir = tempfile::tempdir().unwrap();
    // One file per batch (max_files_per_trigger = 1).
    drop_file(
        dir.path(),
        "1.json",
        b"{\"user\": 1, \"time\": \"2026-01-01T10:00:00\"}\n{\"user\": 1, \"time\": \"2026-01-01T10:05:00\"}\n",
    );
    drop_file(
        dir.path(),
        "2.json",
        b"{\"user\": 2, \"time\": \"2026-01-01T10:30:00\"}\n",
    );
    drop_file(
        dir.path(),
        "3.json",
        b"{\"user\": 1, \"time\": \"2026-01-01T10:25:00\"}\n",
    );
    drop_file(
        dir.path(),
        "4.json",
        b"{\"user\": 1, \"time\": \"2026-01-01T10:40:00\"}\n",
    );
    let session = StreamingSession::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, true),
        Field::new(
            "time",
            DataType::Timestamp(tidewater::arrow::datatypes::TimeUnit::Nanosecond, None),
            true,
        ),
    ]));
    let logins = session
        .read_stream()
        .format("json")
        .schema(schema)
        .option("max_files_per_trigger", 1)
        .load(&dir.path().display().to_string())
        .await
        .unwrap();
    assert!(
        logins.clone().drop_duplicates_within_watermark(&["user"]).is_err(),
        "no watermark"
    );
    let query = logins
        .with_watermark("time", "10 minutes")
        .unwrap()
        .drop_duplicates_within_watermark(&["user"])
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("first_logins")
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    // User 1 is held until the watermark passes 10:10. The watermark reaches 10:20 after the
    // second file, but a batch forgets keys after its rows (as Spark's does): the third file's
    // 10:25 login is still a repeat, the fourth file's is a first again.
    assert_eq!(
        query_rows(&session, "SELECT * FROM first_logins ORDER BY time").await,
        [
            "1|2026-01-01T10:00:00",
            "2|2026-01-01T10:30:00",
            "1|2026-01-01T10:40:00"
        ]
    );
    query.stop().await.unwrap();
}

#[tokio::test]
async fn two_streams_joined_from_the_dataframe_api() {
    use tidewater::datafusion::prelude::JoinType;
    let session = StreamingSession::new();
    session
        .run_script(
            "CREATE TABLE shown (ad INT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '5' MINUTE)
               WITH (connector = 'memory');
             CREATE TABLE clicked (ad INT, time TIMESTAMP, WATERMARK FOR time AS time - INTERVAL '5' MINUTE)
               WITH (connector = 'memory');",
        )
        .await
        .unwrap();
    let shown = session.stream("shown").await.unwrap();
    let clicked = session.stream("clicked").await.unwrap();
    let within = col("clicked.time")
        .gt_eq(col("shown.time"))
        .and(col("clicked.time").lt_eq(
            col("shown.time")
                + lit(tidewater::datafusion::scalar::ScalarValue::new_interval_mdn(
                    0,
                    0,
                    600_000_000_000,
                )),
        ));
    let query = shown
        .join(
            clicked,
            JoinType::Inner,
            vec![col("shown.ad").eq(col("clicked.ad")), within],
        )
        .unwrap()
        .select(vec![col("shown.ad"), col("clicked.time").alias("clicked")])
        .unwrap()
        .write_stream()
        .format("memory")
        .query_name("clicks_of_ads")
        .start()
        .await
        .unwrap();
    crate::common::push_json(
        &session,
        "shown",
        &[
            r#"{"ad": 1, "time": "2026-01-01T10:00:00"}"#,
            r#"{"ad": 2, "time": "2026-01-01T10:00:00"}"#,
        ],
    );
    crate::common::push_json(
        &session,
        "clicked",
        &[
            r#"{"ad": 1, "time": "2026-01-01T10:04:00"}"#,
            r#"{"ad": 2, "time": "2026-01-01T10:20:00"}"#,
        ],
    );
    query.process_all_available().await.unwrap();
    assert_eq!(
        query_rows(&session, "SELECT * FROM clicks_of_ads").await,
        ["1|2026-01-01T10:04:00"]
    );
    assert!(
        query.explain().contains("StreamJoin: inner join of shown and clicked"),
        "{}",
        query.explain()
    );
    query.stop().await.unwrap();
}
