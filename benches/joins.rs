//! Join throughput and state size, against DataFusion's batch join of the same rows.
//!
//! - (a) a stream-stream inner join of impressions and clicks (`ROWS` each, default 5M), on the
//!   impression id and a 1-hour time range, both streams with a 10-minute watermark: rows/s
//!   over both inputs, rows emitted, and the peak state (rows and bytes) of the join;
//! - (b) a stream-static join of `STATIC_ROWS` stream rows (default 10M) with a 100k-row
//!   static table.
//!
//! Input is pre-built Arrow batches pushed through the memory source in 100 batches, so the
//! numbers are the engine's, not a parser's. Run with `cargo bench --bench joins`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use tidewater::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tidewater::datafusion::datasource::MemTable;
use tidewater::{StatementOutcome, StreamingSession};

const BATCHES: usize = 100;
const BASE: i64 = 1_767_225_600_000_000_000;
const MILLI: i64 = 1_000_000;

fn timed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]))
}

/// `rows` rows in `BATCHES` batches: ids in order, one every millisecond of event time, shifted
/// by `offset` nanoseconds.
fn timed(rows: usize, offset: i64) -> Vec<RecordBatch> {
    let per = rows / BATCHES;
    (0..BATCHES)
        .map(|b| {
            let ids: Vec<i64> = ((b * per) as i64..((b + 1) * per) as i64).collect();
            let times: Vec<i64> = ids.iter().map(|i| BASE + offset + i * MILLI).collect();
            RecordBatch::try_new(
                timed_schema(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(TimestampNanosecondArray::from(times)),
                ],
            )
            .expect("batch")
        })
        .collect()
}

/// What a streaming run did.
struct Run {
    elapsed: Duration,
    output_rows: u64,
    peak_state_rows: u64,
    peak_state_bytes: u64,
}

/// Starts `query` into a memory sink and pushes `inputs` (stream name, batches), batch by batch.
async fn stream(session: &StreamingSession, query: &str, inputs: &[(&str, &[RecordBatch])]) -> tidewater::Result<Run> {
    session
        .run_script("CREATE TABLE out WITH (connector = 'memory', output_mode = 'append', state_partitions = '1')")
        .await?;
    let outcomes = session.run_script(&format!("INSERT INTO out {query}")).await?;
    let Some(StatementOutcome::Started(handle)) = outcomes.into_iter().last() else {
        return Err(tidewater::Error::Internal("no query started".into()));
    };
    let streams = inputs
        .iter()
        .map(|(name, _)| session.memory_stream(name))
        .collect::<tidewater::Result<Vec<_>>>()?;
    let start = Instant::now();
    let (mut peak_state_rows, mut peak_state_bytes) = (0, 0);
    for b in 0..BATCHES {
        for (stream, (_, batches)) in streams.iter().zip(inputs) {
            stream.add_batch(batches[b].clone())?;
        }
        handle.process_all_available().await?;
        // Progress keeps the latest batches only: the peak is followed as the run goes.
        for p in handle.recent_progress() {
            if let Some(state) = p.state_operators.first() {
                peak_state_rows = peak_state_rows.max(state.num_rows_total);
                peak_state_bytes = peak_state_bytes.max(state.memory_used_bytes);
            }
        }
    }
    let elapsed = start.elapsed();
    handle.stop().await?;
    let counted = session.sql("SELECT count(*) FROM out").await?.collect().await?;
    let output_rows = counted
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>())
        .map_or(0, |c| c.value(0) as u64);
    Ok(Run {
        elapsed,
        output_rows,
        peak_state_rows,
        peak_state_bytes,
    })
}

/// DataFusion's batch query over the same rows, as tables.
async fn batch(tables: &[(&str, SchemaRef, &[RecordBatch])], query: &str) -> tidewater::Result<(Duration, usize)> {
    let session = StreamingSession::new();
    for (name, schema, batches) in tables {
        let table = MemTable::try_new(schema.clone(), vec![batches.to_vec()])?;
        session.context().register_table(*name, Arc::new(table))?;
    }
    let start = Instant::now();
    let rows = session.sql(query).await?.collect().await?;
    Ok((start.elapsed(), rows.iter().map(|b| b.num_rows()).sum()))
}

