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
