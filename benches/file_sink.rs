//! Throughput of the files sink writing Parquet.
//!
//! The job: 10 batches of 100k rows (`id BIGINT, phone_id INT, action VARCHAR, amount DOUBLE`)
//! pushed into a memory stream, `INSERT INTO out SELECT * FROM events` into a files sink with
//! `format = 'parquet'`, one batch at a time. Reports rows per second over the whole run (wall
//! time, including the query's own work) and over the sink's `addBatch` time alone (which
//! includes running the batch plan, as in Spark), best of 3 runs.
//!
//! Run with `cargo bench --bench file_sink` (`ROWS=...` rows per batch, `BATCHES=...`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use tidewater::{StatementOutcome, StreamingSession};

const RUNS: usize = 3;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn batch(schema: tidewater::arrow::datatypes::SchemaRef, first: usize, rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (first..first + rows).map(|i| i as i64).collect();
    let phones: Vec<i32> = ids.iter().map(|i| (i % 1000) as i32).collect();
    let actions: Vec<&str> = ids
        .iter()
        .map(|i| ["open", "close", "crash"][(i % 3) as usize])
        .collect();
    let amounts: Vec<f64> = ids.iter().map(|i| (i % 977) as f64 + 0.5).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(Int32Array::from(phones)),
            Arc::new(StringArray::from(actions)),
            Arc::new(Float64Array::from(amounts)),
        ],
    )
    .expect("benchmark batch")
}

/// One run; returns the wall time, the summed `addBatch` time and the rows written.
async fn run(batches: usize, rows: usize) -> Result<(Duration, Duration, u64), Box<dyn std::error::Error>> {
    let (out, checkpoint) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let session = StreamingSession::new();
    let outcomes = session
        .run_script(&format!(
            "CREATE TABLE events (id BIGINT, phone_id INT, action VARCHAR, amount DOUBLE) WITH (connector = 'memory');
             CREATE TABLE out WITH (connector = 'files', format = 'parquet', path = '{}', checkpoint_location = '{}');
             INSERT INTO out SELECT * FROM events;",
            out.path().display(),
            checkpoint.path().display()
        ))
        .await?;
    let Some(StatementOutcome::Started(query)) = outcomes.into_iter().last() else {
        return Err("no query started".into());
    };
    let events = session.memory_stream("events")?;
    let schema = tidewater::Source::schema(&events);
    let start = Instant::now();
    for b in 0..batches {
        events.add_batch(batch(schema.clone(), b * rows, rows))?;
        query.process_all_available().await?;
    }
    let elapsed = start.elapsed();
    let progress = query.recent_progress();
    query.stop().await?;
    let add_batch = progress
        .iter()
        .map(|p| p.duration_ms.get("addBatch").copied().unwrap_or(0))
        .sum();
    let written = progress.iter().map(|p| p.sink.num_output_rows).sum();
    Ok((elapsed, Duration::from_millis(add_batch), written))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows = env("ROWS", 100_000);
    let batches = env("BATCHES", 10);
    let total = (rows * batches) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "file_sink: {batches} batches of {rows} rows to Parquet, {} cores",
        std::thread::available_parallelism()?
    );
    let (mut best_wall, mut best_sink) = (Duration::MAX, Duration::MAX);
    for i in 0..RUNS {
        let (wall, sink, written) = runtime.block_on(run(batches, rows))?;
        assert_eq!(written, total, "every row written once");
        println!(
            "  run {i}: wall {:.3} s, addBatch {:.3} s",
            wall.as_secs_f64(),
            sink.as_secs_f64()
        );
        best_wall = best_wall.min(wall);
        best_sink = best_sink.min(sink);
    }
    println!(
        "end to end        : {:>12.0} rows/s (best of {RUNS})",
        total as f64 / best_wall.as_secs_f64()
    );
    println!(
        "addBatch (sink)   : {:>12.0} rows/s (best of {RUNS})",
        total as f64 / best_sink.as_secs_f64().max(1e-9)
    );
    Ok(())
}
