//! Course program: count each action per hour of event time, with late data and a watermark, into
//! a database, then query it with plain SQL (lecture, "Spark Structured Streaming API":
//! `inputDF.groupBy($"action", window($"time", "1 hour")).count()` written to MySQL), with the
//! DataFrame API. The SQL twin is `sql/07_hourly_actions.sql`.
//!
//! ```sh
//! cargo run --example 07_hourly_actions -- data/events sqlite://out/rust_hourly_actions.db
//! sqlite3 out/rust_hourly_actions.db 'SELECT * FROM hourly_actions'
//! ```
//! Reads the files there now, one per batch, then stops and prints the table as SQLite holds it.
//! A `postgres://` or `mysql://` URL writes to that database instead (and skips the printing).
//!
//! The watermark is the latest event time seen minus 10 minutes. A late event whose hour the
//! watermark has not passed yet still counts, and update mode updates that hour's row; one whose
//! hour is final is dropped and counted in the progress report (`numRowsDroppedByWatermark`).

use std::sync::Arc;

use tidewater::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tidewater::datafusion::functions_aggregate::expr_fn::count;
use tidewater::datafusion::prelude::{col, lit};
use tidewater::{OutputMode, StreamingDataFrame, StreamingSession, Trigger};

/// The name of the table the counts go to.
pub(crate) const TABLE: &str = "hourly_actions";

/// The phone events (`phone_id`, `time`, `action`) in the JSON files of `directory`, one file per
/// batch, with a watermark 10 minutes behind the latest `time`.
pub(crate) async fn events(session: &StreamingSession, directory: &str) -> tidewater::Result<StreamingDataFrame> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("phone_id", DataType::Int32, true),
        Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("action", DataType::Utf8, true),
    ]));
    session
        .read_stream()
        .format("json")
        .schema(schema)
        .option("max_files_per_trigger", 1)
        .load(directory)
        .await?
        .with_watermark("time", "10 minutes")
}

/// Actions per hour: `action`, `w` (`{start, end}`, in the table `w_start` and `w_end`), `n`.
pub(crate) fn hourly_actions(events: StreamingDataFrame) -> tidewater::Result<StreamingDataFrame> {
    events.aggregate(
        vec![col("action"), tidewater::window(col("time"), "1 hour").alias("w")],
        vec![count(lit(1)).alias("n")],
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let directory = args.next().unwrap_or_else(|| "data/events".to_string());
    let url = args
        .next()
        .unwrap_or_else(|| "sqlite://out/rust_hourly_actions.db".to_string());

    let session = StreamingSession::new();
    let query = hourly_actions(events(&session, &directory).await?)?
        .write_stream()
        .format("database")
        .option("url", &url)
        .option("table", TABLE)
        .option("checkpoint_location", "out/checkpoints/rust_hourly_actions")
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    query.await_termination(None).await?;
    let dropped: u64 = query
        .recent_progress()
        .iter()
        .flat_map(|p| &p.state_operators)
        .map(|s| s.num_rows_dropped_by_watermark)
        .sum();
    println!("{dropped} late events dropped");

    // The result is an ordinary table: any SQL client reads it.
    if let Some(path) = url.strip_prefix("sqlite://") {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}")).await?;
        let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT action, w_start, n FROM {TABLE} ORDER BY w_start, action"
        ))
        .fetch_all(&pool)
        .await?;
        for (action, hour, n) in rows {
            println!("{hour}  {action:<6} {n}");
        }
    }
    Ok(())
}
