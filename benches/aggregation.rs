//! Streaming aggregation throughput and state size, against DataFusion's batch query over the
//! same rows.
//!
//! - (a) hourly counts per action (tumbling window, watermark, append mode), 100 batches;
//! - (b) the same over 1 hour windows sliding every 5 minutes;
//! - (c) a running count per key over about 1M distinct keys (update mode), 100 batches.
//!
//! Input is pre-built Arrow batches pushed through the memory source, so the numbers are the
//! engine's, not a parser's. Also reported: (a) in rows/s on one core (a current-thread runtime),
//! and the state bytes per group of (c). Targets: (a) >= 0.5x batch throughput, >= 5M rows/s per
//! core; (c) <= 100 bytes of state per group.
//!
//! Run with `cargo bench --bench aggregation` (`ROWS=...` to change the size, default 10M).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tidewater::{StatementOutcome, StreamingSession};

const BATCHES: usize = 100;
const KEYS: i64 = 1_000_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("action", DataType::Utf8, false),
    ]))
}

/// `rows` events in `BATCHES` batches; time advances one second per row, keys are scattered.
fn input(rows: usize) -> Vec<RecordBatch> {
    let per = rows / BATCHES;
    (0..BATCHES)
        .map(|b| {
            let ids: Vec<i64> = ((b * per) as i64..((b + 1) * per) as i64).collect();
            let keys: Vec<i64> = ids.iter().map(|i| (i.wrapping_mul(2_654_435_761)) % KEYS).collect();
            let times: Vec<i64> = ids
                .iter()
                .map(|i| 1_767_225_600_000_000_000 + i * 1_000_000_000 / 50)
                .collect();
            let actions: Vec<&str> = ids
                .iter()
                .map(|i| ["open", "close", "crash"][(*i % 3) as usize])
                .collect();
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from(keys)),
                    Arc::new(TimestampNanosecondArray::from(times)),
                    Arc::new(StringArray::from(actions)),
                ],
            )
            .expect("batch")
        })
        .collect()
}

struct Streamed {
    elapsed: Duration,
    /// Total milliseconds per phase over all batches (`getBatch`, `addBatch`, ...).
    phases: std::collections::BTreeMap<String, u64>,
    batches: usize,
    output_rows: u64,
    groups: u64,
    state_bytes: u64,
}

async fn streaming(batches: &[RecordBatch], query: &str, mode: &str) -> tidewater::Result<Streamed> {
    let session = StreamingSession::new();
    session
        .run_script(&format!(
            "CREATE TABLE events (id BIGINT, time TIMESTAMP, action VARCHAR,
               WATERMARK FOR time AS time - INTERVAL '1' MINUTE) WITH (connector = 'memory');
             CREATE TABLE out WITH (connector = 'memory', output_mode = '{mode}');"
        ))
        .await?;
    let outcomes = session.run_script(&format!("INSERT INTO out {query}")).await?;
    let Some(StatementOutcome::Started(handle)) = outcomes.into_iter().last() else {
        return Err(tidewater::Error::Internal("no query started".into()));
    };
    let events = session.memory_stream("events")?;
    let start = Instant::now();
    for batch in batches {
        events.add_batch(batch.clone())?;
        handle.process_all_available().await?;
    }
    let elapsed = start.elapsed();
    let progress = handle.recent_progress();
    let last = progress
        .last()
        .and_then(|p| p.state_operators.first().cloned())
        .unwrap_or_default();
    handle.stop().await?;
    let mut phases = std::collections::BTreeMap::new();
    for p in &progress {
        for (phase, ms) in &p.duration_ms {
            *phases.entry(phase.clone()).or_insert(0) += ms;
        }
    }
    Ok(Streamed {
        elapsed,
        phases,
        batches: progress.len(),
        output_rows: progress.iter().map(|p| p.sink.num_output_rows).sum(),
        groups: last.num_rows_total,
        state_bytes: last.memory_used_bytes,
    })
}

async fn batch(batches: &[RecordBatch], query: &str) -> tidewater::Result<(Duration, usize)> {
    let session = StreamingSession::new();
    let table = tidewater::datafusion::datasource::MemTable::try_new(schema(), vec![batches.to_vec()])?;
    session.context().register_table("events", Arc::new(table))?;
    let start = Instant::now();
    let rows = session.sql(query).await?.collect().await?;
    Ok((start.elapsed(), rows.iter().map(|b| b.num_rows()).sum()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000_000);
    let batches = input(rows);
    let multi = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let single = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!(
        "aggregation: {rows} events in {BATCHES} batches, {} cores",
        std::thread::available_parallelism()?
    );
    let cases = [
        (
            "(a) hourly counts, tumbling, append",
            "SELECT action, window(time, '1 hour') AS w, count(*) AS n FROM events GROUP BY action, window(time, '1 hour')",
            "append",
        ),
        (
            "(b) 1 hour / 5 minute sliding, append",
            "SELECT action, window(time, '1 hour', '5 minutes') AS w, count(*) AS n FROM events \
             GROUP BY action, window(time, '1 hour', '5 minutes')",
            "append",
        ),
        (
            "(c) running count per key, update",
            "SELECT id, count(*) AS n FROM events GROUP BY id",
            "update",
        ),
    ];
    for (name, query, mode) in cases {
        let (batch_time, _) = multi.block_on(batch(&batches, query))?;
        let streamed = multi.block_on(streaming(&batches, query, mode))?;
        let batch_rate = rows as f64 / batch_time.as_secs_f64();
        let stream_rate = rows as f64 / streamed.elapsed.as_secs_f64();
        println!("{name}");
        println!(
            "  DataFusion batch : {:>12.0} rows/s ({:.2} s)",
            batch_rate,
            batch_time.as_secs_f64()
        );
        println!(
            "  Tidewater stream : {:>12.0} rows/s ({:.2} s), ratio {:.2}, {} rows emitted",
            stream_rate,
            streamed.elapsed.as_secs_f64(),
            stream_rate / batch_rate,
            streamed.output_rows
        );
        println!(
            "  {} batches; ms per phase in total: {:?}",
            streamed.batches, streamed.phases
        );
        if mode == "update" {
            println!(
                "  state: {} groups, {} bytes, {:.1} bytes per group",
                streamed.groups,
                streamed.state_bytes,
                streamed.state_bytes as f64 / streamed.groups.max(1) as f64
            );
        }
        if name.starts_with("(a)") {
            let one_core = single.block_on(streaming(&batches, query, mode))?;
            println!(
                "  one core         : {:>12.0} rows/s",
                rows as f64 / one_core.elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}
