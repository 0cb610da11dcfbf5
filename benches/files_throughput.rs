//! Throughput of a stateless streaming query over the files source, against DataFusion reading
//! the same files as one batch query.
//!
//! The job: 1M newline-delimited JSON rows in 20 files; `SELECT upper(action), phone_id, amount
//! WHERE phone_id > 500`. The streaming side reads them with `trigger = 'available_now'` and
//! `max_files_per_trigger = '2'` (10 batches) into a memory sink. Target: at least 0.7x the batch
//! query's rows per second.
//!
//! Run with `cargo bench --bench files_throughput` (`ROWS=...` to change the size).

use std::io::Write;
use std::time::{Duration, Instant};

use tidewater::{StatementOutcome, StreamingSession};

const FILES: usize = 20;
const RUNS: usize = 3;
const QUERY: &str = "SELECT upper(action) AS action, phone_id, amount FROM events WHERE phone_id > 500";

fn write_input(dir: &std::path::Path, rows: usize) -> std::io::Result<()> {
    let per_file = rows / FILES;
    for f in 0..FILES {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("part-{f:03}.json")))?);
        for i in 0..per_file {
            let n = f * per_file + i;
            writeln!(
                out,
                r#"{{"phone_id": {}, "time": "2026-01-01T{:02}:{:02}:{:02}", "action": "{}", "amount": {}.5}}"#,
                n % 1000,
                (n / 3600) % 24,
                (n / 60) % 60,
                n % 60,
                ["open", "close", "crash"][n % 3],
                n % 977
            )?;
        }
    }
    Ok(())
}

/// Runs the streaming query; returns its wall time, the rows it read and the rows it kept.
async fn streaming(dir: &str) -> tidewater::Result<(Duration, usize, usize)> {
    let session = StreamingSession::new();
    let start = Instant::now();
    let outcomes = session
        .run_script(&format!(
            "CREATE TABLE events (phone_id INT, time TIMESTAMP, action VARCHAR, amount DOUBLE)
               WITH (connector = 'files', format = 'json', path = '{dir}', max_files_per_trigger = '2');
             CREATE TABLE out WITH (connector = 'memory', trigger = 'available_now');
             INSERT INTO out {QUERY};"
        ))
        .await?;
    let Some(StatementOutcome::Started(query)) = outcomes.into_iter().last() else {
        return Err(tidewater::Error::Internal("no query started".into()));
    };
    query.await_termination(None).await?;
    let elapsed = start.elapsed();
    let progress = query.recent_progress();
    let read = progress.iter().map(|p| p.num_input_rows as usize).sum();
    let kept = progress.iter().map(|p| p.sink.num_output_rows as usize).sum();
    Ok((elapsed, read, kept))
}

/// Runs the same query as one DataFusion batch query; returns its wall time and the rows it kept.
async fn batch(dir: &str) -> tidewater::Result<(Duration, usize)> {
    let session = StreamingSession::new();
    let start = Instant::now();
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE events (phone_id INT, time TIMESTAMP, action VARCHAR, amount DOUBLE)
             STORED AS JSON LOCATION '{dir}/'"
        ))
        .await?
        .collect()
        .await?;
    let result = session.sql(QUERY).await?.collect().await?;
    Ok((start.elapsed(), result.iter().map(|b| b.num_rows()).sum()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    write_input(dir.path(), rows)?;
    let path = dir.path().display().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "files_throughput: {rows} JSON rows in {FILES} files, {} cores",
        std::thread::available_parallelism()?
    );
    let mut best_stream = Duration::MAX;
    let mut best_batch = Duration::MAX;
    for run in 0..RUNS {
        let (b, batch_kept) = runtime.block_on(batch(&path))?;
        let (s, read, kept) = runtime.block_on(streaming(&path))?;
        assert_eq!(read, rows / FILES * FILES, "the streaming query read every row once");
        assert_eq!(kept, batch_kept, "streaming and batch keep the same rows");
        println!(
            "  run {run}: batch {:.3} s, streaming {:.3} s",
            b.as_secs_f64(),
            s.as_secs_f64()
        );
        best_batch = best_batch.min(b);
        best_stream = best_stream.min(s);
    }
    let batch_rate = rows as f64 / best_batch.as_secs_f64();
    let stream_rate = rows as f64 / best_stream.as_secs_f64();
    println!("DataFusion batch query : {:>12.0} rows/s (best of {RUNS})", batch_rate);
    println!("Tidewater streaming    : {:>12.0} rows/s (best of {RUNS})", stream_rate);
    println!(
        "ratio streaming/batch  : {:.2} (target >= 0.70)",
        stream_rate / batch_rate
    );
    Ok(())
}