fn report(name: &str, input_rows: usize, batch: (Duration, usize), run: &Run) {
    let batch_rate = input_rows as f64 / batch.0.as_secs_f64();
    let stream_rate = input_rows as f64 / run.elapsed.as_secs_f64();
    println!("{name}");
    println!(
        "  DataFusion batch : {batch_rate:>12.0} rows/s ({:.2} s), {} rows",
        batch.0.as_secs_f64(),
        batch.1
    );
    println!(
        "  Tidewater stream : {stream_rate:>12.0} rows/s ({:.2} s), ratio {:.2}, {} rows emitted",
        run.elapsed.as_secs_f64(),
        stream_rate / batch_rate,
        run.output_rows
    );
    if run.peak_state_rows > 0 {
        println!(
            "  peak state       : {} rows, {} bytes ({:.0} bytes per row)",
            run.peak_state_rows,
            run.peak_state_bytes,
            run.peak_state_bytes as f64 / run.peak_state_rows as f64
        );
    }
}

fn size(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|r| r.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("joins: {} cores", std::thread::available_parallelism()?);

    // (a) Each click comes 10 minutes after its impression.
    let rows = size("ROWS", 5_000_000);
    let impressions = timed(rows, 0);
    let clicks = timed(rows, 10 * 60_000 * MILLI);
    let join = "SELECT i.id, i.time AS shown, c.time AS clicked FROM impressions i JOIN clicks c \
                ON c.id = i.id AND c.time BETWEEN i.time AND i.time + INTERVAL '1' HOUR";
    let batch_a = runtime.block_on(batch(
        &[
            ("impressions", timed_schema(), &impressions),
            ("clicks", timed_schema(), &clicks),
        ],
        join,
    ))?;
    let run_a = runtime.block_on(async {
        let session = StreamingSession::new();
        session
            .run_script(
                "CREATE TABLE impressions (id BIGINT, time TIMESTAMP,
                   WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');
                 CREATE TABLE clicks (id BIGINT, time TIMESTAMP,
                   WATERMARK FOR time AS time - INTERVAL '10' MINUTE) WITH (connector = 'memory');",
            )
            .await?;
        stream(&session, join, &[("impressions", &impressions), ("clicks", &clicks)]).await
    })?;
    report(
        &format!("(a) stream-stream inner join, {rows} + {rows} rows, 1-hour range"),
        2 * rows,
        batch_a,
        &run_a,
    );

    // (b) Every stream row finds its one static row.
    let rows = size("STATIC_ROWS", 10_000_000);
    let events = timed(rows, 0);
    let names_schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let keys: Vec<i64> = (0..100_000).collect();
    let names: Vec<String> = keys.iter().map(|k| format!("name-{k}")).collect();
    let names = RecordBatch::try_new(
        names_schema.clone(),
        vec![Arc::new(Int64Array::from(keys)), Arc::new(StringArray::from(names))],
    )?;
    let lookup = "SELECT e.id, n.name FROM events e JOIN names n ON e.id % 100000 = n.key";
    let batch_b = runtime.block_on(batch(
        &[
            ("events", timed_schema(), &events),
            ("names", names_schema.clone(), std::slice::from_ref(&names)),
        ],
        lookup,
    ))?;
    let run_b = runtime.block_on(async {
        let session = StreamingSession::new();
        session
            .run_script("CREATE TABLE events (id BIGINT, time TIMESTAMP) WITH (connector = 'memory')")
            .await?;
        let table = MemTable::try_new(names_schema, vec![vec![names]])?;
        session.context().register_table("names", Arc::new(table))?;
        stream(&session, lookup, &[("events", &events)]).await
    })?;
    report(
        &format!("(b) stream-static join, {rows} stream rows, 100k static rows"),
        rows,
        batch_b,
        &run_b,
    );
    Ok(())
}
