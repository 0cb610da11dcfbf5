//! What malformed records cost the files source: order CSVs with one bad line in a thousand,
//! against the same files without them.
//!
//! The job: 200 000 order rows (`order_id, client, amount, time`) in 4 CSV files, read in
//! `drop_malformed` mode by `SELECT client, sum(amount) GROUP BY client` in complete mode. The dirty
//! files have every thousandth line replaced by one with a field too many or a number that is not
//! one. Bad lines must cost about what good ones do: the target is a dirty read at least 0.5x the
//! clean read's rows per second (before the fix, one decoder per line after the first bad one ran
//! at about 0.01x, with most of the time in the kernel zero-filling buffers).
//!
//! Run with `cargo bench --bench malformed_records` (`ROWS=...` to change the size).

use std::io::Write;
use std::time::{Duration, Instant};

use tidewater::{StatementOutcome, StreamingSession};

const FILES: usize = 4;
const RUNS: usize = 5;
/// One line in this many is malformed in the dirty files.
const BAD_EVERY: usize = 1000;

/// Writes the order files into `dir`; with `dirty`, every [`BAD_EVERY`]th line is malformed.
/// Returns the number of good lines.
fn write_orders(dir: &std::path::Path, rows: usize, dirty: bool) -> std::io::Result<usize> {
    let per_file = rows / FILES;
    let mut good = 0;
    for f in 0..FILES {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("orders-{f:02}.csv")))?);
        for i in 0..per_file {
            let n = f * per_file + i;
            if dirty && n % BAD_EVERY == BAD_EVERY / 2 {
                match n % 2 {
                    0 => writeln!(out, "{n},client-{},12.5,2026-01-01T10:00:00,extra", n % 97)?,
                    _ => writeln!(out, "{n},client-{},not-a-number,2026-01-01T10:00:00", n % 97)?,
                }
                continue;
            }
            good += 1;
            writeln!(
                out,
                "{n},client-{},{}.{:02},2026-01-01T{:02}:{:02}:{:02}",
                n % 97,
                n % 1000,
                n % 100,
                (n / 3600) % 24,
                (n / 60) % 60,
                n % 60
            )?;
        }
    }
    Ok(good)
}

/// Reads `dir` to its end; returns the wall time, the rows read and the malformed records dropped.
async fn read(dir: &str) -> tidewater::Result<(Duration, u64, u64)> {
    let session = StreamingSession::new();
    let start = Instant::now();
    let outcomes = session
        .run_script(&format!(
            "CREATE TABLE orders (order_id BIGINT, client VARCHAR, amount DOUBLE, time TIMESTAMP)
               WITH (connector = 'files', format = 'csv', header = 'false', mode = 'drop_malformed', path = '{dir}');
             CREATE TABLE totals WITH (connector = 'memory', output_mode = 'complete', trigger = 'available_now',
               checkpoint_location = 'none');
             INSERT INTO totals SELECT client, sum(amount) AS traded FROM orders GROUP BY client;"
        ))
        .await?;
    let Some(StatementOutcome::Started(query)) = outcomes.into_iter().last() else {
        return Err(tidewater::Error::Internal("no query started".into()));
    };
    query.await_termination(None).await?;
    let elapsed = start.elapsed();
    let progress = query.recent_progress();
    let rows = progress.iter().map(|p| p.num_input_rows).sum();
    let dropped = progress
        .last()
        .and_then(|p| p.sources.first())
        .and_then(|s| s.metrics.get("numDroppedMalformedRecords"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok((elapsed, rows, dropped))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let (clean, dirty) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let clean_rows = write_orders(clean.path(), rows, false)?;
    let dirty_rows = write_orders(dirty.path(), rows, true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "malformed_records: {rows} CSV order rows in {FILES} files, one bad line in {BAD_EVERY}, {} cores",
        std::thread::available_parallelism()?
    );
    let (mut best_clean, mut best_dirty) = (Duration::MAX, Duration::MAX);
    for run in 0..RUNS {
        let (c, read_clean, _) = runtime.block_on(read(&clean.path().display().to_string()))?;
        let (d, read_dirty, dropped) = runtime.block_on(read(&dirty.path().display().to_string()))?;
        assert_eq!(read_clean as usize, clean_rows, "every clean row is read");
        assert_eq!(
            read_dirty as usize, dirty_rows,
            "every good row of the dirty files is read"
        );
        assert_eq!(dropped as usize, clean_rows - dirty_rows, "every bad line is counted");
        println!(
            "  run {run}: clean {:.3} s, dirty {:.3} s",
            c.as_secs_f64(),
            d.as_secs_f64()
        );
        best_clean = best_clean.min(c);
        best_dirty = best_dirty.min(d);
    }
    let clean_rate = clean_rows as f64 / best_clean.as_secs_f64();
    let dirty_rate = dirty_rows as f64 / best_dirty.as_secs_f64();
    println!("clean files : {clean_rate:>12.0} rows/s (best of {RUNS})");
    println!("dirty files : {dirty_rate:>12.0} rows/s (best of {RUNS})");
    println!("ratio dirty/clean : {:.2} (target >= 0.50)", dirty_rate / clean_rate);
    Ok(())
}
