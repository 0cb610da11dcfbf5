//! Rows per second the database sink writes, per database and output mode.
//!
//! The job: 10 batches of 100k rows pushed into a memory stream `(id BIGINT, word VARCHAR,
//! amount DOUBLE, time TIMESTAMP)`, each batch processed before the next is pushed.
//! - append: `SELECT id, word, amount, time FROM events` — every row inserted;
//! - update: `SELECT id % 150000 AS k, count(*), sum(amount) ... GROUP BY k` — 100k groups a
//!   batch, upserted; from the second batch on, most already exist and are updated.
//!
//! The same queries into a memory sink give the engine's own cost, so the database's share can be
//! read off. SQLite (a temporary file) always runs; PostgreSQL and MySQL/MariaDB when
//! `TIDEWATER_POSTGRES_URL` / `TIDEWATER_MYSQL_URL` are set.
//!
//! Run with `cargo bench --bench database_sink` (`ROWS=...` for rows per batch, `BATCHES=...`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewater::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use tidewater::{StatementOutcome, StreamingSession};

const WORDS: [&str; 5] = ["open", "close", "crash", "update", "install"];

fn batch(schema: tidewater::arrow::datatypes::SchemaRef, b: usize, rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (b * rows..(b + 1) * rows).map(|i| i as i64).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|i| WORDS[*i as usize % WORDS.len()]).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.iter().map(|i| (*i % 977) as f64 + 0.5).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampNanosecondArray::from(
                ids.iter()
                    .map(|i| 1_767_225_600_000_000_000 + i * 1_000_000_000)
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

/// Runs one job; returns the wall time of all batches and the rows the sink reported written.
async fn run(sink: &str, mode: &str, batches: usize, rows: usize) -> tidewater::Result<(Duration, u64)> {
    let session = StreamingSession::new();
    let query = match mode {
        "append" => "SELECT id, word, amount, time FROM events",
        _ => "SELECT id % 150000 AS k, count(*) AS n, sum(amount) AS total FROM events GROUP BY id % 150000",
    };
    let outcomes = session
        .run_script(&format!(
            "CREATE TABLE events (id BIGINT, word VARCHAR, amount DOUBLE, time TIMESTAMP) WITH (connector = 'memory');
             CREATE TABLE out WITH ({sink}, output_mode = '{mode}');
             INSERT INTO out {query};"
        ))
        .await?;
    let Some(StatementOutcome::Started(query)) = outcomes.into_iter().last() else {
        return Err(tidewater::Error::Internal("no query started".into()));
    };
    let stream = session.memory_stream("events")?;
    let schema = tidewater::Source::schema(&stream);
    let data: Vec<RecordBatch> = (0..batches).map(|b| batch(schema.clone(), b, rows)).collect();
    let start = Instant::now();
    for b in data {
        stream.add_batch(b)?;
        query.process_all_available().await?;
    }
    let elapsed = start.elapsed();
    let written = query.recent_progress().iter().map(|p| p.sink.num_output_rows).sum();
    query.stop().await?;
    Ok((elapsed, written))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rows, batches) = (env("ROWS", 100_000), env("BATCHES", 10));
    let dir = tempfile::tempdir()?;
    let mut targets: Vec<(String, String)> = vec![
        ("memory (engine only)".into(), "connector = 'memory'".into()),
        (
            "SQLite".into(),
            format!(
                "connector = 'database', url = 'sqlite://{}/bench.db'",
                dir.path().display()
            ),
        ),
    ];
    for (name, var) in [
        ("PostgreSQL", "TIDEWATER_POSTGRES_URL"),
        ("MySQL", "TIDEWATER_MYSQL_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => targets.push((name.into(), format!("connector = 'database', url = '{url}'"))),
            _ => println!("skipped {name}: {var} is not set"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "database_sink: {batches} batches of {rows} rows, {} cores",
        std::thread::available_parallelism()?
    );
    for (name, options) in &targets {
        for mode in ["append", "update"] {
            let table = format!("bench_{mode}_{}", uuid::Uuid::new_v4().simple());
            let options = if options.contains("'database'") {
                format!("{options}, table = '{table}', checkpoint_location = 'memory:///checkpoints/{table}'")
            } else {
                options.clone()
            };
            let (elapsed, written) = runtime.block_on(run(&options, mode, batches, rows))?;
            println!(
                "  {name:<22} {mode:<7}: {:>10.0} rows/s ({written} rows in {:.2} s)",
                written as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64()
            );
            if options.contains("'database'") {
                runtime.block_on(drop_table(&options, &table));
            }
        }
    }
    Ok(())
}

/// Drops a benchmark table so repeated runs do not pile up data.
async fn drop_table(options: &str, table: &str) {
    let Some(url) = options.split("url = '").nth(1).and_then(|rest| rest.split('\'').next()) else {
        return;
    };
    let result = if url.starts_with("postgres") {
        match sqlx::PgPool::connect(url).await {
            Ok(pool) => sqlx::query(&format!("DROP TABLE \"{table}\""))
                .execute(&pool)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    } else if url.starts_with("mysql") {
        match sqlx::MySqlPool::connect(url).await {
            Ok(pool) => sqlx::query(&format!("DROP TABLE `{table}`"))
                .execute(&pool)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    if let Err(e) = result {
        eprintln!("could not drop {table}: {e}");
    }
}
